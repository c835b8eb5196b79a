#!/usr/bin/env bash
# Benchmark: all eight recipes (kubernetes-v1.30, k3s-v1.30, rke2-v1.30,
# containerd, docker, nvidia-runtime, wasmtime, falco; x86-64 and arm64)
# built cold from the loopback look-alike upstreams (the fixture of
# tests/tests/recipes.rs, served by the example `recipes_upstream`) with a
# per-request latency and a per-connection bandwidth cap, through --mirror.
#
# Reports, in one run on the same server and locks:
#   - sequential fetching (--jobs 1) vs parallel (--jobs $JOBS): ratio;
#   - parallel total vs the slowest single recipe built alone (cold, same
#     settings): ratio, goal <= 1.2;
#   - a repeated build with recipe, lock and options unchanged (must
#     notice the outputs exist and rebuild nothing): seconds, goal < 1;
#   - a cache-warm rebuild after deleting the output directory: seconds.
# Every build is from the lock files (written first by `bakery lock`, not
# timed), and sequential and parallel outputs are compared byte for byte.
#
# Usage: bench/recipes/run.sh
# Environment: PAD_MIB (padding per executable, default 2), LATENCY_MS
# (default 100), BW_MIB (MiB/s per connection, default 8), JOBS (default 16),
# COMPRESSION (squashfs compressor, default zstd), PROFILE (release or dev,
# default release).
set -euo pipefail
cd "$(dirname "$0")/../.."

pad_mib=${PAD_MIB:-2}
latency_ms=${LATENCY_MS:-100}
bw_mib=${BW_MIB:-8}
jobs=${JOBS:-16}
compression=${COMPRESSION:-zstd}
profile=${PROFILE:-release}

if [ "$profile" = release ]; then
  cargo build --release --quiet -p bakery --bin bakery -p integration-tests --example recipes_upstream
  dir=target/release
else
  cargo build --quiet -p bakery --bin bakery -p integration-tests --example recipes_upstream
  dir=target/debug
fi
bakery="$PWD/$dir/bakery"
server="$PWD/$dir/examples/recipes_upstream"

work=$(mktemp -d)
cleanup() {
  exec 3>&- 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkfifo "$work/ctl"
"$server" --pad $((pad_mib << 20)) --latency-ms "$latency_ms" --bandwidth $((bw_mib << 20)) \
  <"$work/ctl" >"$work/rules" 2>"$work/server.log" &
exec 3>"$work/ctl"
for _ in $(seq 600); do
  grep -qx ready "$work/rules" 2>/dev/null && break
  sleep 0.1
done
grep -qx ready "$work/rules" || { echo "the mock upstream did not start" >&2; exit 1; }
mirrors=()
while read -r rule; do
  [ "$rule" = ready ] && break
  mirrors+=(--mirror "$rule")
done <"$work/rules"

cp -r recipes "$work/recipes"
rm -f "$work"/recipes/*/*.lock
targets=(kubernetes-v1.30 k3s-v1.30 rke2-v1.30 containerd docker nvidia-runtime wasmtime falco)
export XDG_CONFIG_HOME="$work/config" SOURCE_DATE_EPOCH=1700000000
unset GITHUB_TOKEN

b() { "$bakery" "$@" --recipes-dir "$work/recipes" "${mirrors[@]}"; }
now() { date +%s.%N; }
# timed NAME ARGS…: runs `bakery build ARGS…`, records seconds in $t_NAME.
timed() {
  local name=$1
  shift
  local s e
  s=$(now)
  if ! b build "$@" --compression "$compression" >"$work/$name.log" 2>&1; then
    echo "bakery build $* failed:" >&2
    cat "$work/$name.log" >&2
    exit 1
  fi
  e=$(now)
  printf -v "t_$name" '%s' "$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }')"
}

echo "locking the eight recipes (not timed)…"
b lock "${targets[@]}" --cache-dir "$work/lock-cache" >"$work/lock.log" 2>&1 || { cat "$work/lock.log" >&2; exit 1; }

echo "cold, sequential fetching (--jobs 1)…"
timed seq "${targets[@]}" --jobs 1 --cache-dir "$work/c-seq" -o "$work/o-seq"
echo "cold, parallel fetching (--jobs $jobs)…"
timed par "${targets[@]}" --jobs "$jobs" --cache-dir "$work/c-par" -o "$work/o-par"
slowest=0
slowest_name=
for t in "${targets[@]}"; do
  echo "cold, $t alone…"
  timed single "$t" --jobs "$jobs" --cache-dir "$work/c-$t" -o "$work/o-$t"
  if awk -v a="$t_single" -v b="$slowest" 'BEGIN { exit !(a > b) }'; then
    slowest=$t_single
    slowest_name=$t
  fi
  printf '  %-18s %8.3f s\n' "$t" "$t_single"
done
echo "repeated build, nothing changed…"
timed noop "${targets[@]}" --jobs "$jobs" --cache-dir "$work/c-par" -o "$work/o-par"
grep -c "up to date" "$work/noop.log" | grep -qx 8 || { echo "the repeated build rebuilt something:" >&2; cat "$work/noop.log" >&2; exit 1; }
echo "cache-warm rebuild after deleting the output…"
rm -rf "$work/o-par.keep"
mv "$work/o-par" "$work/o-par.keep"
timed warm "${targets[@]}" --jobs "$jobs" --cache-dir "$work/c-par" -o "$work/o-par"

# Same bytes whichever way they were fetched.
for f in "$work"/o-seq/*.raw; do
  cmp -s "$f" "$work/o-par/$(basename "$f")" || { echo "differs: $(basename "$f")" >&2; exit 1; }
  cmp -s "$f" "$work/o-par.keep/$(basename "$f")" || { echo "differs after warm rebuild: $(basename "$f")" >&2; exit 1; }
done
images=$(ls "$work"/o-par/*.raw | wc -l)
bytes=$(du -sb "$work/c-par" | cut -f1)

echo
echo "recipes benchmark: ${#targets[@]} recipes, $images images, $((bytes >> 20)) MiB downloaded per cold run"
echo "upstream: latency ${latency_ms} ms per request, ${bw_mib} MiB/s per connection, executables padded by ${pad_mib} MiB"
echo "images: $compression; profile $profile; $(nproc) cores"
printf '  %-44s %8.3f s\n' "cold, sequential fetching (--jobs 1)" "$t_seq"
printf '  %-44s %8.3f s\n' "cold, parallel fetching (--jobs $jobs)" "$t_par"
printf '  %-44s %8.3f s  (%s)\n' "slowest single recipe alone" "$slowest" "$slowest_name"
printf '  %-44s %8.3f s  (goal < 1 s)\n' "repeated build, unchanged" "$t_noop"
printf '  %-44s %8.3f s\n' "cache-warm rebuild after deleting output" "$t_warm"
awk -v s="$t_seq" -v p="$t_par" -v m="$slowest" -v w="$t_warm" 'BEGIN {
  printf "  ratio sequential / parallel:            %6.2fx\n", s / p
  printf "  ratio parallel / slowest single:        %6.2fx  (goal <= 1.2)\n", p / m
  printf "  ratio parallel cold / cache-warm rebuild: %5.2fx  (1.0 = every download hidden behind builds)\n", p / w
}'
