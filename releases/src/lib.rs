//! Publishing: the feed directory layout and retention, signed
//! `SHA256SUMS` manifests, transfer files, the catalogue, Butane and
//! Ignition node snippets, and uploading a feed to GitHub Releases.
//!
//! The flow: [`publish_dir`] lays a feed out in a local directory (the
//! source of truth); [`github::publish_github`] mirrors that directory to
//! GitHub Releases in an order that never exposes a manifest naming a
//! missing asset. See `README.md` for the layout and its limits.

pub mod catalogue;
pub mod dir;
pub mod fsutil;
pub mod github;
pub mod layout;
pub mod name;
pub mod retention;
pub mod signer;
pub mod snippets;
pub mod transfer;

pub use dir::{
    publish_dir, BestBefore, FeedEvent, ImageToPublish, PublishError, PublishOptions,
    PublishReport, MANIFEST_FILE, MANIFEST_SIG_FILE,
};
pub use layout::{FeedUrl, Stream, StreamPolicy};
pub use name::{ExtensionName, FeedFileName};
pub use retention::Retention;
pub use signer::{ManifestSigner, OpenPgpSigner, SignError};
