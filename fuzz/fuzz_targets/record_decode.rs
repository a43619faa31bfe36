//! Fuzz target `record_decode`: see `mapkv_fuzz::record_decode` (fuzz/src/lib.rs) for the input layout and
//! what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mapkv_fuzz::record_decode(data));
