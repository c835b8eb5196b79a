//! What `update`, `pending` and `rollback` report: progress [`Event`]s as
//! they happen, and per component an [`Outcome`] with its details.

use std::path::PathBuf;

use serde::Serialize;

/// Something happened (for progress display and for tests that kill the
/// process at chosen points).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// Another process holds a lock; waiting for it.
    LockWait {
        path: PathBuf,
    },
    Component {
        component: String,
    },
    Warning {
        component: String,
        message: String,
    },
    Recovering {
        component: String,
        version: String,
        action: String,
    },
    Manifest {
        component: String,
        url: String,
        verified: bool,
        signer: Option<String>,
    },
    Plan {
        component: String,
        current: Option<String>,
        newest: Option<String>,
        action: String,
    },
    Vacuumed {
        component: String,
        removed: Vec<PathBuf>,
    },
    DownloadStart {
        component: String,
        url: String,
        file: PathBuf,
        resume_from: u64,
    },
    DownloadProgress {
        component: String,
        file: String,
        bytes: u64,
        total: Option<u64>,
    },
    DownloadDone {
        component: String,
        file: String,
        bytes: u64,
        transferred: u64,
    },
    /// The file was already installed with the right digest.
    Reused {
        component: String,
        file: PathBuf,
    },
    ImageVerified {
        component: String,
        file: PathBuf,
        policy: String,
        signer: Option<String>,
        verified_bytes: u64,
    },
    Installed {
        component: String,
        file: PathBuf,
    },
    JournalWritten {
        component: String,
        version: String,
    },
    LinkFlipped {
        component: String,
        link: String,
        target: Option<String>,
    },
    RefreshStart {
        component: String,
    },
    RefreshDone {
        component: String,
        action: String,
    },
    CheckStart {
        component: String,
        check: String,
    },
    CheckPassed {
        component: String,
    },
    CheckFailed {
        component: String,
        reason: String,
    },
    RollingBack {
        component: String,
        version: String,
        reason: String,
    },
    Done {
        component: String,
        outcome: Outcome,
    },
}

/// The result for one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A new version was installed, activated and (if asked) health-checked.
    Installed,
    /// Installed and the link flipped, but not refreshed (`--no-refresh`).
    Staged,
    /// Nothing newer to install.
    UpToDate,
    /// `pending`: this version would be installed.
    WouldInstall,
    /// The manifest names no file the patterns match.
    NothingAvailable,
    /// The new version failed activation or its health check; the
    /// previous one is current again and the version is recorded as failed.
    RolledBack,
    /// The feed or the image was refused (signature, digest, staleness,
    /// policy); nothing changed.
    Refused,
    /// Something else went wrong (network, I/O, configuration).
    Failed,
}

impl Outcome {
    /// Whether this outcome means the command failed (exit status 1).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::RolledBack | Outcome::Refused | Outcome::Failed | Outcome::NothingAvailable
        )
    }
}

/// What is known about a component's manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestInfo {
    pub url: String,
    pub verified: bool,
    pub signer: Option<String>,
    pub best_before: Option<String>,
}

/// A version `update` skips because it failed before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedVersion {
    pub version: String,
    /// Why it was recorded as failed (health check, rollback, refused by
    /// the node's image policy).
    pub reason: String,
}

/// The report for one component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentReport {
    pub component: String,
    pub outcome: Outcome,
    pub current_before: Option<String>,
    pub current_after: Option<String>,
    /// The version chosen (installed, or that would be).
    pub version: Option<String>,
    /// Newer versions skipped because they failed before.
    pub skipped_failed: Vec<String>,
    /// The same versions, each with the reason it was recorded as failed.
    pub skipped: Vec<SkippedVersion>,
    pub manifests: Vec<ManifestInfo>,
    /// What was done about an activation a killed run left behind.
    pub recovered: Option<String>,
    pub reason: Option<String>,
    pub warnings: Vec<String>,
    pub removed: Vec<PathBuf>,
    pub downloaded_bytes: u64,
}

impl ComponentReport {
    pub(crate) fn new(component: &str) -> ComponentReport {
        ComponentReport {
            component: component.to_string(),
            outcome: Outcome::Failed,
            current_before: None,
            current_after: None,
            version: None,
            skipped_failed: Vec::new(),
            skipped: Vec::new(),
            manifests: Vec::new(),
            recovered: None,
            reason: None,
            warnings: Vec::new(),
            removed: Vec::new(),
            downloaded_bytes: 0,
        }
    }

    pub(crate) fn end(mut self, outcome: Outcome, reason: Option<String>) -> ComponentReport {
        self.outcome = outcome;
        if reason.is_some() {
            self.reason = reason;
        }
        self
    }
}

/// The report of `update`, `pending` or `rollback`.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub components: Vec<ComponentReport>,
}

impl UpdateReport {
    /// True when no component failed.
    pub fn success(&self) -> bool {
        self.components.iter().all(|c| !c.outcome.is_failure())
    }
}
