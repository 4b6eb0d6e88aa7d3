//! `/metrics`: the metrics target. Only validated and opened for now; nothing is written yet.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::sync::Arc;

use serde::Deserialize;

use squib_net::OsError;

use super::logger::open_target;

/// Body of `PUT /metrics`. Unlike most bodies, upstream accepts unknown fields here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct MetricsConfig {
    #[serde(deserialize_with = "super::path_string::required")]
    pub metrics_path: String,
    #[serde(default)]
    pub emit_id: bool,
    pub properties: Option<BTreeMap<String, String>>,
}

/// Why `PUT /metrics` failed (prefix `Metrics error: `).
#[derive(Debug, thiserror::Error)]
pub enum MetricsConfigError {
    #[error(
        "Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed."
    )]
    AlreadyInitialized,
    #[error("Cannot initialize the metrics system due to bad user input: {0}")]
    Open(OsError),
}

/// An opened metrics target.
#[derive(Clone)]
pub struct Metrics {
    pub config: MetricsConfig,
    pub file: Arc<File>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("config", &self.config)
            .finish()
    }
}

impl PartialEq for Metrics {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && Arc::ptr_eq(&self.file, &other.file)
    }
}

impl Eq for Metrics {}

impl Metrics {
    /// Opens the target like the logger's (create, read+write, no truncate, no append).
    pub fn open(config: MetricsConfig) -> Result<Self, MetricsConfigError> {
        let file =
            open_target(&config.metrics_path).map_err(|e| MetricsConfigError::Open(e.into()))?;
        Ok(Self {
            config,
            file: Arc::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_accepted_and_open_errors() {
        let cfg: MetricsConfig =
            serde_json::from_str(r#"{"metrics_path":"/nonexistent/m","x":1}"#).unwrap();
        assert_eq!(
            Metrics::open(cfg).unwrap_err().to_string(),
            "Cannot initialize the metrics system due to bad user input: No such file or directory (os error 2)"
        );
    }
}
