//! GitHub release listings: `GET /repos/OWNER/REPO/releases`, following the
//! `Link: <…>; rel="next"` pagination, with `GITHUB_TOKEN` (if set) sent
//! only to the configured API host. Drafts and pre-releases are dropped.
//! Every request goes through the [`Fetcher`], so mirror rules apply to the
//! API and to its `next` links alike.

use reqwest::header::{self, HeaderMap, HeaderValue};
use serde::Deserialize;

use super::{parse_url, FetchError, Fetcher, Url};

/// Largest accepted page of release JSON.
const PAGE_LIMIT: u64 = 16 << 20;
/// Pages followed before giving up (100 releases per page).
const MAX_PAGES: usize = 100;

/// Where the GitHub API lives and how to authenticate to it.
#[derive(Clone)]
pub struct GithubApi {
    base: Url,
    token: Option<String>,
}

impl std::fmt::Debug for GithubApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubApi")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for GithubApi {
    fn default() -> Self {
        GithubApi {
            base: Url::parse("https://api.github.com/")
                .unwrap_or_else(|_| unreachable!("constant URL")),
            token: None,
        }
    }
}

/// One published release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Release {
    pub tag_name: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub prerelease: bool,
    #[serde(default)]
    pub published_at: Option<String>,
    #[serde(default)]
    pub assets: Vec<Asset>,
}

/// A file attached to a release.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Asset {
    pub name: String,
    #[serde(default)]
    pub size: u64,
    pub browser_download_url: String,
}

impl GithubApi {
    /// `https://api.github.com/` with `GITHUB_TOKEN` from the environment.
    pub fn from_env() -> GithubApi {
        let token = std::env::var("GITHUB_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        GithubApi {
            token,
            ..GithubApi::default()
        }
    }

    /// Another API base (GitHub Enterprise, or a test server).
    pub fn with_base(mut self, base: &str) -> Result<GithubApi, FetchError> {
        let mut url = parse_url(base)?;
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        self.base = url;
        Ok(self)
    }

    pub fn with_token(mut self, token: Option<String>) -> GithubApi {
        self.token = token;
        self
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of the first page of `owner/repo`'s releases.
    pub fn releases_url(&self, owner: &str, repo: &str) -> Result<Url, FetchError> {
        for (what, part) in [("owner", owner), ("repository", repo)] {
            let ok = !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !ok {
                return Err(FetchError::Invalid(format!(
                    "invalid GitHub {what} name {part:?}: use letters, digits, '-', '_' and '.'"
                )));
            }
        }
        self.base
            .join(&format!("repos/{owner}/{repo}/releases?per_page=100"))
            .map_err(|e| FetchError::BadUrl {
                url: self.base.to_string(),
                message: e.to_string(),
            })
    }

    fn headers_for(&self, fetcher: &Fetcher, url: &Url) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        h.insert(
            "X-GitHub-Api-Version",
            HeaderValue::from_static("2022-11-28"),
        );
        // The token goes only to the API host itself: not to a mirror that a
        // rule rewrote the URL to, and not to any other host a `next` link
        // might name.
        let effective = fetcher.effective_url(url);
        if let Some(token) = &self.token {
            if effective.as_str().starts_with(self.base.as_str()) {
                if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    v.set_sensitive(true);
                    h.insert(header::AUTHORIZATION, v);
                }
            }
        }
        h
    }

    /// Every published (non-draft, non-pre-release) release of
    /// `owner/repo`, in the order the API returns them (newest first).
    pub async fn list_releases(
        &self,
        fetcher: &Fetcher,
        owner: &str,
        repo: &str,
    ) -> Result<Vec<Release>, FetchError> {
        let mut next = Some(self.releases_url(owner, repo)?);
        let mut seen = Vec::new();
        let mut out = Vec::new();
        while let Some(url) = next.take() {
            if seen.len() >= MAX_PAGES || seen.contains(&url) {
                return Err(FetchError::Invalid(format!(
                    "{url}: GitHub release pagination does not end (more than {MAX_PAGES} pages or a loop)"
                )));
            }
            let resp = fetcher
                .get_small(&url, self.headers_for(fetcher, &url), PAGE_LIMIT)
                .await?;
            let page: Vec<Release> =
                serde_json::from_slice(&resp.body).map_err(|e| FetchError::BadJson {
                    url: resp.url.clone(),
                    message: format!("{e} (expected a JSON array of releases)"),
                })?;
            out.extend(page.into_iter().filter(|r| !r.draft && !r.prerelease));
            next = next_link(&resp.headers, &url)?;
            seen.push(url);
        }
        Ok(out)
    }
}

/// The `rel="next"` target of a `Link` header, resolved against `base`.
fn next_link(headers: &HeaderMap, base: &Url) -> Result<Option<Url>, FetchError> {
    for value in headers.get_all(header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        for part in text.split(',') {
            let mut pieces = part.split(';');
            let Some(target) = pieces.next() else {
                continue;
            };
            let is_next = pieces.any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=")
                    .map(|r| r.trim_matches('"').split_whitespace().any(|r| r == "next"))
                    .unwrap_or(false)
            });
            if !is_next {
                continue;
            }
            let target = target.trim().trim_start_matches('<').trim_end_matches('>');
            let url = base.join(target).map_err(|e| FetchError::BadUrl {
                url: target.to_string(),
                message: format!("bad Link header from {base}: {e}"),
            })?;
            return Ok(Some(url));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_next_link() {
        let base = Url::parse("https://api.github.com/repos/a/b/releases?per_page=100").unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "<https://api.github.com/repositories/1/releases?per_page=100&page=2>; rel=\"next\", \
                 <https://api.github.com/repositories/1/releases?per_page=100&page=5>; rel=\"last\"",
            ),
        );
        assert_eq!(
            next_link(&h, &base).unwrap().unwrap().as_str(),
            "https://api.github.com/repositories/1/releases?per_page=100&page=2"
        );
        h.insert(
            header::LINK,
            HeaderValue::from_static("<https://api.github.com/x?page=1>; rel=\"first\", <https://api.github.com/x?page=4>; rel=\"prev\""),
        );
        assert_eq!(next_link(&h, &base).unwrap(), None);
        assert_eq!(next_link(&HeaderMap::new(), &base).unwrap(), None);
    }

    #[test]
    fn validates_names_and_redacts_the_token() {
        let api = GithubApi::default().with_token(Some("ghp_secret".into()));
        assert!(api.releases_url("k3s-io", "k3s").is_ok());
        assert!(api.releases_url("k3s-io", "../x").is_err());
        assert!(api.releases_url("", "k3s").is_err());
        assert!(!format!("{api:?}").contains("ghp_secret"));
    }
}
