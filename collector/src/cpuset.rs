//! `CpuSet`: a set of host CPU numbers, parsed from and rendered as Linux's list format (`0-3,8,10-11`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// Highest CPU number pinflow accepts in a list (guards against absurd ranges in bad input).
pub const MAX_CPU: u32 = 8191;

/// A set of host CPUs, ordered. Renders in the kernel's list format.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct CpuSet(BTreeSet<u32>);

/// Error for a malformed CPU list.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CPU list {input:?}: {reason}")]
pub struct CpuSetError {
    /// The text that failed to parse.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set of one CPU.
    pub fn single(cpu: u32) -> Self {
        Self(BTreeSet::from([cpu]))
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// Adds a CPU.
    pub fn insert(&mut self, cpu: u32) {
        self.0.insert(cpu);
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Whether the two sets share a CPU.
    pub fn intersects(&self, other: &CpuSet) -> bool {
        let (small, big) = if self.len() <= other.len() {
            (self, other)
        } else {
            (other, self)
        };
        small.iter().any(|c| big.contains(c))
    }

    /// CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }

    /// Parses a kernel-style hexadecimal mask (`Cpus_allowed: ff,ffffffff`), as a fallback format.
    pub fn from_hex_mask(mask: &str) -> Result<Self, CpuSetError> {
        let err = |reason| CpuSetError {
            input: mask.to_string(),
            reason,
        };
        let mut set = CpuSet::new();
        let digits: Vec<char> = mask.trim().chars().filter(|c| *c != ',').collect();
        for (i, c) in digits.iter().rev().enumerate() {
            let v = c.to_digit(16).ok_or_else(|| err("not a hex digit"))?;
            for bit in 0..4 {
                if v & (1 << bit) != 0 {
                    let cpu = (i * 4 + bit) as u32;
                    if cpu > MAX_CPU {
                        return Err(err("CPU number too large"));
                    }
                    set.insert(cpu);
                }
            }
        }
        Ok(set)
    }
}

impl FromStr for CpuSet {
    type Err = CpuSetError;

    /// Parses `0-3,8,^2` style lists (libvirt also allows `^N` exclusions). Empty text is the empty set.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CpuSetError {
            input: s.to_string(),
            reason,
        };
        let mut set = BTreeSet::new();
        let mut excluded = Vec::new();
        for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(ex) = part.strip_prefix('^') {
                excluded.push(ex.parse::<u32>().map_err(|_| err("bad exclusion"))?);
                continue;
            }
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (
                    a.trim()
                        .parse::<u32>()
                        .map_err(|_| err("bad range start"))?,
                    b.trim().parse::<u32>().map_err(|_| err("bad range end"))?,
                ),
                None => {
                    let v = part.parse::<u32>().map_err(|_| err("not a CPU number"))?;
                    (v, v)
                }
            };
            if lo > hi {
                return Err(err("range start above its end"));
            }
            if hi > MAX_CPU {
                return Err(err("CPU number too large"));
            }
            set.extend(lo..=hi);
        }
        for e in excluded {
            set.remove(&e);
        }
        Ok(CpuSet(set))
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<T: IntoIterator<Item = u32>>(iter: T) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl fmt::Display for CpuSet {
    /// Renders ranges compactly: `0-3,8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.0.iter().copied().peekable();
        while let Some(start) = it.next() {
            let mut end = start;
            while it.peek() == Some(&(end + 1)) {
                end = it.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl From<CpuSet> for String {
    fn from(c: CpuSet) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_lists() {
        let s: CpuSet = "0-3,8,10-11".parse().unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(s.to_string(), "0-3,8,10-11");
        assert_eq!("".parse::<CpuSet>().unwrap(), CpuSet::new());
        assert_eq!("0-4,^2".parse::<CpuSet>().unwrap().to_string(), "0-1,3-4");
        assert_eq!(" 5\n".parse::<CpuSet>().unwrap(), CpuSet::single(5));
    }

    #[test]
    fn rejects_garbage() {
        assert!("a-b".parse::<CpuSet>().is_err());
        assert!("3-1".parse::<CpuSet>().is_err());
        assert!("0-99999999".parse::<CpuSet>().is_err());
    }

    #[test]
    fn hex_masks() {
        assert_eq!(CpuSet::from_hex_mask("3").unwrap().to_string(), "0-1");
        assert_eq!(
            CpuSet::from_hex_mask("1,00000000").unwrap().to_string(),
            "32"
        );
    }

    #[test]
    fn set_operations() {
        let a: CpuSet = "0-3".parse().unwrap();
        let b: CpuSet = "3-5".parse().unwrap();
        assert!(a.intersects(&b));
        assert_eq!(a.intersection(&b), CpuSet::single(3));
        assert!(!a.intersects(&"4".parse().unwrap()));
    }
}
