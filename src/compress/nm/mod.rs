//! N:M semi-structured sparsity (docs/design.md, "N:M sparsity"): in every group of M
//! consecutive weights of a weight row, the N of largest magnitude are kept and the others
//! zeroed — the pattern sparse tensor cores run (2:4 on NVIDIA's).
//!
//! - **Rows and groups.** A row is one output unit's incoming weights: a linear weight's row of
//!   `in` values, a convolution's `C·KH·KW` values flattened in memory order. Groups are M
//!   consecutive values of a row, from its start; rows never share a group.
//! - **Tail group.** When M does not divide the row length, the last group is shorter (`len <
//!   M`) and keeps `min(N, len)` values: exactly the pattern of the row zero-padded to a multiple
//!   of M (the padding counts as pruned), which is how sparse kernels pad the inner dimension, and
//!   the densest one that is still N:M. So a row keeps `N·⌊len/M⌋ + min(N, len mod M)` weights
//!   and the sparsity is at most `1 − N/M`, equal when M divides every row.
//! - **Order and ties.** Within a group, weights rank by `|w|` and, among equal magnitudes, by
//!   position: the lower index is pruned first, as the magnitude pruner prunes the earlier entry
//!   first. NaN ranks above every number (kept first), `−0.0` and `0.0` are equal — the
//!   magnitude pruner's order, on the bits of `|w|`.
//! - **Layers.** Every conv and linear weight, the first layer and the classifier included
//!   (unstructured magnitude pruning prunes them too, and N:M is a property of each GEMM, as
//!   NVIDIA's 2:4 applies to every one). Biases and batch norm are never pruned.
//! - **Ratio.** N:M prunes the fixed ratio `1 − N/M` (the rule's implied ratio): the evaluation
//!   grid evaluates it once, at that ratio, `cactus compress` takes it without `--ratio` (a
//!   different one is an error), and a CACTUS set holds the network and its one N:M copy.
//! - **Names.** `N:M` with `1 ≤ N < M ≤ 64`; `2:4` is the canonical example.
//!
//! The GPU computes the same masks (`nm.cu`, one thread per group, the same comparisons), so
//! they are bit-identical to the CPU's.

pub mod launch;

use crate::compress::{Masks, PruneMethod, PruneRule, RuleParams};
use crate::nn::Model;
use crate::tensor::Tensor;
use crate::{Error, Result};
use rayon::prelude::*;

/// The largest group size M.
pub const MAX_M: usize = 64;

/// Below this many weights a tensor's rows stay on one thread.
const PARALLEL_MIN: usize = 1 << 15;

/// The registry's entry for N:M sparsity.
pub struct NmRule;

impl NmRule {
    /// The method `n:m` (1 ≤ n < m ≤ 64).
    pub fn method(n: usize, m: usize) -> Result<PruneMethod> {
        check_nm(n, m)?;
        Ok(PruneMethod::new(
            &NmRule,
            RuleParams([n as u8, m as u8, 0, 0]),
        ))
    }

    /// (N, M) of an N:M method, if `method` is one.
    pub fn of(method: PruneMethod) -> Option<(usize, usize)> {
        (method.rule().key() == NmRule.key()).then(|| nm(method.params()))
    }
}

fn nm(params: RuleParams) -> (usize, usize) {
    (usize::from(params.0[0]), usize::from(params.0[1]))
}

fn check_nm(n: usize, m: usize) -> Result<()> {
    if (1..m).contains(&n) && m <= MAX_M {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "N:M sparsity needs 1 ≤ N < M ≤ {MAX_M}, got {n}:{m}"
        )))
    }
}

impl PruneRule for NmRule {
    fn key(&self) -> &'static str {
        "n:m"
    }

    fn names(&self) -> &'static [&'static str] {
        &["2:4"]
    }

    fn syntax(&self) -> Option<&'static str> {
        Some("N:M with 1 ≤ N < M ≤ 64")
    }

    fn help(&self) -> &'static str {
        "semi-structured sparsity: in every M consecutive weights of a row, the N largest |w| \
         kept, in every conv and linear layer; prunes the fixed ratio 1 − N/M"
    }

    fn parse(&self, name: &str) -> Result<Option<RuleParams>> {
        let Some((n, m)) = name.split_once(':') else {
            return Ok(None);
        };
        let number = |s: &str| -> Option<usize> {
            let digits = !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
            digits.then(|| s.parse().ok()).flatten()
        };
        match (number(n), number(m)) {
            (Some(n), Some(m)) if check_nm(n, m).is_ok() => {
                Ok(Some(RuleParams([n as u8, m as u8, 0, 0])))
            }
            _ => Err(Error::Invalid(format!(
                "pruning method {name:?}: N:M sparsity needs whole numbers 1 ≤ N < M ≤ {MAX_M}, \
                 such as 2:4"
            ))),
        }
    }

    fn name(&self, params: RuleParams) -> String {
        let (n, m) = nm(params);
        format!("{n}:{m}")
    }

    fn implied_ratio(&self, params: RuleParams) -> Option<f64> {
        let (n, m) = nm(params);
        Some(1.0 - n as f64 / m as f64)
    }

    fn masks(&self, model: &Model, method: PruneMethod, ratio: f64) -> Result<Masks> {
        let (n, m) = nm(method.params());
        check_nm(n, m)?;
        let layers = &model.net.layers;
        let mut out: Vec<Option<Tensor>> = vec![None; layers.len()];
        let (mut total_weights, mut pruned_weights) = (0, 0);
        for (i, w) in layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.weight().map(|w| (i, w)))
        {
            let rows = w.dim(0);
            let row_len = w.numel() / rows.max(1);
            total_weights += w.numel();
            pruned_weights += rows * pruned_per_row(row_len, n, m);
            // Each mask is made where its weight lives, so that `w·mask` stays there.
            out[i] = Some(if w.is_cuda() {
                let values = w.cuda_buffer().expect("a GPU tensor has a device buffer");
                Tensor::from_device(launch::nm_mask(values, rows, row_len, n, m)?, w.shape())
            } else {
                Tensor::from_vec(nm_mask(w.data(), row_len, n, m), w.shape())
            });
        }
        Ok(Masks {
            method,
            ratio,
            layers: out,
            total_weights,
            pruned_weights,
            units: None,
        })
    }
}

/// Weights an N:M mask zeroes in a row of `row_len`: `M − N` per full group, and the tail
/// group's `len − min(N, len)`.
pub fn pruned_per_row(row_len: usize, n: usize, m: usize) -> usize {
    let tail = row_len % m;
    (row_len / m) * (m - n) + tail - n.min(tail)
}

/// The 0/1 N:M mask of `values`, rows of `row_len` (the module's rules).
pub fn nm_mask(values: &[f32], row_len: usize, n: usize, m: usize) -> Vec<f32> {
    let mut mask = vec![1.0f32; values.len()];
    if row_len == 0 {
        return mask;
    }
    let row = |(w, out): (&[f32], &mut [f32])| {
        for (g, o) in w.chunks(m).zip(out.chunks_mut(m)) {
            group_mask(g, n, o);
        }
    };
    if values.len() >= PARALLEL_MIN {
        values
            .par_chunks(row_len)
            .zip(mask.par_chunks_mut(row_len))
            .for_each(row);
    } else {
        values
            .chunks(row_len)
            .zip(mask.chunks_mut(row_len))
            .for_each(row);
    }
    mask
}

/// One group's mask: a value is pruned when fewer than `len − min(n, len)` values of the group
/// rank below it by (bits of `|w|`, position). The bits of `|w|` order like the magnitudes,
/// with NaN above +∞ and −0.0 equal to 0.0; positions make the keys distinct. M ≤ 64, so the
/// quadratic count is cheap, and `nm.cu` makes the same comparisons.
fn group_mask(group: &[f32], n: usize, out: &mut [f32]) {
    let prune = group.len() - n.min(group.len());
    if prune == 0 {
        return;
    }
    let key = |j: usize| (group[j].to_bits() & 0x7fff_ffff, j);
    for (i, o) in out.iter_mut().enumerate() {
        let below = (0..group.len()).filter(|&j| key(j) < key(i)).count();
        *o = if below < prune { 0.0 } else { 1.0 };
    }
}
