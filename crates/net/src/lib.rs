//! squib-net: the guest's network path. QEMU's `-netdev stream` connects to a Unix socket squib
//! listens on; a [`Relay`] per interface moves length-prefixed frames between it and a [`Tap`],
//! through Firecracker-style token-bucket limiters and an optional [`FrameDetour`] for the MMDS.
//!
//! Wiring, per interface: open the TAP when the interface is configured ([`Tap::open`]; its
//! error texts are Firecracker's), bind a [`tokio::net::UnixListener`] on a path of squib's own
//! choosing *before* QEMU starts, give QEMU
//! `-netdev stream,id=⟨id⟩,server=off,addr.type=unix,addr.path=⟨path⟩` (QEMU 7.2 connects once at
//! start-up and fails if nobody listens), then [`Relay::spawn`] and keep the [`RelayHandle`] for
//! metrics and `PATCH` updates.

pub mod detour;
pub mod framing;
pub mod metrics;
pub mod relay;
pub mod tap;
pub mod token_bucket;

pub use detour::{ClaimFn, FrameDetour};
pub use metrics::NetMetrics;
pub use relay::{Relay, RelayConfig, RelayHandle};
pub use tap::{Tap, TapError};
pub use token_bucket::{BucketConfig, LimiterConfig, RateLimiter, TokenBucket};
