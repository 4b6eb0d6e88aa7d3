//! `jailer`: upstream Firecracker's jailer for squib. Same command line, same chroot layout
//! (`<chroot-base-dir>/<exec-file name>/<id>/root`), same device nodes, cgroups, resource
//! limits, namespaces, privilege drop and exit codes; in addition it makes the QEMU squib
//! runs reachable read-only inside the jail (see `runtime`). docs/security.md has the whole
//! picture.

mod args;
mod cgroup;
mod error;
mod jail;
mod runtime;

use std::process::ExitCode;

use crate::args::Parsed;
use crate::error::JailerError;
use crate::jail::Jail;

/// The Firecracker release whose jailer this one stands in for (squib's `--version` prints it too).
const JAILER_VERSION: &str = squib_vmm::FIRECRACKER_API_VERSION;

/// Closes every inherited descriptor but stdin, stdout and stderr.
fn close_inherited_fds() -> Result<(), JailerError> {
    // SAFETY: close_range takes no pointers; ENOSYS on kernels older than 5.9.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_UNSHARE,
        )
    };
    if ret < 0 {
        return Err(JailerError::CloseRange(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn main() -> ExitCode {
    let start_time_us = jail::monotonic_us();
    let start_time_cpu_us = jail::cpu_us();
    match run(start_time_us, start_time_cpu_us) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(start_time_us: u64, start_time_cpu_us: u64) -> Result<(), JailerError> {
    if let Err(e) = close_inherited_fds() {
        panic!("Failed to sanitize the Jailer process: {e}");
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // Where QEMU is looked up, before the environment is dropped like upstream drops it.
    let path_var = std::env::var("PATH").ok();
    for (key, _) in std::env::vars_os() {
        // SAFETY: the jailer is single-threaded.
        unsafe { std::env::remove_var(key) };
    }
    let args = match args::parse(&argv).map_err(JailerError::ArgumentParsing)? {
        Parsed::Help => {
            println!("Jailer v{JAILER_VERSION}\n");
            println!("{}\n", args::help());
            println!(
                "Any arguments after the -- separator will be supplied to the jailed binary.\n"
            );
            return Ok(());
        }
        Parsed::Version => {
            println!("Jailer v{JAILER_VERSION}\n");
            return Ok(());
        }
        Parsed::Run(args) => args,
    };
    let jail = Jail::new(&args, path_var.as_deref(), start_time_us, start_time_cpu_us)?;
    std::fs::create_dir_all(jail.chroot_dir())
        .map_err(|e| JailerError::CreateDir(jail.chroot_dir().to_path_buf(), e))?;
    jail.run()
}
