//! Field offsets of a classic tracepoint record, read from its tracefs `format` file.

use std::path::{Path, PathBuf};

/// Where tracefs may be mounted, in the order the kernel documents them.
pub(crate) const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Why a tracepoint format could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormatError {
    /// No tracefs mount holds the event.
    #[error(
        "tracefs is not mounted (looked for {event} under {mounts}); mount it with \
         `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    NoTracefs {
        /// Event looked for, `category/name`.
        event: String,
        /// Mount points tried.
        mounts: String,
    },
    /// The format file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The format file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A needed field is missing or malformed.
    #[error("tracepoint format has no usable field {field}: {reason}")]
    Field {
        /// Field name.
        field: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FieldLoc {
    /// Byte offset in the record (common fields included).
    pub(crate) offset: u32,
    /// Size in bytes.
    pub(crate) size: u32,
}

/// Offsets of the fields the placement probe reads from `sched:sched_switch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SchedSwitchFormat {
    /// `prev_pid`.
    pub(crate) prev_pid: FieldLoc,
    /// `next_pid`.
    pub(crate) next_pid: FieldLoc,
}

/// Finds `field` in the text of a tracefs `format` file (lines like
/// `field:pid_t prev_pid; offset:24; size:4; signed:1;`, tab-separated).
pub(crate) fn parse_field(format: &str, field: &str) -> Result<FieldLoc, FormatError> {
    let err = |reason| FormatError::Field {
        field: field.to_string(),
        reason,
    };
    for line in format.lines() {
        let mut name = None;
        let (mut offset, mut size) = (None, None);
        for part in line.split(';').map(str::trim) {
            let Some((key, value)) = part.split_once(':') else {
                continue;
            };
            match key.trim() {
                // The declaration's last word is the name; arrays carry a `[N]` suffix.
                "field" => {
                    name = value
                        .split_whitespace()
                        .last()
                        .map(|n| n.split('[').next().unwrap_or(n));
                }
                "offset" => offset = Some(value.trim()),
                "size" => size = Some(value.trim()),
                _ => {}
            }
        }
        if name != Some(field) {
            continue;
        }
        let offset = offset
            .ok_or_else(|| err("no offset"))?
            .parse()
            .map_err(|_| err("bad offset"))?;
        let size = size
            .ok_or_else(|| err("no size"))?
            .parse()
            .map_err(|_| err("bad size"))?;
        return Ok(FieldLoc { offset, size });
    }
    Err(err("not in format"))
}

/// Parses the `sched:sched_switch` format; both pid fields must be 4 bytes.
pub(crate) fn parse_sched_switch(format: &str) -> Result<SchedSwitchFormat, FormatError> {
    let pid = |name: &str| {
        let loc = parse_field(format, name)?;
        if loc.size != 4 {
            return Err(FormatError::Field {
                field: name.to_string(),
                reason: "not 4 bytes",
            });
        }
        Ok(loc)
    };
    Ok(SchedSwitchFormat {
        prev_pid: pid("prev_pid")?,
        next_pid: pid("next_pid")?,
    })
}

/// The `format` file of `category:name` under the first tracefs mount that has it.
pub(crate) fn format_path(category: &str, name: &str) -> Result<PathBuf, FormatError> {
    TRACEFS_MOUNTS
        .iter()
        .map(|m| {
            Path::new(m)
                .join("events")
                .join(category)
                .join(name)
                .join("format")
        })
        .find(|p| p.exists())
        .ok_or_else(|| FormatError::NoTracefs {
            event: format!("events/{category}/{name}/format"),
            mounts: TRACEFS_MOUNTS.join(" and "),
        })
}

/// Reads and parses this host's `sched:sched_switch` format.
pub(crate) fn read_sched_switch() -> Result<SchedSwitchFormat, FormatError> {
    let path = format_path("sched", "sched_switch")?;
    let text =
        std::fs::read_to_string(&path).map_err(|source| FormatError::Read { path, source })?;
    parse_sched_switch(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sched_switch` format as printed by a 6.x kernel.
    const FIXTURE: &str = "name: sched_switch
ID: 318
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:int next_prio;\toffset:60;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s prev_pid=%d prev_prio=%d prev_state=%s%s ==> next_comm=%s next_pid=%d next_prio=%d\", REC->prev_comm, REC->prev_pid
";

    #[test]
    fn parses_sched_switch_fixture() {
        let f = parse_sched_switch(FIXTURE).expect("fixture parses");
        assert_eq!(
            f.prev_pid,
            FieldLoc {
                offset: 24,
                size: 4
            }
        );
        assert_eq!(
            f.next_pid,
            FieldLoc {
                offset: 56,
                size: 4
            }
        );
        assert_eq!(
            parse_field(FIXTURE, "next_comm").expect("array"),
            FieldLoc {
                offset: 40,
                size: 16
            }
        );
        assert_eq!(
            parse_field(FIXTURE, "prev_state").expect("long"),
            FieldLoc {
                offset: 32,
                size: 8
            }
        );
    }

    #[test]
    fn rejects_missing_or_bad_fields() {
        assert!(
            parse_sched_switch("format:\n\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\n").is_err()
        );
        let bad = FIXTURE.replace("offset:56", "offset:x");
        assert!(matches!(
            parse_sched_switch(&bad),
            Err(FormatError::Field {
                reason: "bad offset",
                ..
            })
        ));
        let wide = FIXTURE.replace(
            "pid_t next_pid;\toffset:56;\tsize:4",
            "pid_t next_pid;\toffset:56;\tsize:8",
        );
        assert!(matches!(
            parse_sched_switch(&wide),
            Err(FormatError::Field {
                reason: "not 4 bytes",
                ..
            })
        ));
        // The print fmt line mentions prev_pid but is not a field.
        assert!(parse_field("print fmt: \"prev_pid=%d\", REC->prev_pid", "prev_pid").is_err());
    }
}
