//! squib's QMP client: one connection to a QEMU's QMP Unix socket (on the `qapi` crate), the
//! typed commands the QEMU engine sends (run state, devices, block, balloon, QOM, migration) with
//! a timeout each, and the events it watches. It knows nothing of Firecracker or of squib's VM.
//!
//! Replies only flow while the event stream is read, so [`QmpClient::connect`] spawns a task
//! that consumes it; `SHUTDOWN` events are kept so the supervisor can tell a guest power-off
//! from a host-side stop or a crash.

// A name is `pub` only when it is the crate's API (clippy -D warnings makes this an error).
#![warn(unreachable_pub)]

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{Sink, StreamExt};
use qapi::futures::{QapiService, QmpStreamTokio};
use qapi::qmp::{self, Event, KeyValue, QKeyCode, QKeyCodeWrapper, RunState, StatusInfo};
use qapi::{Command, Execute, ExecuteError};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// `DEVICE_DELETED` events kept for a slow waiter (each unplug waits for one id).
const DELETED_BACKLOG: usize = 64;

/// How long one QMP command may take before squib gives up on it.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

/// A QMP failure.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QEMU's QMP socket: {0}")]
    Connect(#[source] io::Error),
    #[error("QMP command `{command}` failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
    #[error("QMP command `{command}` got no answer within {timeout:?}")]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
}

/// A `SHUTDOWN` event: QEMU is about to stop the guest (and, with `-no-reboot`, to exit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownEvent {
    /// True when the guest asked for it (power-off, reset, triple fault…), false for a host
    /// request (a signal to QEMU, QMP `quit`…).
    pub guest: bool,
    /// QEMU's `ShutdownCause`, as on the wire: `guest-shutdown`, `guest-reset`, `host-signal`…
    pub reason: String,
}

/// A negotiated QMP connection.
pub struct QmpClient {
    service: QapiService<Writer>,
    events: JoinHandle<()>,
    shutdown: watch::Receiver<Option<ShutdownEvent>>,
    memory_tx: Arc<watch::Sender<u64>>,
    memory_size: watch::Receiver<u64>,
    /// The ids of devices QEMU has removed (`DEVICE_DELETED`).
    deleted: broadcast::Sender<String>,
    /// The status in QEMU's last `MIGRATION` event.
    migration: watch::Receiver<Option<String>>,
    timeout: Duration,
}

impl QmpClient {
    /// Connects to `path`, negotiates capabilities and starts consuming events.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        Self::connect_with(path, &[])
            .await
            .map(|(client, _)| client)
    }

    /// Connects to `path` and sends `qmp_capabilities` and then `early` at once, before
    /// QEMU's greeting is even read: QEMU runs a connection's commands in order, so none of
    /// them waits for another's answer. (Through the `qapi` crate each command waits for the
    /// previous one's answer: its greeting parser never sees QEMU offer out-of-band
    /// execution, whose ids it would need to match answers.) Returns the answer to each of
    /// `early`; events QEMU sent before them may reach their watchers only after.
    pub async fn connect_with(
        path: &Path,
        early: &[EarlyCommand],
    ) -> Result<(Self, Vec<Result<serde_json::Value, QmpError>>), QmpError> {
        use tokio::io::AsyncWriteExt;
        let socket = UnixStream::connect(path).await.map_err(QmpError::Connect)?;
        let (from_qemu, mut to_qemu) = tokio::io::split(socket);
        let negotiate = EarlyCommand {
            name: "qmp_capabilities",
            arguments: serde_json::json!({}),
        };
        let commands: Vec<&EarlyCommand> = std::iter::once(&negotiate).chain(early).collect();
        let mut lines = String::new();
        for (n, command) in commands.iter().enumerate() {
            let line = serde_json::json!({
                "execute": command.name,
                "arguments": command.arguments,
                "id": format!("{EARLY_ID}{n}"),
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        to_qemu
            .write_all(lines.as_bytes())
            .await
            .map_err(QmpError::Connect)?;
        let (answers_tx, mut answers_rx) = tokio::sync::mpsc::unbounded_channel();
        let negotiation =
            QmpStreamTokio::open_split(known_messages_only(from_qemu, answers_tx), to_qemu)
                .await
                .map_err(QmpError::Connect)?;
        let client = Self::consume_events(negotiation.stream);
        let mut answers = vec![None; commands.len()];
        while answers.iter().any(Option::is_none) {
            let (n, answer) = answers_rx.recv().await.ok_or_else(|| {
                QmpError::Connect(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "QEMU closed the QMP connection",
                ))
            })?;
            if let Some(slot) = answers.get_mut(n) {
                *slot = Some(answer);
            }
        }
        let mut answers = answers
            .into_iter()
            .flatten()
            .zip(&commands)
            .map(|(answer, command)| early_result(command.name, answer));
        if let Some(Err(e)) = answers.next() {
            return Err(QmpError::Connect(io::Error::other(e.to_string())));
        }
        Ok((client, answers.collect()))
    }

    /// The client of a connection whose greeting was read, its events (and with them the
    /// replies) consumed by a task from now on.
    fn consume_events(
        stream: qapi::futures::QapiStream<QmpStreamTokio<ReadHalf<DuplexStream>>, Writer>,
    ) -> Self {
        let (service, mut events) = stream.into_parts();
        // Once released, dropping the service also ends the event stream.
        let _ = events.release();
        let (tx, shutdown) = watch::channel(None);
        let (memory_tx, memory_size) = watch::channel(0u64);
        let memory_tx = Arc::new(memory_tx);
        let memory_events = memory_tx.clone();
        let (deleted, _) = broadcast::channel(DELETED_BACKLOG);
        let deleted_events = deleted.clone();
        let (migration_tx, migration) = watch::channel(None);
        let events = tokio::spawn(async move {
            while let Some(item) = events.next().await {
                match item {
                    Ok(Event::SHUTDOWN { data, .. }) => {
                        let reason = serde_json::to_value(data.reason)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_else(|| format!("{:?}", data.reason));
                        tracing::info!(guest = data.guest, %reason, "QEMU reports a shutdown");
                        tx.send_replace(Some(ShutdownEvent {
                            guest: data.guest,
                            reason,
                        }));
                    }
                    Ok(Event::MEMORY_DEVICE_SIZE_CHANGE { data, .. }) => {
                        tracing::debug!(
                            size = data.size,
                            "the guest resized its hot-pluggable memory"
                        );
                        memory_events.send_replace(data.size);
                    }
                    Ok(Event::MIGRATION { data, .. }) => {
                        let status = serde_json::to_value(data.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string));
                        tracing::debug!(?status, "QEMU's migration changed state");
                        migration_tx.send_replace(status);
                    }
                    Ok(Event::DEVICE_DELETED { data, .. }) => {
                        tracing::debug!(device = ?data.device, path = %data.path, "QEMU removed a device");
                        if let Some(id) = data.device {
                            // Nobody waiting for it is fine.
                            let _ = deleted_events.send(id);
                        }
                    }
                    Ok(event) => tracing::debug!(?event, "QMP event"),
                    Err(err) => {
                        if err.kind() != io::ErrorKind::UnexpectedEof {
                            tracing::warn!(%err, "QMP event stream failed");
                        }
                        break;
                    }
                }
            }
            tracing::debug!("QMP connection closed");
            // `tx` drops here: watchers see the stream has ended.
        });
        Self {
            service,
            events,
            shutdown,
            memory_tx,
            memory_size,
            deleted,
            migration,
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// The size of the virtio-mem device (QEMU's `MEMORY_DEVICE_SIZE_CHANGE` events; squib
    /// runs at most one), seeded by [`QmpClient::seed_memory_size`].
    pub fn memory_size_events(&self) -> watch::Receiver<u64> {
        self.memory_size.clone()
    }

    /// Ids of devices QEMU removes from now on (`DEVICE_DELETED`); subscribe before asking
    /// for a removal. The stream ends when the QMP connection does.
    pub fn deleted_devices(&self) -> broadcast::Receiver<String> {
        self.deleted.subscribe()
    }

    /// The status of QEMU's migration as its `MIGRATION` events report it (`setup`, `active`,
    /// `completed`, `failed`…; sent only with the `events` migration capability on). In
    /// order with the replies: an event QEMU sent before a reply is seen before the reply.
    pub fn migration_events(&self) -> watch::Receiver<Option<String>> {
        self.migration.clone()
    }

    /// Records a size read from the device (events only report changes).
    pub fn seed_memory_size(&self, bytes: u64) {
        self.memory_tx.send_replace(bytes);
    }

    /// The last `SHUTDOWN` event seen. The sender side closes when the QMP connection ends,
    /// so `changed()` erroring means every event QEMU sent has been read.
    pub fn shutdown_events(&self) -> watch::Receiver<Option<ShutdownEvent>> {
        self.shutdown.clone()
    }

    async fn execute<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: Command + Send,
        Writer: Sink<Execute<C, u32>, Error = io::Error>,
    {
        let name = C::NAME;
        match tokio::time::timeout(self.timeout, self.service.execute(command)).await {
            Err(_) => Err(QmpError::Timeout {
                command: name,
                timeout: self.timeout,
            }),
            Ok(Err(err)) => Err(QmpError::Command {
                command: name,
                message: describe(&err),
            }),
            Ok(Ok(ok)) => Ok(ok),
        }
    }

    /// Pauses the vCPUs (`stop`).
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute(qmp::stop {}).await.map(drop)
    }

    /// Resumes the vCPUs (`cont`).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute(qmp::cont {}).await.map(drop)
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute(qmp::query_status {}).await
    }

    /// True when `query-status` says the guest runs.
    pub async fn is_running(&self) -> Result<bool, QmpError> {
        let status = self.query_status().await?;
        Ok(status.running && matches!(status.status, RunState::running))
    }

    /// Presses Ctrl+Alt+Del on the i8042 keyboard (`send-key`).
    pub async fn send_ctrl_alt_del(&self) -> Result<(), QmpError> {
        let key = |code| KeyValue::qcode(QKeyCodeWrapper { data: code });
        self.execute(qmp::send_key {
            keys: vec![
                key(QKeyCode::ctrl),
                key(QKeyCode::alt),
                key(QKeyCode::delete),
            ],
            hold_time: None,
        })
        .await
        .map(drop)
    }
}

/// QMP commands sent with JSON arguments built by squib: the generated `qapi` types of the
/// block and QOM commands are unwieldy for the few fields squib sets.
macro_rules! json_command {
    ($ty:ident, $name:literal) => {
        #[derive(serde::Serialize)]
        #[serde(transparent)]
        struct $ty(serde_json::Value);
        impl Command for $ty {
            type Ok = serde_json::Value;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
        impl qmp::QmpCommand for $ty {}
    };
}

json_command!(BlockdevAdd, "blockdev-add");
json_command!(BlockdevReopen, "blockdev-reopen");
json_command!(BlockdevDel, "blockdev-del");
json_command!(BlockSetIoThrottle, "block_set_io_throttle");
json_command!(Balloon, "balloon");
json_command!(QueryBalloon, "query-balloon");
json_command!(QomGet, "qom-get");
json_command!(QomSet, "qom-set");
json_command!(DeviceAdd, "device_add");
json_command!(DeviceDel, "device_del");
json_command!(ChardevAdd, "chardev-add");
json_command!(ChardevRemove, "chardev-remove");
json_command!(NetdevAdd, "netdev_add");
json_command!(NetdevDel, "netdev_del");
json_command!(ObjectAdd, "object-add");
json_command!(ObjectDel, "object-del");

/// Hot-plug commands (arguments as QMP's JSON).
impl QmpClient {
    /// `device_add` with the device's properties (`driver`, `id`, `bus`…).
    pub async fn device_add(&self, properties: serde_json::Value) -> Result<(), QmpError> {
        self.execute(DeviceAdd(properties)).await.map(drop)
    }

    /// Asks the guest to release the device; QEMU reports `DEVICE_DELETED` once it has.
    pub async fn device_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute(DeviceDel(serde_json::json!({ "id": id })))
            .await
            .map(drop)
    }

    /// A socket chardev that connects to the Unix socket `path`.
    pub async fn chardev_add_unix_client(&self, id: &str, path: &str) -> Result<(), QmpError> {
        self.execute(ChardevAdd(serde_json::json!({
            "id": id,
            "backend": {
                "type": "socket",
                "data": {
                    "addr": { "type": "unix", "data": { "path": path } },
                    "server": false,
                },
            },
        })))
        .await
        .map(drop)
    }

    pub async fn chardev_remove(&self, id: &str) -> Result<(), QmpError> {
        self.execute(ChardevRemove(serde_json::json!({ "id": id })))
            .await
            .map(drop)
    }

    pub async fn netdev_add(&self, properties: serde_json::Value) -> Result<(), QmpError> {
        self.execute(NetdevAdd(properties)).await.map(drop)
    }

    pub async fn netdev_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute(NetdevDel(serde_json::json!({ "id": id })))
            .await
            .map(drop)
    }

    pub async fn object_add(&self, properties: serde_json::Value) -> Result<(), QmpError> {
        self.execute(ObjectAdd(properties)).await.map(drop)
    }

    pub async fn object_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute(ObjectDel(serde_json::json!({ "id": id })))
            .await
            .map(drop)
    }
}

/// Block and balloon commands (arguments as QMP's JSON).
impl QmpClient {
    pub async fn blockdev_add(&self, options: serde_json::Value) -> Result<(), QmpError> {
        self.execute(BlockdevAdd(options)).await.map(drop)
    }

    /// `blockdev-reopen` of one node with its complete new options.
    pub async fn blockdev_reopen(&self, options: serde_json::Value) -> Result<(), QmpError> {
        self.execute(BlockdevReopen(serde_json::json!({ "options": [options] })))
            .await
            .map(drop)
    }

    pub async fn blockdev_del(&self, node_name: &str) -> Result<(), QmpError> {
        self.execute(BlockdevDel(serde_json::json!({ "node-name": node_name })))
            .await
            .map(drop)
    }

    /// `block_set_io_throttle` with every limit given (0 = unlimited).
    pub async fn block_set_io_throttle(&self, args: serde_json::Value) -> Result<(), QmpError> {
        self.execute(BlockSetIoThrottle(args)).await.map(drop)
    }

    /// Sets the balloon's target: the guest's memory size in bytes once inflated.
    pub async fn balloon(&self, target_bytes: u64) -> Result<(), QmpError> {
        self.execute(Balloon(serde_json::json!({ "value": target_bytes })))
            .await
            .map(drop)
    }

    /// The guest's memory size as the balloon leaves it, in bytes (`query-balloon`).
    pub async fn query_balloon(&self) -> Result<u64, QmpError> {
        let reply = self.execute(QueryBalloon(serde_json::json!({}))).await?;
        reply["actual"].as_u64().ok_or(QmpError::Command {
            command: "query-balloon",
            message: format!("unexpected reply {reply}"),
        })
    }

    pub async fn qom_get(&self, path: &str, property: &str) -> Result<serde_json::Value, QmpError> {
        self.execute(QomGet(
            serde_json::json!({ "path": path, "property": property }),
        ))
        .await
    }

    pub async fn qom_set(
        &self,
        path: &str,
        property: &str,
        value: serde_json::Value,
    ) -> Result<(), QmpError> {
        self.execute(QomSet(
            serde_json::json!({ "path": path, "property": property, "value": value }),
        ))
        .await
        .map(drop)
    }
}

/// A command sent with the connection ([`QmpClient::connect_with`]).
pub struct EarlyCommand {
    pub name: &'static str,
    pub arguments: serde_json::Value,
}

/// The ids of early commands (`squib-early-<n>`): their answers never reach the `qapi` crate,
/// which would not know them.
const EARLY_ID: &str = "squib-early-";

/// The index of an early command's answer, and the answer.
fn early_answer(line: &[u8]) -> Option<(usize, serde_json::Value)> {
    // Most lines are not: only those naming the prefix are parsed here.
    line.windows(EARLY_ID.len())
        .any(|w| w == EARLY_ID.as_bytes())
        .then_some(())?;
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let n = value["id"].as_str()?.strip_prefix(EARLY_ID)?.parse().ok()?;
    (value.get("event").is_none()).then_some((n, value))
}

/// An early command's answer as the typed commands report theirs.
fn early_result(
    command: &'static str,
    answer: serde_json::Value,
) -> Result<serde_json::Value, QmpError> {
    match answer.get("return") {
        Some(value) => Ok(value.clone()),
        None => Err(QmpError::Command {
            command,
            message: format!(
                "{} ({})",
                answer["error"]["desc"]
                    .as_str()
                    .unwrap_or("no reason given"),
                answer["error"]["class"].as_str().unwrap_or("no class"),
            ),
        }),
    }
}

/// The longest QMP line squib reads (replies such as `query-blockstats` stay far below).
const MAX_LINE: u64 = 16 << 20;

/// QEMU's side of the connection without the answers to early commands (to
/// `early_answers`) nor the events the `qapi` schema does not know: newer
/// QEMUs add events (10.0's `NETDEV_VHOST_USER_CONNECTED` on a hot-plugged vhost-user
/// netdev), and a line the decoder cannot read would end the whole stream.
fn known_messages_only(
    mut from_qemu: tokio::io::ReadHalf<UnixStream>,
    early_answers: tokio::sync::mpsc::UnboundedSender<(usize, serde_json::Value)>,
) -> tokio::io::ReadHalf<tokio::io::DuplexStream> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (ours, mut theirs) = tokio::io::duplex(64 << 10);
    tokio::spawn(async move {
        let mut lines = BufReader::new((&mut from_qemu).take(MAX_LINE));
        let mut line = Vec::new();
        loop {
            line.clear();
            lines.get_mut().set_limit(MAX_LINE);
            match lines.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(answer) = early_answer(&line) {
                // Nobody waiting (the connection given up) is fine.
                let _ = early_answers.send(answer);
                continue;
            }
            if unknown_event(&line) {
                tracing::debug!(line = %String::from_utf8_lossy(&line).trim_end(), "QMP event squib does not know");
                continue;
            }
            if theirs.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    tokio::io::split(ours).0
}

/// True for an event line the `qapi` schema cannot decode.
fn unknown_event(line: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(value) if value.get("event").is_some() => {
            serde_json::from_value::<qapi::qmp::QmpMessageAny>(value).is_err()
        }
        _ => false,
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.events.abort();
    }
}

fn describe(err: &ExecuteError) -> String {
    match err {
        ExecuteError::Qapi(e) => format!("{} ({:?})", e.desc, e.class),
        ExecuteError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            "QEMU closed the QMP connection".to_string()
        }
        ExecuteError::Io(e) => e.to_string(),
    }
}

// The generated `BlockDeviceStats` wants fields QEMU 7.2 does not send: read raw JSON.
json_command!(QueryBlockstats, "query-blockstats");

/// Drive statistics, for the metrics.
impl QmpClient {
    /// `query-blockstats`: I/O counters of every block backend QEMU has, as QMP's JSON.
    pub async fn query_blockstats(&self) -> Result<Vec<serde_json::Value>, QmpError> {
        let reply = self.execute(QueryBlockstats(serde_json::json!({}))).await?;
        match reply {
            serde_json::Value::Array(entries) => Ok(entries),
            other => Err(QmpError::Command {
                command: "query-blockstats",
                message: format!("unexpected reply {other}"),
            }),
        }
    }
}

json_command!(QueryCpusFast, "query-cpus-fast");

/// vCPUs, for checking the CPU model QEMU realised.
impl QmpClient {
    /// `query-cpus-fast`: the QOM path of every vCPU, in CPU index order.
    pub async fn cpu_qom_paths(&self) -> Result<Vec<String>, QmpError> {
        let reply = self.execute(QueryCpusFast(serde_json::json!({}))).await?;
        let paths = reply.as_array().map(|cpus| {
            cpus.iter()
                .filter_map(|cpu| cpu["qom-path"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        });
        paths.ok_or(QmpError::Command {
            command: "query-cpus-fast",
            message: format!("unexpected reply {reply}"),
        })
    }
}

// Migration, for snapshots (arguments as QMP's JSON).
json_command!(MigrateSetCapabilities, "migrate-set-capabilities");
json_command!(Migrate, "migrate");
json_command!(QueryMigrate, "query-migrate");
json_command!(XenSaveDevicesState, "xen-save-devices-state");

impl QmpClient {
    /// Turns one migration capability on or off.
    pub async fn migrate_set_capability(&self, name: &str, on: bool) -> Result<(), QmpError> {
        self.execute(MigrateSetCapabilities(serde_json::json!({
            "capabilities": [{ "capability": name, "state": on }]
        })))
        .await
        .map(drop)
    }

    /// Starts an outgoing migration to `uri` (returns at once; see [`Self::query_migrate`]).
    pub async fn migrate(&self, uri: &str) -> Result<(), QmpError> {
        self.execute(Migrate(serde_json::json!({ "uri": uri })))
            .await
            .map(drop)
    }

    /// `query-migrate`, as QMP's JSON (`status`, and `error-desc` when it failed).
    pub async fn query_migrate(&self) -> Result<serde_json::Value, QmpError> {
        self.execute(QueryMigrate(serde_json::json!({}))).await
    }

    /// Writes the device state without any RAM into the file `path` (QEMU creates it), the
    /// guest left as it was (`live: false`: its drives stay active). Despite its name, not
    /// tied to Xen: every QEMU build has it.
    pub async fn save_devices_state(&self, path: &str) -> Result<(), QmpError> {
        self.execute(XenSaveDevicesState(
            serde_json::json!({ "filename": path, "live": false }),
        ))
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests;
