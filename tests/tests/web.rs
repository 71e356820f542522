//! `pinflow serve`'s web flags as an operator uses them (exporter-toolkit conventions): several
//! `--web.listen-address` forms, `--web.telemetry-path`, `--web.disable-api`, the collector
//! switches, JSON logs, `--version`, and a `--web.config.file` with TLS, client certificates and
//! bcrypt basic auth exercised with real `curl`, `openssl` and `htpasswd`.

use pinflow_tests::pinflow::{bin, free_addr};
use pinflow_tests::scrape::{http_get, parse, select};
use pinflow_tests::{require_privileged, run, wait_for};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `pinflow serve` with the given flags, killed on drop; stderr goes to `log`.
struct Serve {
    child: Child,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(dir: &Path, args: &[String]) -> Serve {
        let log = dir.join("pinflow.log");
        let child = Command::new(bin())
            .arg("serve")
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn pinflow");
        Serve { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Flags that keep pinflow away from the host's real sources (no root needed).
fn quiet_sources(dir: &Path) -> Vec<String> {
    let state = dir.join("libvirt");
    std::fs::create_dir_all(&state).expect("mkdir");
    let cfg = dir.join("pinflow.toml");
    std::fs::write(&cfg, "[pinning]\nebpf = false\n").expect("config");
    vec![
        format!("--libvirt-state-dir={}", state.display()),
        format!("--config={}", cfg.display()),
    ]
}

fn get_ok(addr: SocketAddr, path: &str) -> Option<String> {
    http_get(addr, path, Duration::from_secs(2))
        .ok()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
}

fn has_ipv6_loopback() -> bool {
    std::fs::read_to_string("/proc/net/if_inet6")
        .is_ok_and(|s| s.lines().any(|l| l.ends_with(" lo")))
}

#[test]
fn listen_addresses_paths_api_switch_collectors_logs_and_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let any = free_addr();
    let v6 = free_addr().port();
    let mut args = quiet_sources(dir.path());
    args.extend([
        format!("--web.listen-address=:{}", any.port()),
        format!("--web.listen-address=[::1]:{v6}"),
        "--web.telemetry-path=/custom-metrics".into(),
        "--web.disable-api".into(),
        "--no-collector.flows".into(),
        "--no-collector.datapath".into(),
        "--log.format=json".into(),
        "--log.level=debug".into(),
    ]);
    let pf = Serve::start(dir.path(), &args);
    let v4 = SocketAddr::from(([127, 0, 0, 1], any.port()));
    let body = wait_for(Duration::from_secs(15), || get_ok(v4, "/custom-metrics"))
        .unwrap_or_else(|| panic!(":PORT did not serve IPv4\n{}", pf.log()))
        .0;
    let samples = parse(&body);
    if has_ipv6_loopback() {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6));
        assert!(get_ok(v6, "/custom-metrics").is_some(), "[::1]:PORT");
        let any6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, any.port()));
        assert!(get_ok(any6, "/custom-metrics").is_some(), ":PORT on IPv6");
    }
    for (path, want) in [
        ("/metrics", 404),
        ("/api/v1/pinning", 404),
        ("/api/v1/intrusions", 404),
        ("/api/v1/flows/dirty", 404),
        ("/healthz", 200),
    ] {
        let (status, _) = http_get(v4, path, Duration::from_secs(2)).expect(path);
        assert_eq!(status, want, "{path}");
    }
    // Only the pinning collector's sources report; the switched-off ones say nothing at all.
    let sources: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "pinflow_source_up")
        .map(|s| s.labels["source"].as_str())
        .collect();
    // sched_bpf is switched off in the config: it reports nothing either.
    assert_eq!(sources, ["host_cpu", "libvirt", "procfs"], "{sources:?}");
    // build_info carries what --version prints.
    let version = run(&bin().to_string_lossy(), &["--version"]);
    let field = |k: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} missing in {version}"))
            .trim()
            .to_string()
    };
    let info = select(&samples, "pinflow_build_info", &[]);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["revision"], field("revision:"));
    assert_eq!(info[0].labels["rustc"], field("rustc:"));
    assert!(version.starts_with(&format!("pinflow {}", info[0].labels["version"])));
    // Every log line is one JSON object with a level and a message.
    let log = pf.log();
    assert!(log.lines().count() >= 2, "{log}");
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
}

#[test]
fn bad_listen_addresses_and_web_configs_stop_the_start_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, want) in [
        ("--web.listen-address=9105", "expected [HOST]:PORT"),
        ("--web.listen-address=:http", "not a port number"),
        ("--web.telemetry-path=metrics", "absolute URL path"),
    ] {
        let out = Command::new(bin())
            .args(["serve", flag])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag}: {err}");
        assert!(err.contains(want), "{flag}: {err}");
    }
    let web = dir.path().join("web.yml");
    std::fs::write(&web, "tls_server_config:\n  cert_fil: x.crt\n").expect("write");
    let out = Command::new(bin())
        .args(["serve", "--web.listen-address=127.0.0.1:0"])
        .arg(format!("--web.config.file={}", web.display()))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cert_fil") && err.contains("web.yml"), "{err}");
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &format!("{name}.crt"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

/// `curl` of `url` with `args`: (HTTP status, or 0 when the connection failed; body).
fn curl(dir: &Path, url: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .current_dir(dir)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn tls_client_certificates_and_basic_auth_from_a_web_config() {
    if !require_privileged("tls_…", &["openssl", "htpasswd", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_pki(d);
    // The hash an operator makes for exporter-toolkit.
    let line = run("htpasswd", &["-nbBC", "10", "prometheus", "s3cret pass"]);
    let hash = line
        .trim()
        .split_once(':')
        .expect("user:hash")
        .1
        .to_string();
    let addr = free_addr();
    let url = format!("https://127.0.0.1:{}/metrics", addr.port());
    for (client_auth, with_client_cert) in [
        ("NoClientCert", false),
        ("RequireAndVerifyClientCert", true),
    ] {
        // Relative paths are relative to the web config file.
        std::fs::write(
            d.join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 client_auth_type: {client_auth}\n  client_ca_file: ca.crt\n\
                 basic_auth_users:\n  prometheus: '{hash}'\n\
                 http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
            ),
        )
        .expect("web.yml");
        let mut args = quiet_sources(d);
        args.extend([
            format!("--web.listen-address={addr}"),
            format!("--web.config.file={}", d.join("web.yml").display()),
        ]);
        let pf = Serve::start(d, &args);
        let mut ok_args = vec!["--cacert", "ca.crt", "-u", "prometheus:s3cret pass"];
        if with_client_cert {
            ok_args.extend(["--cert", "client.crt", "--key", "client.key"]);
        }
        let (status, body) = wait_for(Duration::from_secs(15), || {
            let r = curl(d, &url, &ok_args);
            (r.0 != 0).then_some(r)
        })
        .unwrap_or_else(|| panic!("no TLS answer ({client_auth})\n{}", pf.log()))
        .0;
        assert_eq!(status, 200, "{client_auth}: {body}\n{}", pf.log());
        assert!(body.contains("pinflow_build_info"), "{body}");
        // The cached credentials answer at once the second time.
        assert_eq!(curl(d, &url, &ok_args).0, 200);
        let mut no_auth: Vec<&str> = ok_args.clone();
        no_auth.drain(2..4);
        assert_eq!(
            curl(d, &url, &no_auth).0,
            401,
            "{client_auth}: no credentials"
        );
        let mut bad = ok_args.clone();
        bad[3] = "prometheus:wrong";
        assert_eq!(curl(d, &url, &bad).0, 401, "{client_auth}: wrong password");
        let headers = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert", "ca.crt"])
            .args(&ok_args[2..])
            .arg(&url)
            .current_dir(d)
            .output()
            .expect("curl");
        let headers = String::from_utf8_lossy(&headers.stdout).to_lowercase();
        assert!(
            headers.contains("x-content-type-options: nosniff"),
            "{headers}"
        );
        let challenge = Command::new("curl")
            .args([
                "-s",
                "-D",
                "-",
                "-o",
                "/dev/null",
                "--cacert",
                "ca.crt",
                &url,
            ])
            .args(if with_client_cert {
                &["--cert", "client.crt", "--key", "client.key"][..]
            } else {
                &[][..]
            })
            .current_dir(d)
            .output()
            .expect("curl");
        assert!(
            String::from_utf8_lossy(&challenge.stdout)
                .to_lowercase()
                .contains("www-authenticate: basic"),
            "401 without a Basic challenge"
        );
        // Plain HTTP is not served on a TLS port.
        let plain = curl(d, &url.replace("https", "http"), &[]);
        assert_ne!(plain.0, 200, "plain HTTP answered on the TLS port");
        if with_client_cert {
            // Without a client certificate the handshake fails: no HTTP status at all.
            let (status, _) = curl(
                d,
                &url,
                &["--cacert", "ca.crt", "-u", "prometheus:s3cret pass"],
            );
            assert_eq!(status, 0, "served without a client certificate");
        }
        drop(pf);
    }
}
