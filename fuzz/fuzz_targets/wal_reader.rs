//! cargo-fuzz target: `walrep::fuzzing::wal_reader` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::wal_reader(data));
