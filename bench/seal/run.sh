#!/usr/bin/env bash
# Benchmark: the sealing step of `bakery build` against the reference
# tools doing the same job on the same image in the same run.
#
# A recipe with SIZE_MIB of incompressible data is built once with
# `bakery build --format bare`. That squashfs image is then sealed
# repeatedly by `bakery::seal::seal` (the code `bakery build` runs; timed
# inside the example `seal_image`, so process start and the copy into the
# staging directory are not counted) as `sidecar` and as `ddi`, signed.
# Reference for the same outputs: `veritysetup format` (same salt and UUID;
# tree and root hash compared byte for byte), `openssl smime -sign` (the
# detached PKCS#7 systemd-repart makes) and `sha256sum` of the outputs (for
# SHA256SUMS, which our seal step also digests); for the DDI also `cp` of
# the image (a DDI embeds it; systemd-repart 252 cannot make DDIs).
# Reports median wall seconds and the ratios ours/reference (goal <= 1x;
# the verity tree alone is benchmarked by bench/verity/run.sh).
#
# Usage: bench/seal/run.sh [SIZE_MIB]     (default 300; RUNS=5 repetitions)
set -euo pipefail
cd "$(dirname "$0")/../.."

size_mib=${1:-300}
runs=${RUNS:-5}
for tool in veritysetup openssl sha256sum /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (packages cryptsetup-bin, openssl, coreutils, time)" >&2; exit 1; }
done

cargo build --release --quiet -p bakery --bin bakery --example seal_image
bakery=${CARGO_TARGET_DIR:-target}/release/bakery
sealer=${CARGO_TARGET_DIR:-target}/release/examples/seal_image

work=$(mktemp -d "${TMPDIR:-/var/tmp}/seal-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
recipe=$work/recipe
mkdir -p "$recipe/files/usr/share/sealbench"
printf '%s\n' 'name = "sealbench"' 'version = "1.0.0"' 'description = "sealing benchmark"' \
  'os = "_any"' 'architectures = ["x86-64"]' >"$recipe/recipe.toml"
per=$(((size_mib + 9) / 10))
for i in $(seq 0 9); do
  head -c $((per * 1024 * 1024)) /dev/urandom >"$recipe/files/usr/share/sealbench/data$i.bin"
done
"$bakery" keygen --out "$work/keys" --name "seal bench" >/dev/null
key=$work/keys/signing.key
cert=$work/keys/signing.crt
"$bakery" build "$recipe" -o "$work/bare" --format bare >/dev/null
img=$work/bare/sealbench-1.0.0-x86-64.raw
cat "$img" >/dev/null # warm the page cache

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timed() { # timed VAR cmd...
  /usr/bin/time -f '%e' -o "$work/time" "${@:2}" >"$work/out" 2>"$work/err" || {
    cat "$work/err" >&2
    exit 1
  }
  printf -v "$1" '%s' "$(cat "$work/time")"
}
add() { awk 'BEGIN {s = 0; for (i = 1; i < ARGC; i++) s += ARGV[i]; print s}' "$@"; }

sidecar=() ddi=() ref_side=() ref_ddi=()
for ((i = 1; i <= runs; i++)); do
  rm -rf "$work/s" "$work/d" "$work"/ref.*
  "$sealer" "$img" "$work/s" sidecar "$key" "$cert" >"$work/sealed"
  sidecar+=("$(head -1 "$work/sealed")")
  ours=$work/s/bench-1-x86-64
  [ -f "$ours.verity" ] || { echo "error: no sealed sidecar output" >&2; exit 1; }
  "$sealer" "$img" "$work/d" ddi "$key" "$cert" >"$work/sealed"
  ddi+=("$(head -1 "$work/sealed")")

  # Reference, with the salt and UUID of our tree.
  veritysetup dump "$ours.verity" >"$work/dump"
  salt=$(awk '/^Salt:/ {print $2}' "$work/dump")
  uuid=$(awk '/^UUID:/ {print $2}' "$work/dump")
  timed v veritysetup format --salt="$salt" --uuid="$uuid" "$img" "$work/ref.verity"
  root=$(awk '/^Root hash:/ {print $3}' "$work/out")
  if [ "$root" != "$(cat "$ours.roothash")" ] || ! cmp -s "$work/ref.verity" "$ours.verity"; then
    echo "error: veritysetup gives another tree (root $root)" >&2
    exit 1
  fi
  printf '%s' "$root" >"$work/ref.roothash"
  timed g openssl smime -sign -nocerts -noattr -binary -in "$work/ref.roothash" \
    -inkey "$key" -signer "$cert" -outform der -out "$work/ref.p7s"
  timed h sha256sum "$img" "$work/ref.verity" "$work/ref.roothash" "$work/ref.p7s"
  ref_side+=("$(add "$v" "$g" "$h")")
  timed c cp "$img" "$work/ref.ddi"
  timed h sha256sum "$work/ref.ddi"
  ref_ddi+=("$(add "$v" "$g" "$c" "$h")")
done

m() { printf '%s\n' "$@" | median; }
s=$(m "${sidecar[@]}")
d=$(m "${ddi[@]}")
rs=$(m "${ref_side[@]}")
rd=$(m "${ref_ddi[@]}")
bytes=$(stat -c %s "$img")
awk -v s="$s" -v d="$d" -v rs="$rs" -v rd="$rd" -v bytes="$bytes" -v runs="$runs" 'BEGIN {
  printf "image: %.1f MiB squashfs, %d runs, median wall seconds\n", bytes / 1048576, runs
  printf "  sidecar: ours %.3f s; reference (veritysetup format + openssl smime -sign + sha256sum) %.3f s; ratio %.2fx\n", s, rs, s / rs
  printf "  ddi:     ours %.3f s; reference (the same + cp into the image) %.3f s; ratio %.2fx\n", d, rd, d / rd
}'
