//! Fuzz target: `pinflow::fuzzing::genetlink` (see collector/src/fuzzing.rs for what it exercises).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pinflow::fuzzing::genetlink(data));
