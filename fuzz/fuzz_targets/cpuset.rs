//! Fuzz target: `pinflow::fuzzing::cpuset` (see collector/src/fuzzing.rs for what it exercises).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pinflow::fuzzing::cpuset(data));
