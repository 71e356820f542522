//! pinflow: a host collector for OpenStack/KVM/Open vSwitch hypervisors.
//!
//! Data flows one way: [`sources`] read the host into the [`model`], [`detect`] turns the model into
//! findings, [`engine`] runs one pipeline per area and publishes reports, [`export`] serves them
//! (Prometheus `/metrics`, JSON API, CLI tables); [`commands`] are the binary. ARCHITECTURE.md
//! draws it. Everything is crate-private except what the binary, the fuzz targets, the examples
//! and the integration tests need.

mod build_info;
mod cli;
pub mod commands;
mod config;
mod detect;
mod engine;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod sources;
