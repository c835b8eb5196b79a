//! The staged image tree: every entry that goes into a filesystem image,
//! already normalised (owner root, sane modes, one mtime, entries sorted by
//! name bytes). Staging builds it; the filesystem writers consume it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// One path component: non-empty, no `/`, no NUL, not `.` or `..`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(Vec<u8>);

/// A path component that cannot be an entry name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid file name {0:?}: must be non-empty and contain no '/', NUL, '.' or '..'")]
pub struct BadEntryName(pub String);

impl EntryName {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, BadEntryName> {
        let bytes = bytes.into();
        let bad = bytes.is_empty()
            || bytes == b"."
            || bytes == b".."
            || bytes.iter().any(|&b| b == b'/' || b == 0)
            || bytes.len() > 255;
        if bad {
            return Err(BadEntryName(String::from_utf8_lossy(&bytes).into_owned()));
        }
        Ok(EntryName(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// Read from this file on disk when the image is written.
    Path(PathBuf),
    /// Generated content (extension-release, drop-ins, …).
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNode {
    /// Permission bits only (`0o7777` mask); the file type is implied.
    pub mode: u16,
    pub content: FileContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkNode {
    pub target: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirNode {
    /// Permission bits only.
    pub mode: u16,
    /// Sorted by name bytes, as squashfs and erofs directories require.
    pub entries: BTreeMap<EntryName, Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir(DirNode),
    File(FileNode),
    Symlink(SymlinkNode),
}

/// The normalised tree of one image. Every inode is owned by uid 0 / gid 0
/// and carries `mtime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedTree {
    pub root: DirNode,
    /// Seconds since the epoch (`SOURCE_DATE_EPOCH`), applied to every inode
    /// and to the filesystem superblock.
    pub mtime: u32,
}
