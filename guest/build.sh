#!/usr/bin/env bash
# Build squib's test guest (kernel + initramfs + ext4 rootfs) from Debian
# packages. Idempotent and cached: a second run with nothing changed is a no-op.
#
#   guest/build.sh                 build (if needed) into $SQUIB_GUEST_DIR
#   guest/build.sh --print-paths   build (if needed), then print KERNEL=/INITRD=/ROOTFS=
#   guest/build.sh --force         rebuild everything
#
# Environment:
#   SQUIB_GUEST_DIR          output/cache dir (default: <this dir>/out)
#   SQUIB_GUEST_KERNEL_PKG   concrete kernel package (default: resolved from
#                            linux-image-amd64 via apt-cache)
#   SQUIB_GUEST_ROOTFS_MB    rootfs image size in MiB (default 64)
#
# Outputs: vmlinux, initrd.cpio.gz, rootfs.ext4, guest.env
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${SQUIB_GUEST_DIR:-$HERE/out}"
ROOTFS_MB="${SQUIB_GUEST_ROOTFS_MB:-64}"
FORCE=0
PRINT=0
for a in "$@"; do
  case "$a" in
    --print-paths) PRINT=1 ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "build.sh: unknown argument: $a" >&2; exit 2 ;;
  esac
done

export LC_ALL=C
log() { if [ "$PRINT" = 1 ]; then echo "guest: $*" >&2; else echo "guest: $*"; fi; }
die() { echo "guest: error: $*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

for t in apt-cache apt-get dpkg-deb xz cpio gzip mke2fs busybox grep sha256sum; do
  command -v "$t" >/dev/null 2>&1 || die "missing tool '$t' (run scripts/install-deps.sh)"
done
BUSYBOX="$(command -v busybox)"
file_is_static() { ! grep -qaF '/lib64/ld-linux-x86-64.so' "$1"; }
[ -x /bin/busybox ] && BUSYBOX=/bin/busybox
file_is_static "$BUSYBOX" || die "$BUSYBOX is not static (install busybox-static)"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

# Modules wanted in the initramfs, in the order they should be considered.
# Their dependencies (modinfo depends= and softdep pre:) are resolved from the
# .ko files themselves and loaded first. Names not present as modules (built
# into the kernel) are skipped.
WANT_MODULES=(
  virtio_ring virtio virtio_mmio virtio_pci
  virtio_blk virtio_net virtio_rng virtio_balloon virtio_console
  crc32c_generic ext4
  vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport
  i8042 atkbd serio
  virtio_mem libnvdimm virtio_pmem nd_pmem
)

# ---------------------------------------------------------------- kernel ----
resolve_kernel_pkg() {
  if [ -n "${SQUIB_GUEST_KERNEL_PKG:-}" ]; then echo "$SQUIB_GUEST_KERNEL_PKG"; return; fi
  local p
  p="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1 || true)"
  if [ -z "$p" ]; then
    log "apt-cache knows no linux-image-amd64; running apt-get update"
    "${SUDO[@]}" apt-get -q update >&2 || true
    p="$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1 || true)"
  fi
  if [ -z "$p" ] && [ -f "$OUT/.kernel-stamp" ]; then
    p="$(sed -n 's/^pkg=//p' "$OUT/.kernel-stamp")"
    log "cannot resolve kernel package; using cached $p"
  fi
  [ -n "$p" ] || die "cannot resolve the kernel package behind linux-image-amd64"
  echo "$p"
}

TMP=""
cleanup() { if [ -n "$TMP" ]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT
tmpdir() { if [ -z "$TMP" ]; then TMP="$(mktemp -d "${TMPDIR:-/tmp}/squib-guest.XXXXXX")"; fi; }

# Extract the ELF vmlinux from a bzImage whose payload is xz (Debian), with
# gzip/zstd fallbacks.
extract_vmlinux() {
  local img="$1" dst="$2" off magic
  for magic in xz gzip zstd; do
    case "$magic" in
      xz)   off="$(grep -obUaP '\xFD7zXZ\x00' "$img" | head -n1 | cut -d: -f1 || true)" ;;
      gzip) off="$(grep -obUaP '\x1F\x8B\x08' "$img" | head -n1 | cut -d: -f1 || true)" ;;
      zstd) command -v zstd >/dev/null 2>&1 || continue
            off="$(grep -obUaP '\x28\xB5\x2F\xFD' "$img" | head -n1 | cut -d: -f1 || true)" ;;
    esac
    [ -n "$off" ] || continue
    case "$magic" in
      xz)   tail -c +"$((off + 1))" "$img" | xz -dc --single-stream > "$dst.tmp" 2>/dev/null || true ;;
      gzip) tail -c +"$((off + 1))" "$img" | gzip -dc > "$dst.tmp" 2>/dev/null || true ;;
      zstd) tail -c +"$((off + 1))" "$img" | zstd -dc > "$dst.tmp" 2>/dev/null || true ;;
    esac
    if [ "$(head -c 4 "$dst.tmp" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; then
      mv "$dst.tmp" "$dst"
      return 0
    fi
    rm -f "$dst.tmp"
  done
  die "could not extract an ELF vmlinux from $img"
}

# modinfo field values of a .ko (uncompressed), one per line.
modfield() { tr '\0' '\n' < "$1" | sed -n "s/^$2=//p"; }

build_kernel() {
  local pkg="$1" ver="${1#linux-image-}"
  tmpdir
  log "downloading $pkg"
  local dl="$TMP/dl"; mkdir -p "$dl"
  local aptopts=()
  [ "$(id -u)" -eq 0 ] && aptopts=(-o APT::Sandbox::User=root)
  if ! (cd "$dl" && apt-get -q "${aptopts[@]}" download "$pkg" >&2); then
    log "download failed; running apt-get update and retrying"
    "${SUDO[@]}" apt-get -q update >&2
    (cd "$dl" && apt-get -q "${aptopts[@]}" download "$pkg" >&2)
  fi
  local deb; deb="$(ls "$dl"/*.deb | head -n1)"
  local x="$TMP/x"; mkdir -p "$x"
  # Only the kernel image and the module subtrees we can possibly need.
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$x" --wildcards \
    './boot/vmlinuz-*' './boot/config-*' \
    "./lib/modules/$ver/modules.builtin" \
    "./lib/modules/$ver/kernel/drivers/virtio/*" \
    "./lib/modules/$ver/kernel/drivers/nvdimm/*" \
    "./lib/modules/$ver/kernel/drivers/block/*" \
    "./lib/modules/$ver/kernel/drivers/net/*" \
    "./lib/modules/$ver/kernel/drivers/char/*" \
    "./lib/modules/$ver/kernel/drivers/input/*" \
    "./lib/modules/$ver/kernel/fs/*" \
    "./lib/modules/$ver/kernel/lib/*" \
    "./lib/modules/$ver/kernel/crypto/*" \
    "./lib/modules/$ver/kernel/arch/*" \
    "./lib/modules/$ver/kernel/net/vmw_vsock/*" \
    "./lib/modules/$ver/kernel/net/core/*" 2>/dev/null || true
  local vmlinuz; vmlinuz="$(ls "$x"/boot/vmlinuz-* 2>/dev/null | head -n1)"
  [ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $deb"
  log "extracting vmlinux"
  extract_vmlinux "$vmlinuz" "$OUT/vmlinux.new"

  # Decompress modules if the package ships them compressed (.ko.xz/.ko.zst/.ko.gz)
  # so busybox insmod never has to deal with it.
  local mroot="$x/lib/modules/$ver/kernel" f
  while IFS= read -r -d '' f; do
    case "$f" in
      *.ko.xz) xz -d "$f" ;;
      *.ko.gz) gzip -d "$f" ;;
      *.ko.zst) command -v zstd >/dev/null || die "zstd needed for $f"; zstd -q -d --rm "$f" ;;
    esac
  done < <(find "$mroot" -name '*.ko.*' -print0)

  # Index: module name (with '-' → '_') → path; alias → module name.
  declare -A path=()
  local n a
  while IFS= read -r -d '' f; do
    n="$(basename "$f" .ko)"; n="${n//-/_}"
    path[$n]="$f"
  done < <(find "$mroot" -name '*.ko' -print0)
  resolve_name() {  # echo module name for a name or alias, or nothing
    local q="${1//-/_}" c best=""
    if [ -n "${path[$q]:-}" ]; then echo "$q"; return; fi
    # an alias (e.g. softdep "crypto-crc32c"): prefer a *_generic provider
    for c in $(grep -rlaF "alias=$1" "$mroot" --include='*.ko' | sort); do
      modfield "$c" alias | grep -qxF "$1" || continue
      n="$(basename "$c" .ko)"; n="${n//-/_}"
      if [ -z "$best" ] || [[ "$n" == *_generic ]]; then best="$n"; fi
    done
    echo "$best"
  }
  declare -A seen=()
  local order=()
  visit() {
    local m="$1" d
    [ -n "${seen[$m]:-}" ] && return 0
    seen[$m]=1
    local deps=()
    IFS=',' read -r -a deps <<< "$(modfield "${path[$m]}" depends | head -n1)"
    for d in $(modfield "${path[$m]}" softdep | sed -n 's/.*pre: *\([^:]*\)\( post:.*\)\{0,1\}$/\1/p'); do
      deps+=("$d")
    done
    for d in "${deps[@]}"; do
      [ -n "$d" ] || continue
      d="$(resolve_name "$d")"
      [ -n "$d" ] && visit "$d"
    done
    order+=("$m")
  }
  for n in "${WANT_MODULES[@]}"; do
    if [ -n "${path[$n]:-}" ]; then visit "$n"; fi
  done
  rm -rf "$OUT/modules.new"; mkdir -p "$OUT/modules.new"
  : > "$OUT/modules.new/load-order"
  for n in "${order[@]}"; do
    cp "${path[$n]}" "$OUT/modules.new/$n.ko"
    echo "$n" >> "$OUT/modules.new/load-order"
  done
  log "modules: ${order[*]}"

  rm -rf "$OUT/modules"; mv "$OUT/modules.new" "$OUT/modules"
  mv "$OUT/vmlinux.new" "$OUT/vmlinux"
  printf 'pkg=%s\nversion=%s\nmodules=%s\n' "$pkg" "$ver" "${WANT_MODULES[*]}" > "$OUT/.kernel-stamp"
  rm -rf "$dl" "$x"
}

# ---------------------------------------------------------- guest files ----
# Common userland (busybox + scripts) used by both the initramfs and rootfs.
populate_common() {
  local d="$1"
  mkdir -p "$d"/{bin,dev,proc,sys,run,tmp,root,etc/squib,mnt,lib/modules}
  ln -sfn bin "$d/sbin"
  mkdir -p "$d/usr"; ln -sfn ../bin "$d/usr/bin"; ln -sfn ../bin "$d/usr/sbin"
  cp "$BUSYBOX" "$d/bin/busybox"; chmod 755 "$d/bin/busybox"
  cp "$OUT/squib-agent" "$d/bin/squib-agent"; chmod 755 "$d/bin/squib-agent"
  local app
  for app in $("$BUSYBOX" --list); do
    [ "$app" = busybox ] && continue
    ln -sfn busybox "$d/bin/$app"
  done
  chmod 1777 "$d/tmp"
  # Device nodes, where we are allowed to create them (root). The init scripts
  # also work without them (they mount devtmpfs first).
  if [ "$(id -u)" -eq 0 ]; then
    mknod -m 600 "$d/dev/console" c 5 1 2>/dev/null || true
    mknod -m 666 "$d/dev/null" c 1 3 2>/dev/null || true
  fi

  cat > "$d/etc/inittab" <<'EOF'
# squib test guest (busybox init)
::sysinit:/etc/squib/action
::respawn:/etc/squib/console
::once:/etc/squib/tick
::once:/etc/squib/script
::ctrlaltdel:/sbin/reboot -f
::shutdown:/bin/sync
EOF
  echo 'root:x:0:0:root:/root:/bin/sh' > "$d/etc/passwd"
  echo 'root:x:0:' > "$d/etc/group"

  # Helpers shared by the scripts.
  cat > "$d/etc/squib/lib.sh" <<'EOF'
# Read a kernel command line parameter: cmdline_get NAME → value ("" if absent;
# "1" if present without a value).
cmdline_get() {
  local w
  for w in $(cat /proc/cmdline); do
    case "$w" in
      "$1="*) echo "${w#*=}"; return 0 ;;
      "$1") echo 1; return 0 ;;
    esac
  done
  return 1
}
say() { echo "$*" > /dev/console; }
# (busybox-static has no `mountpoint` applet)
is_mounted() { grep -qs "^[^ ]* $1 " /proc/mounts; }
mount_basics() {
  is_mounted /proc || mount -t proc proc /proc
  is_mounted /sys  || mount -t sysfs sysfs /sys
  is_mounted /dev  || mount -t devtmpfs devtmpfs /dev
  mkdir -p /dev/pts /run /tmp
  is_mounted /dev/pts || mount -t devpts devpts /dev/pts 2>/dev/null || true
  is_mounted /run || mount -t tmpfs tmpfs /run 2>/dev/null || true
}
EOF

  # sysinit: performs squib.action. Runs under busybox init in both stages.
  cat > "$d/etc/squib/action" <<'EOF'
#!/bin/sh
. /etc/squib/lib.sh
# squib.ip=ADDR/PREFIX: static address on eth0 (squib.gw=IP adds a default route).
addr="$(cmdline_get squib.ip || true)"
if [ -n "$addr" ]; then
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do i=$((i + 1)); sleep 0.1; done
  ip link set lo up
  if ip addr add "$addr" dev eth0 && ip link set eth0 up; then
    gw="$(cmdline_get squib.gw || true)"
    [ -n "$gw" ] && ip route add default via "$gw"
    say "SQUIB-NET eth0 $addr"
  else
    say "SQUIB-NET-FAILED eth0 $addr"
  fi
fi
# What answers at each virtio-mmio device the command line announces
# (virtio_mmio.device=SIZE@ADDR:IRQ): magic ("virt") and device id, read from the bus. The
# kernel may not take these devices itself (Debian's has no VIRTIO_MMIO_CMDLINE_DEVICES).
for w in $(cat /proc/cmdline); do
  case "$w" in
    virtio_mmio.device=*@*:*)
      d="${w#*@}"; a="${d%%:*}"
      say "SQUIB-VIRTIO-MMIO $a irq=${d#*:} magic=$(devmem "$a" 32) id=$(devmem "$(printf '0x%x' $((a + 8)))" 32)" ;;
  esac
done
action="$(cmdline_get squib.action || true)"
case "$action" in
  poweroff)
    sync; mount -o remount,ro / 2>/dev/null
    say "SQUIB-ACTION poweroff"
    poweroff -f ;;
  reboot)
    sync; mount -o remount,ro / 2>/dev/null
    say "SQUIB-ACTION reboot"
    reboot -f ;;
  wait) say "SQUIB-ACTION wait" ;;
  ""|shell) say "SQUIB-ACTION shell" ;;
  *) say "SQUIB-ACTION unknown '$action', using shell" ;;
esac
exit 0
EOF

  # respawned: a shell on the console in shell mode; nothing in wait mode.
  cat > "$d/etc/squib/console" <<'EOF'
#!/bin/sh
. /etc/squib/lib.sh
action="$(cmdline_get squib.action || true)"
case "$action" in
  wait|poweroff|reboot) exec sleep 2147483647 ;;
esac
# busybox init already made us a session leader (setsid), so no setsid here
# (busybox setsid would fork and exit, making init respawn us in a loop);
# cttyhack finds the real console tty (ttyS0) and makes it our controlling tty.
exec cttyhack /bin/sh -l
EOF

  # once: heartbeat ticks if squib.tick=1.
  cat > "$d/etc/squib/tick" <<'EOF'
#!/bin/sh
. /etc/squib/lib.sh
[ "$(cmdline_get squib.tick || true)" = 1 ] || exit 0
n=0
while :; do
  say "SQUIB-TICK $n"
  n=$((n + 1))
  sleep 1
done
EOF
  # once: squib.script=DEV runs the shell script stored raw on the block device DEV
  # (NUL padding stripped), output on the console, then prints SQUIB-SCRIPT-DONE rc=<n>.
  cat > "$d/etc/squib/script" <<'EOF'
#!/bin/sh
. /etc/squib/lib.sh
dev="$(cmdline_get squib.script || true)"
[ -n "$dev" ] || exit 0
i=0
while [ ! -b "$dev" ] && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
tr -d '\000' < "$dev" > /tmp/squib-script.sh
say "SQUIB-SCRIPT-START"
sh /tmp/squib-script.sh > /dev/console 2>&1
say "SQUIB-SCRIPT-DONE rc=$?"
EOF
  cat > "$d/etc/profile" <<'EOF'
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PS1='squib# '
EOF
  chmod 755 "$d/etc/squib/action" "$d/etc/squib/console" "$d/etc/squib/tick" "$d/etc/squib/script"
}

build_initrd() {
  tmpdir
  local r="$TMP/initrd"; rm -rf "$r"
  populate_common "$r"
  local ver; ver="$(sed -n 's/^version=//p' "$OUT/.kernel-stamp")"
  mkdir -p "$r/lib/modules/$ver"
  cp "$OUT"/modules/*.ko "$OUT/modules/load-order" "$r/lib/modules/$ver/" 2>/dev/null || true
  cat > "$r/init" <<'EOF'
#!/bin/sh
# squib test guest: initramfs stage (PID 1)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
. /etc/squib/lib.sh
mount_basics

mdir=/lib/modules/$(uname -r)
if [ -f "$mdir/load-order" ]; then
  while read -r m; do
    # Like modprobe, hand the module its `module.param=value` words of the kernel command line
    # (`virtio_mmio.device=` is how a guest without ACPI learns of its devices).
    params=""
    for w in $(cat /proc/cmdline); do
      case "$w" in "$m."*=*) params="$params ${w#"$m".}" ;; esac
    done
    # shellcheck disable=SC2086
    insmod "$mdir/$m.ko" $params 2>/dev/null || echo "squib-init: insmod $m failed" >&2
  done < "$mdir/load-order"
fi
say "SQUIB-GUEST-INIT-OK"

# Resolve root=PARTUUID=... (MBR "xxxxxxxx-pp" or GPT GUID) by scanning disks.
hexat() { dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null | od -An -tx1 | tr -d ' \n'; }
le() { local h="$1" o=""; while [ -n "$h" ]; do o="${h%??}"; printf '%s' "${h#$o}"; h="$o"; done; }
find_partuuid() {
  local want dev disk sig n base lba i e guid
  want="$(echo "$1" | tr 'A-F' 'a-f')"
  for dev in /sys/class/block/*; do
    [ -f "$dev/partition" ] || continue
    n="$(cat "$dev/partition")"
    base="$(basename "$dev")"
    disk="/dev/$(basename "$(readlink -f "$dev/..")")"
    if [ "$(hexat "$disk" 450 1)" = "ee" ]; then
      # GPT: entries start at the LBA in the header (offset 512+72), 128 bytes each
      lba="$(le "$(hexat "$disk" 584 8)")"; lba=$((0x$lba))
      e=$((lba * 512 + (n - 1) * 128 + 16))
      i="$(hexat "$disk" "$e" 16)"
      guid="$(le "${i:0:8}")-$(le "${i:8:4}")-$(le "${i:12:4}")-${i:16:4}-${i:20:12}"
      [ "$guid" = "$want" ] && { echo "/dev/$base"; return 0; }
    else
      sig="$(le "$(hexat "$disk" 440 4)")"
      [ "$sig-$(printf %02x "$n")" = "$want" ] && { echo "/dev/$base"; return 0; }
    fi
  done
  return 1
}

root="$(cmdline_get root || true)"
if [ -n "$root" ]; then
  dev=""
  i=0
  while [ $i -lt 50 ]; do
    case "$root" in
      PARTUUID=*) dev="$(find_partuuid "${root#PARTUUID=}")" ;;
      UUID=*|LABEL=*) dev="$(findfs "$root" 2>/dev/null)" ;;
      *) [ -b "$root" ] && dev="$root" ;;
    esac
    [ -n "$dev" ] && break
    i=$((i + 1)); sleep 0.1
  done
  opts=ro
  for w in $(cat /proc/cmdline); do
    case "$w" in ro) opts=ro ;; rw) opts=rw ;; esac
  done
  fstype="$(cmdline_get rootfstype || true)"
  mkdir -p /newroot
  rinit="$(cmdline_get init || true)"
  if [ -n "$dev" ] && mount ${fstype:+-t "$fstype"} -o "$opts" "$dev" /newroot; then
    umount /dev/pts 2>/dev/null
    for m in dev proc sys run; do
      mkdir -p /newroot/$m 2>/dev/null
      mount --move /$m /newroot/$m 2>/dev/null || umount -l /$m
    done
    exec switch_root /newroot "${rinit:-/sbin/init}"
  fi
  echo "squib-init: could not mount root '$root' (dev '$dev'); staying in initramfs"
fi
exec /bin/busybox init
EOF
  chmod 755 "$r/init"
  (cd "$r" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet) | gzip -6 -n > "$OUT/initrd.cpio.gz.new"
  mv "$OUT/initrd.cpio.gz.new" "$OUT/initrd.cpio.gz"
}

build_rootfs() {
  tmpdir
  local r="$TMP/rootfs"; rm -rf "$r"
  populate_common "$r"
  rm -f "$r/sbin" && mkdir -p "$r/sbin"   # real /sbin so /sbin/init is our script
  local app
  for app in $(ls "$r/bin"); do ln -sfn ../bin/"$app" "$r/sbin/$app"; done
  rm -f "$r/sbin/init"
  cat > "$r/sbin/init" <<'EOF'
#!/bin/sh
# squib test guest: rootfs stage (PID 1 after switch_root, or booted directly)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
. /etc/squib/lib.sh
mount_basics
say "SQUIB-ROOTFS-OK"
exec /bin/busybox init
EOF
  chmod 755 "$r/sbin/init"
  echo "squib test rootfs v1" > "$r/etc/squib-rootfs"
  echo "/dev/root / ext4 defaults 0 1" > "$r/etc/fstab"
  rm -f "$OUT/rootfs.ext4.new"; truncate -s "${ROOTFS_MB}M" "$OUT/rootfs.ext4.new"
  mke2fs -q -F -t ext4 -L squib-rootfs -E root_owner=0:0 -d "$r" "$OUT/rootfs.ext4.new" "${ROOTFS_MB}M"
  mv "$OUT/rootfs.ext4.new" "$OUT/rootfs.ext4"
}

# ----------------------------------------------------------------- agent ----
# The guest agent (guest/agent, a workspace member): a static binary, built by cargo in a
# target dir of its own (incremental, so a warm build is a no-op) and copied only when changed.
build_agent() {
  command -v cargo >/dev/null 2>&1 || die "cargo is needed to build the guest agent"
  local target="$OUT/agent-target"
  log "building the guest agent"
  CARGO_TARGET_DIR="$target" \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
    cargo build -q --release --manifest-path "$HERE/agent/Cargo.toml" \
      --target x86_64-unknown-linux-gnu >&2 || die "building the guest agent failed"
  local bin="$target/x86_64-unknown-linux-gnu/release/squib-agent"
  file_is_static "$bin" || die "$bin is not static"
  if ! cmp -s "$bin" "$OUT/squib-agent"; then cp "$bin" "$OUT/squib-agent.new"; mv "$OUT/squib-agent.new" "$OUT/squib-agent"; fi
}

# ------------------------------------------------------------------ main ----
# Tests run in parallel and each asks for the guest: one build at a time, the others wait and
# then find everything cached.
exec 9>"$OUT/.build-lock"
flock 9
PKG="$(resolve_kernel_pkg)"
if [ "$FORCE" = 1 ] || [ ! -f "$OUT/vmlinux" ] || [ ! -d "$OUT/modules" ] \
   || [ "$(sed -n 's/^pkg=//p' "$OUT/.kernel-stamp" 2>/dev/null)" != "$PKG" ] \
   || [ "$(sed -n 's/^modules=//p' "$OUT/.kernel-stamp" 2>/dev/null)" != "${WANT_MODULES[*]}" ]; then
  build_kernel "$PKG"
else
  log "kernel $PKG cached"
fi

build_agent
IMG_KEY="$( { sha256sum "${BASH_SOURCE[0]}" "$OUT/squib-agent" | cut -d' ' -f1; echo "$PKG"; "$BUSYBOX" | head -n1; echo "$ROOTFS_MB"; } | sha256sum | cut -d' ' -f1)"
if [ "$FORCE" = 1 ] || [ ! -f "$OUT/initrd.cpio.gz" ] || [ ! -f "$OUT/rootfs.ext4" ] \
   || [ "$(cat "$OUT/.images-stamp" 2>/dev/null)" != "$IMG_KEY" ]; then
  log "building initrd.cpio.gz"
  build_initrd
  log "building rootfs.ext4"
  build_rootfs
  echo "$IMG_KEY" > "$OUT/.images-stamp"
else
  log "images cached"
fi

ENV_TEXT="KERNEL=$OUT/vmlinux
INITRD=$OUT/initrd.cpio.gz
ROOTFS=$OUT/rootfs.ext4
KERNEL_PKG=$PKG"
# Atomic, so a reader of guest.env never sees it half-written.
printf '%s\n' "$ENV_TEXT" > "$OUT/guest.env.new" && mv "$OUT/guest.env.new" "$OUT/guest.env"

if [ "$PRINT" = 1 ]; then
  printf '%s\n' "$ENV_TEXT"
else
  log "ready in $OUT"
fi
