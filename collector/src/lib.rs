//! pinflow: a host collector for OpenStack/KVM/Open vSwitch hypervisors.
//!
//! Data flows one way: [`sources`] read the host into the [`model`], [`detect`] turns the model into
//! findings, [`export`] serves them (Prometheus `/metrics`, JSON API, CLI tables).

pub mod build_info;
pub mod cli;
pub mod commands;
pub mod config;
pub mod detect;
pub mod engine;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod sources;
