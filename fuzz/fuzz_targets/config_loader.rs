#![no_main]
//! See `sluice::fuzzing::config_loader` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::config_loader(data));
