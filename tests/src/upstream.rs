//! A loopback HTTP/1.1 server that stands in for upstream download sites
//! and the GitHub API in tests. It serves a map of paths to bytes (with
//! `Range`, `If-Range`, `ETag` and `HEAD`), GitHub-style release JSON with
//! `Link` pagination, and custom handlers for anything else (uploads,
//! listings). Faults can be injected: per-request latency, a per-response
//! bandwidth cap, and scripted failures (status codes, truncated bodies,
//! dropped connections, stalls). Every request is logged and counted.
//!
//! Plain threads, no async runtime: usable from any test. Binds
//! `127.0.0.1:0`; [`Upstream::stop`] (or drop) closes the listener and every
//! open connection, so a stopped server really refuses further requests.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path without the query string (percent-encoding kept).
    pub path: String,
    pub query: Option<String>,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .as_deref()?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A response from a custom handler.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A scripted failure for the next matching request(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this status and a short body.
    Status(u16),
    /// Announce the full `Content-Length`, send only this many body bytes,
    /// then close the connection.
    Truncate(usize),
    /// Close the connection without answering.
    Reset,
    /// Wait this long before answering normally.
    Stall(Duration),
}

/// One logged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub range: Option<String>,
    pub authorization: Option<String>,
    /// The status answered (0 for a dropped connection or a stall).
    pub status: u16,
}

/// A release for the mock GitHub API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubRelease {
    pub tag: String,
    pub prerelease: bool,
    pub draft: bool,
    /// (name, browser_download_url)
    pub assets: Vec<(String, String)>,
}

impl GithubRelease {
    pub fn new(tag: &str) -> GithubRelease {
        GithubRelease {
            tag: tag.to_string(),
            prerelease: false,
            draft: false,
            assets: Vec::new(),
        }
    }

    pub fn prerelease(mut self) -> GithubRelease {
        self.prerelease = true;
        self
    }

    pub fn draft(mut self) -> GithubRelease {
        self.draft = true;
        self
    }

    pub fn asset(mut self, name: &str, url: &str) -> GithubRelease {
        self.assets.push((name.to_string(), url.to_string()));
        self
    }
}

struct GithubRepo {
    /// `"/repos/OWNER/REPO/releases"` under the API prefix.
    path: String,
    releases: Vec<GithubRelease>,
    per_page: usize,
    /// Absolute base URL put into `Link` headers (ends without '/').
    link_base: String,
}

struct FailureRule {
    path: Option<String>,
    failure: Failure,
    remaining: u32,
}

type Handler = Arc<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

struct File {
    bytes: Arc<Vec<u8>>,
    etag: String,
}

#[derive(Default)]
struct State {
    files: Mutex<BTreeMap<String, File>>,
    github: Mutex<Vec<GithubRepo>>,
    handlers: Mutex<Vec<(String, Handler)>>,
    failures: Mutex<Vec<FailureRule>>,
    latency: Mutex<Duration>,
    bandwidth: Mutex<Option<u64>>,
    no_ranges: AtomicBool,
    log: Mutex<Vec<RequestLog>>,
    shutdown: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The mock upstream server.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts an empty server on `127.0.0.1:0`.
    pub fn start() -> Upstream {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the mock upstream");
        let addr = listener
            .local_addr()
            .expect("local address of the mock upstream");
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = std::thread::Builder::new()
            .name("upstream-accept".into())
            .spawn(move || accept_loop(listener, st))
            .expect("spawn the mock upstream's accept thread");
        Upstream {
            addr,
            state,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The absolute URL of a path (`/x` or `x`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// Serves `bytes` at `path` (replacing what was there).
    pub fn insert(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        let bytes: Vec<u8> = bytes.into();
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&bytes))[..16]);
        lock(&self.state.files).insert(
            normalize(path),
            File {
                bytes: Arc::new(bytes),
                etag,
            },
        );
    }

    pub fn remove(&self, path: &str) {
        lock(&self.state.files).remove(&normalize(path));
    }

    /// Adds a handler for every request whose path starts with `prefix`;
    /// returning `None` falls through to files and 404.
    pub fn handle(
        &self,
        prefix: &str,
        handler: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
    ) {
        lock(&self.state.handlers).push((normalize(prefix), Arc::new(handler)));
    }

    /// Waits this long before answering each request.
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.state.latency) = latency;
    }

    /// Caps every response body at this many bytes per second (per
    /// connection, as CDNs do), or removes the cap.
    pub fn set_bandwidth(&self, bytes_per_sec: Option<u64>) {
        *lock(&self.state.bandwidth) = bytes_per_sec.filter(|b| *b > 0);
    }

    /// Ignores `Range` headers (always answers 200 with the whole file).
    pub fn set_ranges(&self, enabled: bool) {
        self.state.no_ranges.store(!enabled, Ordering::SeqCst);
    }

    /// Makes the next `count` requests for `path` (or any path, if `None`)
    /// fail this way.
    pub fn fail_next(&self, path: Option<&str>, failure: Failure, count: u32) {
        lock(&self.state.failures).push(FailureRule {
            path: path.map(normalize),
            failure,
            remaining: count,
        });
    }

    /// Serves `GET {api_prefix}/repos/OWNER/REPO/releases` as the GitHub
    /// API does: JSON pages of at most `per_page` releases (fewer if the
    /// client asks for fewer) with `Link: <…>; rel="next"` headers whose
    /// URLs start with `link_base` (default: this server plus
    /// `api_prefix`). Use `api_prefix = "/api.github.com"` with
    /// `link_base = Some("https://api.github.com")` to mimic the real API
    /// behind a mirror rule.
    pub fn github_releases(
        &self,
        api_prefix: &str,
        owner: &str,
        repo: &str,
        releases: Vec<GithubRelease>,
        per_page: usize,
        link_base: Option<&str>,
    ) {
        let prefix = normalize(api_prefix);
        let prefix = prefix.trim_end_matches('/');
        let link_base = link_base
            .map(|b| b.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("{}{prefix}", self.base_url()));
        lock(&self.state.github).push(GithubRepo {
            path: format!("{prefix}/repos/{owner}/{repo}/releases"),
            releases,
            per_page: per_page.max(1),
            link_base,
        });
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RequestLog> {
        lock(&self.state.log).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// Requests for one path.
    pub fn requests_for(&self, path: &str) -> Vec<RequestLog> {
        let path = normalize(path);
        lock(&self.state.log)
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn clear_log(&self) {
        lock(&self.state.log).clear();
        self.state.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// The most requests that were being answered at the same moment
    /// (since start or [`Upstream::clear_log`]): shows whether a client
    /// really downloads in parallel, and within its limit.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        if self.state.shutdown.swap(true, Ordering::SeqCst) {
            return;
        }
        for (_, c) in lock(&self.state.conns).drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn normalize(path: &str) -> String {
    format!("/{}", path.trim_start_matches('/'))
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = state.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            lock(&state.conns).insert(id, clone);
        }
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("upstream-conn".into())
            .spawn(move || {
                let _ = serve_connection(stream, &st);
                lock(&st.conns).remove(&id);
            });
        if spawned.is_err() {
            lock(&state.conns).remove(&id);
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad request line",
        ));
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let mut req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(Some(req))
}

fn serve_connection(stream: TcpStream, state: &State) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(req) = read_request(&mut reader)? {
        if state.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let keep_alive = !req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let result = serve_request(&mut out, &req, keep_alive, state);
        state.in_flight.fetch_sub(1, Ordering::SeqCst);
        match result? {
            Next::Continue => {}
            Next::Close => return Ok(()),
        }
    }
    Ok(())
}

enum Next {
    Continue,
    Close,
}

fn serve_request(
    out: &mut TcpStream,
    req: &Request,
    keep_alive: bool,
    state: &State,
) -> io::Result<Next> {
    let latency = *lock(&state.latency);
    if !latency.is_zero() {
        std::thread::sleep(latency);
    }
    let failure = take_failure(state, &req.path);
    let mut log = RequestLog {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        range: req.header("range").map(str::to_string),
        authorization: req.header("authorization").map(str::to_string),
        status: 0,
    };
    let after = if keep_alive {
        Next::Continue
    } else {
        Next::Close
    };
    let mut truncate_at = None;
    let mut logged = false;
    match failure {
        Some(Failure::Reset) => {
            lock(&state.log).push(log);
            let _ = out.shutdown(Shutdown::Both);
            return Ok(Next::Close);
        }
        Some(Failure::Status(code)) => {
            log.status = code;
            lock(&state.log).push(log);
            let body = format!("injected failure {code}\n");
            write_head(out, code, &[], body.len() as u64, keep_alive)?;
            out.write_all(body.as_bytes())?;
            return Ok(after);
        }
        Some(Failure::Stall(d)) => {
            // Logged now (status 0: not answered in time); the late answer
            // is not logged again.
            lock(&state.log).push(log.clone());
            logged = true;
            std::thread::sleep(d);
        }
        Some(Failure::Truncate(n)) => truncate_at = Some(n),
        None => {}
    }
    let resp = respond(state, req);
    log.status = resp.status;
    if !logged {
        lock(&state.log).push(log);
    }
    write_head(
        out,
        resp.status,
        &resp.headers,
        resp.body.len() as u64,
        keep_alive,
    )?;
    if req.method == "HEAD" {
        return Ok(after);
    }
    let body = match truncate_at {
        Some(n) => &resp.body[..n.min(resp.body.len())],
        None => &resp.body[..],
    };
    let bandwidth = *lock(&state.bandwidth);
    send_body(out, body, bandwidth)?;
    if truncate_at.is_some() {
        out.flush()?;
        let _ = out.shutdown(Shutdown::Both);
        return Ok(Next::Close);
    }
    Ok(after)
}

fn take_failure(state: &State, path: &str) -> Option<Failure> {
    let mut failures = lock(&state.failures);
    let i = failures
        .iter()
        .position(|f| f.remaining > 0 && f.path.as_deref().is_none_or(|p| p == path))?;
    failures[i].remaining -= 1;
    let failure = failures[i].failure.clone();
    if failures[i].remaining == 0 {
        failures.remove(i);
    }
    Some(failure)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_head(
    out: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    len: u64,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\n",
        reason(status)
    );
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())
}

fn send_body(out: &mut TcpStream, body: &[u8], bandwidth: Option<u64>) -> io::Result<()> {
    let Some(bps) = bandwidth else {
        return out.write_all(body);
    };
    // Send in slices of ~1/50 s worth of bytes, pacing against a clock so
    // the average rate is `bps`.
    let slice = ((bps / 50).max(1024)) as usize;
    let start = std::time::Instant::now();
    let mut sent = 0usize;
    for chunk in body.chunks(slice) {
        out.write_all(chunk)?;
        sent += chunk.len();
        let due = Duration::from_secs_f64(sent as f64 / bps as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

fn respond(state: &State, req: &Request) -> Response {
    let handlers: Vec<Handler> = lock(&state.handlers)
        .iter()
        .filter(|(prefix, _)| req.path.starts_with(prefix.as_str()))
        .map(|(_, h)| h.clone())
        .collect();
    for h in handlers {
        if let Some(resp) = h(req) {
            return resp;
        }
    }
    if req.method != "GET" && req.method != "HEAD" {
        return Response::new(405, "method not allowed\n");
    }
    if let Some(resp) = github_page(state, req) {
        return resp;
    }
    let file = lock(&state.files)
        .get(&req.path)
        .map(|f| (f.bytes.clone(), f.etag.clone()));
    let Some((bytes, etag)) = file else {
        return Response::new(404, "not found\n");
    };
    let total = bytes.len() as u64;
    let ranges = !state.no_ranges.load(Ordering::SeqCst);
    let if_range_ok = req.header("if-range").is_none_or(|v| v == etag);
    if let (true, true, Some(range)) = (ranges, if_range_ok, req.header("range")) {
        if let Some((start, end)) = parse_range(range, total) {
            if start >= total {
                return Response::new(416, Vec::new())
                    .header("Content-Range", &format!("bytes */{total}"))
                    .header("ETag", &etag);
            }
            return Response::new(206, bytes[start as usize..=end as usize].to_vec())
                .header("Content-Range", &format!("bytes {start}-{end}/{total}"))
                .header("Accept-Ranges", "bytes")
                .header("ETag", &etag);
        }
    }
    let mut resp = Response::new(200, bytes.to_vec()).header("ETag", &etag);
    if ranges {
        resp = resp.header("Accept-Ranges", "bytes");
    }
    resp
}

/// `bytes=START-` or `bytes=START-END` (one range only).
fn parse_range(value: &str, total: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end = if b.trim().is_empty() {
        total.saturating_sub(1)
    } else {
        b.trim().parse::<u64>().ok()?.min(total.saturating_sub(1))
    };
    if start < total && end < start {
        return None;
    }
    Some((start, end))
}

fn github_page(state: &State, req: &Request) -> Option<Response> {
    let repos = lock(&state.github);
    let repo = repos.iter().find(|r| r.path == req.path)?;
    let asked = req
        .query_param("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(30);
    let per_page = asked.clamp(1, 100).min(repo.per_page);
    let page = req
        .query_param("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    let pages = repo.releases.len().div_ceil(per_page).max(1);
    let items: Vec<serde_json::Value> = repo
        .releases
        .iter()
        .enumerate()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(i, r)| {
            serde_json::json!({
                "id": 1000 + i,
                "tag_name": r.tag,
                "name": r.tag,
                "draft": r.draft,
                "prerelease": r.prerelease,
                "published_at": "2024-01-01T00:00:00Z",
                "assets": r.assets.iter().enumerate().map(|(j, (name, url))| serde_json::json!({
                    "id": 10_000 * (i + 1) + j,
                    "name": name,
                    "size": 0,
                    "browser_download_url": url,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let body = serde_json::to_vec(&items).unwrap_or_default();
    let link = |p: usize| {
        let suffix = repo
            .path
            .rsplit_once("/repos/")
            .map(|(_, s)| s)
            .unwrap_or("");
        format!(
            "<{}/repos/{suffix}?per_page={per_page}&page={p}>",
            repo.link_base
        )
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(format!("{}; rel=\"next\"", link(page + 1)));
        links.push(format!("{}; rel=\"last\"", link(pages)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", link(1)));
        links.push(format!("{}; rel=\"prev\"", link(page - 1)));
    }
    let mut resp =
        Response::new(200, body).header("Content-Type", "application/json; charset=utf-8");
    if !links.is_empty() {
        resp = resp.header("Link", &links.join(", "));
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(buf[..split].to_vec()).unwrap();
        let status = head[9..12].parse().unwrap();
        (status, head, buf[split + 4..].to_vec())
    }

    #[test]
    fn serves_files_ranges_and_404() {
        let up = Upstream::start();
        up.insert("/a/b.txt", b"0123456789".to_vec());
        let (s, _, body) = get(up.addr(), "/a/b.txt", "");
        assert_eq!((s, body.as_slice()), (200, &b"0123456789"[..]));
        let (s, head, body) = get(up.addr(), "/a/b.txt", "Range: bytes=4-\r\n");
        assert_eq!((s, body.as_slice()), (206, &b"456789"[..]));
        assert!(head.contains("Content-Range: bytes 4-9/10"), "{head}");
        let (s, _, _) = get(up.addr(), "/a/b.txt", "Range: bytes=10-\r\n");
        assert_eq!(s, 416);
        let (s, _, body) = get(
            up.addr(),
            "/a/b.txt",
            "Range: bytes=4-\r\nIf-Range: \"other\"\r\n",
        );
        assert_eq!((s, body.len()), (200, 10));
        assert_eq!(get(up.addr(), "/missing", "").0, 404);
        assert_eq!(up.request_count(), 5);
        assert_eq!(up.requests_for("/a/b.txt").len(), 4);
    }

    #[test]
    fn injects_failures_in_order() {
        let up = Upstream::start();
        up.insert("/f", vec![7u8; 1000]);
        up.fail_next(Some("/f"), Failure::Status(503), 1);
        up.fail_next(Some("/f"), Failure::Truncate(10), 1);
        assert_eq!(get(up.addr(), "/f", "").0, 503);
        let (s, head, body) = get(up.addr(), "/f", "");
        assert_eq!((s, body.len()), (200, 10));
        assert!(head.contains("Content-Length: 1000"));
        assert_eq!(get(up.addr(), "/f", "").2.len(), 1000);
    }

    #[test]
    fn paginates_github_releases() {
        let up = Upstream::start();
        let rels = (0..5)
            .map(|i| GithubRelease::new(&format!("v1.{i}.0")))
            .collect();
        up.github_releases("/api", "o", "r", rels, 2, None);
        let (s, head, body) = get(up.addr(), "/api/repos/o/r/releases?per_page=100", "");
        assert_eq!(s, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert!(
            head.contains(&format!(
                "<{}/api/repos/o/r/releases?per_page=2&page=2>; rel=\"next\"",
                up.base_url()
            )),
            "{head}"
        );
        let (_, head, body) = get(up.addr(), "/api/repos/o/r/releases?per_page=2&page=3", "");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v[0]["tag_name"], "v1.4.0");
        assert!(!head.contains("rel=\"next\""), "{head}");
    }

    #[test]
    fn stop_refuses_new_connections() {
        let mut up = Upstream::start();
        let addr = up.addr();
        up.stop();
        assert!(TcpStream::connect(addr).is_err());
    }
}
