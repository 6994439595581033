//! Fuzzes the `influxdb_line` parser: `cargo fuzz run influx`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_api_fuzz::extract("influxdb_line", data));
