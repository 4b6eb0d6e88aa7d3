//! The snapshot state-file reader: any bytes are a state squib can restore from, or one of the
//! format errors; nothing panics and nothing allocates beyond the input's own size. Inputs
//! whose first byte is odd get a correct CRC appended, so the fuzzer gets past the checksum
//! into the header and payload parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use squib_snapshot::crc64;
use squib_vmm::snapshot_file::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let bytes = if pick & 1 == 1 {
        let mut v = rest.to_vec();
        let crc = crc64(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    } else {
        rest.to_vec()
    };
    if let Ok(state) = decode(&bytes) {
        assert!(state.device_state.len() <= bytes.len());
    }
});
