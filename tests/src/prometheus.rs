//! A real Prometheus (Debian's) on a free loopback port, for tests that scrape, evaluate rules or
//! run dashboard queries.

use crate::pinflow::free_addr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `prometheus` with `config`, its TSDB and log (`prometheus.log`) under `dir`; returns the
/// process and the address its web API answers on. The caller kills it.
pub fn spawn(config: &Path, dir: &Path) -> (Child, SocketAddr) {
    let addr = free_addr();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("prometheus log"))
        .spawn()
        .expect("start prometheus");
    (child, addr)
}
