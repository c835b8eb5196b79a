//! os-release and extension-release files: the `KEY=value` format
//! (os-release(5)), rendering an extension's release file from its recipe,
//! and checking an extension-release against a host's os-release the way
//! systemd-sysext does.
//!
//! The node runtime needs the same check but must not depend on bakery; when
//! it grows one, this module is the candidate to move into a shared crate.

use std::fmt;

use sysupdate::Arch;

use crate::recipe::{OsMatch, Recipe, Scope};

/// Directory inside an image that holds its extension-release file.
pub const EXTENSION_RELEASE_DIR: &str = "usr/lib/extension-release.d";

/// An os-release style file: ordered `KEY=value` pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReleaseFile {
    fields: Vec<(String, String)>,
}

/// A line that is not `KEY=value` in os-release syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ReleaseParseError {
    pub line: usize,
    pub reason: String,
}

impl ReleaseFile {
    /// Parses os-release syntax: `KEY=value` lines, values optionally in
    /// single or double quotes (backslash escapes `\\ \" \$ \``), `#`
    /// comments and blank lines. A later assignment of a key wins.
    pub fn parse(text: &str) -> Result<ReleaseFile, ReleaseParseError> {
        let mut out = ReleaseFile::default();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let err = |reason: &str| ReleaseParseError {
                line: line_no,
                reason: reason.to_string(),
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| err("expected KEY=value"))?;
            let key = key.trim();
            let valid_key = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_key {
                return Err(err("invalid key: use letters, digits and '_'"));
            }
            let value = unquote(value.trim()).map_err(err)?;
            out.set(key, value);
        }
        Ok(out)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing an earlier value in place.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key.to_string(), value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Renders the pairs, one per line, quoting values that need it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(k);
            s.push('=');
            s.push_str(&quote(v));
            s.push('\n');
        }
        s
    }

    /// The extension-release of `recipe`'s image for `arch`.
    pub fn for_extension(recipe: &Recipe, arch: Arch) -> ReleaseFile {
        let mut r = ReleaseFile::default();
        match &recipe.os {
            OsMatch::Any => r.set("ID", "_any"),
            OsMatch::Os {
                id,
                sysext_level,
                version_id,
            } => {
                r.set("ID", id.as_str());
                if let Some(level) = sysext_level {
                    r.set("SYSEXT_LEVEL", level.as_str());
                }
                if let Some(v) = version_id {
                    r.set("VERSION_ID", v.as_str());
                }
            }
        }
        r.set("ARCHITECTURE", arch.as_str());
        let scope: Vec<&str> = recipe.scope.iter().map(|s| s.as_str()).collect();
        r.set("SYSEXT_SCOPE", scope.join(" "));
        if recipe.reload_manager {
            r.set("EXTENSION_RELOAD_MANAGER", "1");
        }
        r.set("SYSEXT_ID", recipe.name.as_str());
        r.set("SYSEXT_VERSION_ID", recipe.version.as_str());
        r.set(
            "SYSEXT_PRETTY_NAME",
            format!("{} {}", recipe.name, recipe.version),
        );
        r
    }
}

fn unquote(v: &str) -> Result<String, &'static str> {
    let mut out = String::new();
    let mut chars = v.chars();
    match v.chars().next() {
        Some(q @ ('"' | '\'')) => {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == q {
                    closed = true;
                    break;
                }
                if c == '\\' && q == '"' {
                    match chars.next() {
                        Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                        Some(e) => {
                            out.push('\\');
                            out.push(e);
                        }
                        None => return Err("unterminated quoted value"),
                    }
                } else {
                    out.push(c);
                }
            }
            if !closed {
                return Err("unterminated quoted value");
            }
            if !chars.as_str().trim().is_empty() {
                return Err("text after the closing quote");
            }
        }
        _ => {
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(e) = chars.next() {
                        out.push(e);
                    }
                } else {
                    out.push(c);
                }
            }
        }
    }
    Ok(out)
}

fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '.' | '_' | '-' | '+' | ',' | ':' | '/' | '@' | '%' | '~' | '^'
                )
        });
    if plain {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Why an extension does not fit a host (systemd-sysext's checks, in its
/// order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error("the extension-release file is empty")]
    Empty,
    #[error("the extension's SYSEXT_SCOPE={scope:?} does not include the host scope {host}")]
    Scope { scope: String, host: Scope },
    #[error("the extension is built for architecture {ext} but the host is {host}")]
    Architecture { ext: String, host: Arch },
    #[error("the extension-release has no ID= (use ID=_any to fit every OS)")]
    NoId,
    #[error("the extension is for OS ID={ext:?} but the host's os-release says ID={host:?}")]
    Os { ext: String, host: String },
    #[error("the extension needs SYSEXT_LEVEL={ext:?} but the host has SYSEXT_LEVEL={host:?}")]
    SysextLevel { ext: String, host: String },
    #[error("the extension needs VERSION_ID={ext:?} but the host has VERSION_ID={host:?}")]
    VersionId { ext: String, host: Option<String> },
}

/// The host side of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host<'a> {
    pub os_release: &'a ReleaseFile,
    pub arch: Arch,
    /// `System` on a booted system, `Initrd` in an initrd.
    pub scope: Scope,
}

/// Checks `ext` against the host the way systemd-sysext does
/// (extension-util.c, systemd ≥ 252, without `ID_LIKE` matching).
pub fn check_compatible(ext: &ReleaseFile, host: Host<'_>) -> Result<(), Incompatible> {
    if ext.is_empty() {
        return Err(Incompatible::Empty);
    }
    let scope = ext.get("SYSEXT_SCOPE").unwrap_or("system portable");
    if !scope.split_whitespace().any(|w| w == host.scope.as_str()) {
        return Err(Incompatible::Scope {
            scope: scope.to_string(),
            host: host.scope,
        });
    }
    if let Some(a) = ext
        .get("ARCHITECTURE")
        .filter(|a| !a.is_empty() && *a != "_any")
    {
        if a != host.arch.as_str() {
            return Err(Incompatible::Architecture {
                ext: a.to_string(),
                host: host.arch,
            });
        }
    }
    let id = ext
        .get("ID")
        .filter(|s| !s.is_empty())
        .ok_or(Incompatible::NoId)?;
    if id == "_any" {
        return Ok(());
    }
    let host_id = host.os_release.get("ID").unwrap_or("linux");
    if id != host_id {
        return Err(Incompatible::Os {
            ext: id.to_string(),
            host: host_id.to_string(),
        });
    }
    let host_version = host.os_release.get("VERSION_ID").filter(|s| !s.is_empty());
    let host_level = host
        .os_release
        .get("SYSEXT_LEVEL")
        .filter(|s| !s.is_empty());
    if host_version.is_none() && host_level.is_none() {
        return Ok(());
    }
    let ext_level = ext.get("SYSEXT_LEVEL").filter(|s| !s.is_empty());
    if let (Some(e), Some(h)) = (ext_level, host_level) {
        return if e == h {
            Ok(())
        } else {
            Err(Incompatible::SysextLevel {
                ext: e.to_string(),
                host: h.to_string(),
            })
        };
    }
    if let Some(h) = host_version {
        let e = ext.get("VERSION_ID").unwrap_or_default();
        if e != h {
            return Err(Incompatible::VersionId {
                ext: e.to_string(),
                host: Some(h.to_string()),
            });
        }
    }
    Ok(())
}

impl fmt::Display for ReleaseFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rf(s: &str) -> ReleaseFile {
        ReleaseFile::parse(s).unwrap()
    }

    #[test]
    fn parses_os_release_syntax() {
        let r = rf(
            "# c\n\nID=debian\nNAME=\"Debian GNU/Linux\"\nX='a b'\nY=\"q\\\"\\$\"\n ID_LIKE = x \n",
        );
        assert_eq!(r.get("ID"), Some("debian"));
        assert_eq!(r.get("NAME"), Some("Debian GNU/Linux"));
        assert_eq!(r.get("X"), Some("a b"));
        assert_eq!(r.get("Y"), Some("q\"$"));
        assert_eq!(r.get("ID_LIKE"), Some("x"));
        assert!(ReleaseFile::parse("A=\"x").is_err());
        assert!(ReleaseFile::parse("novalue")
            .unwrap_err()
            .to_string()
            .starts_with("line 1:"));
        assert!(ReleaseFile::parse("1A=x").is_err());
    }

    #[test]
    fn render_round_trips() {
        let mut r = ReleaseFile::default();
        r.set("A", "plain-1.0");
        r.set("B", "two words");
        r.set("C", "q\"$`\\");
        r.set("D", "");
        let text = r.render();
        assert!(text.starts_with("A=plain-1.0\nB=\"two words\"\n"), "{text}");
        assert_eq!(ReleaseFile::parse(&text).unwrap(), r);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*(\n\\PC*){0,5}") {
            let _ = ReleaseFile::parse(&text);
        }

        #[test]
        fn render_then_parse_is_identity(
            fields in proptest::collection::btree_map("[A-Z_][A-Z0-9_]{0,12}", "[^\n\r]{0,20}", 0..6)
        ) {
            let mut r = ReleaseFile::default();
            for (k, v) in &fields {
                // Values as os-release holds them: no surrounding whitespace.
                r.set(k, v.trim());
            }
            proptest::prop_assert_eq!(ReleaseFile::parse(&r.render()).unwrap(), r);
        }
    }

    fn host(os: &ReleaseFile) -> Host<'_> {
        Host {
            os_release: os,
            arch: Arch::X86_64,
            scope: Scope::System,
        }
    }

    #[test]
    fn compatibility_follows_systemd_order() {
        let debian = rf("ID=debian\nVERSION_ID=12\n");
        let flatcar = rf("ID=flatcar\nVERSION_ID=3815.2.0\nSYSEXT_LEVEL=1.0\n");
        let ok = |e: &str, h: &ReleaseFile| check_compatible(&rf(e), host(h));
        assert_eq!(ok("", &debian), Err(Incompatible::Empty));
        assert!(ok("ID=_any\n", &debian).is_ok());
        assert!(ok("ID=_any\nARCHITECTURE=x86-64\n", &debian).is_ok());
        assert!(matches!(
            ok("ID=_any\nARCHITECTURE=arm64\n", &debian),
            Err(Incompatible::Architecture { .. })
        ));
        assert!(matches!(
            ok("ID=_any\nSYSEXT_SCOPE=initrd\n", &debian),
            Err(Incompatible::Scope { .. })
        ));
        assert_eq!(
            ok("ARCHITECTURE=x86-64\n", &debian),
            Err(Incompatible::NoId)
        );
        let e = ok("ID=otheros\n", &debian).unwrap_err();
        assert!(
            e.to_string().contains("\"otheros\"") && e.to_string().contains("\"debian\""),
            "{e}"
        );
        assert!(ok("ID=debian\nVERSION_ID=12\n", &debian).is_ok());
        assert!(matches!(
            ok("ID=debian\n", &debian),
            Err(Incompatible::VersionId { .. })
        ));
        assert!(ok("ID=flatcar\nSYSEXT_LEVEL=1.0\n", &flatcar).is_ok());
        assert!(matches!(
            ok("ID=flatcar\nSYSEXT_LEVEL=2.0\n", &flatcar),
            Err(Incompatible::SysextLevel { .. })
        ));
        assert!(ok("ID=flatcar\nVERSION_ID=3815.2.0\n", &flatcar).is_ok());
        assert!(ok("ID=debian\n", &rf("ID=debian\n")).is_ok());
    }
}
