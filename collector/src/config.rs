//! pinflow's configuration file (TOML). Every field has a default; unknown keys are errors naming the key.
//!
//! Each section is defined next to what it configures (`[pinning]` and `[datapath]` with their
//! pipelines, `[flows]` with the dirty-flow rules, `[export]` with the exporters); this file
//! composes them, validates ranges and says which sources the file switches off.

use crate::detect::flows::{DirtyFlowConfig, DirtyFlowIndex};
use crate::engine::conntrack::ConntrackConfig;
use crate::engine::datapath::DatapathConfig;
use crate::engine::host_cpu::HostCpuConfig;
use crate::engine::ovs_vswitchd::VswitchdConfig;
use crate::engine::pinning::PinningConfig;
use crate::export::ExportConfig;
use serde::Deserialize;
use std::path::Path;

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    /// Pinning drift detection.
    pub(crate) pinning: PinningConfig,
    /// Dirty-flow rules (`[flows]`, with `[[flows.user_rules]]`).
    pub(crate) flows: DirtyFlowConfig,
    /// Exposition limits.
    pub(crate) export: ExportConfig,
    /// OVS kernel datapath source and health checks.
    pub(crate) datapath: DatapathConfig,
    /// Host CPU configuration checks (`[host_cpu]`, with the pinning collector).
    pub(crate) host_cpu: HostCpuConfig,
    /// ovs-vswitchd's unixctl counters and the OVS processes (`[ovs_vswitchd]`, with the datapath
    /// collector).
    pub(crate) ovs_vswitchd: VswitchdConfig,
    /// Conntrack entries per zone (`[conntrack]`, with the datapath collector; off by default).
    pub(crate) conntrack: ConntrackConfig,
}

/// A configuration error with the file and the reason.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong-typed value: the message starts with the line
    /// and column and the key's path (`line 2, column 20, pinning.interval_seconds: invalid
    /// type: string "fast", expected f64`).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File path.
        path: String,
        /// Where, which key, and the parser's reason.
        message: String,
    },
    /// A value out of range or a rule that does not compile (the message names the key or the
    /// rule; `path` is `<text>` when parsed from a string).
    #[error("invalid config {path}: {message}")]
    Value {
        /// File path.
        path: String,
        /// Which key or rule, and why.
        message: String,
    },
}

/// Line and column (1-based, in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

/// The dotted path of the key whose line holds byte `offset` (`pinning.interval_seconds`): the
/// last `[table]`/`[[array]]` header above it and the key before the line's `=`. `None` on a
/// header line or a line without `key =`.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..text.floor_char_boundary(offset)];
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') || key.contains(['{', ',']) {
        return None;
    }
    let table = before[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(['[', ']']).trim().to_string());
    Some(match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    })
}

/// A TOML error as `line L, column C, KEY: reason` (one line; the key when it can be told).
fn describe(text: &str, e: &toml::de::Error) -> String {
    let reason = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(span) = e.span() else {
        return reason;
    };
    let (line, col) = line_col(text, span.start);
    match key_path_at(text, span.start) {
        Some(key) => format!("line {line}, column {col}, {key}: {reason}"),
        None => format!("line {line}, column {col}: {reason}"),
    }
}

/// The 1-based line of `key` (a dotted path such as `pinning.interval_seconds`) in `text`, if
/// it is written there as `key = …` under its `[table]`.
fn line_of_key(text: &str, path: &str) -> Option<usize> {
    let (table, key) = path.rsplit_once('.').unwrap_or(("", path));
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') {
            current = l.trim_matches(['[', ']']).trim().to_string();
        } else if current == table && l.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            return Some(i + 1);
        }
    }
    None
}

impl Config {
    /// Reads and validates a config file; `None` gives the defaults.
    pub(crate) fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file = path.display().to_string();
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: file,
                message,
            },
            ConfigError::Value { message, .. } => ConfigError::Value {
                path: file,
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: describe(text, &e),
        })?;
        c.validate().map_err(|message| {
            // Validation names the key first (`pinning.interval_seconds = 0 (…)`): add its line.
            let key = message.split([' ', ':']).next().unwrap_or_default();
            let message = match line_of_key(text, key) {
                Some(line) => format!("line {line}, {message}"),
                None => message,
            };
            ConfigError::Value {
                path: "<text>".into(),
                message,
            }
        })?;
        Ok(c)
    }

    /// Why the file switches `source` off, if it does (`pinflow check` shows it; the daemon does
    /// not start it).
    pub(crate) fn switched_off(&self, source: &str) -> Option<&'static str> {
        use crate::sources::{conntrack, ovs_dp, ovs_vswitchd, sched_bpf};
        if source == sched_bpf::SOURCE.name && !self.pinning.ebpf {
            Some("off in the config ([pinning] ebpf = false)")
        } else if source == conntrack::SOURCE.name && !self.conntrack.enabled {
            Some("off in the config ([conntrack] enabled = false, the default)")
        } else if [ovs_vswitchd::SOURCE.name, ovs_vswitchd::OVSDB_SERVER.name].contains(&source)
            && !self.ovs_vswitchd.enabled
        {
            Some("off in the config ([ovs_vswitchd] enabled = false)")
        } else if [ovs_dp::SOURCE.name, ovs_dp::bpf::SOURCE.name].contains(&source)
            && !self.datapath.enabled
        {
            Some("off in the config ([datapath] enabled = false)")
        } else if source == ovs_dp::bpf::SOURCE.name && !self.datapath.ebpf {
            Some("off in the config ([datapath] ebpf = false)")
        } else {
            None
        }
    }

    /// Checks value ranges; the error starts with the key it is about.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let p = &self.pinning;
        if !(0.05..=3600.0).contains(&p.interval_seconds) {
            return Err(format!(
                "pinning.interval_seconds = {} (must be 0.05..=3600)",
                p.interval_seconds
            ));
        }
        if !(0.0..=86400.0).contains(&p.placement_window_seconds) {
            return Err(format!(
                "pinning.placement_window_seconds = {} (must be 0..=86400)",
                p.placement_window_seconds
            ));
        }
        if !(0.0..=1.0).contains(&p.stolen_share) {
            return Err(format!(
                "pinning.stolen_share = {} (must be 0..=1)",
                p.stolen_share
            ));
        }
        if !(1.0..=86400.0).contains(&self.host_cpu.reread_seconds) {
            return Err(format!(
                "host_cpu.reread_seconds = {} (must be 1..=86400)",
                self.host_cpu.reread_seconds
            ));
        }
        if !(1.0..=86400.0).contains(&p.reconcile_seconds) {
            return Err(format!(
                "pinning.reconcile_seconds = {} (must be 1..=86400)",
                p.reconcile_seconds
            ));
        }
        if !(1.0..=3600.0).contains(&self.ovs_vswitchd.interval_seconds) {
            return Err(format!(
                "ovs_vswitchd.interval_seconds = {} (must be 1..=3600)",
                self.ovs_vswitchd.interval_seconds
            ));
        }
        if !(5.0..=3600.0).contains(&self.conntrack.interval_seconds) {
            return Err(format!(
                "conntrack.interval_seconds = {} (must be 5..=3600)",
                self.conntrack.interval_seconds
            ));
        }
        DirtyFlowIndex::new(&self.flows).map_err(|e| format!("flows: {e}"))?;
        let d = &self.datapath;
        if !(1.0..=3600.0).contains(&d.flow_dump_interval_seconds) {
            return Err(format!(
                "datapath.flow_dump_interval_seconds = {} (must be 1..=3600)",
                d.flow_dump_interval_seconds
            ));
        }
        if !(0.0..=1.0).contains(&d.flow_limit_ratio) || d.upcall_storm_per_second <= 0.0 {
            return Err(
                "datapath.flow_limit_ratio must be 0..=1 and datapath.upcall_storm_per_second > 0"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_example_config_is_valid_and_says_the_defaults() {
        let text = include_str!("../../deploy/pinflow.example.toml");
        let c = Config::parse(text).unwrap();
        assert_eq!(
            c.host_cpu,
            crate::engine::host_cpu::HostCpuConfig::default()
        );
        assert_eq!(c.pinning, PinningConfig::default());
        assert_eq!(
            c.conntrack,
            crate::engine::conntrack::ConntrackConfig::default()
        );
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.pinning, PinningConfig::default());
        assert_eq!(c.export, ExportConfig::default());
        assert!(c.flows.user_rules.is_empty());
    }

    #[test]
    fn fields_override_defaults() {
        let c = Config::parse("[pinning]\ninterval_seconds = 0.5\nebpf = false\n").unwrap();
        assert_eq!(c.pinning.interval(), Duration::from_millis(500));
        assert!(!c.pinning.ebpf);
        assert_eq!(c.pinning.placement_window_seconds, 5.0);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("[pinning]\nintervall = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("intervall"), "{e}");
        let e = Config::parse("[pinnning]\n").unwrap_err().to_string();
        assert!(e.contains("pinnning"), "{e}");
    }

    #[test]
    fn flow_rules_are_validated() {
        let c = Config::parse(
            "[flows]\nstale_cookie_grace_secs = 30\n[[flows.user_rules]]\nname = \"no_flood\"\nregex = \"actions=FLOOD\"\n",
        )
        .unwrap();
        assert_eq!(c.flows.stale_cookie_grace_secs, 30);
        assert_eq!(c.flows.user_rules.len(), 1);
        let e = Config::parse("[[flows.user_rules]]\nname = \"x\"\nregex = \"(\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("flows"), "{e}");
        let e = Config::parse(
            "[[flows.user_rules]]\nname = \"typo\"\nfields = [{ field = \"nw_dstt\", present = false }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("typo") && e.contains("nw_dstt") && e.contains("nw_dst/ip_dst"),
            "{e}"
        );
        let e = Config::parse("[export]\ndirty_flow_limit = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dirty_flow_limit"), "{e}");
    }

    #[test]
    fn the_readme_example_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("README has a toml block") + 8;
        let len = readme[start..].find("```").expect("closed block");
        let c = Config::parse(&readme[start..start + len]).unwrap();
        assert_eq!(c.flows.user_rules.len(), 1);
        assert_eq!(c.export.dirty_flow_info_limit, 20);
    }

    #[test]
    fn every_readme_toml_example_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split_once("```").map(|(t, _)| t))
            .collect();
        assert!(
            blocks.len() >= 2,
            "README has the config and user-rule examples"
        );
        for b in blocks {
            Config::parse(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
        }
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let e = Config::parse("[pinning]\nebpf = false\ninterval_seconds = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3, column 20, pinning.interval_seconds: invalid type: string \"fast\", expected f64"),
            "{e}"
        );
        let e = Config::parse("[datapath]\n\nflow_limit = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3, column 14, datapath.flow_limit:"), "{e}");
        // A syntax error: where, on one line.
        let e = Config::parse("[pinning\nebpf = false\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1, column 9: invalid table header"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        // Out of range: the key and its line.
        let e = Config::parse("[export]\n[pinning]\n\ninterval_seconds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4, pinning.interval_seconds = 0"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("pinflow-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[pinning]\ninterval_seconds = 0\n").unwrap();
        let e = Config::load(Some(&f)).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.starts_with(&format!(
                "invalid config {}: line 2, pinning.interval_seconds",
                f.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        let e = Config::parse("[pinning]\ninterval_seconds = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("interval_seconds"), "{e}");
    }
}
