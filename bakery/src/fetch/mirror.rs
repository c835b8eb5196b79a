//! Mirror rewriting for air-gapped sites: rules that replace a URL prefix
//! (`https://dl.k8s.io/`) with another (`http://mirror.local/dl.k8s.io/`),
//! given on the command line (`--mirror FROM=TO`) or in a TOML file
//! (`$XDG_CONFIG_HOME/bakery/mirrors.toml`).
//!
//! ```toml
//! [[mirror]]
//! from = "https://dl.k8s.io/"
//! to = "http://127.0.0.1:8080/dl.k8s.io/"
//! ```
//!
//! Both prefixes must be absolute `http`/`https` URLs ending in `/`, so a
//! rule for `https://dl.k8s.io/` can never match `https://dl.k8s.io.evil/`.
//! When several rules match, the longest `from` wins; command-line rules
//! are consulted before file rules of the same length.

use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::Deserialize;

/// One prefix rewrite rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    from: String,
    to: String,
}

/// A mirror rule or mirror file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    #[error("mirror rule {rule:?}: expected FROM=TO, e.g. https://dl.k8s.io/=http://mirror.local/dl.k8s.io/")]
    NoEquals { rule: String },
    #[error("{origin}: mirror {which} prefix {prefix:?}: {message}")]
    BadPrefix {
        origin: String,
        which: &'static str,
        prefix: String,
        message: String,
    },
    #[error("{path}: cannot read the mirror file: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: invalid mirror file: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Mirror {
    /// A rule from two prefixes; `origin` names where the rule came from
    /// (a file and rule number, or `--mirror`) for error messages.
    pub fn new(from: &str, to: &str, origin: &str) -> Result<Mirror, MirrorError> {
        Ok(Mirror {
            from: check_prefix(from, "FROM", origin)?,
            to: check_prefix(to, "TO", origin)?,
        })
    }

    /// Parses the command-line form `FROM=TO` (split at the first `=`).
    pub fn parse_flag(rule: &str) -> Result<Mirror, MirrorError> {
        let (from, to) = rule.split_once('=').ok_or_else(|| MirrorError::NoEquals {
            rule: rule.to_string(),
        })?;
        Mirror::new(from.trim(), to.trim(), &format!("--mirror {rule}"))
    }

    pub fn from_prefix(&self) -> &str {
        &self.from
    }

    pub fn to_prefix(&self) -> &str {
        &self.to
    }

    fn apply(&self, url: &str) -> Option<String> {
        url.strip_prefix(&self.from)
            .map(|rest| format!("{}{rest}", self.to))
    }
}

fn check_prefix(prefix: &str, which: &'static str, origin: &str) -> Result<String, MirrorError> {
    let bad = |message: &str| MirrorError::BadPrefix {
        origin: origin.to_string(),
        which,
        prefix: prefix.to_string(),
        message: message.to_string(),
    };
    let url = Url::parse(prefix).map_err(|e| bad(&format!("not an absolute URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("only http:// and https:// are supported"));
    }
    if !prefix.ends_with('/') {
        return Err(bad(
            "must end with '/' so that it only matches whole path segments",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not contain '?' or '#'"));
    }
    // Compare against the normalised form, which is what request URLs look
    // like when they are matched (lowercase scheme and host, default port
    // dropped).
    Ok(url.to_string())
}

/// An ordered set of mirror rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorSet {
    rules: Vec<Mirror>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    #[serde(default)]
    mirror: Vec<MirrorEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorEntry {
    from: String,
    to: String,
}

impl MirrorSet {
    pub fn new() -> Self {
        MirrorSet::default()
    }

    pub fn push(&mut self, mirror: Mirror) {
        self.rules.push(mirror);
    }

    pub fn rules(&self) -> &[Mirror] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Adds the rules of another set after this set's own (so this set's
    /// rules win ties).
    pub fn extend(&mut self, other: MirrorSet) {
        self.rules.extend(other.rules);
    }

    /// Parses `--mirror FROM=TO` flags.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<MirrorSet, MirrorError> {
        let rules = flags
            .iter()
            .map(|f| Mirror::parse_flag(f.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(MirrorSet { rules })
    }

    /// Parses a mirror file's text; `path` is used in error messages.
    pub fn from_toml_str(text: &str, path: &Path) -> Result<MirrorSet, MirrorError> {
        let file: MirrorFile = toml::from_str(text).map_err(|e| MirrorError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut rules = Vec::with_capacity(file.mirror.len());
        for (i, entry) in file.mirror.iter().enumerate() {
            let origin = format!("{}: [[mirror]] #{}", path.display(), i + 1);
            rules.push(Mirror::new(&entry.from, &entry.to, &origin)?);
        }
        Ok(MirrorSet { rules })
    }

    /// Reads a mirror file. A missing file is an error here; use
    /// [`MirrorSet::load_default`] for the optional per-user file.
    pub fn load(path: &Path) -> Result<MirrorSet, MirrorError> {
        let text = std::fs::read_to_string(path).map_err(|e| MirrorError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        MirrorSet::from_toml_str(&text, path)
    }

    /// `$XDG_CONFIG_HOME/bakery/mirrors.toml` (or `~/.config/...`).
    pub fn default_path() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_CONFIG_HOME") {
            Some(dir) if !dir.is_empty() && Path::new(&dir).is_absolute() => PathBuf::from(dir),
            _ => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".config"),
        };
        Some(base.join("bakery").join("mirrors.toml"))
    }

    /// Loads the per-user mirror file if it exists; no file means no rules.
    pub fn load_default() -> Result<MirrorSet, MirrorError> {
        match MirrorSet::default_path() {
            Some(path) if path.exists() => MirrorSet::load(&path),
            _ => Ok(MirrorSet::new()),
        }
    }

    /// Rewrites a URL by the longest matching rule; returns it unchanged if
    /// no rule matches.
    pub fn rewrite(&self, url: &Url) -> Url {
        let text = url.as_str();
        let best = self
            .rules
            .iter()
            .filter(|m| text.starts_with(&m.from))
            .fold(None::<&Mirror>, |best, m| match best {
                Some(b) if b.from.len() >= m.from.len() => Some(b),
                _ => Some(m),
            });
        best.and_then(|m| m.apply(text))
            .and_then(|s| Url::parse(&s).ok())
            .unwrap_or_else(|| url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn rewrites_by_longest_prefix() {
        let set = MirrorSet::from_flags(&[
            "https://github.com/=http://127.0.0.1:9/gh/",
            "https://github.com/k3s-io/=http://127.0.0.1:9/k3s/",
        ])
        .unwrap();
        assert_eq!(
            set.rewrite(&url(
                "https://github.com/k3s-io/k3s/releases/download/v1/k3s"
            ))
            .as_str(),
            "http://127.0.0.1:9/k3s/k3s/releases/download/v1/k3s"
        );
        assert_eq!(
            set.rewrite(&url("https://github.com/rancher/rke2/x"))
                .as_str(),
            "http://127.0.0.1:9/gh/rancher/rke2/x"
        );
        assert_eq!(
            set.rewrite(&url("https://dl.k8s.io/v1/kubectl")).as_str(),
            "https://dl.k8s.io/v1/kubectl"
        );
    }

    #[test]
    fn does_not_match_inside_a_host_name() {
        let set = MirrorSet::from_flags(&["https://dl.k8s.io/=http://127.0.0.1:9/k/"]).unwrap();
        assert_eq!(
            set.rewrite(&url("https://dl.k8s.io.evil.example/x"))
                .as_str(),
            "https://dl.k8s.io.evil.example/x"
        );
    }

    #[test]
    fn refuses_bad_rules_with_the_reason() {
        let e = Mirror::parse_flag("https://dl.k8s.io/").unwrap_err();
        assert!(e.to_string().contains("FROM=TO"), "{e}");
        let e = Mirror::parse_flag("https://dl.k8s.io=http://m/").unwrap_err();
        assert!(e.to_string().contains("must end with '/'"), "{e}");
        let e = Mirror::parse_flag("ftp://x/=http://m/").unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn parses_the_toml_file_and_names_the_file_on_errors() {
        let path = Path::new("/etc/bakery/mirrors.toml");
        let set = MirrorSet::from_toml_str(
            "[[mirror]]\nfrom = \"https://dl.k8s.io/\"\nto = \"http://m.local/k8s/\"\n",
            path,
        )
        .unwrap();
        assert_eq!(set.rules().len(), 1);
        assert_eq!(set.rules()[0].to_prefix(), "http://m.local/k8s/");

        let e = MirrorSet::from_toml_str("[[mirror]]\nfrom = \"https://a/\"\n", path).unwrap_err();
        assert!(e.to_string().contains("/etc/bakery/mirrors.toml"), "{e}");
        assert!(e.to_string().contains("to"), "{e}");

        let e = MirrorSet::from_toml_str(
            "[[mirror]]\nfrom = \"https://a/\"\nto = \"http://b\"\n",
            path,
        )
        .unwrap_err();
        assert!(e.to_string().contains("[[mirror]] #1"), "{e}");

        let e = MirrorSet::from_toml_str("[[mirrors]]\nfrom = 1\n", path).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
