//! The errors of fetching: every variant names the URL it concerns (and the
//! mirror URL actually contacted, when a mirror rule rewrote it) and says
//! what to do about it.

use std::path::PathBuf;

use sysupdate::Sha256Digest;

use super::checksum::ChecksumError;
use super::mirror::MirrorError;

/// A URL as the user knows it, plus the mirror URL actually contacted when a
/// mirror rule rewrote it. Displays as `URL` or `URL (via MIRROR-URL)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlLabel {
    pub url: String,
    pub via: Option<String>,
}

impl UrlLabel {
    pub fn new(url: &reqwest::Url, effective: &reqwest::Url) -> Self {
        UrlLabel {
            url: url.to_string(),
            via: (url != effective).then(|| effective.to_string()),
        }
    }
}

impl std::fmt::Display for UrlLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.via {
            Some(via) => write!(f, "{} (via {via})", self.url),
            None => f.write_str(&self.url),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "{url}: checksum mismatch: expected sha256 {expected}, got sha256 {actual}; \
         the download was discarded and not cached (the upstream file changed, the mirror \
         serves different bytes, or the pinned/published checksum is wrong)"
    )]
    ChecksumMismatch {
        url: UrlLabel,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },

    #[error("{url}: HTTP status {status}{}", attempts_note(*.attempts))]
    Status {
        url: UrlLabel,
        status: u16,
        attempts: u32,
    },

    #[error(
        "{url}: {what} is larger than the limit of {limit} bytes; \
         raise the size limit if this input is really that large"
    )]
    TooLarge {
        url: UrlLabel,
        what: &'static str,
        limit: u64,
    },

    #[error("{url}: {message}{}", attempts_note(*.attempts))]
    Network {
        url: UrlLabel,
        message: String,
        attempts: u32,
    },

    #[error("{url}: the response is not valid UTF-8 text")]
    NotText { url: UrlLabel },

    #[error("{url}: invalid JSON: {message}")]
    BadJson { url: UrlLabel, message: String },

    #[error("invalid URL {url:?}: {message}")]
    BadUrl { url: String, message: String },

    #[error("{path}: {message}: {source}")]
    Io {
        path: PathBuf,
        message: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Checksum(#[from] ChecksumError),

    #[error(transparent)]
    Mirror(#[from] MirrorError),

    #[error("cannot set up the HTTP client: {0}")]
    Client(String),

    #[error("{0}")]
    Invalid(String),
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl FetchError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        message: &'static str,
        source: std::io::Error,
    ) -> Self {
        FetchError::Io {
            path: path.into(),
            message,
            source,
        }
    }

    /// True for a checksum mismatch, which callers may want to report
    /// differently (it is a security event, not a network problem).
    pub fn is_checksum_mismatch(&self) -> bool {
        matches!(self, FetchError::ChecksumMismatch { .. })
    }
}
