//! Opening a host TAP device by name, as Firecracker does when `PUT /network-interfaces` arrives:
//! `/dev/net/tun` + `TUNSETIFF`. The descriptor is kept so a TAP that did not exist before stays
//! alive while squib holds it.

use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;

use crate::os_error::OsError;

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

/// Opens (or creates, with CAP_NET_ADMIN) the TAP named `name`, with a virtio-net header as
/// upstream; the engine's virtio-net device adopts this very descriptor.
pub fn open_tap(name: &str) -> Result<TapHandle, TapError> {
    use squib_net::TapError as NetError;
    let fd = squib_net::tap::attach(name).map_err(|e| match e {
        NetError::InvalidName => TapError::InvalidIfname,
        NetError::OpenTun(e) => TapError::OpenTun(e.into()),
        NetError::SetIff { err, name } => TapError::IfreqExecuteError(err.into(), name),
        // Only setting up an attached descriptor fails this way; attaching never does.
        NetError::Setup { err, .. } => TapError::OpenTun(err.into()),
    })?;
    Ok(TapHandle {
        name: name.to_string(),
        file: Some(Arc::new(File::from(fd))),
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

    /// Whether this process may create TAPs: CAP_NET_ADMIN (bit 12) in its effective set.
    fn has_net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let caps = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        caps & (1 << 12) != 0
    }

    /// The outcome is decided beforehand: with CAP_NET_ADMIN the TAP opens and exists while held;
    /// without it the open fails with upstream's text. CI runs privileged, so there it must open.
    #[test]
    fn tap_opens_with_net_admin_and_fails_with_upstream_text_without() {
        let name = format!("sqbt{}", std::process::id() % 100_000);
        let result = open_tap(&name);
        if has_net_admin() && std::path::Path::new("/dev/net/tun").exists() {
            let tap = result.expect("with CAP_NET_ADMIN the TAP opens");
            assert_eq!(tap.name(), name);
            assert!(tap.file().is_some());
            let c_name = std::ffi::CString::new(name.clone()).unwrap();
            // SAFETY: the pointer is a valid NUL-terminated string for the call's duration.
            let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            assert_ne!(index, 0, "{name} does not exist while held");
        } else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI must run with CAP_NET_ADMIN and /dev/net/tun"
            );
            let text = result.unwrap_err().to_string();
            assert!(
                text.starts_with("Error while creating ifreq structure: ")
                    || text.starts_with("Couldn't open /dev/net/tun"),
                "{text}"
            );
        }
    }
}
