//! QEMU's `query-blockstats` mapped to Firecracker drive ids, for the `block_⟨id⟩` metrics.

use serde_json::Value;
use squib_metrics::BlockCounters;

use crate::plan::DriveNames;

/// The counters of each drive QEMU reports on. A backend is matched by its root node name or
/// by the id of the virtio-blk device using it (`qdev` is the id or a QOM path containing it).
pub fn by_drive(drives: &[(String, DriveNames)], stats: &[Value]) -> Vec<(String, BlockCounters)> {
    drives
        .iter()
        .filter_map(|(id, names)| {
            let entry = stats.iter().find(|s| {
                s["node-name"].as_str() == Some(names.node.as_str())
                    || s["qdev"]
                        .as_str()
                        .is_some_and(|q| q.split('/').any(|part| part == names.device))
            })?;
            let counter = |key: &str| entry["stats"][key].as_u64().unwrap_or(0);
            Some((
                id.clone(),
                BlockCounters {
                    read_bytes: counter("rd_bytes"),
                    write_bytes: counter("wr_bytes"),
                    read_count: counter("rd_operations"),
                    write_count: counter("wr_operations"),
                    flush_count: counter("flush_operations"),
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::drive_names;

    #[test]
    fn matches_by_device_path_or_node() {
        let drives = vec![
            ("rootfs".to_string(), drive_names(0, "rootfs")),
            ("data".to_string(), drive_names(1, "data")),
            ("gone".to_string(), drive_names(2, "gone")),
        ];
        let stats = vec![
            serde_json::json!({"device": "", "qdev": "/machine/peripheral/blk_rootfs/virtio-backend",
                "stats": {"rd_bytes": 4096, "wr_bytes": 0, "rd_operations": 2, "wr_operations": 0, "flush_operations": 1}}),
            serde_json::json!({"device": "", "node-name": "drive_data",
                "stats": {"rd_bytes": 1, "wr_bytes": 2, "rd_operations": 3, "wr_operations": 4, "flush_operations": 5}}),
        ];
        let got = by_drive(&drives, &stats);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            (
                "rootfs".to_string(),
                BlockCounters {
                    read_bytes: 4096,
                    write_bytes: 0,
                    read_count: 2,
                    write_count: 0,
                    flush_count: 1
                }
            )
        );
        assert_eq!(got[1].1.flush_count, 5);
    }
}
