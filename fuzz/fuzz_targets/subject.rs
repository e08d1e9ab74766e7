#![no_main]
//! `scripts/fuzz subject`: the properties are in busgate's src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| busgate::fuzzing::subject(data));
