//! `/logger`: where and how verbosely squib logs. The VMM validates the request and opens the
//! target; the process logger itself belongs to the binary, reached through [`LoggerControl`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer};

use squib_net::OsError;

/// A log level as upstream accepts it: any case, `Warning` as an alias of `Warn`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl std::str::FromStr for LogLevel {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return Err("Invalid LevelFilter"),
        })
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Body of `PUT /logger`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "wire::LoggerConfig")]
pub struct LoggerConfig {
    pub log_path: Option<String>,
    pub level: Option<LogLevel>,
    pub show_level: Option<bool>,
    pub show_log_origin: Option<bool>,
    pub module: Option<String>,
}

mod wire {
    use serde::Deserialize;

    use super::super::path_string::PathString;
    use super::LogLevel;

    /// Upstream's shape and name, which serde spells in its errors (`invalid length 0,
    /// expected struct LoggerConfig with 5 elements` for `[]`).
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct LoggerConfig {
        log_path: Option<PathString>,
        level: Option<LogLevel>,
        show_level: Option<bool>,
        show_log_origin: Option<bool>,
        module: Option<String>,
    }

    impl From<LoggerConfig> for super::LoggerConfig {
        fn from(w: LoggerConfig) -> Self {
            Self {
                log_path: w.log_path.map(|p| p.0),
                level: w.level,
                show_level: w.show_level,
                show_log_origin: w.show_log_origin,
                module: w.module,
            }
        }
    }
}

/// Why `PUT /logger` failed (prefix `Logger error: `).
#[derive(Debug, thiserror::Error)]
pub enum LoggerConfigError {
    #[error("Failed to open target file: {0}")]
    OpenTarget(OsError),
    #[error("{0}")]
    Apply(String),
}

/// What the binary's logger must apply. Omitted options stay as they are, except the level:
/// every `PUT /logger` without one resets it to Info, as upstream does.
#[derive(Debug)]
pub struct LoggerUpdate {
    /// The opened target and its path; `None` keeps the current target.
    pub target: Option<(String, File)>,
    pub level: LogLevel,
    pub show_level: Option<bool>,
    pub show_log_origin: Option<bool>,
    pub module: Option<String>,
}

/// Applies logger updates to the process logger; implemented by the binary.
pub trait LoggerControl: Send + Sync + 'static {
    fn apply(&self, update: LoggerUpdate) -> Result<(), String>;
}

/// Accepts every update and does nothing.
#[derive(Debug, Default)]
pub struct NoopLoggerControl;

impl LoggerControl for NoopLoggerControl {
    fn apply(&self, _update: LoggerUpdate) -> Result<(), String> {
        Ok(())
    }
}

/// Keeps every update, for tests.
#[derive(Debug, Default)]
pub struct RecordingLoggerControl {
    pub updates: Mutex<Vec<LoggerUpdate>>,
}

impl LoggerControl for RecordingLoggerControl {
    fn apply(&self, update: LoggerUpdate) -> Result<(), String> {
        self.updates
            .lock()
            .map_err(|_| "logger recorder poisoned".to_string())?
            .push(update);
        Ok(())
    }
}

/// Opens a log or metrics target like upstream: created if missing, read+write, neither
/// truncated nor appended (writes start at offset 0), which suits FIFOs, and `O_NONBLOCK`
/// like upstream's, so a FIFO nobody reads (or whose reader stopped) makes writes fail with
/// `EAGAIN` and lose the line instead of stalling the API, the VMM loop or signal handling.
pub fn open_target(path: impl AsRef<Path>) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

impl LoggerConfig {
    /// Validates the request and opens its target.
    pub(crate) fn into_update(self) -> Result<LoggerUpdate, LoggerConfigError> {
        let target = match self.log_path {
            Some(path) => {
                let file =
                    open_target(&path).map_err(|e| LoggerConfigError::OpenTarget(e.into()))?;
                Some((path, file))
            }
            None => None,
        };
        Ok(LoggerUpdate {
            target,
            level: self.level.unwrap_or_default(),
            show_level: self.show_level,
            show_log_origin: self.show_log_origin,
            module: self.module,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_any_case_and_bad_level_text() {
        let cfg: LoggerConfig = serde_json::from_str(r#"{"level":"wArNiNg"}"#).unwrap();
        assert_eq!(cfg.level, Some(LogLevel::Warn));
        let err = serde_json::from_str::<LoggerConfig>(r#"{"level":"loud"}"#).unwrap_err();
        assert_eq!(err.to_string(), "Invalid LevelFilter at line 1 column 16");
    }

    #[test]
    fn open_failure_and_no_truncation() {
        let err = LoggerConfig {
            log_path: Some("/nonexistent/dir/log".into()),
            ..Default::default()
        }
        .into_update()
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Failed to open target file: No such file or directory (os error 2)"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"keep").unwrap();
        let update = LoggerConfig {
            log_path: Some(file.path().to_str().unwrap().into()),
            ..Default::default()
        }
        .into_update()
        .unwrap();
        assert_eq!(update.level, LogLevel::Info);
        assert_eq!(std::fs::read(file.path()).unwrap(), b"keep");
    }
}
