//! Host TAP devices, opened by name as Firecracker does: `/dev/net/tun` + `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`. The VMM opens the TAP when `PUT /network-interfaces`
//! arrives ([`open_tap`], kept in a [`TapHandle`] so a TAP that did not exist before stays alive
//! while squib holds it); at boot the virtio-net backend adopts a duplicate of that descriptor
//! ([`Tap::from_fd`]). Every frame read or written is preceded by a virtio-net header
//! ([`crate::vnet`]), so checksum and segmentation offloads pass between the guest and the host
//! kernel untouched. As with upstream, a caller holding CAP_NET_ADMIN who names a device that
//! does not exist gets a transient one from the kernel.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use crate::os_error::OsError;

/// Why a TAP could not be opened or set up; the texts are upstream's `TapError`'s (the VMM
/// prefixes them with `Open tap device failed: `), OS errors in musl's words.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("Couldn't open /dev/net/tun: {0}")]
    OpenTun(OsError),
    /// The name does not fit in `IFNAMSIZ` (16 bytes with the NUL) or holds a NUL.
    #[error("Invalid interface name")]
    InvalidIfname,
    /// `TUNSETIFF` refused the name: the device does not exist, is not a TAP, or is busy.
    #[error(
        "Error while creating ifreq structure: {0}. Invalid TUN/TAP Backend provided by {1}. Check our documentation on setting up the network devices."
    )]
    IfreqExecuteError(OsError, String),
    #[error("Error while setting the offload flags: {0}")]
    SetOffloadFlags(OsError),
    #[error("Error while setting size of the vnet header: {0}")]
    SetSizeOfVnetHdr(OsError),
    /// squib's own: an adopted descriptor could not be made non-blocking.
    #[error("Error while making the tap device non-blocking: {0}")]
    SetNonBlocking(OsError),
}

/// `TUN_F_*` offload flags for [`Tap::set_offload`]: which offloaded frames the TAP may hand
/// the device (they must match what the guest accepted).
pub mod offload {
    pub const CSUM: u32 = libc::TUN_F_CSUM;
    pub const TSO4: u32 = libc::TUN_F_TSO4;
    pub const TSO6: u32 = libc::TUN_F_TSO6;
    pub const TSO_ECN: u32 = libc::TUN_F_TSO_ECN;
    pub const UFO: u32 = libc::TUN_F_UFO;
    /// UDP segmentation (Linux ≥ 6.2), for IPv4 and IPv6 together: the kernel refuses either
    /// alone.
    pub const USO: u32 = libc::TUN_F_USO4 | libc::TUN_F_USO6;
}

/// Attaches a new `/dev/net/tun` descriptor to the TAP `name` (`TUNSETIFF` with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), non-blocking and close-on-exec. Upstream's order:
/// `/dev/net/tun` is opened before the name is checked, and only its length is checked (and
/// that it holds no NUL, which would cut it short).
fn attach(name: &str) -> Result<OwnedFd, TapError> {
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| TapError::OpenTun(e.into()))?;
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::InvalidIfname);
    }
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers and addresses),
    // for which all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: `file` is an open /dev/net/tun descriptor and `req` is a properly initialised,
    // NUL-terminated ifreq that outlives the call; TUNSETIFF only reads and writes within it.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::TUNSETIFF,
            &mut req as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(TapError::IfreqExecuteError(
            io::Error::last_os_error().into(),
            name.to_owned(),
        ));
    }
    Ok(OwnedFd::from(file))
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

/// Opens (or creates, with CAP_NET_ADMIN) the TAP named `name`; the engine's
/// virtio-net device adopts this very descriptor.
pub fn open_tap(name: &str) -> Result<TapHandle, TapError> {
    let fd = attach(name)?;
    Ok(TapHandle {
        name: name.to_string(),
        file: Some(Arc::new(File::from(fd))),
    })
}

/// An attached TAP with a virtio-net header on every frame. Non-blocking: reads and writes
/// answer `WouldBlock` rather than wait, for the backend's epoll loop.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Attaches to the TAP `name` (`attach`); squib opens TAPs through [`open_tap`].
    #[cfg(test)]
    fn open(name: &str) -> Result<Self, TapError> {
        Self::from_fd(attach(name)?, name)
    }

    /// Adopts a descriptor [`open_tap`] opened (possibly a duplicate of it), making sure it is
    /// non-blocking.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Self, TapError> {
        let failed = || TapError::SetNonBlocking(io::Error::last_os_error().into());
        // SAFETY: fcntl on a descriptor we own, with flag arguments only.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(failed());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(failed());
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

    /// `TUNSETVNETHDRSZ`: the header length the guest negotiated (10 or 12 bytes).
    pub fn set_vnet_hdr_size(&self, len: usize) -> Result<(), TapError> {
        let len = len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &len as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(TapError::SetSizeOfVnetHdr(
                io::Error::last_os_error().into(),
            ));
        }
        Ok(())
    }

    /// `TUNSETOFFLOAD` with [`offload`] flags.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // The ioctl takes the flags by value, not through a pointer.
        // SAFETY: TUNSETOFFLOAD reads its argument as an integer and touches no memory of ours.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(TapError::SetOffloadFlags(io::Error::last_os_error().into()));
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
    fn long_names_are_refused_before_the_ioctl() {
        if !std::path::Path::new("/dev/net/tun").exists() {
            // Upstream's order: without /dev/net/tun, that is the error.
            assert!(matches!(
                Tap::open("sixteen-chars-xx"),
                Err(TapError::OpenTun(_))
            ));
            return;
        }
        let err = Tap::open("sixteen-chars-xx").unwrap_err();
        assert_eq!(err.to_string(), "Invalid interface name");
        assert!(matches!(Tap::open("a\0b"), Err(TapError::InvalidIfname)));
    }

    #[test]
    fn ifreq_error_reads_like_upstream_in_musls_words() {
        let err = TapError::IfreqExecuteError(
            io::Error::from_raw_os_error(libc::EBUSY).into(),
            "tap9".into(),
        );
        assert_eq!(
            err.to_string(),
            "Error while creating ifreq structure: Resource busy (os error 16). \
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
