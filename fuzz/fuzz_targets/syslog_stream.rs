#![no_main]
//! See `sluice::fuzzing::syslog_stream` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::syslog_stream(data));
