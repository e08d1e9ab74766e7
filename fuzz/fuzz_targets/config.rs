#![no_main]
//! `scripts/fuzz config`: the properties are in busgate's src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| busgate::fuzzing::config(data));
