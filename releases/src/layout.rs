//! The feed's naming scheme: image and sidecar file names, streams (the
//! default one and Kubernetes-style minor streams), their match patterns
//! and transfer-file names, and the feed's base URL.
//!
//! ```text
//! FEED/catalogue.json, catalogue.json.gpg
//! FEED/NAME/NAME-VERSION-ARCH.raw          images (signed DDIs)
//! FEED/NAME/NAME-VERSION-ARCH.verity …     sidecars, if any
//! FEED/NAME/SHA256SUMS, SHA256SUMS.gpg     the signed manifest
//! FEED/NAME/NAME.conf, NAME.transfer       default stream
//! FEED/NAME/NAME-v1.30.conf, ….transfer    minor streams
//! FEED/NAME/NAME[-v1.30]-ARCH.bu, ….ign    node snippets
//! ```

use std::cmp::Ordering;
use std::fmt;

use sysupdate::{Arch, Version};

use crate::name::{ExtensionName, FeedFileName};

/// Suffixes of the sidecar files a bare (non-DDI) image may carry, as
/// systemd looks for them next to `NAME.raw` (with `.raw` stripped).
pub const SIDECAR_SUFFIXES: [&str; 3] = [".verity", ".roothash", ".roothash.p7s"];

/// `NAME-VERSION-ARCH.raw`.
pub fn image_file_name(name: &ExtensionName, version: &Version, arch: Arch) -> String {
    format!("{name}-{version}-{arch}.raw")
}

/// `NAME-VERSION-ARCH` + suffix, e.g. `.verity`.
pub fn sidecar_file_name(
    name: &ExtensionName,
    version: &Version,
    arch: Arch,
    suffix: &str,
) -> String {
    format!("{name}-{version}-{arch}{suffix}")
}

/// Why a file name is not `NAME-VERSION-ARCH.raw`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadImageFileName {
    #[error("not an image: the name does not end in .raw")]
    NotRaw,
    #[error("the name does not end in -ARCH.raw with a systemd architecture (x86-64, arm64, …)")]
    NoArch,
    #[error("the name does not start with {0}-")]
    WrongName(ExtensionName),
    #[error("cannot tell the extension name from the version in the file name; pass --name NAME")]
    Ambiguous,
    #[error("{0}")]
    BadName(String),
    #[error("{0}")]
    BadVersion(String),
}

/// Splits `NAME-VERSION-ARCH.raw` into its parts. The longest
/// architecture suffix wins, the same as a node of that architecture would
/// match `NAME-@v-%a.raw`. With `name`, the file must start with `NAME-`;
/// without, the version starts at the first `-` that is followed by a
/// digit (or by `v` and a digit, as in `kubernetes-v1.30.4`).
pub fn split_image_file_name(
    file: &str,
    name: Option<&ExtensionName>,
) -> Result<(ExtensionName, Version, Arch), BadImageFileName> {
    split_stem(
        file.strip_suffix(".raw").ok_or(BadImageFileName::NotRaw)?,
        name,
    )
}

/// Splits `NAME-VERSION-ARCH.raw` of extension `name` back into version
/// and architecture; `None` if the file is not such an image.
pub fn parse_image_file_name(name: &ExtensionName, file: &str) -> Option<(Version, Arch)> {
    split_image_file_name(file, Some(name))
        .ok()
        .map(|(_, v, a)| (v, a))
}

/// Splits `NAME-VERSION-ARCH{suffix}` for a sidecar suffix.
pub fn parse_sidecar_file_name(
    name: &ExtensionName,
    file: &str,
) -> Option<(Version, Arch, &'static str)> {
    // Longest suffix first: `.roothash.p7s` before `.roothash`.
    let mut suffixes = SIDECAR_SUFFIXES;
    suffixes.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for suffix in suffixes {
        if let Some(stem) = file.strip_suffix(suffix) {
            return split_stem(stem, Some(name))
                .ok()
                .map(|(_, v, a)| (v, a, suffix));
        }
    }
    None
}

/// Splits `NAME-VERSION-ARCH` (see [`split_image_file_name`]).
fn split_stem(
    stem: &str,
    name: Option<&ExtensionName>,
) -> Result<(ExtensionName, Version, Arch), BadImageFileName> {
    // The longest architecture suffix wins (`x86-64` over `64`-ish ones).
    let (rest, arch) = Arch::ALL
        .iter()
        .filter_map(|a| {
            stem.strip_suffix(a.as_str())
                .and_then(|r| r.strip_suffix('-'))
                .map(|r| (r, *a))
        })
        .max_by_key(|(_, a)| a.as_str().len())
        .ok_or(BadImageFileName::NoArch)?;
    let (n, v) = match name {
        Some(n) => {
            let v = rest
                .strip_prefix(n.as_str())
                .and_then(|r| r.strip_prefix('-'))
                .ok_or_else(|| BadImageFileName::WrongName(n.clone()))?;
            (n.clone(), v)
        }
        None => {
            let b = rest.as_bytes();
            let at = (0..b.len())
                .find(|&i| {
                    i > 0
                        && b[i] == b'-'
                        && (b.get(i + 1).is_some_and(u8::is_ascii_digit)
                            || (b.get(i + 1) == Some(&b'v')
                                && b.get(i + 2).is_some_and(u8::is_ascii_digit)))
                })
                .ok_or(BadImageFileName::Ambiguous)?;
            let n = ExtensionName::new(&rest[..at])
                .map_err(|e| BadImageFileName::BadName(e.to_string()))?;
            (n, &rest[at + 1..])
        }
    };
    let version = Version::new(v).map_err(|e| BadImageFileName::BadVersion(e.to_string()))?;
    Ok((n, version, arch))
}

/// How an extension's versions are grouped into streams a node can follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPolicy {
    /// One stream: every version.
    Single,
    /// The default stream plus one per `vMAJOR.MINOR` line (kubernetes,
    /// k3s, rke2): a node on `v1.30` never jumps to `v1.31`.
    Minor,
}

/// A stream of an extension: `None` is the default stream (all versions),
/// `Some("v1.30")` a minor line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stream(Option<String>);

impl Stream {
    pub const DEFAULT: Stream = Stream(None);

    /// The minor line `prefix` (e.g. `v1.30`).
    pub fn minor(prefix: impl Into<String>) -> Stream {
        Stream(Some(prefix.into()))
    }

    /// `None` for the default stream, else e.g. `v1.30`.
    pub fn minor_prefix(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// `default` or the minor line, for catalogues and messages.
    pub fn id(&self) -> &str {
        self.0.as_deref().unwrap_or("default")
    }

    /// The base of the transfer and snippet file names: `NAME` or
    /// `NAME-v1.30`.
    pub fn stem(&self, name: &ExtensionName) -> String {
        match &self.0 {
            None => name.to_string(),
            Some(p) => format!("{name}-{p}"),
        }
    }

    /// The `MatchPattern=` of this stream: `NAME-@v-%a.raw` or
    /// `NAME-v1.30.@v-%a.raw`.
    pub fn pattern(&self, name: &ExtensionName) -> String {
        match &self.0 {
            None => format!("{name}-@v-%a.raw"),
            Some(p) => format!("{name}-{p}.@v-%a.raw"),
        }
    }

    /// Whether `version` belongs to this stream.
    pub fn contains(&self, version: &Version) -> bool {
        match &self.0 {
            None => true,
            Some(p) => minor_line(version).is_some_and(|(q, _)| q == p),
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl Ord for Stream {
    /// The default stream first, then minor lines oldest first.
    fn cmp(&self, other: &Self) -> Ordering {
        match (&self.0, &other.0) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Less,
            (Some(_), None) => Ordering::Greater,
            (Some(a), Some(b)) => sysupdate::version::compare(a, b).then_with(|| a.cmp(b)),
        }
    }
}

impl PartialOrd for Stream {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Splits `v1.30.4+k3s1` into the minor line `v1.30` and the rest `4+k3s1`
/// (what `@v` captures in the stream's pattern). The leading `v` is
/// optional; both numbers must be plain decimal.
pub fn minor_line(version: &Version) -> Option<(&str, &str)> {
    let s = version.as_str();
    let body = s.strip_prefix('v').unwrap_or(s);
    let mut parts = body.splitn(3, '.');
    let major = parts.next()?;
    let minor = parts.next()?;
    let rest = parts.next()?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) || rest.is_empty() {
        return None;
    }
    let prefix_len = s.len() - rest.len() - 1;
    Some((&s[..prefix_len], rest))
}

/// The streams `version` belongs to under `policy` (always the default).
pub fn streams_of(policy: StreamPolicy, version: &Version) -> Vec<Stream> {
    let mut v = vec![Stream::DEFAULT];
    if policy == StreamPolicy::Minor {
        if let Some((p, _)) = minor_line(version) {
            v.push(Stream::minor(p));
        }
    }
    v
}

/// Where a feed is served: a template with `{name}` standing for the
/// extension name (e.g. `https://github.com/O/R/releases/download/{name}/`),
/// or a plain base URL to which `NAME/` is appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedUrl(String);

/// A base URL that cannot be put into transfer files and snippets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid feed URL {text:?}: {reason}")]
pub struct BadFeedUrl {
    pub text: String,
    pub reason: &'static str,
}

impl FeedUrl {
    pub fn new(s: impl Into<String>) -> Result<FeedUrl, BadFeedUrl> {
        let text = s.into();
        let reason = if !(text.starts_with("https://") || text.starts_with("http://")) {
            Some("it must start with https:// (or http:// for local tests)")
        } else if text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\'))
        {
            Some("it must not contain whitespace, quotes or backslashes")
        } else if text.contains('%') {
            Some("it must not contain '%' (systemd expands %-specifiers in Path=); use plain characters")
        } else if text.contains('?') || text.contains('#') {
            Some("it must not contain a query or fragment: sysupdate appends file names to it")
        } else if text.matches("{name}").count() > 1 {
            Some("{name} may appear at most once")
        } else if text.replace("{name}", "").contains(['{', '}']) {
            Some("the only placeholder is {name}")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(BadFeedUrl { text, reason }),
            None => Ok(FeedUrl(text)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL directory of one extension's feed, ending in `/`.
    pub fn for_extension(&self, name: &ExtensionName) -> String {
        let mut u = if self.0.contains("{name}") {
            self.0.replace("{name}", name.as_str())
        } else {
            format!("{}/{name}", self.0.trim_end_matches('/'))
        };
        if !u.ends_with('/') {
            u.push('/');
        }
        u
    }

    /// The URL of one file of an extension's feed, the name
    /// percent-encoded (`+` becomes `%2B`).
    pub fn file_url(&self, name: &ExtensionName, file: &FeedFileName) -> String {
        let mut u = self.for_extension(name);
        for b in file.as_str().bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
                u.push(b as char);
            } else {
                u.push_str(&format!("%{b:02X}"));
            }
        }
        u
    }
}

impl fmt::Display for FeedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> ExtensionName {
        ExtensionName::new(s).unwrap()
    }
    fn v(s: &str) -> Version {
        Version::new(s).unwrap()
    }

    #[test]
    fn image_names_round_trip() {
        for (name, ver, arch) in [
            ("kubernetes", "v1.30.4", Arch::X86_64),
            ("k3s", "v1.30.4+k3s1", Arch::Arm64),
            ("x", "1.0-rc1", Arch::X86),
            ("x", "1-x86", Arch::Arm),
        ] {
            let f = image_file_name(&n(name), &v(ver), arch);
            assert_eq!(
                parse_image_file_name(&n(name), &f),
                Some((v(ver), arch)),
                "{f}"
            );
        }
        assert_eq!(
            parse_image_file_name(&n("kubernetes"), "kubernetes-v1-mips.raw"),
            None
        );
        assert_eq!(parse_image_file_name(&n("k"), "kx-1-x86-64.raw"), None);
        assert_eq!(
            parse_sidecar_file_name(&n("k"), "k-1-x86-64.roothash.p7s"),
            Some((v("1"), Arch::X86_64, ".roothash.p7s"))
        );
    }

    #[test]
    fn image_names_split() {
        let split = split_image_file_name;
        let (name, v, a) = split("hello-1.0.0-x86-64.raw", None).unwrap();
        assert_eq!(
            (name.as_str(), v.as_str(), a),
            ("hello", "1.0.0", Arch::X86_64)
        );
        let (name, v, a) = split("kubernetes-v1.30.4-arm64.raw", None).unwrap();
        assert_eq!(
            (name.as_str(), v.as_str(), a),
            ("kubernetes", "v1.30.4", Arch::Arm64)
        );
        let (name, v, _) = split("docker-compose-2.29.1-x86-64.raw", None).unwrap();
        assert_eq!((name.as_str(), v.as_str()), ("docker-compose", "2.29.1"));
        let (name, v, _) = split("k3s-v1.30.4+k3s1-x86-64.raw", None).unwrap();
        assert_eq!((name.as_str(), v.as_str()), ("k3s", "v1.30.4+k3s1"));
        // An explicit name settles names with digits after a dash.
        let (name, v, _) = split("tool-2fa-1.0-x86-64.raw", Some(&n("tool-2fa"))).unwrap();
        assert_eq!((name.as_str(), v.as_str()), ("tool-2fa", "1.0"));
        assert!(split("hello-1.0.0-x86-64.img", None).is_err());
        assert!(split("hello-1.0.0-sparc.raw", None)
            .unwrap_err()
            .to_string()
            .contains("architecture"));
        assert!(split("hello-x86-64.raw", None)
            .unwrap_err()
            .to_string()
            .contains("--name"));
        assert!(split("other-1-x86-64.raw", Some(&n("hello")))
            .unwrap_err()
            .to_string()
            .contains("hello-"));
    }

    #[test]
    fn minor_lines() {
        assert_eq!(minor_line(&v("v1.30.4")), Some(("v1.30", "4")));
        assert_eq!(minor_line(&v("v1.30.4+k3s1")), Some(("v1.30", "4+k3s1")));
        assert_eq!(minor_line(&v("1.2.3-rc1")), Some(("1.2", "3-rc1")));
        assert_eq!(minor_line(&v("v1.30")), None);
        assert_eq!(minor_line(&v("v1.x.3")), None);
        let s = Stream::minor("v1.30");
        assert!(s.contains(&v("v1.30.10")));
        assert!(!s.contains(&v("v1.300.1")));
        assert_eq!(s.pattern(&n("kubernetes")), "kubernetes-v1.30.@v-%a.raw");
        assert!(Stream::minor("v1.9") < Stream::minor("v1.10"));
        assert!(Stream::DEFAULT < Stream::minor("v1.9"));
    }

    #[test]
    fn stream_patterns_match_their_images_only() {
        let name = n("k3s");
        let s = Stream::minor("v1.30");
        let pat = sysupdate::pattern::PatternTemplate::new(s.pattern(&name))
            .unwrap()
            .for_arch(Arch::X86_64)
            .unwrap();
        let c = pat
            .matches(&image_file_name(&name, &v("v1.30.4+k3s1"), Arch::X86_64))
            .unwrap();
        assert_eq!(c.version, Some(v("4+k3s1")));
        assert!(pat
            .matches(&image_file_name(&name, &v("v1.31.0+k3s1"), Arch::X86_64))
            .is_none());
        assert!(pat
            .matches(&image_file_name(&name, &v("v1.30.4+k3s1"), Arch::Arm64))
            .is_none());
        assert!(pat.matches("k3s-v1.30.4+k3s1-x86-64.verity").is_none());
    }

    #[test]
    fn feed_urls() {
        let u = FeedUrl::new("https://example.org/feed").unwrap();
        assert_eq!(u.for_extension(&n("k3s")), "https://example.org/feed/k3s/");
        let g = FeedUrl::new("https://github.com/o/r/releases/download/{name}").unwrap();
        assert_eq!(
            g.for_extension(&n("k3s")),
            "https://github.com/o/r/releases/download/k3s/"
        );
        let f = FeedFileName::new("k3s-v1.30.4+k3s1-x86-64.raw").unwrap();
        assert_eq!(
            g.file_url(&n("k3s"), &f),
            "https://github.com/o/r/releases/download/k3s/k3s-v1.30.4%2Bk3s1-x86-64.raw"
        );
        for bad in [
            "ftp://x",
            "https://x/%a",
            "https://x/ y",
            "https://x/?q",
            "https://{name}/{name}",
        ] {
            assert!(FeedUrl::new(bad).is_err(), "{bad}");
        }
    }
}
