//! Extension image names: the validated newtype [`ExtensionName`], with the
//! rules systemd applies in `image_name_is_valid()`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The name of an extension image: the directory name, or the file name
/// minus `.raw`. It is also the suffix of `extension-release.NAME`.
///
/// Valid like systemd's `image_name_is_valid()`: a valid file name (not
/// empty, not `.` or `..`, no `/`, at most 255 bytes), UTF-8, no control
/// characters, and not starting with `.#` (temporary files).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExtensionName(String);

/// A string that cannot be an image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid extension image name {name:?}: {why}")]
pub struct BadName {
    pub name: String,
    pub why: &'static str,
}

impl ExtensionName {
    pub fn new(s: impl Into<String>) -> Result<Self, BadName> {
        let name = s.into();
        let why = if name.is_empty() {
            Some("it is empty")
        } else if name == "." || name == ".." {
            Some("it is . or ..")
        } else if name.contains('/') {
            Some("it contains '/'")
        } else if name.len() > 255 {
            Some("it is longer than 255 bytes")
        } else if name.chars().any(|c| c.is_control()) {
            Some("it contains control characters")
        } else if name.starts_with(".#") {
            Some("names starting with .# are temporary files")
        } else {
            None
        };
        match why {
            Some(why) => Err(BadName { name, why }),
            None => Ok(ExtensionName(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExtensionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ExtensionName {
    type Err = BadName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExtensionName::new(s)
    }
}

impl TryFrom<String> for ExtensionName {
    type Error = BadName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ExtensionName::new(s)
    }
}

impl From<ExtensionName> for String {
    fn from(n: ExtensionName) -> String {
        n.0
    }
}

impl AsRef<str> for ExtensionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["foo", "foo-1.2.3-x86-64", "a:b,c", ".hidden"] {
            assert_eq!(ExtensionName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_what_systemd_rejects() {
        for bad in ["", ".", "..", "a/b", ".#tmp", "a\nb", &"x".repeat(256)] {
            assert!(ExtensionName::new(bad).is_err(), "{bad:?}");
        }
    }
}
