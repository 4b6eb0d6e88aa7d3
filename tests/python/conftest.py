"""Shared harness of the Python-client tests: the real `squib` binary, the real test guest
under QEMU (TCG unless SQUIB_ACCEL says otherwise), the console read from squib's stdout, and a
tiny raw HTTP client over the API socket that checks results independently of the clients."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

GUEST_MARKER = "SQUIB-GUEST-INIT-OK"
ROOTFS_MARKER = "SQUIB-ROOTFS-OK"
# A TCG boot of the test guest takes seconds; the limit keeps every test well under a minute.
BOOT_TIMEOUT = float(os.environ.get("SQUIB_PY_BOOT_TIMEOUT", "40"))
# `squib.action=wait` keeps the guest alive until squib is told to stop (guest/README.md).
BOOT_ARGS = "console=ttyS0 reboot=k panic=1 squib.action=wait"

# upstream's fault message for a kernel path that does not exist (api-contract 5.4)
NO_KERNEL_FM = (
    "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"
)
PRE_BOOT_FM = "The requested operation is not supported before starting the microVM."
POST_BOOT_FM = "The requested operation is not supported after starting the microVM."


@dataclass
class Guest:
    kernel: str
    initrd: str
    rootfs: str


@pytest.fixture(scope="session")
def guest() -> Guest:
    """The test guest from guest/build.sh (cached). A missing prerequisite fails: never a skip."""
    out = subprocess.run(
        ["bash", str(REPO / "guest/build.sh"), "--print-paths"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert out.returncode == 0, "guest/build.sh failed; run scripts/install-deps.sh first"
    paths = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    for key in ("KERNEL", "INITRD", "ROOTFS"):
        assert key in paths, f"guest/build.sh printed no {key}= line:\n{out.stdout}"
        assert Path(paths[key]).is_file(), f"{key}={paths[key]} does not exist"
    assert shutil.which("qemu-system-x86_64"), (
        "qemu-system-x86_64 is missing: run scripts/install-deps.sh"
    )
    return Guest(paths["KERNEL"], paths["INITRD"], paths["ROOTFS"])


def _cargo_target_dir() -> Path:
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"])
    return REPO / "target"


@pytest.fixture(scope="session")
def squib_binary() -> str:
    """`SQUIB_BIN` (set by run.sh) or the debug build in the cargo target dir."""
    path = Path(os.environ.get("SQUIB_BIN") or _cargo_target_dir() / "debug/squib")
    assert path.is_file() and os.access(path, os.X_OK), (
        f"no squib binary at {path}: run `cargo build -p squib` (tests/python/run.sh does)"
    )
    return str(path)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._unix_path)
        self.sock = sock


def process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat.rsplit(")", 1)[-1].strip().startswith("Z")


class Squib:
    """A running `squib --api-sock <tmp>/api.sock [--id ID]`, its output collected line by line."""

    def __init__(self, binary: str, vm_id: str | None = None, extra_args: tuple[str, ...] = ()):
        # A short private directory: Unix socket paths are limited to 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="squib-py-"))
        self.socket = str(self.dir / "api.sock")
        args = [binary, "--api-sock", self.socket]
        if vm_id is not None:
            args += ["--id", vm_id]
        args += list(extra_args)
        env = dict(os.environ)
        env.setdefault("SQUIB_ACCEL", "tcg")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._open_streams = 2
        for stream, prefix in ((self.proc.stdout, ""), (self.proc.stderr, "stderr: ")):
            threading.Thread(target=self._collect, args=(stream, prefix), daemon=True).start()
        self._wait_for_socket()

    # ---- output -------------------------------------------------------------------------------

    def _collect(self, stream, prefix: str) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if os.environ.get("SQUIB_TEST_ECHO"):
                print(f"{prefix}{line}", flush=True)
            with self._cond:
                self._lines.append(prefix + line)
                self._cond.notify_all()
        with self._cond:
            self._open_streams -= 1
            self._cond.notify_all()

    def console(self) -> str:
        with self._cond:
            return "\n".join(self._lines)

    def wait_for_line(self, needle: str, timeout: float = BOOT_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(needle in line for line in self._lines):
                left = deadline - time.monotonic()
                if left <= 0 or self._open_streams == 0:
                    text = "\n".join(self._lines[-60:])
                    raise AssertionError(
                        f"no line with {needle!r} within {timeout}s; last output:\n{text}"
                    )
                self._cond.wait(left)

    # ---- raw API, independent of the clients under test ---------------------------------------

    def _wait_for_socket(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.connect(self.socket)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"API socket never came up (exit {self.proc.poll()}):\n{self.console()}"
                    )
                time.sleep(0.02)

    def api(self, method: str, path: str, body: object = None) -> tuple[int, str]:
        conn = _UnixHTTPConnection(self.socket, timeout=120)
        try:
            headers = {}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def get_json(self, path: str) -> dict:
        status, text = self.api("GET", path)
        assert status == 200, f"GET {path} -> {status} {text}"
        return json.loads(text)

    def state(self) -> str:
        return self.get_json("/")["state"]

    # ---- process ------------------------------------------------------------------------------

    def children(self) -> list[int]:
        """PIDs of squib's direct children (the QEMU process), from every thread."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                pids += [int(p) for p in (task / "children").read_text().split()]
            except OSError:
                pass
        return pids

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"squib did not exit within {timeout}s:\n{self.console()}"
            ) from None

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM; squib must exit in time and leave no QEMU behind. Returns the exit status."""
        qemu = self.children()
        assert self.proc.poll() is None, f"squib already exited:\n{self.console()}"
        self.proc.send_signal(signal.SIGTERM)
        code = self.wait_exit(timeout)
        deadline = time.monotonic() + 10
        for pid in qemu:
            while process_alive(pid):
                assert time.monotonic() < deadline, f"QEMU {pid} outlived squib"
                time.sleep(0.05)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            for pid in self.children():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def rootfs_copy(self, guest: Guest) -> str:
        """A private, writable copy of the root filesystem (the cached image stays untouched)."""
        copy = self.dir / "rootfs.ext4"
        shutil.copyfile(guest.rootfs, copy)
        return str(copy)


@pytest.fixture
def start_squib(squib_binary):
    """Factory: start_squib(vm_id=None, extra_args=()) -> Squib; every squib is ended after the test."""
    started: list[Squib] = []

    def start(vm_id: str | None = None, extra_args: tuple[str, ...] = ()) -> Squib:
        squib = Squib(squib_binary, vm_id, extra_args)
        started.append(squib)
        return squib

    yield start
    for squib in started:
        # Captured output: pytest shows it only for a failing test.
        print(f"---- squib pid {squib.proc.pid} output (tail) ----")
        print("\n".join(squib.console().splitlines()[-80:]))
        squib.close()
