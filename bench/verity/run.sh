#!/usr/bin/env bash
# Benchmark: our dm-verity tree builder vs `veritysetup format`, same data,
# same salt and UUID, same run. Checks the outputs are identical, then
# reports median wall times, the time ratio (goal: <= 0.5x), our GB/s, and
# `openssl speed -evp sha256` per-core throughput for context.
#
# Usage: bench/verity/run.sh [SIZE_MIB]     (default 300; RUNS=5 repetitions)
set -euo pipefail
cd "$(dirname "$0")/../.."

size_mib=${1:-300}
runs=${RUNS:-5}
for tool in veritysetup openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (packages cryptsetup-bin, openssl, time)" >&2; exit 1; }
done

cargo build --release --quiet -p signing --example verity_build
ours=target/release/examples/verity_build

work=$(mktemp -d "${TMPDIR:-/tmp}/verity-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
data=$work/data.img
# Random data: incompressible, a multiple of 4096 bytes.
head -c $((size_mib * 1024 * 1024)) /dev/urandom >"$data"
bytes=$(stat -c %s "$data")
salt=$(openssl rand -hex 32)
uuid=$(cat /proc/sys/kernel/random/uuid)
cat "$data" >/dev/null # warm the page cache for both tools

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
minimum() { sort -n | head -1; }

ref_times=() our_times=() ref_cpu=() our_cpu=()
timed() { # timed VAR_WALL VAR_CPU cmd... ; stdout of cmd goes to $work/out
  /usr/bin/time -f '%e %U %S' -o "$work/time" "${@:3}" >"$work/out"
  read -r wall user sys <"$work/time"
  printf -v "$1" '%s' "$wall"
  printf -v "$2" '%s' "$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')"
}
for ((i = 1; i <= runs; i++)); do
  # Interleave the two tools so that load from other processes hits both.
  rm -f "$work/ref.hash" "$work/our.hash"
  timed w c veritysetup format --salt="$salt" --uuid="$uuid" "$data" "$work/ref.hash"
  ref_root=$(awk '/^Root hash:/ {print $3}' "$work/out")
  ref_times+=("$w") ref_cpu+=("$c")
  timed w c "$ours" --salt "$salt" --uuid "$uuid" "$data" "$work/our.hash"
  our_root=$(cat "$work/out")
  our_times+=("$w") our_cpu+=("$c")
  if [ "$ref_root" != "$our_root" ] || ! cmp -s "$work/ref.hash" "$work/our.hash"; then
    echo "error: outputs differ (root $ref_root vs $our_root)" >&2
    exit 1
  fi
done

ref_s=$(printf '%s\n' "${ref_times[@]}" | median)
our_s=$(printf '%s\n' "${our_times[@]}" | median)
ref_best=$(printf '%s\n' "${ref_times[@]}" | minimum)
our_best=$(printf '%s\n' "${our_times[@]}" | minimum)
ref_c=$(printf '%s\n' "${ref_cpu[@]}" | median)
our_c=$(printf '%s\n' "${our_cpu[@]}" | median)
# openssl speed prints e.g. "sha256  1644092.47k" for 4096-byte blocks: 1000s of bytes/s.
ossl_k=$(openssl speed -evp sha256 -bytes 4096 -seconds 3 2>/dev/null | awk '$1 == "sha256" {print $2}' | tr -d k)
cores=$(nproc)
load=$(cut -d' ' -f1-3 /proc/loadavg)

awk -v size="$bytes" -v ref="$ref_s" -v our="$our_s" -v refc="$ref_c" -v ourc="$our_c" \
    -v ossl_k="$ossl_k" -v cores="$cores" -v runs="$runs" -v root="$our_root" -v load="$load" -v refb="$ref_best" -v ourb="$our_best" 'BEGIN {
  per_core = ossl_k * 1000 / 1e9
  ours_gbs = size / our / 1e9
  printf "data:                 %d bytes (%.0f MiB), random, page cache warm; %d runs, medians\n", size, size / 1048576, runs
  printf "machine:              %d cores, load average %s\n", cores, load
  printf "root hash:            %s (hash devices identical: yes)\n", root
  printf "veritysetup format:   %7.3f s wall  %7.3f s CPU  %6.3f GB/s\n", ref, refc, size / ref / 1e9
  printf "ours (%d threads):     %7.3f s wall  %7.3f s CPU  %6.3f GB/s\n", cores, our, ourc, ours_gbs
  printf "time ratio ours/veritysetup: %.3f median, %.3f best of each (goal <= 0.5)\n", our / ref, ourb / refb
  printf "CPU-time ratio ours/veritysetup: %.3f (work done; 1.0 = as efficient)\n", ourc / refc
  printf "openssl speed -evp sha256 (4096-byte blocks): %.3f GB/s per core; %d cores -> %.3f GB/s\n", per_core, cores, per_core * cores
  printf "ours as share of %d-core sha256 throughput: %.0f%% (goal >= 80%%)\n", cores, 100 * ours_gbs / (per_core * cores)
}'
