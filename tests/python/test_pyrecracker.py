"""pyrecracker (PyPI `pyrecracker`, Python >= 3.12) drives squib.

`pyrecracker.client.FirecrackerClient` sends dataclass bodies (None fields dropped) with
`requests_unixsocket` and calls `raise_for_status()`: an error comes back as
`requests.HTTPError` whose `response` carries the status and Firecracker's
`{"fault_message": ...}` body (its `str()` is only "400 Client Error: ..."). The client has no
GET calls, so results are read through the API with the harness's raw HTTP client. Its
high-level `pyrecracker.vm` wrapper needs sudo, TAP devices and the firecracker binary, so the
tests use the client directly, ending the guest the way `VM.stop()` does (SendCtrlAltDel).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys

import pytest

from conftest import (
    BOOT_ARGS,
    GUEST_MARKER,
    NO_KERNEL_FM,
    POST_BOOT_FM,
    PRE_BOOT_FM,
    ROOTFS_MARKER,
    process_alive,
)

try:
    from requests import HTTPError

    from pyrecracker.client import FirecrackerClient
    from pyrecracker.client_types import (
        VM,
        ActionType,
        BootSource,
        CacheType,
        Drive,
        HugePages,
        InstanceActionInfo,
        IOEngine,
        MachineConfiguration,
        NetworkInterface,
        SnapshotCreateParams,
        SnapshotLoadParams,
        VMState,
    )
except ImportError as error:  # pragma: no cover - depends on the interpreter
    _message = (
        f"pyrecracker cannot be imported on Python {sys.version.split()[0]} "
        f"({sys.executable}): {error}. It needs Python >= 3.12 and tests/python/run.sh's venv."
    )
    if os.environ.get("CI") == "true":
        pytest.fail(_message, pytrace=False)
    print(f"\n{'!' * 78}\n!!! SKIPPING the pyrecracker tests: {_message}\n{'!' * 78}", file=sys.stderr)
    pytest.skip(_message, allow_module_level=True)


def test_pinned_version():
    assert sys.version_info >= (3, 12)
    assert importlib.metadata.version("pyrecracker") == "0.6.4"


def fault_of(err: pytest.ExceptionInfo) -> tuple[int, str]:
    """(status, fault_message) of the HTTPError pyrecracker raised."""
    assert isinstance(err.value, HTTPError)
    response = err.value.response
    return response.status_code, json.loads(response.text)["fault_message"]


def test_configures_boots_and_stops_with_ctrl_alt_del(guest, start_squib):
    squib = start_squib(vm_id="pyrecracker")
    rootfs = squib.rootfs_copy(guest)
    client = FirecrackerClient(squib.socket)

    client.put_machine_config(MachineConfiguration(
        mem_size_mib=256, vcpu_count=1, smt=False, track_dirty_pages=False,
        huge_pages=HugePages.NONE,
    ))
    client.put_boot_source(BootSource(
        kernel_image_path=guest.kernel, boot_args=BOOT_ARGS, initrd_path=guest.initrd,
    ))
    client.put_drives(Drive(
        drive_id="rootfs", is_root_device=True, cache_type=CacheType.UNSAFE,
        is_read_only=False, path_on_host=rootfs, io_engine=IOEngine.SYNC,
    ))

    config = squib.get_json("/vm/config")
    assert config["machine-config"] == {
        "vcpu_count": 1, "mem_size_mib": 256, "smt": False, "track_dirty_pages": False,
        "huge_pages": "None",
    }, config
    assert config["boot-source"] == {
        "kernel_image_path": guest.kernel, "initrd_path": guest.initrd, "boot_args": BOOT_ARGS,
    }, config
    drive = config["drives"][0]
    assert (drive["drive_id"], drive["path_on_host"], drive["is_root_device"],
            drive["cache_type"], drive["io_engine"]) == ("rootfs", rootfs, True, "Unsafe", "Sync"), config

    client.put_actions(InstanceActionInfo(action_type=ActionType.INSTANCE_START))
    info = squib.get_json("/")
    assert (info["id"], info["state"]) == ("pyrecracker", "Running"), info
    squib.wait_for_line(GUEST_MARKER)
    squib.wait_for_line(ROOTFS_MARKER)

    client.patch_vm(VM(state=VMState.PAUSED))
    assert squib.state() == "Paused"
    client.patch_vm(VM(state=VMState.RESUMED))
    assert squib.state() == "Running"

    # No metrics configured: a no-op 204 (api-contract 5.3).
    client.put_actions(InstanceActionInfo(action_type=ActionType.FLUSH_METRICS))

    # Snapshots need a paused VM (api-contract 6).
    with pytest.raises(HTTPError) as err:
        client.put_snapshot_create(SnapshotCreateParams(
            snapshot_path=str(squib.dir / "vm.snap"), mem_file_path=str(squib.dir / "vm.mem"),
        ))
    assert fault_of(err) == (400, (
        "Create snapshot error: Cannot save the microVM state: Operation not allowed: "
        "save/restore unavailable while running"
    ))
    with pytest.raises(HTTPError) as err:
        client.put_boot_source(BootSource(kernel_image_path=guest.kernel))
    assert fault_of(err) == (400, POST_BOOT_FM)
    assert squib.state() == "Running"

    # VM.stop(): Ctrl-Alt-Del makes busybox init reboot; a microVM does not reboot, so squib
    # ends with 0 and takes QEMU with it.
    qemu = squib.children()
    assert len(qemu) == 1, qemu
    client.put_actions(InstanceActionInfo(action_type=ActionType.SEND_CTRL_ALT_DEL))
    assert squib.wait_exit(40) == 0, squib.console()
    assert not process_alive(qemu[0])


def test_error_paths_surface_upstream_fault_messages(guest, start_squib):
    squib = start_squib()
    client = FirecrackerClient(squib.socket)

    # A failed InstanceStart is not fatal (api-contract 4.3).
    with pytest.raises(HTTPError) as err:
        client.put_actions(InstanceActionInfo(action_type=ActionType.INSTANCE_START))
    assert fault_of(err) == (400, "Start microvm error: Cannot start microvm without kernel configuration.")
    with pytest.raises(HTTPError) as err:
        client.patch_vm(VM(state=VMState.PAUSED))
    assert fault_of(err) == (400, PRE_BOOT_FM)

    with pytest.raises(HTTPError) as err:
        client.put_boot_source(BootSource(kernel_image_path="/nonexistent/vmlinux", boot_args=BOOT_ARGS))
    assert fault_of(err) == (400, NO_KERNEL_FM)
    assert str(err.value).startswith("400 Client Error"), str(err.value)

    # The client validates some values itself: no request is sent.
    with pytest.raises(ValueError):
        MachineConfiguration(mem_size_mib=256, vcpu_count=0)
    # ... and leaves the rest to the server.
    with pytest.raises(HTTPError) as err:
        client.put_machine_config(MachineConfiguration(
            mem_size_mib=255, vcpu_count=1, huge_pages=HugePages.TWO_MIB,
        ))
    assert fault_of(err) == (400, (
        "Machine config error: The memory size (MiB) is either 0, or not a multiple of the "
        "configured page size."
    ))

    with pytest.raises(HTTPError) as err:
        client.put_drives(Drive(drive_id="rootfs", is_root_device=True,
                                path_on_host="/nonexistent/rootfs.ext4"))
    status, message = fault_of(err)
    assert status == 400
    assert message.startswith(
        "Drive config error: Unable to create the virtio block device: Virtio backend error: "
        "Error manipulating the backing file: No such file or directory (os error 2)"
    ), message

    with pytest.raises(HTTPError) as err:
        client.put_network_interfaces(NetworkInterface(host_dev_name="tap_" + "x" * 20, iface_id="eth0"))
    assert fault_of(err) == (400, (
        "Network config error: Could not create the network device: Open tap device failed: "
        "Invalid interface name"
    ))

    # The calls above got past parsing, so this is a "boot path" process now (api-contract 4.2):
    # loading a snapshot is refused, and not fatally.
    with pytest.raises(HTTPError) as err:
        client.put_snapshot_load(SnapshotLoadParams(
            snapshot_path=str(squib.dir / "vm.snap"), mem_file_path=str(squib.dir / "vm.mem"),
        ))
    assert fault_of(err) == (400, (
        "Load snapshot error: Loading a microVM snapshot not allowed after configuring "
        "boot-specific resources."
    ))

    assert squib.state() == "Not started"
    assert squib.get_json("/vm/config")["drives"] == []
    squib.terminate()
