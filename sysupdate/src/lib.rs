//! The vocabulary shared by the feed publisher and the node: validated
//! architecture names and SHA-256 digests, and (as the feed grows) UAPI
//! version ordering, match patterns, transfer files and `SHA256SUMS`
//! manifests. No I/O policy lives here.

pub mod arch;
pub mod digest;

pub use arch::Arch;
pub use digest::Sha256Digest;
