//! Serves the look-alike upstreams of the eight recipes on 127.0.0.1 (the
//! same fixture the `recipes` tests use) until stdin closes, for the
//! benchmark in bench/recipes/run.sh and for trying bakery by hand.
//!
//! Usage: recipes_upstream [--pad BYTES] [--latency-ms N] [--bandwidth BYTES_PER_SEC]
//! Prints one `--mirror FROM=TO` rule per line, then `ready`.

#[path = "../tests/recipes_common/mod.rs"]
mod recipes_common;

use std::io::Read;
use std::time::Duration;

fn main() {
    let mut pad = 0usize;
    let mut latency = 0u64;
    let mut bandwidth: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} needs a number"))
        };
        match a.as_str() {
            "--pad" => pad = value() as usize,
            "--latency-ms" => latency = value(),
            "--bandwidth" => bandwidth = Some(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    let fx = recipes_common::Fixture::start(pad);
    fx.up.set_latency(Duration::from_millis(latency));
    fx.up.set_bandwidth(bandwidth);
    for rule in fx.mirror_rules() {
        println!("{rule}");
    }
    println!("ready");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    eprintln!("served {} requests", fx.up.request_count());
}
