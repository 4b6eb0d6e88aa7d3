//! The pages a restored guest changed, read from QEMU's process.
//!
//! A restored guest's RAM is the memory file mapped privately by QEMU: a page the guest (or
//! QEMU for it) wrote is an anonymous copy in QEMU's memory, every other page is the file's.
//! `/proc/<qemu>/pagemap` tells them apart; `process_vm_readv` reads the copies. Both need
//! ptrace-read rights over QEMU, which squib has as its parent with the same uid (unless a
//! security module says otherwise: then the caller falls back to QEMU's migration).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};

const PAGE: u64 = 4096;
/// Pagemap entries read at once (8 bytes each: 512 KiB, 256 MiB of guest RAM).
const ENTRIES_PER_READ: usize = 64 << 10;
/// Guest memory copied through one buffer of this size.
const COPY_CHUNK: usize = 1 << 20;
/// `/proc/<pid>/maps` of a QEMU is tens of KiB; more is not QEMU's.
const MAX_MAPS: u64 = 16 << 20;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Where QEMU maps `file` (all of its `size` bytes from offset 0): the start address of that
/// mapping in QEMU, found in `/proc/<pid>/maps` by the file's device and inode (a path can
/// name another file by now, or read differently inside a jail).
pub(crate) fn find_mapping(pid: u32, file: &File, size: u64) -> io::Result<u64> {
    use std::io::Read;
    let meta = file.metadata()?;
    let mut maps = String::new();
    File::open(format!("/proc/{pid}/maps"))?
        .take(MAX_MAPS)
        .read_to_string(&mut maps)?;
    let dev = (libc::major(meta.dev()), libc::minor(meta.dev()));
    mapping_in(&maps, dev, meta.ino(), size).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "QEMU does not map the memory file as one private mapping of its whole size",
        )
    })
}

/// The start of the one private mapping of the file (`dev`, `ino`) covering `size` bytes from
/// its offset 0, in the text of a `maps` file. The kernel may split one `mmap` into adjacent
/// areas (different `madvise` flags): those that continue it are joined. `None` when there
/// is no such mapping, or more than one.
fn mapping_in(maps: &str, dev: (u32, u32), ino: u64, size: u64) -> Option<u64> {
    // (start, end, offset) of the file's private areas, in address order.
    let areas: Vec<(u64, u64, u64)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let (range, perms, offset, device, inode) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            let (start, end) = range.split_once('-')?;
            let (major, minor) = device.split_once(':')?;
            let this = (
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
            );
            let private = perms.as_bytes().get(3) == Some(&b'p');
            (this == dev && inode.parse::<u64>().ok()? == ino && private).then_some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                u64::from_str_radix(offset, 16).ok()?,
            ))
        })
        .collect();
    let mut found = None;
    for (i, &(start, _, offset)) in areas.iter().enumerate() {
        if offset != 0 {
            continue;
        }
        let mut end = start;
        for &(s, e, o) in &areas[i..] {
            if s != end || o != end - start {
                break;
            }
            end = e;
        }
        if end - start == size {
            if found.is_some() {
                return None;
            }
            found = Some(start);
        }
    }
    found
}

/// The guest offsets of the pages QEMU holds its own copy of, in the `size` bytes mapped at
/// `start` in process `pid`: present or swapped out, and not the file's page.
pub(crate) fn dirty_ranges(pid: u32, start: u64, size: u64) -> io::Result<Vec<Range<u64>>> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let pages = size / PAGE;
    let mut buf = vec![0u8; ENTRIES_PER_READ * 8];
    let mut ranges = Vec::new();
    let mut page = 0;
    while page < pages {
        let count = (pages - page).min(ENTRIES_PER_READ as u64) as usize;
        let bytes = &mut buf[..count * 8];
        pagemap.read_exact_at(bytes, (start / PAGE + page) * 8)?;
        add_dirty(bytes, page * PAGE, &mut ranges);
        page += count as u64;
    }
    Ok(ranges)
}

/// Adds the dirtied pages among `entries` (pagemap entries, the first for guest offset
/// `first`) to `ranges`, joining a range to the previous one when they touch.
fn add_dirty(entries: &[u8], first: u64, ranges: &mut Vec<Range<u64>>) {
    for (i, entry) in entries.chunks_exact(8).enumerate() {
        let entry = u64::from_ne_bytes(entry.try_into().unwrap_or_default());
        // A swap entry of a file page (one being migrated) is the file's too.
        let own = entry & PM_FILE == 0 && entry & (PM_PRESENT | PM_SWAPPED) != 0;
        if !own {
            continue;
        }
        let at = first + i as u64 * PAGE;
        match ranges.last_mut() {
            Some(last) if last.end == at => last.end += PAGE,
            _ => ranges.push(at..at + PAGE),
        }
    }
}

/// Why [`copy_ranges`] failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// QEMU's memory could not be read.
    Read(io::Error),
    /// The output could not be written.
    Write(io::Error),
}

/// Copies `ranges` of the guest memory mapped at `start` in process `pid` into `out` at the
/// same offsets; returns the bytes copied.
pub(crate) fn copy_ranges(
    pid: u32,
    start: u64,
    ranges: &[Range<u64>],
    out: &File,
) -> Result<u64, CopyError> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| CopyError::Read(io::Error::from_raw_os_error(libc::ESRCH)))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut copied = 0;
    for range in ranges {
        let mut at = range.start;
        while at < range.end {
            let len = ((range.end - at) as usize).min(buf.len());
            read_process(pid, start + at, &mut buf[..len]).map_err(CopyError::Read)?;
            out.write_all_at(&buf[..len], at)
                .map_err(CopyError::Write)?;
            at += len as u64;
            copied += len as u64;
        }
    }
    Ok(copied)
}

/// Reads the first page mapped at `start` in process `pid`: whether squib may read QEMU's
/// memory at all (ptrace rights, seccomp, the kernel's support).
pub(crate) fn probe(pid: u32, start: u64) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    read_process(pid, start, &mut [0u8; PAGE as usize])
}

/// Fills `buf` from address `addr` of process `pid`.
fn read_process(pid: libc::pid_t, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr + done as u64) as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: `local` is the unfilled part of `buf`, writable for its length; the remote
        // address is only read by the kernel, in the other process, and checked there.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 fe:00 131 /usr/bin/qemu-system-x86_64
7f0000000000-7f0008000000 rw-p 00000000 fe:00 4242 /snap/vm.mem (deleted)
7f0008000000-7f0010000000 rw-p 08000000 fe:00 4242 /snap/vm.mem (deleted)
7f0010000000-7f0010001000 ---p 00000000 00:00 0
7f0020000000-7f0020001000 r--s 00000000 fe:00 4242 /snap/vm.mem
7f0030000000-7f0030001000 rw-p 00000000 fe:01 4242 /other/fs
";

    #[test]
    fn the_mapping_is_the_files_whole_private_one() {
        // Two adjacent areas of one mapping (split by madvise) are joined.
        assert_eq!(
            mapping_in(MAPS, (0xfe, 0), 4242, 256 << 20),
            Some(0x7f00_0000_0000)
        );
        // Another size, inode or device; the shared one-page mapping does not count.
        assert_eq!(mapping_in(MAPS, (0xfe, 0), 4242, 128 << 20), None);
        assert_eq!(mapping_in(MAPS, (0xfe, 0), 999, 256 << 20), None);
        assert_eq!(mapping_in(MAPS, (0xfe, 0), 4242, 4096), None);
        assert_eq!(
            mapping_in(MAPS, (0xfe, 1), 4242, 4096),
            Some(0x7f00_3000_0000)
        );
        // Two candidates: which one the guest's RAM is cannot be told.
        let twice = format!("{MAPS}7f0040000000-7f0050000000 rw-p 00000000 fe:00 4242 x\n");
        assert_eq!(mapping_in(&twice, (0xfe, 0), 4242, 256 << 20), None);
        // A gap, or an offset that does not continue, ends a mapping.
        let gap = MAPS.replace("7f0008000000-7f0010000000", "7f0008001000-7f0010001000");
        assert_eq!(mapping_in(&gap, (0xfe, 0), 4242, 256 << 20), None);
        // Garbage lines are skipped.
        assert_eq!(
            mapping_in("x\n1-2 rw-p zz fe:00 4242\n", (0xfe, 0), 4242, 1),
            None
        );
    }

    #[test]
    fn own_pages_are_present_anonymous_or_swapped() {
        let entries: Vec<u8> = [
            PM_PRESENT,           // 0: the guest's copy
            PM_PRESENT | 0x1234,  // 1: with a PFN
            PM_PRESENT | PM_FILE, // 2: the file's page, read
            0,                    // 3: never touched
            PM_SWAPPED,           // 4: a copy, swapped out
            PM_PRESENT,           // 5
            PM_SWAPPED | PM_FILE, // 6: the file's page, being migrated
            PM_PRESENT,           // 7
        ]
        .iter()
        .flat_map(|e| e.to_ne_bytes())
        .collect();
        let mut ranges = Vec::new();
        add_dirty(&entries, 1 << 20, &mut ranges);
        let at = |page: u64| (1 << 20) + page * PAGE;
        assert_eq!(ranges, vec![at(0)..at(2), at(4)..at(6), at(7)..at(8)]);
        // The next chunk continues the last range.
        add_dirty(&PM_PRESENT.to_ne_bytes(), at(8), &mut ranges);
        assert_eq!(ranges.last(), Some(&(at(7)..at(9))));
    }

    #[test]
    fn a_private_mapping_shows_written_pages_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem");
        let size = 64 * PAGE;
        std::fs::write(&path, vec![7u8; size as usize]).unwrap();
        let file = File::open(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: a new private mapping of an open file; unmapped below, used in between
        // through the slice only.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // SAFETY: the mapping above, `size` bytes, readable and writable, unmapped below.
        let mem = unsafe { std::slice::from_raw_parts_mut(addr.cast::<u8>(), size as usize) };
        let pid = std::process::id();
        let start = find_mapping(pid, &file, size).unwrap();
        assert_eq!(start, addr as u64);
        // Read pages are the file's; written ones are the process's own.
        assert_eq!(mem[PAGE as usize], 7);
        mem[3 * PAGE as usize] = 1;
        mem[4 * PAGE as usize + 5] = 2;
        mem[10 * PAGE as usize] = 3;
        let ranges = dirty_ranges(pid, start, size).unwrap();
        assert_eq!(ranges, vec![3 * PAGE..5 * PAGE, 10 * PAGE..11 * PAGE]);
        let out = tempfile::tempfile().unwrap();
        out.set_len(size).unwrap();
        assert_eq!(copy_ranges(pid, start, &ranges, &out).unwrap(), 3 * PAGE);
        let mut copy = vec![0u8; size as usize];
        out.read_exact_at(&mut copy, 0).unwrap();
        assert_eq!(
            copy[3 * PAGE as usize..5 * PAGE as usize],
            mem[3 * PAGE as usize..5 * PAGE as usize]
        );
        assert_eq!(copy[10 * PAGE as usize], 3);
        assert!(copy[..3 * PAGE as usize].iter().all(|&b| b == 0));
        // The file itself is untouched.
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 7));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(addr, size as usize) };
    }
}
