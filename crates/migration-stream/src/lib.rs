//! QEMU's migration stream, read by squib: saving a guest whose RAM QEMU maps privately (a
//! restored one) sends that RAM through the stream, and [`split_ram`] writes its pages into the
//! memory file and keeps the rest as the device state; or squib reads the guest's dirtied
//! pages itself, and [`RamPart::splice`] puts QEMU's devices-only state behind the RAM part
//! of the stream the guest was restored from. Used by the QEMU engine's snapshot save.
//!
//! Why: a restored guest maps the user's memory file privately (copy-on-write), and
//! `x-ignore-shared` leaves only *shared* RAM out of a migration. The split keeps everything
//! but the guest RAM block's pages byte for byte, so the device state is the same as one saved
//! from shared RAM and loads the same way.
//!
//! Only what QEMU 7.2 writes for squib's machines is understood: the header, the
//! configuration section, the `ram` iterable section (pages, zero pages, the block list), and
//! then the non-iterable device sections, which are copied untouched. Anything else (XBZRLE,
//! compression, RDMA hooks, other iterable sections) fails the split instead of guessing.

// A name is `pub` only when it is the crate's API (clippy -D warnings makes this an error).
#![warn(unreachable_pub)]

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

const FILE_MAGIC: u32 = 0x5145_564d;
const FILE_VERSION: u32 = 3;

const SECTION_START: u8 = 0x01;
const SECTION_PART: u8 = 0x02;
const SECTION_END: u8 = 0x03;
const SECTION_FULL: u8 = 0x04;
const EOF: u8 = 0x00;
const VMDESCRIPTION: u8 = 0x06;
const SUBSECTION: u8 = 0x05;
const CONFIGURATION: u8 = 0x07;
const COMMAND: u8 = 0x08;
const SECTION_FOOTER: u8 = 0x7e;

const FLAG_ZERO: u64 = 0x02;
const FLAG_MEM_SIZE: u64 = 0x04;
const FLAG_PAGE: u64 = 0x08;
const FLAG_EOS: u64 = 0x10;
const FLAG_CONTINUE: u64 = 0x20;
const KNOWN_FLAGS: u64 = FLAG_ZERO | FLAG_MEM_SIZE | FLAG_PAGE | FLAG_EOS | FLAG_CONTINUE;

const PAGE: usize = 4096;
const PAGE_MASK: u64 = !(PAGE as u64 - 1);
/// Pages written to the memory file in one go, when they are contiguous.
const RUN_PAGES: usize = 256;

/// The device state (everything but the guest RAM block's pages) may not grow past this.
pub(crate) const MAX_DEVICE_STATE: usize = 64 << 20;

fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected migration stream: {}", why.into()),
    )
}

/// Why a split failed.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// The stream could not be read or was not understood.
    #[error("{0}")]
    Stream(#[from] io::Error),
    /// The memory file could not be written.
    #[error("{0}")]
    Memory(#[source] io::Error),
}

/// Reads `input` to its end; returns the stream without the pages of RAM block `ram_id`,
/// which go to `memory` (`ram_size` bytes, written sparse: zero pages stay holes).
pub fn split_ram<R: Read>(
    input: R,
    memory: &File,
    ram_id: &str,
    ram_size: u64,
) -> Result<Vec<u8>, SplitError> {
    memory
        .set_len(0)
        .and_then(|()| memory.set_len(ram_size))
        .map_err(SplitError::Memory)?;
    let mut splitter = Splitter {
        input,
        out: Vec::new(),
        memory: Some(memory),
        stop_at_devices: false,
        ram_id: ram_id.as_bytes(),
        ram_size,
        last_block_is_ram: None,
        pending: None,
        run: Vec::with_capacity(RUN_PAGES * PAGE),
        run_at: 0,
        memory_error: None,
    };
    let result = splitter.split();
    match (result, splitter.memory_error.take()) {
        (_, Some(e)) => Err(SplitError::Memory(e)),
        (Err(e), None) => Err(SplitError::Stream(e)),
        (Ok(()), None) => Ok(splitter.out),
    }
}

/// The length of `stream`'s prefix: header, configuration section and the `ram` section's
/// records (the RAM block list and the pages of the blocks other than guest RAM), up to its
/// first device section. Fails when the prefix carries pages of RAM block `ram_id`: loaded,
/// they would overwrite the guest's memory.
pub fn ram_prefix_len(stream: &[u8], ram_id: &str) -> io::Result<usize> {
    let mut splitter = Splitter {
        input: stream,
        out: Vec::new(),
        memory: None,
        stop_at_devices: true,
        ram_id: ram_id.as_bytes(),
        ram_size: 0,
        last_block_is_ram: None,
        pending: None,
        run: Vec::new(),
        run_at: 0,
        memory_error: None,
    };
    splitter.split()?;
    Ok(splitter.out.len())
}

/// What a devices-only state needs around it to load like the stream it was taken from:
/// that stream's prefix (see [`ram_prefix_len`]) and its description of its sections. Kept
/// for the life of a restored guest instead of its whole stream (the test guest's: 41 + 19 of
/// 113 KiB).
///
/// Why: QEMU's `xen-save-devices-state` writes the devices without the RAM, which is what a
/// save of a guest whose RAM squib reads itself needs, but also without the configuration
/// section that `migrate-incoming` requires and without the other RAM blocks (firmware,
/// ACPI tables), which the guest cannot change: those come from the stream it was restored
/// from. QEMU's loader reads the description after the end of the device sections (and logs
/// an error when there is none), only to skip it; the original's describes the same machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamPart {
    prefix: Vec<u8>,
    description: Vec<u8>,
}

impl RamPart {
    /// The RAM part of `stream`; fails where [`ram_prefix_len`] does.
    pub fn of(stream: &[u8], ram_id: &str) -> io::Result<Self> {
        let prefix = ram_prefix_len(stream, ram_id)?;
        Ok(Self {
            prefix: stream[..prefix].to_vec(),
            description: vm_description(&stream[prefix..])
                .unwrap_or_default()
                .to_vec(),
        })
    }

    /// A stream that loads like the original with the device state of `devices`, what
    /// `xen-save-devices-state` wrote: the original's prefix, the device sections of
    /// `devices` and its end, then the original's description when it had one.
    pub fn splice(&self, devices: &[u8]) -> io::Result<Vec<u8>> {
        let header = [FILE_MAGIC.to_be_bytes(), FILE_VERSION.to_be_bytes()].concat();
        let sections = devices
            .strip_prefix(header.as_slice())
            .ok_or_else(|| bad("the device state has no stream header"))?;
        match (sections.first(), sections.last()) {
            (Some(&SECTION_FULL | &EOF), Some(&EOF)) => {}
            _ => return Err(bad("the device state is not a list of device sections")),
        }
        let len = self.prefix.len() + sections.len() + self.description.len();
        if len > MAX_DEVICE_STATE {
            return Err(bad(format!(
                "the device state is larger than {MAX_DEVICE_STATE} bytes"
            )));
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(sections);
        out.extend_from_slice(&self.description);
        Ok(out)
    }
}

/// The stream's last record, when it is the description of its sections (a JSON object
/// after the end byte); JSON text holds no control bytes, so the first match from the end
/// is the record's start.
fn vm_description(stream: &[u8]) -> Option<&[u8]> {
    (1..stream.len().saturating_sub(5)).rev().find_map(|at| {
        let len = u32::from_be_bytes(stream[at + 1..at + 5].try_into().ok()?) as usize;
        let matches = stream[at - 1] == EOF
            && stream[at] == VMDESCRIPTION
            && stream.len() - (at + 5) == len
            && stream[at + 5] == b'{';
        matches.then(|| &stream[at..])
    })
}

impl<R: Read> Splitter<'_, R> {
    fn split(&mut self) -> io::Result<()> {
        let s = self;
        s.header()?;
        let mut ram_section = None;
        loop {
            let Some(kind) = s.next_byte()? else {
                return Err(bad("it ends before the device sections"));
            };
            s.keep(&[kind])?;
            match kind {
                SECTION_START => {
                    let id = s.copy_be32()?;
                    let name = s.copy_string()?;
                    s.copy(8)?; // instance id, version
                    if name != b"ram" {
                        return Err(bad(format!(
                            "iterable section {:?}",
                            String::from_utf8_lossy(&name)
                        )));
                    }
                    ram_section = Some(id);
                    s.ram_records()?;
                }
                SECTION_PART | SECTION_END => {
                    let id = s.copy_be32()?;
                    if Some(id) != ram_section {
                        return Err(bad(format!("section {id} continued before it started")));
                    }
                    s.ram_records()?;
                }
                COMMAND => {
                    s.copy(2)?;
                    let len = s.copy_be16()?;
                    s.copy(len as usize)?;
                }
                // The non-iterable sections (devices) and the end: copied as they are, or
                // where the prefix ends.
                _ if s.stop_at_devices => {
                    s.out.pop();
                    return Ok(());
                }
                _ => {
                    s.copy_rest()?;
                    break;
                }
            }
        }
        s.flush_run()?;
        Ok(())
    }
}

struct Splitter<'a, R> {
    input: R,
    out: Vec<u8>,
    /// Where guest RAM pages go; `None` when the stream must carry none.
    memory: Option<&'a File>,
    /// Stop before the first device section instead of copying the rest.
    stop_at_devices: bool,
    ram_id: &'a [u8],
    ram_size: u64,
    /// Whether the block of the last page record was the guest RAM (for `CONTINUE`).
    last_block_is_ram: Option<bool>,
    /// A byte read ahead and not consumed yet.
    pending: Option<u8>,
    /// Contiguous guest RAM pages not yet written, starting at `run_at`.
    run: Vec<u8>,
    run_at: u64,
    /// Why the memory file could not be written, when it could not.
    memory_error: Option<io::Error>,
}

impl<R: Read> Splitter<'_, R> {
    fn read(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.input.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn keep(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.out.len() + bytes.len() > MAX_DEVICE_STATE {
            return Err(bad(format!(
                "the device state is larger than {MAX_DEVICE_STATE} bytes"
            )));
        }
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn copy(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let bytes = self.read(n)?;
        self.keep(&bytes)?;
        Ok(bytes)
    }

    fn copy_be16(&mut self) -> io::Result<u16> {
        let b = self.copy(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn copy_be32(&mut self) -> io::Result<u32> {
        let b = self.copy(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn copy_be64(&mut self) -> io::Result<u64> {
        let b = self.copy(8)?;
        Ok(u64::from_be_bytes(b.try_into().unwrap_or_default()))
    }

    /// A byte length, then that many bytes.
    fn copy_string(&mut self) -> io::Result<Vec<u8>> {
        let len = self.copy(1)?[0];
        self.copy(len as usize)
    }

    fn copy_rest(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = self.input.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            self.keep(&chunk[..n])?;
        }
    }

    /// Magic, version, and the configuration section with its subsections.
    fn header(&mut self) -> io::Result<()> {
        let magic = self.copy_be32()?;
        let version = self.copy_be32()?;
        if magic != FILE_MAGIC || version != FILE_VERSION {
            return Err(bad(format!("header {magic:#x} version {version}")));
        }
        let kind = self.copy(1)?[0];
        if kind != CONFIGURATION {
            return Err(bad(format!("section {kind:#x} before the configuration")));
        }
        let len = self.copy_be32()?;
        self.copy(len as usize)?; // the machine type
        loop {
            match self.next_byte()? {
                Some(SUBSECTION) => self.keep(&[SUBSECTION])?,
                // The first section (or the end): the caller's.
                other => {
                    self.pending = other;
                    return Ok(());
                }
            }
            let name = self.copy_string()?;
            self.copy(4)?; // version
            match name.as_slice() {
                b"configuration/capabilities" => {
                    let count = self.copy_be32()?;
                    for _ in 0..count {
                        self.copy_string()?;
                    }
                }
                b"configuration/target-page-bits" => {
                    self.copy(4)?;
                }
                b"configuration/uuid" => {
                    self.copy(16)?;
                }
                other => {
                    return Err(bad(format!(
                        "configuration subsection {:?}",
                        String::from_utf8_lossy(other)
                    )));
                }
            }
        }
    }

    /// The next byte, or `None` at the end of the stream.
    fn next_byte(&mut self) -> io::Result<Option<u8>> {
        if let Some(byte) = self.pending.take() {
            return Ok(Some(byte));
        }
        let mut byte = [0u8; 1];
        loop {
            match self.input.read(&mut byte) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(byte[0])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The records of one `ram` section, up to and including its end-of-section record and
    /// the section footer.
    fn ram_records(&mut self) -> io::Result<()> {
        loop {
            let raw = self.read(8)?;
            let word = u64::from_be_bytes(raw.clone().try_into().unwrap_or_default());
            let flags = word & !PAGE_MASK;
            let addr = word & PAGE_MASK;
            if flags & !KNOWN_FLAGS != 0 {
                return Err(bad(format!("RAM record flags {flags:#x}")));
            }
            if flags & FLAG_EOS != 0 {
                self.keep(&raw)?;
                break;
            }
            if flags & FLAG_MEM_SIZE != 0 {
                self.keep(&raw)?;
                self.block_list(word & PAGE_MASK)?;
                continue;
            }
            // A page record: its block is named unless it continues the previous record's.
            let (is_ram, name) = if flags & FLAG_CONTINUE != 0 {
                let last = self
                    .last_block_is_ram
                    .ok_or_else(|| bad("a continued page record comes first"))?;
                (last, None)
            } else {
                let len = self.read(1)?[0];
                let name = self.read(len as usize)?;
                (name == self.ram_id, Some((len, name)))
            };
            self.last_block_is_ram = Some(is_ram);
            if is_ram {
                if self.memory.is_none() {
                    return Err(bad("it carries guest RAM pages"));
                }
                if addr + PAGE as u64 > self.ram_size {
                    return Err(bad(format!("a RAM page at {addr:#x}")));
                }
            } else {
                self.keep(&raw)?;
                if let Some((len, name)) = name {
                    self.keep(&[len])?;
                    self.keep(&name)?;
                }
            }
            if flags & FLAG_ZERO != 0 {
                let fill = self.read(1)?[0];
                if !is_ram {
                    self.keep(&[fill])?;
                } else if fill != 0 {
                    self.ram_page(addr, &[fill; PAGE])?;
                }
            } else if flags & FLAG_PAGE != 0 {
                let page = self.read(PAGE)?;
                if is_ram {
                    self.ram_page(addr, &page)?;
                } else {
                    self.keep(&page)?;
                }
            } else {
                return Err(bad(format!("RAM record flags {flags:#x}")));
            }
        }
        // The section footer, when the machine type sends it.
        match self.next_byte()? {
            Some(SECTION_FOOTER) => {
                self.keep(&[SECTION_FOOTER])?;
                self.copy(4)?;
            }
            other => self.pending = other,
        }
        Ok(())
    }

    /// The block list of the setup record: `total` bytes of blocks, each a name, its length
    /// and (with `x-ignore-shared`) its guest address.
    fn block_list(&mut self, total: u64) -> io::Result<()> {
        let mut left = total;
        while left > 0 {
            self.copy_string()?;
            let len = self.copy_be64()?;
            self.copy(8)?; // the block's address: x-ignore-shared is always on
            left = left
                .checked_sub(len)
                .ok_or_else(|| bad("RAM block lengths exceed the total"))?;
        }
        Ok(())
    }

    fn ram_page(&mut self, addr: u64, page: &[u8]) -> io::Result<()> {
        if self.run.is_empty() || self.run_at + self.run.len() as u64 != addr {
            self.flush_run()?;
            self.run_at = addr;
        }
        self.run.extend_from_slice(page);
        if self.run.len() >= RUN_PAGES * PAGE {
            self.flush_run()?;
        }
        Ok(())
    }

    fn flush_run(&mut self) -> io::Result<()> {
        if let Some(memory) = self.memory.filter(|_| !self.run.is_empty()) {
            if let Err(e) = memory.write_all_at(&self.run, self.run_at) {
                let kind = e.kind();
                self.memory_error = Some(e);
                return Err(io::Error::new(kind, "the memory file cannot be written"));
            }
            self.run.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    fn be64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_be_bytes());
    }

    /// A stream as QEMU 7.2 writes it; `with_ram` adds the guest RAM's page records.
    fn stream(with_ram: bool) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&FILE_MAGIC.to_be_bytes());
        s.extend_from_slice(&FILE_VERSION.to_be_bytes());
        s.push(CONFIGURATION);
        s.extend_from_slice(&7u32.to_be_bytes());
        s.extend_from_slice(b"microvm");
        s.push(SUBSECTION);
        string(&mut s, "configuration/capabilities");
        s.extend_from_slice(&1u32.to_be_bytes());
        s.extend_from_slice(&1u32.to_be_bytes());
        string(&mut s, "x-ignore-shared");
        // Setup: the block list, then the end of the section and its footer.
        s.push(SECTION_START);
        s.extend_from_slice(&2u32.to_be_bytes());
        string(&mut s, "ram");
        s.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 4]);
        be64(&mut s, (4096 + 16384) | FLAG_MEM_SIZE);
        string(&mut s, "rom");
        be64(&mut s, 4096);
        be64(&mut s, 0xfeff_0000);
        string(&mut s, "ram");
        be64(&mut s, 16384);
        be64(&mut s, 0);
        be64(&mut s, FLAG_EOS);
        s.push(SECTION_FOOTER);
        s.extend_from_slice(&2u32.to_be_bytes());
        // Pages.
        s.push(SECTION_PART);
        s.extend_from_slice(&2u32.to_be_bytes());
        if with_ram {
            be64(&mut s, FLAG_PAGE);
            string(&mut s, "ram");
            s.extend_from_slice(&[0xaa; PAGE]);
            be64(&mut s, 4096 | FLAG_ZERO | FLAG_CONTINUE);
            s.push(0);
        }
        be64(&mut s, FLAG_PAGE);
        string(&mut s, "rom");
        s.extend_from_slice(&[0x55; PAGE]);
        be64(&mut s, FLAG_ZERO | FLAG_CONTINUE);
        s.push(0);
        if with_ram {
            be64(&mut s, 8192 | FLAG_ZERO);
            string(&mut s, "ram");
            s.push(0);
            be64(&mut s, 12288 | FLAG_ZERO | FLAG_CONTINUE);
            s.push(7);
        }
        be64(&mut s, FLAG_EOS);
        s.push(SECTION_FOOTER);
        s.extend_from_slice(&2u32.to_be_bytes());
        s.push(SECTION_END);
        s.extend_from_slice(&2u32.to_be_bytes());
        be64(&mut s, FLAG_EOS);
        s.push(SECTION_FOOTER);
        s.extend_from_slice(&2u32.to_be_bytes());
        // A device section and the end, copied as they are.
        s.push(0x04);
        s.extend_from_slice(b"\0\0\0\x03\x03cpu and whatever follows");
        s.push(0x00);
        s
    }

    #[test]
    fn guest_ram_goes_to_the_memory_file_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let memory = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("mem"))
            .unwrap();
        // Old content must not survive.
        memory.write_all_at(&[1; 16384], 0).unwrap();
        let out = split_ram(&stream(true)[..], &memory, "ram", 16384).unwrap();
        assert_eq!(out, stream(false));
        let mem = std::fs::read(dir.path().join("mem")).unwrap();
        assert_eq!(mem.len(), 16384);
        assert!(mem[..4096].iter().all(|&b| b == 0xaa));
        assert!(mem[4096..12288].iter().all(|&b| b == 0));
        assert!(mem[12288..].iter().all(|&b| b == 7));
    }

    #[test]
    fn a_stream_without_guest_ram_passes_through() {
        let dir = tempfile::tempdir().unwrap();
        let memory = File::create(dir.path().join("mem")).unwrap();
        let out = split_ram(&stream(false)[..], &memory, "ram", 16384).unwrap();
        assert_eq!(out, stream(false));
    }

    #[test]
    fn what_is_not_understood_fails() {
        let dir = tempfile::tempdir().unwrap();
        let memory = File::create(dir.path().join("mem")).unwrap();
        let split = |bytes: &[u8]| split_ram(bytes, &memory, "ram", 16384);
        // Not a migration stream; cut short.
        assert!(split(b"QEVX\0\0\0\x03").is_err());
        let good = stream(true);
        for cut in [6, 20, 80, 120, 200] {
            assert!(split(&good[..cut]).is_err(), "cut at {cut}");
        }
        // A page beyond the guest's RAM.
        assert!(split_ram(&good[..], &memory, "ram", 8192).is_err());
        // XBZRLE-encoded pages.
        let mut xbzrle = good.clone();
        let at = xbzrle
            .windows(8)
            .position(|w| w == FLAG_PAGE.to_be_bytes())
            .unwrap();
        xbzrle[at + 7] |= 0x40;
        assert!(split(&xbzrle).is_err());
    }

    /// What `xen-save-devices-state` writes: the header, device sections, the end.
    fn devices(body: &[u8]) -> Vec<u8> {
        let mut d = [FILE_MAGIC.to_be_bytes(), FILE_VERSION.to_be_bytes()].concat();
        d.push(SECTION_FULL);
        d.extend_from_slice(body);
        d.push(EOF);
        d
    }

    #[test]
    fn the_prefix_ends_at_the_first_device_section() {
        let original = stream(false);
        // `stream`'s last device section and the end byte.
        let at = original.len() - b"\0\0\0\x03\x03cpu and whatever follows".len() - 2;
        assert_eq!(original[at], SECTION_FULL);
        assert_eq!(ram_prefix_len(&original, "ram").unwrap(), at);
        // Pages of guest RAM in the prefix would overwrite the memory file's on a load.
        let err = ram_prefix_len(&stream(true), "ram").unwrap_err();
        assert!(err.to_string().contains("guest RAM pages"), "{err}");
        // Another block's pages are the prefix's.
        assert!(ram_prefix_len(&stream(true), "other").is_ok());
        for cut in [6, 20, 80, at] {
            assert!(
                ram_prefix_len(&original[..cut], "ram").is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_splice_puts_the_new_devices_behind_the_old_prefix() {
        let original = stream(false);
        let prefix = ram_prefix_len(&original, "ram").unwrap();
        let fresh = devices(b"\0\0\0\x03\x03cpu, later");
        // Without a description of the sections.
        let spliced = RamPart::of(&original, "ram")
            .unwrap()
            .splice(&fresh)
            .unwrap();
        assert_eq!(spliced[..prefix], original[..prefix]);
        assert_eq!(spliced[prefix..], fresh[8..]);
        // The description follows, as QEMU writes it; the splice is a stream like the
        // original, so it splices again.
        let json = br#"{"page_size":4096,"devices":[]}"#;
        let mut described = original.clone();
        described.push(VMDESCRIPTION);
        described.extend_from_slice(&(json.len() as u32).to_be_bytes());
        described.extend_from_slice(json);
        let part = RamPart::of(&described, "ram").unwrap();
        assert_eq!(part.description, described[original.len()..]);
        let spliced = part.splice(&fresh).unwrap();
        assert_eq!(spliced[prefix..prefix + fresh.len() - 8], fresh[8..]);
        assert_eq!(
            spliced[prefix + fresh.len() - 8..],
            described[original.len()..]
        );
        let newer = devices(b"\0\0\0\x03\x03cpu, later still");
        let again = RamPart::of(&spliced, "ram")
            .unwrap()
            .splice(&newer)
            .unwrap();
        assert_eq!(again[prefix..prefix + newer.len() - 8], newer[8..]);
        assert!(again.ends_with(json));
    }

    #[test]
    fn a_splice_takes_only_device_sections() {
        let original = stream(false);
        let fresh = devices(b"\0\0\0\x03\x03cpu");
        let part = RamPart::of(&original, "ram").unwrap();
        assert!(part.splice(&fresh).is_ok());
        // No header, a configuration section, no end, nothing.
        assert!(part.splice(&fresh[8..]).is_err());
        let mut configuration = fresh.clone();
        configuration[8] = CONFIGURATION;
        assert!(part.splice(&configuration).is_err());
        assert!(part.splice(&fresh[..fresh.len() - 1]).is_err());
        assert!(part.splice(&fresh[..8]).is_err());
        // An original that is not understood, or carries guest RAM.
        assert!(RamPart::of(&original[..40], "ram").is_err());
        assert!(RamPart::of(&stream(true), "ram").is_err());
        // A device state past the bound.
        let huge = devices(&vec![0; MAX_DEVICE_STATE]);
        assert!(part.splice(&huge).is_err());
    }
}
