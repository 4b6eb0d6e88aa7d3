//! QEMU's stream-netdev framing: each Ethernet frame is preceded by its length as a 4-byte
//! big-endian integer (the same framing as `-netdev socket`).
//!
//! Checked against QEMU 7.2 with a loopback hub (see `tests/qemu_stream.rs`).

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest frame QEMU's net layer hands over (`NET_BUFSIZE`: 4 KiB of headroom + 64 KiB).
pub const MAX_FRAME: usize = 4096 + 65536;

/// Reads one frame into `buf` (at least [`MAX_FRAME`] long). `Ok(None)` is a clean end of stream
/// between frames; a length of zero or above [`MAX_FRAME`] is `InvalidData`, since the peer is
/// then out of step and nothing after it can be trusted.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > MAX_FRAME || len > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} out of range"),
        ));
    }
    reader.read_exact(&mut buf[..len]).await?;
    Ok(Some(len))
}

/// Writes one frame with its length prefix, in a single write where the stream allows it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    scratch: &mut Vec<u8>,
    frame: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .ok()
        .filter(|&l| l as usize <= MAX_FRAME)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    scratch.clear();
    scratch.extend_from_slice(&len.to_be_bytes());
    scratch.extend_from_slice(frame);
    writer.write_all(scratch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_bad_lengths() {
        let mut wire = Vec::new();
        let mut scratch = Vec::new();
        write_frame(&mut wire, &mut scratch, b"abc").await.unwrap();
        write_frame(&mut wire, &mut scratch, &[7u8; 1500])
            .await
            .unwrap();
        assert_eq!(&wire[..7], b"\0\0\0\x03abc");
        let mut rd = wire.as_slice();
        let mut buf = vec![0u8; MAX_FRAME];
        assert_eq!(read_frame(&mut rd, &mut buf).await.unwrap(), Some(3));
        assert_eq!(read_frame(&mut rd, &mut buf).await.unwrap(), Some(1500));
        assert_eq!(read_frame(&mut rd, &mut buf).await.unwrap(), None);

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let err = read_frame(&mut huge.as_slice(), &mut buf)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let zero = 0u32.to_be_bytes();
        assert!(read_frame(&mut zero.as_slice(), &mut buf).await.is_err());
        // A frame cut short is an error, not a clean end.
        let cut = b"\0\0\0\x05ab";
        assert!(read_frame(&mut cut.as_slice(), &mut buf).await.is_err());
    }
}
