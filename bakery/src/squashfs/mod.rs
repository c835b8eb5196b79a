//! Our SquashFS 4.0 writer: turns a [`StagedTree`] into a squashfs image
//! that the Linux kernel mounts and squashfs-tools read, byte-identical across
//! runs and thread counts.
//!
//! This module owns the on-disk format (superblock, inode, directory,
//! fragment and id tables), the data pipeline (duplicate detection, fragment
//! packing, parallel block compression) and the compressor choice. It does
//! not own the output file's name: callers hand in an open [`std::fs::File`]
//! (a temporary file next to the final name) and rename it when this returns.
//!
//! Layout decisions follow `mksquashfs` 4.5 defaults so sizes stay
//! comparable: 128 KiB blocks, files smaller than a block are packed into
//! fragment blocks, larger files are stored as whole blocks (no tail-end
//! packing), identical files share their data, all-zero blocks are stored
//! sparse, a block is stored uncompressed when compression does not shrink it,
//! inode numbers are allocated directory by directory in sorted order, and the
//! image is padded to a multiple of 4096 bytes. No xattr and no NFS export
//! table are written; the id table holds the single id 0.
//!
//! Parallelism never changes the bytes: all layout decisions (which file goes
//! where, fragment packing) are made from file sizes before any data is
//! compressed; workers only compress independent blocks, and the writer puts
//! their results on disk in plan order. Memory stays bounded: at most a small
//! window of blocks per worker is in flight; only metadata (a few dozen bytes
//! per inode) is kept until the end.

mod codec;
mod data;
mod inodes;
mod layout;
mod metadata;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::str::FromStr;

use crate::tree::StagedTree;

/// The compressor for data blocks and metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// zstd (squashfs id 6); default level 15, like `mksquashfs`.
    #[default]
    Zstd,
    /// zlib-wrapped deflate (squashfs id 1, "gzip"); default level 9.
    Gzip,
    /// xz container with LZMA2, CRC32 check (squashfs id 4); default preset 6.
    Xz,
    /// LZ4 block format, legacy stream (squashfs id 5); has no levels.
    Lz4,
}

impl Compression {
    /// All compressors, in the order `FromStr` lists them in errors.
    pub const ALL: [Compression; 4] = [
        Compression::Zstd,
        Compression::Gzip,
        Compression::Xz,
        Compression::Lz4,
    ];

    /// The name used by `mksquashfs -comp` and by `unsquashfs -s`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }

    /// The level used when [`SquashfsOptions::level`] is `None`.
    pub fn default_level(self) -> Option<i32> {
        match self {
            Compression::Zstd => Some(15),
            Compression::Gzip => Some(9),
            Compression::Xz => Some(6),
            Compression::Lz4 => None,
        }
    }

    /// The accepted levels, inclusive; `None` if the compressor has no levels.
    pub fn level_range(self) -> Option<(i32, i32)> {
        match self {
            Compression::Zstd => Some((1, 22)),
            Compression::Gzip => Some((1, 9)),
            Compression::Xz => Some((0, 9)),
            Compression::Lz4 => None,
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compressor name that is not one of `zstd`, `gzip`, `xz`, `lz4`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression {0:?}: use one of zstd, gzip, xz, lz4")]
pub struct UnknownCompression(pub String);

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCompression(s.to_owned()))
    }
}

/// How to write the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashfsOptions {
    pub compression: Compression,
    /// Compressor level; `None` means the compressor's default
    /// ([`Compression::default_level`]).
    pub level: Option<i32>,
    /// Data block size in bytes: a power of two from 4096 to 1 MiB.
    pub block_size: u32,
    /// Compression threads; 0 means one per available core (at most 256
    /// are used). The image bytes do not depend on it.
    pub threads: usize,
}

impl Default for SquashfsOptions {
    fn default() -> Self {
        SquashfsOptions {
            compression: Compression::Zstd,
            level: None,
            block_size: 131_072,
            threads: 0,
        }
    }
}

/// What [`write_squashfs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SquashfsStats {
    /// Size of the image including the padding to 4096 bytes.
    pub bytes_written: u64,
    /// The superblock's `bytes_used`: the image without padding.
    pub bytes_used: u64,
    /// Inodes in the image (directories, files, symlinks, the root).
    pub inodes: u64,
    /// Regular files in the tree.
    pub files: u64,
    /// Files whose data was shared with an identical earlier file.
    pub duplicate_files: u64,
    /// Bytes of file content in the tree (duplicates counted each time).
    pub file_bytes: u64,
    /// Data blocks written (excluding sparse and fragment blocks).
    pub data_blocks: u64,
    /// All-zero blocks stored as holes.
    pub sparse_blocks: u64,
    /// Fragment blocks (packed small files) written.
    pub fragment_blocks: u64,
    /// Data and fragment blocks stored uncompressed because compression did
    /// not shrink them.
    pub uncompressed_blocks: u64,
}

/// Why an image could not be written. Source-file errors name both the
/// path read from and the path inside the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SquashfsError {
    #[error(
        "invalid squashfs block size {0}: use a power of two from 4096 to 1048576 (default 131072)"
    )]
    BlockSize(u32),
    #[error("invalid {compression} compression level {level}: {allowed}")]
    Level {
        compression: Compression,
        level: i32,
        allowed: String,
    },
    #[error("cannot read {} (staged as /{image_path}): {source}", path.display())]
    Read {
        path: PathBuf,
        image_path: String,
        #[source]
        source: io::Error,
    },
    #[error("{} (staged as /{image_path}) is not a regular file; only regular files can be image content", path.display())]
    NotRegularFile { path: PathBuf, image_path: String },
    #[error("{} (staged as /{image_path}) changed while the image was written (it had {expected} bytes when the tree was scanned); stage the tree again", path.display())]
    FileChanged {
        path: PathBuf,
        image_path: String,
        expected: u64,
    },
    #[error("symlink /{image_path} has an invalid target: {reason}")]
    SymlinkTarget {
        image_path: String,
        reason: &'static str,
    },
    #[error("{compression} compression failed: {message}")]
    Compress {
        compression: Compression,
        message: String,
    },
    #[error("cannot write the squashfs image: {0}")]
    Write(#[source] io::Error),
    #[error("cannot start compression threads: {0}")]
    Threads(#[source] io::Error),
    #[error("the tree does not fit into squashfs: {0}")]
    TooLarge(&'static str),
}

/// Each compression thread holds a compressor context (a few MiB for zstd
/// at high levels), so the count is capped.
const MAX_THREADS: usize = 256;

/// Options checked and resolved once: level filled in, block log computed,
/// thread count decided.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resolved {
    pub compression: Compression,
    pub level: Option<i32>,
    pub block_size: u32,
    pub block_log: u16,
    pub threads: usize,
}

impl SquashfsOptions {
    /// Checks block size and level without writing anything, so a caller
    /// can reject bad options before doing other work.
    pub fn validate(&self) -> Result<(), SquashfsError> {
        self.resolve().map(|_| ())
    }

    pub(crate) fn resolve(&self) -> Result<Resolved, SquashfsError> {
        let bs = self.block_size;
        if !(4096..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
            return Err(SquashfsError::BlockSize(bs));
        }
        let c = self.compression;
        let level = match (self.level, c.level_range()) {
            (None, _) => c.default_level(),
            (Some(l), Some((lo, hi))) if (lo..=hi).contains(&l) => Some(l),
            (Some(l), Some((lo, hi))) => {
                return Err(SquashfsError::Level {
                    compression: c,
                    level: l,
                    allowed: format!("use {lo} to {hi}"),
                })
            }
            (Some(l), None) => {
                return Err(SquashfsError::Level {
                    compression: c,
                    level: l,
                    allowed: format!("{c} has no compression levels; leave the level unset"),
                })
            }
        };
        let threads = if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
        .min(MAX_THREADS);
        Ok(Resolved {
            compression: c,
            level,
            block_size: bs,
            block_log: bs.trailing_zeros() as u16,
            threads,
        })
    }
}

/// Writes `tree` as a squashfs image into `out`, starting at its current
/// position, and leaves the position at the end of the (padded) image.
///
/// The caller owns durability and naming: write into a temporary file in the
/// destination directory, `sync_all` it, then rename. On error, `out` holds
/// garbage and must be discarded.
pub fn write_squashfs(
    tree: &StagedTree,
    out: &mut File,
    opts: &SquashfsOptions,
) -> Result<SquashfsStats, SquashfsError> {
    let opts = opts.resolve()?;
    let base = out.stream_position().map_err(SquashfsError::Write)?;
    let mut stats = SquashfsStats::default();

    // 1. What goes into the image, in mksquashfs' reading order.
    let files = data::collect_files(tree)?;
    // 2. Which files are duplicates, and where every byte goes.
    let plan = data::plan(&files, &opts, &mut stats)?;

    let comp_opts = codec::compressor_options(&opts);
    let mut sink = layout::Sink::new(out);
    // The superblock is written last; reserve its place (and the compressor
    // options that follow it).
    sink.write(&[0u8; layout::SUPERBLOCK_SIZE])?;
    if let Some(o) = &comp_opts {
        let header = (o.len() as u16) | layout::METADATA_UNCOMPRESSED;
        sink.write(&header.to_le_bytes())?;
        sink.write(o)?;
    }

    // 3. Compress and write all data and fragment blocks.
    let placed = data::write_data(&files, &plan, &opts, &mut sink, &mut stats)?;

    // 4. Inode and directory tables, then the fragment and id tables.
    let mut main_codec = codec::Codec::new(&opts)?;
    let tables = inodes::build_tables(tree, &files, &plan, &placed, &mut main_codec)?;
    stats.inodes = u64::from(tables.inode_count);

    let inode_table_start = sink.position();
    sink.write(&tables.inode_table)?;
    let directory_table_start = sink.position();
    sink.write(&tables.directory_table)?;

    let fragment_bytes: Vec<u8> = placed
        .fragments
        .iter()
        .flat_map(|f| layout::fragment_entry(f.start, f.size_field))
        .collect();
    let fragment_table_start =
        metadata::write_indexed_table(&mut sink, &fragment_bytes, &mut main_codec)?;
    let id_table_start =
        metadata::write_indexed_table(&mut sink, &0u32.to_le_bytes(), &mut main_codec)?;
    let bytes_used = sink.position();

    let padded = bytes_used.div_ceil(4096) * 4096;
    let pad = (padded - bytes_used) as usize;
    sink.write(&vec![0u8; pad])?;

    let superblock = layout::Superblock {
        inode_count: tables.inode_count,
        mkfs_time: tree.mtime,
        block_size: opts.block_size,
        fragment_count: u32::try_from(placed.fragments.len())
            .map_err(|_| SquashfsError::TooLarge("more than 2^32 fragment blocks"))?,
        compression_id: layout::compression_id(opts.compression),
        block_log: opts.block_log,
        flags: layout::FLAG_DUPLICATES
            | layout::FLAG_NO_XATTRS
            | if comp_opts.is_some() {
                layout::FLAG_COMPRESSOR_OPTIONS
            } else {
                0
            },
        id_count: 1,
        root_inode: tables.root_inode,
        bytes_used,
        id_table_start,
        inode_table_start,
        directory_table_start,
        fragment_table_start,
    };
    let out = sink.finish()?;
    out.seek(SeekFrom::Start(base))
        .map_err(SquashfsError::Write)?;
    out.write_all(&superblock.to_bytes())
        .map_err(SquashfsError::Write)?;
    out.seek(SeekFrom::Start(base + padded))
        .map_err(SquashfsError::Write)?;

    stats.bytes_used = bytes_used;
    stats.bytes_written = padded;
    Ok(stats)
}
