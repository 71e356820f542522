//! Small building blocks of the flow index: a fast non-cryptographic hasher for its internal maps and
//! the bucket type holding the flows that share one projection.

use std::collections::BTreeSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound::{Excluded, Included, Unbounded};

/// Flow id inside one bridge index.
pub(crate) type FlowId = u32;

/// A multiply-rotate hasher with a final avalanche mix. The index hashes flow matches, shapes
/// and ids millions of times; SipHash's DoS resistance buys nothing for data read from the local OVS.
#[derive(Clone, Copy, Default)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // A multiply only carries low bits upwards; fold the high bits back down (MurmurHash3's final
        // mix) so that keys differing only in their last bytes still spread over hash-table slots.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;
/// `HashSet` with [`FastHasher`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<FastHasher>>;

/// Id of a distinct action list of one bridge index (ids of forgotten lists are reused).
pub(crate) type ActionsId = u32;

/// One bucket entry: (priority, action list id, flow id); 12 bytes.
pub(crate) type Entry = (u16, ActionsId, FlowId);

/// Buckets up to this size are sorted slices (most buckets hold one flow); larger ones are B-trees.
const SMALL: usize = 16;

/// The flows of one shape group whose projections share one hash, ordered by (priority, actions
/// hash, id). Projection maps are keyed by the hash only, so a bucket may (very rarely) mix flows
/// of different projections: every query takes a `keep` predicate that tells the flows of the
/// asked-for projection apart, and answers from those only.
///
/// 16 bytes: the entry inline for a single flow, else one thin pointer (projection maps hold a
/// bucket per distinct projection, most of them with one flow).
#[derive(Debug)]
pub(crate) enum Bucket {
    /// One flow, inline (most buckets: no allocation).
    One(Entry),
    /// Sorted, exact-capacity list (2..=`SMALL` flows; empty only transiently), boxed so that
    /// the bucket stays one pointer wide.
    #[expect(
        clippy::box_collection,
        reason = "boxed, the list takes 8 bytes instead of 24: keeps every bucket at 16 bytes"
    )]
    Small(Box<Vec<Entry>>),
    /// Ordered set.
    #[expect(
        clippy::box_collection,
        reason = "boxed, the set takes 8 bytes instead of 24: keeps every bucket at 16 bytes"
    )]
    Large(Box<BTreeSet<Entry>>),
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::Small(Box::default())
    }
}

impl Bucket {
    /// The entries of a slice-like bucket (`One`, `Small`), `None` for `Large`.
    fn slice(&self) -> Option<&[Entry]> {
        match self {
            Bucket::One(e) => Some(std::slice::from_ref(e)),
            Bucket::Small(v) => Some(v),
            Bucket::Large(_) => None,
        }
    }

    pub(crate) fn insert(&mut self, e: Entry) {
        match self {
            Bucket::One(x) => {
                if *x != e {
                    let mut v = vec![*x, e];
                    v.sort_unstable();
                    *self = Bucket::Small(Box::new(v));
                }
            }
            Bucket::Small(v) if v.is_empty() => *self = Bucket::One(e),
            Bucket::Small(v) => {
                if let Err(pos) = v.binary_search(&e) {
                    let mut w = Vec::with_capacity(v.len() + 1);
                    w.extend_from_slice(v.get(..pos).unwrap_or_default());
                    w.push(e);
                    w.extend_from_slice(v.get(pos..).unwrap_or_default());
                    *self = if w.len() > SMALL {
                        Bucket::Large(Box::new(w.into_iter().collect()))
                    } else {
                        Bucket::Small(Box::new(w))
                    };
                }
            }
            Bucket::Large(s) => {
                s.insert(e);
            }
        }
    }

    pub(crate) fn remove(&mut self, e: &Entry) {
        match self {
            Bucket::One(x) => {
                if x == e {
                    *self = Bucket::default();
                }
            }
            Bucket::Small(v) => {
                if let Ok(pos) = v.binary_search(e) {
                    let mut w: Vec<Entry> = Vec::with_capacity(v.len() - 1);
                    w.extend(
                        v.iter()
                            .enumerate()
                            .filter(|(i, _)| *i != pos)
                            .map(|(_, x)| *x),
                    );
                    *self = match w.as_slice() {
                        [one] => Bucket::One(*one),
                        _ => Bucket::Small(Box::new(w)),
                    };
                }
            }
            Bucket::Large(s) => {
                s.remove(e);
                if s.len() <= SMALL / 2 {
                    let v: Vec<Entry> = std::mem::take(&mut **s).into_iter().collect();
                    *self = Bucket::Small(Box::new(v));
                }
            }
        }
    }

    /// The lowest entry.
    pub(crate) fn first(&self) -> Option<&Entry> {
        match self {
            Bucket::Large(s) => s.first(),
            _ => self.slice().and_then(<[Entry]>::first),
        }
    }

    /// Whether the bucket holds `e`.
    pub(crate) fn contains(&self, e: &Entry) -> bool {
        match self {
            Bucket::Large(s) => s.contains(e),
            _ => self.slice().is_some_and(|v| v.binary_search(e).is_ok()),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Bucket::Large(s) => s.is_empty(),
            _ => self.slice().is_none_or(<[Entry]>::is_empty),
        }
    }

    /// Every entry, in order.
    pub(crate) fn iter(&self) -> Box<dyn Iterator<Item = &Entry> + '_> {
        match self {
            Bucket::Large(s) => Box::new(s.iter()),
            _ => Box::new(self.slice().unwrap_or_default().iter()),
        }
    }

    /// Entries with priority `prio` and an actions hash other than `ah`.
    fn same_prio_other(&self, prio: u16, ah: ActionsId) -> Box<dyn Iterator<Item = &Entry> + '_> {
        match self {
            Bucket::Large(s) => Box::new(
                s.range((Included((prio, 0, 0)), Excluded((prio, ah, 0))))
                    .chain(s.range((
                        Excluded((prio, ah, FlowId::MAX)),
                        Included((prio, ActionsId::MAX, FlowId::MAX)),
                    ))),
            ),
            _ => Box::new(
                self.slice()
                    .unwrap_or_default()
                    .iter()
                    .filter(move |e| e.0 == prio && e.1 != ah),
            ),
        }
    }

    /// Whether some kept flow has a priority above `prio`.
    pub(crate) fn any_above(&self, prio: u16, keep: impl Fn(FlowId) -> bool) -> bool {
        match self {
            Bucket::Large(s) => s
                .range((Excluded((prio, ActionsId::MAX, FlowId::MAX)), Unbounded))
                .rev()
                .any(|e| keep(e.2)),
            _ => self
                .slice()
                .unwrap_or_default()
                .iter()
                .rev()
                .take_while(|e| e.0 > prio)
                .any(|e| keep(e.2)),
        }
    }

    /// Kept flows with a priority below `prio`.
    pub(crate) fn below(&self, prio: u16, keep: impl Fn(FlowId) -> bool) -> Vec<FlowId> {
        match self {
            Bucket::Large(s) => s
                .range(..(prio, 0, 0))
                .map(|e| e.2)
                .filter(|id| keep(*id))
                .collect(),
            _ => self
                .slice()
                .unwrap_or_default()
                .iter()
                .take_while(|e| e.0 < prio)
                .map(|e| e.2)
                .filter(|id| keep(*id))
                .collect(),
        }
    }

    /// Kept flows with priority `prio` and an actions hash other than `ah`.
    pub(crate) fn same_prio_other_actions(
        &self,
        prio: u16,
        ah: ActionsId,
        keep: impl Fn(FlowId) -> bool,
    ) -> Vec<FlowId> {
        self.same_prio_other(prio, ah)
            .map(|e| e.2)
            .filter(|id| keep(*id))
            .collect()
    }

    /// Whether some kept flow has priority `prio` and an actions hash other than `ah`.
    pub(crate) fn conflicts(
        &self,
        prio: u16,
        ah: ActionsId,
        keep: impl Fn(FlowId) -> bool,
    ) -> bool {
        self.same_prio_other(prio, ah).any(|e| keep(e.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn all(_: FlowId) -> bool {
        true
    }

    #[test]
    fn hasher_spreads_keys_differing_in_last_bytes() {
        let b = BuildHasherDefault::<FastHasher>::default();
        let slots: FastSet<u64> = (0..1000u32)
            .map(|i| {
                let mut key = vec![0xfa, 0x16, 0x3e, 0, 0, 0];
                key.extend_from_slice(&i.to_be_bytes());
                b.hash_one(&key) & 0x3ff
            })
            .collect();
        assert!(slots.len() > 500, "{} distinct slots", slots.len());
    }

    #[test]
    fn small_and_large_buckets_agree() {
        let mut small = Bucket::default();
        let mut large = Bucket::Large(Box::default());
        for i in 0..40u32 {
            let e = ((i % 5) as u16 * 10, i % 3, i);
            small.insert(e);
            large.insert(e);
        }
        assert!(matches!(small, Bucket::Large(_)));
        for b in [&small, &large] {
            assert!(b.any_above(30, all) && !b.any_above(40, all));
            assert!(!b.any_above(30, |id| id % 5 != 4));
            assert_eq!(b.below(10, all).len(), 8);
            assert_eq!(b.below(10, |id| id < 20).len(), 4);
            assert_eq!(b.same_prio_other_actions(20, 1, all).len(), 5);
            assert!(b.conflicts(20, 1, all));
            assert!(!b.conflicts(20, 1, |_| false));
        }
        for i in 0..36u32 {
            let e = ((i % 5) as u16 * 10, i % 3, i);
            small.remove(&e);
        }
        assert!(matches!(small, Bucket::Small(_)));
        assert_eq!(small.iter().count(), 4);
        assert!(!small.is_empty());
    }

    #[test]
    fn buckets_and_entries_stay_small() {
        assert_eq!(std::mem::size_of::<Entry>(), 12);
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
    }

    #[test]
    fn single_entry_buckets_stay_inline() {
        let mut b = Bucket::default();
        assert!(b.is_empty());
        b.insert((5, 1, 7));
        assert!(matches!(b, Bucket::One(_)));
        b.insert((5, 1, 7));
        assert!(matches!(b, Bucket::One(_)));
        assert!(b.any_above(4, all) && !b.any_above(5, all));
        assert_eq!(b.below(6, all), vec![7]);
        assert!(b.conflicts(5, 2, all) && !b.conflicts(5, 1, all));
        b.insert((3, 1, 8));
        assert_eq!(
            b.iter().copied().collect::<Vec<_>>(),
            [(3, 1, 8), (5, 1, 7)]
        );
        b.remove(&(5, 1, 7));
        assert!(matches!(b, Bucket::One((3, 1, 8))));
        b.remove(&(3, 1, 8));
        assert!(b.is_empty());
    }
}
