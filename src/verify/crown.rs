//! Linear bound propagation (CROWN, Zhang et al. 2018) and its optimised-slope form (α-CROWN),
//! on the engine's Tensor ops, so that it runs on either device and differentiates through our
//! autodiff.
//!
//! A bound is computed for *rows*: each row is a linear function `a·h + b` of one network node
//! `h` for one input point (`point_of_row`). The pass walks the chain backwards, replacing the
//! coefficients of each step's output by those of its input:
//! - affine steps are exact (`a ← a·W`, the bias collects `a·bias`; a convolution sends `a`
//!   back through its transpose);
//! - a ReLU with pre-activation bounds [l, u] is relaxed: stable neurons are exact (slope 1 or
//!   0); an unstable one has the upper line `u(x − l)/(u − l)` and the lower line `αx`; a
//!   coefficient ≥ 0 takes the lower line, a negative one the upper line, so the result stays a
//!   lower bound.
//!
//! At the input the linear function is minimised over the box `[lo, hi]` exactly:
//! `Σ max(a,0)·lo + min(a,0)·hi + b`.
//!
//! Pre-activation bounds of every ReLU come first, layer by layer: interval propagation from the
//! previous layer's bounds, then (mode `Crown`) a backward pass from this layer for the neurons
//! that interval propagation leaves unstable only, two rows each (`+z` and `−z`); each neuron
//! keeps the tighter of its two bounds. The cost is therefore proportional to the unstable
//! neurons, not to the layer widths. The margins likewise keep the tighter of their CROWN bound
//! and their interval bound from the last ReLU layer's bounds.
//!
//! Branch and bound adds two things per row: split neurons, whose relaxation is exact on their
//! side of the split, and Lagrange multipliers β of the split constraints, added to the
//! coefficients at the split layer's pre-activation (β-CROWN).

use super::net::{BoundNet, Step};
use crate::autodiff::with_no_grad;
use crate::tensor::Tensor;

/// How the pre-activation bounds of the ReLU layers are obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intermediate {
    /// Interval propagation only (CROWN-IBP).
    Ibp,
    /// Interval propagation, then CROWN on the neurons it leaves unstable.
    Crown,
}

/// Bounds of one ReLU layer's input, `[points, neurons]` each (flattened per point).
#[derive(Clone)]
pub struct LayerBounds {
    pub lower: Tensor,
    pub upper: Tensor,
}

/// Which neurons of one ReLU layer are unstable, active or inactive, per point, as 0/1 masks
/// `[points, neurons]` on the host (they select the relaxation; they carry no gradient).
#[derive(Clone)]
pub(crate) struct Stability {
    pub unstable: Vec<f32>,
    pub active: Vec<f32>,
    /// CROWN's adaptive lower slope of each neuron (1 when u ≥ −l, else 0); it matters on
    /// unstable neurons only.
    pub adaptive: Vec<f32>,
    /// The bounds the masks were read from, on the host.
    pub lower: Vec<f32>,
    pub upper: Vec<f32>,
    pub neurons: usize,
}

impl Stability {
    /// Masks from bounds: active when l ≥ 0, inactive when u ≤ 0, unstable otherwise (one copy
    /// of the bounds to the host per layer serves the masks, the adaptive slopes and branching).
    pub fn of(b: &LayerBounds) -> Stability {
        let (l, u) = (b.lower.to_vec(), b.upper.to_vec());
        let neurons = b.lower.dim(1);
        let mut unstable = vec![0.0; l.len()];
        let mut active = vec![0.0; l.len()];
        for i in 0..l.len() {
            if l[i] >= 0.0 {
                active[i] = 1.0;
            } else if u[i] > 0.0 {
                unstable[i] = 1.0;
            }
        }
        let adaptive = l
            .iter()
            .zip(&u)
            .map(|(&l, &u)| if u >= -l { 1.0 } else { 0.0 })
            .collect();
        Stability {
            unstable,
            active,
            adaptive,
            lower: l,
            upper: u,
            neurons,
        }
    }

    /// Unstable neuron indices of point `p`.
    pub fn unstable_of(&self, p: usize) -> Vec<usize> {
        let row = &self.unstable[p * self.neurons..(p + 1) * self.neurons];
        (0..self.neurons).filter(|&i| row[i] != 0.0).collect()
    }
}

/// The relaxation of one ReLU layer for a set of rows, `[rows, neurons]` each.
pub(crate) struct RowRelaxation {
    /// Lower-line slope (α for unstable neurons, 1 active, 0 inactive).
    pub lower_slope: Tensor,
    pub upper_slope: Tensor,
    pub upper_intercept: Tensor,
    /// β-CROWN: the coefficient `β·s` added at the pre-activation (s = +1 for a neuron split
    /// inactive, −1 active, 0 unsplit), if any neuron of the layer is split.
    pub split_term: Option<Tensor>,
}

/// The relaxation of layer bounds `b` (per point) gathered for rows. `alpha`: per-row lower
/// slopes of unstable neurons `[rows, neurons]` (α-CROWN), else the adaptive choice.
pub(crate) fn relax(
    net: &BoundNet,
    b: &LayerBounds,
    st: &Stability,
    point_of_row: &[usize],
    alpha: Option<&Tensor>,
) -> RowRelaxation {
    let (points, n) = (b.lower.dim(0), st.neurons);
    let mask = |m: &[f32]| net.on_device(Tensor::from_vec(m.to_vec(), &[points, n]));
    let (unstable, active) = (mask(&st.unstable), mask(&st.active));
    // The upper line's slope u/(u − l) on unstable neurons; the denominator is 1 elsewhere, so
    // stable neurons (and l = u) never divide by zero.
    let denom = b
        .upper
        .sub(&b.lower)
        .mul(&unstable)
        .add(&unstable.neg().add_scalar(1.0));
    let unstable_slope = b.upper.mul(&unstable).div(&denom);
    let upper_slope = unstable_slope.add(&active);
    let upper_intercept = unstable_slope.mul(&b.lower).neg();
    let rows = |t: &Tensor| t.index_rows(point_of_row);
    let lower_slope = match alpha {
        Some(a) => a.mul(&rows(&unstable)).add(&rows(&active)),
        None => {
            let adaptive = mask(&st.adaptive);
            rows(&adaptive.mul(&unstable).add(&active))
        }
    };
    RowRelaxation {
        lower_slope,
        upper_slope: rows(&upper_slope),
        upper_intercept: rows(&upper_intercept),
        split_term: None,
    }
}

/// A row of an intermediate layer's bounds: (point, neuron, sign); it bounds `sign·z_neuron`.
pub(crate) type Row = (usize, usize, f32);

/// Sees the coefficients on each ReLU layer's output during a backward pass.
pub(crate) type Observer<'a> = &'a mut dyn FnMut(usize, &Tensor);

/// Coefficients `a` `[rows, ...node]` and constants `bias` `[rows]` of linear functions of the
/// node at step `from` (the input of step `from`), sent back to the network's input: returns
/// their coefficients on the input pixels and their new constants. `relax(k, rows)` gives the
/// relaxation of the `k`-th ReLU layer for these rows; `observe(k, a)`, if given, sees the
/// coefficients `[rows, neurons]` on that layer's output (branching heuristics).
pub(crate) fn backward(
    net: &BoundNet,
    from: usize,
    mut a: Tensor,
    mut bias: Tensor,
    relax: &mut dyn FnMut(usize) -> RowRelaxation,
    mut observe: Option<Observer<'_>>,
) -> (Tensor, Tensor) {
    let rows = a.dim(0);
    let with_rows = |shape: &[usize]| {
        let mut s = vec![rows];
        s.extend_from_slice(shape);
        s
    };
    // Σ over every axis but the first.
    let row_sum = |t: &Tensor| {
        let axes: Vec<isize> = (1..t.rank() as isize).collect();
        t.sum_axes(&axes, false)
    };
    for i in (0..from).rev() {
        let in_shape = &net.shapes[i];
        match &net.steps[i] {
            Step::ChannelAffine { scale, shift } => {
                let mut bshape = vec![1; in_shape.len() + 1];
                bshape[1] = in_shape[0];
                bias = bias.add(&row_sum(&a.mul(&shift.reshape(&bshape))));
                a = a.mul(&scale.reshape(&bshape));
            }
            Step::Linear { weight, bias: b } => {
                if let Some(b) = b {
                    bias = bias.add(&a.matmul(&b.reshape(&[b.numel(), 1])).reshape(&[rows]));
                }
                a = a.matmul(weight);
            }
            Step::Conv {
                weight,
                bias: b,
                params,
            } => {
                if let Some(b) = b {
                    let per_channel = a.sum_axes(&[2, 3], false);
                    bias = bias.add(
                        &per_channel
                            .matmul(&b.reshape(&[b.numel(), 1]))
                            .reshape(&[rows]),
                    );
                }
                a = a.conv2d_transpose(weight, *params, (in_shape[1], in_shape[2]));
            }
            Step::Flatten => a = a.reshape(&with_rows(in_shape)),
            Step::Relu => {
                let k = net
                    .relus
                    .iter()
                    .position(|&r| r == i)
                    .expect("a ReLU step is in the ReLU list");
                let r = relax(k);
                let flat = a.reshape(&[rows, r.lower_slope.dim(1)]);
                if let Some(f) = observe.as_deref_mut() {
                    f(k, &flat);
                }
                let pos = flat.relu();
                let neg = flat.sub(&pos);
                bias = bias.add(&neg.mul(&r.upper_intercept).sum_axes(&[1], false));
                let mut next = pos.mul(&r.lower_slope).add(&neg.mul(&r.upper_slope));
                if let Some(t) = &r.split_term {
                    next = next.add(t);
                }
                a = next.reshape(&with_rows(in_shape));
            }
        }
    }
    (a, bias)
}

/// The minimum of each row's linear function `a·x + bias` over its point's box `[lo, hi]`
/// (`lo`, `hi`: `[points, ...]`).
pub(crate) fn concretize(
    a: &Tensor,
    bias: &Tensor,
    lo: &Tensor,
    hi: &Tensor,
    point_of_row: &[usize],
) -> Tensor {
    let rows = a.dim(0);
    let flat = a.reshape(&[rows, a.numel() / rows.max(1)]);
    let per = flat.dim(1);
    let lo = lo.reshape(&[lo.dim(0), per]).index_rows(point_of_row);
    let hi = hi.reshape(&[hi.dim(0), per]).index_rows(point_of_row);
    let pos = flat.relu();
    let neg = flat.sub(&pos);
    pos.mul(&lo)
        .add(&neg.mul(&hi))
        .sum_axes(&[1], false)
        .add(bias)
}

/// The rows of the specification `z_y − z_j` (j ≠ y) for points labelled `labels`, merged into
/// the classifier: coefficients on its input `[rows, hidden]`, constants `[rows]`, the point of
/// each row and its class j.
pub(crate) fn spec_rows(
    net: &BoundNet,
    labels: &[usize],
) -> (Tensor, Tensor, Vec<usize>, Vec<usize>) {
    let k = net.classes();
    let (mut ys, mut js, mut points) = (Vec::new(), Vec::new(), Vec::new());
    for (p, &y) in labels.iter().enumerate() {
        for j in (0..k).filter(|&j| j != y) {
            ys.push(y);
            js.push(j);
            points.push(p);
        }
    }
    let (a, bias) = spec_pairs(net, &ys, &js);
    (a, bias, points, js)
}

/// The specification rows `z_{ys[r]} − z_{js[r]}` merged into the classifier: coefficients on
/// its input `[rows, hidden]` and constants `[rows]`.
pub(crate) fn spec_pairs(net: &BoundNet, ys: &[usize], js: &[usize]) -> (Tensor, Tensor) {
    let w = &net.last_weight;
    let b = net.last_bias.reshape(&[net.classes(), 1]);
    let a = w.index_rows(ys).sub(&w.index_rows(js));
    let bias = b.index_rows(ys).sub(&b.index_rows(js)).reshape(&[ys.len()]);
    (a, bias)
}

/// Rows `±z_i` of a ReLU layer's input for the given (point, neuron, sign) triples: their
/// coefficients and constants on the input of the first linear or convolution layer below the
/// ReLU (built directly: a row of the weight, or a kernel placed at its receptive field, after
/// the per-channel maps between them), and that layer's step index. Starting there instead of
/// from one-hot rows saves the widest transposed product of each backward pass.
pub(crate) fn start_rows(net: &BoundNet, k: usize, rows: &[Row]) -> (Tensor, Tensor, usize) {
    let at = net.relus[k];
    // Per-channel maps between the layer and the ReLU fold into each row's sign and constant.
    let mut j = at;
    let mut maps = Vec::new();
    while j > 0 {
        match &net.steps[j - 1] {
            Step::ChannelAffine { scale, shift } => maps.push((scale.to_vec(), shift.to_vec())),
            _ => break,
        }
        j -= 1;
    }
    let shape = &net.shapes[at];
    let plane: usize = shape[1..].iter().product();
    let fold = |i: usize, s: f32| -> (f32, f32) {
        let c = i / plane.max(1);
        maps.iter().fold((s, 0.0), |(v, b), (scale, shift)| {
            (v * scale[c], b + v * shift[c])
        })
    };
    let (mut a, mut bias) = (Vec::new(), Vec::with_capacity(rows.len()));
    let (from, in_shape) = match j.checked_sub(1).map(|l| &net.steps[l]) {
        Some(Step::Linear { weight, bias: b }) => {
            let (w, b) = (weight.to_vec(), b.as_ref().map(Tensor::to_vec));
            let n_in = weight.dim(1);
            a.reserve(rows.len() * n_in);
            for &(_, i, s) in rows {
                let (v, c) = fold(i, s);
                a.extend(w[i * n_in..(i + 1) * n_in].iter().map(|&x| v * x));
                bias.push(c + b.as_ref().map_or(0.0, |b| v * b[i]));
            }
            (j - 1, net.shapes[j - 1].clone())
        }
        Some(Step::Conv {
            weight,
            bias: b,
            params,
        }) => {
            let (w, b) = (weight.to_vec(), b.as_ref().map(Tensor::to_vec));
            let in_shape = net.shapes[j - 1].clone();
            let (ci_n, h, wd) = (in_shape[0], in_shape[1], in_shape[2]);
            let (kh, kw) = (weight.dim(2), weight.dim(3));
            let (oh, ow) = (shape[1], shape[2]);
            let per = ci_n * h * wd;
            a.resize(rows.len() * per, 0.0);
            for (r, &(_, i, s)) in rows.iter().enumerate() {
                let (v, c) = fold(i, s);
                let (o, oy, ox) = (i / (oh * ow), (i / ow) % oh, i % ow);
                let dst = &mut a[r * per..(r + 1) * per];
                for ci in 0..ci_n {
                    for ky in 0..kh {
                        let iy = (oy * params.stride.0 + ky) as isize - params.padding.0 as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix =
                                (ox * params.stride.1 + kx) as isize - params.padding.1 as isize;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            dst[(ci * h + iy as usize) * wd + ix as usize] +=
                                v * w[((o * ci_n + ci) * kh + ky) * kw + kx];
                        }
                    }
                }
                bias.push(c + b.as_ref().map_or(0.0, |b| v * b[o]));
            }
            (j - 1, in_shape)
        }
        // No affine layer right below: one-hot rows at the ReLU's input.
        _ => {
            let n = net.relu_size(k);
            a.resize(rows.len() * n, 0.0);
            for (r, &(_, i, s)) in rows.iter().enumerate() {
                a[r * n + i] = s;
                bias.push(0.0);
            }
            (at, shape.clone())
        }
    };
    let mut full = vec![rows.len()];
    full.extend_from_slice(&in_shape);
    (
        net.on_device(Tensor::from_vec(a, &full)),
        net.on_device(Tensor::from_vec(bias, &[rows.len()])),
        from,
    )
}

/// Interval propagation of boxes `[2, points, ...]` through steps `range` (no ReLU inside
/// except where listed).
fn ibp_steps(net: &BoundNet, mut s: Tensor, range: std::ops::Range<usize>) -> Tensor {
    for step in &net.steps[range] {
        s = match step {
            Step::ChannelAffine { scale, shift } => s.interval_channel_affine(scale, shift),
            Step::Linear { weight, bias } => s.interval_linear(weight, bias.as_ref()),
            Step::Conv {
                weight,
                bias,
                params,
            } => s.interval_conv2d(weight, bias.as_ref(), *params),
            Step::Flatten => s.interval_flatten(),
            Step::Relu => s.interval_relu(),
        };
    }
    s
}

/// Rows per backward chunk so that a chunk's coefficient tensors (about 8 live copies of a
/// row at the widest node) fit in `budget` bytes.
pub(crate) fn rows_per_chunk(net: &BoundNet, budget: usize) -> usize {
    (budget / (net.widest() * 4 * 8)).max(1)
}

/// Per-row lower slopes of one backward start (α-CROWN variables), one tensor per ReLU layer
/// below the start: `[rows, neurons]`.
pub type Slopes = Vec<Tensor>;

/// The optimisable state of α-CROWN for one batch of points: slopes for the specification rows
/// and for each intermediate layer's rows, fixed by the first (CROWN) pass.
#[derive(Default)]
pub struct AlphaState {
    /// `intermediate[k]`: the rows (point, neuron, sign) of ReLU layer k bounded by CROWN, and
    /// their slopes for the layers below k.
    pub(crate) intermediate: Vec<Option<(Vec<Row>, Slopes)>>,
    /// Slopes of the specification rows.
    pub(crate) spec: Option<Slopes>,
    /// The tightest bounds of each ReLU layer seen so far (constants): every iteration's bounds
    /// hold for its slopes, so their intersection holds too, and a neuron once proved stable
    /// stays stable.
    pub(crate) best: Vec<Option<LayerBounds>>,
}

impl AlphaState {
    /// Every slope tensor (the optimiser's parameters).
    pub fn parameters_mut(&mut self) -> Vec<&mut Tensor> {
        let mut out: Vec<&mut Tensor> = Vec::new();
        for (_, s) in self.intermediate.iter_mut().flatten() {
            out.extend(s.iter_mut());
        }
        if let Some(s) = &mut self.spec {
            out.extend(s.iter_mut());
        }
        out
    }
}

/// Slopes for `rows` rows through the ReLU layers of `stability`, initialised to CROWN's
/// adaptive choice for each row's point, as gradient leaves.
pub(crate) fn initial_slopes(
    net: &BoundNet,
    stability: &[Stability],
    point_of_row: &[usize],
) -> Slopes {
    stability
        .iter()
        .map(|st| {
            let (n, points) = (st.neurons, st.adaptive.len() / st.neurons.max(1));
            let adaptive = Tensor::from_vec(st.adaptive.clone(), &[points, n]);
            net.on_device(adaptive.index_rows(point_of_row))
                .detach()
                .requires_grad()
        })
        .collect()
}

/// The bound computation of one batch of points.
pub struct Bounder<'a> {
    pub net: &'a BoundNet,
    /// Box corners `[points, c, h, w]`, pixels in [0, 1].
    pub lo: Tensor,
    pub hi: Tensor,
    pub mode: Intermediate,
    /// Memory budget in bytes for one backward chunk.
    pub budget: usize,
}

impl Bounder<'_> {
    fn points(&self) -> usize {
        self.lo.dim(0)
    }

    /// Pre-activation bounds of every ReLU layer. With `alpha`, CROWN rows use (and on the
    /// first call, create) the state's slopes; without, CROWN's adaptive slopes.
    pub fn layer_bounds(&self, mut alpha: Option<&mut AlphaState>) -> Vec<LayerBounds> {
        let net = self.net;
        let points = self.points();
        let mut bounds: Vec<LayerBounds> = Vec::new();
        let mut stability: Vec<Stability> = Vec::new();
        let mut s = Tensor::interval_from_bounds(&self.lo, &self.hi);
        let mut done = 0;
        for (k, &at) in net.relus.iter().enumerate() {
            s = ibp_steps(net, s, done..at);
            done = at;
            let n = net.relu_size(k);
            let (l, u) = s.interval_bounds();
            let (l, u) = (l.reshape(&[points, n]), u.reshape(&[points, n]));
            let ibp = LayerBounds {
                lower: l.clone(),
                upper: u.clone(),
            };
            let skip = self.mode == Intermediate::Ibp || net.relu_input_is_one_layer(k);
            let layer = if skip {
                ibp
            } else {
                let st = Stability::of(&ibp);
                // Rows: the neurons interval propagation leaves unstable, +z and −z each; with
                // α-CROWN the row set of the first pass is kept, so the slopes keep their rows.
                let existing = alpha
                    .as_deref()
                    .and_then(|a| a.intermediate.get(k).cloned().flatten());
                let rows: Vec<Row> = match &existing {
                    Some((rows, _)) => rows.clone(),
                    None => (0..points)
                        .flat_map(|p| {
                            st.unstable_of(p)
                                .into_iter()
                                .flat_map(move |i| [(p, i, 1.0), (p, i, -1.0)])
                        })
                        .collect(),
                };
                if rows.is_empty() {
                    ibp
                } else {
                    let slopes = match (&mut alpha, existing) {
                        (Some(_), Some((_, s))) => Some(s),
                        (Some(state), None) => {
                            let point_of_row: Vec<usize> = rows.iter().map(|r| r.0).collect();
                            let s = initial_slopes(net, &stability, &point_of_row);
                            if state.intermediate.len() <= k {
                                state.intermediate.resize(k + 1, None);
                            }
                            state.intermediate[k] = Some((rows.clone(), s.clone()));
                            Some(s)
                        }
                        (None, _) => None,
                    };
                    let lb = self.row_bounds(&rows, &bounds, &stability, slopes.as_ref(), k);
                    tighten(&ibp, &rows, &lb, n)
                }
            };
            let layer = match alpha.as_deref_mut() {
                Some(state) => keep_best(state, k, layer),
                None => layer,
            };
            stability.push(Stability::of(&layer));
            // Continue interval propagation from the tightened bounds.
            let mut shape = vec![points];
            shape.extend_from_slice(net.relu_shape(k));
            s = Tensor::interval_from_bounds(
                &layer.lower.reshape(&shape),
                &layer.upper.reshape(&shape),
            );
            bounds.push(layer);
        }
        bounds
    }

    /// Lower bounds of `sign·z_i` for the rows (point, neuron, sign) of ReLU layer `k`'s input,
    /// in chunks that fit the budget.
    fn row_bounds(
        &self,
        rows: &[Row],
        bounds: &[LayerBounds],
        stability: &[Stability],
        slopes: Option<&Slopes>,
        k: usize,
    ) -> Tensor {
        let chunk = rows_per_chunk(self.net, self.budget);
        let mut parts = Vec::new();
        for start in (0..rows.len()).step_by(chunk) {
            let end = (start + chunk).min(rows.len());
            let part = &rows[start..end];
            let point_of_row: Vec<usize> = part.iter().map(|r| r.0).collect();
            let (a, bias, from) = start_rows(self.net, k, part);
            let chunk_slopes: Option<Vec<Tensor>> = slopes.map(|s| {
                s.iter()
                    .map(|t| {
                        if start == 0 && end == rows.len() {
                            t.clone()
                        } else {
                            t.index_rows(&(start..end).collect::<Vec<_>>())
                        }
                    })
                    .collect()
            });
            let mut relaxer = |j: usize| {
                relax(
                    self.net,
                    &bounds[j],
                    &stability[j],
                    &point_of_row,
                    chunk_slopes.as_ref().map(|s| &s[j]),
                )
            };
            let (a, bias) = backward(self.net, from, a, bias, &mut relaxer, None);
            parts.push(concretize(&a, &bias, &self.lo, &self.hi, &point_of_row));
        }
        if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::concat(&parts.iter().collect::<Vec<_>>(), 0)
        }
    }

    /// Lower bounds of `z_y − z_j` for every point and class: `[points, classes]`, 0 at j = y.
    /// Uses `bounds` (from [`Self::layer_bounds`]) for the relaxations, and per-row slopes from
    /// `alpha` (created on the first call) when given.
    pub fn margins(
        &self,
        labels: &[usize],
        bounds: &[LayerBounds],
        alpha: Option<&mut AlphaState>,
    ) -> Tensor {
        let net = self.net;
        let k = net.classes();
        if labels.is_empty() {
            return net.on_device(Tensor::zeros(&[0, k]));
        }
        let stability: Vec<Stability> = bounds.iter().map(Stability::of).collect();
        let all_rows: Vec<usize> = labels
            .iter()
            .enumerate()
            .flat_map(|(p, _)| std::iter::repeat_n(p, k - 1))
            .collect();
        let slopes: Option<Slopes> = alpha.map(|state| {
            state
                .spec
                .get_or_insert_with(|| initial_slopes(net, &stability, &all_rows))
                .clone()
        });
        // Interval bounds of the classifier's input, one step on from the last ReLU layer's
        // bounds: the specification rows concretised on them are the interval margins, and each
        // margin keeps the tighter of its CROWN and interval bound.
        let (hidden_lo, hidden_hi) = {
            let (start, s) = match (net.relus.last(), bounds.last()) {
                (Some(&at), Some(b)) => {
                    let mut shape = vec![labels.len()];
                    shape.extend_from_slice(&net.shapes[at]);
                    (
                        at,
                        Tensor::interval_from_bounds(
                            &b.lower.reshape(&shape),
                            &b.upper.reshape(&shape),
                        ),
                    )
                }
                _ => (0, Tensor::interval_from_bounds(&self.lo, &self.hi)),
            };
            ibp_steps(net, s, start..net.steps.len()).interval_bounds()
        };
        // Whole points per chunk, so that each chunk's rows fit the budget.
        let per_chunk = (rows_per_chunk(net, self.budget) / (k - 1)).max(1);
        let mut parts = Vec::new();
        for first in (0..labels.len()).step_by(per_chunk) {
            let last = (first + per_chunk).min(labels.len());
            let (a, bias, local, js) = spec_rows(net, &labels[first..last]);
            let point_of_row: Vec<usize> = local.iter().map(|p| p + first).collect();
            let row_range: Vec<usize> = (first * (k - 1)..last * (k - 1)).collect();
            let chunk_slopes: Option<Slopes> = slopes.as_ref().map(|s| {
                if first == 0 && last == labels.len() {
                    s.clone()
                } else {
                    s.iter().map(|t| t.index_rows(&row_range)).collect()
                }
            });
            let mut relaxer = |j: usize| {
                relax(
                    net,
                    &bounds[j],
                    &stability[j],
                    &point_of_row,
                    chunk_slopes.as_ref().map(|s| &s[j]),
                )
            };
            let a = net.on_device(a);
            let interval = concretize(&a, &bias, &hidden_lo, &hidden_hi, &point_of_row);
            let from = net.steps.len();
            let (a, bias) = backward(net, from, a, bias, &mut relaxer, None);
            let lower = concretize(&a, &bias, &self.lo, &self.hi, &point_of_row).maximum(&interval);
            parts.push(spread_margins(&lower, &labels[first..last], &js, k));
        }
        if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::concat(&parts.iter().collect::<Vec<_>>(), 0)
        }
    }
}

/// `layer` intersected with the best bounds of ReLU layer `k` kept in `state`, which it then
/// updates (gradients reach `layer` where it is the tighter).
fn keep_best(state: &mut AlphaState, k: usize, layer: LayerBounds) -> LayerBounds {
    if state.best.len() <= k {
        state.best.resize(k + 1, None);
    }
    let out = match &state.best[k] {
        None => layer,
        Some(best) => LayerBounds {
            lower: layer.lower.maximum(&best.lower),
            upper: layer.upper.minimum(&best.upper),
        },
    };
    state.best[k] = Some(LayerBounds {
        lower: out.lower.detach(),
        upper: out.upper.detach(),
    });
    out
}

/// Per-row bounds `[rows]` (one row per point and class j ≠ y) laid out as `[points, classes]`
/// with 0 at j = y, differentiably (a gather from the rows and one zero).
pub(crate) fn spread_margins(lower: &Tensor, labels: &[usize], js: &[usize], k: usize) -> Tensor {
    let rows = lower.dim(0);
    let zero = Tensor::zeros(&[1, 1])
        .to_device(lower.device())
        .unwrap_or_else(|e| panic!("uploading a zero failed: {e}"));
    let with_zero = Tensor::concat(&[&lower.reshape(&[rows, 1]), &zero], 0);
    let mut index = vec![rows; labels.len() * k];
    for (r, &j) in js.iter().enumerate() {
        let p = r / (k - 1);
        index[p * k + j] = r;
    }
    with_zero.index_rows(&index).reshape(&[labels.len(), k])
}

/// Layer bounds where CROWN's `lb` (rows (point, neuron, sign): lower bounds of `sign·z`)
/// tightens interval bounds `ibp`: each neuron keeps the tighter lower and upper bound. A gather
/// from the interval bounds and the rows, so gradients reach both.
fn tighten(ibp: &LayerBounds, rows: &[Row], lb: &Tensor, neurons: usize) -> LayerBounds {
    let points = ibp.lower.dim(0);
    let total = points * neurons;
    let flat_l = ibp.lower.reshape(&[total, 1]);
    let flat_u = ibp.upper.reshape(&[total, 1]);
    let mut lower_from = vec![None; total];
    let mut upper_from = vec![None; total];
    for (r, &(p, i, s)) in rows.iter().enumerate() {
        if s > 0.0 {
            lower_from[p * neurons + i] = Some(r);
        } else {
            upper_from[p * neurons + i] = Some(r);
        }
    }
    let lb = lb.reshape(&[rows.len(), 1]);
    let pick = |flat: &Tensor, from: &[Option<usize>], lower: bool| {
        // Rows' bounds against the interval bound of their neuron: keep the tighter.
        let idx: Vec<usize> = from.iter().flatten().copied().collect();
        if idx.is_empty() {
            return flat.reshape(&[points, neurons]);
        }
        let where_: Vec<usize> = (0..total).filter(|&e| from[e].is_some()).collect();
        let row_vals = lb.index_rows(&idx);
        let ibp_vals = flat.index_rows(&where_);
        let tight = if lower {
            row_vals.maximum(&ibp_vals)
        } else {
            row_vals.neg().minimum(&ibp_vals)
        };
        let all = Tensor::concat(&[flat, &tight], 0);
        let mut index: Vec<usize> = (0..total).collect();
        for (pos, &e) in where_.iter().enumerate() {
            index[e] = total + pos;
        }
        all.index_rows(&index).reshape(&[points, neurons])
    };
    LayerBounds {
        lower: pick(&flat_l, &lower_from, true),
        upper: pick(&flat_u, &upper_from, false),
    }
}

/// CROWN (or CROWN-IBP) margin lower bounds `[points, classes]` (0 at j = y) of the boxes
/// `[lo, hi]`, without gradients.
pub fn crown_margins(
    net: &BoundNet,
    lo: &Tensor,
    hi: &Tensor,
    labels: &[usize],
    mode: Intermediate,
    budget: usize,
) -> Tensor {
    with_no_grad(|| {
        let b = Bounder {
            net,
            lo: lo.clone(),
            hi: hi.clone(),
            mode,
            budget,
        };
        let bounds = b.layer_bounds(None);
        b.margins(labels, &bounds, None)
    })
}

#[cfg(test)]
mod tests {
    //! Rows started past the first affine layer give the bounds of one-hot rows sent back through
    //! every step.

    use super::*;
    use crate::nn::{Arch, Layer, Model, ModelSpec, Normalization};
    use crate::rng::Rng;

    #[test]
    fn start_rows_match_one_hot_rows() {
        for (arch, input) in [
            (Arch::Mlp, [1, 4, 4]),
            (Arch::Small, [1, 9, 9]),
            (Arch::Cnn7, [2, 5, 5]),
        ] {
            let mut rng = Rng::seed(3);
            let mut spec = ModelSpec::new(arch, input, 3);
            spec.width = 0.125;
            spec.normalization = Some(Normalization {
                mean: vec![0.5; input[0]],
                std: vec![0.25; input[0]],
            });
            let mut model = Model::new(spec, &mut rng).unwrap();
            for layer in &mut model.net.layers {
                if let Layer::BatchNorm(b) = layer {
                    let c = b.channels();
                    b.weight = Tensor::rand_uniform(&[c], -1.5, 1.5, &mut rng);
                    b.bias = Tensor::rand_uniform(&[c], -0.5, 0.5, &mut rng);
                    b.running_mean = Tensor::rand_uniform(&[c], -0.5, 0.5, &mut rng);
                }
            }
            let net = BoundNet::new(&model).unwrap();
            let x = Tensor::rand_uniform(&[2, input[0], input[1], input[2]], 0.0, 1.0, &mut rng);
            let (lo, hi) = (x.add_scalar(-0.1), x.add_scalar(0.1));
            let b = Bounder {
                net: &net,
                lo: lo.clone(),
                hi: hi.clone(),
                mode: Intermediate::Ibp,
                budget: 1 << 30,
            };
            let bounds = b.layer_bounds(None);
            let stability: Vec<Stability> = bounds.iter().map(Stability::of).collect();
            for k in 0..net.relu_count() {
                let n = net.relu_size(k);
                let rows: Vec<Row> = (0..n)
                    .step_by(3)
                    .flat_map(|i| [(0, i, 1.0), (1, i, -1.0)])
                    .collect();
                let point_of_row: Vec<usize> = rows.iter().map(|r| r.0).collect();
                let mut relaxer =
                    |j: usize| relax(&net, &bounds[j], &stability[j], &point_of_row, None);
                let (a, bias, from) = start_rows(&net, k, &rows);
                let (a, bias) = backward(&net, from, a, bias, &mut relaxer, None);
                let fast = concretize(&a, &bias, &lo, &hi, &point_of_row).to_vec();
                let mut one_hot = vec![0.0f32; rows.len() * n];
                for (r, &(_, i, s)) in rows.iter().enumerate() {
                    one_hot[r * n + i] = s;
                }
                let mut shape = vec![rows.len()];
                shape.extend_from_slice(net.relu_shape(k));
                let (a, bias) = backward(
                    &net,
                    net.relus[k],
                    Tensor::from_vec(one_hot, &shape),
                    Tensor::zeros(&[rows.len()]),
                    &mut relaxer,
                    None,
                );
                let slow = concretize(&a, &bias, &lo, &hi, &point_of_row).to_vec();
                for (f, s) in fast.iter().zip(&slow) {
                    assert!(
                        (f - s).abs() <= 1e-5 * (1.0 + s.abs()),
                        "{} layer {k}: {f} vs {s}",
                        arch.name()
                    );
                }
            }
        }
    }
}
