//! The virtio-vsock wire constants and Firecracker's limits (upstream's values).

use std::time::Duration;

/// The host's CID: every packet the guest addresses to the host carries it.
pub(crate) const HOST_CID: u64 = 2;
pub(crate) const TYPE_STREAM: u16 = 1;

pub(crate) const OP_REQUEST: u16 = 1;
pub(crate) const OP_RESPONSE: u16 = 2;
pub(crate) const OP_RST: u16 = 3;
pub(crate) const OP_SHUTDOWN: u16 = 4;
pub(crate) const OP_RW: u16 = 5;
pub(crate) const OP_CREDIT_UPDATE: u16 = 6;
pub(crate) const OP_CREDIT_REQUEST: u16 = 7;

/// The sender will receive no more data.
pub(crate) const SHUTDOWN_RCV: u32 = 1;
/// The sender will send no more data.
pub(crate) const SHUTDOWN_SEND: u32 = 2;

/// Bytes a connection buffers for a host peer that reads slower than the guest writes: the
/// credit (`buf_alloc`) squib gives the guest, so the guest can never outgrow it.
pub(crate) const CONN_TX_BUF_SIZE: u32 = 64 * 1024;
/// When the guest thinks less than this is free, squib sends it a credit update.
pub(crate) const CONN_CREDIT_UPDATE_THRESHOLD: u32 = 4 * 1024;
/// The largest payload of one packet.
pub(crate) const MAX_PKT_BUF_SIZE: u32 = 64 * 1024;
/// A host-initiated request the guest has not answered by then is dropped.
pub(crate) const CONN_REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);
/// A connection shutting down with data still buffered is killed after this.
pub(crate) const CONN_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(2000);
/// Connections (established or being set up) one device carries at most.
pub(crate) const MAX_CONNECTIONS: usize = 1023;
/// Resets for unknown connections waiting for an RX buffer; beyond this the guest's stray
/// packets are dropped without one (the guest times out instead).
pub(crate) const MAX_PENDING_RESETS: usize = 1024;
/// Longest `CONNECT <port>\n` line a host client may send.
pub(crate) const MAX_CONNECT_LINE: usize = 32;
