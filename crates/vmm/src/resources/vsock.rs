//! `/vsock`: the hybrid vsock device and its host-side Unix socket.

use std::fmt;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use squib_net::OsError;

/// Body of `PUT /vsock`. `vsock_id` is deprecated and ignored; `guest_cid` is not range-checked
/// (upstream does not enforce the spec's minimum of 3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    #[serde(default, skip_serializing)]
    pub vsock_id: Option<String>,
    pub guest_cid: u32,
    pub uds_path: String,
}

/// Why a vsock device was refused; the display text is the client-visible message.
#[derive(Debug, thiserror::Error)]
pub enum VsockConfigError {
    #[error(
        "Cannot create backend for vsock device: Error binding to the host-side Unix socket: {0}"
    )]
    Bind(OsError),
}

/// The host-side listener, bound when the `PUT` arrives as upstream does.
#[derive(Clone)]
pub struct VsockListener(pub Arc<UnixListener>);

impl fmt::Debug for VsockListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VsockListener")
    }
}

impl PartialEq for VsockListener {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for VsockListener {}

/// A vsock device whose socket is bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vsock {
    pub config: VsockDeviceConfig,
    pub listener: VsockListener,
}

impl Vsock {
    /// Binds `uds_path`. `previous` is the device being replaced: as upstream, its socket file
    /// is removed first (a failure to remove it refuses the `PUT` as a bind error), and it is
    /// gone whether or not the new one binds.
    pub fn bind(
        config: VsockDeviceConfig,
        previous: Option<Vsock>,
    ) -> Result<Self, VsockConfigError> {
        if let Some(old) = previous {
            std::fs::remove_file(&old.config.uds_path)
                .map_err(|e| VsockConfigError::Bind(e.into()))?;
        }
        let listener =
            UnixListener::bind(&config.uds_path).map_err(|e| VsockConfigError::Bind(e.into()))?;
        Ok(Self {
            config: VsockDeviceConfig {
                vsock_id: None,
                ..config
            },
            listener: VsockListener(Arc::new(listener)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_reports_address_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock").to_str().unwrap().to_string();
        let cfg = VsockDeviceConfig {
            vsock_id: Some("x".into()),
            guest_cid: 3,
            uds_path: path.clone(),
        };
        let first = Vsock::bind(cfg.clone(), None).unwrap();
        assert_eq!(
            serde_json::to_string(&first.config).unwrap(),
            format!(r#"{{"guest_cid":3,"uds_path":"{path}"}}"#)
        );
        let err = Vsock::bind(cfg.clone(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98)"
        );
        let second = Vsock::bind(cfg.clone(), Some(first)).unwrap();
        // Upstream removes the old socket file before binding the new one, and refuses the
        // PUT if that file is gone.
        std::fs::remove_file(&path).unwrap();
        let err = Vsock::bind(cfg, Some(second)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cannot create backend for vsock device: Error binding to the host-side Unix socket: No such file or directory (os error 2)"
        );
    }
}
