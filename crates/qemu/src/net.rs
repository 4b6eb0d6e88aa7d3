//! The guest network path of a QEMU guest: one [`Relay`] per interface between QEMU's stream
//! netdev and the TAP the VMM opened at `PUT /network-interfaces`, with the interface's rate
//! limiters and, on MMDS-bound interfaces, the MMDS stack as the relay's frame detour.

use std::path::Path;
use std::sync::Arc;

use squib_mmds::{Mmds, MmdsConfig, MmdsVersion};
use squib_net::{BucketConfig, FrameDetour, LimiterConfig, Relay, RelayConfig, Tap};
use squib_vmm::config::mmds::MmdsVersion as ApiMmdsVersion;
use squib_vmm::config::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
use squib_vmm::{EngineError, VmResources};

use crate::cmdline;

/// The API's rate limiter as the relay's token buckets.
pub fn limiter_config(config: RateLimiterConfig) -> LimiterConfig {
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
pub fn mmds_service(resources: &VmResources, instance_id: &str) -> Option<Arc<Mmds>> {
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

/// Binds each interface's socket (at [`cmdline::net_socket`], which QEMU's argv names) and
/// starts its relay, with `mmds` ([`mmds_service`]) on the MMDS-bound interfaces. Must run on a
/// tokio runtime, before QEMU is spawned.
pub fn spawn_relays(
    resources: &VmResources,
    qmp_socket: &Path,
    mmds: Option<&Arc<Mmds>>,
) -> Result<Vec<Relay>, EngineError> {
    let mut relays = Vec::with_capacity(resources.net.len());
    for (index, iface) in resources.net.iter().enumerate() {
        let id = &iface.config.iface_id;
        let fail = |what: String| EngineError(format!("network interface {id}: {what}"));
        let fd = iface
            .tap
            .dup_fd()
            .ok_or_else(|| fail(format!("the TAP {} is not open", iface.tap.name())))?
            .map_err(|e| fail(format!("cannot duplicate the TAP descriptor: {e}")))?;
        let tap = Tap::from_fd(fd, iface.tap.name()).map_err(|e| fail(e.to_string()))?;
        let path = cmdline::net_socket(qmp_socket, index);
        let guest = tokio::net::UnixListener::bind(&path)
            .map_err(|e| fail(format!("cannot listen on {}: {e}", path.display())))?;
        let detour = match mmds {
            Some(mmds) if iface.mmds => {
                let ip = mmds.config().ipv4_address;
                let ends = squib_mmds::spawn_stack(mmds.clone(), ip)
                    .map_err(|e| fail(format!("cannot start the MMDS: {e}")))?;
                Some(FrameDetour {
                    claims: ends.claims,
                    to_service: ends.to_service,
                    from_service: ends.from_service,
                })
            }
            _ => None,
        };
        relays.push(Relay::spawn(RelayConfig {
            iface_id: id.clone(),
            tap,
            guest,
            rx_rate_limiter: iface
                .config
                .rx_rate_limiter
                .map(limiter_config)
                .unwrap_or_default(),
            tx_rate_limiter: iface
                .config
                .tx_rate_limiter
                .map(limiter_config)
                .unwrap_or_default(),
            detour,
        }));
    }
    Ok(relays)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_limiters_map_to_relay_buckets() {
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
