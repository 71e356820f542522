//! A BPF hash map keyed by thread (or process) id whose key set userspace keeps equal to a
//! wanted set, with a shadow of the keys in userspace: a sync changes only the difference and
//! never reads the map back.

use std::collections::HashSet;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};

/// `BPF_NOEXIST`: insert only a key that is not there (the kernel's value is kept otherwise).
const BPF_NOEXIST: u64 = 1;

/// The map and the keys it holds.
pub(crate) struct ShadowedMap<V: aya::Pod> {
    map: BpfHashMap<MapData, u32, V>,
    keys: HashSet<u32>,
    capacity: usize,
}

impl<V: aya::Pod> ShadowedMap<V> {
    /// Wraps an empty map of `capacity` entries.
    pub(crate) fn new(map: BpfHashMap<MapData, u32, V>, capacity: usize) -> Self {
        Self {
            map,
            keys: HashSet::new(),
            capacity,
        }
    }

    /// Makes the keys exactly `want`: removes the others and inserts the missing ones with
    /// `value(id)`. Keys already there keep their value (the kernel's, if it writes it).
    /// Returns how many updates failed (ids beyond the capacity included).
    pub(crate) fn sync(&mut self, want: &HashSet<u32>, value: impl Fn(u32) -> V) -> u64 {
        let mut failed = 0u64;
        let gone: Vec<u32> = self.keys.difference(want).copied().collect();
        for id in gone {
            match self.map.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    self.keys.remove(&id);
                }
                Err(_) => failed += 1,
            }
        }
        for &id in want {
            if self.keys.contains(&id) {
                continue;
            }
            if self.keys.len() >= self.capacity {
                failed += 1;
                continue;
            }
            match self.map.insert(id, value(id), BPF_NOEXIST) {
                Ok(()) => {
                    self.keys.insert(id);
                }
                Err(_) => failed += 1,
            }
        }
        failed
    }

    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}
