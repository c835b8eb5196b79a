//! Benchmark of the fetcher against the loopback mock upstream with an
//! artificial per-request latency and a per-connection bandwidth cap
//! (`bench/fetch/run.sh`). Eight inputs sized like the eight recipes'
//! largest downloads (scaled down) are fetched cold: sequentially
//! (concurrency 1), in parallel, and the slowest one alone; `curl
//! --parallel` fetching the same URLs in the same run is the reference
//! tool (it hashes nothing). Then a cache-warm run (every input a verified
//! cache hit, no request). Prints medians and ratios.
//!
//! Usage: fetch_bench [--runs N] [--latency-ms MS] [--bandwidth-mib MIB_PER_S]

use std::process::Command;
use std::time::{Duration, Instant};

use bakery::fetch::{Cache, FetchOptions, FetchRequest, Fetcher};
use integration_tests::upstream::Upstream;
use sha2::{Digest, Sha256};
use sysupdate::Sha256Digest;

/// (name, MiB): the eight extensions' biggest inputs, scaled by ~1/4.
const INPUTS: [(&str, usize); 8] = [
    ("rke2.linux-amd64.tar.gz", 24),
    ("docker-27.1.1.tgz", 18),
    ("k3s", 16),
    ("kubelet", 14),
    ("falco-0.38.1-x86_64.tar.gz", 12),
    ("containerd-static-1.7.20-linux-amd64.tar.gz", 10),
    ("wasmtime-v23.0.1-x86_64-linux.tar.xz", 6),
    ("nvidia-container-toolkit_1.16.1_deb_amd64.tar.gz", 4),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str, default: f64) -> f64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} needs a number, got {v:?}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = arg(&args, "--runs", 3.0) as usize;
    let latency = Duration::from_millis(arg(&args, "--latency-ms", 150.0) as u64);
    let bandwidth = (arg(&args, "--bandwidth-mib", 40.0) * 1024.0 * 1024.0) as u64;

    let up = Upstream::start();
    up.set_latency(latency);
    up.set_bandwidth(Some(bandwidth));
    let mut reqs = Vec::new();
    let mut seed = 1u32;
    for (name, mib) in INPUTS {
        // Incompressible bytes, generated cheaply.
        let bytes: Vec<u8> = (0..mib << 20)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 24) as u8
            })
            .collect();
        let digest = Sha256Digest::from_bytes(Sha256::digest(&bytes).into());
        let path = format!("/dl/{name}");
        up.insert(&path, bytes);
        reqs.push(FetchRequest::pinned(&up.url(&path), digest).expect("URL"));
    }
    let total_mib: usize = INPUTS.iter().map(|(_, m)| m).sum();
    println!(
        "inputs: {} files, {total_mib} MiB; latency {latency:?} per request; {:.0} MiB/s per connection; {runs} runs",
        INPUTS.len(),
        bandwidth as f64 / 1048576.0
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let cold = |concurrency: usize, reqs: &[FetchRequest]| -> f64 {
        let cache = tempfile::tempdir().expect("temp cache");
        let f = Fetcher::new(
            Cache::new(cache.path()),
            FetchOptions {
                concurrency,
                ..FetchOptions::default()
            },
        )
        .expect("fetcher");
        let t = Instant::now();
        let out = rt.block_on(f.try_fetch_all(reqs)).expect("fetch");
        let s = t.elapsed().as_secs_f64();
        assert!(out.iter().all(|r| !r.from_cache));
        s
    };

    let (mut seq, mut par, mut single, mut curl, mut warm) =
        (vec![], vec![], vec![], vec![], vec![]);
    let have_curl = Command::new("curl").arg("--version").output().is_ok();
    for _ in 0..runs {
        seq.push(cold(1, &reqs));
        par.push(cold(8, &reqs));
        single.push(cold(1, &reqs[..1]));
        if have_curl {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut cmd = Command::new("curl");
            cmd.args([
                "--silent",
                "--no-progress-meter",
                "--fail",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                "8",
            ])
            .current_dir(dir.path());
            for r in &reqs {
                cmd.arg("--remote-name").arg(r.url.as_str());
            }
            let t = Instant::now();
            let status = cmd.status().expect("run curl");
            curl.push(t.elapsed().as_secs_f64());
            assert!(status.success(), "curl failed");
        }
        // Warm: every input is a verified cache hit.
        let cache = tempfile::tempdir().expect("temp cache");
        let f = Fetcher::new(Cache::new(cache.path()), FetchOptions::default()).expect("fetcher");
        rt.block_on(f.try_fetch_all(&reqs)).expect("fill cache");
        let before = up.request_count();
        let t = Instant::now();
        let out = rt.block_on(f.try_fetch_all(&reqs)).expect("warm fetch");
        warm.push(t.elapsed().as_secs_f64());
        assert!(out.iter().all(|r| r.from_cache));
        assert_eq!(up.request_count(), before, "a warm fetch made requests");
    }
    let (seq, par, single, warm) = (median(seq), median(par), median(single), median(warm));
    println!("sequential (concurrency 1):   {seq:.3} s");
    println!("parallel (concurrency 8):     {par:.3} s");
    println!("slowest input alone:          {single:.3} s");
    if have_curl {
        let c = median(curl);
        println!(
            "curl --parallel (reference):  {c:.3} s   ours/curl = {:.2}",
            par / c
        );
    } else {
        println!("curl not installed: no reference time");
    }
    println!("cache-warm (verified hits):   {warm:.3} s");
    println!(
        "parallel/sequential = {:.2}   (speed-up {:.1}x)",
        par / seq,
        seq / par
    );
    println!(
        "parallel/slowest-single = {:.2}   (goal <= 1.2)",
        par / single
    );
}
