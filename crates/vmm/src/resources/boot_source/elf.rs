//! Where an ELF kernel's loader puts it: the guest-physical ranges of its `PT_LOAD`
//! segments, read from the program headers with a bounded parser (the kernel is the
//! client's file: any header may lie).

use std::io;
use std::ops::Range;

/// The ELF magic, `e_ident[0..4]`.
pub(super) const MAGIC: &[u8; 4] = b"\x7fELF";

const HEADER_LEN: usize = 64;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PHDR_LEN: usize = 56;
const PT_LOAD: u32 = 1;
/// More program headers than any kernel has (a vmlinux has about five): beyond it the file
/// gets no ranges rather than a longer read.
const MAX_PHDRS: usize = 64;
const PAGE: u64 = 4096;

/// The page-rounded `[p_paddr, p_paddr + p_memsz)` of each non-empty `PT_LOAD` segment of
/// an x86-64 little-endian ELF64, sorted and merged; `None` when the file is not one, is
/// truncated, has an implausible header count, or a range that overflows. `read_at` fills
/// its buffer from that offset of the file, or fails.
pub(super) fn load_ranges(
    read_at: impl Fn(u64, &mut [u8]) -> io::Result<()>,
) -> Option<Vec<Range<u64>>> {
    let mut header = [0u8; HEADER_LEN];
    read_at(0, &mut header).ok()?;
    let u16_at =
        |b: &[u8], at: usize| Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?));
    let u32_at =
        |b: &[u8], at: usize| Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_at =
        |b: &[u8], at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    if !header.starts_with(MAGIC)
        || header[4] != ELFCLASS64
        || header[5] != ELFDATA2LSB
        || u16_at(&header, 18)? != EM_X86_64
        || usize::from(u16_at(&header, 54)?) != PHDR_LEN
    {
        return None;
    }
    let phoff = u64_at(&header, 32)?;
    let count = usize::from(u16_at(&header, 56)?);
    if count > MAX_PHDRS {
        return None;
    }
    let mut phdrs = vec![0u8; count * PHDR_LEN];
    read_at(phoff, &mut phdrs).ok()?;
    let mut ranges = Vec::with_capacity(count);
    for phdr in phdrs.chunks_exact(PHDR_LEN) {
        let (paddr, memsz) = (u64_at(phdr, 24)?, u64_at(phdr, 40)?);
        if u32_at(phdr, 0)? != PT_LOAD || memsz == 0 {
            continue;
        }
        let end = paddr.checked_add(memsz)?.checked_next_multiple_of(PAGE)?;
        ranges.push(paddr - paddr % PAGE..end);
    }
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    Some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An x86-64 ELF64 header with `count` program headers at `phoff`.
    fn header(phoff: u64, count: u16) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..4].copy_from_slice(MAGIC);
        h[4] = ELFCLASS64;
        h[5] = ELFDATA2LSB;
        h[6] = 1;
        h[16..18].copy_from_slice(&2u16.to_le_bytes());
        h[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        h[32..40].copy_from_slice(&phoff.to_le_bytes());
        h[52..54].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
        h[54..56].copy_from_slice(&(PHDR_LEN as u16).to_le_bytes());
        h[56..58].copy_from_slice(&count.to_le_bytes());
        h
    }

    fn phdr(kind: u32, vaddr: u64, paddr: u64, filesz: u64, memsz: u64) -> Vec<u8> {
        let mut p = vec![0u8; PHDR_LEN];
        p[..4].copy_from_slice(&kind.to_le_bytes());
        p[16..24].copy_from_slice(&vaddr.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
        p
    }

    fn single(start: u64, end: u64) -> Option<Vec<Range<u64>>> {
        Some(vec![Range { start, end }])
    }

    fn parse(file: &[u8]) -> Option<Vec<Range<u64>>> {
        load_ranges(|offset, buf| {
            let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
            let bytes = start
                .checked_add(buf.len())
                .and_then(|end| file.get(start..end))
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(bytes);
            Ok(())
        })
    }

    /// The program headers of the test guest's vmlinux (`readelf -l`): four `PT_LOAD`s,
    /// one of them the per-CPU area (virtual address 0, loaded by physical address), and a
    /// `PT_NOTE` inside the first.
    fn vmlinux_like() -> Vec<u8> {
        let mut file = header(64, 5);
        for p in [
            phdr(
                PT_LOAD,
                0xffff_ffff_8100_0000,
                0x100_0000,
                0x18e_acdc,
                0x18e_acdc,
            ),
            phdr(
                PT_LOAD,
                0xffff_ffff_82a0_0000,
                0x2a0_0000,
                0x64_4000,
                0x64_4000,
            ),
            phdr(PT_LOAD, 0, 0x304_4000, 0x3_5000, 0x3_5000),
            phdr(
                PT_LOAD,
                0xffff_ffff_8307_9000,
                0x307_9000,
                0x20_0000,
                0x198_7000,
            ),
            phdr(4, 0xffff_ffff_824c_1990, 0x24c_1990, 0x1f8, 0x1f8),
        ] {
            file.extend(p);
        }
        file
    }

    #[test]
    fn a_vmlinux_loads_at_its_physical_addresses() {
        assert_eq!(
            parse(&vmlinux_like()),
            Some(vec![
                // The text ends mid-page: rounded up.
                0x100_0000..0x28e_b000,
                // Data, per-CPU and the rest are contiguous: one range.
                0x2a0_0000..0x4a0_0000,
            ])
        );
    }

    #[test]
    fn unaligned_overlapping_and_empty_segments() {
        let mut file = header(64, 4);
        for p in [
            phdr(PT_LOAD, 0, 0x20_0123, 0, 0x10),
            phdr(PT_LOAD, 0, 0x10_0000, 0, 0x10_0001),
            phdr(PT_LOAD, 0, 0x40_0000, 0, 0),
            phdr(PT_LOAD, 0, 0x10_0000, 0, 0x1000),
        ] {
            file.extend(p);
        }
        assert_eq!(parse(&file), single(0x10_0000, 0x20_1000));
    }

    #[test]
    fn no_segments_no_ranges() {
        assert_eq!(parse(&header(64, 0)), Some(vec![]));
    }

    #[test]
    fn truncated_files() {
        let file = vmlinux_like();
        for len in [0, 4, HEADER_LEN - 1, HEADER_LEN, file.len() - 1] {
            assert_eq!(parse(&file[..len]), None, "{len} bytes");
        }
        // Program headers past the end of the file.
        let mut far = vmlinux_like();
        far[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&far), None);
    }

    #[test]
    fn overflowing_segments() {
        for (paddr, memsz) in [
            (u64::MAX, 1),
            (u64::MAX - 10, 5),
            (1, u64::MAX),
            (u64::MAX - PAGE + 2, 1),
        ] {
            let mut file = header(64, 1);
            file.extend(phdr(PT_LOAD, 0, paddr, 0, memsz));
            assert_eq!(parse(&file), None, "{paddr:#x} + {memsz:#x}");
        }
        // The last page of the address space cannot be rounded up to its end either.
        let mut file = header(64, 1);
        file.extend(phdr(PT_LOAD, 0, u64::MAX - PAGE, 0, PAGE));
        assert_eq!(parse(&file), None);
    }

    #[test]
    fn huge_header_counts_are_not_read() {
        for count in [MAX_PHDRS as u16 + 1, 0xffff] {
            let mut file = header(64, count);
            file.extend(
                std::iter::repeat_n(phdr(PT_LOAD, 0, 0x10_0000, 0, 0x1000), usize::from(count))
                    .flatten(),
            );
            assert_eq!(parse(&file), None, "{count} headers");
        }
        let mut file = header(64, MAX_PHDRS as u16);
        file.extend(
            std::iter::repeat_n(phdr(PT_LOAD, 0, 0x10_0000, 0, 0x1000), MAX_PHDRS).flatten(),
        );
        assert_eq!(parse(&file), single(0x10_0000, 0x10_1000));
    }

    #[test]
    fn not_an_x86_64_elf64() {
        let mut bzimage = vec![0u8; 0x1000];
        bzimage[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(parse(&bzimage), None);
        let valid = vmlinux_like();
        for (at, value) in [
            (0, 0x7e),                // magic
            (4, 1),                   // ELFCLASS32
            (5, 2),                   // big-endian
            (18, 3),                  // EM_386
            (54, PHDR_LEN as u8 + 1), // program header size
        ] {
            let mut file = valid.clone();
            file[at] = value;
            assert_eq!(parse(&file), None, "byte {at} = {value:#x}");
        }
    }
}
