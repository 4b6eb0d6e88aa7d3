//! The MMDS guest-side HTTP parser and responder: whatever bytes a guest sends on a
//! connection, every complete request (pipelining included) gets one bounded response and
//! nothing panics.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use squib_mmds::http::{MAX_REQUEST, Parsed, parse};
use squib_mmds::{Mmds, MmdsConfig, MmdsVersion, new_data_handle};

fn mmds(version: MmdsVersion) -> Arc<Mmds> {
    let data = new_data_handle();
    data.store(Arc::new(serde_json::json!({
        "latest": {"meta-data": {"ami-id": "ami-1", "list": [1, "a", {"k": null}], "n": 3.5}},
        "s": "x",
    })));
    Arc::new(Mmds::new(
        data,
        MmdsConfig {
            version,
            ..MmdsConfig::default()
        },
        "fuzz",
    ))
}

static V1: LazyLock<Arc<Mmds>> = LazyLock::new(|| mmds(MmdsVersion::V1));
static V2: LazyLock<Arc<Mmds>> = LazyLock::new(|| mmds(MmdsVersion::V2));

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let mmds = if pick & 1 == 0 { &*V1 } else { &*V2 };
    let now = Instant::now();
    for _ in 0..64 {
        let window = &rest[..rest.len().min(MAX_REQUEST)];
        match parse(window) {
            Parsed::Complete { consumed, request } => {
                assert!(consumed > 0 && consumed <= window.len());
                let response = match request {
                    Ok(req) => mmds.respond(&req, now),
                    Err(err) => err.to_response(),
                };
                let bytes = response.to_bytes();
                assert!(bytes.len() < 64 * 1024, "{} byte response", bytes.len());
                rest = &rest[consumed..];
            }
            _ => break,
        }
    }
});
