//! Shared state between the engine (which updates it) and the exporters (which only read it).
//!
//! Each report is replaced whole (`Arc` swap under a short lock), so a scrape never waits for a
//! source and never sees a half-updated report.

use crate::detect::pinning::PinningReport;
use crate::engine::flows::FlowsReport;
use crate::model::datapath::{DatapathEvents, DatapathReport};
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

/// One interface of a local instance (from libvirt's live XML).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalInterface {
    /// Guest MAC address.
    pub mac: String,
    /// Host-side device (tap) name.
    pub target_dev: String,
    /// libvirt domain name.
    pub domain: String,
}

/// Interfaces of every local instance.
pub type LocalMacs = Vec<LocalInterface>;

/// Everything the exporters serve.
#[derive(Clone, Default)]
pub struct SharedState {
    pinning: Arc<RwLock<Arc<PinningReport>>>,
    bpf: Arc<RwLock<Arc<Vec<BpfProgramCost>>>>,
    flows: Arc<RwLock<Arc<FlowsReport>>>,
    datapath: Arc<RwLock<Arc<DatapathReport>>>,
    datapath_events: Arc<RwLock<Arc<DatapathEvents>>>,
    local_macs: Arc<RwLock<Arc<LocalMacs>>>,
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

impl SharedState {
    /// The current OVS kernel datapath report (genetlink).
    pub fn datapath(&self) -> Arc<DatapathReport> {
        read(&self.datapath)
    }

    /// Replaces the OVS kernel datapath report.
    pub fn set_datapath(&self, r: DatapathReport) {
        write(&self.datapath, r);
    }

    /// The current datapath eBPF counts.
    pub fn datapath_events(&self) -> Arc<DatapathEvents> {
        read(&self.datapath_events)
    }

    /// Interfaces of local instances (MAC, tap, domain), from libvirt.
    pub fn local_macs(&self) -> Arc<LocalMacs> {
        read(&self.local_macs)
    }

    /// Replaces the local instance interfaces.
    pub fn set_local_macs(&self, m: LocalMacs) {
        write(&self.local_macs, m);
    }

    /// Replaces the datapath eBPF counts.
    pub fn set_datapath_events(&self, e: DatapathEvents) {
        write(&self.datapath_events, e);
    }
}

fn read<T>(l: &RwLock<Arc<T>>) -> Arc<T> {
    l.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T>(l: &RwLock<Arc<T>>, v: T) {
    *l.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
}
