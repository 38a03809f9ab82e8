//! β-CROWN branch and bound (Wang et al. 2021): complete verification of one point, up to a
//! time limit.
//!
//! Each specification `z_y − z_j` (j ≠ y) is proved on its own. A *domain* is the input box with
//! some unstable ReLUs fixed active (z ≥ 0) or inactive (z ≤ 0). Domains are bounded in batches:
//! the intermediate bounds of the root (CROWN), tightened at the split neurons, give each domain
//! its relaxation (a split neuron is exact on its side); the split constraints enter as
//! Lagrange multipliers β ≥ 0 on the split neurons' pre-activations; the lower slopes α and β
//! are optimised together by projected Adam, keeping each domain's best bound (and its parent's,
//! which holds on every sub-domain). A domain whose bound is positive is closed; otherwise the
//! unstable neuron with the largest relaxation loss `|a|·u·(−l)/(u − l)` (a BaBSR-style score,
//! `a` the coefficient on the neuron's output) is split.
//!
//! Counterexamples: the minimiser of each domain's linear lower bound over the box (a vertex) is
//! run through the network; a negative margin falsifies the point with that input. A domain with
//! no unstable neuron left is affine on its region, and its minimum margin is a linear program
//! (`lp`), decided exactly: its minimiser, checked by a forward pass, is a counterexample, or the
//! domain is closed.

use super::alpha::ProjectedAdam;
use super::crown::{
    backward, concretize, initial_slopes, relax, spec_pairs, start_rows, Bounder, Intermediate,
    LayerBounds, Stability,
};
use super::lp::{self, Lp};
use super::net::BoundNet;
use crate::autodiff::{self, with_no_grad};
use crate::nn::{Mode, Model};
use crate::tensor::Tensor;
use crate::Result;
use std::time::Instant;

/// Branch-and-bound settings (αβ-CROWN's defaults where it has them).
#[derive(Clone, Debug)]
pub struct BabConfig {
    /// Seconds per point.
    pub timeout: f64,
    /// Domains bounded together.
    pub batch: usize,
    /// α/β iterations per batch of domains.
    pub iterations: usize,
    pub lr_alpha: f32,
    pub lr_beta: f32,
}

impl Default for BabConfig {
    fn default() -> Self {
        BabConfig {
            timeout: 60.0,
            batch: 64,
            iterations: 20,
            lr_alpha: 0.1,
            lr_beta: 0.05,
        }
    }
}

/// What branch and bound concluded about a point.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every specification proved over the whole box.
    Verified,
    /// An input of the box (pixels, the point's shape) whose margin is negative.
    Falsified(Vec<f32>),
    /// Time ran out (or a leaf was too close to call in f32).
    Unknown,
}

/// The outcome for one point.
#[derive(Clone, Debug)]
pub struct BabOutcome {
    pub verdict: Verdict,
    /// Per class: the best proven lower bound of `z_y − z_j` (positive for a proved
    /// specification; otherwise the bound given as known, or −∞; 0 at j = y).
    pub lower: Vec<f32>,
    /// Domains bounded.
    pub domains: usize,
}

/// A split: ReLU layer, neuron, and whether it is fixed active.
type Split = (usize, usize, bool);

#[derive(Clone)]
struct Domain {
    splits: Vec<Split>,
    /// A proven lower bound on the domain (its parent's before it is bounded).
    lower: f32,
}

/// One bounded domain.
struct Bounded {
    lower: f32,
    /// The minimiser of the linear lower bound over the box.
    vertex: Vec<f32>,
    /// The neuron to split next, if any is unstable.
    branch: Option<(usize, usize)>,
}

/// The state shared by the specifications of one point.
struct Search<'a> {
    model: &'a Model,
    net: &'a BoundNet,
    lo: Tensor,
    hi: Tensor,
    /// Host copies of the root bounds.
    root_l: Vec<Vec<f32>>,
    root_u: Vec<Vec<f32>>,
    label: usize,
    cfg: &'a BabConfig,
    start: Instant,
    domains: usize,
}

/// Decide one point `x` `[1, c, h, w]` with label `label` over the ε-box (settings from
/// `cfg.bab`, memory from `cfg.memory_budget`). `known` holds lower bounds already proven (e.g.
/// by α-CROWN, 0 at j = y), so that proved specifications are skipped.
pub fn verify_point(
    model: &Model,
    net: &BoundNet,
    x: &Tensor,
    label: usize,
    eps: f32,
    known: Option<&[f32]>,
    cfg: &super::VerifyConfig,
) -> Result<BabOutcome> {
    let (lo, hi) = super::input_corners(x, eps, net.device)?;
    verify_box(model, net, lo, hi, label, known, cfg)
}

/// [`verify_point`] over any box: its corners `lo ≤ hi` ([1, C, H, W] on the network's device).
pub fn verify_box(
    model: &Model,
    net: &BoundNet,
    lo: Tensor,
    hi: Tensor,
    label: usize,
    known: Option<&[f32]>,
    cfg: &super::VerifyConfig,
) -> Result<BabOutcome> {
    let budget = cfg.memory_budget;
    let cfg = &cfg.bab;
    let start = Instant::now();
    let root = with_no_grad(|| {
        Bounder {
            net,
            lo: lo.clone(),
            hi: hi.clone(),
            mode: Intermediate::Crown,
            budget,
        }
        .layer_bounds(None)
    });
    let mut search = Search {
        model,
        net,
        root_l: root.iter().map(|b| b.lower.to_vec()).collect(),
        root_u: root.iter().map(|b| b.upper.to_vec()).collect(),
        lo,
        hi,
        label,
        cfg,
        start,
        domains: 0,
    };
    let k = net.classes();
    let mut lower = vec![f32::NEG_INFINITY; k];
    lower[label] = 0.0;
    let mut unknown = false;
    for j in (0..k).filter(|&j| j != label) {
        if let Some(kn) = known {
            // Proved already; otherwise a bound the search can only improve on.
            lower[j] = kn[j];
            if kn[j] > 0.0 {
                continue;
            }
        }
        match search.spec(j)? {
            SpecResult::Proved(b) => lower[j] = lower[j].max(b),
            SpecResult::Counterexample(x) => {
                return Ok(BabOutcome {
                    verdict: Verdict::Falsified(x),
                    lower,
                    domains: search.domains,
                })
            }
            SpecResult::Open => unknown = true,
        }
    }
    Ok(BabOutcome {
        verdict: if unknown {
            Verdict::Unknown
        } else {
            Verdict::Verified
        },
        lower,
        domains: search.domains,
    })
}

enum SpecResult {
    /// Proved, with the smallest bound among the closed domains.
    Proved(f32),
    Counterexample(Vec<f32>),
    Open,
}

impl Search<'_> {
    fn timed_out(&self) -> bool {
        self.start.elapsed().as_secs_f64() > self.cfg.timeout
    }

    /// Branch and bound on specification `z_y − z_j`.
    fn spec(&mut self, j: usize) -> Result<SpecResult> {
        let mut open = vec![Domain {
            splits: Vec::new(),
            lower: f32::NEG_INFINITY,
        }];
        let mut proved = f32::INFINITY;
        let mut undecided_leaf = false;
        while !open.is_empty() {
            if self.timed_out() {
                return Ok(SpecResult::Open);
            }
            // The weakest domains first.
            open.sort_by(|a, b| b.lower.total_cmp(&a.lower));
            let take = self.cfg.batch.min(open.len());
            let batch: Vec<Domain> = open.split_off(open.len() - take);
            let results = self.bound(&batch, j);
            self.domains += batch.len();
            // Counterexamples among the bounds' minimisers.
            let vertices: Vec<&[f32]> = results.iter().map(|r| r.vertex.as_slice()).collect();
            if let Some(x) = self.first_counterexample(&vertices, j) {
                return Ok(SpecResult::Counterexample(x));
            }
            for (d, r) in batch.into_iter().zip(results) {
                let lower = r.lower.max(d.lower);
                if lower > 0.0 {
                    proved = proved.min(lower);
                    continue;
                }
                match r.branch {
                    Some((k, i)) => {
                        for active in [true, false] {
                            let mut splits = d.splits.clone();
                            splits.push((k, i, active));
                            open.push(Domain { splits, lower });
                        }
                    }
                    None => match self.exact_leaf(&d.splits, j) {
                        Leaf::Closed => {}
                        Leaf::Counterexample(x) => return Ok(SpecResult::Counterexample(x)),
                        Leaf::TooClose => undecided_leaf = true,
                    },
                }
            }
        }
        Ok(if undecided_leaf {
            SpecResult::Open
        } else {
            SpecResult::Proved(if proved.is_finite() { proved } else { 0.0 })
        })
    }

    /// The root bounds with each domain's splits applied, `[domains, neurons]` per layer.
    fn domain_bounds(&self, batch: &[Domain]) -> Vec<LayerBounds> {
        (0..self.net.relu_count())
            .map(|k| {
                let n = self.net.relu_size(k);
                let mut l = Vec::with_capacity(batch.len() * n);
                let mut u = Vec::with_capacity(batch.len() * n);
                for d in batch {
                    let (start, _) = (l.len(), u.len());
                    l.extend_from_slice(&self.root_l[k]);
                    u.extend_from_slice(&self.root_u[k]);
                    for &(sk, i, active) in &d.splits {
                        if sk == k {
                            if active {
                                l[start + i] = l[start + i].max(0.0);
                            } else {
                                u[start + i] = u[start + i].min(0.0);
                            }
                        }
                    }
                }
                let t = |v: Vec<f32>| self.net.on_device(Tensor::from_vec(v, &[batch.len(), n]));
                LayerBounds {
                    lower: t(l),
                    upper: t(u),
                }
            })
            .collect()
    }

    /// α/β-optimised lower bounds of `z_y − z_j` on a batch of domains.
    fn bound(&self, batch: &[Domain], j: usize) -> Vec<Bounded> {
        let net = self.net;
        let d = batch.len();
        let rows: Vec<usize> = (0..d).collect();
        let bounds = self.domain_bounds(batch);
        let stability: Vec<Stability> = bounds.iter().map(Stability::of).collect();
        let (lo, hi) = (
            self.lo.index_rows(&vec![0; d]),
            self.hi.index_rows(&vec![0; d]),
        );
        // The specification row merged into the classifier, once per domain.
        let (spec_a, spec_b) = spec_pairs(net, &vec![self.label; d], &vec![j; d]);
        // Split signs s (+1 inactive, −1 active) per layer, and β ≥ 0 where a layer has splits.
        let mut signs: Vec<Option<Tensor>> = vec![None; net.relu_count()];
        for (k, sign) in signs.iter_mut().enumerate() {
            let n = net.relu_size(k);
            let mut s = vec![0.0f32; d * n];
            let mut any = false;
            for (di, dom) in batch.iter().enumerate() {
                for &(sk, i, active) in &dom.splits {
                    if sk == k {
                        s[di * n + i] = if active { -1.0 } else { 1.0 };
                        any = true;
                    }
                }
            }
            if any {
                *sign = Some(net.on_device(Tensor::from_vec(s, &[d, n])));
            }
        }
        let mut alphas = initial_slopes(net, &stability, &rows);
        let mut betas: Vec<Option<Tensor>> = signs
            .iter()
            .map(|s| {
                s.as_ref().map(|s| {
                    net.on_device(Tensor::zeros(s.shape()))
                        .detach()
                        .requires_grad()
                })
            })
            .collect();
        let mut adam_alpha = ProjectedAdam::new(self.cfg.lr_alpha, (0.0, 1.0));
        let mut adam_beta = ProjectedAdam::new(self.cfg.lr_beta, (0.0, f32::MAX));
        let mut best = vec![f32::NEG_INFINITY; d];
        let mut vertex: Vec<Vec<f32>> = vec![Vec::new(); d];
        let mut scores: Vec<Vec<f32>> = (0..net.relu_count()).map(|_| Vec::new()).collect();
        let per = lo.numel() / d;
        let iterations = if signs.iter().all(Option::is_none) && alphas.is_empty() {
            0
        } else {
            self.cfg.iterations
        };
        for it in 0..=iterations {
            let mut observed: Vec<Option<Tensor>> = vec![None; net.relu_count()];
            let mut relaxer = |k: usize| {
                let mut r = relax(net, &bounds[k], &stability[k], &rows, Some(&alphas[k]));
                if let (Some(s), Some(beta)) = (&signs[k], &betas[k]) {
                    r.split_term = Some(beta.mul(s));
                }
                r
            };
            let mut observe = |k: usize, a: &Tensor| observed[k] = Some(a.detach());
            let (a_in, bias) = backward(
                net,
                net.steps.len(),
                spec_a.clone(),
                spec_b.clone(),
                &mut relaxer,
                Some(&mut observe),
            );
            let lower = concretize(&a_in, &bias, &lo, &hi, &rows);
            let values = lower.to_vec();
            let coeffs = a_in.to_vec();
            let (lo_h, hi_h) = (lo.data(), hi.data());
            let mut improved = false;
            for i in 0..d {
                if values[i] > best[i] || vertex[i].is_empty() {
                    improved |= values[i] > best[i];
                    best[i] = best[i].max(values[i]);
                    vertex[i] = (0..per)
                        .map(|e| {
                            let at = i * per + e;
                            if coeffs[at] > 0.0 {
                                lo_h[at]
                            } else {
                                hi_h[at]
                            }
                        })
                        .collect();
                }
            }
            if it == 0 || improved {
                for (k, o) in observed.into_iter().enumerate() {
                    scores[k] = o.map(|t| t.to_vec()).unwrap_or_default();
                }
            }
            if it == iterations || best.iter().all(|&b| b > 0.0) {
                break;
            }
            let grads = autodiff::backward(&lower.sum().neg());
            adam_alpha.step(alphas.iter_mut().collect(), &grads);
            adam_beta.step(betas.iter_mut().flatten().collect(), &grads);
            adam_alpha.lr *= 0.98;
            adam_beta.lr *= 0.98;
        }
        (0..d)
            .map(|i| Bounded {
                lower: best[i],
                vertex: std::mem::take(&mut vertex[i]),
                branch: pick_branch(&stability, &scores, i),
            })
            .collect()
    }

    /// The first input whose margin `z_y − z_j` is negative, if any.
    fn first_counterexample(&self, points: &[&[f32]], j: usize) -> Option<Vec<f32>> {
        let points: Vec<&[f32]> = points.iter().copied().filter(|p| !p.is_empty()).collect();
        if points.is_empty() {
            return None;
        }
        let mut shape = vec![points.len()];
        shape.extend_from_slice(self.net.input_shape());
        let x = Tensor::from_vec(points.concat(), &shape);
        let x = self.net.on_device(x);
        let logits = with_no_grad(|| self.model.forward(&x, Mode::Eval)).to_vec();
        let k = self.net.classes();
        logits
            .chunks(k)
            .position(|row| row[self.label] - row[j] < 0.0)
            .map(|p| points[p].to_vec())
    }

    /// A domain with every ReLU decided: the exact minimum of its (affine) margin over its
    /// region, by linear programming.
    fn exact_leaf(&self, splits: &[Split], j: usize) -> Leaf {
        let net = self.net;
        let dom = Domain {
            splits: splits.to_vec(),
            lower: 0.0,
        };
        let bounds = self.domain_bounds(std::slice::from_ref(&dom));
        let stability: Vec<Stability> = bounds.iter().map(Stability::of).collect();
        // Affine forms: exact relaxations (no unstable neuron), no β.
        let affine = |from: usize, a: Tensor, b: Tensor| -> (Vec<f64>, f64) {
            with_no_grad(|| {
                let mut relaxer = |k: usize| relax(net, &bounds[k], &stability[k], &[0], None);
                let (a, b) = backward(net, from, a, b, &mut relaxer, None);
                (
                    a.to_vec().iter().map(|&v| v as f64).collect(),
                    b.to_vec()[0] as f64,
                )
            })
        };
        let (spec_a, spec_b) = spec_pairs(net, &[self.label], &[j]);
        let (c, c0) = affine(net.steps.len(), spec_a, spec_b);
        let (mut g, mut h) = (Vec::new(), Vec::new());
        for &(k, i, active) in splits {
            // Active: z ≥ 0, i.e. −a·x ≤ b; inactive: z ≤ 0, i.e. a·x ≤ −b.
            let sign = if active { -1.0 } else { 1.0 };
            let (a, b, from) = start_rows(net, k, &[(0, i, sign)]);
            let (row, b0) = affine(from, a, b);
            g.push(row);
            h.push(-b0);
        }
        let lo: Vec<f64> = self.lo.to_vec().iter().map(|&v| v as f64).collect();
        let hi: Vec<f64> = self.hi.to_vec().iter().map(|&v| v as f64).collect();
        match lp::minimize(&c, &lo, &hi, &g, &h) {
            Lp::Infeasible => Leaf::Closed,
            Lp::Optimal(x, value) => {
                let scale = 1.0 + c0.abs() + c.iter().map(|v| v.abs()).sum::<f64>() * 1e-3;
                if value + c0 > 1e-5 * scale {
                    return Leaf::Closed;
                }
                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                match self.first_counterexample(&[&x32], j) {
                    Some(x) => Leaf::Counterexample(x),
                    None => Leaf::TooClose,
                }
            }
        }
    }
}

/// The unstable neuron of domain `i` with the largest relaxation loss.
fn pick_branch(stability: &[Stability], coeffs: &[Vec<f32>], i: usize) -> Option<(usize, usize)> {
    let mut best: Option<((usize, usize), f32)> = None;
    for (k, st) in stability.iter().enumerate() {
        let n = st.neurons;
        let (l, u) = (&st.lower, &st.upper);
        for e in st.unstable_of(i) {
            let (lv, uv) = (l[i * n + e], u[i * n + e]);
            let a = coeffs[k].get(i * n + e).copied().unwrap_or(1.0);
            // Ties (a = 0 everywhere) still split: the loss of the relaxation itself.
            let score = (a.abs() + 1e-6) * uv * (-lv) / (uv - lv);
            if best.is_none_or(|(_, s)| score > s) {
                best = Some(((k, e), score));
            }
        }
    }
    best.map(|(at, _)| at)
}

enum Leaf {
    Closed,
    Counterexample(Vec<f32>),
    /// The linear program says the margin may reach 0, but f32 finds no negative margin at its
    /// minimiser: too close to call.
    TooClose,
}
