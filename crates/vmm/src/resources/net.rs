//! `/network-interfaces/{id}`: virtio-net devices backed by host TAPs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::rate_limiter::RateLimiterConfig;
use squib_net::tap::{TapError, TapHandle, TapOpener};

/// Smallest and largest MTU a guest interface may get (upstream's range).
pub(crate) const MIN_MTU: u16 = 68;
pub(crate) const MAX_MTU: u16 = 65535;

/// A guest MAC address, `xx:xx:xx:xx:xx:xx`; shown in lowercase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const INVALID: &str = "The provided MAC address is invalid.";
        let mut bytes = [0u8; 6];
        let mut groups = s.split(':');
        for byte in &mut bytes {
            let group = groups.next().ok_or(INVALID)?;
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(INVALID);
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| INVALID)?;
        }
        if groups.next().is_some() {
            return Err(INVALID);
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Body of `PUT /network-interfaces/{id}`, and its read-back shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: Option<MacAddr>,
    pub mtu: Option<u16>,
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Body of `PATCH /network-interfaces/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdateConfig {
    pub iface_id: String,
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Why a network interface was refused; the display text is the client-visible message.
#[derive(Debug, thiserror::Error)]
pub enum NetworkInterfaceError {
    #[error("Could not create the network device: {0}")]
    CreateNetworkDevice(NetDeviceError),
    #[error("The MAC address is already in use: {0}")]
    GuestMacAddressInUse(String),
    #[error("Unable to update the net device: Failed perform action on device: Device not found")]
    DeviceNotFound,
}

/// Device-creation failures (upstream's `NetError`).
#[derive(Debug, thiserror::Error)]
pub enum NetDeviceError {
    #[error("Open tap device failed: {0}")]
    TapOpen(TapError),
    #[error("MTU {0} is out of range [{MIN_MTU}, {MAX_MTU}]")]
    MtuOutOfRange(u16),
}

/// A configured interface: its validated config and the open TAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkInterface {
    pub config: NetworkInterfaceConfig,
    pub tap: TapHandle,
    /// Whether MMDS answers on this interface (set by `PUT /mmds/config`).
    pub mmds: bool,
}

impl NetworkInterface {
    /// The read-back shape: disabled rate limiters shown as `null`.
    pub fn to_config(&self) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            rx_rate_limiter: self
                .config
                .rx_rate_limiter
                .and_then(RateLimiterConfig::normalized),
            tx_rate_limiter: self
                .config
                .tx_rate_limiter
                .and_then(RateLimiterConfig::normalized),
            ..self.config.clone()
        }
    }
}

/// The configured interfaces, in insertion order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkInterfaces {
    list: Vec<NetworkInterface>,
}

impl NetworkInterfaces {
    /// Adds an interface or replaces the one with the same id; nothing changes on error.
    /// A replacement that keeps its TAP name keeps the open TAP (a second open would be busy).
    pub fn insert(
        &mut self,
        config: NetworkInterfaceConfig,
        open_tap: &TapOpener,
    ) -> Result<(), NetworkInterfaceError> {
        if let Some(mac) = config.guest_mac
            && self
                .list
                .iter()
                .any(|n| n.config.iface_id != config.iface_id && n.config.guest_mac == Some(mac))
        {
            return Err(NetworkInterfaceError::GuestMacAddressInUse(mac.to_string()));
        }
        if let Some(mtu) = config.mtu
            && mtu < MIN_MTU
        {
            return Err(NetworkInterfaceError::CreateNetworkDevice(
                NetDeviceError::MtuOutOfRange(mtu),
            ));
        }
        let existing = self
            .list
            .iter()
            .position(|n| n.config.iface_id == config.iface_id);
        let tap = match existing.map(|i| &self.list[i]) {
            Some(old) if old.config.host_dev_name == config.host_dev_name => old.tap.clone(),
            _ => open_tap(&config.host_dev_name).map_err(|e| {
                NetworkInterfaceError::CreateNetworkDevice(NetDeviceError::TapOpen(e))
            })?,
        };
        // Upstream drops the MMDS binding of a replaced interface.
        let iface = NetworkInterface {
            config,
            tap,
            mmds: false,
        };
        match existing {
            Some(i) => self.list[i] = iface,
            None => self.list.push(iface),
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&NetworkInterface> {
        self.list.iter().find(|n| n.config.iface_id == id)
    }

    /// Takes the interface with this id out (hot-unplug); its TAP closes with the last handle.
    pub fn remove(&mut self, id: &str) -> Option<NetworkInterface> {
        let at = self.list.iter().position(|n| n.config.iface_id == id)?;
        Some(self.list.remove(at))
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut NetworkInterface> {
        self.list.iter_mut().find(|n| n.config.iface_id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &NetworkInterface> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut NetworkInterface> {
        self.list.iter_mut()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }
}

impl super::VmResources {
    /// `PUT /network-interfaces/{id}` after boot (hot-plug): a new id, then the rules and the
    /// TAP of a configured interface.
    pub(crate) fn insert_hotplugged_net(
        &mut self,
        cfg: NetworkInterfaceConfig,
        open_tap: &TapOpener,
    ) -> Result<(), crate::action::VmmActionError> {
        if self.net.get(&cfg.iface_id).is_some() {
            return Err(crate::action::VmmActionError::DeviceIdInUse);
        }
        Ok(self.net.insert(cfg, open_tap)?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn fake_opener() -> TapOpener {
        Arc::new(|name: &str| {
            if name.starts_with("tap") {
                Ok(TapHandle::detached(name))
            } else {
                Err(TapError::InvalidIfname)
            }
        })
    }

    fn cfg(json: &str) -> NetworkInterfaceConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn mac_parsing_and_display() {
        let mac: MacAddr = "AA:bb:0c:dd:ee:0F".parse().unwrap();
        assert_eq!(mac.to_string(), "aa:bb:0c:dd:ee:0f");
        for bad in [
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "a:bb:cc:dd:ee:ff",
            "zz:bb:cc:dd:ee:ff",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let err = serde_json::from_str::<NetworkInterfaceConfig>(
            r#"{"iface_id":"a","host_dev_name":"t","guest_mac":"xx"}"#,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The provided MAC address is invalid. at line 1 column 53"
        );
    }

    #[test]
    fn mac_in_use_mtu_and_tap_errors_change_nothing() {
        let open = fake_opener();
        let mut nets = NetworkInterfaces::default();
        nets.insert(
            cfg(r#"{"iface_id":"a","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#),
            &open,
        )
        .unwrap();
        let before = nets.clone();
        let err = nets
            .insert(
                cfg(r#"{"iface_id":"b","host_dev_name":"tap1","guest_mac":"06:00:00:00:00:01"}"#),
                &open,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The MAC address is already in use: 06:00:00:00:00:01"
        );
        let err = nets
            .insert(
                cfg(r#"{"iface_id":"b","host_dev_name":"tap1","mtu":67}"#),
                &open,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Could not create the network device: MTU 67 is out of range [68, 65535]"
        );
        let err = nets
            .insert(cfg(r#"{"iface_id":"a","host_dev_name":"eth9"}"#), &open)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Could not create the network device: Open tap device failed: Invalid interface name"
        );
        assert_eq!(nets, before);
        // Same id, same MAC: a replacement, not a conflict.
        nets.insert(
            cfg(r#"{"iface_id":"a","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}"#),
            &open,
        )
        .unwrap();
        assert_eq!(nets.len(), 1);
    }
}
