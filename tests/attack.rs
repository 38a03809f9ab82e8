//! PGD: the attack never leaves ε-ball ∩ [0, 1], finds the known optimum of a linear model,
//! never does worse than the clean point with keep_best, is reproducible, follows the stated
//! step schedules, and the evaluation flags respect certified ≤ PGD-robust ≤ clean.

use cactus::attack::{
    margin_loss, per_sample_cross_entropy, pgd, pgd_outcome, pgd_robust_flags, AttackLoss,
    PgdConfig, Region, StepDecay,
};
use cactus::autodiff::with_no_grad;
use cactus::nn::{Arch, Layer, Linear, Mode, Model, ModelSpec, Sequential};
use cactus::ops::cross_entropy;
use cactus::rng::Rng;
use cactus::Tensor;

const SIDE: usize = 6;
const CLASSES: usize = 4;

fn model(arch: Arch, seed: u64) -> Model {
    let mut spec = ModelSpec::new(arch, [1, SIDE, SIDE], CLASSES);
    spec.width = 0.25;
    Model::new(spec, &mut Rng::seed(seed)).unwrap()
}

/// Pixels in [0, 1], a quarter of them exactly 0 or 1 so that clipping at the range matters.
fn batch(n: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let mut rng = Rng::seed(seed);
    let x = (0..n * SIDE * SIDE)
        .map(|_| match rng.below(8) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.uniform(),
        })
        .collect();
    let y = (0..n).map(|_| rng.below(CLASSES)).collect();
    (Tensor::from_vec(x, &[n, 1, SIDE, SIDE]), y)
}

/// Every element within [max(x − ε, 0), min(x + ε, 1)], computed here independently.
fn assert_in_ball(adv: &Tensor, x: &Tensor, eps: f32) {
    assert_eq!(adv.shape(), x.shape());
    for (i, (&a, &c)) in adv.data().iter().zip(x.data()).enumerate() {
        assert!(
            (0.0..=1.0).contains(&a) && a >= c - eps && a <= c + eps,
            "element {i}: {a} outside the {eps}-ball around {c} ∩ [0, 1]"
        );
    }
}

fn losses(model: &Model, x: &Tensor, y: &[usize], loss: AttackLoss) -> Vec<f32> {
    with_no_grad(|| loss.per_sample(&model.forward(x, Mode::Eval), y).to_vec())
}

#[test]
fn losses_match_hand_computation() {
    let logits = Tensor::from_vec(vec![1., 2., 0.5, 3., -1., 0.], &[2, 3]);
    let y = [1, 0];
    assert_eq!(margin_loss(&logits, &y).to_vec(), vec![-1.0, -3.0]);
    let ce = per_sample_cross_entropy(&logits, &y).to_vec();
    let expect = |row: [f32; 3], t: usize| row.iter().map(|v| v.exp()).sum::<f32>().ln() - row[t];
    assert!((ce[0] - expect([1., 2., 0.5], 1)).abs() < 1e-6);
    assert!((ce[1] - expect([3., -1., 0.], 0)).abs() < 1e-6);
    let mean = cross_entropy(&logits, &y).item();
    assert!(((ce[0] + ce[1]) / 2.0 - mean).abs() < 1e-6);

    // The margin's gradient: +1 at the strongest other class, −1 at the label.
    let leaf = logits.requires_grad();
    let grads = margin_loss(&leaf, &y).sum().backward();
    assert_eq!(
        grads.get(&leaf).unwrap().to_vec(),
        vec![1., -1., 0., -1., 0., 1.]
    );
}

#[test]
fn sabr_schedule_is_exact() {
    let cfg = PgdConfig::sabr();
    assert_eq!(
        (cfg.steps, cfg.restarts, cfg.random_start, cfg.keep_best),
        (8, 1, true, true)
    );
    assert_eq!(cfg.losses, vec![AttackLoss::Ce]);
    assert_eq!(cfg.decay.after, vec![4, 7, 8]);
    let expect = [0.5, 0.5, 0.5, 0.5, 0.05, 0.05, 0.05, 0.005];
    for (k, e) in expect.iter().enumerate() {
        let s = cfg.step_size_at(k);
        assert!((s - e).abs() <= 1e-6 * e, "step {k}: {s} instead of {e}");
    }
}

#[test]
fn evaluation_schedule_is_exact() {
    let cfg = PgdConfig::evaluation();
    assert_eq!((cfg.steps, cfg.restarts), (20, 2));
    assert_eq!(cfg.losses, vec![AttackLoss::Margin, AttackLoss::Ce]);
    assert_eq!(cfg.loss_for_restart(0), AttackLoss::Margin);
    assert_eq!(cfg.loss_for_restart(1), AttackLoss::Ce);
    for k in 0..20 {
        let e = match k {
            0..=9 => 0.25,
            10..=14 => 0.125,
            _ => 0.0625,
        };
        assert_eq!(cfg.step_size_at(k), e, "step {k}");
    }
    // Float noise in the fractions does not shift a milestone.
    assert_eq!(
        StepDecay::at_fractions(10, &[0.3, 0.7], 0.5).after,
        vec![3, 7]
    );
    assert_eq!(StepDecay::none().multiplier(100), 1.0);
}

/// The k-step attack without keep_best returns the k-th iterate of any longer run with the same
/// seed (the start is the only random draw and the schedule is in step counts), so checking
/// every k checks every iterate.
#[test]
fn every_iterate_stays_in_ball_and_pixel_range() {
    let (x, y) = batch(8, 1);
    for (arch, mode) in [(Arch::Mlp, Mode::Eval), (Arch::Cnn7, Mode::Train)] {
        let m = model(arch, 2);
        for eps in [0.05, 0.3, 2.0] {
            let region = Region::linf_ball(&x, eps);
            for loss in [AttackLoss::Margin, AttackLoss::Ce] {
                for random_start in [true, false] {
                    let mut moved = false;
                    for steps in 0..=5 {
                        let cfg = PgdConfig {
                            steps,
                            restarts: 1,
                            step_size: 0.7,
                            decay: StepDecay::none(),
                            losses: vec![loss],
                            random_start,
                            keep_best: false,
                        };
                        let adv = pgd(&m, &x, &y, &region, &cfg, mode, &mut Rng::seed(3));
                        assert_in_ball(&adv, &x, eps);
                        assert!(region.contains(&adv));
                        moved |= !adv.bit_eq(&x);
                    }
                    assert!(moved, "the attack never moved");
                }
            }
            let adv = pgd(
                &m,
                &x,
                &y,
                &region,
                &PgdConfig::sabr(),
                mode,
                &mut Rng::seed(4),
            );
            assert_in_ball(&adv, &x, eps);
        }
    }
}

#[test]
fn explicit_box_is_respected() {
    let m = model(Arch::Mlp, 5);
    let (x, y) = batch(6, 6);
    // SABR-style: a box that is not centred on x.
    let lo = Tensor::from_vec(
        x.data().iter().map(|v| (v - 0.2).max(0.0)).collect(),
        x.shape(),
    );
    let hi = Tensor::from_vec(
        x.data().iter().map(|v| (v + 0.05).min(1.0)).collect(),
        x.shape(),
    );
    let region = Region::new(lo.clone(), hi.clone(), 0.2);
    let adv = pgd(
        &m,
        &x,
        &y,
        &region,
        &PgdConfig::sabr(),
        Mode::Eval,
        &mut Rng::seed(1),
    );
    for ((a, l), h) in adv.data().iter().zip(lo.data()).zip(hi.data()) {
        assert!(l <= a && a <= h);
    }
}

/// One linear layer [2, d]: the margin z_j − z_y is linear in x, so its maximum over the box is
/// the corner x* = clamp(x + ε·sign(w_j − w_y), 0, 1); CE is increasing in the margin.
#[test]
fn linear_model_reaches_analytic_optimum() {
    let d = SIDE * SIDE;
    let mut rng = Rng::seed(7);
    let w = Tensor::rand_uniform(&[2, d], -1.0, 1.0, &mut rng);
    let b = Tensor::rand_uniform(&[2], -0.1, 0.1, &mut rng);
    let lin = Model {
        spec: ModelSpec::new(Arch::Mlp, [1, SIDE, SIDE], 2),
        net: Sequential::new(vec![
            Layer::Flatten,
            Layer::Linear(Linear {
                weight: w.requires_grad(),
                bias: Some(b.requires_grad()),
            }),
        ]),
    };
    let (x, _) = batch(6, 8);
    let y = [0, 1, 1, 0, 1, 0];
    let wd = w.data();
    for eps in [0.1, 0.5] {
        let mut optimum = Vec::new();
        for (i, &t) in y.iter().enumerate() {
            for p in 0..d {
                let dir = (wd[(1 - t) * d + p] - wd[t * d + p]).signum();
                optimum.push((x.data()[i * d + p] + eps * dir).clamp(0.0, 1.0));
            }
        }
        for loss in [AttackLoss::Margin, AttackLoss::Ce] {
            let cfg = PgdConfig {
                restarts: 1,
                losses: vec![loss],
                ..PgdConfig::evaluation()
            };
            let region = Region::linf_ball(&x, eps);
            let adv = pgd(&lin, &x, &y, &region, &cfg, Mode::Eval, &mut Rng::seed(9));
            for (k, (a, o)) in adv.data().iter().zip(&optimum).enumerate() {
                assert!(
                    (a - o).abs() <= 1e-6,
                    "{loss:?} eps {eps} element {k}: {a}, optimum {o}"
                );
            }
        }
    }
}

#[test]
fn keep_best_never_loses_to_the_clean_point() {
    let m = model(Arch::Mlp, 10);
    let (x, y) = batch(32, 11);
    let clean = losses(&m, &x, &y, AttackLoss::Ce);
    let region = Region::linf_ball(&x, 0.1);
    let out = pgd_outcome(
        &m,
        &x,
        &y,
        &region,
        &PgdConfig::sabr(),
        Mode::Eval,
        &mut Rng::seed(12),
    );
    let attacked = losses(&m, &out.x_adv, &y, AttackLoss::Ce);
    for i in 0..y.len() {
        assert!(
            attacked[i] >= clean[i],
            "sample {i}: {} < clean {}",
            attacked[i],
            clean[i]
        );
        assert!((attacked[i] - out.loss[i]).abs() <= 1e-5 * (1.0 + attacked[i].abs()));
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    assert!(
        mean(&attacked) > mean(&clean) + 1e-3,
        "attack did not raise the loss: {} vs {}",
        mean(&attacked),
        mean(&clean)
    );
    // The misclassification flags agree with the returned points where they are misclassified.
    let pred = with_no_grad(|| m.forward(&out.x_adv, Mode::Eval)).argmax_rows();
    for i in 0..y.len() {
        assert!(pred[i] == y[i] || out.fooled[i]);
    }
}

#[test]
fn same_seed_same_result() {
    let m = model(Arch::Mlp, 13);
    let (x, y) = batch(8, 14);
    let region = Region::linf_ball(&x, 0.2);
    let run = |seed| {
        pgd(
            &m,
            &x,
            &y,
            &region,
            &PgdConfig::sabr(),
            Mode::Eval,
            &mut Rng::seed(seed),
        )
    };
    assert!(run(1).bit_eq(&run(1)));
    assert!(!run(1).bit_eq(&run(2)));
}

#[test]
fn robust_flags_respect_certified_le_pgd_le_clean() {
    let m = model(Arch::Mlp, 15);
    let (x, y) = batch(32, 16);
    let pred = with_no_grad(|| m.forward(&x, Mode::Eval)).argmax_rows();
    let correct: Vec<bool> = pred.iter().zip(&y).map(|(p, t)| p == t).collect();
    assert!(correct.iter().any(|&c| c) && correct.iter().any(|&c| !c));
    let cfg = PgdConfig::evaluation();

    let flags = pgd_robust_flags(&m, &x, &y, 0.5, None, &cfg, &mut Rng::seed(1));
    assert_eq!(flags.clean, correct);
    for (i, (&r, &c)) in flags.robust.iter().zip(&correct).enumerate() {
        assert!(!r || c, "misclassified point {i} marked robust");
    }
    let broken = (0..y.len())
        .filter(|&i| correct[i] && !flags.robust[i])
        .count();
    assert!(broken > 0, "ε = 0.5 broke no point of a random network");

    // ε = 0: nothing to find, robust = clean.
    let zero = pgd_robust_flags(&m, &x, &y, 0.0, None, &cfg, &mut Rng::seed(1));
    assert_eq!(zero.robust, correct);

    // Certified points are robust without being attacked, unless misclassified.
    let certified = vec![true; y.len()];
    let all = pgd_robust_flags(&m, &x, &y, 0.5, Some(&certified), &cfg, &mut Rng::seed(1));
    assert_eq!(all.robust, correct);
    let some: Vec<bool> = (0..y.len()).map(|i| i % 2 == 0).collect();
    let part = pgd_robust_flags(&m, &x, &y, 0.5, Some(&some), &cfg, &mut Rng::seed(1));
    for i in 0..y.len() {
        assert!(!part.robust[i] || correct[i]);
        assert!(!(some[i] && correct[i]) || part.robust[i]);
    }
}

#[test]
#[should_panic(expected = "no_grad")]
fn pgd_refuses_to_run_without_gradients() {
    let m = model(Arch::Mlp, 17);
    let (x, y) = batch(2, 18);
    let region = Region::linf_ball(&x, 0.1);
    with_no_grad(|| {
        pgd(
            &m,
            &x,
            &y,
            &region,
            &PgdConfig::sabr(),
            Mode::Eval,
            &mut Rng::seed(1),
        )
    });
}
