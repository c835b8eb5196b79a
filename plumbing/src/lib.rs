//! File plumbing that both the build side and the node need, in one place
//! below both (DESIGN.md: one home per concern):
//!
//! - [`atomic`]: crash-safe file replacement (temporary file, fsync,
//!   rename, directory fsync): the only implementation in the workspace;
//! - [`in_root`]: opening paths confined to a directory tree with
//!   `openat2(RESOLVE_IN_ROOT)`;
//! - [`digest`]: SHA-256 of files and streams, and readers that hash or
//!   cap what passes through them.

pub mod atomic;
pub mod digest;
pub mod in_root;
