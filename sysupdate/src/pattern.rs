//! sysupdate match patterns (`kubernetes-v1.30.@v-%a.raw`): parsing, matching
//! file names and capturing their fields, and rendering names back.
//!
//! Two stages, as in systemd: a [`PatternTemplate`] is the text written in a
//! transfer file, which may hold `%` specifiers; expanding it against a
//! [`SpecifierContext`] gives a [`MatchPattern`], which holds only literals,
//! `/` and `@` wildcards. The rules follow systemd's `sysupdate-pattern.c`:
//! - wildcards: `@v` version (mandatory), `@u` partition UUID, `@f` partition
//!   flags, `@a` no-auto, `@g` growfs, `@r` read-only, `@t` mtime, `@m` mode,
//!   `@s` size, `@d` tries done, `@l` tries left, `@h` sha256; `@@` is a
//!   literal `@`;
//! - each wildcard at most once, and two wildcards need a literal (or `/`)
//!   between them;
//! - a wildcard captures up to the *first* occurrence of the following
//!   literal (no backtracking), or to the end; the whole name must be used;
//! - control characters, non-ASCII and `$ * ? [ ] ! \ |` are refused.
//!
//! Templates additionally refuse whitespace and quotes: newer systemd splits
//! `MatchPattern=` on whitespace and unquotes words, older systemd does not,
//! so such a pattern means different things on different nodes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::digest::Sha256Digest;
use crate::specifier::{self, SpecifierContext, SpecifierError};
use crate::version::Version;

/// One `@` wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Version,
    PartitionUuid,
    PartitionFlags,
    Mtime,
    Mode,
    Size,
    TriesDone,
    TriesLeft,
    NoAuto,
    ReadOnly,
    GrowFs,
    Sha256,
}

impl Field {
    pub const ALL: [Field; 12] = [
        Field::Version,
        Field::PartitionUuid,
        Field::PartitionFlags,
        Field::Mtime,
        Field::Mode,
        Field::Size,
        Field::TriesDone,
        Field::TriesLeft,
        Field::NoAuto,
        Field::ReadOnly,
        Field::GrowFs,
        Field::Sha256,
    ];

    /// The letter after `@`.
    pub fn letter(self) -> char {
        match self {
            Field::Version => 'v',
            Field::PartitionUuid => 'u',
            Field::PartitionFlags => 'f',
            Field::Mtime => 't',
            Field::Mode => 'm',
            Field::Size => 's',
            Field::TriesDone => 'd',
            Field::TriesLeft => 'l',
            Field::NoAuto => 'a',
            Field::ReadOnly => 'r',
            Field::GrowFs => 'g',
            Field::Sha256 => 'h',
        }
    }

    pub fn from_letter(c: char) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.letter() == c)
    }

    fn describe(self) -> &'static str {
        match self {
            Field::Version => "version",
            Field::PartitionUuid => "partition UUID",
            Field::PartitionFlags => "partition flags",
            Field::Mtime => "modification time",
            Field::Mode => "access mode",
            Field::Size => "size",
            Field::TriesDone => "tries done",
            Field::TriesLeft => "tries left",
            Field::NoAuto => "no-auto flag",
            Field::ReadOnly => "read-only flag",
            Field::GrowFs => "growfs flag",
            Field::Sha256 => "SHA-256",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    Literal(String),
    Field(Field),
    Slash,
}

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern {pattern:?}: unknown wildcard '@{letter}': use one of @v @u @f @t @m @s @d @l @a @r @g @h, or @@ for a literal @")]
    UnknownWildcard { pattern: String, letter: char },
    #[error("pattern {pattern:?}: wildcard '@{letter}' appears twice; each may appear once")]
    RepeatedWildcard { pattern: String, letter: char },
    #[error("pattern {pattern:?}: wildcards '@{first}' and '@{second}' are adjacent; put a literal between them so names can be split")]
    AdjacentWildcards {
        pattern: String,
        first: char,
        second: char,
    },
    #[error("pattern {pattern:?} ends with a lone '@': write @@ for a literal @")]
    TrailingAt { pattern: String },
    #[error("pattern {pattern:?} has no '@v': every pattern must capture the version")]
    NoVersion { pattern: String },
    #[error("pattern {pattern:?}: character {ch:?} is not allowed (control characters, non-ASCII and $ * ? [ ] ! \\ | are refused)")]
    ForbiddenChar { pattern: String, ch: char },
    #[error("pattern {pattern:?}: whitespace and quotes are not allowed (systemd versions disagree on how to split them)")]
    Unportable { pattern: String },
    #[error("pattern {pattern:?} is empty")]
    Empty { pattern: String },
    #[error(transparent)]
    Specifier(#[from] SpecifierError),
    #[error("pattern {pattern:?}: cannot render, no value for @{letter} ({what})")]
    MissingField {
        pattern: String,
        letter: char,
        what: &'static str,
    },
    #[error("pattern {pattern:?}: cannot render, {what} {value:?} is not valid for @{letter}")]
    InvalidField {
        pattern: String,
        letter: char,
        what: &'static str,
        value: String,
    },
    #[error("pattern {pattern:?}: rendered name {name:?} would not match the pattern again (a captured value contains the literal that follows it)")]
    Ambiguous { pattern: String, name: String },
}

/// The fields captured from a name (what systemd calls instance metadata).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Captures {
    pub version: Option<Version>,
    pub partition_uuid: Option<uuid::Uuid>,
    pub partition_flags: Option<u64>,
    pub mtime: Option<u64>,
    pub mode: Option<u32>,
    pub size: Option<u64>,
    pub tries_done: Option<u64>,
    pub tries_left: Option<u64>,
    pub no_auto: Option<bool>,
    pub read_only: Option<bool>,
    pub growfs: Option<bool>,
    pub sha256: Option<Sha256Digest>,
}

impl Captures {
    /// Captures holding only a version.
    pub fn version(v: Version) -> Self {
        Captures {
            version: Some(v),
            ..Captures::default()
        }
    }
}

/// Re-exported from [`crate::version`], which owns the version charset;
/// kept here because the rule is about `@v` captures.
pub use crate::version::is_sysupdate_version;

fn valid_pattern_char(c: char) -> bool {
    (' '..'\x7f').contains(&c) && !matches!(c, '$' | '*' | '?' | '[' | ']' | '!' | '\\' | '|')
}

/// A match pattern with all specifiers expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchPattern {
    text: String,
    elements: Vec<Element>,
}

impl MatchPattern {
    /// Parses an expanded pattern (no `%` specifiers are interpreted here; a
    /// `%` is a literal).
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err_pattern = || text.to_string();
        if text.is_empty() {
            return Err(PatternError::Empty {
                pattern: err_pattern(),
            });
        }
        let mut elements: Vec<Element> = Vec::new();
        let mut seen: Vec<Field> = Vec::new();
        let mut chars = text.chars();
        let push_literal = |elements: &mut Vec<Element>, c: char| match elements.last_mut() {
            Some(Element::Literal(s)) => s.push(c),
            _ => elements.push(Element::Literal(c.to_string())),
        };
        while let Some(c) = chars.next() {
            match c {
                '@' => match chars.next() {
                    None => {
                        return Err(PatternError::TrailingAt {
                            pattern: err_pattern(),
                        })
                    }
                    Some('@') => push_literal(&mut elements, '@'),
                    Some(l) => {
                        let f =
                            Field::from_letter(l).ok_or_else(|| PatternError::UnknownWildcard {
                                pattern: err_pattern(),
                                letter: l,
                            })?;
                        if seen.contains(&f) {
                            return Err(PatternError::RepeatedWildcard {
                                pattern: err_pattern(),
                                letter: l,
                            });
                        }
                        if let Some(Element::Field(prev)) = elements.last() {
                            return Err(PatternError::AdjacentWildcards {
                                pattern: err_pattern(),
                                first: prev.letter(),
                                second: l,
                            });
                        }
                        seen.push(f);
                        elements.push(Element::Field(f));
                    }
                },
                '/' => elements.push(Element::Slash),
                c if valid_pattern_char(c) => push_literal(&mut elements, c),
                c => {
                    return Err(PatternError::ForbiddenChar {
                        pattern: err_pattern(),
                        ch: c,
                    })
                }
            }
        }
        if !seen.contains(&Field::Version) {
            return Err(PatternError::NoVersion {
                pattern: err_pattern(),
            });
        }
        Ok(MatchPattern {
            text: text.to_string(),
            elements,
        })
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The wildcards the pattern uses, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        self.elements.iter().filter_map(|e| match e {
            Element::Field(f) => Some(*f),
            _ => None,
        })
    }

    /// The literal text before the first wildcard (e.g. `kubernetes-v1.30.`).
    pub fn literal_prefix(&self) -> String {
        let mut out = String::new();
        for e in &self.elements {
            match e {
                Element::Literal(s) => out.push_str(s),
                Element::Slash => out.push('/'),
                Element::Field(_) => break,
            }
        }
        out
    }

    /// Matches a whole name, as systemd does, returning the captured
    /// fields. Each wildcard takes the text up to the first occurrence of the
    /// literal that follows it; captured values must be valid for their
    /// wildcard. A name that ends where the pattern expects a further `/`
    /// component does not match.
    pub fn matches(&self, name: &str) -> Option<Captures> {
        let mut found = Captures::default();
        let mut p = name;
        for (i, e) in self.elements.iter().enumerate() {
            match e {
                Element::Slash => p = p.strip_prefix('/')?,
                Element::Literal(l) => p = p.strip_prefix(l.as_str())?,
                Element::Field(f) => {
                    let end = match self.elements.get(i + 1) {
                        Some(Element::Slash) => p.find('/').unwrap_or(p.len()),
                        Some(Element::Literal(l)) => p.find(l.as_str())?,
                        // Adjacent wildcards are refused at parse time.
                        Some(Element::Field(_)) => return None,
                        None => p.len(),
                    };
                    let (value, rest) = p.split_at(end);
                    capture(*f, value, &mut found)?;
                    p = rest;
                }
            }
        }
        p.is_empty().then_some(found)
    }

    /// Renders a name from captured fields (the inverse of [`matches`]).
    /// Every wildcard in the pattern needs its field; the result is checked
    /// to match back to the same fields.
    ///
    /// [`matches`]: MatchPattern::matches
    pub fn render(&self, c: &Captures) -> Result<String, PatternError> {
        let mut out = String::new();
        for e in &self.elements {
            match e {
                Element::Slash => out.push('/'),
                Element::Literal(l) => out.push_str(l),
                Element::Field(f) => out.push_str(&self.format_field(*f, c)?),
            }
        }
        if self.matches(&out).as_ref() != Some(&normalized(self, c)) {
            return Err(PatternError::Ambiguous {
                pattern: self.text.clone(),
                name: out,
            });
        }
        Ok(out)
    }

    /// Renders a name for a pattern whose only wildcard is `@v`.
    pub fn render_version(&self, v: &Version) -> Result<String, PatternError> {
        self.render(&Captures::version(v.clone()))
    }

    fn format_field(&self, f: Field, c: &Captures) -> Result<String, PatternError> {
        let missing = || PatternError::MissingField {
            pattern: self.text.clone(),
            letter: f.letter(),
            what: f.describe(),
        };
        let bool01 = |b: bool| if b { "1" } else { "0" }.to_string();
        Ok(match f {
            Field::Version => {
                let v = c.version.as_ref().ok_or_else(missing)?;
                if !is_sysupdate_version(v.as_str()) {
                    return Err(PatternError::InvalidField {
                        pattern: self.text.clone(),
                        letter: 'v',
                        what: "version (systemd-sysupdate accepts only A-Z a-z 0-9 . , _ + -)",
                        value: v.to_string(),
                    });
                }
                v.to_string()
            }
            Field::PartitionUuid => c.partition_uuid.ok_or_else(missing)?.simple().to_string(),
            Field::PartitionFlags => format!("{:x}", c.partition_flags.ok_or_else(missing)?),
            Field::Mtime => c.mtime.ok_or_else(missing)?.to_string(),
            Field::Mode => {
                let m = c.mode.ok_or_else(missing)?;
                if m & !0o775 != 0 {
                    return Err(PatternError::InvalidField {
                        pattern: self.text.clone(),
                        letter: 'm',
                        what: "mode (only bits within 0775 are allowed)",
                        value: format!("{m:o}"),
                    });
                }
                format!("{m:03o}")
            }
            Field::Size => c.size.ok_or_else(missing)?.to_string(),
            Field::TriesDone => c.tries_done.ok_or_else(missing)?.to_string(),
            Field::TriesLeft => c.tries_left.ok_or_else(missing)?.to_string(),
            Field::NoAuto => bool01(c.no_auto.ok_or_else(missing)?),
            Field::ReadOnly => bool01(c.read_only.ok_or_else(missing)?),
            Field::GrowFs => bool01(c.growfs.ok_or_else(missing)?),
            Field::Sha256 => c.sha256.ok_or_else(missing)?.to_hex(),
        })
    }
}

/// The captures restricted to the fields the pattern uses (what a match of
/// the rendered name gives back).
fn normalized(p: &MatchPattern, c: &Captures) -> Captures {
    let mut out = Captures::default();
    for f in p.fields() {
        match f {
            Field::Version => out.version = c.version.clone(),
            Field::PartitionUuid => out.partition_uuid = c.partition_uuid,
            Field::PartitionFlags => out.partition_flags = c.partition_flags,
            Field::Mtime => out.mtime = c.mtime,
            Field::Mode => out.mode = c.mode,
            Field::Size => out.size = c.size,
            Field::TriesDone => out.tries_done = c.tries_done,
            Field::TriesLeft => out.tries_left = c.tries_left,
            Field::NoAuto => out.no_auto = c.no_auto,
            Field::ReadOnly => out.read_only = c.read_only,
            Field::GrowFs => out.growfs = c.growfs,
            Field::Sha256 => out.sha256 = c.sha256,
        }
    }
    out
}

fn parse_decimal_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&v| v != u64::MAX)
}

fn parse_boolean(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// Parses a 128-bit ID as systemd's `sd_id128_from_string` does: 32 hex
/// digits, or the 36-character form with dashes at the RFC positions.
fn parse_id128(s: &str) -> Option<uuid::Uuid> {
    let hex: String = match s.len() {
        32 => s.to_string(),
        36 => {
            let b = s.as_bytes();
            if [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
                return None;
            }
            s.chars().filter(|&c| c != '-').collect()
        }
        _ => return None,
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(&hex, &mut bytes).ok()?;
    Some(uuid::Uuid::from_bytes(bytes))
}

fn capture(f: Field, t: &str, found: &mut Captures) -> Option<()> {
    match f {
        Field::Version => {
            if !is_sysupdate_version(t) {
                return None;
            }
            found.version = Some(Version::new(t).ok()?);
        }
        Field::PartitionUuid => found.partition_uuid = Some(parse_id128(t)?),
        Field::PartitionFlags => {
            let h = t
                .strip_prefix("0x")
                .or_else(|| t.strip_prefix("0X"))
                .unwrap_or(t);
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            found.partition_flags = Some(u64::from_str_radix(h, 16).ok()?);
        }
        Field::Mtime => {
            let v = parse_decimal_u64(t)?;
            // Must fit a timespec (seconds as i64).
            if v / 1_000_000 > i64::MAX as u64 {
                return None;
            }
            found.mtime = Some(v);
        }
        Field::Mode => {
            if t.is_empty() || !t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return None;
            }
            let m = u32::from_str_radix(t, 8).ok()?;
            if m > 0o7777 || m & !0o775 != 0 {
                return None;
            }
            found.mode = Some(m);
        }
        Field::Size => found.size = Some(parse_decimal_u64(t)?),
        Field::TriesDone => found.tries_done = Some(parse_decimal_u64(t)?),
        Field::TriesLeft => found.tries_left = Some(parse_decimal_u64(t)?),
        Field::NoAuto => found.no_auto = Some(parse_boolean(t)?),
        Field::ReadOnly => found.read_only = Some(parse_boolean(t)?),
        Field::GrowFs => found.growfs = Some(parse_boolean(t)?),
        Field::Sha256 => {
            if t.len() != 64 {
                return None;
            }
            found.sha256 = Some(t.to_ascii_lowercase().parse().ok()?);
        }
    }
    Some(())
}

impl fmt::Display for MatchPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for MatchPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MatchPattern::parse(s)
    }
}

/// A `MatchPattern=` value as written in a transfer file: may hold `%`
/// specifiers; valid once expanded with any values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PatternTemplate(String);

impl PatternTemplate {
    /// Validates a template: known specifiers, no whitespace or quotes, and
    /// a valid pattern after expansion (checked with placeholder values).
    pub fn new(text: impl Into<String>) -> Result<Self, PatternError> {
        let text = text.into();
        if text
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'')
        {
            return Err(PatternError::Unportable { pattern: text });
        }
        specifier::validate(&text)?;
        // Placeholders: `%a` a real arch, others a plain word, `%T`/`%V`
        // paths as systemd would give them.
        let mut ctx = SpecifierContext::for_arch(Arch::X86_64);
        for (c, _) in specifier::KNOWN {
            let v = match c {
                'T' => "/tmp",
                'V' => "/var/tmp",
                _ => "x",
            };
            ctx.values.insert(c, v.to_string());
        }
        let expanded = specifier::expand(&text, &ctx)?;
        MatchPattern::parse(&expanded).map_err(|e| relabel(e, &text))?;
        Ok(PatternTemplate(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Expands specifiers with `ctx` and parses the result.
    pub fn resolve(&self, ctx: &SpecifierContext) -> Result<MatchPattern, PatternError> {
        let expanded = specifier::expand(&self.0, ctx)?;
        MatchPattern::parse(&expanded)
    }

    /// Expands with only `%a` known.
    pub fn for_arch(&self, arch: Arch) -> Result<MatchPattern, PatternError> {
        self.resolve(&SpecifierContext::for_arch(arch))
    }
}

/// Re-labels a parse error of an expanded placeholder pattern with the
/// template text the user wrote.
fn relabel(e: PatternError, template: &str) -> PatternError {
    let p = template.to_string();
    match e {
        PatternError::UnknownWildcard { letter, .. } => {
            PatternError::UnknownWildcard { pattern: p, letter }
        }
        PatternError::RepeatedWildcard { letter, .. } => {
            PatternError::RepeatedWildcard { pattern: p, letter }
        }
        PatternError::AdjacentWildcards { first, second, .. } => PatternError::AdjacentWildcards {
            pattern: p,
            first,
            second,
        },
        PatternError::TrailingAt { .. } => PatternError::TrailingAt { pattern: p },
        PatternError::NoVersion { .. } => PatternError::NoVersion { pattern: p },
        PatternError::ForbiddenChar { ch, .. } => PatternError::ForbiddenChar { pattern: p, ch },
        PatternError::Empty { .. } => PatternError::Empty { pattern: p },
        other => other,
    }
}

impl fmt::Display for PatternTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PatternTemplate {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PatternTemplate::new(s)
    }
}

impl TryFrom<String> for PatternTemplate {
    type Error = PatternError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PatternTemplate::new(s)
    }
}

impl From<PatternTemplate> for String {
    fn from(p: PatternTemplate) -> String {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn matches_version_and_arch() {
        let t: PatternTemplate = "kubernetes-v1.30.@v-%a.raw".parse().unwrap();
        let p = t.for_arch(Arch::X86_64).unwrap();
        assert_eq!(p.as_str(), "kubernetes-v1.30.@v-x86-64.raw");
        assert_eq!(p.literal_prefix(), "kubernetes-v1.30.");
        let c = p.matches("kubernetes-v1.30.7-x86-64.raw").unwrap();
        assert_eq!(c.version, Some(v("7")));
        assert!(p.matches("kubernetes-v1.31.0-x86-64.raw").is_none());
        assert!(p.matches("kubernetes-v1.30.7-arm64.raw").is_none());
        assert!(p.matches("kubernetes-v1.30.7-x86-64.raw.sig").is_none());
        assert_eq!(
            p.render_version(&v("7")).unwrap(),
            "kubernetes-v1.30.7-x86-64.raw"
        );
    }

    #[test]
    fn captures_up_to_first_occurrence_like_systemd() {
        let p = MatchPattern::parse("k3s-@v-x86-64.raw").unwrap();
        assert_eq!(
            p.matches("k3s-v1.30.2+k3s1-x86-64.raw").unwrap().version,
            Some(v("v1.30.2+k3s1"))
        );
        // The following literal is "-x86-64.raw", so a '-' inside the
        // version is fine.
        assert_eq!(
            p.matches("k3s-1.30-rc1-x86-64.raw").unwrap().version,
            Some(v("1.30-rc1"))
        );
        // '@v' stops at the FIRST "_x": the rest then fails to match.
        let p = MatchPattern::parse("a_@v_x").unwrap();
        assert!(p.matches("a_1_x2_x").is_none());
        // Rendering such a version is refused rather than producing a name
        // that would be read back differently.
        let e = p.render_version(&v("1_x2")).unwrap_err();
        assert!(matches!(e, PatternError::Ambiguous { .. }), "{e}");
    }

    #[test]
    fn version_charset_is_sysupdates() {
        let p = MatchPattern::parse("x_@v.raw").unwrap();
        assert!(p.matches("x_1.0~rc1.raw").is_none());
        assert!(p.matches("x_1^p.raw").is_none());
        assert!(p.matches("x_.raw").is_none());
        assert!(p.matches("x_1,2_3+4.raw").is_some());
        assert!(p.render_version(&v("1.0~rc1")).is_err());
    }

    #[test]
    fn all_fields_round_trip() {
        let p = MatchPattern::parse("img_@v_@u_@f_@t_@m_@s_@d_@l_@a_@r_@g_@h.raw").unwrap();
        let c = Captures {
            version: Some(v("1.2.3")),
            partition_uuid: Some(uuid::Uuid::from_u128(0x0123456789abcdef0123456789abcdef)),
            partition_flags: Some(0x1000000000000000),
            mtime: Some(1_700_000_000_000_000),
            mode: Some(0o444),
            size: Some(4096),
            tries_done: Some(1),
            tries_left: Some(2),
            no_auto: Some(true),
            read_only: Some(false),
            growfs: Some(true),
            sha256: Some(
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                    .parse()
                    .unwrap(),
            ),
        };
        let name = p.render(&c).unwrap();
        assert_eq!(
            name,
            "img_1.2.3_0123456789abcdef0123456789abcdef_1000000000000000_1700000000000000_444_4096_1_2_1_0_1_e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.raw"
        );
        assert_eq!(p.matches(&name), Some(c));
    }

    #[test]
    fn field_values_are_validated() {
        let p = MatchPattern::parse("a_@v_@m").unwrap();
        assert_eq!(p.matches("a_1_666"), None, "world-writable refused");
        assert_eq!(p.matches("a_1_4755"), None, "suid refused");
        assert_eq!(p.matches("a_1_0755").unwrap().mode, Some(0o755));
        assert_eq!(p.matches("a_1_9"), None);
        let p = MatchPattern::parse("a_@v_@u").unwrap();
        let c = p
            .matches("a_1_01234567-89AB-CDEF-0123-456789abcdef")
            .unwrap();
        assert_eq!(
            c.partition_uuid.unwrap().simple().to_string(),
            "0123456789abcdef0123456789abcdef"
        );
        assert!(p.matches("a_1_0123456789abcdef").is_none());
        let p = MatchPattern::parse("a_@v_@r").unwrap();
        assert_eq!(p.matches("a_1_yes").unwrap().read_only, Some(true));
        assert_eq!(p.matches("a_1_maybe"), None);
        let p = MatchPattern::parse("a_@v_@s").unwrap();
        assert_eq!(p.matches("a_1_18446744073709551615"), None);
        assert_eq!(p.matches("a_1_-1"), None);
        let p = MatchPattern::parse("a_@v").unwrap();
        assert!(p
            .render(&Captures::default())
            .unwrap_err()
            .to_string()
            .contains("no value for @v"));
    }

    #[test]
    fn at_at_and_slash() {
        let p = MatchPattern::parse("a@@b-@v").unwrap();
        assert_eq!(p.matches("a@b-3").unwrap().version, Some(v("3")));
        assert_eq!(p.render_version(&v("3")).unwrap(), "a@b-3");
        let p = MatchPattern::parse("dir_@v/file").unwrap();
        assert_eq!(p.matches("dir_3/file").unwrap().version, Some(v("3")));
        assert!(p.matches("dir_3").is_none());
    }

    #[test]
    fn parse_errors() {
        let cases = [
            ("a-@v-@v", "appears twice"),
            ("a-@v@a", "adjacent"),
            ("a-@x", "unknown wildcard '@x'"),
            ("a-@", "lone '@'"),
            ("a-b.raw", "no '@v'"),
            ("a*-@v", "'*' is not allowed"),
            ("a[-@v", "'[' is not allowed"),
            ("a|-@v", "'|' is not allowed"),
            ("a\t-@v", "not allowed"),
            ("é-@v", "not allowed"),
            ("", "empty"),
        ];
        for (p, want) in cases {
            let e = MatchPattern::parse(p).unwrap_err().to_string();
            assert!(e.contains(want), "{p:?}: {e}");
        }
        let e = PatternTemplate::new("a @v").unwrap_err().to_string();
        assert!(e.contains("whitespace"), "{e}");
        let e = PatternTemplate::new("a-@v-%z").unwrap_err().to_string();
        assert!(e.contains("%z"), "{e}");
        let e = PatternTemplate::new("a-%a").unwrap_err();
        assert!(matches!(e, PatternError::NoVersion { .. }), "{e}");
        // Specifier expands to a literal, so `@v%a` is fine.
        assert!(PatternTemplate::new("a-@v%a.raw").is_ok());
        let e = PatternTemplate::new("a-@v-@v").unwrap_err().to_string();
        assert!(e.contains("\"a-@v-@v\""), "{e}");
    }
}
