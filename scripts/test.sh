#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine as root.
# Installs the real tools the tests use as oracles, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  squashfs-tools    # mksquashfs / unsquashfs
  erofs-utils       # mkfs.erofs / fsck.erofs
  cryptsetup-bin    # veritysetup
  fdisk             # sfdisk
  systemd-container # systemd-dissect
  systemd           # systemd-sysext (merge oracle)
  openssl gpg gpgv  # signature oracles
  ignition          # ignition-validate
  gcc libssl-dev pkg-config # build prerequisites of the openssl crate
  util-linux        # unshare, losetup
  python3
  xz-utils zstd     # GNU tar delegates .tar.xz / .tar.zst to them (unpack oracle)
  libc6-arm64-cross binutils # a real aarch64 ELF (ld.so) for the arch lint; readelf oracle
  qemu-system-x86 linux-image-amd64 # VM tests: Debian's kernel with dm-verity under TCG
  busybox-static cpio kmod dmsetup  # VM initramfs: shell + applets, cpio oracle, modules, dmsetup oracle
)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
else
  echo "warning: not root or no apt-get; assuming these are installed: ${packages[*]}" >&2
fi

# The binaries first, with the workspace's feature set: the end-to-end
# tests run them (tests/src/lib.rs `bin`) and find them fresh.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
