//! CACTUS: the adversarial weight perturbation, the compression-set strategies, the set loss
//! (a 2:4 set included), and compressed checkpoints.

use cactus::attack::{awp_perturbation, awp_radii, perturbed, AwpConfig};
use cactus::compress::quant::{fake_quantize, Format, Granularity};
use cactus::data::{mnist_mini, Split};
use cactus::io::{load_checkpoint, save_compressed_checkpoint};
use cactus::nn::{Arch, Init, Layer, Model, ModelSpec};
use cactus::ops::cross_entropy;
use cactus::rng::Rng;
use cactus::tensor::Tensor;
use cactus::train::cactus::{mass_ratio, set_ratios, DENSE_RATIOS, FIXED_RATIOS};
use cactus::train::{
    cactus_loss, ibp_cert_loss, CactusConfig, CompressKind, Phase, Progress, Strategy,
};
use std::collections::BTreeMap;

fn small_model(seed: u64) -> Model {
    let mut spec = ModelSpec::new(Arch::Small, [1, 28, 28], 10);
    spec.init = Init::Ibp;
    Model::new(spec, &mut Rng::seed(seed)).unwrap()
}

fn digits(n: usize) -> (Tensor, Vec<usize>) {
    let data = mnist_mini::load(Split::Train).unwrap();
    let idx: Vec<usize> = (0..n).collect();
    data.batch(&idx)
}

/// The objective CACTUS ascends: clean CE (own batch statistics) plus the IBP loss.
fn objective(net: &mut Model, x: &Tensor, y: &[usize]) -> Tensor {
    let (logits, stats) = net.forward_batch_stats(x, false);
    cross_entropy(&logits, y).add(&ibp_cert_loss(net, x, y, 0.02, &stats))
}

fn weights(model: &Model) -> Vec<Option<&Tensor>> {
    model.net.layers.iter().map(Layer::weight).collect()
}

#[test]
fn awp_stays_in_its_ball_and_beats_random_perturbations() {
    let model = small_model(1);
    let (x, y) = digits(64);
    let clean_loss = objective(&mut model.detached(), &x, &y).item();
    for cfg in [
        AwpConfig { eta: 0.5, steps: 1 },
        AwpConfig { eta: 2.0, steps: 3 },
    ] {
        let deltas = awp_perturbation(&model, &cfg, |net| objective(net, &x, &y));
        let radii = awp_radii(&model, cfg.eta);
        for ((d, r), w) in deltas.iter().zip(&radii).zip(weights(&model)) {
            match (d, r, w) {
                (Some(d), Some(r), Some(w)) => {
                    assert_eq!(d.shape(), w.shape());
                    assert!(*r > 0.0);
                    let worst = d.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    assert!(worst <= *r, "|Δ| = {worst} above the radius {r}");
                    assert!(worst >= 0.99 * r, "the ascent used {worst} of radius {r}");
                    assert!(!d.tracks_grad(), "Δ* must be a constant");
                }
                (None, None, None) => {}
                other => panic!("perturbation and layers disagree: {:?}", other.0.is_some()),
            }
        }
        let attacked = objective(&mut perturbed(&model.detached(), &deltas), &x, &y).item();
        assert!(
            attacked > clean_loss,
            "AWP loss {attacked} not above the clean loss {clean_loss} ({cfg:?})"
        );
        // Random corners of the same ball: the strongest random perturbations there are.
        let mut rng = Rng::seed(9);
        for trial in 0..10 {
            let random: Vec<Option<Tensor>> = deltas
                .iter()
                .zip(&radii)
                .map(|(d, r)| {
                    d.as_ref().map(|d| {
                        let r = r.unwrap();
                        let v = (0..d.numel())
                            .map(|_| if rng.uniform() < 0.5 { -r } else { r })
                            .collect();
                        Tensor::from_vec(v, d.shape())
                    })
                })
                .collect();
            let loss = objective(&mut perturbed(&model.detached(), &random), &x, &y).item();
            assert!(
                attacked > loss,
                "random corner {trial} reaches {loss}, AWP only {attacked} ({cfg:?})"
            );
        }
    }
}

#[test]
fn awp_radius_is_eta_int8_steps() {
    let model = small_model(2);
    for ((r, w), r2) in awp_radii(&model, 0.5)
        .iter()
        .zip(weights(&model))
        .zip(awp_radii(&model, 1.0))
    {
        if let (Some(r), Some(w), Some(r2)) = (r, w, r2) {
            let (lo, hi) = w
                .data()
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let step = (hi - lo) / 255.0;
            assert!((r - 0.5 * step).abs() <= 1e-6 * step, "{r} vs {step}");
            assert!((r2 - 2.0 * r).abs() <= 1e-6 * r2);
            // Fake int8 moves no weight by more than the η = ½ radius.
            let moved = fake_quantize(w, Format::INT8, Granularity::PerTensor)
                .data()
                .iter()
                .zip(w.data())
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                moved <= r * (1.0 + 1e-5),
                "int8 moved a weight by {moved} > {r}"
            );
        }
    }
}

fn progress(step: u64) -> Progress {
    Progress {
        step,
        total_steps: 1000,
        ramp_end: 200,
    }
}

#[test]
fn strategies_choose_their_ratios() {
    let model = small_model(3);
    let mut rng = Rng::seed(4);
    let cfg = |strategy, ratios: Option<Vec<f64>>, samples| CactusConfig {
        strategy,
        ratios,
        samples,
        ..CactusConfig::default()
    };
    // sampling: k draws in [0.25, 0.75), spread over the range.
    let sampling = cfg(Strategy::Sampling, None, 3);
    let draws: Vec<f64> = (0..200)
        .flat_map(|_| set_ratios(&sampling, &model, progress(0), &mut rng))
        .collect();
    assert_eq!(draws.len(), 600);
    assert!(draws.iter().all(|r| (0.25..0.75).contains(r)));
    assert!(draws.iter().any(|&r| r < 0.3) && draws.iter().any(|&r| r > 0.7));
    // sampling from a list: only its members, each of them.
    let listed = cfg(Strategy::Sampling, Some(vec![0.3, 0.6]), 1);
    let picks: Vec<f64> = (0..100)
        .flat_map(|_| set_ratios(&listed, &model, progress(0), &mut rng))
        .collect();
    assert!(picks.iter().all(|&r| r == 0.3 || r == 0.6));
    assert!(picks.contains(&0.3) && picks.contains(&0.6));
    // fixed and dense.
    let fixed = cfg(Strategy::Fixed, None, 1);
    assert_eq!(
        set_ratios(&fixed, &model, progress(0), &mut rng),
        FIXED_RATIOS
    );
    let fixed_list = cfg(Strategy::Fixed, Some(vec![0.1, 0.9]), 1);
    assert_eq!(
        set_ratios(&fixed_list, &model, progress(0), &mut rng),
        vec![0.1, 0.9]
    );
    let dense = cfg(Strategy::Dense, None, 1);
    assert_eq!(
        set_ratios(&dense, &model, progress(0), &mut rng),
        DENSE_RATIOS
    );
    // progressive: 0.25 until the ramp ends, then linear to 0.75 at the last batch.
    let prog = cfg(Strategy::Progressive, None, 1);
    let at = |step| set_ratios(&prog, &model, progress(step), &mut Rng::seed(0))[0];
    assert_eq!(at(0), 0.25);
    assert_eq!(at(200), 0.25);
    assert!((at(599) - 0.5).abs() < 1e-3);
    assert_eq!(at(999), 0.75);
    assert!((200..999).all(|s| at(s) <= at(s + 1)));
    // adaptive: three ratios, clamped, increasing with the mass share.
    let adaptive = cfg(Strategy::Adaptive, None, 1);
    let r = set_ratios(&adaptive, &model, progress(0), &mut rng);
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|r| (0.25..=0.75).contains(r)));
    assert!(r[0] <= r[1] && r[1] <= r[2]);
}

/// The histogram estimate of "the fraction of smallest weights holding a share of the l1 mass"
/// against the exact answer from a sort.
#[test]
fn mass_ratio_matches_a_sorted_count() {
    let model = small_model(5);
    let mut all: Vec<f64> = weights(&model)
        .into_iter()
        .flatten()
        .flat_map(|w| w.data().iter().map(|v| v.abs() as f64))
        .collect();
    all.sort_by(f64::total_cmp);
    let total: f64 = all.iter().sum();
    for mass in [0.01, 0.05, 0.1, 0.3] {
        let (mut acc, mut k) = (0.0, 0);
        while k < all.len() && acc + all[k] <= mass * total {
            acc += all[k];
            k += 1;
        }
        let exact = k as f64 / all.len() as f64;
        let estimate = mass_ratio(&model, mass);
        assert!(
            (estimate - exact).abs() < 2e-3,
            "mass {mass}: estimate {estimate}, exact {exact}"
        );
    }
}

/// The CACTUS loss of a set is the mean of its members' losses: with the AWP radius at zero the
/// perturbed member equals the full network, and with one fixed ratio of 0 the pruned member
/// does too; so the set loss equals SABR's (same attack seeds).
#[test]
fn degenerate_sets_reduce_to_sabr() {
    let (x, y) = digits(32);
    let phase = Phase {
        eps: 0.05,
        cert_weight: 0.75,
    };
    let sabr = {
        let mut m = small_model(6);
        let mut rng = Rng::seed(7);
        let out = cactus::train::batch_loss(
            &mut m,
            cactus::train::Method::Sabr,
            &x,
            &y,
            phase,
            0.4,
            &mut rng,
        );
        out.total.item()
    };
    for compress in [
        CompressKind::Prune,
        CompressKind::Quant,
        CompressKind::PruneQuant,
    ] {
        let cfg = CactusConfig {
            compress,
            strategy: Strategy::Fixed,
            ratios: Some(vec![0.0]),
            awp: AwpConfig { eta: 0.0, steps: 1 },
            ..CactusConfig::default()
        };
        let mut m = small_model(6);
        // Each member draws its own attack starts, so the members' SABR losses differ by the
        // attack's randomness only; the set loss must sit within that spread of SABR's.
        let out = cactus_loss(
            &mut m,
            &x,
            &y,
            phase,
            0.4,
            &cfg,
            progress(500),
            &mut Rng::seed(7),
        )
        .unwrap();
        let total = out.total.item();
        assert!(
            (total - sabr).abs() <= 0.02 * sabr.abs(),
            "{compress}: set loss {total} vs SABR {sabr}"
        );
        assert_eq!(out.clean_ce, {
            let mut m2 = small_model(6);
            let (logits, _) = m2.forward_batch_stats(&x, false);
            cross_entropy(&logits, &y).item()
        });
    }
}

/// A set pruned 2:4 holds the network and its one 2:4 copy, whatever the strategy; options that
/// choose ratios are refused; its loss is the mean of the two networks' losses, bit for bit.
#[test]
fn a_2_4_set_holds_the_network_and_its_2_4_copy() {
    use cactus::compress::{apply_masks, prune_masks, PruneMethod};
    use cactus::train::{network_loss, Method};
    let nm: PruneMethod = "2:4".parse().unwrap();
    let cfg = CactusConfig {
        prune_method: nm,
        ..CactusConfig::default()
    };
    cfg.validate().unwrap();
    let model = small_model(12);
    for strategy in [
        Strategy::Sampling,
        Strategy::Fixed,
        Strategy::Progressive,
        Strategy::Dense,
        Strategy::Adaptive,
    ] {
        let c = CactusConfig {
            strategy,
            ..cfg.clone()
        };
        assert_eq!(
            set_ratios(&c, &model, progress(700), &mut Rng::seed(0)),
            [0.5]
        );
    }
    for (bad, option) in [
        (
            CactusConfig {
                ratios: Some(vec![0.5]),
                ..cfg.clone()
            },
            "--ratios",
        ),
        (
            CactusConfig {
                samples: 2,
                ..cfg.clone()
            },
            "--samples",
        ),
        (
            CactusConfig {
                strategy: Strategy::Dense,
                ..cfg.clone()
            },
            "--strategy",
        ),
    ] {
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains(option) && err.contains("2:4") && err.contains("0.5"),
            "{err}"
        );
    }
    // Without pruned members the method plays no part.
    CactusConfig {
        compress: CompressKind::Quant,
        strategy: Strategy::Dense,
        ..cfg.clone()
    }
    .validate()
    .unwrap();

    let (x, y) = digits(32);
    let phase = Phase {
        eps: 0.05,
        cert_weight: 0.75,
    };
    let mut m = small_model(12);
    let out = cactus_loss(
        &mut m,
        &x,
        &y,
        phase,
        0.4,
        &cfg,
        progress(500),
        &mut Rng::seed(3),
    )
    .unwrap();
    // The same set by hand, with the same attack seeds.
    let mut rng = Rng::seed(3);
    let mut m2 = small_model(12);
    let full = network_loss(&mut m2, Method::Cactus, &x, &y, phase, 0.4, true, &mut rng);
    let masks = prune_masks(&m2, nm, 0.5).unwrap();
    assert_eq!(masks.weight_sparsity(), 0.5);
    let mut pruned = apply_masks(&m2, &masks);
    let member = network_loss(
        &mut pruned,
        Method::Cactus,
        &x,
        &y,
        phase,
        0.4,
        false,
        &mut rng,
    );
    let expected = full.total.add(&member.total).mul_scalar(0.5).item();
    assert_eq!(out.total.item(), expected);
    assert_eq!(
        out.cert,
        Some((full.cert.unwrap() + member.cert.unwrap()) / 2.0)
    );
    // Another pruning of the same ratio gives another loss: the 2:4 copy is the one used.
    let gul1 = CactusConfig {
        prune_method: "gul1".parse().unwrap(),
        strategy: Strategy::Fixed,
        ratios: Some(vec![0.5]),
        ..CactusConfig::default()
    };
    let other = cactus_loss(
        &mut small_model(12),
        &x,
        &y,
        phase,
        0.4,
        &gul1,
        progress(500),
        &mut Rng::seed(3),
    )
    .unwrap();
    assert_ne!(other.total.item(), expected);
    // Gradients reach every parameter.
    let grads = out.total.backward();
    for (name, p) in m.net.named_parameters() {
        let g = grads
            .get(p)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(g.data().iter().all(|v| v.is_finite()), "{name}");
    }
}

/// A pruned member contributes no gradient to pruned weights, and the set's gradient reaches
/// every parameter.
#[test]
fn set_gradients_reach_the_parameters() {
    let (x, y) = digits(32);
    let phase = Phase {
        eps: 0.05,
        cert_weight: 0.75,
    };
    for compress in [
        CompressKind::Prune,
        CompressKind::Quant,
        CompressKind::PruneQuant,
    ] {
        let cfg = CactusConfig {
            compress,
            ..CactusConfig::default()
        };
        let mut m = small_model(8);
        let out = cactus_loss(
            &mut m,
            &x,
            &y,
            phase,
            0.4,
            &cfg,
            progress(500),
            &mut Rng::seed(1),
        )
        .unwrap();
        assert!(out.total.item().is_finite() && out.cert.is_some());
        let grads = out.total.backward();
        for (name, p) in m.net.named_parameters() {
            let g = grads
                .get(p)
                .unwrap_or_else(|| panic!("{compress}: no gradient for {name}"));
            assert!(g.data().iter().all(|v| v.is_finite()));
            assert!(
                g.data().iter().any(|&v| v != 0.0),
                "{compress}: {name} gradient is 0"
            );
        }
    }
}

/// `cactus compress`'s file formats: int weights as I8 codes with scale and zero point, fp16 as
/// F16; loading gives back exactly the fake quantizer's weights.
#[test]
fn compressed_checkpoints_load_as_their_fake_quantized_weights() {
    let model = small_model(10);
    let dir = std::env::temp_dir().join(format!("cactus-compress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (format, granularity) in [
        (Format::INT8, Granularity::PerTensor),
        (Format::INT8, Granularity::PerChannel),
        (Format::INT4, Granularity::PerTensor),
        (Format::Int(2), Granularity::PerChannel),
        (Format::Fp16, Granularity::PerTensor),
    ] {
        let path = dir.join(format!("{format}-{granularity}.safetensors"));
        save_compressed_checkpoint(&path, &model, format, granularity, &BTreeMap::new()).unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let loaded = load_checkpoint(&path).unwrap().model;
        for (i, (a, b)) in model.net.layers.iter().zip(&loaded.net.layers).enumerate() {
            for ((name, p), (_, q)) in a.parameters().into_iter().zip(b.parameters()) {
                let expected = if name == "weight" {
                    fake_quantize(p, format, granularity)
                } else {
                    p.clone()
                };
                assert!(
                    expected.bit_eq(q),
                    "{format} {granularity}: layer {i} {name} differs after the round trip"
                );
            }
        }
        let weights: usize = weights(&model)
            .into_iter()
            .flatten()
            .map(|w| w.numel())
            .sum();
        let bytes_per_weight = match format {
            Format::Fp16 => 2,
            _ => 1,
        };
        assert!(
            (size as usize) < weights * bytes_per_weight + 40_000,
            "{format}: file of {size} bytes for {weights} weights"
        );
    }
    // A file whose int weight lacks its scale is refused, naming the tensor.
    let path = dir.join("int8-per-tensor.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "0.weight_scale")
        .collect();
    let broken = safetensors::serialize(kept, header.metadata().clone()).unwrap();
    let err = cactus::io::parse_checkpoint(&path, &broken)
        .err()
        .expect("a missing scale is an error")
        .to_string();
    assert!(err.contains("0.weight_scale"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Batch-norm recalibration of a pruned network: the first BN layer's running statistics become
/// the average over the calibration batches of its batch mean and unbiased variance, computed
/// here directly from the first convolution's output.
#[test]
fn bn_recalibration_averages_batch_statistics() {
    use cactus::compress::prune::prune;
    use cactus::data::Dataset;
    use cactus::eval::{recalibrate_bn, Recalibration};
    use cactus::nn::Mode;
    let mut spec = ModelSpec::new(Arch::Cnn7, [1, 28, 28], 10);
    spec.width = 0.125;
    let model = Model::new(spec, &mut Rng::seed(12)).unwrap();
    let (pruned, _) = prune(&model, "gul1".parse().unwrap(), 0.6).unwrap();
    let data: Dataset = mnist_mini::load(Split::Train).unwrap().limit(40);
    let r = Recalibration {
        data: &data,
        batches: 2,
        batch_size: 16,
    };
    let recalibrated = recalibrate_bn(&pruned, &r);
    let Layer::BatchNorm(bn) = &recalibrated.net.layers[1] else {
        panic!("cnn7's second layer is batch norm");
    };
    let c = bn.channels();
    let (mut mean, mut var) = (vec![0.0f64; c], vec![0.0f64; c]);
    for b in 0..2 {
        let idx: Vec<usize> = (b * 16..(b + 1) * 16).collect();
        let (x, _) = data.batch(&idx);
        let h = pruned.net.layers[0].forward(&pruned.normalize(&x), Mode::Train);
        let (n, hw) = (h.dim(0), h.dim(2) * h.dim(3));
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| {
                    let start = (i * c + ch) * hw;
                    h.data()[start..start + hw].iter().map(|&v| v as f64)
                })
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (vals.len() - 1) as f64;
            mean[ch] += m / 2.0;
            var[ch] += v / 2.0;
        }
    }
    for ch in 0..c {
        let (got_m, got_v) = (
            bn.running_mean.data()[ch] as f64,
            bn.running_var.data()[ch] as f64,
        );
        assert!(
            (got_m - mean[ch]).abs() <= 1e-4 * (1.0 + mean[ch].abs()),
            "mean {ch}"
        );
        assert!(
            (got_v - var[ch]).abs() <= 1e-4 * (1.0 + var[ch].abs()),
            "var {ch}"
        );
    }
    // The pruned network itself is unchanged; a network without batch norm is returned as is.
    let Layer::BatchNorm(before) = &pruned.net.layers[1] else {
        unreachable!()
    };
    assert!(before.running_mean.bit_eq(&model_bn_mean(&model)));
    let small = small_model(13);
    let same = recalibrate_bn(&small, &r);
    for (a, b) in small
        .net
        .named_parameters()
        .iter()
        .zip(same.net.named_parameters())
    {
        assert!(a.1.bit_eq(b.1));
    }
}

fn model_bn_mean(model: &Model) -> Tensor {
    match &model.net.layers[1] {
        Layer::BatchNorm(bn) => bn.running_mean.clone(),
        _ => panic!("no batch norm"),
    }
}
