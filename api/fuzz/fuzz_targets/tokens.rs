//! Fuzzes token substitution: `cargo fuzz run tokens`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_api_fuzz::substitute(data));
