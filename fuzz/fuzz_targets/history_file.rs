//! cargo-fuzz target: `walrep::fuzzing::history_file` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::history_file(data));
