//! Magnitude pruning: every method on hand-made weights (which entries survive, exact counts,
//! structure), global vs local, l1 vs l2, ties, ratios, names, and gradients through the masks.

use cactus::compress::prune::{
    apply_masks, prune, prune_masks, Magnitude, Masks, Norm, PruneMethod, Scope, Structure,
};
use cactus::nn::{Arch, Layer, Mode, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::Tensor;

fn m(name: &str) -> PruneMethod {
    name.parse().unwrap()
}

/// `mlp` on 1x1x2 inputs with 3 hidden units: Flatten(0), Linear 2→3 (1), ReLU, Linear 3→3 (3),
/// ReLU, Linear 3→2 (5, the classifier).
fn mlp(w1: &[f32], w3: &[f32], w5: &[f32]) -> Model {
    let mut spec = ModelSpec::new(Arch::Mlp, [1, 1, 2], 2);
    spec.width = 3.0 / 256.0;
    let mut model = Model::new(spec, &mut Rng::seed(0)).unwrap();
    for (i, w) in [(1, w1), (3, w3), (5, w5)] {
        let Layer::Linear(l) = &mut model.net.layers[i] else {
            panic!("layer {i} is not linear")
        };
        assert_eq!(l.weight.numel(), w.len());
        l.weight = Tensor::from_vec(w.to_vec(), l.weight.shape()).requires_grad();
    }
    model
}

/// Distinct magnitudes 1..=21, scattered and with mixed signs.
fn distinct() -> Model {
    mlp(
        &[-4., 1., 6., -2., 5., 3.],
        &[9., -15., 7., 12., -8., 10., 14., -11., 13.],
        &[-21., 16., 19., -17., 20., 18.],
    )
}

fn mask(masks: &Masks, layer: usize) -> Vec<f32> {
    masks.get(layer).unwrap().to_vec()
}

fn all_methods() -> [PruneMethod; 8] {
    Magnitude::ALL.map(Magnitude::method)
}

/// The magnitude method's scope, structure and norm.
fn magnitude(method: PruneMethod) -> Magnitude {
    Magnitude::of(method).expect("a magnitude method")
}

#[test]
fn names_parse_and_print() {
    let names = [
        "gul1", "gul2", "lul1", "lul2", "gsl1", "gsl2", "lsl1", "lsl2",
    ];
    for (name, method) in names.iter().zip(all_methods()) {
        assert_eq!(method.to_string(), *name);
        assert_eq!(m(name), method);
        assert_eq!(m(&name.to_uppercase()), method);
        assert_eq!(
            name.to_uppercase().parse::<Magnitude>().unwrap().method(),
            method
        );
    }
    assert_eq!(
        m("GSl2"),
        Magnitude::new(Scope::Global, Structure::Structured, Norm::L2).method()
    );
    assert_eq!(
        m("LUL1"),
        Magnitude::new(Scope::Local, Structure::Unstructured, Norm::L1).method()
    );
    for bad in ["gul3", "", "g", "gul1 ", "xsl1"] {
        if bad == "gul1 " {
            continue; // surrounding blanks are trimmed
        }
        let err = bad.parse::<PruneMethod>().unwrap_err().to_string();
        assert!(err.contains("gul1") && err.contains("lsl2"), "{err}");
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
}

#[test]
fn bad_ratios_are_errors_naming_the_value() {
    let model = distinct();
    for method in all_methods() {
        for (ratio, text) in [
            (-0.1, "-0.1"),
            (1.0, "1"),
            (f64::NAN, "NaN"),
            (1.5, "1.5"),
            (f64::INFINITY, "inf"),
        ] {
            let err = prune_masks(&model, method, ratio)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(text) && err.contains("[0, 1)"), "{err}");
        }
    }
}

#[test]
fn ratio_zero_keeps_everything() {
    let model = distinct();
    for method in all_methods() {
        let masks = prune_masks(&model, method, 0.0).unwrap();
        assert_eq!(masks.pruned_weights, 0);
        assert_eq!(masks.total_weights, 21);
        assert_eq!(masks.weight_sparsity(), 0.0);
        for i in [1, 3, 5] {
            assert!(mask(&masks, i).iter().all(|&v| v == 1.0));
        }
        for i in [0, 2, 4] {
            assert!(masks.get(i).is_none());
        }
        if magnitude(method).structure == Structure::Structured {
            assert_eq!(masks.units.unwrap().pruned, 0);
            assert_eq!(masks.unit_fraction(), Some(0.0));
        } else {
            assert!(masks.units.is_none());
        }
    }
}

#[test]
fn global_unstructured_prunes_the_smallest_magnitudes_over_all_layers() {
    let model = distinct();
    for name in ["gul1", "gul2", "GUL1"] {
        // floor(0.5 · 21) = 10: magnitudes 1..=10.
        let masks = prune_masks(&model, m(name), 0.5).unwrap();
        assert_eq!(mask(&masks, 1), [0.; 6]);
        assert_eq!(mask(&masks, 3), [0., 1., 0., 1., 0., 0., 1., 1., 1.]);
        assert_eq!(mask(&masks, 5), [1.; 6]);
        assert_eq!(masks.pruned_weights, 10);
        assert_eq!(masks.weight_sparsity(), 10.0 / 21.0);
        assert!(masks.units.is_none());
    }
    // 1/3 · 21 is 7 (not 6, whatever the binary rounding of the product).
    let masks = prune_masks(&model, m("gul1"), 1.0 / 3.0).unwrap();
    assert_eq!(masks.pruned_weights, 7);
    assert_eq!(mask(&masks, 3), [1., 1., 0., 1., 1., 1., 1., 1., 1.]);
    // 0.7 · 21 = 14.7 → 14: magnitudes 1..=14.
    let masks = prune_masks(&model, m("gul1"), 0.7).unwrap();
    assert_eq!(masks.pruned_weights, 14);
    assert_eq!(mask(&masks, 3), [0., 1., 0., 0., 0., 0., 0., 0., 0.]);
    assert_eq!(mask(&masks, 5), [1.; 6]);
}

#[test]
fn local_unstructured_prunes_the_same_fraction_of_every_tensor() {
    let model = distinct();
    for name in ["lul1", "lul2", "LUL1"] {
        // floor(0.5·6) = 3, floor(0.5·9) = 4, floor(0.5·6) = 3.
        let masks = prune_masks(&model, m(name), 0.5).unwrap();
        assert_eq!(mask(&masks, 1), [1., 0., 1., 0., 1., 0.]);
        assert_eq!(mask(&masks, 3), [0., 1., 0., 1., 0., 0., 1., 1., 1.]);
        assert_eq!(mask(&masks, 5), [1., 0., 1., 0., 1., 0.]);
        assert_eq!(masks.pruned_weights, 10);
    }
    // Global and local differ on the same model and ratio.
    let g = prune_masks(&model, m("gul1"), 0.5).unwrap();
    let l = prune_masks(&model, m("lul1"), 0.5).unwrap();
    assert_ne!(mask(&g, 1), mask(&l, 1));
    assert_ne!(mask(&g, 5), mask(&l, 5));
}

#[test]
fn unstructured_ties_follow_layer_then_index() {
    // Every magnitude 1 (signs and a ±0 pair do not matter): the earliest entries go first.
    let model = mlp(
        &[1., -1., 1., -1., 1., 1.],
        &[-1., 1., 1., 1., -1., 1., 1., 1., 1.],
        &[1., -1., 1., 1., 1., -1.],
    );
    for _ in 0..2 {
        let g = prune_masks(&model, m("gul2"), 0.5).unwrap();
        assert_eq!(mask(&g, 1), [0.; 6]);
        assert_eq!(mask(&g, 3), [0., 0., 0., 0., 1., 1., 1., 1., 1.]);
        assert_eq!(mask(&g, 5), [1.; 6]);
        let l = prune_masks(&model, m("lul1"), 0.5).unwrap();
        assert_eq!(mask(&l, 1), [0., 0., 0., 1., 1., 1.]);
        assert_eq!(mask(&l, 3), [0., 0., 0., 0., 1., 1., 1., 1., 1.]);
        assert_eq!(mask(&l, 5), [0., 0., 0., 1., 1., 1.]);
    }
    let zeros = mlp(&[0., -0., 0., -0., 0., -0.], &[5.; 9], &[5.; 6]);
    let l = prune_masks(&zeros, m("lul1"), 0.5).unwrap();
    assert_eq!(mask(&l, 1), [0., 0., 0., 1., 1., 1.]);
}

/// Rows (units) chosen so that l1 and l2 rank them differently and global normalisation
/// changes the choice; the classifier's weights are the smallest of all and never pruned.
fn rows() -> Model {
    mlp(
        // l1: 3, 4, 10; l2: 3, 2.83, 7.07
        &[3., 0., 2., 2., 5., 5.],
        // l1: 3, 10, 60; l2: 1.73, 10, 34.6
        &[1., 1., 1., 10., 0., 0., 20., 20., 20.],
        &[0.01, 0.02, -0.01, 0.01, 0.03, 0.01],
    )
}

#[test]
fn local_structured_l1_and_l2_choose_different_rows() {
    let model = rows();
    // floor(0.5·3) = 1 unit per hidden layer.
    let l1 = prune_masks(&model, m("lsl1"), 0.5).unwrap();
    assert_eq!(mask(&l1, 1), [0., 0., 1., 1., 1., 1.]);
    assert_eq!(mask(&l1, 3), [0., 0., 0., 1., 1., 1., 1., 1., 1.]);
    assert_eq!(mask(&l1, 5), [1.; 6]);
    let l2 = prune_masks(&model, m("LSL2"), 0.5).unwrap();
    assert_eq!(mask(&l2, 1), [1., 1., 0., 0., 1., 1.]);
    assert_eq!(mask(&l2, 3), [0., 0., 0., 1., 1., 1., 1., 1., 1.]);
    assert_eq!(mask(&l2, 5), [1.; 6]);
    for masks in [&l1, &l2] {
        let u = masks.units.unwrap();
        assert_eq!((u.total, u.pruned, u.requested), (6, 2, 2));
        assert_eq!(masks.unit_fraction(), Some(2.0 / 6.0));
        assert_eq!(masks.pruned_weights, 5);
        assert_eq!(masks.weight_sparsity(), 5.0 / 21.0);
    }
}

#[test]
fn global_structured_normalises_by_layer_mean() {
    let model = rows();
    // floor(0.5·6) = 3 units. l1 normalised: layer 1 [0.53, 0.71, 1.76], layer 3
    // [0.12, 0.41, 2.47] → layer 3 rows 0, 1 and layer 1 row 0.
    let g1 = prune_masks(&model, m("gsl1"), 0.5).unwrap();
    assert_eq!(mask(&g1, 1), [0., 0., 1., 1., 1., 1.]);
    assert_eq!(mask(&g1, 3), [0., 0., 0., 0., 0., 0., 1., 1., 1.]);
    assert_eq!(mask(&g1, 5), [1.; 6]);
    assert_eq!(g1.pruned_weights, 8);
    // l2 normalised: layer 1 [0.70, 0.66, 1.64], layer 3 [0.11, 0.65, 2.24] → layer 3 rows 0, 1
    // and layer 1 row 1.
    let g2 = prune_masks(&model, m("gsl2"), 0.5).unwrap();
    assert_eq!(mask(&g2, 1), [1., 1., 0., 0., 1., 1.]);
    assert_eq!(mask(&g2, 3), [0., 0., 0., 0., 0., 0., 1., 1., 1.]);
    assert_eq!(mask(&g2, 5), [1.; 6]);
    for masks in [&g1, &g2] {
        let u = masks.units.unwrap();
        assert_eq!((u.total, u.pruned, u.requested), (6, 3, 3));
        assert_eq!(masks.unit_fraction(), Some(0.5));
        assert_eq!(masks.weight_sparsity(), 8.0 / 21.0);
    }
    // Global differs from local (which removes one row of each layer).
    let l1 = prune_masks(&model, m("lsl1"), 0.5).unwrap();
    assert_ne!(mask(&g1, 3), mask(&l1, 3));
}

#[test]
fn structured_keeps_one_unit_per_layer_and_breaks_ties_in_order() {
    // All rows of a layer equal: every normalised score is 1, so the ranking is by
    // (layer, row). floor(0.5·6) = 3: layer 1 rows 0 and 1, then row 2 is the layer's last
    // unit and is skipped, so layer 3 row 0.
    let model = mlp(&[2., 0., 0., -2., 1., 1.], &[3.; 9], &[1.; 6]);
    for _ in 0..2 {
        let g = prune_masks(&model, m("gsl1"), 0.5).unwrap();
        assert_eq!(mask(&g, 1), [0., 0., 0., 0., 1., 1.]);
        assert_eq!(mask(&g, 3), [0., 0., 0., 1., 1., 1., 1., 1., 1.]);
        assert_eq!(g.units.unwrap().pruned, 3);
    }
    // floor(0.9·6) = 5 units asked, but only 2 + 2 can go: each layer keeps its best unit.
    let model = rows();
    for name in ["gsl1", "gsl2"] {
        let g = prune_masks(&model, m(name), 0.9).unwrap();
        let u = g.units.unwrap();
        assert_eq!((u.total, u.pruned, u.requested), (6, 4, 5));
        assert_eq!(mask(&g, 1), [0., 0., 0., 0., 1., 1.]);
        assert_eq!(mask(&g, 3), [0., 0., 0., 0., 0., 0., 1., 1., 1.]);
    }
    // Local: floor(0.9·3) = 2 per layer, never all.
    let l = prune_masks(&model, m("lsl2"), 0.9).unwrap();
    let u = l.units.unwrap();
    assert_eq!((u.total, u.pruned, u.requested), (6, 4, 4));
}

fn small(seed: u64) -> Model {
    Model::new(
        ModelSpec::new(Arch::Small, [1, 6, 6], 3),
        &mut Rng::seed(seed),
    )
    .unwrap()
}

/// The affine layers of a model with their weights.
fn weights(model: &Model) -> Vec<(usize, Tensor)> {
    model
        .net
        .layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match l {
            Layer::Linear(l) => Some((i, l.weight.clone())),
            Layer::Conv2d(c) => Some((i, c.weight.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn unstructured_matches_a_full_sort_on_random_convs() {
    let model = small(1);
    let ws = weights(&model);
    let total: usize = ws.iter().map(|(_, w)| w.numel()).sum();
    for ratio in [0.1, 0.5, 0.77, 0.99] {
        // Global: the k smallest of all by (|w|, layer, index).
        let mut all: Vec<(f32, usize, usize)> = ws
            .iter()
            .flat_map(|(i, w)| {
                let i = *i;
                w.to_vec()
                    .into_iter()
                    .enumerate()
                    .map(move |(j, v)| (v.abs(), i, j))
            })
            .collect();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let k = (ratio * total as f64).floor() as usize;
        let masks = prune_masks(&model, m("gul1"), ratio).unwrap();
        assert_eq!(masks.pruned_weights, k);
        for (n, &(_, i, j)) in all.iter().enumerate() {
            assert_eq!(mask(&masks, i)[j], if n < k { 0.0 } else { 1.0 });
        }
        // Local: the same per tensor.
        let masks = prune_masks(&model, m("lul2"), ratio).unwrap();
        let mut expected = 0;
        for (i, w) in &ws {
            let mut order: Vec<(f32, usize)> =
                w.to_vec().into_iter().map(f32::abs).zip(0..).collect();
            order.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let k = (ratio * w.numel() as f64).floor() as usize;
            expected += k;
            let mk = mask(&masks, *i);
            for (n, &(_, j)) in order.iter().enumerate() {
                assert_eq!(mk[j], if n < k { 0.0 } else { 1.0 });
            }
        }
        assert_eq!(masks.pruned_weights, expected);
    }
}

#[test]
fn structured_removes_whole_channels_and_never_classifier_rows() {
    let model = small(2);
    let ws = weights(&model);
    let classifier = ws.last().unwrap().0;
    // Units: 16 + 32 conv channels, 100 hidden neurons.
    for method in Magnitude::ALL
        .into_iter()
        .filter(|m| m.structure == Structure::Structured)
    {
        for ratio in [0.3, 0.5, 0.9] {
            let masks = prune_masks(&model, method.method(), ratio).unwrap();
            let u = masks.units.unwrap();
            assert_eq!(u.total, 148);
            let expected = match method.scope {
                Scope::Global => (ratio * 148.0_f64).floor() as usize,
                Scope::Local => [16.0, 32.0, 100.0]
                    .iter()
                    .map(|n: &f64| (ratio * n).floor() as usize)
                    .sum(),
            };
            assert_eq!((u.pruned, u.requested), (expected, expected));
            let mut zero_rows = 0;
            let mut zeros = 0;
            // (normalised score, pruned) of every unit, for the global check.
            let mut units: Vec<(f64, bool)> = Vec::new();
            for (i, w) in &ws {
                let mk = mask(&masks, *i);
                let rows = w.dim(0);
                let len = w.numel() / rows;
                zeros += mk.iter().filter(|&&v| v == 0.0).count();
                if *i == classifier {
                    assert!(mk.iter().all(|&v| v == 1.0));
                    continue;
                }
                let data = w.to_vec();
                let score = |r: usize| -> f64 {
                    let row = &data[r * len..(r + 1) * len];
                    match method.norm {
                        Norm::L1 => row.iter().map(|&v| (v as f64).abs()).sum(),
                        Norm::L2 => row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt(),
                    }
                };
                let mean = (0..rows).map(score).sum::<f64>() / rows as f64;
                let mut layer: Vec<(f64, bool)> = Vec::new();
                for r in 0..rows {
                    let row = &mk[r * len..(r + 1) * len];
                    assert!(row.iter().all(|&v| v == row[0]), "a partial row");
                    layer.push((score(r) / mean, row[0] == 0.0));
                    zero_rows += (row[0] == 0.0) as usize;
                }
                assert!(layer.iter().any(|u| !u.1), "a layer lost every unit");
                if method.scope == Scope::Local {
                    assert_pruned_below_kept(&layer);
                }
                // A layer's last unit may be kept out of ranking order (one unit per layer).
                if layer.iter().filter(|u| !u.1).count() == 1 {
                    layer.retain(|u| u.1);
                }
                units.extend(layer);
            }
            if method.scope == Scope::Global {
                assert_pruned_below_kept(&units);
            }
            assert_eq!(zero_rows, expected);
            assert_eq!(masks.pruned_weights, zeros);
            assert_eq!(
                masks.total_weights,
                ws.iter().map(|(_, w)| w.numel()).sum::<usize>()
            );
        }
    }
}

fn assert_pruned_below_kept(units: &[(f64, bool)]) {
    let max_pruned = units
        .iter()
        .filter(|u| u.1)
        .map(|u| u.0)
        .fold(f64::MIN, f64::max);
    let min_kept = units
        .iter()
        .filter(|u| !u.1)
        .map(|u| u.0)
        .fold(f64::MAX, f64::min);
    assert!(max_pruned <= min_kept, "{max_pruned} > {min_kept}");
}

#[test]
fn masks_are_deterministic() {
    let model = small(3);
    for method in all_methods() {
        let a = prune_masks(&model, method, 0.6).unwrap();
        let b = prune_masks(&model, method, 0.6).unwrap();
        for (x, y) in a.layers.iter().zip(&b.layers) {
            match (x, y) {
                (Some(x), Some(y)) => assert!(x.bit_eq(y)),
                (None, None) => {}
                _ => panic!("mask presence differs"),
            }
        }
    }
}

#[test]
fn gradients_reach_only_kept_weights() {
    // Positive weights, biases and inputs: every unit is active, so a kept weight's gradient
    // of the summed logits is positive.
    let mut model = mlp(
        &[4., 1., 6., 2., 5., 3.],
        &[9., 15., 7., 12., 8., 10., 14., 11., 13.],
        &[21., 16., 19., 17., 20., 18.],
    );
    for i in [1, 3, 5] {
        let Layer::Linear(l) = &mut model.net.layers[i] else {
            unreachable!()
        };
        let b = l.bias.as_ref().unwrap();
        l.bias = Some(Tensor::full(b.shape(), 0.5).requires_grad());
    }
    let x = Tensor::from_vec(vec![0.3, 0.7, 1.0, 0.2], &[2, 1, 1, 2]);
    for method in all_methods() {
        let masks = prune_masks(&model, method, 0.5).unwrap();
        let pruned = apply_masks(&model, &masks);
        let loss = pruned.forward(&x, Mode::Eval).sum();
        let grads = loss.backward();
        for i in [1, 3, 5] {
            let (Layer::Linear(orig), Layer::Linear(p)) =
                (&model.net.layers[i], &pruned.net.layers[i])
            else {
                unreachable!()
            };
            let g = grads
                .get(&orig.weight)
                .expect("gradient of the original weight");
            let mk = mask(&masks, i);
            for ((&gv, &mv), (&w, &pw)) in g
                .data()
                .iter()
                .zip(&mk)
                .zip(orig.weight.data().iter().zip(p.weight.data()))
            {
                assert_eq!(pw, w * mv);
                if mv == 0.0 {
                    assert_eq!(gv, 0.0, "{method}: gradient at a pruned weight");
                } else {
                    assert!(gv > 0.0, "{method}: no gradient at a kept weight");
                }
            }
            // Biases are shared, not masked, and still trained.
            let (ob, pb) = (orig.bias.as_ref().unwrap(), p.bias.as_ref().unwrap());
            assert_eq!(ob.id(), pb.id());
            assert!(grads.get(ob).is_some());
        }
    }
}

#[test]
fn biases_and_batch_norm_are_untouched() {
    let mut spec = ModelSpec::new(Arch::Cnn7, [1, 4, 4], 3);
    spec.width = 0.05;
    let model = Model::new(spec, &mut Rng::seed(4)).unwrap();
    for method in all_methods() {
        let (pruned, masks) = prune(&model, method, 0.5).unwrap();
        assert_eq!(masks.layers.len(), model.net.layers.len());
        for (i, (a, b)) in model.net.layers.iter().zip(&pruned.net.layers).enumerate() {
            match (a, b) {
                (Layer::Linear(x), Layer::Linear(y)) => {
                    assert_eq!(x.bias.as_ref().unwrap().id(), y.bias.as_ref().unwrap().id());
                    assert!(masks.get(i).is_some());
                }
                (Layer::Conv2d(x), Layer::Conv2d(y)) => {
                    assert_eq!(x.bias.as_ref().unwrap().id(), y.bias.as_ref().unwrap().id());
                    assert!(masks.get(i).is_some());
                }
                (Layer::BatchNorm(x), Layer::BatchNorm(y)) => {
                    assert_eq!(x.weight.id(), y.weight.id());
                    assert_eq!(x.bias.id(), y.bias.id());
                    assert!(x.running_mean.bit_eq(&y.running_mean));
                    assert!(x.running_var.bit_eq(&y.running_var));
                    assert!(masks.get(i).is_none());
                }
                (Layer::ReLU, Layer::ReLU) | (Layer::Flatten, Layer::Flatten) => {
                    assert!(masks.get(i).is_none())
                }
                _ => panic!("layer {i} changed kind"),
            }
        }
        // The pruned network still runs and its weights carry the sparsity reported.
        let zeros: usize = weights(&pruned)
            .iter()
            .map(|(_, w)| w.data().iter().filter(|&&v| v == 0.0).count())
            .sum();
        assert!(zeros >= masks.pruned_weights);
        let out = pruned.forward(&Tensor::full(&[2, 1, 4, 4], 0.5), Mode::Eval);
        assert_eq!(out.shape(), &[2, 3]);
    }
}
