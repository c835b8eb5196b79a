//! Fetching build inputs: parallel (bounded) downloads whose sha256 is
//! computed while they stream into a temporary file inside the
//! content-addressed [`Cache`], checked against the expected digest before
//! the file gets its final name, retried with exponential backoff on
//! transient failures (5xx, 408, 429, timeouts, resets) and resumed with
//! `Range` where the server allows it. URLs are rewritten by [`MirrorSet`]
//! rules before any request, so air-gapped sites can serve every input from
//! their own host. Also: small text resources (checksum files, API JSON)
//! with size limits, checksum-file parsing ([`checksum`]), GitHub release
//! listings ([`github`]) and progress events ([`progress`]).
//!
//! A fetch of a digest that is already cached makes no request at all.

pub mod cache;
pub mod checksum;
pub mod error;
pub mod github;
pub mod mirror;
pub mod progress;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use sysupdate::Sha256Digest;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;

pub use cache::Cache;
pub use checksum::{find_checksum, ChecksumError};
pub use error::{FetchError, UrlLabel};
pub use mirror::{Mirror, MirrorError, MirrorSet};
pub use progress::{Event, ProgressSink, Renderer};
pub use reqwest::Url;

/// Tunables of a [`Fetcher`]. `Default` gives values suited to real
/// upstreams; tests shorten the backoff.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Downloads running at the same time.
    pub concurrency: usize,
    /// Largest accepted download, in bytes.
    pub max_size: u64,
    /// Retries after the first attempt for transient failures.
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub backoff_initial: Duration,
    /// Upper bound of the retry delay (also caps `Retry-After`).
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    pub mirrors: MirrorSet,
    /// Re-hash cache entries before using them (detects a damaged cache).
    pub verify_cache_hits: bool,
    pub user_agent: String,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            concurrency: 8,
            max_size: 4 << 30,
            retries: 4,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            mirrors: MirrorSet::new(),
            verify_cache_hits: true,
            user_agent: concat!("bakery/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// One input to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub url: Url,
    /// The digest the bytes must have. `None` downloads and reports the
    /// digest (for `bakery lock` of upstreams that publish no checksum);
    /// such a fetch always goes to the network.
    pub expected: Option<Sha256Digest>,
    /// Shown in progress output; defaults to the URL's file name.
    pub label: String,
}

impl FetchRequest {
    pub fn new(url: &str, expected: Option<Sha256Digest>) -> Result<FetchRequest, FetchError> {
        let url = parse_url(url)?;
        let label = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|s| !s.is_empty())
            .unwrap_or(url.as_str())
            .to_string();
        Ok(FetchRequest {
            url,
            expected,
            label,
        })
    }

    pub fn pinned(url: &str, digest: Sha256Digest) -> Result<FetchRequest, FetchError> {
        FetchRequest::new(url, Some(digest))
    }

    pub fn unpinned(url: &str) -> Result<FetchRequest, FetchError> {
        FetchRequest::new(url, None)
    }
}

/// Parses an absolute `http`/`https` URL.
pub fn parse_url(url: &str) -> Result<Url, FetchError> {
    let parsed = Url::parse(url).map_err(|e| FetchError::BadUrl {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FetchError::BadUrl {
            url: url.to_string(),
            message: "only http:// and https:// URLs can be fetched".into(),
        });
    }
    Ok(parsed)
}

/// A verified input in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The URL as requested (before mirror rewriting).
    pub url: Url,
    pub digest: Sha256Digest,
    pub size: u64,
    /// The cache entry; treat it as read-only.
    pub path: PathBuf,
    /// True when no request was made.
    pub from_cache: bool,
}

/// A small response read fully into memory.
#[derive(Debug, Clone)]
pub struct SmallResponse {
    pub url: UrlLabel,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Downloads, verifies and caches inputs. Cheap to clone; clones share the
/// connection pool, the cache and the concurrency limit.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    cache: Cache,
    opts: FetchOptions,
    progress: Option<ProgressSink>,
    slots: Semaphore,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("cache", &self.inner.cache)
            .field("opts", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

/// The outcome of one HTTP attempt.
enum Attempt {
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    Fatal(FetchError),
}

/// A partly downloaded file: bytes written so far and their running hash.
struct Partial {
    file: tokio::fs::File,
    hasher: Sha256,
    written: u64,
    /// Strong `ETag` or `Last-Modified` of the first response, sent as
    /// `If-Range` so a resumed download cannot splice two versions.
    validator: Option<HeaderValue>,
}

impl Partial {
    async fn reset(&mut self, path: &std::path::Path) -> Result<(), FetchError> {
        let io = |e| FetchError::io(path, "cannot truncate download", e);
        self.file.flush().await.map_err(io)?;
        self.file.set_len(0).await.map_err(io)?;
        self.file
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(io)?;
        self.hasher = Sha256::new();
        self.written = 0;
        self.validator = None;
        Ok(())
    }
}

impl Fetcher {
    pub fn new(cache: Cache, opts: FetchOptions) -> Result<Fetcher, FetchError> {
        if opts.concurrency == 0 {
            return Err(FetchError::Invalid(
                "fetch concurrency must be at least 1".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .build()
            .map_err(|e| FetchError::Client(error_chain(&e)))?;
        let slots = Semaphore::new(opts.concurrency);
        Ok(Fetcher {
            inner: Arc::new(Inner {
                client,
                cache,
                opts,
                progress: None,
                slots,
            }),
        })
    }

    /// Sends progress events to `sink`. Call before cloning.
    pub fn with_progress(self, sink: ProgressSink) -> Fetcher {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            client: shared.client.clone(),
            cache: shared.cache.clone(),
            opts: shared.opts.clone(),
            progress: shared.progress.clone(),
            slots: Semaphore::new(shared.opts.concurrency),
        });
        Fetcher {
            inner: Arc::new(Inner {
                progress: Some(sink),
                ..inner
            }),
        }
    }

    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    pub fn options(&self) -> &FetchOptions {
        &self.inner.opts
    }

    /// The URL actually contacted for `url` after mirror rewriting.
    pub fn effective_url(&self, url: &Url) -> Url {
        self.inner.opts.mirrors.rewrite(url)
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.inner.progress {
            sink(&event);
        }
    }

    /// Fetches one input (waiting for a free slot under the concurrency limit).
    pub async fn fetch(&self, req: &FetchRequest) -> Result<Fetched, FetchError> {
        self.fetch_with_id(0, req).await
    }

    /// Fetches many inputs in parallel (at most `concurrency` at once) and
    /// returns one result per request, in request order. Requests for the
    /// same digest (or, unpinned, the same URL) are downloaded once.
    pub async fn fetch_all(&self, reqs: &[FetchRequest]) -> Vec<Result<Fetched, FetchError>> {
        let key = |r: &FetchRequest| match &r.expected {
            Some(d) => d.to_hex(),
            None => r.url.to_string(),
        };
        let mut first_of: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        let mut dup_of: Vec<Option<usize>> = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            match first_of.get(&key(r)) {
                Some(&j) => dup_of.push(Some(j)),
                None => {
                    first_of.insert(key(r), i);
                    dup_of.push(None);
                }
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for (i, r) in reqs.iter().enumerate() {
            if dup_of[i].is_none() {
                let this = self.clone();
                let r = r.clone();
                set.spawn(async move { (i, this.fetch_with_id(i, &r).await) });
            }
        }
        let mut results: Vec<Option<Result<Fetched, FetchError>>> =
            (0..reqs.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, res)) => results[i] = Some(res),
                Err(e) => {
                    // A panicking task is a bug; report it against no
                    // particular request rather than aborting the batch.
                    let msg = format!("download task failed: {e}");
                    if let Some(slot) = results.iter_mut().find(|r| r.is_none()) {
                        *slot = Some(Err(FetchError::Invalid(msg)));
                    }
                }
            }
        }
        for (i, r) in reqs.iter().enumerate() {
            if let Some(j) = dup_of[i] {
                let res = match &results[j] {
                    Some(Ok(f)) => Ok(Fetched {
                        url: r.url.clone(),
                        ..f.clone()
                    }),
                    _ => self.fetch_with_id(i, r).await,
                };
                results[i] = Some(res);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(FetchError::Invalid("download task lost".into()))))
            .collect()
    }

    /// Like [`Fetcher::fetch_all`], but returns the first error (in request
    /// order) if any request failed.
    pub async fn try_fetch_all(&self, reqs: &[FetchRequest]) -> Result<Vec<Fetched>, FetchError> {
        self.fetch_all(reqs).await.into_iter().collect()
    }

    async fn cache_lookup(&self, digest: Sha256Digest) -> Result<Option<PathBuf>, FetchError> {
        let cache = self.inner.cache.clone();
        if !self.inner.opts.verify_cache_hits {
            return Ok(cache.lookup_unverified(&digest));
        }
        tokio::task::spawn_blocking(move || cache.lookup_verified(&digest))
            .await
            .map_err(|e| FetchError::Invalid(format!("cache lookup task failed: {e}")))?
    }

    async fn fetch_with_id(&self, id: usize, req: &FetchRequest) -> Result<Fetched, FetchError> {
        let result = self.fetch_inner(id, req).await;
        if let Err(e) = &result {
            self.emit(Event::Failed {
                id,
                label: req.label.clone(),
                error: e.to_string(),
            });
        }
        result
    }

    async fn fetch_inner(&self, id: usize, req: &FetchRequest) -> Result<Fetched, FetchError> {
        if let Some(digest) = req.expected {
            if let Some(path) = self.cache_lookup(digest).await? {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                self.emit(Event::CacheHit {
                    id,
                    label: req.label.clone(),
                    bytes: size,
                });
                return Ok(Fetched {
                    url: req.url.clone(),
                    digest,
                    size,
                    path,
                    from_cache: true,
                });
            }
        }
        let _slot = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| FetchError::Invalid("fetcher was shut down".into()))?;
        let effective = self.effective_url(&req.url);
        let label = UrlLabel::new(&req.url, &effective);

        let tmp = self.inner.cache.new_temp()?;
        let std_file = tmp
            .as_file()
            .try_clone()
            .map_err(|e| FetchError::io(tmp.path(), "cannot open temporary file", e))?;
        let mut partial = Partial {
            file: tokio::fs::File::from_std(std_file),
            hasher: Sha256::new(),
            written: 0,
            validator: None,
        };
        let max_attempts = self.inner.opts.retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            match self
                .attempt(id, req, &effective, &label, tmp.path(), &mut partial)
                .await
            {
                Ok(()) => break,
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient {
                    message,
                    retry_after,
                }) => {
                    if attempt >= max_attempts {
                        return Err(FetchError::Network {
                            url: label,
                            message,
                            attempts: attempt,
                        });
                    }
                    let delay = self.backoff(attempt, retry_after);
                    self.emit(Event::Retrying {
                        id,
                        label: req.label.clone(),
                        attempt: attempt + 1,
                        delay,
                        reason: message,
                    });
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
        partial
            .file
            .flush()
            .await
            .map_err(|e| FetchError::io(tmp.path(), "cannot write download", e))?;
        drop(partial.file);
        let digest = Sha256Digest::from_bytes(partial.hasher.finalize().into());
        if let Some(expected) = req.expected {
            if digest != expected {
                // `tmp` is dropped here, which deletes the bad bytes.
                return Err(FetchError::ChecksumMismatch {
                    url: label,
                    expected,
                    actual: digest,
                });
            }
        }
        let cache = self.inner.cache.clone();
        let path = tokio::task::spawn_blocking(move || cache.commit(tmp, &digest))
            .await
            .map_err(|e| FetchError::Invalid(format!("cache commit task failed: {e}")))??;
        self.emit(Event::Finished {
            id,
            label: req.label.clone(),
            bytes: partial.written,
            digest,
        });
        Ok(Fetched {
            url: req.url.clone(),
            digest,
            size: partial.written,
            path,
            from_cache: false,
        })
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let o = &self.inner.opts;
        let exp = o.backoff_initial.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        retry_after.unwrap_or(exp).min(o.backoff_max)
    }

    async fn attempt(
        &self,
        id: usize,
        req: &FetchRequest,
        effective: &Url,
        label: &UrlLabel,
        tmp_path: &std::path::Path,
        p: &mut Partial,
    ) -> Result<(), Attempt> {
        let opts = &self.inner.opts;
        let mut rb = self.inner.client.get(effective.clone());
        let offset = p.written;
        if offset > 0 {
            rb = rb.header(header::RANGE, format!("bytes={offset}-"));
            if let Some(v) = &p.validator {
                rb = rb.header(header::IF_RANGE, v.clone());
            }
        }
        let mut resp = rb.send().await.map_err(|e| classify(e, label))?;
        let status = resp.status().as_u16();
        match status {
            206 if offset > 0 => {
                let start = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    p.reset(tmp_path).await.map_err(Attempt::Fatal)?;
                    self.emit(Event::Restarted {
                        id,
                        label: req.label.clone(),
                    });
                    return Err(Attempt::Transient {
                        message: format!("the server answered a resume at byte {offset} with a wrong Content-Range"),
                        retry_after: Some(Duration::ZERO),
                    });
                }
            }
            200 | 203 => {
                if offset > 0 {
                    p.reset(tmp_path).await.map_err(Attempt::Fatal)?;
                    self.emit(Event::Restarted {
                        id,
                        label: req.label.clone(),
                    });
                }
            }
            416 if offset > 0 => {
                p.reset(tmp_path).await.map_err(Attempt::Fatal)?;
                return Err(Attempt::Transient {
                    message: "the server refused to resume (416); starting over".into(),
                    retry_after: Some(Duration::ZERO),
                });
            }
            s if is_transient_status(s) => {
                return Err(Attempt::Transient {
                    message: format!("HTTP status {s}"),
                    retry_after: retry_after(resp.headers()),
                })
            }
            s => {
                return Err(Attempt::Fatal(FetchError::Status {
                    url: label.clone(),
                    status: s,
                    attempts: 1,
                }))
            }
        }
        if p.written == 0 {
            p.validator = validator(resp.headers());
        }
        let total = resp.content_length().map(|n| p.written.saturating_add(n));
        if total.is_some_and(|t| t > opts.max_size) {
            return Err(Attempt::Fatal(FetchError::TooLarge {
                url: label.clone(),
                what: "the announced size",
                limit: opts.max_size,
            }));
        }
        self.emit(Event::Started {
            id,
            label: req.label.clone(),
            url: effective.to_string(),
            offset: p.written,
            total,
        });
        loop {
            let chunk = match tokio::time::timeout(opts.read_timeout, resp.chunk()).await {
                Err(_) => {
                    return Err(Attempt::Transient {
                        message: format!("no data for {:?}", opts.read_timeout),
                        retry_after: None,
                    })
                }
                Ok(Err(e)) => return Err(classify(e, label)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if p.written.saturating_add(chunk.len() as u64) > opts.max_size {
                return Err(Attempt::Fatal(FetchError::TooLarge {
                    url: label.clone(),
                    what: "the download",
                    limit: opts.max_size,
                }));
            }
            p.hasher.update(&chunk);
            p.file.write_all(&chunk).await.map_err(|e| {
                Attempt::Fatal(FetchError::io(tmp_path, "cannot write download", e))
            })?;
            p.written += chunk.len() as u64;
            self.emit(Event::Progress {
                id,
                done: p.written,
                total,
            });
        }
        if let Some(t) = total {
            if p.written != t {
                return Err(Attempt::Transient {
                    message: format!("the connection closed after {} of {t} bytes", p.written),
                    retry_after: None,
                });
            }
        }
        Ok(())
    }

    /// GETs a small resource (checksum file, API JSON) into memory, with
    /// the same mirror rewriting and retries as downloads, refusing bodies
    /// over `limit` bytes. Not cached: these resources change upstream.
    pub async fn get_small(
        &self,
        url: &Url,
        headers: HeaderMap,
        limit: u64,
    ) -> Result<SmallResponse, FetchError> {
        let effective = self.effective_url(url);
        let label = UrlLabel::new(url, &effective);
        let max_attempts = self.inner.opts.retries.saturating_add(1);
        let mut attempt = 1;
        loop {
            match self
                .small_attempt(&effective, &label, headers.clone(), limit)
                .await
            {
                Ok((headers, body)) => {
                    return Ok(SmallResponse {
                        url: label,
                        headers,
                        body,
                    })
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient {
                    message,
                    retry_after,
                }) => {
                    if attempt >= max_attempts {
                        return Err(FetchError::Network {
                            url: label,
                            message,
                            attempts: attempt,
                        });
                    }
                    tokio::time::sleep(self.backoff(attempt, retry_after)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn small_attempt(
        &self,
        effective: &Url,
        label: &UrlLabel,
        headers: HeaderMap,
        limit: u64,
    ) -> Result<(HeaderMap, Vec<u8>), Attempt> {
        let mut resp = self
            .inner
            .client
            .get(effective.clone())
            .headers(headers)
            .send()
            .await
            .map_err(|e| classify(e, label))?;
        let status = resp.status().as_u16();
        if is_transient_status(status) {
            return Err(Attempt::Transient {
                message: format!("HTTP status {status}"),
                retry_after: retry_after(resp.headers()),
            });
        }
        if !resp.status().is_success() {
            return Err(Attempt::Fatal(FetchError::Status {
                url: label.clone(),
                status,
                attempts: 1,
            }));
        }
        let too_large = || {
            Attempt::Fatal(FetchError::TooLarge {
                url: label.clone(),
                what: "the response",
                limit,
            })
        };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(self.inner.opts.read_timeout, resp.chunk()).await {
                Err(_) => {
                    return Err(Attempt::Transient {
                        message: format!("no data for {:?}", self.inner.opts.read_timeout),
                        retry_after: None,
                    })
                }
                Ok(Err(e)) => return Err(classify(e, label)),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => {
                    if body.len() as u64 + c.len() as u64 > limit {
                        return Err(too_large());
                    }
                    body.extend_from_slice(&c);
                }
            }
        }
        Ok((resp.headers().clone(), body))
    }

    /// Fetches a UTF-8 text resource of at most `limit` bytes.
    pub async fn fetch_text(&self, url: &Url, limit: u64) -> Result<String, FetchError> {
        let resp = self.get_small(url, HeaderMap::new(), limit).await?;
        String::from_utf8(resp.body).map_err(|_| FetchError::NotText { url: resp.url })
    }

    /// Fetches a checksum file (`.sha256`, `.sha256sum`, `sha256sum-ARCH.txt`)
    /// and returns the digest it gives for `file_name`.
    pub async fn fetch_checksum(
        &self,
        url: &Url,
        file_name: &str,
    ) -> Result<Sha256Digest, FetchError> {
        let resp = self.get_small(url, HeaderMap::new(), 1 << 20).await?;
        let source = resp.url.to_string();
        let text =
            String::from_utf8(resp.body).map_err(|_| FetchError::NotText { url: resp.url })?;
        Ok(find_checksum(&text, file_name, &source)?)
    }
}

/// Runs a future on a new multi-threaded tokio runtime, for synchronous
/// callers (the CLI, the recipe engine). Must not be called from inside a
/// tokio runtime.
pub fn block_on<F: Future>(future: F) -> Result<F::Output, FetchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| FetchError::Client(format!("cannot start the async runtime: {e}")))?;
    Ok(rt.block_on(future))
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || (500..=599).contains(&status)
}

fn classify(e: reqwest::Error, label: &UrlLabel) -> Attempt {
    let message = error_chain(&e);
    if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() || e.is_decode() {
        Attempt::Transient {
            message,
            retry_after: None,
        }
    } else {
        Attempt::Fatal(FetchError::Network {
            url: label.clone(),
            message,
            attempts: 1,
        })
    }
}

/// The error and its sources as one line, without reqwest's URL (the
/// caller's message names it).
fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut seen = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        let mut text = err.to_string();
        if let Some(i) = text.find(" for url (") {
            text.truncate(i);
        }
        if !text.is_empty() && !seen.contains(&text) {
            seen.push_str(&text);
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn validator(headers: &HeaderMap) -> Option<HeaderValue> {
    if let Some(etag) = headers.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            return Some(etag.clone());
        }
    }
    headers.get(header::LAST_MODIFIED).cloned()
}

/// The first byte position of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, _total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    start.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }

    #[test]
    fn classifies_statuses() {
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(is_transient_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 410] {
            assert!(!is_transient_status(s), "{s}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let opts = FetchOptions {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..FetchOptions::default()
        };
        let f = Fetcher::new(Cache::new("/nonexistent"), opts).unwrap();
        assert_eq!(f.backoff(1, None), Duration::from_millis(100));
        assert_eq!(f.backoff(2, None), Duration::from_millis(200));
        assert_eq!(f.backoff(3, None), Duration::from_millis(400));
        assert_eq!(f.backoff(4, None), Duration::from_millis(500));
        assert_eq!(f.backoff(40, None), Duration::from_millis(500));
        assert_eq!(
            f.backoff(1, Some(Duration::from_secs(60))),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn request_labels_and_url_checks() {
        let r =
            FetchRequest::unpinned("https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubectl").unwrap();
        assert_eq!(r.label, "kubectl");
        assert!(FetchRequest::unpinned("file:///etc/passwd").is_err());
        assert!(FetchRequest::unpinned("not a url").is_err());
    }
}
