//! The syscalls each thread kind may make. Filled from what squib's threads (and, for the
//! VMM kind, QEMU: it inherits that filter) were seen to call across the end-to-end suite,
//! plus the error paths next to them.

//!
//! Also compiled into the build script (`build.rs`), which turns them into BPF at build time:
//! nothing here may depend on the rest of the crate.

use libc::*;
use seccompiler::{BpfProgram, sock_filter};

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
    // A snapshot of a restored guest reads the pages it dirtied from QEMU. QEMU gets nothing
    // new with it: as squib's child with squib's uid it may already open `/proc/<squib>/mem`
    // (the same ptrace check), as it opens `/proc/<squib>/fd/<n>`.
    SYS_process_vm_readv,
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

/// The flags of an `openat` that may write: the C library's own opens on a thread that opens
/// nothing itself (time zone, CPU count, tunables) are read-only.
const OPENAT_WRITING: u32 = (O_ACCMODE | O_CREAT | O_TRUNC | O_APPEND | O_TMPFILE) as u32;

// Classic BPF, as the kernel reads it (`linux/filter.h`, `linux/seccomp.h`).
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGE_K: u16 = 0x35;
const ALU_AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
// Offsets in `struct seccomp_data`: nr, arch, then the arguments from byte 16 (the low
// half of each first, little-endian).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARG2_LOW: u32 = 16 + 2 * 8;
/// Syscall numbers a leaf of the search tree compares one after the other.
const LEAF: usize = 3;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The BPF program of a kind: its allow list, read-only `openat` where the list lacks it,
/// everything else traps; another architecture kills the process.
///
/// The syscall number goes through a binary search tree, not a list of comparisons (what
/// seccompiler emits): the kernel attaches a filter in time proportional to its length
/// and, for its per-syscall action cache, runs it once for every syscall number, which on
/// a list walks it all for each number it traps. squib attaches two filters on its way to
/// the first API answer; as a tree they attach in about a third of the time (measured in
/// `make bench`'s start-up figures). `tests::tree_decides_as_seccompiler` checks that
/// every syscall number, architecture and `openat` flag gets seccompiler's answer.
pub(crate) fn compile(kind: ThreadKind) -> Result<BpfProgram, String> {
    let allowed = allowed(kind);
    let mut numbers: Vec<u32> = allowed
        .iter()
        .map(|nr| u32::try_from(*nr).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let openat = SYS_openat as u32;
    let guarded_openat = !numbers.contains(&openat);
    if guarded_openat {
        numbers.push(openat);
        numbers.sort_unstable();
    }
    let mut program = vec![
        insn(LD_W_ABS, 0, 0, DATA_ARCH),
        insn(JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET_K, 0, 0, RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, DATA_NR),
    ];
    program.extend(tree(&numbers, guarded_openat.then_some(openat))?);
    if program.len() >= 4096 {
        return Err(format!(
            "{} instructions, more than BPF allows",
            program.len()
        ));
    }
    Ok(program)
}

/// The search tree over `numbers` (sorted), the syscall number in the accumulator.
fn tree(numbers: &[u32], guarded_openat: Option<u32>) -> Result<Vec<sock_filter>, String> {
    if numbers.len() <= LEAF {
        return Ok(leaf(numbers, guarded_openat));
    }
    let middle = numbers.len() / 2;
    let below = tree(&numbers[..middle], guarded_openat)?;
    let above = tree(&numbers[middle..], guarded_openat)?;
    let mut out = Vec::with_capacity(below.len() + above.len() + 2);
    // Jump offsets of conditional jumps are 8 bits; past that, through an unconditional one.
    match u8::try_from(below.len()) {
        Ok(skip) => out.push(insn(JMP_JGE_K, skip, 0, numbers[middle])),
        Err(_) => {
            let skip = u32::try_from(below.len()).map_err(|e| e.to_string())?;
            out.push(insn(JMP_JGE_K, 0, 1, numbers[middle]));
            out.push(insn(JMP_JA, 0, 0, skip));
        }
    }
    out.extend(below);
    out.extend(above);
    Ok(out)
}

/// Up to [`LEAF`] comparisons, then: trap, allow, and the read-only check of `openat`.
fn leaf(numbers: &[u32], guarded_openat: Option<u32>) -> Vec<sock_filter> {
    let count = numbers.len() as u8;
    let mut out: Vec<sock_filter> = numbers
        .iter()
        .enumerate()
        .map(|(i, nr)| {
            // From comparison i, the next instruction is i + 1; trap is at `count`.
            let to_allow = count - i as u8;
            let target = if Some(*nr) == guarded_openat {
                to_allow + 1
            } else {
                to_allow
            };
            insn(JMP_JEQ_K, target, 0, *nr)
        })
        .collect();
    out.push(insn(RET_K, 0, 0, RET_TRAP));
    out.push(insn(RET_K, 0, 0, RET_ALLOW));
    if numbers.iter().any(|nr| Some(*nr) == guarded_openat) {
        out.extend([
            insn(LD_W_ABS, 0, 0, DATA_ARG2_LOW),
            insn(ALU_AND_K, 0, 0, OPENAT_WRITING),
            insn(JMP_JEQ_K, 0, 1, 0),
            insn(RET_K, 0, 0, RET_ALLOW),
            insn(RET_K, 0, 0, RET_TRAP),
        ]);
    }
    out
}

/// What seccompiler builds from the same rules: the reference the tree is checked against.
#[cfg(test)]
fn compile_with_seccompiler(kind: ThreadKind) -> Result<BpfProgram, String> {
    use std::collections::BTreeMap;

    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let read_only = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(u64::from(OPENAT_WRITING)),
        0,
    )
    .map_err(|e| e.to_string())?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed(kind).iter().map(|nr| (*nr, Vec::new())).collect();
    rules.entry(SYS_openat).or_insert(vec![
        SeccompRule::new(vec![read_only]).map_err(|e| e.to_string())?,
    ]);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic BPF program over a `struct seccomp_data`: the instructions either
    /// generator emits, anything else fails the test.
    fn run(program: &[sock_filter], data: &[u8; 64]) -> u32 {
        let word = |offset: u32| {
            let at = offset as usize;
            u32::from_ne_bytes(data[at..at + 4].try_into().unwrap())
        };
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = &program[pc];
            pc += 1;
            let jump = |taken: bool| if taken { i.jt as usize } else { i.jf as usize };
            match i.code {
                LD_W_ABS => a = word(i.k),
                ALU_AND_K => a &= i.k,
                RET_K => return i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K => pc += jump(a == i.k),
                JMP_JGE_K => pc += jump(a >= i.k),
                0x25 => pc += jump(a > i.k),
                0x45 => pc += jump(a & i.k != 0),
                code => panic!("unexpected BPF instruction {code:#x}"),
            }
        }
    }

    fn data(arch: u32, nr: u32, arg2: u64) -> [u8; 64] {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[32..40].copy_from_slice(&arg2.to_ne_bytes());
        data
    }

    #[test]
    fn tree_decides_as_seccompiler() {
        let flags: Vec<u64> = [
            O_RDONLY,
            O_RDONLY | O_CLOEXEC,
            O_RDONLY | O_DIRECTORY | O_NOFOLLOW,
            O_WRONLY,
            O_RDWR,
            O_CREAT,
            O_TRUNC,
            O_APPEND,
            O_TMPFILE,
            O_RDONLY | O_CREAT | O_EXCL,
        ]
        .iter()
        .map(|f| *f as u64)
        .chain([1 << 32, (1 << 32) | O_WRONLY as u64, u64::MAX])
        .collect();
        let numbers = (0..=600u32)
            .chain((0..=600).map(|nr| nr | 0x4000_0000))
            .chain([u32::MAX, 0x8000_0000]);
        let mut checked = 0;
        for kind in ThreadKind::ALL {
            let tree = compile(kind).unwrap();
            let reference = compile_with_seccompiler(kind).unwrap();
            assert!(tree.len() * 2 < reference.len(), "{kind:?}: {}", tree.len());
            for nr in numbers.clone() {
                for arch in [AUDIT_ARCH_X86_64, 0x4000_0003, 0xc000_00b7] {
                    let args: &[u64] = if nr == SYS_openat as u32 {
                        &flags
                    } else {
                        &[0]
                    };
                    for arg2 in args {
                        let data = data(arch, nr, *arg2);
                        assert_eq!(
                            run(&tree, &data),
                            run(&reference, &data),
                            "{kind:?}: syscall {nr:#x}, arch {arch:#x}, arg2 {arg2:#x}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000);
    }

    #[test]
    fn openat_is_read_only_only_where_the_list_lacks_it() {
        let openat = |kind, flags: c_int| {
            run(
                &compile(kind).unwrap(),
                &data(AUDIT_ARCH_X86_64, SYS_openat as u32, flags as u64),
            )
        };
        assert_eq!(openat(ThreadKind::Api, O_RDONLY | O_CLOEXEC), RET_ALLOW);
        assert_eq!(openat(ThreadKind::Api, O_WRONLY | O_CREAT), RET_TRAP);
        assert_eq!(openat(ThreadKind::Vmm, O_WRONLY | O_CREAT), RET_ALLOW);
        let write = run(
            &compile(ThreadKind::Api).unwrap(),
            &data(AUDIT_ARCH_X86_64, SYS_write as u32, 0),
        );
        let execve = run(
            &compile(ThreadKind::Api).unwrap(),
            &data(AUDIT_ARCH_X86_64, SYS_execve as u32, 0),
        );
        let foreign = run(
            &compile(ThreadKind::Api).unwrap(),
            &data(0x4000_0003, SYS_write as u32, 0),
        );
        assert_eq!(
            (write, execve, foreign),
            (RET_ALLOW, RET_TRAP, RET_KILL_PROCESS)
        );
    }
}
