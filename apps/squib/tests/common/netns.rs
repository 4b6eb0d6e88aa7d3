//! A network namespace of a test's own, holding its TAPs: squib runs in it
//! ([`super::Squib::start_in_netns`]) and nothing outside it is touched.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

/// True when a test that needs TAPs can run (root, /dev/net/tun, `ip`); panics under
/// `CI=true` when it cannot, and skips loudly otherwise.
pub fn tap_prerequisites(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tun = Path::new("/dev/net/tun").exists();
    let ip = Command::new("ip").arg("-V").output().is_ok();
    if root && tun && ip {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} prerequisites missing under CI: root {root}, /dev/net/tun {tun}, ip {ip}"
    );
    eprintln!("SKIPPED: {test} needs root, /dev/net/tun and ip");
    false
}

/// The namespace, deleted on drop (with the TAPs in it).
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sqb-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ns = Netns(name);
        run_ip(&["netns", "add", &ns.0]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip` inside the namespace; it must succeed.
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        run_ip(&all)
    }

    /// A TAP with the host-side address `host_cidr`, still down: squib opens it first.
    pub fn add_tap(&self, tap: &str, host_cidr: &str) {
        self.ip(&["tuntap", "add", "dev", tap, "mode", "tap"]);
        self.ip(&["addr", "add", host_cidr, "dev", tap]);
    }

    pub fn link_up(&self, tap: &str) {
        self.ip(&["link", "set", tap, "up"]);
    }

    /// A command run inside the namespace (`ip netns exec`); its outcome is the caller's.
    #[allow(dead_code)] // not every test binary runs commands in the namespace
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Runs `f` on a thread that joined the namespace: its sockets live there.
    #[allow(dead_code)] // not every test binary has a host side in the namespace
    pub fn thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open the netns");
            // SAFETY: setns on an open network-namespace descriptor; it moves this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

fn run_ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
