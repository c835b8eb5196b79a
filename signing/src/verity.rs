//! dm-verity hash trees: building them byte-identical to `veritysetup format`
//! (hash format 1, sha256, with superblock) and checking them in user space
//! the way `veritysetup verify` does, both hashing in parallel on all cores.
//!
//! This module owns [`VerityParams`] (salt, superblock UUID, block sizes),
//! the tree layout, the on-disk superblock, [`RootHash`] and the [`ReadAt`]
//! abstraction over the data and hash devices (files, byte slices,
//! zero-padded files).
//!
//! # Data sizes that are not a block multiple
//!
//! dm-verity only covers whole data blocks: `veritysetup format` silently
//! ignores the bytes after the last whole block, which would leave them
//! unprotected. [`build_tree`] therefore **refuses** a data range that is not
//! a multiple of the data block size ([`VerityError::UnalignedData`]) and an
//! empty one ([`VerityError::EmptyData`]; `veritysetup` refuses that too).
//! Callers pad images with zeros to 4096 bytes first — bakery's image writers
//! do, and the DDI writer pads the copy it puts into the data partition
//! ([`ZeroPadded`] presents a file as if it were padded).
//!
//! [`verify_tree`] is just as strict: the data range must be exactly
//! `data_blocks × data_block_size` as recorded in the superblock, so nothing
//! that would be mounted lies outside the tree.

use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::str::FromStr;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use plumbing::atomic::AtomicFile;

/// Size of a sha256 digest, and of one entry in a format-1 hash block.
pub const DIGEST_SIZE: usize = 32;
/// Block size used for data and hash blocks unless told otherwise.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Longest salt the superblock can hold.
pub const MAX_SALT_SIZE: usize = 256;
/// Size of the verity superblock at the start of the hash device.
pub const SUPERBLOCK_SIZE: usize = 512;
const MIN_BLOCK_SIZE: u32 = 512;
const MAX_BLOCK_SIZE: u32 = 65536;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const ALGORITHM: &str = "sha256";
/// Bytes of data read per system call while hashing level 0.
const READ_CHUNK: usize = 1 << 20;

/// Errors from building or verifying a hash tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("invalid verity parameters: {0}")]
    InvalidParams(String),
    #[error(
        "data size {size} bytes is not a multiple of the {block_size}-byte data block size; \
         dm-verity would leave the last {tail} bytes unprotected: pad the image with zeros \
         to a multiple of {block_size} bytes first",
        tail = size % u64::from(*block_size)
    )]
    UnalignedData { size: u64, block_size: u32 },
    #[error("the data to protect is empty: dm-verity needs at least one {block_size}-byte block")]
    EmptyData { block_size: u32 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("not a verity hash device: {0}")]
    BadSuperblock(String),
    #[error(
        "data size {actual} bytes does not match the hash device, which covers {expected} bytes \
         ({blocks} blocks of {block_size}); wrong data or hash device?"
    )]
    DataSizeMismatch {
        expected: u64,
        actual: u64,
        blocks: u64,
        block_size: u32,
    },
    #[error("hash device is {have} bytes, but the tree for this data needs {need} bytes; it is truncated")]
    HashDeviceTooSmall { need: u64, have: u64 },
    #[error(
        "data block {block} (bytes {start}..{end} of the data) does not match the hash tree: \
         the data or the hash device is corrupt"
    )]
    DataBlockMismatch { block: u64, start: u64, end: u64 },
    #[error(
        "hash block {index} of tree level {level} (level 0 is nearest the data) is corrupt: {what}"
    )]
    HashBlockMismatch {
        level: usize,
        index: u64,
        what: &'static str,
    },
    #[error("root hash mismatch: expected {expected}, the tree gives {actual}")]
    RootHashMismatch {
        expected: RootHash,
        actual: RootHash,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> VerityError {
    let context = context.into();
    move |source| VerityError::Io { context, source }
}

// ---------------------------------------------------------------------------
// Root hash

/// The root hash of a dm-verity tree (sha256): 32 bytes, written as 64
/// lowercase hex digits. This exact text is what gets signed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RootHash([u8; DIGEST_SIZE]);

impl RootHash {
    pub const fn from_bytes(bytes: [u8; DIGEST_SIZE]) -> Self {
        RootHash(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; DIGEST_SIZE] {
        &self.0
    }

    /// Lowercase hex, no newline: the bytes the PKCS#7 signature covers.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RootHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootHash({})", self.to_hex())
    }
}

/// Text that is not a sha256 root hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a root hash {shown:?}: expected 64 lowercase hex digits (a sha256 dm-verity root hash)"
)]
pub struct BadRootHash {
    /// The offending text, cut to 80 characters.
    pub shown: String,
}

impl FromStr for RootHash {
    type Err = BadRootHash;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadRootHash {
            shown: s.chars().take(80).collect(),
        };
        let ok =
            s.len() == 2 * DIGEST_SIZE && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(bad());
        }
        let mut out = [0u8; DIGEST_SIZE];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(RootHash(out))
    }
}

impl TryFrom<String> for RootHash {
    type Error = BadRootHash;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RootHash> for String {
    fn from(r: RootHash) -> String {
        r.to_hex()
    }
}

impl serde::Serialize for RootHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for RootHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Parameters

/// Everything besides the data that determines the tree: salt, superblock
/// UUID and block sizes. The hash is always sha256, the format always 1.
#[derive(Clone, PartialEq, Eq)]
pub struct VerityParams {
    salt: Vec<u8>,
    uuid: [u8; 16],
    data_block_size: u32,
    hash_block_size: u32,
}

impl VerityParams {
    /// Checked constructor. Block sizes must be powers of two from 512 to
    /// 65536 (the kernel also wants them ≤ the page size); the salt may be
    /// empty and at most 256 bytes.
    pub fn new(
        salt: Vec<u8>,
        uuid: [u8; 16],
        data_block_size: u32,
        hash_block_size: u32,
    ) -> Result<Self, VerityError> {
        if salt.len() > MAX_SALT_SIZE {
            return Err(VerityError::InvalidParams(format!(
                "salt is {} bytes; at most {MAX_SALT_SIZE} fit in the superblock",
                salt.len()
            )));
        }
        for (what, size) in [("data", data_block_size), ("hash", hash_block_size)] {
            if !size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
                return Err(VerityError::InvalidParams(format!(
                    "{what} block size {size} must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
                )));
            }
        }
        Ok(VerityParams {
            salt,
            uuid,
            data_block_size,
            hash_block_size,
        })
    }

    /// Content-derived parameters, the way `systemd-repart --seed=` derives
    /// them: salt = HMAC-SHA256(seed, "verity-salt"), UUID = the first 16
    /// bytes of HMAC-SHA256(seed, "verity-uuid") marked as a version-4 UUID.
    /// Block sizes 4096/4096. Pass e.g. the sha256 of the image as `seed`, so
    /// that rebuilding the same image gives the same tree.
    pub fn derive(seed: &[u8]) -> Self {
        let salt = hmac_sha256(seed, b"verity-salt").to_vec();
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&hmac_sha256(seed, b"verity-uuid")[..16]);
        VerityParams {
            salt,
            uuid: make_v4_uuid(uuid),
            data_block_size: DEFAULT_BLOCK_SIZE,
            hash_block_size: DEFAULT_BLOCK_SIZE,
        }
    }

    /// [`VerityParams::derive`] seeded with the sha256 of the data range.
    pub fn derive_from_content<R: ReadAt + ?Sized>(
        data: &R,
        range: ByteRange,
    ) -> Result<Self, VerityError> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut pos = 0u64;
        while pos < range.len {
            let n = usize::try_from(range.len - pos).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
            let offset = range.offset + pos;
            data.read_exact_at(&mut buf[..n], offset)
                .map_err(io_err(format!("reading data at byte {offset}")))?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        Ok(VerityParams::derive(&hasher.finalize()))
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub fn uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// The superblock UUID as text, as `veritysetup --uuid=` takes it.
    pub fn uuid_string(&self) -> String {
        uuid::Uuid::from_bytes(self.uuid).hyphenated().to_string()
    }

    pub fn data_block_size(&self) -> u32 {
        self.data_block_size
    }

    pub fn hash_block_size(&self) -> u32 {
        self.hash_block_size
    }

    fn hashes_per_block(&self) -> u64 {
        u64::from(self.hash_block_size) / DIGEST_SIZE as u64
    }
}

impl fmt::Debug for VerityParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerityParams")
            .field("salt", &hex::encode(&self.salt))
            .field("uuid", &self.uuid_string())
            .field("data_block_size", &self.data_block_size)
            .field("hash_block_size", &self.hash_block_size)
            .finish()
    }
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k0 = [0u8; BLOCK];
    if key.len() > BLOCK {
        k0[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k0[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k0.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k0.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Sets the version (4) and variant (RFC 4122) bits, like systemd's
/// `id128_make_v4_uuid`.
pub(crate) fn make_v4_uuid(mut id: [u8; 16]) -> [u8; 16] {
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

// ---------------------------------------------------------------------------
// Byte sources

/// A byte range of a device or file: where a data or hash device lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

impl ByteRange {
    pub const fn new(offset: u64, len: u64) -> Self {
        ByteRange { offset, len }
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// Positional reads that many threads may issue at once (`pread`).
pub trait ReadAt: Sync {
    /// Fills `buf` from `offset`; running out of bytes is an
    /// [`io::ErrorKind::UnexpectedEof`] error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Total size in bytes (works for block devices too).
    fn size(&self) -> io::Result<u64>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        let mut f = self;
        f.seek(SeekFrom::End(0))
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        let src = start
            .and_then(|s| self.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

/// Presents `inner` followed by zeros up to `padded_len` bytes: an image
/// padded to a block multiple without copying it.
pub struct ZeroPadded<'a, R: ReadAt + ?Sized> {
    inner: &'a R,
    inner_len: u64,
    padded_len: u64,
}

impl<'a, R: ReadAt + ?Sized> ZeroPadded<'a, R> {
    /// `inner`'s first `inner_len` bytes, then zeros up to the next multiple
    /// of `block` bytes.
    pub fn to_block_multiple(inner: &'a R, inner_len: u64, block: u32) -> Self {
        let b = u64::from(block.max(1));
        ZeroPadded {
            inner,
            inner_len,
            padded_len: inner_len.div_ceil(b) * b,
        }
    }

    pub fn padded_len(&self) -> u64 {
        self.padded_len
    }
}

impl<R: ReadAt + ?Sized> ReadAt for ZeroPadded<'_, R> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.saturating_add(buf.len() as u64);
        if end > self.padded_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        let real = self.inner_len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (head, tail) = buf.split_at_mut(real);
        if !head.is_empty() {
            self.inner.read_exact_at(head, offset)?;
        }
        tail.fill(0);
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.padded_len)
    }
}

// ---------------------------------------------------------------------------
// Layout

/// Where each level of the tree lies on the hash device.
#[derive(Debug, Clone)]
struct Layout {
    data_blocks: u64,
    /// `levels[0]` hashes the data; the last level is a single block.
    /// Each entry: (first hash block on the device, number of blocks).
    levels: Vec<(u64, u64)>,
    /// Total size of the hash device in bytes, superblock included.
    device_size: u64,
}

impl Layout {
    /// The same computation as cryptsetup's `VERITY_create_or_verify_hash`.
    fn new(data_blocks: u64, params: &VerityParams) -> Result<Self, VerityError> {
        let hpb = params.hashes_per_block();
        let hbs = u64::from(params.hash_block_size);
        let mut sizes = Vec::new();
        if data_blocks > 1 {
            let mut s = data_blocks;
            while s > 1 {
                s = s.div_ceil(hpb);
                sizes.push(s);
            }
        }
        // The superblock takes the first hash block; the top level comes next
        // and level 0 is stored last.
        let mut position = 1u64;
        let mut levels = vec![(0u64, 0u64); sizes.len()];
        for (i, &s) in sizes.iter().enumerate().rev() {
            levels[i] = (position, s);
            position += s;
        }
        let device_size = position.checked_mul(hbs).ok_or_else(|| {
            VerityError::InvalidParams(format!(
                "{data_blocks} data blocks need a hash device larger than 2^64 bytes"
            ))
        })?;
        Ok(Layout {
            data_blocks,
            levels,
            device_size,
        })
    }

    fn level_bytes(&self, level: usize, hbs: usize) -> std::ops::Range<usize> {
        let (start, blocks) = self.levels[level];
        let start = start as usize * hbs;
        start..start + blocks as usize * hbs
    }
}

fn data_blocks_for(range: ByteRange, params: &VerityParams) -> Result<u64, VerityError> {
    let dbs = u64::from(params.data_block_size);
    if range.len == 0 {
        return Err(VerityError::EmptyData {
            block_size: params.data_block_size,
        });
    }
    if range.len % dbs != 0 {
        return Err(VerityError::UnalignedData {
            size: range.len,
            block_size: params.data_block_size,
        });
    }
    Ok(range.len / dbs)
}

/// Size in bytes of the hash device (superblock included) that
/// [`build_tree`] makes for `data_size` bytes of data.
pub fn hash_device_size(data_size: u64, params: &VerityParams) -> Result<u64, VerityError> {
    let blocks = data_blocks_for(ByteRange::new(0, data_size), params)?;
    Ok(Layout::new(blocks, params)?.device_size)
}

// ---------------------------------------------------------------------------
// Superblock

fn write_superblock(out: &mut [u8], params: &VerityParams, data_blocks: u64) {
    out[..SUPERBLOCK_SIZE].fill(0);
    out[0..8].copy_from_slice(SIGNATURE);
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[12..16].copy_from_slice(&1u32.to_le_bytes());
    out[16..32].copy_from_slice(&params.uuid);
    out[32..32 + ALGORITHM.len()].copy_from_slice(ALGORITHM.as_bytes());
    out[64..68].copy_from_slice(&params.data_block_size.to_le_bytes());
    out[68..72].copy_from_slice(&params.hash_block_size.to_le_bytes());
    out[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    out[80..82].copy_from_slice(&(params.salt.len() as u16).to_le_bytes());
    out[88..88 + params.salt.len()].copy_from_slice(&params.salt);
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Parses a verity superblock: the parameters and the number of data blocks
/// it covers. Only hash format 1 with sha256 is accepted.
pub fn parse_superblock(sb: &[u8; SUPERBLOCK_SIZE]) -> Result<(VerityParams, u64), VerityError> {
    let bad = |m: String| VerityError::BadSuperblock(m);
    if &sb[0..8] != SIGNATURE {
        return Err(bad(
            "no \"verity\" signature at the start of the hash device".into(),
        ));
    }
    let version = le_u32(sb, 8);
    if version != 1 {
        return Err(bad(format!(
            "superblock version {version}, only 1 is supported"
        )));
    }
    let hash_type = le_u32(sb, 12);
    if hash_type != 1 {
        return Err(bad(format!(
            "hash format {hash_type}, only format 1 (the normal one; 0 is Chrome OS) is supported"
        )));
    }
    let alg_end = sb[32..64].iter().position(|&b| b == 0).unwrap_or(32);
    let alg = String::from_utf8_lossy(&sb[32..32 + alg_end]);
    if alg != ALGORITHM {
        return Err(bad(format!(
            "hash algorithm {alg:?}, only sha256 is supported"
        )));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[16..32]);
    let dbs = le_u32(sb, 64);
    let hbs = le_u32(sb, 68);
    let mut blocks = [0u8; 8];
    blocks.copy_from_slice(&sb[72..80]);
    let data_blocks = u64::from_le_bytes(blocks);
    let salt_size = usize::from(u16::from_le_bytes([sb[80], sb[81]]));
    if salt_size > MAX_SALT_SIZE {
        return Err(bad(format!(
            "salt size {salt_size} is larger than {MAX_SALT_SIZE}"
        )));
    }
    if data_blocks == 0 {
        return Err(bad("it covers 0 data blocks".into()));
    }
    let params = VerityParams::new(sb[88..88 + salt_size].to_vec(), uuid, dbs, hbs)
        .map_err(|e| bad(e.to_string()))?;
    Ok((params, data_blocks))
}

/// Reads and parses the superblock at `offset` of `hash`.
pub fn read_superblock<R: ReadAt + ?Sized>(
    hash: &R,
    offset: u64,
) -> Result<(VerityParams, u64), VerityError> {
    let mut sb = [0u8; SUPERBLOCK_SIZE];
    hash.read_exact_at(&mut sb, offset)
        .map_err(io_err("reading the verity superblock"))?;
    parse_superblock(&sb)
}

// ---------------------------------------------------------------------------
// Hashing

/// sha256 with the salt prepended (hash format 1).
#[derive(Clone)]
struct SaltedHasher {
    base: Sha256,
}

impl SaltedHasher {
    fn new(salt: &[u8]) -> Self {
        SaltedHasher {
            base: Sha256::new_with_prefix(salt),
        }
    }

    fn digest(&self, block: &[u8]) -> [u8; DIGEST_SIZE] {
        self.base.clone().chain_update(block).finalize().into()
    }
}

/// Hashes the data blocks that hash block `j` of level 0 covers into `out`
/// (one hash block, zero padded).
#[allow(clippy::too_many_arguments)]
fn hash_level0_block<R: ReadAt + ?Sized>(
    data: &R,
    data_offset: u64,
    layout: &Layout,
    params: &VerityParams,
    hasher: &SaltedHasher,
    j: u64,
    buf: &mut [u8],
    out: &mut [u8],
) -> Result<(), VerityError> {
    let dbs = params.data_block_size as usize;
    let hpb = params.hashes_per_block();
    let first = j * hpb;
    let count = (layout.data_blocks - first).min(hpb) as usize;
    let per_read = (buf.len() / dbs).max(1);
    out.fill(0);
    let mut done = 0usize;
    while done < count {
        let n = per_read.min(count - done);
        let bytes = &mut buf[..n * dbs];
        let offset = data_offset + (first + done as u64) * dbs as u64;
        data.read_exact_at(bytes, offset).map_err(io_err(format!(
            "reading data blocks {}..{} at byte {offset}",
            first + done as u64,
            first + (done + n) as u64
        )))?;
        for (k, block) in bytes.chunks_exact(dbs).enumerate() {
            let e = (done + k) * DIGEST_SIZE;
            out[e..e + DIGEST_SIZE].copy_from_slice(&hasher.digest(block));
        }
        done += n;
    }
    Ok(())
}

/// Hashes block `j` of level `level` (≥ 1) from the blocks of the level below.
fn hash_upper_block(
    lower: &[u8],
    lower_blocks: u64,
    params: &VerityParams,
    hasher: &SaltedHasher,
    j: u64,
    out: &mut [u8],
) {
    let hbs = params.hash_block_size as usize;
    let hpb = params.hashes_per_block();
    let first = j * hpb;
    let count = (lower_blocks - first).min(hpb) as usize;
    out.fill(0);
    for k in 0..count {
        let b = (first as usize + k) * hbs;
        out[k * DIGEST_SIZE..(k + 1) * DIGEST_SIZE]
            .copy_from_slice(&hasher.digest(&lower[b..b + hbs]));
    }
}

fn read_buf_len(params: &VerityParams) -> usize {
    let dbs = params.data_block_size as usize;
    let level0_span = params.hashes_per_block() as usize * dbs;
    level0_span.min(READ_CHUNK.max(dbs))
}

// ---------------------------------------------------------------------------
// Build

/// A built hash tree: the complete hash device (superblock first) and the
/// root hash.
#[derive(Clone)]
pub struct VerityTree {
    hash_device: Vec<u8>,
    root_hash: RootHash,
    data_blocks: u64,
    params: VerityParams,
}

impl fmt::Debug for VerityTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerityTree")
            .field("root_hash", &self.root_hash)
            .field("data_blocks", &self.data_blocks)
            .field("hash_device_len", &self.hash_device.len())
            .field("params", &self.params)
            .finish()
    }
}

impl VerityTree {
    pub fn root_hash(&self) -> RootHash {
        self.root_hash
    }

    /// The hash device exactly as `veritysetup format` writes it.
    pub fn hash_device(&self) -> &[u8] {
        &self.hash_device
    }

    pub fn into_hash_device(self) -> Vec<u8> {
        self.hash_device
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn params(&self) -> &VerityParams {
        &self.params
    }

    /// Writes the hash device to `path` atomically (temporary file in the
    /// same directory, fsync, rename), replacing what was there.
    pub fn write_hash_device(&self, path: &Path) -> Result<(), VerityError> {
        let ctx = || format!("writing the hash device {}", path.display());
        let mut f = AtomicFile::create(path, 0o644).map_err(io_err(ctx()))?;
        io::Write::write_all(f.file_mut(), &self.hash_device).map_err(io_err(ctx()))?;
        f.commit().map_err(io_err(ctx()))
    }
}

/// Builds the hash tree over `range` of `data`, byte-identical to
/// `veritysetup format --salt=… --uuid=… --data-block-size=… --hash-block-size=…`
/// (sha256, format 1, with superblock). Data blocks are hashed in parallel
/// on rayon's pool.
///
/// Refuses an empty range and one that is not a multiple of the data block
/// size (see the module documentation).
pub fn build_tree<R: ReadAt + ?Sized>(
    data: &R,
    range: ByteRange,
    params: &VerityParams,
) -> Result<VerityTree, VerityError> {
    let data_blocks = data_blocks_for(range, params)?;
    let layout = Layout::new(data_blocks, params)?;
    let hbs = params.hash_block_size as usize;
    let device_len = usize::try_from(layout.device_size).map_err(|_| {
        VerityError::InvalidParams(format!(
            "a {}-byte hash device does not fit in memory",
            layout.device_size
        ))
    })?;
    let mut device = vec![0u8; device_len];
    write_superblock(&mut device, params, data_blocks);
    let hasher = SaltedHasher::new(&params.salt);

    let root = if layout.levels.is_empty() {
        // One data block: no tree, the root is the block's own digest.
        let mut block = vec![0u8; params.data_block_size as usize];
        data.read_exact_at(&mut block, range.offset)
            .map_err(io_err(format!(
                "reading data block 0 at byte {}",
                range.offset
            )))?;
        hasher.digest(&block)
    } else {
        let buf_len = read_buf_len(params);
        let level0 = layout.level_bytes(0, hbs);
        device[level0]
            .par_chunks_mut(hbs)
            .enumerate()
            .try_for_each_init(
                || vec![0u8; buf_len],
                |buf, (j, out)| {
                    hash_level0_block(
                        data,
                        range.offset,
                        &layout,
                        params,
                        &hasher,
                        j as u64,
                        buf,
                        out,
                    )
                },
            )?;
        for level in 1..layout.levels.len() {
            let lower_range = layout.level_bytes(level - 1, hbs);
            let upper_range = layout.level_bytes(level, hbs);
            // Upper levels are stored before lower ones.
            let (head, tail) = device.split_at_mut(lower_range.start);
            let lower = &tail[..lower_range.len()];
            let lower_blocks = layout.levels[level - 1].1;
            head[upper_range]
                .par_chunks_mut(hbs)
                .enumerate()
                .for_each(|(j, out)| {
                    hash_upper_block(lower, lower_blocks, params, &hasher, j as u64, out)
                });
        }
        let top = layout.level_bytes(layout.levels.len() - 1, hbs);
        hasher.digest(&device[top])
    };
    Ok(VerityTree {
        hash_device: device,
        root_hash: RootHash(root),
        data_blocks,
        params: params.clone(),
    })
}

// ---------------------------------------------------------------------------
// Verify

/// What [`verify_tree`] found in the superblock of a tree it accepted.
#[derive(Debug, Clone)]
pub struct VerifiedTree {
    pub params: VerityParams,
    pub data_blocks: u64,
}

/// Checks `data_range` of `data` against the hash device at `hash_range` of
/// `hash` and the expected `root` — the user-space equivalent of
/// `veritysetup verify DATA HASH ROOT`, reading and hashing in parallel.
///
/// Checks the superblock, that the data range is exactly the size the
/// superblock records, every hash block of every level (including that the
/// unused tail of each hash block is zero) and the root. The first
/// (lowest-numbered) corrupt data block is named in the error.
pub fn verify_tree<D: ReadAt + ?Sized, H: ReadAt + ?Sized>(
    data: &D,
    data_range: ByteRange,
    hash: &H,
    hash_range: ByteRange,
    root: &RootHash,
) -> Result<VerifiedTree, VerityError> {
    if hash_range.len < SUPERBLOCK_SIZE as u64 {
        return Err(VerityError::HashDeviceTooSmall {
            need: SUPERBLOCK_SIZE as u64,
            have: hash_range.len,
        });
    }
    let (params, data_blocks) = read_superblock(hash, hash_range.offset)?;
    let dbs = u64::from(params.data_block_size);
    let expected = data_blocks.checked_mul(dbs).ok_or_else(|| {
        VerityError::BadSuperblock(format!("{data_blocks} data blocks of {dbs} bytes overflow"))
    })?;
    if data_range.len != expected {
        return Err(VerityError::DataSizeMismatch {
            expected,
            actual: data_range.len,
            blocks: data_blocks,
            block_size: params.data_block_size,
        });
    }
    let layout = Layout::new(data_blocks, &params)?;
    if hash_range.len < layout.device_size {
        return Err(VerityError::HashDeviceTooSmall {
            need: layout.device_size,
            have: hash_range.len,
        });
    }
    let hbs = params.hash_block_size as usize;
    let hasher = SaltedHasher::new(&params.salt);

    let actual = if layout.levels.is_empty() {
        let mut block = vec![0u8; dbs as usize];
        data.read_exact_at(&mut block, data_range.offset)
            .map_err(io_err("reading data block 0"))?;
        hasher.digest(&block)
    } else {
        // The stored tree, without the superblock block.
        let tree_len = usize::try_from(layout.device_size).map_err(|_| {
            VerityError::InvalidParams("the hash device does not fit in memory".into())
        })? - hbs;
        let mut stored = vec![0u8; tree_len];
        hash.read_exact_at(&mut stored, hash_range.offset + hbs as u64)
            .map_err(io_err("reading the hash tree"))?;
        let at = |level: usize| {
            let r = layout.level_bytes(level, hbs);
            (r.start - hbs)..(r.end - hbs)
        };

        // Level 0 against the data. Report the lowest failing block.
        let buf_len = read_buf_len(&params);
        let level0 = &stored[at(0)];
        let first_bad = level0
            .par_chunks(hbs)
            .enumerate()
            .map_init(
                || (vec![0u8; buf_len], vec![0u8; hbs]),
                |(buf, out), (j, want)| -> Option<(u64, VerityError)> {
                    let j = j as u64;
                    if let Err(e) = hash_level0_block(
                        data,
                        data_range.offset,
                        &layout,
                        &params,
                        &hasher,
                        j,
                        buf,
                        out,
                    ) {
                        return Some((j, e));
                    }
                    if out.as_slice() == want {
                        return None;
                    }
                    let entry = out
                        .chunks(DIGEST_SIZE)
                        .zip(want.chunks(DIGEST_SIZE))
                        .position(|(a, b)| a != b)
                        .unwrap_or(0) as u64;
                    let block = j * params.hashes_per_block() + entry;
                    let err = if block < data_blocks {
                        VerityError::DataBlockMismatch {
                            block,
                            start: block * dbs,
                            end: (block + 1) * dbs,
                        }
                    } else {
                        VerityError::HashBlockMismatch {
                            level: 0,
                            index: j,
                            what: "non-zero padding after the last digest",
                        }
                    };
                    Some((j, err))
                },
            )
            .flatten()
            .min_by_key(|(j, _)| *j);
        if let Some((_, e)) = first_bad {
            return Err(e);
        }

        // Upper levels against the (now trusted) level below.
        for level in 1..layout.levels.len() {
            let lower = &stored[at(level - 1)];
            let lower_blocks = layout.levels[level - 1].1;
            let first_bad = stored[at(level)]
                .par_chunks(hbs)
                .enumerate()
                .map_init(
                    || vec![0u8; hbs],
                    |out, (j, want)| {
                        hash_upper_block(lower, lower_blocks, &params, &hasher, j as u64, out);
                        (out.as_slice() != want).then_some(j as u64)
                    },
                )
                .flatten()
                .min();
            if let Some(index) = first_bad {
                return Err(VerityError::HashBlockMismatch {
                    level,
                    index,
                    what: "it does not hold the digests of the level below (or its padding is not zero)",
                });
            }
        }
        hasher.digest(&stored[at(layout.levels.len() - 1)])
    };
    let actual = RootHash(actual);
    if actual != *root {
        return Err(VerityError::RootHashMismatch {
            expected: *root,
            actual,
        });
    }
    Ok(VerifiedTree {
        params,
        data_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(salt_byte: u8) -> VerityParams {
        VerityParams::new(vec![salt_byte; 32], [7u8; 16], 4096, 4096).unwrap()
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_long_key_rfc4231_case_6() {
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn layout_matches_spec_examples() {
        let p = params(0);
        let levels = |n| {
            Layout::new(n, &p)
                .unwrap()
                .levels
                .iter()
                .map(|l| l.1)
                .collect::<Vec<_>>()
        };
        assert_eq!(levels(1), Vec::<u64>::new());
        assert_eq!(levels(2), vec![1]);
        assert_eq!(levels(128), vec![1]);
        assert_eq!(levels(129), vec![2, 1]);
        assert_eq!(levels(300), vec![3, 1]);
        assert_eq!(levels(16500), vec![129, 2, 1]);
        // Top level first on disk, right after the superblock.
        let l = Layout::new(16500, &p).unwrap();
        assert_eq!(l.levels[2].0, 1);
        assert_eq!(l.levels[1].0, 2);
        assert_eq!(l.levels[0].0, 4);
        assert_eq!(l.device_size, (1 + 129 + 2 + 1) * 4096);
    }

    #[test]
    fn refuses_unaligned_and_empty() {
        let p = params(1);
        let data = vec![0u8; 5000];
        let e = build_tree(&data[..], ByteRange::new(0, 5000), &p).unwrap_err();
        assert!(e.to_string().contains("pad the image"), "{e}");
        let e = build_tree(&data[..], ByteRange::new(0, 0), &p).unwrap_err();
        assert!(matches!(e, VerityError::EmptyData { .. }), "{e}");
    }

    #[test]
    fn superblock_round_trips() {
        let p = VerityParams::new(vec![9; 17], [3; 16], 4096, 4096).unwrap();
        let mut sb = [0u8; SUPERBLOCK_SIZE];
        write_superblock(&mut sb, &p, 1234);
        let (q, n) = parse_superblock(&sb).unwrap();
        assert_eq!(q, p);
        assert_eq!(n, 1234);
        sb[32] = b'x';
        assert!(parse_superblock(&sb)
            .unwrap_err()
            .to_string()
            .contains("sha256"));
    }

    #[test]
    fn build_then_verify_and_detect_flips() {
        let p = params(2);
        let data: Vec<u8> = (0..300 * 4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let range = ByteRange::new(0, data.len() as u64);
        let tree = build_tree(&data[..], range, &p).unwrap();
        let hash = tree.hash_device().to_vec();
        let hr = ByteRange::new(0, hash.len() as u64);
        verify_tree(&data[..], range, &hash[..], hr, &tree.root_hash()).unwrap();

        let mut bad = data.clone();
        bad[200 * 4096 + 17] ^= 1;
        match verify_tree(&bad[..], range, &hash[..], hr, &tree.root_hash()) {
            Err(VerityError::DataBlockMismatch { block: 200, .. }) => {}
            other => panic!("{other:?}"),
        }
        // Flip in the padding of the last level-0 block (300 % 128 = 44 entries).
        let mut bad_hash = hash.clone();
        let last_l0 = hash.len() - 4096;
        bad_hash[last_l0 + 44 * 32 + 5] = 1;
        let e = verify_tree(&data[..], range, &bad_hash[..], hr, &tree.root_hash()).unwrap_err();
        assert!(
            matches!(e, VerityError::HashBlockMismatch { level: 0, .. }),
            "{e}"
        );
        // A flip in the top level.
        let mut bad_top = hash.clone();
        bad_top[4096 + 3] ^= 0x80;
        let e = verify_tree(&data[..], range, &bad_top[..], hr, &tree.root_hash()).unwrap_err();
        assert!(
            matches!(
                e,
                VerityError::HashBlockMismatch {
                    level: 1,
                    index: 0,
                    ..
                }
            ),
            "{e}"
        );
        // Wrong root.
        let e = verify_tree(&data[..], range, &hash[..], hr, &RootHash([0; 32])).unwrap_err();
        assert!(matches!(e, VerityError::RootHashMismatch { .. }), "{e}");
        // Wrong data size.
        let short = ByteRange::new(0, range.len - 4096);
        let e = verify_tree(&data[..], short, &hash[..], hr, &tree.root_hash()).unwrap_err();
        assert!(matches!(e, VerityError::DataSizeMismatch { .. }), "{e}");
    }

    #[test]
    fn derive_is_deterministic_and_v4() {
        let a = VerityParams::derive(b"seed");
        assert_eq!(a, VerityParams::derive(b"seed"));
        assert_ne!(a, VerityParams::derive(b"seed2"));
        assert_eq!(a.salt().len(), 32);
        let u = uuid::Uuid::from_bytes(a.uuid());
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(a.salt(), hmac_sha256(b"seed", b"verity-salt"));
    }

    #[test]
    fn zero_padded_reads() {
        let inner = vec![1u8; 5000];
        let z = ZeroPadded::to_block_multiple(&inner[..], 5000, 4096);
        assert_eq!(z.padded_len(), 8192);
        let mut buf = vec![9u8; 4096];
        z.read_exact_at(&mut buf, 4096).unwrap();
        assert!(buf[..904].iter().all(|&b| b == 1));
        assert!(buf[904..].iter().all(|&b| b == 0));
        assert!(z.read_exact_at(&mut buf, 4097).is_err());
    }

    #[test]
    fn root_hash_text() {
        let h = "4ff25246d75801db4a00ada537a7ce1d5c34521b297a0e80000baac8d85d9594";
        let r: RootHash = h.parse().unwrap();
        assert_eq!(r.to_string(), h);
        assert!(h.to_uppercase().parse::<RootHash>().is_err());
        assert!(format!("{h}\n").parse::<RootHash>().is_err());
    }
}
