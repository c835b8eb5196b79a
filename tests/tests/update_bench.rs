//! Benchmark (ignored by default; run by `bench/update/run.sh`): how long
//! `sysext update` takes once the download is done — image check under the
//! node policy (signature and every data block against the root hash),
//! mode/fsync/rename, journal and symlink flip, refresh of the merged set
//! (which on this kernel verifies the image again in user space before
//! mounting it) — for a large image, against `sha256sum` of the same file
//! in the same run (and, for context, `openssl dgst -sha256`, which uses
//! SHA-NI where the CPU has it). The times come from the binary's own
//! `--progress=json` events (`elapsed_us`), from `download-done` to the end
//! of the run.
//!
//! `UPDATE_BENCH_MIB` (default 100) sets the image size, `UPDATE_BENCH_RUNS`
//! (default 5) the repetitions. No assertions on time.

mod update_common;

use std::process::Command;
use std::time::Instant;

use update_common::*;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run bench/update/run.sh"]
fn bench_update_latency_after_download() {
    if !in_private_ns("bench_update_latency_after_download") {
        return;
    }
    let mib: usize = std::env::var("UPDATE_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let runs: usize = std::env::var("UPDATE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let work = tempfile::Builder::new()
        .prefix("upd-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let key = image_key(work.path(), "feed");
    let mut feed = Feed::new(work.path());
    let v1 = build_image(work.path(), "app", "1", Some(&key), &[], 1 << 20);
    feed.publish(&[("app", "1", &v1)], None);
    let node = Node::new(&feed, "app", "app.transfer", &cert_pem(&key));
    node.update_ok(&[]);
    let t = Instant::now();
    let v2 = build_image(work.path(), "app", "2", Some(&key), &[], mib << 20);
    println!(
        "bench: built a {} byte image in {:.1} s",
        std::fs::metadata(&v2).unwrap().len(),
        t.elapsed().as_secs_f64()
    );
    feed.publish(&[("app", "2", &v2)], None);
    let installed = node.p("opt/extensions/app/app-2-x86-64.raw");

    let mut ours = Vec::new();
    let mut sums = Vec::new();
    let mut ossl = Vec::new();
    let mut parts: Vec<[f64; 4]> = Vec::new();
    for i in 0..runs {
        let out = node.sysext(&["update", "--progress=json"]);
        assert!(out.status.success(), "{}", show(&out));
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let at = |name: &str| -> f64 {
            events
                .iter()
                .rev()
                .find(|e| e["event"] == name)
                .and_then(|e| e["elapsed_us"].as_u64())
                .unwrap_or_else(|| panic!("no {name} event:\n{}", show(&out))) as f64
                / 1e6
        };
        let done = at("download-done");
        let end = at("done");
        ours.push(end - done);
        parts.push([
            at("image-verified") - done,
            at("journal-written") - at("image-verified"),
            at("refresh-done") - at("refresh-start"),
            end - done,
        ]);
        assert_eq!(node.merged_version().as_deref(), Some("2"));
        // sha256sum of the same file, page cache as warm as ours was.
        let t = Instant::now();
        let o = Command::new("sha256sum").arg(&installed).output().unwrap();
        sums.push(t.elapsed().as_secs_f64());
        assert!(String::from_utf8_lossy(&o.stdout).starts_with(&feed.published["app-2-x86-64.raw"]));
        // For context: OpenSSL's SHA-256 (uses SHA-NI where the CPU has it;
        // coreutils' sha256sum in Debian 12 does not).
        let t = Instant::now();
        let o = Command::new("openssl")
            .args(["dgst", "-sha256"])
            .arg(&installed)
            .output()
            .unwrap();
        ossl.push(t.elapsed().as_secs_f64());
        assert!(String::from_utf8_lossy(&o.stdout).contains(&feed.published["app-2-x86-64.raw"]));
        println!(
            "bench: run {i}: after-download {:.3} s (check {:.3}, rename+flip {:.3}, refresh {:.3}); sha256sum {:.3} s",
            ours[i], parts[i][0], parts[i][1], parts[i][2], sums[i]
        );
        // Back to version 1, and forget version 2 so it is downloaded again.
        let rb = node.sysext(&["rollback", "app", "--progress=none"]);
        assert!(rb.status.success(), "{}", show(&rb));
        std::fs::remove_file(&installed).unwrap();
        std::fs::remove_file(node.p("var/lib/sysext/update-state.json")).unwrap();
    }
    let o = median(ours);
    let s = median(sums);
    let ossl = median(ossl);
    let col = |k: usize| median(parts.iter().map(|p| p[k]).collect());
    println!(
        "result: {mib} MiB image, median of {runs}: update after download {o:.3} s (image check {:.3} s, rename+flip {:.3} s, refresh {:.3} s); sha256sum {s:.3} s; ratio {:.2}x (vs openssl dgst -sha256 {ossl:.3} s: {:.2}x)",
        col(0),
        col(1),
        col(2),
        o / s,
        o / ossl
    );
}
