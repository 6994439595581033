//! Fuzzes the `prometheus_text` parser: `cargo fuzz run prometheus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_api_fuzz::extract("prometheus_text", data));
