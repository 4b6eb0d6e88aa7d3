//! `/boot-source`: the guest kernel, its initrd and its command line.

mod elf;

use std::fs::File;
use std::io;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The command line a guest gets when the client gives none (upstream's default).
pub const DEFAULT_KERNEL_CMDLINE: &str = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";
/// Longest kernel command line accepted on x86_64 (upstream's capacity).
pub const MAX_CMDLINE_LEN: usize = 2048;

/// Body of `PUT /boot-source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    pub kernel_image_path: String,
    pub initrd_path: Option<String>,
    pub boot_args: Option<String>,
}

/// Why a boot source was refused; the display text is the client-visible message.
#[derive(Debug, thiserror::Error)]
pub enum BootSourceError {
    #[error("The kernel file cannot be opened: {0}")]
    InvalidKernelPath(io::Error),
    #[error("The initrd file cannot be opened due to invalid path or invalid permissions. {0}")]
    InvalidInitrdPath(io::Error),
    #[error("The kernel command line is invalid: {0}")]
    InvalidKernelCommandLine(String),
}

/// A boot source whose files could be opened and whose command line is acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootSource {
    pub config: BootSourceConfig,
}

/// Why the boot files cannot be loaded at `InstanceStart`; the texts are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum BootFilesError {
    #[error(
        "System configuration error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image: Kernel Loader: Unable to read elf header"
    )]
    KernelUnreadable,
    /// Neither an ELF (no ELF magic) nor a bzImage (no `HdrS` setup header, a boot protocol
    /// older than 2.00, or not loaded high).
    #[error(
        "System configuration error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Kernel Loader: failed to load bzImage kernel image: Kernel Loader: Invalid bzImage"
    )]
    KernelInvalidBzImage,
    #[error("Error with initrd initialization: Cannot load initrd due to an invalid image: {0}.")]
    InitrdUnreadable(io::Error),
}

impl BootSource {
    /// What upstream finds when it loads the kernel and the initrd at boot: a directory (which
    /// `PUT /boot-source` accepts, as upstream) cannot be read.
    pub fn check_loadable(&self) -> Result<(), BootFilesError> {
        let is_dir = |path: &str| std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        check_kernel_image(&self.config.kernel_image_path)?;
        if self.config.initrd_path.as_deref().is_some_and(is_dir) {
            return Err(BootFilesError::InitrdUnreadable(
                io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        Ok(())
    }

    /// The guest-physical ranges an ELF kernel's loader fills (its `PT_LOAD` segments,
    /// page-rounded, sorted, merged); empty for a bzImage or a file that cannot be read or
    /// parsed. A hint for preparing guest memory, read without waiting (as
    /// [`Self::check_loadable`]): nothing may rely on it being right.
    pub fn kernel_load_ranges(&self) -> Vec<Range<u64>> {
        use std::os::unix::fs::FileExt;
        let Ok(file) = open_nonblocking(&self.config.kernel_image_path) else {
            return Vec::new();
        };
        elf::load_ranges(|offset, buf| file.read_exact_at(buf, offset)).unwrap_or_default()
    }

    /// The command line the guest will start with, before squib adds device parameters.
    pub fn cmdline(&self) -> &str {
        self.config
            .boot_args
            .as_deref()
            .unwrap_or(DEFAULT_KERNEL_CMDLINE)
    }
}

impl TryFrom<BootSourceConfig> for BootSource {
    type Error = BootSourceError;

    /// The files are opened now, as upstream does, so a bad path fails the `PUT`, not the boot.
    fn try_from(config: BootSourceConfig) -> Result<Self, Self::Error> {
        open_regular(&config.kernel_image_path).map_err(BootSourceError::InvalidKernelPath)?;
        if let Some(initrd) = &config.initrd_path {
            open_regular(initrd).map_err(BootSourceError::InvalidInitrdPath)?;
        }
        if let Some(args) = &config.boot_args {
            validate_cmdline(args).map_err(BootSourceError::InvalidKernelCommandLine)?;
        }
        Ok(Self { config })
    }
}

/// Upstream's loader checks, in its order: a full ELF header (else `Unable to read elf
/// header`), the ELF magic, else a bzImage's setup header at 0x1f1 (read as far as the file
/// goes): `HdrS`, protocol 2.00 or later, loaded high. A file that cannot be opened any more
/// fails the engine's start with its own text.
fn check_kernel_image(path: &str) -> Result<(), BootFilesError> {
    use std::io::Read;
    const ELF_HEADER_LEN: usize = 64;
    const SETUP_HEADER_AT: usize = 0x1f1;
    // Up to `loadflags` (0x211) of the setup header.
    const HEAD_LEN: usize = 0x212;
    let Ok(file) = open_nonblocking(path) else {
        return Ok(());
    };
    let mut head = Vec::with_capacity(HEAD_LEN);
    if file.take(HEAD_LEN as u64).read_to_end(&mut head).is_err() || head.len() < ELF_HEADER_LEN {
        return Err(BootFilesError::KernelUnreadable);
    }
    if head.starts_with(elf::MAGIC) {
        return Ok(());
    }
    head.resize(HEAD_LEN, 0);
    let header = &head[SETUP_HEADER_AT..];
    let at = |offset: usize| offset - SETUP_HEADER_AT;
    let magic = &header[at(0x202)..at(0x206)];
    let version = u16::from_le_bytes([header[at(0x206)], header[at(0x207)]]);
    let loadflags = header[at(0x211)];
    if magic != b"HdrS" || version < 0x0200 || loadflags & 1 == 0 {
        return Err(BootFilesError::KernelInvalidBzImage);
    }
    Ok(())
}

/// Opens a kernel or initrd to check it without ever waiting: a regular file, or a directory
/// (upstream opens one fine and fails only at boot, see [`BootSource::check_loadable`]); a
/// FIFO would block the open until a writer comes, so it and the other kinds are refused.
fn open_regular(path: &str) -> std::io::Result<File> {
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Opens a boot file read-only without ever waiting (a FIFO does not block the open).
fn open_nonblocking(path: &str) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

fn validate_cmdline(args: &str) -> Result<(), String> {
    // Upstream's `Cmdline::try_from(args, MAX_CMDLINE_LEN)`: the only check at `PUT` time is
    // the capacity, counted over the trimmed boot arguments, the init arguments after the first
    // ` -- ` outside double quotes, and the kernel's terminating NUL. Its characters are not
    // looked at (a NUL is cut by the launch plan, docs/deviations.md).
    const INIT_ARGS_SEPARATOR: &str = " -- ";
    let (boot, init) = args
        .match_indices(INIT_ARGS_SEPARATOR)
        .find(|(at, _)| args[..*at].matches('"').count().is_multiple_of(2))
        .map_or((args, ""), |(at, _)| {
            (&args[..at], &args[at + INIT_ARGS_SEPARATOR.len()..])
        });
    let (boot, init) = (boot.trim(), init.trim());
    let mut size = boot.len() + 1;
    if !init.is_empty() {
        size += INIT_ARGS_SEPARATOR.len() + init.len();
    }
    if size > MAX_CMDLINE_LEN {
        return Err("Invalid cmdline capacity provided.".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_rules_in_upstreams_order() {
        assert_eq!(validate_cmdline("a\0b"), Ok(()));
        // Characters are not checked at PUT time, upstream neither.
        assert_eq!(validate_cmdline("a\u{1}b \u{e9}"), Ok(()));
        let capacity = Err("Invalid cmdline capacity provided.".to_string());
        assert_eq!(validate_cmdline(&"x".repeat(MAX_CMDLINE_LEN - 1)), Ok(()));
        assert_eq!(validate_cmdline(&"x".repeat(MAX_CMDLINE_LEN)), capacity);
        // Counted after trimming.
        assert_eq!(validate_cmdline(&" ".repeat(3 * MAX_CMDLINE_LEN)), Ok(()));
        // The init arguments and their separator count; a separator inside quotes is not one.
        let boot = "x".repeat(MAX_CMDLINE_LEN - 8);
        assert_eq!(validate_cmdline(&format!("{boot} -- yyy")), Ok(()));
        assert_eq!(validate_cmdline(&format!("{boot} -- yyyy")), capacity);
        assert_eq!(validate_cmdline(&format!("{boot}   --   yyy   ")), Ok(()));
        assert_eq!(validate_cmdline(&format!("\"{boot} -- yyyy\"")), capacity);
    }

    #[test]
    fn missing_kernel_reports_os_error() {
        let err = BootSource::try_from(BootSourceConfig {
            kernel_image_path: "/nonexistent/vmlinux".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The kernel file cannot be opened: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn missing_initrd_and_bad_cmdline() {
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let path = kernel.path().to_str().unwrap().to_string();
        let err = BootSource::try_from(BootSourceConfig {
            kernel_image_path: path.clone(),
            initrd_path: Some("/nonexistent/initrd".into()),
            boot_args: None,
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The initrd file cannot be opened due to invalid path or invalid permissions. No such file or directory (os error 2)"
        );
        let err = BootSource::try_from(BootSourceConfig {
            kernel_image_path: path.clone(),
            initrd_path: None,
            boot_args: Some("x".repeat(MAX_CMDLINE_LEN)),
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("The kernel command line is invalid: ")
        );
        let ok = BootSource::try_from(BootSourceConfig {
            kernel_image_path: path,
            initrd_path: None,
            boot_args: None,
        })
        .unwrap();
        assert_eq!(ok.cmdline(), DEFAULT_KERNEL_CMDLINE);
    }

    #[test]
    fn unknown_field_text_matches_upstream() {
        let err = serde_json::from_str::<BootSourceConfig>(r#"{"kernel_image_path":"a","foo":1}"#)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field `foo`, expected one of `kernel_image_path`, `initrd_path`, `boot_args` at line 1 column 30"
        );
    }
}
