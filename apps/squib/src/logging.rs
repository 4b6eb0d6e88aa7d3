//! The process logger: Firecracker's line format (docs/api-contract.md §10.1), on stdout or on a file or
//! FIFO opened like upstream opens it (create, no truncation, no append). `--log-path`,
//! `--level` & co. set it up at start; `PUT /logger` changes it later through [`LoggerControl`].

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use squib_vmm::resources::logger::{LogLevel, LoggerControl, LoggerUpdate, open_target};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Exit code for a bad logger configuration, as upstream uses it.
pub const EXIT_BAD_CONFIGURATION: u8 = 152;

struct LoggerState {
    instance_id: String,
    level: LogLevel,
    show_level: bool,
    show_log_origin: bool,
    module: Option<String>,
    target: Box<dyn Write + Send>,
    /// The local UTC offset, read once at start: a log line never reads the time-zone file
    /// (a thread's seccomp filter may forbid opening files; a jail has no /etc/localtime).
    utc_offset: chrono::FixedOffset,
}

impl LoggerState {
    fn allows(&self, meta: &Metadata<'_>) -> bool {
        let wanted = match self.level {
            LogLevel::Off => return false,
            LogLevel::Error => Level::ERROR,
            LogLevel::Warn => Level::WARN,
            LogLevel::Info => Level::INFO,
            LogLevel::Debug => Level::DEBUG,
            LogLevel::Trace => Level::TRACE,
        };
        // `Level` orders by verbosity: TRACE > DEBUG > ... > ERROR.
        *meta.level() <= wanted
            && self
                .module
                .as_deref()
                .is_none_or(|prefix| meta.module_path().is_some_and(|m| m.starts_with(prefix)))
    }

    fn line(&self, meta: &Metadata<'_>, message: &str) -> String {
        self.format(*meta.level(), Some(meta), message)
    }

    fn format(&self, level: Level, meta: Option<&Metadata<'_>>, message: &str) -> String {
        let mut line = format!(
            "{} [{}:{}",
            chrono::Utc::now()
                .with_timezone(&self.utc_offset)
                .format("%Y-%m-%dT%H:%M:%S%.9f"),
            self.instance_id,
            std::thread::current().name().unwrap_or("main")
        );
        if self.show_level {
            let _ = write!(line, ":{level}");
        }
        if let Some(meta) = meta.filter(|_| self.show_log_origin) {
            let _ = write!(
                line,
                ":{}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            );
        }
        let _ = writeln!(line, "] {message}");
        line
    }
}

/// The shared logger: the tracing layer writes through it, the VMM reconfigures it.
#[derive(Clone)]
pub struct Logger {
    state: Arc<Mutex<LoggerState>>,
}

/// Start-up options from the command line.
pub struct LogOptions {
    pub instance_id: String,
    pub level: LogLevel,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub module: Option<String>,
}

impl Logger {
    /// Installs the global logger.
    pub fn install(options: LogOptions, log_path: Option<&Path>) -> io::Result<Logger> {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;

        let target: Box<dyn Write + Send> = match log_path {
            Some(path) => Box::new(open_target(path)?),
            None => Box::new(io::stdout()),
        };
        let logger = Logger {
            state: Arc::new(Mutex::new(LoggerState {
                instance_id: options.instance_id,
                level: options.level,
                show_level: options.show_level,
                show_log_origin: options.show_log_origin,
                module: options.module,
                target,
                utc_offset: local_offset(),
            })),
        };
        tracing_subscriber::registry().with(logger.clone()).init();
        Ok(logger)
    }

    /// Writes an error line from a signal handler: never waits for the logger (the
    /// interrupted thread may hold it); when it is busy, the line goes to stderr.
    pub fn error_from_signal_handler(&self, message: &str) {
        match self.state.try_lock() {
            Ok(mut state) => {
                let line = state.format(Level::ERROR, None, message);
                let _ = state.target.write_all(line.as_bytes());
                let _ = state.target.flush();
            }
            Err(_) => {
                let line = format!("{message}\n");
                // SAFETY: write(2) on stderr with a valid buffer is async-signal-safe.
                unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoggerState> {
        // A panic while logging must not silence the logger for good.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl LoggerControl for Logger {
    fn apply(&self, update: LoggerUpdate) -> Result<(), String> {
        let mut state = self.lock();
        if let Some((_, file)) = update.target {
            state.target = Box::new(file);
        }
        state.level = update.level;
        if let Some(show_level) = update.show_level {
            state.show_level = show_level;
        }
        if let Some(show_log_origin) = update.show_log_origin {
            state.show_log_origin = show_log_origin;
        }
        if update.module.is_some() {
            state.module = update.module;
        }
        Ok(())
    }
}

fn local_offset() -> chrono::FixedOffset {
    use chrono::Offset;
    chrono::Local::now().offset().fix()
}

/// Collects an event's message and fields into one text.
#[derive(Default)]
struct MessageText(String);

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for Logger {
    // The level can change at run time, so no call site may be cached as never enabled.
    fn register_callsite(&self, _meta: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, meta: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        self.lock().allows(meta)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = MessageText::default();
        event.record(&mut text);
        let mut state = self.lock();
        let line = state.line(event.metadata(), text.0.trim_start());
        // One write per line, like upstream; a full FIFO or a closed file loses the line only.
        let _ = state.target.write_all(line.as_bytes());
        let _ = state.target.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(level: LogLevel, module: Option<&str>) -> LoggerState {
        LoggerState {
            instance_id: "vm".into(),
            level,
            show_level: true,
            show_log_origin: false,
            module: module.map(str::to_string),
            target: Box::new(io::sink()),
            utc_offset: local_offset(),
        }
    }

    #[test]
    fn level_and_module_filter() {
        let warn = state(LogLevel::Warn, None);
        let meta_info = tracing::Metadata::new(
            "e",
            "squib_vmm::x",
            Level::INFO,
            None,
            None,
            Some("squib_vmm::x"),
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        assert!(!warn.allows(&meta_info));
        assert!(state(LogLevel::Debug, None).allows(&meta_info));
        assert!(state(LogLevel::Info, Some("squib_vmm")).allows(&meta_info));
        assert!(!state(LogLevel::Info, Some("squib_api")).allows(&meta_info));
        assert!(!state(LogLevel::Off, None).allows(&meta_info));
    }

    #[test]
    fn line_format() {
        let s = state(LogLevel::Info, None);
        let meta = tracing::Metadata::new(
            "e",
            "t",
            Level::WARN,
            Some("src/x.rs"),
            Some(7),
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        );
        let line = s.line(&meta, "hello");
        // 2026-11-27T07:20:54.123456789 [vm:<thread>:WARN] hello
        assert_eq!(&line[10..11], "T");
        assert_eq!(line.find(" [vm:"), Some(29));
        assert!(line.ends_with(":WARN] hello\n"), "{line}");
    }

    struct NoCallsite;
    impl tracing::callsite::Callsite for NoCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("only used as an identifier")
        }
    }
    static CALLSITE: NoCallsite = NoCallsite;
}
