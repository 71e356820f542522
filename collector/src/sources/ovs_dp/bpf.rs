//! Loader of the OVS kernel-datapath eBPF probe (`collector-ebpf/src/ovs_dp.rs`): upcalls per
//! datapath and ingress port, executed actions per type, and Open vSwitch drop reasons per port.
//!
//! The programs attach to raw tracepoints (`BPF_RAW_TRACEPOINT_OPEN`): no tracefs, no
//! `perf_event_open`, so `CAP_BPF` + `CAP_PERFMON` are enough even where `perf_event_paranoid`
//! is 3 (Debian's and Ubuntu's default, whose kernels then refuse `perf_event_open` without
//! `CAP_SYS_ADMIN`: the classic tracepoints this probe used before failed there once
//! `pinflow serve` had dropped its capabilities).
//!
//! The probe needs the `openvswitch` module's tracepoints: [`DatapathProbe::load`] fails with
//! [`OvsBpfError::ModuleAbsent`] until they exist, and the datapath poller retries while a
//! datapath exists. Attached tracepoints pin the module, so the poller drops the probe when the
//! last datapath goes away: `rmmod openvswitch` then works, and a reload is picked up again.
//!
//! Drop reasons (`OVS_DROP_*`, net/openvswitch/drop.h) exist from Linux 6.6; older kernels report
//! no OVS drops through `kfree_skb`, and `pinflow_ovs_drops_total` stays empty there.

use crate::model::datapath::DatapathEvents;
use crate::model::health::BpfProgramCost;
use crate::sources::sched_bpf::loader;
use crate::sources::sched_bpf::{btf, ebpf_object, has_eperm, missing_bpf_capabilities};
use crate::sources::{CanRun, SourceDef};
use aya::Ebpf;
use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use aya::programs::RawTracePoint;
use collector_common::ovs_dp::{self as layout, DropKey, UpcallKey, name_bytes};
use std::collections::HashMap;
use std::path::Path;

/// Source name in `pinflow_source_*`.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "ovs_datapath_bpf",
    collector: "datapath",
    can_run: |_| {
        // As the daemon runs it: the programs attach only while a datapath exists.
        CanRun::of(match super::datapaths_once() {
            Ok(d) if !d.is_empty() => DatapathProbe::load()
                .map(|p| p.describe().to_string())
                .map_err(|e| e.to_string()),
            _ => Err(NO_DATAPATH.to_string()),
        })
    },
};

/// Why the probe is not attached while no datapath exists.
pub(crate) const NO_DATAPATH: &str =
    "no OVS kernel datapath (openvswitch module absent or no datapath)";

/// Why the probe could not be loaded or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OvsBpfError {
    /// The binary embeds no eBPF object.
    #[error("eBPF object not built (this binary was built with PINFLOW_SKIP_EBPF=1)")]
    NotBuilt,
    /// The openvswitch module (and its tracepoints) is not loaded.
    #[error("openvswitch tracepoints absent (module not loaded): {0}")]
    ModuleAbsent(String),
    /// The kernel refused to load or attach (names the capability this process lacks).
    #[error("permission denied loading eBPF ({hint}): {0}", hint = missing_bpf_capabilities())]
    PermissionDenied(String),
    /// Loading or attaching failed.
    #[error("{what}: {reason}")]
    Load {
        /// The step.
        what: &'static str,
        /// The error chain.
        reason: String,
    },
}

/// A load or attach error `e` of step `what`; EPERM is [`OvsBpfError::PermissionDenied`].
fn failed(
    what: &'static str,
    e: &(dyn std::error::Error + 'static),
    prefix: String,
) -> OvsBpfError {
    let reason = format!("{prefix}{what}: {}", chain(e));
    if has_eperm(e) {
        OvsBpfError::PermissionDenied(reason)
    } else {
        OvsBpfError::Load {
            what,
            reason: format!("{prefix}{}", chain(e)),
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Names of the Open vSwitch drop reasons in the order of drop.h (Linux 6.6 … 6.12), from
/// `SKB_DROP_REASON_SUBSYS_OPENVSWITCH << 16 | 1` on. Unknown values print as `unknown:<n>`.
const OVS_DROP_REASONS: &[&str] = &[
    "last_action",
    "action_error",
    "explicit",
    "explicit_with_error",
    "meter",
    "recursion_limit",
    "resubmit_limit",
    "frag_l2_too_long",
    "frag_invalid_proto",
    "conntrack",
    "ip_ttl",
];

/// Label value of an `skb_drop_reason` of the Open vSwitch subsystem.
pub(crate) fn drop_reason_name(reason: u32) -> String {
    let idx = (reason & 0xffff) as usize;
    match idx.checked_sub(1).and_then(|i| OVS_DROP_REASONS.get(i)) {
        Some(n) => (*n).to_string(),
        None => format!("unknown:{reason:#x}"),
    }
}

/// `OVS_ACTION_ATTR_*` names for `pinflow_ovs_datapath_actions_total`.
pub(crate) fn action_name(t: u32) -> String {
    let n = match t {
        1 => "output",
        2 => "userspace",
        3 => "set",
        4 => "push_vlan",
        5 => "pop_vlan",
        6 => "sample",
        7 => "recirc",
        8 => "hash",
        9 => "push_mpls",
        10 => "pop_mpls",
        11 => "set_masked",
        12 => "ct",
        13 => "trunc",
        14 => "push_eth",
        15 => "pop_eth",
        16 => "ct_clear",
        17 => "push_nsh",
        18 => "pop_nsh",
        19 => "meter",
        20 => "clone",
        21 => "check_pkt_len",
        22 => "add_mpls",
        23 => "dec_ttl",
        24 => "drop",
        25 => "psample",
        _ => return format!("unknown:{t}"),
    };
    n.to_string()
}

/// The attached probe; dropping it detaches the programs and frees the maps.
pub(crate) struct DatapathProbe {
    ebpf: Ebpf,
    upcalls: BpfHashMap<MapData, UpcallKey, u64>,
    drops: Option<BpfHashMap<MapData, DropKey, u64>>,
    actions: Array<MapData, u64>,
    programs: Vec<&'static str>,
}

impl std::fmt::Debug for DatapathProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatapathProbe")
            .field("programs", &self.programs)
            .finish()
    }
}

/// Where the loaded `openvswitch` module shows.
const OVS_MODULE: &str = "/sys/module/openvswitch";

impl DatapathProbe {
    /// Loads the object and attaches the datapath programs (the drop program only where the
    /// kernel's `kfree_skb` tracepoint passes a drop reason).
    pub(crate) fn load() -> Result<Self, OvsBpfError> {
        if ebpf_object().is_empty() {
            return Err(OvsBpfError::NotBuilt);
        }
        if !Path::new(OVS_MODULE).exists() {
            return Err(OvsBpfError::ModuleAbsent(format!(
                "{OVS_MODULE} does not exist"
            )));
        }
        // `skb->dev->name`, read by the upcall and drop programs.
        let vmlinux = Path::new(btf::VMLINUX_BTF);
        let offset = |s: &str, m: &str| {
            btf::member_offset_in_file(vmlinux, s, m)
                .map(|f| f.offset)
                .map_err(|e| OvsBpfError::Load {
                    what: "kernel BTF",
                    reason: format!("{s}.{m}: {e}"),
                })
        };
        let skb_dev = offset("sk_buff", "dev")?;
        let netdev_name = offset("net_device", "name")?;
        let mut loader = loader::new_loader(loader::Probe::Datapath);
        loader
            .override_global(layout::GLOBAL_SKB_DEV, &skb_dev, true)
            .override_global(layout::GLOBAL_NETDEV_NAME, &netdev_name, true);
        let mut ebpf = loader
            .load(ebpf_object())
            .map_err(|e| failed("loading the eBPF object", &e, String::new()))?;
        let mut programs = Vec::new();
        let mut attach = |ebpf: &mut Ebpf,
                          prog: &'static str,
                          tp: &str|
         -> Result<(), OvsBpfError> {
            let err = |what: &'static str| {
                move |e: aya::programs::ProgramError| failed(what, &e, format!("{prog}: "))
            };
            let p: &mut RawTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| OvsBpfError::Load {
                    what: "eBPF object",
                    reason: format!("program {prog} missing"),
                })?
                .try_into()
                .map_err(err("program type"))?;
            p.load().map_err(err("loading"))?;
            p.attach(tp).map_err(|e| {
                // No such raw tracepoint: the module (or its tracepoints, Linux < 5.18) is absent.
                if chain(&e).contains("No such file or directory") {
                    OvsBpfError::ModuleAbsent(format!("{prog}: raw tracepoint {tp}: {}", chain(&e)))
                } else {
                    failed("attaching", &e, format!("{prog}: "))
                }
            })?;
            programs.push(prog);
            Ok(())
        };
        attach(&mut ebpf, layout::PROG_UPCALL, "ovs_dp_upcall")?;
        attach(&mut ebpf, layout::PROG_EXEC, "ovs_do_execute_action")?;
        // Kernels before 5.17 pass no reason: the program's read of the third argument makes the
        // attach fail there (EINVAL), and drops stay off.
        let drops_on = match attach(&mut ebpf, layout::PROG_KFREE, "kfree_skb") {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("OVS drop reasons unavailable: {e}");
                false
            }
        };
        let take = |ebpf: &mut Ebpf, m: &'static str| {
            ebpf.take_map(m).ok_or_else(|| OvsBpfError::Load {
                what: "eBPF object",
                reason: format!("map {m} missing"),
            })
        };
        let map_err = |m: &'static str| {
            move |e: aya::maps::MapError| OvsBpfError::Load {
                what: "map",
                reason: format!("{m}: {}", chain(&e)),
            }
        };
        let upcalls = BpfHashMap::try_from(take(&mut ebpf, layout::UPCALL_MAP)?)
            .map_err(map_err(layout::UPCALL_MAP))?;
        let actions = Array::try_from(take(&mut ebpf, layout::ACTION_MAP)?)
            .map_err(map_err(layout::ACTION_MAP))?;
        let drops = if drops_on {
            Some(
                BpfHashMap::try_from(take(&mut ebpf, layout::DROP_MAP)?)
                    .map_err(map_err(layout::DROP_MAP))?,
            )
        } else {
            None
        };
        Ok(Self {
            ebpf,
            upcalls,
            drops,
            actions,
            programs,
        })
    }

    /// Whether the drop-reason program is attached.
    pub(crate) fn drops_attached(&self) -> bool {
        self.drops.is_some()
    }

    /// What the attached programs count (the source's detail).
    pub(crate) fn describe(&self) -> &'static str {
        if self.drops_attached() {
            "upcalls, actions and OVS drop reasons"
        } else {
            "upcalls and actions (no OVS drop reasons on this kernel)"
        }
    }

    /// Current counts. Keys that fail to read are skipped, and so are the upcalls of devices
    /// that are no vport of `dp_of` (vport name → datapath name, from the last poll): the kernel
    /// program keys upcalls by device only.
    pub(crate) fn read(&self, dp_of: &HashMap<String, String>) -> DatapathEvents {
        let s = |b: &[u8; layout::NAME_LEN]| String::from_utf8_lossy(name_bytes(b)).into_owned();
        let mut ev = DatapathEvents::default();
        for (k, v) in self.upcalls.iter().flatten() {
            let dev = s(&k.dev);
            if let Some(dp) = dp_of.get(&dev) {
                ev.upcalls.push((dp.clone(), dev, v));
            }
        }
        if let Some(d) = &self.drops {
            for (k, v) in d.iter().flatten() {
                ev.drops.push((s(&k.dev), drop_reason_name(k.reason), v));
            }
        }
        for t in 0..layout::ACTION_SLOTS {
            if let Ok(n) = self.actions.get(&t, 0)
                && n > 0
            {
                ev.actions.push((action_name(t), n));
            }
        }
        ev.upcalls.sort();
        ev.drops.sort();
        ev.programs = self.program_stats();
        ev
    }

    /// The devices the upcall and drop maps hold counts of.
    pub(crate) fn devices(&self) -> std::collections::HashSet<String> {
        let s = |b: &[u8; layout::NAME_LEN]| String::from_utf8_lossy(name_bytes(b)).into_owned();
        let mut out: std::collections::HashSet<String> =
            self.upcalls.keys().flatten().map(|k| s(&k.dev)).collect();
        if let Some(d) = &self.drops {
            out.extend(d.keys().flatten().map(|k| s(&k.dev)));
        }
        out
    }

    /// Deletes the upcall and drop counts of the ports named `devs` (ports gone from every
    /// datapath), so that the maps keep room for new ports and dead taps' series end. Returns
    /// how many deletions failed.
    pub(crate) fn forget_ports(&mut self, devs: &[String]) -> u64 {
        let gone = |b: &[u8; layout::NAME_LEN]| {
            let name = name_bytes(b);
            devs.iter().any(|d| d.as_bytes() == name)
        };
        let mut failed = 0;
        let keys: Vec<UpcallKey> = self
            .upcalls
            .keys()
            .flatten()
            .filter(|k| gone(&k.dev))
            .collect();
        for k in keys {
            failed += u64::from(self.upcalls.remove(&k).is_err());
        }
        if let Some(d) = &mut self.drops {
            let keys: Vec<DropKey> = d.keys().flatten().filter(|k| gone(&k.dev)).collect();
            for k in keys {
                failed += u64::from(d.remove(&k).is_err());
            }
        }
        failed
    }

    /// Per program: run time and count from the kernel's BPF statistics (when enabled).
    pub(crate) fn program_stats(&self) -> Vec<BpfProgramCost> {
        self.programs
            .iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(BpfProgramCost {
                    program: (*name).to_string(),
                    run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                    run_count: info.run_count(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_load_says_which_capability_is_missing() {
        let eperm = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = failed("loading", &eperm, "ovs_dp_upcall: ".into());
        assert!(matches!(e, OvsBpfError::PermissionDenied(_)), "{e:?}");
        // The hint is read from this process's CapEff: whichever it has, it names the two.
        let text = e.to_string();
        assert!(
            text.starts_with("permission denied loading eBPF (")
                && text.contains("CAP_BPF and CAP_PERFMON")
                && text.ends_with("ovs_dp_upcall: loading: Operation not permitted (os error 1)"),
            "{text}"
        );
        let other = failed(
            "loading",
            &std::io::Error::from_raw_os_error(libc::EINVAL),
            String::new(),
        );
        assert!(matches!(other, OvsBpfError::Load { .. }), "{other:?}");
    }

    #[test]
    fn embedded_object_has_the_datapath_programs() {
        let data = ebpf_object();
        if data.is_empty() {
            println!("SKIP: built with PINFLOW_SKIP_EBPF=1, no eBPF object embedded");
            return;
        }
        let obj = aya_obj::Object::parse(data).expect("embedded eBPF object parses");
        for p in [layout::PROG_UPCALL, layout::PROG_EXEC, layout::PROG_KFREE] {
            assert!(obj.programs.contains_key(p), "program {p} missing");
        }
        for m in [layout::UPCALL_MAP, layout::DROP_MAP, layout::ACTION_MAP] {
            assert!(obj.maps.contains_key(m), "map {m} missing");
        }
    }

    #[test]
    fn drop_reasons_and_actions_have_bounded_names() {
        assert_eq!(drop_reason_name(3 << 16 | 1), "last_action");
        assert_eq!(drop_reason_name(3 << 16 | 3), "explicit");
        assert_eq!(drop_reason_name(3 << 16 | 11), "ip_ttl");
        assert_eq!(drop_reason_name(3 << 16 | 99), "unknown:0x30063");
        assert_eq!(drop_reason_name(3 << 16), "unknown:0x30000");
        assert_eq!(action_name(1), "output");
        assert_eq!(action_name(24), "drop");
        assert_eq!(action_name(31), "unknown:31");
    }

    /// Without the openvswitch module (this project's hosts), loading says why, without panicking.
    #[test]
    fn load_without_the_module_is_a_clear_error() {
        if Path::new(OVS_MODULE).exists() {
            println!("SKIP: this host has the openvswitch module loaded");
            return;
        }
        match DatapathProbe::load() {
            Err(OvsBpfError::ModuleAbsent(_) | OvsBpfError::NotBuilt) => {}
            other => panic!("expected ModuleAbsent, got {other:?}"),
        }
    }
}
