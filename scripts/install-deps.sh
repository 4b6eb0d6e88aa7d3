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

# Never remove or downgrade a package the user has: simulate first and stop, saying why, if
# the install would. (Installing Debian's QEMU 7.2 over a QEMU 10 from bookworm-backports, for
# one, removes the user's qemu-utils 10.)
refuses_to_harm() {
  local sim rc=0
  sim="$(apt-get -s -o Debug::NoLocking=1 install --no-install-recommends "${missing[@]}" 2>&1)" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "$sim" >&2
    return 2
  fi
  local harm=() upgrade='^\[([^]]+)\] \(([^ ]+)'
  while read -r verb pkg rest; do
    case "$verb" in
      Remv) harm+=("remove $pkg ${rest%% (*}") ;;
      Inst)
        # `Inst pkg [installed] (candidate …)`: only an upgrade or downgrade has the bracket.
        if [[ "$rest" =~ $upgrade ]]; then
          if dpkg --compare-versions "${BASH_REMATCH[2]}" lt "${BASH_REMATCH[1]}"; then
            harm+=("downgrade $pkg ${BASH_REMATCH[1]} -> ${BASH_REMATCH[2]}")
          fi
        fi
        ;;
    esac
  done <<<"$sim"
  if [ "${#harm[@]}" -ne 0 ]; then
    {
      echo "install-deps: NOT installing ${missing[*]}: apt would"
      printf '  %s\n' "${harm[@]}"
      echo "install-deps: squib never removes or downgrades a package you have. Install what is missing"
      echo "  yourself in a way that keeps your packages, or point SQUIB_QEMU at a QEMU (>= 7.2, with"
      echo "  the microvm machine); scripts/private-qemu.sh extracts one into a private prefix."
    } >&2
    return 1
  fi
}

# An install without a package list fails on a fresh machine; update first if the lists are
# empty. Otherwise try with the lists there are and update only if that cannot work.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true)" ]; then
  apt_get update
fi
guard=0
refuses_to_harm || guard=$?
if [ "$guard" -eq 2 ]; then
  apt_get update
  guard=0
  refuses_to_harm || guard=$?
fi
if [ "$guard" -ne 0 ]; then
  exit 1
fi
if ! apt_get install --no-install-recommends "${missing[@]}"; then
  # Stale lists name files the archive no longer has: refresh, check again, retry.
  apt_get update
  refuses_to_harm || exit 1
  apt_get install --no-install-recommends "${missing[@]}"
fi
echo "install-deps: done"
