//! Evaluation as the paper reports it: clean, PGD and certified accuracy on a test set (by a
//! cascade of certifiers, `verify`),
//! the grid of compression settings (`grid`), and the reports (`report`, `plot`) that hold one
//! row per setting.

pub mod grid;
pub mod plot;
pub mod report;

pub use grid::{evaluate_grid, grid, recalibrate_bn, Recalibration, Setting};
pub use report::{parse_shard, Report, Row};

use crate::attack::{pgd_robust_flags, PgdConfig};
use crate::autodiff;
use crate::bounds::certified_rows;
use crate::data::Dataset;
use crate::nn::Model;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::verify::bab::verify_point;
use crate::verify::{margin_bounds, BoundNet, Certifier, Verdict, VerifyConfig};
use crate::{Error, Result};
use std::time::Instant;

/// Per-point outcomes; certified ⊆ PGD-robust ⊆ clean-correct, point by point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcomes {
    pub clean: Vec<bool>,
    pub pgd: Vec<bool>,
    /// Certified by the cascade (its strongest certifier).
    pub certified: Vec<bool>,
    /// Per certifier of the cascade, in order: the points it or a weaker one certified, and
    /// the seconds it ran.
    pub by_certifier: Vec<CertifierOutcome>,
    /// One record per (point, certifier that ran on it), when `EvalConfig::per_point` is set.
    pub points: Vec<PointRecord>,
}

/// What one certifier of the cascade achieved.
#[derive(Clone, Debug, PartialEq)]
pub struct CertifierOutcome {
    pub certifier: Certifier,
    /// Certified by this certifier or a weaker one before it, per point.
    pub certified: Vec<bool>,
    pub seconds: f64,
}

/// One certifier's result on one point (`--per-point`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PointRecord {
    /// The report row (set by the grid; 0 for a single evaluation).
    pub row: usize,
    pub compression: String,
    /// Position of the point in the test split.
    pub index: usize,
    pub label: usize,
    pub certifier: String,
    /// Lower bounds of z_y − z_j per class j (None at j = y, and where the certifier gives none).
    pub lower: Vec<Option<f32>>,
    /// `verified`, `falsified` (misclassified, or a counterexample found by branch and bound),
    /// `attacked` (PGD found an adversarial input) or `unknown`.
    pub verdict: String,
    /// Seconds spent on the point (a batched certifier's batch time shared evenly).
    pub seconds: f64,
}

impl Outcomes {
    pub fn len(&self) -> usize {
        self.clean.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clean.is_empty()
    }

    fn fraction(flags: &[bool]) -> f64 {
        if flags.is_empty() {
            return 0.0;
        }
        flags.iter().filter(|&&f| f).count() as f64 / flags.len() as f64
    }

    pub fn clean_accuracy(&self) -> f64 {
        Self::fraction(&self.clean)
    }

    pub fn pgd_accuracy(&self) -> f64 {
        Self::fraction(&self.pgd)
    }

    pub fn certified_accuracy(&self) -> f64 {
        Self::fraction(&self.certified)
    }

    /// Certified accuracy of the cascade up to certifier number `k`.
    pub fn certified_accuracy_by(&self, k: usize) -> f64 {
        Self::fraction(&self.by_certifier[k].certified)
    }
}

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub eps: f32,
    pub batch_size: usize,
    pub attack: PgdConfig,
    /// Seed of the attack's random starts.
    pub seed: u64,
    /// The certifier cascade, weakest first: the first runs on every point, each next one only
    /// on the correct points that the ones before left uncertified and PGD did not break.
    pub certifiers: Vec<Certifier>,
    pub verify: VerifyConfig,
    /// Keep one record per point and certifier (`Outcomes::points`).
    pub per_point: bool,
    /// Added to positions in the data set to give `PointRecord::index` (a shard's start).
    pub index_offset: usize,
}

impl EvalConfig {
    pub fn new(eps: f32) -> EvalConfig {
        EvalConfig {
            eps,
            batch_size: 256,
            attack: PgdConfig::evaluation(),
            seed: 0,
            certifiers: vec![Certifier::Ibp],
            verify: VerifyConfig::default(),
            per_point: false,
            index_offset: 0,
        }
    }
}

/// Check a certifier cascade: non-empty, no repeats, weakest first.
pub fn check_cascade(certifiers: &[Certifier]) -> Result<()> {
    if certifiers.is_empty() {
        return Err(Error::Invalid(
            "--certifier needs at least one certifier".into(),
        ));
    }
    if certifiers.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::Invalid(format!(
            "--certifier lists a cascade from the weakest to the strongest without repeats \
             (ibp, crown-ibp, crown, alpha-crown, bab), got {}",
            certifiers
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(",")
        )));
    }
    Ok(())
}

/// Evaluate `model` (batch norm in eval mode) on every point of `data`; `progress` is called
/// with the number of points done after each batch.
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    cfg: &EvalConfig,
    mut progress: impl FnMut(usize),
) -> Result<Outcomes> {
    if !(cfg.eps.is_finite() && cfg.eps >= 0.0) {
        return Err(Error::Invalid(format!(
            "--eps must be ≥ 0, got {}",
            cfg.eps
        )));
    }
    if cfg.batch_size == 0 {
        return Err(Error::Invalid("batch size must be positive".into()));
    }
    if data.is_empty() {
        // Accuracies of no points would print as 0%, an answer that is not one.
        return Err(Error::Invalid(format!(
            "dataset {} has no test points to evaluate",
            data.name
        )));
    }
    check_cascade(&cfg.certifiers)?;
    if data.shape != model.spec.input_shape {
        return Err(Error::Shape(format!(
            "the model takes {:?} inputs, dataset {} has {:?} images",
            model.spec.input_shape, data.name, data.shape
        )));
    }
    if let Some(&bad) = data.labels.iter().find(|&&l| l >= model.spec.num_classes) {
        return Err(Error::Invalid(format!(
            "dataset {} has label {bad}, the model has {} classes",
            data.name, model.spec.num_classes
        )));
    }
    let model = &model.detached();
    let net = BoundNet::new(model)?;
    let mut rng = Rng::seed(cfg.seed);
    let mut out = Outcomes {
        by_certifier: cfg
            .certifiers
            .iter()
            .map(|&certifier| CertifierOutcome {
                certifier,
                certified: Vec::new(),
                seconds: 0.0,
            })
            .collect(),
        ..Outcomes::default()
    };
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(cfg.batch_size) {
        let (x, y) = data.batch(chunk);
        let first = chunk[0] + cfg.index_offset;
        let batch = evaluate_batch(model, &net, &x, &y, cfg, &mut rng).map_err(|e| {
            Error::Invalid(format!("test points {first}..{}: {e}", first + chunk.len()))
        })?;
        out.clean.extend(&batch.clean);
        out.pgd.extend(&batch.pgd);
        out.certified.extend(&batch.certified);
        for (all, one) in out.by_certifier.iter_mut().zip(batch.by_certifier) {
            all.certified.extend(one.certified);
            all.seconds += one.seconds;
        }
        out.points.extend(batch.points.into_iter().map(|mut p| {
            p.index = chunk[p.index] + cfg.index_offset;
            p
        }));
        progress(out.len());
    }
    debug_assert!(
        (0..out.len()).all(|i| (!out.certified[i] || out.pgd[i]) && (!out.pgd[i] || out.clean[i]))
    );
    Ok(out)
}

/// One batch through the cascade: the first certifier on every point, PGD on the correct points
/// it leaves uncertified, each next certifier on what is still open. `PointRecord::index` is the
/// position in the batch.
fn evaluate_batch(
    model: &Model,
    net: &BoundNet,
    x: &Tensor,
    y: &[usize],
    cfg: &EvalConfig,
    rng: &mut Rng,
) -> Result<Outcomes> {
    let n = y.len();
    let k = model.spec.num_classes;
    // A NaN is no class: where the network's values are not finite the evaluation stops rather
    // than count whatever argmax or a comparison with NaN happens to give.
    autodiff::with_no_grad(|| model.forward_checked(x, crate::nn::Mode::Eval))?;
    let mut points = Vec::new();
    let mut record = |index: usize, c: Certifier, lower: Option<&[f32]>, verdict: &str, s: f64| {
        if cfg.per_point {
            points.push(PointRecord {
                row: 0,
                compression: String::new(),
                index,
                label: y[index],
                certifier: c.name().into(),
                lower: (0..k)
                    .map(|j| lower.filter(|_| j != y[index]).map(|l| l[j]))
                    .collect(),
                verdict: verdict.into(),
                seconds: s,
            });
        }
    };
    let mut by_certifier = Vec::new();
    let mut certified = vec![false; n];
    // The latest bounds of each point: branch and bound skips the specifications they prove.
    let mut latest: Vec<Option<Vec<f32>>> = vec![None; n];
    let mut flags: Option<crate::attack::RobustFlags> = None;
    for &certifier in &cfg.certifiers {
        // The first certifier bounds every point; later ones the correct, uncertified points
        // that PGD did not break.
        let todo: Vec<usize> = match &flags {
            None => (0..n).collect(),
            Some(f) => (0..n).filter(|&i| f.robust[i] && !certified[i]).collect(),
        };
        let start = Instant::now();
        let mut lowers: Vec<Option<Vec<f32>>> = vec![None; todo.len()];
        let mut verdicts: Vec<Option<Verdict>> = vec![None; todo.len()];
        let mut seconds_each = vec![0.0; todo.len()];
        if !todo.is_empty() {
            if certifier == Certifier::Bab {
                for (t, &i) in todo.iter().enumerate() {
                    let one = Instant::now();
                    let xi = autodiff::with_no_grad(|| x.index_rows(&[i]));
                    let known = latest[i].as_deref();
                    let out = verify_point(model, net, &xi, y[i], cfg.eps, known, &cfg.verify)?;
                    seconds_each[t] = one.elapsed().as_secs_f64();
                    lowers[t] = Some(out.lower);
                    verdicts[t] = Some(out.verdict);
                }
            } else {
                let xs = autodiff::with_no_grad(|| x.index_rows(&todo));
                let ys: Vec<usize> = todo.iter().map(|&i| y[i]).collect();
                let m = margin_bounds(model, net, &xs, &ys, cfg.eps, certifier, &cfg.verify)?;
                let share = start.elapsed().as_secs_f64() / todo.len() as f64;
                for t in 0..todo.len() {
                    lowers[t] = Some(m[t * k..(t + 1) * k].to_vec());
                    seconds_each[t] = share;
                }
            }
        }
        // Bounds that overflowed prove nothing; branch and bound leaves −∞ where it found none.
        for (t, &i) in todo.iter().enumerate() {
            let Some(l) = &lowers[t] else { continue };
            if let Some(j) = (0..k).find(|&j| {
                j != y[i]
                    && (l[j].is_nan()
                        || l[j] == f32::INFINITY
                        || (certifier != Certifier::Bab && l[j].is_infinite()))
            }) {
                return Err(Error::Invalid(format!(
                    "{} gives the bound {} for class {j} at point {i} of the batch: the \
                     network's values are not finite in f32",
                    certifier.name(),
                    l[j]
                )));
            }
        }
        for (t, &i) in todo.iter().enumerate() {
            let proved = match &verdicts[t] {
                Some(v) => *v == Verdict::Verified,
                None => lowers[t]
                    .as_ref()
                    .is_some_and(|l| certified_rows(l, &[y[i]])[0]),
            };
            certified[i] = proved;
            if let Some(l) = &lowers[t] {
                latest[i] = Some(l.clone());
            }
        }
        // The certifier's own time (PGD, which runs after the first, is not part of it).
        let seconds = start.elapsed().as_secs_f64();
        if flags.is_none() {
            // PGD on the correct points the first certifier left open.
            flags = Some(pgd_robust_flags(
                model,
                x,
                y,
                cfg.eps,
                Some(&certified),
                &cfg.attack,
                rng,
            ));
        }
        let f = flags.as_mut().expect("set above");
        for (t, &i) in todo.iter().enumerate() {
            // A certificate counts only for a correctly classified point (it always is, unless
            // rounding makes a bound claim what the forward pass contradicts).
            certified[i] &= f.clean[i];
            let verdict = if certified[i] {
                "verified"
            } else if !f.clean[i] {
                "falsified"
            } else if let Some(Verdict::Falsified(_)) = &verdicts[t] {
                // A counterexample PGD missed: the point is not robust.
                f.robust[i] = false;
                "falsified"
            } else if !f.robust[i] {
                "attacked"
            } else {
                "unknown"
            };
            record(i, certifier, lowers[t].as_deref(), verdict, seconds_each[t]);
        }
        by_certifier.push(CertifierOutcome {
            certifier,
            certified: certified.clone(),
            seconds,
        });
    }
    let f = flags.expect("the cascade has a certifier");
    Ok(Outcomes {
        clean: f.clean,
        pgd: f.robust,
        certified,
        by_certifier,
        points,
    })
}
