#!/usr/bin/env python3
"""Boot the test guest under raw QEMU (microvm, TCG) and check its behaviour.

Builds nothing: run guest/build.sh first. Usage:
    python3 guest/smoke.py            # all checks
    python3 guest/smoke.py timing     # boot-time comparison only
    python3 guest/smoke.py argv       # print the argv used for a poweroff boot
Exit status 0 when every check passed.
"""
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.environ.get("SQUIB_GUEST_DIR", os.path.join(HERE, "out"))
QEMU = os.environ.get("QEMU", "qemu-system-x86_64")


def argv(append, qmp, initrd=True, rootfs=True, cpu="max", acpi="on", mem=256, smp=1, i8042=True):
    a = [QEMU, "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
         "-M", f"microvm,acpi={acpi},pit=on,pic=on,rtc=on,isa-serial=on",
         "-accel", "tcg"]
    if cpu:
        a += ["-cpu", cpu]
    a += ["-smp", str(smp), "-m", f"{mem}M",
          "-object", f"memory-backend-memfd,id=ram,size={mem}M,share=on",
          "-machine", "memory-backend=ram"]
    if i8042:
        a += ["-device", "i8042"]
    a += ["-kernel", os.path.join(OUT, "vmlinux")]
    if initrd:
        a += ["-initrd", os.path.join(OUT, "initrd.cpio.gz")]
    a += ["-append", append,
          "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]
    if rootfs:
        a += ["-blockdev", "driver=file,filename=%s,node-name=drive_rootfs,cache.direct=off"
              % os.path.join(OUT, "rootfs.ext4"),
              "-device", "virtio-blk-device,drive=drive_rootfs"]
    a += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    return a


class Vm:
    def __init__(self, append, **kw):
        self.dir = tempfile.mkdtemp(prefix="squib-smoke.")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.argv = argv(append, self.qmp_path, **kw)
        self.lines = []  # (t, line)
        self.cv = threading.Condition()
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        threading.Thread(target=self._reader, daemon=True).start()
        self.qmp = None
        self.eof = False

    def _reader(self):
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self.cv:
                self.lines.append((time.monotonic() - self.t0, line))
                self.cv.notify_all()
        with self.cv:
            self.eof = True
            self.cv.notify_all()

    def wait_for(self, text, timeout=60):
        """Seconds since start at which a line containing text appeared, or None."""
        end = time.monotonic() + timeout
        with self.cv:
            while True:
                for t, l in self.lines:
                    if text in l:
                        return t
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    return None
                self.cv.wait(min(left, 0.2))

    def count(self, text):
        with self.cv:
            return sum(1 for _, l in self.lines if text in l)

    def qmp_cmd(self, execute, arguments=None):
        if self.qmp is None:
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.qmp_path)
            self.qmp = s.makefile("rw")
            json.loads(self.qmp.readline())  # greeting
            self.qmp_cmd("qmp_capabilities")
        msg = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        self.qmp.write(json.dumps(msg) + "\n")
        self.qmp.flush()
        while True:
            r = json.loads(self.qmp.readline())
            if "return" in r or "error" in r:
                return r

    def wait_exit(self, timeout=60):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None

    def log(self):
        with self.cv:
            return "\n".join(l for _, l in self.lines)


RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append(ok)
    print(("PASS " if ok else "FAIL ") + name + (f"  ({detail})" if detail else ""), flush=True)


def host_tsc_khz():
    """Under TCG the guest TSC runs at the host TSC rate. The guest kernel
    calibrates it against the PIT, which fails when the host is busy, and the
    boot then hangs (jiffies never advance on microvm). Passing tsc_early_khz=
    skips the calibration. SQUIB_TSC_KHZ overrides; 0 disables."""
    v = os.environ.get("SQUIB_TSC_KHZ")
    if v is not None:
        return int(v)
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        if "constant_tsc" in info:
            for line in info.splitlines():
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except OSError:
        pass
    return 0


TSC_KHZ = host_tsc_khz()
BASE = "console=ttyS0 reboot=k panic=1" + (f" tsc_early_khz={TSC_KHZ}" if TSC_KHZ else "")


def t_poweroff(root):
    app = BASE + " squib.action=poweroff" + (" root=/dev/vda rw" if root else "")
    vm = Vm(app)
    t = vm.wait_for("SQUIB-GUEST-INIT-OK")
    tr = vm.wait_for("SQUIB-ROOTFS-OK", 30) if root else None
    rc = vm.wait_exit()
    detail = f"init marker {t and round(t, 2)}s rootfs {tr and round(tr, 2)} rc={rc}"
    check(f"poweroff {'rootfs' if root else 'initramfs'}",
          t is not None and rc == 0 and (tr is not None) == root, detail)
    if rc != 0 or t is None:
        print(vm.log()[-3000:])


def t_reboot():
    vm = Vm(BASE + " squib.action=reboot root=/dev/vda ro")
    t = vm.wait_for("SQUIB-ROOTFS-OK")
    rc = vm.wait_exit()
    check("reboot -f with -no-reboot exits 0", t is not None and rc == 0, f"rc={rc}")
    if rc != 0:
        print(vm.log()[-3000:])


def t_ctrlaltdel(root):
    vm = Vm(BASE + " squib.action=wait" + (" root=/dev/vda rw" if root else ""))
    t = vm.wait_for("SQUIB-ACTION wait")
    time.sleep(0.5)
    r = vm.qmp_cmd("send-key", {"keys": [{"type": "qcode", "data": "ctrl"},
                                         {"type": "qcode", "data": "alt"},
                                         {"type": "qcode", "data": "delete"}]})
    rc = vm.wait_exit(30)
    check(f"ctrl-alt-del via QMP send-key reboots ({'rootfs' if root else 'initramfs'})",
          t is not None and rc == 0 and "error" not in r, f"qmp={r} rc={rc}")
    if rc != 0:
        print(vm.log()[-3000:])


def t_pause():
    vm = Vm(BASE + " squib.action=shell squib.tick=1")
    ok = vm.wait_for("SQUIB-TICK 2") is not None
    vm.qmp_cmd("stop")
    st = vm.qmp_cmd("query-status")["return"]["status"]
    time.sleep(0.3)
    n0 = vm.count("SQUIB-TICK")
    time.sleep(3)
    n1 = vm.count("SQUIB-TICK")
    vm.qmp_cmd("cont")
    time.sleep(3.5)
    n2 = vm.count("SQUIB-TICK")
    # the shell is alive on the console too
    vm.qmp_cmd("quit")
    rc = vm.wait_exit(20)
    check("stop/cont pauses and resumes ticks", ok and st == "paused" and n1 == n0 and n2 > n1,
          f"status={st} ticks before={n0} after-3s-paused={n1} after-cont={n2} quit rc={rc}")


def t_acpi_off():
    vm = Vm(BASE + " squib.action=poweroff root=/dev/vda rw", acpi="off")
    t = vm.wait_for("SQUIB-GUEST-INIT-OK")
    tr = vm.wait_for("SQUIB-ROOTFS-OK", 10)
    rc = vm.wait_exit(30)
    found = "virtio_blk virtio" in vm.log()
    print(f"INFO acpi=off: init marker={t is not None} virtio-blk found={found} "
          f"rootfs={tr is not None} rc={rc}")
    if not found:
        print("\n".join(l for l in vm.log().splitlines() if "virtio" in l or "squib" in l.lower())[-1500:])


def timing(runs=3):
    for cpu in ["max", None]:
        for root in [False, True]:
            ts = []
            for _ in range(runs):
                app = BASE + " squib.action=poweroff" + (" root=/dev/vda ro" if root else "")
                vm = Vm(app, cpu=cpu)
                t = vm.wait_for("SQUIB-ROOTFS-OK" if root else "SQUIB-GUEST-INIT-OK")
                rc = vm.wait_exit()
                total = time.monotonic() - vm.t0
                ts.append((round(t, 2) if t else None, round(total, 2), rc))
            print(f"TIMING cpu={cpu or 'default(qemu64)'} {'rootfs' if root else 'initramfs'}: "
                  f"(marker s, exit s, rc) = {ts}", flush=True)


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what == "argv":
        print(shlex.join(argv(BASE + " squib.action=poweroff root=/dev/vda rw", "/tmp/x.qmp")))
        return 0
    if what in ("all", "checks"):
        t_poweroff(False)
        t_poweroff(True)
        t_reboot()
        t_ctrlaltdel(False)
        t_ctrlaltdel(True)
        t_pause()
        t_acpi_off()
    if what in ("all", "timing"):
        timing()
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
