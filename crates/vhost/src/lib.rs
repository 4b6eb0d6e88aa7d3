//! squib's vhost-user device-backend layer: what every device backend squib serves to QEMU
//! over vhost-user needs, written once (vsock today, virtio-net next).
//!
//! # How a backend plugs in
//!
//! 1. Implement rust-vmm's [`VhostUserBackend`] for the device, with `Bitmap = ()` and
//!    `Vring = `[`Vring`]; queue handling goes through `virtio-queue` (no hand-written virtqueue
//!    code). `exit_event` may be left to its default: the layer supplies the per-worker exit
//!    events that stop the worker threads.
//! 2. Give every counter the device reports a home in its section of `squib-metrics` (a
//!    `counters!` struct): its `snapshot()` is what squib's metrics registry reads (a
//!    `CounterSource`), with upstream's key names.
//! 3. Call [`serve`] with a short device name (`vsock`, `net0`): it binds the vhost-user socket
//!    at the given path (in squib's private runtime directory) and returns a [`BackendHandle`].
//!    Start QEMU afterwards with `-chardev socket,id=…,path=…` (QEMU is the client) and the
//!    device's `vhost-user-*` front-end on that chardev. A device that also waits on descriptors
//!    of its own (the vsock muxer's Unix sockets, a TAP) uses [`serve_with_workers`] to add them
//!    to its vring worker's event loop. Guest RAM must be shared
//!    (`memory-backend-file,share=on`, which squib always uses): QEMU passes its file
//!    descriptors in `SET_MEM_TABLE` and the backend maps them as [`GuestMemory`].
//! 4. Drop the handle (or call [`BackendHandle::stop`]) when the VM ends: the connection is shut,
//!    every thread of the backend is joined. QEMU going away ends the backend on its own;
//!    [`BackendHandle::status`] says how it ended.
//!
//! # Threads, not a helper process
//!
//! Backends run as threads of the squib process. Start-up costs nothing (no exec, no second
//! process to supervise or to clean up after a crash, no socket handshake before QEMU can be
//! started), and guest RAM reaches the backend through QEMU's file descriptors either way.
//! Confinement is per thread: every backend thread has a recognisable name and calls the
//! process-wide [`set_thread_hook`] once, from inside itself, before doing any work, which is
//! where a per-thread seccomp filter (`seccompiler::apply_filter` acts on the calling thread)
//! belongs. Failure isolation is the price: a backend bug is squib's bug, so backends treat
//! guest input as hostile (bounded buffers, no panics on input) like the rest of squib.
//!
//! Thread names (at most 15 bytes, the kernel's limit): `squib-⟨name⟩` supervises the socket,
//! `squib-⟨name⟩-vu` serves vhost-user requests, `squib-⟨name⟩-wN` are the vring workers (the
//! worker renames itself on its first event: rust-vmm spawns it as `vring_worker`).

mod serve;
mod thread;

pub use serve::{
    BackendError, BackendHandle, BackendStatus, WorkerEpoll, serve, serve_with_workers,
};
pub use thread::{ThreadRole, set_thread_hook};
pub use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};

/// Guest memory as the backend sees it: empty until QEMU's `SET_MEM_TABLE`, then QEMU's regions
/// mapped from the file descriptors it passed.
pub type GuestMemory = vm_memory::GuestMemoryAtomic<vm_memory::GuestMemoryMmap<()>>;

/// The vring type every squib backend uses.
pub type Vring = VringRwLock<GuestMemory>;
