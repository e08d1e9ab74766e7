#![no_main]
//! `scripts/fuzz framing_guard`: the properties are in busgate's src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| busgate::fuzzing::framing_guard(data));
