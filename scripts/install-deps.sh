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
HARM=()
refuses_to_harm() {
  # refuses_to_harm [apt options] -- packages...
  local opts=()
  while [ "$1" != "--" ]; do opts+=("$1"); shift; done
  shift
  local sim rc=0
  sim="$(apt-get -s -o Debug::NoLocking=1 install --no-install-recommends "${opts[@]}" "$@" 2>&1)" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "$sim" >&2
    return 2
  fi
  HARM=()
  local upgrade='^\[([^]]+)\] \(([^ ]+)'
  while read -r verb pkg rest; do
    case "$verb" in
      Remv) HARM+=("remove $pkg ${rest%% (*}") ;;
      Inst)
        # `Inst pkg [installed] (candidate …)`: only an upgrade or downgrade has the bracket.
        if [[ "$rest" =~ $upgrade ]]; then
          if dpkg --compare-versions "${BASH_REMATCH[2]}" lt "${BASH_REMATCH[1]}"; then
            HARM+=("downgrade $pkg ${BASH_REMATCH[1]} -> ${BASH_REMATCH[2]}")
          fi
        fi
        ;;
    esac
  done <<<"$sim"
  [ "${#HARM[@]}" -eq 0 ] || return 1
}

report_harm() {
  {
    echo "install-deps: NOT installing $*: apt would"
    printf '  %s\n' "${HARM[@]}"
    echo "install-deps: squib never removes or downgrades a package you have. Install what is missing"
    echo "  yourself in a way that keeps your packages, or point SQUIB_QEMU at a QEMU (>= 7.2, with"
    echo "  the microvm machine); scripts/private-qemu.sh extracts one into a private prefix."
  } >&2
}

# An install without a package list fails on a fresh machine; update first if the lists are
# empty. Otherwise try with the lists there are and update only if that cannot work.
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true)" ]; then
  apt_get update
fi

# bookworm-backports' source is derived from the machine's own Debian entry (same URIs and keys,
# only the suite swapped), and its packages are pinned by `-t`, so nothing else on the machine
# moves to backports. (QEMU 7.2 from bookworm also cannot sit beside a QEMU 10 the machine may
# already have: qemu-utils 10 breaks qemu-system-common << 8.0.)
BACKPORTS_SOURCES=/etc/apt/sources.list.d/squib-bookworm-backports.sources
add_backports_source() {
  [ -f "$BACKPORTS_SOURCES" ] && return 0
  local sources=/etc/apt/sources.list.d/debian.sources
  [ -r "$sources" ] || { echo "install-deps: no $sources to derive bookworm-backports from" >&2; return 1; }
  awk 'BEGIN { RS = ""; FS = "\n" }
    !done && /(^|\n)Suites:/ && !/security/ {
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^Suites:/) print "Suites: bookworm-backports"; else print $i
      }
      done = 1
    }' "$sources" | "${SUDO[@]}" tee "$BACKPORTS_SOURCES" >/dev/null
  echo "install-deps: added $BACKPORTS_SOURCES (derived from $sources)"
  apt_get update
}

install_checked() {
  # install_checked [apt options] -- packages...
  local opts=() pkgs
  while [ "$1" != "--" ]; do opts+=("$1"); shift; done
  shift
  pkgs=("$@")
  local guard=0
  refuses_to_harm "${opts[@]}" -- "${pkgs[@]}" || guard=$?
  if [ "$guard" -eq 2 ]; then
    apt_get update
    guard=0
    refuses_to_harm "${opts[@]}" -- "${pkgs[@]}" || guard=$?
  fi
  [ "$guard" -eq 0 ] || return "$guard"
  if ! apt_get install --no-install-recommends "${opts[@]}" "${pkgs[@]}"; then
    # Stale lists name files the archive no longer has: refresh, check again, retry.
    apt_get update
    refuses_to_harm "${opts[@]}" -- "${pkgs[@]}" || return 1
    apt_get install --no-install-recommends "${opts[@]}" "${pkgs[@]}"
  fi
}

others=()
qemu=()
for p in "${missing[@]}"; do
  case "$p" in
    qemu-*) qemu+=("$p") ;;
    *) others+=("$p") ;;
  esac
done

if [ "${#others[@]}" -ne 0 ]; then
  install_checked -- "${others[@]}" || { report_harm "${others[@]}"; exit 1; }
fi
# The system QEMU squib is tested with is bookworm-backports' QEMU 10; scripts/test.sh runs the
# boot, snapshot, device, PCI and hot-plug tests against bookworm's 7.2 as well. Without a
# backports source, bookworm's 7.2 is installed.
if [ "${#qemu[@]}" -ne 0 ]; then
  if ! { add_backports_source && install_checked -t bookworm-backports -- "${qemu[@]}"; }; then
    echo "install-deps: no QEMU from bookworm-backports; trying bookworm's QEMU"
    install_checked -- "${qemu[@]}" || { report_harm "${qemu[@]}"; exit 1; }
  fi
fi
echo "install-deps: done"
