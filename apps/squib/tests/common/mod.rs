//! Shared harness of the end-to-end tests: the real `squib` binary, a real guest under QEMU,
//! raw HTTP/1.1 over the API socket, and the console read from squib's stdout.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

mod netns;
// Not every test binary uses the namespace.
#[allow(unused_imports)]
pub use netns::{Netns, tap_prerequisites};

/// Paths of the test guest built by `guest/build.sh`.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the guest if needed (cached). A missing prerequisite fails the test: never a skip.
pub fn guest() -> Guest {
    let output = Command::new("bash")
        .arg(repo_root().join("guest/build.sh"))
        .arg("--print-paths")
        .stderr(Stdio::inherit())
        .output()
        .expect("run guest/build.sh");
    assert!(
        output.status.success(),
        "guest/build.sh failed; run scripts/install-deps.sh first ({})",
        output.status
    );
    let vars: BTreeMap<String, String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let path = |key: &str| {
        PathBuf::from(
            vars.get(key)
                .unwrap_or_else(|| panic!("guest/build.sh printed no {key}")),
        )
    };
    let guest = Guest {
        kernel: path("KERNEL"),
        initrd: path("INITRD"),
        rootfs: path("ROOTFS"),
    };
    assert!(
        which("qemu-system-x86_64"),
        "qemu-system-x86_64 is missing: run scripts/install-deps.sh"
    );
    guest
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A private, writable copy of the root filesystem, so tests never touch the cached image.
pub fn rootfs_copy(guest: &Guest, dir: &Path) -> PathBuf {
    let copy = dir.join("rootfs.ext4");
    std::fs::copy(&guest.rootfs, &copy).expect("copy rootfs");
    copy
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

/// A running `squib` process.
pub struct Squib {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// squib's own log, kept apart from the guest console: on a shared stdout a log line can
    /// land in the middle of a console line and hide a marker.
    pub log_path: Option<PathBuf>,
    output: Arc<(Mutex<Output>, Condvar)>,
}

impl Squib {
    /// Starts squib with `--api-sock` in a fresh directory plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Squib {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut args: Vec<String> = vec!["--api-sock".into(), socket.to_str().unwrap().into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(dir, socket, &args)
    }

    /// Starts squib with exactly these arguments (the socket path is only used by `api`).
    pub fn spawn(dir: tempfile::TempDir, socket: PathBuf, args: &[String]) -> Squib {
        Self::spawn_wrapped(&[], dir, socket, args)
    }

    /// Starts squib inside the network namespace `netns` (`ip netns exec`, which execs squib in
    /// place, so the child is squib itself), with `--api-sock` in a fresh directory.
    pub fn start_in_netns(netns: &str, extra: &[&str]) -> Squib {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let mut args: Vec<String> = vec!["--api-sock".into(), socket.to_str().unwrap().into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn_wrapped(&["ip", "netns", "exec", netns], dir, socket, &args)
    }

    /// `spawn`, with squib run through `wrapper` (a program and its arguments) when not empty.
    pub fn spawn_wrapped(
        wrapper: &[&str],
        dir: tempfile::TempDir,
        socket: PathBuf,
        args: &[String],
    ) -> Squib {
        let mut args = args.to_vec();
        let log_path =
            (!args.iter().any(|a| a == "--log-path")).then(|| dir.path().join("squib.log"));
        if let Some(path) = &log_path {
            args.extend(["--log-path".to_string(), path.to_str().unwrap().to_string()]);
        }
        let squib = env!("CARGO_BIN_EXE_squib");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(squib);
                c
            }
            None => Command::new(squib),
        };
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("SQUIB_ACCEL").is_none() {
            command.env("SQUIB_ACCEL", "tcg");
        }
        let mut child = command.spawn().expect("start squib");
        let output = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        collect(stdout, output.clone(), "");
        collect(stderr, output.clone(), "stderr: ");
        let squib = Squib {
            child,
            dir,
            socket,
            log_path,
            output,
        };
        if !args.iter().any(|a| a == "--no-api") {
            squib.wait_for_socket();
        }
        squib
    }

    fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "API socket never came up:\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed on squib's stdout and stderr so far: the guest console, and squib's
    /// log when the test chose to keep it there.
    pub fn console(&self) -> String {
        self.output.0.lock().unwrap().lines.join("\n")
    }

    /// squib's log file (empty when the test sent the log elsewhere).
    pub fn log(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Console and log, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- console ---\n{}\n--- squib log ---\n{}",
            self.console(),
            self.log()
        )
    }

    pub fn count_lines(&self, needle: &str) -> usize {
        self.output
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until a printed line contains `needle`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let (lock, ready) = &*self.output;
        let deadline = Instant::now() + timeout;
        let mut out = lock.lock().unwrap();
        loop {
            if out.lines.iter().any(|l| l.contains(needle)) {
                return;
            }
            let now = Instant::now();
            if now >= deadline || out.closed {
                drop(out);
                panic!(
                    "no line with {needle:?} within {timeout:?}:\n{}",
                    self.transcript()
                );
            }
            out = ready.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Sends one request over a new connection and returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        api_at(&self.socket, method, path, body)
    }

    /// `api`, asserting a 204.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = self.api(method, path, Some(body));
        assert_eq!(
            status,
            204,
            "{method} {path} {body} → {status} {reply}\n{}",
            self.console()
        );
    }

    pub fn state(&self) -> String {
        let (_, body) = self.api("GET", "/", None);
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        info["state"].as_str().unwrap().to_string()
    }

    /// Waits for squib to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "squib did not exit within {timeout:?}:\n{}",
                self.transcript()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// PIDs of squib's direct children (the QEMU process).
    pub fn children(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = Vec::new();
        // Children may hang off any of squib's threads.
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) {
            for task in tasks.flatten() {
                let file = task.path().join("children");
                if let Ok(text) = std::fs::read_to_string(file) {
                    pids.extend(
                        text.split_whitespace()
                            .filter_map(|p| p.parse::<u32>().ok()),
                    );
                }
            }
        }
        pids
    }
}

impl Drop for Squib {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect<R: Read + Send + 'static>(
    stream: R,
    output: Arc<(Mutex<Output>, Condvar)>,
    prefix: &'static str,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                    if std::env::var_os("SQUIB_TEST_ECHO").is_some() {
                        eprintln!("{prefix}{line}");
                    }
                    let (lock, ready) = &*output;
                    lock.lock().unwrap().lines.push(format!("{prefix}{line}"));
                    ready.notify_all();
                }
            }
        }
        let (lock, ready) = &*output;
        lock.lock().unwrap().closed = true;
        ready.notify_all();
    });
}

/// True while a process with this PID exists (and is not a zombie).
/// Sends one request over a new connection to the API socket at `socket`; (status, body).
pub fn api_at(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let request = match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\n\r\n"),
    };
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line[9..12].parse().unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// (thread name, `Seccomp:` mode) of every thread of `pid`.
pub fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            };
            (field("Name:"), field("Seccomp:"))
        })
        .collect()
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The usual getting-started configuration, through the API.
/// Boot arguments of a guest that waits and prints `SQUIB-TICK <n>` every second.
pub const TICKING_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 squib.action=wait squib.tick=1";

/// Configures a ticking guest (`TICKING_BOOT_ARGS`), starts it and waits for its tick `tick`.
pub fn boot_ticking(squib: &Squib, guest: &Guest, rootfs: &Path, tick: u32) {
    configure(squib, guest, rootfs, TICKING_BOOT_ARGS);
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line(&format!("SQUIB-TICK {tick}"), BOOT_TIMEOUT);
}

pub fn configure(squib: &Squib, guest: &Guest, rootfs: &Path, boot_args: &str) {
    squib.ok(
        "PUT",
        "/boot-source",
        &serde_json::json!({
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": boot_args,
        })
        .to_string(),
    );
    squib.ok(
        "PUT",
        "/drives/rootfs",
        &serde_json::json!({
            "drive_id": "rootfs",
            "path_on_host": rootfs,
            "is_root_device": true,
            "is_read_only": false,
        })
        .to_string(),
    );
    squib.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":256}"#,
    );
}

/// Starts squib and boots a guest that idles until told otherwise (Ctrl-Alt-Del reboots it).
pub fn boot_idle_guest(guest: &Guest) -> Squib {
    let squib = Squib::start(&[]);
    let rootfs = rootfs_copy(guest, squib.dir.path());
    configure(
        &squib,
        guest,
        &rootfs,
        "console=ttyS0 reboot=k panic=1 squib.action=wait",
    );
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib
}

/// The one QEMU process squib runs.
pub fn qemu_pid(squib: &Squib) -> u32 {
    let children = squib.children();
    assert_eq!(
        children.len(),
        1,
        "expected one QEMU child, got {children:?}"
    );
    children[0]
}

/// The accelerator the running QEMU was actually given (`-accel`), read from its command line:
/// what squib chose, not what the test process's environment suggests.
pub fn qemu_accel(squib: &Squib) -> String {
    let pid = qemu_pid(squib);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("QEMU's command line");
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "-accel")
        .unwrap_or_else(|| panic!("no -accel in {args:?}"));
    args[at + 1].clone()
}

pub const GUEST_MARKER: &str = "SQUIB-GUEST-INIT-OK";
pub const ROOTFS_MARKER: &str = "SQUIB-ROOTFS-OK";
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// A raw disk `script.img` in `dir` holding `script` for the guest's `squib.script=` (NUL
/// padding, stripped by the guest's init).
pub fn script_disk(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("script.img");
    let mut bytes = format!("{script}\nexit 0\n").into_bytes();
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A 4 MiB ext4 image `dir/name` with one file `hello` holding `text`.
pub fn ext4_image(dir: &Path, name: &str, text: &str) -> PathBuf {
    let content = dir.join(format!("{name}.d"));
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello"), format!("{text}\n")).unwrap();
    let image = dir.join(name);
    let made = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("4M")
        .status()
        .expect("run mke2fs");
    assert!(made.success());
    image
}

/// The value after `prefix` on the last console line that has it.
pub fn last_value(squib: &Squib, prefix: &str) -> Option<String> {
    squib
        .console()
        .lines()
        .filter_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
        .next_back()
}

/// `GET path`, which must answer 200 with JSON.
pub fn get_json(squib: &Squib, path: &str) -> serde_json::Value {
    let (status, body) = squib.api("GET", path, None);
    assert_eq!(status, 200, "GET {path} → {status} {body}");
    serde_json::from_str(&body).unwrap()
}
