//! cargo-fuzz target: `walrep::fuzzing::wal_decoders` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::wal_decoders(data));
