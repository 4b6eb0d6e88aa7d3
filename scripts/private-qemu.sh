#!/usr/bin/env bash
# Extracts Debian's QEMU of one suite into a private prefix and prints the path of a
# `qemu-system-x86_64` wrapper that runs it (for SQUIB_QEMU). Nothing is installed: the system's
# QEMU, its apt sources and its dpkg database stay as they are.
#
#   scripts/private-qemu.sh SUITE DEST      e.g. bookworm-backports target/qemu-bookworm-backports
#
# The apt source is derived from the machine's own Debian entry
# (/etc/apt/sources.list.d/debian.sources: its URIs and Signed-By) with only the suite swapped,
# and lives under DEST with its own package lists. Cached: a second run with a working wrapper
# does nothing. The libraries QEMU links against come from the system (they are the ones the
# system's QEMU uses); a library the system lacks is named and the script fails.
set -euo pipefail

SUITE="${1:?usage: private-qemu.sh SUITE DEST}"
DEST="${2:?usage: private-qemu.sh SUITE DEST}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
WRAPPER="$DEST/bin/qemu-system-x86_64"
SOURCES=/etc/apt/sources.list.d/debian.sources

if [ -x "$WRAPPER" ] && "$WRAPPER" -machine help 2>/dev/null | grep -q '^microvm'; then
  echo "$WRAPPER"
  exit 0
fi

log() { echo "private-qemu: $*" >&2; }

[ -r "$SOURCES" ] || { log "no $SOURCES to derive the $SUITE source from"; exit 1; }
APT="$DEST/apt"
mkdir -p "$APT/sources.list.d" "$APT/preferences.d" "$APT/lists/partial" \
  "$APT/cache/archives/partial" "$APT/debs"
# An empty package database: the candidates are the suite's own, whatever the system has.
: >"$APT/status"
# The first stanza of the main archive (not -security): same URIs, keys and components.
awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
  !done && /(^|\n)Suites:/ && !/security/ {
    for (i = 1; i <= NF; i++) {
      if ($i ~ /^Suites:/) print "Suites: " suite; else print $i
    }
    done = 1
  }' "$SOURCES" >"$APT/sources.list.d/private.sources"
grep -q '^URIs:' "$APT/sources.list.d/private.sources" ||
  { log "no Debian archive entry in $SOURCES"; exit 1; }

opts=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$APT/sources.list.d"
  -o "Dir::Etc::Preferences=/dev/null"
  -o "Dir::Etc::PreferencesParts=$APT/preferences.d"
  -o "Dir::State::Lists=$APT/lists"
  -o "Dir::Cache=$APT/cache"
  -o "Dir::State::status=$APT/status"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=root"
)
log "fetching the $SUITE package lists"
apt-get "${opts[@]}" -q update >&2
version="$(apt-cache "${opts[@]}" show --no-all-versions qemu-system-x86 | sed -n 's/^Version: //p')"
[ -n "$version" ] || { log "no qemu-system-x86 in $SUITE"; exit 1; }
log "QEMU $version"

# QEMU, its common and data files, and the firmware its machines load (microvm: SeaBIOS's
# bios-microvm.bin), all of the suite.
rm -f "$APT/debs"/*.deb
(cd "$APT/debs" && apt-get "${opts[@]}" -q download \
  "qemu-system-x86=$version" "qemu-system-common=$version" "qemu-system-data" seabios >&2)
ROOT="$DEST/root"
rm -rf "$ROOT"
mkdir -p "$ROOT"
for deb in "$APT/debs"/*.deb; do
  dpkg-deb -x "$deb" "$ROOT"
done

missing="$(ldd "$ROOT/usr/bin/qemu-system-x86_64" | awk '/not found/ { print $1 }')"
if [ -n "$missing" ]; then
  log "QEMU $version needs libraries this system lacks: $(echo $missing)"
  exit 1
fi

mkdir -p "$DEST/bin"
cat >"$WRAPPER" <<EOF
#!/bin/sh
# QEMU $version from $SUITE, extracted (not installed) by scripts/private-qemu.sh.
QEMU_MODULE_DIR="$ROOT/usr/lib/x86_64-linux-gnu/qemu" exec "$ROOT/usr/bin/qemu-system-x86_64" \\
  -L "$ROOT/usr/share/qemu" -L "$ROOT/usr/share/seabios" "\$@"
EOF
chmod +x "$WRAPPER"
"$WRAPPER" -machine help | grep -q '^microvm' || { log "$WRAPPER has no microvm machine"; exit 1; }
echo "$WRAPPER"
