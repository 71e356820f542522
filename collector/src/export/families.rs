//! The metric-family table: every family pinflow exports, with its type, label names, help text,
//! an example PromQL query, when it has series and its share of the series budget.
//!
//! It is the single source of truth for names and help: the encoders ([`super::metrics`],
//! [`super::datapath`]) take both from here, `docs/metrics.md` is rendered from it ([`markdown`];
//! a unit test fails when the committed file differs, `PINFLOW_BLESS=1` rewrites it), and the
//! dashboard test checks the families of a real scrape against it.

use std::fmt::Write as _;

/// Prometheus metric type of a family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down (also the `_info` families, always 1).
    Gauge,
    /// A monotonic counter; its samples and its name here end in `_total`.
    Counter,
}

impl Kind {
    /// The name in `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// When a family has series on a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// From start-up: per source, per enabled rule, or a single series.
    Always,
    /// Per running libvirt domain.
    Domain,
    /// Per host CPU that a running domain pins a vCPU to.
    PinnedCpu,
    /// Per domain while the eBPF `sched_switch` probe is attached (`source="sched_bpf"` up).
    SchedBpf,
    /// Per host NUMA node and huge-page size the kernel offers (sysfs `devices/system/node`).
    NumaNode,
    /// Per pCPU dedicated to one vCPU (pinned there alone) × intruder class seen, while the eBPF
    /// `sched_switch` probe is attached.
    DedicatedCpu,
    /// Per OVS bridge (OVSDB and its OpenFlow session up).
    OvsBridge,
    /// Per OVS kernel datapath (`openvswitch.ko` with a datapath; not with the userspace datapath).
    KernelDatapath,
    /// Kernel datapath with the eBPF programs on the `openvswitch` tracepoints (`ovs_datapath_bpf` up).
    DatapathBpf,
    /// Like `DatapathBpf`, on Linux ≥ 6.6 (OVS drop reasons), once the datapath dropped a packet.
    DropReasons,
    /// While ovs-vswitchd answers on its unixctl socket (`source="ovs_unixctl"` up); the process
    /// families: while the OVS daemon runs.
    OvsVswitchd,
    /// While ovsdb-server answers on its unixctl socket (`source="ovsdb_server_unixctl"` up).
    OvsdbServer,
    /// While pinflow's OVSDB monitor is connected (`source="ovsdb"` up).
    Ovsdb,
    /// With `[flows] interface_metrics = true`, per OVS interface OVS keeps counters for.
    InterfaceMetrics,
    /// Per OVS bond member or interface where the link protocol is configured (bond, LACP, BFD,
    /// CFM, a tunnel with an egress device).
    OvsLinkFeature,
    /// With `[pinning] bpf_stats = true` (kernel BPF statistics) while an eBPF program is loaded.
    BpfStats,
    /// Per host CPU check whose inputs are known: the Nova ones with `--nova-conf`, the isolation
    /// ones when `[host_cpu] require_isolation` asks for them.
    HostCpuChecks,
    /// With `[conntrack] enabled = true` while the `conntrack` source is up.
    Conntrack,
    /// Only while something is wrong: expected empty on a healthy host.
    Finding,
}

impl Presence {
    /// Whether a healthy host (with every source it has up) shows no series of the family.
    pub fn empty_when_healthy(self) -> bool {
        self == Presence::Finding
    }

    /// The "present when" column of the docs.
    pub fn describe(self) -> &'static str {
        match self {
            Presence::Always => "always",
            Presence::Domain => "per running domain",
            Presence::PinnedCpu => "per pCPU with pinned vCPUs",
            Presence::SchedBpf => "per domain, eBPF `sched_switch` probe attached",
            Presence::NumaNode => "per host NUMA node × huge-page size",
            Presence::DedicatedCpu => {
                "per dedicated pCPU × intruder class seen, eBPF `sched_switch` probe attached"
            }
            Presence::OvsBridge => "per OVS bridge",
            Presence::KernelDatapath => "per OVS kernel datapath",
            Presence::DatapathBpf => "kernel datapath + eBPF on `openvswitch` tracepoints",
            Presence::DropReasons => "kernel datapath + eBPF, Linux ≥ 6.6, after drops",
            Presence::OvsVswitchd => {
                "ovs-vswitchd answering on its unixctl socket (process families: the OVS daemon running)"
            }
            Presence::OvsdbServer => "ovsdb-server answering on its unixctl socket",
            Presence::Ovsdb => "OVSDB connected (`source=\"ovsdb\"` up)",
            Presence::InterfaceMetrics => {
                "`[flows] interface_metrics = true`, per OVS interface with counters"
            }
            Presence::OvsLinkFeature => {
                "per OVS bond member / interface with the feature configured (LACP, BFD, CFM, tunnel)"
            }
            Presence::BpfStats => "`[pinning] bpf_stats = true`, per eBPF program",
            Presence::HostCpuChecks => {
                "per host CPU check made (`--nova-conf`, `[host_cpu] require_isolation`)"
            }
            Presence::Conntrack => "`[conntrack] enabled = true`, source `conntrack` up",
            Presence::Finding => "**only while a finding exists** (empty when healthy)",
        }
    }
}

/// Which part of pinflow exports a family (the docs' sections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// vCPU pinning (libvirt, procfs/cgroupfs, eBPF `sched_switch`).
    Pinning,
    /// OpenFlow tables and dirty flows (OVSDB, OpenFlow).
    Flows,
    /// The OVS kernel datapath (genetlink, eBPF on `openvswitch` tracepoints).
    Datapath,
    /// ovs-vswitchd and ovsdb-server themselves (unixctl, OVSDB `Open_vSwitch` configuration) and
    /// the OVS daemons' processes (procfs).
    Vswitchd,
    /// pinflow itself.
    SelfMetrics,
}

impl Area {
    /// Every area, in docs order.
    pub const ALL: [Area; 5] = [
        Area::Pinning,
        Area::Flows,
        Area::Datapath,
        Area::Vswitchd,
        Area::SelfMetrics,
    ];

    /// Section title in the docs.
    pub fn title(self) -> &'static str {
        match self {
            Area::Pinning => "Pinning",
            Area::Flows => "OpenFlow tables and dirty flows",
            Area::Datapath => "OVS kernel datapath",
            Area::Vswitchd => "ovs-vswitchd, ovsdb-server and the OVS processes",
            Area::SelfMetrics => "pinflow itself",
        }
    }
}

/// A family's share of the series budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    /// Series per running instance (libvirt domain) on a healthy host.
    pub per_instance: u32,
    /// Series per instance port (an instance's tap on OVS).
    pub per_instance_port: u32,
    /// Series per host that do not grow with instances, on the reference host of the docs (see
    /// [`REFERENCE_HOST`]).
    pub per_host: u32,
    /// What the series count grows with, and what bounds it.
    pub grows_with: &'static str,
}

/// The host the `per_host` numbers are counted for.
pub const REFERENCE_HOST: &str = "a Neutron OVS-agent hypervisor when healthy: 10 sources, the 7 built-in \
     dirty-flow rules, 3 bridges (`br-int`, `br-tun`, `br-ex`) with 24 non-empty OpenFlow tables in all, \
     9 OVS ports besides the instances' (no tunnel peers), one kernel datapath with 6 ports besides the instances' \
     executing 6 kinds of actions, `bpf_stats` off";

/// One metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// The name as queried in PromQL (counters with `_total`).
    pub name: &'static str,
    /// Metric type.
    pub kind: Kind,
    /// Label names pinflow sets (Prometheus adds `instance`, `job`, and the deployment `rack`, `zone`).
    pub labels: &'static [&'static str],
    /// Help text (`# HELP`).
    pub help: &'static str,
    /// What the label values are and mean (docs; empty when the help says it all).
    pub notes: &'static str,
    /// An example PromQL query that uses the family.
    pub example: &'static str,
    /// When it has series.
    pub presence: Presence,
    /// Exporting area.
    pub area: Area,
    /// Share of the series budget.
    pub series: Series,
}

impl Family {
    /// The family name in OpenMetrics descriptors (counters without `_total`).
    pub fn descriptor_name(&self) -> &'static str {
        match self.kind {
            Kind::Counter => self.name.strip_suffix("_total").unwrap_or(self.name),
            Kind::Gauge => self.name,
        }
    }
}

const fn series(
    per_instance: u32,
    per_instance_port: u32,
    per_host: u32,
    grows_with: &'static str,
) -> Series {
    Series {
        per_instance,
        per_instance_port,
        per_host,
        grows_with,
    }
}

// ---- Pinning ----

/// `pinflow_instance_info`.
pub const INSTANCE_INFO: Family = Family {
    name: "pinflow_instance_info",
    kind: Kind::Gauge,
    labels: &[
        "domain",
        "uuid",
        "name",
        "project",
        "project_id",
        "user_id",
        "flavor",
    ],
    help: "Running libvirt domain with its Nova metadata (empty when absent); join on domain",
    notes: "`name`, `project`, `project_id`, `user_id` and `flavor` come from the domain's Nova metadata and are empty for domains Nova did not create.",
    example: "(pinflow_domain_drifted_vcpus > 0) * on (instance, domain) group_left (name, project) pinflow_instance_info",
    presence: Presence::Domain,
    area: Area::Pinning,
    series: series(1, 0, 0, "running domains"),
};

/// `pinflow_domain_drifted_vcpus`.
pub const DOMAIN_DRIFTED_VCPUS: Family = Family {
    name: "pinflow_domain_drifted_vcpus",
    kind: Kind::Gauge,
    labels: &["domain", "check"],
    help: "vCPUs of the domain currently drifting, per pinning check",
    notes: "`check`: `affinity`, `cpuset`, `cgroup`, `placement`, `overlap`, `sched_policy`, `numa`, `stolen` (see the README's pinning checks). Every check of every domain is present, 0 when healthy. Only vCPUs count: drifts of I/O threads, emulator threads and the domain's memory are in `pinflow_vcpu_pinning_drift` alone.",
    example: "count by (check) (sum by (instance, check) (pinflow_domain_drifted_vcpus) > 0)",
    presence: Presence::Domain,
    area: Area::Pinning,
    series: series(
        crate::model::pinning::Check::ALL.len() as u32,
        0,
        0,
        "running domains × 8 checks",
    ),
};

/// `pinflow_domain_vcpus`.
pub const DOMAIN_VCPUS: Family = Family {
    name: "pinflow_domain_vcpus",
    kind: Kind::Gauge,
    labels: &["domain", "kind"],
    help: "vCPUs of the domain per pin kind: dedicated (<vcpupin> alone on its pCPU), shared (<vcpupin> to a pCPU set or a pCPU shared with other vCPUs), floating (<vcpu cpuset>), none; only kinds the domain has",
    notes: "`kind`: `dedicated`, `shared`, `floating`, `none`. Only the kinds the domain has are present (usually one).",
    example: "sum by (kind) (pinflow_domain_vcpus)",
    presence: Presence::Domain,
    area: Area::Pinning,
    series: series(1, 0, 0, "running domains × pin kinds they use (usually 1)"),
};

/// `pinflow_vcpu_pinning_drift`.
pub const VCPU_PINNING_DRIFT: Family = Family {
    name: "pinflow_vcpu_pinning_drift",
    kind: Kind::Gauge,
    labels: &["domain", "vcpu", "check", "expected", "actual"],
    help: "Present (1) only while this vCPU (or I/O thread, the emulator threads, the domain's memory) drifts for this check",
    notes: "`vcpu` is the vCPU number, `iothreadN` (an I/O thread with its own `<iothreadpin>` or `<iothreadsched>`), `emulator`, or `memory` (`numa` only); `expected` and `actual` are CPU lists, for `cgroup` the expected and actual cgroup, for `overlap` the pCPUs and the domain that owns them, for `sched_policy` the policy (`fifo:1`, `batch`, `other`), for `numa` host NUMA node lists (`mems 0-1` when the domain cgroup's `cpuset.mems` is wider than a strict nodeset); for `stolen` the dedicated pCPU and the intruder class that took the most of it in the window (`other_vcpu`, `other_emulator`, `own_emulator`, `kernel`, `host`; who exactly: `/api/v1/intrusions`).",
    example: "pinflow_vcpu_pinning_drift{check=\"affinity\"} * on (instance, domain) group_left (name) pinflow_instance_info",
    presence: Presence::Finding,
    area: Area::Pinning,
    series: series(
        0,
        0,
        0,
        "drifting vCPUs, I/O threads × checks (at most 8 each), plus 1 emulator and 1 memory row per domain and check",
    ),
};

/// `pinflow_vcpu_offpin_seconds_total`.
pub const VCPU_OFFPIN_SECONDS: Family = Family {
    name: "pinflow_vcpu_offpin_seconds_total",
    kind: Kind::Counter,
    labels: &["domain"],
    help: "CPU time the domain's vCPU threads ran on pCPUs outside their pin sets (eBPF sched_switch)",
    notes: "",
    example: "sum by (instance, domain) (rate(pinflow_vcpu_offpin_seconds_total[5m])) > 0",
    presence: Presence::SchedBpf,
    area: Area::Pinning,
    series: series(1, 0, 0, "running domains"),
};

/// `pinflow_pcpu_stolen_seconds_total`.
pub const PCPU_STOLEN_SECONDS: Family = Family {
    name: "pinflow_pcpu_stolen_seconds_total",
    kind: Kind::Counter,
    labels: &["domain", "cpu", "intruder"],
    help: "Time other tasks ran on a pCPU dedicated to one of the domain's vCPUs (pinned there alone), by intruder class (eBPF sched_switch)",
    notes: "`intruder`: `other_vcpu` (a vCPU thread other than the owner), `other_emulator` (another instance's emulator, I/O or vhost thread), `own_emulator` (the owner's own non-vCPU threads), `kernel` (a host kernel thread), `host` (any other host task). Idle and the owner vCPU are never counted. Only classes seen on the pCPU since it was dedicated to the domain have a series; who exactly: `/api/v1/intrusions`.",
    example: "topk(10, sum by (instance, domain, intruder) (rate(pinflow_pcpu_stolen_seconds_total[5m])))",
    presence: Presence::DedicatedCpu,
    area: Area::Pinning,
    series: series(
        0,
        0,
        0,
        "dedicated vCPUs (one pCPU each) × intruder classes seen: ≤ 5 per dedicated vCPU, typically 1–2 (`kernel`, `host`) on a host without `isolcpus`/`nohz_full`; outside the per-instance line because it grows with the instance's dedicated vCPUs, not with instances",
    ),
};

/// `pinflow_vcpu_migrations_total`.
pub const VCPU_MIGRATIONS: Family = Family {
    name: "pinflow_vcpu_migrations_total",
    kind: Kind::Counter,
    labels: &["domain"],
    help: "Migrations of the domain's vCPU threads between pCPUs (eBPF sched_switch)",
    notes: "",
    example: "topk(10, rate(pinflow_vcpu_migrations_total[5m]))",
    presence: Presence::SchedBpf,
    area: Area::Pinning,
    series: series(1, 0, 0, "running domains"),
};

/// `pinflow_vcpu_wait_seconds_total`.
pub const VCPU_WAIT_SECONDS: Family = Family {
    name: "pinflow_vcpu_wait_seconds_total",
    kind: Kind::Counter,
    labels: &["domain"],
    help: "Time the domain's vCPU threads waited runnable for a pCPU (schedstat)",
    notes: "A rate near 1 per vCPU means the vCPU waits for its pCPU all the time (like steal time, seen from the host). Read at full passes: every `interval_seconds` in polling mode, every `reconcile_seconds` (60) in events mode (use a `rate` window of a few minutes).",
    example: "topk(10, rate(pinflow_vcpu_wait_seconds_total[5m]))",
    presence: Presence::Domain,
    area: Area::Pinning,
    series: series(1, 0, 0, "running domains"),
};

/// `pinflow_pcpu_pinned_vcpus`.
pub const PCPU_PINNED_VCPUS: Family = Family {
    name: "pinflow_pcpu_pinned_vcpus",
    kind: Kind::Gauge,
    labels: &["cpu"],
    help: "vCPUs of all domains pinned to this host CPU with <vcpupin> (floating <vcpu cpuset> vCPUs are not counted; CPUs without any are omitted)",
    notes: "More than 1 on a pCPU means vCPUs share it: expected for Nova's shared policy, a fault for dedicated pCPUs (the `overlap` check names the domains).",
    example: "pinflow_pcpu_pinned_vcpus > 1",
    presence: Presence::PinnedCpu,
    area: Area::Pinning,
    series: series(
        0,
        0,
        0,
        "host CPUs with pinned vCPUs (at most the host's CPUs)",
    ),
};

/// `pinflow_node_hugepages`.
pub const NODE_HUGEPAGES: Family = Family {
    name: "pinflow_node_hugepages",
    kind: Kind::Gauge,
    labels: &["node", "size"],
    help: "Huge pages in the host NUMA node's pool of this page size (nr_hugepages)",
    notes: "`node` is the host NUMA node number, `size` the page size in bytes (`2097152`, `1073741824`). Read with the domains' NUMA placement: at full passes, at most every `reconcile_seconds`. Guest memory backed by huge pages shows here, not in the `numa` check's `memory.numa_stat`.",
    example: "pinflow_node_hugepages - pinflow_node_hugepages_free",
    presence: Presence::NumaNode,
    area: Area::Pinning,
    series: series(
        0,
        0,
        4,
        "host NUMA nodes × huge-page sizes (2 × 2 on the reference host)",
    ),
};

/// `pinflow_node_hugepages_free`.
pub const NODE_HUGEPAGES_FREE: Family = Family {
    name: "pinflow_node_hugepages_free",
    kind: Kind::Gauge,
    labels: &["node", "size"],
    help: "Free huge pages in the host NUMA node's pool of this page size (free_hugepages)",
    notes: "Labels as `pinflow_node_hugepages`.",
    example: "pinflow_node_hugepages_free{size=\"1073741824\"} / pinflow_node_hugepages{size=\"1073741824\"} < 0.1",
    presence: Presence::NumaNode,
    area: Area::Pinning,
    series: series(
        0,
        0,
        4,
        "host NUMA nodes × huge-page sizes (2 × 2 on the reference host)",
    ),
};

/// `pinflow_host_cpu_config_problem`.
pub const HOST_CPU_CONFIG_PROBLEM: Family = Family {
    name: "pinflow_host_cpu_config_problem",
    kind: Kind::Gauge,
    labels: &["problem"],
    help: "Findings of a host CPU configuration check (0 when fine): Nova's cpu_dedicated_set/cpu_shared_set against each other and the instances' pins, the kernel's isolation of dedicated pCPUs",
    notes: "`problem`: `dedicated_shared_overlap`, `pinned_outside_dedicated_set` (pins copied from another host by a live migration), `floating_on_dedicated`, and, when `[host_cpu] require_isolation` asks, `dedicated_not_isolated_from_scheduler` / `dedicated_not_isolated_from_irqs`. A check whose inputs are unknown (no `--nova-conf`) has no series: absent is not fine. `/api/v1/host_cpu` names the instances.",
    example: "pinflow_host_cpu_config_problem > 0",
    presence: Presence::HostCpuChecks,
    area: Area::Pinning,
    series: series(
        0,
        0,
        0,
        "host CPU checks made (at most 5; none without --nova-conf and an isolation policy)",
    ),
};

// ---- Flows ----

/// `pinflow_ovs_flows`.
pub const OVS_FLOWS: Family = Family {
    name: "pinflow_ovs_flows",
    kind: Kind::Gauge,
    labels: &["bridge", "table"],
    help: "OpenFlow flows per bridge and table (mirrored with the OVS flow monitor)",
    notes: "`table` is the OpenFlow table number.",
    example: "sum by (instance, bridge) (pinflow_ovs_flows)",
    presence: Presence::OvsBridge,
    area: Area::Flows,
    series: series(
        0,
        0,
        24,
        "bridges × non-empty tables (at most 255 per bridge)",
    ),
};

/// `pinflow_ovs_dirty_flows`.
pub const OVS_DIRTY_FLOWS: Family = Family {
    name: "pinflow_ovs_dirty_flows",
    kind: Kind::Gauge,
    labels: &["bridge", "rule"],
    help: "Dirty flows per bridge and rule (every enabled rule, 0 when clean)",
    notes: "`rule`: `output_to_missing_port`, `in_port_missing`, `goto_empty_table`, `stale_cookie`, `unreachable`, `ambiguous_priority`, `dead_vlan`, and the names of the configured user rules. Every enabled rule of every bridge is present, 0 when clean.",
    example: "sum by (instance, bridge, rule) (pinflow_ovs_dirty_flows) > 0",
    presence: Presence::OvsBridge,
    area: Area::Flows,
    series: series(0, 0, 21, "bridges × enabled rules (built-in and user)"),
};

/// `pinflow_ovs_dirty_flow_info`.
pub const OVS_DIRTY_FLOW_INFO: Family = Family {
    name: "pinflow_ovs_dirty_flow_info",
    kind: Kind::Gauge,
    labels: &[
        "bridge", "rule", "table", "cookie", "flow", "severity", "port", "domain",
    ],
    help: "A dirty flow in ovs-ofctl form with its rule's severity and the port and instance it refers to (capped; see pinflow_ovs_dirty_flow_info_dropped)",
    notes: "`flow` is the flow as `ovs-ofctl -O OpenFlow13 dump-flows --no-stats` prints it (`port NAME tag=4095` for `dead_vlan`); `table` and `cookie` are empty for port findings; `severity` as in `pinflow_ovs_dirty_flow_rule_info`; `port` is the OVS port the flow refers to (its `in_port`, else its first output, else Neutron's port register) and `domain` that port's libvirt domain (empty when none).",
    example: "pinflow_ovs_dirty_flow_info{bridge=\"br-int\", severity=\"broken\"}",
    presence: Presence::Finding,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "dirty flows, capped by `[export] dirty_flow_info_limit` (default 20 per host)",
    ),
};

/// `pinflow_ovs_dirty_flow_info_dropped`.
pub const OVS_DIRTY_FLOW_INFO_DROPPED: Family = Family {
    name: "pinflow_ovs_dirty_flow_info_dropped",
    kind: Kind::Gauge,
    labels: &[],
    help: "Dirty flows not listed in pinflow_ovs_dirty_flow_info because of the per-host cap",
    notes: "",
    example: "pinflow_ovs_dirty_flow_info_dropped > 0",
    presence: Presence::Always,
    area: Area::Flows,
    series: series(0, 0, 1, "nothing (one series)"),
};

/// `pinflow_ovs_dirty_flow_rule_info`.
pub const OVS_DIRTY_FLOW_RULE_INFO: Family = Family {
    name: "pinflow_ovs_dirty_flow_rule_info",
    kind: Kind::Gauge,
    labels: &["rule", "severity"],
    help: "Every enabled dirty-flow rule with its severity (broken: the flow cannot do what it says; suspect: a heuristic); join on rule",
    notes: "`severity`: `broken` (the flow cannot do what it says: `output_to_missing_port`, `in_port_missing`, `goto_empty_table`, `dead_vlan`, and user rules by default) or `suspect` (heuristics: `unreachable`, `ambiguous_priority`, `stale_cookie`, and user rules with `severity = \"suspect\"`).",
    example: "pinflow_ovs_dirty_flows * on (instance, rule) group_left (severity) pinflow_ovs_dirty_flow_rule_info",
    presence: Presence::Always,
    area: Area::Flows,
    series: series(0, 0, 7, "enabled rules (built-in and user)"),
};

/// `pinflow_ovs_port_info`.
pub const OVS_PORT_INFO: Family = Family {
    name: "pinflow_ovs_port_info",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "ofport", "iface_id", "domain"],
    help: "OVS port with its ofport, Neutron port id and libvirt domain (empty when not an instance's)",
    notes: "`iface_id` is Neutron's port id (`external_ids:iface-id`); `domain` the libvirt domain whose tap it is (empty for other ports).",
    example: "pinflow_ovs_port_info * on (instance, domain) group_left (name, project) pinflow_instance_info",
    presence: Presence::OvsBridge,
    area: Area::Flows,
    series: series(
        0,
        1,
        9,
        "OVS ports: instance taps, bridge-internal, patch and uplink ports, and one per VXLAN/GRE peer on br-tun",
    ),
};

// ---- Kernel datapath ----

/// `pinflow_ovs_datapath_flows`.
pub const DATAPATH_FLOWS: Family = Family {
    name: "pinflow_ovs_datapath_flows",
    kind: Kind::Gauge,
    labels: &["datapath"],
    help: "Megaflows installed in the OVS kernel datapath",
    notes: "",
    example: "max by (instance) (pinflow_ovs_datapath_flows)",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 1, "kernel datapaths (usually one, `ovs-system`)"),
};

/// `pinflow_ovs_datapath_lookups_total`.
pub const DATAPATH_LOOKUPS: Family = Family {
    name: "pinflow_ovs_datapath_lookups_total",
    kind: Kind::Counter,
    labels: &["datapath", "result"],
    help: "Kernel datapath lookups: hit a megaflow, missed (upcall), lost (upcall dropped)",
    notes: "`result`: `hit`, `missed` (each miss is an upcall to ovs-vswitchd), `lost` (upcalls the kernel dropped).",
    example: "sum by (instance) (rate(pinflow_ovs_datapath_lookups_total{result=\"lost\"}[5m])) > 0",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 3, "kernel datapaths × 3 results"),
};

/// `pinflow_ovs_datapath_masks`.
pub const DATAPATH_MASKS: Family = Family {
    name: "pinflow_ovs_datapath_masks",
    kind: Kind::Gauge,
    labels: &["datapath"],
    help: "Masks (classifier subtables) of the kernel datapath; each lookup may probe all of them",
    notes: "",
    example: "pinflow_ovs_datapath_masks > 50",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 1, "kernel datapaths"),
};

/// `pinflow_ovs_datapath_mask_hits_total`.
pub const DATAPATH_MASK_HITS: Family = Family {
    name: "pinflow_ovs_datapath_mask_hits_total",
    kind: Kind::Counter,
    labels: &["datapath"],
    help: "Masks probed by lookups that hit (mask_hits / hits = masks probed per packet)",
    notes: "",
    example: "rate(pinflow_ovs_datapath_mask_hits_total[5m]) / on (instance, datapath) rate(pinflow_ovs_datapath_lookups_total{result=\"hit\"}[5m])",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 1, "kernel datapaths"),
};

/// `pinflow_ovs_datapath_mask_cache_hits_total`.
pub const DATAPATH_MASK_CACHE_HITS: Family = Family {
    name: "pinflow_ovs_datapath_mask_cache_hits_total",
    kind: Kind::Counter,
    labels: &["datapath"],
    help: "Lookups answered by the per-CPU mask cache",
    notes: "",
    example: "rate(pinflow_ovs_datapath_mask_cache_hits_total[5m]) / on (instance, datapath) rate(pinflow_ovs_datapath_lookups_total{result=\"hit\"}[5m])",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 1, "kernel datapaths"),
};

/// `pinflow_ovs_datapath_drop_flows`.
pub const DATAPATH_DROP_FLOWS: Family = Family {
    name: "pinflow_ovs_datapath_drop_flows",
    kind: Kind::Gauge,
    labels: &["datapath"],
    help: "Megaflows whose action is drop and that carried packets (last megaflow dump)",
    notes: "",
    example: "pinflow_ovs_datapath_drop_flows > 0",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 1, "kernel datapaths"),
};

/// `pinflow_ovs_datapath_flow_limit`.
pub const DATAPATH_FLOW_LIMIT: Family = Family {
    name: "pinflow_ovs_datapath_flow_limit",
    kind: Kind::Gauge,
    labels: &["datapath"],
    help: "Megaflow limit the flow_limit check compares the flow count against (ovs-vswitchd's flow-limit)",
    notes: "",
    example: "pinflow_ovs_datapath_flows / pinflow_ovs_datapath_flow_limit > 0.8",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 1, "kernel datapaths"),
};

/// `pinflow_ovs_datapath_unhealthy`.
pub const DATAPATH_UNHEALTHY: Family = Family {
    name: "pinflow_ovs_datapath_unhealthy",
    kind: Kind::Gauge,
    labels: &["datapath", "check"],
    help: "Datapath health per check (0 = healthy): flow_limit (1 near the limit), lost_upcalls (lost since the last poll), upcall_storm (ports above the upcall rate), drop_local_mac (drop megaflows aimed at local instances)",
    notes: "`check`: `flow_limit`, `lost_upcalls`, `upcall_storm`, `drop_local_mac`; every check of every datapath is present, 0 when healthy.",
    example: "pinflow_ovs_datapath_unhealthy > 0",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 0, 4, "kernel datapaths × 4 checks"),
};

/// `pinflow_ovs_vport_info`.
pub const VPORT_INFO: Family = Family {
    name: "pinflow_ovs_vport_info",
    kind: Kind::Gauge,
    labels: &["datapath", "port", "port_no", "type", "ifindex", "domain"],
    help: "Datapath port with its number, type, ifindex (rtnetlink) and local instance (libvirt tap); join on port",
    notes: "`type` is the vport type (`netdev`, `internal`, `vxlan`, `geneve`, `gre`); `domain` the libvirt domain whose tap it is (empty for other ports).",
    example: "pinflow_ovs_vport_info{domain!=\"\"} * on (instance, domain) group_left (name) pinflow_instance_info",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(
        0,
        1,
        6,
        "datapath ports (instance taps, internal ports, tunnel and uplink ports)",
    ),
};

/// `pinflow_ovs_vport_dropped_total`.
pub const VPORT_DROPPED: Family = Family {
    name: "pinflow_ovs_vport_dropped_total",
    kind: Kind::Counter,
    labels: &["datapath", "port"],
    help: "Packets the kernel datapath dropped or failed on the port (vport rx+tx dropped and errors)",
    notes: "",
    example: "sum by (instance, port) (rate(pinflow_ovs_vport_dropped_total[5m])) > 0",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(0, 1, 6, "datapath ports"),
};

/// `pinflow_ovs_upcalls_total`.
pub const UPCALLS: Family = Family {
    name: "pinflow_ovs_upcalls_total",
    kind: Kind::Counter,
    labels: &["datapath", "port"],
    help: "Packets the kernel datapath sent to userspace (megaflow misses and userspace actions), per ingress port",
    notes: "",
    example: "topk(5, rate(pinflow_ovs_upcalls_total[1m]))",
    presence: Presence::KernelDatapath,
    area: Area::Datapath,
    series: series(
        0,
        1,
        6,
        "datapath ports (kernel per-vport stats on Linux ≥ 6.2, else eBPF counts of ports that sent upcalls)",
    ),
};

/// `pinflow_ovs_datapath_actions_total`.
pub const DATAPATH_ACTIONS: Family = Family {
    name: "pinflow_ovs_datapath_actions_total",
    kind: Kind::Counter,
    labels: &["action"],
    help: "Actions the kernel datapath executed, per OVS_ACTION_ATTR type (eBPF; empty action lists, i.e. drops, are not actions)",
    notes: "`action` is the lower-case `OVS_ACTION_ATTR_*` name (`output`, `userspace`, `set`, `push_vlan`, `ct`, `recirc`, …).",
    example: "sum by (action) (rate(pinflow_ovs_datapath_actions_total[5m]))",
    presence: Presence::DatapathBpf,
    area: Area::Datapath,
    series: series(
        0,
        0,
        6,
        "executed action types (at most ~30 OVS_ACTION_ATTR_* kinds)",
    ),
};

/// `pinflow_ovs_drops_total`.
pub const DROPS: Family = Family {
    name: "pinflow_ovs_drops_total",
    kind: Kind::Counter,
    labels: &["port", "reason"],
    help: "Packets the OVS kernel datapath dropped, per ingress port and drop reason (eBPF)",
    notes: "`reason` is the lower-case `OVS_DROP_*` reason (`last_action`, `action_error`, `explicit`, …).",
    example: "sum by (instance, reason) (rate(pinflow_ovs_drops_total[5m])) > 0",
    presence: Presence::DropReasons,
    area: Area::Datapath,
    series: series(
        0,
        0,
        0,
        "ports × OVS drop reasons seen (bounded by the eBPF map size)",
    ),
};

// ---- Self ----

/// `pinflow_pinning_passes_total`.
pub const PINNING_PASSES: Family = Family {
    name: "pinflow_pinning_passes_total",
    kind: Kind::Counter,
    labels: &["kind"],
    help: "Passes of the pinning pipeline over procfs/cgroupfs, by kind (full: every thread of every domain; targeted: only the threads or domains a kernel event or cgroup inotify named)",
    notes: "`kind`: `full`, `targeted`. In events mode (`[pinning] events`, the default) full passes happen on libvirt changes and every `reconcile_seconds`; in polling mode every `interval_seconds`. `/api/v1/pinning` (`passes`) and the `procfs` source's detail in `/api/v1/sources` and `pinflow check` say which mode runs and why.",
    example: "rate(pinflow_pinning_passes_total{kind=\"full\"}[5m])",
    presence: Presence::Always,
    area: Area::SelfMetrics,
    series: series(0, 0, 2, "nothing (full, targeted)"),
};

/// `pinflow_pinning_thread_reads_total`.
pub const PINNING_THREAD_READS: Family = Family {
    name: "pinflow_pinning_thread_reads_total",
    kind: Kind::Counter,
    labels: &[],
    help: "Thread states read from procfs/cgroupfs by the pinning pipeline (each: stat, the affinity, cgroup, a vCPU thread's schedstat; a cgroup's cpuset file once per pass)",
    notes: "Grows with vCPU threads only in polling mode and at full passes; idle in events mode otherwise.",
    example: "rate(pinflow_pinning_thread_reads_total[5m])",
    presence: Presence::Always,
    area: Area::SelfMetrics,
    series: series(0, 0, 1, "nothing (one series)"),
};

/// `pinflow_source_up`.
pub const SOURCE_UP: Family = Family {
    name: "pinflow_source_up",
    kind: Kind::Gauge,
    labels: &["source"],
    help: "Whether the source delivered data on its last attempt",
    notes: "`source`: `libvirt`, `procfs`, `sched_bpf`, `host_cpu`, `ovsdb`, `openflow`, `ovs_datapath`, `ovs_datapath_bpf`, `ovs_unixctl` (ovs-vswitchd's control socket), `ovsdb_server_unixctl` (ovsdb-server's), `conntrack` (off unless `[conntrack] enabled`: no series then). `pinflow check` on the host says why a source is down. Also 0 while a polled source's data is stale (its collection hangs: `/api/v1/sources` says `wedged: collection running for …`; see `pinflow_source_last_success_timestamp_seconds`).",
    example: "pinflow_source_up == 0",
    presence: Presence::Always,
    area: Area::SelfMetrics,
    series: series(0, 0, 10, "sources (10)"),
};

/// `pinflow_source_errors_total`.
pub const SOURCE_ERRORS: Family = Family {
    name: "pinflow_source_errors_total",
    kind: Kind::Counter,
    labels: &["source"],
    help: "Errors of the source (bad input, I/O, protocol) since start",
    notes: "",
    example: "increase(pinflow_source_errors_total[1h]) > 0",
    presence: Presence::Always,
    area: Area::SelfMetrics,
    series: series(0, 0, 10, "sources (10)"),
};

/// `pinflow_collect_duration_seconds`.
pub const COLLECT_DURATION: Family = Family {
    name: "pinflow_collect_duration_seconds",
    kind: Kind::Gauge,
    labels: &["source"],
    help: "Duration of the source's last collection",
    notes: "",
    example: "max by (source) (max_over_time(pinflow_collect_duration_seconds[1h]))",
    presence: Presence::Always,
    area: Area::SelfMetrics,
    series: series(0, 0, 10, "sources (10)"),
};

/// `pinflow_source_last_success_timestamp_seconds`.
pub const SOURCE_LAST_SUCCESS: Family = Family {
    name: "pinflow_source_last_success_timestamp_seconds",
    kind: Kind::Gauge,
    labels: &["source"],
    help: "Unix time of the source's last successful collection",
    notes: "No series until the source's first success. Polled sources (`libvirt`, `procfs`, `sched_bpf` every `pinning.interval_seconds`, `host_cpu` every `host_cpu.reread_seconds`, `ovs_datapath`, `ovs_unixctl` and `ovsdb_server_unixctl` every `ovs_vswitchd.interval_seconds`) report `pinflow_source_up` 0 and fail `/healthz` once their data is older than 3 intervals plus 1 s (or 3 of their last collections, if longer): a wedged collector is down, not silently frozen. Event-driven sources (`ovsdb`, `openflow`) update it on every change they publish.",
    example: "time() - pinflow_source_last_success_timestamp_seconds{source=\"procfs\"} > 60",
    presence: Presence::Always,
    area: Area::SelfMetrics,
    series: series(0, 0, 10, "sources (10)"),
};

/// `pinflow_build_info`.
pub const BUILD_INFO: Family = Family {
    name: "pinflow_build_info",
    kind: Kind::Gauge,
    labels: &["version", "revision", "rustc", "kernel"],
    help: "pinflow version, git revision and compiler, and the running kernel",
    notes: "`revision` is the git revision and `rustc` the compiler version of the build; `kernel` the running kernel release.",
    example: "count by (version, revision, kernel) (pinflow_build_info)",
    presence: Presence::Always,
    area: Area::SelfMetrics,
    series: series(0, 0, 1, "nothing (one series)"),
};

/// `pinflow_bpf_run_seconds_total`.
pub const BPF_RUN_SECONDS: Family = Family {
    name: "pinflow_bpf_run_seconds_total",
    kind: Kind::Counter,
    labels: &["program"],
    help: "CPU time spent in the eBPF program (kernel BPF stats)",
    notes: "`program` is the eBPF program's name. Kernel BPF statistics cost ~45 ns per run of every BPF program on the host while enabled.",
    example: "sum by (instance) (rate(pinflow_bpf_run_seconds_total[5m]))",
    presence: Presence::BpfStats,
    area: Area::SelfMetrics,
    series: series(0, 0, 0, "loaded eBPF programs (at most 4)"),
};

/// `pinflow_bpf_runs_total`.
pub const BPF_RUNS: Family = Family {
    name: "pinflow_bpf_runs_total",
    kind: Kind::Counter,
    labels: &["program"],
    help: "Runs of the eBPF program (kernel BPF stats)",
    notes: "",
    example: "rate(pinflow_bpf_run_seconds_total[5m]) / rate(pinflow_bpf_runs_total[5m])",
    presence: Presence::BpfStats,
    area: Area::SelfMetrics,
    series: series(0, 0, 0, "loaded eBPF programs (at most 4)"),
};

// ---- ovs-vswitchd and the OVS processes ----

/// `pinflow_ovs_coverage_total`.
pub const OVS_COVERAGE: Family = Family {
    name: "pinflow_ovs_coverage_total",
    kind: Kind::Counter,
    labels: &["event"],
    help: "ovs-vswitchd coverage counter (unixctl coverage/show), a fixed subset of events",
    notes: "`event`: `upcall_flow_limit_hit` (datapath flows reached the dynamic flow limit), `upcall_flow_limit_kill` (flows deleted at twice the limit), `dpif_flow_put`, `dpif_flow_put_error`, `dpif_execute_error`, `netlink_overflow` (netlink messages lost to buffer overflow), `ofproto_recv_openflow`, `packet_in_overflow`, `xlate_actions_oversize`, `xlate_actions_too_many_output`, `rconn_overflow`, `rconn_discarded`, `bridge_reconfigure`, `txn_error`. Every event is present; 0 while ovs-vswitchd never hit it (or this OVS version does not have it). Resets when ovs-vswitchd restarts. Polled every `[ovs_vswitchd] interval_seconds` (15 s).",
    example: "increase(pinflow_ovs_coverage_total{event=\"upcall_flow_limit_hit\"}[10m]) > 0",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 14, "nothing (14 events)"),
};

/// `pinflow_ovs_vswitchd_objects`.
pub const VSWITCHD_OBJECTS: Family = Family {
    name: "pinflow_ovs_vswitchd_objects",
    kind: Kind::Gauge,
    labels: &["kind"],
    help: "Objects ovs-vswitchd holds in memory, per kind (unixctl memory/show)",
    notes: "`kind`: `rules` (OpenFlow rules of all bridges), `ports`, `udpif_keys` (datapath flow keys the revalidators track), `ofconns` (OpenFlow connections), `idl_cells` (OVSDB replica cells). Every kind is present, 0 when ovs-vswitchd does not list it.",
    example: "pinflow_ovs_vswitchd_objects{kind=\"udpif_keys\"}",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 5, "nothing (5 kinds)"),
};

/// `pinflow_ovs_vswitchd_threads`.
pub const VSWITCHD_THREADS: Family = Family {
    name: "pinflow_ovs_vswitchd_threads",
    kind: Kind::Gauge,
    labels: &["kind"],
    help: "ovs-vswitchd upcall handler and revalidator threads (unixctl memory/show)",
    notes: "`kind`: `handler`, `revalidator`.",
    example: "pinflow_ovs_vswitchd_threads{kind=\"revalidator\"}",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 2, "nothing (2 kinds)"),
};

/// `pinflow_conntrack_entries`.
pub const CONNTRACK_ENTRIES: Family = Family {
    name: "pinflow_conntrack_entries",
    kind: Kind::Gauge,
    labels: &[],
    help: "Entries in the kernel's connection tracking table (nf_conntrack_count of pinflow's network namespace)",
    notes: "Read from procfs at every conntrack poll. Headroom: `pinflow_conntrack_entries_limit - pinflow_conntrack_entries`; at the limit the kernel drops packets of new connections (`nf_conntrack: table full, dropping packet`).",
    example: "pinflow_conntrack_entries / pinflow_conntrack_entries_limit > 0.8",
    presence: Presence::Conntrack,
    area: Area::Datapath,
    series: series(0, 0, 1, "nothing"),
};

/// `pinflow_conntrack_entries_limit`.
pub const CONNTRACK_LIMIT: Family = Family {
    name: "pinflow_conntrack_entries_limit",
    kind: Kind::Gauge,
    labels: &[],
    help: "Most entries the connection tracking table may hold (nf_conntrack_max)",
    notes: "",
    example: "pinflow_conntrack_entries_limit - pinflow_conntrack_entries < 10000",
    presence: Presence::Conntrack,
    area: Area::Datapath,
    series: series(0, 0, 1, "nothing"),
};

/// `pinflow_conntrack_zone_entries`.
pub const CONNTRACK_ZONE_ENTRIES: Family = Family {
    name: "pinflow_conntrack_zone_entries",
    kind: Kind::Gauge,
    labels: &["ct_zone", "domain"],
    help: "Connection tracking entries per conntrack zone that OVS flows load for a port (Neutron's openvswitch firewall: one zone per network on the host), ct_zone=\"other\" for every other zone",
    notes: "`ct_zone`: the conntrack zone number (not `zone`, which deployments set to the availability zone), present (0 when empty) for every zone a flow loads into `reg6` (Neutron's `REG_NET`) for a port matched by `in_port` or loaded into `reg5`; `other` sums the host's default zone 0 and the zones no flow loads. `domain`: the instance when every port of the zone that belongs to an instance belongs to the same one, empty when the network is shared by several instances on the host (`/api/v1/conntrack` lists each zone's ports and instances) or has none. Counted from one ctnetlink dump per poll (`[conntrack] interval_seconds`, longer while a dump takes more than 1 % of it).",
    example: "topk(5, pinflow_conntrack_zone_entries{ct_zone!=\"other\"}) * on (instance, domain) group_left (name) pinflow_instance_info",
    presence: Presence::Conntrack,
    area: Area::Datapath,
    series: series(
        0,
        0,
        1,
        "conntrack zones the flows load (Neutron networks with ports on the host, at most the instance ports), plus `other`",
    ),
};

/// `pinflow_ovs_upcall_flows`.
pub const UPCALL_FLOWS: Family = Family {
    name: "pinflow_ovs_upcall_flows",
    kind: Kind::Gauge,
    labels: &["datapath"],
    help: "Datapath flows as ovs-vswitchd's revalidators last counted them (unixctl upcall/show; also for the userspace datapath)",
    notes: "`datapath` as the kernel names it (`ovs-system`), `ovs-netdev` for the userspace datapath.",
    example: "pinflow_ovs_upcall_flows / pinflow_ovs_upcall_flow_limit > 0.8",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 1, "datapaths of ovs-vswitchd"),
};

/// `pinflow_ovs_upcall_flow_limit`.
pub const UPCALL_FLOW_LIMIT: Family = Family {
    name: "pinflow_ovs_upcall_flow_limit",
    kind: Kind::Gauge,
    labels: &["datapath"],
    help: "Flow limit ovs-vswitchd has in force (its dynamic limit, at most other_config:flow-limit; unixctl upcall/show)",
    notes: "ovs-vswitchd lowers the limit when revalidation takes longer than its max-revalidator time; the datapath `flow_limit` check compares against this value while it is known.",
    example: "pinflow_ovs_upcall_flow_limit < 200000",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 1, "datapaths of ovs-vswitchd"),
};

/// `pinflow_ovs_upcall_dump_duration_seconds`.
pub const UPCALL_DUMP_DURATION: Family = Family {
    name: "pinflow_ovs_upcall_dump_duration_seconds",
    kind: Kind::Gauge,
    labels: &["datapath"],
    help: "Duration of ovs-vswitchd's last revalidator flow dump (unixctl upcall/show)",
    notes: "Above ovs-vswitchd's `max-revalidator` (500 ms by default) it lowers the dynamic flow limit.",
    example: "pinflow_ovs_upcall_dump_duration_seconds > 0.5",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 1, "datapaths of ovs-vswitchd"),
};

/// `pinflow_ovs_process_up`.
pub const OVS_PROCESS_UP: Family = Family {
    name: "pinflow_ovs_process_up",
    kind: Kind::Gauge,
    labels: &["process"],
    help: "Whether the OVS daemon's pid file names a running process of that daemon",
    notes: "`process`: `ovs-vswitchd`, `ovsdb-server` (pid files `<ovs-run-dir>/<process>.pid`). Both are present while the datapath collector and `[ovs_vswitchd]` are on.",
    example: "pinflow_ovs_process_up == 0",
    presence: Presence::Always,
    area: Area::Vswitchd,
    series: series(0, 0, 2, "nothing (2 processes)"),
};

/// `pinflow_ovs_process_restarts_total`.
pub const OVS_PROCESS_RESTARTS: Family = Family {
    name: "pinflow_ovs_process_restarts_total",
    kind: Kind::Counter,
    labels: &["process"],
    help: "New runs of the OVS daemon pinflow has seen (pid or start time changed) since pinflow started",
    notes: "A restart shorter than `[ovs_vswitchd] interval_seconds` is still seen (the pid changes); two within one interval count once.",
    example: "increase(pinflow_ovs_process_restarts_total[1h]) > 0",
    presence: Presence::Always,
    area: Area::Vswitchd,
    series: series(0, 0, 2, "nothing (2 processes)"),
};

/// `pinflow_ovs_process_resident_memory_bytes`.
pub const OVS_PROCESS_RSS: Family = Family {
    name: "pinflow_ovs_process_resident_memory_bytes",
    kind: Kind::Gauge,
    labels: &["process"],
    help: "Resident memory of the OVS daemon (procfs VmRSS)",
    notes: "",
    example: "pinflow_ovs_process_resident_memory_bytes{process=\"ovs-vswitchd\"} > 2e9",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 2, "nothing (2 processes)"),
};

/// `pinflow_ovs_process_cpu_seconds_total`.
pub const OVS_PROCESS_CPU: Family = Family {
    name: "pinflow_ovs_process_cpu_seconds_total",
    kind: Kind::Counter,
    labels: &["process"],
    help: "User and system CPU time of the OVS daemon's current run, all threads (procfs)",
    notes: "Resets when the daemon restarts.",
    example: "rate(pinflow_ovs_process_cpu_seconds_total[5m])",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 2, "nothing (2 processes)"),
};

/// `pinflow_ovs_process_threads`.
pub const OVS_PROCESS_THREADS: Family = Family {
    name: "pinflow_ovs_process_threads",
    kind: Kind::Gauge,
    labels: &["process"],
    help: "Threads of the OVS daemon (procfs)",
    notes: "",
    example: "pinflow_ovs_process_threads{process=\"ovs-vswitchd\"}",
    presence: Presence::OvsVswitchd,
    area: Area::Vswitchd,
    series: series(0, 0, 2, "nothing (2 processes)"),
};

/// `pinflow_ovs_ovsdb_server_coverage_total`.
pub const OVSDB_SERVER_COVERAGE: Family = Family {
    name: "pinflow_ovs_ovsdb_server_coverage_total",
    kind: Kind::Counter,
    labels: &["event"],
    help: "ovsdb-server coverage counter (unixctl coverage/show on ovsdb-server's control socket), a fixed subset of events",
    notes: "`event`: `txn_forward_create` (transactions a relay forwarded to its source database), `txn_forward_cancel` (forwarded transactions cancelled, e.g. the source went away), `raft_entry_serialize` (raft log entries written: clustered databases), `stream_open` (connections ovsdb-server opened itself: relay, replication, active remotes — reconnect storms show here), `poll_zero_timeout` (main-loop iterations with work pending at once: a busy or spinning server; each `memory/show` adds one, so pinflow's own poll adds 1 per `interval_seconds`). Every event is present, 0 while never hit; resets when ovsdb-server restarts. ovsdb-server 3.1 has no coverage event for the transactions it commits or the JSON-RPC messages it handles (its `txn_*` events are the IDL client's and stay 0); see `pinflow_ovs_ovsdb_server_objects` for sessions and monitors. Polled with ovs-vswitchd every `[ovs_vswitchd] interval_seconds` (15 s).",
    example: "rate(pinflow_ovs_ovsdb_server_coverage_total{event=\"poll_zero_timeout\"}[5m]) > 10",
    presence: Presence::OvsdbServer,
    area: Area::Vswitchd,
    series: series(0, 0, 5, "nothing (5 events)"),
};

/// `pinflow_ovs_ovsdb_server_objects`.
pub const OVSDB_SERVER_OBJECTS: Family = Family {
    name: "pinflow_ovs_ovsdb_server_objects",
    kind: Kind::Gauge,
    labels: &["kind"],
    help: "Objects ovsdb-server holds, per kind (unixctl memory/show on ovsdb-server's control socket)",
    notes: "`kind`: `cells` (rows × columns of every database it serves), `atoms` (values in them), `monitors` (clients' monitor requests), `sessions` (JSON-RPC client sessions: ovs-vswitchd, agents, pinflow), `triggers` (transactions waiting to complete). Every kind is present, 0 when ovsdb-server does not list it.",
    example: "pinflow_ovs_ovsdb_server_objects{kind=\"sessions\"}",
    presence: Presence::OvsdbServer,
    area: Area::Vswitchd,
    series: series(0, 0, 5, "nothing (5 kinds)"),
};

/// `pinflow_ovs_ovsdb_server_backlog_bytes`.
pub const OVSDB_SERVER_BACKLOG: Family = Family {
    name: "pinflow_ovs_ovsdb_server_backlog_bytes",
    kind: Kind::Gauge,
    labels: &[],
    help: "Bytes ovsdb-server has queued to send to its clients, all sessions together (unixctl memory/show backlog)",
    notes: "Grows while a client reads its updates slower than they come (a stuck agent or ovs-vswitchd); ovsdb-server drops a monitor's updates and makes the client resync when its backlog gets too large.",
    example: "pinflow_ovs_ovsdb_server_backlog_bytes > 1e6",
    presence: Presence::OvsdbServer,
    area: Area::Vswitchd,
    series: series(0, 0, 1, "nothing (one series)"),
};

/// `pinflow_ovs_hw_offload_enabled`.
pub const HW_OFFLOAD_ENABLED: Family = Family {
    name: "pinflow_ovs_hw_offload_enabled",
    kind: Kind::Gauge,
    labels: &[],
    help: "Whether hardware offload of datapath flows is configured (OVSDB Open_vSwitch other_config:hw-offload=true)",
    notes: "The configuration, from the OVSDB monitor (an event, not polled). ovs-vswitchd turns offload on (once) when it reads `true`; turning it off takes effect only when ovs-vswitchd restarts.",
    example: "count by (instance) (pinflow_ovs_hw_offload_enabled == 1)",
    presence: Presence::Ovsdb,
    area: Area::Vswitchd,
    series: series(0, 0, 1, "nothing (one series)"),
};

/// `pinflow_ovs_tc_policy_info`.
pub const TC_POLICY_INFO: Family = Family {
    name: "pinflow_ovs_tc_policy_info",
    kind: Kind::Gauge,
    labels: &["policy"],
    help: "The TC flower policy for offloaded flows (OVSDB Open_vSwitch other_config:tc-policy), always 1",
    notes: "`policy`: `none` (the default, also when unset: hardware and software), `skip_sw` (hardware only), `skip_hw` (software TC only), `invalid` (another value: ovs-vswitchd logs a warning and keeps `none`). ovs-vswitchd reads it once, when it turns offload on: a later change takes effect when ovs-vswitchd restarts. Applies only with `pinflow_ovs_hw_offload_enabled` 1. From the OVSDB monitor (an event).",
    example: "pinflow_ovs_tc_policy_info{policy=\"skip_sw\"} * on (instance) pinflow_ovs_hw_offload_enabled",
    presence: Presence::Ovsdb,
    area: Area::Vswitchd,
    series: series(0, 0, 1, "nothing (one series)"),
};

// ---- OVS interfaces (OVSDB, opt-in) ----

/// `pinflow_ovs_interface_link_up`.
pub const LINK_UP: Family = Family {
    name: "pinflow_ovs_interface_link_up",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain"],
    help: "Whether the OVS interface's link is up (OVSDB Interface.link_state)",
    notes: "Absent while OVS reports no link state (patch ports). `domain`: the libvirt domain whose tap it is, as in `pinflow_ovs_port_info` (empty for other interfaces). `[flows] interface_metrics` costs 12 series per OVS interface (this family, `admin_up`, `mtu_bytes`, the 8 receive/transmit counters, `link_resets`), so it is off by default: on, an instance port alone would exceed the per-instance-port budget; none of the 12 is counted in it.",
    example: "pinflow_ovs_interface_link_up{domain!=\"\"} == 0",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_admin_up`.
pub const IF_ADMIN_UP: Family = Family {
    name: "pinflow_ovs_interface_admin_up",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain"],
    help: "Whether the OVS interface is administratively up (OVSDB Interface.admin_state)",
    notes: "0: the device was set down (`ip link set … down`), and its link is down with it; `pinflow_ovs_interface_link_up` 0 with `admin_up` 1 is a lost carrier instead (the peer, cable or instance is gone; the example lists those). Absent while OVS reports no admin state (patch ports).",
    example: "pinflow_ovs_interface_link_up == 0 and on (instance, bridge, port) pinflow_ovs_interface_admin_up == 1",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_mtu_bytes`.
pub const IF_MTU: Family = Family {
    name: "pinflow_ovs_interface_mtu_bytes",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain"],
    help: "MTU in force on the OVS interface, in bytes (OVSDB Interface.mtu, not mtu_request)",
    notes: "What the device has, whether OVS set it from `mtu_request` or something else did. Absent while OVS reports no MTU (patch ports). An instance's tap with a larger MTU than its network drops or fragments the instance's large packets (a classic Neutron fault): the example finds bridges whose instance taps do not share one MTU, a mismatch where the host's tenant networks have one MTU (with VLAN and VXLAN networks side by side, compare each tap with its network's MTU instead).",
    example: "max by (instance, bridge) (pinflow_ovs_interface_mtu_bytes{domain!=\"\"}) != min by (instance, bridge) (pinflow_ovs_interface_mtu_bytes{domain!=\"\"})",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_receive_bytes_total`.
pub const IF_RECEIVE_BYTES: Family = Family {
    name: "pinflow_ovs_interface_receive_bytes_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Bytes received on the OVS interface (OVSDB Interface.statistics:rx_bytes)",
    notes: "ovs-vswitchd refreshes `statistics` every 5 s (`other_config:stats-update-interval`). Absent for counters the interface type does not keep.",
    example: "rate(pinflow_ovs_interface_receive_bytes_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_receive_packets_total`.
pub const IF_RECEIVE_PACKETS: Family = Family {
    name: "pinflow_ovs_interface_receive_packets_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Packets received on the OVS interface (OVSDB Interface.statistics:rx_packets)",
    notes: "",
    example: "rate(pinflow_ovs_interface_receive_packets_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_receive_drops_total`.
pub const IF_RECEIVE_DROPS: Family = Family {
    name: "pinflow_ovs_interface_receive_drops_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Packets dropped on the OVS interface, receive side (OVSDB Interface.statistics:rx_dropped)",
    notes: "",
    example: "rate(pinflow_ovs_interface_receive_drops_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_receive_errors_total`.
pub const IF_RECEIVE_ERRORS: Family = Family {
    name: "pinflow_ovs_interface_receive_errors_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Errors on the OVS interface, receive side (OVSDB Interface.statistics:rx_errors)",
    notes: "",
    example: "rate(pinflow_ovs_interface_receive_errors_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_transmit_bytes_total`.
pub const IF_TRANSMIT_BYTES: Family = Family {
    name: "pinflow_ovs_interface_transmit_bytes_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Bytes transmitted on the OVS interface (OVSDB Interface.statistics:tx_bytes)",
    notes: "",
    example: "rate(pinflow_ovs_interface_transmit_bytes_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_transmit_packets_total`.
pub const IF_TRANSMIT_PACKETS: Family = Family {
    name: "pinflow_ovs_interface_transmit_packets_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Packets transmitted on the OVS interface (OVSDB Interface.statistics:tx_packets)",
    notes: "",
    example: "rate(pinflow_ovs_interface_transmit_packets_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_transmit_drops_total`.
pub const IF_TRANSMIT_DROPS: Family = Family {
    name: "pinflow_ovs_interface_transmit_drops_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Packets dropped on the OVS interface, transmit side (OVSDB Interface.statistics:tx_dropped)",
    notes: "",
    example: "rate(pinflow_ovs_interface_transmit_drops_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_transmit_errors_total`.
pub const IF_TRANSMIT_ERRORS: Family = Family {
    name: "pinflow_ovs_interface_transmit_errors_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Errors on the OVS interface, transmit side (OVSDB Interface.statistics:tx_errors)",
    notes: "",
    example: "rate(pinflow_ovs_interface_transmit_errors_total[5m])",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

/// `pinflow_ovs_interface_link_resets_total`.
pub const IF_LINK_RESETS: Family = Family {
    name: "pinflow_ovs_interface_link_resets_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "Link state changes OVS observed on the interface (OVSDB Interface.link_resets)",
    notes: "Resets when ovs-vswitchd restarts.",
    example: "increase(pinflow_ovs_interface_link_resets_total[1h]) > 0",
    presence: Presence::InterfaceMetrics,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "opt-in: OVS interfaces (1 each; `[flows] interface_metrics`)",
    ),
};

// ---- OVS bonds, LACP, BFD, CFM, tunnels (OVSDB events; bond members: unixctl) ----

/// `pinflow_ovs_bond_member_enabled`.
pub const BOND_MEMBER_ENABLED: Family = Family {
    name: "pinflow_ovs_bond_member_enabled",
    kind: Kind::Gauge,
    labels: &["bridge", "bond", "member"],
    help: "Whether the OVS bond member is enabled, i.e. may carry traffic (ovs-vswitchd bond/show)",
    notes: "Polled with ovs-vswitchd's other unixctl values (`[ovs_vswitchd] interval_seconds`, 15 s); absent while ovs-vswitchd does not answer. `bond`: the OVSDB Port; `member`: its Interface; `bridge` from OVSDB (empty while the flows collector is off).",
    example: "sum by (instance, bridge, bond) (pinflow_ovs_bond_member_enabled) < 2",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "bond members (1 each; none on the reference host)"),
};

/// `pinflow_ovs_lacp_current`.
pub const LACP_CURRENT: Family = Family {
    name: "pinflow_ovs_lacp_current",
    kind: Kind::Gauge,
    labels: &["bridge", "bond", "member"],
    help: "Whether the LACP partner information of the bond member is current, i.e. the partner answers (OVSDB Interface.lacp_current)",
    notes: "Only members of bonds with LACP (`lacp=active|passive`). An OVSDB monitor update: it turns 0 when the partner's information expires (3 LACP intervals: 3 s with `other_config:lacp-time=fast`, 90 s with slow), not at the carrier loss itself (see `pinflow_ovs_bond_member_enabled`).",
    example: "pinflow_ovs_lacp_current == 0",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "members of LACP bonds (1 each)"),
};

/// `pinflow_ovs_interface_bfd_up`.
pub const BFD_UP: Family = Family {
    name: "pinflow_ovs_interface_bfd_up",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain"],
    help: "Whether the interface's BFD session is up (OVSDB Interface.bfd_status:state)",
    notes: "Only interfaces with BFD enabled (`bfd:enable=true`); an OVSDB monitor update at each state change.",
    example: "pinflow_ovs_interface_bfd_up == 0",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "interfaces with BFD enabled (1 each)"),
};

/// `pinflow_ovs_interface_bfd_forwarding`.
pub const BFD_FORWARDING: Family = Family {
    name: "pinflow_ovs_interface_bfd_forwarding",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain"],
    help: "Whether BFD lets the interface forward (OVSDB Interface.bfd_status:forwarding)",
    notes: "Only interfaces with BFD enabled. 0 while the session is down or the remote end says it cannot forward.",
    example: "pinflow_ovs_interface_bfd_forwarding == 0",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "interfaces with BFD enabled (1 each)"),
};

/// `pinflow_ovs_interface_bfd_flaps_total`.
pub const BFD_FLAPS: Family = Family {
    name: "pinflow_ovs_interface_bfd_flaps_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "BFD state changes of the interface (OVSDB Interface.bfd_status:flap_count)",
    notes: "Only interfaces with BFD enabled. Resets when ovs-vswitchd restarts or BFD is re-enabled.",
    example: "increase(pinflow_ovs_interface_bfd_flaps_total[1h]) > 0",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "interfaces with BFD enabled (1 each)"),
};

/// `pinflow_ovs_interface_cfm_fault`.
pub const CFM_FAULT: Family = Family {
    name: "pinflow_ovs_interface_cfm_fault",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain"],
    help: "Whether CFM reports a connectivity fault on the interface (OVSDB Interface.cfm_fault)",
    notes: "Only interfaces with CFM configured (`cfm_mpid`).",
    example: "pinflow_ovs_interface_cfm_fault == 1",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "interfaces with CFM (1 each)"),
};

/// `pinflow_ovs_interface_cfm_remote_up`.
pub const CFM_REMOTE_UP: Family = Family {
    name: "pinflow_ovs_interface_cfm_remote_up",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain"],
    help: "Whether the CFM remote end says it is operationally up (OVSDB Interface.cfm_remote_opstate)",
    notes: "Only interfaces with CFM configured whose remote end reports its state (extended CFM).",
    example: "pinflow_ovs_interface_cfm_remote_up == 0",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "interfaces with CFM (1 each)"),
};

/// `pinflow_ovs_interface_cfm_flaps_total`.
pub const CFM_FLAPS: Family = Family {
    name: "pinflow_ovs_interface_cfm_flaps_total",
    kind: Kind::Counter,
    labels: &["bridge", "port", "domain"],
    help: "CFM fault state changes of the interface (OVSDB Interface.cfm_flap_count)",
    notes: "Only interfaces with CFM configured. Resets when ovs-vswitchd restarts.",
    example: "increase(pinflow_ovs_interface_cfm_flaps_total[1h]) > 0",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(0, 0, 0, "interfaces with CFM (1 each)"),
};

/// `pinflow_ovs_tunnel_egress_carrier_up`.
pub const TUNNEL_EGRESS_CARRIER: Family = Family {
    name: "pinflow_ovs_tunnel_egress_carrier_up",
    kind: Kind::Gauge,
    labels: &["device"],
    help: "Whether the device OVS tunnel ports send through has carrier (OVSDB Interface.status:tunnel_egress_iface_carrier of every tunnel port using it)",
    notes: "`device`: `status:tunnel_egress_iface`, the device the route to a tunnel's `remote_ip` leaves through. One series per device, not per tunnel port: a Neutron or OVN host has one tunnel port per peer host, all sharing one or two devices; 0 when any tunnel port reports no carrier on it.",
    example: "pinflow_ovs_tunnel_egress_carrier_up == 0",
    presence: Presence::OvsLinkFeature,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "tunnels' egress devices (1 each; none on the reference host)",
    ),
};

/// `pinflow_ovs_interface_error_info`.
pub const IF_ERROR_INFO: Family = Family {
    name: "pinflow_ovs_interface_error_info",
    kind: Kind::Gauge,
    labels: &["bridge", "port", "domain", "error"],
    help: "Present (1) only while ovs-vswitchd reports an error for the OVS interface, e.g. it cannot open its device (OVSDB Interface.error; its ofport is then -1)",
    notes: "Default-on, an OVSDB monitor update when ovs-vswitchd sets or clears the error (no polling). `error` is OVS's text, e.g. `could not open network device tap1 (No such device)` (a tap deleted under its port, a failed live migration, a wrong `type`), cut to 200 characters; `ofport -1` when OVS set `ofport` to -1 without a text. Such a port forwards nothing: the instance behind it (`domain`) has no network on it.",
    example: "pinflow_ovs_interface_error_info * on (instance, domain) group_left (name) pinflow_instance_info",
    presence: Presence::Finding,
    area: Area::Flows,
    series: series(
        0,
        0,
        0,
        "OVS interfaces with an error (1 each; bounded by the ports)",
    ),
};

/// Every family, in exposition order.
pub const ALL: &[&Family] = &[
    &INSTANCE_INFO,
    &DOMAIN_DRIFTED_VCPUS,
    &DOMAIN_VCPUS,
    &VCPU_PINNING_DRIFT,
    &VCPU_OFFPIN_SECONDS,
    &PCPU_STOLEN_SECONDS,
    &VCPU_MIGRATIONS,
    &VCPU_WAIT_SECONDS,
    &PCPU_PINNED_VCPUS,
    &NODE_HUGEPAGES,
    &NODE_HUGEPAGES_FREE,
    &PINNING_PASSES,
    &PINNING_THREAD_READS,
    &HOST_CPU_CONFIG_PROBLEM,
    &OVS_FLOWS,
    &OVS_DIRTY_FLOWS,
    &OVS_DIRTY_FLOW_RULE_INFO,
    &OVS_DIRTY_FLOW_INFO,
    &OVS_DIRTY_FLOW_INFO_DROPPED,
    &OVS_PORT_INFO,
    &LINK_UP,
    &IF_ADMIN_UP,
    &IF_MTU,
    &IF_RECEIVE_BYTES,
    &IF_RECEIVE_PACKETS,
    &IF_RECEIVE_DROPS,
    &IF_RECEIVE_ERRORS,
    &IF_TRANSMIT_BYTES,
    &IF_TRANSMIT_PACKETS,
    &IF_TRANSMIT_DROPS,
    &IF_TRANSMIT_ERRORS,
    &IF_LINK_RESETS,
    &BOND_MEMBER_ENABLED,
    &LACP_CURRENT,
    &BFD_UP,
    &BFD_FORWARDING,
    &BFD_FLAPS,
    &CFM_FAULT,
    &CFM_REMOTE_UP,
    &CFM_FLAPS,
    &TUNNEL_EGRESS_CARRIER,
    &IF_ERROR_INFO,
    &DATAPATH_FLOWS,
    &DATAPATH_LOOKUPS,
    &DATAPATH_MASKS,
    &DATAPATH_MASK_HITS,
    &DATAPATH_MASK_CACHE_HITS,
    &DATAPATH_DROP_FLOWS,
    &DATAPATH_FLOW_LIMIT,
    &DATAPATH_UNHEALTHY,
    &VPORT_INFO,
    &VPORT_DROPPED,
    &UPCALLS,
    &DATAPATH_ACTIONS,
    &DROPS,
    &OVS_COVERAGE,
    &VSWITCHD_OBJECTS,
    &VSWITCHD_THREADS,
    &UPCALL_FLOWS,
    &UPCALL_FLOW_LIMIT,
    &UPCALL_DUMP_DURATION,
    &OVS_PROCESS_UP,
    &OVS_PROCESS_RESTARTS,
    &OVS_PROCESS_RSS,
    &OVS_PROCESS_CPU,
    &OVS_PROCESS_THREADS,
    &OVSDB_SERVER_COVERAGE,
    &OVSDB_SERVER_OBJECTS,
    &OVSDB_SERVER_BACKLOG,
    &HW_OFFLOAD_ENABLED,
    &TC_POLICY_INFO,
    &CONNTRACK_ENTRIES,
    &CONNTRACK_LIMIT,
    &CONNTRACK_ZONE_ENTRIES,
    &SOURCE_UP,
    &SOURCE_ERRORS,
    &COLLECT_DURATION,
    &SOURCE_LAST_SUCCESS,
    &BUILD_INFO,
    &BPF_RUN_SECONDS,
    &BPF_RUNS,
];

/// Families and labels of the table whose encoders land on other branches of the same release
/// (issue 9: `severity`/`port`/`domain` on dirty flows and the rule-severity family; issue 8:
/// `revision`/`rustc` on `pinflow_build_info`); an empty label list means the whole family.
/// The label checks (unit tests and `tests/tests/dashboard.rs`) skip exactly these and fail once
/// one of them is exported: then delete its entry.
pub const NOT_YET_EXPORTED: &[(&str, &[&str])] = &[];

/// Label names of `f` that a scrape of this build must carry (the table's minus [`NOT_YET_EXPORTED`]).
pub fn exported_labels(f: &Family) -> Vec<&'static str> {
    let pending = NOT_YET_EXPORTED
        .iter()
        .find(|(n, _)| *n == f.name)
        .map_or(&[][..], |(_, l)| *l);
    f.labels
        .iter()
        .copied()
        .filter(|l| !pending.contains(l))
        .collect()
}

/// Whether this build exports family `f` at all (see [`NOT_YET_EXPORTED`]).
pub fn exported(f: &Family) -> bool {
    !NOT_YET_EXPORTED
        .iter()
        .any(|(n, l)| *n == f.name && l.is_empty())
}

/// The family named `name` (as in PromQL, counters with `_total`).
pub fn by_name(name: &str) -> Option<&'static Family> {
    ALL.iter().copied().find(|f| f.name == name)
}

/// Labels Prometheus adds at scrape time (never set by pinflow).
pub const SCRAPE_LABELS: [&str; 4] = ["instance", "job", "rack", "zone"];

/// Budget of DESIGN.md: series per instance, per instance port, per healthy host. Per instance:
/// DESIGN.md's 12, plus 1 for the `stolen` check's `pinflow_domain_drifted_vcpus` row (issue 14;
/// a contract change for the lead to confirm).
pub const BUDGET_PER_INSTANCE: u32 = 13;
/// Budget of DESIGN.md: series per instance port.
pub const BUDGET_PER_INSTANCE_PORT: u32 = 4;
/// Budget of DESIGN.md: series per healthy host, without the per-instance ones.
/// Raised from 150 to 190 by issues 14 and 15: the huge-page pools per NUMA node and page size
/// (8 series on a 2-node host with 2 sizes), ovs-vswitchd's counters and the OVS processes (38);
/// to 205 by issue 15's `ovsdbsrv` branch: ovsdb-server's counters (11), its source (4) and the
/// offload configuration (2).
pub const BUDGET_PER_HOST: u32 = 205;

/// Sum of one budget column over every family.
pub fn total(column: fn(&Series) -> u32) -> u32 {
    ALL.iter().map(|f| column(&f.series)).sum()
}

/// `docs/metrics.md`, rendered from the table.
pub fn markdown() -> String {
    let mut s = String::new();
    s.push_str(
        "# pinflow metrics\n\n\
         <!-- Generated from collector/src/export/families.rs; do not edit. Rewrite with\n     \
         PINFLOW_BLESS=1 cargo test -p pinflow --lib export::families -->\n\n\
         Every family pinflow exports on `/metrics`, generated from the table the encoders take their\n\
         names and help from. Names and label names are a stable contract; label sets are bounded.\n\
         Prometheus adds `instance` (the hypervisor's node name), `job`, and the deployment's `rack` and\n\
         `zone` to every series at scrape time; pinflow sets none of them.\n\n\
         Join Nova's names onto anything with a `domain` label:\n\
         `* on (instance, domain) group_left (name, project) pinflow_instance_info`.\n\
         Join a dirty-flow rule's severity (`broken` or `suspect`):\n\
         `* on (instance, rule) group_left (severity) pinflow_ovs_dirty_flow_rule_info`.\n\n\
         Every example query below is run through a real Prometheus scraping the testbed, and so is every\n\
         query of the Grafana dashboard `deploy/grafana/pinflow.json` (`tests/tests/dashboard.rs`).\n\n",
    );
    s.push_str("| family | type | labels | present |\n|---|---|---|---|\n");
    for f in ALL {
        let _ = writeln!(
            s,
            "| [`{}`](#{}) | {} | {} | {} |",
            f.name,
            f.name,
            f.kind.as_str(),
            labels_md(f),
            f.presence.describe()
        );
    }
    for area in Area::ALL {
        let _ = write!(s, "\n## {}\n", area.title());
        for f in ALL.iter().filter(|f| f.area == area) {
            let _ = write!(
                s,
                "\n### `{}`\n\n{} — {}.{}{}\n\n- labels: {}\n- present: {}\n- series: {}{}\n\n```promql\n{}\n```\n",
                f.name,
                f.kind.as_str(),
                f.help,
                if f.notes.is_empty() { "" } else { " " },
                f.notes,
                labels_md(f),
                f.presence.describe(),
                f.series.grows_with,
                budget_md(&f.series),
                f.example
            );
        }
    }
    let per_instance: Vec<String> = ALL
        .iter()
        .filter(|f| f.series.per_instance > 0)
        .map(|f| format!("`{}` {}", f.name, f.series.per_instance))
        .collect();
    let per_port: Vec<String> = ALL
        .iter()
        .filter(|f| f.series.per_instance_port > 0)
        .map(|f| format!("`{}` {}", f.name, f.series.per_instance_port))
        .collect();
    let _ = write!(
        s,
        "\n## Series budget\n\n\
         | | series | budget |\n|---|---|---|\n\
         | per instance (healthy) | {} | ≤ {BUDGET_PER_INSTANCE} |\n\
         | per instance port | {} | ≤ {BUDGET_PER_INSTANCE_PORT} |\n\
         | per host, besides instances and their ports (healthy) | {} | ≤ {BUDGET_PER_HOST} |\n\n\
         Per instance: {}. Per instance port: {}.\n\n\
         Per family; the per-host column counted for {REFERENCE_HOST}:\n\n\
         | family | per instance | per instance port | per host | grows with |\n|---|---|---|---|---|\n",
        total(|x| x.per_instance),
        total(|x| x.per_instance_port),
        total(|x| x.per_host),
        per_instance.join(", "),
        per_port.join(", "),
    );
    for f in ALL {
        let x = &f.series;
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {} |",
            f.name, x.per_instance, x.per_instance_port, x.per_host, x.grows_with
        );
    }
    s.push_str(
        "\nWhat grows with tables, rules, ports or findings is bounded by configuration: dirty flows by \
         `[export] dirty_flow_info_limit`, rules by `[flows]`, drifts by the host's vCPUs. \
         `scrape_samples_scraped{job=\"pinflow\"}` is a host's actual total.\n",
    );
    s
}

fn budget_md(x: &Series) -> String {
    let parts: Vec<String> = [
        (x.per_instance, "per instance"),
        (x.per_instance_port, "per instance port"),
        (x.per_host, "on the reference host"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn labels_md(f: &Family) -> String {
    if f.labels.is_empty() {
        return "—".to_string();
    }
    f.labels
        .iter()
        .map(|l| format!("`{l}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    #[test]
    fn docs_metrics_md_is_rendered_from_the_table() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
        let want = markdown();
        if std::env::var("PINFLOW_BLESS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &want).expect("write docs/metrics.md");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} differs from the metric-family table (collector/src/export/families.rs); \
             rewrite it with PINFLOW_BLESS=1 cargo test -p pinflow --lib export::families",
            path.display()
        );
    }

    #[test]
    fn names_labels_and_examples_are_well_formed() {
        let ident = |s: &str| {
            s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let mut names = BTreeSet::new();
        for f in ALL {
            assert!(names.insert(f.name), "{} listed twice", f.name);
            assert!(
                f.name.starts_with("pinflow_") && ident(f.name),
                "{}",
                f.name
            );
            assert_eq!(
                f.kind == Kind::Counter,
                f.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                f.name
            );
            let mut labels = BTreeSet::new();
            for l in f.labels {
                assert!(ident(l), "{}: label {l}", f.name);
                assert!(labels.insert(l), "{}: label {l} twice", f.name);
                assert!(
                    !SCRAPE_LABELS.contains(l),
                    "{}: {l} is set by Prometheus",
                    f.name
                );
            }
            assert!(
                f.example.contains(f.name),
                "{}: the example must query the family",
                f.name
            );
            assert!(!f.help.is_empty() && !f.help.contains('\n'), "{}", f.name);
        }
    }

    #[test]
    fn notes_name_every_label_value_of_the_code() {
        use crate::detect::flows::rules::BuiltinRule;
        use crate::model::pinning::Check;
        for c in Check::ALL {
            assert!(
                DOMAIN_DRIFTED_VCPUS.notes.contains(&format!("`{c}`")),
                "{c}"
            );
        }
        for r in BuiltinRule::ALL {
            let r = format!("`{}`", r.name());
            assert!(OVS_DIRTY_FLOWS.notes.contains(&r), "{r}");
            assert!(OVS_DIRTY_FLOW_RULE_INFO.notes.contains(&r), "{r}");
        }
        for c in crate::model::datapath::DatapathCheck::ALL {
            assert!(DATAPATH_UNHEALTHY.notes.contains(&format!("`{c}`")), "{c}");
        }
        use crate::model::ovs_vswitchd::{
            COVERAGE_EVENTS, OBJECT_KINDS, OVSDB_SERVER_COVERAGE_EVENTS, OVSDB_SERVER_OBJECT_KINDS,
            PROCESSES,
        };
        for e in OVSDB_SERVER_COVERAGE_EVENTS {
            assert!(
                OVSDB_SERVER_COVERAGE.notes.contains(&format!("`{e}`")),
                "{e}"
            );
        }
        for k in OVSDB_SERVER_OBJECT_KINDS {
            assert!(
                OVSDB_SERVER_OBJECTS.notes.contains(&format!("`{k}`")),
                "{k}"
            );
        }
        assert_eq!(
            OVSDB_SERVER_COVERAGE.series.per_host as usize,
            OVSDB_SERVER_COVERAGE_EVENTS.len()
        );
        for p in crate::model::flows::TC_POLICIES {
            assert!(TC_POLICY_INFO.notes.contains(&format!("`{p}`")), "{p}");
        }
        for e in COVERAGE_EVENTS {
            assert!(OVS_COVERAGE.notes.contains(&format!("`{e}`")), "{e}");
        }
        for k in OBJECT_KINDS {
            assert!(VSWITCHD_OBJECTS.notes.contains(&format!("`{k}`")), "{k}");
        }
        for p in PROCESSES {
            assert!(OVS_PROCESS_UP.notes.contains(&format!("`{p}`")), "{p}");
        }
        assert_eq!(
            OVS_COVERAGE.series.per_host as usize,
            COVERAGE_EVENTS.len(),
            "coverage budget"
        );
        for src in crate::sources::ALL.iter().map(|s| s.name) {
            assert!(SOURCE_UP.notes.contains(&format!("`{src}`")), "{src}");
        }
    }

    #[test]
    fn interface_option_cost_is_documented() {
        let n = ALL
            .iter()
            .filter(|f| f.presence == Presence::InterfaceMetrics)
            .count();
        assert!(
            LINK_UP
                .notes
                .contains(&format!("costs {n} series per OVS interface")),
            "{n}"
        );
        assert!(n as u32 > BUDGET_PER_INSTANCE_PORT);
    }

    #[test]
    fn budget_holds_for_the_reference_host() {
        assert!(total(|x| x.per_instance) <= BUDGET_PER_INSTANCE);
        assert!(total(|x| x.per_instance_port) <= BUDGET_PER_INSTANCE_PORT);
        assert!(total(|x| x.per_host) <= BUDGET_PER_HOST);
        // Families that are empty when healthy take no budget of a healthy host.
        for f in ALL.iter().filter(|f| f.presence.empty_when_healthy()) {
            assert_eq!(
                (
                    f.series.per_instance,
                    f.series.per_instance_port,
                    f.series.per_host
                ),
                (0, 0, 0),
                "{}",
                f.name
            );
        }
    }
}
