//! Unit tests of the squashfs writer's parts: option checking, compressor
//! options, the superblock layout, metadata blocks, directory listing
//! splits and the data plan. Whole images are checked against
//! squashfs-tools and the kernel in `tests/tests/squashfs.rs`.

use std::collections::BTreeMap;
use std::io::Read;

use super::codec::{compressor_options, Codec};
use super::data::{collect_files, plan, Job};
use super::layout::{Superblock, METADATA_SIZE, METADATA_UNCOMPRESSED};
use super::metadata::{build_listing, ListEntry, MetadataWriter};
use super::*;
use crate::tree::{DirNode, EntryName, FileContent, FileNode, Node};

fn resolved(c: Compression, level: Option<i32>) -> Resolved {
    SquashfsOptions {
        compression: c,
        level,
        ..Default::default()
    }
    .resolve()
    .unwrap()
}

/// Deterministic incompressible bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn compression_names_round_trip() {
    for c in Compression::ALL {
        assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
    }
    assert_eq!(Compression::default(), Compression::Zstd);
    let e = "lzo".parse::<Compression>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "unknown compression \"lzo\": use one of zstd, gzip, xz, lz4"
    );
}

#[test]
fn options_are_checked() {
    let d = SquashfsOptions::default();
    assert_eq!(d.block_size, 131_072);
    let r = d.resolve().unwrap();
    assert_eq!((r.level, r.block_log), (Some(15), 17));
    assert!(r.threads >= 1);
    for bad in [0, 2048, 4095, 100_000, 2 << 20] {
        let e = SquashfsOptions {
            block_size: bad,
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(matches!(e, SquashfsError::BlockSize(b) if b == bad), "{e}");
    }
    for (c, ok, bad) in [
        (Compression::Zstd, 22, 0),
        (Compression::Gzip, 1, 10),
        (Compression::Xz, 0, -1),
    ] {
        assert!(SquashfsOptions {
            compression: c,
            level: Some(ok),
            ..Default::default()
        }
        .resolve()
        .is_ok());
        let e = SquashfsOptions {
            compression: c,
            level: Some(bad),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{c} compression level {bad}")),
            "{e}"
        );
    }
    let e = SquashfsOptions {
        compression: Compression::Lz4,
        level: Some(1),
        ..Default::default()
    }
    .resolve()
    .unwrap_err();
    assert!(
        e.to_string().contains("lz4 has no compression levels"),
        "{e}"
    );
}

#[test]
fn compressor_options_only_where_needed() {
    assert_eq!(compressor_options(&resolved(Compression::Zstd, None)), None);
    assert_eq!(
        compressor_options(&resolved(Compression::Zstd, Some(15))),
        None
    );
    assert_eq!(
        compressor_options(&resolved(Compression::Zstd, Some(3))),
        Some(vec![3, 0, 0, 0])
    );
    assert_eq!(compressor_options(&resolved(Compression::Gzip, None)), None);
    assert_eq!(
        compressor_options(&resolved(Compression::Gzip, Some(1))),
        Some(vec![1, 0, 0, 0, 15, 0, 0, 0])
    );
    assert_eq!(
        compressor_options(&resolved(Compression::Xz, Some(9))),
        None
    );
    assert_eq!(
        compressor_options(&resolved(Compression::Lz4, None)),
        Some(vec![1, 0, 0, 0, 0, 0, 0, 0])
    );
}

#[test]
fn codecs_round_trip_through_their_decoders() {
    let mut text = Vec::new();
    while text.len() < 100_000 {
        text.extend_from_slice(b"systemd-sysext merges /usr and /opt. ");
    }
    let random = noise(50_000, 7);
    for c in Compression::ALL {
        let mut codec = Codec::new(&resolved(c, None)).unwrap();
        let mut out = Vec::new();
        assert!(codec.compress(&text, &mut out).unwrap(), "{c} shrinks text");
        assert!(out.len() < text.len() / 10, "{c}: {}", out.len());
        let back = match c {
            Compression::Zstd => zstd::bulk::decompress(&out, text.len()).unwrap(),
            Compression::Gzip => {
                let mut v = Vec::new();
                flate2::read::ZlibDecoder::new(&out[..])
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            Compression::Xz => {
                let mut v = Vec::new();
                liblzma::read::XzDecoder::new(&out[..])
                    .read_to_end(&mut v)
                    .unwrap();
                v
            }
            Compression::Lz4 => lz4_flex::block::decompress(&out, text.len()).unwrap(),
        };
        assert!(back == text, "{c} round trip");
        // Reused context, incompressible input: reported as not shrinking.
        assert!(!codec.compress(&random, &mut out).unwrap(), "{c} random");
        assert!(!codec.compress(&[], &mut out).unwrap(), "{c} empty");
    }
}

#[test]
fn superblock_layout() {
    let sb = Superblock {
        inode_count: 7,
        mkfs_time: 0x0102_0304,
        block_size: 131_072,
        fragment_count: 2,
        compression_id: 6,
        block_log: 17,
        flags: 0x0240,
        id_count: 1,
        root_inode: 0x1234,
        bytes_used: 5000,
        id_table_start: 4990,
        inode_table_start: 96,
        directory_table_start: 200,
        fragment_table_start: 300,
    };
    let b = sb.to_bytes();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    assert_eq!(&b[0..4], b"hsqs");
    assert_eq!(u32_at(4), 7);
    assert_eq!(u32_at(8), 0x0102_0304);
    assert_eq!(u32_at(12), 131_072);
    assert_eq!(u32_at(16), 2);
    assert_eq!(
        (u16_at(20), u16_at(22), u16_at(24), u16_at(26)),
        (6, 17, 0x240, 1)
    );
    assert_eq!((u16_at(28), u16_at(30)), (4, 0));
    assert_eq!(u64_at(32), 0x1234);
    assert_eq!(u64_at(40), 5000);
    assert_eq!(u64_at(48), 4990);
    assert_eq!(u64_at(56), u64::MAX, "no xattr table");
    assert_eq!((u64_at(64), u64_at(72), u64_at(80)), (96, 200, 300));
    assert_eq!(u64_at(88), u64::MAX, "no export table");
}

#[test]
fn metadata_blocks_split_at_8k_and_store_raw_when_needed() {
    let mut codec = Codec::new(&resolved(Compression::Zstd, None)).unwrap();
    let mut w = MetadataWriter::new();
    assert_eq!(w.position(), (0, 0));
    let random = noise(METADATA_SIZE + 100, 3);
    w.write(&mut codec, &random).unwrap();
    // The first block was incompressible: raw, 2-byte header + 8192 bytes.
    assert_eq!(w.position(), (2 + METADATA_SIZE as u64, 100));
    w.write(&mut codec, &vec![0u8; METADATA_SIZE - 100])
        .unwrap();
    let (table, starts) = w.finish(&mut codec).unwrap();
    assert_eq!(starts, vec![0, 2 + METADATA_SIZE as u64]);
    let h0 = u16::from_le_bytes([table[0], table[1]]);
    assert_eq!(h0, METADATA_UNCOMPRESSED | METADATA_SIZE as u16);
    let at = 2 + METADATA_SIZE;
    let h1 = u16::from_le_bytes([table[at], table[at + 1]]);
    assert_eq!(h1 & METADATA_UNCOMPRESSED, 0, "mostly zeros compresses");
    assert_eq!(table.len(), at + 2 + usize::from(h1));
    let back = zstd::bulk::decompress(&table[at + 2..], METADATA_SIZE).unwrap();
    assert_eq!(&back[..100], &random[METADATA_SIZE..]);
}

/// Headers of a listing: (offset, count, block, base inode number).
fn headers(bytes: &[u8]) -> Vec<(usize, u32, u32, u32)> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let count = u32_at(at) + 1;
        out.push((at, count, u32_at(at + 4), u32_at(at + 8)));
        at += 12;
        for _ in 0..count {
            let size = u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]) as usize + 1;
            at += 8 + size;
        }
    }
    assert_eq!(at, bytes.len());
    out
}

#[test]
fn listing_splits_like_mksquashfs() {
    let names: Vec<Vec<u8>> = (0..600).map(|i| format!("{i:04}").into_bytes()).collect();
    let entry = |i: usize, block: u32, number: u32| ListEntry {
        name: &names[i],
        inode_block: block,
        inode_offset: (i * 32 % 8192) as u16,
        inode_number: number,
        kind: 2,
    };
    // 300 entries in one inode block: split after 256.
    let e: Vec<_> = (0..300).map(|i| entry(i, 0, 10 + i as u32)).collect();
    let l = build_listing(&e);
    let h = headers(&l.bytes);
    assert_eq!(h.iter().map(|h| h.1).collect::<Vec<_>>(), [256, 44]);
    assert_eq!(h[1].3, 10 + 256);
    assert!(l.index.is_empty(), "{} bytes need no index", l.bytes.len());

    // A change of inode block, or an inode number delta outside i16,
    // starts a new header.
    let e = vec![
        entry(0, 0, 5),
        entry(1, 0, 6),
        entry(2, 8000, 7),
        entry(3, 8000, 7 + 40_000),
        entry(4, 8000, 7 + 40_001),
    ];
    let h = headers(&build_listing(&e).bytes);
    assert_eq!(
        h.iter().map(|h| (h.1, h.2, h.3)).collect::<Vec<_>>(),
        [(2, 0, 5), (1, 8000, 7), (2, 8000, 40_007)]
    );
}

#[test]
fn long_listings_get_index_points_at_headers() {
    let names: Vec<Vec<u8>> = (0..200)
        .map(|i| format!("{i:03}-{}", "x".repeat(200)).into_bytes())
        .collect();
    let e: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| ListEntry {
            name: n,
            inode_block: 0,
            inode_offset: 0,
            inode_number: 1 + i as u32,
            kind: 2,
        })
        .collect();
    let l = build_listing(&e);
    let h = headers(&l.bytes);
    // Every index point is a header, each less than 8 KiB after the last.
    assert!(!l.index.is_empty());
    let mut last = 0;
    for p in &l.index {
        assert!(
            h.iter().any(|h| h.0 == p.at),
            "index at {} is not a header",
            p.at
        );
        assert!(p.at - last <= METADATA_SIZE);
        let first_name = &l.bytes[p.at + 12 + 8..p.at + 12 + 8 + p.name.len()];
        assert_eq!(first_name, p.name);
        last = p.at;
    }
    assert!(l.bytes.len() - last <= METADATA_SIZE + 12 + 8 + 204);
}

fn file(content: &[u8]) -> Node {
    Node::File(FileNode {
        mode: 0o644,
        content: FileContent::Bytes(content.to_vec()),
    })
}

#[test]
fn plan_packs_small_files_and_shares_duplicates() {
    let bs = 4096usize;
    let mut root = DirNode {
        mode: 0o755,
        entries: BTreeMap::new(),
    };
    let mut add = |name: &str, n: Node| {
        root.entries.insert(EntryName::new(name).unwrap(), n);
    };
    add("a", file(&noise(3000, 1)));
    add("b", file(&noise(1000, 2))); // fits after a: 4000
    add("c", file(&noise(200, 3))); // does not fit: new fragment block
    add("d", file(&noise(3000, 1))); // duplicate of a
    add("e", file(&noise(2 * bs + 5, 4))); // three blocks, no tail packing
    add("f", file(b"")); // nothing
    add("g", file(&noise(bs, 5))); // exactly one block
    let tree = StagedTree { root, mtime: 0 };
    let files = collect_files(&tree).unwrap();
    let opts = SquashfsOptions {
        block_size: bs as u32,
        threads: 3,
        ..Default::default()
    }
    .resolve()
    .unwrap();
    let mut stats = SquashfsStats::default();
    let p = plan(&files, &opts, &mut stats).unwrap();
    assert_eq!(p.canonical, [0, 1, 2, 0, 4, 5, 6]);
    assert_eq!(stats.duplicate_files, 1);
    assert_eq!(p.files[0].fragment, Some((0, 0)));
    assert_eq!(p.files[1].fragment, Some((0, 3000)));
    assert_eq!(p.files[2].fragment, Some((1, 0)));
    assert_eq!((p.files[4].blocks, p.files[4].fragment), (3, None));
    assert_eq!((p.files[5].blocks, p.files[5].fragment), (0, None));
    assert_eq!((p.files[6].blocks, p.files[6].fragment), (1, None));
    let shape: Vec<String> = p
        .jobs
        .iter()
        .map(|j| match j {
            Job::Block { file, len, .. } => format!("b{file}:{len}"),
            Job::Fragment { len, .. } => format!("f:{len}"),
        })
        .collect();
    assert_eq!(
        shape,
        ["f:4000", "b4:4096", "b4:4096", "b4:5", "b6:4096", "f:200"]
    );
}
