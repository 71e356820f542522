//! Match algebra for the flow index: match *shapes* (which fields, under which masks) and projections
//! of a flow's match onto a shape.
//!
//! Two flows relate (one covers the other, or both can match one packet) only through the fields they
//! share. Grouping flows by shape and hashing their projection onto a shared shape turns
//! "which flows cover / overlap this one" into a few hash look-ups instead of a scan of the table.

use crate::model::flows::Matches;

/// The fields of a match with their effective masks (all ones of the field's width for exact
/// matches) and widths in bytes, sorted by field name.
///
/// Fields whose mask is all zeros are left out: they constrain nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub(crate) struct Shape(pub(crate) Vec<(&'static str, u8, u128)>);

impl Shape {
    /// The shape of a match.
    pub(crate) fn of(matches: &Matches) -> Shape {
        let mut fields: Vec<(&'static str, u8, u128)> = matches
            .iter()
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

/// Projects a match onto `shape`: the concatenated masked values of the shape's fields (each
/// `len` bytes, big-endian).
///
/// `None` when the match lacks one of the fields or does not constrain all of its masked bits
/// (then no flow of that shape relates to it through this projection).
pub(crate) fn project(matches: &Matches, shape: &Shape) -> Option<Box<[u8]>> {
    let size: usize = shape.0.iter().map(|(_, len, _)| usize::from(*len)).sum();
    let mut key = Vec::with_capacity(size);
    let mut it = matches.iter().peekable();
    for (field, len, cmask) in &shape.0 {
        // Both lists are sorted by field name: merge instead of searching.
        let m = loop {
            let m = it.peek()?;
            match m.field.cmp(field) {
                std::cmp::Ordering::Less => {
                    it.next();
                }
                std::cmp::Ordering::Equal => break *m,
                std::cmp::Ordering::Greater => return None,
            }
        };
        if m.len != *len || cmask & !m.mask != 0 {
            return None;
        }
        let l = usize::from(*len).min(16);
        key.extend_from_slice(&(m.value & cmask).to_be_bytes()[16 - l..]);
    }
    Some(key.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::flows::FieldMatch;

    #[test]
    fn shape_covers_and_projects() {
        let wide = Matches::new([FieldMatch::masked("nw_dst", 0x0a00_0000, 0xff00_0000, 4)]);
        let narrow = Matches::new([
            FieldMatch::exact("dl_type", 0x0800, 2),
            FieldMatch::exact("nw_dst", 0x0a01_0203, 4),
        ]);
        let (sw, sn) = (Shape::of(&wide), Shape::of(&narrow));
        // A flow of shape sw can cover one of shape sn (their intersection is all of sw), not back.
        assert_eq!(sw.intersect(&sn), sw);
        assert_ne!(sn.intersect(&sw), sn);
        assert_eq!(project(&narrow, &sw).as_deref(), Some(&[10, 0, 0, 0][..]));
        assert_eq!(project(&wide, &sn), None);
        assert_eq!(sw.intersect(&sn), sw);
        assert_eq!(Shape::of(&Matches::default()), Shape::default());
    }

    #[test]
    fn width_mismatch_does_not_project() {
        let m = Matches::new([FieldMatch::exact("reg0", 0x0102, 2)]);
        assert_eq!(project(&m, &Shape(vec![("reg0", 4, 0xffff_ffff)])), None);
        assert_eq!(
            project(&m, &Shape(vec![("reg0", 2, 0xffff)])).as_deref(),
            Some(&[1, 2][..])
        );
    }
}
