//! `--web.config.file`: the Prometheus exporter-toolkit web configuration (TLS, client
//! certificates, basic auth with bcrypt hashes, response headers), so that pinflow is secured the
//! way operators already secure node_exporter.
//!
//! Supported: `tls_server_config.{cert_file, key_file, client_ca_file, client_auth_type,
//! min_version, max_version}`, `basic_auth_users`, `http_server_config.headers`. Relative paths
//! are relative to the web config file (as exporter-toolkit does). Keys pinflow cannot honour with
//! rustls (`cipher_suites`, `curve_preferences`, `client_allowed_sans`, inline `cert`/`key`) are
//! errors rather than silently ignored, and unknown keys are errors naming the key.
//! `prefer_server_cipher_suites` and `http_server_config.http2` are accepted and have no effect:
//! rustls always uses its own order and pinflow serves HTTP/1.1.

use axum::http::{HeaderName, HeaderValue};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The file as written (exporter-toolkit's schema).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebConfigFile {
    tls_server_config: Option<TlsServerConfig>,
    http_server_config: Option<HttpServerConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    cipher_suites: Option<serde_yaml_ng::Value>,
    curve_preferences: Option<serde_yaml_ng::Value>,
    client_allowed_sans: Option<serde_yaml_ng::Value>,
    cert: Option<serde_yaml_ng::Value>,
    key: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A loaded web config.
#[derive(Clone)]
pub(crate) struct WebConfig {
    /// TLS settings, when the file enables TLS.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Basic-auth users, when the file lists any.
    pub(crate) auth: Option<Arc<BasicAuth>>,
    /// Headers added to every response.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.as_ref().map(|a| a.users.len()))
            .field("headers", &self.headers)
            .finish()
    }
}

/// Basic-auth users (bcrypt hashes) with a cache of verified credentials: bcrypt costs tens of
/// milliseconds per check by design, and Prometheus sends the same credentials every scrape.
pub(crate) struct BasicAuth {
    users: HashMap<String, String>,
    /// user → SHA-256 of the last password that verified against the user's hash.
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl BasicAuth {
    /// Whether `user`/`password` is valid. Runs bcrypt (blocking, CPU-heavy) unless the same
    /// credentials verified before: call it off the async thread when `is_cached` says no.
    pub(crate) fn verify(&self, user: &str, password: &str) -> bool {
        let digest = sha256(password.as_bytes());
        if self.is_cached(user, &digest) {
            return true;
        }
        // An unknown user costs the same bcrypt run as a known one (no user enumeration by timing).
        const DUMMY: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DSmV4Iza0kVBSGd.wOrnG";
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (DUMMY, false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        if ok {
            self.lock().insert(user.to_string(), digest);
        }
        ok
    }

    /// Whether these credentials verified before (cheap; safe on the async thread). Comparing
    /// digests leaks nothing useful through timing: a client cannot choose a digest's bytes.
    pub(crate) fn is_cached(&self, user: &str, digest: &[u8; 32]) -> bool {
        self.lock().get(user).is_some_and(|d| d == digest)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, [u8; 32]>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Why a web config cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("web config {path}: {msg}")]
pub(crate) struct WebConfigError {
    path: String,
    msg: String,
}

impl WebConfig {
    /// Reads and checks `path` (certificates, keys and hashes are loaded now, so a bad file stops
    /// the start instead of failing every scrape).
    pub(crate) fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let err = |msg: String| WebConfigError {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: WebConfigFile = if text.trim().is_empty() {
            WebConfigFile::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let tls = match file.tls_server_config {
            Some(t) => Some(Arc::new(tls_config(t, base).map_err(err)?)),
            None => None,
        };
        let mut users = HashMap::new();
        for (user, hash) in file.basic_auth_users {
            // Checked now: a hash that bcrypt cannot parse would refuse that user forever.
            if !hash.starts_with("$2") || bcrypt::verify("", &hash).is_err() {
                return Err(err(format!(
                    "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
                )));
            }
            users.insert(user, hash);
        }
        let auth = (!users.is_empty()).then(|| {
            Arc::new(BasicAuth {
                users,
                verified: Mutex::new(HashMap::new()),
            })
        });
        let mut headers = Vec::new();
        if let Some(h) = file.http_server_config {
            let _ = h.http2;
            for (k, v) in h.headers {
                let name = HeaderName::try_from(k.as_str())
                    .map_err(|e| err(format!("http_server_config.headers.{k}: {e}")))?;
                let value = HeaderValue::try_from(v.as_str())
                    .map_err(|e| err(format!("http_server_config.headers.{k}: {e}")))?;
                headers.push((name, value));
            }
        }
        Ok(WebConfig { tls, auth, headers })
    }
}

fn tls_config(t: TlsServerConfig, base: &Path) -> Result<rustls::ServerConfig, String> {
    for (key, set) in [
        ("cipher_suites", t.cipher_suites.is_some()),
        ("curve_preferences", t.curve_preferences.is_some()),
        ("client_allowed_sans", t.client_allowed_sans.is_some()),
        ("cert", t.cert.is_some()),
        ("key", t.key.is_some()),
    ] {
        if set {
            return Err(format!(
                "tls_server_config.{key} is not supported by pinflow (rustls chooses cipher suites and curves; use cert_file/key_file)"
            ));
        }
    }
    let _ = t.prefer_server_cipher_suites;
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let cert_file = t
        .cert_file
        .map(resolve)
        .ok_or("tls_server_config.cert_file is required")?;
    let key_file = t
        .key_file
        .map(resolve)
        .ok_or("tls_server_config.key_file is required")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|i| i.collect())
        .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no certificate in it",
            cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let version = |v: &Option<String>, field: &str| -> Result<Option<u8>, String> {
        match v.as_deref() {
            None => Ok(None),
            Some("TLS12") => Ok(Some(12)),
            Some("TLS13") => Ok(Some(13)),
            Some(o) => Err(format!(
                "tls_server_config.{field}: {o:?} is not supported (TLS12 or TLS13)"
            )),
        }
    };
    let min = version(&t.min_version, "min_version")?.unwrap_or(12);
    let max = version(&t.max_version, "max_version")?.unwrap_or(13);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();
    if versions.is_empty() {
        return Err("tls_server_config: min_version is above max_version".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| e.to_string())?;
    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let client_verifier = |allow_unauthenticated: bool| -> Result<_, String> {
        let ca = t
            .client_ca_file
            .clone()
            .map(resolve)
            .ok_or_else(|| format!("client_auth_type {auth_type} needs client_ca_file"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca)
            .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?
        {
            let c = c.map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("client_ca_file {}: {e}", ca.display()))?;
        }
        let b = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let b = if allow_unauthenticated {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build().map_err(|e| format!("client_ca_file: {e}"))
    };
    let builder = match auth_type {
        "NoClientCert" => builder.with_no_client_auth(),
        "RequireAndVerifyClientCert" => builder.with_client_cert_verifier(client_verifier(false)?),
        "VerifyClientCertIfGiven" => builder.with_client_cert_verifier(client_verifier(true)?),
        o => {
            return Err(format!(
                "tls_server_config.client_auth_type {o:?} is not supported (NoClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
            ));
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("cert_file/key_file: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, WebConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.yml");
        std::fs::write(&p, text).unwrap();
        WebConfig::load(&p)
    }

    #[test]
    fn empty_file_means_plain_http_without_auth() {
        let c = load("").unwrap();
        assert!(c.tls.is_none() && c.auth.is_none() && c.headers.is_empty());
    }

    #[test]
    fn unknown_and_unsupported_keys_are_errors_naming_them() {
        let e = load("tls_server_config:\n  cert_fil: x\n").unwrap_err();
        assert!(e.to_string().contains("cert_fil"), "{e}");
        let e =
            load("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n").unwrap_err();
        assert!(e.to_string().contains("cipher_suites"), "{e}");
        let e = load("basic_auth_users:\n  prom: plaintext\n").unwrap_err();
        assert!(e.to_string().contains("basic_auth_users.prom"), "{e}");
        let e = load(
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent.crt"), "{e}");
    }

    #[test]
    fn bcrypt_users_verify_and_cache() {
        // A cost-4 hash keeps the test fast; real configs use cost 10 or more.
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let c = load(&format!(
            "basic_auth_users:\n  prom: '{hash}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
        ))
        .unwrap();
        let auth = c.auth.unwrap();
        assert!(!auth.is_cached("prom", &sha256(b"s3cret")));
        assert!(auth.verify("prom", "s3cret"));
        assert!(auth.is_cached("prom", &sha256(b"s3cret")));
        assert!(!auth.verify("prom", "wrong"));
        assert!(!auth.verify("nobody", "s3cret"));
        assert_eq!(c.headers.len(), 1);
    }
}
