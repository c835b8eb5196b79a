//! UAPI.10 version ordering (systemd's `strverscmp_improved`) and the
//! validated [`Version`] newtype used for feed versions.
//!
//! [`compare`] is a line-by-line port of systemd's algorithm (bytes, not
//! chars; non-ASCII bytes are dropped like any other invalid character):
//! - invalid characters (anything but `[A-Za-z0-9~^.-]`) separate segments
//!   and are otherwise ignored;
//! - `~` sorts before everything, even the end of the string;
//! - then end of string < `-` < `^` < `.` < a segment with no prefix;
//! - numeric segments compare as numbers (leading zeros ignored) and are newer
//!   than alphabetic ones; alphabetic segments compare as strings, longer
//!   newer.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

fn is_valid_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// Compares two version strings exactly like systemd's
/// `strverscmp_improved()` (UAPI.10 "Version Format Specification").
///
/// `Less` means `a` is older than `b`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let a = a.as_bytes();
    let b = b.as_bytes();
    // Byte at `i`, or NUL past the end: mirrors walking a C string.
    let at = |s: &[u8], i: usize| -> u8 { s.get(i).copied().unwrap_or(0) };
    let (mut i, mut j) = (0usize, 0usize);

    loop {
        // Drop leading invalid characters.
        while i < a.len() && !is_valid_version_char(a[i]) {
            i += 1;
        }
        while j < b.len() && !is_valid_version_char(b[j]) {
            j += 1;
        }

        // '~': pre-releases; the string prefixed with '~' is older.
        let (ca, cb) = (at(a, i), at(b, j));
        if ca == b'~' || cb == b'~' {
            let r = (ca != b'~').cmp(&(cb != b'~'));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }

        // At the end of either string, the longer is newer.
        let (ca, cb) = (at(a, i), at(b, j));
        if ca == 0 || cb == 0 {
            return ca.cmp(&cb);
        }

        // '-', '^', '.', in that order: the string prefixed is older.
        for sep in [b'-', b'^', b'.'] {
            let (ca, cb) = (at(a, i), at(b, j));
            if ca == sep || cb == sep {
                let r = (ca != sep).cmp(&(cb != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }

        let (ia, jb);
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            // Numeric segments; one may be empty, numeric is newer than alpha.
            let mut aa = i;
            while at(a, aa).is_ascii_digit() {
                aa += 1;
            }
            let mut bb = j;
            while at(b, bb).is_ascii_digit() {
                bb += 1;
            }
            let r = (i != aa).cmp(&(j != bb));
            if r != Ordering::Equal {
                return r;
            }
            // Skip leading zeros so that 00123 equals 123.
            while at(a, i) == b'0' {
                i += 1;
            }
            while at(b, j) == b'0' {
                j += 1;
            }
            // Longer number is newer; then compare digit strings.
            let r = (aa - i).cmp(&(bb - j));
            if r != Ordering::Equal {
                return r;
            }
            let r = a[i..aa].cmp(&b[j..bb]);
            if r != Ordering::Equal {
                return r;
            }
            ia = aa;
            jb = bb;
        } else {
            // Alphabetic segments.
            let mut aa = i;
            while at(a, aa).is_ascii_alphabetic() {
                aa += 1;
            }
            let mut bb = j;
            while at(b, bb).is_ascii_alphabetic() {
                bb += 1;
            }
            let n = (aa - i).min(bb - j);
            let r = a[i..i + n].cmp(&b[j..j + n]);
            if r != Ordering::Equal {
                return r;
            }
            let r = (aa - i).cmp(&(bb - j));
            if r != Ordering::Equal {
                return r;
            }
            ia = aa;
            jb = bb;
        }
        i = ia;
        j = jb;
    }
}

/// A version string as used in feed file names and `@v` captures:
/// non-empty, characters `[A-Za-z0-9.,_+~^-]`.
///
/// `Ord` is [`compare`]; versions that UAPI considers equal but that are
/// spelled differently (`01` and `1`, `1_0` and `1.0`… where applicable) are
/// ordered by their bytes as a tie-break so that `Ord` agrees with `Eq`
/// and `Hash`. Use [`Version::uapi_eq`] to ask whether two are equivalent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

/// Text that cannot be a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadVersion {
    #[error("empty version: a version needs at least one character")]
    Empty,
    #[error(
        "invalid character {ch:?} in version {text:?}: allowed are A-Z a-z 0-9 and . , _ + ~ ^ -"
    )]
    Char { text: String, ch: char },
}

impl Version {
    /// Validates `s` as a version.
    pub fn new(s: impl Into<String>) -> Result<Self, BadVersion> {
        let s = s.into();
        if s.is_empty() {
            return Err(BadVersion::Empty);
        }
        if let Some(ch) = s.chars().find(|&c| !Self::is_valid_char(c)) {
            return Err(BadVersion::Char { text: s, ch });
        }
        Ok(Version(s))
    }

    /// Whether `c` may appear in a version.
    pub fn is_valid_char(c: char) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, '.' | ',' | '_' | '+' | '~' | '^' | '-')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether systemd-sysupdate accepts this version in an `@v` capture
    /// (no `~` or `^`, which UAPI ordering knows but sysupdate refuses).
    pub fn is_sysupdate_compatible(&self) -> bool {
        is_sysupdate_version(&self.0)
    }

    /// UAPI comparison only, without the byte tie-break of `Ord`.
    pub fn cmp_uapi(&self, other: &Version) -> Ordering {
        compare(&self.0, &other.0)
    }

    /// Whether the two versions are equivalent under UAPI ordering.
    pub fn uapi_eq(&self, other: &Version) -> bool {
        self.cmp_uapi(other) == Ordering::Equal
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Version {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::new(s)
    }
}

impl TryFrom<String> for Version {
    type Error = BadVersion;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Version::new(s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.0
    }
}

impl AsRef<str> for Version {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Whether `s` is a version systemd-sysupdate accepts in `@v`: non-empty,
/// `[A-Za-z0-9.,_+-]`, a valid file name (not `.`/`..`, at most 255 bytes).
/// Note `~` and `^` are *not* accepted there, although UAPI ordering knows
/// them.
pub fn is_sysupdate_version(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b',' | b'_' | b'-' | b'+'))
}

#[cfg(test)]
mod tests {
    //! Vectors transcribed from systemd's src/test/test-string-util.c
    //! (`TEST(strverscmp_improved)` and `TEST(strverscmp_improved_rpm)`).

    use super::*;
    use Ordering::{Equal, Greater, Less};

    fn sign(o: Ordering) -> i32 {
        match o {
            Less => -1,
            Equal => 0,
            Greater => 1,
        }
    }

    #[track_caller]
    fn one(a: &str, b: &str, expected: i32) {
        assert_eq!(sign(compare(a, b)), expected, "compare({a:?}, {b:?})");
    }

    #[track_caller]
    fn newer(older: &str, newer: &str) {
        one(older, newer, -1);
        one(older, older, 0);
        one(newer, older, 1);
        one(newer, newer, 0);
    }

    #[test]
    fn systemd_ordered_list() {
        let versions = [
            "~1",
            "",
            "ab",
            "abb",
            "abc",
            "0001",
            "002",
            "12",
            "122",
            "122.9",
            "123~rc1",
            "123",
            "123-a",
            "123-a.1",
            "123-a1",
            "123-a1.1",
            "123-3",
            "123-3.1",
            "123^patch1",
            "123^1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124",
        ];
        for (n, p) in versions.iter().enumerate() {
            for q in &versions[n + 1..] {
                newer(p, q);
            }
        }
    }

    #[test]
    fn systemd_pairs() {
        newer("123.45-67.88", "123.45-67.89");
        newer("123.45-67.89", "123.45-67.89a");
        newer("123.45-67.ab", "123.45-67.89");
        newer("123.45-67.9", "123.45-67.89");
        newer("123.45-67", "123.45-67.89");
        newer("123.45-66.89", "123.45-67.89");
        newer("123.45-9.99", "123.45-67.89");
        newer("123.42-99.99", "123.45-67.89");
        newer("123-99.99", "123.45-67.89");

        // '~' : pre-releases
        newer("123~rc1-99.99", "123.45-67.89");
        newer("123~rc1-99.99", "123-45.67.89");
        newer("123~rc1-99.99", "123~rc2-67.89");
        newer("123~rc1-99.99", "123^aa2-67.89");
        newer("123~rc1-99.99", "123aa2-67.89");

        // '-' : separator between version and release.
        newer("123-99.99", "123.45-67.89");
        newer("123-99.99", "123^aa2-67.89");
        newer("123-99.99", "123aa2-67.89");

        // '^' : patch releases
        newer("123^45-67.89", "123.45-67.89");
        newer("123^aa1-99.99", "123^aa2-67.89");
        newer("123^aa2-67.89", "123aa2-67.89");

        // '.' : point release
        newer("123.aa2-67.89", "123aa2-67.89");
        newer("123.aa2-67.89", "123.ab2-67.89");

        // invalid characters
        one("123_aa2-67.89", "123aa+2-67.89", 0);
    }

    #[test]
    fn systemd_corner_cases() {
        assert_eq!(compare("123.", "123"), Greater);
        assert_eq!(compare("12_3", "123"), Less);
        assert_eq!(compare("12_3", "12"), Greater);
        assert_eq!(compare("12_3", "12.3"), Greater);
        assert_eq!(compare("123.0", "123"), Greater);
        assert_eq!(compare("123_0", "123"), Greater);
        assert_eq!(compare("123..0", "123.0"), Less);

        // Empty strings or strings with ignored characters only.
        assert_eq!(compare("", ""), Equal);
        assert_eq!(compare("0_", "0"), Equal);
        assert_eq!(compare("_0_", "0"), Equal);
        assert_eq!(compare("_0", "0"), Equal);
        assert_eq!(compare("0", "0___"), Equal);
        assert_eq!(compare("", "_"), Equal);
        assert_eq!(compare("_", ""), Equal);
        assert_eq!(compare("_", "_"), Equal);
        assert_eq!(compare("", "~"), Greater);
        assert_eq!(compare("~", ""), Less);
        assert_eq!(compare("~", "~"), Equal);

        // Non-ASCII digits are not digits.
        assert_eq!(compare("1٠١٢٣٤٥٦٧٨٩", "1"), Equal);
        assert_eq!(compare("1๐๑๒๓๔๕๖๗๘๙", "1"), Equal);
    }

    #[test]
    fn systemd_rpm_vectors() {
        let cases: &[(&str, &str, i32)] = &[
            ("1.0", "1.0", 0),
            ("1.0", "2.0", -1),
            ("2.0", "1.0", 1),
            ("2.0.1", "2.0.1", 0),
            ("2.0", "2.0.1", -1),
            ("2.0.1", "2.0", 1),
            ("2.0.1a", "2.0.1a", 0),
            ("2.0.1a", "2.0.1", 1),
            ("2.0.1", "2.0.1a", -1),
            ("5.5p1", "5.5p1", 0),
            ("5.5p1", "5.5p2", -1),
            ("5.5p2", "5.5p1", 1),
            ("5.5p10", "5.5p10", 0),
            ("5.5p1", "5.5p10", -1),
            ("5.5p10", "5.5p1", 1),
            ("10xyz", "10.1xyz", 1),
            ("10.1xyz", "10xyz", -1),
            ("xyz10", "xyz10", 0),
            ("xyz10", "xyz10.1", -1),
            ("xyz10.1", "xyz10", 1),
            ("xyz.4", "xyz.4", 0),
            ("xyz.4", "8", -1),
            ("8", "xyz.4", 1),
            ("xyz.4", "2", -1),
            ("2", "xyz.4", 1),
            ("5.5p2", "5.6p1", -1),
            ("5.6p1", "5.5p2", 1),
            ("5.6p1", "6.5p1", -1),
            ("6.5p1", "5.6p1", 1),
            ("6.0.rc1", "6.0", 1),
            ("6.0", "6.0.rc1", -1),
            ("10b2", "10a1", 1),
            ("10a2", "10b2", -1),
            ("1.0aa", "1.0aa", 0),
            ("1.0a", "1.0aa", -1),
            ("1.0aa", "1.0a", 1),
            ("10.0001", "10.0001", 0),
            ("10.0001", "10.1", 0),
            ("10.1", "10.0001", 0),
            ("10.0001", "10.0039", -1),
            ("10.0039", "10.0001", 1),
            ("4.999.9", "5.0", -1),
            ("5.0", "4.999.9", 1),
            ("20101121", "20101121", 0),
            ("20101121", "20101122", -1),
            ("20101122", "20101121", 1),
            ("2_0", "2_0", 0),
            ("2.0", "2_0", -1),
            ("2_0", "2.0", 1),
            ("a", "a", 0),
            ("a+", "a+", 0),
            ("a+", "a_", 0),
            ("a_", "a+", 0),
            ("+a", "+a", 0),
            ("+a", "_a", 0),
            ("_a", "+a", 0),
            ("+_", "+_", 0),
            ("_+", "+_", 0),
            ("_+", "_+", 0),
            ("+", "_", 0),
            ("_", "+", 0),
            ("1.0~rc1", "1.0~rc1", 0),
            ("1.0~rc1", "1.0", -1),
            ("1.0", "1.0~rc1", 1),
            ("1.0~rc1", "1.0~rc2", -1),
            ("1.0~rc2", "1.0~rc1", 1),
            ("1.0~rc1~git123", "1.0~rc1~git123", 0),
            ("1.0~rc1~git123", "1.0~rc1", -1),
            ("1.0~rc1", "1.0~rc1~git123", 1),
            ("1.0^", "1.0^", 0),
            ("1.0^", "1.0", 1),
            ("1.0", "1.0^", -1),
            ("1.0^git1", "1.0^git1", 0),
            ("1.0^git1", "1.0", 1),
            ("1.0", "1.0^git1", -1),
            ("1.0^git1", "1.0^git2", -1),
            ("1.0^git2", "1.0^git1", 1),
            ("1.0^git1", "1.01", -1),
            ("1.01", "1.0^git1", 1),
            ("1.0^20160101", "1.0^20160101", 0),
            ("1.0^20160101", "1.0.1", -1),
            ("1.0.1", "1.0^20160101", 1),
            ("1.0^20160101^git1", "1.0^20160101^git1", 0),
            ("1.0^20160102", "1.0^20160101^git1", 1),
            ("1.0^20160101^git1", "1.0^20160102", -1),
            ("1.0~rc1^git1", "1.0~rc1^git1", 0),
            ("1.0~rc1^git1", "1.0~rc1", 1),
            ("1.0~rc1", "1.0~rc1^git1", -1),
            ("1.0^git1~pre", "1.0^git1~pre", 0),
            ("1.0^git1", "1.0^git1~pre", 1),
            ("1.0^git1~pre", "1.0^git1", -1),
            // RPM oddities kept by systemd.
            ("1b.fc17", "1b.fc17", 0),
            ("1b.fc17", "1.fc17", 1),
            ("1.fc17", "1b.fc17", -1),
            ("1g.fc17", "1g.fc17", 0),
            ("1g.fc17", "1.fc17", 1),
            ("1.fc17", "1g.fc17", -1),
            ("1.1.α", "1.1.α", 0),
            ("1.1.α", "1.1.β", 0),
            ("1.1.β", "1.1.α", 0),
            ("1.1.αα", "1.1.α", 0),
            ("1.1.α", "1.1.ββ", 0),
            ("1.1.ββ", "1.1.αα", 0),
        ];
        for &(a, b, e) in cases {
            one(a, b, e);
        }
    }

    #[test]
    fn distribution_suffixes() {
        // k3s / rke2 build suffixes: '+' is a separator, so the suffix is a
        // further segment compared after the upstream version.
        newer("v1.30.2+k3s1", "v1.30.2+k3s2");
        newer("v1.30.2+k3s2", "v1.30.10+k3s1");
        newer("v1.30.2+rke2r1", "v1.30.2+rke2r2");
        newer("v1.30.2", "v1.30.2+k3s1");
        newer("v1.29.9+k3s1", "v1.30.0+k3s1");
        // Semver pre-releases with '-' are NEWER than the release under UAPI
        // (more segments win); only '~' marks a pre-release.
        newer("1.30.0", "1.30.0-rc.1");
        newer("1.30.0~rc1", "1.30.0");
        newer("v1.9", "v1.10");
        one("v1.30.007", "v1.30.7", 0);
    }

    #[test]
    fn version_newtype() {
        let v: Version = "1.30.2+k3s1".parse().unwrap();
        assert_eq!(v.to_string(), "1.30.2+k3s1");
        assert_eq!("".parse::<Version>(), Err(BadVersion::Empty));
        for bad in ["1 2", "1/2", "a*", "1\n", "é"] {
            let e = bad.parse::<Version>().unwrap_err();
            assert!(e.to_string().contains("invalid character"), "{e}");
        }
        let mut vs: Vec<Version> = ["1.10", "1.9", "1.0~rc1", "1.0", "01.0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        vs.sort();
        let got: Vec<&str> = vs.iter().map(Version::as_str).collect();
        assert_eq!(got, ["1.0~rc1", "01.0", "1.0", "1.9", "1.10"]);
        assert!(vs[1].uapi_eq(&vs[2]));
        assert_eq!(serde_json::to_string(&vs[4]).unwrap(), "\"1.10\"");
        let back: Version = serde_json::from_str("\"1.10\"").unwrap();
        assert_eq!(back, vs[4]);
        assert!(serde_json::from_str::<Version>("\"1 0\"").is_err());
    }
}
