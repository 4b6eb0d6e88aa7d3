use std::io;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::schema::{self, DeviceClass};
use super::*;

/// A writer whose bytes the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn json_lines(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Top-level keys of a line in their textual order (serde_json's Map would sort them).
fn keys_in_order(line: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut de = serde_json::Deserializer::from_str(line);
    struct Keys<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                self.0.push(key);
            }
            Ok(())
        }
    }
    serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).unwrap();
    keys
}

fn installed(config: LineHeader) -> (Arc<MetricsRegistry>, Shared) {
    let registry = MetricsRegistry::new();
    let out = Shared::default();
    registry.install_writer("vm-1", config, Box::new(out.clone()));
    (registry, out)
}

fn config() -> LineHeader {
    LineHeader::default()
}

#[test]
fn no_target_means_no_line() {
    assert!(!MetricsRegistry::new().flush().unwrap());
}

#[test]
fn top_level_keys_in_upstream_order() {
    let (registry, out) = installed(config());
    registry.add_device(DeviceClass::Block, "scratch");
    registry.add_device(DeviceClass::Block, "rootfs");
    registry.add_device(DeviceClass::Net, "eth0");
    assert!(registry.flush().unwrap());
    let line = &out.lines()[0];
    assert_eq!(
        keys_in_order(line),
        [
            "utc_timestamp_ms",
            "api_server",
            "balloon",
            "block_rootfs",
            "block_scratch",
            "block",
            "deprecated_api",
            "get_api_requests",
            "i8042",
            "uart",
            "latencies_us",
            "logger",
            "mmds",
            "net_eth0",
            "net",
            "patch_api_requests",
            "put_api_requests",
            "seccomp",
            "vcpu",
            "vmm",
            "signals",
            "vsock",
            "entropy",
            "pmem",
            "interrupts",
            "memory_hotplug",
        ]
    );
    assert_eq!(
        keys_in_order(line),
        schema::top_level_keys(
            false,
            false,
            &[
                (DeviceClass::Block, "scratch"),
                (DeviceClass::Block, "rootfs"),
                (DeviceClass::Net, "eth0")
            ]
        )
    );
}

#[test]
fn id_and_properties_follow_the_timestamp() {
    let (registry, out) = installed(LineHeader {
        emit_id: true,
        properties: Some([("team".to_string(), "a\"b".to_string())].into()),
    });
    registry.flush().unwrap();
    let line = &out.lines()[0];
    assert_eq!(
        keys_in_order(line)[..4],
        ["utc_timestamp_ms", "id", "properties", "api_server"]
    );
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["id"], "vm-1");
    assert_eq!(v["properties"]["team"], "a\"b");
}

#[test]
fn every_section_has_every_sub_key_in_order() {
    let (registry, out) = installed(config());
    registry.flush().unwrap();
    let line = &out.lines()[0];
    assert!(!line.contains(' '), "compact JSON: {line}");
    let v: Value = serde_json::from_str(line).unwrap();
    for section in schema::SECTIONS {
        let (name, fields) = match *section {
            schema::Section::Fixed(section) => (section.name(), section.keys()),
            schema::Section::PerDevice {
                class,
                fields,
                aggregate: true,
            } => (class.prefix(), fields),
            schema::Section::PerDevice { .. } => continue,
        };
        let object = v[name].as_object().unwrap_or_else(|| panic!("{name}"));
        assert_eq!(object.len(), fields.len(), "{name}");
        // Sub-key order, checked on the text.
        let start = line.find(&format!("\"{name}\":{{")).unwrap();
        let mut at = start;
        for field in fields {
            let found = line[at..]
                .find(&format!("\"{field}\":"))
                .unwrap_or_else(|| panic!("{name}.{field} out of order"));
            at += found;
        }
    }
    assert_eq!(
        v["block"]["read_agg"],
        serde_json::json!({"min_us":0,"max_us":0,"sum_us":0})
    );
    assert!(v["utc_timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
}

#[test]
fn counters_are_deltas_and_stores_are_absolute() {
    let (registry, out) = installed(config());
    let block = |read_bytes, read_count| BlockCounters {
        read_bytes,
        read_count,
        ..BlockCounters::default()
    };
    registry.values.put_api_requests.drive_count.inc();
    registry.values.put_api_requests.drive_count.inc();
    registry.values.latencies_us.pause_vm.set(1234);
    registry.values.signals.sighup.set(1);
    registry.values.signals.sigpipe.inc();
    registry.set_block_stats(&[
        ("rootfs".to_string(), block(4096, 2)),
        ("data".to_string(), block(512, 0)),
    ]);
    registry.flush().unwrap();
    registry.values.put_api_requests.drive_count.inc();
    registry.set_block_stats(&[("rootfs".to_string(), block(5120, 3))]);
    registry.flush().unwrap();
    registry.flush().unwrap();
    let lines = out.json_lines();
    assert_eq!(lines[0]["put_api_requests"]["drive_count"], 2);
    assert_eq!(lines[1]["put_api_requests"]["drive_count"], 1);
    assert_eq!(lines[2]["put_api_requests"]["drive_count"], 0);
    for line in &lines {
        assert_eq!(line["latencies_us"]["pause_vm"], 1234);
        assert_eq!(line["signals"]["sighup"], 1);
    }
    assert_eq!(lines[0]["signals"]["sigpipe"], 1);
    assert_eq!(lines[1]["signals"]["sigpipe"], 0);
    assert_eq!(lines[0]["block_rootfs"]["read_bytes"], 4096);
    assert_eq!(lines[0]["block"]["read_bytes"], 4608);
    assert_eq!(lines[0]["block"]["read_count"], 2);
    assert_eq!(lines[1]["block_rootfs"]["read_bytes"], 1024);
    assert_eq!(lines[1]["block"]["read_bytes"], 1024);
    assert_eq!(lines[2]["block"]["read_bytes"], 0);
}

#[test]
fn section_and_device_sources() {
    let (registry, out) = installed(config());
    let mmds = Arc::new(schema::Mmds::default());
    mmds.rx_count.add(3);
    let m = mmds.clone();
    registry.set_section_source(Fixed::Mmds, Arc::new(move || m.snapshot()));
    // The registry's own `mmds` values are not what the line reports once a source is set.
    registry.values.mmds.rx_count.add(100);
    let net = Arc::new(schema::Net::default());
    net.tx_bytes_count.add(100);
    net.tap_write_agg.add(7);
    registry.register_device(DeviceClass::Net, "eth0", Arc::new(move || net.snapshot()));
    registry.flush().unwrap();
    mmds.rx_count.add(2);
    registry.flush().unwrap();
    let lines = out.json_lines();
    assert_eq!(lines[0]["mmds"]["rx_count"], 3);
    assert_eq!(lines[1]["mmds"]["rx_count"], 2);
    assert_eq!(lines[0]["net_eth0"]["tx_bytes_count"], 100);
    assert_eq!(lines[0]["net"]["tx_bytes_count"], 100);
    assert_eq!(lines[0]["net"]["tap_write_agg"]["sum_us"], 7);
    assert_eq!(lines[1]["net_eth0"]["tx_bytes_count"], 0);
}

#[test]
fn write_failure_is_counted() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::EPIPE))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let registry = MetricsRegistry::new();
    registry.install_writer("vm", config(), Box::new(Broken));
    let err = registry.flush().unwrap_err();
    assert_eq!(
        err.to_string(),
        "Failed to write metrics: Broken pipe (os error 32)"
    );
    assert_eq!(registry.values.logger.metrics_fails.get(), 1);
    assert_eq!(registry.values.logger.missed_metrics_count.get(), 1);
}

#[test]
fn vhost_user_drives_get_their_own_section() {
    let (registry, out) = installed(config());
    registry.add_device(DeviceClass::Block, "rootfs");
    registry.add_device(DeviceClass::VhostUserBlock, "vub");
    assert!(registry.flush().unwrap());
    let line = &out.lines()[0];
    let keys = keys_in_order(line);
    assert!(keys.contains(&"block_rootfs".to_string()), "{keys:?}");
    assert!(!keys.contains(&"block_vub".to_string()), "{keys:?}");
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(json["vhost_user_block_vub"]["cfg_fails"], 0);
    assert_eq!(json["vhost_user_block_vub"]["activate_time_us"], 0);
}
