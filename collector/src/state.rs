//! Shared state between the engine (which updates it) and the exporters (which only read it).
//!
//! Each report is replaced whole (`Arc` swap under a short lock), so a scrape never waits for a
//! source and never sees a half-updated report.

use crate::detect::pinning::PinningReport;
use crate::engine::flows::FlowsReport;
use crate::sources::SourceRegistry;
use std::sync::{Arc, RwLock};

/// Kernel-side cost of one eBPF program (from the kernel's BPF stats).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BpfProgramCost {
    /// Program name.
    pub program: String,
    /// Total run time, ns.
    pub run_time_ns: u64,
    /// Number of runs.
    pub run_count: u64,
}

/// Everything the exporters serve.
#[derive(Clone, Default)]
pub struct SharedState {
    pinning: Arc<RwLock<Arc<PinningReport>>>,
    bpf: Arc<RwLock<Arc<Vec<BpfProgramCost>>>>,
    flows: Arc<RwLock<Arc<FlowsReport>>>,
    /// Per-source health.
    pub sources: SourceRegistry,
}

impl SharedState {
    /// The current pinning report.
    pub fn pinning(&self) -> Arc<PinningReport> {
        read(&self.pinning)
    }

    /// Replaces the pinning report.
    pub fn set_pinning(&self, r: PinningReport) {
        write(&self.pinning, r);
    }

    /// The current dirty-flow report.
    pub fn flows(&self) -> Arc<FlowsReport> {
        read(&self.flows)
    }

    /// Replaces the dirty-flow report.
    pub fn set_flows(&self, r: FlowsReport) {
        write(&self.flows, r);
    }

    /// The current eBPF program costs.
    pub fn bpf_costs(&self) -> Arc<Vec<BpfProgramCost>> {
        read(&self.bpf)
    }

    /// Replaces the eBPF program costs.
    pub fn set_bpf_costs(&self, c: Vec<BpfProgramCost>) {
        write(&self.bpf, c);
    }
}

fn read<T>(l: &RwLock<Arc<T>>) -> Arc<T> {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(l: &RwLock<Arc<T>>, v: T) {
    *l.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
}
