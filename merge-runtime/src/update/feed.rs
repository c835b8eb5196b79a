//! The feed client: fetching `SHA256SUMS` and its detached OpenPGP
//! signature and checking them (keyring, `BEST-BEFORE`), and downloading
//! an image into a hidden partial file, resuming with `Range` when a
//! previous run was interrupted, hashing while writing.
//!
//! Sources are `http://`, `https://` (TLS through the system OpenSSL) or
//! `file://` URLs. Nothing downloaded is trusted until its sha256 matches
//! the verified manifest.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sysupdate::{Date, Manifest, Sha256Digest};

use crate::root::Root;

/// Where the keyring that verifies `SHA256SUMS.gpg` is looked for (inside
/// `--root`), first existing wins — systemd-sysupdate's list.
pub const KEYRINGS: [&str; 4] = [
    "/etc/systemd/import-pubring.pgp",
    "/etc/systemd/import-pubring.gpg",
    "/usr/lib/systemd/import-pubring.pgp",
    "/usr/lib/systemd/import-pubring.gpg",
];

/// Largest manifest accepted.
pub const MAX_MANIFEST: u64 = 16 << 20;
/// Largest signature accepted.
pub const MAX_SIGNATURE: u64 = 1 << 20;
/// Largest image download accepted by default (`--max-download-size`).
pub const DEFAULT_MAX_DOWNLOAD: u64 = 16 << 30;

/// Anything that goes wrong talking to the feed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("{url}: {msg}")]
    Http { url: String, msg: String },
    #[error("{url}: the server answered {status}")]
    Status { url: String, status: u16 },
    #[error(
        "{url}: not found on the server (HTTP 404); the feed may have changed — try again later"
    )]
    NotFound { url: String },
    #[error("{url}: larger than {limit} bytes; this is not a manifest or signature")]
    TooLarge { url: String, limit: u64 },
    #[error("{0}: not a supported URL (use http://, https:// or file://)")]
    BadUrl(String),
    #[error("no OpenPGP keyring to verify {url} with: install the feed's public key as {root}/etc/systemd/import-pubring.gpg (looked for {looked}); or set Verify=no in the transfer file (not recommended)")]
    NoKeyring {
        url: String,
        root: String,
        looked: String,
    },
    #[error("{url}: the manifest signature is missing ({sig_url} and .asc not found); refusing an unsigned manifest (Verify=no would accept it, not recommended)")]
    NoSignature { url: String, sig_url: String },
    #[error(
        "{url}: the signature does not verify against {keyring}: {detail}; refusing the manifest"
    )]
    BadSignature {
        url: String,
        keyring: PathBuf,
        detail: String,
    },
    #[error("{url}: {source}")]
    Manifest {
        url: String,
        source: sysupdate::manifest::ManifestError,
    },
    #[error("{url}: the manifest is stale: it carries BEST-BEFORE-{best_before} and today is {today} (UTC); the feed must be re-signed — refusing it (this protects against replayed old manifests)")]
    Expired {
        url: String,
        best_before: Date,
        today: Date,
    },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{url}: {detail}, more than the limit of {limit} bytes; the partial file was deleted (raise --max-download-size if the image really is this large)")]
    DownloadTooLarge {
        url: String,
        limit: u64,
        detail: String,
    },
    #[error("{url}: sha256 mismatch: the download is {got}, the signed manifest says {expected}; the file was deleted")]
    Sha256Mismatch {
        url: String,
        expected: Sha256Digest,
        got: Sha256Digest,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> FeedError + '_ {
    move |source| FeedError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The URL of `name` in the feed directory `base`.
pub fn file_url(base: &str, name: &str) -> String {
    let mut s = base.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~+,@=".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A response body.
struct Body {
    reader: Box<dyn Read>,
    /// Offset in the file of the first byte.
    start: u64,
    /// Size of the whole file, when the server says.
    total: Option<u64>,
}

enum Opened {
    Body(Body),
    NotFound,
    /// The requested offset is at or past the end.
    RangeNotSatisfiable,
}

/// Progress of one download.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub bytes: u64,
    /// Bytes that were already in the partial file (resumed).
    pub resumed_from: u64,
    /// Bytes actually transferred.
    pub transferred: u64,
}

/// A verified manifest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub url: String,
    pub manifest: Manifest,
    /// `Some` when the signature was checked: the signer's fingerprint.
    pub signer: Option<String>,
    pub keyring: Option<PathBuf>,
}

/// The HTTP client (created on first use).
#[derive(Default)]
pub struct Feed {
    client: Option<reqwest::blocking::Client>,
}

impl Feed {
    pub fn new() -> Feed {
        Feed::default()
    }

    fn client(&mut self, url: &str) -> Result<&reqwest::blocking::Client, FeedError> {
        if self.client.is_none() {
            let c = reqwest::blocking::Client::builder()
                .user_agent(concat!(
                    "sysext-forge/",
                    env!("CARGO_PKG_VERSION"),
                    " (sysext update)"
                ))
                .connect_timeout(Duration::from_secs(30))
                // Per read/write operation, not the whole transfer.
                .timeout(Duration::from_secs(120))
                .build()
                .map_err(|e| FeedError::Http {
                    url: url.to_string(),
                    msg: format!("cannot create the HTTP client: {e}"),
                })?;
            self.client = Some(c);
        }
        Ok(self.client.as_ref().expect("client was just set"))
    }

    fn open(&mut self, url: &str, offset: u64) -> Result<Opened, FeedError> {
        if let Some(path) = url.strip_prefix("file://") {
            let path = PathBuf::from(percent_decode(path));
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::NotFound),
                Err(e) => return Err(io_err(&path)(e)),
            };
            let len = f.metadata().map_err(io_err(&path))?.len();
            if offset > 0 && offset >= len {
                return Ok(Opened::RangeNotSatisfiable);
            }
            f.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
            return Ok(Opened::Body(Body {
                reader: Box::new(f),
                start: offset,
                total: Some(len),
            }));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(FeedError::BadUrl(url.to_string()));
        }
        let http = |e: reqwest::Error| FeedError::Http {
            url: url.to_string(),
            msg: error_chain(&e),
        };
        let client = self.client(url)?;
        let mut req = client.get(url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req.send().map_err(http)?;
        let status = resp.status().as_u16();
        match status {
            200 => Ok(Opened::Body(Body {
                total: resp.content_length(),
                reader: Box::new(resp),
                start: 0,
            })),
            206 => {
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                match start {
                    Some(s) if s == offset => Ok(Opened::Body(Body {
                        total: resp.content_length().map(|l| l + s),
                        reader: Box::new(resp),
                        start: s,
                    })),
                    // A range we did not ask for: start again without one.
                    _ => self.open(url, 0),
                }
            }
            404 | 410 => Ok(Opened::NotFound),
            416 if offset > 0 => Ok(Opened::RangeNotSatisfiable),
            _ => Err(FeedError::Status {
                url: url.to_string(),
                status,
            }),
        }
    }

    /// GETs a small file (at most `limit` bytes); `None` when it does not
    /// exist.
    pub fn get_small(&mut self, url: &str, limit: u64) -> Result<Option<Vec<u8>>, FeedError> {
        let body = match self.open(url, 0)? {
            Opened::Body(b) => b,
            Opened::NotFound => return Ok(None),
            Opened::RangeNotSatisfiable => unreachable_range(url)?,
        };
        let mut buf = Vec::new();
        body.reader
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| FeedError::Http {
                url: url.to_string(),
                msg: format!("reading the response: {e}"),
            })?;
        if buf.len() as u64 > limit {
            return Err(FeedError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        Ok(Some(buf))
    }

    /// Fetches `base/SHA256SUMS`, checks its signature (unless `verify` is
    /// false) with the keyring under `root`, parses it and refuses it
    /// when its `BEST-BEFORE` date has come.
    pub fn fetch_manifest(
        &mut self,
        root: &Root,
        base: &str,
        verify: bool,
        today: Date,
    ) -> Result<FetchedManifest, FeedError> {
        let url = file_url(base, "SHA256SUMS");
        let sums = self
            .get_small(&url, MAX_MANIFEST)?
            .ok_or_else(|| FeedError::NotFound { url: url.clone() })?;
        let mut signer = None;
        let mut keyring = None;
        if verify {
            let (kr_path, kr) = find_keyring(root).ok_or_else(|| FeedError::NoKeyring {
                url: url.clone(),
                root: root.path().display().to_string(),
                looked: KEYRINGS.join(", "),
            })?;
            let sig_url = file_url(base, "SHA256SUMS.gpg");
            let sig = match self.get_small(&sig_url, MAX_SIGNATURE)? {
                Some(s) => s,
                None => self
                    .get_small(&file_url(base, "SHA256SUMS.asc"), MAX_SIGNATURE)?
                    .ok_or_else(|| FeedError::NoSignature {
                        url: url.clone(),
                        sig_url: sig_url.clone(),
                    })?,
            };
            let v = signing::openpgp::verify_detached(&kr, &sums, &sig).map_err(|e| {
                FeedError::BadSignature {
                    url: url.clone(),
                    keyring: kr_path.clone(),
                    detail: e.to_string(),
                }
            })?;
            signer = Some(v.primary_fingerprint);
            keyring = Some(kr_path);
        }
        let manifest =
            Manifest::parse_named(&sums, &url).map_err(|source| FeedError::Manifest {
                url: url.clone(),
                source,
            })?;
        if let Some(b) = manifest.best_before() {
            if manifest.is_expired(today) {
                return Err(FeedError::Expired {
                    url,
                    best_before: b,
                    today,
                });
            }
        }
        Ok(FetchedManifest {
            url,
            manifest,
            signer,
            keyring,
        })
    }

    /// Downloads `url` into `partial` (created with mode 0600 if missing),
    /// continuing after the bytes already there, and checks the sha256 of
    /// the whole file against `expected`. A resumed file that does not
    /// match is downloaded once more from scratch; a fresh download that
    /// does not match is deleted and refused. The file is fsynced.
    ///
    /// A file larger than `limit` bytes (by `Content-Length` before any
    /// byte is written, or by counting) is refused and the partial file
    /// deleted, so a hostile or broken server cannot fill the disk.
    pub fn download(
        &mut self,
        url: &str,
        partial: &Path,
        expected: &Sha256Digest,
        limit: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Downloaded, FeedError> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(partial)
            .map_err(io_err(partial))?;
        let mut fresh_attempt_done = false;
        loop {
            let existing = f.metadata().map_err(io_err(partial))?.len();
            let (got, done) =
                match self.download_once(url, &mut f, partial, existing, limit, progress) {
                    Ok(x) => x,
                    Err(e @ FeedError::DownloadTooLarge { .. }) => {
                        drop(f);
                        let _ = std::fs::remove_file(partial);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                };
            if got == *expected {
                f.sync_all().map_err(io_err(partial))?;
                return Ok(done);
            }
            if done.resumed_from > 0 && !fresh_attempt_done {
                // The old partial bytes may be from another file: retry
                // once from the beginning.
                fresh_attempt_done = true;
                f.set_len(0).map_err(io_err(partial))?;
                continue;
            }
            drop(f);
            let _ = std::fs::remove_file(partial);
            return Err(FeedError::Sha256Mismatch {
                url: url.to_string(),
                expected: *expected,
                got,
            });
        }
    }

    fn download_once(
        &mut self,
        url: &str,
        f: &mut File,
        partial: &Path,
        existing: u64,
        limit: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Sha256Digest, Downloaded), FeedError> {
        let too_large = |detail: String| FeedError::DownloadTooLarge {
            url: url.to_string(),
            limit,
            detail,
        };
        if existing > limit {
            return Err(too_large(format!(
                "the partial file {} already holds {existing} bytes",
                partial.display()
            )));
        }
        let opened = self.open(url, existing)?;
        let mut hasher = Sha256::new();
        let mut body = match opened {
            Opened::NotFound => {
                return Err(FeedError::NotFound {
                    url: url.to_string(),
                })
            }
            Opened::RangeNotSatisfiable => {
                // The partial file is complete (or longer than the file).
                hash_prefix(f, partial, existing, &mut hasher)?;
                let got = Sha256Digest::from_bytes(hasher.finalize().into());
                return Ok((
                    got,
                    Downloaded {
                        bytes: existing,
                        resumed_from: existing,
                        transferred: 0,
                    },
                ));
            }
            Opened::Body(b) => b,
        };
        if let Some(total) = body.total.filter(|t| *t > limit) {
            return Err(too_large(format!("the server announces {total} bytes")));
        }
        if body.start == 0 {
            f.set_len(0).map_err(io_err(partial))?;
        } else {
            hash_prefix(f, partial, body.start, &mut hasher)?;
        }
        f.seek(SeekFrom::Start(body.start))
            .map_err(io_err(partial))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut done = body.start;
        let mut last_report = 0u64;
        let total = body.total;
        progress(Progress { done, total });
        loop {
            let n = match body.reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(FeedError::Http {
                        url: url.to_string(),
                        msg: format!(
                        "the download broke off after {done} bytes: {e} (the next run resumes it)"
                    ),
                    })
                }
            };
            if done + n as u64 > limit {
                return Err(too_large(format!("the server sent more than {done} bytes")));
            }
            f.write_all(&buf[..n]).map_err(io_err(partial))?;
            hasher.update(&buf[..n]);
            done += n as u64;
            if done - last_report >= 1 << 20 {
                last_report = done;
                progress(Progress { done, total });
            }
        }
        progress(Progress {
            done,
            total: Some(done),
        });
        let got = Sha256Digest::from_bytes(hasher.finalize().into());
        Ok((
            got,
            Downloaded {
                bytes: done,
                resumed_from: body.start,
                transferred: done - body.start,
            },
        ))
    }
}

fn unreachable_range(url: &str) -> Result<Body, FeedError> {
    Err(FeedError::Http {
        url: url.to_string(),
        msg: "unexpected 416 for a request without Range".into(),
    })
}

/// Hashes the first `len` bytes of `f`.
fn hash_prefix(f: &mut File, path: &Path, len: u64, hasher: &mut Sha256) -> Result<(), FeedError> {
    f.seek(SeekFrom::Start(0)).map_err(io_err(path))?;
    let mut r = (&*f).take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut n_total = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        n_total += n as u64;
    }
    if n_total != len {
        return Err(io_err(path)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the partial file shrank while it was read",
        )));
    }
    Ok(())
}

/// The sha256 of a whole file.
pub fn sha256_file(path: &Path) -> io::Result<Sha256Digest> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Sha256Digest::from_bytes(h.finalize().into()))
}

/// The first keyring that exists under `root`, and its bytes.
pub fn find_keyring(root: &Root) -> Option<(PathBuf, Vec<u8>)> {
    KEYRINGS.iter().find_map(|k| {
        let p = root.resolve(k).ok()?;
        let bytes = std::fs::read(&p).ok()?;
        Some((p, bytes))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A reqwest error with its causes (reqwest's Display hides them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            file_url("http://h/k", "SHA256SUMS"),
            "http://h/k/SHA256SUMS"
        );
        assert_eq!(
            file_url("http://h/k/", "k3s-v1.30.4+k3s1-x86-64.raw"),
            "http://h/k/k3s-v1.30.4+k3s1-x86-64.raw"
        );
        assert_eq!(file_url("file:///f/", "a b#"), "file:///f/a%20b%23");
        assert_eq!(percent_decode("/f/a%20b%23"), "/f/a b#");
        assert_eq!(percent_decode("/f/100%"), "/f/100%");
    }

    #[test]
    fn file_download_resumes_and_checks() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("img");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let want = Sha256Digest::from_bytes(Sha256::digest(&data).into());
        let url = format!("file://{}", src.display());
        let partial = t.path().join(".#sysext-img.partial");
        std::fs::write(&partial, &data[..1_000_000]).unwrap();
        let mut feed = Feed::new();
        let d = feed
            .download(&url, &partial, &want, DEFAULT_MAX_DOWNLOAD, &mut |_| {})
            .unwrap();
        assert_eq!((d.resumed_from, d.transferred), (1_000_000, 2_000_000));
        assert_eq!(std::fs::read(&partial).unwrap(), data);
        // Complete already: nothing transferred.
        let d = feed
            .download(&url, &partial, &want, DEFAULT_MAX_DOWNLOAD, &mut |_| {})
            .unwrap();
        assert_eq!(d.transferred, 0);
        // A partial from another file: retried from scratch.
        std::fs::write(&partial, b"garbage").unwrap();
        let d = feed
            .download(&url, &partial, &want, DEFAULT_MAX_DOWNLOAD, &mut |_| {})
            .unwrap();
        assert_eq!(d.resumed_from, 0);
        assert_eq!(std::fs::read(&partial).unwrap(), data);
        // Wrong digest: refused and deleted.
        std::fs::remove_file(&partial).unwrap();
        let bad = Sha256Digest::from_bytes([1; 32]);
        let e = feed
            .download(&url, &partial, &bad, DEFAULT_MAX_DOWNLOAD, &mut |_| {})
            .unwrap_err();
        assert!(e.to_string().contains("sha256 mismatch"), "{e}");
        assert!(!partial.exists());

        // Over the size limit: refused before writing (the file:// source
        // announces its size), and by counting when a partial file is
        // already past it; the partial file is deleted either way.
        let e = feed
            .download(&url, &partial, &want, 1_000_000, &mut |_| {})
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, FeedError::DownloadTooLarge { .. }), "{msg}");
        assert!(
            msg.contains(&url) && msg.contains("1000000 bytes") && msg.contains("3000000"),
            "{msg}"
        );
        assert!(!partial.exists());
        std::fs::write(&partial, &data[..2_000_000]).unwrap();
        let e = feed
            .download(&url, &partial, &want, 1_000_000, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, FeedError::DownloadTooLarge { .. }), "{e}");
        assert!(!partial.exists());
        // Exactly at the limit is fine.
        let d = feed
            .download(&url, &partial, &want, 3_000_000, &mut |_| {})
            .unwrap();
        assert_eq!(d.bytes, 3_000_000);
    }

    /// A server that announces no length (HTTP/1.1 with `Connection:
    /// close`) and sends more than the limit: stopped by counting.
    #[test]
    fn http_download_without_length_is_capped_by_counting() {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            let mut w = conn;
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let chunk = vec![7u8; 64 * 1024];
            // 8 MiB, or until the client hangs up.
            for _ in 0..128 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let t = tempfile::tempdir().unwrap();
        let partial = t.path().join(".#sysext-img.partial");
        let url = format!("http://{addr}/img");
        let want = Sha256Digest::from_bytes([0; 32]);
        let e = Feed::new()
            .download(&url, &partial, &want, 1_000_000, &mut |_| {})
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, FeedError::DownloadTooLarge { .. }), "{msg}");
        assert!(
            msg.contains(&url)
                && msg.contains("limit of 1000000 bytes")
                && msg.contains("sent more than"),
            "{msg}"
        );
        assert!(!partial.exists(), "the partial file was left behind");
        server.join().unwrap();
    }
}
