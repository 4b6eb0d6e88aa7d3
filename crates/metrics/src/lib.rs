//! squib's metrics system (contract §10.2): a registry of counters and stored values that the
//! API, the VMM loop and device back-ends fill, and a writer that turns them into one compact
//! JSON line per flush, with counters as deltas since the previous line.
//!
//! Keys are typed: every section is a struct of [`Counter`]s whose field names are upstream's
//! keys ([`schema`]), so `metrics.values.put_api_requests.drive_count.inc()` names a key that
//! exists or does not compile. Every value is kept as an absolute number; the writer remembers
//! what it last reported and subtracts. Devices that count on their own (squib-net's `Net`,
//! squib-mmds' `Mmds`, squib-vsock's `Vsock`, QEMU's block statistics) own such a struct and
//! plug its `snapshot()` in as a [`CounterSource`].

mod counters;
pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub use counters::Counter;
use schema::{Block, SECTIONS, Section};
pub use schema::{DeviceClass, Fixed, Kind, Values};

/// What a line carries before the sections, from `PUT /metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineHeader {
    /// Whether the line carries the instance id (`emit_id`).
    pub emit_id: bool,
    /// Constant key/value pairs reported under `properties`.
    pub properties: Option<BTreeMap<String, String>>,
}

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

/// The registry: shared (`Arc`) by the API server, the VMM loop and the binary.
#[derive(Default)]
pub struct MetricsRegistry {
    /// The registry's own counters of every fixed section.
    pub values: Values,
    sources: Mutex<HashMap<Fixed, CounterSource>>,
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
    header: LineHeader,
    target: Box<dyn Write + Send>,
    previous: HashMap<String, u64>,
}

impl MetricsRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes `source` report a fixed section (e.g. `mmds` from squib-mmds' counters). Its
    /// values replace the registry's own for that section.
    pub fn set_section_source(&self, section: Fixed, source: CounterSource) {
        lock(&self.sources).insert(section, source);
    }

    /// Reports a device as `⟨class⟩_⟨id⟩` from `source` (e.g. a `NetMetrics` snapshot).
    pub fn register_device(&self, class: DeviceClass, id: &str, source: CounterSource) {
        lock(&self.devices).insert((class, id.to_string()), source);
    }

    /// Reports a device whose values are not known yet: every key 0.
    pub fn add_device(&self, class: DeviceClass, id: &str) {
        self.register_device(class, id, Arc::new(Vec::new));
    }

    /// Forgets every device of a class.
    pub fn clear_devices(&self, class: DeviceClass) {
        lock(&self.devices).retain(|(c, _), _| *c != class);
    }

    /// Starts writing lines to `target` (the metrics file or FIFO).
    pub fn install(&self, instance_id: &str, header: LineHeader, target: Arc<File>) {
        self.install_writer(instance_id, header, Box::new(SharedFile(target)));
    }

    /// Records QEMU's statistics of the running guest's drives (absolute values).
    pub fn set_block_stats(&self, stats: &[(String, BlockCounters)]) {
        for (id, c) in stats {
            let block = Block::default();
            block.read_bytes.set(c.read_bytes);
            block.write_bytes.set(c.write_bytes);
            block.read_count.set(c.read_count);
            block.write_count.set(c.write_count);
            block.flush_count.set(c.flush_count);
            let values = Arc::new(block.snapshot());
            self.register_device(
                DeviceClass::Block,
                id,
                Arc::new(move || values.as_ref().clone()),
            );
        }
    }

    /// As [`install`](Self::install), to any writer (tests).
    pub fn install_writer(
        &self,
        instance_id: &str,
        header: LineHeader,
        target: Box<dyn Write + Send>,
    ) {
        *lock(&self.sink) = Some(Sink {
            instance_id: instance_id.to_string(),
            header,
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
            self.values.logger.missed_metrics_count.inc();
            self.values.logger.metrics_fails.inc();
            return Err(MetricsError::Write(e));
        }
        Ok(true)
    }

    /// Absolute values of a fixed section, in its key order.
    fn fixed_values(&self, section: Fixed) -> Vec<u64> {
        let Some(source) = lock(&self.sources).get(&section).cloned() else {
            return self
                .values
                .snapshot(section)
                .into_iter()
                .map(|(_, value)| value)
                .collect();
        };
        let reported: HashMap<&str, u64> = source().into_iter().collect();
        section
            .keys()
            .iter()
            .map(|f| reported.get(f).copied().unwrap_or(0))
            .collect()
    }

    fn render(&self, sink: &mut Sink) -> String {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut out = format!("{{\"utc_timestamp_ms\":{millis}");
        if sink.header.emit_id {
            let _ = write!(out, ",\"id\":{}", json_string(&sink.instance_id));
        }
        if let Some(properties) = &sink.header.properties {
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
                Section::Fixed(section) => {
                    let (group, fields) = (section.name(), section.keys());
                    let absolute = self.fixed_values(section);
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
