//! `sysext update`, `sysext rollback` and `sysext pending`: A/B updates of
//! extension images from a feed, health-checked, rolled back on failure,
//! and safe to kill at any instant.
//!
//! This module only declares its parts and re-exports their API:
//! - [`component`]: `update` and `pending`, component by component;
//! - [`choose`]: which version to install (no side effects);
//! - [`activate`]: download, image check, install, link flip, refresh,
//!   health check;
//! - [`revert`]: link flips back, refresh under the held lock, rollback
//!   and finalisation of an activation;
//! - [`recover`]: interrupted-run recovery and `rollback`;
//! - [`context`], [`options`], [`report`], [`error`]: the shared state,
//!   inputs, outputs and failures of a command;
//! - [`definitions`]: transfer files (`/etc/sysupdate.NAME.d/*.transfer`);
//! - [`feed`]: the signed `SHA256SUMS`, `BEST-BEFORE`, resumable downloads;
//! - [`target`]: instances in the target directory, `CurrentSymlink=`,
//!   vacuuming, the pre-activation image check;
//! - [`health`]: `--check CMD` / `--check-unit UNIT`;
//! - [`state`]: failed versions, previous instances, the activation journal;
//! - [`lock`] (re-exported from [`crate::lock`], its owner): the locks
//!   shared with merge/refresh/unmerge.
//!
//! # One update, step by step
//! 1. take the update lock; finish an activation a killed run left behind
//!    (see *Crash safety*);
//! 2. fetch `SHA256SUMS`, verify `SHA256SUMS.gpg` with the keyring under
//!    the root (`Verify=no` is obeyed, with a loud warning), refuse it when
//!    its `BEST-BEFORE` date has come;
//! 3. choose the newest version every transfer of the component offers that
//!    the patterns allow (a minor stream's pattern never matches another
//!    minor), that `MinVersion=` allows and that did not fail before; if it
//!    is not newer than the current one, stop (no-op);
//! 4. vacuum to `InstancesMax - 1` (never the current or previous
//!    instance), download into `.#sysext-FILE.partial` in the target
//!    directory (resuming a partial file with `Range`), check its sha256
//!    against the verified manifest (a file larger than
//!    `--max-download-size` is refused, by its `Content-Length` or by
//!    counting, and its partial file deleted);
//! 5. check the image under the node's policy, exactly as a merge would
//!    (policy, root-hash signature against `verity.d`, every data block);
//!    an image refused here is deleted and its version recorded as failed
//!    with the reason (the same bytes would be refused again), so later
//!    runs skip it unless `--retry-failed`;
//! 6. set its mode (0444 by default), fsync, rename into place;
//! 7. under the main lock: write the activation journal, flip
//!    `CurrentSymlink=` (new symlink under a temporary name, renamed over
//!    the old one), refresh the merged set through the runtime, make sure
//!    the new image was merged, run the health check; on failure record the
//!    version as failed, point the link back at the previous instance and
//!    refresh again;
//! 8. clear the journal, remember the previous instance, vacuum to
//!    `InstancesMax`.
//!
//! # Crash safety
//! Every file appears under its final name complete (partial file, sha256,
//! fsync, rename); the link is replaced by `rename(2)`, so it points at the
//! old or the new complete image, never at nothing; the runtime's refresh
//! swaps the merged trees without a gap. The journal is written before the
//! link flips and cleared only after the health check or rollback, so the
//! next run knows whether an activation was interrupted and finishes it:
//! if the version is already recorded as failed, the rollback is completed;
//! if every link points at the new image, the refresh and health check are
//! run again (with the check the interrupted run had); otherwise the links
//! are put back and the update starts over (resuming the download).

pub mod activate;
pub mod choose;
pub mod component;
pub mod context;
pub mod definitions;
pub mod error;
pub mod feed;
pub mod health;
pub mod options;
pub mod recover;
pub mod report;
pub mod revert;
pub mod state;
pub mod target;

pub use crate::lock;
pub(crate) use crate::root::fsync_dir;
pub use component::{pending, update};
pub use error::{ComponentError, RollbackCause, UpdateError};
pub use options::UpdateOptions;
pub use recover::rollback;
pub use report::{ComponentReport, Event, ManifestInfo, Outcome, SkippedVersion, UpdateReport};

/// The updater's error type under its former name.
pub type Error = UpdateError;
