//! Deciding a VNN-LIB property on a model: `sat` with a counterexample the model itself checks,
//! `unsat` from sound bounds, or `unknown`/`timeout`.
//!
//! For each case (an input box with its unsafe output region, a disjunction of conjunctions of
//! linear constraints):
//! 1. falsify: a targeted PGD per conjunction maximises its least-satisfied constraint inside
//!    the box (rounded inward, so the point lies in the file's real box); a point whose f32
//!    forward pass satisfies every constraint of a conjunction is a counterexample;
//! 2. prove: a conjunction is impossible when one of its constraints is violated over the
//!    whole box. A constraint `y_p − y_q + c ≥ 0` is refuted by a margin lower bound
//!    `lb(y_q − y_p) > c` — the margins every certifier computes; any other linear constraint
//!    by sound bounds on each output (margins against an added zero output, exact: zero and
//!    negated classifier rows) combined in interval arithmetic. The certifiers run from the
//!    cheapest (IBP, CROWN, α-CROWN), each with its f32 rounding accounted for;
//! 3. if neither, a longer attack while time remains; then `unknown`, or `timeout`.
//!
//! Branch and bound (β-CROWN) runs only when asked for with unsound bounds
//! (`VerifyConfig::sound = false`): its bounds do not account for f32 rounding yet.

use crate::autodiff::{self, with_no_grad};
use crate::nn::{Layer, Linear, Mode, Model};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::verify::bab::{verify_box, Verdict};
use crate::verify::{margin_bounds_of_box, BoundNet, Certifier, VerifyConfig};
use crate::vnnlib::{Case, Constraint, Property};
use crate::{Error, Result};
use std::time::{Duration, Instant};

/// The answer for a property, as VNN-COMP names them.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A counterexample: the input and the outputs the model computes for it.
    Sat {
        x: Vec<f32>,
        y: Vec<f32>,
    },
    Unsat,
    Unknown,
    Timeout,
}

impl Answer {
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Sat { .. } => "sat",
            Answer::Unsat => "unsat",
            Answer::Unknown => "unknown",
            Answer::Timeout => "timeout",
        }
    }
}

/// Settings of [`check_property`].
#[derive(Clone, Debug)]
pub struct PropertyConfig {
    pub timeout: Duration,
    /// The certifiers tried, in order.
    pub certifiers: Vec<Certifier>,
    pub verify: VerifyConfig,
    /// Points per attack (random starts, the first at the box's centre) and steps.
    pub restarts: usize,
    pub steps: usize,
    /// Rounds of a 4× longer attack on a property no certifier proved, time permitting.
    pub attack_rounds: usize,
    pub seed: u64,
}

impl Default for PropertyConfig {
    fn default() -> Self {
        PropertyConfig {
            timeout: Duration::from_secs(60),
            certifiers: vec![Certifier::Ibp, Certifier::Crown, Certifier::AlphaCrown],
            verify: VerifyConfig::default(),
            restarts: 8,
            steps: 40,
            attack_rounds: 2,
            seed: 0,
        }
    }
}

/// The model's outputs for one input, in f32 as the model computes them.
pub fn outputs(model: &Model, x: &[f32]) -> Vec<f32> {
    let [c, h, w] = model.spec.input_shape;
    with_no_grad(|| model.forward(&Tensor::from_vec(x.to_vec(), &[1, c, h, w]), Mode::Eval))
        .to_vec()
}

/// Whether `x` lies in `case`'s box and the model's outputs at `x` satisfy every constraint of
/// some conjunction of its unsafe region.
pub fn is_counterexample(model: &Model, case: &Case, x: &[f32]) -> Option<Vec<f32>> {
    let inside = x.len() == case.lower.len()
        && x.iter()
            .zip(case.lower.iter().zip(&case.upper))
            .all(|(v, (l, u))| l <= v && v <= u);
    if !inside {
        return None;
    }
    let y = outputs(model, x);
    case.unsafe_region
        .iter()
        .any(|conj| conj.iter().all(|c| c.holds(&y)))
        .then_some(y)
}

/// The box rounded inward by one f32 step where it has room: the file's bounds are real
/// numbers, the case's f32 box encloses them, and a counterexample must lie inside the real box.
fn inner_box(case: &Case) -> (Vec<f32>, Vec<f32>) {
    case.lower
        .iter()
        .zip(&case.upper)
        .map(|(&l, &u)| {
            if l == u {
                (l, u)
            } else {
                let (a, b) = (l.next_up(), u.next_down());
                if a <= b {
                    (a, b)
                } else {
                    (l, u)
                }
            }
        })
        .unzip()
}

/// Decide `property` on `model` (see the module documentation).
pub fn check_property(model: &Model, property: &Property, cfg: &PropertyConfig) -> Result<Answer> {
    let start = Instant::now();
    let numel: usize = model.spec.input_shape.iter().product();
    if property.num_inputs != numel || property.num_outputs != model.spec.num_classes {
        return Err(Error::Invalid(format!(
            "the property has {} inputs and {} outputs, the network {numel} inputs and {} outputs",
            property.num_inputs, property.num_outputs, model.spec.num_classes
        )));
    }
    if cfg.verify.sound {
        crate::verify::check_sound(&cfg.certifiers)?;
    }
    let mut rng = Rng::seed(cfg.seed);
    let out_of_time = || start.elapsed() >= cfg.timeout;
    // Cheap attacks on every case first: a counterexample ends the search.
    for case in &property.cases {
        if let Some(ans) = attack_case(model, case, cfg.restarts, cfg.steps, &mut rng, &out_of_time)
        {
            return Ok(ans);
        }
    }
    let net = BoundNet::new(model)?;
    let mut all_proved = true;
    for case in &property.cases {
        if out_of_time() {
            return Ok(Answer::Timeout);
        }
        match prove_case(model, &net, case, cfg, start)? {
            Proof::Proved => {}
            Proof::Open => all_proved = false,
            Proof::Counterexample(answer) => return Ok(answer),
        }
    }
    if all_proved {
        return Ok(Answer::Unsat);
    }
    // Unproved: attack harder with what time is left.
    let mut rounds = 0;
    while !out_of_time() && rounds < cfg.attack_rounds {
        for case in &property.cases {
            if let Some(ans) = attack_case(
                model,
                case,
                4 * cfg.restarts,
                4 * cfg.steps,
                &mut rng,
                &out_of_time,
            ) {
                return Ok(ans);
            }
        }
        rounds += 1;
    }
    Ok(if out_of_time() {
        Answer::Timeout
    } else {
        Answer::Unknown
    })
}

/// Targeted PGD on each conjunction of the case; a checked counterexample if one is found.
fn attack_case(
    model: &Model,
    case: &Case,
    restarts: usize,
    steps: usize,
    rng: &mut Rng,
    out_of_time: &dyn Fn() -> bool,
) -> Option<Answer> {
    let (lo, hi) = inner_box(case);
    let n = lo.len();
    let centre: Vec<f32> = lo
        .iter()
        .zip(&hi)
        .map(|(&l, &h)| (l + (h - l) * 0.5).clamp(l, h))
        .collect();
    if let Some(y) = is_counterexample(model, case, &centre) {
        return Some(Answer::Sat { x: centre, y });
    }
    let detached = model.detached();
    let [c, h, w] = model.spec.input_shape;
    let classes = model.spec.num_classes;
    for conj in &case.unsafe_region {
        if out_of_time() {
            return None;
        }
        if conj.is_empty() {
            // The whole box is unsafe: its centre is a counterexample (checked above unless
            // the model gives NaN there).
            continue;
        }
        let r = restarts.max(1);
        let mut x: Vec<f32> = centre.clone();
        for _ in 1..r {
            x.extend(
                lo.iter()
                    .zip(&hi)
                    .map(|(&l, &u)| (l + (u - l) * rng.uniform()).min(u)),
            );
        }
        let width: Vec<f32> = lo.iter().zip(&hi).map(|(&l, &u)| u - l).collect();
        for step in 0..steps {
            let xt = Tensor::from_vec(x.clone(), &[r, c, h, w]).requires_grad();
            let y = detached.forward(&xt, Mode::Eval);
            let values = y.to_vec();
            // Per point, the least-satisfied constraint: its gradient is the ascent direction.
            let mut coeff = vec![0.0f32; r * classes];
            for p in 0..r {
                let yp = &values[p * classes..(p + 1) * classes];
                if conj.iter().all(|k| k.holds(yp)) {
                    let point = x[p * n..(p + 1) * n].to_vec();
                    if let Some(y) = is_counterexample(model, case, &point) {
                        return Some(Answer::Sat { x: point, y });
                    }
                }
                let worst = conj
                    .iter()
                    .min_by(|a, b| value(a, yp).total_cmp(&value(b, yp)))
                    .expect("non-empty conjunction");
                for &(j, a) in &worst.terms {
                    coeff[p * classes + j] = a as f32;
                }
            }
            let objective = y.mul(&Tensor::from_vec(coeff, &[r, classes])).sum();
            let grads = autodiff::backward(&objective);
            let Some(g) = grads.get(&xt) else {
                break;
            };
            let g = g.to_vec();
            // Steps from a quarter of the box's width down to 1/40 of it.
            let frac = 0.25 * (1.0 - step as f32 / steps as f32) + 0.025;
            for (i, v) in x.iter_mut().enumerate() {
                let d = i % n;
                let s = frac * width[d] * g[i].signum() * (g[i] != 0.0) as u8 as f32;
                *v = (*v + s).clamp(lo[d], hi[d]);
            }
        }
        // The final iterates.
        for p in 0..r {
            let point = x[p * n..(p + 1) * n].to_vec();
            if let Some(y) = is_counterexample(model, case, &point) {
                return Some(Answer::Sat { x: point, y });
            }
        }
    }
    None
}

/// `Σ a_j y_j + c` in f64.
fn value(k: &Constraint, y: &[f32]) -> f64 {
    k.terms.iter().map(|&(j, a)| a * y[j] as f64).sum::<f64>() + k.constant
}

/// A constraint `y_p − y_q + c ≥ 0`, as (p, q).
fn as_margin(k: &Constraint) -> Option<(usize, usize)> {
    match k.terms[..] {
        [(i, a), (j, b)] if a == 1.0 && b == -1.0 => Some((i, j)),
        [(i, a), (j, b)] if a == -1.0 && b == 1.0 => Some((j, i)),
        _ => None,
    }
}

/// What the certifiers found for one case.
enum Proof {
    /// Every conjunction is impossible over the box.
    Proved,
    Open,
    /// Branch and bound's search met a counterexample (checked).
    Counterexample(Answer),
}

/// Whether every conjunction of the case is shown impossible over its box.
fn prove_case(
    model: &Model,
    net: &BoundNet,
    case: &Case,
    cfg: &PropertyConfig,
    start: Instant,
) -> Result<Proof> {
    let out_of_time = || start.elapsed() >= cfg.timeout;
    let [c, h, w] = model.spec.input_shape;
    let shape = [1, c, h, w];
    let classes = model.spec.num_classes;
    let mut open: Vec<&Vec<Constraint>> = case.unsafe_region.iter().collect();
    for &certifier in &cfg.certifiers {
        if open.is_empty() {
            break;
        }
        if out_of_time() {
            return Ok(Proof::Open);
        }
        if certifier == Certifier::Bab {
            match branch_and_bound(model, net, case, &mut open, cfg, start)? {
                Some(answer) => return Ok(Proof::Counterexample(answer)),
                None => continue,
            }
        }
        // Margin rows for every label q some open constraint compares against.
        let mut labels: Vec<usize> = open
            .iter()
            .flat_map(|conj| conj.iter().filter_map(as_margin).map(|(_, q)| q))
            .collect();
        labels.sort_unstable();
        labels.dedup();
        let margins = if labels.is_empty() {
            Vec::new()
        } else {
            let lo = case.lower.repeat(labels.len());
            let hi = case.upper.repeat(labels.len());
            let mut shape = shape;
            shape[0] = labels.len();
            margin_bounds_of_box(
                model,
                net,
                &lo,
                &hi,
                &shape,
                &labels,
                certifier,
                &cfg.verify,
            )?
        };
        let margin_lb = |p: usize, q: usize| -> f64 {
            let row = labels.iter().position(|&l| l == q).expect("label bounded");
            margins[row * classes + p] as f64
        };
        let needs_outputs = open
            .iter()
            .any(|conj| conj.iter().any(|k| as_margin(k).is_none()));
        let output_bounds = if needs_outputs {
            Some(output_bounds(
                model,
                &case.lower,
                &case.upper,
                certifier,
                &cfg.verify,
            )?)
        } else {
            None
        };
        let refuted = |k: &Constraint| -> bool {
            if let Some((p, q)) = as_margin(k) {
                // y_p − y_q + c ≥ 0 is impossible when lb(y_q − y_p) > c.
                let lb = margin_lb(p, q);
                if if k.strict {
                    lb >= k.constant
                } else {
                    lb > k.constant
                } {
                    return true;
                }
            }
            let Some((lo, hi)) = &output_bounds else {
                return false;
            };
            // The largest value of Σ a_j y_j + c over the output box, rounded up.
            let mut upper = k.constant;
            let mut magnitude = k.constant.abs();
            for &(j, a) in &k.terms {
                let t = if a >= 0.0 {
                    a * hi[j] as f64
                } else {
                    a * lo[j] as f64
                };
                upper += t;
                magnitude += t.abs();
            }
            let upper = upper + magnitude * (k.terms.len() + 2) as f64 * f64::EPSILON;
            if k.strict {
                upper <= 0.0
            } else {
                upper < 0.0
            }
        };
        open.retain(|conj| !conj.iter().any(&refuted));
    }
    Ok(if open.is_empty() {
        Proof::Proved
    } else {
        Proof::Open
    })
}

/// β-CROWN branch and bound (unsound mode only) on the open conjunctions that are robustness
/// margins `y_p − y_q ≥ 0`, one search per label q over every other class: a verified label
/// closes all of its conjunctions. A counterexample met by the search, once checked, is
/// returned.
fn branch_and_bound(
    model: &Model,
    net: &BoundNet,
    case: &Case,
    open: &mut Vec<&Vec<Constraint>>,
    cfg: &PropertyConfig,
    start: Instant,
) -> Result<Option<Answer>> {
    let robust_label = |conj: &Vec<Constraint>| match conj[..] {
        [ref k] if k.constant == 0.0 && !k.strict => as_margin(k).map(|(_, q)| q),
        _ => None,
    };
    let mut labels: Vec<usize> = open.iter().filter_map(|c| robust_label(c)).collect();
    labels.sort_unstable();
    labels.dedup();
    let [c, h, w] = model.spec.input_shape;
    for q in labels {
        let left = cfg.timeout.saturating_sub(start.elapsed()).as_secs_f64();
        if left <= 0.0 {
            break;
        }
        let mut verify = cfg.verify.clone();
        verify.bab.timeout = left;
        let corner = |v: &[f32]| Tensor::from_vec(v.to_vec(), &[1, c, h, w]).to_device(net.device);
        let outcome = verify_box(
            model,
            net,
            corner(&case.lower)?,
            corner(&case.upper)?,
            q,
            None,
            &verify,
        )?;
        match outcome.verdict {
            Verdict::Verified => open.retain(|conj| robust_label(conj) != Some(q)),
            Verdict::Falsified(x) => {
                if let Some(y) = is_counterexample(model, case, &x) {
                    return Ok(Some(Answer::Sat { x, y }));
                }
            }
            Verdict::Unknown => {}
        }
    }
    Ok(None)
}

/// Sound lower and upper bounds of every output over the box: margins against an added zero
/// output, of the model and of its negation (both exact changes of the classifier).
fn output_bounds(
    model: &Model,
    lo: &[f32],
    hi: &[f32],
    certifier: Certifier,
    cfg: &VerifyConfig,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let classes = model.spec.num_classes;
    let with_zero_output = |negate: bool| -> Result<Model> {
        let mut m = model.clone();
        let Some(Layer::Linear(last)) = m.net.layers.last_mut() else {
            return Err(Error::Invalid(
                "verification needs a network that ends with a linear layer".into(),
            ));
        };
        let sign = if negate { -1.0 } else { 1.0 };
        let hidden = last.in_features();
        let mut weight: Vec<f32> = last.weight.to_vec().iter().map(|v| sign * v).collect();
        weight.extend(std::iter::repeat_n(0.0, hidden));
        let mut bias: Vec<f32> = match &last.bias {
            Some(b) => b.to_vec().iter().map(|v| sign * v).collect(),
            None => vec![0.0; classes],
        };
        bias.push(0.0);
        *last = Linear {
            weight: Tensor::from_vec(weight, &[classes + 1, hidden]),
            bias: Some(Tensor::from_vec(bias, &[classes + 1])),
        };
        m.spec.num_classes = classes + 1;
        Ok(m)
    };
    let [c, h, w] = model.spec.input_shape;
    let shape = [1, c, h, w];
    let mut bounds = Vec::new();
    for negate in [false, true] {
        let m = with_zero_output(negate)?;
        let net = BoundNet::new(&m)?;
        // Label = the zero output: margins 0 − (±y_j).
        let row = margin_bounds_of_box(&m, &net, lo, hi, &shape, &[classes], certifier, cfg)?;
        bounds.push(row[..classes].to_vec());
    }
    // From the plain model: lb(−y_j) bounds y_j above; from the negated one: lb(y_j) below.
    let upper = bounds[0].iter().map(|&v| -v).collect();
    let lower = bounds[1].clone();
    Ok((lower, upper))
}
