//! `--config-file` documents: any text is either turned into the actions that configure and
//! boot the VM, or refused with an error; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // A `cpu-config` given as a path would be read from the host: only inline documents
        // are fuzzed (the path case is a file read, covered by the unit tests).
        if text.contains("\"cpu-config\"") && text.contains("\"/") {
            return;
        }
        let _ = squib_api::config_file::actions_from_json(text);
    }
});
