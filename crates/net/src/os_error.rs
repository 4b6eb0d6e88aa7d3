//! OS error texts as Firecracker prints them. Upstream is built against musl, whose
//! `strerror` words some errors differently from glibc's; clients see musl's words (a busy
//! TAP is `Resource busy`). The VMM's other client-visible OS errors use it too.

use std::fmt;
use std::io;

/// Displays like `io::Error` (`⟨strerror⟩ (os error ⟨n⟩)`), with musl's wording.
#[derive(Debug)]
pub struct OsError(pub io::Error);

fn musl_text(code: i32) -> Option<&'static str> {
    Some(match code {
        libc::EBUSY => "Resource busy",
        libc::EADDRINUSE => "Address in use",
        libc::EADDRNOTAVAIL => "Address not available",
        libc::ENOTSOCK => "Not a socket",
        libc::ENAMETOOLONG => "Filename too long",
        libc::ENOTTY => "Not a tty",
        libc::EAGAIN => "Resource temporarily unavailable",
        _ => return None,
    })
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.raw_os_error() {
            Some(code) => match musl_text(code) {
                Some(text) => write!(f, "{text} (os error {code})"),
                None => self.0.fmt(f),
            },
            None => self.0.fmt(f),
        }
    }
}

impl From<io::Error> for OsError {
    fn from(e: io::Error) -> Self {
        Self(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn musl_wording() {
        let e = OsError(io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert_eq!(e.to_string(), "Address in use (os error 98)");
        let e = OsError(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.to_string(), "No such file or directory (os error 2)");
    }
}
