//! The vocabulary of systemd-sysext extension images, shared by the build
//! side and the node: image and extension names ([`ImageName`],
//! [`ExtensionName`]), the os-release / extension-release file format
//! ([`OsRelease`]), the fields an image declares ([`ExtensionRelease`]) and
//! the compatibility rules against a host ([`check_compatible`]). Parsing
//! and rules only: finding and reading the files is the caller's I/O.

mod name;
mod os_release;
mod release;

pub use name::{BadExtensionName, BadImageName, ExtensionName, ImageName, MAX_EXTENSION_NAME};
pub use os_release::{key_is_valid, BadAssignment, Lenient, OsRelease, OsReleaseError, Problem};
pub use release::{
    check_compatible, keys, parse_boolean, wants_manager_reload, BadOsToken, BadScope,
    ExtensionRelease, Host, Incompatible, NoHostId, OsMatch, OsToken, Scope, ANY, DEFAULT_SCOPE,
};

/// Directory inside an image (relative to its root) that holds its
/// extension-release file.
pub const EXTENSION_RELEASE_DIR: &str = "usr/lib/extension-release.d";

/// File name prefix of extension-release files: `extension-release.NAME`.
pub const EXTENSION_RELEASE_PREFIX: &str = "extension-release.";

/// `usr/lib/extension-release.d/extension-release.NAME`, relative to the
/// image root.
pub fn extension_release_path(name: &ImageName) -> String {
    format!("{EXTENSION_RELEASE_DIR}/{EXTENSION_RELEASE_PREFIX}{name}")
}
