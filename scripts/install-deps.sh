#!/usr/bin/env bash
# Install (only when missing) the Debian packages squib and its test guest need.
# Idempotent; safe to run repeatedly. Runs `apt-get update` only if something
# must be installed (and retries the install after an update if it failed).
set -euo pipefail

PKGS=(
  qemu-system-x86   # qemu-system-x86_64 with the microvm machine; pulls in
                    # qemu-system-common (qemu-storage-daemon, the vhost-user-blk backend of the e2e tests)
  busybox-static    # guest userland (static, no libc needed in the guest)
  e2fsprogs         # mke2fs -d for the rootfs image
  cpio              # initramfs archive
  gzip              # initramfs compression
  xz-utils          # kernel payload extraction / .ko.xz modules
  iproute2          # tap devices for networking tests
  python3           # helper scripts / tests
  make              # make bench, make bench-quick
  curl              # scripts/demo.sh talks to the API socket with curl
  apt               # apt-get download / apt-cache for the guest kernel
  dpkg              # dpkg-deb -x
  grep
  coreutils
)

export DEBIAN_FRONTEND=noninteractive

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -E)
  else
    echo "install-deps: not root and sudo is not available" >&2
    exit 1
  fi
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

echo "install-deps: installing: ${missing[*]}"

apt_get() {
  # Wait for the dpkg/apt lock instead of failing if another apt is running.
  "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 -y -q "$@"
}

# An install without a package list fails on a fresh machine; update first if
# the lists are empty, otherwise try directly and update only on failure.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true)" ]; then
  apt_get update
  apt_get install --no-install-recommends "${missing[@]}"
elif ! apt_get install --no-install-recommends "${missing[@]}"; then
  apt_get update
  apt_get install --no-install-recommends "${missing[@]}"
fi
echo "install-deps: done"
