//! Supervision of the QEMU child process: spawning it so that it never outlives squib,
//! forwarding its stderr while remembering the last lines, and publishing how it ended.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStderr, Command};
use tokio::sync::{oneshot, watch};

/// How many of QEMU's last stderr lines are kept for error messages.
const STDERR_TAIL_LINES: usize = 20;
/// After QEMU exits, how long to wait for the rest of its stderr.
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// QEMU could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start QEMU `{}`: {source}", program.display())]
pub(crate) struct SpawnError {
    pub program: PathBuf,
    #[source]
    pub source: io::Error,
}

/// How the QEMU process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProcessExit {
    pub status: ExitStatus,
    /// The last lines QEMU wrote to stderr, oldest first.
    pub stderr_tail: Vec<String>,
    /// True when squib killed it (the VM handle was dropped).
    pub killed_by_squib: bool,
}

impl ProcessExit {
    /// "exited with status 1" / "was killed by signal 9 (SIGKILL)", then QEMU's last words.
    pub(crate) fn describe(&self) -> String {
        let mut text = format!("QEMU {}", describe_status(self.status));
        let last: Vec<&str> = self
            .stderr_tail
            .iter()
            .rev()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .take(3)
            .collect();
        if !last.is_empty() {
            text.push_str(": ");
            text.push_str(&last.into_iter().rev().collect::<Vec<_>>().join("; "));
        }
        text
    }
}

/// "exited with status N" or "was killed by signal N (NAME)".
pub(crate) fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}{}", signal_name(sig)),
        (None, None) => format!("ended ({status})"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGQUIT => " (SIGQUIT)",
        libc::SIGILL => " (SIGILL)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGBUS => " (SIGBUS)",
        libc::SIGFPE => " (SIGFPE)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGPIPE => " (SIGPIPE)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

/// A running QEMU. Dropping it kills the process.
pub(crate) struct QemuProcess {
    pid: Option<u32>,
    exit: watch::Receiver<Option<ProcessExit>>,
    kill: Option<oneshot::Sender<()>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
}

impl QemuProcess {
    /// Starts `program args…`: stdin from /dev/null, stdout inherited (the serial console
    /// when it goes to stdio), stderr forwarded to squib's stderr.
    ///
    /// QEMU gets `SIGKILL` when squib dies (`PR_SET_PDEATHSIG`), and when this handle or the
    /// runtime goes away (`kill_on_drop`). The death signal follows the *thread* that spawned
    /// QEMU: call this from a runtime worker (not from `spawn_blocking`, whose threads retire).
    ///
    /// `inherit`: descriptors of squib's that QEMU gets under the same numbers (their
    /// close-on-exec flag is cleared in the child only, so no other child sees them).
    pub(crate) fn spawn(
        program: &Path,
        args: &[String],
        inherit: &[RawFd],
    ) -> Result<Self, SpawnError> {
        let inherit = inherit.to_vec();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: getpid is async-signal-safe and called before fork.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (prctl, getppid, fcntl); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // squib may have died before the death signal was armed.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| SpawnError {
            program: program.to_path_buf(),
            source,
        })?;
        let pid = child.id();
        tracing::info!(pid, program = %program.display(), "QEMU started");
        tracing::debug!(?args, "QEMU arguments");

        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let forwarder = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(forward_stderr(stderr, stderr_tail.clone())));
        let (exit_tx, exit) = watch::channel(None);
        let (kill, mut kill_rx) = oneshot::channel::<()>();
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            let (status, killed_by_squib) = tokio::select! {
                status = child.wait() => (status, false),
                // A kill request, or the handle dropped.
                _ = &mut kill_rx => {
                    if let Err(err) = child.start_kill() {
                        tracing::warn!(%err, "cannot kill QEMU");
                    }
                    (child.wait().await, true)
                }
            };
            let status = match status {
                Ok(status) => status,
                Err(err) => {
                    tracing::error!(%err, "cannot wait for QEMU");
                    ExitStatus::from_raw(libc::SIGKILL)
                }
            };
            if let Some(forwarder) = forwarder {
                let _ = tokio::time::timeout(STDERR_DRAIN, forwarder).await;
            }
            let stderr_tail = tail
                .lock()
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default();
            exit_tx.send_replace(Some(ProcessExit {
                status,
                stderr_tail,
                killed_by_squib,
            }));
        });
        Ok(Self {
            pid,
            exit,
            kill: Some(kill),
            stderr_tail,
        })
    }

    /// QEMU's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// How QEMU ended, if it has.
    pub(crate) fn try_exit(&self) -> Option<ProcessExit> {
        self.exit.borrow().clone()
    }

    /// Resolves once QEMU has ended (and its stderr has been drained).
    pub(crate) fn exit_watch(&self) -> impl Future<Output = ProcessExit> + Send + 'static {
        let mut exit = self.exit.clone();
        async move {
            match exit.wait_for(Option::is_some).await {
                Ok(exit) => exit.clone().unwrap_or_else(lost_exit),
                // The supervisor always publishes before dropping its sender.
                Err(_) => lost_exit(),
            }
        }
    }

    /// The last lines QEMU wrote to stderr so far.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.stderr_tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Asks the supervisor to kill QEMU; [`Self::exit_watch`] resolves once it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lost_exit() -> ProcessExit {
    ProcessExit {
        status: ExitStatus::from_raw(libc::SIGKILL),
        stderr_tail: vec!["QEMU's supervisor ended without a status".to_string()],
        killed_by_squib: false,
    }
}

/// Copies QEMU's stderr to squib's, keeping the last lines.
async fn forward_stderr(stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::new(stderr);
    let mut out = tokio::io::stderr();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = out.write_all(&line).await;
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(text);
                }
            }
        }
    }
    let _ = out.flush().await;
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn describes_codes_and_signals() {
        assert_eq!(
            describe_status(ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(
            describe_status(ExitStatus::from_raw(libc::SIGKILL)),
            "was killed by signal 9 (SIGKILL)"
        );
        let exit = ProcessExit {
            status: ExitStatus::from_raw(1 << 8),
            stderr_tail: vec![
                "a".into(),
                "qemu-system-x86_64: -kernel /x: error".into(),
                "".into(),
            ],
            killed_by_squib: false,
        };
        assert_eq!(
            exit.describe(),
            "QEMU exited with status 1: a; qemu-system-x86_64: -kernel /x: error"
        );
    }

    #[tokio::test]
    async fn spawn_failure_names_the_program() {
        let err = match QemuProcess::spawn(Path::new("/nonexistent/qemu"), &[], &[]) {
            Err(err) => err,
            Ok(_) => panic!("spawned a missing program"),
        };
        assert!(
            err.to_string()
                .starts_with("cannot start QEMU `/nonexistent/qemu`: No such file"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn exit_status_and_stderr_are_published() {
        let args = [
            "-c".to_string(),
            "echo one >&2; echo two >&2; exit 3".to_string(),
        ];
        let process = QemuProcess::spawn(Path::new("sh"), &args, &[]).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), process.exit_watch())
            .await
            .unwrap();
        assert_eq!(exit.status.code(), Some(3));
        assert_eq!(exit.stderr_tail, ["one", "two"]);
        assert!(!exit.killed_by_squib);
        assert_eq!(process.try_exit(), Some(exit));
    }

    #[tokio::test]
    async fn only_the_named_descriptors_are_inherited() {
        let dir = tempfile::tempdir().unwrap();
        // std opens files close-on-exec.
        let passed = std::fs::File::create(dir.path().join("a")).unwrap();
        let kept = std::fs::File::create(dir.path().join("b")).unwrap();
        let (p, k) = (passed.as_raw_fd(), kept.as_raw_fd());
        let args = [
            "-c".to_string(),
            format!("test -e /proc/self/fd/{p} && ! test -e /proc/self/fd/{k}"),
        ];
        let process = QemuProcess::spawn(Path::new("sh"), &args, &[p]).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), process.exit_watch())
            .await
            .unwrap();
        assert_eq!(exit.status.code(), Some(0), "{exit:?}");
        // squib's own copy stays close-on-exec.
        // SAFETY: F_GETFD on a descriptor this test owns.
        let flags = unsafe { libc::fcntl(p, libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[tokio::test]
    async fn dropping_the_handle_kills_the_child() {
        let args = ["-c".to_string(), "sleep 60".to_string()];
        let process = QemuProcess::spawn(Path::new("sh"), &args, &[]).unwrap();
        let watch = process.exit_watch();
        drop(process);
        let exit = tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .unwrap();
        assert!(exit.killed_by_squib);
        assert_eq!(exit.status.signal(), Some(libc::SIGKILL));
    }
}
