//! The errors of the update commands: [`UpdateError`] stops a whole
//! command; [`ComponentError`] ends one component (recorded in its report
//! with the [`Outcome`] it maps to, the others go on).

use std::io;
use std::path::PathBuf;

use sysupdate::Version;

use crate::image::Stage;
use crate::lock::LockError;
use crate::runtime::RuntimeError;

use super::definitions::DefinitionError;
use super::feed::FeedError;
use super::report::{ComponentReport, Outcome};
use super::state::StateError;
use super::target::ImageCheckError;

/// Errors that stop the whole command.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("need to be privileged (root) to {0}")]
    NotPrivileged(&'static str),
    #[error("cannot open root {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("taking the update lock")]
    Lock(#[source] LockError),
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no components to update: no sysupdate.NAME.d directory in {dirs} under {root}; install a feed's transfer file as /etc/sysupdate.NAME.d/NAME.transfer")]
    NoComponents { root: PathBuf, dirs: String },
    #[error("rollback of {component}")]
    Rollback {
        component: String,
        #[source]
        source: Box<ComponentError>,
    },
}

/// Why a version was rolled back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RollbackCause {
    #[error("the merge refused the new image ({stage:?}): {reason}")]
    MergeRefused { stage: Stage, reason: String },
    #[error("the refresh did not merge {link}: {why}")]
    NotMerged { link: String, why: String },
    #[error("health check failed: {0}")]
    HealthCheck(String),
}

/// What ended one component's update, rollback or recovery.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error(transparent)]
    Definitions(#[from] DefinitionError),
    #[error("cannot open the target directory")]
    Target(#[source] io::Error),
    #[error("taking the sysext lock")]
    Lock(#[source] LockError),
    /// The feed refused (signature, digest, staleness, size) or failed
    /// (network, I/O).
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("{url}")]
    Candidates {
        url: String,
        #[source]
        source: sysupdate::candidates::CandidateError,
    },
    #[error("the manifest lists no file matching {patterns} (wrong architecture or stream?)")]
    NothingAvailable { patterns: String },
    #[error("version {0} vanished from the candidate list")]
    Vanished(Version),
    #[error("{0}")]
    FinalName(String),
    /// The downloaded image does not pass the node's image policy.
    #[error("{file} (version {version}) is refused by this node's image policy: {check}; nothing was changed{recorded}")]
    ImageRefused {
        file: PathBuf,
        version: Version,
        check: ImageCheckError,
        /// What became of the failed-version record (or empty).
        recorded: String,
    },
    /// A file, link or directory step (named by `context`) failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
    /// The refresh after the link flip failed as a whole: the links were
    /// put back (`again`: refreshing that failed too).
    #[error("refresh failed; the previous image is current again{}", again.as_ref().map(|a| format!(" (and refreshing it failed too: {})", crate::chain::text(a.as_ref()))).unwrap_or_default())]
    Refresh {
        #[source]
        source: Box<RuntimeError>,
        again: Option<Box<RuntimeError>>,
    },
    /// Refreshing after restoring the previous image failed.
    #[error("after restoring the previous image: refresh failed")]
    RestoreRefresh(#[source] Box<RuntimeError>),
    #[error("version {version} was rolled back: {cause}; it is recorded as failed and will not be installed again automatically")]
    RolledBack {
        version: Version,
        cause: RollbackCause,
    },
    #[error("{link} does not point at an instance in {dir}; nothing to roll back")]
    NoCurrent { link: String, dir: String },
    #[error("no earlier instance of {component} is installed in {dir} (besides versions that failed before)")]
    NoEarlier { component: String, dir: String },
    #[error("component {0} has no CurrentSymlink=; nothing to roll back")]
    NoLink(String),
}

impl ComponentError {
    /// The outcome a component ends with.
    pub fn outcome(&self) -> Outcome {
        match self {
            ComponentError::Feed(e) if is_refusal(e) => Outcome::Refused,
            ComponentError::Candidates { .. } | ComponentError::ImageRefused { .. } => {
                Outcome::Refused
            }
            ComponentError::NothingAvailable { .. } => Outcome::NothingAvailable,
            ComponentError::RolledBack { .. } => Outcome::RolledBack,
            _ => Outcome::Failed,
        }
    }

    /// Ends `rep` with this error's outcome and text.
    pub(crate) fn end(&self, rep: ComponentReport) -> ComponentReport {
        rep.end(self.outcome(), Some(crate::chain::text(self)))
    }
}

/// `map_err` for an I/O step named `context`.
pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> ComponentError {
    let context = context.into();
    move |source| ComponentError::Io { context, source }
}

/// Is this a refusal of the feed (as opposed to a failure to reach it)?
pub fn is_refusal(e: &FeedError) -> bool {
    matches!(
        e,
        FeedError::NoKeyring { .. }
            | FeedError::NoSignature { .. }
            | FeedError::BadSignature { .. }
            | FeedError::Manifest { .. }
            | FeedError::Expired { .. }
            | FeedError::Sha256Mismatch { .. }
            | FeedError::TooLarge { .. }
            | FeedError::DownloadTooLarge { .. }
    )
}
