//! The client against a scripted QEMU on a real Unix socket: QMP's greeting and handshake,
//! replies matched by id, QEMU's errors, and the events the engine watches.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use super::*;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;

fn event(name: &str, data: Value) -> String {
    json!({"timestamp": {"seconds": 1, "microseconds": 2}, "event": name, "data": data}).to_string()
}

#[tokio::test]
async fn commands_errors_and_events_over_a_real_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let qemu = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut send = async |line: String| {
            write
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
        };
        let mut commands = Vec::new();
        send(GREETING.to_string()).await;
        let answers = [
            json!({"return": {}}),
            json!({"return": {"status": "running", "singlestep": false, "running": true}}),
            json!({"error": {"class": "GenericError", "desc": "the guest is busy"}}),
        ];
        for (n, mut answer) in answers.into_iter().enumerate() {
            let line = lines.next_line().await.unwrap().unwrap();
            let command: Value = serde_json::from_str(&line).unwrap();
            commands.push(command["execute"].as_str().unwrap().to_string());
            if n == 1 {
                // An event the qapi schema does not know (QEMU 10): skipped, not fatal.
                send(event(
                    "NETDEV_VHOST_USER_CONNECTED",
                    json!({"netdev-id": "n"}),
                ))
                .await;
                send(event("MIGRATION", json!({"status": "completed"}))).await;
            }
            answer["id"] = command["id"].clone();
            send(answer.to_string()).await;
        }
        send(event(
            "DEVICE_DELETED",
            json!({"device": "net1", "path": "/machine/peripheral/net1"}),
        ))
        .await;
        send(event(
            "SHUTDOWN",
            json!({"guest": true, "reason": "guest-shutdown"}),
        ))
        .await;
        commands
    });

    let client = QmpClient::connect(&path).await.unwrap();
    let mut deleted = client.deleted_devices();
    let mut shutdown = client.shutdown_events();
    assert_eq!(*client.migration_events().borrow(), None);
    assert!(client.is_running().await.unwrap());
    // An event sent before a reply is seen by the time the reply is.
    assert_eq!(
        client.migration_events().borrow().as_deref(),
        Some("completed")
    );
    let err = client.stop().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "QMP command `stop` failed: the guest is busy (GenericError)"
    );
    assert_eq!(deleted.recv().await.unwrap(), "net1");
    let seen = shutdown
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(
        seen,
        ShutdownEvent {
            guest: true,
            reason: "guest-shutdown".into()
        }
    );
    assert_eq!(
        qemu.await.unwrap(),
        ["qmp_capabilities", "query-status", "stop"]
    );
}

#[tokio::test]
async fn no_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = QmpClient::connect(&dir.path().join("none.sock"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, QmpError::Connect(_)), "{err}");
}

#[test]
fn only_events_the_schema_cannot_read_are_dropped() {
    let unknown = br#"{"event": "NETDEV_VHOST_USER_CONNECTED", "data": {"netdev-id": "n", "chardev-id": "c"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#;
    assert!(unknown_event(unknown));
    let known = br#"{"event": "DEVICE_DELETED", "data": {"device": "hp3-blk", "path": "/machine/peripheral/hp3-blk"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#;
    assert!(!unknown_event(known));
    assert!(!unknown_event(br#"{"return": {}}"#));
    assert!(!unknown_event(b"not json"));
}

#[tokio::test]
async fn early_commands_go_out_before_the_greeting_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let qemu = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        // Every command arrives before QEMU greets or answers anything.
        let mut commands = Vec::new();
        for _ in 0..3 {
            let line = lines.next_line().await.unwrap().unwrap();
            commands.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        let answers = [
            json!({"return": {}}),
            json!({"return": {"status": "inmigrate", "singlestep": false, "running": false}}),
            json!({"error": {"class": "GenericError", "desc": "no such uri"}}),
        ];
        let mut out = vec![GREETING.to_string()];
        // An event between the answers, and the answers out of order: each finds its command.
        out.push(event("MIGRATION", json!({"status": "setup"})));
        for (command, mut answer) in commands.iter().zip(answers).rev() {
            answer["id"] = command["id"].clone();
            out.push(answer.to_string());
        }
        for line in out {
            write
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .unwrap();
        }
        // The client goes on as usual.
        let line = lines.next_line().await.unwrap().unwrap();
        let command: Value = serde_json::from_str(&line).unwrap();
        let mut answer = json!({"return": {}});
        answer["id"] = command["id"].clone();
        write
            .write_all(format!("{answer}\r\n").as_bytes())
            .await
            .unwrap();
        commands
            .iter()
            .chain(std::iter::once(&command))
            .map(|c| c["execute"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    });
    let early = [
        EarlyCommand {
            name: "query-status",
            arguments: json!({}),
        },
        EarlyCommand {
            name: "migrate-incoming",
            arguments: json!({"uri": "x"}),
        },
    ];
    let (client, answers) = tokio::time::timeout(
        Duration::from_secs(10),
        QmpClient::connect_with(&path, &early),
    )
    .await
    .expect("an early command waited for an answer")
    .unwrap();
    assert_eq!(answers[0].as_ref().unwrap()["status"], "inmigrate");
    assert_eq!(
        answers[1].as_ref().unwrap_err().to_string(),
        "QMP command `migrate-incoming` failed: no such uri (GenericError)"
    );
    // Events reach their watchers as usual (not necessarily before the early answers).
    let mut migration = client.migration_events();
    let seen = migration.wait_for(Option::is_some).await.unwrap().clone();
    assert_eq!(seen.as_deref(), Some("setup"));
    client.stop().await.unwrap();
    assert_eq!(
        qemu.await.unwrap(),
        [
            "qmp_capabilities",
            "query-status",
            "migrate-incoming",
            "stop"
        ]
    );
}
