#![no_main]
//! See `sluice::fuzzing::jsonl_reader` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::jsonl_reader(data));
