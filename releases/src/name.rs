//! Validated names the feed is made of: the names of files published in a
//! feed directory, and (re-exported from `sysupdate::extension`) extension
//! names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Extension names: one type for the whole project, in `sysupdate`.
pub use sysupdate::extension::{BadExtensionName, ExtensionName};

/// The name of a file inside a feed directory (and of a GitHub release
/// asset): one path component, never hidden, from a character set that
/// survives URLs, manifests and GitHub's asset-name rewriting.
///
/// Allowed: `[A-Za-z0-9._+-]`, 1–255 bytes, not starting with `.`
/// (names starting with `.` are reserved for temporary files).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FeedFileName(String);

/// Text that cannot name a file in a feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid feed file name {text:?}: {reason}")]
pub struct BadFeedFileName {
    pub text: String,
    pub reason: &'static str,
}

impl FeedFileName {
    pub fn new(s: impl Into<String>) -> Result<Self, BadFeedFileName> {
        let text = s.into();
        let reason = if text.is_empty() {
            Some("it is empty")
        } else if text.len() > 255 {
            Some("it is longer than 255 bytes")
        } else if text.starts_with('.') {
            Some("it must not start with '.' (reserved for temporary files)")
        } else if let Some(c) = text
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+')))
        {
            if matches!(c, '~' | '^' | ',') {
                Some("'~', '^' and ',' are not allowed: systemd-sysupdate rejects '~' and '^' in versions and GitHub renames them in asset names")
            } else {
                Some("only letters, digits, '_', '.', '+' and '-' are allowed")
            }
        } else {
            None
        };
        match reason {
            Some(reason) => Err(BadFeedFileName { text, reason }),
            None => Ok(FeedFileName(text)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FeedFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for FeedFileName {
    type Err = BadFeedFileName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FeedFileName::new(s)
    }
}

impl TryFrom<String> for FeedFileName {
    type Error = BadFeedFileName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        FeedFileName::new(s)
    }
}

impl From<FeedFileName> for String {
    fn from(n: FeedFileName) -> String {
        n.0
    }
}

impl AsRef<str> for FeedFileName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_file_names() {
        for ok in [
            "k3s-v1.30.4+k3s1-x86-64.raw",
            "SHA256SUMS",
            "SHA256SUMS.gpg",
        ] {
            FeedFileName::new(ok).unwrap();
        }
        for bad in ["", ".x", "a/b", "..", "x~rc1", "x^1", "a,b", "a b", "a:b"] {
            assert!(FeedFileName::new(bad).is_err(), "{bad}");
        }
        let e = FeedFileName::new("k-1~rc1-x86-64.raw").unwrap_err();
        assert!(e.to_string().contains("GitHub"), "{e}");
    }
}
