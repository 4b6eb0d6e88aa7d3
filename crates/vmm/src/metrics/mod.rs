//! squib's metrics system (docs/api-contract.md §10.2): a registry of counters and stored values that the
//! API, the VMM loop and device back-ends fill, and a writer that turns them into one compact
//! JSON line per flush, with counters as deltas since the previous line.
//!
//! Every value is kept as an absolute number; the writer remembers what it last reported and
//! subtracts. Sources that already count on their own (squib-net's `NetMetrics`, squib-mmds'
//! `MmdsMetrics`, QEMU's block statistics) plug in as closures returning `(key, value)` pairs,
//! so this crate needs no dependency on them.

pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub use schema::{DeviceClass, Kind};
use schema::{SECTIONS, Section};

use crate::resources::metrics::MetricsConfig;

/// Why a metrics line could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("Failed to write metrics: {0}")]
    Write(#[source] io::Error),
}

/// Something that reports absolute `(key, value)` pairs under a section's sub-keys. Keys it
/// does not report are 0; for an aggregate key (`*_agg`) the value is its `sum_us`.
pub type CounterSource = Arc<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// What the engine knows of one drive's I/O since the guest started (QMP `query-blockstats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCounters {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_count: u64,
    pub write_count: u64,
    pub flush_count: u64,
}

/// The metrics file, shared with the configured resources.
struct SharedFile(Arc<File>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        (&*self.0).flush()
    }
}

/// Named absolute values of one section.
#[derive(Debug, Default)]
struct Values(HashMap<&'static str, u64>);

/// The registry: shared (`Arc`) by the API server, the VMM loop and the binary.
#[derive(Default)]
pub struct MetricsRegistry {
    values: Mutex<HashMap<&'static str, Values>>,
    sources: Mutex<HashMap<&'static str, CounterSource>>,
    devices: Mutex<BTreeMap<(DeviceClass, String), CounterSource>>,
    sink: Mutex<Option<Sink>>,
    exit_written: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for MetricsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsRegistry").finish_non_exhaustive()
    }
}

/// Locks even after a panic elsewhere: metrics must still be written on the way out.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where lines go, and what the previous line reported.
struct Sink {
    instance_id: String,
    config: MetricsConfig,
    target: Box<dyn Write + Send>,
    previous: HashMap<String, u64>,
}

impl MetricsRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds one to the counter `group.key`.
    pub fn inc(&self, group: &'static str, key: &'static str) {
        self.add(group, key, 1);
    }

    /// Adds `n` to the counter `group.key`.
    pub fn add(&self, group: &'static str, key: &'static str, n: u64) {
        let mut values = lock(&self.values);
        let slot = values.entry(group).or_default().0.entry(key).or_default();
        *slot = slot.saturating_add(n);
    }

    /// Sets the stored value `group.key`.
    pub fn store(&self, group: &'static str, key: &'static str, value: u64) {
        lock(&self.values)
            .entry(group)
            .or_default()
            .0
            .insert(key, value);
    }

    /// The current absolute value of `group.key` (registry values only, not sources).
    pub fn get(&self, group: &str, key: &str) -> u64 {
        lock(&self.values)
            .get(group)
            .and_then(|v| v.0.get(key).copied())
            .unwrap_or(0)
    }

    /// Makes `source` report a fixed section (e.g. `mmds` from squib-mmds' counters). Its
    /// values replace the registry's own for that section.
    pub fn set_section_source(&self, group: &'static str, source: CounterSource) {
        lock(&self.sources).insert(group, source);
    }

    /// Reports a device as `⟨class⟩_⟨id⟩` from `source` (e.g. a `NetMetrics` snapshot).
    pub fn register_device(&self, class: DeviceClass, id: &str, source: CounterSource) {
        lock(&self.devices).insert((class, id.to_string()), source);
    }

    /// Sets a device's absolute values (e.g. QEMU's block statistics just polled).
    pub fn set_device_values(
        &self,
        class: DeviceClass,
        id: &str,
        values: Vec<(&'static str, u64)>,
    ) {
        let values = Arc::new(values);
        self.register_device(class, id, Arc::new(move || values.as_ref().clone()));
    }

    /// Forgets every device of a class.
    pub fn clear_devices(&self, class: DeviceClass) {
        lock(&self.devices).retain(|(c, _), _| *c != class);
    }

    /// Starts writing lines to `target` (the metrics file or FIFO).
    pub fn install(&self, instance_id: &str, config: MetricsConfig, target: Arc<File>) {
        self.install_writer(instance_id, config, Box::new(SharedFile(target)));
    }

    /// Records QEMU's statistics of the running guest's drives (absolute values).
    pub fn set_block_stats(&self, stats: &[(String, BlockCounters)]) {
        for (id, c) in stats {
            self.set_device_values(
                DeviceClass::Block,
                id,
                vec![
                    ("read_bytes", c.read_bytes),
                    ("write_bytes", c.write_bytes),
                    ("read_count", c.read_count),
                    ("write_count", c.write_count),
                    ("flush_count", c.flush_count),
                ],
            );
        }
    }

    /// As [`install`](Self::install), to any writer (tests).
    pub fn install_writer(
        &self,
        instance_id: &str,
        config: MetricsConfig,
        target: Box<dyn Write + Send>,
    ) {
        *lock(&self.sink) = Some(Sink {
            instance_id: instance_id.to_string(),
            config,
            target,
            previous: HashMap::new(),
        });
    }

    /// True once a target is installed.
    pub fn is_installed(&self) -> bool {
        lock(&self.sink).is_some()
    }

    /// Writes one line. `Ok(false)` when no target is configured (nothing to do).
    pub fn flush(&self) -> Result<bool, MetricsError> {
        let mut sink = lock(&self.sink);
        self.flush_into(&mut sink)
    }

    /// The line written when squib exits: only the first call writes, so the VMM loop and
    /// the binary's signal path may both ask.
    pub fn flush_exit(&self) -> Result<bool, MetricsError> {
        if self
            .exit_written
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(false);
        }
        self.flush()
    }

    /// Like [`flush`](Self::flush) but gives up instead of waiting for the writer (for panic
    /// and signal paths that may interrupt a flush in progress).
    pub fn try_flush(&self) -> Result<bool, MetricsError> {
        match self.sink.try_lock() {
            Ok(mut sink) => self.flush_into(&mut sink),
            Err(std::sync::TryLockError::Poisoned(p)) => self.flush_into(&mut p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Ok(false),
        }
    }

    fn flush_into(&self, sink: &mut Option<Sink>) -> Result<bool, MetricsError> {
        let Some(sink) = sink.as_mut() else {
            return Ok(false);
        };
        let mut line = self.render(sink);
        line.push('\n');
        // One write per line, like upstream; a failure is counted and reported.
        let result = sink
            .target
            .write_all(line.as_bytes())
            .and_then(|()| sink.target.flush());
        if let Err(e) = result {
            self.inc("logger", "missed_metrics_count");
            self.inc("logger", "metrics_fails");
            return Err(MetricsError::Write(e));
        }
        Ok(true)
    }

    /// Absolute values of a fixed section, in its key order.
    fn fixed_values(&self, group: &'static str, fields: &[&'static str]) -> Vec<u64> {
        if let Some(source) = lock(&self.sources).get(group).cloned() {
            let reported: HashMap<&str, u64> = source().into_iter().collect();
            return fields
                .iter()
                .map(|f| reported.get(f).copied().unwrap_or(0))
                .collect();
        }
        let values = lock(&self.values);
        let section = values.get(group);
        fields
            .iter()
            .map(|f| section.and_then(|s| s.0.get(f).copied()).unwrap_or(0))
            .collect()
    }

    fn render(&self, sink: &mut Sink) -> String {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut out = format!("{{\"utc_timestamp_ms\":{millis}");
        if sink.config.emit_id {
            let _ = write!(out, ",\"id\":{}", json_string(&sink.instance_id));
        }
        if let Some(properties) = &sink.config.properties {
            out.push_str(",\"properties\":{");
            for (i, (k, v)) in properties.iter().enumerate() {
                let comma = if i > 0 { "," } else { "" };
                let _ = write!(out, "{comma}{}:{}", json_string(k), json_string(v));
            }
            out.push('}');
        }
        let devices: Vec<((DeviceClass, String), CounterSource)> = lock(&self.devices)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for section in SECTIONS {
            match *section {
                Section::Fixed(group, fields) => {
                    let absolute = self.fixed_values(group, fields);
                    let reported = report(&mut sink.previous, group, fields, &absolute);
                    write_object(&mut out, group, fields, &reported);
                }
                Section::PerDevice {
                    class,
                    fields,
                    aggregate,
                } => {
                    let mut total = vec![Reported::default(); fields.len()];
                    for ((c, id), source) in &devices {
                        if *c != class {
                            continue;
                        }
                        let key = format!("{}_{id}", class.prefix());
                        let given: HashMap<&str, u64> = source().into_iter().collect();
                        let absolute: Vec<u64> = fields
                            .iter()
                            .map(|f| given.get(f).copied().unwrap_or(0))
                            .collect();
                        let reported = report(&mut sink.previous, &key, fields, &absolute);
                        // Like upstream, the aggregate sums counters (and aggregate sums) only.
                        for (t, r) in total.iter_mut().zip(&reported) {
                            if r.kind != Kind::Store {
                                t.value = t.value.saturating_add(r.value);
                            }
                            t.kind = r.kind;
                        }
                        write_object(&mut out, &key, fields, &reported);
                    }
                    if aggregate {
                        for (t, f) in total.iter_mut().zip(fields) {
                            t.kind = schema::kind(class.prefix(), f);
                        }
                        write_object(&mut out, class.prefix(), fields, &total);
                    }
                }
            }
        }
        out.push('}');
        out
    }
}

/// One value as written: a number, or for an aggregate its `sum_us` (min/max are 0: squib
/// records no per-sample latencies).
#[derive(Clone, Copy, Debug, Default)]
struct Reported {
    kind: Kind,
    value: u64,
}

/// Turns absolute values into what the line carries, remembering counters for the next line.
fn report(
    previous: &mut HashMap<String, u64>,
    group: &str,
    fields: &[&'static str],
    absolute: &[u64],
) -> Vec<Reported> {
    fields
        .iter()
        .zip(absolute)
        .map(|(field, &now)| {
            let kind = schema::kind(group_kind_name(group), field);
            let value = match kind {
                Kind::Store => now,
                Kind::Inc | Kind::Agg => {
                    let last = previous
                        .insert(format!("{group}.{field}"), now)
                        .unwrap_or(0);
                    now.saturating_sub(last)
                }
            };
            Reported { kind, value }
        })
        .collect()
}

/// Per-device sections use their class's rules (`block_x` → `block`).
fn group_kind_name(group: &str) -> &str {
    for class in [
        DeviceClass::VhostUserBlock,
        DeviceClass::Block,
        DeviceClass::Net,
        DeviceClass::Pmem,
    ] {
        if group.starts_with(&format!("{}_", class.prefix())) {
            return class.prefix();
        }
    }
    group
}

fn write_object(out: &mut String, key: &str, fields: &[&'static str], values: &[Reported]) {
    let _ = write!(out, ",{}:{{", json_string(key));
    for (i, (field, r)) in fields.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        match r.kind {
            Kind::Agg => {
                let _ = write!(
                    out,
                    "\"{field}\":{{\"min_us\":0,\"max_us\":0,\"sum_us\":{}}}",
                    r.value
                );
            }
            Kind::Inc | Kind::Store => {
                let _ = write!(out, "\"{field}\":{}", r.value);
            }
        }
    }
    out.push('}');
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Microseconds on `clock` (`CLOCK_MONOTONIC`, `CLOCK_PROCESS_CPUTIME_ID`…), as upstream's
/// start-time arguments use them.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime only writes to it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000) + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests;
