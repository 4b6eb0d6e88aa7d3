//! An existing TAP device opened by name for the virtio-net backend.
//!
//! The flags are Firecracker's: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. Every frame read or written
//! is preceded by a virtio-net header ([`crate::vnet`]), so checksum and segmentation offloads
//! pass between the guest and the host kernel untouched. The host is expected to have made the
//! device (`ip tuntap add … mode tap`); as with upstream, a caller holding CAP_NET_ADMIN who names
//! a device that does not exist gets a transient one from the kernel.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Interface names must fit `IFNAMSIZ` including the terminating NUL.
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// Why a TAP could not be opened or set up. The texts of the first three are Firecracker's; the
/// VMM prefixes them with `Network config error: Could not create the network device: `.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit in `IFNAMSIZ` (16 bytes with the NUL) or holds a NUL.
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
    /// An ioctl or fcntl setting up an attached TAP failed.
    #[error("Tap device setup failed: {what}: {err}")]
    Setup {
        /// Which call.
        what: &'static str,
        /// The OS error.
        #[source]
        err: io::Error,
    },
}

// `struct ifreq` reduced to what TUNSETIFF reads: the name and the flags (a short in the union).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

// `_IOW('T', n, int)`-style request numbers; the same on every Linux architecture squib targets.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

/// `TUN_F_*` offload flags for [`Tap::set_offload`]: which offloaded frames the TAP may hand
/// the device (they must match what the guest accepted).
pub mod offload {
    /// `TUN_F_CSUM`: partial checksums.
    pub const CSUM: u32 = 0x01;
    /// `TUN_F_TSO4`.
    pub const TSO4: u32 = 0x02;
    /// `TUN_F_TSO6`.
    pub const TSO6: u32 = 0x04;
    /// `TUN_F_TSO_ECN`.
    pub const TSO_ECN: u32 = 0x08;
    /// `TUN_F_UFO`.
    pub const UFO: u32 = 0x10;
    /// `TUN_F_USO4` (Linux 6.2+).
    pub const USO4: u32 = 0x20;
    /// `TUN_F_USO6` (Linux 6.2+).
    pub const USO6: u32 = 0x40;
}

/// Attaches a new `/dev/net/tun` descriptor to the TAP `name` (`TUNSETIFF` with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), non-blocking and close-on-exec: the VMM opens TAPs this
/// way when an interface is configured, and the backend adopts the descriptor at boot
/// ([`Tap::from_fd`]). Only the length of the name is checked, as upstream does.
pub fn attach(name: &str) -> Result<OwnedFd, TapError> {
    let bytes = name.as_bytes();
    if bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
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
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
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

/// An attached TAP with a virtio-net header on every frame. Non-blocking: reads and writes
/// answer `WouldBlock` rather than wait, for the backend's epoll loop.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Attaches to the TAP `name` ([`attach`]).
    pub fn open(name: &str) -> Result<Self, TapError> {
        Self::from_fd(attach(name)?, name)
    }

    /// Adopts a descriptor [`attach`] returned (possibly a duplicate of it), making sure it is
    /// non-blocking.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Self, TapError> {
        let setup = |what| TapError::Setup {
            what,
            err: io::Error::last_os_error(),
        };
        // SAFETY: fcntl on a descriptor we own, with flag arguments only.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(setup("F_GETFL"));
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(setup("F_SETFL"));
        }
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor, for registering with an event loop.
    pub fn as_raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn ioctl_int(
        &self,
        what: &'static str,
        request: libc::c_ulong,
        value: u32,
    ) -> Result<(), TapError> {
        let value = value as libc::c_int;
        // SAFETY: both requests read one int through the pointer, which outlives the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                request as _,
                &value as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(TapError::Setup {
                what,
                err: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// `TUNSETVNETHDRSZ`: the header length the guest negotiated (10 or 12 bytes).
    pub fn set_vnet_hdr_size(&self, len: usize) -> Result<(), TapError> {
        self.ioctl_int("TUNSETVNETHDRSZ", TUNSETVNETHDRSZ, len as u32)
    }

    /// `TUNSETOFFLOAD` with [`offload`] flags.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // The ioctl takes the flags by value, not through a pointer.
        // SAFETY: TUNSETOFFLOAD reads its argument as an integer and touches no memory of ours.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD as _,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(TapError::Setup {
                what: "TUNSETOFFLOAD",
                err: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Whether the host kernel accepts the offload `flags` on this TAP (probed by setting them,
    /// then clearing every offload again).
    pub fn supports_offload(&self, flags: u32) -> bool {
        let ok = self.set_offload(flags).is_ok();
        let _ = self.set_offload(0);
        ok
    }

    /// Reads one header+frame into `buf`; `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call and the
        // descriptor stays open while `self` lives.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one header+frame whole; `WouldBlock` when the device queue is full.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes for the whole call and the
        // descriptor stays open while `self` lives.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_refused_before_any_syscall() {
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

    #[test]
    fn a_transient_tap_takes_vnet_header_sizes_and_offloads() {
        // Needs CAP_NET_ADMIN (root here and in CI); the kernel makes a transient TAP.
        let tap = match Tap::open("sqbnet-unit0") {
            Ok(tap) => tap,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping outside CI: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        tap.set_vnet_hdr_size(crate::vnet::HDR_LEN).unwrap();
        assert!(tap.supports_offload(offload::CSUM | offload::TSO4 | offload::TSO6));
        tap.set_offload(offload::CSUM).unwrap();
        // Nothing queued: a non-blocking read answers at once.
        let mut buf = [0u8; 64];
        assert!(tap.read(&mut buf).is_err());
    }
}
