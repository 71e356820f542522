//! Dirty-flow detection: the rules of DESIGN.md ("Dirty-flow rules") over an incrementally maintained
//! index of every bridge's OpenFlow tables and ports. Pure: no I/O, time is passed in.
//!
//! # Index
//! Per bridge, flows live in a slab addressed by a small id: the index is where the daemon keeps its
//! flows (the OpenFlow mirror holds no table of its own), each as a compact [`FlowEntry`] whose match
//! and wire form share one allocation, with the few per-flow facts the rules need (shape group,
//! the id of its exact action list, age as an 8-byte stamp, dirty bits). Semantic actions are
//! decoded from the wire form when a flow is (re-)evaluated, not stored. A raw hash table of ids, hashed by their
//! [`FlowKey`] (table, priority, match: OpenFlow's identity of a flow) and compared against the
//! slab, finds a flow by key (4 bytes a flow); reverse maps lead from referenced ofports
//! (`output`/`enqueue`, `in_port`), target tables and cookies to flow ids. Per table, flows are
//! grouped by match *shape* (the set of fields and masks they match on); each group hashes its flows'
//! projection onto shapes of interest (its own shape, the shapes that may cover it, the shapes it
//! shares fields with). "Which higher-priority flow covers this one" and "which same-priority flow
//! overlaps this one" are then one hash look-up per shape group, not a table scan. Projection maps
//! store neither the projected values nor their hash (a bucket's hash is recomputed from its first
//! flow): every look-up checks the candidates' real projections, so a hash collision never yields a
//! finding.
//!
//! # Semantics
//! Shapes and projections take each match as the `semantics` module reads it: a `ct_state` match
//! with every flag it implies (so `+est` covers `+trk-new-inv`, and `+inv` never meets `+est`);
//! flows whose match no packet can satisfy are kept apart (and are `unreachable` on their own). Candidates found
//! through a projection are then checked for compatible prerequisites and conjunctions (`conj_id`
//! flows only meet `conj_id` flows). `ambiguous_priority` compares action lists by interned ids,
//! exactly.
//!
//! # Incremental evaluation
//! Adding or removing one flow re-evaluates only: that flow; the lower-priority flows it covers (or
//! covered); the same-priority flows it overlaps with different actions; the flows jumping to its table
//! when the table becomes empty or non-empty; the flows of a cookie whose ownership changed. Setting
//! ports re-evaluates only flows that reference an ofport that appeared or disappeared. The cost of one
//! change is O(shape groups in the table + affected flows); a table whose flows all have distinct shapes
//! degrades towards a scan.
//!
//! # Cookies
//! A bridge owns its configured cookies plus, when learning is on, the current agent generation: the
//! non-zero cookie held by the most flows (ties: the cookie seen most recently). When another cookie
//! takes over (a Neutron agent restart re-installs its flows with a new cookie, then deletes the old
//! ones), the old generation stays owned for the grace period, so the clean-up window raises nothing.
//! Flows with a foreign cookie are tolerated for the grace period after they appear. With
//! `cookie_generation_window_secs`, every cookie whose first flow appeared within that window of the
//! generation's first flow belongs to the generation too (agents whose extensions use cookies of
//! their own); at collector start all present cookies look simultaneous, so they all count as one
//! generation until the agent's next restart.

mod bucket;
mod fields;
pub(crate) mod rules;
mod semantics;
mod shape;
#[cfg(test)]
mod tests;

pub(crate) use crate::model::openflow::FlowKey;
pub(crate) use rules::{BuiltinRule, DirtyFlowConfig, FlowConfigError};

use crate::model::flows::{Bridge, OvsPort, Severity};
use crate::model::openflow::{FlowAction, FlowEntry, Instructions, Matches};
use bucket::{ActionsId, Bucket, Entry, FastHasher, FastMap, FastSet, FlowId};
use rules::RuleSet;
use shape::{Projection, Shape, project_hash};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// VLAN id Neutron tags quarantined ports with.
pub(crate) const DEAD_VLAN: u16 = 4095;

/// The key of `flow` ([`Matches`] are canonical: sorted at construction, shared with the entry).
fn key_of(flow: &FlowEntry) -> FlowKey {
    flow.key()
}

/// One dirty flow (or, for `dead_vlan`, one port) under one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirtyFinding<'a> {
    /// Bridge name.
    pub(crate) bridge: &'a str,
    /// Rule name (`rule` label value).
    pub(crate) rule: &'a str,
    /// The rule's severity (`broken` or `suspect`).
    pub(crate) severity: Severity,
    /// Table of the flow; `None` for port findings (`dead_vlan`).
    pub(crate) table: Option<u8>,
    /// Cookie of the flow; `None` for port findings.
    pub(crate) cookie: Option<u64>,
    /// What was flagged: the flow, or the port for `dead_vlan`.
    pub(crate) subject: FindingSubject<'a>,
}

/// What a [`DirtyFinding`] flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FindingSubject<'a> {
    /// A port, as `port NAME tag=4095` (`dead_vlan`).
    Port(&'a str),
    /// A flow.
    Flow(&'a FlowEntry),
}

impl<'a> DirtyFinding<'a> {
    /// The flow in `ovs-ofctl` text form (rendered on each call, see [`FlowEntry::text`]), or
    /// `port NAME tag=4095` for `dead_vlan`.
    pub(crate) fn flow_text(&self) -> Cow<'a, str> {
        match self.subject {
            FindingSubject::Port(t) => Cow::Borrowed(t),
            FindingSubject::Flow(f) => Cow::Owned(f.text()),
        }
    }
}

/// Whether an ofport number is a reserved port (`IN_PORT`, `TABLE`, `NORMAL`, `FLOOD`, `ALL`,
/// `CONTROLLER`, `LOCAL`, `ANY`/`NONE`), in OpenFlow 1.0 (16-bit) or 1.1+ (32-bit) numbering.
pub(crate) fn is_reserved_port(port: u32) -> bool {
    (0xff00..=0xffff).contains(&port) || port >= 0xffff_ff00
}

type ShapeId = u32;
/// Projections of a group's flows onto one shape: buckets of the flows whose projections share one
/// hash ([`project_hash`]). The hash is not stored but recomputed from a bucket's first flow, so an
/// entry costs its 24-byte bucket only. Look-ups check each flow's real projection
/// ([`Projection::same_as`]), so a collision never relates flows that do not relate.
#[derive(Debug, Default)]
struct ProjMap(hashbrown::HashTable<Bucket>);

/// The projection hash of a bucket's flows onto `c` (that of its first flow, which is indexed).
fn bucket_hash(flows: &[Option<FlowRec>], b: &Bucket, c: &Shape) -> u64 {
    b.first()
        .and_then(|e| flows.get(e.2 as usize))
        .and_then(Option::as_ref)
        .and_then(|r| project_hash(&r.entry.matches, c))
        .unwrap_or(0)
}

impl ProjMap {
    /// The bucket of projection hash `h` (onto `c`).
    fn get(&self, flows: &[Option<FlowRec>], c: &Shape, h: u64) -> Option<&Bucket> {
        self.0.find(h, |b| bucket_hash(flows, b, c) == h)
    }

    /// Adds `e` (a flow already in `flows`) under projection hash `h`.
    fn insert(&mut self, flows: &[Option<FlowRec>], c: &Shape, h: u64, e: Entry) {
        match self.0.find_mut(h, |b| bucket_hash(flows, b, c) == h) {
            Some(b) => b.insert(e),
            None => {
                self.0
                    .insert_unique(h, Bucket::One(e), |b| bucket_hash(flows, b, c));
            }
        }
    }

    /// Removes `e` (filed under projection hash `h`; its flow may already be gone from the slab).
    fn remove(&mut self, h: u64, e: &Entry) {
        if let Ok(mut occ) = self.0.find_entry(h, |b| b.contains(e)) {
            let b = occ.get_mut();
            b.remove(e);
            if b.is_empty() {
                occ.remove();
            }
        }
    }

    /// Every bucket.
    fn buckets(&self) -> impl Iterator<Item = &Bucket> + '_ {
        self.0.iter()
    }
}

/// Differences between a flow's recorded and reported installation time below this are dump
/// latency, not a re-installation (1 s).
const RESTAMP_TOLERANCE_NS: u64 = 1_000_000_000;

/// A point in time as nanoseconds from a process-wide origin (8 bytes instead of an `Instant`'s 16:
/// the index keeps one per flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(i64);

fn origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Stamp {
    fn of(t: Instant) -> Stamp {
        let o = origin();
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        if t >= o {
            Stamp(nanos(t.duration_since(o)))
        } else {
            Stamp(-nanos(o.duration_since(t)))
        }
    }

    /// `age` before this point.
    fn minus(self, age: Duration) -> Stamp {
        Stamp(
            self.0
                .saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX)),
        )
    }
}

#[derive(Debug)]
struct FlowRec {
    /// The entry (the index is where the daemon keeps its flows: the mirror holds no table).
    entry: FlowEntry,
    /// Its shape group (whose `conj` says whether the flow is kept apart, see [`inert`]).
    shape: ShapeId,
    /// Id of the flow's exact action list ([`BridgeIndex::actions`]): equal ids, equal actions.
    actions_id: ActionsId,
    added: Stamp,
    /// Bits of the rules this flow is dirty under.
    dirty: u64,
}

#[derive(Debug)]
struct ShapeGroup {
    shape: Shape,
    /// Whether the group holds conjunctive flows (kept apart: they cover and conflict with nothing).
    conj: bool,
    len: usize,
    /// Projections of the group's flows onto shapes (always holds the group's own shape).
    proj: FastMap<Shape, ProjMap>,
    /// Cached intersections of this group's shape with other groups' shapes (ids are never reused).
    inter: FastMap<ShapeId, Shape>,
    /// Number of the group's flows at each priority: a look-up for flows below, at or above a
    /// priority skips a group that has none there (without building a projection map for it).
    prios: BTreeMap<u16, u32>,
    /// Per field of the group's shape, the value every flow of the group has had there since the
    /// group was created (`None` once two differ; never set back). A flow whose value differs
    /// from such a constant shares no projection with any flow of the group.
    konst: Box<[Option<u128>]>,
}

impl ShapeGroup {
    /// Counts a flow of the group with this match and priority.
    fn add_flow(&mut self, matches: &Matches, prio: u16) {
        *self.prios.entry(prio).or_default() += 1;
        let vals = Projection::of(matches, &self.shape);
        let vals = vals.as_ref().map(Projection::values);
        if self.len == 0 {
            self.konst = match vals {
                Some(v) if v.len() == self.shape.0.len() => v.iter().copied().map(Some).collect(),
                _ => vec![None; self.shape.0.len()].into_boxed_slice(),
            };
        } else {
            for (i, k) in self.konst.iter_mut().enumerate() {
                if vals.and_then(|v| v.get(i)) != k.as_ref() {
                    *k = None;
                }
            }
        }
        self.len += 1;
    }

    /// Forgets a flow of the group with this priority.
    fn remove_flow(&mut self, prio: u16) {
        if let Some(n) = self.prios.get_mut(&prio) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.prios.remove(&prio);
            }
        }
        self.len = self.len.saturating_sub(1);
    }

    /// Whether some flow of the group has a priority below `prio`.
    fn has_below(&self, prio: u16) -> bool {
        self.prios.range(..prio).next().is_some()
    }

    /// Whether some flow of the group has a priority above `prio`.
    fn has_above(&self, prio: u16) -> bool {
        prio < u16::MAX && self.prios.range(prio + 1..).next().is_some()
    }

    /// Whether some flow of the group has priority `prio`.
    fn has_at(&self, prio: u16) -> bool {
        self.prios.contains_key(&prio)
    }
}

/// Whether no flow of a group (shape `gs`, constants `konst`) can project onto `c` (a sub-shape
/// of `gs`) as `k` does: a field that is constant over the group differs from `k` under `c`'s mask.
fn excludes(gs: &Shape, konst: &[Option<u128>], c: &Shape, k: &Projection) -> bool {
    let (mut i, vals) = (0, k.values());
    c.0.iter().zip(vals).any(|((field, len, cmask), v)| {
        while let Some(g) = gs.0.get(i) {
            if g.0 == *field && g.1 == *len {
                break;
            }
            i += 1;
        }
        konst
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|kv| kv & cmask != *v)
    })
}

/// The projection map of a group's flows onto `c`, built from the group's own-shape map on first use
/// (and maintained by insert/remove after that).
fn proj_onto<'a>(
    proj: &'a mut FastMap<Shape, ProjMap>,
    own: &Shape,
    c: &Shape,
    flows: &[Option<FlowRec>],
) -> Option<&'a ProjMap> {
    if !proj.contains_key(c) {
        let mut map = ProjMap::default();
        let ids = proj.get(own).into_iter().flat_map(ProjMap::buckets);
        for &(prio, ah, id) in ids.flat_map(Bucket::iter) {
            let rec = flows.get(id as usize).and_then(Option::as_ref);
            if let Some(k) = rec.and_then(|r| project_hash(&r.entry.matches, c)) {
                map.insert(flows, c, k, (prio, ah, id));
            }
        }
        proj.insert(c.clone(), map);
    }
    proj.get(c)
}

#[derive(Debug, Default)]
struct TableIdx {
    groups: FastMap<ShapeId, ShapeGroup>,
    /// Shape → group id, for ordinary (`[0]`) and conjunctive (`[1]`) flows.
    ids: [FastMap<Shape, ShapeId>; 2],
    next: ShapeId,
    len: usize,
}

#[derive(Debug)]
enum Timer {
    Flow(FlowId),
    Cookie(u64),
}

#[derive(Debug, Default)]
struct BridgeIndex {
    flows: Vec<Option<FlowRec>>,
    free: Vec<FlowId>,
    /// Flow ids, hashed by their key ([`key_hash`]) and compared against the stored flows: 4 bytes
    /// a flow, keys are not stored twice.
    by_key: hashbrown::HashTable<FlowId>,
    n_flows: usize,
    tables: BTreeMap<u8, TableIdx>,
    /// Ofports the bridge has; `None` until ports are known (then port rules stay silent).
    ports: Option<BTreeSet<u32>>,
    /// Ports tagged with the dead VLAN: name → finding text.
    dead_vlan: BTreeMap<String, String>,
    by_out_port: FastMap<u32, FastSet<FlowId>>,
    by_in_port: FastMap<u32, FastSet<FlowId>>,
    by_goto: FastMap<u8, FastSet<FlowId>>,
    by_cookie: FastMap<u64, FastSet<FlowId>>,
    /// Non-zero cookies: flow count and when the cookie (re)appeared.
    cookies: FastMap<u64, (usize, Instant)>,
    ranking: BTreeSet<(usize, Instant, u64)>,
    learned: Option<u64>,
    /// When the learned cookie's first flow appeared.
    learned_since: Option<Instant>,
    /// Superseded generations: cookie → (when it was superseded, when its first flow appeared).
    superseded: FastMap<u64, (Instant, Instant)>,
    configured: Vec<u64>,
    timers: BTreeMap<Instant, Vec<Timer>>,
    /// Dirty flows per rule bit.
    counts: Vec<usize>,
    /// Ids of the flows dirty under some rule (so listing findings does not scan every flow).
    dirty_ids: BTreeSet<FlowId>,
    /// Bumped whenever a finding appears or goes away.
    findings_changes: u64,
    /// User-rule bits in scope for this bridge.
    user_scope: u64,
    /// Bits of the user rules each flow matches (they depend on the flow alone), for the flows
    /// that match some: most match none, so a side map costs less than a field per flow.
    user: FastMap<FlowId, u64>,
    /// Distinct action lists: id and number of flows. `ambiguous_priority` compares flows' actions
    /// by these ids, so equal ids mean equal actions, never a hash that happened to agree.
    actions: FastMap<Box<[FlowAction]>, (ActionsId, usize)>,
    next_actions_id: ActionsId,
    /// Ids of forgotten action lists, reused first (ids stay below the number of live lists).
    free_actions_ids: Vec<ActionsId>,
    /// Flows whose stale-cookie re-check is scheduled (always at `added + grace`: the grace
    /// period is fixed for the index's lifetime, so the instant need not be kept). Few flows.
    timer_set: FastSet<FlowId>,
    /// Decoded flows' shared instruction lists (by address, see [`Instructions::addr`]) with
    /// their semantic actions, decoded once per list rather than per flow and per evaluation.
    by_instr: FastMap<usize, InstrActions>,
}

/// One shared instruction list of the index's flows ([`BridgeIndex::by_instr`]).
#[derive(Debug)]
struct InstrActions {
    /// Keeps the list (and so its address) alive while flows of the index use it.
    _instructions: Instructions,
    /// Its semantic actions.
    actions: std::sync::Arc<[FlowAction]>,
    /// Id of the action list ([`BridgeIndex::actions`]).
    id: ActionsId,
    /// Flows of the index with this list.
    flows: usize,
}

/// Whether the flow is one clause of a conjunctive match (only `conjunction` actions, and `note`s,
/// which ovs-fields(7) allows beside them): such flows overlap by design and never match on their
/// own, so they neither cover nor conflict with others.
fn conjunctive(actions: &[FlowAction]) -> bool {
    actions
        .iter()
        .any(|a| matches!(a, FlowAction::Conjunction { .. }))
        && actions.iter().all(|a| match a {
            FlowAction::Conjunction { .. } => true,
            FlowAction::Other(t) => t.starts_with("note:"),
            _ => false,
        })
}

/// Whether the flow is kept apart from coverage and overlap look-ups: a conjunction clause, or a
/// match no packet can satisfy (it covers and meets nothing; it is itself `unreachable`).
fn inert(actions: &[FlowAction], matches: &Matches) -> bool {
    conjunctive(actions) || !semantics::satisfiable(matches)
}

/// Whether a shape matches on `conj_id`: such a flow is reached through its conjunction only, so it
/// never competes with flows that do not (ovs-fields(7), "Conjunctive Match Fields").
fn shape_has_conj_id(shape: &Shape) -> bool {
    shape.0.iter().any(|f| f.0 == "conj_id")
}

fn in_port(flow: &FlowEntry) -> Option<u32> {
    let m = flow
        .matches
        .iter()
        .find(|m| m.field == "in_port" && m.is_exact())?;
    (m.len <= 4).then_some(m.value as u32)
}

fn out_ports(actions: &[FlowAction]) -> impl Iterator<Item = u32> + '_ {
    actions.iter().filter_map(|a| match a {
        FlowAction::Output(p) | FlowAction::Enqueue(p) if !is_reserved_port(*p) => Some(*p),
        _ => None,
    })
}

fn goto_targets(actions: &[FlowAction]) -> impl Iterator<Item = u8> + '_ {
    actions.iter().filter_map(|a| match a {
        FlowAction::GotoTable(t) => Some(*t),
        FlowAction::Resubmit { table: Some(t), .. } | FlowAction::Ct { table: Some(t), .. } => {
            Some(*t)
        }
        _ => None,
    })
}

/// Hash of a flow's identity (table, priority, sorted match).
fn key_hash(table: u8, priority: u16, matches: &Matches) -> u64 {
    let mut h = FastHasher::default();
    h.write_u8(table);
    h.write_u16(priority);
    matches.hash(&mut h);
    h.finish()
}

/// Whether flow `id` projects onto `shape` as `k` does (a bucket's flows share the hash of their
/// projection only).
fn same_projection(flows: &[Option<FlowRec>], id: FlowId, k: &Projection, shape: &Shape) -> bool {
    flows
        .get(id as usize)
        .and_then(Option::as_ref)
        .is_some_and(|r| k.same_as(&r.entry.matches, shape))
}

/// Whether flow `id`'s prerequisites admit a packet that also meets `other` (see
/// [`semantics::Prereq`]).
fn meets(flows: &[Option<FlowRec>], id: FlowId, other: semantics::Prereq) -> bool {
    flows
        .get(id as usize)
        .and_then(Option::as_ref)
        .is_some_and(|r| semantics::Prereq::of(&r.entry.matches).compatible(other))
}

/// Whether cookies whose first flows appeared at `a` and `b` belong to one agent generation.
fn same_generation(rules: &RuleSet, a: Instant, b: Instant) -> bool {
    !rules.generation_window.is_zero()
        && a.max(b).duration_since(a.min(b)) <= rules.generation_window
}

enum StaleState {
    Fresh,
    Stale,
    Pending(Instant),
}

impl BridgeIndex {
    fn new(rules: &RuleSet, name: &str) -> BridgeIndex {
        let user_scope = rules
            .user
            .iter()
            .enumerate()
            .filter(|(_, u)| u.applies_to_bridge(name))
            .fold(0, |m, (i, _)| m | RuleSet::user_bit(i));
        BridgeIndex {
            configured: rules.configured_cookies(name),
            counts: vec![0; 64],
            user_scope,
            ..BridgeIndex::default()
        }
    }

    fn rec(&self, id: FlowId) -> Option<&FlowRec> {
        self.flows.get(id as usize).and_then(Option::as_ref)
    }

    /// The id of the flow with this identity (`matches` sorted).
    fn find(&self, table: u8, priority: u16, matches: &Matches) -> Option<FlowId> {
        self.by_key
            .find(key_hash(table, priority, matches), |id| {
                self.rec(*id).is_some_and(|r| {
                    r.entry.table == table
                        && r.entry.priority == priority
                        && r.entry.matches == *matches
                })
            })
            .copied()
    }

    /// Links flow `id` (already in the slab) under its key.
    fn key_link(&mut self, h: u64, id: FlowId) {
        let BridgeIndex { flows, by_key, .. } = self;
        by_key.insert_unique(h, id, |other| {
            flows
                .get(*other as usize)
                .and_then(Option::as_ref)
                .map_or(0, |r| {
                    key_hash(r.entry.table, r.entry.priority, &r.entry.matches)
                })
        });
        self.n_flows += 1;
    }

    fn key_unlink(&mut self, h: u64, id: FlowId) {
        if let Ok(e) = self.by_key.find_entry(h, |x| *x == id) {
            e.remove();
            self.n_flows = self.n_flows.saturating_sub(1);
        }
    }

    /// Adds or replaces a flow; `reported` is when the switch says it was installed (from its
    /// `duration` in a dump), `None` for a flow that appears now (a flow-monitor event).
    fn upsert(&mut self, rules: &RuleSet, flow: FlowEntry, now: Instant, reported: Option<Stamp>) {
        let mut added = reported.unwrap_or_else(|| Stamp::of(now));
        if let Some(id) = self.find(flow.table, flow.priority, &flow.matches) {
            if let Some(old) = self.rec(id) {
                if old.entry == flow {
                    // A re-dump reports the same installation give or take the dump's latency:
                    // only a flow the switch re-installed (or first seen before its dump) is re-timed.
                    if reported.is_some_and(|r| r.0.abs_diff(old.added.0) > RESTAMP_TOLERANCE_NS) {
                        self.restamp(rules, id, added, now);
                    }
                    return;
                }
                if old.entry.cookie == flow.cookie {
                    let old_added = old.added;
                    if old.entry.same_actions(&flow) {
                        // Only counters, timeouts or text changed (a re-dump): nothing else is affected.
                        let user = self.user_bits(rules, &flow);
                        // Same bytes, possibly another shared copy: move the count over.
                        self.acquire_actions(&flow);
                        if let Some(Some(r)) = self.flows.get_mut(id as usize) {
                            let old = std::mem::replace(&mut r.entry, flow);
                            self.release_flow_actions(&old);
                        }
                        self.set_user(id, user);
                        if reported
                            .is_some_and(|r| r.0.abs_diff(old_added.0) > RESTAMP_TOLERANCE_NS)
                        {
                            self.restamp(rules, id, added, now);
                        } else {
                            self.evaluate(rules, id, now);
                        }
                        return;
                    }
                    if reported.is_none() {
                        added = old.added;
                    }
                }
            }
            self.remove_id(rules, id, now);
        }
        self.insert(rules, flow, added, now);
    }

    /// Sets when flow `id` was installed (the switch's word) and re-checks it.
    fn restamp(&mut self, rules: &RuleSet, id: FlowId, added: Stamp, now: Instant) {
        if let Some(Some(r)) = self.flows.get_mut(id as usize) {
            r.added = added;
        }
        // A grace period that ends at another instant needs its own timer.
        self.timer_set.remove(&id);
        self.evaluate(rules, id, now);
    }

    /// The id of the action list `actions`, counting one more flow with it.
    fn intern_actions(&mut self, actions: &[FlowAction]) -> ActionsId {
        if let Some(e) = self.actions.get_mut(actions) {
            e.1 += 1;
            return e.0;
        }
        let id = match self.free_actions_ids.pop() {
            Some(id) => id,
            None => {
                let id = self.next_actions_id;
                self.next_actions_id = self.next_actions_id.saturating_add(1);
                id
            }
        };
        self.actions.insert(actions.into(), (id, 1));
        id
    }

    /// The id and semantic actions of `flow`'s action list, counting one more flow with them
    /// (a shared instruction list is decoded with its first flow only).
    fn acquire_actions(&mut self, flow: &FlowEntry) -> (ActionsId, std::sync::Arc<[FlowAction]>) {
        let Some(i) = flow.instructions() else {
            let actions: std::sync::Arc<[FlowAction]> = flow.actions().into_owned().into();
            return (self.intern_actions(&actions), actions);
        };
        if let Some(e) = self.by_instr.get_mut(&i.addr()) {
            e.flows += 1;
            return (e.id, e.actions.clone());
        }
        let actions: std::sync::Arc<[FlowAction]> = flow.actions().into_owned().into();
        let id = self.intern_actions(&actions);
        self.by_instr.insert(
            i.addr(),
            InstrActions {
                _instructions: i.clone(),
                actions: actions.clone(),
                id,
                flows: 1,
            },
        );
        (id, actions)
    }

    /// Counts one flow with `flow`'s action list less (see [`BridgeIndex::acquire_actions`]);
    /// returns its semantic actions.
    fn release_flow_actions(&mut self, flow: &FlowEntry) -> std::sync::Arc<[FlowAction]> {
        let Some(i) = flow.instructions() else {
            let actions: std::sync::Arc<[FlowAction]> = flow.actions().into_owned().into();
            self.release_actions(&actions);
            return actions;
        };
        let Some(e) = self.by_instr.get_mut(&i.addr()) else {
            return flow.actions().into_owned().into();
        };
        e.flows = e.flows.saturating_sub(1);
        let actions = e.actions.clone();
        if e.flows == 0 {
            self.by_instr.remove(&i.addr());
            self.release_actions(&actions);
        }
        actions
    }

    /// The semantic actions of `flow` (a flow of the index, or one with the same instructions).
    fn actions_of<'a>(&'a self, flow: &'a FlowEntry) -> Cow<'a, [FlowAction]> {
        match flow
            .instructions()
            .and_then(|i| self.by_instr.get(&i.addr()))
        {
            Some(e) => Cow::Borrowed(&e.actions),
            None => flow.actions(),
        }
    }

    /// Counts one flow with `actions` less (forgetting the list with its last flow).
    fn release_actions(&mut self, actions: &[FlowAction]) {
        if let Some(e) = self.actions.get_mut(actions) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                let id = e.0;
                self.actions.remove(actions);
                self.free_actions_ids.push(id);
            }
        }
    }

    /// Records the user-rule bits of flow `id` (only non-zero ones are kept).
    fn set_user(&mut self, id: FlowId, bits: u64) {
        if bits == 0 {
            self.user.remove(&id);
        } else {
            self.user.insert(id, bits);
        }
    }

    /// Bits of the in-scope user rules that `flow` matches.
    fn user_bits(&self, rules: &RuleSet, flow: &FlowEntry) -> u64 {
        rules
            .user
            .iter()
            .enumerate()
            .filter(|(i, u)| self.user_scope & RuleSet::user_bit(*i) != 0 && u.matches(flow))
            .fold(0, |m, (i, _)| m | RuleSet::user_bit(i))
    }

    fn insert(&mut self, rules: &RuleSet, flow: FlowEntry, added: Stamp, now: Instant) {
        let shape_key = Shape::of(&flow.matches);
        let (ah, actions) = self.acquire_actions(&flow);
        let user = self.user_bits(rules, &flow);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.flows.push(None);
                FlowId::try_from(self.flows.len() - 1).unwrap_or(FlowId::MAX)
            }
        };
        let (t, prio) = (flow.table, flow.priority);
        let BridgeIndex { tables, flows, .. } = self;
        let table = tables.entry(t).or_default();
        let was_empty = table.len == 0;
        let conj = inert(&actions, &flow.matches);
        let ids = &mut table.ids[usize::from(conj)];
        let shape = match ids.get(&shape_key) {
            Some(s) => *s,
            None => {
                let s = table.next;
                table.next = table.next.wrapping_add(1);
                ids.insert(shape_key.clone(), s);
                let mut proj = FastMap::default();
                proj.insert(shape_key.clone(), ProjMap::default());
                table.groups.insert(
                    s,
                    ShapeGroup {
                        shape: shape_key.clone(),
                        conj,
                        len: 0,
                        proj,
                        inter: FastMap::default(),
                        prios: BTreeMap::new(),
                        konst: Box::default(),
                    },
                );
                s
            }
        };
        // Into the slab first: projection maps rehash from the flows they index.
        let cookie = flow.cookie;
        let kh = key_hash(t, prio, &flow.matches);
        let matches = flow.matches.clone();
        let in_p = in_port(&flow);
        if let Some(slot) = flows.get_mut(id as usize) {
            *slot = Some(FlowRec {
                entry: flow,
                shape,
                actions_id: ah,
                added,
                dirty: 0,
            });
        }
        if let Some(g) = table.groups.get_mut(&shape) {
            for (c, map) in &mut g.proj {
                if let Some(k) = project_hash(&matches, c) {
                    map.insert(flows, c, k, (prio, ah, id));
                }
            }
            g.add_flow(&matches, prio);
        }
        table.len += 1;
        for p in out_ports(&actions) {
            self.by_out_port.entry(p).or_default().insert(id);
        }
        if let Some(p) = in_p {
            self.by_in_port.entry(p).or_default().insert(id);
        }
        for tt in goto_targets(&actions) {
            self.by_goto.entry(tt).or_default().insert(id);
        }
        drop(actions);
        self.by_cookie.entry(cookie).or_default().insert(id);
        self.key_link(kh, id);
        let mut affected = if conj {
            Vec::new()
        } else {
            self.related(rules, t, shape, &shape_key, &matches, prio, ah, id, true)
        };
        if was_empty && let Some(ids) = self.by_goto.get(&t) {
            affected.extend(ids.iter().copied());
        }
        affected.extend(self.cookie_delta(rules, cookie, 1, now));
        self.set_user(id, user);
        self.evaluate(rules, id, now);
        self.evaluate_all(rules, affected, now);
    }

    fn remove_id(&mut self, rules: &RuleSet, id: FlowId, now: Instant) {
        let Some(rec) = self.flows.get_mut(id as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        if rec.dirty != 0 {
            self.findings_changes += 1;
        }
        self.dirty_ids.remove(&id);
        self.user.remove(&id);
        self.key_unlink(
            key_hash(rec.entry.table, rec.entry.priority, &rec.entry.matches),
            id,
        );
        for (bit, c) in self.counts.iter_mut().enumerate() {
            if rec.dirty & (1 << bit) != 0 {
                *c = c.saturating_sub(1);
            }
        }
        self.timer_set.remove(&id);
        let (t, prio, ah) = (rec.entry.table, rec.entry.priority, rec.actions_id);
        let mut table_now_empty = false;
        let mut conj = false;
        if let Some(table) = self.tables.get_mut(&t) {
            if let Some(g) = table.groups.get_mut(&rec.shape) {
                conj = g.conj;
                for (c, map) in &mut g.proj {
                    if let Some(k) = project_hash(&rec.entry.matches, c) {
                        map.remove(k, &(prio, ah, id));
                    }
                }
                g.remove_flow(prio);
                if g.len == 0
                    && let Some(g) = table.groups.remove(&rec.shape)
                {
                    table.ids[usize::from(conj)].remove(&g.shape);
                }
            }
            table.len = table.len.saturating_sub(1);
            table_now_empty = table.len == 0;
            if table_now_empty {
                self.tables.remove(&t);
            }
        }
        let unlink = |m: &mut FastMap<u32, FastSet<FlowId>>, k: u32| {
            if let Some(s) = m.get_mut(&k) {
                s.remove(&id);
                if s.is_empty() {
                    m.remove(&k);
                }
            }
        };
        let actions = self.release_flow_actions(&rec.entry);
        for p in out_ports(&actions) {
            unlink(&mut self.by_out_port, p);
        }
        if let Some(p) = in_port(&rec.entry) {
            unlink(&mut self.by_in_port, p);
        }
        for tt in goto_targets(&actions) {
            if let Some(s) = self.by_goto.get_mut(&tt) {
                s.remove(&id);
                if s.is_empty() {
                    self.by_goto.remove(&tt);
                }
            }
        }
        if let Some(s) = self.by_cookie.get_mut(&rec.entry.cookie) {
            s.remove(&id);
            if s.is_empty() {
                self.by_cookie.remove(&rec.entry.cookie);
            }
        }
        let mut affected = if conj {
            Vec::new()
        } else {
            self.related(
                rules,
                t,
                rec.shape,
                &Shape::of(&rec.entry.matches),
                &rec.entry.matches,
                prio,
                ah,
                id,
                false,
            )
        };
        if table_now_empty && let Some(ids) = self.by_goto.get(&t) {
            affected.extend(ids.iter().copied());
        }
        affected.extend(self.cookie_delta(rules, rec.entry.cookie, -1, now));
        self.evaluate_all(rules, affected, now);
    }

    /// Flows whose `unreachable`/`ambiguous_priority` verdict may change when a flow with this table,
    /// shape, match, priority and actions hash is added (`adding`) or removed.
    #[expect(
        clippy::too_many_arguments,
        reason = "internal helper; the flow parts are borrowed from different places"
    )]
    fn related(
        &mut self,
        rules: &RuleSet,
        t: u8,
        sid: ShapeId,
        shape: &Shape,
        matches: &Matches,
        prio: u16,
        ah: ActionsId,
        id: FlowId,
        adding: bool,
    ) -> Vec<FlowId> {
        let unreach = rules.enabled(BuiltinRule::Unreachable);
        let ambig = rules.enabled(BuiltinRule::AmbiguousPriority);
        let mut out = Vec::new();
        let BridgeIndex { flows, tables, .. } = self;
        let flows: &[Option<FlowRec>] = flows;
        let Some(table) = tables.get_mut(&t) else {
            return out;
        };
        let Some(own_key) = Projection::of(matches, shape) else {
            return out;
        };
        let own_conj_id = shape_has_conj_id(shape);
        let own_prereq = semantics::Prereq::of(matches);
        // Only flows whose verdict can flip: on add, those not yet flagged; on remove, flagged ones.
        let flips = |fid: FlowId, bit: u64| {
            fid != id
                && flows
                    .get(fid as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|r| (r.dirty & bit != 0) != adding)
        };
        for g in table.groups.values_mut() {
            // Skip groups without flows at the priorities asked about before building anything.
            let (below, at) = (unreach && g.has_below(prio), ambig && g.has_at(prio));
            if !below && !at {
                continue;
            }
            let ShapeGroup {
                shape: gs,
                proj,
                inter,
                conj,
                konst,
                ..
            } = g;
            let c = inter.entry(sid).or_insert_with(|| shape.intersect(gs));
            // The changed flow covers this group's flows when the intersection is its whole shape.
            if below && c == shape && !excludes(gs, konst, c, &own_key) {
                let bit = BuiltinRule::Unreachable.bit();
                if let Some(b) =
                    proj_onto(proj, gs, c, flows).and_then(|m| m.get(flows, c, own_key.hash))
                {
                    out.extend(b.below(prio, |f| {
                        flips(f, bit) && same_projection(flows, f, &own_key, c)
                    }));
                }
            }
            if at && !*conj && shape_has_conj_id(gs) == own_conj_id {
                let bit = BuiltinRule::AmbiguousPriority.bit();
                if let Some(k) = Projection::of(matches, c)
                    && !excludes(gs, konst, c, &k)
                    && let Some(b) =
                        proj_onto(proj, gs, c, flows).and_then(|m| m.get(flows, c, k.hash))
                {
                    out.extend(b.same_prio_other_actions(prio, ah, |f| {
                        flips(f, bit)
                            && same_projection(flows, f, &k, c)
                            && meets(flows, f, own_prereq)
                    }));
                }
            }
        }
        out
    }

    /// Updates the count of `cookie` by `delta`; returns flows to re-evaluate if the learned agent
    /// generation changed.
    fn cookie_delta(
        &mut self,
        rules: &RuleSet,
        cookie: u64,
        delta: isize,
        now: Instant,
    ) -> Vec<FlowId> {
        if cookie == 0 || !rules.learn_cookies || !rules.enabled(BuiltinRule::StaleCookie) {
            return Vec::new();
        }
        let entry = self.cookies.entry(cookie).or_insert((0, now));
        self.ranking.remove(&(entry.0, entry.1, cookie));
        entry.0 = entry.0.saturating_add_signed(delta);
        if entry.0 == 0 {
            self.cookies.remove(&cookie);
        } else {
            self.ranking.insert((entry.0, entry.1, cookie));
        }
        let best = self.ranking.last().map(|e| e.2);
        if best == self.learned {
            return Vec::new();
        }
        let mut affected = Vec::new();
        if let Some(old) = self.learned {
            self.superseded
                .insert(old, (now, self.learned_since.unwrap_or(now)));
            // No timer when the grace period is too long to represent: the generation stays owned.
            if let Some(at) = now.checked_add(rules.grace) {
                self.timers.entry(at).or_default().push(Timer::Cookie(old));
            }
        }
        self.learned = best;
        self.learned_since = best.and_then(|c| self.first_seen(c));
        if let Some(new) = best {
            self.superseded.remove(&new);
            affected.extend(self.generation_flows(rules, new, self.learned_since));
        }
        affected
    }

    /// When the first flow of (non-zero, learned) cookie `c` appeared.
    fn first_seen(&self, c: u64) -> Option<Instant> {
        self.cookies.get(&c).map(|e| e.1)
    }

    /// Flows of `cookie` and, with a generation window, of every cookie first seen within the window
    /// of `since` (the generation's first flow).
    fn generation_flows(
        &self,
        rules: &RuleSet,
        cookie: u64,
        since: Option<Instant>,
    ) -> Vec<FlowId> {
        let mut cookies = vec![cookie];
        if let Some(g) = since {
            cookies.extend(
                self.cookies
                    .iter()
                    .filter(|(_, e)| same_generation(rules, e.1, g))
                    .map(|(c, _)| *c),
            );
        }
        cookies.sort_unstable();
        cookies.dedup();
        cookies
            .iter()
            .filter_map(|c| self.by_cookie.get(c))
            .flatten()
            .copied()
            .collect()
    }

    fn stale_state(&self, rules: &RuleSet, rec: &FlowRec, now: Instant) -> StaleState {
        if self.configured.is_empty() && self.learned.is_none() {
            return StaleState::Fresh;
        }
        let c = rec.entry.cookie;
        let first = self.first_seen(c);
        let same_gen = |since: Instant| first.is_some_and(|f| same_generation(rules, f, since));
        let owned = self.configured.contains(&c)
            || self.learned == Some(c)
            || self.learned_since.is_some_and(same_gen)
            || self.superseded.iter().any(|(sc, (switched, since))| {
                (*sc == c || same_gen(*since))
                    && switched
                        .checked_add(rules.grace)
                        .is_none_or(|end| now < end)
            });
        if owned {
            return StaleState::Fresh;
        }
        // In stamps: a flow the switch installed before pinflow started is older than the origin.
        let Some(due) = i64::try_from(rules.grace.as_nanos())
            .ok()
            .and_then(|g| rec.added.0.checked_add(g))
        else {
            return StaleState::Fresh;
        };
        let left = due.saturating_sub(Stamp::of(now).0);
        if left <= 0 {
            return StaleState::Stale;
        }
        match now.checked_add(Duration::from_nanos(left.unsigned_abs())) {
            Some(at) => StaleState::Pending(at),
            None => StaleState::Fresh,
        }
    }

    fn shadowed(&self, rec: &FlowRec) -> bool {
        if rec.entry.matches.is_empty() {
            // A table's catch-all default: agents override it with a higher catch-all and leave it
            // (Neutron's explicitly_egress_direct in br-int table 60, DVR in br-phys table 0).
            // The flows with a match that a catch-all shadows are still reported.
            return false;
        }
        if !semantics::satisfiable(&rec.entry.matches) {
            // No packet can match it: it is unreachable whatever else the table holds.
            return true;
        }
        let Some(table) = self.tables.get(&rec.entry.table) else {
            return false;
        };
        let p = rec.entry.priority;
        table
            .groups
            .values()
            .filter(|g| !g.conj && g.has_above(p))
            .any(|g| {
                Projection::of(&rec.entry.matches, &g.shape).is_some_and(|k| {
                    g.proj
                        .get(&g.shape)
                        .and_then(|m| m.get(&self.flows, &g.shape, k.hash))
                        .is_some_and(|b| {
                            b.any_above(rec.entry.priority, |f| {
                                same_projection(&self.flows, f, &k, &g.shape)
                            })
                        })
                })
            })
    }

    fn ambiguous(&mut self, id: FlowId) -> bool {
        let BridgeIndex { flows, tables, .. } = self;
        let flows: &[Option<FlowRec>] = flows;
        let Some(rec) = flows.get(id as usize).and_then(Option::as_ref) else {
            return false;
        };
        let Some(table) = tables.get_mut(&rec.entry.table) else {
            return false;
        };
        if table.groups.get(&rec.shape).is_none_or(|g| g.conj) {
            return false;
        }
        let (p, ah) = (rec.entry.priority, rec.actions_id);
        let own_conj_id = rec
            .entry
            .matches
            .iter()
            .any(|m| m.field == "conj_id" && m.mask != 0);
        let own_prereq = semantics::Prereq::of(&rec.entry.matches);
        table
            .groups
            .values_mut()
            .filter(|g| !g.conj && g.has_at(p) && shape_has_conj_id(&g.shape) == own_conj_id)
            .any(|g| {
                let ShapeGroup {
                    shape: gs,
                    proj,
                    inter,
                    konst,
                    ..
                } = g;
                let c = inter
                    .entry(rec.shape)
                    .or_insert_with(|| Shape::of(&rec.entry.matches).intersect(gs));
                let Some(k) = Projection::of(&rec.entry.matches, c) else {
                    return false;
                };
                if excludes(gs, konst, c, &k) {
                    return false;
                }
                proj_onto(proj, gs, c, flows)
                    .and_then(|m| m.get(flows, c, k.hash))
                    .is_some_and(|b| {
                        b.conflicts(p, ah, |f| {
                            same_projection(flows, f, &k, c) && meets(flows, f, own_prereq)
                        })
                    })
            })
    }

    fn evaluate_all(&mut self, rules: &RuleSet, mut ids: Vec<FlowId>, now: Instant) {
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.evaluate(rules, id, now);
        }
    }

    /// Recomputes every rule for one flow and keeps the per-rule counts in step.
    fn evaluate(&mut self, rules: &RuleSet, id: FlowId, now: Instant) {
        let Some(rec) = self.rec(id) else {
            return;
        };
        let mut bits = self.user.get(&id).copied().unwrap_or(0);
        let e = &rec.entry;
        let needs_actions = rules.enabled(BuiltinRule::GotoEmptyTable)
            || (self.ports.is_some() && rules.enabled(BuiltinRule::OutputToMissingPort));
        let actions = if needs_actions {
            self.actions_of(e)
        } else {
            Cow::Borrowed(&[][..])
        };
        if let Some(ports) = &self.ports {
            if rules.enabled(BuiltinRule::OutputToMissingPort)
                && out_ports(&actions).any(|p| !ports.contains(&p))
            {
                bits |= BuiltinRule::OutputToMissingPort.bit();
            }
            if rules.enabled(BuiltinRule::InPortMissing)
                && in_port(e).is_some_and(|p| !is_reserved_port(p) && !ports.contains(&p))
            {
                bits |= BuiltinRule::InPortMissing.bit();
            }
        }
        if rules.enabled(BuiltinRule::GotoEmptyTable)
            && goto_targets(&actions).any(|t| self.tables.get(&t).is_none_or(|t| t.len == 0))
        {
            bits |= BuiltinRule::GotoEmptyTable.bit();
        }
        let mut timer = None;
        if rules.enabled(BuiltinRule::StaleCookie) {
            match self.stale_state(rules, rec, now) {
                StaleState::Fresh => {}
                StaleState::Stale => bits |= BuiltinRule::StaleCookie.bit(),
                StaleState::Pending(at) if !self.timer_set.contains(&id) => timer = Some(at),
                StaleState::Pending(_) => {}
            }
        }
        if rules.enabled(BuiltinRule::Unreachable) && self.shadowed(rec) {
            bits |= BuiltinRule::Unreachable.bit();
        }
        if rules.enabled(BuiltinRule::AmbiguousPriority) && self.ambiguous(id) {
            bits |= BuiltinRule::AmbiguousPriority.bit();
        }
        let Some(Some(rec)) = self.flows.get_mut(id as usize) else {
            return;
        };
        let old = std::mem::replace(&mut rec.dirty, bits);
        if old != bits {
            self.findings_changes += 1;
        }
        if bits != 0 {
            self.dirty_ids.insert(id);
        } else if old != 0 {
            self.dirty_ids.remove(&id);
        }
        if let Some(at) = timer {
            self.timer_set.insert(id);
            self.timers.entry(at).or_default().push(Timer::Flow(id));
        }
        if old != bits {
            for (bit, c) in self.counts.iter_mut().enumerate() {
                let m = 1u64 << bit;
                match (old & m != 0, bits & m != 0) {
                    (false, true) => *c += 1,
                    (true, false) => *c = c.saturating_sub(1),
                    _ => {}
                }
            }
        }
    }

    fn tick(&mut self, rules: &RuleSet, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if *entry.key() > now {
                break;
            }
            let mut ids = Vec::new();
            for timer in entry.remove() {
                match timer {
                    Timer::Flow(id) => ids.push(id),
                    Timer::Cookie(c) => {
                        let entry = self.superseded.get(&c).copied();
                        if entry.is_some_and(|(switched, _)| {
                            switched
                                .checked_add(rules.grace)
                                .is_some_and(|end| now >= end)
                        }) {
                            self.superseded.remove(&c);
                        }
                        ids.extend(self.generation_flows(rules, c, entry.map(|e| e.1)));
                    }
                }
            }
            self.evaluate_all(rules, ids, now);
        }
    }

    fn set_ports(&mut self, rules: &RuleSet, ports: &BTreeMap<String, OvsPort>, now: Instant) {
        let new: BTreeSet<u32> = ports.values().filter_map(|p| p.ofport).collect();
        self.findings_changes += 1;
        self.dead_vlan = ports
            .values()
            .filter(|p| p.tag == Some(DEAD_VLAN))
            .map(|p| (p.name.clone(), format!("port {} tag={DEAD_VLAN}", p.name)))
            .collect();
        let changed: Vec<u32> = match &self.ports {
            None => self
                .by_out_port
                .keys()
                .chain(self.by_in_port.keys())
                .copied()
                .collect(),
            Some(old) => old.symmetric_difference(&new).copied().collect(),
        };
        self.ports = Some(new);
        let ids: Vec<FlowId> = changed
            .iter()
            .flat_map(|p| {
                self.by_out_port
                    .get(p)
                    .into_iter()
                    .chain(self.by_in_port.get(p))
                    .flatten()
                    .copied()
            })
            .collect();
        self.evaluate_all(rules, ids, now);
    }
}

/// The dirty-flow detector: an index of every bridge's flows and ports with the current findings.
#[derive(Debug)]
pub(crate) struct DirtyFlowIndex {
    rules: RuleSet,
    bridges: BTreeMap<String, BridgeIndex>,
}

impl DirtyFlowIndex {
    /// An empty index for a validated configuration.
    pub(crate) fn new(config: &DirtyFlowConfig) -> Result<DirtyFlowIndex, FlowConfigError> {
        Ok(DirtyFlowIndex {
            rules: RuleSet::compile(config)?,
            bridges: BTreeMap::new(),
        })
    }

    fn bridge(&mut self, bridge: &str) -> &mut BridgeIndex {
        let rules = &self.rules;
        self.bridges
            .entry(bridge.to_string())
            .or_insert_with(|| BridgeIndex::new(rules, bridge))
    }

    /// Adds a flow, or replaces the flow with the same [`FlowKey`] (a changed cookie restarts its
    /// grace period). Re-evaluates only the flows this change can affect.
    ///
    /// The index keeps the entry itself (an `Arc` is unwrapped; entries share their storage, so a
    /// clone is no copy).
    pub(crate) fn upsert_flow(&mut self, bridge: &str, flow: impl Into<FlowEntry>, now: Instant) {
        let flow = flow.into();
        self.tick(now);
        let rules = &self.rules;
        self.bridges
            .entry(bridge.to_string())
            .or_insert_with(|| BridgeIndex::new(rules, bridge))
            .upsert(rules, flow, now, None);
    }

    /// Removes the flow with `key`; returns whether it was present.
    pub(crate) fn remove_flow(&mut self, bridge: &str, key: &FlowKey, now: Instant) -> bool {
        self.tick(now);
        let rules = &self.rules;
        let Some(b) = self.bridges.get_mut(bridge) else {
            return false;
        };
        match b.find(key.table, key.priority, &key.matches) {
            Some(id) => {
                b.remove_id(rules, id, now);
                true
            }
            None => false,
        }
    }

    /// Replaces all flows of `bridge` with a full dump: flows not in `flows` are removed, the rest
    /// upserted (unchanged flows cost a hash look-up and keep their age). Entries are kept as given.
    pub(crate) fn replace_flows<F: Into<FlowEntry>>(
        &mut self,
        bridge: &str,
        flows: impl IntoIterator<Item = F>,
        now: Instant,
    ) {
        self.replace(bridge, flows.into_iter().map(|f| (f.into(), None)), now);
    }

    /// [`replace_flows`](Self::replace_flows) with each flow's age as the switch reports it (its
    /// `duration`): every flow, unchanged ones too, is aged from its installation on the switch,
    /// so `stale_cookie` gives the same verdicts right after pinflow (re)starts as before.
    pub(crate) fn replace_flows_aged<F: Into<FlowEntry>>(
        &mut self,
        bridge: &str,
        flows: impl IntoIterator<Item = (F, Duration)>,
        now: Instant,
    ) {
        let at = Stamp::of(now);
        self.replace(
            bridge,
            flows
                .into_iter()
                .map(|(f, age)| (f.into(), Some(at.minus(age)))),
            now,
        );
    }

    fn replace(
        &mut self,
        bridge: &str,
        flows: impl Iterator<Item = (FlowEntry, Option<Stamp>)>,
        now: Instant,
    ) {
        let flows: Vec<(FlowEntry, Option<Stamp>)> = flows.collect();
        if self.bridge(bridge).n_flows == 0 {
            // First load: nothing to remove, and no key set to build. Size the slab once (no
            // doubling copies of a large table).
            let b = self.bridge(bridge);
            b.flows
                .reserve_exact(flows.len().saturating_sub(b.free.len()));
            for (f, at) in flows {
                self.upsert_stamped(bridge, f, at, now);
            }
            // The slab grew by doubling; give back the unused tail of a large first load.
            if let Some(b) = self.bridges.get_mut(bridge) {
                b.flows.shrink_to_fit();
            }
            return;
        }
        let keep: HashSet<FlowKey> = flows.iter().map(|(f, _)| key_of(f)).collect();
        let gone: Vec<FlowKey> = self
            .bridge(bridge)
            .flows
            .iter()
            .flatten()
            .map(|r| key_of(&r.entry))
            .filter(|k| !keep.contains(k))
            .collect();
        for k in &gone {
            self.remove_flow(bridge, k, now);
        }
        for (f, at) in flows {
            self.upsert_stamped(bridge, f, at, now);
        }
    }

    fn upsert_stamped(&mut self, bridge: &str, flow: FlowEntry, at: Option<Stamp>, now: Instant) {
        self.tick(now);
        let rules = &self.rules;
        self.bridges
            .entry(bridge.to_string())
            .or_insert_with(|| BridgeIndex::new(rules, bridge))
            .upsert(rules, flow, now, at);
    }

    /// Sets the ports of `bridge` (from OVSDB): ofports for the port rules, tags for `dead_vlan`.
    /// Until this is called for a bridge, `output_to_missing_port` and `in_port_missing` stay silent.
    pub(crate) fn set_ports(
        &mut self,
        bridge: &str,
        ports: &BTreeMap<String, OvsPort>,
        now: Instant,
    ) {
        self.tick(now);
        let rules = &self.rules;
        self.bridges
            .entry(bridge.to_string())
            .or_insert_with(|| BridgeIndex::new(rules, bridge))
            .set_ports(rules, ports, now);
    }

    /// Applies an OVSDB snapshot's bridges: [`DirtyFlowIndex::set_ports`] for each, and
    /// [`DirtyFlowIndex::remove_bridge`] for indexed bridges OVSDB no longer has. Call it only while the
    /// OVSDB source is connected (its last state after a disconnect is stale).
    pub(crate) fn sync_bridges(&mut self, bridges: &BTreeMap<String, Bridge>, now: Instant) {
        let gone: Vec<String> = self
            .bridges
            .keys()
            .filter(|b| !bridges.contains_key(*b))
            .cloned()
            .collect();
        for b in gone {
            self.remove_bridge(&b);
        }
        for (name, bridge) in bridges {
            self.set_ports(name, &bridge.ports, now);
        }
    }

    /// Forgets a bridge (it disappeared from OVSDB) with its flows and findings.
    pub(crate) fn remove_bridge(&mut self, bridge: &str) -> bool {
        self.bridges.remove(bridge).is_some()
    }

    /// Advances time: flows whose grace period ended and superseded cookie generations are re-checked.
    /// Call it at [`next_deadline`](Self::next_deadline); every mutating call also does it.
    pub(crate) fn tick(&mut self, now: Instant) {
        let rules = &self.rules;
        for b in self.bridges.values_mut() {
            b.tick(rules, now);
        }
    }

    /// When [`tick`](Self::tick) next has work: the earliest grace-period end, if any is pending.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.bridges
            .values()
            .filter_map(|b| b.timers.first_key_value().map(|(t, _)| *t))
            .min()
    }

    /// A number that changes whenever a finding appears or goes away (compare for inequality: it
    /// may also go down, when a bridge is removed).
    pub(crate) fn findings_generation(&self) -> u64 {
        self.bridges
            .values()
            .fold(self.bridges.len() as u64, |g, b| {
                g.wrapping_add(b.findings_changes)
            })
    }

    /// Every current finding, bridge by bridge (`dead_vlan` ports first, then flows in index order).
    pub(crate) fn findings(&self) -> impl Iterator<Item = DirtyFinding<'_>> + '_ {
        let rules = &self.rules;
        let dead = rules.enabled(BuiltinRule::DeadVlan);
        self.bridges.iter().flat_map(move |(name, b)| {
            let ports = b
                .dead_vlan
                .values()
                .filter(move |_| dead)
                .map(move |text| DirtyFinding {
                    bridge: name,
                    rule: BuiltinRule::DeadVlan.name(),
                    severity: BuiltinRule::DeadVlan.severity(),
                    table: None,
                    cookie: None,
                    subject: FindingSubject::Port(text),
                });
            let flows = b
                .dirty_ids
                .iter()
                .filter_map(|id| b.rec(*id))
                .flat_map(move |r| {
                    (0..64u32)
                        .filter(move |bit| r.dirty & (1u64 << bit) != 0)
                        .filter_map(move |bit| {
                            let (rule, severity) = rules.rule_of_bit(bit)?;
                            Some(DirtyFinding {
                                bridge: name,
                                rule,
                                severity,
                                table: Some(r.entry.table),
                                cookie: Some(r.entry.cookie),
                                subject: FindingSubject::Flow(&r.entry),
                            })
                        })
                });
            ports.chain(flows)
        })
    }

    /// Dirty-flow counts per (bridge, rule): every enabled built-in rule for every known bridge, and
    /// every user rule for the bridges in its scope, 0 when clean (`pinflow_ovs_dirty_flows`).
    pub(crate) fn counts(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for (name, b) in &self.bridges {
            for r in &self.rules.builtins {
                let n = match r {
                    BuiltinRule::DeadVlan => b.dead_vlan.len(),
                    r => b.counts.get(*r as usize).copied().unwrap_or(0),
                };
                out.insert((name.clone(), r.name().to_string()), n);
            }
            for (i, u) in self.rules.user.iter().enumerate() {
                if b.user_scope & RuleSet::user_bit(i) != 0 {
                    let n = b
                        .counts
                        .get(BuiltinRule::ALL.len() + i)
                        .copied()
                        .unwrap_or(0);
                    out.insert((name.clone(), u.name.clone()), n);
                }
            }
        }
        out
    }

    /// Number of flows per (bridge, table) (`pinflow_ovs_flows`).
    pub(crate) fn flow_counts(&self) -> BTreeMap<(String, u8), usize> {
        self.bridges
            .iter()
            .flat_map(|(name, b)| {
                b.tables
                    .iter()
                    .map(move |(t, ti)| ((name.clone(), *t), ti.len))
            })
            .collect()
    }

    /// Total flows of `bridge`.
    #[cfg(test)]
    pub(crate) fn len(&self, bridge: &str) -> usize {
        self.bridges.get(bridge).map_or(0, |b| b.n_flows)
    }

    /// Whether no bridge holds any flow.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.bridges.values().all(|b| b.n_flows == 0)
    }

    /// The learned agent generation (cookie) of `bridge`, if any.
    #[cfg(test)]
    pub(crate) fn learned_cookie(&self, bridge: &str) -> Option<u64> {
        self.bridges.get(bridge).and_then(|b| b.learned)
    }

    /// Names of the enabled rules (built-in, then user rules).
    #[cfg(test)]
    pub(crate) fn rule_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.rule_severities().map(|(n, _)| n)
    }

    /// Every enabled rule (built-in, then user rules) with its severity
    /// (`pinflow_ovs_dirty_flow_rule_info`).
    pub(crate) fn rule_severities(&self) -> impl Iterator<Item = (&str, Severity)> + '_ {
        self.rules
            .builtins
            .iter()
            .map(|r| (r.name(), r.severity()))
            .chain(
                self.rules
                    .user
                    .iter()
                    .map(|u| (u.name.as_str(), u.severity)),
            )
    }
}
