#!/usr/bin/env bash
# Benchmark: bakery's squashfs writer against mksquashfs on the same ~300 MB
# tree of real files, same compressor, level, block size and thread count.
# Reports wall time, CPU time and image size, and the ratios ours/mksquashfs.
#
# usage: bench/squashfs/run.sh [--size MB] [--threads N] [--runs N] [--comp C] [--level N] [--workdir DIR] [--keep]
# (OURS_BIN=path uses a prebuilt mksquashfs_tree example instead of building it)
#
# The tree is a deterministic sample of regular files (each at most 16 MiB)
# from /usr/lib and /usr/share: files ordered by SHA-256 of their path, taken
# until --size MB. Both tools read it from a warm page cache; runs alternate
# between the tools and the median is reported.
set -euo pipefail
cd "$(dirname "$0")/../.."

size_mb=300 threads=2 runs=3 comp=zstd level=15 workdir="" keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --size) size_mb=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --comp) comp=$2; shift 2 ;;
    --level) level=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in mksquashfs unsquashfs python3; do
  command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install squashfs-tools python3)" >&2; exit 1; }
done

if [ -z "$workdir" ]; then
  workdir=$(mktemp -d /var/tmp/squashfs-bench.XXXXXX)
  [ "$keep" = 1 ] || trap 'rm -rf "$workdir"' EXIT
fi
tree="$workdir/tree"

if [ ! -d "$tree" ]; then
  echo "== generating a ${size_mb} MB tree in $tree"
  python3 - "$tree" "$size_mb" <<'PY'
import hashlib, os, shutil, sys
dest, limit = sys.argv[1], int(sys.argv[2]) * 1_000_000
files = []
for top in ("/usr/lib", "/usr/share"):
    for d, dirs, names in os.walk(top):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(d, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.isfile(p) and not os.path.islink(p) and 0 < st.st_size <= 16 << 20 and os.access(p, os.R_OK):
                files.append((hashlib.sha256(p.encode()).digest(), p, st.st_size))
files.sort()
total = 0
for _, p, size in files:
    if total >= limit:
        break
    out = os.path.join(dest, p.lstrip("/"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    shutil.copy2(p, out)
    total += size
print(f"   {total} bytes in {sum(1 for _ in os.walk(dest))} directories")
PY
fi
nfiles=$(find "$tree" -type f | wc -l)
bytes=$(du -sb "$tree" | cut -f1)
echo "== tree: $nfiles files, $bytes bytes"

if [ -n "${OURS_BIN:-}" ]; then
  ours_bin=$OURS_BIN   # a prebuilt example binary
else
  echo "== building the example (release)"
  cargo build --release -q -p bakery --example mksquashfs_tree
  ours_bin="${CARGO_TARGET_DIR:-target}/release/examples/mksquashfs_tree"
fi

# Warm the page cache so both tools read from memory.
find "$tree" -type f -print0 | xargs -0 cat > /dev/null

run_ours() {
  "$ours_bin" "$tree" "$workdir/ours.img" --comp "$comp" --level "$level" --threads "$threads" --block-size 131072 >/dev/null
}
run_theirs() {
  mksquashfs "$tree" "$workdir/theirs.img" -comp "$comp" -Xcompression-level "$level" -b 128K \
    -processors "$threads" -noappend -all-root -no-progress -quiet >/dev/null
}
# Prints "wall user+sys" seconds for one run of $1.
measure() {
  local TIMEFORMAT='%R %U %S' t
  t=$( { time "$1" ; } 2>&1 )
  awk '{printf "%.3f %.3f\n", $1, $2 + $3}' <<<"$t"
}

ours_wall=() ours_cpu=() theirs_wall=() theirs_cpu=()
for i in $(seq "$runs"); do
  read -r w c < <(measure run_theirs); theirs_wall+=("$w"); theirs_cpu+=("$c")
  read -r w c < <(measure run_ours); ours_wall+=("$w"); ours_cpu+=("$c")
  echo "   run $i: mksquashfs ${theirs_wall[-1]}s (cpu ${theirs_cpu[-1]}s), ours ${ours_wall[-1]}s (cpu ${ours_cpu[-1]}s)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ow=$(median "${ours_wall[@]}") tw=$(median "${theirs_wall[@]}")
oc=$(median "${ours_cpu[@]}") tc=$(median "${theirs_cpu[@]}")
os=$(stat -c %s "$workdir/ours.img") ts=$(stat -c %s "$workdir/theirs.img")

# Our image must be a readable squashfs with the same content.
unsquashfs -s "$workdir/ours.img" | grep -q "^Compression $comp\$"
diff <(unsquashfs -lln "$workdir/ours.img" | awk '{print $1, $2, $3, $6, $7, $8}') \
     <(unsquashfs -lln "$workdir/theirs.img" | awk '{print $1, $2, $3, $6, $7, $8}') >/dev/null \
  || { echo "listings differ between the two images" >&2; exit 1; }

echo "== results ($comp level $level, 128 KiB blocks, $threads threads, median of $runs)"
printf '   %-12s %10s %10s %14s\n' tool wall-s cpu-s size-bytes
printf '   %-12s %10s %10s %14s\n' mksquashfs "$tw" "$tc" "$ts"
printf '   %-12s %10s %10s %14s\n' bakery "$ow" "$oc" "$os"
awk -v ow="$ow" -v tw="$tw" -v oc="$oc" -v tc="$tc" -v os="$os" -v ts="$ts" 'BEGIN {
  printf "   time ratio %.3f (goal <= 0.8), cpu ratio %.3f, size ratio %.4f (goal <= 1.02)\n", ow/tw, oc/tc, os/ts }'
