//! Projected gradient descent (ascent on the loss) in an axis-aligned box: the L-inf ball of
//! radius ε around the input intersected with the pixel range [0, 1], or any box a caller
//! (SABR) hands in. Sign-gradient steps, projection after each, optional random start, restarts
//! and per-sample best iterate.

pub(crate) mod cuda;
pub mod launch;

use crate::attack::AttackLoss;
use crate::autodiff;
use crate::nn::{Mode, Model};
use crate::rng::Rng;
use crate::tensor::{Device, Tensor};

/// Piecewise-constant step-size decay: the step is multiplied by `factor` once each listed
/// count of completed steps is reached. Counts, not fractions, so that the schedule reads
/// exactly as the reference implementations state it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepDecay {
    /// 1-based counts of completed steps after which the step shrinks (repeats compound).
    pub after: Vec<usize>,
    pub factor: f32,
}

impl StepDecay {
    /// A constant step.
    pub fn none() -> StepDecay {
        StepDecay {
            after: Vec::new(),
            factor: 1.0,
        }
    }

    /// Decay after `ceil(f · steps)` completed steps for each fraction `f` — how SABR's
    /// reference derives its milestones (0.5, 0.8, 0.9 of 8 steps give 4, 7, 8).
    pub fn at_fractions(steps: usize, fractions: &[f64], factor: f32) -> StepDecay {
        let after = fractions
            .iter()
            // Round away float noise first (0.3 · 10 must give 3, not 4).
            .map(|f| ((f * steps as f64 * 1e6).round() / 1e6).ceil() as usize)
            .collect();
        StepDecay { after, factor }
    }

    /// The multiplier of the base step once `completed` steps are done.
    pub fn multiplier(&self, completed: usize) -> f32 {
        self.after
            .iter()
            .filter(|&&m| completed >= m)
            .fold(1.0, |s, _| s * self.factor)
    }
}

/// How to run PGD.
#[derive(Clone, Debug, PartialEq)]
pub struct PgdConfig {
    /// Gradient steps per restart.
    pub steps: usize,
    pub restarts: usize,
    /// Base step as a fraction of the region's ε.
    pub step_size: f32,
    pub decay: StepDecay,
    /// The objective of each restart, cycled: restart r uses `losses[r % losses.len()]`.
    pub losses: Vec<AttackLoss>,
    /// Start each restart uniformly at random in the box (else at the clean point).
    pub random_start: bool,
    /// Return each sample's highest-loss point among the clean point and every iterate
    /// (else among the restarts' final iterates), so the attack never does worse than x.
    /// Losses of restarts with different objectives are compared as plain numbers.
    pub keep_best: bool,
}

impl PgdConfig {
    /// SABR's attack (its reference implementation): 8 steps of 0.5·ε, ×0.1 after steps 4, 7
    /// and 8, one restart, CE, random start, keep the highest-loss iterate.
    pub fn sabr() -> PgdConfig {
        let steps = 8;
        PgdConfig {
            steps,
            restarts: 1,
            step_size: 0.5,
            decay: StepDecay::at_fractions(steps, &[0.5, 0.8, 0.9], 0.1),
            losses: vec![AttackLoss::Ce],
            random_start: true,
            keep_best: true,
        }
    }

    /// The evaluation attack (DESIGN "Evaluation PGD"): 20 steps of 0.25·ε halved at 50% and
    /// 75% of the steps; two restarts, margin loss then CE.
    pub fn evaluation() -> PgdConfig {
        let steps = 20;
        PgdConfig {
            steps,
            restarts: 2,
            step_size: 0.25,
            decay: StepDecay::at_fractions(steps, &[0.5, 0.75], 0.5),
            losses: vec![AttackLoss::Margin, AttackLoss::Ce],
            random_start: true,
            keep_best: true,
        }
    }

    /// Step size, as a fraction of ε, of the step taken after `completed` steps (0-based).
    pub fn step_size_at(&self, completed: usize) -> f32 {
        self.step_size * self.decay.multiplier(completed)
    }

    /// The objective of restart `r`.
    pub fn loss_for_restart(&self, r: usize) -> AttackLoss {
        assert!(!self.losses.is_empty(), "PgdConfig needs at least one loss");
        self.losses[r % self.losses.len()]
    }
}

/// The box an attack searches, `lo ≤ x' ≤ hi` element-wise, and the ε its steps are scaled by.
#[derive(Clone, Debug)]
pub struct Region {
    pub lo: Tensor,
    pub hi: Tensor,
    pub eps: f32,
}

impl Region {
    /// A box with explicit bounds (SABR's clipped ε-box); `eps` scales the steps.
    pub fn new(lo: Tensor, hi: Tensor, eps: f32) -> Region {
        assert_eq!(lo.shape(), hi.shape(), "region bounds differ in shape");
        assert!(
            lo.data().iter().zip(hi.data()).all(|(l, h)| l <= h),
            "region with lo > hi (or NaN bounds)"
        );
        assert!(eps.is_finite() && eps >= 0.0, "eps must be ≥ 0, got {eps}");
        Region {
            lo: lo.detach(),
            hi: hi.detach(),
            eps,
        }
    }

    /// The L-inf ball of radius `eps` around `x` within the pixel range [0, 1].
    pub fn linf_ball(x: &Tensor, eps: f32) -> Region {
        assert!(eps.is_finite() && eps >= 0.0, "eps must be ≥ 0, got {eps}");
        let lo = x.data().iter().map(|&v| (v - eps).max(0.0)).collect();
        let hi = x.data().iter().map(|&v| (v + eps).min(1.0)).collect();
        Region::new(
            Tensor::from_vec(lo, x.shape()),
            Tensor::from_vec(hi, x.shape()),
            eps,
        )
    }

    /// Whether every element of `x` lies in the box.
    pub fn contains(&self, x: &Tensor) -> bool {
        x.shape() == self.lo.shape()
            && x.data()
                .iter()
                .zip(self.lo.data().iter().zip(self.hi.data()))
                .all(|(v, (l, h))| l <= v && v <= h)
    }

    /// The rows (samples) at `indices`, so an attack can run on a subset of a batch.
    pub fn index_rows(&self, indices: &[usize]) -> Region {
        let _guard = autodiff::no_grad();
        Region {
            lo: self.lo.index_rows(indices),
            hi: self.hi.index_rows(indices),
            eps: self.eps,
        }
    }

    /// The point of the box nearest to `x`.
    fn project(&self, x: &Tensor) -> Vec<f32> {
        x.data()
            .iter()
            .zip(self.lo.data().iter().zip(self.hi.data()))
            .map(|(&v, (&l, &h))| v.max(l).min(h))
            .collect()
    }

    /// A uniform sample of the box.
    fn sample(&self, rng: &mut Rng) -> Vec<f32> {
        self.lo
            .data()
            .iter()
            .zip(self.hi.data())
            .map(|(&l, &h)| (l + (h - l) * rng.uniform()).min(h))
            .collect()
    }

    /// One signed step of size `step` along `grad`, projected back into the box. A zero or
    /// NaN gradient entry leaves its pixel where it is.
    fn step(&self, x: &[f32], grad: &[f32], step: f32) -> Vec<f32> {
        x.iter()
            .zip(grad)
            .zip(self.lo.data().iter().zip(self.hi.data()))
            .map(|((&v, &g), (&l, &h))| {
                let s = if g > 0.0 {
                    step
                } else if g < 0.0 {
                    -step
                } else {
                    0.0
                };
                (v + s).max(l).min(h)
            })
            .collect()
    }
}

/// What an attack found, per sample.
#[derive(Clone, Debug)]
pub struct PgdOutcome {
    /// The returned points (see `PgdConfig::keep_best`), inside the region.
    pub x_adv: Tensor,
    /// The loss at `x_adv` (of the restart that found it).
    pub loss: Vec<f32>,
    /// Whether any point the attack evaluated was misclassified (argmax ≠ label). The evaluated
    /// points include the clean one when `keep_best` is on.
    pub fooled: Vec<bool>,
}

/// PGD on `model` around the batch `x` [N, C, H, W] with labels `y`, inside `region`; returns
/// the adversarial batch (see `pgd_outcome` for losses and misclassification flags).
///
/// `mode` is the batch-norm mode of the attack's forward passes (SABR: `Mode::Eval`). Needs
/// gradients enabled: do not call it under `autodiff::no_grad()`.
pub fn pgd(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    region: &Region,
    cfg: &PgdConfig,
    mode: Mode,
    rng: &mut Rng,
) -> Tensor {
    pgd_outcome(model, x, y, region, cfg, mode, rng).x_adv
}

/// `pgd` for a search whose returned point alone matters (SABR's centre), not its flags: in
/// eval mode on the CPU it runs on the network with batch norm folded into the layer before it
/// (`Model::with_batchnorm_folded`: one memory pass fewer per batch-norm layer and step; the
/// point can move by rounding only). On the GPU the fold would copy the weights at every call,
/// more than it saves, so the network runs as it is.
pub fn pgd_search(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    region: &Region,
    cfg: &PgdConfig,
    mode: Mode,
    rng: &mut Rng,
) -> Tensor {
    if mode == Mode::Eval && !runs_on_gpu(x, model) {
        pgd(&model.with_batchnorm_folded(), x, y, region, cfg, mode, rng)
    } else {
        pgd(model, x, y, region, cfg, mode, rng)
    }
}

/// Whether an attack on `x` against `model` runs on the GPU: when the batch or any weight is
/// there.
fn runs_on_gpu(x: &Tensor, model: &Model) -> bool {
    x.is_cuda()
        || model
            .net
            .named_parameters()
            .iter()
            .any(|(_, p)| p.is_cuda())
}

/// `pgd`, with each sample's loss and whether the attack misclassified it.
pub fn pgd_outcome(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    region: &Region,
    cfg: &PgdConfig,
    mode: Mode,
    rng: &mut Rng,
) -> PgdOutcome {
    run(model, x, y, region, cfg, mode, rng, false)
}

/// Per-sample best point so far: on the host, or on the GPU beside the iterates, where the loop
/// then never waits for the device.
enum Best {
    Host {
        x: Vec<f32>,
        loss: Vec<f32>,
        fooled: Vec<bool>,
        row_len: usize,
    },
    Gpu(cuda::DeviceBest),
}

impl Best {
    /// `start` (the clean points, one row per label) as the best so far, losses −∞, nothing
    /// fooled.
    fn new(start: Vec<f32>, y: &[usize], classes: usize, on_gpu: bool) -> Best {
        let n = y.len();
        if on_gpu && n > 0 {
            return Best::Gpu(cuda::DeviceBest::new(&start, y, classes));
        }
        Best::Host {
            row_len: start.len().checked_div(n).unwrap_or(0),
            x: start,
            loss: vec![f32::NEG_INFINITY; n],
            fooled: vec![false; n],
        }
    }

    /// Record the points `x` with their logits and per-sample losses: a misclassified sample is
    /// fooled; with `keep`, a sample whose loss beats its best takes the point.
    fn offer(&mut self, x: &Tensor, logits: &Tensor, loss: &Tensor, y: &[usize], keep: bool) {
        match self {
            Best::Host {
                x: best,
                loss: best_loss,
                fooled,
                row_len,
            } => {
                let loss = loss.data();
                for (i, pred) in logits.argmax_rows().into_iter().enumerate() {
                    fooled[i] |= pred != y[i];
                    if keep && loss[i] > best_loss[i] {
                        best_loss[i] = loss[i];
                        let r = i * *row_len..(i + 1) * *row_len;
                        best[r.clone()].copy_from_slice(&x.data()[r]);
                    }
                }
            }
            Best::Gpu(d) => d.offer(x, logits, loss, keep),
        }
    }

    fn all_fooled(&self) -> bool {
        match self {
            Best::Host { fooled, .. } => fooled.iter().all(|&f| f),
            Best::Gpu(d) => d.all_fooled(),
        }
    }

    fn finish(self, shape: &[usize]) -> PgdOutcome {
        let (x_adv, loss, fooled) = match self {
            Best::Host {
                x, loss, fooled, ..
            } => (Tensor::from_vec(x, shape), loss, fooled),
            Best::Gpu(d) => d.finish(shape),
        };
        PgdOutcome {
            x_adv,
            loss,
            fooled,
        }
    }
}

/// Where the attack's iterates live: on the GPU when the batch or the network is there (the
/// signed step then runs there too, `pgd.cu`'s `pgd_step`), else on the host.
enum Iterates {
    Host,
    Gpu { lo: Tensor, hi: Tensor },
}

impl Iterates {
    fn new(x: &Tensor, model: &Model, region: &Region) -> Iterates {
        if !runs_on_gpu(x, model) {
            return Iterates::Host;
        }
        let up = |t: &Tensor| {
            t.to_device(Device::Cuda)
                .unwrap_or_else(|e| panic!("PGD: copying the region to the GPU: {e}"))
        };
        Iterates::Gpu {
            lo: up(&region.lo),
            hi: up(&region.hi),
        }
    }

    fn point(&self, values: Vec<f32>, shape: &[usize]) -> Tensor {
        let t = Tensor::from_vec(values, shape);
        match self {
            Iterates::Host => t,
            Iterates::Gpu { .. } => t
                .to_device(Device::Cuda)
                .unwrap_or_else(|e| panic!("PGD: copying a start point to the GPU: {e}")),
        }
    }

    /// One signed step of size `step` along `grad`, projected into the region.
    fn step(&self, region: &Region, point: &Tensor, grad: &Tensor, step: f32) -> Tensor {
        match self {
            Iterates::Host => {
                Tensor::from_vec(region.step(point.data(), grad.data(), step), point.shape())
            }
            Iterates::Gpu { lo, hi } => cuda::pgd_step(point, grad, lo, hi, step),
        }
    }
}

/// The attack loop. `stop_early` ends it once every sample is misclassified (evaluation, where
/// only the flags matter).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    model: &Model,
    x: &Tensor,
    y: &[usize],
    region: &Region,
    cfg: &PgdConfig,
    mode: Mode,
    rng: &mut Rng,
    stop_early: bool,
) -> PgdOutcome {
    assert!(
        autodiff::is_grad_enabled(),
        "PGD needs input gradients: do not run it under autodiff::no_grad()"
    );
    assert!(x.rank() >= 1, "PGD needs a batch, got a scalar");
    let n = x.dim(0);
    assert_eq!(y.len(), n, "PGD: {n} inputs, {} labels", y.len());
    assert_eq!(
        x.shape(),
        region.lo.shape(),
        "PGD: input and region differ in shape"
    );
    // Constant weights: the attack's backward computes input gradients only.
    let model = &model.detached();
    let shape = x.shape().to_vec();
    let x = x.detach();
    let clean = region.project(&x);
    let iterates = Iterates::new(&x, model, region);
    let on_gpu = matches!(iterates, Iterates::Gpu { .. });
    let mut best = Best::new(clean.clone(), y, model.spec.num_classes, on_gpu);
    if n == 0 {
        return best.finish(&shape);
    }
    let forward_loss = |v: &Tensor, loss: AttackLoss| {
        let logits = model.forward(v, mode);
        let l = loss.per_sample(&logits, y);
        (logits, l)
    };

    'restarts: for r in 0..cfg.restarts {
        let loss_kind = cfg.loss_for_restart(r);
        let mut cur = if cfg.random_start {
            if cfg.keep_best && r == 0 {
                // The clean point is a candidate too (iterate 0 is not it with a random start).
                let _g = autodiff::no_grad();
                let start = iterates.point(clean.clone(), &shape);
                let (logits, l) = forward_loss(&start, loss_kind);
                best.offer(&start, &logits, &l, y, true);
            }
            iterates.point(region.sample(rng), &shape)
        } else {
            iterates.point(clean.clone(), &shape)
        };
        for k in 0..=cfg.steps {
            let last = k == cfg.steps;
            let point = cur;
            let (logits, loss, grad) = if last {
                let _g = autodiff::no_grad();
                let (logits, l) = forward_loss(&point, loss_kind);
                (logits, l, None)
            } else {
                // A fresh leaf each step: the only one in the graph, as the weights are constants.
                let leaf = point.requires_grad();
                let (logits, l) = forward_loss(&leaf, loss_kind);
                let mut grads = l.sum().backward();
                let g = grads
                    .remove(&leaf)
                    .unwrap_or_else(|| Tensor::zeros(leaf.shape()));
                (logits.detach(), l.detach(), Some(g))
            };
            best.offer(&point, &logits, &loss, y, cfg.keep_best || last);
            if stop_early && best.all_fooled() {
                break 'restarts;
            }
            cur = match grad {
                Some(g) => iterates.step(region, &point, &g, cfg.step_size_at(k) * region.eps),
                None => break,
            };
        }
    }
    best.finish(&shape)
}
