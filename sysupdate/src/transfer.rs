//! Transfer definition files (`*.conf` up to systemd 256, `*.transfer`
//! from 257): the typed model, a strict parser reporting `file:line`, and a
//! canonical renderer such that `parse(render(t)) == t`.
//!
//! Syntax is systemd's ini dialect: `[Section]` headers, `Key=Value`
//! assignments with whitespace around key and value ignored, whole-line
//! comments starting with `#` or `;`, blank lines. Unlike systemd we refuse
//! unknown sections and keys (systemd only warns and ignores them, which
//! would silently drop a setting), and line continuations. As in systemd, a
//! later assignment of a single-valued key wins, an empty value resets a
//! key to its default, and `MatchPattern=`/`ProtectVersion=` accumulate.
//!
//! Specifiers (`%a`, `%A`, …) stay unexpanded in the model; patterns are
//! [`PatternTemplate`]s that can be resolved per node.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::pattern::PatternTemplate;
use crate::specifier;
use crate::version::Version;

/// The two file-name suffixes systemd reads.
pub const SUFFIXES: [&str; 2] = [".conf", ".transfer"];

/// `Type=` of a `[Source]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceType {
    UrlFile,
    UrlTar,
    Tar,
    RegularFile,
    Directory,
    Subvolume,
}

/// `Type=` of a `[Target]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetType {
    Partition,
    RegularFile,
    Directory,
    Subvolume,
}

/// `PathRelativeTo=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathRelativeTo {
    Root,
    Esp,
    Xbootldr,
    Boot,
    Explicit,
}

macro_rules! keyword_enum {
    ($ty:ident, $what:literal, $($variant:ident => $text:literal),+ $(,)?) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
            const ALL_TEXT: &'static str = concat!($($text, " "),+);
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(format!("unknown {} {:?}: expected one of {}", $what, s, $ty::ALL_TEXT.trim_end())),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

keyword_enum!(SourceType, "source Type=",
    UrlFile => "url-file", UrlTar => "url-tar", Tar => "tar",
    RegularFile => "regular-file", Directory => "directory", Subvolume => "subvolume");
keyword_enum!(TargetType, "target Type=",
    Partition => "partition", RegularFile => "regular-file",
    Directory => "directory", Subvolume => "subvolume");
keyword_enum!(PathRelativeTo, "PathRelativeTo=",
    Root => "root", Esp => "esp", Xbootldr => "xbootldr", Boot => "boot", Explicit => "explicit");

/// `[Transfer]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferSection {
    /// `MinVersion=`: older versions are never installed.
    pub min_version: Option<Version>,
    /// `ProtectVersion=`: versions never removed (may use specifiers, e.g. `%A`).
    pub protect_versions: Vec<String>,
    /// `Verify=`: check `SHA256SUMS.gpg` (systemd's default is yes).
    pub verify: Option<bool>,
}

/// `[Source]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub kind: SourceType,
    pub path: String,
    pub path_relative_to: Option<PathRelativeTo>,
    pub patterns: Vec<PatternTemplate>,
}

/// `[Target]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `None`: systemd derives it from the source type.
    pub kind: Option<TargetType>,
    pub path: String,
    pub path_relative_to: Option<PathRelativeTo>,
    /// Empty: systemd uses the source patterns.
    pub patterns: Vec<PatternTemplate>,
    pub match_partition_type: Option<String>,
    pub current_symlink: Option<String>,
    /// `InstancesMax=` (systemd bumps 1 to 2; we refuse values below 2).
    pub instances_max: Option<u64>,
    pub read_only: Option<bool>,
    pub mode: Option<u32>,
    pub tries_left: Option<u64>,
    pub tries_done: Option<u64>,
    pub remove_temporary: Option<bool>,
}

impl Target {
    /// A target with only type and path set.
    pub fn new(kind: Option<TargetType>, path: impl Into<String>) -> Self {
        Target {
            kind,
            path: path.into(),
            path_relative_to: None,
            patterns: Vec::new(),
            match_partition_type: None,
            current_symlink: None,
            instances_max: None,
            read_only: None,
            mode: None,
            tries_left: None,
            tries_done: None,
            remove_temporary: None,
        }
    }
}

/// One transfer definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub transfer: TransferSection,
    pub source: Source,
    pub target: Target,
}

/// A transfer file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct TransferError {
    pub file: PathBuf,
    /// 1-based; the section header's line for a missing key.
    pub line: usize,
    pub message: String,
}

/// The transfer id (`kubernetes-v1.30`) of a file name with one of the
/// [`SUFFIXES`], or `None`.
pub fn id_from_file_name(name: &str) -> Option<&str> {
    SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Transfer,
    Source,
    Target,
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean: use yes or no")),
    }
}

fn parse_u64(v: &str) -> Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{v:?} is not a non-negative decimal integer"));
    }
    v.parse::<u64>().map_err(|_| format!("{v:?} is too large"))
}

fn parse_mode(v: &str) -> Result<u32, String> {
    if v.is_empty() || v.len() > 4 || !v.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("{v:?} is not an octal access mode: use e.g. 0444"));
    }
    u32::from_str_radix(v, 8).map_err(|e| e.to_string())
}

fn check_text(key: &str, v: &str) -> Result<String, String> {
    if v.chars().any(char::is_control) {
        return Err(format!("{key}= contains a control character"));
    }
    specifier::validate(v).map_err(|e| format!("{key}=: {e}"))?;
    Ok(v.to_string())
}

fn check_version_spec(key: &str, v: &str) -> Result<String, String> {
    let ok = v.chars().all(|c| Version::is_valid_char(c) || c == '%');
    if !ok {
        return Err(format!(
            "{key}={v:?}: a version may hold only A-Z a-z 0-9 . , _ + ~ ^ - and % specifiers"
        ));
    }
    check_text(key, v)
}

#[derive(Default)]
struct Draft {
    transfer: TransferSection,
    source_kind: Option<SourceType>,
    source_path: Option<String>,
    source_relto: Option<PathRelativeTo>,
    source_patterns: Vec<PatternTemplate>,
    source_line: Option<usize>,
    target_path: Option<String>,
    target_line: Option<usize>,
}

impl Transfer {
    /// Parses a transfer file's text; `file` is used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Transfer, TransferError> {
        let err = |line: usize, message: String| TransferError {
            file: file.to_path_buf(),
            line,
            message,
        };
        let mut d = Draft::default();
        let mut tgt = Target::new(None, "");
        let mut section: Option<Section> = None;

        for (idx, raw) in text.split('\n').enumerate() {
            let n = idx + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw).trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.ends_with('\\') {
                return Err(err(n, "line continuation with a trailing '\\' is not supported: put the value on one line".into()));
            }
            if let Some(rest) = line.strip_prefix('[') {
                let name = rest.strip_suffix(']').ok_or_else(|| {
                    err(n, format!("malformed section header {line:?}: expected [Transfer], [Source] or [Target]"))
                })?;
                section = Some(match name {
                    "Transfer" => Section::Transfer,
                    "Source" => {
                        d.source_line.get_or_insert(n);
                        Section::Source
                    }
                    "Target" => {
                        d.target_line.get_or_insert(n);
                        Section::Target
                    }
                    other => {
                        return Err(err(
                            n,
                            format!(
                            "unknown section [{other}]: expected [Transfer], [Source] or [Target]"
                        ),
                        ))
                    }
                });
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| {
                err(
                    n,
                    format!("expected Key=Value, a [Section] header or a comment, found {line:?}"),
                )
            })?;
            let (key, value) = (key.trim(), value.trim());
            let sec = section.ok_or_else(|| {
                err(n, format!("{key}= appears before any section: put it under [Transfer], [Source] or [Target]"))
            })?;
            let r: Result<(), String> = (|| {
                let empty = value.is_empty();
                match (sec, key) {
                    (Section::Transfer, "MinVersion") => {
                        d.transfer.min_version = if empty {
                            None
                        } else {
                            if specifier::has_specifiers(value) {
                                return Err("MinVersion= with % specifiers is not supported: write the version".into());
                            }
                            Some(
                                value
                                    .parse::<Version>()
                                    .map_err(|e| format!("MinVersion=: {e}"))?,
                            )
                        }
                    }
                    (Section::Transfer, "ProtectVersion") => {
                        if empty {
                            d.transfer.protect_versions.clear()
                        } else {
                            d.transfer
                                .protect_versions
                                .push(check_version_spec(key, value)?)
                        }
                    }
                    (Section::Transfer, "Verify") => {
                        d.transfer.verify = if empty {
                            None
                        } else {
                            Some(parse_bool(value)?)
                        }
                    }
                    (Section::Transfer, "InstancesMax") => {
                        return Err(
                            "InstancesMax= belongs in [Target]; systemd ignores it in [Transfer]"
                                .into(),
                        )
                    }
                    (Section::Source, "Type") => {
                        d.source_kind = if empty { None } else { Some(value.parse()?) }
                    }
                    (Section::Source, "Path") => {
                        d.source_path = if empty {
                            None
                        } else {
                            Some(check_text(key, value)?)
                        }
                    }
                    (Section::Source | Section::Target, "PathRelativeTo") => {
                        let v = if empty { None } else { Some(value.parse()?) };
                        if sec == Section::Source {
                            d.source_relto = v
                        } else {
                            tgt.path_relative_to = v
                        }
                    }
                    (Section::Source | Section::Target, "MatchPattern") => {
                        let list = if sec == Section::Source {
                            &mut d.source_patterns
                        } else {
                            &mut tgt.patterns
                        };
                        if empty {
                            list.clear()
                        } else {
                            let p = PatternTemplate::new(value)
                                .map_err(|e| format!("MatchPattern=: {e}"))?;
                            if !list.contains(&p) {
                                list.push(p)
                            }
                        }
                    }
                    (Section::Target, "Type") => {
                        tgt.kind = if empty { None } else { Some(value.parse()?) }
                    }
                    (Section::Target, "Path") => {
                        d.target_path = if empty {
                            None
                        } else {
                            Some(check_text(key, value)?)
                        }
                    }
                    (Section::Target, "MatchPartitionType") => {
                        tgt.match_partition_type = if empty {
                            None
                        } else {
                            Some(check_text(key, value)?)
                        }
                    }
                    (Section::Target, "CurrentSymlink") => {
                        tgt.current_symlink = if empty {
                            None
                        } else {
                            Some(check_text(key, value)?)
                        }
                    }
                    (Section::Target, "InstancesMax") => {
                        tgt.instances_max = if empty {
                            None
                        } else {
                            let v = parse_u64(value)?;
                            if v < 2 {
                                return Err(format!("InstancesMax={v}: must be at least 2 (the running version plus one update)"));
                            }
                            Some(v)
                        }
                    }
                    (Section::Target, "ReadOnly") => {
                        tgt.read_only = if empty {
                            None
                        } else {
                            Some(parse_bool(value)?)
                        }
                    }
                    (Section::Target, "Mode") => {
                        tgt.mode = if empty {
                            None
                        } else {
                            Some(parse_mode(value)?)
                        }
                    }
                    (Section::Target, "TriesLeft") => {
                        tgt.tries_left = if empty { None } else { Some(parse_u64(value)?) }
                    }
                    (Section::Target, "TriesDone") => {
                        tgt.tries_done = if empty { None } else { Some(parse_u64(value)?) }
                    }
                    (Section::Target, "RemoveTemporary") => {
                        tgt.remove_temporary = if empty {
                            None
                        } else {
                            Some(parse_bool(value)?)
                        }
                    }
                    (s, k) => {
                        let name = match s {
                            Section::Transfer => "Transfer",
                            Section::Source => "Source",
                            Section::Target => "Target",
                        };
                        return Err(format!("unknown key {k}= in [{name}]: see sysupdate.d(5) for the keys of this section"));
                    }
                }
                Ok(())
            })();
            r.map_err(|m| err(n, m))?;
        }

        let source_line = d
            .source_line
            .ok_or_else(|| err(1, "missing [Source] section".into()))?;
        let target_line = d
            .target_line
            .ok_or_else(|| err(1, "missing [Target] section".into()))?;
        let kind = d
            .source_kind
            .ok_or_else(|| err(source_line, "[Source] lacks Type=: use url-file, url-tar, tar, regular-file, directory or subvolume".into()))?;
        let path = d
            .source_path
            .ok_or_else(|| err(source_line, "[Source] lacks Path=".into()))?;
        if d.source_patterns.is_empty() {
            return Err(err(source_line, "[Source] lacks MatchPattern=".into()));
        }
        tgt.path = d
            .target_path
            .ok_or_else(|| err(target_line, "[Target] lacks Path=".into()))?;
        let t = Transfer {
            transfer: d.transfer,
            source: Source {
                kind,
                path,
                path_relative_to: d.source_relto,
                patterns: d.source_patterns,
            },
            target: tgt,
        };
        t.validate().map_err(|m| err(target_line, m))?;
        Ok(t)
    }

    /// Reads and parses a transfer file.
    pub fn read(path: &Path) -> Result<Transfer, TransferError> {
        let text = std::fs::read_to_string(path).map_err(|e| TransferError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Transfer::parse(&text, path)
    }

    /// Cross-field rules systemd applies once the file is read.
    pub fn validate(&self) -> Result<(), String> {
        use SourceType as S;
        use TargetType as T;
        let target = self.target.kind.unwrap_or(match self.source.kind {
            S::UrlFile | S::RegularFile if self.target.path.starts_with("/dev/") => T::Partition,
            S::UrlFile | S::RegularFile => T::RegularFile,
            S::UrlTar | S::Tar | S::Directory => T::Directory,
            S::Subvolume => T::Subvolume,
        });
        let compatible = match self.source.kind {
            S::UrlFile | S::RegularFile => matches!(target, T::Partition | T::RegularFile),
            S::UrlTar | S::Tar | S::Directory | S::Subvolume => {
                matches!(target, T::Directory | T::Subvolume)
            }
        };
        if !compatible {
            return Err(format!(
                "target Type={target} is incompatible with source Type={}",
                self.source.kind
            ));
        }
        if self.target.path_relative_to == Some(PathRelativeTo::Explicit) {
            return Err("PathRelativeTo=explicit can only be used in [Source]".into());
        }
        let is_url = matches!(self.source.kind, S::UrlFile | S::UrlTar);
        if is_url {
            let p = &self.source.path;
            if !(p.starts_with("http://") || p.starts_with("https://") || p.starts_with("file://"))
            {
                return Err(format!(
                    "source Path={p:?} is not an http://, https:// or file:// URL"
                ));
            }
        } else if !is_normalized_absolute(&self.source.path) {
            return Err(format!(
                "source Path={:?} is not a normalized absolute path",
                self.source.path
            ));
        }
        if self.target.path != "auto" && !is_normalized_absolute(&self.target.path) {
            return Err(format!(
                "target Path={:?} is not a normalized absolute path (or auto)",
                self.target.path
            ));
        }
        if let Some(l) = &self.target.current_symlink {
            if target == T::Partition && !l.starts_with('/') {
                return Err(format!(
                    "CurrentSymlink={l:?} must be absolute when the target is a partition"
                ));
            }
        }
        if self.source.patterns.is_empty() {
            return Err("[Source] lacks MatchPattern=".into());
        }
        Ok(())
    }

    /// Renders the canonical text (same for `.conf` and `.transfer`).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let yn = |b: bool| if b { "yes" } else { "no" };
        // Writing to a String cannot fail.
        let _ = writeln!(s, "[Transfer]");
        if let Some(v) = &self.transfer.min_version {
            let _ = writeln!(s, "MinVersion={v}");
        }
        for v in &self.transfer.protect_versions {
            let _ = writeln!(s, "ProtectVersion={v}");
        }
        if let Some(v) = self.transfer.verify {
            let _ = writeln!(s, "Verify={}", yn(v));
        }
        let _ = writeln!(s, "\n[Source]");
        let _ = writeln!(s, "Type={}", self.source.kind);
        let _ = writeln!(s, "Path={}", self.source.path);
        if let Some(r) = self.source.path_relative_to {
            let _ = writeln!(s, "PathRelativeTo={r}");
        }
        for p in &self.source.patterns {
            let _ = writeln!(s, "MatchPattern={p}");
        }
        let t = &self.target;
        let _ = writeln!(s, "\n[Target]");
        if let Some(k) = t.kind {
            let _ = writeln!(s, "Type={k}");
        }
        let _ = writeln!(s, "Path={}", t.path);
        if let Some(r) = t.path_relative_to {
            let _ = writeln!(s, "PathRelativeTo={r}");
        }
        for p in &t.patterns {
            let _ = writeln!(s, "MatchPattern={p}");
        }
        if let Some(v) = &t.match_partition_type {
            let _ = writeln!(s, "MatchPartitionType={v}");
        }
        if let Some(v) = &t.current_symlink {
            let _ = writeln!(s, "CurrentSymlink={v}");
        }
        if let Some(v) = t.instances_max {
            let _ = writeln!(s, "InstancesMax={v}");
        }
        if let Some(v) = t.read_only {
            let _ = writeln!(s, "ReadOnly={}", yn(v));
        }
        if let Some(v) = t.mode {
            let _ = writeln!(s, "Mode={v:04o}");
        }
        if let Some(v) = t.tries_left {
            let _ = writeln!(s, "TriesLeft={v}");
        }
        if let Some(v) = t.tries_done {
            let _ = writeln!(s, "TriesDone={v}");
        }
        if let Some(v) = t.remove_temporary {
            let _ = writeln!(s, "RemoveTemporary={}", yn(v));
        }
        s
    }

    /// The target patterns in effect (the source's when none are set).
    pub fn effective_target_patterns(&self) -> &[PatternTemplate] {
        if self.target.patterns.is_empty() {
            &self.source.patterns
        } else {
            &self.target.patterns
        }
    }
}

fn is_normalized_absolute(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("//")
        && p.split('/').all(|c| c != "." && c != "..")
        && (p == "/" || !p.ends_with('/'))
        && !p.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
# Kubernetes v1.30 stream
[Transfer]
Verify=yes
ProtectVersion=%A

[Source]
Type=url-file
Path=https://example.org/extensions/kubernetes/
MatchPattern=kubernetes-v1.30.@v-%a.raw

[Target]
Type=regular-file
Path=/opt/extensions/kubernetes
MatchPattern=kubernetes-v1.30.@v-%a.raw
CurrentSymlink=/etc/extensions/kubernetes.raw
InstancesMax=3
ReadOnly=yes
Mode=0444
";

    fn parse(s: &str) -> Result<Transfer, TransferError> {
        Transfer::parse(s, Path::new("/etc/sysupdate.d/k.transfer"))
    }

    #[test]
    fn parses_and_round_trips_example() {
        let t = parse(EXAMPLE).unwrap();
        assert_eq!(t.transfer.verify, Some(true));
        assert_eq!(t.source.kind, SourceType::UrlFile);
        assert_eq!(t.source.patterns[0].as_str(), "kubernetes-v1.30.@v-%a.raw");
        assert_eq!(t.target.instances_max, Some(3));
        assert_eq!(t.target.mode, Some(0o444));
        let text = t.render();
        assert_eq!(parse(&text).unwrap(), t);
        // Our canonical rendering of the example is the example minus the comment.
        assert_eq!(
            text,
            EXAMPLE.replace("# Kubernetes v1.30 stream\n", "").replace(
                "Verify=yes\nProtectVersion=%A",
                "ProtectVersion=%A\nVerify=yes"
            )
        );
    }

    #[test]
    fn ini_syntax_like_systemd() {
        let t = parse(
            "; comment\n[Source]\n  Type = url-file \nPath=https://h/x/\nMatchPattern=a_@v\nMatchPattern=b_@v\n\
             [Target]\r\nPath=/opt/x\nInstancesMax=5\nInstancesMax=\n[Source]\nMatchPattern=a_@v\n",
        )
        .unwrap();
        assert_eq!(
            t.source.patterns.len(),
            2,
            "patterns accumulate, duplicates dropped"
        );
        assert_eq!(t.target.instances_max, None, "empty value resets");
        assert_eq!(t.effective_target_patterns(), &t.source.patterns[..]);
    }

    #[test]
    fn errors_carry_file_and_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("[Transfer]\nBogus=1\n", 2, "unknown key Bogus= in [Transfer]"),
            ("[Transfer]\nInstancesMax=3\n", 2, "belongs in [Target]"),
            ("[Foo]\n", 1, "unknown section [Foo]"),
            ("Verify=yes\n", 1, "before any section"),
            ("[Transfer]\nVerify=maybe\n", 2, "not a boolean"),
            ("[Transfer]\njunk\n", 2, "expected Key=Value"),
            ("[Transfer\n", 1, "malformed section header"),
            ("[Source]\nPath=a\\\n", 2, "line continuation"),
            ("[Source]\nType=ftp\n", 2, "unknown source Type= \"ftp\""),
            ("[Source]\nMatchPattern=a-@v-@v\n", 2, "appears twice"),
            ("[Source]\nMatchPattern=a-%q%z@v\n", 2, "%z"),
            ("[Target]\nInstancesMax=1\n", 2, "at least 2"),
            ("[Target]\nMode=999\n", 2, "octal"),
            ("[Transfer]\nMinVersion=1 2\n", 2, "invalid character"),
            ("[Transfer]\n", 1, "missing [Source]"),
            ("[Source]\nType=url-file\nPath=https://h/\nMatchPattern=a_@v\n", 1, "missing [Target]"),
            ("[Source]\nType=url-file\nMatchPattern=a_@v\n[Target]\nPath=/x\n", 1, "lacks Path="),
            ("[Source]\nType=url-file\nPath=https://h/\n[Target]\nPath=/x\n", 1, "lacks MatchPattern="),
            ("[Source]\nType=url-file\nPath=https://h/\nMatchPattern=a_@v\n\n[Target]\nPath=x/../y\n", 6, "normalized absolute"),
            ("[Source]\nType=url-file\nPath=/srv\nMatchPattern=a_@v\n[Target]\nPath=/x\n", 5, "not an http"),
            ("[Source]\nType=url-tar\nPath=https://h/\nMatchPattern=a_@v\n[Target]\nType=regular-file\nPath=/x\n", 5, "incompatible"),
        ];
        for (text, line, want) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            let s = e.to_string();
            assert!(
                s.starts_with(&format!("/etc/sysupdate.d/k.transfer:{line}: ")),
                "{s}"
            );
            assert!(s.contains(want), "{text:?}: {s}");
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(
            id_from_file_name("kubernetes-v1.30.conf"),
            Some("kubernetes-v1.30")
        );
        assert_eq!(id_from_file_name("k.transfer"), Some("k"));
        assert_eq!(id_from_file_name(".conf"), None);
        assert_eq!(id_from_file_name("k.raw"), None);
    }
}
