//! The shared state: one typed slot per report, written by the one pipeline that owns it and read
//! by the exporters and by the other pipelines (the host inventory).
//!
//! Each report is replaced whole (an `Arc` swap), so a reader never waits for a pipeline and
//! never sees a half-updated report; a reader that wants to know when a report changes
//! subscribes to its slot.

use crate::model::conntrack::ConntrackReport;
use crate::model::datapath::{DatapathEvents, DatapathReport};
use crate::model::flows::{FlowsReport, InterfacesReport};
use crate::model::health::BpfProgramCost;
use crate::model::health::SourceRegistry;
use crate::model::host_cpu::HostCpuReport;
use crate::model::inventory::HostInventory;
use crate::model::ovs_vswitchd::VswitchdReport;
use crate::model::pinning::{IntrusionsReport, PinningReport};
use std::sync::Arc;
use tokio::sync::watch;

/// The current value of one report: replaced whole, read as a shared snapshot.
#[derive(Clone)]
pub(crate) struct Slot<T>(watch::Sender<Arc<T>>);

impl<T: Default> Default for Slot<T> {
    fn default() -> Self {
        Slot(watch::Sender::new(Arc::new(T::default())))
    }
}

impl<T> Slot<T> {
    /// The current value.
    pub(crate) fn get(&self) -> Arc<T> {
        self.0.borrow().clone()
    }

    /// Replaces the value (and wakes subscribers).
    pub(crate) fn set(&self, v: T) {
        self.0.send_replace(Arc::new(v));
    }

    /// Replaces the value only if it differs, and wakes subscribers only then.
    pub(crate) fn set_if_changed(&self, v: T)
    where
        T: PartialEq,
    {
        self.0.send_if_modified(|cur| {
            let changed = **cur != v;
            if changed {
                *cur = Arc::new(v);
            }
            changed
        });
    }

    /// A receiver that sees each new value.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<T>> {
        self.0.subscribe()
    }
}

/// Everything the pipelines publish and the exporters serve.
#[derive(Clone, Default)]
pub(crate) struct SharedState {
    /// Pinning report (pinning pipeline).
    pub(crate) pinning: Slot<PinningReport>,
    /// Intrusions on dedicated pCPUs over the placement window (pinning pipeline, eBPF).
    pub(crate) intrusions: Slot<IntrusionsReport>,
    /// Kernel-side cost of the sched eBPF programs (pinning pipeline).
    pub(crate) bpf_costs: Slot<Vec<BpfProgramCost>>,
    /// Dirty-flow report (flow pipeline).
    pub(crate) flows: Slot<FlowsReport>,
    /// OVS interfaces' state and counters (flow pipeline, with `[flows] interface_metrics`).
    pub(crate) ovs_interfaces: Slot<InterfacesReport>,
    /// OVS kernel datapath report (datapath pipeline).
    pub(crate) datapath: Slot<DatapathReport>,
    /// Datapath eBPF counts (datapath pipeline).
    pub(crate) datapath_events: Slot<DatapathEvents>,
    /// ovs-vswitchd's unixctl counters and the OVS processes (ovs_vswitchd pipeline).
    pub(crate) vswitchd: Slot<VswitchdReport>,
    /// Conntrack entries per zone (conntrack pipeline).
    pub(crate) conntrack: Slot<ConntrackReport>,
    /// Host CPU configuration problems (host CPU pipeline).
    pub(crate) host_cpu: Slot<HostCpuReport>,
    /// Local instances and their interfaces (pinning pipeline; joined on by the others).
    pub(crate) inventory: Slot<HostInventory>,
    /// Per-source health (every source, through its collection guard).
    pub(crate) sources: SourceRegistry,
}
