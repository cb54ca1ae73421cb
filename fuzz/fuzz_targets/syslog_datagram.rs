#![no_main]
//! See `sluice::fuzzing::syslog_datagram` for the property checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::syslog_datagram(data));
