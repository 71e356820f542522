//! Configuration of the dirty-flow rules: built-in rule names, owned cookies, the stale-cookie grace
//! period and user rules (regular expressions and field conditions over a flow).

use super::{fields, semantics};
use crate::model::flows::Severity;
use crate::model::openflow::{FlowEntry, width_mask};
use regex::Regex;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The built-in dirty-flow rules of DESIGN.md; [`BuiltinRule::name`] is the `rule` label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum BuiltinRule {
    /// An `output`/`enqueue` action names an ofport the bridge does not have.
    OutputToMissingPort,
    /// The flow matches `in_port=N` for an ofport the bridge does not have.
    InPortMissing,
    /// `goto_table`/`resubmit(,T)` targets a table that holds no flows.
    GotoEmptyTable,
    /// The cookie is not owned by the bridge's agent and the flow is older than the grace period.
    StaleCookie,
    /// A higher-priority flow in the same table covers the whole match.
    Unreachable,
    /// Another flow in the same table with the same priority overlaps, with different actions.
    AmbiguousPriority,
    /// A port is tagged with the dead VLAN 4095.
    DeadVlan,
}

impl BuiltinRule {
    /// Every built-in rule, in bit order.
    pub(crate) const ALL: [BuiltinRule; 7] = [
        BuiltinRule::OutputToMissingPort,
        BuiltinRule::InPortMissing,
        BuiltinRule::GotoEmptyTable,
        BuiltinRule::StaleCookie,
        BuiltinRule::Unreachable,
        BuiltinRule::AmbiguousPriority,
        BuiltinRule::DeadVlan,
    ];

    /// The `rule` label value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BuiltinRule::OutputToMissingPort => "output_to_missing_port",
            BuiltinRule::InPortMissing => "in_port_missing",
            BuiltinRule::GotoEmptyTable => "goto_empty_table",
            BuiltinRule::StaleCookie => "stale_cookie",
            BuiltinRule::Unreachable => "unreachable",
            BuiltinRule::AmbiguousPriority => "ambiguous_priority",
            BuiltinRule::DeadVlan => "dead_vlan",
        }
    }

    /// Bit of this rule in a flow's finding mask.
    pub(crate) fn bit(self) -> u64 {
        1 << (self as u32)
    }

    /// How sure a finding of this rule is: `broken` when the flow cannot do what it says (a missing
    /// port, an empty table, the dead VLAN), `suspect` for the heuristics.
    pub(crate) fn severity(self) -> Severity {
        match self {
            BuiltinRule::OutputToMissingPort
            | BuiltinRule::InPortMissing
            | BuiltinRule::GotoEmptyTable
            | BuiltinRule::DeadVlan => Severity::Broken,
            BuiltinRule::StaleCookie
            | BuiltinRule::Unreachable
            | BuiltinRule::AmbiguousPriority => Severity::Suspect,
        }
    }

    fn from_name(name: &str) -> Option<BuiltinRule> {
        BuiltinRule::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Most user rules one configuration may define (they share a 64-bit finding mask with the built-ins).
pub(crate) const MAX_USER_RULES: usize = 64 - BuiltinRule::ALL.len();

/// The `[flows]` part of the configuration file. Every field has a default; unknown keys are errors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DirtyFlowConfig {
    /// Built-in rules to switch off, by name (`"ambiguous_priority"`, …).
    pub(crate) disabled_rules: Vec<String>,
    /// How long a flow with a foreign cookie (and a superseded agent generation) is tolerated, seconds.
    pub(crate) stale_cookie_grace_secs: u64,
    /// Learn each bridge's current agent generation (its most common non-zero cookie).
    pub(crate) learn_cookies: bool,
    /// Cookies whose first flow appeared within this many seconds of the learned cookie's first flow
    /// belong to the same agent generation (0 = the generation is one cookie).
    pub(crate) cookie_generation_window_secs: u64,
    /// Cookies owned per bridge (`"*"` = every bridge), as `"0x…"` hex or decimal strings (TOML integers
    /// cannot hold every 64-bit cookie).
    pub(crate) owned_cookies: BTreeMap<String, Vec<String>>,
    /// User rules.
    pub(crate) user_rules: Vec<UserRule>,
    /// Export every OVS interface's link and admin state, MTU and counters
    /// (`pinflow_ovs_interface_*`, 12 series per interface; off by default: node_exporter has the
    /// host devices' counters).
    pub(crate) interface_metrics: bool,
}

impl Default for DirtyFlowConfig {
    fn default() -> Self {
        DirtyFlowConfig {
            disabled_rules: Vec::new(),
            stale_cookie_grace_secs: 120,
            learn_cookies: true,
            cookie_generation_window_secs: 0,
            owned_cookies: BTreeMap::new(),
            user_rules: Vec::new(),
            interface_metrics: false,
        }
    }
}

/// A rule from the configuration file: a flow is dirty when it is in scope and matches the regular
/// expression (if any) and every field condition.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserRule {
    /// The `rule` label value (`[a-z][a-z0-9_]*`, not a built-in name).
    pub(crate) name: String,
    /// Bridges the rule applies to; empty = all.
    #[serde(default)]
    pub(crate) bridges: Vec<String>,
    /// Tables the rule applies to; empty = all.
    #[serde(default)]
    pub(crate) tables: Vec<u8>,
    /// Regular expression searched in the flow's `ovs-ofctl` text.
    #[serde(default)]
    pub(crate) regex: Option<String>,
    /// Conditions on match fields; all must hold.
    #[serde(default)]
    pub(crate) fields: Vec<FieldCondition>,
    /// Severity of the rule's findings (`"broken"`, the default, or `"suspect"`).
    #[serde(default)]
    pub(crate) severity: Severity,
}

/// A condition on one match field of a flow.
///
/// The field may be named by any spelling `ovs-ofctl` accepts (`dl_vlan`, `vlan_vid`, `tcp_dst`,
/// `eth_type`, …); values are parsed by the field's kind as `ovs-ofctl` parses them (integers with
/// `/mask`, MACs, IPv4/IPv6 with `/prefix` or `/mask`, `+flag-flag`, …). See the README.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldCondition {
    /// Field name as `ovs-ofctl` spells it, aliases included (`in_port`, `dl_vlan`, `tcp_dst`, `reg0`, …).
    pub(crate) field: String,
    /// Whether the flow must (true) or must not (false) match on the field at all.
    #[serde(default)]
    pub(crate) present: Option<bool>,
    /// The flow must match on the field, constraining it to this value (under the given mask).
    #[serde(default)]
    pub(crate) equals: Option<String>,
    /// The flow must not constrain the field to this value (absent fields satisfy this).
    #[serde(default)]
    pub(crate) not_equals: Option<String>,
}

/// Errors in the dirty-flow configuration; each names the offending key or value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowConfigError {
    /// `disabled_rules` names a rule that does not exist.
    #[error("flows.disabled_rules: unknown rule {0:?}")]
    UnknownRule(String),
    /// An owned cookie is not a hex or decimal 64-bit number.
    #[error("flows.owned_cookies.{bridge}: bad cookie {value:?} (want \"0x…\" hex or decimal)")]
    BadCookie {
        /// Bridge key.
        bridge: String,
        /// The offending value.
        value: String,
    },
    /// A user rule's name is malformed, a built-in name, or used twice.
    #[error(
        "flows.user_rules: bad or duplicate rule name {0:?} (want [a-z][a-z0-9_]*, not a built-in)"
    )]
    BadRuleName(String),
    /// A user rule has neither a regex nor field conditions (it would match every flow).
    #[error("flows.user_rules.{0}: needs a regex or field conditions")]
    EmptyRule(String),
    /// A user rule's regular expression does not compile.
    #[error("flows.user_rules.{rule}.regex: {source}")]
    BadRegex {
        /// Rule name.
        rule: String,
        /// Compiler error.
        source: regex::Error,
    },
    /// A field condition names a field `ovs-ofctl` does not know.
    #[error(
        "flows.user_rules.{rule}.fields: unknown field {field:?} (accepted spellings: {accepted})"
    )]
    UnknownField {
        /// Rule name.
        rule: String,
        /// The offending field name.
        field: String,
        /// Every accepted spelling.
        accepted: String,
    },
    /// A field condition's value is not of the field's kind.
    #[error(
        "flows.user_rules.{rule}.fields.{field}: bad value {value:?}: want {want} (the field is spelled {spellings})"
    )]
    BadValue {
        /// Rule name.
        rule: String,
        /// Field name as written.
        field: String,
        /// The offending value.
        value: String,
        /// What a value of this field looks like.
        want: String,
        /// The field's accepted spellings.
        spellings: String,
    },
    /// Too many user rules.
    #[error("flows.user_rules: at most {MAX_USER_RULES} rules")]
    TooManyRules,
}

/// A condition's value and mask on the canonical field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CondValue {
    value: u128,
    mask: u128,
}

impl CondValue {
    /// Whether `flow` constrains `field` to within this value/mask: it matches every bit of the
    /// mask (within the field's width), to the same values. A `ct_state` match counts with the
    /// flags it implies (`+new` is `+trk`, `-est`, `-inv`… too).
    fn holds(&self, flow: &FlowEntry, field: &str) -> bool {
        let Some(m) = flow.matches.get(field).map(semantics::semantic) else {
            return false;
        };
        let width = width_mask(m.len);
        if self.value & !width != 0 {
            return false;
        }
        let mask = self.mask & width;
        mask & !m.mask == 0 && m.value & mask == self.value & mask
    }
}

#[derive(Clone, Debug)]
struct CompiledCondition {
    /// The canonical field (what flows carry).
    field: &'static str,
    present: Option<bool>,
    equals: Option<CondValue>,
    not_equals: Option<CondValue>,
}

/// A validated user rule.
#[derive(Clone, Debug)]
pub(crate) struct CompiledUserRule {
    pub(crate) name: String,
    pub(crate) severity: Severity,
    bridges: Vec<String>,
    tables: Vec<u8>,
    regex: Option<Regex>,
    conditions: Vec<CompiledCondition>,
}

impl CompiledUserRule {
    /// Whether the rule is in scope for `bridge`.
    pub(crate) fn applies_to_bridge(&self, bridge: &str) -> bool {
        self.bridges.is_empty() || self.bridges.iter().any(|b| b == bridge)
    }

    /// Whether the flow (already known to be on an in-scope bridge) is dirty under this rule.
    pub(crate) fn matches(&self, flow: &FlowEntry) -> bool {
        if !self.tables.is_empty() && !self.tables.contains(&flow.table) {
            return false;
        }
        if let Some(re) = &self.regex
            && !re.is_match(&flow.text())
        {
            return false;
        }
        self.conditions.iter().all(|c| {
            let present = flow.matches.iter().any(|m| m.field == c.field);
            c.present.is_none_or(|p| p == present)
                && c.equals.as_ref().is_none_or(|v| v.holds(flow, c.field))
                && c.not_equals
                    .as_ref()
                    .is_none_or(|v| !v.holds(flow, c.field))
        })
    }
}

/// The validated configuration the index works with.
#[derive(Clone, Debug)]
pub(crate) struct RuleSet {
    /// Enabled built-in rules.
    pub(crate) builtins: Vec<BuiltinRule>,
    /// Mask of enabled built-in rules.
    pub(crate) builtin_mask: u64,
    /// User rules; rule `i` has bit `BuiltinRule::ALL.len() + i`.
    pub(crate) user: Vec<CompiledUserRule>,
    pub(crate) grace: Duration,
    pub(crate) learn_cookies: bool,
    pub(crate) generation_window: Duration,
    owned: BTreeMap<String, Vec<u64>>,
}

fn parse_cookie(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

impl RuleSet {
    /// Validates `config`.
    pub(crate) fn compile(config: &DirtyFlowConfig) -> Result<RuleSet, FlowConfigError> {
        let mut builtin_mask = BuiltinRule::ALL.iter().fold(0, |m, r| m | r.bit());
        for name in &config.disabled_rules {
            let rule = BuiltinRule::from_name(name)
                .ok_or_else(|| FlowConfigError::UnknownRule(name.clone()))?;
            builtin_mask &= !rule.bit();
        }
        let mut owned = BTreeMap::new();
        for (bridge, cookies) in &config.owned_cookies {
            let parsed = cookies
                .iter()
                .map(|c| {
                    parse_cookie(c).ok_or_else(|| FlowConfigError::BadCookie {
                        bridge: bridge.clone(),
                        value: c.clone(),
                    })
                })
                .collect::<Result<Vec<u64>, _>>()?;
            owned.insert(bridge.clone(), parsed);
        }
        if config.user_rules.len() > MAX_USER_RULES {
            return Err(FlowConfigError::TooManyRules);
        }
        let mut user: Vec<CompiledUserRule> = Vec::new();
        for r in &config.user_rules {
            let valid_name = r.name.starts_with(|c: char| c.is_ascii_lowercase())
                && r.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && BuiltinRule::from_name(&r.name).is_none()
                && !user.iter().any(|u| u.name == r.name);
            if !valid_name {
                return Err(FlowConfigError::BadRuleName(r.name.clone()));
            }
            if r.regex.is_none() && r.fields.is_empty() {
                return Err(FlowConfigError::EmptyRule(r.name.clone()));
            }
            let regex = r
                .regex
                .as_deref()
                .map(Regex::new)
                .transpose()
                .map_err(|source| FlowConfigError::BadRegex {
                    rule: r.name.clone(),
                    source,
                })?;
            let conditions = r
                .fields
                .iter()
                .map(|c| {
                    let f =
                        fields::lookup(&c.field).ok_or_else(|| FlowConfigError::UnknownField {
                            rule: r.name.clone(),
                            field: c.field.clone(),
                            accepted: fields::accepted(),
                        })?;
                    let parse = |v: &Option<String>| {
                        v.as_deref()
                            .map(|s| {
                                fields::parse_value(f.kind, s)
                                    .map(|(value, mask)| CondValue { value, mask })
                                    .ok_or_else(|| FlowConfigError::BadValue {
                                        rule: r.name.clone(),
                                        field: c.field.clone(),
                                        value: s.to_string(),
                                        want: f.kind.describe(),
                                        spellings: fields::spellings(f.canon),
                                    })
                            })
                            .transpose()
                    };
                    Ok(CompiledCondition {
                        field: f.canon,
                        present: c.present,
                        equals: parse(&c.equals)?,
                        not_equals: parse(&c.not_equals)?,
                    })
                })
                .collect::<Result<Vec<_>, FlowConfigError>>()?;
            user.push(CompiledUserRule {
                name: r.name.clone(),
                severity: r.severity,
                bridges: r.bridges.clone(),
                tables: r.tables.clone(),
                regex,
                conditions,
            });
        }
        Ok(RuleSet {
            builtins: BuiltinRule::ALL
                .into_iter()
                .filter(|r| builtin_mask & r.bit() != 0)
                .collect(),
            builtin_mask,
            user,
            grace: Duration::from_secs(config.stale_cookie_grace_secs),
            learn_cookies: config.learn_cookies,
            generation_window: Duration::from_secs(config.cookie_generation_window_secs),
            owned,
        })
    }

    /// Whether a built-in rule is enabled.
    pub(crate) fn enabled(&self, rule: BuiltinRule) -> bool {
        self.builtin_mask & rule.bit() != 0
    }

    /// Configured owned cookies of `bridge` (its own list plus the `"*"` list).
    pub(crate) fn configured_cookies(&self, bridge: &str) -> Vec<u64> {
        let mut v: Vec<u64> = ["*", bridge]
            .iter()
            .filter_map(|b| self.owned.get(*b))
            .flatten()
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Bit of user rule `i`.
    pub(crate) fn user_bit(i: usize) -> u64 {
        1 << (BuiltinRule::ALL.len() + i)
    }

    /// Name and severity of the rule with bit number `bit`.
    pub(crate) fn rule_of_bit(&self, bit: u32) -> Option<(&str, Severity)> {
        let b = usize::try_from(bit).ok()?;
        match BuiltinRule::ALL.get(b) {
            Some(r) => Some((r.name(), r.severity())),
            None => self
                .user
                .get(b - BuiltinRule::ALL.len())
                .map(|u| (u.name.as_str(), u.severity)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_conditions_name_rule_field_and_spellings() {
        let compile = |fields: &str| {
            let cfg: DirtyFlowConfig = toml::from_str(&format!(
                "[[user_rules]]\nname = \"r1\"\nfields = [{fields}]"
            ))
            .unwrap();
            RuleSet::compile(&cfg)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        let e = compile("{ field = \"nw_dstt\", present = false }").unwrap_err();
        assert!(
            e.contains("r1") && e.contains("nw_dstt") && e.contains("nw_dst/ip_dst"),
            "{e}"
        );
        let e = compile("{ field = \"nw_dst\", equals = \"fa:16:3e:00:00:01\" }").unwrap_err();
        assert!(
            e.contains("r1") && e.contains("nw_dst") && e.contains("IPv4") && e.contains("ip_dst"),
            "{e}"
        );
        let e = compile("{ field = \"tcp_dst\", not_equals = \"70000\" }").unwrap_err();
        assert!(e.contains("tp_dst/tcp_dst/udp_dst/sctp_dst"), "{e}");
        assert!(compile("{ field = \"ct_state\", equals = \"+trk+est\" }").is_ok());
        assert!(compile("{ field = \"eth_type\", equals = \"0x86dd\" }").is_ok());
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad: Result<DirtyFlowConfig, _> = toml::from_str("user_rulez = []");
        assert!(bad.unwrap_err().to_string().contains("user_rulez"));
        let cfg: DirtyFlowConfig = toml::from_str(
            "disabled_rules = [\"nope\"]\n[[user_rules]]\nname = \"x\"\nregex = \"a\"",
        )
        .unwrap();
        assert!(matches!(
            RuleSet::compile(&cfg),
            Err(FlowConfigError::UnknownRule(_))
        ));
        let cfg: DirtyFlowConfig =
            toml::from_str("[[user_rules]]\nname = \"unreachable\"\nregex = \"a\"").unwrap();
        assert!(matches!(
            RuleSet::compile(&cfg),
            Err(FlowConfigError::BadRuleName(_))
        ));
        let cfg: DirtyFlowConfig = toml::from_str("[[user_rules]]\nname = \"x\"").unwrap();
        assert!(matches!(
            RuleSet::compile(&cfg),
            Err(FlowConfigError::EmptyRule(_))
        ));
        let cfg: DirtyFlowConfig =
            toml::from_str("[[user_rules]]\nname = \"x\"\nregex = \"(\"").unwrap();
        assert!(matches!(
            RuleSet::compile(&cfg),
            Err(FlowConfigError::BadRegex { .. })
        ));
        let cfg: DirtyFlowConfig = toml::from_str("[owned_cookies]\nbr-int = [\"0xzz\"]").unwrap();
        assert!(matches!(
            RuleSet::compile(&cfg),
            Err(FlowConfigError::BadCookie { .. })
        ));
        let bad: Result<UserRule, _> = toml::from_str("name = \"x\"\nregexp = \"a\"");
        assert!(bad.is_err());
    }
}
