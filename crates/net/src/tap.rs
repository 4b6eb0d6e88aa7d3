//! An existing TAP device opened by name, non-blocking, for use from tokio.
//!
//! The flags are Firecracker's minus the virtio-net header: `IFF_TAP | IFF_NO_PI`, because frames
//! arrive from QEMU's stream netdev as bare Ethernet frames. The host is expected to have made the
//! device (`ip tuntap add … mode tap`); as with upstream, a caller holding CAP_NET_ADMIN who names
//! a device that does not exist gets a transient one from the kernel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use tokio::io::unix::AsyncFd;

/// Interface names must fit `IFNAMSIZ` including the terminating NUL.
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// Why a TAP could not be opened. The texts are Firecracker's; the VMM prefixes them with
/// `Network config error: Could not create the network device: `.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit in `IFNAMSIZ` (16 bytes with the NUL).
    #[error("Open tap device failed: Invalid interface name")]
    InvalidName,
    /// `/dev/net/tun` could not be opened.
    #[error("Open tap device failed: Error while opening /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` refused the name: the device does not exist, is not a TAP, or is busy.
    #[error(
        "Open tap device failed: Error while creating ifreq structure: {err}. Invalid TUN/TAP Backend provided by {name}. Check our documentation on setting up the network devices."
    )]
    SetIff {
        /// The OS error.
        #[source]
        err: io::Error,
        /// The name the caller asked for.
        name: String,
    },
    /// The descriptor could not be registered with the tokio reactor.
    #[error("Open tap device failed: Cannot register the tap with the event loop: {0}")]
    Register(#[source] io::Error),
}

/// An open TAP device. Reads return one Ethernet frame each; writes send one frame each.
///
/// Reading and writing may happen concurrently from two tasks through a shared reference.
#[derive(Debug)]
pub struct Tap {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

// `struct ifreq` reduced to what TUNSETIFF reads: the name and the flags (a short in the union).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// `_IOW('T', 202, int)`: the value is the same on every Linux architecture squib targets.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Attaches a new `/dev/net/tun` descriptor to the TAP `name` (`TUNSETIFF` with
/// `IFF_TAP | IFF_NO_PI`), blocking and without a runtime: the VMM opens TAPs this way when an
/// interface is configured, and [`Tap::from_fd`] adopts the descriptor at boot. Only the length
/// of the name is checked, as upstream does.
pub fn attach(name: &str) -> Result<OwnedFd, TapError> {
    let bytes = name.as_bytes();
    if bytes.len() >= IFNAMSIZ {
        return Err(TapError::InvalidName);
    }
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;

    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `file` is an open /dev/net/tun descriptor and `req` is a properly initialised,
    // NUL-terminated ifreq that outlives the call; TUNSETIFF only reads and writes within it.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(TapError::SetIff {
            err: io::Error::last_os_error(),
            name: name.to_owned(),
        });
    }
    Ok(OwnedFd::from(file))
}

impl Tap {
    /// Attaches to the existing TAP `name`. Needs a tokio runtime (the fd is registered with it).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.as_bytes().contains(&0) {
            return Err(TapError::InvalidName);
        }
        let tap = Self::from_fd(attach(name)?, name)?;
        tracing::debug!(tap = name, "tap opened");
        Ok(tap)
    }

    /// Adopts a descriptor already attached to the TAP `name` (`TUNSETIFF` with
    /// `IFF_TAP | IFF_NO_PI`, no `IFF_VNET_HDR`), e.g. one the VMM opened when the interface was
    /// configured. It is made non-blocking here.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Self, TapError> {
        // SAFETY: fcntl on a descriptor we own, with flag arguments only.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0
            || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
        {
            return Err(TapError::Register(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a valid, open descriptor that the `AsyncFd` owns from here on.
        let fd =
            unsafe { AsyncFd::register(fd) }.map_err(|e| TapError::Register(e.into_parts().1))?;
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    /// The interface name given to [`Tap::open`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame into `buf` (which should hold at least 65550 bytes), waiting for one.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call and
                // the descriptor stays open while `self` lives.
                let n = unsafe {
                    libc::read(fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one whole frame, waiting while the device queue is full.
    pub async fn write(&self, frame: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.writable().await?;
            let res = guard.try_io(|fd| {
                // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the whole call
                // and the descriptor stays open while `self` lives.
                let n = unsafe {
                    libc::write(fd.get_ref().as_raw_fd(), frame.as_ptr().cast(), frame.len())
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_names_are_refused_before_any_syscall() {
        let err = Tap::open("sixteen-chars-xx").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Open tap device failed: Invalid interface name"
        );
        assert!(matches!(Tap::open("a\0b"), Err(TapError::InvalidName)));
    }

    #[test]
    fn set_iff_error_reads_like_upstream() {
        let err = TapError::SetIff {
            err: io::Error::from_raw_os_error(libc::EPERM),
            name: "tap9".into(),
        };
        assert_eq!(
            err.to_string(),
            "Open tap device failed: Error while creating ifreq structure: Operation not permitted (os error 1). \
             Invalid TUN/TAP Backend provided by tap9. Check our documentation on setting up \
             the network devices."
        );
    }
}
