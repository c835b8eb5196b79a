#!/usr/bin/env bash
# Benchmark: the fetcher (parallel, sha256 while streaming, content-addressed
# cache) against a loopback mock upstream with per-request latency and a
# per-connection bandwidth cap. Reports sequential vs parallel, the ratio to
# the slowest single fetch (goal <= 1.2), curl --parallel on the same URLs
# in the same run as the reference, and a cache-warm run.
#
# Usage: bench/fetch/run.sh [--runs N] [--latency-ms MS] [--bandwidth-mib MIB_PER_S]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p integration-tests --example fetch_bench
exec target/release/examples/fetch_bench "$@"
