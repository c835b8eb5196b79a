//! `%` specifiers in transfer-file values (`%a`, `%w`, `%%`, …): which ones
//! systemd-sysupdate knows, and expanding them against a [`SpecifierContext`].
//!
//! systemd expands specifiers in `MatchPattern=`, `Path=`, `CurrentSymlink=`
//! and version settings before anything else looks at the value, with its
//! `system_and_tmp_specifier_table`. We know the same table; a value can be
//! expanded only when the context supplies every specifier it uses.

use std::collections::BTreeMap;
use std::fmt;

use crate::arch::Arch;

/// The specifiers systemd-sysupdate expands (besides `%%`), with what they
/// stand for.
pub const KNOWN: [(char, &str); 15] = [
    ('a', "architecture"),
    ('A', "os-release IMAGE_VERSION"),
    ('b', "boot ID"),
    ('B', "os-release BUILD_ID"),
    ('H', "host name"),
    ('l', "short host name"),
    ('q', "pretty host name"),
    ('m', "machine ID"),
    ('M', "os-release IMAGE_ID"),
    ('o', "os-release ID"),
    ('v', "kernel release"),
    ('w', "os-release VERSION_ID"),
    ('W', "os-release VARIANT_ID"),
    ('T', "temporary directory"),
    ('V', "temporary directory for larger files"),
];

/// What a specifier stands for, or `None` if systemd does not know it.
pub fn describe(c: char) -> Option<&'static str> {
    KNOWN.iter().find(|(k, _)| *k == c).map(|(_, d)| *d)
}

/// Values for specifiers. `%a` comes from `arch`; anything else from
/// `values`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecifierContext {
    pub arch: Option<Arch>,
    pub values: BTreeMap<char, String>,
}

impl SpecifierContext {
    /// A context that can expand `%a` (and `%%`) only.
    pub fn for_arch(arch: Arch) -> Self {
        SpecifierContext {
            arch: Some(arch),
            values: BTreeMap::new(),
        }
    }

    /// Adds a value for specifier `c`.
    pub fn with(mut self, c: char, value: impl Into<String>) -> Self {
        self.values.insert(c, value.into());
        self
    }

    fn value(&self, c: char) -> Option<String> {
        if c == 'a' {
            if let Some(a) = self.arch {
                return Some(a.as_str().to_string());
            }
        }
        self.values.get(&c).cloned()
    }
}

/// A specifier that is malformed, unknown, or has no value here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecifierError {
    #[error("{text:?} ends with a lone '%': write %% for a literal percent sign")]
    Trailing { text: String },
    #[error("{text:?} uses unknown specifier %{spec}: systemd knows %% and {known}")]
    Unknown {
        text: String,
        spec: char,
        known: KnownList,
    },
    #[error("{text:?} uses %{spec} ({what}) but no value for it is known here")]
    Unresolved {
        text: String,
        spec: char,
        what: &'static str,
    },
}

/// Formats the list of known specifiers for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownList;

impl fmt::Display for KnownList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (c, _)) in KNOWN.iter().enumerate() {
            if n > 0 {
                f.write_str(" ")?;
            }
            write!(f, "%{c}")?;
        }
        Ok(())
    }
}

/// Checks that every `%` in `text` starts a specifier systemd knows.
pub fn validate(text: &str) -> Result<(), SpecifierError> {
    walk(text, |_| Ok(String::new())).map(|_| ())
}

/// Expands the specifiers in `text` with `ctx`.
pub fn expand(text: &str, ctx: &SpecifierContext) -> Result<String, SpecifierError> {
    walk(text, |c| {
        ctx.value(c).ok_or_else(|| SpecifierError::Unresolved {
            text: text.to_string(),
            spec: c,
            what: describe(c).unwrap_or("unknown"),
        })
    })
}

/// Whether `text` contains any specifier other than `%%`.
pub fn has_specifiers(text: &str) -> bool {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('%') | None => {}
                Some(_) => return true,
            }
        }
    }
    false
}

fn walk(
    text: &str,
    mut value: impl FnMut(char) -> Result<String, SpecifierError>,
) -> Result<String, SpecifierError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => {
                return Err(SpecifierError::Trailing {
                    text: text.to_string(),
                })
            }
            Some('%') => out.push('%'),
            Some(s) if describe(s).is_some() => out.push_str(&value(s)?),
            Some(s) => {
                return Err(SpecifierError::Unknown {
                    text: text.to_string(),
                    spec: s,
                    known: KnownList,
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_arch_and_percent() {
        let ctx = SpecifierContext::for_arch(Arch::Arm64);
        assert_eq!(expand("k-@v-%a.raw", &ctx).unwrap(), "k-@v-arm64.raw");
        assert_eq!(expand("100%%", &ctx).unwrap(), "100%");
        let ctx = ctx.with('w', "4081.2.0");
        assert_eq!(expand("%w/%a", &ctx).unwrap(), "4081.2.0/arm64");
    }

    #[test]
    fn errors_name_the_specifier() {
        let ctx = SpecifierContext::for_arch(Arch::X86_64);
        let e = expand("x-%w", &ctx).unwrap_err();
        assert!(e.to_string().contains("%w (os-release VERSION_ID)"), "{e}");
        let e = validate("x-%z").unwrap_err();
        assert!(e.to_string().contains("unknown specifier %z"), "{e}");
        let e = validate("x-%").unwrap_err();
        assert!(e.to_string().contains("lone '%'"), "{e}");
        assert!(validate("a%%b%a%A").is_ok());
        assert!(has_specifiers("a%a"));
        assert!(!has_specifiers("a%%b"));
    }
}
