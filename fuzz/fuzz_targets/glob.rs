//! cargo-fuzz target: `walrep::fuzzing::glob` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::glob(data));
