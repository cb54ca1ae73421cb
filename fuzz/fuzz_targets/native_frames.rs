#![no_main]
//! See `sluice::fuzzing::native_frames` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::native_frames(data));
