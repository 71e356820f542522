//! Fuzz target: `pinflow::fuzzing::openflow_flow_monitor` (see collector/src/fuzzing.rs for what it exercises).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pinflow::fuzzing::openflow_flow_monitor(data));
