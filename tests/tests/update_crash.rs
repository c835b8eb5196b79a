//! Crash safety of `sysext update`: the real binary is killed with SIGKILL
//! at more than 50 points spread over the download, the verification, the
//! rename, the symlink flip, the refresh, the health check and the
//! rollback. After every kill the node must be sound — the current symlink
//! points at a complete image whose sha256 is the published one, no file
//! under a final name is partial, the merged `/usr` shows the old or the
//! new version — and the next `sysext update` must complete.
//!
//! How the kill points are chosen: the binary reports each step as a JSON
//! line on stderr (`--progress=json`, the same event stream that drives
//! its progress display), and the test sends SIGKILL a chosen delay after
//! a chosen event — during the download, a random-ish time after it
//! started, with the server throttled so it takes a while. Nothing in the
//! binary exists for the test's sake (no fault-injection hooks): the kills
//! land at real, racy instants, like a power cut or the OOM killer. Where
//! each kill landed is read back from the events the process managed to
//! write before it died, and the test requires kills in every phase.

mod update_common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use update_common::*;

struct Run {
    child: std::process::Child,
    events: Receiver<Option<serde_json::Value>>,
}

fn spawn(node: &Node, check: &str) -> Run {
    let mut child = Command::new(sysext())
        .arg("--root")
        .arg(node.path())
        .args(["--no-reload", "update", "--progress=json", "--check", check])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(Some(v));
            }
        }
        let _ = tx.send(None);
    });
    Run { child, events: rx }
}

/// Which phase a process was in when it died, from the last event it wrote.
fn phase(last: &serde_json::Value, rolling_back: bool) -> &'static str {
    if rolling_back {
        return "rollback";
    }
    match last["event"].as_str().unwrap_or("") {
        "download-start" | "download-progress" => "download",
        "download-done" => "verify",
        "image-verified" => "rename",
        "installed" | "journal-written" => "flip",
        "link-flipped" | "refresh-start" => "refresh",
        "refresh-done" | "check-start" | "check-passed" | "check-failed" => "health-check",
        "rolling-back" => "rollback",
        _ => "start",
    }
}

/// Kills `run` `delay` after it reports `event`. Returns the phase it died
/// in, or `None` when it finished first (or never reached the event).
fn kill_after(run: Run, event: &str, delay: Duration) -> Option<&'static str> {
    let Run { mut child, events } = run;
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut reached = false;
    while let Ok(Some(v)) = events.recv_timeout(Duration::from_secs(120)) {
        let hit = v["event"] == event;
        seen.push(v);
        if hit {
            reached = true;
            break;
        }
    }
    if reached {
        std::thread::sleep(delay);
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    // Everything it wrote before dying.
    while let Ok(Some(v)) = events.recv_timeout(Duration::from_secs(30)) {
        seen.push(v);
    }
    if status.signal() != Some(9) {
        return None;
    }
    let rolling_back = seen.iter().any(|e| e["event"] == "rolling-back");
    Some(phase(
        seen.last().unwrap_or(&serde_json::Value::Null),
        rolling_back,
    ))
}

/// What must hold after any kill: the link leads to a complete published
/// image of `old` or `new`, every file under a final name is complete, and
/// `/usr` has the extension at `old` or `new`.
fn assert_sound(node: &Node, feed: &Feed, old: &str, new: &str, what: &str) {
    let cur = node
        .current()
        .unwrap_or_else(|| panic!("{what}: the current symlink leads nowhere"));
    let allowed = [image_name("app", old), image_name("app", new)];
    assert!(
        allowed.contains(&cur),
        "{what}: the link points at {cur}, expected one of {allowed:?}"
    );
    let dir = node.p("opt/extensions/app");
    assert_eq!(
        sha256_file(&dir.join(&cur)),
        feed.published[&cur],
        "{what}: current image {cur} is not the published one"
    );
    for f in node.instances() {
        let want = feed
            .published
            .get(&f)
            .unwrap_or_else(|| panic!("{what}: unexpected file {f}"));
        assert_eq!(
            &sha256_file(&dir.join(&f)),
            want,
            "{what}: {f} is incomplete or damaged under its final name"
        );
    }
    let merged = node.merged_version();
    assert!(
        merged.as_deref() == Some(old) || merged.as_deref() == Some(new),
        "{what}: merged version is {merged:?}, expected {old} or {new}"
    );
}

#[test]
fn sigkill_anywhere_leaves_a_sound_node_and_the_next_update_completes() {
    if !in_private_ns("sigkill_anywhere_leaves_a_sound_node_and_the_next_update_completes") {
        return;
    }
    let work = tempfile::Builder::new()
        .prefix("upd-crash")
        .tempdir()
        .unwrap();
    let key = image_key(work.path(), "feed");
    let mut feed = Feed::new(work.path());
    let filler = 1_200_000;
    let v1 = build_image(work.path(), "app", "1", Some(&key), &[], filler);
    feed.publish(&[("app", "1", &v1)], None);
    let node = Node::new(&feed, "app", "app.transfer", &cert_pem(&key));
    node.update_ok(&[]);
    // ~0.4 s per image download.
    feed.upstream.set_bandwidth(Some(3_000_000));

    // Kill points after the download (event, delay in µs).
    let later: &[(&str, u64)] = &[
        ("download-done", 0),
        ("image-verified", 0),
        ("journal-written", 0),
        ("link-flipped", 0),
        ("refresh-start", 0),
        ("download-done", 500),
        ("installed", 0),
        ("refresh-start", 3_000),
        ("check-start", 50_000),
        ("download-done", 2_000),
        ("image-verified", 300),
        ("journal-written", 200),
        ("refresh-start", 8_000),
        ("link-flipped", 1_000),
        ("refresh-done", 0),
        ("installed", 500),
        ("refresh-start", 15_000),
        ("image-verified", 1_000),
        ("refresh-start", 30_000),
        ("journal-written", 1_000),
    ];
    let download_delays_ms = [40u64, 120, 220, 320, 80, 180, 280, 60, 160, 260];
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    let mut kills = 0usize;
    let mut missed = 0usize;
    let mut healthy_current = "1".to_string();
    let mut round = 0usize;
    let mut healthy_rounds = 0usize;
    while kills < 56
        || ["download", "verify", "rename", "flip", "refresh"]
            .iter()
            .any(|p| phases.get(p).copied().unwrap_or(0) < 3)
    {
        round += 1;
        // Which step a kill lands in depends on timing: the short steps
        // (rename, verify) can need more rounds on a loaded machine, so the
        // cap is generous; the loop ends as soon as coverage is reached.
        assert!(
            round <= 120,
            "too many rounds: {kills} kills, phases {phases:?}, {missed} missed"
        );
        let v = (round + 1).to_string();
        // Every fifth version fails its health check and is rolled back.
        let healthy = !round.is_multiple_of(5);
        let check = if healthy {
            "sleep 0.2"
        } else {
            "sleep 0.1; exit 1"
        };
        let img = build_image(work.path(), "app", &v, Some(&key), &[], filler);
        feed.publish(&[("app", &v, &img)], None);
        let old = healthy_current.clone();

        let mut plan: Vec<(&str, Duration)> = vec![(
            "download-start",
            Duration::from_millis(download_delays_ms[round % download_delays_ms.len()]),
        )];
        if healthy {
            let (e, d) = later[healthy_rounds % later.len()];
            healthy_rounds += 1;
            plan.push((e, Duration::from_micros(d)));
        } else {
            // Kill inside the rollback, or just before it.
            let (e, d) = [
                ("rolling-back", 0u64),
                ("check-start", 20_000),
                ("rolling-back", 2_000),
            ][(round / 5) % 3];
            plan.push((e, Duration::from_micros(d)));
        }
        for (i, (event, delay)) in plan.into_iter().enumerate() {
            let what = format!("round {round} (version {v}) kill {i} after {event} + {delay:?}");
            match kill_after(spawn(&node, check), event, delay) {
                Some(p) => {
                    kills += 1;
                    *phases.entry(p).or_default() += 1;
                    println!("{what}: killed in {p}");
                }
                None => {
                    missed += 1;
                    println!("{what}: finished before the kill");
                }
            }
            assert_sound(&node, &feed, &old, &v, &what);
        }
        // The next update completes (finishing what the killed ones left).
        let out = node.sysext(&["--json", "update", "--progress=plain", "--check", check]);
        let r = report(&out);
        let what = format!("round {round}: completing update");
        if healthy {
            assert!(out.status.success(), "{what}:\n{}", show(&out));
            healthy_current = v.clone();
        } else {
            let outcome = field(&r, "outcome").as_str().unwrap().to_string();
            assert!(
                outcome == "rolled-back" || outcome == "up-to-date",
                "{what}: {outcome}\n{}",
                show(&out)
            );
            assert_eq!(
                node.state()["components"]["app"]["failed"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap()["version"],
                v.as_str()
            );
        }
        assert_eq!(
            node.current(),
            Some(image_name("app", &healthy_current)),
            "{what}"
        );
        assert_eq!(
            node.merged_version().as_deref(),
            Some(healthy_current.as_str()),
            "{what}"
        );
        assert!(
            node.state()["components"]["app"]["activating"].is_null(),
            "{what}: journal left behind"
        );
        assert!(
            node.all_target_files().iter().all(|f| !f.starts_with('.')),
            "{what}: temporary files left: {:?}",
            node.all_target_files()
        );
        assert!(
            node.instances().len() <= 3,
            "{what}: {:?}",
            node.instances()
        );
        assert_sound(&node, &feed, &healthy_current, &healthy_current, &what);
    }
    let resumed = feed
        .upstream
        .requests()
        .iter()
        .filter(|q| q.path.ends_with(".raw") && q.range.is_some())
        .count();
    println!("{kills} kills in {round} rounds ({missed} runs finished before their kill); by phase: {phases:?}; {resumed} downloads resumed with Range");
    assert!(resumed > 0, "no interrupted download was resumed");
    assert!(kills >= 50);
    for p in [
        "download",
        "verify",
        "rename",
        "flip",
        "refresh",
        "health-check",
        "rollback",
    ] {
        assert!(
            phases.get(p).copied().unwrap_or(0) >= 1,
            "no kill in phase {p}: {phases:?}"
        );
    }
}
