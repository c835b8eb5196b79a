//! The GUID partition table of a DDI: writing a complete table (protective
//! MBR, primary header and entries, backup entries and header, CRC32s) and
//! reading one back with every field that matters checked. 512-byte
//! sectors. Nothing here knows about verity; see `ddi` for the meaning of
//! the partitions.

use std::io;

use uuid::Uuid;

use crate::verity::ReadAt;

pub(crate) const SECTOR: u64 = 512;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
pub(crate) const ENTRY_COUNT: u32 = 128;
pub(crate) const ENTRY_SIZE: u32 = 128;
/// Sectors taken by the entry array (128 × 128 bytes).
pub(crate) const ENTRY_SECTORS: u64 = (ENTRY_COUNT as u64 * ENTRY_SIZE as u64) / SECTOR;
/// Most entries a reader accepts (keeps allocation bounded).
const MAX_ENTRIES: u32 = 1024;

/// GPT attribute bit 60: read-only.
pub(crate) const ATTR_READ_ONLY: u64 = 1 << 60;

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GptPartition {
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    /// First and last sector, inclusive (as stored).
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl GptPartition {
    pub fn byte_offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    pub fn byte_len(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// A problem with the table; the caller adds the file name.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GptError {
    #[error("{0}")]
    Invalid(String),
    #[error("reading {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses it.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// Where the table puts things on a disk of `total_sectors`.
pub(crate) struct Geometry {
    pub total_sectors: u64,
}

impl Geometry {
    pub fn first_usable(&self) -> u64 {
        2 + ENTRY_SECTORS
    }
    pub fn last_usable(&self) -> u64 {
        self.total_sectors - 2 - ENTRY_SECTORS
    }
    fn backup_entries(&self) -> u64 {
        self.total_sectors - 1 - ENTRY_SECTORS
    }
    fn backup_header(&self) -> u64 {
        self.total_sectors - 1
    }
}

fn entries_bytes(parts: &[GptPartition]) -> Vec<u8> {
    let mut out = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut out[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
        e[16..32].copy_from_slice(&p.unique_guid.to_bytes_le());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (k, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * k..58 + 2 * k].copy_from_slice(&unit.to_le_bytes());
        }
    }
    out
}

fn header_bytes(
    geo: &Geometry,
    disk_guid: Uuid,
    primary: bool,
    entries_crc: u32,
) -> [u8; SECTOR as usize] {
    let (my_lba, alt_lba, entries_lba) = if primary {
        (1, geo.backup_header(), 2)
    } else {
        (geo.backup_header(), 1, geo.backup_entries())
    };
    let mut h = [0u8; SECTOR as usize];
    h[0..8].copy_from_slice(SIGNATURE);
    h[8..12].copy_from_slice(&REVISION.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
    h[40..48].copy_from_slice(&geo.first_usable().to_le_bytes());
    h[48..56].copy_from_slice(&geo.last_usable().to_le_bytes());
    h[56..72].copy_from_slice(&disk_guid.to_bytes_le());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn protective_mbr(total_sectors: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
    let p = &mut m[446..462];
    p[0] = 0x00; // not bootable
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    p[4] = 0xEE; // GPT protective
    p[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    p[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Every sector the table occupies, as (byte offset, bytes) pieces to write
/// into a disk of `geo.total_sectors` sectors.
pub(crate) fn table_pieces(
    geo: &Geometry,
    disk_guid: Uuid,
    parts: &[GptPartition],
) -> Vec<(u64, Vec<u8>)> {
    let entries = entries_bytes(parts);
    let crc = crc32(&entries);
    vec![
        (0, protective_mbr(geo.total_sectors).to_vec()),
        (SECTOR, header_bytes(geo, disk_guid, true, crc).to_vec()),
        (2 * SECTOR, entries.clone()),
        (geo.backup_entries() * SECTOR, entries),
        (
            geo.backup_header() * SECTOR,
            header_bytes(geo, disk_guid, false, crc).to_vec(),
        ),
    ]
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Uuid::from_bytes_le(a)
}

struct Header {
    my_lba: u64,
    alternate_lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: Uuid,
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn parse_header(h: &[u8], which: &str, total_sectors: u64) -> Result<Header, GptError> {
    let bad = |m: String| GptError::Invalid(format!("{which} GPT header: {m}"));
    if &h[0..8] != SIGNATURE {
        return Err(bad(
            "no \"EFI PART\" signature (not a GPT disk image)".into()
        ));
    }
    let size = u32_at(h, 12);
    if !(HEADER_SIZE..=SECTOR as u32).contains(&size) {
        return Err(bad(format!("header size {size} is outside 92..=512")));
    }
    let stored = u32_at(h, 16);
    let mut copy = h[..size as usize].to_vec();
    copy[16..20].fill(0);
    let actual = crc32(&copy);
    if stored != actual {
        return Err(bad(format!(
            "header CRC32 is {stored:08x} but the header gives {actual:08x}: the header is corrupt"
        )));
    }
    let hd = Header {
        my_lba: u64_at(h, 24),
        alternate_lba: u64_at(h, 32),
        first_usable: u64_at(h, 40),
        last_usable: u64_at(h, 48),
        disk_guid: guid_at(h, 56),
        entries_lba: u64_at(h, 72),
        entry_count: u32_at(h, 80),
        entry_size: u32_at(h, 84),
        entries_crc: u32_at(h, 88),
    };
    if hd.entry_count == 0 || hd.entry_count > MAX_ENTRIES {
        return Err(bad(format!(
            "{} partition entries (expected 1..={MAX_ENTRIES})",
            hd.entry_count
        )));
    }
    if !(128..=4096).contains(&hd.entry_size) || !hd.entry_size.is_power_of_two() {
        return Err(bad(format!(
            "partition entry size {} is not one of 128, 256, …, 4096",
            hd.entry_size
        )));
    }
    let entry_sectors = (u64::from(hd.entry_count) * u64::from(hd.entry_size)).div_ceil(SECTOR);
    let entries_end = hd.entries_lba.saturating_add(entry_sectors);
    if hd.entries_lba < 2 || entries_end > total_sectors {
        return Err(bad(format!(
            "partition entries at sectors {}..{entries_end} lie outside the {total_sectors}-sector image \
             (truncated image?)",
            hd.entries_lba
        )));
    }
    if hd.first_usable > hd.last_usable || hd.last_usable >= total_sectors {
        return Err(bad(format!(
            "usable sectors {}..={} do not fit the {total_sectors}-sector image (truncated image?)",
            hd.first_usable, hd.last_usable
        )));
    }
    Ok(hd)
}

fn read_entries<R: ReadAt + ?Sized>(r: &R, hd: &Header, which: &str) -> Result<Vec<u8>, GptError> {
    let len = hd.entry_count as usize * hd.entry_size as usize;
    let mut buf = vec![0u8; len];
    r.read_exact_at(&mut buf, hd.entries_lba * SECTOR)
        .map_err(|source| GptError::Io {
            what: "the GPT partition entries",
            source,
        })?;
    let actual = crc32(&buf);
    if actual != hd.entries_crc {
        return Err(GptError::Invalid(format!(
            "{which} GPT partition entries: CRC32 is {actual:08x} but the header records {:08x}: \
             the partition table is corrupt",
            hd.entries_crc
        )));
    }
    Ok(buf)
}

/// The table read back: disk GUID and used entries in table order.
#[derive(Debug)]
pub(crate) struct ReadTable {
    pub disk_guid: Uuid,
    pub partitions: Vec<GptPartition>,
}

/// Reads and checks the GPT of an image of `size` bytes: protective MBR,
/// primary header and entries (CRCs, bounds), the backup header (CRC,
/// pointing back, same entries), each partition inside the usable area and
/// no two overlapping.
pub(crate) fn read_table<R: ReadAt + ?Sized>(r: &R, size: u64) -> Result<ReadTable, GptError> {
    if size < SECTOR * (3 + 2 * ENTRY_SECTORS) || size % SECTOR != 0 {
        return Err(GptError::Invalid(format!(
            "the image is {size} bytes; a GPT disk image is a multiple of {SECTOR} bytes and at least {} bytes",
            SECTOR * (3 + 2 * ENTRY_SECTORS)
        )));
    }
    let total_sectors = size / SECTOR;
    let mut head = [0u8; 2 * SECTOR as usize];
    r.read_exact_at(&mut head, 0)
        .map_err(|source| GptError::Io {
            what: "the GPT header",
            source,
        })?;
    if head[510..512] != [0x55, 0xAA] || !head[446..510].chunks(16).any(|p| p[4] == 0xEE) {
        return Err(GptError::Invalid(
            "no protective MBR (0x55AA signature with a type 0xEE partition) in sector 0: \
             not a GPT disk image"
                .into(),
        ));
    }
    let hd = parse_header(&head[SECTOR as usize..], "primary", total_sectors)?;
    if hd.my_lba != 1 {
        return Err(GptError::Invalid(format!(
            "primary GPT header says it is at sector {}, not 1",
            hd.my_lba
        )));
    }
    let entries = read_entries(r, &hd, "primary")?;

    // The backup must agree, else the image was truncated or tampered with.
    if hd.alternate_lba >= total_sectors {
        return Err(GptError::Invalid(format!(
            "the backup GPT header should be at sector {} but the image has only {total_sectors} sectors \
             (truncated image?)",
            hd.alternate_lba
        )));
    }
    let mut backup = [0u8; SECTOR as usize];
    r.read_exact_at(&mut backup, hd.alternate_lba * SECTOR)
        .map_err(|source| GptError::Io {
            what: "the backup GPT header",
            source,
        })?;
    let bk = parse_header(&backup, "backup", total_sectors)?;
    if bk.my_lba != hd.alternate_lba
        || bk.alternate_lba != 1
        || bk.entries_crc != hd.entries_crc
        || bk.disk_guid != hd.disk_guid
        || bk.entry_count != hd.entry_count
        || bk.entry_size != hd.entry_size
    {
        return Err(GptError::Invalid(
            "the backup GPT header does not match the primary one: the image is corrupt".into(),
        ));
    }
    read_entries(r, &bk, "backup")?;

    let mut partitions: Vec<GptPartition> = Vec::new();
    for (i, e) in entries.chunks_exact(hd.entry_size as usize).enumerate() {
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let first_lba = u64_at(e, 32);
        let last_lba = u64_at(e, 40);
        if first_lba > last_lba || first_lba < hd.first_usable || last_lba > hd.last_usable {
            return Err(GptError::Invalid(format!(
                "partition {} spans sectors {first_lba}..={last_lba}, outside the usable area {}..={}",
                i + 1,
                hd.first_usable,
                hd.last_usable
            )));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let p = GptPartition {
            type_guid,
            unique_guid: guid_at(e, 16),
            first_lba,
            last_lba,
            attributes: u64_at(e, 48),
            name: String::from_utf16_lossy(&units),
        };
        if let Some(q) = partitions
            .iter()
            .find(|q| q.first_lba <= p.last_lba && p.first_lba <= q.last_lba)
        {
            return Err(GptError::Invalid(format!(
                "partitions {:?} and {:?} overlap",
                q.name, p.name
            )));
        }
        partitions.push(p);
    }
    Ok(ReadTable {
        disk_guid: hd.disk_guid,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_corruption() {
        let total = 200u64;
        let geo = Geometry {
            total_sectors: total,
        };
        let parts = vec![GptPartition {
            type_guid: Uuid::from_u128(1),
            unique_guid: Uuid::from_u128(2),
            first_lba: 40,
            last_lba: 47,
            attributes: ATTR_READ_ONLY,
            name: "root-x86-64".into(),
        }];
        let mut disk = vec![0u8; (total * SECTOR) as usize];
        for (off, bytes) in table_pieces(&geo, Uuid::from_u128(3), &parts) {
            disk[off as usize..off as usize + bytes.len()].copy_from_slice(&bytes);
        }
        let t = read_table(&disk[..], disk.len() as u64).unwrap();
        assert_eq!(t.partitions, parts);
        assert_eq!(t.disk_guid, Uuid::from_u128(3));

        let mut bad = disk.clone();
        bad[2 * 512 + 60] ^= 1; // a name byte in the primary entries
        let e = read_table(&bad[..], bad.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("primary GPT partition entries"), "{e}");

        let mut bad = disk.clone();
        bad[512 + 40] ^= 1; // first usable LBA in the primary header
        let e = read_table(&bad[..], bad.len() as u64)
            .unwrap_err()
            .to_string();
        assert!(e.contains("header CRC32"), "{e}");

        let truncated = &disk[..disk.len() - 512];
        assert!(read_table(truncated, truncated.len() as u64).is_err());
    }
}
