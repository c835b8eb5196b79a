//! The inode and directory tables: walks the tree the way `mksquashfs` does
//! (inode numbers handed out directory by directory in name order, inodes
//! written children first so each directory listing can point at them) and
//! encodes every inode.

use super::codec::Codec;
use super::data::{Placed, Plan, SourceFile};
use super::layout::{
    inode_header, DIR_ENTRY_SIZE, METADATA_SIZE, NO_FRAGMENT, NO_XATTR, TYPE_DIR, TYPE_FILE,
    TYPE_LDIR, TYPE_LFILE, TYPE_SYMLINK,
};
use super::metadata::{build_listing, ListEntry, MetadataWriter};
use super::SquashfsError;
use crate::tree::{DirNode, FileNode, Node, StagedTree, SymlinkNode};

pub(crate) struct Tables {
    pub inode_table: Vec<u8>,
    pub directory_table: Vec<u8>,
    pub root_inode: u64,
    pub inode_count: u32,
}

pub(crate) fn build_tables(
    tree: &StagedTree,
    files: &[SourceFile<'_>],
    plan: &Plan,
    placed: &Placed,
    codec: &mut Codec,
) -> Result<Tables, SquashfsError> {
    let entries = count_entries(&tree.root);
    let inode_count = u32::try_from(entries + 1)
        .ok()
        .filter(|n| *n < u32::MAX)
        .ok_or(SquashfsError::TooLarge("more than 2^32 - 2 inodes"))?;
    let mut w = TableWriter {
        inodes: MetadataWriter::new(),
        dirs: MetadataWriter::new(),
        codec,
        files,
        plan,
        placed,
        mtime: tree.mtime,
        next_number: 1,
        next_file: 0,
        buf: Vec::new(),
    };
    // The root is numbered last; its parent number is one past the end.
    let root_inode = w.write_dir(&tree.root, inode_count, inode_count + 1)?;
    debug_assert_eq!(w.next_number, inode_count);
    debug_assert_eq!(w.next_file, files.len());
    let (inode_table, _) = w.inodes.finish(w.codec)?;
    let (directory_table, _) = w.dirs.finish(w.codec)?;
    Ok(Tables {
        inode_table,
        directory_table,
        root_inode,
        inode_count,
    })
}

fn count_entries(dir: &DirNode) -> u64 {
    dir.entries
        .values()
        .map(|n| match n {
            Node::Dir(d) => 1 + count_entries(d),
            _ => 1,
        })
        .sum()
}

struct TableWriter<'t, 'a, 'c> {
    inodes: MetadataWriter,
    dirs: MetadataWriter,
    codec: &'c mut Codec,
    files: &'t [SourceFile<'a>],
    plan: &'t Plan,
    placed: &'t Placed,
    mtime: u32,
    next_number: u32,
    /// Files are met in the same order `collect_files` listed them.
    next_file: usize,
    buf: Vec<u8>,
}

impl TableWriter<'_, '_, '_> {
    /// Appends the inode in `self.buf` to the inode table; returns its
    /// reference (block start << 16 | offset).
    fn emit_inode(&mut self) -> Result<u64, SquashfsError> {
        let (block, offset) = self.inodes.position();
        if block > u64::from(u32::MAX) {
            return Err(SquashfsError::TooLarge("inode table larger than 4 GiB"));
        }
        let buf = std::mem::take(&mut self.buf);
        self.inodes.write(self.codec, &buf)?;
        self.buf = buf;
        Ok(block << 16 | u64::from(offset))
    }

    fn write_dir(&mut self, dir: &DirNode, number: u32, parent: u32) -> Result<u64, SquashfsError> {
        let mut listed = Vec::with_capacity(dir.entries.len());
        let mut subdirs = 0u32;
        for (name, node) in &dir.entries {
            let n = self.next_number;
            self.next_number += 1;
            let (inode_ref, kind) = match node {
                Node::Dir(d) => {
                    subdirs += 1;
                    (self.write_dir(d, n, number)?, TYPE_DIR)
                }
                Node::File(f) => (self.write_file(f, n)?, TYPE_FILE),
                Node::Symlink(s) => (self.write_symlink(s, n)?, TYPE_SYMLINK),
            };
            listed.push(ListEntry {
                name: name.as_bytes(),
                inode_block: (inode_ref >> 16) as u32,
                inode_offset: inode_ref as u16,
                inode_number: n,
                kind,
            });
        }

        let listing = build_listing(&listed);
        let (dir_block, dir_offset) = self.dirs.position();
        let dir_block = u32::try_from(dir_block)
            .map_err(|_| SquashfsError::TooLarge("directory table larger than 4 GiB"))?;
        // Write the listing, noting which metadata block each index point
        // lands in.
        let mut index = Vec::with_capacity(listing.index.len());
        let mut done = 0;
        for p in &listing.index {
            self.dirs.write(self.codec, &listing.bytes[done..p.at])?;
            done = p.at;
            let (block, _) = self.dirs.position();
            index.push((p.at as u32, block as u32, p.name));
        }
        self.dirs.write(self.codec, &listing.bytes[done..])?;

        let file_size = listing.bytes.len() as u64 + 3;
        let names: usize = listed.iter().map(|e| e.name.len() + DIR_ENTRY_SIZE).sum();
        // mksquashfs' rule for the extended form (which carries the index).
        let extended = listed.len() >= 257 || names >= METADATA_SIZE || file_size > 0xFFFF;
        let nlink = subdirs + 2;
        self.buf.clear();
        if extended {
            let file_size = u32::try_from(file_size)
                .map_err(|_| SquashfsError::TooLarge("a directory listing larger than 4 GiB"))?;
            inode_header(&mut self.buf, TYPE_LDIR, dir.mode, self.mtime, number);
            self.buf.extend_from_slice(&nlink.to_le_bytes());
            self.buf.extend_from_slice(&file_size.to_le_bytes());
            self.buf.extend_from_slice(&dir_block.to_le_bytes());
            self.buf.extend_from_slice(&parent.to_le_bytes());
            self.buf
                .extend_from_slice(&(index.len() as u16).to_le_bytes());
            self.buf.extend_from_slice(&dir_offset.to_le_bytes());
            self.buf.extend_from_slice(&NO_XATTR.to_le_bytes());
            for (at, block, name) in &index {
                self.buf.extend_from_slice(&at.to_le_bytes());
                self.buf.extend_from_slice(&block.to_le_bytes());
                self.buf
                    .extend_from_slice(&(name.len() as u32 - 1).to_le_bytes());
                self.buf.extend_from_slice(name);
            }
        } else {
            inode_header(&mut self.buf, TYPE_DIR, dir.mode, self.mtime, number);
            self.buf.extend_from_slice(&dir_block.to_le_bytes());
            self.buf.extend_from_slice(&nlink.to_le_bytes());
            self.buf
                .extend_from_slice(&(file_size as u16).to_le_bytes());
            self.buf.extend_from_slice(&dir_offset.to_le_bytes());
            self.buf.extend_from_slice(&parent.to_le_bytes());
        }
        self.emit_inode()
    }

    fn write_file(&mut self, f: &FileNode, number: u32) -> Result<u64, SquashfsError> {
        let idx = self.next_file;
        self.next_file += 1;
        let size = self.files[idx].size;
        let c = self.plan.canonical[idx];
        let fp = self.plan.files[c];
        let jobs = fp.first_job..fp.first_job + fp.blocks as usize;
        let start = if fp.blocks > 0 {
            self.placed.block_start[c]
        } else {
            0
        };
        let sizes = &self.placed.job_size[jobs.clone()];
        let mut sparse: u64 = jobs
            .filter(|&j| self.placed.job_size[j] == 0)
            .map(|j| u64::from(self.plan.job_len(j)))
            .sum();
        let (frag, frag_offset) = fp.fragment.unwrap_or((NO_FRAGMENT, 0));

        self.buf.clear();
        let small = size < 1 << 32 && start < 1 << 32 && sparse == 0;
        if small {
            inode_header(&mut self.buf, TYPE_FILE, f.mode, self.mtime, number);
            self.buf.extend_from_slice(&(start as u32).to_le_bytes());
            self.buf.extend_from_slice(&frag.to_le_bytes());
            self.buf.extend_from_slice(&frag_offset.to_le_bytes());
            self.buf.extend_from_slice(&(size as u32).to_le_bytes());
        } else {
            if sparse >= size {
                sparse = size - 1;
            }
            inode_header(&mut self.buf, TYPE_LFILE, f.mode, self.mtime, number);
            self.buf.extend_from_slice(&start.to_le_bytes());
            self.buf.extend_from_slice(&size.to_le_bytes());
            self.buf.extend_from_slice(&sparse.to_le_bytes());
            self.buf.extend_from_slice(&1u32.to_le_bytes()); // nlink
            self.buf.extend_from_slice(&frag.to_le_bytes());
            self.buf.extend_from_slice(&frag_offset.to_le_bytes());
            self.buf.extend_from_slice(&NO_XATTR.to_le_bytes());
        }
        for s in sizes {
            self.buf.extend_from_slice(&s.to_le_bytes());
        }
        self.emit_inode()
    }

    fn write_symlink(&mut self, s: &SymlinkNode, number: u32) -> Result<u64, SquashfsError> {
        self.buf.clear();
        inode_header(&mut self.buf, TYPE_SYMLINK, 0o777, self.mtime, number);
        self.buf.extend_from_slice(&1u32.to_le_bytes()); // nlink
        self.buf
            .extend_from_slice(&(s.target.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&s.target);
        self.emit_inode()
    }
}
