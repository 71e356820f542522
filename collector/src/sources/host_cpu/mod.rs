//! Host CPU configuration: Nova's `[compute] cpu_dedicated_set` / `cpu_shared_set` and the legacy
//! `[DEFAULT] vcpu_pin_set` from a nova.conf given with `--nova-conf` (the DaemonSet mounts the
//! host's, or a ConfigMap, read-only), and the kernel's CPU isolation from `<proc>/cmdline`
//! (`isolcpus`, `nohz_full`, `rcu_nocbs`, `irqaffinity`) and `<proc>/irq/default_smp_affinity`.
//!
//! nova.conf is read with the `rust-ini` crate (oslo.config's format: sections, `key = value`,
//! indented continuation lines, comments on lines of their own; the last of repeated keys wins,
//! as oslo.config does). Files under `nova.conf.d` are not read.

use crate::model::cpuset::CpuSet;
use crate::model::host_cpu::{KernelCpuIsolation, NovaCpuSets};
use crate::sources::{CanRun, SourceDef};
use std::path::Path;

/// Source name in `pinflow_source_*`.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "host_cpu",
    collector: "pinning",
    can_run: |paths| {
        let kernel = read_kernel(&paths.proc_root);
        let nova = paths.nova_conf.as_deref().map(read_nova_conf);
        CanRun::of(match (kernel, nova) {
            (Err(e), _) | (_, Some(Err(e))) => Err(e),
            (Ok(k), None) => Ok(format!(
                "kernel: {}; no --nova-conf: Nova's CPU sets are not checked",
                describe_kernel(&k)
            )),
            (Ok(k), Some(Ok(n))) => Ok(format!(
                "kernel: {}; nova: {}",
                describe_kernel(&k),
                describe_nova(&n)
            )),
        })
    },
};

/// A one-line summary of the kernel's isolation.
pub(crate) fn describe_kernel(k: &KernelCpuIsolation) -> String {
    let show = |s: &Option<CpuSet>| s.as_ref().map_or("-".to_string(), |s| s.to_string());
    format!(
        "isolcpus {} nohz_full {} rcu_nocbs {} irq default affinity {}",
        show(&k.isolcpus),
        show(&k.nohz_full),
        show(&k.rcu_nocbs),
        show(&k.irq_default_affinity.clone().or(k.irqaffinity.clone()))
    )
}

/// A one-line summary of Nova's sets.
pub(crate) fn describe_nova(n: &NovaCpuSets) -> String {
    let show = |s: &Option<CpuSet>| s.as_ref().map_or("unset".to_string(), |s| s.to_string());
    format!(
        "cpu_dedicated_set {} cpu_shared_set {} vcpu_pin_set {}",
        show(&n.dedicated),
        show(&n.shared),
        show(&n.vcpu_pin_set)
    )
}

/// Reads Nova's CPU sets from the nova.conf at `path`.
pub(crate) fn read_nova_conf(path: &Path) -> Result<NovaCpuSets, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read nova.conf {}: {e}", path.display()))?;
    parse_nova_conf(&text).map_err(|e| format!("nova.conf {}: {e}", path.display()))
}

/// Nova's CPU sets from nova.conf's text.
pub(crate) fn parse_nova_conf(text: &str) -> Result<NovaCpuSets, String> {
    let opt = ini::ParseOption {
        enabled_quote: false,
        enabled_escape: false,
        enabled_indented_mutiline_value: true,
        enabled_preserve_key_leading_whitespace: false,
    };
    let conf = ini::Ini::load_from_str_opt(text, opt).map_err(|e| e.to_string())?;
    let get = |section: &str, key: &str| -> Result<Option<CpuSet>, String> {
        let Some(value) = conf
            .section(Some(section))
            .and_then(|s| s.get_all(key).next_back())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        else {
            return Ok(None);
        };
        value
            .parse::<CpuSet>()
            .map(Some)
            .map_err(|e| format!("[{section}] {key}: {e}"))
    };
    Ok(NovaCpuSets {
        dedicated: get("compute", "cpu_dedicated_set")?,
        shared: get("compute", "cpu_shared_set")?,
        vcpu_pin_set: get("DEFAULT", "vcpu_pin_set")?,
    })
}

/// Reads the kernel's CPU isolation under the procfs root `proc_root`.
pub(crate) fn read_kernel(proc_root: &Path) -> Result<KernelCpuIsolation, String> {
    let path = proc_root.join("cmdline");
    let cmdline = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut k = parse_cmdline(&cmdline).map_err(|e| format!("{}: {e}", path.display()))?;
    // Absent in some containers' procfs: then only the boot-time `irqaffinity=` is known.
    k.irq_default_affinity = std::fs::read_to_string(proc_root.join("irq/default_smp_affinity"))
        .ok()
        .and_then(|m| CpuSet::from_hex_mask(m.trim()).ok());
    Ok(k)
}

/// The isolation parameters of a kernel command line (`irq_default_affinity` left unset).
pub(crate) fn parse_cmdline(cmdline: &str) -> Result<KernelCpuIsolation, String> {
    let mut k = KernelCpuIsolation::default();
    // What follows `--` is for init, not the kernel.
    for word in cmdline.split_whitespace().take_while(|w| *w != "--") {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let value = value.trim_matches('"');
        let list = |v: &str| {
            v.parse::<CpuSet>()
                .map_err(|e| format!("{key}=: {e} (only CPU lists are understood)"))
        };
        match key {
            "isolcpus" => {
                // `isolcpus=[flag,...,]<cpu-list>`; no flag means `domain`.
                let mut flags = Vec::new();
                let mut rest = value;
                while let Some((head, tail)) = rest.split_once(',') {
                    if head.chars().all(|c| c.is_ascii_alphabetic() || c == '_') && !head.is_empty()
                    {
                        flags.push(head);
                        rest = tail;
                    } else {
                        break;
                    }
                }
                let cpus = list(rest)?;
                if flags.is_empty() || flags.contains(&"domain") {
                    k.isolcpus = Some(cpus.clone());
                }
                if flags.contains(&"managed_irq") {
                    k.isolcpus_managed_irq = Some(cpus);
                }
            }
            "nohz_full" => k.nohz_full = Some(list(value)?),
            "rcu_nocbs" => k.rcu_nocbs = Some(list(value)?),
            "irqaffinity" => k.irqaffinity = Some(list(value)?),
            _ => {}
        }
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> Option<CpuSet> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn nova_conf_sets_are_read_as_oslo_config_reads_them() {
        let text = "\
[DEFAULT]
# vcpu_pin_set = 9
vcpu_pin_set = 2-7
debug = true

[compute]
cpu_shared_set = 0-1
cpu_dedicated_set = 2-3
cpu_dedicated_set = 4-12,^8,15
[libvirt]
cpu_mode = host-passthrough
";
        let n = parse_nova_conf(text).unwrap();
        assert_eq!(
            n.dedicated,
            set("4-7,9-12,15"),
            "the last one wins, ^N excluded"
        );
        assert_eq!(n.shared, set("0-1"));
        assert_eq!(n.vcpu_pin_set, set("2-7"));
        assert_eq!(n.for_dedicated(), set("4-7,9-12,15").as_ref());
        let legacy = parse_nova_conf("[DEFAULT]\nvcpu_pin_set = 4-5\n").unwrap();
        assert_eq!(legacy.dedicated, None);
        assert_eq!(legacy.for_dedicated(), set("4-5").as_ref());
        assert_eq!(parse_nova_conf("").unwrap(), NovaCpuSets::default());
        let bad = parse_nova_conf("[compute]\ncpu_dedicated_set = 2-x\n").unwrap_err();
        assert!(bad.starts_with("[compute] cpu_dedicated_set: "), "{bad}");
    }

    #[test]
    fn the_kernel_command_line_gives_its_isolation() {
        let k = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz root=UUID=x ro isolcpus=managed_irq,domain,2-7 \
             nohz_full=2-7 rcu_nocbs=2-7 irqaffinity=0-1 quiet\n",
        )
        .unwrap();
        assert_eq!(k.isolcpus, set("2-7"));
        assert_eq!(k.isolcpus_managed_irq, set("2-7"));
        assert_eq!(k.nohz_full, set("2-7"));
        assert_eq!(k.rcu_nocbs, set("2-7"));
        assert_eq!(k.irqaffinity, set("0-1"));
        let plain = parse_cmdline("isolcpus=4,5").unwrap();
        assert_eq!(plain.isolcpus, set("4-5"), "no flag means domain");
        assert_eq!(plain.isolcpus_managed_irq, None);
        let nohz_only = parse_cmdline("isolcpus=nohz,3").unwrap();
        assert_eq!(
            nohz_only.isolcpus, None,
            "nohz alone does not isolate scheduling"
        );
        assert_eq!(
            parse_cmdline("ro quiet").unwrap(),
            KernelCpuIsolation::default()
        );
        let odd = parse_cmdline("nohz_full=all").unwrap_err();
        assert!(odd.starts_with("nohz_full=: "), "{odd}");
    }
}
