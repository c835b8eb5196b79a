//! What `sysext update` remembers between runs, in
//! `ROOT/var/lib/sysext/update-state.json` (written atomically: temporary
//! file in the same directory, fsync, rename, fsync of the directory):
//!
//! - per component, the versions that failed their activation or health
//!   check, were refused by the node's image policy before activation (or
//!   were rolled back by hand), with the reason, so they are not
//!   downloaded or installed again automatically;
//! - the link targets that were current before the last activation (the
//!   "previous" instances, which vacuuming never removes and `rollback`
//!   returns to);
//! - the journal of an activation in progress: written before the first
//!   symlink is flipped and cleared only when the activation has been
//!   health-checked or rolled back. A run that finds it finishes the
//!   interrupted activation (see `update::recover`).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sysupdate::Version;

use super::health::Check;
use crate::root::{self, Root};

/// The state file, relative to the root.
pub const STATE_FILE: &str = "var/lib/sysext/update-state.json";

/// A version that must not be installed automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedVersion {
    pub version: Version,
    pub reason: String,
    /// When it failed, µs since the epoch.
    pub at_usec: u64,
}

/// One symlink changed by an activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkChange {
    /// The `CurrentSymlink=` path (absolute, inside the root).
    pub link: String,
    /// Its text before (`None`: it did not exist).
    pub old: Option<String>,
    /// Its text after.
    pub new: String,
}

/// The journal of an activation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub version: Version,
    pub links: Vec<LinkChange>,
    /// The health check the activation must pass.
    pub check: Option<Check>,
    #[serde(default)]
    pub check_timeout_sec: u64,
    pub started_usec: u64,
}

/// What is remembered about one component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentState {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedVersion>,
    /// Link path → its text before the last successful activation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub previous: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activating: Option<Activation>,
}

impl ComponentState {
    /// Whether `v` failed before.
    pub fn is_failed(&self, v: &Version) -> bool {
        self.failed.iter().any(|f| f.version.uapi_eq(v))
    }

    /// Records `v` as failed (once).
    pub fn mark_failed(&mut self, v: &Version, reason: &str, at_usec: u64) {
        if !self.is_failed(v) {
            self.failed.push(FailedVersion {
                version: v.clone(),
                reason: reason.to_string(),
                at_usec,
            });
        }
    }

    fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.previous.is_empty() && self.activating.is_none()
    }
}

/// The whole state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default = "format_version")]
    pub format: u32,
    #[serde(default)]
    pub components: BTreeMap<String, ComponentState>,
}

fn format_version() -> u32 {
    1
}

/// The state file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}:{line}: {msg}; this file is only ever replaced atomically, so it was changed by hand: fix it, or delete it (which forgets failed versions and previous instances)")]
    Parse {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: format {format} is newer than this sysext understands (1); upgrade sysext")]
    Format { path: PathBuf, format: u32 },
}

/// The state file of a tree, and its contents.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    pub state: State,
}

impl StateFile {
    /// Loads `ROOT/var/lib/sysext/update-state.json` (empty state when
    /// it does not exist).
    pub fn load(root: &Root) -> Result<StateFile, StateError> {
        let path = root
            .resolve_nonexistent(STATE_FILE)
            .map_err(|source| StateError::Io {
                path: root.join(STATE_FILE),
                source,
            })?;
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let s: State = serde_json::from_slice(&bytes).map_err(|e| StateError::Parse {
                    path: path.clone(),
                    line: e.line(),
                    msg: e.to_string(),
                })?;
                if s.format > 1 {
                    return Err(StateError::Format {
                        path,
                        format: s.format,
                    });
                }
                s
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => State {
                format: 1,
                components: BTreeMap::new(),
            },
            Err(source) => return Err(StateError::Io { path, source }),
        };
        Ok(StateFile { path, state })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state of `component` (empty if unknown).
    pub fn component(&self, component: &str) -> ComponentState {
        self.state
            .components
            .get(component)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the state of `component` and writes the file atomically.
    pub fn put(&mut self, component: &str, c: ComponentState) -> Result<(), StateError> {
        if c.is_empty() {
            self.state.components.remove(component);
        } else {
            self.state.components.insert(component.to_string(), c);
        }
        self.save()
    }

    /// Writes the file: temporary file, fsync, rename, fsync of the
    /// directory. The temporary name is fixed (we hold the update lock),
    /// so a run killed mid-write leaves at most that one file, which the
    /// next write truncates.
    pub fn save(&self) -> Result<(), StateError> {
        let err = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        root::mkdir_p(dir, 0o755).map_err(err)?;
        let tmp = dir.join(".#update-state.json.tmp");
        let mut bytes =
            serde_json::to_vec_pretty(&self.state).map_err(|e| err(io::Error::other(e)))?;
        bytes.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        super::fsync_dir(dir).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::open(t.path()).unwrap();
        let mut sf = StateFile::load(&root).unwrap();
        assert_eq!(sf.state.components.len(), 0);
        let mut c = sf.component("k");
        c.mark_failed(&Version::new("1.2").unwrap(), "check failed", 5);
        c.mark_failed(&Version::new("1.02").unwrap(), "again", 6);
        assert_eq!(c.failed.len(), 1, "UAPI-equal versions are one version");
        sf.put("k", c).unwrap();
        let back = StateFile::load(&root).unwrap();
        assert!(back.component("k").is_failed(&Version::new("1.2").unwrap()));
        let names: Vec<_> = std::fs::read_dir(t.path().join("var/lib/sysext"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["update-state.json"]);

        std::fs::write(back.path(), "{\n  \"components\": [\n").unwrap();
        let e = StateFile::load(&root).unwrap_err().to_string();
        assert!(
            e.contains("update-state.json:2:") && e.contains("delete it"),
            "{e}"
        );
    }
}
