//! QMP replies: QEMU's side of the QMP socket is the input. After the greeting and the
//! capabilities handshake, whatever QEMU answers to a command (malformed JSON, wrong ids,
//! errors, events, huge numbers, a closed connection) must end as an answer or an error within
//! the command's time, never a panic; `query-blockstats` replies then go through the drive
//! statistics reader.
#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use squib_qemu::drive_names;
use squib_qmp::QmpClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

static SOCKET: LazyLock<PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("squib-fuzz-qmp-{}.sock", std::process::id()))
});

const GREETING: &[u8] =
    br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

fn command_id(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .map_or_else(|| "null".to_string(), |id| id.to_string())
}

fn with_id(reply: &[u8], id: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len());
    let mut rest = reply;
    while !rest.is_empty() {
        if rest.starts_with(b"@ID@") {
            out.extend_from_slice(id);
            rest = &rest[4..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, reply)) = data.split_first() else {
        return;
    };
    RUNTIME.block_on(async {
        let _ = std::fs::remove_file(&*SOCKET);
        let listener = UnixListener::bind(&*SOCKET).unwrap();
        let reply = reply.to_vec();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let _ = write.write_all(GREETING).await;
            let _ = write.write_all(b"\r\n").await;
            // qmp_capabilities
            if let Ok(Some(line)) = lines.next_line().await {
                let id = command_id(&line);
                let _ = write
                    .write_all(format!("{{\"return\": {{}}, \"id\": {id}}}\r\n").as_bytes())
                    .await;
            }
            // The command under test: answered with the input (`@ID@` standing for the
            // command's id, so that mutations keep hitting the pending command), then the
            // connection closes.
            if let Ok(Some(line)) = lines.next_line().await {
                let id = command_id(&line);
                let _ = write.write_all(&with_id(&reply, id.as_bytes())).await;
            }
            let _ = write.shutdown().await;
        });
        let client = tokio::time::timeout(Duration::from_millis(200), async {
            let client = QmpClient::connect(&SOCKET).await.ok()?;
            match pick % 5 {
                0 => {
                    let _ = client.query_status().await;
                }
                1 => {
                    if let Ok(stats) = client.query_blockstats().await {
                        let drives = vec![("rootfs".to_string(), drive_names(0, "rootfs"))];
                        let _ = squib_qemu::block_stats::by_drive(&drives, &stats);
                    }
                }
                2 => {
                    let _ = client.query_balloon().await;
                }
                3 => {
                    let _ = client.query_migrate().await;
                }
                _ => {
                    let _ = client.cpu_qom_paths().await;
                }
            }
            Some(client)
        })
        .await;
        drop(client);
        server.abort();
        let _ = server.await;
    });
});
