//! A loopback GitHub REST server for publishing tests, with the semantics
//! the publisher relies on (and the ones that bite in production):
//!
//! - releases by tag (`404` when missing), create release (`422
//!   already_exists` for a tag that has one);
//! - list assets with `per_page`/`page` and `Link: rel="next"`;
//! - upload to the `upload_url` template with the name in the query,
//!   form-decoded (an unencoded `+` is a space) and rewritten the way
//!   GitHub does (characters outside `[A-Za-z0-9._+-]` become `.`, a
//!   leading `.` gets `default` in front); `422 already_exists` when the
//!   name is taken, even by a broken upload; `411` without Content-Length;
//!   the SHA-256 `digest` of each asset;
//! - delete (`204`, `404` when gone), rename by PATCH (`422` on a clash);
//! - downloads: `browser_download_url` and the API asset URL with
//!   `Accept: application/octet-stream` redirect (`302`) to a storage URL;
//! - bearer-token authentication on the API;
//! - injected faults: rate limits (`403` with `x-ratelimit-*` or
//!   `retry-after`, `429`), server errors before or after a mutation is
//!   applied, and uploads that break off mid-body leaving a `starter`
//!   asset, once at mutation N or from N on (a crash).
//!
//! Every visible state after a mutation is recorded so tests can check an
//! invariant at each instant a client could have looked.
//!
//! [`serve_dir`] serves a plain directory over HTTP (a directory feed).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// What happens to a mutating request chosen for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `500`, nothing applied.
    BeforeApply,
    /// Applied, then `502` (GitHub does this to uploads now and then).
    AfterApply,
    /// For uploads: half the body is read, a `starter` asset is left and
    /// the connection is dropped. Other mutations: like `BeforeApply`.
    BreakMidUpload,
}

/// When faults happen, counted in mutating requests (POST, PATCH,
/// DELETE), starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub at: usize,
    pub kind: FaultKind,
    /// From `at` on, every mutation fails (`BeforeApply` for those after
    /// the first): the publisher "crashed" at step `at`.
    pub persistent: bool,
}

/// A rate limit answer to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// `403` with `x-ratelimit-remaining: 0` and a reset in `secs`.
    Primary { secs: u64 },
    /// `403` with `retry-after: secs` (secondary limit).
    Secondary { secs: u64 },
    /// `429` with `retry-after: secs`.
    TooMany { secs: u64 },
}

#[derive(Debug, Clone)]
pub struct MockAsset {
    pub id: u64,
    pub name: String,
    /// `uploaded` or `starter`.
    pub state: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct MockRelease {
    pub id: u64,
    pub tag: String,
    pub name: String,
    pub assets: Vec<MockAsset>,
}

/// The server's data and knobs.
#[derive(Debug, Clone)]
pub struct State {
    pub owner: String,
    pub repo: String,
    pub token: String,
    pub releases: Vec<MockRelease>,
    pub next_id: u64,
    /// Mutating requests seen so far.
    pub mutations: usize,
    pub fault: Option<Fault>,
    pub rate_limits: Vec<RateLimit>,
    /// Largest page size served (GitHub: 100).
    pub max_per_page: usize,
    /// Whether assets report `digest` (GitHub does since 2025).
    pub report_digest: bool,
    /// One line per request: `METHOD path -> status`.
    pub log: Vec<String>,
    /// `(mutation number, what, releases)` after every applied mutation.
    pub history: Vec<(usize, String, Vec<MockRelease>)>,
}

impl State {
    /// Uploaded assets of the release `tag`: name → bytes.
    pub fn files(&self, tag: &str) -> BTreeMap<String, Vec<u8>> {
        files_of(&self.releases, tag)
    }

    fn release_mut(&mut self, id: u64) -> Option<&mut MockRelease> {
        self.releases.iter_mut().find(|r| r.id == id)
    }

    fn asset_mut(&mut self, id: u64) -> Option<(&mut MockRelease, usize)> {
        for r in self.releases.iter_mut() {
            if let Some(i) = r.assets.iter().position(|a| a.id == id) {
                return Some((r, i));
            }
        }
        None
    }

    fn record(&mut self, what: String) {
        let snap = self.releases.clone();
        self.history.push((self.mutations, what, snap));
    }
}

/// Uploaded assets of `tag` in a snapshot.
pub fn files_of(releases: &[MockRelease], tag: &str) -> BTreeMap<String, Vec<u8>> {
    releases
        .iter()
        .filter(|r| r.tag == tag)
        .flat_map(|r| r.assets.iter())
        .filter(|a| a.state == "uploaded")
        .map(|a| (a.name.clone(), a.bytes.clone()))
        .collect()
}

/// The running mock.
pub struct MockGithub {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MockGithub {
    /// Starts a server for `owner/repo` accepting `token`.
    pub fn start(owner: &str, repo: &str, token: &str) -> MockGithub {
        let state = State {
            owner: owner.into(),
            repo: repo.into(),
            token: token.into(),
            releases: Vec::new(),
            next_id: 1,
            mutations: 0,
            fault: None,
            rate_limits: Vec::new(),
            max_per_page: 100,
            report_digest: true,
            log: Vec::new(),
            history: Vec::new(),
        };
        let state = Arc::new(Mutex::new(state));
        let handler_state = state.clone();
        let (addr, stop, thread) =
            spawn_server(Arc::new(move |req: Request, stream: &mut TcpStream| {
                handle(&handler_state, req, stream)
            }));
        MockGithub {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: both the API and the web/download base.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for MockGithub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A parsed request; the body is not read yet.
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// Reads up to `limit` bytes of the body.
    fn read_body(&mut self, limit: usize) -> std::io::Result<Vec<u8>> {
        let n = self.content_length().unwrap_or(0).min(limit);
        let mut v = vec![0u8; n];
        self.reader.read_exact(&mut v)?;
        Ok(v)
    }

    fn query(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

type Handler = Arc<dyn Fn(Request, &mut TcpStream) + Send + Sync>;

fn spawn_server(handler: Handler) -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop2.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = conn else { continue };
            let h = handler.clone();
            std::thread::spawn(move || serve_connection(stream, h));
        }
    });
    (addr, stop, thread)
}

fn serve_connection(stream: TcpStream, handler: Handler) {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return;
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let (path, qs) = target.split_once('?').unwrap_or((&target, ""));
    let query = qs
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (form_decode(k), form_decode(v))
        })
        .collect();
    let req = Request {
        method,
        path: percent_decode(path),
        query,
        headers,
        reader,
    };
    handler(req, &mut out);
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space.
pub fn form_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
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

/// GitHub's rewriting of asset names.
pub fn github_asset_name(requested: &str) -> String {
    let mut s: String = requested
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+') {
                c
            } else {
                '.'
            }
        })
        .collect();
    if s.starts_with('.') {
        s.insert_str(0, "default");
    }
    s
}

fn respond(out: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        302 => "Found",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(body);
    let _ = out.flush();
}

fn respond_json(out: &mut TcpStream, status: u16, v: &Value) {
    respond(
        out,
        status,
        &[("Content-Type", "application/json".to_string())],
        v.to_string().as_bytes(),
    );
}

fn message(out: &mut TcpStream, status: u16, msg: &str) {
    respond_json(out, status, &json!({ "message": msg }));
}

fn already_exists(out: &mut TcpStream, resource: &str, field: &str) {
    respond_json(
        out,
        422,
        &json!({
            "message": "Validation Failed",
            "errors": [{ "resource": resource, "code": "already_exists", "field": field }],
        }),
    );
}

fn base(out: &TcpStream) -> String {
    out.local_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default()
}

fn release_json(st: &State, r: &MockRelease, base: &str) -> Value {
    json!({
        "id": r.id,
        "tag_name": r.tag,
        "name": r.name,
        "draft": false,
        "prerelease": false,
        "html_url": format!("{base}/{}/{}/releases/tag/{}", st.owner, st.repo, r.tag),
        "upload_url": format!("{base}/repos/{}/{}/releases/{}/assets{{?name,label}}", st.owner, st.repo, r.id),
        "assets_url": format!("{base}/repos/{}/{}/releases/{}/assets", st.owner, st.repo, r.id),
    })
}

fn asset_json(st: &State, tag: &str, a: &MockAsset, base: &str) -> Value {
    let mut v = json!({
        "id": a.id,
        "name": a.name,
        "label": "",
        "state": a.state,
        "content_type": "application/octet-stream",
        "size": a.bytes.len(),
        "browser_download_url": format!("{base}/{}/{}/releases/download/{tag}/{}", st.owner, st.repo, a.name),
        "url": format!("{base}/repos/{}/{}/releases/assets/{}", st.owner, st.repo, a.id),
    });
    if st.report_digest && a.state == "uploaded" {
        v["digest"] = json!(format!("sha256:{}", hex::encode(Sha256::digest(&a.bytes))));
    }
    v
}

fn handle(state: &Arc<Mutex<State>>, mut req: Request, out: &mut TcpStream) {
    let base = base(out);
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let segs: Vec<String> = req
        .path
        .trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let seg = |i: usize| segs.get(i).map(String::as_str).unwrap_or("");
    let method = req.method.clone();
    let log_line = format!("{method} {}", req.path);

    // Public downloads (no auth): /OWNER/REPO/releases/download/TAG/NAME
    // redirect to /_storage/ID, which serves the bytes.
    if method == "GET" && seg(0) == "_storage" {
        let id: u64 = seg(1).parse().unwrap_or(0);
        let found = st
            .releases
            .iter()
            .flat_map(|r| r.assets.iter())
            .find(|a| a.id == id && a.state == "uploaded")
            .map(|a| a.bytes.clone());
        st.log.push(format!(
            "{log_line} -> {}",
            if found.is_some() { 200 } else { 404 }
        ));
        match found {
            Some(b) => respond(
                out,
                200,
                &[("Content-Type", "application/octet-stream".into())],
                &b,
            ),
            None => message(out, 404, "Not Found"),
        }
        return;
    }
    if method == "GET"
        && seg(0) == st.owner
        && seg(1) == st.repo
        && seg(2) == "releases"
        && seg(3) == "download"
    {
        let (tag, name) = (seg(4).to_string(), seg(5).to_string());
        let id = st
            .releases
            .iter()
            .filter(|r| r.tag == tag)
            .flat_map(|r| r.assets.iter())
            .find(|a| a.name == name && a.state == "uploaded")
            .map(|a| a.id);
        st.log.push(format!(
            "{log_line} -> {}",
            if id.is_some() { 302 } else { 404 }
        ));
        match id {
            Some(id) => respond(
                out,
                302,
                &[("Location", format!("{base}/_storage/{id}"))],
                b"",
            ),
            None => message(out, 404, "Not Found"),
        }
        return;
    }

    // The API.
    if seg(0) != "repos" || seg(1) != st.owner || seg(2) != st.repo || seg(3) != "releases" {
        st.log.push(format!("{log_line} -> 404"));
        message(out, 404, "Not Found");
        return;
    }
    let auth_ok = req.header("authorization") == Some(&format!("Bearer {}", st.token));
    if !auth_ok {
        st.log.push(format!("{log_line} -> 401"));
        message(out, 401, "Bad credentials");
        return;
    }
    if !st.rate_limits.is_empty() {
        let rl = st.rate_limits.remove(0);
        st.log.push(format!("{log_line} -> rate limited {rl:?}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let msg = json!({ "message": "API rate limit exceeded" }).to_string();
        match rl {
            RateLimit::Primary { secs } => respond(
                out,
                403,
                &[
                    ("x-ratelimit-limit", "5000".into()),
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", (now + secs).to_string()),
                ],
                msg.as_bytes(),
            ),
            RateLimit::Secondary { secs } => respond(
                out,
                403,
                &[("retry-after", secs.to_string())],
                msg.as_bytes(),
            ),
            RateLimit::TooMany { secs } => respond(
                out,
                429,
                &[("retry-after", secs.to_string())],
                msg.as_bytes(),
            ),
        }
        return;
    }

    let mutating = matches!(method.as_str(), "POST" | "PATCH" | "DELETE");
    let mut fault = None;
    if mutating {
        st.mutations += 1;
        let n = st.mutations;
        if let Some(f) = st.fault {
            if n == f.at {
                fault = Some(f.kind);
            } else if f.persistent && n > f.at {
                fault = Some(FaultKind::BeforeApply);
            }
        }
    }
    let n = st.mutations;
    if fault == Some(FaultKind::BeforeApply)
        || (fault == Some(FaultKind::BreakMidUpload) && method != "POST")
    {
        st.log.push(format!("#{n} {log_line} -> 500 (injected)"));
        message(out, 500, "Server Error");
        return;
    }

    let tail: Vec<&str> = segs.iter().skip(4).map(String::as_str).collect();
    let mut status_for_log: u16;
    match (method.as_str(), tail.as_slice()) {
        ("GET", ["tags", tag]) => {
            let r = st.releases.iter().find(|r| r.tag == *tag).cloned();
            match r {
                Some(r) => {
                    status_for_log = 200;
                    let v = release_json(&st, &r, &base);
                    respond_json(out, 200, &v);
                }
                None => {
                    status_for_log = 404;
                    message(out, 404, "Not Found");
                }
            }
        }
        ("POST", []) => {
            let body = req.read_body(1 << 20).unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let Some(tag) = v
                .get("tag_name")
                .and_then(Value::as_str)
                .map(str::to_string)
            else {
                status_for_log = 422;
                respond_json(
                    out,
                    422,
                    &json!({"message": "Validation Failed", "errors": [{"resource": "Release", "code": "missing_field", "field": "tag_name"}]}),
                );
                st.log.push(format!("#{n} {log_line} -> {status_for_log}"));
                return;
            };
            if st.releases.iter().any(|r| r.tag == tag) {
                status_for_log = 422;
                already_exists(out, "Release", "tag_name");
            } else {
                let id = st.next_id;
                st.next_id += 1;
                let r = MockRelease {
                    id,
                    tag: tag.clone(),
                    name: v
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or(&tag)
                        .to_string(),
                    assets: Vec::new(),
                };
                st.releases.push(r.clone());
                st.record(format!("create release {tag}"));
                status_for_log = 201;
                if fault == Some(FaultKind::AfterApply) {
                    status_for_log = 502;
                    message(out, 502, "Bad Gateway");
                } else {
                    let v = release_json(&st, &r, &base);
                    respond_json(out, 201, &v);
                }
            }
        }
        ("GET", [id, "assets"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let per_page = req
                .query("per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(30usize)
                .clamp(1, st.max_per_page);
            let page = req
                .query("page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(1usize)
                .max(1);
            let Some(r) = st.releases.iter().find(|r| r.id == id).cloned() else {
                st.log.push(format!("{log_line} -> 404"));
                message(out, 404, "Not Found");
                return;
            };
            let items: Vec<Value> = r
                .assets
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|a| asset_json(&st, &r.tag, a, &base))
                .collect();
            let mut headers = vec![("Content-Type", "application/json".to_string())];
            if page * per_page < r.assets.len() {
                headers.push((
                    "Link",
                    format!(
                        "<{base}/repos/{}/{}/releases/{id}/assets?per_page={per_page}&page={}>; rel=\"next\"",
                        st.owner,
                        st.repo,
                        page + 1
                    ),
                ));
            }
            status_for_log = 200;
            respond(
                out,
                200,
                &headers,
                Value::Array(items).to_string().as_bytes(),
            );
        }
        ("POST", [id, "assets"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let Some(requested) = req.query("name").map(str::to_string) else {
                st.log.push(format!("#{n} {log_line} -> 422"));
                message(out, 422, "name is required");
                return;
            };
            let name = github_asset_name(&requested);
            let Some(len) = req.content_length() else {
                st.log.push(format!("#{n} {log_line} -> 411"));
                message(out, 411, "Length Required");
                return;
            };
            let Some(tag) = st
                .releases
                .iter()
                .find(|r| r.id == id)
                .map(|r| r.tag.clone())
            else {
                st.log.push(format!("#{n} {log_line} -> 404"));
                message(out, 404, "Not Found");
                return;
            };
            if st
                .releases
                .iter()
                .find(|r| r.id == id)
                .is_some_and(|r| r.assets.iter().any(|a| a.name == name))
            {
                let _ = req.read_body(len);
                st.log.push(format!("#{n} {log_line} name={name} -> 422"));
                already_exists(out, "ReleaseAsset", "name");
                return;
            }
            let asset_id = st.next_id;
            st.next_id += 1;
            if fault == Some(FaultKind::BreakMidUpload) {
                // Read part of the body, leave a broken asset, hang up.
                let part = req.read_body(len / 2).unwrap_or_default();
                if let Some(r) = st.release_mut(id) {
                    r.assets.push(MockAsset {
                        id: asset_id,
                        name: name.clone(),
                        state: "starter".into(),
                        bytes: part,
                    });
                }
                st.record(format!("broken upload {tag}/{name}"));
                st.log.push(format!(
                    "#{n} {log_line} name={name} -> connection dropped (injected)"
                ));
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            let body = match req.read_body(len) {
                Ok(b) if b.len() == len => b,
                _ => {
                    st.log.push(format!("#{n} {log_line} -> short body"));
                    return;
                }
            };
            let asset = MockAsset {
                id: asset_id,
                name: name.clone(),
                state: "uploaded".into(),
                bytes: body,
            };
            if let Some(r) = st.release_mut(id) {
                r.assets.push(asset.clone());
            }
            st.record(format!("upload {tag}/{name}"));
            if fault == Some(FaultKind::AfterApply) {
                status_for_log = 502;
                message(out, 502, "Bad Gateway");
            } else {
                status_for_log = 201;
                let v = asset_json(&st, &tag, &asset, &base);
                respond_json(out, 201, &v);
            }
        }
        ("DELETE", ["assets", aid]) => {
            let aid: u64 = aid.parse().unwrap_or(0);
            let what = st.asset_mut(aid).map(|(r, i)| {
                let a = r.assets.remove(i);
                format!("delete {}/{}", r.tag, a.name)
            });
            match what {
                Some(w) => {
                    st.record(w);
                    status_for_log = 204;
                    if fault == Some(FaultKind::AfterApply) {
                        status_for_log = 502;
                        message(out, 502, "Bad Gateway");
                    } else {
                        respond(out, 204, &[], b"");
                    }
                }
                None => {
                    status_for_log = 404;
                    message(out, 404, "Not Found");
                }
            }
        }
        ("PATCH", ["assets", aid]) => {
            let aid: u64 = aid.parse().unwrap_or(0);
            let body = req.read_body(1 << 20).unwrap_or_default();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let new_name = v.get("name").and_then(Value::as_str).map(github_asset_name);
            let result = match (st.asset_mut(aid), new_name) {
                (None, _) => Err(404),
                (Some(_), None) => Err(422),
                (Some((r, i)), Some(nn)) => {
                    if r.assets
                        .iter()
                        .enumerate()
                        .any(|(j, a)| j != i && a.name == nn)
                    {
                        Err(4220)
                    } else {
                        let old = std::mem::replace(&mut r.assets[i].name, nn.clone());
                        Ok((
                            r.tag.clone(),
                            r.assets[i].clone(),
                            format!("rename {}/{old} -> {nn}", r.tag),
                        ))
                    }
                }
            };
            match result {
                Ok((tag, a, what)) => {
                    st.record(what);
                    status_for_log = 200;
                    if fault == Some(FaultKind::AfterApply) {
                        status_for_log = 502;
                        message(out, 502, "Bad Gateway");
                    } else {
                        let v = asset_json(&st, &tag, &a, &base);
                        respond_json(out, 200, &v);
                    }
                }
                Err(4220) => {
                    status_for_log = 422;
                    already_exists(out, "ReleaseAsset", "name");
                }
                Err(code) => {
                    status_for_log = code;
                    message(out, code, "Not Found");
                }
            }
        }
        ("GET", ["assets", aid]) => {
            let aid: u64 = aid.parse().unwrap_or(0);
            let found = st.releases.iter().find_map(|r| {
                r.assets
                    .iter()
                    .find(|a| a.id == aid)
                    .map(|a| (r.tag.clone(), a.clone()))
            });
            match found {
                None => {
                    status_for_log = 404;
                    message(out, 404, "Not Found");
                }
                Some((tag, a)) => {
                    if req
                        .header("accept")
                        .is_some_and(|h| h.contains("application/octet-stream"))
                    {
                        status_for_log = 302;
                        respond(
                            out,
                            302,
                            &[("Location", format!("{base}/_storage/{aid}"))],
                            b"",
                        );
                    } else {
                        status_for_log = 200;
                        let v = asset_json(&st, &tag, &a, &base);
                        respond_json(out, 200, &v);
                    }
                }
            }
        }
        _ => {
            status_for_log = 404;
            message(out, 404, "Not Found");
        }
    }
    let prefix = if mutating {
        format!("#{n} ")
    } else {
        String::new()
    };
    let suffix = if fault.is_some() { " (injected)" } else { "" };
    st.log
        .push(format!("{prefix}{log_line} -> {status_for_log}{suffix}"));
}

/// A plain static file server over a directory (GET only, no listing,
/// no `..`), for directory feeds.
pub struct StaticServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StaticServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `root` at `http://127.0.0.1:PORT/`.
pub fn serve_dir(root: &Path) -> StaticServer {
    let root: PathBuf = root.to_path_buf();
    let (addr, stop, thread) = spawn_server(Arc::new(move |req: Request, out: &mut TcpStream| {
        let rel = Path::new(req.path.trim_start_matches('/'));
        let safe = rel.components().all(|c| matches!(c, Component::Normal(_)));
        let p = root.join(rel);
        match (req.method.as_str(), safe, std::fs::read(&p)) {
            ("GET", true, Ok(b)) => respond(out, 200, &[], &b),
            _ => respond(out, 404, &[], b"not found"),
        }
    }));
    StaticServer {
        addr,
        stop,
        thread: Some(thread),
    }
}
