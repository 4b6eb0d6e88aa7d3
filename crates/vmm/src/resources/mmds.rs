//! `/mmds/config`: which interfaces reach the metadata service, its version and address.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The address MMDS answers on unless configured otherwise.
pub(crate) const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    #[default]
    V1,
    V2,
}

pub use upstream_name::MmdsConfig as MmdsConfigRequest;

mod upstream_name {
    use super::*;

    /// Body of `PUT /mmds/config`. `version` stays optional here because omitting it is itself
    /// deprecated (docs/api-contract.md §3.6). The type carries upstream's name because serde
    /// spells the Rust name (not a `rename`) in its error texts.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MmdsConfig {
        /// Absent is `None`; `null` is refused, as upstream (whose field is not an `Option`).
        #[serde(default, deserialize_with = "present_version")]
        pub version: Option<MmdsVersion>,
        pub network_interfaces: Vec<String>,
        pub ipv4_address: Option<Ipv4Addr>,
        #[serde(default)]
        pub imds_compat: bool,
    }

    fn present_version<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<MmdsVersion>, D::Error> {
        MmdsVersion::deserialize(d).map(Some)
    }
}

impl MmdsConfigRequest {
    /// V1, explicit or by default, is deprecated.
    pub fn is_deprecated(&self) -> bool {
        self.version != Some(MmdsVersion::V2)
    }
}

/// A validated MMDS configuration (read back as a [`MmdsConfigRequest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmdsConfig {
    pub version: MmdsVersion,
    pub network_interfaces: Vec<String>,
    pub ipv4_address: Ipv4Addr,
    pub imds_compat: bool,
}

/// Why `PUT /mmds/config` failed. The prefix really is `MMMDS` upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdsConfigError {
    #[error("The MMDS IPv4 address is not link local.")]
    InvalidIpv4Addr,
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    EmptyNetIfaceList,
    #[error(
        "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface."
    )]
    InvalidNetworkInterfaceId,
}

/// 169.254.1.0 – 169.254.254.255: link-local without the reserved first and last /24.
fn is_valid_link_local(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 169 && b == 254 && (1..=254).contains(&c)
}

impl MmdsConfigRequest {
    /// Checks in upstream's order; `known` says whether an interface id is configured.
    pub fn validate(self, known: impl Fn(&str) -> bool) -> Result<MmdsConfig, MmdsConfigError> {
        let ipv4_address = self.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4);
        if !is_valid_link_local(ipv4_address) {
            return Err(MmdsConfigError::InvalidIpv4Addr);
        }
        if self.network_interfaces.is_empty() {
            return Err(MmdsConfigError::EmptyNetIfaceList);
        }
        if !self.network_interfaces.iter().all(|id| known(id)) {
            return Err(MmdsConfigError::InvalidNetworkInterfaceId);
        }
        Ok(MmdsConfig {
            version: self.version.unwrap_or_default(),
            network_interfaces: self.network_interfaces,
            ipv4_address,
            imds_compat: self.imds_compat,
        })
    }
}

impl super::VmResources {
    /// `PUT /mmds/config`: every listed interface must exist; they, and only they, carry MMDS.
    pub(crate) fn set_mmds_config(
        &mut self,
        request: MmdsConfigRequest,
    ) -> Result<(), MmdsConfigError> {
        let net = &self.net;
        let config = request.validate(|id| net.get(id).is_some())?;
        for iface in self.net.iter_mut() {
            iface.mmds = config.network_interfaces.contains(&iface.config.iface_id);
        }
        self.mmds_config = Some(config);
        Ok(())
    }

    /// The effective MMDS configuration: null unless some interface carries MMDS.
    pub fn effective_mmds_config(&self) -> Option<MmdsConfig> {
        let config = self.mmds_config.as_ref()?;
        let interfaces: Vec<String> = self
            .net
            .iter()
            .filter(|n| n.mmds)
            .map(|n| n.config.iface_id.clone())
            .collect();
        (!interfaces.is_empty()).then(|| MmdsConfig {
            network_interfaces: interfaces,
            ..config.clone()
        })
    }

    /// The MMDS store is reachable through the API before boot, and after boot only while
    /// some interface carries MMDS.
    pub(crate) fn check_mmds_reachable(
        &self,
        booted: bool,
    ) -> Result<(), crate::mmds_store::MmdsStoreError> {
        if booted && self.effective_mmds_config().is_none() {
            return Err(crate::mmds_store::MmdsStoreError::NotInitialized);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> MmdsConfigRequest {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn checks_in_order() {
        let known = |id: &str| id == "eth0";
        assert_eq!(
            req(r#"{"network_interfaces":[],"ipv4_address":"169.254.0.1"}"#).validate(known),
            Err(MmdsConfigError::InvalidIpv4Addr)
        );
        assert_eq!(
            req(r#"{"network_interfaces":[]}"#).validate(known),
            Err(MmdsConfigError::EmptyNetIfaceList)
        );
        assert_eq!(
            req(r#"{"network_interfaces":["eth1"]}"#).validate(known),
            Err(MmdsConfigError::InvalidNetworkInterfaceId)
        );
        let ok = req(r#"{"network_interfaces":["eth0"],"ipv4_address":"169.254.254.255"}"#);
        assert!(ok.is_deprecated());
        let cfg = ok.validate(known).unwrap();
        assert_eq!(
            serde_json::to_string(&MmdsConfigRequest::from(cfg)).unwrap(),
            r#"{"version":"V1","network_interfaces":["eth0"],"ipv4_address":"169.254.254.255","imds_compat":false}"#
        );
        assert!(!req(r#"{"version":"V2","network_interfaces":[]}"#).is_deprecated());
        let err = serde_json::from_str::<MmdsConfigRequest>(
            r#"{"version":null,"network_interfaces":[]}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "expected value at line 1 column 12");
        assert!(req(r#"{"network_interfaces":[]}"#).version.is_none());
        let err = serde_json::from_str::<MmdsConfigRequest>(
            r#"{"network_interfaces":[],"ipv4_address":"1.2.3"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid IPv4 address syntax"),
            "{err}"
        );
    }

    #[test]
    fn mmds_interfaces_must_exist() {
        let mut resources = crate::VmResources::default();
        let request = MmdsConfigRequest {
            network_interfaces: vec!["eth0".into()],
            ..Default::default()
        };
        assert_eq!(
            resources.set_mmds_config(request),
            Err(MmdsConfigError::InvalidNetworkInterfaceId)
        );
        assert_eq!(resources.mmds_config, None);
        assert!(resources.check_mmds_reachable(false).is_ok());
        assert!(resources.check_mmds_reachable(true).is_err());
    }
}
