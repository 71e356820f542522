//! The host's CPU configuration as Nova and the kernel see it, and the problems found in it: Nova's
//! dedicated and shared pCPU sets (nova.conf), the kernel's isolation of CPUs (its command line),
//! and where the running instances are pinned against them.

use crate::model::cpuset::CpuSet;
use serde::Serialize;
use std::collections::BTreeMap;

/// Nova's CPU sets from nova.conf. Each `None` when the option is not set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct NovaCpuSets {
    /// `[compute] cpu_dedicated_set`: pCPUs for instances with `hw:cpu_policy=dedicated`.
    pub(crate) dedicated: Option<CpuSet>,
    /// `[compute] cpu_shared_set`: pCPUs floating instances (and emulator threads) share.
    pub(crate) shared: Option<CpuSet>,
    /// `[DEFAULT] vcpu_pin_set`: the legacy option both kinds of instance used before Train.
    pub(crate) vcpu_pin_set: Option<CpuSet>,
}

impl NovaCpuSets {
    /// The pCPUs dedicated instances may be pinned to: `cpu_dedicated_set`, else the legacy
    /// `vcpu_pin_set`.
    pub(crate) fn for_dedicated(&self) -> Option<&CpuSet> {
        self.dedicated.as_ref().or(self.vcpu_pin_set.as_ref())
    }
}

/// The kernel's CPU isolation, from its command line. Each `None` when the parameter is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct KernelCpuIsolation {
    /// `isolcpus=` CPUs isolated from the scheduler's load balancing (flags `domain` or none).
    pub(crate) isolcpus: Option<CpuSet>,
    /// `isolcpus=managed_irq,…` CPUs kept free of managed interrupts.
    pub(crate) isolcpus_managed_irq: Option<CpuSet>,
    /// `nohz_full=` CPUs without the scheduler tick while they run one task.
    pub(crate) nohz_full: Option<CpuSet>,
    /// `rcu_nocbs=` CPUs whose RCU callbacks run elsewhere.
    pub(crate) rcu_nocbs: Option<CpuSet>,
    /// `irqaffinity=` the default affinity of interrupts at boot.
    pub(crate) irqaffinity: Option<CpuSet>,
    /// The default affinity of new interrupts now (`/proc/irq/default_smp_affinity`, which
    /// `irqaffinity=` sets at boot and an administrator may change); `None` when unreadable.
    pub(crate) irq_default_affinity: Option<CpuSet>,
}

/// What a host CPU check found wrong (`problem` of `pinflow_host_cpu_config_problem`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HostCpuProblem {
    /// `cpu_dedicated_set` and `cpu_shared_set` share pCPUs.
    DedicatedSharedOverlap,
    /// A vCPU pinned with `<vcpupin>` to pCPUs outside `cpu_dedicated_set` (or `vcpu_pin_set`):
    /// the class of the live-migration bug where pins are copied from the source host.
    PinnedOutsideDedicatedSet,
    /// A floating vCPU (`<vcpu cpuset>` or no pin) may run on a pCPU of `cpu_dedicated_set`.
    FloatingOnDedicated,
    /// Dedicated pCPUs the kernel does not isolate from the scheduler (`isolcpus`), when the
    /// policy requires it.
    DedicatedNotIsolatedFromScheduler,
    /// Dedicated pCPUs interrupts may be sent to (`irqaffinity`, `isolcpus=managed_irq`), when the
    /// policy requires it.
    DedicatedNotIsolatedFromIrqs,
}

impl HostCpuProblem {
    /// Every problem, in label order.
    #[cfg(test)]
    pub(crate) const ALL: [HostCpuProblem; 5] = [
        HostCpuProblem::DedicatedSharedOverlap,
        HostCpuProblem::PinnedOutsideDedicatedSet,
        HostCpuProblem::FloatingOnDedicated,
        HostCpuProblem::DedicatedNotIsolatedFromScheduler,
        HostCpuProblem::DedicatedNotIsolatedFromIrqs,
    ];

    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HostCpuProblem::DedicatedSharedOverlap => "dedicated_shared_overlap",
            HostCpuProblem::PinnedOutsideDedicatedSet => "pinned_outside_dedicated_set",
            HostCpuProblem::FloatingOnDedicated => "floating_on_dedicated",
            HostCpuProblem::DedicatedNotIsolatedFromScheduler => {
                "dedicated_not_isolated_from_scheduler"
            }
            HostCpuProblem::DedicatedNotIsolatedFromIrqs => "dedicated_not_isolated_from_irqs",
        }
    }
}

/// The host CPU checks' report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct HostCpuReport {
    /// Nova's sets; `None` when no nova.conf is configured or it could not be read.
    pub(crate) nova: Option<NovaCpuSets>,
    /// The kernel's isolation; `None` when its command line could not be read.
    pub(crate) kernel: Option<KernelCpuIsolation>,
    /// Each problem that could be checked (its inputs known) and what it found: empty when
    /// fine, else one line per finding naming the instance or the pCPUs. A problem whose inputs
    /// are unknown is absent (never reported as fine).
    pub(crate) problems: BTreeMap<HostCpuProblem, Vec<String>>,
}
