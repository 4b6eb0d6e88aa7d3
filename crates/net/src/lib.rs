//! squib-net: the guest's network path. squib is the virtio-net device: QEMU's
//! `virtio-net-device` on `-netdev vhost-user` hands the virtqueues (in shared guest RAM) to a
//! [`NetBackend`] per interface, which moves frames between them and a [`Tap`] opened with a
//! virtio-net header, through Firecracker-style token-bucket limiters and an optional
//! [`FrameDetour`] for the MMDS.
//!
//! Wiring, per interface: open the TAP when the interface is configured ([`tap::open_tap`]; its
//! error texts are Firecracker's), keep one [`NetShared`] per interface for metrics and `PATCH`,
//! and for each QEMU start build a [`NetBackend`] and serve it on a vhost-user socket before
//! QEMU connects to it.

pub mod detour;
pub mod device;
pub mod frontend;
pub mod metrics;
pub mod os_error;
pub mod tap;
pub mod token_bucket;
pub mod vnet;

pub use detour::{ClaimFn, FrameDetour};
pub use device::{NetBackend, NetDeviceConfig, NetShared, ServiceLink};
pub use frontend::FrontendRelay;
pub use metrics::NetMetrics;
pub use os_error::OsError;
pub use tap::{Tap, TapError, TapHandle, TapOpener};
pub use token_bucket::{BucketConfig, LimiterConfig, RateLimiter, TokenBucket};
