//! The guest network path of a QEMU guest: squib's own virtio-net device per interface, served
//! over vhost-user to QEMU's `virtio-net-device` (`-netdev vhost-user`), on the TAP the VMM opened
//! at `PUT /network-interfaces`, with the interface's rate limiters and, on MMDS-bound
//! interfaces, the MMDS stack as the device's frame detour.

use std::path::Path;
use std::sync::{Arc, Mutex};

use squib_mmds::{Mmds, MmdsConfig, MmdsVersion};
use squib_net::{
    BucketConfig, FrameDetour, FrontendRelay, LimiterConfig, NetBackend, NetDeviceConfig,
    NetShared, ServiceLink, Tap,
};
use squib_vmm::resources::mmds::MmdsVersion as ApiMmdsVersion;
use squib_vmm::resources::net::NetworkInterface;
use squib_vmm::resources::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use squib_vmm::{EngineError, VmResources};

use crate::plan;

/// One interface's device while QEMU runs: its counters and limiters, and the served backend
/// (dropping it ends the backend's threads).
pub(crate) struct NetInterface {
    pub shared: Arc<NetShared>,
    _relay: FrontendRelay,
    _backend: squib_vhost::BackendHandle,
}

/// The API's rate limiter as the device's token buckets.
pub(crate) fn limiter_config(config: RateLimiterConfig) -> LimiterConfig {
    let bucket = |b: TokenBucketConfig| BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    };
    LimiterConfig {
        bandwidth: config.bandwidth.map(bucket),
        ops: config.ops.map(bucket),
    }
}

/// The guest-facing MMDS of the VM, when `/mmds/config` bound it to some interface.
pub(crate) fn mmds_service(resources: &VmResources, instance_id: &str) -> Option<Arc<Mmds>> {
    let config = resources.effective_mmds_config()?;
    let version = match config.version {
        ApiMmdsVersion::V1 => MmdsVersion::V1,
        ApiMmdsVersion::V2 => MmdsVersion::V2,
    };
    Some(Arc::new(Mmds::new(
        resources.mmds.published(),
        MmdsConfig {
            version,
            imds_compat: config.imds_compat,
            ipv4_address: config.ipv4_address,
        },
        instance_id,
    )))
}

/// Serves each interface's device on its vhost-user socket (at [`plan::net_socket`], which
/// QEMU's argv names), with `mmds` ([`mmds_service`]) on the MMDS-bound interfaces. Must run on
/// a tokio runtime, before QEMU is spawned (QEMU connects at start-up).
pub(crate) fn serve_devices(
    resources: &VmResources,
    runtime_dir: &Path,
    mmds: Option<&Arc<Mmds>>,
) -> Result<Vec<NetInterface>, EngineError> {
    resources
        .net
        .iter()
        .enumerate()
        .map(|(index, iface)| {
            serve_device(
                iface,
                &plan::netdev_id(index),
                &plan::net_socket(runtime_dir, index),
                mmds.filter(|_| iface.mmds),
            )
        })
        .collect()
}

/// Serves one interface's device on the vhost-user socket `public` (threads named after
/// `name`), with `mmds` as its frame detour when given. Must run on a tokio runtime.
pub(crate) fn serve_device(
    iface: &NetworkInterface,
    name: &str,
    public: &Path,
    mmds: Option<&Arc<Mmds>>,
) -> Result<NetInterface, EngineError> {
    let id = &iface.config.iface_id;
    let fail = |what: String| EngineError::Failed(format!("network interface {id}: {what}"));
    let fd = iface
        .tap
        .dup_fd()
        .ok_or_else(|| fail(format!("the TAP {} is not open", iface.tap.name())))?
        .map_err(|e| fail(format!("cannot duplicate the TAP descriptor: {e}")))?;
    let tap = Tap::from_fd(fd, iface.tap.name()).map_err(|e| fail(e.to_string()))?;
    let service = match mmds {
        Some(mmds) => {
            let ip = mmds.config().ipv4_address;
            let ends = squib_mmds::spawn_stack(mmds.clone(), ip)
                .map_err(|e| fail(format!("cannot start the MMDS: {e}")))?;
            let link = ServiceLink::spawn(FrameDetour {
                claims: ends.claims,
                to_service: ends.to_service,
                from_service: ends.from_service,
            })
            .map_err(|e| fail(format!("cannot start the MMDS: {e}")))?;
            Some(link)
        }
        None => None,
    };
    let limiter = |c: Option<RateLimiterConfig>| c.map(limiter_config).unwrap_or_default();
    let shared = NetBackend::shared_for(
        id,
        limiter(iface.config.rx_rate_limiter),
        limiter(iface.config.tx_rate_limiter),
    )
    .map_err(|e| fail(format!("cannot create the device: {e}")))?;
    let backend = NetBackend::new(NetDeviceConfig {
        tap,
        shared: shared.clone(),
        guest_mac: iface.config.guest_mac.map(|m| m.0),
        mtu: iface.config.mtu.is_some(),
        service,
    })
    .map_err(|e| fail(format!("cannot create the device: {e}")))?;
    let listeners = backend.listeners();
    let private = public.with_file_name(format!("{name}-dev.sock"));
    let handle = squib_vhost::serve_with_workers(
        name,
        &private,
        Arc::new(Mutex::new(backend)),
        move |workers| {
            // Both queues are served by the one worker.
            let Some(worker) = workers.first() else {
                return;
            };
            for (fd, events, id) in listeners {
                if let Err(err) = worker.add(fd, events, id) {
                    tracing::error!(%err, "the net device cannot watch its descriptors");
                }
            }
        },
    )
    .map_err(|e| fail(e.to_string()))?;
    let relay = FrontendRelay::spawn(public, private, name)
        .map_err(|e| fail(format!("cannot listen on {}: {e}", public.display())))?;
    Ok(NetInterface {
        shared,
        _relay: relay,
        _backend: handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_limiters_map_to_device_buckets() {
        let api: RateLimiterConfig = serde_json::from_str(
            r#"{"bandwidth":{"size":1000,"refill_time":100},"ops":{"size":5,"refill_time":1000,"one_time_burst":7}}"#,
        )
        .unwrap();
        assert_eq!(
            limiter_config(api),
            LimiterConfig {
                bandwidth: Some(BucketConfig {
                    size: 1000,
                    one_time_burst: 0,
                    refill_time_ms: 100
                }),
                ops: Some(BucketConfig {
                    size: 5,
                    one_time_burst: 7,
                    refill_time_ms: 1000
                }),
            }
        );
        assert_eq!(
            limiter_config(RateLimiterConfig::default()),
            LimiterConfig::default()
        );
    }
}
