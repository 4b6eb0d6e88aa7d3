//! The binary's command line, as a Firecracker client sees it: versions, help, exit codes.

use std::process::Command;

fn squib(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_squib"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn version_first_line_is_firecracker() {
    let out = squib(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("Firecracker v1.17.0"));
    assert!(lines.next().unwrap().starts_with("squib v"));
}

#[test]
fn help_exits_zero() {
    let out = squib(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Firecracker v1.17.0\n\n"));
    assert!(text.contains("--api-sock"));
}

#[test]
fn bad_flags_exit_153_in_firecracker_style() {
    let out = squib(&["--bogus"]);
    assert_eq!(out.status.code(), Some(153));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains(
            "Found argument 'bogus' which wasn't expected, or isn't valid in this context."
        ),
        "{err}"
    );
    let out = squib(&["--no-api"]);
    assert_eq!(out.status.code(), Some(153));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("Argument 'config-file' required, but not found.")
    );
    let out = squib(&["--level", "loud"]);
    assert_eq!(out.status.code(), Some(152));
}

#[test]
fn socket_in_use_exits_1_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    std::fs::write(&socket, b"").unwrap();
    let out = squib(&["--api-sock", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Failed to open the API socket at:"), "{text}");
    assert!(socket.exists());
}
