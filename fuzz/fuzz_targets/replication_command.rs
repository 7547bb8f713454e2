//! cargo-fuzz target: `walrep::fuzzing::replication_command` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::replication_command(data));
