//! What the QEMU binary offers, probed once per engine: its version, machines, device types
//! and migration capabilities (one `-machine none` QEMU answering QMP on its stdio), and
//! where it finds microvm's firmware. The launch plan takes these as an input, so one squib
//! runs on QEMU 7.2 through 10.x and uses a newer mechanism where the binary has it. The
//! answers are cached per QEMU executable (see [`cache`]), so that only the first squib
//! after QEMU is installed or upgraded runs the probe.

mod cache;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::plan::{Device, LaunchPlan, Machine, VirtioKind};

/// How long the probe may take (QEMU without a guest starts in tens of milliseconds).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The probe's QMP output is small (a few hundred device types); more is not QEMU's.
const MAX_PROBE_OUTPUT: u64 = 4 << 20;

/// A QEMU version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// What one QEMU binary offers. `known: false` when the probe failed: then nothing is
/// refused up front (QEMU itself reports what it lacks) and only the oldest supported QEMU's
/// mechanisms are used.
// Stored in the cache as the probe found them: every probed field is required there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Capabilities {
    #[serde(skip)]
    pub known: bool,
    pub version: Option<QemuVersion>,
    pub machines: BTreeSet<String>,
    pub devices: BTreeSet<String>,
    pub migration: BTreeSet<String>,
    /// The properties of `memory-backend-file`.
    pub ram_file_properties: BTreeSet<String>,
    /// qboot, where QEMU's data directories have it (see [`crate::firmware`]); looked up
    /// afresh, never cached (it is another package's file).
    #[serde(skip)]
    pub qboot: Option<PathBuf>,
}

/// Something a launch plan needs that the QEMU binary does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this QEMU ({version}) has no {what} `{name}`, which the configured VM needs")]
pub struct Missing {
    pub version: String,
    pub what: &'static str,
    pub name: String,
}

impl Capabilities {
    /// Whether [`Capabilities::load`] would run QEMU: nothing is cached for this executable.
    pub(crate) fn need_probe(qemu: &Path) -> bool {
        !cache::Entry::for_qemu(qemu).is_some_and(|entry| entry.exists())
    }

    /// What `qemu` offers: cached for this very executable, else probed (and cached).
    pub(crate) async fn load(qemu: &Path) -> Self {
        let entry = cache::Entry::for_qemu(qemu);
        if let Some(mut caps) = entry.as_ref().and_then(cache::Entry::read) {
            caps.qboot = crate::firmware::qboot(qemu).await;
            tracing::debug!(qemu = %qemu.display(), "QEMU capabilities from the cache");
            return caps;
        }
        let caps = Self::probe(qemu).await;
        if let Some(entry) = entry {
            entry.write(&caps);
        }
        caps
    }

    /// Probes `qemu` (runs it). Never fails: an unprobeable QEMU gets unknown capabilities
    /// (and fails to start later with its own words).
    pub(crate) async fn probe(qemu: &Path) -> Self {
        let (caps, qboot) = tokio::join!(probe_qmp(qemu), crate::firmware::qboot(qemu));
        let mut caps = caps.unwrap_or_else(|why| {
            tracing::warn!(qemu = %qemu.display(), %why, "cannot probe QEMU's capabilities");
            Self::default()
        });
        caps.qboot = qboot;
        tracing::info!(
            qemu = %qemu.display(),
            version = ?caps.version.map(|v| v.to_string()),
            devices = caps.devices.len(),
            "QEMU capabilities"
        );
        caps
    }

    /// QEMU 8.2 and later open a RAM file read-only and still give the guest writable
    /// private RAM (`readonly=on,rom=off`); older ones open every RAM file read-write, even
    /// for a private mapping.
    pub(crate) fn maps_read_only_files_privately(&self) -> bool {
        self.ram_file_properties.contains("rom")
    }

    /// QEMU 7.2 dies (SIGSEGV in `vhost_net_start` → `msix_set_vector_notifiers`) as soon as
    /// a guest starts a vhost-user `virtio-net-pci` card that uses MSI-X, cold- or hot-plugged
    /// (seen under TCG; QEMU 10 is fine). Such a card gets no MSI-X vectors there and
    /// interrupts the guest over INTx instead. An unknown QEMU is treated as the oldest.
    pub(crate) fn vhost_user_net_pci_needs_intx(&self) -> bool {
        self.version.is_none_or(|v| v.major < 8)
    }

    /// Refuses a plan that needs a machine or device type this QEMU lacks.
    pub(crate) fn check(&self, plan: &LaunchPlan) -> Result<(), Missing> {
        if !self.known {
            return Ok(());
        }
        let missing = |what, name: &str| Missing {
            version: self
                .version
                .map_or_else(|| "unknown version".to_string(), |v| v.to_string()),
            what,
            name: name.to_string(),
        };
        let machine = match plan.machine.kind {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        };
        if !self.machines.contains(machine) {
            return Err(missing("machine", machine));
        }
        let kind = plan.machine.kind;
        let needed = plan.devices.iter().filter_map(|d| {
            kind.device_type(match d.device {
                Device::Drive { .. } => VirtioKind::Block,
                Device::VhostUserDrive { .. } => VirtioKind::VhostUserBlock,
                Device::Net { .. } => VirtioKind::Net,
                Device::Balloon { .. } => VirtioKind::Balloon,
                Device::Rng { .. } => VirtioKind::Rng,
                Device::Vsock { .. } => VirtioKind::VhostUserVsock,
                Device::Pmem { .. } => VirtioKind::Pmem,
                Device::Mem { .. } => VirtioKind::Mem,
            })
        });
        let root_port = (plan.root_ports > 0).then_some("pcie-root-port");
        let i8042 = (kind == Machine::Microvm).then_some("i8042");
        for device in needed.chain(root_port).chain(i8042) {
            if !self.devices.contains(device) {
                return Err(missing("device", device));
            }
        }
        Ok(())
    }

    /// Reads the QMP answers of the probe (one JSON object a line).
    fn from_qmp_output(output: &str) -> Result<Self, String> {
        let mut caps = Self {
            known: true,
            ..Self::default()
        };
        let names = |v: &Value, key: &str| -> BTreeSet<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e[key].as_str().map(str::to_string))
                .collect()
        };
        let mut answered = 0;
        for line in output.lines() {
            let Ok(msg) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if let Some(v) = msg.pointer("/QMP/version/qemu") {
                let part = |k: &str| v[k].as_u64().and_then(|n| u32::try_from(n).ok());
                caps.version = Some(QemuVersion {
                    major: part("major").ok_or("no major version")?,
                    minor: part("minor").unwrap_or(0),
                    micro: part("micro").unwrap_or(0),
                });
                continue;
            }
            let ret = &msg["return"];
            match msg["id"].as_str() {
                Some("machines") => {
                    caps.machines = names(ret, "name");
                    // `q35` is an alias of the newest pc-q35-x.y.
                    caps.machines.extend(
                        ret.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|m| m["alias"].as_str().map(str::to_string)),
                    );
                }
                Some("devices") => caps.devices = names(ret, "name"),
                Some("migration") => caps.migration = names(ret, "capability"),
                Some("ram-file") => caps.ram_file_properties = names(ret, "name"),
                _ => continue,
            }
            answered += 1;
        }
        if caps.version.is_none() || answered < 4 {
            return Err(format!("QEMU answered {answered} of 4 queries"));
        }
        Ok(caps)
    }
}

async fn probe_qmp(qemu: &Path) -> Result<Capabilities, String> {
    let mut child = tokio::process::Command::new(qemu)
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let commands = [
        json!({"execute": "qmp_capabilities"}),
        json!({"execute": "query-machines", "id": "machines"}),
        json!({"execute": "qom-list-types", "id": "devices",
               "arguments": {"implements": "device", "abstract": false}}),
        json!({"execute": "query-migrate-capabilities", "id": "migration"}),
        json!({"execute": "qom-list-properties", "id": "ram-file",
               "arguments": {"typename": "memory-backend-file"}}),
        json!({"execute": "quit"}),
    ];
    let mut input = String::new();
    for command in commands {
        input.push_str(&command.to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or("no stdout")?
        .take(MAX_PROBE_OUTPUT);
    let run = async {
        stdin.write_all(input.as_bytes()).await?;
        let mut output = String::new();
        stdout.read_to_string(&mut output).await?;
        Ok::<_, std::io::Error>(output)
    };
    let output = tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .map_err(|_| "QEMU did not answer in time".to_string())?
        .map_err(|e| format!("cannot talk to QEMU: {e}"))?;
    let _ = child.wait().await;
    Capabilities::from_qmp_output(&output)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}, "capabilities": ["oob"]}}
{"return": {}}
{"return": [{"name": "microvm", "cpu-max": 288}, {"name": "pc-q35-10.0", "alias": "q35"}], "id": "machines"}
{"return": [{"name": "virtio-blk-device"}, {"name": "i8042"}], "id": "devices"}
{"return": [{"state": false, "capability": "x-ignore-shared"}], "id": "migration"}
{"return": [{"name": "readonly", "type": "bool"}, {"name": "rom", "type": "OnOffAuto"}], "id": "ram-file"}
{"return": {}}
{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}
"#;

    #[test]
    fn qmp_answers_become_capabilities() {
        let caps = Capabilities::from_qmp_output(OUTPUT).unwrap();
        assert!(caps.known);
        assert_eq!(caps.version.unwrap().to_string(), "10.0.2");
        assert!(caps.machines.contains("q35") && caps.machines.contains("microvm"));
        assert!(caps.devices.contains("virtio-blk-device"));
        assert!(caps.migration.contains("x-ignore-shared"));
        assert!(caps.maps_read_only_files_privately());
        // Missing answers are a failed probe, not an empty QEMU.
        let cut: String = OUTPUT.lines().take(5).collect::<Vec<_>>().join("\n");
        assert!(Capabilities::from_qmp_output(&cut).is_err());
        assert!(Capabilities::from_qmp_output("garbage").is_err());
        let old = OUTPUT.replace(r#", {"name": "rom", "type": "OnOffAuto"}"#, "");
        assert!(
            !Capabilities::from_qmp_output(&old)
                .unwrap()
                .maps_read_only_files_privately()
        );
    }

    /// The installed QEMU (or `SQUIB_QEMU`'s) answers the probe and has what squib builds.
    #[tokio::test]
    async fn the_installed_qemu_is_probed() {
        let qemu = std::env::var_os("SQUIB_QEMU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(crate::engine::DEFAULT_QEMU_BINARY));
        let caps = Capabilities::probe(&qemu).await;
        assert!(caps.known, "{} could not be probed", qemu.display());
        assert!(caps.version.unwrap().major >= 7);
        for machine in ["microvm", "q35"] {
            assert!(caps.machines.contains(machine), "{machine}");
        }
        for device in [
            "virtio-blk-device",
            "vhost-user-blk",
            "virtio-net-pci",
            "vhost-user-vsock-device",
            "virtio-mem-pci",
            "pcie-root-port",
        ] {
            assert!(caps.devices.contains(device), "{device}");
        }
        assert!(caps.migration.contains("x-ignore-shared"));
        assert!(caps.ram_file_properties.contains("readonly"));
        assert_eq!(
            caps.maps_read_only_files_privately(),
            caps.version.unwrap()
                >= QemuVersion {
                    major: 8,
                    minor: 2,
                    micro: 0
                }
        );
    }
}
