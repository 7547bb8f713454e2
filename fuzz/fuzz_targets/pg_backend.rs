//! cargo-fuzz target: `walrep::fuzzing::pg_backend` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::pg_backend(data));
