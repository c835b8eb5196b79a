//! Metadata blocks (8 KiB units, each compressed on its own behind a 2-byte
//! header) and the two structures built from them: indexed tables (fragment
//! and id tables, followed by a list of their block positions) and
//! directory listings (headers plus entries, split where the format needs).

use super::codec::Codec;
use super::layout::{
    Sink, DIR_ENTRY_SIZE, DIR_HEADER_MAX_ENTRIES, DIR_HEADER_SIZE, METADATA_SIZE,
    METADATA_UNCOMPRESSED,
};
use super::SquashfsError;

/// Accumulates a metadata table in memory, compressing each 8 KiB block as
/// soon as it is full, so references to already written bytes are final.
#[derive(Default)]
pub(crate) struct MetadataWriter {
    out: Vec<u8>,
    pending: Vec<u8>,
    block_starts: Vec<u64>,
    scratch: Vec<u8>,
}

impl MetadataWriter {
    pub fn new() -> Self {
        MetadataWriter {
            pending: Vec::with_capacity(METADATA_SIZE),
            ..Default::default()
        }
    }

    /// Where the next byte goes: the start of its block relative to the
    /// table, and its offset inside the uncompressed block.
    pub fn position(&self) -> (u64, u16) {
        (self.out.len() as u64, self.pending.len() as u16)
    }

    pub fn write(&mut self, codec: &mut Codec, mut bytes: &[u8]) -> Result<(), SquashfsError> {
        while !bytes.is_empty() {
            let n = (METADATA_SIZE - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == METADATA_SIZE {
                self.flush(codec)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, codec: &mut Codec) -> Result<(), SquashfsError> {
        self.block_starts.push(self.out.len() as u64);
        if codec.compress(&self.pending, &mut self.scratch)? {
            self.out
                .extend_from_slice(&(self.scratch.len() as u16).to_le_bytes());
            self.out.extend_from_slice(&self.scratch);
        } else {
            let header = self.pending.len() as u16 | METADATA_UNCOMPRESSED;
            self.out.extend_from_slice(&header.to_le_bytes());
            self.out.extend_from_slice(&self.pending);
        }
        self.pending.clear();
        Ok(())
    }

    /// The finished table and the start of each of its blocks (relative).
    pub fn finish(mut self, codec: &mut Codec) -> Result<(Vec<u8>, Vec<u64>), SquashfsError> {
        if !self.pending.is_empty() {
            self.flush(codec)?;
        }
        Ok((self.out, self.block_starts))
    }
}

/// Writes `bytes` as metadata blocks followed by the list of their absolute
/// positions; returns the position of that list, which is what the
/// superblock points at.
pub(crate) fn write_indexed_table(
    sink: &mut Sink<'_>,
    bytes: &[u8],
    codec: &mut Codec,
) -> Result<u64, SquashfsError> {
    let mut w = MetadataWriter::new();
    w.write(codec, bytes)?;
    let (blocks, starts) = w.finish(codec)?;
    let table_start = sink.position();
    sink.write(&blocks)?;
    let index_start = sink.position();
    let index: Vec<u8> = starts
        .iter()
        .flat_map(|s| (table_start + s).to_le_bytes())
        .collect();
    sink.write(&index)?;
    Ok(index_start)
}

/// One entry to list in a directory.
pub(crate) struct ListEntry<'a> {
    pub name: &'a [u8],
    /// Start of the inode's metadata block, relative to the inode table.
    pub inode_block: u32,
    pub inode_offset: u16,
    pub inode_number: u32,
    /// Basic inode type (1 dir, 2 file, 3 symlink), also for extended inodes.
    pub kind: u16,
}

/// Where a directory index entry points: a header at `at` bytes into the
/// listing, followed first by the entry called `name`.
pub(crate) struct IndexPoint<'a> {
    pub at: usize,
    pub name: &'a [u8],
}

pub(crate) struct Listing<'a> {
    pub bytes: Vec<u8>,
    pub index: Vec<IndexPoint<'a>>,
}

/// Encodes a directory listing the way `mksquashfs` does: a new header
/// whenever 256 entries are reached, the inode block changes, the inode
/// number delta leaves `i16`, or the listing grows past another 8 KiB since
/// the last index point (which then gets an index entry for fast lookups).
pub(crate) fn build_listing<'a>(entries: &[ListEntry<'a>]) -> Listing<'a> {
    let mut bytes = Vec::new();
    let mut index = Vec::new();
    let mut header_at: Option<usize> = None;
    let mut count: u32 = DIR_HEADER_MAX_ENTRIES;
    let mut block = 0u32;
    let mut base = 0u32;
    let mut index_mark = 0usize;

    let put_header = |bytes: &mut Vec<u8>, at: usize, count: u32, block: u32, base: u32| {
        bytes[at..at + 4].copy_from_slice(&(count - 1).to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&block.to_le_bytes());
        bytes[at + 8..at + 12].copy_from_slice(&base.to_le_bytes());
    };

    for e in entries {
        let entry_len = DIR_ENTRY_SIZE + e.name.len();
        let delta = i64::from(e.inode_number) - i64::from(base);
        let past_mark = bytes.len() + entry_len - index_mark > METADATA_SIZE;
        let new_header = count == DIR_HEADER_MAX_ENTRIES
            || e.inode_block != block
            || (header_at.is_some() && past_mark)
            || i16::try_from(delta).is_err();
        if new_header {
            if let Some(at) = header_at {
                if past_mark {
                    index.push(IndexPoint {
                        at: bytes.len(),
                        name: e.name,
                    });
                    index_mark = bytes.len();
                }
                put_header(&mut bytes, at, count, block, base);
            }
            header_at = Some(bytes.len());
            bytes.extend_from_slice(&[0u8; DIR_HEADER_SIZE]);
            count = 0;
            block = e.inode_block;
            base = e.inode_number;
        }
        let delta = (i64::from(e.inode_number) - i64::from(base)) as i16;
        bytes.extend_from_slice(&e.inode_offset.to_le_bytes());
        bytes.extend_from_slice(&delta.to_le_bytes());
        bytes.extend_from_slice(&e.kind.to_le_bytes());
        bytes.extend_from_slice(&(e.name.len() as u16 - 1).to_le_bytes());
        bytes.extend_from_slice(e.name);
        count += 1;
    }
    if let Some(at) = header_at {
        put_header(&mut bytes, at, count, block, base);
    }
    Listing { bytes, index }
}
