//! Version discovery and streams: which versions of an extension (and of
//! its secondary inputs) upstream publishes, and which one a build takes.
//!
//! This module owns listing versions from the sources a recipe's
//! `[upstream]`/`[secondary.NAME]` names — GitHub releases (paginated,
//! `GITHUB_TOKEN`, drafts and pre-releases dropped), a directory listing
//! (Docker's `download.docker.com/linux/static/stable/ARCH/`), Kubernetes'
//! `schedule.yaml`, or a version file — filtering them (`tag` template,
//! `match` glob, valid [`Version`] text), ordering them (UAPI version
//! order: `v1.30.10` is newer than `v1.30.9`, `v1.30.4+k3s2` than
//! `v1.30.4+k3s1`), and streams (`v1.30` = the newest `v1.30.x`).
//! Every request goes through the [`Fetcher`], so mirror rules apply.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use sysupdate::{Arch, Version};

use crate::fetch::github::GithubApi;
use crate::fetch::{parse_url, FetchError, Fetcher};
use crate::recipe::RecipeTemplate;
use crate::source::{Remote, StreamKind, Upstream, Vars, VersionSource, Versions};

/// Largest listing, schedule or version file accepted.
const TEXT_LIMIT: u64 = 8 << 20;

// ---------------------------------------------------------------------------
// Globs
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    One,
    Class(Vec<(char, char)>, bool),
}

/// A shell-style pattern: `*` any text, `?` one character, `[0-9]` or
/// `[!a-z]` a character class; everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    toks: Vec<Tok>,
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let mut toks = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            toks.push(match c {
                '*' => Tok::Any,
                '?' => Tok::One,
                '[' => {
                    let negate = chars.next_if(|&c| c == '!' || c == '^').is_some();
                    let mut ranges = Vec::new();
                    loop {
                        let Some(a) = chars.next() else {
                            return Err(format!("unclosed '[' in {text:?}"));
                        };
                        if a == ']' && !ranges.is_empty() {
                            break;
                        }
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(']') | None => {
                                    return Err(format!("unfinished range in {text:?}"))
                                }
                                Some(b) if b < a => {
                                    return Err(format!("empty range {a}-{b} in {text:?}"))
                                }
                                Some(b) => ranges.push((a, b)),
                            }
                        } else {
                            ranges.push((a, a));
                        }
                    }
                    Tok::Class(ranges, negate)
                }
                c => Tok::Lit(c),
            });
        }
        Ok(Glob {
            text: text.to_string(),
            toks,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        // Iterative matching with backtracking to the last `*`.
        let (mut p, mut i) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < chars.len() {
            let ok = match self.toks.get(p) {
                Some(Tok::Lit(c)) => *c == chars[i],
                Some(Tok::One) => true,
                Some(Tok::Class(r, neg)) => {
                    r.iter().any(|(a, b)| (*a..=*b).contains(&chars[i])) != *neg
                }
                Some(Tok::Any) => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                None => false,
            };
            if ok {
                p += 1;
                i += 1;
            } else if let Some((sp, si)) = star {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            } else {
                return false;
            }
        }
        self.toks[p.min(self.toks.len())..]
            .iter()
            .all(|t| *t == Tok::Any)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// A minor-version stream such as `v1.30`: the versions `v1.30.*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stream(String);

/// Text that is not a stream name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream: expected MAJOR.MINOR with an optional letter prefix, e.g. v1.30")]
pub struct BadStream(pub String);

impl Stream {
    /// The stream of a version: its prefix up to the minor number, if it
    /// has one followed by another `.` (`v1.30.4+k3s1` → `v1.30`).
    pub fn of(version: &Version) -> Option<Stream> {
        let s = version.as_str();
        let letters = s.bytes().take_while(u8::is_ascii_alphabetic).count();
        let rest = &s[letters..];
        let major = rest.bytes().take_while(u8::is_ascii_digit).count();
        if major == 0 || rest.as_bytes().get(major) != Some(&b'.') {
            return None;
        }
        let after = &rest[major + 1..];
        let minor = after.bytes().take_while(u8::is_ascii_digit).count();
        if minor == 0 || after.as_bytes().get(minor) != Some(&b'.') {
            return None;
        }
        Some(Stream(s[..letters + major + 1 + minor].to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `version` belongs to this stream.
    pub fn contains(&self, version: &Version) -> bool {
        Stream::of(version).as_ref() == Some(self)
    }
}

impl FromStr for Stream {
    type Err = BadStream;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // A stream is what `Stream::of` gives for `STREAM.0`.
        let probe = Version::new(format!("{s}.0")).map_err(|_| BadStream(s.to_string()))?;
        match Stream::of(&probe) {
            Some(st) if st.0 == s => Ok(st),
            _ => Err(BadStream(s.to_string())),
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sorts newest first and removes duplicates.
pub fn sort_newest_first(versions: &mut Vec<Version>) {
    versions.sort_by(|a, b| b.cmp(a));
    versions.dedup();
}

/// The newest version, within `stream` if given. `versions` need not be
/// sorted.
pub fn newest<'v>(versions: &'v [Version], stream: Option<&Stream>) -> Option<&'v Version> {
    versions
        .iter()
        .filter(|v| stream.is_none_or(|s| s.contains(v)))
        .max()
}

/// Every stream with its newest version, newest stream first.
pub fn streams(versions: &[Version]) -> Vec<(Stream, Version)> {
    let mut out: Vec<(Stream, Version)> = Vec::new();
    for v in versions {
        let Some(s) = Stream::of(v) else { continue };
        match out.iter_mut().find(|(st, _)| *st == s) {
            Some((_, best)) if *best < *v => *best = v.clone(),
            Some(_) => {}
            None => out.push((s, v.clone())),
        }
    }
    out.sort_by(|a, b| b.1.cmp(&a.1));
    out
}

// ---------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------

/// Version discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url}: {message}")]
    BadListing { url: String, message: String },
    #[error("{what}: upstream lists no usable version{detail}")]
    NoVersions { what: String, detail: String },
    #[error(
        "{recipe}: no version in stream {stream} (newest streams: {available}); \
         pick one of those, or check that the stream exists upstream"
    )]
    EmptyStream {
        recipe: String,
        stream: Stream,
        available: String,
    },
    #[error("{recipe}: has no streams (its [upstream] sets no `streams`); build it as {recipe}, or pick a version with --upstream-version")]
    NoStreams { recipe: String },
    #[error("{recipe}: version {version} is not in stream {stream}")]
    VersionNotInStream {
        recipe: String,
        version: Version,
        stream: Stream,
    },
    #[error(
        "{recipe}: has no [upstream], so its versions cannot be listed; its version is {fixed}"
    )]
    NoUpstream { recipe: String, fixed: String },
    #[error("{0}")]
    Invalid(String),
}

/// Lists versions through a [`Fetcher`].
#[derive(Clone, Debug)]
pub struct Discovery {
    pub fetcher: Fetcher,
    pub github: GithubApi,
}

impl Discovery {
    pub fn new(fetcher: Fetcher, github: GithubApi) -> Discovery {
        Discovery { fetcher, github }
    }

    /// Every version `up` lists, newest first. `main` is the extension's
    /// version (for a secondary's `version-url`); `arches` are the
    /// architectures whose listings must all have a version.
    pub async fn list(
        &self,
        extension: &str,
        remote: &Remote,
        up: &Upstream,
        arches: &[Arch],
        main: Option<&Version>,
    ) -> Result<Vec<Version>, VersionsError> {
        let keep = |v: &str| -> Option<Version> {
            if !v.bytes().any(|b| b.is_ascii_digit()) {
                return None;
            }
            if up.matches.as_ref().is_some_and(|g| !g.matches(v)) {
                return None;
            }
            Version::new(v).ok()
        };
        let mut out: Vec<Version> = match &up.source {
            VersionSource::Github { owner, repo } => {
                let releases = self
                    .github
                    .list_releases(&self.fetcher, owner, repo)
                    .await?;
                releases
                    .iter()
                    .filter_map(|r| up.tag.capture(&Vars::new(), &r.tag_name, "version"))
                    .filter_map(|v| keep(&v))
                    .collect()
            }
            VersionSource::Listing { url, file } => {
                let mut common: Option<BTreeSet<Version>> = None;
                for &arch in arches {
                    let vars = remote.arch_only_vars(extension, arch);
                    let url = url.render(&vars).map_err(VersionsError::Invalid)?;
                    let parsed = parse_url(&url)?;
                    let text = self.fetcher.fetch_text(&parsed, TEXT_LIMIT).await?;
                    let found: BTreeSet<Version> = listing_names(&text)
                        .into_iter()
                        .filter_map(|n| file.capture(&vars, &n, "version"))
                        .filter_map(|v| keep(&v))
                        .collect();
                    common = Some(match common {
                        None => found,
                        Some(c) => c.intersection(&found).cloned().collect(),
                    });
                }
                common.unwrap_or_default().into_iter().collect()
            }
            VersionSource::KubernetesSchedule { url } => {
                let parsed = parse_url(url)?;
                let text = self.fetcher.fetch_text(&parsed, TEXT_LIMIT).await?;
                schedule_versions(&text)
                    .map_err(|message| VersionsError::BadListing {
                        url: url.clone(),
                        message,
                    })?
                    .into_iter()
                    .filter_map(|v| keep(&v))
                    .collect()
            }
            VersionSource::VersionUrl { url } => {
                let Some(main) = main else {
                    return Err(VersionsError::Invalid(
                        "a version-url needs the extension's version".into(),
                    ));
                };
                // The version file is the same for every architecture.
                let arch = arches.first().copied().unwrap_or(Arch::X86_64);
                let mut vars = remote.arch_only_vars(extension, arch);
                vars.insert("version".into(), main.to_string());
                let url = url.render(&vars).map_err(VersionsError::Invalid)?;
                let parsed = parse_url(&url)?;
                let text = self.fetcher.fetch_text(&parsed, 4096).await?;
                let line = text.lines().map(str::trim).find(|l| !l.is_empty());
                let v = line
                    .and_then(|l| up.tag.capture(&Vars::new(), l, "version"))
                    .and_then(|v| keep(&v));
                match v {
                    Some(v) => vec![v],
                    None => {
                        return Err(VersionsError::BadListing {
                            url,
                            message: format!(
                                "expected one version matching {:?}, found {:?}",
                                up.tag.as_str(),
                                line.unwrap_or("")
                            ),
                        })
                    }
                }
            }
        };
        sort_newest_first(&mut out);
        Ok(out)
    }

    /// The extension's versions, newest first.
    pub async fn versions(&self, t: &RecipeTemplate) -> Result<Vec<Version>, VersionsError> {
        let (remote, up) = upstream_of(t)?;
        let v = self
            .list(t.name.as_str(), remote, up, &t.architectures, None)
            .await?;
        if v.is_empty() {
            return Err(no_versions(t.name.as_str(), up));
        }
        Ok(v)
    }

    /// The versions a build of `t` uses: `want` (or the recipe's fixed
    /// version, or the newest in `stream`, or the newest) and the newest
    /// of each secondary input.
    pub async fn resolve(
        &self,
        t: &RecipeTemplate,
        stream: Option<&Stream>,
        want: Option<&Version>,
    ) -> Result<Versions, VersionsError> {
        let name = t.name.as_str();
        if let Some(s) = stream {
            match t.remote.as_ref().and_then(|r| r.upstream.as_ref()) {
                Some(u) if u.streams == Some(StreamKind::Minor) => {}
                _ => {
                    return Err(VersionsError::NoStreams {
                        recipe: name.to_string(),
                    })
                }
            }
            if let Some(w) = want {
                if !s.contains(w) {
                    return Err(VersionsError::VersionNotInStream {
                        recipe: name.to_string(),
                        version: w.clone(),
                        stream: s.clone(),
                    });
                }
            }
        }
        let main = match (want, &t.fixed_version) {
            (Some(w), _) => w.clone(),
            (None, Some(f)) => f.clone(),
            (None, None) => {
                let all = self.versions(t).await?;
                match newest(&all, stream) {
                    Some(v) => v.clone(),
                    None => {
                        let available: Vec<String> = streams(&all)
                            .into_iter()
                            .take(6)
                            .map(|(s, v)| format!("{s} ({v})"))
                            .collect();
                        return Err(VersionsError::EmptyStream {
                            recipe: name.to_string(),
                            stream: stream.cloned().unwrap_or(Stream(String::new())),
                            available: available.join(", "),
                        });
                    }
                }
            }
        };
        let mut secondary = std::collections::BTreeMap::new();
        if let Some(remote) = &t.remote {
            for (sname, up) in &remote.secondary {
                let list = self
                    .list(name, remote, up, &t.architectures, Some(&main))
                    .await?;
                let v = list
                    .into_iter()
                    .next()
                    .ok_or_else(|| VersionsError::NoVersions {
                        what: format!("{name}: [secondary.{sname}]"),
                        detail: describe(up),
                    })?;
                secondary.insert(sname.clone(), v);
            }
        }
        Ok(Versions { main, secondary })
    }
}

fn upstream_of(t: &RecipeTemplate) -> Result<(&Remote, &Upstream), VersionsError> {
    match t
        .remote
        .as_ref()
        .and_then(|r| r.upstream.as_ref().map(|u| (r, u)))
    {
        Some(x) => Ok(x),
        None => Err(VersionsError::NoUpstream {
            recipe: t.name.to_string(),
            fixed: t
                .fixed_version
                .as_ref()
                .map_or_else(|| "not set".to_string(), |v| v.to_string()),
        }),
    }
}

fn describe(up: &Upstream) -> String {
    let src = match &up.source {
        VersionSource::Github { owner, repo } => format!("GitHub releases of {owner}/{repo}"),
        VersionSource::Listing { url, file } => format!("files {file} listed at {url}"),
        VersionSource::KubernetesSchedule { url } => url.clone(),
        VersionSource::VersionUrl { url } => url.to_string(),
    };
    let m = up
        .matches
        .as_ref()
        .map(|g| format!(", matching {g}"))
        .unwrap_or_default();
    format!(" (looked at {src}, tag {}{m})", up.tag)
}

fn no_versions(name: &str, up: &Upstream) -> VersionsError {
    VersionsError::NoVersions {
        what: name.to_string(),
        detail: describe(up),
    }
}

/// File names in a directory listing: the targets of `href="…"` in HTML,
/// or whole lines of a plain-text listing; the last path component of
/// each, without a trailing `/`.
pub fn listing_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = text.to_ascii_lowercase();
    let mut rest = 0usize;
    let mut found_href = false;
    while let Some(i) = lower[rest..].find("href=") {
        found_href = true;
        let start = rest + i + 5;
        let bytes = text.as_bytes();
        let (open, close) = match bytes.get(start) {
            Some(b'"') => (start + 1, '"'),
            Some(b'\'') => (start + 1, '\''),
            _ => (start, ' '),
        };
        let tail = &text[open..];
        let end = tail
            .find(|c: char| c == close || c == '>' || (close == ' ' && c.is_whitespace()))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = open + end;
    }
    if !found_href {
        out.extend(text.lines().map(|l| l.trim().to_string()));
    }
    out.into_iter()
        .map(|h| {
            let h = h.split(['?', '#']).next().unwrap_or_default();
            let h = h.trim_end_matches('/');
            h.rsplit('/').next().unwrap_or_default().to_string()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Every released version in Kubernetes' `schedule.yaml`: for each
/// supported minor, its `previousPatches` (`v` + release); a minor with no
/// patches yet counts as `MINOR.0`.
pub fn schedule_versions(text: &str) -> Result<Vec<String>, String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    let schedules = doc
        .get("schedules")
        .and_then(|s| s.as_sequence())
        .ok_or("no `schedules` list (is this kubernetes/website's data/releases/schedule.yaml?)")?;
    let as_text = |v: &serde_yaml::Value| -> Option<String> {
        match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for s in schedules {
        let release = s
            .get("release")
            .and_then(as_text)
            .ok_or("a schedule without `release`")?;
        let patches: Vec<String> = s
            .get("previousPatches")
            .and_then(|p| p.as_sequence())
            .map(|p| {
                p.iter()
                    .filter_map(|x| x.get("release").and_then(as_text))
                    .collect()
            })
            .unwrap_or_default();
        if patches.is_empty() {
            out.push(format!("v{release}.0"));
        } else {
            out.extend(patches.into_iter().map(|p| format!("v{p}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::new(s).unwrap()
    }

    proptest::proptest! {
        #[test]
        fn globs_and_streams_never_panic(pattern in "\\PC{0,12}", text in "\\PC{0,16}") {
            if let Ok(g) = Glob::new(&pattern) {
                let _ = g.matches(&text);
            }
            if let Ok(v) = Version::new(text.clone()) {
                if let Some(s) = Stream::of(&v) {
                    proptest::prop_assert!(s.contains(&v));
                    proptest::prop_assert_eq!(s.as_str().parse::<Stream>().ok(), Some(s.clone()));
                }
            }
            let _ = listing_names(&text);
            let _ = schedule_versions(&text);
        }

        #[test]
        fn a_literal_glob_matches_only_itself(text in "[a-z0-9.+-]{0,12}", other in "[a-z0-9.+-]{0,12}") {
            let g = Glob::new(&text).unwrap();
            proptest::prop_assert!(g.matches(&text));
            proptest::prop_assert_eq!(g.matches(&other), text == other);
        }
    }

    #[test]
    fn globs() {
        let g = Glob::new("[0-9]*").unwrap();
        assert!(g.matches("0.38.2") && !g.matches("v0.1.0") && !g.matches(""));
        let g = Glob::new("v*+k3s*").unwrap();
        assert!(g.matches("v1.30.4+k3s1") && !g.matches("v1.30.4+rke2r1"));
        let g = Glob::new("a?c").unwrap();
        assert!(g.matches("abc") && !g.matches("ac"));
        assert!(Glob::new("[!v]*").unwrap().matches("1.0"));
        assert!(!Glob::new("[!v]*").unwrap().matches("v1.0"));
        assert!(Glob::new("*").unwrap().matches(""));
        assert!(Glob::new("[a").is_err());
    }

    #[test]
    fn streams_of_versions() {
        assert_eq!(Stream::of(&v("v1.30.4")).unwrap().as_str(), "v1.30");
        assert_eq!(Stream::of(&v("v1.30.4+k3s1")).unwrap().as_str(), "v1.30");
        assert_eq!(Stream::of(&v("1.7.20")).unwrap().as_str(), "1.7");
        assert_eq!(Stream::of(&v("v1.30")), None);
        assert_eq!(Stream::of(&v("27")), None);
        let s: Stream = "v1.30".parse().unwrap();
        assert!(s.contains(&v("v1.30.10")) && !s.contains(&v("v1.300.1")));
        assert!(!s.contains(&v("v1.31.0")));
        for bad in ["v1", "1.30.4", "v1.x", "", "v1.30-", "1.3 0"] {
            assert!(bad.parse::<Stream>().is_err(), "{bad}");
        }
    }

    #[test]
    fn newest_uses_uapi_order() {
        let all = vec![v("v1.30.9"), v("v1.31.0"), v("v1.30.10"), v("v1.29.15")];
        let s: Stream = "v1.30".parse().unwrap();
        assert_eq!(newest(&all, Some(&s)).unwrap().as_str(), "v1.30.10");
        assert_eq!(newest(&all, None).unwrap().as_str(), "v1.31.0");
        let k3s = vec![
            v("v1.30.4+k3s1"),
            v("v1.30.4+k3s2"),
            v("v1.30.10+k3s1"),
            v("v1.30.9+k3s3"),
        ];
        assert_eq!(newest(&k3s, Some(&s)).unwrap().as_str(), "v1.30.10+k3s1");
        let st = streams(&all);
        assert_eq!(
            st.iter()
                .map(|(s, v)| format!("{s}={v}"))
                .collect::<Vec<_>>(),
            vec!["v1.31=v1.31.0", "v1.30=v1.30.10", "v1.29=v1.29.15"]
        );
        let mut sorted = k3s.clone();
        sort_newest_first(&mut sorted);
        assert_eq!(sorted[0].as_str(), "v1.30.10+k3s1");
        assert_eq!(sorted[3].as_str(), "v1.30.4+k3s1");
    }

    #[test]
    fn parses_listings() {
        let html = r#"<html><body><pre>
<a href="../">../</a>
<a href="docker-26.1.4.tgz">docker-26.1.4.tgz</a>   2024-06-05 19:31  69M
<a href='docker-27.1.1.tgz'>docker-27.1.1.tgz</a>
<A HREF="/linux/static/stable/x86_64/docker-rootless-extras-27.1.1.tgz">x</A>
</pre></body></html>"#;
        let names = listing_names(html);
        assert!(
            names.contains(&"docker-26.1.4.tgz".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"docker-27.1.1.tgz".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"docker-rootless-extras-27.1.1.tgz".to_string()));
        assert_eq!(listing_names("a.tgz\nb/\n"), vec!["a.tgz", "b"]);
    }

    #[test]
    fn parses_the_kubernetes_schedule() {
        let yaml = r#"
schedules:
- release: "1.31"
  releaseDate: 2024-08-13
  next:
    release: 1.31.2
  previousPatches:
  - release: 1.31.1
  - release: 1.31.0
- release: "1.32"
- release: 1.30
  previousPatches:
  - release: 1.30.4
    note: x
"#;
        let v = schedule_versions(yaml).unwrap();
        assert_eq!(v, vec!["v1.31.1", "v1.31.0", "v1.32.0", "v1.30.4"]);
        assert!(schedule_versions("a: 1").is_err());
        assert!(schedule_versions(": :").is_err());
    }
}
