//! [`Options`]: the settings every runtime command takes (root,
//! hierarchies, policy, verity backend, run directory).

use std::path::{Path, PathBuf};

use crate::root;
use crate::verify::{BackendChoice, Policy};

use super::error::RuntimeError;

/// Default directory for our lock and staging workspaces.
pub const RUN_DIR: &str = "/run/sysext-forge";

/// Settings shared by all commands.
#[derive(Debug, Clone)]
pub struct Options {
    /// The OS tree to operate on (`--root`); `/` for the running system.
    pub root: PathBuf,
    /// Hierarchies to merge, absolute (default `/usr`, `/opt`).
    pub hierarchies: Vec<String>,
    /// Skip extension-release validation (`--force`).
    pub force: bool,
    /// `--policy`; `None` reads the policy file.
    pub policy: Option<Policy>,
    pub backend: BackendChoice,
    /// Never reload the service manager (`--no-reload`).
    pub no_reload: bool,
    /// Lock file and staging workspaces.
    pub run_dir: PathBuf,
}

impl Options {
    pub fn new(root: impl Into<PathBuf>) -> Options {
        Options {
            root: root.into(),
            hierarchies: vec!["/usr".into(), "/opt".into()],
            force: false,
            policy: None,
            backend: BackendChoice::Auto,
            no_reload: false,
            run_dir: PathBuf::from(RUN_DIR),
        }
    }

    /// Applies `$SYSTEMD_SYSEXT_HIERARCHIES` (a colon-separated list of
    /// absolute paths), as systemd-sysext does.
    pub fn hierarchies_from_env(&mut self) -> Result<(), RuntimeError> {
        if let Ok(v) = std::env::var("SYSTEMD_SYSEXT_HIERARCHIES") {
            self.hierarchies = parse_hierarchies(&v)?;
        }
        Ok(())
    }
}

/// Parses a `$SYSTEMD_SYSEXT_HIERARCHIES` value.
pub fn parse_hierarchies(v: &str) -> Result<Vec<String>, RuntimeError> {
    let mut hs = Vec::new();
    for h in v.split(':').filter(|s| !s.is_empty()) {
        let p = Path::new(h);
        if !p.is_absolute() || !root::is_plain_relative(p.strip_prefix("/").unwrap_or(p)) {
            return Err(RuntimeError::Hierarchy(h.to_string()));
        }
        hs.push(h.trim_end_matches('/').to_string());
    }
    Ok(hs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies() {
        assert_eq!(parse_hierarchies("/usr:/opt/:").unwrap(), ["/usr", "/opt"]);
        assert!(matches!(
            parse_hierarchies("/usr:opt"),
            Err(RuntimeError::Hierarchy(h)) if h == "opt"
        ));
        assert!(parse_hierarchies("/usr/../etc").is_err());
    }
}
