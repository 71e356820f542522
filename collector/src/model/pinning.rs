//! Model of libvirt domains (expected placement) and their threads (actual placement).

use crate::cpuset::CpuSet;
use serde::Serialize;

/// Nova's instance metadata (`<nova:instance>` in the domain XML, namespace 1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NovaInstance {
    /// Display name (`<nova:name>`).
    pub name: String,
    /// Project (tenant) name.
    pub project: String,
    /// Project UUID.
    pub project_id: String,
    /// User name.
    pub user: String,
    /// User UUID.
    pub user_id: String,
    /// Flavor name.
    pub flavor: String,
}

/// One vCPU as libvirt placed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VcpuSpec {
    /// vCPU index inside the guest.
    pub id: u32,
    /// Host thread id of the vCPU thread (`<vcpus><vcpu id pid>` in libvirt's live status).
    pub tid: Option<u32>,
    /// The pinned host CPUs (`<vcpupin>`, or `<vcpu cpuset>` for all vCPUs); `None` = floating.
    pub pin: Option<CpuSet>,
    /// True when `pin` comes from `<vcpu cpuset>`: a set every vCPU floats over (Nova's shared
    /// policy, `cpu_shared_set`), never a dedicated pCPU even when it holds one CPU.
    pub shared_set: bool,
}

/// Where the domain's emulator (non-vCPU) threads may run.
pub type EmulatorPin = Option<CpuSet>;

/// A network interface of the domain (for joining OVS ports to instances).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InterfaceSpec {
    /// Host-side device name (`<target dev>`), e.g. `tap1234abcd-ef`.
    pub target_dev: String,
    /// Guest MAC address.
    pub mac: String,
}

/// A running libvirt domain as read from libvirt's live status XML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Domain {
    /// libvirt domain name (e.g. `instance-0000002a`): the `domain` label.
    pub name: String,
    /// Domain UUID (Nova's instance UUID).
    pub uuid: String,
    /// libvirt's numeric domain id of this run (changes on every start).
    pub id: Option<u32>,
    /// QEMU process id.
    pub pid: Option<u32>,
    /// Nova metadata, when the domain carries it.
    pub nova: Option<NovaInstance>,
    /// vCPUs in index order.
    pub vcpus: Vec<VcpuSpec>,
    /// `<emulatorpin cpuset>`, else `<vcpu cpuset>` (where libvirt then puts the emulator threads);
    /// `None` when neither is set.
    pub emulator_pin: EmulatorPin,
    /// Network interfaces.
    pub interfaces: Vec<InterfaceSpec>,
}

impl Domain {
    /// Whether any vCPU is pinned with `<vcpupin>` (a floating `<vcpu cpuset>` is no pin).
    pub fn is_pinned(&self) -> bool {
        self.vcpus.iter().any(|v| v.pin.is_some() && !v.shared_set)
    }
}

/// Actual state of one host thread, from procfs and cgroupfs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ThreadState {
    /// Thread id.
    pub tid: u32,
    /// Thread name (`CPU 0/KVM`, `qemu-system-x86`, …).
    pub comm: String,
    /// CPUs the scheduler may use (`Cpus_allowed_list`).
    pub affinity: CpuSet,
    /// CPU the thread last ran on (`/proc/TID/stat` field 39).
    pub last_cpu: Option<u32>,
    /// The thread's cpuset cgroup path relative to the cpuset hierarchy root (v1) or unified root (v2).
    pub cgroup: Option<String>,
    /// The `cpuset.cpus` of that cgroup (v2: the effective set when `cpuset.cpus` is empty).
    pub cgroup_cpus: Option<CpuSet>,
    /// Time spent on a CPU, ns (`/proc/TID/schedstat` field 1).
    pub run_ns: u64,
    /// Time spent runnable but waiting for a CPU, ns (`schedstat` field 2).
    pub wait_ns: u64,
    /// Kernel code, not QEMU's (`/proc/TID/stat` flags): a kernel thread (`PF_KTHREAD`) or a
    /// kernel worker living in the QEMU process (`PF_USER_WORKER`) other than a vhost I/O worker,
    /// such as `kvm-nx-lpage-recovery` (a thread of the VM process since Linux 6.13).
    pub kernel_worker: bool,
}
