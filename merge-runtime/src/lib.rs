//! The node runtime behind the `sysext` binary: finds systemd-sysext
//! images, checks them against the host and the verification policy,
//! mounts them read-only and merges them over `/usr` and `/opt` exactly
//! like `systemd-sysext` (same directories, rules and `.systemd-sysext`
//! marker, so either tool can read and undo what the other did), with a
//! refresh that never leaves `/usr` without its extensions.
//!
//! Modules, from the outside in:
//! - [`runtime`]: the commands (merge, refresh, unmerge, status, list, verify);
//! - [`discover`]: search directories, precedence, masking, formats, sidecars;
//! - [`release`] and [`osrelease`]: finding and reading extension-release
//!   and os-release files (their format and rules are
//!   `sysupdate::extension`'s);
//! - [`verify`]: policy, signatures, verity backends;
//! - [`update`]: `update`, `rollback` and `pending` (A/B updates from a feed);
//! - [`dmverity`]: kernel dm-verity devices and the kernel keyring;
//! - [`ddi`]: reading GPT disk images (through `signing::ddi`);
//! - [`image`] and [`opened`]: opening one image (format, data window,
//!   verity material) and what that yields;
//! - [`lock`]: the locks shared by the runtime and the updater;
//! - [`chain`]: an error and its causes as one line (report reasons);
//! - [`loopdev`], [`ns`], [`mounts`], [`root`]: the kernel plumbing.

pub mod chain;
pub mod ddi;
pub mod discover;
pub mod dmverity;
pub mod image;
pub mod lock;
pub mod loopdev;
pub mod mounts;
pub mod name;
pub mod ns;
pub mod opened;
pub mod osrelease;
pub mod release;
pub mod root;
pub mod runtime;
pub mod update;
pub mod verify;

pub use runtime::{list, merge, refresh, status, unmerge, verify_image, Options};
pub use sysupdate::extension::ImageName;
pub use verify::{Policy, VerityMode};
