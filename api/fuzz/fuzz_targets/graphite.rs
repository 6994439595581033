//! Fuzzes the `graphite_plaintext` parser: `cargo fuzz run graphite`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_api_fuzz::extract("graphite_plaintext", data));
