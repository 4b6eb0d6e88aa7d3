#!/usr/bin/env bash
# squib's main job in one command: start squib like firecracker, configure a microVM over the
# API socket with curl (Firecracker's getting-started flow) and boot it; its console scrolls
# by on this terminal. The demo guest prints its markers and powers off,
# which ends squib with exit code 0.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash scripts/install-deps.sh
bash guest/build.sh
cargo build --release -q -p squib
eval "$(bash guest/build.sh --print-paths 2>/dev/null)"

WORK="$(mktemp -d)"
SOCK="$WORK/firecracker.socket"
cp "$ROOTFS" "$WORK/rootfs.ext4"
cleanup() { [ -n "${SQUIB_PID:-}" ] && kill "$SQUIB_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

./target/release/squib --api-sock "$SOCK" --id squib-demo &
SQUIB_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done

api() {
  echo "+ curl -X $1 http://localhost$2 -d '$3'" >&2
  curl --silent --show-error --fail-with-body --unix-socket "$SOCK" -X "$1" "http://localhost$2" \
    -H 'Accept: application/json' -H 'Content-Type: application/json' -d "$3"
  echo
}
api PUT /boot-source "{\"kernel_image_path\":\"$KERNEL\",\"initrd_path\":\"$INITRD\",\"boot_args\":\"console=ttyS0 reboot=k panic=1 squib.action=poweroff\"}"
api PUT /drives/rootfs "{\"drive_id\":\"rootfs\",\"path_on_host\":\"$WORK/rootfs.ext4\",\"is_root_device\":true,\"is_read_only\":false}"
api PUT /machine-config '{"vcpu_count":1,"mem_size_mib":256}'
api PUT /actions '{"action_type":"InstanceStart"}'
curl --silent --unix-socket "$SOCK" http://localhost/ && echo

set +e
wait "$SQUIB_PID"
code=$?
SQUIB_PID=""
echo "squib exited with code $code"
exit "$code"
