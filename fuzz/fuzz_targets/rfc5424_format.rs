#![no_main]
//! See `sluice::fuzzing::rfc5424_format` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::rfc5424_format(data));
