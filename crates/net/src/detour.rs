//! The hook through which a local service (the MMDS) takes guest frames off the path to the TAP
//! and sends its own frames to the guest.
//!
//! The device knows nothing of what the service is: it asks `claims` about every guest frame,
//! hands claimed ones over, and merges the service's output into the guest-bound stream, so the
//! service's replies pass the rx rate limiter like any other frame (as in Firecracker).

use tokio::sync::mpsc;

/// A predicate on a raw Ethernet frame: true when the frame belongs to the service.
pub type ClaimFn = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Both ends of a service attached to one interface.
pub struct FrameDetour {
    /// Pure and cheap: called on every guest frame on the guest→host path.
    pub claims: ClaimFn,
    /// Claimed guest frames. Bounded: a frame the busy service has no room for is lost, as one
    /// the TAP refuses is (the guest's TCP sends it again).
    pub to_service: mpsc::Sender<Vec<u8>>,
    /// Frames the service wants delivered to the guest.
    pub from_service: mpsc::Receiver<Vec<u8>>,
}

impl std::fmt::Debug for FrameDetour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDetour").finish_non_exhaustive()
    }
}
