//! `SHA256SUMS` manifests: the index of a feed directory that
//! systemd-sysupdate downloads (and verifies with `SHA256SUMS.gpg`) before
//! choosing an image. Parse strictly, render deterministically.
//!
//! Format, as systemd's `resource_load_from_web()` reads it: every line is
//! `<64 hex> <' '|'*'><file name>\n` — no blank lines, no comments, the last
//! line ends with a newline, no NUL bytes, valid UTF-8, no `\`-escaped
//! names. We accept only plain file names (no `/`, not `.`/`..`, no control
//! characters, at most 255 bytes) and refuse duplicate names.
//!
//! Validity window: an entry named `BEST-BEFORE-YYYY-MM-DD` whose digest is
//! that of the empty file makes systemd (≥ 258) refuse the manifest from
//! that date on (00:00 UTC), which protects nodes against an attacker
//! replaying an old, validly signed manifest. Older systemd sees an entry
//! no pattern matches and ignores it. Several such entries: the earliest
//! wins, as systemd honours all of them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::date::Date;
use crate::digest::Sha256Digest;

/// The SHA-256 of zero bytes, the digest a `BEST-BEFORE-` entry carries.
pub const EMPTY_SHA256: Sha256Digest = Sha256Digest::from_bytes([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);

/// Name prefix of the validity marker entry.
pub const BEST_BEFORE_PREFIX: &str = "BEST-BEFORE-";

/// A file name that may appear in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ManifestName(String);

/// A name that cannot be listed in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest file name {name:?}: {reason}")]
pub struct BadName {
    pub name: String,
    pub reason: &'static str,
}

impl ManifestName {
    pub fn new(name: impl Into<String>) -> Result<Self, BadName> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > 255 {
            Some("longer than 255 bytes")
        } else if name == "." || name == ".." {
            Some("'.' and '..' are not file names")
        } else if name.contains('/') {
            Some("contains '/': only plain file names are allowed")
        } else if name.starts_with('\\') {
            Some("starts with '\\' (an escaped name), which systemd refuses")
        } else if name.chars().any(|c| c.is_control()) {
            Some("contains a control character")
        } else if name.starts_with(BEST_BEFORE_PREFIX) {
            Some("BEST-BEFORE- names are reserved for the validity marker")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(BadName { name, reason }),
            None => Ok(ManifestName(name)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ManifestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ManifestName {
    type Err = BadName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ManifestName::new(s)
    }
}

impl TryFrom<String> for ManifestName {
    type Error = BadName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ManifestName::new(s)
    }
}

impl From<ManifestName> for String {
    fn from(n: ManifestName) -> String {
        n.0
    }
}

impl AsRef<str> for ManifestName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A manifest: file names with their digests, and an optional validity end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    entries: BTreeMap<ManifestName, Sha256Digest>,
    best_before: Option<Date>,
}

/// A manifest that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}: {message}")]
pub struct ManifestError {
    /// What was parsed (file name or URL).
    pub origin: String,
    /// 1-based line number; 0 for the whole file.
    pub line: usize,
    pub message: String,
}

impl Manifest {
    pub fn new() -> Self {
        Manifest::default()
    }

    /// Adds or replaces an entry, returning the digest it replaced.
    pub fn insert(&mut self, name: ManifestName, digest: Sha256Digest) -> Option<Sha256Digest> {
        self.entries.insert(name, digest)
    }

    pub fn remove(&mut self, name: &ManifestName) -> Option<Sha256Digest> {
        self.entries.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&Sha256Digest> {
        self.entries
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, d)| d)
    }

    /// Entries sorted by name.
    pub fn entries(&self) -> impl Iterator<Item = (&ManifestName, &Sha256Digest)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn best_before(&self) -> Option<Date> {
        self.best_before
    }

    pub fn set_best_before(&mut self, date: Option<Date>) {
        self.best_before = date;
    }

    /// Whether the manifest must no longer be used on `today`: systemd
    /// refuses it once the marker's date (00:00 UTC) is in the past.
    pub fn is_expired(&self, today: Date) -> bool {
        self.best_before.is_some_and(|b| today >= b)
    }

    /// Parses manifest bytes; errors name `SHA256SUMS`.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        Manifest::parse_named(bytes, "SHA256SUMS")
    }

    /// Parses manifest bytes; errors name `origin`.
    pub fn parse_named(bytes: &[u8], origin: &str) -> Result<Manifest, ManifestError> {
        let err = |line: usize, message: String| ManifestError {
            origin: origin.to_string(),
            line,
            message,
        };
        if let Some(pos) = bytes.iter().position(|&b| b == 0) {
            let line = 1 + bytes[..pos].iter().filter(|&&b| b == b'\n').count();
            return Err(err(line, "NUL byte in manifest".into()));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            err(line, "manifest is not valid UTF-8".into())
        })?;
        let mut m = Manifest::new();
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut rest = text;
        let mut n = 0;
        while !rest.is_empty() {
            n += 1;
            let Some((line, after)) = rest.split_once('\n') else {
                return Err(err(
                    n,
                    "last line does not end with a newline (truncated manifest?)".into(),
                ));
            };
            rest = after;
            if line.is_empty() {
                return Err(err(
                    n,
                    "empty line: systemd-sysupdate refuses manifests with blank lines".into(),
                ));
            }
            let (hex, tail) = split_at_checked(line, 64).ok_or_else(|| {
                err(
                    n,
                    "expected '<64 hex digits> <space or *><file name>'".into(),
                )
            })?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    n,
                    format!("{hex:?} is not a SHA-256 digest (64 hex digits)"),
                ));
            }
            let digest: Sha256Digest = hex
                .to_ascii_lowercase()
                .parse()
                .map_err(|e| err(n, format!("{e}")))?;
            let name = match tail.as_bytes() {
                [b' ', b' ' | b'*', ..] => &tail[2..],
                [b' ', ..] => {
                    return Err(err(
                        n,
                        "missing binary/text marker (' ' or '*') before the file name".into(),
                    ))
                }
                _ => return Err(err(n, "missing space after the digest".into())),
            };
            if let Some(prev) = seen.insert(name.to_string(), n) {
                return Err(err(
                    n,
                    format!("{name:?} is listed twice (first on line {prev})"),
                ));
            }
            if let Some(date) = name.strip_prefix(BEST_BEFORE_PREFIX) {
                let date: Date = date
                    .parse()
                    .map_err(|e| err(n, format!("validity marker {name:?}: {e}")))?;
                if digest != EMPTY_SHA256 {
                    return Err(err(n, format!("validity marker {name:?} must carry the SHA-256 of the empty file ({EMPTY_SHA256})")));
                }
                m.best_before = Some(m.best_before.map_or(date, |b| b.min(date)));
                continue;
            }
            let name = ManifestName::new(name).map_err(|e| err(n, e.to_string()))?;
            m.entries.insert(name, digest);
        }
        Ok(m)
    }

    /// Renders the manifest: the validity marker first, then entries sorted
    /// by name, each `<hex>  <name>` as `sha256sum` writes it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(d) = self.best_before {
            s.push_str(&format!("{EMPTY_SHA256}  {BEST_BEFORE_PREFIX}{d}\n"));
        }
        for (name, digest) in &self.entries {
            s.push_str(&format!("{digest}  {name}\n"));
        }
        s
    }
}

fn split_at_checked(s: &str, mid: usize) -> Option<(&str, &str)> {
    if s.is_char_boundary(mid) && mid <= s.len() {
        Some(s.split_at(mid))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a3f2b8c1d4e5f67890abcdef1234567890abcdef1234567890abcdef12345678";
    const B: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn parses_sha256sum_output_and_renders_sorted() {
        let text = format!("{B}  z.raw\n{A} *kubernetes-v1.30.1-x86-64.raw\n");
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("z.raw").unwrap().to_hex(), B);
        let out = m.render();
        assert_eq!(
            out,
            format!("{A}  kubernetes-v1.30.1-x86-64.raw\n{B}  z.raw\n")
        );
        assert_eq!(Manifest::parse(out.as_bytes()).unwrap(), m);
        assert_eq!(Manifest::parse(b"").unwrap(), Manifest::new());
    }

    #[test]
    fn uppercase_hex_is_read_like_systemd() {
        let text = format!("{}  x.raw\n", A.to_uppercase());
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.get("x.raw").unwrap().to_hex(), A);
    }

    #[test]
    fn best_before() {
        let e = EMPTY_SHA256;
        let text =
            format!("{e}  BEST-BEFORE-2030-01-02\n{e} *BEST-BEFORE-2029-06-30\n{A}  x.raw\n");
        let m = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(m.best_before().unwrap().to_string(), "2029-06-30");
        assert!(!m.is_expired("2029-06-29".parse().unwrap()));
        assert!(m.is_expired("2029-06-30".parse().unwrap()));
        assert!(m.is_expired("2031-01-01".parse().unwrap()));
        assert_eq!(
            m.render(),
            format!("{e}  BEST-BEFORE-2029-06-30\n{A}  x.raw\n")
        );
        assert!(!Manifest::new().is_expired("9999-12-31".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_line() {
        let e = EMPTY_SHA256;
        let cases: Vec<(String, usize, &str)> = vec![
            (format!("{A}  x\n\n"), 2, "empty line"),
            (format!("{A}  x"), 1, "newline"),
            (
                format!("{A}  x\n{A}  x\n"),
                2,
                "listed twice (first on line 1)",
            ),
            (format!("{A} x\n"), 1, "marker"),
            (format!("{A}x\n"), 1, "missing space"),
            (format!("{}  x\n", &A[..63]), 1, "not a SHA-256"),
            ("short\n".to_string(), 1, "expected"),
            (format!("{A}  a/b\n"), 1, "'/'"),
            (format!("{A}  ..\n"), 1, "'..'"),
            (format!("{A}  \\x\n"), 1, "escaped"),
            (format!("{A}  a\rb\n"), 1, "control"),
            (format!("{A}  x\n{A}  \n"), 2, "empty"),
            (format!("{A}  BEST-BEFORE-2030-01-01\n"), 1, "empty file"),
            (format!("{e}  BEST-BEFORE-2030-02-30\n"), 1, "not a date"),
            (format!("{A}  ok\n{}\n", "é".repeat(40)), 2, "not a SHA-256"),
            (format!("{A}  ok\n{}\n", "é".repeat(3)), 2, "expected"),
            (format!("{A}  ok\na{}\n", "é".repeat(40)), 2, "expected"),
        ];
        for (text, line, want) in cases {
            let err = Manifest::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("SHA256SUMS:{line}: ")),
                "{err}"
            );
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
        let err = Manifest::parse(b"x\n\xff\n").unwrap_err();
        assert_eq!(
            (err.line, err.message.as_str()),
            (2, "manifest is not valid UTF-8")
        );
        let err = Manifest::parse(b"x\ny\0\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn names() {
        assert!(ManifestName::new("kubernetes-v1.30.1-x86-64.raw").is_ok());
        assert!(ManifestName::new("BEST-BEFORE-2030-01-01").is_err());
        assert!(ManifestName::new("x".repeat(256)).is_err());
    }
}
