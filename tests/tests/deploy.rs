//! deploy/ run as shipped: the Kubernetes manifests rendered by kustomize and validated offline,
//! the static binary and the FROM-scratch image (built by `cargo xtask dist --image`) run by podman
//! on the real testbed with exactly the DaemonSet's args, mounts, capabilities, seccomp and
//! read-only root, each capability shown to be needed, and the systemd unit verified.

use pinflow_tests::libvirt::{self, DomainSpec};
use pinflow_tests::ovs::Ovs;
use pinflow_tests::scrape::{self, source_up};
use pinflow_tests::{require_privileged, run, wait_for};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/pinflow-dist` (made by `cargo xtask dist --image`; `cargo xtask test` runs it first).
fn dist_dir() -> PathBuf {
    std::env::var_os("PINFLOW_DIST_DIR").map_or_else(
        || {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root().join("target"), PathBuf::from)
                .join("pinflow-dist")
        },
        PathBuf::from,
    )
}

const IMAGE: &str = concat!("localhost/pinflow:", env!("CARGO_PKG_VERSION"));

/// Every document `kubectl kustomize <dir>` renders.
fn kustomize(dir: &str) -> Vec<Value> {
    let text = run(
        "kubectl",
        &["kustomize", &root().join(dir).to_string_lossy()],
    );
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML"))
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in the rendered manifests"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// What a container runtime is told about the pinflow container.
struct PodSpec {
    args: Vec<String>,
    caps: Vec<String>,
    read_only_root: bool,
    host_network: bool,
    host_pid: bool,
    no_new_privs: bool,
    seccomp: String,
    user: String,
    /// (host path or ConfigMap name, mount path, read-only, is ConfigMap)
    mounts: Vec<(String, String, bool, bool)>,
    config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

fn pod_spec(docs: &[Value]) -> PodSpec {
    let ds = kind(docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    let volumes: BTreeMap<String, &Value> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .map(|v| (v["name"].as_str().expect("name").to_string(), v))
        .collect();
    let mounts = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            let v = volumes[m["name"].as_str().expect("mount name")];
            let (src, cm) = match v["hostPath"]["path"].as_str() {
                Some(p) => (p.to_string(), false),
                None => (
                    v["configMap"]["name"]
                        .as_str()
                        .expect("hostPath or configMap")
                        .to_string(),
                    true,
                ),
            };
            (
                src,
                m["mountPath"].as_str().expect("mountPath").to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
                cm,
            )
        })
        .collect();
    let config_maps = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("ConfigMap"))
        .map(|d| {
            let data = d["data"]
                .as_mapping()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().unwrap_or_default().to_string(),
                                v.as_str().unwrap_or_default().to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                data,
            )
        })
        .collect();
    PodSpec {
        args: strings(&c["args"]),
        caps: strings(&sc["capabilities"]["add"]),
        read_only_root: sc["readOnlyRootFilesystem"].as_bool() == Some(true),
        host_network: pod["hostNetwork"].as_bool() == Some(true),
        host_pid: pod["hostPID"].as_bool() == Some(true),
        no_new_privs: sc["allowPrivilegeEscalation"].as_bool() == Some(false),
        seccomp: sc["seccompProfile"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        user: format!(
            "{}:{}",
            sc["runAsUser"].as_i64().unwrap_or(0),
            sc["runAsGroup"].as_i64().unwrap_or(0)
        ),
        mounts,
        config_maps,
    }
}

#[test]
fn kustomize_renders_least_privilege_manifests_that_validate_offline() {
    if !require_privileged(
        "kustomize_renders_…",
        &["kubectl", "kubernetes-validate", "node"],
    ) {
        return;
    }
    let docs = kustomize("deploy/kubernetes");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for want in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "DaemonSet",
        "PodMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    // One scrape per pod: a ServiceMonitor as well would scrape every series twice.
    assert!(
        !kinds.contains(&"ServiceMonitor"),
        "PodMonitor and ServiceMonitor both rendered"
    );
    assert_eq!(
        kind(&docs, "ServiceAccount")["automountServiceAccountToken"].as_bool(),
        Some(false)
    );
    assert_eq!(
        kind(&docs, "Service")["spec"]["clusterIP"].as_str(),
        Some("None")
    );
    let ds = kind(&docs, "DaemonSet");
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let sc = &c["securityContext"];
    assert!(sc["privileged"].is_null(), "privileged in the default");
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let spec = pod_spec(&docs);
    assert_eq!(
        spec.caps,
        ["BPF", "PERFMON"],
        "the documented minimal set (no NET_ADMIN: conntrack is the overlay's)"
    );
    assert!(spec.read_only_root && spec.no_new_privs && spec.host_network);
    assert!(
        spec.host_pid,
        "hostPID: the affinity check's syscall needs the host's thread ids"
    );
    assert_eq!(spec.seccomp, "RuntimeDefault");
    for (src, dst, ro, _) in &spec.mounts {
        assert!(ro, "{src} is mounted read-write at {dst}");
    }
    assert!(
        c["resources"]["limits"]["memory"].is_string()
            && c["resources"]["requests"]["memory"].is_string()
    );
    // The config the DaemonSet mounts loads.
    let toml = spec
        .config_maps
        .values()
        .find_map(|d| d.get("pinflow.toml"));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("pinflow.toml");
    std::fs::write(&cfg, toml.expect("pinflow.toml in a ConfigMap")).expect("write");
    let out = pinflow(&["check", "--config", &cfg.to_string_lossy()]);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().take(2).eq(["config", "ok"])),
        "{out}"
    );
    // Every core resource against the Kubernetes API schema (strict: unknown fields fail).
    for dir in [
        "deploy/kubernetes",
        "deploy/kubernetes/overlays/privileged",
        "deploy/kubernetes/overlays/nova-conf",
        "deploy/kubernetes/overlays/conntrack",
    ] {
        let text = run(
            "kubectl",
            &["kustomize", &root().join(dir).to_string_lossy()],
        );
        let f = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(f.path(), &text).expect("write");
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--no-warn"])
            .arg(f.path())
            .output()
            .expect("kubernetes-validate");
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{dir}: {report}");
        for k in [
            "namespace",
            "serviceaccount",
            "configmap",
            "service",
            "daemonset",
        ] {
            assert!(
                report.contains(&format!("passed for resource {k}/")),
                "{dir}: {k} not validated:\n{report}"
            );
        }
    }
    // The prometheus-operator objects (the rendered ones and the ServiceMonitor alternative)
    // against the operator's CRD schemas.
    let mut crs: Vec<serde_json::Value> = docs
        .iter()
        .filter(|d| {
            d["apiVersion"]
                .as_str()
                .is_some_and(|a| a.starts_with("monitoring.coreos.com/"))
        })
        .map(|d| serde_json::to_value(d).expect("JSON"))
        .collect();
    let sm = std::fs::read_to_string(
        root().join("deploy/kubernetes/base/monitoring/servicemonitor.yaml"),
    )
    .expect("servicemonitor.yaml");
    let sm: Value = serde_yaml_ng::from_str(&sm).expect("ServiceMonitor YAML");
    crs.push(serde_json::to_value(&sm).expect("JSON"));
    assert_eq!(crs.len(), 3, "PodMonitor, PrometheusRule, ServiceMonitor");
    let report = crd_validate(&serde_json::Value::Array(crs.clone()));
    assert!(report.0, "{}", report.1);
    // …and the check can fail: a wrongly typed field is caught.
    crs[0]["spec"]["podMetricsEndpoints"][0]["interval"] = serde_json::json!(15);
    assert!(
        !crd_validate(&serde_json::Value::Array(crs)).0,
        "a numeric interval passed"
    );
    let privileged = kustomize("deploy/kubernetes/overlays/privileged");
    let psc = &kind(&privileged, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(psc["privileged"].as_bool(), Some(true));
    // The nova-conf overlay: the flag names the file under the read-only mount.
    let nova = kustomize("deploy/kubernetes/overlays/nova-conf");
    let pod = &kind(&nova, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(
        c["args"].as_sequence().is_some_and(|a| a
            .iter()
            .any(|x| x == "--nova-conf=/host/etc/nova/nova.conf")),
        "{c:?}"
    );
    assert!(
        c["volumeMounts"].as_sequence().is_some_and(|m| m
            .iter()
            .any(|m| m["mountPath"] == "/host/etc/nova" && m["readOnly"].as_bool() == Some(true))),
        "{c:?}"
    );
    // The conntrack overlay: the base plus CAP_NET_ADMIN and the base's config plus [conntrack],
    // which loads and turns conntrack on; nothing else differs.
    let ct = pod_spec(&kustomize("deploy/kubernetes/overlays/conntrack"));
    assert_eq!(ct.caps, ["BPF", "PERFMON", "NET_ADMIN"]);
    // (The ConfigMap's name carries its content's hash.)
    let mounts = |p: &PodSpec| -> Vec<(String, String, bool)> {
        p.mounts
            .iter()
            .map(|(src, dst, ro, cm)| {
                (
                    if *cm { "configmap".into() } else { src.clone() },
                    dst.clone(),
                    *ro,
                )
            })
            .collect()
    };
    assert_eq!(
        (&ct.args, mounts(&ct), ct.read_only_root, ct.no_new_privs),
        (
            &spec.args,
            mounts(&spec),
            spec.read_only_root,
            spec.no_new_privs
        )
    );
    let ct_toml = ct
        .config_maps
        .values()
        .find_map(|d| d.get("pinflow.toml"))
        .expect("the overlay's pinflow.toml");
    let base_toml = toml.expect("pinflow.toml in a ConfigMap");
    let extra = ct_toml
        .strip_prefix(base_toml.as_str())
        .unwrap_or_else(|| panic!("the overlay's config is not the base's plus more:\n{ct_toml}"));
    assert!(
        extra.trim_start().starts_with("[conntrack]") && extra.matches('[').count() == 1,
        "the overlay adds only [conntrack]: {extra}"
    );
    assert!(
        extra.lines().any(|l| l.trim() == "enabled = true"),
        "the overlay turns conntrack on: {extra}"
    );
    std::fs::write(&cfg, ct_toml).expect("write");
    let out = pinflow(&["check", "--config", &cfg.to_string_lossy()]);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().take(2).eq(["config", "ok"])),
        "{out}"
    );
}

/// Runs tests/crd-schema/validate.mjs (npm `@kubernetes-models/prometheus-operator`, installed by
/// `cargo xtask setup`) on `docs`: (all valid, report).
fn crd_validate(docs: &serde_json::Value) -> (bool, String) {
    use std::io::Write as _;
    let dir = root().join("tests/crd-schema");
    let mut child = Command::new("node")
        .arg("validate.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(docs.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("node output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Output of the binary under test (the debug build of this workspace).
fn pinflow(args: &[&str]) -> String {
    let out = Command::new(pinflow_tests::pinflow::bin())
        .args(args)
        .output()
        .expect("run pinflow");
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn static_binary_has_no_dynamic_section_and_the_image_only_the_binary() {
    if !require_privileged("static_binary_…", &["readelf", "podman"]) {
        return;
    }
    let bin = dist_dir().join("pinflow");
    assert!(
        bin.exists(),
        "{} missing: run `cargo xtask dist --image`",
        bin.display()
    );
    let out = run("readelf", &["-d", &bin.to_string_lossy()]);
    assert!(out.contains("There is no dynamic section"), "{out}");
    let hdr = run("readelf", &["-lW", &bin.to_string_lossy()]);
    assert!(!hdr.contains("INTERP"), "{hdr}");
    let size = std::fs::metadata(&bin).expect("stat").len();
    assert!(
        size < 15_000_000,
        "static binary is {size} bytes (goal ≤ 15 MB)"
    );
    let version = run(&bin.to_string_lossy(), &["--version"]);
    assert!(
        version.contains("revision: ") && version.contains("rustc: rustc "),
        "{version}"
    );
    for f in [
        "pinflow-serve.1",
        "completions/pinflow.bash",
        "completions/_pinflow",
        "completions/pinflow.fish",
    ] {
        // roff escapes the dashes.
        let text = std::fs::read_to_string(dist_dir().join(f))
            .expect(f)
            .replace("\\-", "-");
        assert!(
            text.contains("web.listen-address"),
            "{f} lacks the serve flags"
        );
    }
    // The image holds one file: the binary (FROM scratch).
    let image_size: u64 = run(
        "podman",
        &["image", "inspect", "--format", "{{.Size}}", IMAGE],
    )
    .trim()
    .parse()
    .expect("image size");
    assert!(
        image_size < 15_000_000 && image_size >= size,
        "image {image_size} bytes, binary {size}"
    );
    let id = run("podman", &["create", IMAGE]).trim().to_string();
    let export = Command::new("podman")
        .args(["export", &id])
        .output()
        .expect("podman export");
    run("podman", &["rm", &id]);
    let listing = tar_listing(&export.stdout);
    let files: Vec<&String> = listing
        .iter()
        .filter(|p| {
            !p.ends_with('/')
                && ![
                    "etc/hostname",
                    "etc/hosts",
                    "etc/resolv.conf",
                    "run/.containerenv",
                ]
                .contains(&p.as_str())
        })
        .collect();
    assert_eq!(
        files,
        [&"pinflow".to_string()],
        "image content: {listing:?}"
    );
}

/// Names in a tar stream.
fn tar_listing(tar: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() {
        let h = &tar[off..off + 512];
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .trim_start_matches("./")
            .to_string();
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&h[124..136]).trim_matches(|c: char| c == '\0' || c == ' '),
            8,
        )
        .unwrap_or(0);
        if !name.is_empty() {
            out.push(name);
        }
        off += 512 + size.div_ceil(512) * 512;
    }
    out
}

/// The container runtime's RuntimeDefault seccomp profile as current runtimes ship it. Debian 12's
/// podman profile (containers-common 0.50) allows `bpf`/`perf_event_open` only with
/// CAP_SYS_ADMIN; containerd ≥ 1.7 and containers-common ≥ 0.51 also allow them with
/// CAP_BPF/CAP_PERFMON. This adds exactly those two conditional rules to Debian's profile.
fn runtime_default_seccomp(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/usr/share/containers/seccomp.json")
        .expect("podman's seccomp profile");
    let mut profile: serde_json::Value = serde_json::from_str(&text).expect("seccomp JSON");
    let rules = profile["syscalls"].as_array_mut().expect("syscalls");
    let modern = [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")];
    // Debian's rule "ERRNO for these unless CAP_SYS_ADMIN" loses the two syscalls…
    for r in rules.iter_mut() {
        if let Some(names) = r["names"].as_array_mut() {
            names.retain(|n| !modern.iter().any(|(s, _)| n.as_str() == Some(*s)));
        }
    }
    // …which get the current runtimes' rules: allowed with CAP_SYS_ADMIN or their own capability.
    for (syscall, cap) in modern {
        for (action, caps_key, caps) in [
            ("SCMP_ACT_ALLOW", "includes", vec!["CAP_SYS_ADMIN"]),
            ("SCMP_ACT_ALLOW", "includes", vec![cap]),
            ("SCMP_ACT_ERRNO", "excludes", vec!["CAP_SYS_ADMIN", cap]),
        ] {
            let mut rule = serde_json::json!({
                "names": [syscall], "action": action, "args": [],
                "includes": {}, "excludes": {}
            });
            rule[caps_key] = serde_json::json!({ "caps": caps });
            if action == "SCMP_ACT_ERRNO" {
                rule["errnoRet"] = serde_json::json!(1);
            }
            rules.push(rule);
        }
    }
    let p = dir.join("runtime-default.json");
    std::fs::write(&p, profile.to_string()).expect("write seccomp profile");
    p
}

/// A pinflow container run as the DaemonSet describes it (minus `drop` capabilities), killed on drop.
struct Container {
    child: Child,
    name: String,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host paths of the testbed for the manifest's host paths (the private OVS runs in its own run
/// directory; everything else is the host's own).
fn run_container(
    spec: &PodSpec,
    host_paths: &BTreeMap<&str, PathBuf>,
    drop: &[&str],
    work: &Path,
    name: &str,
) -> Container {
    let mut c = Command::new("podman");
    c.args(["run", "--rm", "--name", name, "--runtime", "runc"])
        .args([
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ])
        .args(["--user", &spec.user, "--cap-drop=ALL"]);
    let caps: Vec<String> = spec
        .caps
        .iter()
        .filter(|c| !drop.contains(&c.as_str()))
        .map(|c| format!("CAP_{c}"))
        .collect();
    if !caps.is_empty() {
        c.arg(format!("--cap-add={}", caps.join(",")));
    }
    if spec.read_only_root {
        c.arg("--read-only");
    }
    if spec.host_network {
        c.arg("--network=host");
    }
    if spec.host_pid {
        c.arg("--pid=host");
    }
    if spec.no_new_privs {
        c.args(["--security-opt", "no-new-privileges"]);
    }
    assert_eq!(
        spec.seccomp, "RuntimeDefault",
        "only RuntimeDefault is modelled"
    );
    c.arg("--security-opt").arg(format!(
        "seccomp={}",
        runtime_default_seccomp(work).display()
    ));
    for (src, dst, ro, is_cm) in &spec.mounts {
        let host = if *is_cm {
            let d = work.join(format!("configmap-{src}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            for (k, v) in &spec.config_maps[src] {
                std::fs::write(d.join(k), v).expect("write configmap file");
            }
            d
        } else {
            host_paths
                .get(src.as_str())
                .cloned()
                .unwrap_or_else(|| PathBuf::from(src))
        };
        c.arg("-v").arg(format!(
            "{}:{dst}{}",
            host.display(),
            if *ro { ":ro" } else { "" }
        ));
    }
    c.arg(IMAGE).args(&spec.args);
    let log = std::fs::File::create(work.join(format!("{name}.log"))).expect("log");
    let child = c
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("podman run");
    Container {
        child,
        name: name.to_string(),
    }
}

/// The address the DaemonSet's `--web.listen-address=:PORT` serves on, from this host.
fn listen_port(spec: &PodSpec) -> u16 {
    spec.args
        .iter()
        .find_map(|a| a.strip_prefix("--web.listen-address=:"))
        .and_then(|p| p.parse().ok())
        .expect("--web.listen-address=:PORT in the DaemonSet's args")
}

#[test]
fn image_runs_on_the_testbed_with_exactly_the_daemonsets_args_mounts_and_capabilities() {
    if !require_privileged(
        "image_runs_on_the_testbed_…",
        &["podman", "runc", "kubectl", "virsh", "ovs-vswitchd"],
    ) {
        return;
    }
    let docs = kustomize("deploy/kubernetes");
    let spec = pod_spec(&docs);
    libvirt::ensure_daemons().expect("libvirt testbed");
    let _dom = libvirt::start(&DomainSpec::pinned("pf-deploy", &["0"]).with_nova(
        "deploy-vm",
        "qa",
        "m1.tiny",
    ))
    .expect("domain");
    let ovs = Ovs::start();
    ovs.add_bridge("br-int", &[("tapdeploy", 1)]);
    ovs.ofctl(&["add-flow", "br-int", "table=0,priority=1,actions=NORMAL"]);
    let work = tempfile::tempdir().expect("tempdir");
    // The manifest's host paths are the host's own, except OVS's run dir: the test's private OVS.
    let host_paths = BTreeMap::from([("/run/openvswitch", ovs.run_dir())]);
    let addr = SocketAddr::from(([127, 0, 0, 1], listen_port(&spec)));
    let log = |name: &str| {
        std::fs::read_to_string(work.path().join(format!("{name}.log"))).unwrap_or_default()
    };

    let c = run_container(&spec, &host_paths, &[], work.path(), "pinflow-deploy-test");
    let want_up = ["libvirt", "procfs", "sched_bpf", "ovsdb", "openflow"];
    sources_up(addr, &want_up, || log("pinflow-deploy-test"));
    let metrics = scrape::parse(
        &scrape::http_get(addr, "/metrics", Duration::from_secs(2))
            .expect("scrape")
            .1,
    );
    for s in want_up {
        assert_eq!(source_up(&metrics, s), Some(1.0), "{s}");
    }
    let info = scrape::select(
        &metrics,
        "pinflow_instance_info",
        &[("domain", "pf-deploy")],
    );
    assert_eq!(info.len(), 1, "the domain is seen through /host/proc");
    let procfs = scrape::sources(addr).expect("sources")["procfs"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        procfs.contains("events mode") && procfs.contains("by sched_getaffinity(2)"),
        "the manifest's pod runs the cheap affinity check: {procfs}"
    );
    assert_eq!(info[0].labels["name"], "deploy-vm");
    assert_eq!(
        scrape::select(&metrics, "pinflow_ovs_flows", &[("bridge", "br-int")]).len(),
        1,
        "br-int mirrored over the read-only OVS run dir"
    );
    // The container has exactly the two capabilities, and a read-only root.
    let status = run(
        "podman",
        &["exec", "pinflow-deploy-test", "/pinflow", "--version"],
    );
    assert!(status.contains("revision"), "{status}");
    let inspect = run(
        "podman",
        &[
            "inspect",
            "--format",
            "{{.EffectiveCaps}} {{.HostConfig.ReadonlyRootfs}}",
            "pinflow-deploy-test",
        ],
    );
    assert_eq!(inspect.trim(), "[CAP_BPF CAP_PERFMON] true");
    drop(c);
    let _ = wait_for(Duration::from_secs(10), || {
        scrape::sources(addr).is_none().then_some(())
    });

    // Each capability is needed: without it the eBPF source says so and names it; the rest runs.
    for cap in &spec.caps {
        let name = format!("pinflow-deploy-no-{}", cap.to_lowercase());
        let _c = run_container(&spec, &host_paths, &[cap.as_str()], work.path(), &name);
        let s = wait_for(Duration::from_secs(20), || {
            let s = scrape::sources(addr)?;
            let ready = s.get("procfs").and_then(|h| h["up"].as_bool()) == Some(true)
                && s.contains_key("sched_bpf");
            ready.then_some(s)
        })
        .unwrap_or_else(|| panic!("no answer without CAP_{cap}\n{}", log(&name)))
        .0;
        let bpf = &s["sched_bpf"];
        assert_eq!(
            bpf["up"].as_bool(),
            Some(false),
            "sched_bpf up without CAP_{cap}"
        );
        let detail = bpf["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(&format!("missing CAP_{cap}:")),
            "without CAP_{cap}, sched_bpf says {detail:?}"
        );
        assert_eq!(s["libvirt"]["up"].as_bool(), Some(true));
        drop(_c);
        let _ = wait_for(Duration::from_secs(10), || {
            scrape::sources(addr).is_none().then_some(())
        });
    }
}

/// The `nova-conf` overlay as shipped: its extra flag and read-only hostPath mount bring the
/// host's nova.conf to the host CPU checks, which name the instance pinned outside
/// `cpu_dedicated_set`.
#[test]
fn nova_conf_overlay_runs_with_the_hosts_nova_conf() {
    if !require_privileged(
        "nova_conf_overlay_runs_with_the_hosts_nova_conf",
        &["podman", "runc", "kubectl", "virsh", "ovs-vswitchd"],
    ) {
        return;
    }
    let docs = kustomize("deploy/kubernetes/overlays/nova-conf");
    let spec = pod_spec(&docs);
    libvirt::ensure_daemons().expect("libvirt testbed");
    let _dom = libvirt::start(&DomainSpec::pinned("pf-deploy-nova", &["0"])).expect("domain");
    let ovs = Ovs::start();
    ovs.add_bridge("br-int", &[]);
    let work = tempfile::tempdir().expect("tempdir");
    // The host's /etc/nova: a nova.conf whose dedicated set leaves out the domain's pCPU 0.
    let etc_nova = work.path().join("etc-nova");
    std::fs::create_dir_all(&etc_nova).expect("mkdir");
    std::fs::write(
        etc_nova.join("nova.conf"),
        "[compute]\ncpu_dedicated_set = 1\ncpu_shared_set = 0\n",
    )
    .expect("nova.conf");
    let host_paths = BTreeMap::from([("/run/openvswitch", ovs.run_dir()), ("/etc/nova", etc_nova)]);
    let addr = SocketAddr::from(([127, 0, 0, 1], listen_port(&spec)));
    let name = "pinflow-deploy-nova";
    let _c = run_container(&spec, &host_paths, &[], work.path(), name);
    let want = "pf-deploy-nova vCPU 0 is pinned to 0: 0 outside cpu_dedicated_set 1";
    let found = wait_for(Duration::from_secs(20), || {
        let (_, body) = scrape::http_get(addr, "/api/v1/host_cpu", Duration::from_secs(2)).ok()?;
        let api: serde_json::Value = serde_json::from_str(&body).ok()?;
        let lines = api["problems"]["pinned_outside_dedicated_set"].as_array()?;
        lines.iter().any(|l| l == want).then_some(api)
    });
    assert!(
        found.is_some(),
        "no finding {want:?}: {:?}\n{}",
        scrape::sources(addr),
        std::fs::read_to_string(work.path().join(format!("{name}.log"))).unwrap_or_default()
    );
    let metrics = scrape::parse(
        &scrape::http_get(addr, "/metrics", Duration::from_secs(2))
            .expect("scrape")
            .1,
    );
    assert_eq!(source_up(&metrics, "host_cpu"), Some(1.0));
    let problem = scrape::select(
        &metrics,
        "pinflow_host_cpu_config_problem",
        &[("problem", "pinned_outside_dedicated_set")],
    );
    assert!(
        problem.first().is_some_and(|p| p.value >= 1.0),
        "{problem:?}"
    );
}

/// The `conntrack` overlay as shipped: with its CAP_NET_ADMIN and config the image counts the
/// host's conntrack table over ctnetlink; without the capability the source is down and says why.
#[test]
fn conntrack_overlay_runs_with_net_admin_and_counts_the_table() {
    if !require_privileged(
        "conntrack_overlay_runs_with_net_admin_and_counts_the_table",
        &["podman", "runc", "kubectl", "ovs-vswitchd"],
    ) {
        return;
    }
    let Ok(max) = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max") else {
        eprintln!("SKIP conntrack_overlay_…: nf_conntrack is not loaded");
        return;
    };
    let max: f64 = max.trim().parse().expect("nf_conntrack_max");
    let docs = kustomize("deploy/kubernetes/overlays/conntrack");
    let spec = pod_spec(&docs);
    let ovs = Ovs::start();
    ovs.add_bridge("br-int", &[]);
    let work = tempfile::tempdir().expect("tempdir");
    let host_paths = BTreeMap::from([("/run/openvswitch", ovs.run_dir())]);
    let addr = SocketAddr::from(([127, 0, 0, 1], listen_port(&spec)));
    let log = |name: &str| {
        std::fs::read_to_string(work.path().join(format!("{name}.log"))).unwrap_or_default()
    };
    let name = "pinflow-deploy-conntrack";
    let c = run_container(&spec, &host_paths, &[], work.path(), name);
    let want_up = ["conntrack", "libvirt", "procfs", "ovsdb", "openflow"];
    let up = sources_up(addr, &want_up, || log(name));
    let metrics = scrape::parse(
        &scrape::http_get(addr, "/metrics", Duration::from_secs(2))
            .expect("scrape")
            .1,
    );
    for s in want_up {
        assert_eq!(source_up(&metrics, s), Some(1.0), "{s}");
    }
    assert_eq!(
        scrape::select(&metrics, "pinflow_conntrack_entries", &[]).len(),
        1,
        "pinflow_conntrack_entries"
    );
    let limit = scrape::select(&metrics, "pinflow_conntrack_entries_limit", &[]);
    assert_eq!(
        limit.first().map(|s| s.value),
        Some(max),
        "the host's nf_conntrack_max (host network namespace)"
    );
    eprintln!(
        "conntrack overlay: {} ({:?} after the start)",
        up.as_ref()
            .and_then(|(s, _)| s["conntrack"]["detail"].as_str())
            .unwrap_or_default(),
        up.as_ref().map(|(_, t)| t)
    );
    let inspect = run(
        "podman",
        &["inspect", "--format", "{{.EffectiveCaps}}", name],
    );
    let mut caps: Vec<&str> = inspect
        .trim()
        .trim_matches(|c| c == '[' || c == ']')
        .split_whitespace()
        .collect();
    caps.sort_unstable();
    assert_eq!(caps, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
    drop(c);
    let _ = wait_for(Duration::from_secs(10), || {
        scrape::sources(addr).is_none().then_some(())
    });

    // Without CAP_NET_ADMIN (the base's capabilities with this config) the source is down and
    // names the refusal; the rest runs.
    let name = "pinflow-deploy-conntrack-no-net-admin";
    let _c = run_container(&spec, &host_paths, &["NET_ADMIN"], work.path(), name);
    let s = wait_for(Duration::from_secs(20), || {
        let s = scrape::sources(addr)?;
        let ready = s.get("procfs").and_then(|h| h["up"].as_bool()) == Some(true)
            && s.get("conntrack").and_then(|h| h["up"].as_bool()) == Some(false);
        ready.then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "conntrack not down without CAP_NET_ADMIN: {:?}\n{}",
            scrape::sources(addr),
            log(name)
        )
    })
    .0;
    let detail = s["conntrack"]["detail"].as_str().unwrap_or_default();
    eprintln!("conntrack overlay without CAP_NET_ADMIN: {detail}");
    assert!(
        detail.contains("Operation not permitted"),
        "without CAP_NET_ADMIN, conntrack says {detail:?}"
    );
    assert_eq!(s["libvirt"]["up"].as_bool(), Some(true));
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    if !require_privileged("systemd_unit_…", &["systemd-analyze"]) {
        return;
    }
    let unit = root().join("deploy/systemd/pinflow.service");
    let text = std::fs::read_to_string(&unit).expect("deploy/systemd/pinflow.service");
    for want in [
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
        "AmbientCapabilities=CAP_BPF CAP_PERFMON",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "MemoryMax=",
    ] {
        assert!(text.contains(want), "{want} missing from the unit");
    }
    // ExecStart must exist for `verify`: a root with the binary where the unit expects it.
    let exec = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .and_then(|l| l.split_whitespace().next())
        .expect("ExecStart");
    let r = tempfile::tempdir().expect("tempdir");
    let bin_in_root = r.path().join(exec.trim_start_matches('/'));
    std::fs::create_dir_all(bin_in_root.parent().expect("dir")).expect("mkdir");
    std::fs::copy(pinflow_tests::pinflow::bin(), &bin_in_root).expect("copy binary");
    let units = r.path().join("etc/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    std::fs::copy(&unit, units.join("pinflow.service")).expect("copy unit");
    // The host's own units (multi-user.target, sysinit.target…) for the dependencies.
    let lib = r.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&lib).expect("mkdir");
    run(
        "cp",
        &["-r", "/usr/lib/systemd/system", &lib.to_string_lossy()],
    );
    // `Documentation=man:pinflow(1)` is checked with `man`: the page `cargo xtask dist` made.
    let man = r.path().join("man/man1");
    std::fs::create_dir_all(&man).expect("mkdir");
    std::fs::copy(dist_dir().join("pinflow.1"), man.join("pinflow.1")).expect("man page");
    let analyze = |args: &[&str]| {
        let out = Command::new("systemd-analyze")
            .env("MANPATH", r.path().join("man"))
            .args(args)
            .arg(format!("--root={}", r.path().display()))
            .output()
            .expect("systemd-analyze");
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), report)
    };
    // What systemd makes of the capability lines (unit and drop-ins merged), offline; its
    // security report has checks for these two of the three (none for CAP_PERFMON).
    let caps = || {
        let (_, report) = analyze(&["security", "--offline=true", "pinflow.service"]);
        ["CAP_BPF", "CAP_NET_ADMIN"]
            .into_iter()
            .filter(|cap| {
                report.lines().any(|l| {
                    l.starts_with('✗') && l.contains(&format!("CapabilityBoundingSet=~{cap} "))
                })
            })
            .collect::<Vec<_>>()
    };
    let verify = || {
        let (ok, report) = analyze(&["verify", "/etc/systemd/system/pinflow.service"]);
        assert!(ok, "systemd-analyze verify: {report}");
        assert!(
            !report.contains("pinflow.service:") && !report.contains("conntrack.conf:"),
            "systemd-analyze has remarks on the unit: {report}"
        );
    };
    verify();
    assert_eq!(caps(), ["CAP_BPF"], "no CAP_NET_ADMIN by default");

    // The conntrack drop-in: the unit's command with the config file, and CAP_NET_ADMIN added to
    // (not replacing) the two.
    let dropin = root().join("deploy/systemd/pinflow.service.d/conntrack.conf");
    let dtext = std::fs::read_to_string(&dropin).expect("conntrack.conf");
    let unit_exec = text
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        dtext
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect::<Vec<_>>(),
        [
            "ExecStart=".to_string(),
            format!("{unit_exec} --config=/etc/pinflow/pinflow.toml")
        ],
        "the drop-in runs the unit's command with the config file"
    );
    let d = units.join("pinflow.service.d");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::copy(&dropin, d.join("conntrack.conf")).expect("copy drop-in");
    verify();
    assert_eq!(caps(), ["CAP_BPF", "CAP_NET_ADMIN"]);
}

/// Waits up to 20 s until every source of `want` is up on the pinflow at `addr` and returns
/// `/api/v1/sources` then (with the time it took); fails with the sources and `log()` otherwise.
fn sources_up(
    addr: SocketAddr,
    want: &[&str],
    log: impl Fn() -> String,
) -> Option<(BTreeMap<String, serde_json::Value>, Duration)> {
    let up = wait_for(Duration::from_secs(20), || {
        let s = scrape::sources(addr)?;
        want.iter()
            .all(|k| s.get(*k).and_then(|h| h["up"].as_bool()) == Some(true))
            .then_some(s)
    });
    assert!(
        up.is_some(),
        "sources not all up: {:?}\n{}",
        scrape::sources(addr),
        log()
    );
    up
}
