//! `CpuSet`: a set of host CPU numbers, parsed from and rendered as Linux's list format (`0-3,8,10-11`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Highest CPU number pinflow accepts in a list (guards against absurd ranges in bad input).
pub const MAX_CPU: u32 = 8191;

/// Bits per bitmap word.
const WORD_BITS: u32 = u64::BITS;

/// A set of host CPUs, ordered. Renders in the kernel's list format.
///
/// A bitmap of 64-bit words up to the highest CPU in the set (no trailing zero words, so equal
/// sets are equal bit for bit): `0-8191` takes 1 KiB, a typical pin set 8 bytes. It is cloned
/// per vCPU and per thread; the `BTreeSet<u32>` it replaces took tens of KiB for `0-8191`.
#[derive(Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(into = "String")]
pub struct CpuSet {
    words: Box<[u64]>,
}

/// Error for a malformed CPU list.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid CPU list {input:?}: {reason}")]
pub struct CpuSetError {
    /// The text that failed to parse.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Word `w` at index `i` of a bitmap without the bits above [`MAX_CPU`] (which
/// [`CpuSet::insert`] refuses).
fn below_max(i: usize, w: u64) -> u64 {
    let (top, keep) = ((MAX_CPU / WORD_BITS) as usize, MAX_CPU % WORD_BITS);
    match i.cmp(&top) {
        std::cmp::Ordering::Less => w,
        std::cmp::Ordering::Equal if keep < WORD_BITS - 1 => w & ((1u64 << (keep + 1)) - 1),
        std::cmp::Ordering::Equal => w,
        std::cmp::Ordering::Greater => 0,
    }
}

/// How many words of the bitmap `words` a [`CpuSet`] keeps: those up to its last word with a
/// CPU at or below [`MAX_CPU`] (trailing zero words trimmed).
fn canonical_len(words: &[u64]) -> usize {
    let mut len = words.len().min((MAX_CPU / WORD_BITS + 1) as usize);
    while len > 0
        && words
            .get(len - 1)
            .is_some_and(|w| below_max(len - 1, *w) == 0)
    {
        len -= 1;
    }
    len
}

/// Word index and bit mask of `cpu`.
fn slot(cpu: u32) -> (usize, u64) {
    ((cpu / WORD_BITS) as usize, 1u64 << (cpu % WORD_BITS))
}

impl CpuSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set of one CPU (empty when `cpu` is above [`MAX_CPU`], see [`CpuSet::insert`]).
    pub fn single(cpu: u32) -> Self {
        let mut s = Self::new();
        s.insert(cpu);
        s
    }

    /// A set from a bitmap (CPU `64 * i + b` is bit `b` of word `i`), trimmed of trailing zero
    /// words. Bits above [`MAX_CPU`] are dropped, as [`CpuSet::insert`] refuses them.
    pub(crate) fn from_words(mut words: Vec<u64>) -> Self {
        words.truncate(canonical_len(&words));
        for (i, w) in words.iter_mut().enumerate() {
            *w = below_max(i, *w);
        }
        Self {
            words: words.into_boxed_slice(),
        }
    }

    /// Whether the bitmap `words` is this set (as [`CpuSet::from_words`] would make it), without
    /// allocating: for a caller comparing a kernel mask with the last one it kept.
    pub(crate) fn is_words(&self, words: &[u64]) -> bool {
        self.words.len() == canonical_len(words)
            && self
                .words
                .iter()
                .zip(words)
                .enumerate()
                .all(|(i, (a, b))| *a == below_max(i, *b))
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        let (w, bit) = slot(cpu);
        self.words.get(w).is_some_and(|x| x & bit != 0)
    }

    /// Adds a CPU. CPUs above [`MAX_CPU`] are not representable (every parser refuses them):
    /// returns false and leaves the set as it was.
    pub fn insert(&mut self, cpu: u32) -> bool {
        if cpu > MAX_CPU {
            return false;
        }
        let (w, bit) = slot(cpu);
        if w >= self.words.len() {
            let mut v = std::mem::take(&mut self.words).into_vec();
            v.resize(w + 1, 0);
            self.words = v.into_boxed_slice();
        }
        if let Some(x) = self.words.get_mut(w) {
            *x |= bit;
        }
        true
    }

    /// Number of CPUs in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set holds exactly one CPU (cheaper than `len() == 1`: no bit count).
    pub fn is_single(&self) -> bool {
        let mut set = self.words.iter().filter(|w| **w != 0);
        matches!((set.next(), set.next()), (Some(w), None) if w & (w - 1) == 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// CPUs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let base = i as u32 * WORD_BITS;
            let mut rest = w;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let b = rest.trailing_zeros();
                rest &= rest - 1;
                Some(base + b)
            })
        })
    }

    /// Whether the two sets share a CPU.
    pub fn intersects(&self, other: &CpuSet) -> bool {
        self.words
            .iter()
            .zip(other.words.iter())
            .any(|(a, b)| a & b != 0)
    }

    /// Whether every CPU of the set is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.words
            .iter()
            .enumerate()
            .all(|(i, w)| w & !other.words.get(i).copied().unwrap_or(0) == 0)
    }

    /// CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet::from_words(
            self.words
                .iter()
                .zip(other.words.iter())
                .map(|(a, b)| a & b)
                .collect(),
        )
    }

    /// CPUs in either set.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        let (long, short) = if self.words.len() >= other.words.len() {
            (self, other)
        } else {
            (other, self)
        };
        let mut words = long.words.to_vec();
        for (w, o) in words.iter_mut().zip(short.words.iter()) {
            *w |= o;
        }
        CpuSet::from_words(words)
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
                    let cpu = u32::try_from(i * 4 + bit).unwrap_or(u32::MAX);
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

impl Ord for CpuSet {
    /// Lexicographic over the ascending CPU lists (the order of the `BTreeSet` it replaced).
    fn cmp(&self, other: &Self) -> Ordering {
        self.iter().cmp(other.iter())
    }
}

impl PartialOrd for CpuSet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
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
        let mut words: Vec<u64> = Vec::new();
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
            let (last, _) = slot(hi);
            if words.len() <= last {
                words.resize(last + 1, 0);
            }
            for cpu in lo..=hi {
                let (w, bit) = slot(cpu);
                if let Some(x) = words.get_mut(w) {
                    *x |= bit;
                }
            }
        }
        for e in excluded {
            let (w, bit) = slot(e);
            if let Some(x) = words.get_mut(w) {
                *x &= !bit;
            }
        }
        Ok(CpuSet::from_words(words))
    }
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<T: IntoIterator<Item = u32>>(iter: T) -> Self {
        let mut s = CpuSet::new();
        for cpu in iter {
            s.insert(cpu);
        }
        s
    }
}

impl fmt::Display for CpuSet {
    /// Renders ranges compactly: `0-3,8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut it = self.iter().peekable();
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
    #[test]
    fn is_words_agrees_with_from_words() {
        let max_words = (super::MAX_CPU / super::WORD_BITS + 1) as usize;
        let cases: Vec<Vec<u64>> = vec![
            vec![],
            vec![0],
            vec![0b11],
            vec![0b11, 0, 0],
            vec![0, 1 << 63],
            vec![u64::MAX; max_words],
            vec![u64::MAX; max_words + 2],
            [vec![0; max_words - 1], vec![1]].concat(),
            [vec![0; max_words], vec![7]].concat(),
        ];
        for a in &cases {
            let set = super::CpuSet::from_words(a.clone());
            for b in &cases {
                assert_eq!(
                    set.is_words(b),
                    set == super::CpuSet::from_words(b.clone()),
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

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
    fn subsets_across_words() {
        for (a, b, sub) in [
            ("", "", true),
            ("", "3", true),
            ("3", "", false),
            ("1-2", "0-3", true),
            ("1-4", "0-3", false),
            ("70", "0-63", false),
            ("5,70", "0-127", true),
            ("0-63", "0-127", true),
            ("0-127", "0-63", false),
        ] {
            let (a, b): (CpuSet, CpuSet) = (a.parse().unwrap(), b.parse().unwrap());
            assert_eq!(a.is_subset(&b), sub, "{a} ⊆ {b}");
            assert_eq!(a.is_subset(&b), a.intersection(&b) == a, "{a} ⊆ {b}");
        }
    }

    #[test]
    fn one_cpu_sets_are_single() {
        for (list, single) in [
            ("5", true),
            ("64", true),
            ("200", true),
            ("", false),
            ("0-1", false),
            ("3,64", false),
            ("63-64", false),
        ] {
            let s: CpuSet = list.parse().unwrap();
            assert_eq!(s.is_single(), single, "{list:?}");
            assert_eq!(s.is_single(), s.len() == 1, "{list:?}");
        }
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
    fn bitmap_is_compact_and_canonical() {
        let all: CpuSet = "0-8191".parse().unwrap();
        assert_eq!(all.len(), 8192);
        assert_eq!(all.words.len(), 128, "1 KiB for 0-8191");
        assert_eq!(all.to_string(), "0-8191");
        let small: CpuSet = "3,5".parse().unwrap();
        assert_eq!(small.words.len(), 1);
        // Excluding the top CPUs trims the bitmap: equal sets are equal bit for bit.
        let trimmed: CpuSet = "3,5,200-300,^200-300".parse().unwrap_or_default();
        let _ = trimmed; // `^a-b` is not libvirt syntax: refused
        assert!("3,5,200-300,^200-300".parse::<CpuSet>().is_err());
        let mut t: CpuSet = "3,5,200".parse().unwrap();
        t = t.intersection(&"0-63".parse().unwrap());
        assert_eq!(t, small);
        assert_eq!(t.words.len(), 1);
        assert_eq!("3,5,200,^200".parse::<CpuSet>().unwrap(), small);
        // Not representable: refused by `insert`, never a huge allocation.
        let mut s = CpuSet::new();
        assert!(!s.insert(u32::MAX));
        assert!(!s.insert(MAX_CPU + 1));
        assert!(s.insert(MAX_CPU));
        assert_eq!(s, CpuSet::single(MAX_CPU));
        assert!(CpuSet::single(MAX_CPU + 1).is_empty());
        assert!(!s.contains(u32::MAX));
        // Order: as the ascending CPU lists compare.
        let mut v: Vec<CpuSet> = ["64", "0-1", "1", "0", "0,64", ""]
            .iter()
            .map(|x| x.parse().unwrap())
            .collect();
        v.sort();
        let texts: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["", "0", "0-1", "0,64", "1", "64"]);
    }

    #[test]
    fn set_operations() {
        let a: CpuSet = "0-3".parse().unwrap();
        let b: CpuSet = "3-5".parse().unwrap();
        assert!(a.intersects(&b));
        assert_eq!(a.intersection(&b), CpuSet::single(3));
        assert!(!a.intersects(&"4".parse().unwrap()));
    }

    #[test]
    fn union_holds_the_cpus_of_both() {
        let a: CpuSet = "0-2,130".parse().expect("a");
        let b: CpuSet = "2-4".parse().expect("b");
        assert_eq!(a.union(&b).to_string(), "0-4,130");
        assert_eq!(b.union(&a), a.union(&b));
        assert_eq!(a.union(&CpuSet::new()), a);
    }

    #[test]
    fn from_words_equals_the_same_cpus_inserted() {
        let words = vec![0b1011, 0, 1 << 63, 0, 0];
        let set = CpuSet::from_words(words);
        let inserted: CpuSet = [0, 1, 3, 191].into_iter().collect();
        assert_eq!(set, inserted);
        assert_eq!(set.to_string(), "0-1,3,191");
        assert_eq!(CpuSet::from_words(vec![0, 0]), CpuSet::new());
        let mut huge = vec![0u64; 200];
        huge[127] = u64::MAX;
        huge[199] = 1;
        let capped = CpuSet::from_words(huge);
        assert_eq!(capped.iter().last(), Some(MAX_CPU));
        assert_eq!(capped.len(), 64);
    }
}
