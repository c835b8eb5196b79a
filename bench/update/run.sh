#!/usr/bin/env bash
# Benchmark: `sysext update` latency once the download is done (image check
# under the node policy + rename + symlink flip + refresh of the merged set)
# for a large signed DDI, against `sha256sum` of the same file, same run.
# Reports medians and the ratio. Needs root (mounts in a private mount
# namespace, like the tests).
#
# Usage: bench/update/run.sh [SIZE_MIB]     (default 100; RUNS=5 repetitions)
set -euo pipefail
cd "$(dirname "$0")/../.."

size_mib=${1:-100}
runs=${RUNS:-5}
[ "$(id -u)" = 0 ] || { echo "error: run as root (the update mounts in a private mount namespace)" >&2; exit 1; }
for tool in mksquashfs sha256sum openssl unshare; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (squashfs-tools, coreutils, openssl, util-linux)" >&2; exit 1; }
done

log=$(mktemp "${TMPDIR:-/tmp}/update-bench.XXXXXX")
trap 'rm -f "$log"' EXIT
if ! UPDATE_BENCH_MIB=$size_mib UPDATE_BENCH_RUNS=$runs \
  cargo test --release -p integration-tests --test update_bench -- \
  --ignored --nocapture --test-threads=1 >"$log" 2>&1; then
  tail -n 60 "$log" >&2
  echo "error: the benchmark failed (output above)" >&2
  exit 1
fi
grep -E '^(bench|result):' "$log" | sort -u
