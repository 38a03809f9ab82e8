//! Recognising the local-robustness property: every counterexample conjunction is one
//! `Y_j − Y_label ≥ 0`, so a verifier can bound the margins `Y_label − Y_j` directly.

use super::{Constraint, Property};
use std::collections::BTreeSet;

pub(crate) fn label(p: &Property) -> Option<(usize, Vec<usize>)> {
    let mut found: Option<(usize, Vec<usize>)> = None;
    for case in &p.cases {
        let mut label = None;
        let mut classes = BTreeSet::new();
        for conjunction in &case.unsafe_region {
            let [constraint] = conjunction.as_slice() else {
                return None;
            };
            let (j, y) = at_least(constraint)?;
            if *label.get_or_insert(y) != y {
                return None;
            }
            classes.insert(j);
        }
        let this = (label?, classes.into_iter().collect());
        match &found {
            None => found = Some(this),
            Some(earlier) if *earlier == this => {}
            Some(_) => return None,
        }
    }
    found
}

/// `(j, y)` when `c` is exactly `Y_j − Y_y ≥ 0`.
fn at_least(c: &Constraint) -> Option<(usize, usize)> {
    if c.strict || c.constant != 0.0 {
        return None;
    }
    match *c.terms.as_slice() {
        [(a, ca), (b, cb)] if ca == 1.0 && cb == -1.0 => Some((a, b)),
        [(a, ca), (b, cb)] if ca == -1.0 && cb == 1.0 => Some((b, a)),
        _ => None,
    }
}
