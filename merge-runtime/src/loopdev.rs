//! Read-only loop devices set up in one step with `LOOP_CONFIGURE`
//! (backing file, offset, size limit, read-only, autoclear) — the only
//! place in this crate that issues loop ioctls.
//!
//! A [`LoopDevice`] is an RAII guard: dropping it (or [`LoopDevice::detach`])
//! issues `LOOP_CLR_FD`. While a filesystem on the device is still mounted
//! the kernel turns that into "detach on last close" (autoclear), so a
//! device handed over to a mount disappears when the mount goes away.
//! Direct I/O is not used: user-space verification and the filesystem read
//! through the same device and share its page cache.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfigRaw {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Which part of the backing file the device exposes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Byte offset in the backing file.
    pub offset: u64,
    /// Length in bytes; 0 means "to the end of the file".
    pub size_limit: u64,
}

/// An attached, read-only loop device.
#[derive(Debug)]
pub struct LoopDevice {
    dev: File,
    cleared: bool,
    number: u32,
    path: PathBuf,
    size: u64,
}

fn ioctl_ptr<T>(fd: &impl AsRawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<libc::c_int> {
    // SAFETY: `fd` is an open descriptor owned by the caller for the duration
    // of the call, and `arg` points to a live, correctly laid out `#[repr(C)]`
    // value of the type the request expects (checked at each call site).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ioctl_noarg(fd: &impl AsRawFd, req: libc::c_ulong) -> io::Result<libc::c_int> {
    // SAFETY: requests used here (`LOOP_CTL_GET_FREE`, `LOOP_CLR_FD`) take no
    // pointer argument; `fd` is open for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Size in bytes of a block device.
pub fn block_size_bytes(dev: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    ioctl_ptr(dev, BLKGETSIZE64, &mut size as *mut u64)?;
    Ok(size)
}

impl LoopDevice {
    /// Attaches `backing` (opened read-only by the caller) read-only with
    /// autoclear. `label` is shown by `losetup` (truncated to 63 bytes).
    pub fn attach(backing: &File, window: Window, label: &Path) -> io::Result<LoopDevice> {
        let control = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/loop-control: {e}")))?;
        let mut name = [0u8; LO_NAME_SIZE];
        let label = label.as_os_str().as_encoded_bytes();
        let n = label.len().min(LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&label[..n]);
        let fd = u32::try_from(backing.as_raw_fd())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad backing fd"))?;
        let mut last_err = None;
        // Another process may grab the free device between GET_FREE and
        // CONFIGURE (EBUSY); try again a bounded number of times.
        for _ in 0..64 {
            let number = ioctl_noarg(&control, LOOP_CTL_GET_FREE)? as u32;
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let dev = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    last_err = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
            };
            let mut cfg = LoopConfigRaw {
                fd,
                block_size: 0,
                info: LoopInfo64 {
                    lo_device: 0,
                    lo_inode: 0,
                    lo_rdevice: 0,
                    lo_offset: window.offset,
                    lo_sizelimit: window.size_limit,
                    lo_number: 0,
                    lo_encrypt_type: 0,
                    lo_encrypt_key_size: 0,
                    lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                    lo_file_name: name,
                    lo_crypt_name: [0; LO_NAME_SIZE],
                    lo_encrypt_key: [0; 32],
                    lo_init: [0; 2],
                },
                reserved: [0; 8],
            };
            match ioctl_ptr(&dev, LOOP_CONFIGURE, &mut cfg as *mut LoopConfigRaw) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("LOOP_CONFIGURE on {}: {e}", path.display()),
                    ))
                }
            }
            let mut me = LoopDevice {
                dev,
                cleared: false,
                number,
                path,
                size: 0,
            };
            me.size = block_size_bytes(me.file())?;
            return Ok(me);
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free loop device")))
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// Size of the device in bytes (the window, clipped to the file).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn file(&self) -> &File {
        &self.dev
    }

    /// Reads exactly `buf.len()` bytes at `offset` from the device.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file().read_exact_at(buf, offset)
    }

    /// Detaches now, reporting errors. (A mounted device is detached by the
    /// kernel when its last user goes away.)
    pub fn detach(mut self) -> io::Result<()> {
        self.clear()
    }

    fn clear(&mut self) -> io::Result<()> {
        if self.cleared {
            return Ok(());
        }
        self.cleared = true;
        match ioctl_noarg(&self.dev, LOOP_CLR_FD) {
            Ok(_) => Ok(()),
            // Already gone (autoclear raced us): fine.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = self.clear();
    }
}
