//! Whether the OpenFlow source can run: each bridge's session opened as the daemon opens it.

use crate::sources::openflow::{OfError, OpenFlowClient};
use crate::sources::{CanRun, HostPaths, PROBE_TIMEOUT, SourceDef, block_on, ovsdb};

/// The OpenFlow source: one session per bridge that mirrors its flow tables.
pub(crate) const SOURCE: SourceDef = SourceDef {
    name: "openflow",
    collector: "flows",
    can_run: |host| block_on(can_run(host)).unwrap_or_else(|e| CanRun::of(Err(e))),
};

/// Every bridge's OpenFlow session, as `serve` opens it (connect, OpenFlow 1.3 handshake, flow
/// monitor, port descriptions), each within [`PROBE_TIMEOUT`]: one result per bridge.
async fn can_run(host: &HostPaths) -> Vec<CanRun> {
    let bridges = match ovsdb::bridges_once(&host.ovs_run_dir).await {
        Ok(b) => b,
        Err(_) => return CanRun::of(Err("no bridge list (OVSDB is down)".to_string())),
    };
    if bridges.is_empty() {
        return CanRun::of(Ok("no bridge in OVSDB".into()));
    }
    let mut checks = Vec::new();
    for name in bridges.keys() {
        let path = host.bridge_socket(name);
        let result = async {
            let mut c = OpenFlowClient::connect(&path, PROBE_TIMEOUT).await?;
            c.start_monitor().await?;
            let ports = c.port_descs().await?;
            Ok::<_, OfError>(format!("{} port(s), flow monitor ok", ports.len()))
        }
        .await
        .map_err(|e| format!("{}: {e}", path.display()));
        checks.push(CanRun {
            bridge: Some(name.clone()),
            result,
            problems: Vec::new(),
        });
    }
    checks
}
