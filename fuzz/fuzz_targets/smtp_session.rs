#![no_main]
//! `scripts/fuzz smtp_session`: the properties are in busgate's src/fuzzing.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| busgate::fuzzing::smtp_session(data));
