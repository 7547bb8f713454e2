//! cargo-fuzz target: `walrep::fuzzing::conninfo` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::conninfo(data));
