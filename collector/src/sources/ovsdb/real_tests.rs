//! The OVSDB source against a real, private `ovsdb-server` + `ovs-vswitchd` (dummy datapath, so no
//! kernel devices and no clash with other OVS instances on the host).
//!
//! Skipped with a printed reason when the OVS binaries are missing, unless
//! `PINFLOW_REQUIRE_PRIVILEGED=1`, which turns the skip into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, unsafe_code)] // Test code.

use crate::model::flows::OvsPort;
use crate::model::health::SourceRegistry;
use crate::sources::ovsdb::{OvsdbOptions, OvsdbSnapshot, SOURCE, run_ovsdb_with};
use pinflow_tests::ovs::Ovs;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the state may lag behind a change.
const FOLLOW: Duration = Duration::from_secs(1);

/// Waits up to [`FOLLOW`] for `pred`; panics with `what` and the last state otherwise.
async fn follows(
    rx: &mut watch::Receiver<OvsdbSnapshot>,
    what: &str,
    pred: impl Fn(&OvsdbSnapshot) -> bool,
) {
    let t = Instant::now();
    let ok = matches!(
        tokio::time::timeout(FOLLOW, rx.wait_for(|s| pred(s))).await,
        Ok(Ok(_))
    );
    if !ok {
        panic!(
            "{what}: state did not follow within {FOLLOW:?}: {:#?}",
            *rx.borrow()
        );
    }
    eprintln!("{what}: followed in {:?}", t.elapsed());
}

fn port<'a>(s: &'a OvsdbSnapshot, bridge: &str, name: &str) -> Option<&'a OvsPort> {
    s.bridges.get(bridge)?.ports.get(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ovsdb_state_follows_real_server() {
    if !pinflow_tests::ovs::available("ovsdb_real") {
        return;
    }
    let ovs = Ovs::start();
    let (tx, mut rx) = watch::channel(OvsdbSnapshot::default());
    let health = SourceRegistry::default();
    let mut opts = OvsdbOptions::new(ovs.run_dir());
    opts.min_backoff = Duration::from_millis(20);
    opts.max_backoff = Duration::from_millis(200);
    let client = tokio::spawn(run_ovsdb_with(opts, tx, health.clone()));
    follows(&mut rx, "initial monitor reply", |s| s.connected).await;
    assert!(s_empty(&rx), "fresh database has no bridges");

    ovs.vsctl(&[
        "add-br",
        "pft-br0",
        "--",
        "set",
        "bridge",
        "pft-br0",
        "datapath_type=dummy",
    ]);
    follows(&mut rx, "add-br", |s| {
        port(s, "pft-br0", "pft-br0")
            .is_some_and(|p| p.ofport == Some(65534) && p.kind == "internal")
    })
    .await;

    ovs.vsctl(&[
        "add-port",
        "pft-br0",
        "pft-p1",
        "--",
        "set",
        "interface",
        "pft-p1",
        "type=dummy",
        "ofport_request=7",
    ]);
    follows(&mut rx, "add-port (ofport assigned)", |s| {
        port(s, "pft-br0", "pft-p1")
            .is_some_and(|p| p.ofport == Some(7) && p.kind == "dummy" && p.tag.is_none())
    })
    .await;

    ovs.vsctl(&["set", "port", "pft-p1", "tag=4095"]);
    follows(&mut rx, "set port tag=4095", |s| {
        port(s, "pft-br0", "pft-p1").is_some_and(|p| p.tag == Some(4095))
    })
    .await;

    ovs.vsctl(&[
        "set",
        "interface",
        "pft-p1",
        "external_ids:iface-id=6f1c2d3e-port",
        "external_ids:vm-uuid=0b7e-vm",
        "external_ids:attached-mac=fa:16:3e:12:34:56",
    ]);
    follows(&mut rx, "set interface external_ids", |s| {
        port(s, "pft-br0", "pft-p1").is_some_and(|p| {
            p.iface_id.as_deref() == Some("6f1c2d3e-port")
                && p.vm_uuid.as_deref() == Some("0b7e-vm")
                && p.attached_mac.as_deref() == Some("fa:16:3e:12:34:56")
        })
    })
    .await;

    ovs.vsctl(&[
        "add-port",
        "pft-br0",
        "pft-p2",
        "--",
        "set",
        "interface",
        "pft-p2",
        "type=dummy",
    ]);
    follows(&mut rx, "second port", |s| {
        port(s, "pft-br0", "pft-p2").is_some_and(|p| p.ofport.is_some())
    })
    .await;
    ovs.vsctl(&["del-port", "pft-br0", "pft-p1"]);
    follows(&mut rx, "del-port", |s| {
        port(s, "pft-br0", "pft-p1").is_none() && port(s, "pft-br0", "pft-p2").is_some()
    })
    .await;
    assert!(health.snapshot()[SOURCE.name].up);
    assert_eq!(health.snapshot()[SOURCE.name].errors_total, 0);

    // ovsdb-server restart: the loss is noticed, the last state is kept, and the state is rebuilt.
    ovs.stop("ovsdb-server");
    follows(&mut rx, "ovsdb-server stopped", |s| !s.connected).await;
    assert!(
        port(&rx.borrow(), "pft-br0", "pft-p2").is_some(),
        "last state kept"
    );
    assert!(!health.snapshot()[SOURCE.name].up);
    let generation = rx.borrow().generation;
    ovs.start_ovsdb_server();
    follows(&mut rx, "ovsdb-server restarted", |s| {
        s.connected && s.generation > generation
    })
    .await;
    assert!(port(&rx.borrow(), "pft-br0", "pft-p2").is_some());
    ovs.vsctl(&["set", "port", "pft-p2", "tag=12"]);
    follows(&mut rx, "change after restart", |s| {
        port(s, "pft-br0", "pft-p2").is_some_and(|p| p.tag == Some(12))
    })
    .await;
    let h = &health.snapshot()[SOURCE.name];
    assert!(h.up, "{h:?}");
    assert_eq!(h.errors_total, 1, "one lost connection");

    client.abort();
}

fn s_empty(rx: &watch::Receiver<OvsdbSnapshot>) -> bool {
    rx.borrow().bridges.is_empty()
}
