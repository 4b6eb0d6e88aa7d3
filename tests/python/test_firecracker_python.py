"""firecracker-python (PyPI `firecracker-python`, module `firecracker`) drives squib.

The client's `firecracker.api.Api` is a thin `requests` wrapper: one `Resource` per path, `get()`
expects 200, `put()`/`patch()` send the keyword arguments as the JSON body (None values dropped)
and expect 204; anything else raises `firecracker.exceptions.APIError("API fault: <fault_message>")`.
Its high-level `MicroVM` class needs Docker, TAP devices and /var/lib/firecracker, so the tests use
`Api` directly with the same request bodies `MicroVM.create()` sends.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types

import pytest

from conftest import (
    BOOT_ARGS,
    GUEST_MARKER,
    NO_KERNEL_FM,
    POST_BOOT_FM,
    PRE_BOOT_FM,
    ROOTFS_MARKER,
)


def _import_client():
    """`firecracker/__init__.py` looks for /usr/local/bin/firecracker and creates
    /var/lib/firecracker{,/snapshots} at import time. The tests must not touch the host, so the
    package body is skipped and only its `api` and `exceptions` modules are loaded (unchanged)."""
    if "firecracker" not in sys.modules:
        spec = importlib.util.find_spec("firecracker")
        assert spec is not None, "firecracker-python is not installed (tests/python/run.sh installs it)"
        package = types.ModuleType("firecracker")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["firecracker"] = package
    from firecracker.api import Api
    from firecracker.exceptions import APIError

    return Api, APIError


Api, APIError = _import_client()


def test_pinned_version():
    assert importlib.metadata.version("firecracker-python") == "0.0.5"


def fault(message: str) -> str:
    """How firecracker-python words a Firecracker error body."""
    return f"API fault: {message}"


def test_configures_boots_pauses_and_is_terminated(guest, start_squib):
    squib = start_squib(vm_id="fc-python")
    rootfs = squib.rootfs_copy(guest)
    log_path = squib.dir / "squib.log"
    api = Api(squib.socket)
    try:
        info = api.describe.get().json()
        assert info["id"] == "fc-python"
        assert info["state"] == "Not started"
        assert info["app_name"] == "Firecracker"
        assert api.version.get().json()["firecracker_version"] == info["vmm_version"]

        api.logger.put(log_path=str(log_path), level="Info", show_level=True)
        api.boot.put(
            kernel_image_path=guest.kernel, initrd_path=guest.initrd, boot_args=BOOT_ARGS
        )
        api.drive.put(
            drive_id="rootfs", path_on_host=rootfs, is_root_device=True, is_read_only=False
        )
        api.machine_config.put(vcpu_count=1, mem_size_mib=256)
        machine = api.machine_config.get().json()
        assert (machine["vcpu_count"], machine["mem_size_mib"]) == (1, 256), machine

        # The metadata document MicroVM._configure_vmm_mmds() stores (the data store needs no
        # MMDS interface before boot).
        metadata = {"latest": {"meta-data": {"instance-id": "fc-python", "local-hostname": "squib"}}}
        api.mmds.put(**metadata)
        assert api.mmds.get().json() == metadata
        api.mmds.patch(latest={"meta-data": {"local-hostname": None, "zone": "z1"}})
        metadata["latest"]["meta-data"] = {"instance-id": "fc-python", "zone": "z1"}
        assert api.mmds.get().json() == metadata  # RFC 7396 merge: null deletes

        config = api.vm_config.get().json()
        assert config["boot-source"] == {
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": BOOT_ARGS,
        }, config
        assert [(d["drive_id"], d["path_on_host"], d["is_root_device"], d["is_read_only"])
                for d in config["drives"]] == [("rootfs", rootfs, True, False)], config
        assert config["machine-config"]["mem_size_mib"] == 256, config

        api.actions.put(action_type="InstanceStart")
        assert api.describe.get().json()["state"] == "Running"
        assert squib.state() == "Running"
        squib.wait_for_line(GUEST_MARKER)
        squib.wait_for_line(ROOTFS_MARKER)

        api.vm.patch(state="Paused")
        assert api.describe.get().json()["state"] == "Paused"
        api.vm.patch(state="Resumed")
        assert api.describe.get().json()["state"] == "Running"

        # Pre-boot-only calls are refused after boot, with upstream's text.
        with pytest.raises(APIError) as err:
            api.machine_config.put(vcpu_count=1, mem_size_mib=128)
        assert str(err.value) == fault(POST_BOOT_FM)
        with pytest.raises(APIError) as err:
            api.actions.put(action_type="InstanceStart")
        assert str(err.value) == fault(POST_BOOT_FM)
        # Post-boot the store needs an MMDS-enabled interface (api-contract 11).
        with pytest.raises(APIError) as err:
            api.mmds.get()
        assert str(err.value) == fault("MMDS error: The MMDS data store is not initialized.")
        assert api.describe.get().json()["state"] == "Running"
    finally:
        api.close()

    log = log_path.read_text()
    assert 'request on "/actions"' in log, log
    assert ":INFO] " in log, log  # show_level

    code = squib.terminate()
    print(f"squib exited with {code} after SIGTERM")


def test_error_paths_surface_upstream_fault_messages(guest, start_squib):
    squib = start_squib()
    api = Api(squib.socket)
    try:
        # A failed InstanceStart is not fatal (api-contract 4.3).
        with pytest.raises(APIError) as err:
            api.actions.put(action_type="InstanceStart")
        assert str(err.value) == fault(
            "Start microvm error: Cannot start microvm without kernel configuration."
        )
        with pytest.raises(APIError) as err:
            api.vm.patch(state="Paused")
        assert str(err.value) == fault(PRE_BOOT_FM)

        with pytest.raises(APIError) as err:
            api.boot.put(kernel_image_path="/nonexistent/vmlinux", boot_args=BOOT_ARGS)
        assert str(err.value) == fault(NO_KERNEL_FM)
        # The same answer, read without the client: 400 and upstream's JSON body.
        status, body = squib.api("PUT", "/boot-source", {"kernel_image_path": "/nonexistent/vmlinux"})
        assert (status, body) == (400, '{"fault_message":"%s"}' % NO_KERNEL_FM)

        with pytest.raises(APIError) as err:
            api.boot.put(kernel_image_path=guest.kernel, initrd_path="/nonexistent/initrd")
        assert str(err.value) == fault(
            "Boot source error: The initrd file cannot be opened due to invalid path or invalid "
            "permissions. No such file or directory (os error 2)"
        )

        with pytest.raises(APIError) as err:
            api.machine_config.put(vcpu_count=0, mem_size_mib=256)
        assert str(err.value) == fault(
            "Machine config error: The number of vCPUs must be greater than 0, less than 32 and "
            "must be 1 or an even number if SMT is enabled."
        )
        with pytest.raises(APIError) as err:
            api.machine_config.put(vcpu_count=1)
        assert str(err.value).startswith(fault(
            "An error occurred when deserializing the json body of a request: "
            "missing field `mem_size_mib` at line 1 column "
        )), str(err.value)

        with pytest.raises(APIError) as err:
            api.drive.put(drive_id="root-fs", path_on_host=guest.rootfs, is_root_device=True)
        assert str(err.value) == fault(
            "API Resource IDs can only contain alphanumeric characters and underscores."
        )
        with pytest.raises(APIError) as err:
            api.drive.put(drive_id="rootfs", path_on_host="/nonexistent/rootfs.ext4",
                          is_root_device=True, is_read_only=False)
        assert str(err.value).startswith(fault(
            "Drive config error: Unable to create the virtio block device: Virtio backend error: "
            "Error manipulating the backing file: No such file or directory (os error 2)"
        )), str(err.value)

        # A TAP name must be shorter than 16 bytes: refused before any device is touched.
        with pytest.raises(APIError) as err:
            api.network.put(iface_id="eth0", host_dev_name="tap_" + "x" * 20)
        assert str(err.value) == fault(
            "Network config error: Could not create the network device: Open tap device failed: "
            "Invalid interface name"
        )
        # The body MicroVM._configure_vmm_mmds() sends, without an interface behind it.
        with pytest.raises(APIError) as err:
            api.mmds_config.put(version="V2", ipv4_address="169.254.169.254",
                                network_interfaces=["eth0"])
        assert str(err.value) == fault(
            "MMMDS config error: The list of network interface IDs provided contains at least one "
            "ID that does not correspond to any existing network interface."
        )
        with pytest.raises(APIError) as err:
            api.logger.put(level="Loud")
        assert "Invalid LevelFilter" in str(err.value), str(err.value)

        # vsock as MicroVM._configure_vmm_vsock() sends it; read back through /vm/config.
        uds = str(squib.dir / "v.sock")
        api.vsock.put(guest_cid=3, uds_path=uds)
        config = api.vm_config.get().json()
        assert config["vsock"] == {"guest_cid": 3, "uds_path": uds}, config
        assert config["boot-source"]["kernel_image_path"] == "", config
        assert config["drives"] == [], config

        # Nothing above was fatal.
        assert api.describe.get().json()["state"] == "Not started"
    finally:
        api.close()
    squib.terminate()


def test_failed_snapshot_load_is_fatal(start_squib):
    """MicroVM.snapshot(action="load") body (less its network override) for a missing file:
    upstream answers 400, then exits with 1 (api-contract 4.3, 6)."""
    squib = start_squib()
    api = Api(squib.socket)
    try:
        with pytest.raises(APIError) as err:
            api.load_snapshot.put(
                enable_diff_snapshots=True,
                mem_backend={"backend_type": "File", "backend_path": str(squib.dir / "vm.mem")},
                snapshot_path=str(squib.dir / "vm.snap"),
                resume_vm=True,
            )
        assert str(err.value) == fault(
            "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state "
            "from file: Failed to open snapshot file: No such file or directory (os error 2)"
        )
    finally:
        api.close()
    assert squib.wait_exit(10) == 1, squib.console()
