//! Kernel dm-verity: owns the device-mapper ioctls (`/dev/mapper/control`),
//! the `verity` target table line (the one `veritysetup open` loads), the
//! root-hash signature handed to the kernel as a `user` key for
//! `root_hash_sig_key_desc`, offering the signer's certificate to the
//! kernel's `.secondary_trusted_keys` keyring, and the [`KernelDmVerity`]
//! backend that plugs all of it into [`crate::verify::VerityBackend`].
//!
//! Life cycle of a device (as systemd's dissect code does it): create,
//! load the table read-only, resume; open it and mark it for *deferred*
//! removal at once, so that the kernel removes it by itself when its last
//! user (the mounted filesystem) goes away. The data and hash loop devices
//! are held by the table and freed by their autoclear flag after that.
//!
//! Signatures: the root-hash signature is always checked in user space
//! first (by [`crate::verify::decide`], against `verity.d`). The kernel is
//! then asked to check it too; when it refuses — on Debian's 6.1 kernel a
//! certificate is accepted into `.secondary_trusted_keys` only if a
//! built-in key vouches for it, so a self-made signing certificate is never
//! trusted there — the device is set up without the signature and the mode
//! says so: `kernel-verity+userspace-signature` instead of
//! `kernel-verity+kernel-signature`. Either way the kernel checks every
//! block read against the root hash; nothing is hashed in user space
//! before mounting.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use signing::verity::{ByteRange, RootHash, VerityParams, SUPERBLOCK_SIZE};

use crate::loopdev::{LoopDevice, Window};
use crate::verify::{Activated, VerifyError, VerityBackend, VerityMaterial, VerityMode};

/// The device-mapper control node.
pub const CONTROL: &str = "/dev/mapper/control";

const DM_IOCTL: u32 = 0xfd;
const DM_IOCTL_SIZE: usize = 312;
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const TARGET_SPEC_SIZE: usize = 40;
const DM_MAX_TYPE_NAME: usize = 16;
/// Room for replies (target lists, table status).
const BUFFER_SIZE: usize = 16 * 1024;

const DM_VERSION_CMD: u32 = 0;
const DM_DEV_CREATE_CMD: u32 = 3;
const DM_DEV_REMOVE_CMD: u32 = 4;
const DM_DEV_SUSPEND_CMD: u32 = 6;
const DM_TABLE_LOAD_CMD: u32 = 9;
const DM_TABLE_STATUS_CMD: u32 = 12;
const DM_LIST_VERSIONS_CMD: u32 = 13;

const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
const DM_DEFERRED_REMOVE: u32 = 1 << 17;

/// `_IOWR(DM_IOCTL, cmd, struct dm_ioctl)`.
const fn dm_request(cmd: u32) -> u32 {
    (3 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (DM_IOCTL << 8) | cmd
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DmError {
    #[error("device-mapper is not available: {0}")]
    Unavailable(String),
    #[error("device-mapper {op} of {name:?}: {source}")]
    Ioctl {
        op: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("kernel keyring: {0}")]
    Keyring(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// A block device number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevId {
    pub major: u32,
    pub minor: u32,
}

impl DevId {
    /// The device number of block device node `path`.
    pub fn of_block_device(path: &Path) -> Result<DevId, DmError> {
        let md = std::fs::metadata(path).map_err(|source| DmError::Io {
            context: format!("stat {}", path.display()),
            source,
        })?;
        if !md.file_type().is_block_device() {
            return Err(DmError::Invalid(format!(
                "{} is not a block device",
                path.display()
            )));
        }
        Ok(DevId::from_raw(md.rdev()))
    }

    fn from_raw(dev: u64) -> DevId {
        DevId {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

impl fmt::Display for DevId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// The parameters of one `verity` target, as `veritysetup open` loads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTable {
    pub data_dev: DevId,
    pub hash_dev: DevId,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    /// Where the tree starts on the hash device, in hash blocks (1 when the
    /// superblock occupies block 0).
    pub hash_start_block: u64,
    pub root_hash: RootHash,
    pub salt: Vec<u8>,
}

impl VerityTable {
    /// Length of the target in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size / 512)
    }

    /// The target parameters: `1 DATA HASH DBS HBS BLOCKS START sha256 ROOT
    /// SALT`, plus `2 root_hash_sig_key_desc DESC` with a signature key.
    pub fn params(&self, sig_key_desc: Option<&str>) -> String {
        let salt = if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        };
        let mut s = format!(
            "1 {} {} {} {} {} {} sha256 {} {}",
            self.data_dev,
            self.hash_dev,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_start_block,
            self.root_hash.to_hex(),
            salt
        );
        if let Some(desc) = sig_key_desc {
            s.push_str(" 2 root_hash_sig_key_desc ");
            s.push_str(desc);
        }
        s
    }
}

/// One target line of a loaded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableLine {
    pub start: u64,
    pub length: u64,
    pub target: String,
    pub params: String,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Offsets in `struct dm_ioctl`.
mod hdr {
    pub const VERSION: usize = 0;
    pub const DATA_SIZE: usize = 12;
    pub const DATA_START: usize = 16;
    pub const TARGET_COUNT: usize = 20;
    pub const FLAGS: usize = 28;
    pub const DEV: usize = 40;
    pub const NAME: usize = 48;
    pub const UUID: usize = 176;
}

/// A `struct dm_ioctl` with its payload.
struct DmBuf {
    buf: Vec<u8>,
}

impl DmBuf {
    fn new(name: &str, flags: u32) -> Result<DmBuf, DmError> {
        if name.len() >= DM_NAME_LEN || name.contains('/') || name.contains('\0') {
            return Err(DmError::Invalid(format!(
                "device-mapper name {name:?} is longer than {} bytes or contains '/' or NUL",
                DM_NAME_LEN - 1
            )));
        }
        let mut buf = vec![0u8; BUFFER_SIZE];
        put_u32(&mut buf, hdr::VERSION, 4);
        put_u32(&mut buf, hdr::VERSION + 4, 0);
        put_u32(&mut buf, hdr::VERSION + 8, 0);
        put_u32(&mut buf, hdr::DATA_SIZE, BUFFER_SIZE as u32);
        put_u32(&mut buf, hdr::DATA_START, DM_IOCTL_SIZE as u32);
        put_u32(&mut buf, hdr::FLAGS, flags);
        buf[hdr::NAME..hdr::NAME + name.len()].copy_from_slice(name.as_bytes());
        Ok(DmBuf { buf })
    }

    fn set_uuid(&mut self, uuid: &str) -> Result<(), DmError> {
        if uuid.len() >= DM_UUID_LEN || uuid.contains('\0') {
            return Err(DmError::Invalid(format!(
                "device-mapper uuid {uuid:?} is too long"
            )));
        }
        self.buf[hdr::UUID..hdr::UUID + uuid.len()].copy_from_slice(uuid.as_bytes());
        Ok(())
    }

    /// Appends one target spec with its parameter string.
    fn set_target(&mut self, sectors: u64, target: &str, params: &str) -> Result<(), DmError> {
        if target.len() >= DM_MAX_TYPE_NAME {
            return Err(DmError::Invalid(format!(
                "target type {target:?} is too long"
            )));
        }
        let at = DM_IOCTL_SIZE;
        let plen = params.len() + 1;
        let total = (TARGET_SPEC_SIZE + plen).div_ceil(8) * 8;
        if at + total > self.buf.len() || params.contains('\0') {
            return Err(DmError::Invalid("device-mapper table line too long".into()));
        }
        put_u64(&mut self.buf, at, 0);
        put_u64(&mut self.buf, at + 8, sectors);
        put_u32(&mut self.buf, at + 16, 0);
        put_u32(&mut self.buf, at + 20, total as u32);
        self.buf[at + 24..at + 24 + target.len()].copy_from_slice(target.as_bytes());
        self.buf[at + TARGET_SPEC_SIZE..at + TARGET_SPEC_SIZE + params.len()]
            .copy_from_slice(params.as_bytes());
        put_u32(&mut self.buf, hdr::TARGET_COUNT, 1);
        Ok(())
    }

    fn flags(&self) -> u32 {
        get_u32(&self.buf, hdr::FLAGS)
    }

    fn dev(&self) -> DevId {
        DevId::from_raw(get_u64(&self.buf, hdr::DEV))
    }

    /// The reply payload (`data_start .. data_size`).
    fn payload(&self) -> &[u8] {
        let start = (get_u32(&self.buf, hdr::DATA_START) as usize).min(self.buf.len());
        let end = (get_u32(&self.buf, hdr::DATA_SIZE) as usize).clamp(start, self.buf.len());
        &self.buf[start..end]
    }
}

/// An open `/dev/mapper/control`.
pub struct DmControl {
    file: File,
}

impl DmControl {
    /// Opens the control node and checks the ioctl interface version.
    pub fn open() -> Result<DmControl, DmError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL)
            .map_err(|e| DmError::Unavailable(format!("opening {CONTROL}: {e}")))?;
        let me = DmControl { file };
        let mut b = DmBuf::new("", 0)?;
        me.ioctl(DM_VERSION_CMD, "version", &mut b)
            .map_err(|e| DmError::Unavailable(e.to_string()))?;
        let major = get_u32(&b.buf, hdr::VERSION);
        if major != 4 {
            return Err(DmError::Unavailable(format!(
                "the kernel speaks device-mapper ioctl version {major}, this tool version 4"
            )));
        }
        Ok(me)
    }

    fn ioctl(&self, cmd: u32, op: &'static str, b: &mut DmBuf) -> Result<(), DmError> {
        let name = c_str(&b.buf[hdr::NAME..hdr::NAME + DM_NAME_LEN]);
        // SAFETY: `self.file` is an open /dev/mapper/control; the request is a
        // device-mapper `_IOWR` whose argument is a `struct dm_ioctl` followed
        // by its payload. `b.buf` is BUFFER_SIZE bytes long, and the header's
        // data_size says exactly that, so the kernel reads and writes only
        // within the buffer, which lives across the call.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                dm_request(cmd) as _,
                b.buf.as_mut_ptr(),
            )
        };
        if r < 0 {
            return Err(DmError::Ioctl {
                op,
                name,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The target types the kernel has (`dmsetup targets`).
    pub fn target_types(&self) -> Result<Vec<(String, [u32; 3])>, DmError> {
        let mut b = DmBuf::new("", 0)?;
        self.ioctl(DM_LIST_VERSIONS_CMD, "list-versions", &mut b)?;
        if b.flags() & DM_BUFFER_FULL_FLAG != 0 {
            return Err(DmError::Invalid(
                "target list does not fit the buffer".into(),
            ));
        }
        // struct dm_target_versions { u32 next; u32 version[3]; char name[]; }
        let p = b.payload().to_vec();
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 16 <= p.len() {
            let next = get_u32(&p, at) as usize;
            let v = [
                get_u32(&p, at + 4),
                get_u32(&p, at + 8),
                get_u32(&p, at + 12),
            ];
            out.push((c_str(&p[at + 16..]), v));
            if next == 0 {
                break;
            }
            at += next;
        }
        Ok(out)
    }

    /// Creates an empty device; returns its device number.
    pub fn create(&self, name: &str, uuid: &str) -> Result<DevId, DmError> {
        let mut b = DmBuf::new(name, 0)?;
        b.set_uuid(uuid)?;
        self.ioctl(DM_DEV_CREATE_CMD, "create", &mut b)?;
        Ok(b.dev())
    }

    /// Loads a one-target read-only table into the inactive slot.
    pub fn load(
        &self,
        name: &str,
        sectors: u64,
        target: &str,
        params: &str,
    ) -> Result<(), DmError> {
        let mut b = DmBuf::new(name, DM_READONLY_FLAG)?;
        b.set_target(sectors, target, params)?;
        self.ioctl(DM_TABLE_LOAD_CMD, "table load", &mut b)
    }

    /// Makes the loaded table live (resume).
    pub fn resume(&self, name: &str) -> Result<(), DmError> {
        let mut b = DmBuf::new(name, 0)?;
        self.ioctl(DM_DEV_SUSPEND_CMD, "resume", &mut b)
    }

    /// Removes a device; with `deferred`, an open device is removed by the
    /// kernel when it is closed for the last time.
    pub fn remove(&self, name: &str, deferred: bool) -> Result<(), DmError> {
        let mut b = DmBuf::new(name, if deferred { DM_DEFERRED_REMOVE } else { 0 })?;
        self.ioctl(DM_DEV_REMOVE_CMD, "remove", &mut b)
    }

    /// The live table (`dmsetup table NAME`).
    pub fn table(&self, name: &str) -> Result<Vec<TableLine>, DmError> {
        let mut b = DmBuf::new(name, DM_STATUS_TABLE_FLAG)?;
        self.ioctl(DM_TABLE_STATUS_CMD, "table status", &mut b)?;
        let count = get_u32(&b.buf, hdr::TARGET_COUNT) as usize;
        let p = b.payload().to_vec();
        let mut out = Vec::new();
        let mut at = 0usize;
        for _ in 0..count {
            if at + TARGET_SPEC_SIZE > p.len() {
                break;
            }
            out.push(TableLine {
                start: get_u64(&p, at),
                length: get_u64(&p, at + 8),
                target: c_str(&p[at + 24..at + 24 + DM_MAX_TYPE_NAME]),
                params: c_str(&p[at + TARGET_SPEC_SIZE..]),
            });
            // For status replies `next` is the offset from the payload start.
            at = get_u32(&p, at + 20) as usize;
        }
        Ok(out)
    }
}

/// Loads kernel module `name` with `modprobe`, if the running kernel has a
/// module directory at all (so hosts without modules pay no process
/// start). Errors are ignored: the caller checks for what it needed
/// afterwards.
fn try_modprobe(name: &str) {
    let release = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    if !Path::new("/lib/modules")
        .join(&release)
        .join("modules.dep")
        .is_file()
    {
        return;
    }
    let _ = std::process::Command::new("modprobe")
        .arg("-q")
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Checks that the kernel can set up dm-verity devices: the control node
/// answers and the `verity` target is registered (loading `dm-mod` and
/// `dm-verity` with `modprobe` when they are missing). The error says what
/// is missing.
pub fn available() -> Result<DmControl, DmError> {
    let misc_has_dm = || {
        std::fs::read_to_string("/proc/misc")
            .map(|m| m.lines().any(|l| l.trim_end().ends_with(" device-mapper")))
            .unwrap_or(false)
    };
    if !Path::new(CONTROL).exists() && !misc_has_dm() {
        try_modprobe("dm-mod");
    }
    if !Path::new(CONTROL).exists() {
        return Err(DmError::Unavailable(if misc_has_dm() {
            format!("the kernel has device-mapper but {CONTROL} is missing (is /dev a devtmpfs?)")
        } else {
            "the kernel has no device-mapper (module dm-mod)".into()
        }));
    }
    let ctl = DmControl::open()?;
    let has_verity = |c: &DmControl| -> Result<bool, DmError> {
        Ok(c.target_types()?.iter().any(|(n, _)| n == "verity"))
    };
    if !has_verity(&ctl)? {
        try_modprobe("dm-verity");
        if !has_verity(&ctl)? {
            return Err(DmError::Unavailable(
                "the kernel has device-mapper but no verity target (module dm-verity)".into(),
            ));
        }
    }
    Ok(ctl)
}

// ---------------------------------------------------------------------------
// Keyrings

const KEY_SPEC_THREAD_KEYRING: i32 = -1;
const KEYCTL_INVALIDATE: libc::c_long = 21;

/// A key in the kernel's key store; invalidated when dropped.
struct Key(i32);

fn add_key(
    key_type: &str,
    description: Option<&str>,
    payload: &[u8],
    keyring: i32,
) -> io::Result<i32> {
    let t = CString::new(key_type).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let d = description
        .map(CString::new)
        .transpose()
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let dptr = d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr());
    // SAFETY: add_key(2) with NUL-terminated type and description strings
    // (or NULL description), a payload pointer valid for `payload.len()`
    // bytes, and a keyring serial; all borrowed for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            t.as_ptr(),
            dptr,
            payload.as_ptr(),
            payload.len(),
            keyring as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        i32::try_from(r).map_err(|_| io::Error::other("key serial out of range"))
    }
}

impl Key {
    /// Adds a `user` key to this thread's keyring (where dm-verity's
    /// `request_key` from this thread's ioctl finds it).
    fn user_in_thread_keyring(description: &str, payload: &[u8]) -> Result<Key, DmError> {
        add_key("user", Some(description), payload, KEY_SPEC_THREAD_KEYRING)
            .map(Key)
            .map_err(|e| {
                DmError::Keyring(format!(
                    "adding user key {description:?} to the thread keyring: {e}"
                ))
            })
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // SAFETY: keyctl(KEYCTL_INVALIDATE, serial) takes only integers.
        unsafe {
            libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, self.0 as libc::c_long);
        }
    }
}

/// The serial number of the kernel's `.secondary_trusted_keys` keyring,
/// from `/proc/keys`.
pub fn secondary_keyring() -> Result<i32, DmError> {
    let keys = std::fs::read_to_string("/proc/keys").map_err(|e| {
        DmError::Keyring(format!(
            "reading /proc/keys: {e} (kernel without CONFIG_KEYS_PROC?)"
        ))
    })?;
    for l in keys.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 9
            && f[7] == "keyring"
            && f[8].trim_end_matches(':') == ".secondary_trusted_keys"
        {
            return u32::from_str_radix(f[0], 16)
                .map(|v| v as i32)
                .map_err(|_| DmError::Keyring(format!("bad /proc/keys line {l:?}")));
        }
    }
    Err(DmError::Keyring(
        "the kernel has no .secondary_trusted_keys keyring (CONFIG_SECONDARY_TRUSTED_KEYRING)"
            .into(),
    ))
}

/// Offers a DER X.509 certificate to the kernel's
/// `.secondary_trusted_keys` keyring. The kernel accepts it only if a key
/// already trusted there (or a built-in key) signed it; its refusal is
/// returned as an error naming the reason.
pub fn offer_certificate(der: &[u8]) -> Result<i32, DmError> {
    let ring = secondary_keyring()?;
    add_key("asymmetric", None, der, ring).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENOKEY) | Some(libc::EKEYREJECTED) => {
                " (the kernel accepts only certificates signed by a key it already trusts, e.g. a built-in key)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => " (not allowed to add keys there)",
            _ => "",
        };
        DmError::Keyring(format!("the kernel refused the certificate for .secondary_trusted_keys: {e}{why}"))
    })
}

/// The certificate (DER) in `signature` that made it: the embedded one the
/// signature verifies with. `None` when there is none.
pub fn signer_certificate(signature: &[u8], root_hash: &RootHash) -> Option<Vec<u8>> {
    use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    let p7 = Pkcs7::from_der(signature).ok()?;
    let certs = p7.signed()?.certificates()?;
    let store = X509StoreBuilder::new().ok()?.build();
    for c in certs {
        let mut st = Stack::new().ok()?;
        st.push(c.to_owned()).ok()?;
        let ok = p7
            .verify(
                &st,
                &store,
                Some(root_hash.to_hex().as_bytes()),
                None,
                Pkcs7Flags::NOINTERN | Pkcs7Flags::NOVERIFY,
            )
            .is_ok();
        if ok {
            return c.to_der().ok();
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Devices

/// How the kernel checks a device's root hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// No signature was given.
    None,
    /// The kernel verified the signature against its trusted keyrings.
    Kernel,
    /// The kernel could not (its keyring does not trust the signer); the
    /// device was set up with the root hash alone, which the caller had
    /// verified in user space.
    UserSpace,
}

/// An active dm-verity device: removed when dropped (deferred: the kernel
/// removes it once nothing has it open any more).
#[derive(Debug)]
pub struct DmDevice {
    name: String,
    dev: DevId,
    path: PathBuf,
    signature: SignatureCheck,
    /// Why the kernel did not check the signature, when it did not.
    kernel_refusal: Option<String>,
    holder: Option<File>,
    removed: bool,
}

impl DmDevice {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dev(&self) -> DevId {
        self.dev
    }

    /// `/dev/dm-N` (created by devtmpfs; udev's `/dev/mapper/NAME` may not
    /// exist where there is no udev).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn signature(&self) -> SignatureCheck {
        self.signature
    }

    pub fn kernel_refusal(&self) -> Option<&str> {
        self.kernel_refusal.as_deref()
    }

    /// Keeps the device open and marks it for deferred removal: it stays
    /// while this guard or anything else (a mount) has it open, and the
    /// kernel removes it after the last close.
    pub fn hold_and_defer_removal(&mut self) -> Result<(), DmError> {
        if self.holder.is_none() {
            let f = File::open(&self.path).map_err(|source| DmError::Io {
                context: format!("opening {}", self.path.display()),
                source,
            })?;
            self.holder = Some(f);
        }
        DmControl::open()?.remove(&self.name, true)?;
        self.removed = true;
        Ok(())
    }

    /// Removes the device now (fails with EBUSY while it is mounted).
    pub fn remove(mut self) -> Result<(), DmError> {
        self.holder = None;
        self.removed = true;
        DmControl::open()?.remove(&self.name, false)
    }
}

impl Drop for DmDevice {
    fn drop(&mut self) {
        self.holder = None;
        if !self.removed {
            if let Ok(c) = DmControl::open() {
                let _ = c.remove(&self.name, true);
            }
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A device-mapper name no other activation uses.
pub fn unique_name(root_hash: &RootHash) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hex = root_hash.to_hex();
    format!("sysext-{}-{}-{}", &hex[..16], std::process::id(), n)
}

fn create_loaded(
    ctl: &DmControl,
    name: &str,
    table: &VerityTable,
    key_desc: Option<&str>,
) -> Result<DevId, DmError> {
    let uuid = format!("SYSEXT-VERITY-{name}");
    let dev = ctl.create(name, &uuid)?;
    let r = ctl
        .load(name, table.sectors(), "verity", &table.params(key_desc))
        .and_then(|()| ctl.resume(name));
    if let Err(e) = r {
        let _ = ctl.remove(name, false);
        return Err(e);
    }
    Ok(dev)
}

/// Creates a read-only `verity` device `name` over `table`. With a
/// signature (DER PKCS#7 over the hex root hash), the kernel is asked to
/// verify it (`root_hash_sig_key_desc`); if it refuses and
/// `userspace_verified` is true, the device is created without it
/// ([`SignatureCheck::UserSpace`]); if `userspace_verified` is false the
/// refusal is the error.
pub fn activate(
    name: &str,
    table: &VerityTable,
    signature: Option<&[u8]>,
    userspace_verified: bool,
) -> Result<DmDevice, DmError> {
    let ctl = DmControl::open()?;
    let mut kernel_refusal = None;
    let mut check = SignatureCheck::None;
    let mut dev = None;
    if let Some(sig) = signature {
        let desc = format!("sysext-forge:{name}");
        let key = Key::user_in_thread_keyring(&desc, sig)?;
        let r = create_loaded(&ctl, name, table, Some(&desc));
        drop(key);
        match r {
            Ok(d) => {
                dev = Some(d);
                check = SignatureCheck::Kernel;
            }
            Err(e) if userspace_verified => {
                kernel_refusal = Some(e.to_string());
                check = SignatureCheck::UserSpace;
            }
            Err(e) => return Err(e),
        }
    }
    let dev = match dev {
        Some(d) => d,
        None => create_loaded(&ctl, name, table, None)?,
    };
    Ok(DmDevice {
        name: name.to_string(),
        dev,
        path: PathBuf::from(format!("/dev/dm-{}", dev.minor)),
        signature: check,
        kernel_refusal,
        holder: None,
        removed: false,
    })
}

// ---------------------------------------------------------------------------
// The backend

/// The verity backend that mounts through kernel dm-verity devices. The
/// devices it makes are held open (and marked for deferred removal) until
/// the backend is dropped, which the runtime does after the filesystems on
/// them are mounted; a device whose mount failed goes away then.
#[derive(Debug)]
pub struct KernelDmVerity {
    devices: Mutex<Vec<DmDevice>>,
    /// Offer the certificate that signed an image (already trusted through
    /// `verity.d`) to `.secondary_trusted_keys` before activation.
    pub offer_certificates: bool,
}

impl Default for KernelDmVerity {
    fn default() -> Self {
        KernelDmVerity {
            devices: Mutex::new(Vec::new()),
            offer_certificates: true,
        }
    }
}

/// What [`KernelDmVerity::activate_material`] set up.
#[derive(Debug)]
pub struct KernelActivation {
    pub device: DmDevice,
    pub mode: VerityMode,
    /// What happened when the signer's certificate was offered to the
    /// kernel (`Ok` when it was added or already there).
    pub certificate_offer: Option<Result<(), String>>,
}

impl KernelDmVerity {
    /// Sets up the dm-verity device for `material` over the data loop device
    /// `data`. Precondition: a signature in `material` has been verified in
    /// user space ([`crate::verify::decide`]).
    pub fn activate_material(
        &self,
        data: &LoopDevice,
        material: &VerityMaterial,
    ) -> Result<KernelActivation, DmError> {
        // Only the superblock is read; the kernel checks the data.
        let hash_file = File::open(&material.hash.file).map_err(|source| DmError::Io {
            context: format!("opening {}", material.hash.file.display()),
            source,
        })?;
        let range: ByteRange = material.hash.range;
        let (params, data_blocks): (VerityParams, u64) =
            signing::verity::read_superblock(&hash_file, range.offset)
                .map_err(|e| DmError::Invalid(format!("{}: {e}", material.hash.file.display())))?;
        let dbs = params.data_block_size();
        let hbs = params.hash_block_size();
        if dbs < 512 || hbs < SUPERBLOCK_SIZE as u32 {
            return Err(DmError::Invalid(
                "verity block sizes below 512 bytes".into(),
            ));
        }
        let need = data_blocks
            .checked_mul(u64::from(dbs))
            .ok_or_else(|| DmError::Invalid("verity superblock: data size overflows".into()))?;
        if need > data.size() {
            return Err(DmError::Invalid(format!(
                "the verity superblock covers {data_blocks} blocks of {dbs} bytes ({need} bytes), but the data is only {} bytes",
                data.size()
            )));
        }
        let hash_loop = LoopDevice::attach(
            &hash_file,
            Window {
                offset: range.offset,
                size_limit: range.len,
            },
            &material.hash.file,
        )
        .map_err(|source| DmError::Io {
            context: format!(
                "setting up a loop device for the hash tree in {}",
                material.hash.file.display()
            ),
            source,
        })?;
        let table = VerityTable {
            data_dev: DevId::of_block_device(data.path())?,
            hash_dev: DevId::of_block_device(hash_loop.path())?,
            data_block_size: dbs,
            hash_block_size: hbs,
            data_blocks,
            hash_start_block: 1,
            root_hash: material.root_hash,
            salt: params.salt().to_vec(),
        };
        let mut certificate_offer = None;
        if let (true, Some(sig)) = (self.offer_certificates, &material.signature) {
            certificate_offer = Some(match signer_certificate(sig, &material.root_hash) {
                Some(der) => match offer_certificate(&der) {
                    Ok(_) => Ok(()),
                    // Already in the keyring (the kernel says EEXIST only for
                    // some key types; updating an identical key succeeds).
                    Err(e) => Err(e.to_string()),
                },
                None => Err("the signature carries no certificate that made it".into()),
            });
        }
        let name = unique_name(&material.root_hash);
        let mut device = activate(&name, &table, material.signature.as_deref(), true)?;
        // The table holds the hash loop device now; dropping our guard only
        // arms its autoclear.
        drop(hash_loop);
        device.hold_and_defer_removal()?;
        let mode = match device.signature() {
            SignatureCheck::None => VerityMode::Kernel,
            SignatureCheck::Kernel => VerityMode::KernelSignature,
            SignatureCheck::UserSpace => VerityMode::KernelUserSpaceSignature,
        };
        Ok(KernelActivation {
            device,
            mode,
            certificate_offer,
        })
    }
}

impl VerityBackend for KernelDmVerity {
    fn mode(&self) -> VerityMode {
        VerityMode::Kernel
    }

    fn activate(
        &self,
        data: &LoopDevice,
        material: &VerityMaterial,
    ) -> Result<Activated, VerifyError> {
        let act = self
            .activate_material(data, material)
            .map_err(|e| VerifyError::Kernel(e.to_string()))?;
        let out = Activated {
            device: act.device.path().to_path_buf(),
            mode: act.mode,
        };
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(act.device);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        // DM_VERSION and DM_TABLE_LOAD from <linux/dm-ioctl.h> on x86-64.
        assert_eq!(dm_request(DM_VERSION_CMD), 0xc138_fd00);
        assert_eq!(dm_request(DM_TABLE_LOAD_CMD), 0xc138_fd09);
        assert_eq!(dm_request(DM_DEV_REMOVE_CMD), 0xc138_fd04);
    }

    #[test]
    fn table_line_like_veritysetup() {
        let root: RootHash = "a".repeat(64).parse().unwrap();
        let t = VerityTable {
            data_dev: DevId { major: 7, minor: 0 },
            hash_dev: DevId { major: 7, minor: 1 },
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 300,
            hash_start_block: 1,
            root_hash: root,
            salt: vec![0xab, 0x01],
        };
        assert_eq!(t.sectors(), 2400);
        assert_eq!(
            t.params(None),
            format!("1 7:0 7:1 4096 4096 300 1 sha256 {} ab01", "a".repeat(64))
        );
        assert!(t
            .params(Some("sysext-forge:x"))
            .ends_with(" ab01 2 root_hash_sig_key_desc sysext-forge:x"));
        let t2 = VerityTable { salt: vec![], ..t };
        assert!(t2.params(None).ends_with(" -"));
    }

    #[test]
    fn target_spec_layout() {
        let mut b = DmBuf::new("dev", DM_READONLY_FLAG).unwrap();
        b.set_target(2400, "verity", "1 7:0").unwrap();
        assert_eq!(get_u32(&b.buf, hdr::TARGET_COUNT), 1);
        assert_eq!(get_u64(&b.buf, DM_IOCTL_SIZE + 8), 2400);
        assert_eq!(&b.buf[DM_IOCTL_SIZE + 24..DM_IOCTL_SIZE + 30], b"verity");
        assert_eq!(&b.buf[DM_IOCTL_SIZE + 40..DM_IOCTL_SIZE + 46], b"1 7:0\0");
        assert_eq!(get_u32(&b.buf, DM_IOCTL_SIZE + 20) % 8, 0);
        assert!(DmBuf::new(&"x".repeat(200), 0).is_err());
        assert!(DmBuf::new("a/b", 0).is_err());
    }

    #[test]
    fn no_device_mapper_here_is_a_clear_error() {
        // On hosts without device-mapper, `available` must say so (and not
        // panic); where it exists it must find the verity target or say why.
        match available() {
            Ok(_) => {}
            Err(e) => assert!(e.to_string().contains("device-mapper"), "{e}"),
        }
    }
}
