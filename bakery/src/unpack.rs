//! Safe extraction of build inputs (a raw file, or a tar archive compressed
//! with gzip, xz or zstd) into a staging directory, with a small path
//! selection language the recipe engine uses to say which archive paths go
//! where ([`Selection`]: strip leading components, place a file or subtree
//! at a destination, exclude paths).
//!
//! Refused, each with an error naming the archive and the entry: absolute
//! paths and `..` components; symlinks whose target is absolute (unless
//! allowed) or climbs out of the staging root; hard links to anything but a
//! regular file this archive placed; device nodes and FIFOs; entries that
//! would be written through a symlink or over an existing entry; files,
//! totals and decompressed streams over the [`Limits`] (compression bombs);
//! archives whose bytes are not the declared format.
//!
//! Nothing is ever written outside `dest`. On error the staging directory
//! holds a partial result and must be discarded by the caller. Owners are
//! not restored; modes are normalised to `0o755`/`0o644` (executable or
//! not) unless a rule sets one.

use std::cell::Cell;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::str::FromStr;

/// How an input is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveFormat {
    /// A single file, placed as is.
    Raw,
    Tar,
    TarGz,
    TarXz,
    TarZst,
}

impl ArchiveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Raw => "raw",
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarXz => "tar.xz",
            ArchiveFormat::TarZst => "tar.zst",
        }
    }

    /// Guesses the format from a file name's extension (`None` if it has
    /// no archive extension, which usually means a raw file).
    pub fn from_file_name(name: &str) -> Option<ArchiveFormat> {
        let n = name.to_ascii_lowercase();
        Some(if n.ends_with(".tar.gz") || n.ends_with(".tgz") {
            ArchiveFormat::TarGz
        } else if n.ends_with(".tar.xz") || n.ends_with(".txz") {
            ArchiveFormat::TarXz
        } else if n.ends_with(".tar.zst") || n.ends_with(".tzst") {
            ArchiveFormat::TarZst
        } else if n.ends_with(".tar") {
            ArchiveFormat::Tar
        } else {
            return None;
        })
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown format name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown archive format {0:?}: expected raw, tar, tar.gz, tar.xz or tar.zst")]
pub struct UnknownFormat(pub String);

impl FromStr for ArchiveFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "raw" => ArchiveFormat::Raw,
            "tar" => ArchiveFormat::Tar,
            "tar.gz" | "tgz" => ArchiveFormat::TarGz,
            "tar.xz" | "txz" => ArchiveFormat::TarXz,
            "tar.zst" | "tzst" => ArchiveFormat::TarZst,
            _ => return Err(UnknownFormat(s.to_string())),
        })
    }
}

/// Size limits that stop absurd or malicious inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file placed.
    pub max_file_size: u64,
    /// Sum of all files placed (hard links count again).
    pub max_total_size: u64,
    /// Bytes read out of the decompressor, placed or not.
    pub max_decompressed: u64,
    /// Archive entries, placed or not.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: 2 << 30,
            max_total_size: 4 << 30,
            max_decompressed: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// A path inside an archive or the staging root, as validated components.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
struct RelPath(Vec<Vec<u8>>);

impl RelPath {
    fn to_path_buf(&self) -> PathBuf {
        let mut p = PathBuf::new();
        for c in &self.0 {
            p.push(std::ffi::OsStr::from_bytes(c));
        }
        p
    }

    fn starts_with(&self, prefix: &RelPath) -> bool {
        self.0.len() >= prefix.0.len() && self.0[..prefix.0.len()] == prefix.0[..]
    }

    fn display(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        parts.join("/")
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathProblem {
    Absolute,
    DotDot,
    BadComponent,
}

/// Splits a `/`-separated path, dropping empty and `.` components.
/// `allow_absolute` accepts (and drops) a leading `/`.
fn split_path(bytes: &[u8], allow_absolute: bool) -> Result<RelPath, PathProblem> {
    if bytes.first() == Some(&b'/') && !allow_absolute {
        return Err(PathProblem::Absolute);
    }
    let mut out = Vec::new();
    for c in bytes.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathProblem::DotDot),
            c if c.contains(&0) || c.len() > 255 => return Err(PathProblem::BadComponent),
            c => out.push(c.to_vec()),
        }
    }
    Ok(RelPath(out))
}

/// A recipe's path selection that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid placement {what} {path:?}: {message}")]
pub struct SelectionError {
    pub what: &'static str,
    pub path: String,
    pub message: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    from_text: String,
    from: RelPath,
    to: RelPath,
    /// `to` ended with `/`: a matched file keeps its name inside `to`.
    into_dir: bool,
    mode: Option<u32>,
}

/// Which archive paths go where in the staging root.
///
/// Archive paths are matched after dropping `strip_components` leading
/// components. Each rule maps `from` (a file, or a directory whose whole
/// subtree is taken; `""` is the whole archive) to `to` (relative to the
/// staging root; a trailing `/` places a matched file inside that
/// directory under its own name). The first matching rule wins; excluded
/// paths and paths no rule matches are skipped. A rule that matches
/// nothing is an error, so upstream layout changes are noticed. With no
/// rules, everything goes to the staging root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    strip_components: usize,
    rules: Vec<Rule>,
    exclude: Vec<RelPath>,
}

impl Selection {
    /// Everything, placed at the staging root.
    pub fn all() -> Selection {
        Selection::default()
    }

    pub fn strip_components(mut self, n: usize) -> Selection {
        self.strip_components = n;
        self
    }

    /// Places `from` at `to`.
    pub fn place(self, from: &str, to: &str) -> Result<Selection, SelectionError> {
        self.place_rule(from, to, None)
    }

    /// Places `from` at `to` with this permission mode for files.
    pub fn place_with_mode(
        self,
        from: &str,
        to: &str,
        mode: u32,
    ) -> Result<Selection, SelectionError> {
        if mode & !0o777 != 0 {
            return Err(SelectionError {
                what: "mode for",
                path: from.to_string(),
                message: "only permission bits 0o777 may be set (no setuid, setgid or sticky)",
            });
        }
        self.place_rule(from, to, Some(mode))
    }

    fn place_rule(
        mut self,
        from: &str,
        to: &str,
        mode: Option<u32>,
    ) -> Result<Selection, SelectionError> {
        let bad = |what, path: &str, p| SelectionError {
            what,
            path: path.to_string(),
            message: match p {
                PathProblem::Absolute => "archive paths are relative; drop the leading '/'",
                PathProblem::DotDot => "'..' is not allowed",
                PathProblem::BadComponent => "contains NUL or a component over 255 bytes",
            },
        };
        let from_path = split_path(from.as_bytes(), false).map_err(|p| bad("source", from, p))?;
        // Destinations are image paths; a leading '/' is accepted.
        let to_path = split_path(to.as_bytes(), true).map_err(|p| bad("destination", to, p))?;
        self.rules.push(Rule {
            from_text: from.to_string(),
            from: from_path,
            to: to_path,
            into_dir: to.ends_with('/') || to.is_empty(),
            mode,
        });
        Ok(self)
    }

    /// Skips `path` (and its subtree), e.g. an uninstall script.
    pub fn exclude(mut self, path: &str) -> Result<Selection, SelectionError> {
        let p = split_path(path.as_bytes(), false).map_err(|_| SelectionError {
            what: "exclusion",
            path: path.to_string(),
            message: "must be a relative archive path without '..'",
        })?;
        self.exclude.push(p);
        Ok(self)
    }

    /// Maps a stripped archive path to (destination, rule index), or
    /// `None` if it is excluded or matched by no rule.
    fn map(&self, path: &RelPath) -> Option<(RelPath, Option<usize>)> {
        if self.exclude.iter().any(|e| path.starts_with(e)) {
            return None;
        }
        if self.rules.is_empty() {
            return Some((path.clone(), None));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if !path.starts_with(&r.from) {
                continue;
            }
            let rest = &path.0[r.from.0.len()..];
            let mut dest = r.to.clone();
            if rest.is_empty() {
                // The entry is `from` itself.
                if r.into_dir {
                    if let Some(last) = r.from.0.last() {
                        dest.0.push(last.clone());
                    }
                }
            } else {
                dest.0.extend(rest.iter().cloned());
            }
            return Some((dest, Some(i)));
        }
        None
    }
}

/// How to unpack one input.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// The input's name for messages (its URL or file name; the cache path
    /// is only a digest).
    pub name: String,
    pub selection: Selection,
    pub limits: Limits,
    /// Keep symlinks with absolute targets (they resolve against the
    /// node's root at run time). Off by default.
    pub allow_absolute_symlinks: bool,
}

impl UnpackOptions {
    pub fn new(name: impl Into<String>, selection: Selection) -> UnpackOptions {
        UnpackOptions {
            name: name.into(),
            selection,
            limits: Limits::default(),
            allow_absolute_symlinks: false,
        }
    }
}

/// What kind of entry was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacedKind {
    File,
    Dir,
    Symlink,
    HardLink,
}

/// What an unpack placed, with paths relative to the staging root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackReport {
    pub placed: Vec<(PathBuf, PlacedKind)>,
    /// Entries no rule selected (or excluded).
    pub skipped: u64,
    /// Bytes of the files placed.
    pub bytes: u64,
}

/// A refused or failed unpack; names the archive and, where there is one,
/// the entry.
#[derive(Debug, thiserror::Error)]
pub struct UnpackError {
    pub archive: String,
    pub entry: Option<String>,
    pub kind: UnpackErrorKind,
}

impl fmt::Display for UnpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.archive)?;
        if let Some(e) = &self.entry {
            write!(f, ": entry {e:?}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// Why an unpack was refused.
#[derive(Debug, thiserror::Error)]
pub enum UnpackErrorKind {
    #[error("absolute path; archive entries must be relative (refusing to write outside the staging root)")]
    AbsolutePath,
    #[error("path contains '..'; refusing path traversal")]
    DotDot,
    #[error("path has a NUL byte or a component longer than 255 bytes")]
    BadComponent,
    #[error("symlink with absolute target {target:?}; refusing (it would point outside the staging root)")]
    AbsoluteSymlink { target: String },
    #[error("symlink target {target:?} climbs out of the staging root; refusing")]
    SymlinkEscapes { target: String },
    #[error("symlink with an empty target")]
    EmptySymlink,
    #[error(
        "hard link to {target:?}, which is not a regular file unpacked from this archive; refusing"
    )]
    HardLinkOutside { target: String },
    #[error("is a {0}; device nodes, FIFOs and sockets are never unpacked")]
    SpecialFile(&'static str),
    #[error("unsupported tar entry type {0:?}")]
    UnsupportedType(u8),
    #[error("would be written through the symlink {parent:?}; refusing")]
    ThroughSymlink { parent: String },
    #[error("parent {parent:?} exists and is not a directory")]
    NotADirectory { parent: String },
    #[error("destination {path:?} already exists in the staging root (a duplicate entry, or two inputs placing the same path)")]
    Exists { path: String },
    #[error("file of {size} bytes exceeds the per-file limit of {limit} bytes")]
    FileTooLarge { size: u64, limit: u64 },
    #[error("placed files exceed the total limit of {limit} bytes")]
    TotalTooLarge { limit: u64 },
    #[error("decompresses to more than {limit} bytes; refusing (compression bomb or wrong input)")]
    DecompressedTooLarge { limit: u64 },
    #[error("more than {limit} entries; refusing")]
    TooManyEntries { limit: u64 },
    #[error("is not {expected} data ({found}); check the recipe's unpack format")]
    WrongFormat {
        expected: &'static str,
        found: String,
    },
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("placement rule from {from:?} matched no entry; the archive layout may have changed (check the paths and strip_components)")]
    RuleUnmatched { from: String },
    #[error("a raw input needs exactly one placement rule giving its destination")]
    RawNeedsOneRule,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<PathProblem> for UnpackErrorKind {
    fn from(p: PathProblem) -> Self {
        match p {
            PathProblem::Absolute => UnpackErrorKind::AbsolutePath,
            PathProblem::DotDot => UnpackErrorKind::DotDot,
            PathProblem::BadComponent => UnpackErrorKind::BadComponent,
        }
    }
}

/// Unpacks `input` (a file on disk, e.g. a cache entry) into `dest`.
pub fn unpack(
    input: &Path,
    format: ArchiveFormat,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let mut u = Unpacker {
        opts,
        dest,
        report: UnpackReport::default(),
        placed_files: std::collections::HashSet::new(),
        rule_used: vec![false; opts.selection.rules.len()],
        entry: None,
    };
    u.ensure_root()?;
    match format {
        ArchiveFormat::Raw => u.raw(input)?,
        _ => u.tar(input, format)?,
    }
    u.entry = None;
    if let Some(i) = u.rule_used.iter().position(|used| !used) {
        return Err(u.err(UnpackErrorKind::RuleUnmatched {
            from: opts.selection.rules[i].from_text.clone(),
        }));
    }
    Ok(u.report)
}

struct Unpacker<'a> {
    opts: &'a UnpackOptions,
    dest: &'a Path,
    report: UnpackReport,
    placed_files: std::collections::HashSet<RelPath>,
    rule_used: Vec<bool>,
    /// The entry being processed, for error messages.
    entry: Option<String>,
}

/// A reader that fails once more than `limit` bytes were read, and records
/// that it did (the tar reader wraps the error).
struct Limited<R> {
    inner: R,
    remaining: u64,
    tripped: Rc<Cell<bool>>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.remaining {
            self.tripped.set(true);
            return Err(io::Error::other("decompressed size limit exceeded"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn describe_magic(head: &[u8]) -> String {
    let kind = if head.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        "xz"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if head.starts_with(b"BZh") {
        "bzip2"
    } else if head.starts_with(b"PK\x03\x04") {
        "zip"
    } else if head.starts_with(b"\x7fELF") {
        "an ELF binary"
    } else if head.len() > 262 && &head[257..262] == b"ustar" {
        "uncompressed tar"
    } else if head.iter().take(64).any(|&b| b == b'<') && head.is_ascii() {
        "text, perhaps an HTML error page"
    } else {
        ""
    };
    let hex: String = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    if kind.is_empty() {
        format!("it starts with bytes {hex}")
    } else {
        format!("it looks like {kind}; first bytes {hex}")
    }
}

impl Unpacker<'_> {
    fn err(&self, kind: UnpackErrorKind) -> UnpackError {
        UnpackError {
            archive: self.opts.name.clone(),
            entry: self.entry.clone(),
            kind,
        }
    }

    fn io_err(&self, path: &Path, source: io::Error) -> UnpackError {
        self.err(UnpackErrorKind::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    fn ensure_root(&self) -> Result<(), UnpackError> {
        match fs::symlink_metadata(self.dest) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(self.io_err(
                self.dest,
                io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "the staging root is not a directory",
                ),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(self.dest).map_err(|e| self.io_err(self.dest, e))
            }
            Err(e) => Err(self.io_err(self.dest, e)),
        }
    }

    /// Creates the parent directories of `rel` under the root, refusing to
    /// pass through symlinks or non-directories.
    fn ensure_parents(&mut self, rel: &RelPath) -> Result<(), UnpackError> {
        let mut cur = self.dest.to_path_buf();
        let n = rel.0.len().saturating_sub(1);
        for (i, c) in rel.0[..n].iter().enumerate() {
            cur.push(std::ffi::OsStr::from_bytes(c));
            let shown = || RelPath(rel.0[..=i].to_vec()).display();
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.err(UnpackErrorKind::ThroughSymlink { parent: shown() }))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(self.err(UnpackErrorKind::NotADirectory { parent: shown() })),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(|e| self.io_err(&cur, e))?;
                    set_mode(&cur, 0o755).map_err(|e| self.io_err(&cur, e))?;
                }
                Err(e) => return Err(self.io_err(&cur, e)),
            }
        }
        Ok(())
    }

    fn add_bytes(&mut self, n: u64) -> Result<(), UnpackError> {
        self.report.bytes = self.report.bytes.saturating_add(n);
        if self.report.bytes > self.opts.limits.max_total_size {
            return Err(self.err(UnpackErrorKind::TotalTooLarge {
                limit: self.opts.limits.max_total_size,
            }));
        }
        Ok(())
    }

    fn file_mode(mode_in_archive: u32, rule_mode: Option<u32>) -> u32 {
        rule_mode.unwrap_or(if mode_in_archive & 0o111 != 0 {
            0o755
        } else {
            0o644
        })
    }

    /// Writes a regular file from `content`, enforcing the size limits.
    fn write_file(
        &mut self,
        rel: &RelPath,
        content: &mut dyn Read,
        size_hint: u64,
        mode: u32,
    ) -> Result<(), UnpackError> {
        let limit = self.opts.limits.max_file_size;
        if size_hint > limit {
            return Err(self.err(UnpackErrorKind::FileTooLarge {
                size: size_hint,
                limit,
            }));
        }
        self.ensure_parents(rel)?;
        let path = self.dest.join(rel.to_path_buf());
        let mut out = match OpenOptions::new()
            .write(true)
            .create_new(true)
            // O_CREAT|O_EXCL: never follows a symlink at the final
            // component, never opens an existing file.
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(self.err(UnpackErrorKind::Exists {
                    path: rel.display(),
                }))
            }
            Err(e) => return Err(self.io_err(&path, e)),
        };
        let mut limited = content.take(limit + 1);
        // A tripped decompression limit surfaces here as a read error; the
        // tar loop turns it into `DecompressedTooLarge`.
        let written = io::copy(&mut limited, &mut out).map_err(|e| {
            self.err(UnpackErrorKind::Corrupt(format!(
                "while reading the file: {e}"
            )))
        })?;
        if written > limit {
            return Err(self.err(UnpackErrorKind::FileTooLarge {
                size: written,
                limit,
            }));
        }
        out.flush().map_err(|e| self.io_err(&path, e))?;
        drop(out);
        set_mode(&path, mode).map_err(|e| self.io_err(&path, e))?;
        self.add_bytes(written)?;
        self.placed_files.insert(rel.clone());
        self.report
            .placed
            .push((rel.to_path_buf(), PlacedKind::File));
        Ok(())
    }

    fn raw(&mut self, input: &Path) -> Result<(), UnpackError> {
        let rules = &self.opts.selection.rules;
        let [rule] = rules.as_slice() else {
            return Err(self.err(UnpackErrorKind::RawNeedsOneRule));
        };
        let mut dest = rule.to.clone();
        if rule.into_dir {
            // A raw input placed "into" a directory keeps its own name.
            let name = self.opts.name.rsplit('/').next().unwrap_or_default();
            let base = split_path(name.as_bytes(), false).map_err(|p| self.err(p.into()))?;
            dest.0.extend(base.0);
        }
        if dest.0.is_empty() {
            return Err(self.err(UnpackErrorKind::RawNeedsOneRule));
        }
        let mode = rule.mode.unwrap_or(0o755);
        self.rule_used[0] = true;
        self.entry = Some(dest.display());
        let mut f = File::open(input).map_err(|e| self.io_err(input, e))?;
        let size = f.metadata().map_err(|e| self.io_err(input, e))?.len();
        self.write_file(&dest, &mut f, size, mode)
    }

    fn tar(&mut self, input: &Path, format: ArchiveFormat) -> Result<(), UnpackError> {
        let mut file = File::open(input).map_err(|e| self.io_err(input, e))?;
        let mut head = Vec::with_capacity(512);
        (&mut file)
            .take(512)
            .read_to_end(&mut head)
            .map_err(|e| self.io_err(input, e))?;
        let ok = match format {
            ArchiveFormat::TarGz => head.starts_with(&[0x1f, 0x8b]),
            ArchiveFormat::TarXz => head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            ArchiveFormat::TarZst => head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            ArchiveFormat::Tar => {
                head.len() >= 262 && &head[257..262] == b"ustar" || head.iter().all(|&b| b == 0)
            }
            ArchiveFormat::Raw => true,
        };
        if !ok {
            return Err(self.err(UnpackErrorKind::WrongFormat {
                expected: format.as_str(),
                found: describe_magic(&head),
            }));
        }
        let file = File::open(input).map_err(|e| self.io_err(input, e))?;
        let reader = io::BufReader::with_capacity(1 << 16, file);
        let decoder: Box<dyn Read> = match format {
            ArchiveFormat::TarGz => Box::new(flate2::read::MultiGzDecoder::new(reader)),
            ArchiveFormat::TarXz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(reader)),
            ArchiveFormat::TarZst => Box::new(
                zstd::stream::read::Decoder::with_buffer(reader)
                    .map_err(|e| self.err(UnpackErrorKind::Corrupt(e.to_string())))?,
            ),
            _ => Box::new(reader),
        };
        let tripped = Rc::new(Cell::new(false));
        let limited = Limited {
            inner: decoder,
            remaining: self.opts.limits.max_decompressed,
            tripped: tripped.clone(),
        };
        let mut archive = tar::Archive::new(limited);
        let corrupt = |this: &Self, e: io::Error| {
            if tripped.get() {
                this.err(UnpackErrorKind::DecompressedTooLarge {
                    limit: this.opts.limits.max_decompressed,
                })
            } else {
                this.err(UnpackErrorKind::Corrupt(e.to_string()))
            }
        };
        let entries = archive.entries().map_err(|e| corrupt(self, e))?;
        let mut count = 0u64;
        for entry in entries {
            self.entry = None;
            let mut entry = entry.map_err(|e| corrupt(self, e))?;
            count += 1;
            if count > self.opts.limits.max_entries {
                return Err(self.err(UnpackErrorKind::TooManyEntries {
                    limit: self.opts.limits.max_entries,
                }));
            }
            let raw_path = entry.path_bytes().into_owned();
            self.entry = Some(String::from_utf8_lossy(&raw_path).into_owned());
            let res = self.tar_entry(&mut entry, &raw_path);
            if let Err(e) = res {
                if tripped.get() {
                    return Err(self.err(UnpackErrorKind::DecompressedTooLarge {
                        limit: self.opts.limits.max_decompressed,
                    }));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn tar_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &[u8],
    ) -> Result<(), UnpackError> {
        use tar::EntryType as T;
        let ty = entry.header().entry_type();
        match ty {
            T::Char => return Err(self.err(UnpackErrorKind::SpecialFile("character device"))),
            T::Block => return Err(self.err(UnpackErrorKind::SpecialFile("block device"))),
            T::Fifo => return Err(self.err(UnpackErrorKind::SpecialFile("FIFO"))),
            T::Regular | T::Continuous | T::GNUSparse | T::Directory | T::Symlink | T::Link => {}
            // Metadata entries the tar reader did not fold into the next entry.
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => return Err(self.err(UnpackErrorKind::UnsupportedType(other.as_byte()))),
        }
        let path = split_path(raw_path, false).map_err(|p| self.err(p.into()))?;
        let Some(dest) = self.select(&path) else {
            self.report.skipped += 1;
            return Ok(());
        };
        match ty {
            T::Directory => self.make_dir(&dest),
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| self.err(UnpackErrorKind::EmptySymlink))?;
                self.make_symlink(&dest, &target)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| {
                        self.err(UnpackErrorKind::Corrupt(
                            "hard link without a target".into(),
                        ))
                    })?;
                self.make_hardlink(&dest, &target)
            }
            _ => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let rule_mode = self.rule_mode(&path);
                let size = entry.size();
                self.write_file(&dest, entry, size, Self::file_mode(mode, rule_mode))
            }
        }
    }

    /// Applies strip_components and the selection; records rule use.
    /// `None` means the entry is skipped.
    fn select(&mut self, path: &RelPath) -> Option<RelPath> {
        let strip = self.opts.selection.strip_components;
        if path.0.len() <= strip {
            return None;
        }
        let stripped = RelPath(path.0[strip..].to_vec());
        let (dest, rule) = self.opts.selection.map(&stripped)?;
        if let Some(i) = rule {
            self.rule_used[i] = true;
        }
        if dest.0.is_empty() {
            // The staging root itself.
            return None;
        }
        Some(dest)
    }

    fn rule_mode(&self, path: &RelPath) -> Option<u32> {
        let strip = self.opts.selection.strip_components;
        let stripped = RelPath(path.0.get(strip..)?.to_vec());
        match self.opts.selection.map(&stripped)? {
            (_, Some(i)) => self.opts.selection.rules[i].mode,
            _ => None,
        }
    }

    fn make_dir(&mut self, rel: &RelPath) -> Result<(), UnpackError> {
        self.ensure_parents(rel)?;
        let path = self.dest.join(rel.to_path_buf());
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => return Ok(()),
            Ok(_) => {
                return Err(self.err(UnpackErrorKind::Exists {
                    path: rel.display(),
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_err(&path, e)),
        }
        fs::create_dir(&path).map_err(|e| self.io_err(&path, e))?;
        set_mode(&path, 0o755).map_err(|e| self.io_err(&path, e))?;
        self.report
            .placed
            .push((rel.to_path_buf(), PlacedKind::Dir));
        Ok(())
    }

    fn make_symlink(&mut self, rel: &RelPath, target: &[u8]) -> Result<(), UnpackError> {
        let shown = String::from_utf8_lossy(target).into_owned();
        if target.is_empty() {
            return Err(self.err(UnpackErrorKind::EmptySymlink));
        }
        if target.contains(&0) {
            return Err(self.err(UnpackErrorKind::BadComponent));
        }
        if target[0] == b'/' {
            if !self.opts.allow_absolute_symlinks {
                return Err(self.err(UnpackErrorKind::AbsoluteSymlink { target: shown }));
            }
        } else {
            // Resolve lexically from the link's directory in the staging root.
            let mut depth: Vec<&[u8]> = rel.0[..rel.0.len().saturating_sub(1)]
                .iter()
                .map(|c| c.as_slice())
                .collect();
            for c in target.split(|&b| b == b'/') {
                match c {
                    b"" | b"." => {}
                    b".." => {
                        if depth.pop().is_none() {
                            return Err(self.err(UnpackErrorKind::SymlinkEscapes { target: shown }));
                        }
                    }
                    c => depth.push(c),
                }
            }
        }
        self.ensure_parents(rel)?;
        let path = self.dest.join(rel.to_path_buf());
        match std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(self.err(UnpackErrorKind::Exists {
                    path: rel.display(),
                }))
            }
            Err(e) => return Err(self.io_err(&path, e)),
        }
        self.report
            .placed
            .push((rel.to_path_buf(), PlacedKind::Symlink));
        Ok(())
    }

    fn make_hardlink(&mut self, rel: &RelPath, target: &[u8]) -> Result<(), UnpackError> {
        let outside = || UnpackErrorKind::HardLinkOutside {
            target: String::from_utf8_lossy(target).into_owned(),
        };
        let target_path = split_path(target, false).map_err(|_| self.err(outside()))?;
        // Map the target the same way as entries, without counting rule use.
        let strip = self.opts.selection.strip_components;
        let mapped = target_path
            .0
            .get(strip..)
            .map(|s| RelPath(s.to_vec()))
            .and_then(|s| self.opts.selection.map(&s))
            .map(|(d, _)| d);
        let Some(target_dest) = mapped.filter(|d| self.placed_files.contains(d)) else {
            return Err(self.err(outside()));
        };
        let size = fs::metadata(self.dest.join(target_dest.to_path_buf()))
            .map(|m| m.len())
            .unwrap_or(0);
        if size > self.opts.limits.max_file_size {
            return Err(self.err(UnpackErrorKind::FileTooLarge {
                size,
                limit: self.opts.limits.max_file_size,
            }));
        }
        self.ensure_parents(rel)?;
        let path = self.dest.join(rel.to_path_buf());
        match fs::hard_link(self.dest.join(target_dest.to_path_buf()), &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(self.err(UnpackErrorKind::Exists {
                    path: rel.display(),
                }))
            }
            Err(e) => return Err(self.io_err(&path, e)),
        }
        self.add_bytes(size)?;
        self.placed_files.insert(rel.clone());
        self.report
            .placed
            .push((rel.to_path_buf(), PlacedKind::HardLink));
        Ok(())
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        split_path(s.as_bytes(), false).unwrap()
    }

    #[test]
    fn splits_and_refuses_paths() {
        assert_eq!(rp("./a//b/./c").display(), "a/b/c");
        assert_eq!(
            split_path(b"/etc/passwd", false),
            Err(PathProblem::Absolute)
        );
        assert_eq!(split_path(b"a/../../b", false), Err(PathProblem::DotDot));
        assert_eq!(split_path(b"a/b\0c", false), Err(PathProblem::BadComponent));
        assert_eq!(split_path(b"/usr/bin/", true).unwrap().display(), "usr/bin");
    }

    #[test]
    fn selection_maps_files_dirs_and_renames() {
        let sel = Selection::all()
            .strip_components(1)
            .place("bin/kubectl", "usr/bin/")
            .unwrap()
            .place("bin/k", "usr/bin/kk")
            .unwrap()
            .place("etc/falco", "usr/share/falco/etc/falco")
            .unwrap()
            .place("usr", "usr")
            .unwrap()
            .exclude("usr/bin/uninstall.sh")
            .unwrap();
        let m = |p: &str| sel.map(&rp(p)).map(|(d, _)| d.display());
        assert_eq!(m("bin/kubectl").as_deref(), Some("usr/bin/kubectl"));
        assert_eq!(m("bin/k").as_deref(), Some("usr/bin/kk"));
        assert_eq!(m("bin/kx"), None);
        assert_eq!(
            m("etc/falco/falco.yaml").as_deref(),
            Some("usr/share/falco/etc/falco/falco.yaml")
        );
        assert_eq!(m("usr/bin/falco").as_deref(), Some("usr/bin/falco"));
        assert_eq!(m("usr/bin/uninstall.sh"), None);
        assert!(Selection::all().place("../x", "usr/").is_err());
        assert!(Selection::all().place("x", "usr/../../etc/").is_err());
        assert!(Selection::all()
            .place_with_mode("x", "usr/bin/x", 0o4755)
            .is_err());
    }

    #[test]
    fn formats_from_names_and_strings() {
        assert_eq!(
            ArchiveFormat::from_file_name("cni-plugins-linux-amd64-v1.5.1.tgz"),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(
            ArchiveFormat::from_file_name("wasmtime-v1-x86_64-linux.tar.xz"),
            Some(ArchiveFormat::TarXz)
        );
        assert_eq!(ArchiveFormat::from_file_name("kubectl"), None);
        assert_eq!(
            "tar.zst".parse::<ArchiveFormat>().unwrap(),
            ArchiveFormat::TarZst
        );
        assert!("zip".parse::<ArchiveFormat>().is_err());
    }
}
