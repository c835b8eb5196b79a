//! dm-verity trees against `veritysetup` (cryptsetup 2.6) as the oracle:
//! our hash device and root hash must be byte-identical to `veritysetup
//! format` with the same salt and UUID, `veritysetup verify` must accept
//! ours, and a flipped data or hash byte must make both `veritysetup verify`
//! and our verifier fail.

mod signing_util;

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use signing::verity::{
    build_tree, verify_tree, ByteRange, ReadAt, RootHash, VerityError, VerityParams, ZeroPadded,
};
use signing_util::{pseudo_random, veritysetup_format, veritysetup_verify};

/// Builds with our code and with veritysetup, compares, then checks both
/// verifiers on good and corrupted inputs.
fn check_against_veritysetup(dir: &Path, data: &[u8], params: &VerityParams, flip_checks: bool) {
    let data_path = dir.join("data");
    let ref_hash = dir.join("ref.hash");
    let our_hash = dir.join("our.hash");
    fs::write(&data_path, data).unwrap();
    let _ = fs::remove_file(&ref_hash);

    let file = fs::File::open(&data_path).unwrap();
    let range = ByteRange::new(0, data.len() as u64);
    let tree = build_tree(&file, range, params).unwrap();
    tree.write_hash_device(&our_hash).unwrap();

    let reference_root = veritysetup_format(&data_path, &ref_hash, params);
    let blocks = data.len() / params.data_block_size() as usize;
    assert_eq!(
        tree.root_hash(),
        reference_root,
        "root hash differs for {blocks} blocks, {params:?}"
    );
    let reference = fs::read(&ref_hash).unwrap();
    assert_eq!(
        reference.len(),
        tree.hash_device().len(),
        "hash device size differs for {blocks} blocks"
    );
    assert!(
        reference == tree.hash_device(),
        "hash device bytes differ for {blocks} blocks, {params:?}"
    );

    let root = tree.root_hash();
    assert!(
        veritysetup_verify(&data_path, &our_hash, &root),
        "veritysetup verify rejects our tree"
    );
    let hash_range = ByteRange::new(0, tree.hash_device().len() as u64);
    verify_tree(&file, range, tree.hash_device(), hash_range, &root).unwrap();
    if !flip_checks {
        return;
    }

    // One flipped data byte, in the middle of the last block.
    let mut bad = data.to_vec();
    let pos = data.len() - params.data_block_size() as usize / 2;
    bad[pos] ^= 0x01;
    let bad_path = dir.join("bad-data");
    fs::write(&bad_path, &bad).unwrap();
    assert!(
        !veritysetup_verify(&bad_path, &our_hash, &root),
        "veritysetup accepts a flipped data byte"
    );
    match verify_tree(&bad[..], range, tree.hash_device(), hash_range, &root) {
        Err(VerityError::DataBlockMismatch { block, .. }) => {
            assert_eq!(block as usize, pos / params.data_block_size() as usize)
        }
        Err(VerityError::RootHashMismatch { .. }) if blocks == 1 => {}
        other => panic!("our verifier accepted a flipped data byte or gave {other:?}"),
    }

    // One flipped hash byte: a digest of level 0 (or the salt when there is
    // no tree: one block).
    let mut bad_hash = tree.hash_device().to_vec();
    let hbs = params.hash_block_size() as usize;
    let level0_blocks = blocks.div_ceil(hbs / 32);
    let pos = if blocks == 1 {
        88
    } else {
        bad_hash.len() - level0_blocks * hbs + 5
    };
    bad_hash[pos] ^= 0x80;
    let bad_hash_path = dir.join("bad.hash");
    fs::write(&bad_hash_path, &bad_hash).unwrap();
    assert!(
        !veritysetup_verify(&data_path, &bad_hash_path, &root),
        "veritysetup accepts a flipped hash byte at {pos}"
    );
    let e = verify_tree(&file, range, &bad_hash[..], hash_range, &root)
        .expect_err("our verifier accepted a flipped hash byte");
    assert!(
        matches!(
            e,
            VerityError::DataBlockMismatch { .. } | VerityError::RootHashMismatch { .. }
        ),
        "{e}"
    );
}

fn params(seed: &[u8]) -> VerityParams {
    VerityParams::derive(seed)
}

#[test]
fn identical_to_veritysetup_for_many_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for blocks in [1usize, 2, 127, 128, 129, 16385] {
        let data = pseudo_random(blocks * 4096, blocks as u64);
        check_against_veritysetup(dir.path(), &data, &params(&blocks.to_le_bytes()), true);
    }
}

#[test]
fn flipped_byte_in_upper_level_fails_both() {
    // 16385 blocks: three levels (129, 2, 1 blocks). Flip a byte of the top
    // level, which sits right after the superblock block.
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random(16385 * 4096, 99);
    let p = params(b"upper");
    let data_path = dir.path().join("data");
    fs::write(&data_path, &data).unwrap();
    let tree = build_tree(&data[..], ByteRange::new(0, data.len() as u64), &p).unwrap();
    let mut bad = tree.hash_device().to_vec();
    bad[4096 + 40] ^= 0x10; // second digest of the top block
    let bad_path = dir.path().join("bad.hash");
    fs::write(&bad_path, &bad).unwrap();
    assert!(!veritysetup_verify(
        &data_path,
        &bad_path,
        &tree.root_hash()
    ));
    let e = verify_tree(
        &data[..],
        ByteRange::new(0, data.len() as u64),
        &bad[..],
        ByteRange::new(0, bad.len() as u64),
        &tree.root_hash(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            VerityError::HashBlockMismatch {
                level: 2,
                index: 0,
                ..
            }
        ),
        "{e}"
    );
    // Non-zero padding at the end of the top block (only 2 digests used):
    // veritysetup checks padding too.
    let mut bad = tree.hash_device().to_vec();
    bad[4096 + 4000] = 1;
    fs::write(&bad_path, &bad).unwrap();
    assert!(!veritysetup_verify(
        &data_path,
        &bad_path,
        &tree.root_hash()
    ));
    let e = verify_tree(
        &data[..],
        ByteRange::new(0, data.len() as u64),
        &bad[..],
        ByteRange::new(0, bad.len() as u64),
        &tree.root_hash(),
    )
    .unwrap_err();
    assert!(
        matches!(e, VerityError::HashBlockMismatch { level: 2, .. }),
        "{e}"
    );
}

/// Sizes that are not a block multiple: veritysetup silently protects only
/// the whole blocks (the tail can change and `veritysetup verify` still
/// passes). We refuse such data instead; padded with zeros to the next
/// block, our tree equals veritysetup's over the padded file.
#[test]
fn unaligned_size_is_refused_and_padding_matches_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(b"unaligned");
    let data = pseudo_random(3 * 4096 + 1000, 5);
    let e = build_tree(&data[..], ByteRange::new(0, data.len() as u64), &p).unwrap_err();
    assert!(matches!(e, VerityError::UnalignedData { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("not a multiple of the 4096-byte") && msg.contains("pad the image"),
        "{msg}"
    );

    // What veritysetup does with it: covers 3 blocks, the tail is unprotected.
    let data_path = dir.path().join("odd");
    let hash_path = dir.path().join("odd.hash");
    fs::write(&data_path, &data).unwrap();
    let root = veritysetup_format(&data_path, &hash_path, &p);
    let mut changed = data.clone();
    *changed.last_mut().unwrap() ^= 0xff;
    fs::write(&data_path, &changed).unwrap();
    assert!(
        veritysetup_verify(&data_path, &hash_path, &root),
        "expected veritysetup to ignore the partial last block"
    );

    // Zero-padded (without copying, through ZeroPadded) we match veritysetup
    // on the padded file.
    let padded = ZeroPadded::to_block_multiple(&data[..], data.len() as u64, 4096);
    assert_eq!(padded.size().unwrap(), 4 * 4096);
    let mut padded_bytes = data.clone();
    padded_bytes.resize(4 * 4096, 0);
    check_against_veritysetup(dir.path(), &padded_bytes, &p, false);
    let ours = build_tree(&padded, ByteRange::new(0, 4 * 4096), &p).unwrap();
    let whole = build_tree(&padded_bytes[..], ByteRange::new(0, 4 * 4096), &p).unwrap();
    assert_eq!(ours.root_hash(), whole.root_hash());
}

#[test]
fn empty_data_is_refused_like_veritysetup() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(b"empty");
    let e = build_tree(&[][..], ByteRange::new(0, 0), &p).unwrap_err();
    assert!(matches!(e, VerityError::EmptyData { .. }), "{e}");
    let data_path = dir.path().join("empty");
    fs::write(&data_path, b"").unwrap();
    let out = integration_tests::output(
        std::process::Command::new("veritysetup")
            .arg("format")
            .arg(&data_path)
            .arg(dir.path().join("empty.hash")),
    );
    assert!(
        !out.status.success(),
        "veritysetup formatted an empty device"
    );
}

/// A data range inside a larger file (as in a DDI) hashes like the same
/// bytes on their own.
#[test]
fn byte_range_inside_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(b"range");
    let inner = pseudo_random(200 * 4096, 11);
    let mut outer = pseudo_random(12345, 12);
    outer.extend_from_slice(&inner);
    outer.extend_from_slice(&pseudo_random(999, 13));
    let path = dir.path().join("outer");
    fs::write(&path, &outer).unwrap();
    let f = fs::File::open(&path).unwrap();
    let range = ByteRange::new(12345, inner.len() as u64);
    let tree = build_tree(&f, range, &p).unwrap();
    let inner_path = dir.path().join("inner");
    fs::write(&inner_path, &inner).unwrap();
    let reference = veritysetup_format(&inner_path, &dir.path().join("inner.hash"), &p);
    assert_eq!(tree.root_hash(), reference);
    // The hash device can itself sit at an offset of a larger file.
    let mut with_hash = outer.clone();
    with_hash.extend_from_slice(tree.hash_device());
    let hash_range = ByteRange::new(outer.len() as u64, tree.hash_device().len() as u64);
    verify_tree(
        &with_hash[..],
        range,
        &with_hash[..],
        hash_range,
        &reference,
    )
    .unwrap();
    // A data range one block short is a clear size mismatch, not a pass.
    let short = ByteRange::new(12345, inner.len() as u64 - 4096);
    let e = verify_tree(
        &with_hash[..],
        short,
        &with_hash[..],
        hash_range,
        &reference,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("does not match the hash device"),
        "{e}"
    );
}

#[test]
fn truncated_hash_device_and_bad_superblock_are_clear_errors() {
    let p = params(b"trunc");
    let data = pseudo_random(300 * 4096, 3);
    let range = ByteRange::new(0, data.len() as u64);
    let tree = build_tree(&data[..], range, &p).unwrap();
    let hash = tree.hash_device();
    let root = tree.root_hash();
    let short = &hash[..hash.len() - 4096];
    let e = verify_tree(
        &data[..],
        range,
        short,
        ByteRange::new(0, short.len() as u64),
        &root,
    )
    .unwrap_err();
    assert!(matches!(e, VerityError::HashDeviceTooSmall { .. }), "{e}");
    let mut bad = hash.to_vec();
    bad[0] = b'X';
    let e = verify_tree(
        &data[..],
        range,
        &bad[..],
        ByteRange::new(0, bad.len() as u64),
        &root,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a verity hash device"), "{e}");
    let wrong: RootHash = "00".repeat(32).parse().unwrap();
    let e = verify_tree(
        &data[..],
        range,
        hash,
        ByteRange::new(0, hash.len() as u64),
        &wrong,
    )
    .unwrap_err();
    assert!(matches!(e, VerityError::RootHashMismatch { .. }), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    /// Random sizes, salts (0..=256 bytes, including none), UUIDs and block
    /// sizes: always identical to veritysetup.
    #[test]
    fn random_parameters_match_veritysetup(
        blocks in 1usize..400,
        salt in proptest::collection::vec(any::<u8>(), 0..=256),
        uuid in any::<[u8; 16]>(),
        sizes in prop_oneof![Just((4096u32, 4096u32)), Just((512, 4096)), Just((4096, 1024)), Just((1024, 512))],
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (dbs, hbs) = sizes;
        let p = VerityParams::new(salt, uuid, dbs, hbs).unwrap();
        let data = pseudo_random(blocks * dbs as usize, seed);
        check_against_veritysetup(dir.path(), &data, &p, true);
    }
}
