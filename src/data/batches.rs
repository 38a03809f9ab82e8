//! Seeded epoch orders and index batches.
//!
//! An epoch's order is a pure function of the RNG state it starts from, so a resumed run
//! rebuilds it exactly: save `rng.state()` before calling [`epoch_order`], and on resume call it
//! again with `Rng::from_state(saved)`, then skip the batches already done.

use crate::rng::Rng;

/// A seeded permutation of `0..n` (Fisher–Yates through [`Rng::shuffle`]).
pub fn epoch_order(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    order
}

/// Consecutive batches of `size` indices from `order`; the last one is smaller unless
/// `drop_last` drops it (useful with batch norm, where a tiny last batch has noisy statistics).
///
/// Panics if `size` is 0 (callers validate user options first).
pub fn batches(order: &[usize], size: usize, drop_last: bool) -> impl Iterator<Item = &[usize]> {
    assert!(size > 0, "batch size must be positive");
    order
        .chunks(size)
        .filter(move |b| !drop_last || b.len() == size)
}

/// How many batches [`batches`] yields for `n` indices (for schedules and progress bars).
pub fn num_batches(n: usize, size: usize, drop_last: bool) -> usize {
    assert!(size > 0, "batch size must be positive");
    if drop_last {
        n / size
    } else {
        n.div_ceil(size)
    }
}
