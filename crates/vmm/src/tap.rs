//! Opening a host TAP device by name, as Firecracker does when `PUT /network-interfaces` arrives:
//! `/dev/net/tun` + `TUNSETIFF`. The descriptor is kept so a TAP that did not exist before stays
//! alive while squib holds it.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use crate::os_error::OsError;

/// `IFNAMSIZ`: interface names, NUL included.
const IFNAMSIZ: usize = 16;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Why a TAP could not be opened; texts as upstream's `TapError`.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Invalid interface name")]
    InvalidIfname,
    #[error(
        "Error while creating ifreq structure: {0}. Invalid TUN/TAP Backend provided by {1}. Check our documentation on setting up the network devices."
    )]
    IfreqExecuteError(OsError, String),
    #[error("Couldn't open /dev/net/tun: {0}")]
    OpenTun(OsError),
}

/// An open TAP. Clones share the descriptor; equality is identity.
#[derive(Clone)]
pub struct TapHandle {
    name: String,
    file: Option<Arc<File>>,
}

impl TapHandle {
    /// A handle that holds no descriptor, for engines and tests that do not need one.
    pub fn detached(name: &str) -> Self {
        Self {
            name: name.to_string(),
            file: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn file(&self) -> Option<&File> {
        self.file.as_deref()
    }

    /// A duplicate of the open descriptor (same open file, so the same TAP attachment), for an
    /// engine to adopt; `None` for a detached handle.
    pub fn dup_fd(&self) -> Option<io::Result<std::os::fd::OwnedFd>> {
        self.file
            .as_ref()
            .map(|f| f.try_clone().map(std::os::fd::OwnedFd::from))
    }
}

impl fmt::Debug for TapHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TapHandle")
            .field("name", &self.name)
            .finish()
    }
}

impl PartialEq for TapHandle {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && match (&self.file, &other.file) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for TapHandle {}

/// How the VMM opens TAPs; replaceable so API tests need no privileges.
pub type TapOpener = Arc<dyn Fn(&str) -> Result<TapHandle, TapError> + Send + Sync>;

/// The real opener.
pub fn host_tap_opener() -> TapOpener {
    Arc::new(open_tap)
}

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    // The kernel's ifreq is a 40-byte union; the rest is padding here.
    _pad: [u8; 22],
}

/// Opens (or creates, with CAP_NET_ADMIN) the TAP named `name`.
pub fn open_tap(name: &str) -> Result<TapHandle, TapError> {
    if name.len() >= IFNAMSIZ {
        return Err(TapError::InvalidIfname);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| TapError::OpenTun(e.into()))?;
    let mut request = IfReq {
        name: [0; IFNAMSIZ],
        // No IFF_VNET_HDR: QEMU's stream netdev carries bare Ethernet frames, and the engine's
        // relay (`squib_net::Tap::from_fd`) adopts this very descriptor.
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `file` is an open descriptor of /dev/net/tun; `request` is a properly sized and
    // initialised `struct ifreq` that outlives the call; TUNSETIFF only reads and writes it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut request) };
    if rc < 0 {
        return Err(TapError::IfreqExecuteError(
            io::Error::last_os_error().into(),
            name.to_string(),
        ));
    }
    Ok(TapHandle {
        name: name.to_string(),
        file: Some(Arc::new(file)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_refused_before_any_syscall() {
        let err = open_tap("abcdefghijklmnop").unwrap_err();
        assert_eq!(err.to_string(), "Invalid interface name");
    }

    #[test]
    fn tap_open_reports_upstream_text_or_succeeds() {
        // With CAP_NET_ADMIN a TAP is created; without it the ioctl fails with upstream's text.
        match open_tap("sqbtest0") {
            Ok(tap) => assert_eq!(tap.name(), "sqbtest0"),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.starts_with("Error while creating ifreq structure: ")
                        || text.starts_with("Couldn't open /dev/net/tun"),
                    "{text}"
                );
            }
        }
    }
}
