//! Extension image names at two strengths: [`ImageName`], every name
//! systemd-sysext accepts (what a node must handle), and [`ExtensionName`],
//! the stricter subset this project gives the extensions it builds and
//! publishes (safe in file names, URLs, sysupdate patterns and GitHub tags).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest [`ExtensionName`]: leaves room for `-VERSION-ARCH.raw` and
/// temporary-file prefixes within the 255-byte file-name limit.
pub const MAX_EXTENSION_NAME: usize = 128;

/// Suffixes systemd strips from image file names (`NAME.raw`, and since
/// systemd 256 `NAME.sysext.raw` / `NAME.confext.raw`): a name ending in
/// one of them would not survive the round trip through a file name.
const STRIPPED_SUFFIXES: [&str; 3] = [".raw", ".sysext", ".confext"];

/// The name of an extension image as systemd-sysext sees it: a directory
/// name, or a file name minus `.raw`; also the suffix of
/// `extension-release.NAME`.
///
/// Valid exactly when systemd's `image_name_is_valid()` says so: a valid
/// file name (not empty, not `.` or `..`, no `/`, at most 255 bytes), UTF-8
/// (guaranteed by `String`), no ASCII control characters, and not starting with
/// `.#` (temporary files). The node runtime uses this type for what it
/// finds on disk, so that it merges exactly the images systemd-sysext
/// would. Names this project creates are [`ExtensionName`]s.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

/// Text that systemd would not accept as an image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid extension image name {text:?}: {reason}")]
pub struct BadImageName {
    pub text: String,
    pub reason: &'static str,
}

impl ImageName {
    pub fn new(s: impl Into<String>) -> Result<Self, BadImageName> {
        let text = s.into();
        let reason = if text.is_empty() {
            Some("it is empty")
        } else if text == "." || text == ".." {
            Some("it is . or ..")
        } else if text.contains('/') {
            Some("it contains '/'")
        } else if text.len() > 255 {
            Some("it is longer than 255 bytes")
        } else if text.bytes().any(|b| b < b' ' || b == 0x7f) {
            // systemd's string_has_cc(): bytes below ' ' and DEL; C1
            // controls (U+0080–U+009F) pass, as they do there.
            Some("it contains control characters")
        } else if text.starts_with(".#") {
            Some("names starting with .# are temporary files")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(BadImageName { text, reason }),
            None => Ok(ImageName(text)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same name, if it also meets [`ExtensionName`]'s stricter rules.
    pub fn to_extension_name(&self) -> Result<ExtensionName, BadExtensionName> {
        ExtensionName::new(self.0.clone())
    }
}

/// An extension name as this project gives it: the recipe name, the image
/// name on the node (`/etc/extensions/NAME.raw`), the suffix of
/// `extension-release.NAME`, the feed directory, the GitHub release tag and
/// the sysupdate component.
///
/// Stricter than systemd's `image_name_is_valid()` (see [`ImageName`]) so
/// that it is also safe in file names, URLs and sysupdate patterns:
/// 1–128 characters from `[A-Za-z0-9_.-]`, not starting with `.` or `-`,
/// not ending with `.raw`, `.sysext` or `.confext` (suffixes systemd strips
/// from image file names). Every `ExtensionName` is a valid [`ImageName`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExtensionName(String);

/// Text that cannot be an extension name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid extension name {text:?}: {reason}")]
pub struct BadExtensionName {
    pub text: String,
    pub reason: &'static str,
}

impl ExtensionName {
    pub fn new(s: impl Into<String>) -> Result<Self, BadExtensionName> {
        let text = s.into();
        let reason = if text.is_empty() {
            Some("it is empty")
        } else if text.len() > MAX_EXTENSION_NAME {
            Some("it is longer than 128 characters")
        } else if !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            Some("only letters, digits, '_', '.' and '-' are allowed")
        } else if text.starts_with('.') || text.starts_with('-') {
            Some("it must not start with '.' or '-'")
        } else if STRIPPED_SUFFIXES.iter().any(|s| text.ends_with(s)) {
            Some("it must not end with \".raw\", \".sysext\" or \".confext\" (systemd strips those suffixes from image file names)")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(BadExtensionName { text, reason }),
            None => Ok(ExtensionName(text)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same name as systemd sees it.
    pub fn to_image_name(&self) -> ImageName {
        ImageName(self.0.clone())
    }
}

macro_rules! string_newtype {
    ($t:ident, $err:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $t {
            type Err = $err;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $t::new(s)
            }
        }

        impl TryFrom<String> for $t {
            type Error = $err;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                $t::new(s)
            }
        }

        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_newtype!(ImageName, BadImageName);
string_newtype!(ExtensionName, BadExtensionName);

impl From<ExtensionName> for ImageName {
    fn from(n: ExtensionName) -> ImageName {
        ImageName(n.0)
    }
}

impl TryFrom<ImageName> for ExtensionName {
    type Error = BadExtensionName;
    fn try_from(n: ImageName) -> Result<Self, Self::Error> {
        ExtensionName::new(n.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From merge-runtime's copy.
    #[test]
    fn image_names_accept_ordinary_names() {
        for ok in [
            "foo",
            "foo-1.2.3-x86-64",
            "a:b,c",
            ".hidden",
            "a b",
            "ü",
            "x.raw",
            "a\u{85}b",
        ] {
            assert_eq!(ImageName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn image_names_reject_what_systemd_rejects() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            ".#tmp",
            "a\nb",
            "a\u{7f}b",
            &"x".repeat(256),
        ] {
            let e = ImageName::new(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(ImageName::new("x".repeat(255)).is_ok());
        // 255 bytes is the limit, not 255 characters.
        assert!(ImageName::new("ü".repeat(128)).is_err());
    }

    // From releases' copy.
    #[test]
    fn extension_names() {
        for ok in ["kubernetes", "k3s", "nvidia-runtime", "a_b.c"] {
            ExtensionName::new(ok).unwrap();
        }
        for bad in ["", ".x", "-x", "a/b", "x.raw", "a b", "ü"] {
            let e = ExtensionName::new(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    // From bakery's copy.
    #[test]
    fn bad_names() {
        for bad in ["", ".hidden", "-x", "a/b", "a b", "x.raw", "ä"] {
            assert!(ExtensionName::new(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "docker-compose", "k3s", "nvidia_runtime.v2", "A9"] {
            assert!(ExtensionName::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn extension_names_avoid_suffixes_systemd_strips() {
        for bad in ["foo.sysext", "foo.confext", "foo.raw"] {
            let e = ExtensionName::new(bad).unwrap_err();
            assert!(e.reason.contains("strips"), "{e}");
        }
        assert!(ExtensionName::new("foo.sysextx").is_ok());
        assert!(ExtensionName::new("x".repeat(128)).is_ok());
        assert!(ExtensionName::new("x".repeat(129)).is_err());
    }

    #[test]
    fn serde_validates() {
        let n: ExtensionName = serde_json::from_str("\"k3s\"").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"k3s\"");
        assert!(serde_json::from_str::<ExtensionName>("\"../x\"").is_err());
        assert!(serde_json::from_str::<ImageName>("\".#x\"").is_err());
        assert_eq!(
            serde_json::from_str::<ImageName>("\"a b\"")
                .unwrap()
                .as_str(),
            "a b"
        );
    }

    proptest::proptest! {
        /// Every extension name is an image name: what bakery builds, a
        /// node (and systemd-sysext) accepts.
        #[test]
        fn extension_names_are_image_names(s in "\\PC{0,20}|[A-Za-z0-9_.-]{1,20}") {
            if let Ok(n) = ExtensionName::new(s.clone()) {
                let image = ImageName::new(s).unwrap();
                proptest::prop_assert_eq!(n.to_image_name(), image.clone());
                proptest::prop_assert_eq!(image.to_extension_name().unwrap(), n);
            }
        }
    }
}
