//! End-to-end: CPU templates reach the guest through QEMU's CPU model. The guest reads its
//! /proc/cpuinfo from a script disk (`squib.script=/dev/vdb`) and prints it on the console.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

const SCRIPT_DONE: &str = "SQUIB-SCRIPT-DONE";
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 squib.action=wait squib.script=/dev/vdb";
const SCRIPT: &str = r#"
echo "CPU-FLAGS $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)"
echo "CPU-FAMILY $(grep -m1 '^cpu family' /proc/cpuinfo | cut -d: -f2)"
echo "CPU-MODEL $(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2)"
"#;

fn script_disk(dir: &Path) -> PathBuf {
    let path = dir.join("script.img");
    let mut bytes = format!("{SCRIPT}\nexit 0\n").into_bytes();
    bytes.resize(bytes.len().div_ceil(4096) * 4096, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Boots with the script disk after `extra` configured the CPU; returns squib and the
/// guest's CPU flags.
fn boot(extra: impl FnOnce(&Squib)) -> (Squib, Vec<String>) {
    let guest = guest();
    let squib = Squib::start(&[]);
    let rootfs = rootfs_copy(&guest, squib.dir.path());
    configure(&squib, &guest, &rootfs, BOOT_ARGS);
    let disk = script_disk(squib.dir.path());
    squib.ok(
        "PUT",
        "/drives/script",
        &json!({"drive_id": "script", "path_on_host": disk, "is_root_device": false, "is_read_only": true})
            .to_string(),
    );
    extra(&squib);
    squib.ok("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    squib.wait_for_line(SCRIPT_DONE, BOOT_TIMEOUT);
    let flags = value(&squib, "CPU-FLAGS ")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (squib, flags)
}

fn value(squib: &Squib, prefix: &str) -> String {
    squib
        .console()
        .lines()
        .filter_map(|l| l.split_once(prefix).map(|(_, v)| v.trim().to_string()))
        .next_back()
        .unwrap_or_else(|| panic!("no {prefix} line: {}", squib.console()))
}

#[test]
fn t2_template_masks_features_inside_the_guest() {
    let (squib, flags) = boot(|s| {
        s.ok("PATCH", "/machine-config", r#"{"cpu_template":"T2"}"#);
    });
    let has = |f: &str| flags.iter().any(|g| g == f);
    // All exposed by TCG's `max` and cleared by T2.
    for gone in ["monitor", "umip", "rdpid", "pdpe1gb", "xgetbv1"] {
        assert!(!has(gone), "{gone} still in the guest's flags: {flags:?}");
    }
    // Forced on by T2, and kept.
    for kept in ["mce", "mtrr", "erms"] {
        assert!(
            has(kept),
            "{kept} missing from the guest's flags: {flags:?}"
        );
    }
    assert_eq!(value(&squib, "CPU-FAMILY "), "6");
    assert_eq!(value(&squib, "CPU-MODEL "), "63");
    let (status, body) = squib.api("GET", "/machine-config", None);
    assert_eq!(status, 200);
    assert!(
        body.contains(r#""smt":false,"cpu_template":"T2","#),
        "{body}"
    );
    // The bits QEMU cannot name are warned about, once.
    let log = squib.log();
    assert_eq!(
        log.matches("CPUID bits QEMU has no feature name for")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn custom_cpu_config_clears_a_feature_and_warns_about_what_tcg_cannot_add() {
    // CPUID 7.0 EBX: bit 29 (SHA) → 0, bit 16 (AVX-512F) → 1.
    let mut bitmap = ['x'; 32];
    bitmap[31 - 29] = '0';
    bitmap[31 - 16] = '1';
    let bitmap: String = bitmap.iter().collect();
    let (squib, flags) = boot(|s| {
        s.ok(
            "PUT",
            "/cpu-config",
            &json!({"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1,
                "modifiers": [{"register": "ebx", "bitmap": format!("0b{bitmap}")}]}]})
            .to_string(),
        );
    });
    assert!(!flags.iter().any(|f| f == "sha_ni"), "{flags:?}");
    let (_, body) = squib.api("GET", "/machine-config", None);
    assert!(!body.contains("cpu_template"), "{body}");
    let log = squib.log();
    if qemu_accel(&squib).starts_with("tcg") {
        assert!(!flags.iter().any(|f| f == "avx512f"), "{flags:?}");
        assert_eq!(log.matches("TCG cannot emulate them").count(), 1, "{log}");
        assert!(log.contains("does not get: +avx512f;"), "{log}");
    } else {
        assert!(!log.contains("TCG cannot emulate them"), "{log}");
    }
}
