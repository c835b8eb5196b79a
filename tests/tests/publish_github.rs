//! Publishing a feed to GitHub Releases, against the loopback mock in
//! `integration_tests::github`: re-runs change nothing, adding a version
//! never exposes a manifest naming a missing asset, a failure injected at
//! every step (once, or as a crash) leaves a feed that verifies or is
//! verifiably stale inside the documented window and is repaired by the
//! next run, rate limits are waited out (bounded), pagination, servers
//! without digests, name rewriting and immutability.

mod publish_common;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::github::{files_of, Fault, FaultKind, MockGithub, MockRelease, RateLimit};
use publish_common::*;
use releases::github::{
    publish_github, Client, GithubConfig, GithubError, GithubTarget, RetryPolicy, Token,
};
use releases::{
    publish_dir, ImageToPublish, ManifestSigner, OpenPgpSigner, PublishOptions, Retention,
};
use sysupdate::Arch;

const TOKEN: &str = "ghp_test_token_never_printed";

struct Env {
    mock: MockGithub,
    client: Client,
    target: GithubTarget,
    signer: OpenPgpSigner,
    work: tempfile::TempDir,
    feed: PathBuf,
    sleeps: Arc<Mutex<Vec<Duration>>>,
}

fn env() -> Env {
    let mock = MockGithub::start("acme", "feeds", TOKEN);
    let sleeps = Arc::new(Mutex::new(Vec::new()));
    let rec = sleeps.clone();
    let cfg = GithubConfig {
        api_url: mock.url(),
        token: Some(Token::new(TOKEN)),
        user_agent: "publish-test".into(),
        retry: RetryPolicy {
            max_attempts: 4,
            max_wait: Duration::from_secs(120),
            backoff: Duration::from_millis(1),
        },
        // Record waits instead of sleeping.
        sleep: Arc::new(move |d| rec.lock().unwrap().push(d)),
        timeout: Duration::from_secs(30),
    };
    let client = Client::new(cfg).unwrap();
    let mut target = GithubTarget::new("acme/feeds".parse().unwrap());
    target.web_url = mock.url();
    let work = tempfile::tempdir().unwrap();
    let feed = work.path().join("feed");
    Env {
        mock,
        client,
        target,
        signer: signer(),
        work,
        feed,
        sleeps,
    }
}

impl Env {
    fn publish_local(&self, imgs: &[ImageToPublish], keep: usize) {
        let mut o = PublishOptions::new(self.target.feed_url().unwrap(), &self.signer);
        o.retention = Retention {
            keep_per_stream: NonZeroUsize::new(keep).unwrap(),
        };
        publish_dir(&self.feed, imgs, &o).unwrap();
    }

    fn img(&self, name: &str, v: &str, a: Arch) -> ImageToPublish {
        image(self.work.path(), name, v, a)
    }

    /// Local files of one extension (or the catalogue) — what the release
    /// must hold.
    fn local(&self, tag: &str) -> BTreeMap<String, Vec<u8>> {
        let (dir, only): (PathBuf, Option<&[&str]>) = if tag == "catalogue" {
            (
                self.feed.clone(),
                Some(&["catalogue.json", "catalogue.json.gpg"]),
            )
        } else {
            (self.feed.join(tag), None)
        };
        names(&dir)
            .into_iter()
            .filter(|n| only.is_none_or(|o| o.contains(&n.as_str())))
            .filter(|n| dir.join(n).is_file())
            .map(|n| {
                let b = std::fs::read(dir.join(&n)).unwrap();
                (n, b)
            })
            .collect()
    }

    /// Downloads the pair over the public URLs and checks it with gpg, then
    /// every entry's bytes.
    fn verify_remote(&self, tag: &str) {
        let base = format!("{}/acme/feeds/releases/download/{tag}/", self.mock.url());
        let get = |n: &str| -> Option<Vec<u8>> {
            let r = reqwest::blocking::get(format!("{base}{}", n.replace('+', "%2B"))).unwrap();
            r.status().is_success().then(|| r.bytes().unwrap().to_vec())
        };
        let (sums, sig) = if tag == "catalogue" {
            (
                get("catalogue.json").unwrap(),
                get("catalogue.json.gpg").unwrap(),
            )
        } else {
            (get("SHA256SUMS").unwrap(), get("SHA256SUMS.gpg").unwrap())
        };
        assert!(
            gpg_verify(&self.signer.public_keyring(), &sums, &sig),
            "{tag}: gpg --verify fails"
        );
        if tag != "catalogue" {
            let st = check_pair(tag, &self.signer, Some(&sums), Some(&sig), &|n| get(n));
            assert!(matches!(st, PairState::Good { .. }), "{st:?}");
        }
    }

    fn assert_mirrors_local(&self, tags: &[&str]) {
        let st = self.mock.state();
        for tag in tags {
            let remote = st.files(tag);
            assert_eq!(
                remote.keys().collect::<Vec<_>>(),
                self.local(tag).keys().collect::<Vec<_>>(),
                "{tag}: assets differ from the local feed"
            );
            assert_eq!(remote, self.local(tag), "{tag}: contents differ");
            let all = st
                .releases
                .iter()
                .filter(|r| r.tag == *tag)
                .flat_map(|r| r.assets.iter())
                .count();
            assert_eq!(
                all,
                remote.len(),
                "{tag}: debris left (broken or temporary assets)"
            );
        }
    }
}

/// Checks every state the mock went through: a manifest that verifies
/// never names a missing or different asset. Returns how many states had a
/// verifying manifest.
fn check_history(
    history: &[(usize, String, Vec<MockRelease>)],
    tags: &[&str],
    s: &dyn ManifestSigner,
) -> usize {
    let mut good = 0;
    for (n, what, releases) in history {
        for tag in tags {
            let files = files_of(releases, tag);
            if *tag == "catalogue" {
                // Not a manifest: only its signature is checked.
                if let (Some(d), Some(g)) =
                    (files.get("catalogue.json"), files.get("catalogue.json.gpg"))
                {
                    if s.verify_detached(d, g) {
                        good += 1;
                    }
                }
                continue;
            }
            let (a, b) = ("SHA256SUMS", "SHA256SUMS.gpg");
            let st = check_pair(
                &format!("after mutation #{n} ({what}), release {tag}"),
                s,
                files.get(a).map(|v| v.as_slice()),
                files.get(b).map(|v| v.as_slice()),
                &|name| files.get(name).cloned(),
            );
            if matches!(st, PairState::Good { .. }) {
                good += 1;
            }
        }
    }
    good
}

#[test]
fn publishing_twice_changes_nothing_and_the_feed_verifies() {
    let e = env();
    e.publish_local(
        &[
            e.img("k3s", "v1.30.4+k3s1", Arch::X86_64),
            e.img("k3s", "v1.30.4+k3s1", Arch::Arm64),
            e.img("wasmtime", "25.0.1", Arch::X86_64),
        ],
        3,
    );
    let r1 = publish_github(&e.client, &e.feed, &e.target).unwrap();
    assert!(!r1.is_noop());
    e.assert_mirrors_local(&["k3s", "wasmtime", "catalogue"]);
    for t in ["k3s", "wasmtime", "catalogue"] {
        e.verify_remote(t);
    }
    let mutations = e.mock.state().mutations;
    let r2 = publish_github(&e.client, &e.feed, &e.target).unwrap();
    assert!(r2.is_noop(), "{r2:#?}");
    assert_eq!(
        e.mock.state().mutations,
        mutations,
        "a re-run changed something"
    );
    // '+' in names survived (uploaded percent-encoded).
    assert!(e
        .mock
        .state()
        .files("k3s")
        .contains_key("k3s-v1.30.4+k3s1-arm64.raw"));
    // The token never appears in what the client logs or reports.
    assert!(!format!("{r1:?}{:?}", e.client.config()).contains(TOKEN));
}

fn v1_then_v2(e: &Env) -> (Vec<MockRelease>, u64) {
    e.publish_local(&[e.img("docker", "27.3.0", Arch::X86_64)], 1);
    publish_github(&e.client, &e.feed, &e.target).unwrap();
    let st = e.mock.state();
    let saved = (st.releases.clone(), st.next_id);
    drop(st);
    e.publish_local(&[e.img("docker", "27.3.1", Arch::X86_64)], 1);
    saved
}

fn reset(e: &Env, saved: &(Vec<MockRelease>, u64), fault: Option<Fault>) {
    let mut st = e.mock.state();
    st.releases = saved.0.clone();
    st.next_id = saved.1;
    st.mutations = 0;
    st.history.clear();
    st.log.clear();
    st.fault = fault;
}

#[test]
fn adding_a_version_never_exposes_a_missing_asset() {
    let e = env();
    let saved = v1_then_v2(&e);
    reset(&e, &saved, None);
    let r = publish_github(&e.client, &e.feed, &e.target).unwrap();
    let docker = &r.releases[0];
    assert_eq!(docker.uploaded, ["docker-27.3.1-x86-64.raw"]);
    assert_eq!(docker.deleted, ["docker-27.3.0-x86-64.raw"]);
    assert!(docker.replaced.contains(&"SHA256SUMS".to_string()));
    let st = e.mock.state();
    let history = st.history.clone();
    drop(st);
    let good = check_history(&history, &["docker", "catalogue"], &e.signer);
    assert!(
        history.len() > 10 && good > history.len(),
        "{} states, {good} verified",
        history.len()
    );
    e.assert_mirrors_local(&["docker", "catalogue"]);
    e.verify_remote("docker");
}

/// Mutations (by description) inside which a manifest pair is being
/// swapped: from deleting the old signature to renaming the new manifest
/// into place. Only these states may lack a verifying pair.
fn in_documented_window(history: &[(usize, String, Vec<MockRelease>)]) -> bool {
    let Some((_, last, _)) = history.last() else {
        return false;
    };
    let swap = |sig: &str, data: &str| {
        last.ends_with(&format!("/{sig}"))
            || last.ends_with(&format!("{sig}.upload-tmp -> {sig}"))
            || last.ends_with(&format!("/{data}")) && last.starts_with("delete")
    };
    swap("SHA256SUMS.gpg", "SHA256SUMS") || swap("catalogue.json.gpg", "catalogue.json")
}

#[test]
fn a_failure_at_every_step_leaves_a_feed_that_verifies_and_a_rerun_repairs() {
    let e = env();
    let saved = v1_then_v2(&e);
    reset(&e, &saved, None);
    publish_github(&e.client, &e.feed, &e.target).unwrap();
    let steps = e.mock.state().mutations;
    assert!(steps >= 15, "only {steps} mutations in a publish");
    let tags = ["docker", "catalogue"];
    let mut refused_in_window = 0;
    for at in 1..=steps {
        for kind in [
            FaultKind::BeforeApply,
            FaultKind::AfterApply,
            FaultKind::BreakMidUpload,
        ] {
            // Once: the publisher retries or reconciles and finishes.
            reset(
                &e,
                &saved,
                Some(Fault {
                    at,
                    kind,
                    persistent: false,
                }),
            );
            let r = publish_github(&e.client, &e.feed, &e.target);
            let st = e.mock.state();
            let (history, log) = (st.history.clone(), st.log.clone());
            drop(st);
            assert!(
                r.is_ok(),
                "fault {kind:?} once at #{at}: {:?}\n{}",
                r.err(),
                log.join("\n")
            );
            check_history(&history, &tags, &e.signer);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                e.assert_mirrors_local(&tags)
            }));
            assert!(
                ok.is_ok(),
                "fault {kind:?} once at #{at}:\n{}",
                log.join("\n")
            );
            for t in tags {
                e.verify_remote(t);
            }

            // A crash at that step: everything from it on fails.
            reset(
                &e,
                &saved,
                Some(Fault {
                    at,
                    kind,
                    persistent: true,
                }),
            );
            let r = publish_github(&e.client, &e.feed, &e.target);
            assert!(r.is_err(), "crash at #{at} ({kind:?}) went unnoticed");
            let st = e.mock.state();
            let history = st.history.clone();
            let now = st.releases.clone();
            drop(st);
            check_history(&history, &tags, &e.signer);
            for tag in tags {
                let files = files_of(&now, tag);
                let pair = if tag == "catalogue" {
                    match (files.get("catalogue.json"), files.get("catalogue.json.gpg")) {
                        (Some(d), Some(g)) if e.signer.verify_detached(d, g) => {
                            PairState::Good { entries: 0 }
                        }
                        _ => PairState::Refused("catalogue pair missing or not verifying".into()),
                    }
                } else {
                    let (a, b) = ("SHA256SUMS", "SHA256SUMS.gpg");
                    check_pair(
                        tag,
                        &e.signer,
                        files.get(a).map(|v| v.as_slice()),
                        files.get(b).map(|v| v.as_slice()),
                        &|n| files.get(n).cloned(),
                    )
                };
                if let PairState::Refused(why) = pair {
                    assert!(
                        in_documented_window(&history),
                        "crash at #{at} ({kind:?}) left {tag} refused ({why}) outside the swap window; last: {:?}",
                        history.last().map(|h| &h.1)
                    );
                    refused_in_window += 1;
                }
            }
            // The next run repairs everything.
            e.mock.state().fault = None;
            publish_github(&e.client, &e.feed, &e.target)
                .unwrap_or_else(|err| panic!("re-run after crash at #{at}: {err}"));
            e.assert_mirrors_local(&tags);
            for t in tags {
                e.verify_remote(t);
            }
        }
    }
    // The window exists (GitHub cannot swap two assets atomically) and the
    // test saw it: 3 states per pair, BeforeApply/BreakMidUpload/AfterApply.
    assert!(refused_in_window > 0);
}

#[test]
fn rate_limits_are_waited_out_within_bounds() {
    let e = env();
    e.publish_local(&[e.img("docker", "27.3.1", Arch::X86_64)], 3);
    e.mock.state().rate_limits = vec![
        RateLimit::Primary { secs: 2 },
        RateLimit::Secondary { secs: 3 },
        RateLimit::TooMany { secs: 1 },
    ];
    publish_github(&e.client, &e.feed, &e.target).unwrap();
    e.assert_mirrors_local(&["docker", "catalogue"]);
    let sleeps = e.sleeps.lock().unwrap().clone();
    assert!(
        sleeps.contains(&Duration::from_secs(3)) && sleeps.contains(&Duration::from_secs(1)),
        "{sleeps:?}"
    );
    assert!(
        sleeps.iter().any(|d| (2..=4).contains(&d.as_secs())),
        "{sleeps:?}"
    );

    // A reset an hour away is more than we wait: a clear error at once.
    e.mock.state().rate_limits = vec![RateLimit::Primary { secs: 3600 }];
    let err = publish_github(&e.client, &e.feed, &e.target).unwrap_err();
    assert!(matches!(err, GithubError::RateLimited { .. }), "{err}");
    assert!(err.to_string().contains("rate limited"), "{err}");
}

#[test]
fn many_assets_are_paginated_and_servers_without_digests_work() {
    let e = env();
    {
        let mut st = e.mock.state();
        st.max_per_page = 2;
        st.report_digest = false;
    }
    let imgs: Vec<_> = ["1.0", "1.1", "1.2"]
        .iter()
        .flat_map(|v| {
            [
                e.img("wasmtime", v, Arch::X86_64),
                e.img("wasmtime", v, Arch::Arm64),
            ]
        })
        .collect();
    e.publish_local(&imgs, 3);
    publish_github(&e.client, &e.feed, &e.target).unwrap();
    assert!(e.mock.state().files("wasmtime").len() > 10);
    let m = e.mock.state().mutations;
    let r = publish_github(&e.client, &e.feed, &e.target).unwrap();
    assert!(r.is_noop(), "{r:#?}");
    assert_eq!(e.mock.state().mutations, m);
    assert!(
        e.mock.state().log.iter().any(|l| l.contains("/_storage/")),
        "digests were not checked by download"
    );
    e.assert_mirrors_local(&["wasmtime", "catalogue"]);
    e.verify_remote("wasmtime");
}

#[test]
fn published_images_are_immutable_and_renamed_names_are_refused() {
    let e = env();
    e.publish_local(&[e.img("docker", "27.3.1", Arch::X86_64)], 3);
    publish_github(&e.client, &e.feed, &e.target).unwrap();
    // Someone replaced the image asset's bytes.
    {
        let mut st = e.mock.state();
        let r = st.releases.iter_mut().find(|r| r.tag == "docker").unwrap();
        let a = r
            .assets
            .iter_mut()
            .find(|a| a.name.ends_with(".raw"))
            .unwrap();
        a.bytes = b"other".to_vec();
    }
    let err = publish_github(&e.client, &e.feed, &e.target).unwrap_err();
    assert!(matches!(err, GithubError::ImmutableChanged { .. }), "{err}");
    assert!(
        err.to_string().contains("docker-27.3.1-x86-64.raw"),
        "{err}"
    );

    // GitHub rewrites some characters; the client notices.
    let rel = e
        .client
        .release_by_tag(&e.target.repo, "docker")
        .unwrap()
        .unwrap();
    let p = e.work.path().join("x");
    std::fs::write(&p, b"x").unwrap();
    let err = e.client.upload_asset(&rel, "a b~1.raw", &p).unwrap_err();
    assert!(
        matches!(err, GithubError::AssetRenamed { ref got, .. } if got == "a.b.1.raw"),
        "{err}"
    );
}

#[test]
fn a_bad_token_is_a_clear_error_without_the_token() {
    let e = env();
    e.publish_local(&[e.img("docker", "27.3.1", Arch::X86_64)], 3);
    let mut cfg = e.client.config().clone();
    cfg.token = Some(Token::new("wrong-token-value"));
    let c = Client::new(cfg).unwrap();
    let err = publish_github(&c, &e.feed, &e.target).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("401") && msg.contains("Bad credentials"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-token-value"), "{msg}");
}

#[test]
fn provenance_releases_keep_every_version_ever_published() {
    let mut e = env();
    e.target.provenance = true;
    e.publish_local(
        &[
            e.img("docker", "27.3.0", Arch::X86_64),
            e.img("docker", "27.3.0", Arch::Arm64),
        ],
        1,
    );
    publish_github(&e.client, &e.feed, &e.target).unwrap();
    e.publish_local(&[e.img("docker", "27.3.1", Arch::X86_64)], 1);
    publish_github(&e.client, &e.feed, &e.target).unwrap();
    let st = e.mock.state();
    // The rolling feed retired 27.3.0 on x86-64 ...
    assert!(!st.files("docker").contains_key("docker-27.3.0-x86-64.raw"));
    // ... its provenance release still has both architectures.
    assert_eq!(
        st.files("docker-27.3.0").keys().collect::<Vec<_>>(),
        ["docker-27.3.0-arm64.raw", "docker-27.3.0-x86-64.raw"]
    );
    assert_eq!(
        st.files("docker-27.3.1").keys().collect::<Vec<_>>(),
        ["docker-27.3.1-x86-64.raw"]
    );
    let m = st.mutations;
    drop(st);
    assert!(publish_github(&e.client, &e.feed, &e.target)
        .unwrap()
        .is_noop());
    assert_eq!(e.mock.state().mutations, m);
    e.assert_mirrors_local(&["docker", "catalogue"]);
}
