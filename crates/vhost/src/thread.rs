//! Named backend threads and the per-thread hook (where per-thread confinement goes).

use std::cell::Cell;
use std::sync::OnceLock;

/// Which backend thread is calling the hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadRole {
    /// `squib-⟨device⟩`: waits for QEMU's connection, then for its end.
    Supervisor { device: String },
    /// `squib-⟨device⟩-vu`: reads vhost-user requests (memory table, vring set-up).
    Requests { device: String },
    /// `squib-⟨device⟩-wN`: moves the device's data (queue kicks, the device's own sockets).
    Worker { device: String, index: usize },
}

impl ThreadRole {
    /// The thread's name (truncated to the kernel's 15 bytes).
    pub fn thread_name(&self) -> String {
        let name = match self {
            ThreadRole::Supervisor { device } => format!("squib-{device}"),
            ThreadRole::Requests { device } => format!("squib-{device}-vu"),
            ThreadRole::Worker { device, index } => format!("squib-{device}-w{index}"),
        };
        truncate_name(name)
    }
}

type Hook = Box<dyn Fn(&ThreadRole) + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Installs the function every backend thread calls once, from inside itself, before it does
/// any work (e.g. to apply a seccomp filter to itself). Set once per process, before the first
/// backend starts; a second call is refused (`false`).
pub fn set_thread_hook(hook: impl Fn(&ThreadRole) + Send + Sync + 'static) -> bool {
    HOOK.set(Box::new(hook)).is_ok()
}

thread_local! {
    static ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called at the top of every entry point a backend thread runs: the first call on a thread
/// names it and runs the hook; later calls cost a thread-local read.
pub(crate) fn enter(role: impl FnOnce() -> ThreadRole) {
    if ENTERED.with(|e| e.replace(true)) {
        return;
    }
    let role = role();
    set_current_name(&role.thread_name());
    tracing::debug!(?role, "backend thread started");
    if let Some(hook) = HOOK.get() {
        hook(&role);
    }
}

fn truncate_name(mut name: String) -> String {
    while name.len() > 15 {
        name.pop();
    }
    name
}

fn set_current_name(name: &str) {
    let Ok(name) = std::ffi::CString::new(name) else {
        return;
    };
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes (longer ones are
    // truncated by the kernel) and only renames the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit() {
        let role = ThreadRole::Worker {
            device: "net_eth_very_long".into(),
            index: 3,
        };
        assert_eq!(role.thread_name(), "squib-net_eth_v");
        assert_eq!(
            ThreadRole::Requests {
                device: "vsock".into()
            }
            .thread_name(),
            "squib-vsock-vu"
        );
    }

    #[test]
    fn enter_renames_the_thread_once() {
        std::thread::spawn(|| {
            enter(|| ThreadRole::Worker {
                device: "t".into(),
                index: 0,
            });
            enter(|| panic!("entered twice"));
            let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
            assert_eq!(comm.trim(), "squib-t-w0");
        })
        .join()
        .unwrap();
    }
}
