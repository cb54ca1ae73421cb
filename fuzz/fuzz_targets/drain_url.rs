#![no_main]
//! See `sluice::fuzzing::drain_url` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::drain_url(data));
