//! Magnitude pruning of conv and linear weights (docs/design.md, "Compression" and its pruning decisions).
//!
//! A pruning is a set of 0/1 masks ([`Masks`]), one per conv/linear weight, multiplied into the
//! weights by [`apply_masks`]. Biases and batch norm are never pruned.
//!
//! Methods ([`PruneMethod`], the paper's names `gul1 gul2 lul1 lul2 gsl1 gsl2 lsl1 lsl2`):
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

/// One of the paper's eight pruning methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PruneMethod {
    pub scope: Scope,
    pub structure: Structure,
    pub norm: Norm,
}

impl PruneMethod {
    /// All eight methods, in the order of their names `gul1 gul2 lul1 lul2 gsl1 gsl2 lsl1 lsl2`.
    pub const ALL: [PruneMethod; 8] = {
        use Norm::*;
        use Scope::*;
        use Structure::*;
        const fn m(scope: Scope, structure: Structure, norm: Norm) -> PruneMethod {
            PruneMethod::new(scope, structure, norm)
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

    pub const fn new(scope: Scope, structure: Structure, norm: Norm) -> PruneMethod {
        PruneMethod {
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
}

impl fmt::Display for PruneMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PruneMethod {
    type Err = Error;

    /// Case-insensitive: `GUL1`, `gsl2`, `LuL1`, …
    fn from_str(s: &str) -> Result<PruneMethod> {
        let lower = s.trim().to_ascii_lowercase();
        PruneMethod::ALL
            .into_iter()
            .find(|m| m.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = PruneMethod::ALL.iter().map(|m| m.name()).collect();
                Error::Invalid(format!(
                    "unknown pruning method {s:?}: expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl serde::Serialize for PruneMethod {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for PruneMethod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl clap::ValueEnum for PruneMethod {
    fn value_variants<'a>() -> &'a [Self] {
        &PruneMethod::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }

    fn from_str(input: &str, _ignore_case: bool) -> std::result::Result<Self, String> {
        // The paper writes the names in upper case; accept any case.
        input.parse().map_err(|e: Error| e.to_string())
    }
}

/// Structured pruning's unit counts (over the prunable layers, the classifier excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitReport {
    /// Output channels of convs plus output neurons of hidden linear layers.
    pub total: usize,
    /// Units removed.
    pub pruned: usize,
    /// Units the ratio asked for (`floor(δ·total)` global, `Σ floor(δ·u_l)` local). Larger than
    /// `pruned` only when the one-unit-per-layer rule made the exact count impossible.
    pub requested: usize,
}

impl UnitReport {
    /// Fraction of units removed.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.pruned as f64 / self.total as f64
        }
    }
}

/// One 0/1 mask per conv/linear weight, with what the pruning achieved.
#[derive(Clone)]
pub struct Masks {
    pub method: PruneMethod,
    pub ratio: f64,
    /// Indexed by layer index of `model.net.layers`: `Some(mask)` (same shape as the weight,
    /// values 0.0 or 1.0) for every conv and linear layer, `None` for the others.
    pub layers: Vec<Option<Tensor>>,
    /// Conv and linear weights in the model (biases excluded).
    pub total_weights: usize,
    /// Of those, how many the masks zero.
    pub pruned_weights: usize,
    /// Structured pruning only.
    pub units: Option<UnitReport>,
}

impl Masks {
    /// The mask of layer `index` (None for layers without a prunable weight).
    pub fn get(&self, index: usize) -> Option<&Tensor> {
        self.layers.get(index).and_then(|m| m.as_ref())
    }

    /// Fraction of all conv/linear weights set to zero by the masks.
    pub fn weight_sparsity(&self) -> f64 {
        if self.total_weights == 0 {
            0.0
        } else {
            self.pruned_weights as f64 / self.total_weights as f64
        }
    }

    /// Fraction of units removed (structured pruning only).
    pub fn unit_fraction(&self) -> Option<f64> {
        self.units.map(|u| u.fraction())
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

pub(crate) fn check_ratio(ratio: f64) -> Result<()> {
    if (0.0..1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "pruning ratio must be in [0, 1), got {ratio}"
        )))
    }
}

/// Magnitude pruning masks for `model` removing the fraction `ratio` (δ ∈ [0, 1)) of weights
/// (unstructured) or units (structured). See the module documentation for the exact rules.
/// Masks of weights on the GPU, computed there (`compress::prune::launch`: the same selection and
/// the same unit scores, so the same masks); what comes back is one number (the kept count) and,
/// for structured methods, the units' scores.
fn device_masks(
    layers: &[Layer],
    weights: &[(usize, &Tensor)],
    method: PruneMethod,
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
        method,
        ratio,
        layers: out,
        total_weights,
        pruned_weights: total_weights - kept.round() as usize,
        units: pruning.units,
    })
}

pub fn prune_masks(model: &Model, method: PruneMethod, ratio: f64) -> Result<Masks> {
    check_ratio(ratio)?;
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
        method,
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
    method: PruneMethod,
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

/// A pruned copy of `model`: every conv/linear weight `w` that has a mask becomes
/// `w.mul(&mask)`, recorded by autodiff. When `model`'s weights are parameter leaves (and
/// gradients are enabled), a loss computed with the copy backpropagates into those leaves with
/// gradient exactly zero at pruned entries (`∂(w·m)/∂w = m`): this is how a CACTUS training step
/// trains through a pruned network. Biases, batch norm (parameters and running statistics) and
/// every other layer are shared with `model` unchanged.
///
/// Panics if `masks` was not computed for a model of this structure (mask shapes differ).
pub fn apply_masks(model: &Model, masks: &Masks) -> Model {
    let mut copy = model.clone();
    assert_eq!(
        masks.layers.len(),
        copy.net.layers.len(),
        "masks for {} layers applied to a model with {}",
        masks.layers.len(),
        copy.net.layers.len()
    );
    for (i, layer) in copy.net.layers.iter_mut().enumerate() {
        let Some(w) = layer.weight_mut() else {
            continue;
        };
        if let Some(m) = masks.get(i) {
            assert_eq!(
                m.shape(),
                w.shape(),
                "mask of layer {i} does not fit its weight"
            );
            *w = w.mul(m);
        }
    }
    copy
}

/// `prune_masks` then `apply_masks`: the pruned copy with the masks (for their report).
pub fn prune(model: &Model, method: PruneMethod, ratio: f64) -> Result<(Model, Masks)> {
    let masks = prune_masks(model, method, ratio)?;
    Ok((apply_masks(model, &masks), masks))
}
