//! Guest RAM for the kernel, allocated while QEMU starts.
//!
//! QEMU copies an ELF kernel's `PT_LOAD` segments into guest RAM (and zeroes their tails)
//! before its monitor answers: for the test guest's vmlinux, ~14k first writes to pages of
//! squib's memfd, each a page fault that allocates a page, which on a nested-virtualisation
//! host costs 2-10 µs: the kernel takes QEMU's start from ~33 ms to ~90 ms. squib
//! `fallocate`s those pages on a thread of its own while QEMU spends its first ~30 ms
//! starting up, so QEMU's faults only map (and zero) pages that exist. The pages are the ones
//! QEMU writes anyway: no memory is spent that the boot would not. Only a hint: any failure
//! leaves QEMU to fault the pages in as before. It needs a free core: on a saturated host
//! the thread only competes with QEMU.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::Instant;

use squib_vmm::resources::boot_source::BootSource;

/// Starts allocating, in `memfd` (guest RAM of `ram_size` bytes), the pages `boot`'s kernel
/// loads into, where they are the memfd at the same offset ([`crate::plan::IDENTITY_MAPPED_RAM`]).
/// The thread parses the kernel itself, so the caller does not wait for any of it; it ends
/// with the bytes it allocated.
pub(crate) fn spawn_for_kernel(
    memfd: File,
    ram_size: u64,
    boot: BootSource,
) -> Option<std::thread::JoinHandle<u64>> {
    let spawned = std::thread::Builder::new()
        .name("squib-prealloc".into())
        .spawn(move || {
            let limit = ram_size.min(crate::plan::IDENTITY_MAPPED_RAM);
            allocate(&memfd, &boot.kernel_load_ranges(), limit)
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::debug!("cannot start the guest RAM pre-allocation: {e}");
            None
        }
    }
}

/// Allocates `ranges` of `memfd` below `limit`; the bytes allocated.
fn allocate(memfd: &File, ranges: &[Range<u64>], limit: u64) -> u64 {
    let started = Instant::now();
    let mut bytes = 0;
    for range in ranges {
        let end = range.end.min(limit);
        let (Ok(offset), Ok(len)) = (
            libc::off_t::try_from(range.start),
            libc::off_t::try_from(end.saturating_sub(range.start)),
        ) else {
            continue;
        };
        if len == 0 {
            continue;
        }
        // SAFETY: fallocate on a descriptor this function borrows, no pointers; KEEP_SIZE
        // so that even a wrong range never changes the memfd's size.
        let rc =
            unsafe { libc::fallocate(memfd.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            tracing::debug!(?range, "cannot pre-allocate guest RAM for the kernel: {e}");
            continue;
        }
        bytes += end - range.start;
    }
    tracing::debug!(
        bytes,
        ranges = ranges.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "guest RAM pre-allocated for the kernel"
    );
    bytes
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use squib_vmm::resources::boot_source::BootSourceConfig;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn memfd(size: u64) -> File {
        // SAFETY: memfd_create with a NUL-terminated name; the descriptor is owned below.
        let fd = unsafe { libc::memfd_create(c"test-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: a new descriptor nothing else owns.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(size).unwrap();
        file
    }

    /// Bytes the memfd holds pages for.
    fn allocated(file: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.metadata().unwrap().blocks() * 512
    }

    /// Frees `range` of the memfd.
    fn punch(file: &File, range: Range<u64>) {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let len = (range.end - range.start) as libc::off_t;
        // SAFETY: fallocate on a descriptor the test owns.
        let rc =
            unsafe { libc::fallocate(file.as_raw_fd(), mode, range.start as libc::off_t, len) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }

    /// A kernel with two `PT_LOAD` segments: 1 MiB at 1 MiB, and 3 MiB at 6.5 MiB (which a
    /// 8 MiB guest only partly holds).
    fn kernel() -> tempfile::NamedTempFile {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        elf[32] = 64;
        elf[54] = 56;
        elf[56] = 2;
        for (paddr, memsz) in [(MIB, MIB), (6 * MIB + MIB / 2, 3 * MIB)] {
            let mut phdr = vec![0u8; 56];
            phdr[0] = 1;
            phdr[24..32].copy_from_slice(&paddr.to_le_bytes());
            phdr[40..48].copy_from_slice(&memsz.to_le_bytes());
            elf.extend(phdr);
        }
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&elf).unwrap();
        file
    }

    fn boot(path: &std::path::Path) -> BootSource {
        BootSource::try_from(BootSourceConfig {
            kernel_image_path: path.to_str().unwrap().into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn the_kernels_pages_are_allocated_and_no_others() {
        let kernel = kernel();
        let ram = memfd(8 * MIB);
        let handle = spawn_for_kernel(ram.try_clone().unwrap(), 8 * MIB, boot(kernel.path()));
        let bytes = handle.unwrap().join().unwrap();
        // The second segment is cut at the end of RAM.
        assert_eq!(bytes, MIB + MIB + MIB / 2);
        assert_eq!(allocated(&ram), bytes);
        // They are where the segments are: freeing those frees all.
        punch(&ram, MIB..2 * MIB);
        punch(&ram, 6 * MIB + MIB / 2..8 * MIB);
        assert_eq!(allocated(&ram), 0);
        assert_eq!(ram.metadata().unwrap().len(), 8 * MIB, "size unchanged");
    }

    #[test]
    fn other_kernels_get_nothing() {
        let mut bzimage = tempfile::NamedTempFile::new().unwrap();
        let mut image = vec![0u8; 0x1000];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        bzimage.write_all(&image).unwrap();
        let ram = memfd(8 * MIB);
        let handle = spawn_for_kernel(ram.try_clone().unwrap(), 8 * MIB, boot(bzimage.path()));
        assert_eq!(handle.unwrap().join().unwrap(), 0);
        assert_eq!(allocated(&ram), 0);
        // A kernel gone since its PUT.
        let kernel = kernel();
        let gone = boot(kernel.path());
        drop(kernel);
        let handle = spawn_for_kernel(ram.try_clone().unwrap(), 8 * MIB, gone);
        assert_eq!(handle.unwrap().join().unwrap(), 0);
        assert_eq!(allocated(&ram), 0);
    }

    #[test]
    fn nothing_above_the_identity_mapped_ram() {
        let ram = memfd(8 * MIB);
        let limit = 4 * MIB;
        assert_eq!(
            allocate(&ram, &[3 * MIB..5 * MIB, 6 * MIB..7 * MIB], limit),
            MIB
        );
        assert_eq!(allocated(&ram), MIB);
        punch(&ram, 3 * MIB..4 * MIB);
        assert_eq!(allocated(&ram), 0);
    }
}
