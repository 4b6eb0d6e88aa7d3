//! The syscalls each thread kind may make. Filled from what squib's threads (and, for the
//! VMM kind, QEMU: it inherits that filter) were seen to call across the end-to-end suite,
//! plus the error paths next to them.

//!
//! Also compiled into the build script (`build.rs`), which turns them into BPF at build time:
//! nothing here may depend on the rest of the crate.

use std::collections::BTreeMap;

use libc::*;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of squib threads; each has its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The main thread, the VMM runtime's workers and blocking threads: the VMM loop, the
    /// QEMU engine (QMP, QEMU's start, snapshots), the network relays and MMDS, the logger
    /// and metrics. QEMU inherits this filter.
    Vmm,
    /// The API server thread (`fc_api`): accepts connections and moves HTTP bytes.
    Api,
    /// Device backend threads (vhost-user: `squib-<device>…`): guest memory, the device's
    /// sockets and TAPs, eventfds. Broad enough for any backend kind.
    Backend,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Api, ThreadKind::Backend];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::Backend => "backend",
        }
    }
}

/// Every thread: memory, futexes, signals, time, exiting, logging.
const COMMON: &[c_long] = &[
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mremap,
    SYS_mprotect,
    SYS_madvise,
    SYS_futex,
    SYS_sched_yield,
    SYS_sched_getaffinity,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sigaltstack,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_nanosleep,
    SYS_gettid,
    SYS_getpid,
    SYS_exit,
    SYS_exit_group,
    SYS_write,
    SYS_writev,
    SYS_read,
    SYS_close,
    SYS_getrandom,
    SYS_rseq,
    SYS_getcpu,
    SYS_set_robust_list,
    SYS_prctl,
    // The logger's local time checks the time zone file for changes.
    SYS_statx,
];

/// The API thread: it only accepts connections on its bound socket and moves bytes.
const API: &[c_long] = &[
    SYS_accept4,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_ctl,
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_sendto,
    SYS_sendmsg,
    SYS_readv,
    SYS_shutdown,
    SYS_ioctl,
    SYS_fcntl,
    SYS_getsockopt,
    SYS_setsockopt,
    SYS_getsockname,
    SYS_getpeername,
    // The API runtime may start a blocking-pool thread (it inherits this filter); `execve`
    // stays forbidden, so a child could do nothing.
    SYS_clone,
    SYS_clone3,
];

/// Device-backend threads: event loops on eventfds and sockets, guest memory mapped from
/// QEMU's descriptors, TAPs, files of any kind, threads, io_uring and AIO. Deliberately broad
/// (backends of kinds not written yet must not die on their first `ioctl`), but no process
/// creation, no `execve`, no privileged calls (mount, ptrace, bpf, modules, namespaces, …).
const BACKEND: &[c_long] = &[
    // A backend thread starts the backend's other threads (rust-vmm's request and vring
    // workers), which inherit its filter and then add their own through the thread hook:
    // `seccomp` can only narrow what a thread may do.
    SYS_seccomp,
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_wait,
    SYS_epoll_pwait,
    SYS_epoll_pwait2,
    SYS_eventfd,
    SYS_pipe,
    SYS_recvmmsg,
    SYS_sendmmsg,
    SYS_openat2,
    SYS_mlock2,
    SYS_poll,
    SYS_ppoll,
    SYS_eventfd2,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_timerfd_gettime,
    SYS_socket,
    SYS_socketpair,
    SYS_bind,
    SYS_listen,
    SYS_connect,
    SYS_accept4,
    SYS_recvfrom,
    SYS_recvmsg,
    SYS_sendto,
    SYS_sendmsg,
    SYS_shutdown,
    SYS_getsockopt,
    SYS_setsockopt,
    SYS_getsockname,
    SYS_getpeername,
    SYS_readv,
    SYS_preadv,
    SYS_pwritev,
    SYS_pread64,
    SYS_pwrite64,
    SYS_lseek,
    SYS_openat,
    SYS_fstat,
    SYS_newfstatat,
    SYS_statx,
    SYS_fsync,
    SYS_fdatasync,
    SYS_fallocate,
    SYS_ftruncate,
    SYS_unlink,
    SYS_unlinkat,
    SYS_ioctl,
    SYS_fcntl,
    SYS_dup,
    SYS_dup2,
    SYS_dup3,
    SYS_pipe2,
    SYS_memfd_create,
    SYS_clone,
    SYS_clone3,
    SYS_set_tid_address,
    SYS_sched_getparam,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
    SYS_uname,
    SYS_prlimit64,
    SYS_kill,
    SYS_tgkill,
    SYS_open,
    SYS_creat,
    SYS_stat,
    SYS_lstat,
    SYS_access,
    SYS_faccessat,
    SYS_faccessat2,
    SYS_readlink,
    SYS_readlinkat,
    SYS_getdents64,
    SYS_mkdir,
    SYS_mkdirat,
    SYS_rmdir,
    SYS_rename,
    SYS_renameat,
    SYS_renameat2,
    SYS_link,
    SYS_linkat,
    SYS_symlink,
    SYS_chmod,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchown,
    SYS_chown,
    SYS_lchown,
    SYS_fchownat,
    SYS_utimensat,
    SYS_futimesat,
    SYS_fstatfs,
    SYS_statfs,
    SYS_getcwd,
    SYS_flock,
    SYS_copy_file_range,
    SYS_sendfile,
    SYS_splice,
    SYS_fadvise64,
    SYS_sync_file_range,
    SYS_mlock,
    SYS_munlock,
    SYS_mincore,
    SYS_msync,
    SYS_membarrier,
    SYS_getpgid,
    SYS_getppid,
    SYS_getresuid,
    SYS_getresgid,
    SYS_getgroups,
    SYS_arch_prctl,
    SYS_rt_sigtimedwait,
    SYS_rt_sigsuspend,
    SYS_rt_sigqueueinfo,
    SYS_signalfd4,
    SYS_io_uring_setup,
    SYS_io_uring_enter,
    SYS_io_uring_register,
    SYS_io_setup,
    SYS_io_destroy,
    SYS_io_submit,
    SYS_io_getevents,
    SYS_select,
    SYS_pselect6,
    SYS_sysinfo,
    SYS_getrusage,
    SYS_times,
    SYS_getpriority,
    SYS_sched_setaffinity,
    SYS_sched_getscheduler,
    SYS_mbind,
    SYS_get_mempolicy,
    SYS_set_mempolicy,
    SYS_capget,
    SYS_getitimer,
    SYS_setitimer,
    SYS_timer_create,
    SYS_timer_settime,
    SYS_timer_delete,
    SYS_clock_getres,
    SYS_gettimeofday,
    SYS_time,
    SYS_userfaultfd,
    SYS_inotify_init1,
    SYS_inotify_add_watch,
];

/// VMM threads: everything the backends may do (the VMM loop, relays, MMDS, logger, metrics,
/// snapshots, and QEMU, which inherits this filter, call from the same set), plus starting
/// QEMU and waiting for it, and what QEMU does as it starts (its own sandbox).
const VMM: &[c_long] = &[
    SYS_vfork,
    SYS_fork,
    SYS_execve,
    SYS_execveat,
    SYS_wait4,
    SYS_waitid,
    SYS_pidfd_open,
    SYS_pidfd_send_signal,
    SYS_setsid,
    SYS_setpgid,
    SYS_seccomp,
    SYS_close_range,
    SYS_fchdir,
    SYS_chdir,
    SYS_umask,
];

/// The sorted, de-duplicated allow list of a kind.
pub(crate) fn allowed(kind: ThreadKind) -> Vec<c_long> {
    let mut list: Vec<c_long> = COMMON.to_vec();
    match kind {
        ThreadKind::Api => list.extend(API),
        ThreadKind::Backend => list.extend(BACKEND),
        ThreadKind::Vmm => {
            list.extend(BACKEND);
            list.extend(VMM);
        }
    }
    list.sort_unstable();
    list.dedup();
    list
}

/// `openat` with read-only flags: what the C library may do behind squib's back (time zone,
/// CPU count, tunables) on a thread that opens nothing itself.
fn read_only_openat() -> Result<Vec<SeccompRule>, String> {
    let writing =
        (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_APPEND | libc::O_TMPFILE) as u64;
    let condition = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(writing),
        0,
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        SeccompRule::new(vec![condition]).map_err(|e| e.to_string())?,
    ])
}

/// The BPF program of a kind: its allow list, read-only `openat`, everything else traps.
pub(crate) fn compile(kind: ThreadKind) -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed(kind).iter().map(|nr| (*nr, Vec::new())).collect();
    rules.entry(libc::SYS_openat).or_insert(read_only_openat()?);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}
