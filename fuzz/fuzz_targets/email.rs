#![no_main]
//! `scripts/fuzz email`: the properties are in busgate's src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| busgate::fuzzing::email(data));
