//! Seccomp filters on every squib thread, one filter per thread kind, installed by the thread
//! itself as it starts ([`apply_current`], the one entry point every thread spawner calls).
//!
//! A thread that makes a syscall its filter does not allow gets `SIGSYS`; the handler logs
//! upstream's lines, sets `seccomp.num_faults`, writes a last metrics line and ends squib
//! with upstream's exit code 148 (`BadSyscall`). Filters are inherited by children: QEMU,
//! spawned from a VMM thread, runs under the VMM filter *and* its own `-sandbox`.
//!
//! `--no-seccomp` installs nothing. `--seccomp-filter FILE` takes upstream's binary format
//! (what Firecracker ≥ 1.15's `seccompiler-bin` writes: a bitcode-serialized map from thread
//! category to BPF instructions, each a little-endian `u64`); its `api` program goes on the
//! API thread, its `vmm` program on every other squib thread, its `vcpu` program is required
//! and unused (squib's vCPUs are QEMU's threads, confined by QEMU's sandbox).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use seccompiler::{BpfProgram, sock_filter};
use squib_metrics::MetricsRegistry;

use crate::logging::Logger;

// The rules themselves are compiled by build.rs (and checked by the tests): the binary
// carries only their BPF and the thread kinds.
#[cfg_attr(not(test), allow(dead_code))]
mod syscalls;

pub use syscalls::ThreadKind;

/// squib's own filters, compiled from `syscalls.rs` by `build.rs`: nothing to compile at
/// start-up.
mod compiled {
    use seccompiler::sock_filter;

    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// Upstream's exit code after a seccomp violation.
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// Upstream's limit on a filter file (4096 instructions a program, a few programs).
const FILE_SIZE_LIMIT: usize = 100_000;
/// Upstream's thread categories, all required in a custom filter.
const CATEGORIES: [&str; 3] = ["vmm", "api", "vcpu"];

/// Why the filters could not be loaded (upstream's texts, after `Seccomp error: `).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("Filter deserialization failed: {0}")]
    Deserialization(String),
    #[error("Invalid thread categories: {0}")]
    ThreadCategories(String),
    #[error("Missing thread category: {0}")]
    MissingThreadCategory(String),
    #[error("Filter file open error: {0}")]
    FileOpen(std::io::Error),
}

/// One thread kind's program: squib's, built in, or one of a `--seccomp-filter` file.
type Program = Cow<'static, [sock_filter]>;

/// The programs to install, by thread kind; `None`: seccomp is off.
struct Filters {
    programs: Option<HashMap<ThreadKind, Program>>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();
static METRICS: OnceLock<Arc<MetricsRegistry>> = OnceLock::new();
static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Loads the filters (`--no-seccomp`, `--seccomp-filter`, or squib's defaults) and installs
/// the `SIGSYS` handler. Call once, before any thread applies its filter.
pub fn init(no_seccomp: bool, custom: Option<&Path>) -> Result<(), FilterError> {
    let programs = match (no_seccomp, custom) {
        (true, _) => None,
        (false, Some(path)) => Some(custom_filters(path)?),
        (false, None) => Some(default_filters()),
    };
    if programs.is_some() {
        // glibc shrinks a thread's malloc arena after large frees, and reads
        // /proc/sys/vm/overcommit_memory the first time it does: an open no thread kind
        // should need. No trimming, no such open (the memory stays reusable by squib).
        // SAFETY: mallopt only changes malloc's tuning.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
    }
    let _ = FILTERS.set(Filters { programs });
    install_sigsys_handler();
    Ok(())
}

/// Lets the `SIGSYS` handler log, count the fault and write a last metrics line.
pub fn set_reporting(logger: Logger, metrics: Arc<MetricsRegistry>) {
    let _ = LOGGER.set(logger);
    let _ = METRICS.set(metrics);
}

/// Installs the calling thread's filter. Every squib thread calls this first thing (tokio's
/// `on_thread_start`, the API thread, the device-backend hook). A thread that cannot be
/// confined ends squib: it would otherwise run unfiltered.
pub fn apply_current(kind: ThreadKind) {
    let Some(filters) = FILTERS.get() else {
        return;
    };
    let Some(program) = filters.programs.as_ref().and_then(|p| p.get(&kind)) else {
        return;
    };
    if program.is_empty() {
        return;
    }
    // A thread inherits its creator's filters. A VMM-runtime thread created by a filtered
    // thread (a blocking thread started by a worker) already runs under the VMM filter:
    // stacking it again would only make every syscall (and QEMU's, which inherits the stack)
    // evaluate it twice. Narrower kinds always add theirs.
    if kind == ThreadKind::Vmm && already_filtered() {
        return;
    }
    if let Err(e) = seccompiler::apply_filter(program) {
        tracing::error!("Failed to install the {} seccomp filter: {e}", kind.name());
        std::process::exit(1);
    }
}

fn already_filtered() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointers; 2 means filter mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) == 2 }
}

fn default_filters() -> HashMap<ThreadKind, Program> {
    HashMap::from([
        (ThreadKind::Vmm, Cow::Borrowed(compiled::VMM)),
        (ThreadKind::Api, Cow::Borrowed(compiled::API)),
        (ThreadKind::Backend, Cow::Borrowed(compiled::BACKEND)),
    ])
}

/// One upstream instruction (`struct sock_filter` as a little-endian `u64`).
fn instruction(raw: u64) -> sock_filter {
    sock_filter {
        code: raw as u16,
        jt: (raw >> 16) as u8,
        jf: (raw >> 24) as u8,
        k: (raw >> 32) as u32,
    }
}

/// Parses upstream's binary filter file.
pub(crate) fn parse_custom(bytes: &[u8]) -> Result<HashMap<String, BpfProgram>, FilterError> {
    if bytes.len() > FILE_SIZE_LIMIT {
        return Err(FilterError::Deserialization(format!(
            "Input size {} exceeds limit of {FILE_SIZE_LIMIT} bytes",
            bytes.len()
        )));
    }
    let map: HashMap<String, Vec<u64>> = bitcode::deserialize(bytes).map_err(|e| {
        FilterError::Deserialization(format!("Bitcode deserialization failed: {e}"))
    })?;
    let map: HashMap<String, BpfProgram> = map
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v.into_iter().map(instruction).collect()))
        .collect();
    let mut invalid: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !CATEGORIES.contains(k))
        .collect();
    if !invalid.is_empty() {
        invalid.sort_unstable();
        return Err(FilterError::ThreadCategories(invalid.join(",")));
    }
    if let Some(missing) = CATEGORIES.iter().find(|c| !map.contains_key(**c)) {
        return Err(FilterError::MissingThreadCategory(missing.to_string()));
    }
    Ok(map)
}

fn custom_filters(path: &Path) -> Result<HashMap<ThreadKind, Program>, FilterError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(FilterError::FileOpen)?
        .take(FILE_SIZE_LIMIT as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FilterError::Deserialization(format!("Failed to read input: {e}")))?;
    let mut map = parse_custom(&bytes)?;
    let vmm = map.remove("vmm").unwrap_or_default();
    let api = map.remove("api").unwrap_or_default();
    Ok(HashMap::from([
        (ThreadKind::Vmm, Cow::Owned(vmm.clone())),
        (ThreadKind::Backend, Cow::Owned(vmm)),
        (ThreadKind::Api, Cow::Owned(api)),
    ]))
}

/// `si_syscall` of a `SIGSYS` siginfo (an `int` at byte 24, after signo/errno/code,
/// padding and `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;
/// `si_code` of a seccomp `SIGSYS`.
const SYS_SECCOMP: i32 = 1;

extern "C" fn on_sigsys(signo: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands a valid siginfo to an SA_SIGINFO handler.
    let (si_signo, si_code) = unsafe { ((*info).si_signo, (*info).si_code) };
    if signo != libc::SIGSYS || si_signo != libc::SIGSYS || si_code != SYS_SECCOMP {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: a seccomp SIGSYS's siginfo holds si_syscall at this offset (see above).
    let syscall = unsafe { *(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    // Like upstream, log and write metrics from the handler: squib is going down anyway. The
    // logger is never waited for (the faulting thread may hold it).
    if let Some(metrics) = METRICS.get() {
        metrics.values.seccomp.num_faults.set(1);
    }
    if let Some(logger) = LOGGER.get() {
        logger.error_from_signal_handler(&format!(
            "Shutting down VM after intercepting signal {si_signo}, code {si_code}."
        ));
        logger.error_from_signal_handler(&format!(
            "Shutting down VM after intercepting a bad syscall ({syscall})."
        ));
    }
    if let Some(metrics) = METRICS.get() {
        let _ = metrics.try_flush();
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(EXIT_BAD_SYSCALL) };
}

fn install_sigsys_handler() {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler has the SA_SIGINFO
    // signature; every other signal is blocked while it runs.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigfillset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn encode(map: &BTreeMap<String, Vec<u64>>) -> Vec<u8> {
        bitcode::serialize(map).unwrap()
    }

    #[test]
    fn built_in_filters_are_the_compiled_rules() {
        let filters = default_filters();
        for kind in ThreadKind::ALL {
            let program = &filters[&kind];
            assert!(!program.is_empty() && program.len() < 4096, "{kind:?}");
            assert_eq!(**program, *syscalls::compile(kind).unwrap(), "{kind:?}");
        }
        assert!(
            syscalls::allowed(ThreadKind::Api).len() < syscalls::allowed(ThreadKind::Vmm).len()
        );
    }

    #[test]
    fn upstream_binary_format_round_trips() {
        let raw = 0x0000_0004_0015_0020_u64;
        let map = BTreeMap::from([
            ("Vmm".to_string(), vec![raw]),
            ("api".to_string(), vec![]),
            ("vcpu".to_string(), vec![]),
        ]);
        let parsed = parse_custom(&encode(&map)).unwrap();
        let insn = &parsed["vmm"][0];
        assert_eq!((insn.code, insn.jt, insn.jf, insn.k), (0x20, 0x15, 0, 4));
    }

    #[test]
    fn custom_filter_errors_use_upstream_texts() {
        let with = |keys: &[&str]| {
            let map: BTreeMap<String, Vec<u64>> =
                keys.iter().map(|k| (k.to_string(), vec![])).collect();
            parse_custom(&encode(&map)).unwrap_err().to_string()
        };
        assert_eq!(with(&["vmm", "api"]), "Missing thread category: vcpu");
        assert_eq!(
            with(&["vmm", "api", "vcpu", "zz", "aa"]),
            "Invalid thread categories: aa,zz"
        );
        assert!(
            parse_custom(b"not bitcode")
                .unwrap_err()
                .to_string()
                .starts_with("Filter deserialization failed: Bitcode deserialization failed")
        );
        assert_eq!(
            parse_custom(&vec![0; FILE_SIZE_LIMIT + 1])
                .unwrap_err()
                .to_string(),
            "Filter deserialization failed: Input size 100001 exceeds limit of 100000 bytes"
        );
    }
}
