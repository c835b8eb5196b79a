//! The fetcher against a loopback mock upstream: parallel bounded
//! downloads, digest verification (tampered bytes, wrong checksum files),
//! the content-addressed cache (hits with the server stopped, damaged
//! entries), retries with backoff, resume with Range, mirror rewriting,
//! size limits and the GitHub releases API with pagination.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bakery::fetch::github::GithubApi;
use bakery::fetch::{Cache, Event, FetchError, FetchOptions, FetchRequest, Fetcher, MirrorSet};
use integration_tests::upstream::{Failure, GithubRelease, Upstream};
use sha2::{Digest, Sha256};
use sysupdate::Sha256Digest;

fn digest_of(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::from_bytes(Sha256::digest(bytes).into())
}

/// Deterministic pseudo-random bytes (so resumes splice real content).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn quick_options() -> FetchOptions {
    FetchOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        read_timeout: Duration::from_secs(10),
        ..FetchOptions::default()
    }
}

fn fetcher(cache: &Path, opts: FetchOptions) -> Fetcher {
    Fetcher::new(Cache::new(cache), opts).expect("fetcher")
}

/// Records events for assertions.
fn recorder() -> (bakery::fetch::ProgressSink, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    (
        Arc::new(move |ev: &Event| e.lock().unwrap().push(ev.clone())),
        events,
    )
}

/// Every regular file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_fetch_is_verified_cached_and_bounded() {
    let up = Upstream::start();
    up.set_latency(Duration::from_millis(300));
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("/files/input-{i}.bin"),
                payload(50_000 + i * 1000, i as u8),
            )
        })
        .collect();
    for (p, b) in &files {
        up.insert(p, b.clone());
    }
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(
        cache.path(),
        FetchOptions {
            concurrency: 3,
            ..quick_options()
        },
    );
    let reqs: Vec<FetchRequest> = files
        .iter()
        .map(|(p, b)| FetchRequest::pinned(&up.url(p), digest_of(b)).unwrap())
        .collect();
    let results = f.fetch_all(&reqs).await;
    for ((_, bytes), r) in files.iter().zip(&results) {
        let got = r.as_ref().expect("download succeeds");
        assert!(!got.from_cache);
        assert_eq!(got.digest, digest_of(bytes));
        assert_eq!(std::fs::read(&got.path).unwrap(), *bytes);
        assert_eq!(got.path, Cache::new(cache.path()).path_for(&got.digest));
    }
    // The downloads overlapped, and never more than the limit at once.
    let peak = up.max_in_flight();
    assert!(
        (2..=3).contains(&peak),
        "peak concurrent requests {peak}, want 2..=3"
    );
    assert_eq!(up.request_count(), 6);

    // A second batch is served from the cache: no request at all.
    up.clear_log();
    let again = f.try_fetch_all(&reqs).await.unwrap();
    assert!(again.iter().all(|r| r.from_cache));
    assert_eq!(up.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_requests_download_once() {
    let up = Upstream::start();
    let bytes = payload(10_000, 1);
    up.insert("/a/runc.amd64", bytes.clone());
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path(), quick_options());
    let r = FetchRequest::pinned(&up.url("/a/runc.amd64"), digest_of(&bytes)).unwrap();
    let out = f.try_fetch_all(&[r.clone(), r.clone(), r]).await.unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(up.requests_for("/a/runc.amd64").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_download_is_refused_and_not_cached() {
    let up = Upstream::start();
    let good = payload(40_000, 2);
    let mut evil = good.clone();
    evil[12_345] ^= 0x40;
    up.insert("/v1.30.4/bin/linux/amd64/kubelet", evil.clone());
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path(), quick_options());
    let url = up.url("/v1.30.4/bin/linux/amd64/kubelet");
    let err = f
        .fetch(&FetchRequest::pinned(&url, digest_of(&good)).unwrap())
        .await
        .unwrap_err();
    assert!(err.is_checksum_mismatch(), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&url), "names the URL: {msg}");
    assert!(
        msg.contains(&digest_of(&good).to_hex()),
        "names the expected digest: {msg}"
    );
    assert!(
        msg.contains(&digest_of(&evil).to_hex()),
        "names the actual digest: {msg}"
    );
    // Not retried (a mismatch is not transient), and nothing kept.
    assert_eq!(up.requests_for("/v1.30.4/bin/linux/amd64/kubelet").len(), 1);
    assert_eq!(files_under(cache.path()), Vec::<std::path::PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_checksum_file_is_refused() {
    let up = Upstream::start();
    let bytes = payload(30_000, 3);
    let wrong = digest_of(b"something else");
    up.insert("/k3s/v1.30.4+k3s1/k3s", bytes.clone());
    up.insert(
        "/k3s/v1.30.4+k3s1/sha256sum-amd64.txt",
        format!(
            "{wrong}  k3s\n{}  k3s-airgap-images-amd64.tar\n",
            digest_of(b"x")
        ),
    );
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path(), quick_options());
    let sums = bakery::fetch::parse_url(&up.url("/k3s/v1.30.4+k3s1/sha256sum-amd64.txt")).unwrap();
    let published = f.fetch_checksum(&sums, "k3s").await.unwrap();
    assert_eq!(published, wrong);
    let url = up.url("/k3s/v1.30.4+k3s1/k3s");
    let err = f
        .fetch(&FetchRequest::pinned(&url, published).unwrap())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&url)
            && msg.contains(&wrong.to_hex())
            && msg.contains(&digest_of(&bytes).to_hex()),
        "{msg}"
    );
    assert!(files_under(&cache.path().join("sha256")).is_empty());

    // A checksum list that does not list the file is a clear error.
    let err = f.fetch_checksum(&sums, "k3s-arm64").await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("k3s-arm64") && msg.contains("sha256sum-amd64.txt"),
        "{msg}"
    );
    // And one that is not a checksum file at all.
    up.insert("/bad.sha256", "<html>rate limited</html>\n");
    let err = f
        .fetch_checksum(
            &bakery::fetch::parse_url(&up.url("/bad.sha256")).unwrap(),
            "k3s",
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hit_needs_no_server_and_damage_is_detected() {
    let mut up = Upstream::start();
    let bytes = payload(20_000, 4);
    up.insert("/cni/cni-plugins-linux-amd64-v1.5.1.tgz", bytes.clone());
    let url = up.url("/cni/cni-plugins-linux-amd64-v1.5.1.tgz");
    let cache = tempfile::tempdir().unwrap();
    let req = FetchRequest::pinned(&url, digest_of(&bytes)).unwrap();
    let first = fetcher(cache.path(), quick_options())
        .fetch(&req)
        .await
        .unwrap();
    assert!(!first.from_cache);
    up.stop();

    // A new fetcher (a new process, in effect) with the server gone.
    let f = fetcher(cache.path(), quick_options());
    let (sink, events) = recorder();
    let f = f.with_progress(sink);
    let hit = f.fetch(&req).await.unwrap();
    assert!(hit.from_cache);
    assert_eq!(hit.path, first.path);
    assert!(matches!(
        events.lock().unwrap()[..],
        [Event::CacheHit { .. }]
    ));

    // Damage the cache entry: it is not used; the refetch fails because
    // the server is down, and the damaged bytes are gone.
    let path = first.path.clone();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&path, b"damaged").unwrap();
    let err = f.fetch(&req).await.unwrap_err();
    assert!(matches!(err, FetchError::Network { .. }), "{err}");
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_transient_failures_but_not_404() {
    let up = Upstream::start();
    let bytes = payload(10_000, 5);
    up.insert("/r/file", bytes.clone());
    up.fail_next(Some("/r/file"), Failure::Status(500), 2);
    up.fail_next(Some("/r/file"), Failure::Reset, 1);
    let cache = tempfile::tempdir().unwrap();
    let (sink, events) = recorder();
    let f = fetcher(cache.path(), quick_options()).with_progress(sink);
    let got = f
        .fetch(&FetchRequest::pinned(&up.url("/r/file"), digest_of(&bytes)).unwrap())
        .await
        .unwrap();
    assert_eq!(got.digest, digest_of(&bytes));
    let statuses: Vec<u16> = up
        .requests_for("/r/file")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 500, 0, 200]);
    let retries = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Retrying { .. }))
        .count();
    assert_eq!(retries, 3);

    // 404 is final: one request, a clear error.
    let err = f
        .fetch(&FetchRequest::unpinned(&up.url("/r/missing")).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::Status { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/r/missing"), "{err}");
    assert_eq!(up.requests_for("/r/missing").len(), 1);

    // Giving up after the configured retries.
    up.fail_next(Some("/r/flaky"), Failure::Status(503), 10);
    up.insert("/r/flaky", b"x".to_vec());
    let f = fetcher(
        cache.path(),
        FetchOptions {
            retries: 2,
            ..quick_options()
        },
    );
    let err = f
        .fetch(&FetchRequest::unpinned(&up.url("/r/flaky")).unwrap())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("503") && err.to_string().contains("3 attempts"),
        "{err}"
    );
    assert_eq!(up.requests_for("/r/flaky").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_a_truncated_body_with_range() {
    let up = Upstream::start();
    let bytes = payload(300_000, 6);
    up.insert("/big/rke2.linux-amd64.tar.gz", bytes.clone());
    up.fail_next(
        Some("/big/rke2.linux-amd64.tar.gz"),
        Failure::Truncate(100_000),
        1,
    );
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path(), quick_options());
    let got = f
        .fetch(
            &FetchRequest::pinned(&up.url("/big/rke2.linux-amd64.tar.gz"), digest_of(&bytes))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), bytes);
    let reqs = up.requests_for("/big/rke2.linux-amd64.tar.gz");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    // The client got 100000 bytes (perhaps fewer if the close raced the
    // last segment) and asked only for the rest.
    let range = reqs[1].range.clone().expect("the retry resumes with Range");
    let offset: u64 = range
        .strip_prefix("bytes=")
        .unwrap()
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(offset > 0 && offset <= 100_000, "{range}");
    assert_eq!(reqs[1].status, 206);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_when_the_server_cannot_resume() {
    let up = Upstream::start();
    up.set_ranges(false);
    let bytes = payload(200_000, 7);
    up.insert("/big/file", bytes.clone());
    up.fail_next(Some("/big/file"), Failure::Truncate(50_000), 1);
    let cache = tempfile::tempdir().unwrap();
    let (sink, events) = recorder();
    let f = fetcher(cache.path(), quick_options()).with_progress(sink);
    let got = f
        .fetch(&FetchRequest::pinned(&up.url("/big/file"), digest_of(&bytes)).unwrap())
        .await
        .unwrap();
    assert_eq!(got.size, 200_000);
    let reqs = up.requests_for("/big/file");
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].range.is_some());
    assert_eq!(reqs[1].status, 200);
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::Restarted { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_rules_rewrite_upstream_urls() {
    let up = Upstream::start();
    let bytes = payload(5_000, 8);
    up.insert("/dl.k8s.io/v1.30.4/bin/linux/amd64/kubectl", bytes.clone());
    up.insert(
        "/dl.k8s.io/v1.30.4/bin/linux/amd64/kubectl.sha256",
        digest_of(&bytes).to_hex(),
    );
    // One rule from the "command line", one from a mirror file.
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("mirrors.toml");
    std::fs::write(
        &file,
        format!(
            "[[mirror]]\nfrom = \"https://github.com/\"\nto = \"{}/github.com/\"\n",
            up.base_url()
        ),
    )
    .unwrap();
    let mut mirrors =
        MirrorSet::from_flags(&[format!("https://dl.k8s.io/={}/dl.k8s.io/", up.base_url())])
            .unwrap();
    mirrors.extend(MirrorSet::load(&file).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(
        cache.path(),
        FetchOptions {
            mirrors,
            ..quick_options()
        },
    );
    let sums = bakery::fetch::parse_url("https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubectl.sha256")
        .unwrap();
    let digest = f.fetch_checksum(&sums, "kubectl").await.unwrap();
    let got = f
        .fetch(
            &FetchRequest::pinned("https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubectl", digest)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        got.url.as_str(),
        "https://dl.k8s.io/v1.30.4/bin/linux/amd64/kubectl"
    );
    assert_eq!(
        up.requests_for("/dl.k8s.io/v1.30.4/bin/linux/amd64/kubectl")
            .len(),
        1
    );

    // Errors name the upstream URL and the mirror URL contacted.
    let err = f
        .fetch(
            &FetchRequest::unpinned("https://github.com/k3s-io/k3s/releases/download/v1/k3s")
                .unwrap(),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "https://github.com/k3s-io/k3s/releases/download/v1/k3s (via http://127.0.0.1:"
        ),
        "{msg}"
    );
    assert!(msg.contains("404"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_are_enforced() {
    let up = Upstream::start();
    up.insert("/big", vec![0u8; 5000]);
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(
        cache.path(),
        FetchOptions {
            max_size: 1000,
            ..quick_options()
        },
    );
    let err = f
        .fetch(&FetchRequest::unpinned(&up.url("/big")).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: 1000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/big"));
    assert!(files_under(&cache.path().join("sha256")).is_empty());

    let err = f
        .fetch_text(&bakery::fetch::parse_url(&up.url("/big")).unwrap(), 100)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: 100, .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_fetch_reports_and_caches_the_digest() {
    let up = Upstream::start();
    let bytes = payload(7_000, 9);
    up.insert("/docker/docker-27.1.1.tgz", bytes.clone());
    let cache = tempfile::tempdir().unwrap();
    let f = fetcher(cache.path(), quick_options());
    let got = f
        .fetch(&FetchRequest::unpinned(&up.url("/docker/docker-27.1.1.tgz")).unwrap())
        .await
        .unwrap();
    assert_eq!(got.digest, digest_of(&bytes));
    assert!(Cache::new(cache.path()).contains(&got.digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_releases_paginate_drop_prereleases_and_respect_mirrors() {
    let up = Upstream::start();
    let mut releases = Vec::new();
    for i in (0..7).rev() {
        releases.push(
            GithubRelease::new(&format!("v1.{i}.0")).asset("k3s", "https://github.com/x/k3s"),
        );
        if i == 5 {
            releases.push(GithubRelease::new("v1.6.0-rc1").prerelease());
            releases.push(GithubRelease::new("v1.6.0-draft").draft());
        }
    }
    // Behind a mirror, with Link headers naming the real API host.
    up.github_releases(
        "/api.github.com",
        "k3s-io",
        "k3s",
        releases.clone(),
        2,
        Some("https://api.github.com"),
    );
    let cache = tempfile::tempdir().unwrap();
    let mirrors = MirrorSet::from_flags(&[format!(
        "https://api.github.com/={}/api.github.com/",
        up.base_url()
    )])
    .unwrap();
    let f = fetcher(
        cache.path(),
        FetchOptions {
            mirrors,
            ..quick_options()
        },
    );
    let api = GithubApi::default().with_token(Some("ghp_test_token".into()));
    let got = api.list_releases(&f, "k3s-io", "k3s").await.unwrap();
    let tags: Vec<&str> = got.iter().map(|r| r.tag_name.as_str()).collect();
    assert_eq!(
        tags,
        ["v1.6.0", "v1.5.0", "v1.4.0", "v1.3.0", "v1.2.0", "v1.1.0", "v1.0.0"]
    );
    assert_eq!(got[0].assets[0].name, "k3s");
    let pages = up.requests_for("/api.github.com/repos/k3s-io/k3s/releases");
    assert_eq!(pages.len(), 5, "9 releases at 2 per page");
    // The token is never sent to a mirror.
    assert!(pages.iter().all(|r| r.authorization.is_none()), "{pages:?}");

    // Talking to the API host directly, the token is sent on every page.
    up.github_releases("/", "rancher", "rke2", releases, 4, None);
    let api = GithubApi::default()
        .with_base(&up.base_url())
        .unwrap()
        .with_token(Some("ghp_test_token".into()));
    let f = fetcher(cache.path(), quick_options());
    let got = api.list_releases(&f, "rancher", "rke2").await.unwrap();
    assert_eq!(got.len(), 7);
    let pages = up.requests_for("/repos/rancher/rke2/releases");
    assert_eq!(pages.len(), 3);
    assert!(pages
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer ghp_test_token")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_response_times_out_and_is_retried() {
    let up = Upstream::start();
    let bytes = payload(8_000, 10);
    up.insert("/slow/file", bytes.clone());
    up.fail_next(
        Some("/slow/file"),
        Failure::Stall(Duration::from_secs(3)),
        1,
    );
    let cache = tempfile::tempdir().unwrap();
    let (sink, events) = recorder();
    let f = fetcher(
        cache.path(),
        FetchOptions {
            read_timeout: Duration::from_millis(300),
            ..quick_options()
        },
    )
    .with_progress(sink);
    let got = f
        .fetch(&FetchRequest::pinned(&up.url("/slow/file"), digest_of(&bytes)).unwrap())
        .await
        .unwrap();
    assert_eq!(got.size, 8_000);
    assert_eq!(up.requests_for("/slow/file").len(), 2);
    let reasons: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Retrying { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains("timed out") || reasons[0].contains("no data"),
        "{reasons:?}"
    );
}
