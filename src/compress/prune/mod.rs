//! Magnitude pruning of conv and linear weights (docs/design.md, "Compression" and its pruning decisions).
//!
//! A pruning is a set of 0/1 masks ([`Masks`]), one per conv/linear weight, multiplied into the
//! weights by [`apply_masks`]. Biases and batch norm are never pruned.
//!
//! Methods ([`Magnitude`], the paper's names `gul1 gul2 lul1 lul2 gsl1 gsl2 lsl1 lsl2`; one rule
//! of the registry in `compress`, [`MagnitudeRule`]):
//! - **Unstructured** (`?ul?`): every single weight of every conv and linear layer (first and last
//!   included) is scored by `|w|` (l1 and l2 rank single weights identically, so `gul1 ≡ gul2`
//!   and `lul1 ≡ lul2`). Global: one ranking over all weights, exactly `count(δ, total)` pruned;
//!   local: per tensor, exactly `count(δ, n_t)` pruned in each.
//! - **Structured** (`?sl?`): a unit is an output channel of a conv or an output neuron of a
//!   hidden linear layer (the classifier, i.e. the last linear layer, is never pruned); its score
//!   is the l1 or l2 norm of its weight row (all its incoming weights). Global: each score is
//!   divided by its layer's mean score, then one ranking over all units, `count(δ, units)`
//!   removed; local: `count(δ, u_l)` removed per layer. A removed unit's weight row is zeroed and
//!   its bias kept (equivalent to deleting the unit and folding its constant output into the next
//!   layer).
//!
//! Decisions:
//! - **Counts** are `count(δ, n) = floor(δ·n)`, where a product within a few ulps below an
//!   integer counts as that integer (so `0.7 · 10` gives 7 whatever the binary rounding).
//! - **Ties** are broken by `(score, layer index, flat index)` ascending: the smallest scores are
//!   pruned first and, among equal scores, the earlier layer, then the earlier entry (row for
//!   structured). NaN scores rank above everything (they are kept as long as possible);
//!   `-0.0` and `0.0` are equal.
//! - **One unit per layer**: structured pruning never removes every unit of a layer. Local
//!   pruning never needs the rule (`floor(δ·u) ≤ u − 1` for δ < 1); global pruning skips a unit
//!   whose layer already lost all but one and takes the next unit in the ranking, so the count is
//!   exact unless fewer than `count(δ, units)` units can be removed at all, in which case
//!   [`UnitReport::requested`] is larger than [`UnitReport::pruned`].

pub mod launch;

// The general pruning API, where callers of magnitude pruning have always found it.
pub use crate::compress::{apply_masks, prune, prune_masks, Masks, PruneMethod, UnitReport};

use crate::compress::{PruneRule, RuleParams};
use crate::nn::{Layer, Model};
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Global: one ranking across all layers. Local: each layer (tensor) on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Local,
}

/// Unstructured: single weights. Structured: whole output channels / neurons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Structure {
    Unstructured,
    Structured,
}

/// The norm of a unit's weight row (structured); irrelevant for single weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Norm {
    L1,
    L2,
}

/// One of the paper's eight magnitude pruning methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Magnitude {
    pub scope: Scope,
    pub structure: Structure,
    pub norm: Norm,
}

impl Magnitude {
    /// All eight methods, in the order of their names `gul1 gul2 lul1 lul2 gsl1 gsl2 lsl1 lsl2`.
    pub const ALL: [Magnitude; 8] = {
        use Norm::*;
        use Scope::*;
        use Structure::*;
        const fn m(scope: Scope, structure: Structure, norm: Norm) -> Magnitude {
            Magnitude::new(scope, structure, norm)
        }
        [
            m(Global, Unstructured, L1),
            m(Global, Unstructured, L2),
            m(Local, Unstructured, L1),
            m(Local, Unstructured, L2),
            m(Global, Structured, L1),
            m(Global, Structured, L2),
            m(Local, Structured, L1),
            m(Local, Structured, L2),
        ]
    };

    pub const fn new(scope: Scope, structure: Structure, norm: Norm) -> Magnitude {
        Magnitude {
            scope,
            structure,
            norm,
        }
    }

    /// The paper's name in lower case, e.g. `gul1`.
    pub fn name(self) -> &'static str {
        match (self.scope, self.structure, self.norm) {
            (Scope::Global, Structure::Unstructured, Norm::L1) => "gul1",
            (Scope::Global, Structure::Unstructured, Norm::L2) => "gul2",
            (Scope::Local, Structure::Unstructured, Norm::L1) => "lul1",
            (Scope::Local, Structure::Unstructured, Norm::L2) => "lul2",
            (Scope::Global, Structure::Structured, Norm::L1) => "gsl1",
            (Scope::Global, Structure::Structured, Norm::L2) => "gsl2",
            (Scope::Local, Structure::Structured, Norm::L1) => "lsl1",
            (Scope::Local, Structure::Structured, Norm::L2) => "lsl2",
        }
    }

    /// This method as a registry entry.
    pub fn method(self) -> PruneMethod {
        PruneMethod::new(&MagnitudeRule, self.params())
    }

    /// The magnitude method `method` is, if it is one.
    pub fn of(method: PruneMethod) -> Option<Magnitude> {
        (method.rule().key() == MagnitudeRule.key())
            .then(|| Magnitude::from_params(method.params()))
    }

    fn params(self) -> RuleParams {
        let index = Magnitude::ALL.iter().position(|m| *m == self).unwrap_or(0);
        RuleParams([index as u8, 0, 0, 0])
    }

    fn from_params(params: RuleParams) -> Magnitude {
        Magnitude::ALL[usize::from(params.0[0]) % Magnitude::ALL.len()]
    }
}

impl fmt::Display for Magnitude {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Magnitude {
    type Err = Error;

    /// A magnitude method's name in any case; any other method is an error naming it.
    fn from_str(s: &str) -> Result<Magnitude> {
        let method: PruneMethod = s.parse()?;
        Magnitude::of(method)
            .ok_or_else(|| Error::Invalid(format!("{method} is not a magnitude pruning method")))
    }
}

/// The registry's entry for the eight magnitude methods.
pub struct MagnitudeRule;

impl PruneRule for MagnitudeRule {
    fn key(&self) -> &'static str {
        "magnitude"
    }

    fn names(&self) -> &'static [&'static str] {
        &[
            "gul1", "gul2", "lul1", "lul2", "gsl1", "gsl2", "lsl1", "lsl2",
        ]
    }

    fn help(&self) -> &'static str {
        "magnitude pruning at the ratio asked for; g/l: one ranking over all layers or one per \
         layer, u/s: single weights or whole units, l1/l2: the units' norm; any case"
    }

    fn parse(&self, name: &str) -> Result<Option<RuleParams>> {
        Ok(Magnitude::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .map(Magnitude::params))
    }

    fn name(&self, params: RuleParams) -> String {
        Magnitude::from_params(params).name().to_string()
    }

    fn masks(&self, model: &Model, method: PruneMethod, ratio: f64) -> Result<Masks> {
        magnitude_masks(model, Magnitude::from_params(method.params()), ratio)
    }
}

/// `floor(ratio·n)`, where a product within a few ulps below an integer counts as that integer.
pub(crate) fn count(ratio: f64, n: usize) -> usize {
    let x = ratio * n as f64;
    let k = x.floor();
    let k = if (k + 1.0) - x <= 4.0 * f64::EPSILON * x.max(1.0) {
        k + 1.0
    } else {
        k
    };
    (k as usize).min(n)
}

/// Masks of weights on the GPU, computed there (`compress::prune::launch`: the same selection and
/// the same unit scores, so the same masks); what comes back is one number (the kept count) and,
/// for structured methods, the units' scores.
fn device_masks(
    layers: &[Layer],
    weights: &[(usize, &Tensor)],
    method: Magnitude,
    ratio: f64,
    total_weights: usize,
) -> Result<Masks> {
    use crate::compress::prune::launch::{prune_masks as masks_on_gpu, DeviceWeight};
    let classifier = layers.iter().rposition(|l| matches!(l, Layer::Linear(_)));
    let on_gpu: Vec<DeviceWeight<'_>> = weights
        .iter()
        .map(|(i, w)| DeviceWeight {
            values: w.cuda_buffer().expect("weights on the GPU"),
            shape: w.shape(),
            classifier: Some(*i) == classifier,
        })
        .collect();
    let pruning = masks_on_gpu(&on_gpu, method, ratio)?;
    let masks = pruning.masks;
    let kept = crate::ops::reduce::launch::sum_squares(&masks.iter().collect::<Vec<_>>())?;
    let mut out: Vec<Option<Tensor>> = vec![None; layers.len()];
    for ((i, w), m) in weights.iter().zip(masks) {
        out[*i] = Some(Tensor::from_device(m, w.shape()));
    }
    Ok(Masks {
        method: method.method(),
        ratio,
        layers: out,
        total_weights,
        pruned_weights: total_weights - kept.round() as usize,
        units: pruning.units,
    })
}

/// Magnitude pruning masks for `model` removing the fraction `ratio` (δ ∈ [0, 1)) of weights
/// (unstructured) or units (structured). See the module documentation for the exact rules.
pub fn magnitude_masks(model: &Model, method: Magnitude, ratio: f64) -> Result<Masks> {
    crate::compress::check_ratio(ratio)?;
    let layers = &model.net.layers;
    let weights: Vec<(usize, &Tensor)> = layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.weight().map(|w| (i, w)))
        .collect();
    let total_weights: usize = weights.iter().map(|(_, w)| w.numel()).sum();
    if !weights.is_empty() && weights.iter().all(|(_, w)| w.is_cuda()) {
        return device_masks(layers, &weights, method, ratio, total_weights);
    }
    let (mask_data, units) = match method.structure {
        Structure::Unstructured => (unstructured(&weights, method.scope, ratio)?, None),
        Structure::Structured => {
            let (m, u) = structured(layers, &weights, method, ratio);
            (m, Some(u))
        }
    };
    let mut out: Vec<Option<Tensor>> = vec![None; layers.len()];
    let mut pruned_weights = 0;
    for ((i, w), m) in weights.iter().zip(mask_data) {
        pruned_weights += m.iter().filter(|&&v| v == 0.0).count();
        out[*i] = Some(Tensor::from_vec(m, w.shape()));
    }
    Ok(Masks {
        method: method.method(),
        ratio,
        layers: out,
        total_weights,
        pruned_weights,
        units,
    })
}

/// Sort key of one weight: `|w|`'s bits (monotone for non-negative floats; NaN above +inf) in
/// the high half, the position in the ranking's concatenation (layer order, then flat index) in
/// the low half, so that keys are distinct and order by (score, layer, index).
#[inline]
fn key(w: f32, pos: u64) -> u64 {
    (((w.abs().to_bits()) as u64) << 32) | pos
}

/// Masks (one Vec per weight) pruning exactly `count(δ, ·)` weights of smallest `|w|`.
fn unstructured(weights: &[(usize, &Tensor)], scope: Scope, ratio: f64) -> Result<Vec<Vec<f32>>> {
    // Largest key ≤ which a weight is pruned (None: nothing pruned), per tensor.
    fn threshold(keys: &mut [u64], k: usize) -> Option<u64> {
        if k == 0 {
            return None;
        }
        let (_, kth, _) = keys.select_nth_unstable(k - 1);
        Some(*kth)
    }
    fn mask(w: &Tensor, offset: u64, thr: Option<u64>) -> Vec<f32> {
        match thr {
            None => vec![1.0; w.numel()],
            Some(t) => w
                .data()
                .iter()
                .enumerate()
                .map(|(j, &v)| {
                    if key(v, offset + j as u64) <= t {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect(),
        }
    }
    let total: usize = weights.iter().map(|(_, w)| w.numel()).sum();
    if total as u64 > u32::MAX as u64 {
        return Err(Error::Invalid(format!(
            "pruning supports at most {} weights, the model has {total}",
            u32::MAX
        )));
    }
    Ok(match scope {
        Scope::Global => {
            let k = count(ratio, total);
            let thr = if k == 0 {
                None
            } else {
                let mut keys = Vec::with_capacity(total);
                let mut offset = 0u64;
                for (_, w) in weights {
                    keys.extend(
                        w.data()
                            .iter()
                            .enumerate()
                            .map(|(j, &v)| key(v, offset + j as u64)),
                    );
                    offset += w.numel() as u64;
                }
                threshold(&mut keys, k)
            };
            let mut offset = 0u64;
            weights
                .iter()
                .map(|(_, w)| {
                    let m = mask(w, offset, thr);
                    offset += w.numel() as u64;
                    m
                })
                .collect()
        }
        Scope::Local => weights
            .iter()
            .map(|(_, w)| {
                let k = count(ratio, w.numel());
                let thr = if k == 0 {
                    None
                } else {
                    let mut keys: Vec<u64> = w
                        .data()
                        .iter()
                        .enumerate()
                        .map(|(j, &v)| key(v, j as u64))
                        .collect();
                    threshold(&mut keys, k)
                };
                mask(w, 0, thr)
            })
            .collect(),
    })
}

/// Masks zeroing whole weight rows (output units) of convs and hidden linear layers.
fn structured(
    layers: &[Layer],
    weights: &[(usize, &Tensor)],
    method: Magnitude,
    ratio: f64,
) -> (Vec<Vec<f32>>, UnitReport) {
    let classifier = layers.iter().rposition(|l| matches!(l, Layer::Linear(_)));
    // Per prunable weight (position in `weights`): its unit scores.
    let mut scores: Vec<Option<Vec<f64>>> = Vec::with_capacity(weights.len());
    for (i, w) in weights {
        if Some(*i) == classifier {
            scores.push(None);
            continue;
        }
        let rows = w.dim(0);
        let row_len = w.numel() / rows.max(1);
        let s = w
            .data()
            .chunks(row_len.max(1))
            .take(rows)
            .map(|row| match method.norm {
                Norm::L1 => row.iter().map(|&v| (v as f64).abs()).sum::<f64>(),
                Norm::L2 => row
                    .iter()
                    .map(|&v| (v as f64) * (v as f64))
                    .sum::<f64>()
                    .sqrt(),
            })
            .collect();
        scores.push(Some(s));
    }
    let rows: Vec<usize> = weights.iter().map(|(_, w)| w.dim(0)).collect();
    let (pruned_rows, report) = select_units(&scores, &rows, method.scope, ratio);
    let masks = weights
        .iter()
        .zip(&pruned_rows)
        .map(|((_, w), rows)| {
            let row_len = w.numel() / rows.len().max(1);
            let mut m = Vec::with_capacity(w.numel());
            for &p in rows {
                m.extend(std::iter::repeat_n(if p { 0.0 } else { 1.0 }, row_len));
            }
            m
        })
        .collect();
    (masks, report)
}

/// Which units (weight rows) structured pruning removes, from each prunable weight's unit scores
/// (`None`: never pruned, the classifier) and row counts: the ranking and one-unit-per-layer
/// rules of the module documentation. Shared by the CPU path and the CUDA path (which scores the
/// rows on the device).
pub(crate) fn select_units(
    scores: &[Option<Vec<f64>>],
    rows: &[usize],
    scope: Scope,
    ratio: f64,
) -> (Vec<Vec<bool>>, UnitReport) {
    let total: usize = scores.iter().flatten().map(|s| s.len()).sum();
    // (score, position in `weights`, unit) in ranking order.
    let cmp = |a: &(f64, usize, usize), b: &(f64, usize, usize)| -> Ordering {
        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
    };
    let mut pruned_rows: Vec<Vec<bool>> = rows.iter().map(|&r| vec![false; r]).collect();
    let mut pruned = 0;
    let requested;
    match scope {
        Scope::Global => {
            requested = count(ratio, total);
            let mut all: Vec<(f64, usize, usize)> = Vec::with_capacity(total);
            for (t, s) in scores.iter().enumerate() {
                let Some(s) = s else { continue };
                let mean = s.iter().sum::<f64>() / s.len() as f64;
                for (u, &v) in s.iter().enumerate() {
                    // A layer of all-zero rows: every normalised score is 0.
                    let norm = if mean > 0.0 { v / mean } else { 0.0 * v };
                    // -0.0 and 0.0 rank equal.
                    all.push((norm + 0.0, t, u));
                }
            }
            all.sort_unstable_by(cmp);
            let mut lost = vec![0usize; rows.len()];
            for &(_, t, u) in &all {
                if pruned == requested {
                    break;
                }
                if lost[t] + 1 >= pruned_rows[t].len() {
                    continue; // keep at least one unit per layer
                }
                lost[t] += 1;
                pruned_rows[t][u] = true;
                pruned += 1;
            }
        }
        Scope::Local => {
            let mut req = 0;
            for (t, s) in scores.iter().enumerate() {
                let Some(s) = s else { continue };
                // floor(δ·u) ≤ u − 1 for δ < 1: a layer always keeps a unit.
                let k = count(ratio, s.len()).min(s.len().saturating_sub(1));
                req += count(ratio, s.len());
                let mut units: Vec<(f64, usize, usize)> = s
                    .iter()
                    .enumerate()
                    .map(|(u, &v)| (v + 0.0, t, u))
                    .collect();
                if k > 0 {
                    units.select_nth_unstable_by(k - 1, cmp);
                    for &(_, _, u) in &units[..k] {
                        pruned_rows[t][u] = true;
                    }
                    pruned += k;
                }
            }
            requested = req;
        }
    }
    (
        pruned_rows,
        UnitReport {
            total,
            pruned,
            requested,
        },
    )
}
