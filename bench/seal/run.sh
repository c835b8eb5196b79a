#!/usr/bin/env bash
# Benchmark: what sealing adds to `bakery build`, against the reference
# tools doing the same job in the same run.
#
# A recipe with SIZE_MIB of incompressible data is built with
# `bakery build --format bare` (squashfs only), `--format sidecar` and
# `--format ddi` (both signed). The sealing cost is the difference to the
# bare build. The reference seals the bare image with
# `veritysetup format` (same salt and UUID as ours, output compared) and
# `openssl smime -sign` (the detached PKCS#7 systemd-repart makes).
# Reports median wall times and the ratio of our sealing cost to the
# reference's (goal: <= 1x; the verity tree alone is benchmarked by
# bench/verity/run.sh).
#
# Usage: bench/seal/run.sh [SIZE_MIB]     (default 300; RUNS=3 repetitions)
set -euo pipefail
cd "$(dirname "$0")/../.."

size_mib=${1:-300}
runs=${RUNS:-3}
for tool in veritysetup openssl /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (packages cryptsetup-bin, openssl, time)" >&2; exit 1; }
done

cargo build --release --quiet -p bakery --bin bakery
bakery=${CARGO_TARGET_DIR:-target}/release/bakery

work=$(mktemp -d "${TMPDIR:-/var/tmp}/seal-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
recipe=$work/recipe
mkdir -p "$recipe/files/usr/share/sealbench"
cat >"$recipe/recipe.toml" <<'EOF'
name = "sealbench"
version = "1.0.0"
description = "sealing benchmark"
os = "_any"
architectures = ["x86-64"]
EOF
per=$(( (size_mib + 9) / 10 ))
for i in $(seq 0 9); do
  head -c $((per * 1024 * 1024)) /dev/urandom >"$recipe/files/usr/share/sealbench/data$i.bin"
done
"$bakery" keygen --out "$work/keys" --name "seal bench" >/dev/null

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() { # timed VAR cmd...
  /usr/bin/time -f '%e' -o "$work/time" "${@:2}" >"$work/out" 2>"$work/err" || {
    cat "$work/err" >&2; exit 1; }
  printf -v "$1" '%s' "$(cat "$work/time")"
}

bare=() sidecar=() ddi=() verity=() sign=()
for ((i = 1; i <= runs; i++)); do
  rm -rf "$work/out-"*
  timed w "$bakery" build "$recipe" -o "$work/out-bare" --format bare; bare+=("$w")
  timed w "$bakery" build "$recipe" -o "$work/out-sidecar" --format sidecar --key "$work/keys/signing.key"; sidecar+=("$w")
  timed w "$bakery" build "$recipe" -o "$work/out-ddi" --key "$work/keys/signing.key"; ddi+=("$w")

  # Reference: seal the bare image with the same salt and UUID as ours.
  img=$work/out-bare/sealbench-1.0.0-x86-64.raw
  ours=$work/out-sidecar/sealbench-1.0.0-x86-64
  cmp -s "$img" "$ours.raw" || { echo "error: bare and sidecar filesystems differ" >&2; exit 1; }
  veritysetup dump "$ours.verity" >"$work/dump"
  salt=$(awk '/^Salt:/ {print $2}' "$work/dump")
  uuid=$(awk '/^UUID:/ {print $2}' "$work/dump")
  rm -f "$work/ref.verity"
  timed w veritysetup format --salt="$salt" --uuid="$uuid" "$img" "$work/ref.verity"; verity+=("$w")
  root=$(awk '/^Root hash:/ {print $3}' "$work/out")
  [ "$root" = "$(cat "$ours.roothash")" ] && cmp -s "$work/ref.verity" "$ours.verity" ||
    { echo "error: veritysetup gives another tree (root $root)" >&2; exit 1; }
  printf '%s' "$root" >"$work/roothash"
  timed w openssl smime -sign -nocerts -noattr -binary -in "$work/roothash" \
    -inkey "$work/keys/signing.key" -signer "$work/keys/signing.crt" -outform der -out "$work/ref.p7s"; sign+=("$w")
  cmp -s "$work/ref.p7s" "$ours.roothash.p7s" || echo "note: openssl's signature bytes differ from ours (certificate embedding)" >&2
done

m() { printf '%s\n' "$@" | median; }
b=$(m "${bare[@]}") s=$(m "${sidecar[@]}") d=$(m "${ddi[@]}") v=$(m "${verity[@]}") g=$(m "${sign[@]}")
bytes=$(stat -c %s "$work/out-bare/sealbench-1.0.0-x86-64.raw")
awk -v b="$b" -v s="$s" -v d="$d" -v v="$v" -v g="$g" -v bytes="$bytes" -v runs="$runs" 'BEGIN {
  ref = v + g; so = s - b; dd = d - b;
  printf "image: %.1f MiB squashfs, %d runs, median wall seconds\n", bytes / 1048576, runs;
  printf "  bakery build --format bare     %7.2f s\n", b;
  printf "  bakery build --format sidecar  %7.2f s   sealing +%.2f s\n", s, so;
  printf "  bakery build --format ddi      %7.2f s   sealing +%.2f s\n", d, dd;
  printf "  reference: veritysetup format %.2f s + openssl smime -sign %.2f s = %.2f s\n", v, g, ref;
  if (ref > 0) printf "  ratio sealing ours/reference: sidecar %.2fx, ddi %.2fx\n", so / ref, dd / ref;
}'
