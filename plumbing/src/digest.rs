//! SHA-256 of files and streams, and the stream adapters every download and
//! image reader uses: [`HashingReader`] (digest what passes through) and
//! [`LimitedReader`] (refuse more than a cap, instead of silently
//! truncating). One digest loop for the whole workspace.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};
use sysupdate::Sha256Digest;

/// Size of the buffer the digest loops read with.
const BUF: usize = 1 << 20;

/// SHA-256 and length of everything `r` yields.
pub fn sha256_reader(r: impl Read) -> io::Result<(Sha256Digest, u64)> {
    let mut h = HashingReader::new(r);
    let n = io::copy(&mut h, &mut io::sink())?;
    Ok((h.finish().0, n))
}

/// SHA-256 and length of the file at `path`.
pub fn sha256_file(path: &Path) -> io::Result<(Sha256Digest, u64)> {
    let f = File::open(path)?;
    let mut h = HashingReader::new(f);
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        match h.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((h.finish().0, n))
}

/// Feeds a running SHA-256 with the first `len` bytes of `r` (used to
/// resume a download: the digest of the part already on disk).
pub fn hash_prefix(r: impl Read, len: u64, hasher: &mut Sha256) -> io::Result<()> {
    let mut take = r.take(len);
    let mut buf = vec![0u8; BUF];
    let mut seen = 0u64;
    loop {
        let k = match take.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..k]);
        seen += k as u64;
    }
    if seen != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("expected {len} bytes, found {seen}"),
        ));
    }
    Ok(())
}

/// A reader that hashes every byte it passes on.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader::with_hasher(inner, Sha256::new(), 0)
    }

    /// Continues a digest already fed with `count` bytes (resume).
    pub fn with_hasher(inner: R, hasher: Sha256, count: u64) -> Self {
        HashingReader {
            inner,
            hasher,
            count,
        }
    }

    /// Bytes hashed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest and byte count of everything read.
    pub fn finish(self) -> (Sha256Digest, u64) {
        (
            Sha256Digest::from_bytes(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A reader that fails with [`io::ErrorKind::FileTooLarge`] once more than
/// `limit` bytes would pass: a server or file that sends more than allowed
/// is an error, never a silently truncated result.
pub struct LimitedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> LimitedReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        LimitedReader {
            inner,
            left: limit,
            limit,
        }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One probe byte tells "exactly at the limit" from "over it".
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("more than the allowed {} bytes", self.limit),
                )),
            };
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_input() {
        let (d, n) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn limit_allows_exact_and_refuses_more() {
        let mut out = Vec::new();
        LimitedReader::new(&b"abcd"[..], 4)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"abcd");
        let err = LimitedReader::new(&b"abcde"[..], 4)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    }

    #[test]
    fn prefix_then_rest_equals_whole() {
        let data = b"hello world";
        let mut h = Sha256::new();
        hash_prefix(&data[..5], 5, &mut h).unwrap();
        let mut r = HashingReader::with_hasher(&data[5..], h, 5);
        io::copy(&mut r, &mut io::sink()).unwrap();
        let (d, n) = r.finish();
        assert_eq!(n, 11);
        assert_eq!(d, sha256_reader(&data[..]).unwrap().0);
    }
}
