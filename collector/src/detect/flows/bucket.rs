//! Small building blocks of the flow index: a fast non-cryptographic hasher for its internal maps and
//! the bucket type holding the flows that share one projection.

use std::collections::BTreeSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Bound::{Excluded, Included};

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

/// One bucket entry: (priority, actions hash, flow id).
type Entry = (u16, u64, FlowId);

/// Buckets up to this size are sorted vectors (most buckets hold one flow); larger ones are B-trees.
const SMALL: usize = 16;

/// The flows of one shape group that share one projection, ordered by (priority, actions hash, id).
#[derive(Debug)]
pub(crate) enum Bucket {
    /// One flow, inline (most buckets: no allocation).
    One(Entry),
    /// Sorted vector.
    Small(Vec<Entry>),
    /// Ordered set.
    Large(BTreeSet<Entry>),
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket::Small(Vec::new())
    }
}

impl Bucket {
    /// The entries of a vector-like bucket (`One`, `Small`), `None` for `Large`.
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
                    *self = Bucket::Small(v);
                }
            }
            Bucket::Small(v) if v.is_empty() => *self = Bucket::One(e),
            Bucket::Small(v) => {
                if let Err(pos) = v.binary_search(&e) {
                    v.insert(pos, e);
                }
                if v.len() > SMALL {
                    *self = Bucket::Large(v.drain(..).collect());
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
                    *self = Bucket::Small(Vec::new());
                }
            }
            Bucket::Small(v) => {
                if let Ok(pos) = v.binary_search(e) {
                    v.remove(pos);
                }
                if let [one] = v.as_slice() {
                    *self = Bucket::One(*one);
                }
            }
            Bucket::Large(s) => {
                s.remove(e);
                if s.len() <= SMALL / 2 {
                    *self = Bucket::Small(std::mem::take(s).into_iter().collect());
                }
            }
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

    /// Whether some entry has a priority above `prio`.
    pub(crate) fn any_above(&self, prio: u16) -> bool {
        match self {
            Bucket::Large(s) => s.last().is_some_and(|e| e.0 > prio),
            _ => self
                .slice()
                .and_then(<[Entry]>::last)
                .is_some_and(|e| e.0 > prio),
        }
    }

    /// Flows with a priority below `prio`.
    pub(crate) fn below(&self, prio: u16) -> Vec<FlowId> {
        match self {
            Bucket::Large(s) => s.range(..(prio, 0, 0)).map(|e| e.2).collect(),
            _ => self
                .slice()
                .unwrap_or_default()
                .iter()
                .take_while(|e| e.0 < prio)
                .map(|e| e.2)
                .collect(),
        }
    }

    /// Flows with priority `prio` and an actions hash other than `ah`.
    pub(crate) fn same_prio_other_actions(&self, prio: u16, ah: u64) -> Vec<FlowId> {
        match self {
            Bucket::Large(s) => s
                .range((Included((prio, 0, 0)), Excluded((prio, ah, 0))))
                .chain(s.range((
                    Excluded((prio, ah, FlowId::MAX)),
                    Included((prio, u64::MAX, FlowId::MAX)),
                )))
                .map(|e| e.2)
                .collect(),
            _ => self
                .slice()
                .unwrap_or_default()
                .iter()
                .filter(|e| e.0 == prio && e.1 != ah)
                .map(|e| e.2)
                .collect(),
        }
    }

    /// Whether some flow has priority `prio` and an actions hash other than `ah`.
    pub(crate) fn conflicts(&self, prio: u16, ah: u64) -> bool {
        match self {
            Bucket::Large(s) => {
                s.range((Included((prio, 0, 0)), Excluded((prio, ah, 0))))
                    .next()
                    .is_some()
                    || s.range((
                        Excluded((prio, ah, FlowId::MAX)),
                        Included((prio, u64::MAX, FlowId::MAX)),
                    ))
                    .next()
                    .is_some()
            }
            _ => self
                .slice()
                .unwrap_or_default()
                .iter()
                .any(|e| e.0 == prio && e.1 != ah),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

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
        let mut large = Bucket::Large(BTreeSet::new());
        for i in 0..40u32 {
            let e = ((i % 5) as u16 * 10, u64::from(i % 3), i);
            small.insert(e);
            large.insert(e);
        }
        assert!(matches!(small, Bucket::Large(_)));
        for b in [&small, &large] {
            assert!(b.any_above(30) && !b.any_above(40));
            assert_eq!(b.below(10).len(), 8);
            assert_eq!(b.same_prio_other_actions(20, 1).len(), 5);
            assert!(b.conflicts(20, 1));
        }
        for i in 0..36u32 {
            let e = ((i % 5) as u16 * 10, u64::from(i % 3), i);
            small.remove(&e);
        }
        assert!(matches!(small, Bucket::Small(_)));
        assert_eq!(small.iter().count(), 4);
        assert!(!small.is_empty());
    }

    #[test]
    fn single_entry_buckets_stay_inline() {
        let mut b = Bucket::default();
        assert!(b.is_empty());
        b.insert((5, 1, 7));
        assert!(matches!(b, Bucket::One(_)));
        b.insert((5, 1, 7));
        assert!(matches!(b, Bucket::One(_)));
        assert!(b.any_above(4) && !b.any_above(5));
        assert_eq!(b.below(6), vec![7]);
        assert!(b.conflicts(5, 2) && !b.conflicts(5, 1));
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
