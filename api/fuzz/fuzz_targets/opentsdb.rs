//! Fuzzes the `opentsdb_line` parser: `cargo fuzz run opentsdb`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_api_fuzz::extract("opentsdb_line", data));
