//! [`UpdateOptions`]: how `update`, `pending` and `rollback` run.

use std::path::PathBuf;
use std::time::Duration;

use sysupdate::Date;

use crate::runtime::Options;

use super::feed;
use super::health::Check;

/// How to update.
#[derive(Debug, Clone)]
pub struct UpdateOptions {
    /// Root, policy, verity backend, hierarchies: used for the image check
    /// and the refresh.
    pub runtime: Options,
    /// `--definitions DIR` (inside the root).
    pub definitions: Option<PathBuf>,
    /// The health check after activation.
    pub check: Option<Check>,
    pub check_timeout: Duration,
    /// Refresh the merged set after flipping the link (default). Without
    /// it the update only installs and flips, like systemd-sysupdate.
    pub refresh: bool,
    /// Also consider versions recorded as failed.
    pub retry_failed: bool,
    /// "Today" for `BEST-BEFORE` (default: the current UTC date).
    pub today: Option<Date>,
    /// Largest image file downloaded, in bytes (`--max-download-size`).
    pub max_download_size: u64,
}

impl UpdateOptions {
    pub fn new(runtime: Options) -> UpdateOptions {
        UpdateOptions {
            runtime,
            definitions: None,
            check: None,
            check_timeout: Duration::from_secs(60),
            refresh: true,
            retry_failed: false,
            today: None,
            max_download_size: feed::DEFAULT_MAX_DOWNLOAD,
        }
    }
}
