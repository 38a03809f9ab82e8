//! α-CROWN (Xu et al. 2021): the lower slopes of unstable ReLUs become variables in [0, 1], one
//! per neuron of each ReLU layer for every row they serve (each specification row, and each
//! intermediate neuron bounded by CROWN), optimised by projected Adam on the sum of the margin
//! lower bounds, through the engine's autodiff. Every slope in [0, 1] gives a sound bound, so the
//! best bound seen per (point, class) is kept; the first pass uses CROWN's slopes, so α-CROWN is
//! never looser than CROWN.

use super::crown::{AlphaState, Bounder, Intermediate};
use super::net::BoundNet;
use crate::autodiff;
use crate::bounds::certified_rows;
use crate::tensor::Tensor;

/// Optimisation settings (defaults as auto_LiRPA's: 20 iterations, Adam at lr 0.5 decayed by
/// 0.98 per iteration, keep the best bound).
#[derive(Clone, Copy, Debug)]
pub struct AlphaConfig {
    pub iterations: usize,
    pub lr: f32,
    pub decay: f32,
}

impl Default for AlphaConfig {
    fn default() -> Self {
        AlphaConfig {
            iterations: 20,
            lr: 0.5,
            decay: 0.98,
        }
    }
}

/// Adam moments of one tensor.
struct Moments {
    m: Tensor,
    v: Tensor,
}

/// Projected Adam on tensors in [0, 1], in Tensor ops (so it runs where the slopes live).
pub(crate) struct ProjectedAdam {
    moments: Vec<Option<Moments>>,
    step: i32,
    pub lr: f32,
    /// Projection interval of every variable.
    pub range: (f32, f32),
}

impl ProjectedAdam {
    pub fn new(lr: f32, range: (f32, f32)) -> ProjectedAdam {
        ProjectedAdam {
            moments: Vec::new(),
            step: 0,
            lr,
            range,
        }
    }

    /// One descent step on `params` with their gradients (a missing gradient leaves a variable
    /// as it is); each parameter becomes a new leaf, projected onto `range`.
    pub fn step(&mut self, params: Vec<&mut Tensor>, grads: &autodiff::Gradients) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.step += 1;
        let (c1, c2) = (1.0 - B1.powi(self.step), 1.0 - B2.powi(self.step));
        if self.moments.len() < params.len() {
            self.moments.resize_with(params.len(), || None);
        }
        for (p, slot) in params.into_iter().zip(&mut self.moments) {
            let Some(g) = grads.get(p) else { continue };
            let g = g.detach();
            let (m, v) = match slot.take() {
                Some(Moments { m, v }) => (
                    m.mul_scalar(B1).add(&g.mul_scalar(1.0 - B1)),
                    v.mul_scalar(B2).add(&g.mul(&g).mul_scalar(1.0 - B2)),
                ),
                None => (g.mul_scalar(1.0 - B1), g.mul(&g).mul_scalar(1.0 - B2)),
            };
            let update = m
                .mul_scalar(self.lr / c1)
                .div(&v.mul_scalar(1.0 / c2).sqrt().add_scalar(1e-8));
            *p = p
                .detach()
                .sub(&update)
                .clamp(self.range.0, self.range.1)
                .detach()
                .requires_grad();
            *slot = Some(Moments { m, v });
        }
    }
}

/// α-CROWN margin lower bounds `[points, classes]` on the host (0 at j = y) of the boxes
/// `[lo, hi]`, in groups of points whose optimisation fits `budget` bytes (the whole graph of an
/// iteration is kept for its backward pass); each group stops early once all its points are
/// certified.
pub fn alpha_crown_margins(
    net: &BoundNet,
    lo: &Tensor,
    hi: &Tensor,
    labels: &[usize],
    cfg: &AlphaConfig,
    budget: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(labels.len() * net.classes());
    for group in point_groups(net, lo, hi, labels, budget) {
        let idx: Vec<usize> = group.clone().collect();
        let (glo, ghi) = if idx.len() == labels.len() {
            (lo.clone(), hi.clone())
        } else {
            (lo.index_rows(&idx), hi.index_rows(&idx))
        };
        out.extend(optimise(net, &glo, &ghi, &labels[group], cfg, budget));
    }
    out
}

/// Consecutive groups of points whose α-CROWN graphs fit `budget`: a point's rows are its
/// specifications and two per neuron that interval propagation leaves unstable in the layers
/// CROWN bounds; each row holds about 6 activations' worth of tensors per step in the graph.
fn point_groups(
    net: &BoundNet,
    lo: &Tensor,
    hi: &Tensor,
    labels: &[usize],
    budget: usize,
) -> Vec<std::ops::Range<usize>> {
    let ibp = autodiff::with_no_grad(|| {
        Bounder {
            net,
            lo: lo.clone(),
            hi: hi.clone(),
            mode: Intermediate::Ibp,
            budget,
        }
        .layer_bounds(None)
    });
    let mut rows = vec![net.classes() - 1; labels.len()];
    for (k, b) in ibp.iter().enumerate() {
        if net.relu_input_is_one_layer(k) {
            continue;
        }
        let st = super::crown::Stability::of(b);
        for (p, r) in rows.iter_mut().enumerate() {
            *r += 2 * st.unstable_of(p).len();
        }
    }
    let per_row = net.total_width() * 4 * 6;
    let mut groups = Vec::new();
    let (mut start, mut used) = (0, 0usize);
    for (p, &r) in rows.iter().enumerate() {
        let bytes = r * per_row;
        if p > start && used + bytes > budget {
            groups.push(start..p);
            (start, used) = (p, 0);
        }
        used += bytes;
    }
    if start < labels.len() {
        groups.push(start..labels.len());
    }
    groups
}

/// α-CROWN on one group of points.
fn optimise(
    net: &BoundNet,
    lo: &Tensor,
    hi: &Tensor,
    labels: &[usize],
    cfg: &AlphaConfig,
    budget: usize,
) -> Vec<f32> {
    let bounder = Bounder {
        net,
        lo: lo.clone(),
        hi: hi.clone(),
        mode: Intermediate::Crown,
        budget,
    };
    let mut state = AlphaState::default();
    let mut adam = ProjectedAdam::new(cfg.lr, (0.0, 1.0));
    let mut best: Vec<f32> = Vec::new();
    for it in 0..=cfg.iterations {
        let bounds = bounder.layer_bounds(Some(&mut state));
        let margins = bounder.margins(labels, &bounds, Some(&mut state));
        let values = margins.to_vec();
        if best.is_empty() {
            best = values;
        } else {
            for (b, v) in best.iter_mut().zip(values) {
                // NaN never replaces a bound.
                if v > *b {
                    *b = v;
                }
            }
        }
        if it == cfg.iterations || certified_rows(&best, labels).iter().all(|&c| c) {
            break;
        }
        let loss = margins.sum().neg();
        let grads = autodiff::backward(&loss);
        adam.step(state.parameters_mut(), &grads);
        adam.lr *= cfg.decay;
    }
    best
}

#[cfg(test)]
mod tests {
    //! The gradient of the α-CROWN bound with respect to the slopes, against central
    //! differences, for the specification rows' slopes and the intermediate rows' slopes.

    use super::*;
    use crate::nn::{Arch, Model, ModelSpec};
    use crate::rng::Rng;

    /// Σ margins for the state's slopes (the state's row sets and best bounds fixed).
    fn bound_sum(b: &Bounder<'_>, labels: &[usize], state: &AlphaState) -> f64 {
        let mut s = AlphaState {
            intermediate: state.intermediate.clone(),
            spec: state.spec.clone(),
            best: Vec::new(),
        };
        autodiff::with_no_grad(|| {
            let bounds = b.layer_bounds(Some(&mut s));
            let m = b.margins(labels, &bounds, Some(&mut s));
            m.to_vec().iter().map(|&v| v as f64).sum()
        })
    }

    #[test]
    fn slope_gradients_match_finite_differences() {
        let mut rng = Rng::seed(12);
        let mut spec = ModelSpec::new(Arch::Mlp, [1, 3, 3], 3);
        spec.width = 10.0 / 256.0;
        let model = Model::new(spec, &mut rng).unwrap();
        let net = BoundNet::new(&model).unwrap();
        let x = Tensor::rand_uniform(&[2, 1, 3, 3], 0.3, 0.7, &mut rng);
        let (lo, hi) = (x.add_scalar(-0.15), x.add_scalar(0.15));
        let labels = [0, 2];
        let b = Bounder {
            net: &net,
            lo,
            hi,
            mode: Intermediate::Crown,
            budget: 1 << 28,
        };
        let mut state = AlphaState::default();
        autodiff::with_no_grad(|| {
            let bounds = b.layer_bounds(Some(&mut state));
            b.margins(&labels, &bounds, Some(&mut state));
        });
        assert!(
            state.intermediate.iter().flatten().count() > 0,
            "no intermediate rows: the test would not reach their slopes"
        );
        // Slopes away from 0 and 1 (the projection's edges), as fresh leaves.
        for p in state.parameters_mut() {
            let v = Tensor::rand_uniform(p.shape(), 0.2, 0.8, &mut rng);
            *p = v.requires_grad();
        }
        let mut with_grad = AlphaState {
            intermediate: state.intermediate.clone(),
            spec: state.spec.clone(),
            best: Vec::new(),
        };
        let bounds = b.layer_bounds(Some(&mut with_grad));
        let sum = b.margins(&labels, &bounds, Some(&mut with_grad)).sum();
        let grads = autodiff::backward(&sum);
        let params: Vec<Tensor> = state
            .parameters_mut()
            .into_iter()
            .map(|t| t.clone())
            .collect();
        let mut checked = 0;
        for (pi, p) in params.iter().enumerate() {
            let g = grads
                .get(p)
                .map(Tensor::to_vec)
                .unwrap_or(vec![0.0; p.numel()]);
            // The entries with the largest gradients (the others are mostly stable neurons).
            let mut order: Vec<usize> = (0..g.len()).collect();
            order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
            for &e in order.iter().take(3) {
                let h = 1e-2f32;
                let shifted = |d: f32| {
                    let mut s = AlphaState {
                        intermediate: state.intermediate.clone(),
                        spec: state.spec.clone(),
                        best: Vec::new(),
                    };
                    let mut v = p.to_vec();
                    v[e] += d;
                    *s.parameters_mut()[pi] = Tensor::from_vec(v, p.shape());
                    bound_sum(&b, &labels, &s)
                };
                let fd = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
                let an = g[e] as f64;
                assert!(
                    (fd - an).abs() <= 2e-2 * (1.0 + an.abs().max(fd.abs())),
                    "slope tensor {pi}, entry {e}: autodiff {an}, finite differences {fd}"
                );
                if an.abs() > 1e-3 {
                    checked += 1;
                }
            }
        }
        assert!(
            checked >= 4,
            "only {checked} non-zero slope gradients checked"
        );
    }
}
