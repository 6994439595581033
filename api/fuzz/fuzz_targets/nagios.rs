//! Fuzzes the `nagios_perfdata` parser: `cargo fuzz run nagios`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_api_fuzz::extract("nagios_perfdata", data));
