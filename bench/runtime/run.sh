#!/usr/bin/env bash
# Benchmark of the node runtime (`sysext`, merge-runtime) against the real
# systemd-sysext in the same run, on the same images:
#   - merge and refresh time with 1, 8 and 32 bare squashfs images
#     (median of several runs; ratio = ours / systemd-sysext);
#   - the gap: how long a file from an extension is missing for a reader
#     during refresh (systemd ≤ 259 unmerges, then merges);
#   - the cost of user-space verification per GiB, against
#     `veritysetup verify` on the same data.
# Needs root (mounts, loop devices); everything happens in a private mount
# namespace with --root. Usage: bench/runtime/run.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" != 0 ]; then
  echo "bench/runtime/run.sh must run as root (it mounts images)" >&2
  exit 1
fi
for t in systemd-sysext mksquashfs veritysetup unshare python3; do
  command -v "$t" >/dev/null || { echo "missing tool: $t" >&2; exit 1; }
done
cargo build --release --quiet -p merge-runtime --bin sysext
BIN="$(pwd)/target/release/sysext"
exec unshare --mount --propagation private -- python3 bench/runtime/bench.py "$BIN" "$@"
