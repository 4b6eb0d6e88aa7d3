//! Building the jail and exec'ing into it, step by step as upstream's jailer does, plus the
//! read-only view of QEMU's files squib needs (see `runtime`).

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, fchown};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::args::Args;
use crate::cgroup::{self, CgroupPlan};
use crate::error::JailerError;
use crate::runtime::{self, Bind};

const DEV_NET_TUN: (&CStr, u32, u32) = (c"/dev/net/tun", 10, 200);
const DEV_KVM: (&CStr, u32, u32) = (c"/dev/kvm", 10, 232);
const DEV_URANDOM: (&CStr, u32, u32) = (c"/dev/urandom", 1, 9);
/// squib only: squib starts QEMU with its stdin on /dev/null.
const DEV_NULL: (&CStr, u32, u32) = (c"/dev/null", 1, 3);
const DEV_USERFAULTFD: &CStr = c"/dev/userfaultfd";
const DEV_USERFAULTFD_MAJOR: u32 = 10;

/// Upstream's folders (owned by the jail's uid, mode 0700), plus `/tmp` where squib keeps
/// QEMU's runtime directory (the QMP socket).
const FOLDER_HIERARCHY: [&str; 5] = ["/", "/dev", "/dev/net", "/run", "/tmp"];
const FOLDER_PERMISSIONS: u32 = 0o700;

/// Without `--resource-limit no-file=…`, upstream bounds the descriptors to 2048.
const DEFAULT_NO_FILE: u64 = 2048;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(path: &Path) -> Result<CString, JailerError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailerError::CStringParsing)
}

fn now_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

pub(crate) fn monotonic_us() -> u64 {
    now_us(libc::CLOCK_MONOTONIC)
}

pub(crate) fn cpu_us() -> u64 {
    now_us(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Upstream's instance-ID rule.
fn validate_id(id: &str) -> Result<(), JailerError> {
    if !(1..=64).contains(&id.len()) {
        return Err(JailerError::InvalidInstanceId(format!(
            "Invalid len ({});  the length must be between 1 and 64",
            id.len()
        )));
    }
    if let Some((i, c)) = id
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '-'))
    {
        return Err(JailerError::InvalidInstanceId(format!(
            "Invalid char ({c}) at position {i}"
        )));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Limits {
    fsize: Option<u64>,
    no_file: Option<u64>,
}

fn parse_limits(args: &[String]) -> Result<Limits, JailerError> {
    let mut limits = Limits::default();
    for arg in args {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| JailerError::ResLimitFormat(arg.clone()))?;
        let value = value
            .parse::<u64>()
            .map_err(|e| JailerError::ResLimitValue(value.to_string(), e.to_string()))?;
        match name {
            "fsize" => limits.fsize = Some(value),
            "no-file" => limits.no_file = Some(value),
            _ => return Err(JailerError::ResLimitArgument(name.to_string())),
        }
    }
    Ok(limits)
}

impl Limits {
    fn install(&self) -> Result<(), JailerError> {
        let set = |resource: libc::__rlimit_resource_t, value: u64, what: &str| {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: `limit` is a valid rlimit.
            check(unsafe { libc::setrlimit(resource, &limit) })
                .map(drop)
                .map_err(|_| JailerError::Setrlimit(what.to_string()))
        };
        if let Some(fsize) = self.fsize {
            set(libc::RLIMIT_FSIZE, fsize, "size of file")?;
        }
        set(
            libc::RLIMIT_NOFILE,
            self.no_file.unwrap_or(DEFAULT_NO_FILE),
            "number of file descriptors",
        )
    }
}

/// Everything the jail is built from, validated before anything is created.
pub(crate) struct Jail {
    id: String,
    chroot_dir: PathBuf,
    exec_file: PathBuf,
    exec_file_name: String,
    uid: u32,
    gid: u32,
    netns: Option<PathBuf>,
    daemonize: bool,
    new_pid_ns: bool,
    cgroups: Option<CgroupPlan>,
    limits: Limits,
    userfaultfd_minor: Option<u32>,
    binds: Vec<Bind>,
    extra_args: Vec<String>,
    start_time_us: u64,
    start_time_cpu_us: u64,
    jailer_cpu_time_us: u64,
}

fn userfaultfd_minor() -> Option<u32> {
    let misc = std::fs::read_to_string("/proc/misc").ok()?;
    misc.lines().find_map(|line| {
        let (minor, name) = line.trim().split_once(' ')?;
        (name == "userfaultfd").then(|| minor.parse().ok())?
    })
}

impl Jail {
    /// `path_var`: the jailer's `PATH` as it was started (the environment is cleared before).
    pub(crate) fn new(
        args: &Args,
        path_var: Option<&str>,
        start_time_us: u64,
        start_time_cpu_us: u64,
    ) -> Result<Self, JailerError> {
        let required = |name: &str| args.single(name).unwrap_or_default().to_string();
        let id = required("id");
        validate_id(&id)?;
        let exec_arg = required("exec-file");
        let exec_file = std::fs::canonicalize(&exec_arg)
            .map_err(|e| JailerError::Canonicalize(exec_arg.clone().into(), e))?;
        if !exec_file.is_file() {
            return Err(JailerError::NotAFile(exec_file));
        }
        let exec_file_name = exec_file
            .file_name()
            .and_then(OsStr::to_str)
            .ok_or_else(|| JailerError::ExtractFileName(exec_file.clone()))?
            .to_string();
        let base = required("chroot-base-dir");
        let mut chroot_dir = std::fs::canonicalize(&base)
            .map_err(|e| JailerError::Canonicalize(base.clone().into(), e))?;
        if !chroot_dir.is_dir() {
            return Err(JailerError::NotADirectory(chroot_dir));
        }
        chroot_dir.push(&exec_file_name);
        chroot_dir.push(&id);
        chroot_dir.push("root");
        let uid_raw = required("uid");
        let uid = uid_raw.parse().map_err(|_| JailerError::Uid(uid_raw))?;
        let gid_raw = required("gid");
        let gid = gid_raw.parse().map_err(|_| JailerError::Gid(gid_raw))?;

        let parent_cgroup = PathBuf::from(
            args.single("parent-cgroup")
                .unwrap_or(exec_file_name.as_str()),
        );
        if !cgroup::is_plain_relative(&parent_cgroup) {
            return Err(JailerError::CgroupInvalidParentPath);
        }
        let version = cgroup::parse_version(args.single("cgroup-version").unwrap_or("1"))?;
        let proc_mounts = Path::new(cgroup::PROC_MOUNTS);
        let properties = args.multiple("cgroup");
        if properties.is_empty() && version == 2 {
            cgroup::move_into_existing_parent(&parent_cgroup, proc_mounts)?;
        }
        let cgroups = if properties.is_empty() {
            None
        } else {
            Some(cgroup::plan(
                version,
                properties,
                &id,
                &parent_cgroup,
                proc_mounts,
            )?)
        };
        let limits = parse_limits(args.multiple("resource-limit"))?;
        let qemu = runtime::qemu_binary(&args.extra, path_var)?;
        let binds = runtime::binds(&exec_file, &qemu)?;
        Ok(Jail {
            id,
            chroot_dir,
            exec_file,
            exec_file_name,
            uid,
            gid,
            netns: args.single("netns").map(PathBuf::from),
            daemonize: args.flag("daemonize"),
            new_pid_ns: args.flag("new-pid-ns"),
            cgroups,
            limits,
            userfaultfd_minor: userfaultfd_minor(),
            binds,
            extra_args: args.extra.clone(),
            start_time_us,
            start_time_cpu_us,
            jailer_cpu_time_us: 0,
        })
    }

    pub(crate) fn chroot_dir(&self) -> &Path {
        &self.chroot_dir
    }

    /// A private copy of the exec file, owned by the jail's user: the jailed process shares
    /// no text pages with another VMM.
    fn copy_exec_file(&self) -> Result<(), JailerError> {
        let dst = self.chroot_dir.join(&self.exec_file_name);
        let mut src = File::open(&self.exec_file)
            .map_err(|e| JailerError::Open(self.exec_file.clone(), e))?;
        let mode = src
            .metadata()
            .map_err(|e| JailerError::Metadata(self.exec_file.clone(), e))?
            .mode();
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&dst)
            .map_err(|e| JailerError::Open(dst.clone(), e))?;
        let meta = out
            .metadata()
            .map_err(|e| JailerError::Metadata(dst.clone(), e))?;
        if meta.nlink() > 1 {
            return Err(JailerError::HardLink(dst));
        }
        fchown(&out, Some(self.uid), Some(self.gid))
            .map_err(|e| JailerError::ChangeFileOwner(dst.clone(), e))?;
        io::copy(&mut src, &mut out)
            .map_err(|e| JailerError::Copy(self.exec_file.clone(), dst.clone(), e))?;
        Ok(())
    }

    fn join_netns(path: &Path) -> Result<(), JailerError> {
        let ns = File::open(path).map_err(|e| JailerError::FileOpen(path.into(), e))?;
        // SAFETY: `ns` is an open namespace descriptor.
        check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
            .map_err(JailerError::SetNetNs)?;
        Ok(())
    }

    /// Creates a mount point for `bind` under the chroot directory, refusing symlinks on the
    /// way (the jail directory may be left over from an earlier run of the same id).
    fn mount_point(&self, bind: &Bind) -> Result<PathBuf, JailerError> {
        let relative = bind.target.strip_prefix("/").unwrap_or(&bind.target);
        let target = self.chroot_dir.join(relative);
        let fail = |e: io::Error| JailerError::MountRuntime(bind.target.clone(), e);
        let mut dir = self.chroot_dir.clone();
        let parents: Vec<_> = relative
            .parent()
            .into_iter()
            .flat_map(Path::components)
            .collect();
        for part in parents {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Err(fail(io::ErrorKind::AlreadyExists.into())),
                Err(_) => {
                    std::fs::create_dir(&dir).map_err(fail)?;
                    std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).map_err(fail)?;
                }
            }
        }
        if bind.source.is_dir() {
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Err(fail(io::ErrorKind::AlreadyExists.into())),
                Err(_) => std::fs::create_dir(&target).map_err(fail)?,
            }
        } else {
            OpenOptions::new()
                .write(true)
                .create(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o444)
                .open(&target)
                .map_err(fail)?;
        }
        Ok(target)
    }

    /// Binds QEMU's files read-only (no setuid, no devices) into the jail. Runs in the
    /// jailer's private mount namespace, before the root is pivoted.
    fn bind_runtime(&self) -> Result<(), JailerError> {
        for bind in &self.binds {
            let target = self.mount_point(bind)?;
            let fail = |e: io::Error| JailerError::MountRuntime(bind.target.clone(), e);
            let (src, dst) = (cstring(&bind.source)?, cstring(&target)?);
            // SAFETY: both paths are valid C strings; a bind mount takes no data.
            check(unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                )
            })
            .map_err(fail)?;
            let flags = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV;
            // SAFETY: as above; this only changes the flags of the mount just made.
            check(unsafe {
                libc::mount(
                    std::ptr::null(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                )
            })
            .map_err(fail)?;
        }
        Ok(())
    }

    /// A private mount namespace, the runtime binds, then `pivot_root` into the chroot
    /// directory and drop the old root.
    fn pivot_into_chroot(&self) -> Result<(), JailerError> {
        // SAFETY: unshare takes no pointers.
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(JailerError::UnshareNewNs)?;
        // SAFETY: valid C strings; null source/type/data are allowed for a propagation change.
        check(unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            )
        })
        .map_err(JailerError::MountPropagationSlave)?;
        let root = cstring(&self.chroot_dir)?;
        // SAFETY: valid C strings; a bind mount takes no data.
        check(unsafe {
            libc::mount(
                root.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        })
        .map_err(JailerError::MountBind)?;
        self.bind_runtime()?;
        std::env::set_current_dir(&self.chroot_dir).map_err(JailerError::SetCurrentDir)?;
        // SAFETY: a valid C string.
        check(unsafe { libc::mkdir(c"old_root".as_ptr(), libc::S_IRUSR | libc::S_IWUSR) })
            .map_err(JailerError::MkdirOldRoot)?;
        // SAFETY: valid C strings.
        check(unsafe {
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c"old_root".as_ptr()) as libc::c_int
        })
        .map_err(JailerError::PivotRoot)?;
        // SAFETY: a valid C string.
        check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(JailerError::ChdirNewRoot)?;
        // SAFETY: a valid C string.
        check(unsafe { libc::umount2(c"old_root".as_ptr(), libc::MNT_DETACH) })
            .map_err(JailerError::UmountOldRoot)?;
        // SAFETY: a valid C string.
        check(unsafe { libc::rmdir(c"old_root".as_ptr()) }).map_err(JailerError::RmOldRootDir)?;
        Ok(())
    }

    fn setup_folder(&self, folder: &str) -> Result<(), JailerError> {
        let path = Path::new(folder);
        std::fs::create_dir_all(path).map_err(|e| JailerError::CreateDir(path.into(), e))?;
        std::fs::set_permissions(path, Permissions::from_mode(FOLDER_PERMISSIONS))
            .map_err(|e| JailerError::Chmod(path.into(), e))?;
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| JailerError::ChangeFileOwner(path.into(), e))
    }

    fn mknod(&self, (path, major, minor): (&CStr, u32, u32)) -> Result<(), JailerError> {
        let name = path.to_string_lossy().into_owned();
        // SAFETY: a valid C string.
        check(unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | libc::S_IRUSR | libc::S_IWUSR,
                libc::makedev(major, minor),
            )
        })
        .map_err(|e| JailerError::MknodDev(e, name.clone()))?;
        // SAFETY: a valid C string.
        check(unsafe { libc::chown(path.as_ptr(), self.uid, self.gid) })
            .map_err(|e| JailerError::ChangeFileOwner(name.into(), e))?;
        Ok(())
    }

    /// The jail's own /proc, mounted by the process that execs squib (so it shows that
    /// process's PID namespace): squib hands guest RAM to QEMU as `/proc/<pid>/fd/<n>`.
    /// `hidepid=2` (`invisible`; the number also works on kernels before 5.8) hides every
    /// process of another user.
    fn mount_proc() -> Result<(), JailerError> {
        match std::fs::create_dir("/proc") {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(JailerError::MountProc(e)),
        }
        // SAFETY: valid C strings.
        check(unsafe {
            libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"hidepid=2".as_ptr().cast(),
            )
        })
        .map_err(JailerError::MountProc)?;
        Ok(())
    }

    fn exec_file_in_jail(&self) -> PathBuf {
        Path::new("/").join(&self.exec_file_name)
    }

    fn save_pid(&self, pid: i32) -> Result<(), JailerError> {
        use std::io::Write;
        let path = PathBuf::from(format!("{}.pid", self.exec_file_in_jail().display()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| JailerError::FileOpen(path.clone(), e))?;
        write!(file, "{pid}").map_err(|e| JailerError::Write(path, e))
    }

    /// Drops to the jail's uid/gid (supplementary groups cleared) and execs squib with the
    /// arguments upstream's jailer passes, then the user's. Returns only on failure.
    fn exec(&self) -> JailerError {
        if let Err(e) = Self::mount_proc() {
            return e;
        }
        let err = Command::new(self.exec_file_in_jail())
            .args(["--id", &self.id])
            .args(["--start-time-us", &self.start_time_us.to_string()])
            .args(["--start-time-cpu-us", &cpu_us().to_string()])
            .args(["--parent-cpu-time-us", &self.jailer_cpu_time_us.to_string()])
            .args(&self.extra_args)
            .env_clear()
            .uid(self.uid)
            .gid(self.gid)
            .exec();
        JailerError::Exec(err)
    }

    fn exec_in_new_pid_ns(&self) -> Result<(), JailerError> {
        let session_leader = !self.daemonize && {
            // SAFETY: getsid/getpid take no pointers.
            let (sid, pid) = unsafe { (libc::getsid(0), libc::getpid()) };
            sid == pid
        };
        // SAFETY: a fork-like clone (no new stack: the child runs on a copy of ours); the
        // jailer is single-threaded.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::CLONE_NEWPID,
                std::ptr::null_mut::<libc::c_void>(),
                0,
                0,
                0,
            )
        };
        match pid {
            -1 => Err(JailerError::Clone(io::Error::last_os_error())),
            0 => {
                // SAFETY: setsid takes no pointers.
                if session_leader && unsafe { libc::setsid() } < 0 {
                    return Err(JailerError::SetSid(io::Error::last_os_error()));
                }
                Err(self.exec())
            }
            child => {
                self.save_pid(child as i32)?;
                std::process::exit(0)
            }
        }
    }

    fn daemonize(&mut self, dev_null: File) -> Result<(), JailerError> {
        for step in 0..2 {
            // SAFETY: the jailer is single-threaded; the child only continues this function.
            let pid = unsafe { libc::fork() };
            if pid < 0 {
                return Err(JailerError::Daemonize(io::Error::last_os_error()));
            }
            if pid != 0 {
                std::process::exit(0);
            }
            // SAFETY: setsid takes no pointers.
            if step == 0 && unsafe { libc::setsid() } < 0 {
                return Err(JailerError::SetSid(io::Error::last_os_error()));
            }
            self.jailer_cpu_time_us += cpu_us();
        }
        for fd in 0..3 {
            // SAFETY: both descriptors are valid.
            check(unsafe { libc::dup2(dev_null.as_raw_fd(), fd) }).map_err(JailerError::Dup2)?;
        }
        Ok(())
    }

    /// Builds the jail and execs into it. Returns only on failure.
    pub(crate) fn run(mut self) -> Result<(), JailerError> {
        self.copy_exec_file()?;
        if let Some(netns) = &self.netns {
            Self::join_netns(netns)?;
        }
        self.limits.install()?;
        if let Some(plan) = &self.cgroups {
            plan.apply()?;
        }
        let dev_null = if self.daemonize {
            Some(File::open("/dev/null").map_err(|e| JailerError::Open("/dev/null".into(), e))?)
        } else {
            None
        };
        self.pivot_into_chroot()?;
        for folder in FOLDER_HIERARCHY {
            self.setup_folder(folder)?;
        }
        self.mknod(DEV_NET_TUN)?;
        self.mknod(DEV_KVM)?;
        if let Err(e) = self.mknod(DEV_URANDOM) {
            println!("Warning! Could not create /dev/urandom device inside jailer: {e}.");
            println!("MMDS version 2 will not be available to use.");
        }
        self.mknod(DEV_NULL)?;
        if let Some(minor) = self.userfaultfd_minor {
            self.mknod((DEV_USERFAULTFD, DEV_USERFAULTFD_MAJOR, minor))?;
        }
        self.jailer_cpu_time_us = cpu_us().saturating_sub(self.start_time_cpu_us);
        if let Some(dev_null) = dev_null {
            self.daemonize(dev_null)?;
        }
        if self.new_pid_ns {
            self.exec_in_new_pid_ns()
        } else {
            self.save_pid(std::process::id() as i32)?;
            Err(self.exec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_texts() {
        assert!(validate_id("a-1").is_ok());
        assert_eq!(
            validate_id("a_b").unwrap_err().to_string(),
            "Invalid instance ID: Invalid char (_) at position 1"
        );
        assert_eq!(
            validate_id("").unwrap_err().to_string(),
            "Invalid instance ID: Invalid len (0);  the length must be between 1 and 64"
        );
    }

    #[test]
    fn resource_limit_texts() {
        assert!(parse_limits(&["fsize=10".into(), "no-file=5".into()]).is_ok());
        let err = |a: &str| parse_limits(&[a.into()]).unwrap_err().to_string();
        assert_eq!(err("fsize"), "Invalid format for resources limits: fsize");
        assert_eq!(err("cpu=1"), "Invalid resource argument: cpu");
        assert_eq!(
            err("fsize=x"),
            "Invalid limit value for resource: x: invalid digit found in string"
        );
    }
}
