//! `FEED/catalogue.json`: a machine-readable index of every extension in
//! a feed — its URL, streams (pattern, transfer files, newest version per
//! architecture, snippets) and images (version, architecture, size,
//! SHA-256, SHA-512, sidecars). Signed like a manifest
//! (`catalogue.json.gpg`). Deterministic: no timestamps, sorted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sysupdate::{Arch, Sha256Digest, Version};

use crate::name::{ExtensionName, FeedFileName};

/// The catalogue's file name at the feed's root.
pub const CATALOGUE_FILE: &str = "catalogue.json";
/// Its detached signature.
pub const CATALOGUE_SIG_FILE: &str = "catalogue.json.gpg";
/// The value of [`Catalogue::format`].
pub const FORMAT: &str = "sysext-feed-catalogue/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    pub format: String,
    pub extensions: Vec<CatalogueExtension>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueExtension {
    pub name: ExtensionName,
    /// The URL directory holding `SHA256SUMS` and the images.
    pub url: String,
    pub streams: Vec<CatalogueStream>,
    pub images: Vec<CatalogueImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueStream {
    /// `default` or a minor line such as `v1.30`.
    pub id: String,
    pub pattern: String,
    /// `NAME[-STREAM].conf` and `.transfer`.
    pub transfer_files: Vec<FeedFileName>,
    pub newest: BTreeMap<Arch, Version>,
    pub snippets: BTreeMap<Arch, CatalogueSnippet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueSnippet {
    pub butane: FeedFileName,
    pub ignition: FeedFileName,
    /// For `ignition.config.merge[].verification.hash`.
    pub ignition_sha512: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueImage {
    pub file: FeedFileName,
    pub version: Version,
    pub arch: Arch,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub sha512: String,
    pub streams: Vec<String>,
    pub sidecars: Vec<CatalogueFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueFile {
    pub file: FeedFileName,
    pub size: u64,
    pub sha256: Sha256Digest,
}

impl Catalogue {
    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn from_json(bytes: &[u8]) -> Result<Catalogue, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
