#!/usr/bin/env bash
# Builds the bundled example recipe (examples/hello) into ./out, offline.
# On a fresh Debian machine as root it first installs the C build
# prerequisites the Rust crates link against (OpenSSL headers, pkg-config).
set -euo pipefail
cd "$(dirname "$0")/.."

build_deps=(gcc pkg-config libssl-dev)
missing=()
for p in "${build_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: missing build prerequisites: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

cargo run --locked -q -p bakery -- build examples/hello --output out "$@"
echo
echo "images are in $(pwd)/out:"
ls -l out
