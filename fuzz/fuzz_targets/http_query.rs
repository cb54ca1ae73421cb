#![no_main]
//! See `sluice::fuzzing::http_query` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::http_query(data));
