//! Fuzz target `ops_vs_model`: see `mapkv_fuzz::ops_vs_model` (fuzz/src/lib.rs) for the input layout and
//! what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mapkv_fuzz::ops_vs_model(data));
