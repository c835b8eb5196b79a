//! Discoverable Disk Images: one GPT file holding the filesystem
//! (`root-ARCH`), its dm-verity hash device (`root-ARCH-verity`) and, when
//! signed, the root-hash signature (`root-ARCH-verity-sig`) — what
//! `systemd-repart --make-ddi=sysext` makes and `systemd-dissect`,
//! `systemd-sysext` and our node runtime read.
//!
//! This module owns the partition type GUIDs (from the Discoverable
//! Partitions Specification, for every architecture systemd knows), the
//! layout rules, the signature-partition JSON, the writer ([`write_ddi`])
//! and the reader ([`read_ddi`], [`verify_ddi`]). The reader needs nothing
//! from the build side.
//!
//! Layout the writer produces (512-byte sectors, everything 4096-aligned):
//!
//! | what | where |
//! |---|---|
//! | protective MBR, GPT header, 128 entries | sectors 0..34 |
//! | `root-ARCH`: the filesystem, zero-padded to 4096 | from byte 20480 |
//! | `root-ARCH-verity`: hash device with superblock | next |
//! | `root-ARCH-verity-sig`: JSON, NUL-padded to 16 KiB | next (signed images only) |
//! | backup entries and header | last 33 sectors, disk size a multiple of 4096 |
//!
//! Partition UUIDs: data = first 16 bytes of the root hash, verity = last 16
//! bytes (so the two together spell the root hash, as systemd expects); the
//! signature partition's UUID and the disk GUID are derived from the root
//! hash by HMAC-SHA256 (marked v4). All three partitions carry GPT attribute
//! bit 60 (read-only). The same filesystem, parameters and RSA key give the
//! same bytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use sysupdate::{Arch, Sha256Digest};
use uuid::Uuid;

use crate::gpt::{self, Geometry, GptPartition, ATTR_READ_ONLY, SECTOR};
use crate::keys::SigningKey;
use crate::pkcs7::{self, Pkcs7Error, RootHashSignature, TrustedCerts, VerifiedSigner};
use crate::verity::{
    self, build_tree, hash_device_size, hmac_sha256, make_v4_uuid, ByteRange, ReadAt, RootHash,
    VerityError, VerityParams,
};
use plumbing::atomic::AtomicFile;

/// Alignment of every partition, in bytes.
pub const ALIGNMENT: u64 = 4096;
/// Size of the signature partition the writer makes (as repart does).
pub const SIGNATURE_PARTITION_SIZE: u64 = 16 * 1024;
/// Largest signature partition the reader accepts (systemd's limit).
pub const MAX_SIGNATURE_PARTITION_SIZE: u64 = 4 << 20;

/// Which part of the OS the image's partitions stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Designator {
    Root,
    Usr,
}

impl Designator {
    pub fn as_str(self) -> &'static str {
        match self {
            Designator::Root => "root",
            Designator::Usr => "usr",
        }
    }
}

/// The three roles of the partitions that belong together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionRole {
    Data,
    Verity,
    VeritySig,
}

impl PartitionRole {
    fn suffix(self) -> &'static str {
        match self {
            PartitionRole::Data => "",
            PartitionRole::Verity => "-verity",
            PartitionRole::VeritySig => "-verity-sig",
        }
    }
}

/// Type GUIDs: root, root-verity, root-verity-sig, usr, usr-verity,
/// usr-verity-sig (checked against `systemd-id128 show` in the tests).
const TYPE_GUIDS: [(Arch, [u128; 6]); 8] = [
    (
        Arch::X86_64,
        [
            0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709,
            0x2c7357ed_ebd2_46d9_aec1_23d437ec2bf5,
            0x41092b05_9fc8_4523_994f_2def0408b176,
            0x8484680c_9521_48c6_9c11_b0720656f69e,
            0x77ff5f63_e7b6_4633_acf4_1565b864c0e6,
            0xe7bb33fb_06cf_4e81_8273_e543b413e2e2,
        ],
    ),
    (
        Arch::Arm64,
        [
            0xb921b045_1df0_41c3_af44_4c6f280d3fae,
            0xdf3300ce_d69f_4c92_978c_9bfb0f38d820,
            0x6db69de6_29f4_4758_a7a5_962190f00ce3,
            0xb0e01050_ee5f_4390_949a_9101b17104e9,
            0x6e11a4e7_fbca_4ded_b9e9_e1a512bb664e,
            0xc23ce4ff_44bd_4b00_b2d4_b41b3419e02a,
        ],
    ),
    (
        Arch::X86,
        [
            0x44479540_f297_41b2_9af7_d131d5f0458a,
            0xd13c5d3b_b5d1_422a_b29f_9454fdc89d76,
            0x5996fc05_109c_48de_808b_23fa0830b676,
            0x75250d76_8cc6_458e_bd66_bd47cc81a812,
            0x8f461b0d_14ee_4e81_9aa9_049b6fb97abd,
            0x974a71c0_de41_43c3_be5d_5c5ccd1ad2c0,
        ],
    ),
    (
        Arch::Arm,
        [
            0x69dad710_2ce4_4e3c_b16c_21a1d49abed3,
            0x7386cdf2_203c_47a9_a498_f2ecce45a2d6,
            0x42b0455f_eb11_491d_98d3_56145ba9d037,
            0x7d0359a3_02b3_4f0a_865c_654403e70625,
            0xc215d751_7bcd_4649_be90_6627490a4c05,
            0xd7ff812f_37d1_4902_a810_d76ba57b975a,
        ],
    ),
    (
        Arch::Ppc64Le,
        [
            0xc31c45e6_3f39_412e_80fb_4809c4980599,
            0x906bd944_4589_4aae_a4e4_dd983917446a,
            0xd4a236e7_e873_4c07_bf1d_bf6cf7f1c3c6,
            0x15bb03af_77e7_4d4a_b12b_c0d084f7491c,
            0xee2b9983_21e8_4153_86d9_b6901a54d1ce,
            0xc8bfbd1e_268e_4521_8bba_bf314c399557,
        ],
    ),
    (
        Arch::Riscv64,
        [
            0x72ec70a6_cf74_40e6_bd49_4bda08e8f224,
            0xb6ed5582_440b_4209_b8da_5ff7c419ea3d,
            0xefe0f087_ea8d_4469_821a_4c2a96a8386a,
            0xbeaec34b_8442_439b_a40b_984381ed097d,
            0x8f1056be_9b05_47c4_81d6_be53128e5b54,
            0xd2f9000a_7a18_453f_b5cd_4d32f77a7b32,
        ],
    ),
    (
        Arch::S390x,
        [
            0x5eead9a9_fe09_4a1e_a1d7_520d00531306,
            0xb325bfbe_c7be_4ab8_8357_139e652d2f6b,
            0xc80187a5_73a3_491a_901a_017c3fa953e9,
            0x8a4f5770_50aa_4ed3_874a_99b710db6fea,
            0x31741cc4_1a2a_4111_a581_e00b447d2d06,
            0x3f324816_667b_46ae_86ee_9b0c0c6c11b4,
        ],
    ),
    (
        Arch::Loongarch64,
        [
            0x77055800_792c_4f94_b39a_98c91b762bb6,
            0xf3393b22_e9af_4613_a948_9d3bfbd0c535,
            0x5afb67eb_ecc8_4f85_ae8e_ac1e7c50e7d0,
            0xe611c702_575c_4cbe_9a46_434fa0bf7e3f,
            0xf46b2c26_59ae_48f0_9106_c50ed47f673d,
            0xb024f315_d330_444c_8461_44bbde524e99,
        ],
    ),
];

fn role_index(designator: Designator, role: PartitionRole) -> usize {
    let d = match designator {
        Designator::Root => 0,
        Designator::Usr => 3,
    };
    d + match role {
        PartitionRole::Data => 0,
        PartitionRole::Verity => 1,
        PartitionRole::VeritySig => 2,
    }
}

/// The partition type GUID for `arch`, `designator` and `role`.
pub fn partition_type(arch: Arch, designator: Designator, role: PartitionRole) -> Uuid {
    let idx = role_index(designator, role);
    let row = match arch {
        Arch::X86_64 => 0,
        Arch::Arm64 => 1,
        Arch::X86 => 2,
        Arch::Arm => 3,
        Arch::Ppc64Le => 4,
        Arch::Riscv64 => 5,
        Arch::S390x => 6,
        Arch::Loongarch64 => 7,
    };
    Uuid::from_u128(TYPE_GUIDS[row].1[idx])
}

/// The partition label systemd-repart uses, e.g. `root-x86-64-verity`.
pub fn partition_label(arch: Arch, designator: Designator, role: PartitionRole) -> String {
    format!("{}-{}{}", designator.as_str(), arch, role.suffix())
}

/// What a partition type GUID stands for, if it is one of ours.
pub fn classify_partition_type(type_guid: Uuid) -> Option<(Arch, Designator, PartitionRole)> {
    let v = type_guid.as_u128();
    for (arch, guids) in TYPE_GUIDS {
        for designator in [Designator::Root, Designator::Usr] {
            for role in [
                PartitionRole::Data,
                PartitionRole::Verity,
                PartitionRole::VeritySig,
            ] {
                if guids[role_index(designator, role)] == v {
                    return Some((arch, designator, role));
                }
            }
        }
    }
    None
}

/// Errors from writing or reading a DDI.
#[derive(Debug, thiserror::Error)]
pub enum DdiError {
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<DdiError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("the filesystem image is empty: nothing to put into a DDI")]
    EmptyImage,
    #[error("invalid partition table: {0}")]
    Gpt(String),
    #[error(
        "no verity-protected partitions of a known type: the image holds {found}; \
         expected root-ARCH (or usr-ARCH) with a matching -verity partition"
    )]
    NoPartitions { found: String },
    #[error("the image holds partitions for several architectures or designators ({0}); pick one")]
    Ambiguous(String),
    #[error("the image holds {count} {label} partitions; expected one")]
    Duplicate { label: String, count: usize },
    #[error("{label} has no {missing} partition: {why}")]
    Missing {
        label: String,
        missing: &'static str,
        why: &'static str,
    },
    #[error("partition {label} is {size} bytes; {what}")]
    BadPartition {
        label: String,
        size: u64,
        what: String,
    },
    #[error("signature partition {label}: {what}")]
    BadSignaturePartition { label: String, what: String },
    #[error(
        "the signature partition is for root hash {signed}, but the data and verity partition \
         UUIDs spell {from_uuids}: the partitions do not belong together"
    )]
    RootHashMismatch {
        signed: RootHash,
        from_uuids: RootHash,
    },
    #[error(
        "the image is signed by a key that is not trusted here, or the signature is invalid: {0}"
    )]
    Signature(#[from] Pkcs7Error),
    #[error("the image's verity data does not check out: {0}")]
    Verity(#[from] VerityError),
    #[error("the image is not signed (no -verity-sig partition), but a signature is required")]
    Unsigned,
}

fn in_file(path: &Path) -> impl FnOnce(DdiError) -> DdiError + '_ {
    move |e| DdiError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

// ---------------------------------------------------------------------------
// Signature JSON

#[derive(serde::Serialize, serde::Deserialize)]
struct SignatureJson {
    #[serde(rename = "rootHash")]
    root_hash: String,
    #[serde(rename = "certificateFingerprint")]
    certificate_fingerprint: Option<String>,
    signature: String,
}

/// The JSON that goes into the signature partition (compact, keys in
/// repart's order), without the NUL padding.
pub fn signature_json(
    root: &RootHash,
    certificate_fingerprint: &Sha256Digest,
    signature: &RootHashSignature,
) -> Vec<u8> {
    let j = SignatureJson {
        root_hash: root.to_hex(),
        certificate_fingerprint: Some(certificate_fingerprint.to_hex()),
        signature: base64::engine::general_purpose::STANDARD.encode(signature.as_der()),
    };
    // Serializing a struct of strings cannot fail.
    serde_json::to_vec(&j).unwrap_or_default()
}

/// A parsed signature partition.
#[derive(Debug, Clone)]
pub struct DdiSignature {
    pub range: ByteRange,
    pub root_hash: RootHash,
    pub certificate_fingerprint: Sha256Digest,
    pub signature: RootHashSignature,
}

/// Parses the content of a signature partition: JSON, then only NULs.
/// Checks the fields' syntax and, when the PKCS#7 structure embeds
/// certificates, that `certificateFingerprint` names one of them.
pub fn parse_signature_partition(
    content: &[u8],
) -> Result<(RootHash, Sha256Digest, RootHashSignature), String> {
    let end = content
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(content.len());
    if content[end..].iter().any(|&b| b != 0) {
        return Err("bytes other than NUL follow the JSON's terminating NUL".into());
    }
    let text =
        std::str::from_utf8(&content[..end]).map_err(|_| "the JSON is not UTF-8".to_string())?;
    let j: SignatureJson =
        serde_json::from_str(text).map_err(|e| format!("not the expected JSON object: {e}"))?;
    let root: RootHash = j.root_hash.parse().map_err(|e| format!("rootHash: {e}"))?;
    let fp_text = j
        .certificate_fingerprint
        .ok_or_else(|| "the JSON has no certificateFingerprint".to_string())?;
    let fingerprint: Sha256Digest = fp_text
        .parse()
        .map_err(|e| format!("certificateFingerprint: {e}"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(j.signature.as_bytes())
        .map_err(|e| format!("signature is not base64: {e}"))?;
    let embedded = pkcs7::embedded_cert_fingerprints(&der).map_err(|e| e.to_string())?;
    if !embedded.is_empty() && !embedded.contains(&fingerprint) {
        return Err(format!(
            "certificateFingerprint {fingerprint} is not the fingerprint of the certificate in the signature"
        ));
    }
    Ok((root, fingerprint, RootHashSignature::from_der(der)))
}

// ---------------------------------------------------------------------------
// Writer

/// How to seal a filesystem into a DDI.
#[derive(Debug, Clone, Copy)]
pub struct DdiOptions<'a> {
    pub arch: Arch,
    /// Sign with this key; `None` makes an unsigned DDI (no -verity-sig).
    pub key: Option<&'a SigningKey>,
    /// Verity salt and UUID; `None` derives them from the data partition's
    /// content ([`VerityParams::derive_from_content`]).
    pub verity: Option<&'a VerityParams>,
}

/// What [`write_ddi`] wrote.
#[derive(Debug, Clone)]
pub struct SealedDdi {
    pub path: PathBuf,
    pub arch: Arch,
    pub root_hash: RootHash,
    pub params: VerityParams,
    pub size: u64,
    pub data: ByteRange,
    pub verity: ByteRange,
    /// Range of the signature partition and the signer's certificate fingerprint.
    pub signature: Option<(ByteRange, Sha256Digest)>,
}

/// Seals the filesystem image `fs_image` (squashfs or erofs) into a DDI at
/// `out`: the filesystem zero-padded to 4096 bytes, its verity tree, and —
/// with a key — the signature partition. Atomic: `out` appears complete or
/// not at all (an existing `out` is replaced).
pub fn write_ddi(
    fs_image: &Path,
    out: &Path,
    opts: &DdiOptions<'_>,
) -> Result<SealedDdi, DdiError> {
    let io_ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    let mut src = File::open(fs_image).map_err(|source| DdiError::Io {
        context: io_ctx("cannot open the filesystem image", fs_image),
        source,
    })?;
    let fs_len = src
        .metadata()
        .map_err(|source| DdiError::Io {
            context: io_ctx("cannot stat", fs_image),
            source,
        })?
        .len();
    if fs_len == 0 {
        return Err(in_file(fs_image)(DdiError::EmptyImage));
    }
    // The tree's size depends only on the data size, so the layout is known
    // before anything is hashed.
    let sizing = opts
        .verity
        .cloned()
        .unwrap_or_else(|| VerityParams::derive(b""));
    let data_len = align_up(fs_len, ALIGNMENT.max(u64::from(sizing.data_block_size())));
    let verity_len = align_up(hash_device_size(data_len, &sizing)?, ALIGNMENT);

    let geo_first = align_up(
        gpt::Geometry { total_sectors: 0 }.first_usable() * SECTOR,
        ALIGNMENT,
    );
    let data = ByteRange::new(geo_first, data_len);
    let verity = ByteRange::new(align_up(data.end(), ALIGNMENT), verity_len);
    let sig_range = opts
        .key
        .map(|_| ByteRange::new(align_up(verity.end(), ALIGNMENT), SIGNATURE_PARTITION_SIZE));
    let end = sig_range.map_or(verity.end(), |r| r.end());
    let total = align_up(end + (gpt::ENTRY_SECTORS + 1) * SECTOR, ALIGNMENT);
    let geo = Geometry {
        total_sectors: total / SECTOR,
    };

    let write_ctx = || io_ctx("cannot write", out);
    let werr = |source| DdiError::Io {
        context: write_ctx(),
        source,
    };
    let mut tmp = AtomicFile::create(out, 0o644).map_err(werr)?;
    tmp.file().set_len(total).map_err(werr)?;
    // Copy the filesystem in (copy_file_range where possible).
    tmp.file_mut()
        .seek(SeekFrom::Start(data.offset))
        .map_err(werr)?;
    let copied = io::copy(&mut (&mut src).take(fs_len), tmp.file_mut()).map_err(werr)?;
    if copied != fs_len {
        return Err(DdiError::Io {
            context: io_ctx("reading", fs_image),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while being copied",
            ),
        });
    }

    // Hash what is in the DDI itself, so tree and content cannot disagree.
    let params = match opts.verity {
        Some(p) => p.clone(),
        None => VerityParams::derive_from_content(tmp.file(), data)?,
    };
    let tree = build_tree(tmp.file(), data, &params)?;
    let root = tree.root_hash();
    tmp.file()
        .write_all_at(tree.hash_device(), verity.offset)
        .map_err(werr)?;

    let mut signature = None;
    if let (Some(key), Some(range)) = (opts.key, sig_range) {
        let sig = pkcs7::sign_root_hash(&root, key)?;
        let fingerprint = key.certificate_fingerprint();
        let json = signature_json(&root, &fingerprint, &sig);
        if json.len() as u64 >= range.len {
            return Err(DdiError::BadSignaturePartition {
                label: partition_label(opts.arch, Designator::Root, PartitionRole::VeritySig),
                what: format!(
                    "the signature JSON is {} bytes and does not fit into {} bytes; use a smaller certificate",
                    json.len(),
                    range.len
                ),
            });
        }
        tmp.file().write_all_at(&json, range.offset).map_err(werr)?;
        signature = Some((range, fingerprint));
    }

    let mut parts = vec![
        partition(
            opts.arch,
            PartitionRole::Data,
            data,
            uuid_from(&root.as_bytes()[..16]),
        ),
        partition(
            opts.arch,
            PartitionRole::Verity,
            verity,
            uuid_from(&root.as_bytes()[16..]),
        ),
    ];
    if let Some(range) = sig_range {
        parts.push(partition(
            opts.arch,
            PartitionRole::VeritySig,
            range,
            derived_uuid(&root, b"verity-sig-uuid"),
        ));
    }
    for (offset, bytes) in gpt::table_pieces(&geo, derived_uuid(&root, b"disk-uuid"), &parts) {
        tmp.file().write_all_at(&bytes, offset).map_err(werr)?;
    }
    tmp.commit().map_err(werr)?;
    Ok(SealedDdi {
        path: out.to_path_buf(),
        arch: opts.arch,
        root_hash: root,
        params,
        size: total,
        data,
        verity,
        signature,
    })
}

fn uuid_from(bytes: &[u8]) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&bytes[..16]);
    Uuid::from_bytes(a)
}

fn derived_uuid(root: &RootHash, what: &[u8]) -> Uuid {
    Uuid::from_bytes(make_v4_uuid(uuid_bytes(&hmac_sha256(
        root.as_bytes(),
        what,
    ))))
}

fn uuid_bytes(b: &[u8; 32]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

fn partition(arch: Arch, role: PartitionRole, range: ByteRange, uuid: Uuid) -> GptPartition {
    GptPartition {
        type_guid: partition_type(arch, Designator::Root, role),
        unique_guid: uuid,
        first_lba: range.offset / SECTOR,
        last_lba: range.end() / SECTOR - 1,
        attributes: ATTR_READ_ONLY,
        name: partition_label(arch, Designator::Root, role),
    }
}

// ---------------------------------------------------------------------------
// Reader

/// Where the root hash of a layout came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootHashSource {
    /// The signature partition (which also matched the partition UUIDs).
    SignaturePartition,
    /// Only the data and verity partition UUIDs: trust it only after
    /// checking it against something trusted.
    PartitionUuids,
}

/// The verity-protected partitions of a DDI, as byte ranges of the image.
#[derive(Debug, Clone)]
pub struct DdiLayout {
    pub arch: Arch,
    pub designator: Designator,
    pub disk_guid: Uuid,
    pub size: u64,
    pub data: ByteRange,
    pub verity: ByteRange,
    pub root_hash: RootHash,
    pub root_hash_source: RootHashSource,
    pub signature: Option<DdiSignature>,
}

/// Reads the partition table of `image`, finds the verity-protected
/// partitions of the single architecture and designator it holds, parses
/// and checks the signature partition, and returns their byte ranges and
/// the root hash. Does not hash anything and does not judge trust; see
/// [`verify_ddi`].
pub fn read_ddi<R: ReadAt + ?Sized>(image: &R) -> Result<DdiLayout, DdiError> {
    read_ddi_impl(image, None)
}

/// [`read_ddi`] for the partitions of `arch` only (an image may hold
/// several architectures).
pub fn read_ddi_for_arch<R: ReadAt + ?Sized>(image: &R, arch: Arch) -> Result<DdiLayout, DdiError> {
    read_ddi_impl(image, Some(arch))
}

/// [`read_ddi`] on a file; errors name the file.
pub fn read_ddi_file(path: &Path) -> Result<DdiLayout, DdiError> {
    let f = File::open(path).map_err(|source| DdiError::Io {
        context: format!("cannot open {}", path.display()),
        source,
    })?;
    read_ddi(&f).map_err(in_file(path))
}

fn read_ddi_impl<R: ReadAt + ?Sized>(image: &R, want: Option<Arch>) -> Result<DdiLayout, DdiError> {
    let size = image.size().map_err(|source| DdiError::Io {
        context: "cannot determine the image size".into(),
        source,
    })?;
    let table = gpt::read_table(image, size).map_err(|e| DdiError::Gpt(e.to_string()))?;
    let known: Vec<(Arch, Designator, PartitionRole, &GptPartition)> = table
        .partitions
        .iter()
        .filter_map(|p| classify_partition_type(p.type_guid).map(|(a, d, r)| (a, d, r, p)))
        .filter(|(a, ..)| want.is_none_or(|w| w == *a))
        .collect();
    let mut groups: Vec<(Arch, Designator)> = Vec::new();
    for (a, d, r, _) in &known {
        if *r == PartitionRole::Data && !groups.contains(&(*a, *d)) {
            groups.push((*a, *d));
        }
    }
    let (arch, designator) = match groups.as_slice() {
        [one] => *one,
        [] => {
            let found = if table.partitions.is_empty() {
                "no partitions".to_string()
            } else {
                table
                    .partitions
                    .iter()
                    .map(|p| format!("{:?} (type {})", p.name, p.type_guid))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(DdiError::NoPartitions { found });
        }
        many => {
            let names = many
                .iter()
                .map(|(a, d)| format!("{}-{a}", d.as_str()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(DdiError::Ambiguous(names));
        }
    };
    let label = |role| partition_label(arch, designator, role);
    let pick = |role: PartitionRole| -> Result<Option<&GptPartition>, DdiError> {
        let found: Vec<_> = known
            .iter()
            .filter(|(a, d, r, _)| *a == arch && *d == designator && *r == role)
            .map(|(.., p)| *p)
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [p] => Ok(Some(*p)),
            more => Err(DdiError::Duplicate {
                label: label(role),
                count: more.len(),
            }),
        }
    };
    let data_p = pick(PartitionRole::Data)?.ok_or_else(|| DdiError::Missing {
        label: label(PartitionRole::Data),
        missing: "data",
        why: "internal error",
    })?;
    let verity_p = pick(PartitionRole::Verity)?.ok_or_else(|| DdiError::Missing {
        label: label(PartitionRole::Data),
        missing: "-verity",
        why: "the filesystem is not protected by dm-verity; seal the image with a verity tree",
    })?;
    let sig_p = pick(PartitionRole::VeritySig)?;

    let from_uuids = {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(data_p.unique_guid.as_bytes());
        b[16..].copy_from_slice(verity_p.unique_guid.as_bytes());
        RootHash::from_bytes(b)
    };
    let data = ByteRange::new(data_p.byte_offset(), data_p.byte_len());
    let verity = ByteRange::new(verity_p.byte_offset(), verity_p.byte_len());

    let mut signature = None;
    if let Some(sp) = sig_p {
        let range = ByteRange::new(sp.byte_offset(), sp.byte_len());
        let bad = |what: String| DdiError::BadSignaturePartition {
            label: label(PartitionRole::VeritySig),
            what,
        };
        if range.len > MAX_SIGNATURE_PARTITION_SIZE {
            return Err(bad(format!(
                "it is {} bytes, more than the {MAX_SIGNATURE_PARTITION_SIZE}-byte limit",
                range.len
            )));
        }
        let mut content = vec![0u8; range.len as usize];
        image
            .read_exact_at(&mut content, range.offset)
            .map_err(|source| DdiError::Io {
                context: "reading the signature partition".into(),
                source,
            })?;
        let (root, fingerprint, der) = parse_signature_partition(&content).map_err(bad)?;
        if root != from_uuids {
            return Err(DdiError::RootHashMismatch {
                signed: root,
                from_uuids,
            });
        }
        signature = Some(DdiSignature {
            range,
            root_hash: root,
            certificate_fingerprint: fingerprint,
            signature: der,
        });
    }
    Ok(DdiLayout {
        arch,
        designator,
        disk_guid: table.disk_guid,
        size,
        data,
        verity,
        root_hash: from_uuids,
        root_hash_source: if signature.is_some() {
            RootHashSource::SignaturePartition
        } else {
            RootHashSource::PartitionUuids
        },
        signature,
    })
}

/// A DDI that passed [`verify_ddi`].
#[derive(Debug, Clone)]
pub struct VerifiedDdi {
    pub layout: DdiLayout,
    /// The trusted certificate that signed it (`None` when no trust set was
    /// given, i.e. only the tree was checked).
    pub signer: Option<VerifiedSigner>,
}

/// Reads the layout and checks everything in user space: with `trusted`,
/// the image must be signed by one of those certificates; then the whole
/// verity tree is checked against the data partition and the root hash.
pub fn verify_ddi<R: ReadAt + ?Sized>(
    image: &R,
    trusted: Option<&TrustedCerts>,
) -> Result<VerifiedDdi, DdiError> {
    let layout = read_ddi(image)?;
    let signer = match trusted {
        None => None,
        Some(t) => {
            let sig = layout.signature.as_ref().ok_or(DdiError::Unsigned)?;
            Some(pkcs7::verify_root_hash(
                &layout.root_hash,
                sig.signature.as_der(),
                t,
            )?)
        }
    };
    verity::verify_tree(image, layout.data, image, layout.verity, &layout.root_hash)?;
    Ok(VerifiedDdi { layout, signer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_table_is_consistent() {
        for arch in Arch::ALL {
            for d in [Designator::Root, Designator::Usr] {
                for r in [
                    PartitionRole::Data,
                    PartitionRole::Verity,
                    PartitionRole::VeritySig,
                ] {
                    assert_eq!(
                        classify_partition_type(partition_type(arch, d, r)),
                        Some((arch, d, r))
                    );
                }
            }
        }
        assert_eq!(
            partition_type(Arch::X86_64, Designator::Root, PartitionRole::Data).to_string(),
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
        );
        assert_eq!(
            partition_label(Arch::X86_64, Designator::Root, PartitionRole::VeritySig),
            "root-x86-64-verity-sig"
        );
    }

    #[test]
    fn signature_content_rules() {
        let e = parse_signature_partition(b"{\"rootHash\":\"00\"}\0\0x\0").unwrap_err();
        assert!(e.contains("other than NUL"), "{e}");
        let e = parse_signature_partition(b"not json\0\0").unwrap_err();
        assert!(e.contains("JSON"), "{e}");
        let root = "ab".repeat(32);
        let fp = "cd".repeat(32);
        let j = format!("{{\"rootHash\":\"{root}\",\"certificateFingerprint\":\"{fp}\",\"signature\":\"!!\"}}\0");
        let e = parse_signature_partition(j.as_bytes()).unwrap_err();
        assert!(e.contains("base64"), "{e}");
    }
}

#[cfg(test)]
mod no_panic {
    //! Whatever bytes the readers get, they return an error, never panic.
    use super::*;
    use proptest::prelude::*;

    /// A small valid table to mutate: three partitions on a 200-sector disk.
    fn valid_image() -> Vec<u8> {
        let geo = Geometry { total_sectors: 200 };
        let root = RootHash::from_bytes([5; 32]);
        let parts = vec![
            partition(
                Arch::X86_64,
                PartitionRole::Data,
                ByteRange::new(40 * 512, 4096),
                uuid_from(&[1; 16]),
            ),
            partition(
                Arch::X86_64,
                PartitionRole::Verity,
                ByteRange::new(48 * 512, 4096),
                uuid_from(&[2; 16]),
            ),
            partition(
                Arch::X86_64,
                PartitionRole::VeritySig,
                ByteRange::new(56 * 512, 4096),
                derived_uuid(&root, b"x"),
            ),
        ];
        let mut img = vec![0u8; 200 * 512];
        for (off, bytes) in gpt::table_pieces(&geo, Uuid::from_u128(9), &parts) {
            img[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
        }
        img
    }

    proptest! {
        #[test]
        fn read_ddi_never_panics_on_mutations(flips in proptest::collection::vec((0usize..200 * 512, any::<u8>()), 1..8)) {
            let mut img = valid_image();
            for (at, v) in flips {
                img[at] = v;
            }
            let _ = read_ddi(&img[..]);
        }

        /// Damage behind valid CRCs reaches the deeper checks (bounds,
        /// overlaps, types, signature JSON).
        #[test]
        fn read_ddi_never_panics_behind_valid_crcs(flips in proptest::collection::vec((0usize..3 * 128, any::<u8>()), 1..6), header in proptest::collection::vec((24usize..92, any::<u8>()), 0..3)) {
            let mut img = valid_image();
            for (at, v) in flips {
                img[1024 + at] = v;
            }
            for (at, v) in header {
                if !(88..92).contains(&at) {
                    img[512 + at] = v;
                }
            }
            fix_crcs(&mut img);
            let _ = read_ddi(&img[..]);
        }

        #[test]
        fn read_ddi_never_panics_on_noise(img in proptest::collection::vec(any::<u8>(), 0..40_000)) {
            let _ = read_ddi(&img[..]);
        }

        #[test]
        fn signature_parser_never_panics(content in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = parse_signature_partition(&content);
        }

        #[test]
        fn superblock_parser_never_panics(mut sb in proptest::collection::vec(any::<u8>(), 512), keep_magic in any::<bool>()) {
            if keep_magic {
                sb[..8].copy_from_slice(b"verity\0\0");
                sb[8..16].copy_from_slice(&[1, 0, 0, 0, 1, 0, 0, 0]);
            }
            let mut a = [0u8; 512];
            a.copy_from_slice(&sb);
            let _ = verity::parse_superblock(&a);
        }
    }

    /// Recomputes the entry and header CRCs of the primary table and copies
    /// the entries and CRC into the backup.
    fn fix_crcs(img: &mut [u8]) {
        let n = img.len();
        let entries_crc = gpt::crc32(&img[1024..1024 + 16384]);
        img[512 + 88..512 + 92].copy_from_slice(&entries_crc.to_le_bytes());
        img[512 + 16..512 + 20].fill(0);
        let crc = gpt::crc32(&img[512..512 + 92]);
        img[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        let entries = img[1024..1024 + 16384].to_vec();
        img[n - 512 - 16384..n - 512].copy_from_slice(&entries);
        let b = n - 512;
        img[b + 88..b + 92].copy_from_slice(&entries_crc.to_le_bytes());
        img[b + 16..b + 20].fill(0);
        let crc = gpt::crc32(&img[b..b + 92]);
        img[b + 16..b + 20].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn the_valid_image_reads() {
        let mut img = valid_image();
        fix_crcs(&mut img);
        assert_eq!(
            img,
            valid_image(),
            "fix_crcs must be a no-op on a valid table"
        );
        let img = valid_image();
        // The signature partition is empty (all NUL): not valid JSON.
        let e = read_ddi(&img[..]).unwrap_err();
        assert!(matches!(e, DdiError::BadSignaturePartition { .. }), "{e}");
    }
}
