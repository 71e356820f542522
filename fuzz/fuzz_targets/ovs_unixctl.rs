//! Fuzz target: `pinflow::fuzzing::ovs_unixctl` (see collector/src/fuzzing.rs for what it exercises).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pinflow::fuzzing::ovs_unixctl(data));
