//! Fuzz target `open_live`: see `mapkv_fuzz::open_live` (fuzz/src/lib.rs) for the input layout
//! and what is checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mapkv_fuzz::open_live(data));
