//! The jailer's failures, with upstream's texts (printed on stderr, exit code 1).

use std::io;
use std::path::PathBuf;

use crate::args::ArgError;

/// `{:?}` of a path without the quotes, as upstream prints paths.
pub(crate) fn bare(path: &std::path::Path) -> String {
    format!("{path:?}").replace('"', "")
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JailerError {
    #[error("Failed to parse arguments: {0}")]
    ArgumentParsing(ArgError),
    #[error("Failed to canonicalize path {}: {}", bare(.0), .1)]
    Canonicalize(PathBuf, io::Error),
    #[error("Failed to inherit cgroups configurations from file {} in path {}", .1, bare(.0))]
    CgroupInheritFromParent(PathBuf, String),
    #[error("Cgroup invalid file: {0}")]
    CgroupInvalidFile(String),
    #[error("Invalid format for cgroups: {0}")]
    CgroupFormat(String),
    #[error("Hierarchy not found: {0}")]
    CgroupHierarchyMissing(String),
    #[error("Controller {0} is unavailable")]
    CgroupControllerUnavailable(String),
    #[error("{0} is an invalid cgroup version specifier")]
    CgroupInvalidVersion(String),
    #[error("Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'")]
    CgroupInvalidParentPath,
    #[error(
        "Failed to move process to cgroup ({}): {}.\nHint: If you intended to create a child \
         cgroup under {}, pass any --cgroup parameters.", .0.display(), .1, .0.display()
    )]
    CgroupMove(PathBuf, io::Error),
    #[error("Failed to change owner for {}: {}", .0.display(), .1)]
    ChangeFileOwner(PathBuf, io::Error),
    #[error("Failed to chdir into chroot directory: {0}")]
    ChdirNewRoot(io::Error),
    #[error("Failed to change permissions on {}: {}", .0.display(), .1)]
    Chmod(PathBuf, io::Error),
    #[error("Failed cloning into a new child process: {0}")]
    Clone(io::Error),
    #[error("Failed to call close range syscall: {0}")]
    CloseRange(io::Error),
    #[error("Failed to copy {} to {}: {}", bare(.0), bare(.1), .2)]
    Copy(PathBuf, PathBuf, io::Error),
    #[error("Failed to create directory {}: {}", bare(.0), .1)]
    CreateDir(PathBuf, io::Error),
    #[error("Encountered interior \\0 while parsing a string")]
    CStringParsing,
    #[error("Failed to daemonize: {0}")]
    Daemonize(io::Error),
    #[error("Failed to duplicate fd: {0}")]
    Dup2(io::Error),
    #[error("Failed to exec into Firecracker: {0}")]
    Exec(io::Error),
    #[error("Failed to extract filename from path {}", bare(.0))]
    ExtractFileName(PathBuf),
    #[error("Failed to open file {}: {}", bare(.0), .1)]
    FileOpen(PathBuf, io::Error),
    #[error("Invalid gid: {0}")]
    Gid(String),
    #[error("Detected hard link at: {}", .0.display())]
    HardLink(PathBuf),
    #[error("Invalid instance ID: {0}")]
    InvalidInstanceId(String),
    #[error("Cannot get metadata for a file: {}: {}", .0.display(), .1)]
    Metadata(PathBuf, io::Error),
    #[error("Failed to create the jail root directory before pivoting root: {0}")]
    MkdirOldRoot(io::Error),
    #[error("Failed to create {} via mknod inside the jail: {}", .1, .0)]
    MknodDev(io::Error, String),
    #[error("Failed to bind mount the jail root directory: {0}")]
    MountBind(io::Error),
    #[error("Failed to change the propagation type to slave: {0}")]
    MountPropagationSlave(io::Error),
    /// squib only: QEMU's files are bind-mounted read-only into the jail.
    #[error("Failed to bind mount {} read-only into the jail: {}", .0.display(), .1)]
    MountRuntime(PathBuf, io::Error),
    /// squib only: the jail's private /proc.
    #[error("Failed to mount /proc inside the jail: {0}")]
    MountProc(io::Error),
    /// squib only: the QEMU binary squib will run could not be found.
    #[error("Failed to find the QEMU binary {}: {}", .0, .1)]
    QemuNotFound(String, io::Error),
    /// squib only: the shared libraries of a binary could not be listed.
    #[error("Failed to list the shared libraries of {}: {}", .0.display(), .1)]
    Libraries(PathBuf, String),
    #[error("{} is not a file", bare(.0))]
    NotAFile(PathBuf),
    #[error("{} is not a directory", bare(.0))]
    NotADirectory(PathBuf),
    #[error("Failed to open {}: {}", .0.display(), .1)]
    Open(PathBuf, io::Error),
    #[error("Failed to pivot root: {0}")]
    PivotRoot(io::Error),
    #[error("Failed to read file {} into a string: {}", bare(.0), .1)]
    ReadToString(PathBuf, io::Error),
    #[error("Invalid resource argument: {0}")]
    ResLimitArgument(String),
    #[error("Invalid format for resources limits: {0}")]
    ResLimitFormat(String),
    #[error("Invalid limit value for resource: {}: {}", .0, .1)]
    ResLimitValue(String, String),
    #[error("Failed to remove old jail root directory: {0}")]
    RmOldRootDir(io::Error),
    #[error("Failed to change current directory: {0}")]
    SetCurrentDir(io::Error),
    #[error("Failed to join network namespace: netns: {0}")]
    SetNetNs(io::Error),
    #[error("Failed to set limit for resource: {0}")]
    Setrlimit(String),
    #[error("Failed to daemonize: setsid: {0}")]
    SetSid(io::Error),
    #[error("Invalid uid: {0}")]
    Uid(String),
    #[error("Failed to unmount the old jail root: {0}")]
    UmountOldRoot(io::Error),
    #[error("Failed to unshare into new mount namespace: {0}")]
    UnshareNewNs(io::Error),
    #[error("Failed to write to {}: {}", bare(.0), .1)]
    Write(PathBuf, io::Error),
}
