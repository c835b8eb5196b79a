//! Packs a directory into a squashfs image with `bakery::squashfs`, the way
//! `bench/squashfs/run.sh` compares it with `mksquashfs`:
//!
//! ```text
//! cargo run --release -p bakery --example mksquashfs_tree -- DIR OUT \
//!     [--comp zstd|gzip|xz|lz4] [--level N] [--block-size BYTES] [--threads N] [--mtime SECS]
//! ```
//!
//! Every inode gets owner 0:0 and mtime `--mtime` (default 0). Regular
//! files, directories and symlinks are packed; anything else is an error.
//! The image is written to a temporary file next to OUT and renamed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bakery::squashfs::{write_squashfs, SquashfsOptions};
use bakery::tree::{DirNode, EntryName, FileContent, FileNode, Node, StagedTree, SymlinkNode};

fn dir_node(path: &Path) -> Result<DirNode> {
    let md = fs::metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mut node = DirNode {
        mode: (md.mode() & 0o7777) as u16,
        entries: BTreeMap::new(),
    };
    for e in fs::read_dir(path).with_context(|| format!("cannot list {}", path.display()))? {
        let e = e.with_context(|| format!("cannot list {}", path.display()))?;
        let p = e.path();
        let md =
            fs::symlink_metadata(&p).with_context(|| format!("cannot stat {}", p.display()))?;
        let name = EntryName::new(e.file_name().into_encoded_bytes())?;
        let ft = md.file_type();
        let child = if ft.is_dir() {
            Node::Dir(dir_node(&p)?)
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&p).with_context(|| format!("cannot read {}", p.display()))?;
            Node::Symlink(SymlinkNode {
                target: target.into_os_string().into_encoded_bytes(),
            })
        } else if ft.is_file() {
            Node::File(FileNode {
                mode: (md.mode() & 0o7777) as u16,
                content: FileContent::Path(p),
            })
        } else {
            bail!(
                "{} is neither a file, a directory nor a symlink",
                p.display()
            );
        };
        node.entries.insert(name, child);
    }
    Ok(node)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut opts = SquashfsOptions::default();
    let mut mtime = 0u32;
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--comp" => opts.compression = value("--comp")?.parse()?,
            "--level" => opts.level = Some(value("--level")?.parse().context("--level")?),
            "--block-size" => {
                opts.block_size = value("--block-size")?.parse().context("--block-size")?
            }
            "--threads" => opts.threads = value("--threads")?.parse().context("--threads")?,
            "--mtime" => mtime = value("--mtime")?.parse().context("--mtime")?,
            "-h" | "--help" => {
                println!("usage: mksquashfs_tree DIR OUT [--comp zstd|gzip|xz|lz4] [--level N] [--block-size BYTES] [--threads N] [--mtime SECS]");
                return Ok(());
            }
            _ if a.starts_with('-') => bail!("unknown option {a}; see --help"),
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [dir, out] = <[PathBuf; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("usage: mksquashfs_tree DIR OUT [options]; see --help"))?;

    let t0 = Instant::now();
    let tree = StagedTree {
        root: dir_node(&dir)?,
        mtime,
    };
    let scanned = t0.elapsed();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(parent)
        .with_context(|| format!("cannot create a temporary file in {}", parent.display()))?;
    let stats = write_squashfs(&tree, tmp.as_file_mut(), &opts)
        .with_context(|| format!("cannot write {}", out.display()))?;
    tmp.as_file().sync_all().context("cannot sync the image")?;
    tmp.persist(&out)
        .with_context(|| format!("cannot rename the image to {}", out.display()))?;
    let total = t0.elapsed();
    println!(
        "{}: {} bytes, {} inodes, {} files ({} duplicates), {} data blocks, {} fragment blocks, {} sparse, {} stored raw; scan {:.3}s, total {:.3}s",
        out.display(),
        stats.bytes_written,
        stats.inodes,
        stats.files,
        stats.duplicate_files,
        stats.data_blocks,
        stats.fragment_blocks,
        stats.sparse_blocks,
        stats.uncompressed_blocks,
        scanned.as_secs_f64(),
        total.as_secs_f64()
    );
    Ok(())
}
