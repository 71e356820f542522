//! `pinflow check`: validates the config and probes every source the flags and the config
//! switch on, as `serve` would start it (`sources::ALL`); sources switched off are listed as
//! `off` with the flag or config key that did it. Exit status: 2 for an invalid config, 1 when a
//! source that is on cannot run, else 0.

use crate::cli::SourceArgs;
use crate::config::Config;
use crate::export::table;
use crate::model::health::{CheckReport, CheckState, SourceCheck};
use crate::sources::{self, CanRun};
use std::process::ExitCode;

pub(super) fn check(s: &SourceArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut report = CheckReport {
        config: s.config.as_ref().map(|p| p.display().to_string()),
        config_error: None,
        sources: Vec::new(),
    };
    match Config::load(s.config.as_deref()) {
        Ok(config) => report.sources = check_sources(s, &config),
        Err(e) => report.config_error = Some(e.to_string()),
    }
    if json {
        super::emit_json(&report)?;
    } else {
        super::emit(table::check_table(&report).as_bytes())?;
    }
    Ok(ExitCode::from(report.exit_code()))
}

fn check_sources(s: &SourceArgs, config: &Config) -> Vec<SourceCheck> {
    let host = super::host_paths(s);
    let mut checks = Vec::new();
    for source in sources::ALL {
        let off = if !s.collectors.enabled(source.collector) {
            Some(format!("--no-collector.{}", source.collector))
        } else {
            config.switched_off(source.name).map(str::to_string)
        };
        if let Some(why) = off {
            checks.push(SourceCheck {
                source: source.name,
                bridge: None,
                state: CheckState::Off,
                detail: why,
                problems: Vec::new(),
            });
            continue;
        }
        for CanRun {
            bridge,
            result,
            problems,
        } in (source.can_run)(&host)
        {
            let (state, detail) = match result {
                Ok(d) => (CheckState::Up, d),
                Err(e) => (CheckState::Down, e),
            };
            checks.push(SourceCheck {
                source: source.name,
                bridge,
                state,
                detail,
                problems,
            });
        }
    }
    checks
}
