#![no_main]
//! See `sluice::fuzzing::http_ingest` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::http_ingest(data));
