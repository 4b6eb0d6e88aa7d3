//! The virtio-net header (`struct virtio_net_hdr_v1`) that precedes every frame on the virtqueues
//! and on a TAP opened with `IFF_VNET_HDR`, and what the device does with it itself: finish a
//! checksum the guest left to the device before a frame goes to the MMDS instead of the TAP
//! ([`for_local_service`]).

/// Header length with `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF`: the legacy 10 bytes plus
/// `num_buffers`.
pub const HDR_LEN: usize = 12;
/// Header length of a legacy device without mergeable buffers.
pub const LEGACY_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP segmentation (USO), IPv4 or IPv6.
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`, or'ed into a TCP `gso_type`.
pub const GSO_ECN: u8 = 0x80;

/// The header fields the device reads (little-endian on the wire: virtio 1.x, or a legacy device
/// on a little-endian host, the only kind squib runs on).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `flags`.
    pub flags: u8,
    /// `gso_type`.
    pub gso_type: u8,
    /// `hdr_len`.
    pub hdr_len: u16,
    /// `gso_size`.
    pub gso_size: u16,
    /// `csum_start`.
    pub csum_start: u16,
    /// `csum_offset`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`LEGACY_HDR_LEN`] bytes; `None` when `bytes` is shorter.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..LEGACY_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

/// Sets `num_buffers` of a header of [`HDR_LEN`] bytes at the start of `buf`.
pub fn set_num_buffers(buf: &mut [u8], n: u16) {
    if let Some(field) = buf.get_mut(LEGACY_HDR_LEN..HDR_LEN) {
        field.copy_from_slice(&n.to_le_bytes());
    }
}

/// Readies a guest frame that a local service (the MMDS: ARP, and TCP over IPv4) claimed, which
/// takes no offloads: the checksum the guest left to the device is finished, and a TCP
/// segmentation-offloaded frame goes over as the one large segment it is. False (the frame is
/// malformed) when the header asks for a segmentation the frame cannot be, UDP (UFO, USO) or
/// IPv6 on a frame the service took for TCP over IPv4 or ARP, or when the checksum offsets do
/// not fit the frame.
pub fn for_local_service(hdr: &VnetHdr, frame: &mut [u8]) -> bool {
    matches!(hdr.gso_type & !GSO_ECN, GSO_NONE | GSO_TCPV4) && complete_checksum(hdr, frame)
}

/// Finishes the partial checksum of `frame` (an Ethernet frame) that `hdr` asks the device for,
/// as a NIC would: the one's-complement sum of everything from `csum_start`, the partial value in
/// place included, stored at `csum_start + csum_offset`. False when the offsets do not fit the
/// frame (the frame is then left alone). A frame that needs nothing is true.
pub fn complete_checksum(hdr: &VnetHdr, frame: &mut [u8]) -> bool {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return true;
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if at + 2 > frame.len() || start >= frame.len() {
        return false;
    }
    let sum = !fold(ones_sum(&frame[start..]));
    frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

fn ones_sum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_little_endian() {
        let h = VnetHdr::parse(&[1, 3, 54, 0, 0xb4, 5, 34, 0, 16, 0, 9, 9]).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: 1,
                gso_type: 3,
                hdr_len: 54,
                gso_size: 1460,
                csum_start: 34,
                csum_offset: 16
            }
        );
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
        let mut buf = [0u8; 12];
        set_num_buffers(&mut buf, 0x0102);
        assert_eq!(&buf[10..], &[2, 1]);
    }

    #[test]
    fn completed_checksum_verifies_to_zero() {
        // An IPv4 UDP frame whose checksum field holds the pseudo-header sum, as Linux leaves it
        // with CHECKSUM_PARTIAL.
        let mut frame = vec![0u8; 14 + 20 + 8 + 5];
        frame[12..14].copy_from_slice(&[8, 0]);
        frame[14] = 0x45;
        frame[23] = 17;
        frame[26..30].copy_from_slice(&[10, 0, 0, 2]);
        frame[30..34].copy_from_slice(&[10, 0, 0, 1]);
        frame[34..36].copy_from_slice(&1234u16.to_be_bytes());
        frame[36..38].copy_from_slice(&80u16.to_be_bytes());
        frame[38..40].copy_from_slice(&13u16.to_be_bytes());
        frame[42..].copy_from_slice(b"hello");
        let pseudo = ones_sum(&[10, 0, 0, 2, 10, 0, 0, 1, 0, 17, 0, 13]);
        frame[40..42].copy_from_slice(&fold(pseudo).to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        assert!(complete_checksum(&hdr, &mut frame));
        // Verifying: pseudo header + segment sums to 0xffff.
        let total = pseudo + ones_sum(&frame[34..]);
        assert_eq!(fold(total), 0xffff);

        let bad = VnetHdr {
            csum_offset: 100,
            ..hdr
        };
        assert!(!complete_checksum(&bad, &mut frame));
        assert!(complete_checksum(&VnetHdr::default(), &mut frame));
    }

    #[test]
    fn a_local_service_takes_plain_and_tcp_segmented_frames_but_no_udp_or_ipv6_segmentation() {
        let mut frame = vec![0u8; 80];
        let with = |gso_type| VnetHdr {
            gso_type,
            gso_size: 1448,
            ..VnetHdr::default()
        };
        for ok in [GSO_NONE, GSO_TCPV4, GSO_TCPV4 | GSO_ECN] {
            assert!(for_local_service(&with(ok), &mut frame), "{ok:#x}");
        }
        // UFO (3), TCPv6 (4), USO (5) and types virtio does not define.
        for bad in [3, 4, GSO_UDP_L4, GSO_UDP_L4 | GSO_ECN, 2, 0x7f, 0xff] {
            assert!(!for_local_service(&with(bad), &mut frame), "{bad:#x}");
        }
        // A checksum request that does not fit is refused whatever the type.
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 70,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert!(!for_local_service(&hdr, &mut frame));
    }
}
