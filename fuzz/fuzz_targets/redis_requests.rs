//! cargo-fuzz target: `walrep::fuzzing::redis_requests` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walrep::fuzzing::redis_requests(data));
