//! Prometheus series of ovs-vswitchd and ovsdb-server themselves (unixctl counters), of the
//! switch's offload configuration (OVSDB) and of the OVS daemons' processes.

use super::encode::{Lv, Res, counter, gauge};
use super::families;
use crate::model::flows::InterfacesReport;
use crate::model::ovs_vswitchd::VswitchdReport;
use prometheus_client::encoding::DescriptorEncoder;

/// Encodes `pinflow_ovs_coverage_total`, `pinflow_ovs_vswitchd_*`, `pinflow_ovs_upcall_*` and
/// `pinflow_ovs_process_*`. The unixctl families have no series while ovs-vswitchd does not answer
/// (the last values are not served as current).
pub(crate) fn encode_vswitchd<'a>(enc: &mut DescriptorEncoder, r: &'a VswitchdReport) -> Res {
    counter(
        enc,
        &families::OVS_COVERAGE,
        r.coverage
            .iter()
            .map(|(e, n)| ([("event", Lv(e))], *n as f64)),
    )?;
    gauge(
        enc,
        &families::VSWITCHD_OBJECTS,
        r.objects
            .iter()
            .map(|(k, n)| ([("kind", Lv(k))], *n as f64)),
    )?;
    gauge(
        enc,
        &families::VSWITCHD_THREADS,
        [("handler", r.handlers), ("revalidator", r.revalidators)]
            .into_iter()
            .filter_map(|(k, n)| Some(([("kind", Lv(k))], n? as f64))),
    )?;
    gauge(
        enc,
        &families::UPCALL_FLOWS,
        r.upcall
            .iter()
            .map(|d| ([("datapath", Lv(&d.name))], d.flows as f64)),
    )?;
    gauge(
        enc,
        &families::UPCALL_FLOW_LIMIT,
        r.upcall
            .iter()
            .map(|d| ([("datapath", Lv(&d.name))], d.flow_limit as f64)),
    )?;
    gauge(
        enc,
        &families::UPCALL_DUMP_DURATION,
        r.upcall
            .iter()
            .filter_map(|d| Some(([("datapath", Lv(&d.name))], d.dump_duration?.as_secs_f64()))),
    )?;
    let procs = || r.processes.iter();
    gauge(
        enc,
        &families::OVS_PROCESS_UP,
        procs().map(|p| ([("process", Lv(p.process))], f64::from(u8::from(p.up)))),
    )?;
    counter(
        enc,
        &families::OVS_PROCESS_RESTARTS,
        procs().map(|p| ([("process", Lv(p.process))], p.restarts as f64)),
    )?;
    let up = || procs().filter(|p| p.up);
    gauge(
        enc,
        &families::OVS_PROCESS_RSS,
        up().map(|p| ([("process", Lv(p.process))], p.resident_bytes as f64)),
    )?;
    counter(
        enc,
        &families::OVS_PROCESS_CPU,
        up().map(|p| ([("process", Lv(p.process))], p.cpu_seconds)),
    )?;
    gauge(
        enc,
        &families::OVS_PROCESS_THREADS,
        up().map(|p| ([("process", Lv(p.process))], p.threads as f64)),
    )?;
    // ovsdb-server: no series while it does not answer (the report is then the default).
    let db = &r.ovsdb_server;
    let db_rows = |v: &'a [(&'static str, u64)]| db.connected.then_some(v).into_iter().flatten();
    counter(
        enc,
        &families::OVSDB_SERVER_COVERAGE,
        db_rows(&db.coverage).map(|(e, n)| ([("event", Lv(e))], *n as f64)),
    )?;
    gauge(
        enc,
        &families::OVSDB_SERVER_OBJECTS,
        db_rows(&db.objects).map(|(k, n)| ([("kind", Lv(k))], *n as f64)),
    )?;
    gauge(
        enc,
        &families::OVSDB_SERVER_BACKLOG,
        db.connected.then_some(([], db.backlog_bytes as f64)),
    )
}

/// Encodes `pinflow_ovs_hw_offload_enabled` and `pinflow_ovs_tc_policy_info` from the OVSDB
/// monitor's `Open_vSwitch.other_config`; no series while OVSDB is disconnected.
pub(crate) fn encode_offload(enc: &mut DescriptorEncoder, r: &InterfacesReport) -> Res {
    let o = r.connected.then_some(&r.offload);
    gauge(
        enc,
        &families::HW_OFFLOAD_ENABLED,
        o.map(|o| ([], f64::from(u8::from(o.hw_offload)))),
    )?;
    gauge(
        enc,
        &families::TC_POLICY_INFO,
        o.map(|o| ([("policy", Lv(o.tc_policy))], 1.0)),
    )
}

#[cfg(test)]
mod tests {
    use crate::model::flows::{InterfacesReport, OffloadConfig};
    use crate::model::ovs_vswitchd::{
        OvsdbServerReport, ProcessHealth, UpcallDatapath, VswitchdReport,
    };
    use crate::model::state::SharedState;
    use std::time::Duration;

    #[test]
    fn encodes_every_family_with_its_labels() {
        let st = SharedState::default();
        st.vswitchd.set(VswitchdReport {
            connected: true,
            coverage: vec![("upcall_flow_limit_hit", 3), ("txn_error", 0)],
            objects: vec![("rules", 5), ("udpif_keys", 2)],
            handlers: Some(4),
            revalidators: None,
            upcall: vec![UpcallDatapath {
                name: "ovs-system".into(),
                flows: 12,
                flow_limit: 150000,
                dump_duration: Some(Duration::from_millis(23)),
                revalidators: 1,
                ukeys: 12,
            }],
            processes: vec![
                ProcessHealth {
                    process: "ovs-vswitchd",
                    up: true,
                    resident_bytes: 1 << 20,
                    cpu_seconds: 1.5,
                    threads: 7,
                    restarts: 1,
                },
                ProcessHealth {
                    process: "ovsdb-server",
                    up: false,
                    restarts: 0,
                    ..Default::default()
                },
            ],
            bonds: Vec::new(),
            ovsdb_server: OvsdbServerReport {
                connected: true,
                coverage: vec![("txn_forward_create", 0), ("poll_zero_timeout", 14)],
                objects: vec![("cells", 307), ("sessions", 2)],
                backlog_bytes: 4096,
            },
        });
        st.ovs_interfaces.set(InterfacesReport {
            connected: true,
            offload: OffloadConfig {
                hw_offload: true,
                tc_policy: "skip_sw",
            },
            ..Default::default()
        });
        let text = crate::export::metrics::tests::render_state(st.clone());
        crate::export::metrics::tests::assert_samples_match_the_table(&text);
        for want in [
            "pinflow_ovs_coverage_total{event=\"upcall_flow_limit_hit\"} 3",
            "pinflow_ovs_coverage_total{event=\"txn_error\"} 0",
            "pinflow_ovs_vswitchd_objects{kind=\"udpif_keys\"} 2",
            "pinflow_ovs_vswitchd_threads{kind=\"handler\"} 4",
            "pinflow_ovs_upcall_flows{datapath=\"ovs-system\"} 12",
            "pinflow_ovs_upcall_flow_limit{datapath=\"ovs-system\"} 150000",
            "pinflow_ovs_upcall_dump_duration_seconds{datapath=\"ovs-system\"} 0.023",
            "pinflow_ovs_process_up{process=\"ovs-vswitchd\"} 1",
            "pinflow_ovs_process_up{process=\"ovsdb-server\"} 0",
            "pinflow_ovs_process_restarts_total{process=\"ovs-vswitchd\"} 1",
            "pinflow_ovs_process_resident_memory_bytes{process=\"ovs-vswitchd\"} 1048576",
            "pinflow_ovs_process_cpu_seconds_total{process=\"ovs-vswitchd\"} 1.5",
            "pinflow_ovs_process_threads{process=\"ovs-vswitchd\"} 7",
            "pinflow_ovs_ovsdb_server_coverage_total{event=\"poll_zero_timeout\"} 14",
            "pinflow_ovs_ovsdb_server_coverage_total{event=\"txn_forward_create\"} 0",
            "pinflow_ovs_ovsdb_server_objects{kind=\"cells\"} 307",
            "pinflow_ovs_ovsdb_server_objects{kind=\"sessions\"} 2",
            "pinflow_ovs_ovsdb_server_backlog_bytes{} 4096",
            "pinflow_ovs_hw_offload_enabled{} 1",
            "pinflow_ovs_tc_policy_info{policy=\"skip_sw\"} 1",
        ] {
            // Values print as OpenMetrics floats (`3.0`): compare numerically.
            let (series, value) = want.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            assert!(
                text.lines().any(|l| l
                    .rsplit_once(' ')
                    .is_some_and(|(s, v)| s == series && v.parse::<f64>() == Ok(value))),
                "missing {want}\n{text}"
            );
        }
        assert!(!text.contains("kind=\"revalidator\""));
        assert!(!text.contains("pinflow_ovs_process_threads{process=\"ovsdb-server\"}"));
        // Neither daemon nor OVSDB answering: no unixctl or offload series, process ones stay.
        st.vswitchd.set(VswitchdReport {
            processes: vec![ProcessHealth {
                process: "ovsdb-server",
                ..Default::default()
            }],
            ..Default::default()
        });
        st.ovs_interfaces.set(InterfacesReport::default());
        let text = crate::export::metrics::tests::render_state(st);
        for gone in [
            "pinflow_ovs_ovsdb_server_coverage_total{",
            "pinflow_ovs_ovsdb_server_objects{",
            "pinflow_ovs_ovsdb_server_backlog_bytes{",
            "pinflow_ovs_hw_offload_enabled{",
            "pinflow_ovs_tc_policy_info{",
        ] {
            assert!(!text.contains(gone), "{gone}\n{text}");
        }
        assert!(text.contains("pinflow_ovs_process_up{process=\"ovsdb-server\"} 0"));
    }
}
