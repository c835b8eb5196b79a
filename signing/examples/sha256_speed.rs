//! Measures single-core throughput of the sha256 implementations the verity
//! builder could use, on its exact workload: sha256(32-byte salt ‖ 4096-byte
//! block). Used to choose between `sha2` (SHA-NI via runtime detection) and
//! OpenSSL. Run: `cargo run --release -p signing --example sha256_speed`.

use std::time::Instant;

/// CPU time this thread has run, in seconds (robust when other processes
/// compete for the cores, unlike wall time).
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1e9
}

use sha2::Digest;

fn main() {
    let salt = [7u8; 32];
    let data = vec![0xa5u8; 64 << 20];
    let blocks = data.len() / 4096;
    let gbps = |secs: f64| data.len() as f64 / secs / 1e9;

    for round in 0..5 {
        let t = Instant::now();
        let c = thread_cpu();
        let base = sha2::Sha256::new_with_prefix(salt);
        let mut acc = 0u8;
        for b in data.chunks_exact(4096) {
            acc ^= base.clone().chain_update(b).finalize()[0];
        }
        println!("round {round} sha2 (clone of salted state): {:.3} GB/s wall, {:.3} GB/s per CPU-second ({acc})", gbps(t.elapsed().as_secs_f64()), gbps(thread_cpu() - c));

        let t = Instant::now();
        let c = thread_cpu();
        let mut acc = 0u8;
        for b in data.chunks_exact(4096) {
            let mut h = openssl::sha::Sha256::new();
            h.update(&salt);
            h.update(b);
            acc ^= h.finish()[0];
        }
        println!("round {round} openssl SHA256_* (low level):  {:.3} GB/s wall, {:.3} GB/s per CPU-second ({acc})", gbps(t.elapsed().as_secs_f64()), gbps(thread_cpu() - c));

        let t = Instant::now();
        let c = thread_cpu();
        let mut acc = 0u8;
        let md = openssl::hash::MessageDigest::sha256();
        let mut h = openssl::hash::Hasher::new(md).expect("EVP sha256");
        for b in data.chunks_exact(4096) {
            h.update(&salt).expect("update");
            h.update(b).expect("update");
            acc ^= h.finish().expect("finish")[0];
        }
        println!("round {round} openssl EVP (reused ctx):       {:.3} GB/s wall, {:.3} GB/s per CPU-second ({acc})", gbps(t.elapsed().as_secs_f64()), gbps(thread_cpu() - c));
    }
    println!("{blocks} blocks of 4096 bytes per run");
}
