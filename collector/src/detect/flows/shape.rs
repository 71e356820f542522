//! Match algebra for the flow index: match *shapes* (which fields, under which masks) and projections
//! of a flow's match onto a shape.
//!
//! Two flows relate (one covers the other, or both can match one packet) only through the fields they
//! share. Grouping flows by shape and hashing their projection onto a shared shape turns
//! "which flows cover / overlap this one" into a few hash look-ups instead of a scan of the table.

use crate::model::flows::FieldMatch;

/// The fields of a match with their effective masks (all-ones for exact matches), sorted by field name.
///
/// Fields whose mask is all zeros are left out: they constrain nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub(crate) struct Shape(pub(crate) Vec<(String, Vec<u8>)>);

/// The effective mask of a match field, or `None` if value and mask lengths disagree (malformed input).
fn effective_mask(m: &FieldMatch) -> Option<Vec<u8>> {
    match &m.mask {
        None => Some(vec![0xff; m.value.len()]),
        Some(mask) if mask.len() == m.value.len() => Some(mask.clone()),
        Some(_) => None,
    }
}

impl Shape {
    /// The shape of a (sorted) match. Malformed fields (value/mask length mismatch) are left out, which
    /// only makes the flow look more general; detectors stay panic-free.
    pub(crate) fn of(matches: &[FieldMatch]) -> Shape {
        let mut fields: Vec<(String, Vec<u8>)> = matches
            .iter()
            .filter_map(|m| {
                let mask = effective_mask(m)?;
                mask.iter()
                    .any(|b| *b != 0)
                    .then(|| (m.field.clone(), mask))
            })
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
            match a.0.cmp(&b.0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    if a.1.len() == b.1.len() {
                        let mask: Vec<u8> = a.1.iter().zip(&b.1).map(|(x, y)| x & y).collect();
                        if mask.iter().any(|b| *b != 0) {
                            out.push((a.0.clone(), mask));
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

/// Projects a match onto `shape`: the concatenated masked values of the shape's fields.
///
/// `None` when the match lacks one of the fields or does not constrain all of its masked bits
/// (then no flow of that shape relates to it through this projection).
pub(crate) fn project(matches: &[FieldMatch], shape: &Shape) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    for (field, cmask) in &shape.0 {
        let m = matches.iter().find(|m| &m.field == field)?;
        if m.value.len() != cmask.len() {
            return None;
        }
        if let Some(fmask) = &m.mask
            && (fmask.len() != cmask.len() || cmask.iter().zip(fmask).any(|(c, f)| c & !f != 0))
        {
            return None;
        }
        key.extend(m.value.iter().zip(cmask).map(|(v, c)| v & c));
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fm(field: &str, value: &[u8], mask: Option<&[u8]>) -> FieldMatch {
        FieldMatch {
            field: field.into(),
            value: value.to_vec(),
            mask: mask.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn shape_covers_and_projects() {
        let wide = vec![fm("nw_dst", &[10, 0, 0, 0], Some(&[255, 0, 0, 0]))];
        let narrow = vec![
            fm("dl_type", &[8, 0], None),
            fm("nw_dst", &[10, 1, 2, 3], None),
        ];
        let (sw, sn) = (Shape::of(&wide), Shape::of(&narrow));
        // A flow of shape sw can cover one of shape sn (their intersection is all of sw), not back.
        assert_eq!(sw.intersect(&sn), sw);
        assert_ne!(sn.intersect(&sw), sn);
        assert_eq!(project(&narrow, &sw), Some(vec![10, 0, 0, 0]));
        assert_eq!(project(&wide, &sn), None);
        assert_eq!(sw.intersect(&sn), sw);
        assert_eq!(Shape::of(&[]), Shape::default());
    }

    #[test]
    fn malformed_mask_is_ignored() {
        let bad = vec![fm("reg0", &[1, 2], Some(&[1]))];
        assert_eq!(Shape::of(&bad), Shape::default());
        assert_eq!(
            project(&bad, &Shape(vec![("reg0".into(), vec![1, 1])])),
            None
        );
    }
}
