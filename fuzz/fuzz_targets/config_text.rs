//! cargo-fuzz target: `walrep::fuzzing::config_text` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::config_text(data));
