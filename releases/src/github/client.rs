//! A small blocking client for the GitHub REST endpoints a feed needs:
//! releases by tag, create release, list assets (paginated), upload,
//! delete and rename assets, download. It retries what is safe to retry,
//! waits out rate limits (bounded), and never sends the token anywhere but
//! the API and its upload host.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::fsutil::{self, IoError};

/// The public GitHub API.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// GitHub refuses release assets of 2 GiB or more.
pub const MAX_ASSET_SIZE: u64 = 2 * 1024 * 1024 * 1024 - 1;
/// GitHub allows at most 1000 assets per release.
pub const MAX_ASSETS_PER_RELEASE: usize = 1000;

/// An API token. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Token {
        Token(s.into())
    }

    /// `GITHUB_TOKEN` from the environment, if set and non-empty.
    pub fn from_env() -> Option<Token> {
        std::env::var("GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| Token(t.trim().to_string()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// `OWNER/REPO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSlug {
    pub owner: String,
    pub repo: String,
}

/// Text that is not `OWNER/REPO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid GitHub repository {0:?}: expected OWNER/REPO (letters, digits, '-', '_', '.')")]
pub struct BadRepoSlug(pub String);

impl std::str::FromStr for RepoSlug {
    type Err = BadRepoSlug;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match s.split_once('/') {
            Some((o, r)) if ok(o) && ok(r) => Ok(RepoSlug {
                owner: o.to_string(),
                repo: r.to_string(),
            }),
            _ => Err(BadRepoSlug(s.to_string())),
        }
    }
}

impl fmt::Display for RepoSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.repo)
    }
}

/// How hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request (rate-limit waits included).
    pub max_attempts: u32,
    /// The longest single wait for a rate limit; longer ones fail at once
    /// with [`GithubError::RateLimited`] naming the wait.
    pub max_wait: Duration,
    /// First back-off after a server error or dropped connection; doubles.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            max_wait: Duration::from_secs(15 * 60),
            backoff: Duration::from_secs(2),
        }
    }
}

/// Where and how to talk to GitHub.
#[derive(Clone)]
pub struct GithubConfig {
    /// `https://api.github.com`, a GHES `https://HOST/api/v3`, or a
    /// loopback test server.
    pub api_url: String,
    pub token: Option<Token>,
    pub user_agent: String,
    pub retry: RetryPolicy,
    /// How to wait (tests may record instead of sleeping).
    pub sleep: Arc<dyn Fn(Duration) + Send + Sync>,
    pub timeout: Duration,
}

impl fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubConfig")
            .field("api_url", &self.api_url)
            .field("token", &self.token)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl GithubConfig {
    /// The public API, token from `GITHUB_TOKEN`.
    pub fn from_env() -> GithubConfig {
        GithubConfig {
            api_url: DEFAULT_API_URL.to_string(),
            token: Token::from_env(),
            user_agent: format!("sysext-releases/{}", env!("CARGO_PKG_VERSION")),
            retry: RetryPolicy::default(),
            sleep: Arc::new(std::thread::sleep),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// A release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Release {
    pub id: u64,
    pub tag_name: String,
    pub upload_url: String,
    #[serde(default)]
    pub html_url: String,
}

/// A release asset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Asset {
    pub id: u64,
    pub name: String,
    pub size: u64,
    /// `uploaded` when complete; `starter`/`open` for an upload that broke
    /// off (the name stays taken until the asset is deleted).
    pub state: String,
    /// `sha256:HEX` (GitHub computes it for uploads since 2025).
    #[serde(default)]
    pub digest: Option<String>,
    pub browser_download_url: String,
}

impl Asset {
    pub fn is_uploaded(&self) -> bool {
        self.state == "uploaded"
    }

    /// The SHA-256 GitHub reports, if it does.
    pub fn sha256(&self) -> Option<sysupdate::Sha256Digest> {
        self.digest
            .as_deref()?
            .strip_prefix("sha256:")?
            .parse()
            .ok()
    }
}

/// A failed API call. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("{method} {url}: HTTP {status}: {message}")]
    Http {
        method: Method,
        url: String,
        status: StatusCode,
        message: String,
        /// `errors[].code` of a 422 (e.g. `already_exists`).
        codes: Vec<String>,
    },
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url}: rate limited for {wait:?}, longer than the allowed {max:?}; try again later or raise the limit")]
    RateLimited {
        url: String,
        wait: Duration,
        max: Duration,
    },
    #[error("{url}: unexpected response: {message}")]
    BadResponse { url: String, message: String },
    #[error("GitHub stored the asset {requested:?} as {got:?}; asset names must use only letters, digits, '.', '_', '-' and '+'")]
    AssetRenamed { requested: String, got: String },
    #[error("asset {name:?} in release {tag}: uploaded {got}, but the file has sha256 {want}")]
    DigestMismatch {
        tag: String,
        name: String,
        want: String,
        got: String,
    },
    #[error("asset {name:?} of release {tag} has other content (sha256 {remote}) than the local {local}: published images are immutable; bump the version")]
    ImmutableChanged {
        tag: String,
        name: String,
        remote: String,
        local: String,
    },
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

impl GithubError {
    /// A server error or a dropped connection: the request may or may not
    /// have been applied.
    pub fn is_transient(&self) -> bool {
        match self {
            GithubError::Http { status, .. } => status.is_server_error(),
            GithubError::Transport { .. } => true,
            _ => false,
        }
    }

    /// HTTP status, if the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GithubError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A 422 whose `errors[].code` contains `already_exists`.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, GithubError::Http { status, codes, .. }
            if *status == StatusCode::UNPROCESSABLE_ENTITY && codes.iter().any(|c| c == "already_exists"))
    }
}

/// The client.
pub struct Client {
    http: Http,
    cfg: GithubConfig,
    api: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Safe to repeat after a server error or dropped connection.
    Idempotent,
    /// Only rate-limit answers (request not applied) are retried.
    RateLimitOnly,
}

impl Client {
    pub fn new(cfg: GithubConfig) -> Result<Client, GithubError> {
        let http = Http::builder()
            .timeout(cfg.timeout)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(GithubError::Client)?;
        let api = cfg.api_url.trim_end_matches('/').to_string();
        Ok(Client { http, cfg, api })
    }

    pub fn config(&self) -> &GithubConfig {
        &self.cfg
    }

    fn request(&self, method: Method, url: &str, accept: &str) -> RequestBuilder {
        let mut rb = self
            .http
            .request(method, url)
            .header(USER_AGENT, &self.cfg.user_agent)
            .header(ACCEPT, accept)
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(t) = &self.cfg.token {
            rb = rb.header(AUTHORIZATION, format!("Bearer {}", t.0));
        }
        rb
    }

    fn backoff(&self, attempt: u32) -> Duration {
        self.cfg
            .retry
            .backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(6))
    }

    /// Sends, retrying as `retry` allows.
    fn execute(
        &self,
        method: Method,
        url: &str,
        retry: Retry,
        build: &dyn Fn(RequestBuilder) -> Result<RequestBuilder, GithubError>,
    ) -> Result<Response, GithubError> {
        self.execute_accept(method, url, "application/vnd.github+json", retry, build)
    }

    fn execute_accept(
        &self,
        method: Method,
        url: &str,
        accept: &str,
        retry: Retry,
        build: &dyn Fn(RequestBuilder) -> Result<RequestBuilder, GithubError>,
    ) -> Result<Response, GithubError> {
        let max = self.cfg.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= max;
            let rb = build(self.request(method.clone(), url, accept))?;
            let resp = match rb.send() {
                Ok(r) => r,
                Err(source) => {
                    if retry == Retry::Idempotent && !last {
                        (self.cfg.sleep)(self.backoff(attempt));
                        continue;
                    }
                    return Err(GithubError::Transport {
                        method,
                        url: url.to_string(),
                        source,
                    });
                }
            };
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            if let Some(wait) = rate_limit_wait(status, resp.headers()) {
                if wait > self.cfg.retry.max_wait {
                    return Err(GithubError::RateLimited {
                        url: url.to_string(),
                        wait,
                        max: self.cfg.retry.max_wait,
                    });
                }
                if !last {
                    (self.cfg.sleep)(wait);
                    continue;
                }
            } else if status.is_server_error() && retry == Retry::Idempotent && !last {
                (self.cfg.sleep)(self.backoff(attempt));
                continue;
            }
            return Err(http_error(method, url, resp));
        }
    }

    fn json<T: for<'de> Deserialize<'de>>(url: &str, resp: Response) -> Result<T, GithubError> {
        let bytes = resp.bytes().map_err(|e| GithubError::BadResponse {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| GithubError::BadResponse {
            url: url.to_string(),
            message: format!("invalid JSON: {e}"),
        })
    }

    fn repo_url(&self, repo: &RepoSlug, rest: &str) -> String {
        format!("{}/repos/{}/{}{rest}", self.api, repo.owner, repo.repo)
    }

    /// The release with tag `tag`, if any (drafts are not found by tag).
    pub fn release_by_tag(
        &self,
        repo: &RepoSlug,
        tag: &str,
    ) -> Result<Option<Release>, GithubError> {
        let url = self.repo_url(repo, &format!("/releases/tags/{}", encode_component(tag)));
        match self.execute(Method::GET, &url, Retry::Idempotent, &Ok) {
            Ok(r) => Ok(Some(Self::json(&url, r)?)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a published (non-draft) release for `tag`, not marked latest.
    pub fn create_release(
        &self,
        repo: &RepoSlug,
        tag: &str,
        title: &str,
        body: &str,
    ) -> Result<Release, GithubError> {
        let url = self.repo_url(repo, "/releases");
        let payload = json!({
            "tag_name": tag,
            "name": title,
            "body": body,
            "draft": false,
            "prerelease": false,
            "make_latest": "false",
        })
        .to_string();
        let resp = self.execute(Method::POST, &url, Retry::RateLimitOnly, &|rb| {
            Ok(rb
                .header(CONTENT_TYPE, "application/json")
                .body(payload.clone()))
        })?;
        Self::json(&url, resp)
    }

    /// The release for `tag`, created if missing; safe against a create
    /// that timed out but happened, and against a concurrent creator.
    pub fn get_or_create_release(
        &self,
        repo: &RepoSlug,
        tag: &str,
        title: &str,
        body: &str,
    ) -> Result<Release, GithubError> {
        let max = self.cfg.retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(r) = self.release_by_tag(repo, tag)? {
                return Ok(r);
            }
            match self.create_release(repo, tag, title, body) {
                Ok(r) => return Ok(r),
                Err(e) if (e.is_transient() || e.is_already_exists()) && attempt < max => {
                    (self.cfg.sleep)(self.backoff(attempt));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every asset of a release, following `Link: rel="next"`.
    pub fn list_assets(&self, repo: &RepoSlug, release_id: u64) -> Result<Vec<Asset>, GithubError> {
        let mut url = self.repo_url(repo, &format!("/releases/{release_id}/assets?per_page=100"));
        let mut out = Vec::new();
        for _page in 0..=(MAX_ASSETS_PER_RELEASE / 10) {
            let resp = self.execute(Method::GET, &url, Retry::Idempotent, &Ok)?;
            let next = next_link(resp.headers());
            let mut page: Vec<Asset> = Self::json(&url, resp)?;
            out.append(&mut page);
            match next {
                Some(n) if same_origin(&n, &self.api) => url = n,
                Some(n) => {
                    return Err(GithubError::BadResponse {
                        url,
                        message: format!("pagination link {n:?} leaves the API host"),
                    })
                }
                None => return Ok(out),
            }
        }
        Err(GithubError::BadResponse {
            url,
            message: "too many pages of assets".into(),
        })
    }

    /// The upload endpoint of `release`, refusing hosts other than the API's
    /// own (or `uploads.github.com` for `api.github.com`): the token goes
    /// there.
    fn upload_endpoint(&self, release: &Release) -> Result<String, GithubError> {
        let base = release
            .upload_url
            .split('{')
            .next()
            .unwrap_or_default()
            .to_string();
        let allowed = same_origin(&base, &self.api)
            || (origin(&self.api) == Some("https://api.github.com")
                && origin(&base) == Some("https://uploads.github.com"));
        if !allowed {
            return Err(GithubError::BadResponse {
                url: self.api.clone(),
                message: format!("release upload_url {base:?} is not on the API's host; refusing to send the token there"),
            });
        }
        Ok(base)
    }

    /// Uploads `path` as asset `name`. Not retried after a server error or
    /// a dropped connection (the asset may exist, complete or broken): the
    /// caller reconciles by listing assets.
    pub fn upload_asset(
        &self,
        release: &Release,
        name: &str,
        path: &Path,
    ) -> Result<Asset, GithubError> {
        let base = self.upload_endpoint(release)?;
        let url = format!("{base}?name={}", encode_component(name));
        let size = std::fs::metadata(path)
            .map_err(fsutil::io_err("inspecting", path))?
            .len();
        if size > MAX_ASSET_SIZE {
            return Err(GithubError::Limit(format!(
                "{}: {size} bytes; GitHub release assets must be smaller than 2 GiB",
                path.display()
            )));
        }
        let resp = self.execute(Method::POST, &url, Retry::RateLimitOnly, &|rb| {
            let f = fsutil::open_regular(path)?;
            Ok(rb
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(reqwest::blocking::Body::sized(f, size)))
        })?;
        let asset: Asset = Self::json(&url, resp)?;
        if asset.name != name {
            return Err(GithubError::AssetRenamed {
                requested: name.to_string(),
                got: asset.name,
            });
        }
        Ok(asset)
    }

    /// Deletes an asset; one already gone counts as deleted.
    pub fn delete_asset(&self, repo: &RepoSlug, asset_id: u64) -> Result<(), GithubError> {
        let url = self.repo_url(repo, &format!("/releases/assets/{asset_id}"));
        match self.execute(Method::DELETE, &url, Retry::Idempotent, &Ok) {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Renames an asset (PATCH `name`).
    pub fn rename_asset(
        &self,
        repo: &RepoSlug,
        asset_id: u64,
        name: &str,
    ) -> Result<Asset, GithubError> {
        let url = self.repo_url(repo, &format!("/releases/assets/{asset_id}"));
        let payload = json!({ "name": name }).to_string();
        let resp = self.execute(Method::PATCH, &url, Retry::Idempotent, &|rb| {
            Ok(rb
                .header(CONTENT_TYPE, "application/json")
                .body(payload.clone()))
        })?;
        let asset: Asset = Self::json(&url, resp)?;
        if asset.name != name {
            return Err(GithubError::AssetRenamed {
                requested: name.to_string(),
                got: asset.name,
            });
        }
        Ok(asset)
    }

    /// Downloads an asset's bytes through the API (works for private
    /// repositories; the redirect to storage drops the token), at most
    /// `limit` bytes.
    pub fn download_asset(
        &self,
        repo: &RepoSlug,
        asset_id: u64,
        limit: u64,
    ) -> Result<Vec<u8>, GithubError> {
        let url = self.repo_url(repo, &format!("/releases/assets/{asset_id}"));
        let resp = self.execute_accept(
            Method::GET,
            &url,
            "application/octet-stream",
            Retry::Idempotent,
            &Ok,
        )?;
        let mut out = Vec::new();
        resp.take(limit.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| GithubError::BadResponse {
                url: url.clone(),
                message: e.to_string(),
            })?;
        if out.len() as u64 > limit {
            return Err(GithubError::BadResponse {
                url,
                message: format!("asset larger than {limit} bytes"),
            });
        }
        Ok(out)
    }
}

/// How long a 403/429 asks us to wait, if it is a rate limit at all.
fn rate_limit_wait(status: StatusCode, h: &HeaderMap) -> Option<Duration> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let num = |k: &str| h.get(k)?.to_str().ok()?.trim().parse::<u64>().ok();
    if let Some(s) = num("retry-after") {
        return Some(Duration::from_secs(s));
    }
    if num("x-ratelimit-remaining") == Some(0) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let reset = num("x-ratelimit-reset").unwrap_or(now + 60);
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    // A secondary rate limit without headers: GitHub asks for at least a
    // minute. A plain 403 (permissions) is not retried.
    (status == StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
}

fn http_error(method: Method, url: &str, resp: Response) -> GithubError {
    let status = resp.status();
    let body = resp.text().unwrap_or_default();
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        message: String,
        #[serde(default)]
        errors: Vec<serde_json::Value>,
    }
    let (message, codes) = match serde_json::from_str::<E>(&body) {
        Ok(e) => (
            e.message,
            e.errors
                .iter()
                .filter_map(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_string))
                .collect(),
        ),
        Err(_) => (body.chars().take(200).collect(), Vec::new()),
    };
    GithubError::Http {
        method,
        url: url.to_string(),
        status,
        message,
        codes,
    }
}

/// `rel="next"` of a `Link` header.
fn next_link(h: &HeaderMap) -> Option<String> {
    let link = h.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (u, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                u.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<&str> {
    let rest_at = url.find("://")? + 3;
    let end = url[rest_at..].find('/').map_or(url.len(), |i| rest_at + i);
    Some(&url[..end])
}

fn same_origin(a: &str, b: &str) -> bool {
    origin(a).is_some() && origin(a) == origin(b)
}

/// Percent-encodes a path segment or query value (only RFC 3986
/// unreserved characters stay; `+` becomes `%2B`).
pub fn encode_component(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn parses_link_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(
                "<https://api.github.com/x?page=2>; rel=\"next\", <https://api.github.com/x?page=5>; rel=\"last\"",
            ),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=2")
        );
        h.insert(
            "link",
            HeaderValue::from_static("<https://api.github.com/x?page=1>; rel=\"prev\""),
        );
        assert_eq!(next_link(&h), None);
    }

    #[test]
    fn rate_limit_waits() {
        let mut h = HeaderMap::new();
        assert_eq!(rate_limit_wait(StatusCode::FORBIDDEN, &h), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            rate_limit_wait(StatusCode::FORBIDDEN, &h),
            Some(Duration::from_secs(7))
        );
        assert_eq!(rate_limit_wait(StatusCode::NOT_FOUND, &h), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert("x-ratelimit-reset", HeaderValue::from_static("0"));
        assert_eq!(
            rate_limit_wait(StatusCode::FORBIDDEN, &h),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn origins_and_slugs() {
        assert_eq!(
            origin("https://uploads.github.com/repos/a"),
            Some("https://uploads.github.com")
        );
        assert!(same_origin("http://127.0.0.1:5/a", "http://127.0.0.1:5"));
        assert!(!same_origin("http://127.0.0.1:6/a", "http://127.0.0.1:5"));
        assert!("o/r".parse::<RepoSlug>().is_ok());
        for bad in ["o", "o/", "/r", "o/r/x", "o/..", "o r/x"] {
            assert!(bad.parse::<RepoSlug>().is_err(), "{bad}");
        }
        assert_eq!(
            format!("{:?}", Token::new("ghp_secret")),
            "Token(<redacted>)"
        );
        assert_eq!(encode_component("a+b c"), "a%2Bb%20c");
    }
}
