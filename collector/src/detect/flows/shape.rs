//! Match algebra for the flow index: match *shapes* (which fields, under which masks) and projections
//! of a flow's match onto a shape.
//!
//! Two flows relate (one covers the other, or both can match one packet) only through the fields they
//! share. Grouping flows by shape and hashing their projection onto a shared shape turns
//! "which flows cover / overlap this one" into a few hash look-ups instead of a scan of the table.

use super::bucket::FastHasher;
use super::semantics::semantic;
use crate::model::openflow::Matches;
use std::hash::Hasher;

/// The fields of a match with their effective masks (all ones of the field's width for exact
/// matches) and widths in bytes, sorted by field name.
///
/// Fields whose mask is all zeros are left out: they constrain nothing. Fields are taken as the index
/// compares them ([`semantic`]: a `ct_state` match with every flag it implies).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub(crate) struct Shape(pub(crate) Vec<(&'static str, u8, u128)>);

impl Shape {
    /// The shape of a match.
    pub(crate) fn of(matches: &Matches) -> Shape {
        let mut fields: Vec<(&'static str, u8, u128)> = matches
            .iter()
            .map(semantic)
            .filter(|m| m.mask != 0)
            .map(|m| (m.field, m.len, m.mask))
            .collect();
        fields.sort();
        fields.dedup_by(|a, b| a.0 == b.0);
        Shape(fields)
    }

    /// The fields both shapes constrain, each under the bits both masks constrain.
    pub(crate) fn intersect(&self, other: &Shape) -> Shape {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while let (Some(a), Some(b)) = (self.0.get(i), other.0.get(j)) {
            match a.0.cmp(b.0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if a.1 == b.1 {
                        let mask = a.2 & b.2;
                        if mask != 0 {
                            out.push((a.0, a.1, mask));
                        }
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Shape(out)
    }
}

/// Calls `f` with the masked value of each of the shape's fields in `matches`, in shape order.
///
/// Returns `false` (having called `f` for a prefix only) when the match lacks one of the fields or
/// does not constrain all of its masked bits (then no flow of that shape relates to it through this
/// projection).
fn for_each_projected(matches: &Matches, shape: &Shape, mut f: impl FnMut(u128)) -> bool {
    let mut it = matches.iter().map(semantic).peekable();
    for (field, len, cmask) in &shape.0 {
        // Both lists are sorted by field name: merge instead of searching.
        let m = loop {
            let Some(m) = it.peek() else {
                return false;
            };
            match m.field.cmp(field) {
                std::cmp::Ordering::Less => {
                    it.next();
                }
                std::cmp::Ordering::Equal => break *m,
                std::cmp::Ordering::Greater => return false,
            }
        };
        if m.len != *len || cmask & !m.mask != 0 {
            return false;
        }
        f(m.value & cmask);
    }
    true
}

fn hash_value(h: &mut FastHasher, v: u128) {
    h.write_u64(v as u64);
    h.write_u64((v >> 64) as u64);
}

/// Hash of the projection of a match onto `shape` (what the index keys projection maps by: equal
/// projections have equal hashes; unequal ones are told apart by [`Projection::same_as`]).
/// `None` when the match does not project (see [`Projection::of`]).
pub(crate) fn project_hash(matches: &Matches, shape: &Shape) -> Option<u64> {
    let mut h = FastHasher::default();
    for_each_projected(matches, shape, |v| hash_value(&mut h, v)).then(|| h.finish())
}

/// The projection of a match onto a shape: the masked values of the shape's fields, with their
/// hash ([`project_hash`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Projection {
    /// [`project_hash`] of the match.
    pub(crate) hash: u64,
    vals: Vec<u128>,
}

impl Projection {
    /// Projects `matches` onto `shape`; `None` when the match lacks one of the shape's fields or
    /// does not constrain all of its masked bits.
    pub(crate) fn of(matches: &Matches, shape: &Shape) -> Option<Projection> {
        let mut vals = Vec::with_capacity(shape.0.len());
        let mut h = FastHasher::default();
        for_each_projected(matches, shape, |v| {
            hash_value(&mut h, v);
            vals.push(v);
        })
        .then(|| Projection {
            hash: h.finish(),
            vals,
        })
    }

    /// The masked values of the shape's fields, in shape order.
    pub(crate) fn values(&self) -> &[u128] {
        &self.vals
    }

    /// Whether `other` projects onto `shape` (the shape this projection was taken on) to the same
    /// values: the check that makes a hash collision harmless.
    pub(crate) fn same_as(&self, other: &Matches, shape: &Shape) -> bool {
        let mut i = 0;
        let mut same = true;
        let projects = for_each_projected(other, shape, |v| {
            same &= self.vals.get(i) == Some(&v);
            i += 1;
        });
        projects && same && i == self.vals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::openflow::FieldMatch;

    #[test]
    fn shape_covers_and_projects() {
        let wide = Matches::new([FieldMatch::masked("nw_dst", 0x0a00_0000, 0xff00_0000, 4)]);
        let narrow = Matches::new([
            FieldMatch::exact("dl_type", 0x0800, 2),
            FieldMatch::exact("nw_dst", 0x0a01_0203, 4),
        ]);
        let other = Matches::new([FieldMatch::exact("nw_dst", 0x0b01_0203, 4)]);
        let (sw, sn) = (Shape::of(&wide), Shape::of(&narrow));
        // A flow of shape sw can cover one of shape sn (their intersection is all of sw), not back.
        assert_eq!(sw.intersect(&sn), sw);
        assert_ne!(sn.intersect(&sw), sn);
        let p = Projection::of(&narrow, &sw).unwrap();
        assert!(p.same_as(&wide, &sw) && p.same_as(&narrow, &sw) && !p.same_as(&other, &sw));
        assert_eq!(project_hash(&wide, &sw), Some(p.hash));
        assert_eq!(Projection::of(&wide, &sn), None);
        assert_eq!(project_hash(&wide, &sn), None);
        assert_eq!(Shape::of(&Matches::default()), Shape::default());
    }

    #[test]
    fn width_mismatch_does_not_project() {
        let m = Matches::new([FieldMatch::exact("reg0", 0x0102, 2)]);
        assert_eq!(
            project_hash(&m, &Shape(vec![("reg0", 4, 0xffff_ffff)])),
            None
        );
        let s2 = Shape(vec![("reg0", 2, 0xffff)]);
        assert!(Projection::of(&m, &s2).unwrap().same_as(&m, &s2));
    }
}
