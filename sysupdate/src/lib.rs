//! The vocabulary shared by the feed publisher and the node: validated
//! architecture names and SHA-256 digests, UAPI version ordering
//! ([`version`]), `%` specifiers ([`specifier`]), match patterns
//! ([`pattern`]), transfer files ([`transfer`]), `SHA256SUMS` manifests with
//! their validity window ([`manifest`], [`date`]), choosing the version
//! to install ([`candidates`]), and extension images: names,
//! os-release/extension-release files and the host compatibility rules
//! ([`extension`]). No I/O policy lives here.

pub mod arch;
pub mod candidates;
pub mod date;
pub mod digest;
pub mod extension;
pub mod manifest;
pub mod pattern;
pub mod specifier;
pub mod transfer;
pub mod version;

pub use arch::Arch;
pub use date::Date;
pub use digest::Sha256Digest;
pub use manifest::{Manifest, ManifestName};
pub use pattern::{Captures, MatchPattern, PatternTemplate};
pub use transfer::Transfer;
pub use version::Version;
