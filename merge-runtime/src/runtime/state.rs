//! What a merge leaves behind and reads back: the state recorded next to
//! the marker (`.systemd-sysext/sysext-forge.json`), the current state of
//! each hierarchy, and the fingerprint of everything that decides the
//! result of a merge (a refresh with an unchanged fingerprint is a no-op).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::discover::Discovery;
use crate::mounts::{is_merged_tree, MARKER_DIR, STATE_FILE};
use crate::release::HostRelease;
use crate::root::Root;
use crate::verify::{EffectivePolicy, Policy};

use super::error::{errno_ctx, io_ctx, RuntimeError};
use super::options::Options;
use super::report::ImageReport;

/// What we record next to the marker (`.systemd-sysext/sysext-forge.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeState {
    pub tool: String,
    pub fingerprint: String,
    pub merged_at_usec: u64,
    pub policy: Policy,
    pub images: Vec<ImageReport>,
}

pub(crate) fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The current state of one hierarchy in the calling namespace.
pub struct Current {
    pub hierarchy: String,
    pub target: PathBuf,
    pub merged: bool,
    pub state: Option<MergeState>,
}

pub fn read_state(tree: &Path) -> Option<MergeState> {
    let text = std::fs::read(tree.join(MARKER_DIR).join(STATE_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

pub fn current_state(root: &Root, hierarchies: &[String]) -> Result<Vec<Current>, RuntimeError> {
    let mut out = Vec::new();
    for h in hierarchies {
        let target = root
            .resolve_nonexistent(h)
            .map_err(io_ctx(format!("resolving {}", root.join(h).display())))?;
        let merged = is_merged_tree(&target).map_err(io_ctx(format!(
            "checking whether {} is merged",
            target.display()
        )))?;
        let state = if merged { read_state(&target) } else { None };
        out.push(Current {
            hierarchy: h.clone(),
            target,
            merged,
            state,
        });
    }
    Ok(out)
}

fn file_identity(p: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{}:{}:{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => "-".into(),
    }
}

/// Everything that decides the result of a merge, hashed.
pub fn fingerprint(
    opts: &Options,
    root: &Root,
    disc: &Discovery,
    host: &HostRelease,
    policy: &EffectivePolicy,
) -> String {
    let mut h = Sha256::new();
    let mut line = |s: String| {
        h.update(s.as_bytes());
        h.update(b"\n");
    };
    line(format!(
        "sysext-forge-fingerprint v1 root={}",
        root.path().display()
    ));
    line(format!(
        "hierarchies={:?} force={} policy={} backend={:?}",
        opts.hierarchies, opts.force, policy.policy, opts.backend
    ));
    line(format!(
        "host={:?} os-release={}",
        host,
        std::fs::read(&host.os_release_path)
            .map(|b| hex::encode(Sha256::digest(b)))
            .unwrap_or_default()
    ));
    for i in &disc.images {
        line(format!(
            "image {} {} {} {} {:?}",
            i.name,
            i.kind.as_str(),
            i.path.display(),
            i.target.display(),
            i.identity
        ));
        for s in [
            &i.sidecars.roothash,
            &i.sidecars.verity,
            &i.sidecars.signature,
        ]
        .into_iter()
        .flatten()
        {
            line(format!("  sidecar {} {}", s.display(), file_identity(s)));
        }
    }
    for m in &disc.masked {
        line(format!("masked {}", m.name));
    }
    // Certificates decide signature checks.
    for d in signing::pkcs7::VERITY_D_DIRS {
        if let Ok(p) = root.resolve(d) {
            if let Ok(rd) = std::fs::read_dir(&p) {
                let mut names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
                names.sort();
                for n in names {
                    line(format!("cert {} {}", n.display(), file_identity(&n)));
                }
            }
        }
    }
    hex::encode(h.finalize())
}

/// Writes `state` into each merged tree's metadata layer `metas` and
/// stamps their mtime (the merged tree's mtime marks when the merge was
/// made).
pub fn write_state(metas: &[PathBuf], state: &MergeState) -> Result<(), RuntimeError> {
    let json = serde_json::to_vec_pretty(state).map_err(|e| RuntimeError::Io {
        context: "serialising the merge state".into(),
        source: std::io::Error::other(e),
    })?;
    let now = rustix::fs::Timespec {
        tv_sec: 0,
        tv_nsec: rustix::fs::UTIME_NOW,
    };
    for meta in metas {
        let p = meta.join(MARKER_DIR).join(STATE_FILE);
        std::fs::write(&p, &json).map_err(io_ctx(format!("writing {}", p.display())))?;
        rustix::fs::utimensat(
            rustix::fs::CWD,
            meta,
            &rustix::fs::Timestamps {
                last_access: now,
                last_modification: now,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno_ctx(format!("touching {}", meta.display())))?;
    }
    Ok(())
}
