//! SquashFS 4.0 on-disk structures: constants, the superblock, inode and
//! table entry encodings (all little-endian), and the positioned output sink.

use std::fs::File;
use std::io::{BufWriter, Write};

use super::{Compression, SquashfsError};

pub(crate) const MAGIC: u32 = 0x7371_7368; // "hsqs"
pub(crate) const SUPERBLOCK_SIZE: usize = 96;
/// Uncompressed size of one metadata block.
pub(crate) const METADATA_SIZE: usize = 8192;
/// Bit in a metadata block header: the block is stored uncompressed.
pub(crate) const METADATA_UNCOMPRESSED: u16 = 1 << 15;
/// Bit in a data/fragment block size: the block is stored uncompressed.
pub(crate) const DATA_UNCOMPRESSED: u32 = 1 << 24;
pub(crate) const NO_FRAGMENT: u32 = 0xFFFF_FFFF;
pub(crate) const NO_XATTR: u32 = 0xFFFF_FFFF;
pub(crate) const NO_TABLE: u64 = u64::MAX;

pub(crate) const FLAG_DUPLICATES: u16 = 0x0040;
pub(crate) const FLAG_NO_XATTRS: u16 = 0x0200;
pub(crate) const FLAG_COMPRESSOR_OPTIONS: u16 = 0x0400;

pub(crate) const TYPE_DIR: u16 = 1;
pub(crate) const TYPE_FILE: u16 = 2;
pub(crate) const TYPE_SYMLINK: u16 = 3;
pub(crate) const TYPE_LDIR: u16 = 8;
pub(crate) const TYPE_LFILE: u16 = 9;

/// At most this many entries follow one directory header.
pub(crate) const DIR_HEADER_MAX_ENTRIES: u32 = 256;
pub(crate) const DIR_HEADER_SIZE: usize = 12;
pub(crate) const DIR_ENTRY_SIZE: usize = 8;

pub(crate) fn compression_id(c: Compression) -> u16 {
    match c {
        Compression::Gzip => 1,
        Compression::Xz => 4,
        Compression::Lz4 => 5,
        Compression::Zstd => 6,
    }
}

pub(crate) struct Superblock {
    pub inode_count: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragment_count: u32,
    pub compression_id: u16,
    pub block_log: u16,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
}

impl Superblock {
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = Vec::with_capacity(SUPERBLOCK_SIZE);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&self.inode_count.to_le_bytes());
        b.extend_from_slice(&self.mkfs_time.to_le_bytes());
        b.extend_from_slice(&self.block_size.to_le_bytes());
        b.extend_from_slice(&self.fragment_count.to_le_bytes());
        b.extend_from_slice(&self.compression_id.to_le_bytes());
        b.extend_from_slice(&self.block_log.to_le_bytes());
        b.extend_from_slice(&self.flags.to_le_bytes());
        b.extend_from_slice(&self.id_count.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes()); // version major
        b.extend_from_slice(&0u16.to_le_bytes()); // version minor
        b.extend_from_slice(&self.root_inode.to_le_bytes());
        b.extend_from_slice(&self.bytes_used.to_le_bytes());
        b.extend_from_slice(&self.id_table_start.to_le_bytes());
        b.extend_from_slice(&NO_TABLE.to_le_bytes()); // xattr id table
        b.extend_from_slice(&self.inode_table_start.to_le_bytes());
        b.extend_from_slice(&self.directory_table_start.to_le_bytes());
        b.extend_from_slice(&self.fragment_table_start.to_le_bytes());
        b.extend_from_slice(&NO_TABLE.to_le_bytes()); // export table
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out.copy_from_slice(&b);
        out
    }
}

/// One fragment table entry: where a fragment block starts and its size
/// field (with [`DATA_UNCOMPRESSED`] if stored raw).
pub(crate) fn fragment_entry(start: u64, size_field: u32) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[..8].copy_from_slice(&start.to_le_bytes());
    e[8..12].copy_from_slice(&size_field.to_le_bytes());
    e
}

/// The 16-byte header every inode starts with. uid and gid index 0 of the
/// id table, which holds the single id 0.
pub(crate) fn inode_header(buf: &mut Vec<u8>, kind: u16, mode: u16, mtime: u32, number: u32) {
    buf.extend_from_slice(&kind.to_le_bytes());
    buf.extend_from_slice(&(mode & 0o7777).to_le_bytes());
    buf.extend_from_slice(&0u16.to_le_bytes()); // uid index
    buf.extend_from_slice(&0u16.to_le_bytes()); // gid index
    buf.extend_from_slice(&mtime.to_le_bytes());
    buf.extend_from_slice(&number.to_le_bytes());
}

/// Writes the image sequentially through a buffer and knows the current
/// offset relative to the start of the image.
pub(crate) struct Sink<'f> {
    out: BufWriter<&'f mut File>,
    pos: u64,
}

impl<'f> Sink<'f> {
    pub fn new(out: &'f mut File) -> Self {
        Sink {
            out: BufWriter::with_capacity(1 << 20, out),
            pos: 0,
        }
    }

    /// Offset of the next byte, relative to the start of the image.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SquashfsError> {
        self.out.write_all(bytes).map_err(SquashfsError::Write)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> Result<&'f mut File, SquashfsError> {
        self.out
            .into_inner()
            .map_err(|e| SquashfsError::Write(e.into_error()))
    }
}
