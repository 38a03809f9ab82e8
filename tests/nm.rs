//! N:M sparsity: names, hand-computed masks (tail groups, ties, NaN), every group keeping
//! exactly min(N, len) of its largest weights on real models, the sparsity reported, the fixed
//! ratio, the evaluation grid's settings, and gradients through the masks.

use cactus::compress::nm::{nm_mask, pruned_per_row, NmRule};
use cactus::compress::prune::{apply_masks, prune_masks, Masks, PruneMethod};
use cactus::compress::quant::Format;
use cactus::eval::grid;
use cactus::nn::{Arch, Layer, Mode, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::Tensor;

fn m(name: &str) -> PruneMethod {
    name.parse().unwrap()
}

fn mask(masks: &Masks, layer: usize) -> Vec<f32> {
    masks.get(layer).unwrap().to_vec()
}

/// `mlp` on 1x1x10 inputs with 3 hidden units: Flatten(0), Linear 10→3 (1), ReLU, Linear 3→3
/// (3), ReLU, Linear 3→2 (5, the classifier).
fn mlp(w1: &[f32]) -> Model {
    let mut spec = ModelSpec::new(Arch::Mlp, [1, 1, 10], 2);
    spec.width = 3.0 / 256.0;
    let mut model = Model::new(spec, &mut Rng::seed(0)).unwrap();
    let Layer::Linear(l) = &mut model.net.layers[1] else {
        panic!("layer 1 is not linear")
    };
    assert_eq!(l.weight.numel(), w1.len());
    l.weight = Tensor::from_vec(w1.to_vec(), l.weight.shape()).requires_grad();
    model
}

#[test]
fn names_parse_print_and_reject() {
    for (text, n, mm) in [
        ("2:4", 2, 4),
        ("1:4", 1, 4),
        ("4:8", 4, 8),
        ("63:64", 63, 64),
        (" 1:2 ", 1, 2),
        ("02:04", 2, 4),
    ] {
        let method = m(text);
        assert_eq!(NmRule::of(method), Some((n, mm)), "{text}");
        assert_eq!(method, NmRule::method(n, mm).unwrap());
        assert_eq!(method.to_string(), format!("{n}:{mm}"));
        assert_eq!(m(&method.to_string()), method);
        let json = serde_json::to_string(&method).unwrap();
        assert_eq!(serde_json::from_str::<PruneMethod>(&json).unwrap(), method);
        assert_eq!(method.implied_ratio(), Some(1.0 - n as f64 / mm as f64));
    }
    assert_ne!(m("2:4"), m("4:8"));
    assert_eq!(NmRule::of(m("gul1")), None);
    for bad in [
        "0:4", "4:4", "5:4", "1:65", "a:4", "2:", ":4", "2:4:8", "-1:4", "2 :4", "1000:4",
    ] {
        let err = bad.parse::<PruneMethod>().unwrap_err().to_string();
        assert!(err.contains("1 ≤ N < M ≤ 64"), "{bad}: {err}");
        assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
    }
    assert!(NmRule::method(4, 4).is_err() && NmRule::method(1, 65).is_err());
    // Unknown names list the form.
    let err = "xyz".parse::<PruneMethod>().unwrap_err().to_string();
    assert!(
        err.contains("N:M") && err.contains("2:4") && err.contains("gul1"),
        "{err}"
    );
}

#[test]
fn hand_computed_groups_with_a_tail() {
    // A row of 10: groups [0, 4), [4, 8) and the tail [8, 10).
    let row = [-4., 1., 6., -2., 5., 3., -9., 0.5, 7., -8.];
    let w1: Vec<f32> = row.iter().chain(&[1.0; 20]).copied().collect();
    let model = mlp(&w1);
    let cases: [(&str, [f32; 10]); 4] = [
        // |w| 4 1 6 2 → 6, 4 kept; 5 3 9 0.5 → 9, 5; tail 7 8 keeps min(2, 2) = both.
        ("2:4", [1., 0., 1., 0., 1., 0., 1., 0., 1., 1.]),
        ("1:4", [0., 0., 1., 0., 0., 0., 1., 0., 0., 1.]),
        // Tail of 2 < N = 3: both kept.
        ("3:4", [1., 0., 1., 1., 1., 1., 1., 0., 1., 1.]),
        // Groups of 3: [−4 1 6] [−2 5 3] [−9 0.5 7] and the tail [−8].
        ("1:3", [0., 0., 1., 0., 1., 0., 1., 0., 0., 1.]),
    ];
    for (name, expected) in cases {
        let method = m(name);
        let masks = prune_masks(&model, method, method.implied_ratio().unwrap()).unwrap();
        assert_eq!(mask(&masks, 1)[..10], expected, "{name}");
        let (n, mm) = NmRule::of(method).unwrap();
        assert_eq!(nm_mask(&row, 10, n, mm), expected, "{name}");
    }
    // Counts: rows of 10, 3, 3 (×3, ×3, ×2 rows).
    let masks = prune_masks(&model, m("2:4"), 0.5).unwrap();
    assert_eq!(masks.total_weights, 30 + 9 + 6);
    // 2:4 prunes 4 of each row of 10, 1 of each row of 3 (a tail of 3 keeps 2).
    assert_eq!(masks.pruned_weights, 3 * 4 + 3 + 2);
    assert_eq!(masks.weight_sparsity(), 17.0 / 45.0);
    assert_eq!(masks.ratio, 0.5);
    assert!(masks.units.is_none());
    assert_eq!(pruned_per_row(10, 2, 4), 4);
    assert_eq!(pruned_per_row(3, 2, 4), 1);
    assert_eq!(pruned_per_row(27, 2, 4), 12 + 1);
    assert_eq!(pruned_per_row(2, 3, 4), 0);
}

#[test]
fn ties_nan_and_signed_zeros() {
    let nan = f32::NAN;
    // Equal magnitudes: the lower index is pruned first (the magnitude pruner's rule).
    let row = [1., -1., 1., 1., 2., 2., -2., 2., 0., -0.];
    assert_eq!(
        nm_mask(&row, 10, 2, 4),
        [0., 0., 1., 1., 0., 0., 1., 1., 1., 1.]
    );
    assert_eq!(
        nm_mask(&row, 10, 1, 4),
        [0., 0., 0., 1., 0., 0., 0., 1., 0., 1.]
    );
    // −0.0 and 0.0 are equal: the later one is kept.
    assert_eq!(nm_mask(&[-0.0, 0.0], 2, 1, 2), [0., 1.]);
    assert_eq!(nm_mask(&[0.0, -0.0], 2, 1, 2), [0., 1.]);
    // NaN ranks above everything, +∞ included; a negative NaN too.
    assert_eq!(
        nm_mask(&[nan, 5., 1., f32::INFINITY], 4, 2, 4),
        [1., 0., 0., 1.]
    );
    assert_eq!(
        nm_mask(&[5., -nan, f32::INFINITY, 1.], 4, 1, 4),
        [0., 1., 0., 0.]
    );
    assert_eq!(nm_mask(&[nan, nan, 1., 2.], 4, 1, 4), [0., 1., 0., 0.]);
    // Rows never share a group: two rows of 3 with 2:4 keep two of each.
    assert_eq!(
        nm_mask(&[1., 2., 3., 6., 5., 4.], 3, 2, 4),
        [0., 1., 1., 1., 1., 0.]
    );
}

/// Every group of every row keeps exactly min(N, len) weights, and none it prunes is larger (by
/// magnitude, then position) than one it keeps.
fn check_groups(weights: &[f32], masks: &[f32], row_len: usize, n: usize, mm: usize, what: &str) {
    assert_eq!(weights.len(), masks.len());
    for (r, (row, mrow)) in weights
        .chunks(row_len)
        .zip(masks.chunks(row_len))
        .enumerate()
    {
        for (g, (group, mg)) in row.chunks(mm).zip(mrow.chunks(mm)).enumerate() {
            assert!(mg.iter().all(|&v| v == 0.0 || v == 1.0));
            let kept = mg.iter().filter(|&&v| v == 1.0).count();
            assert_eq!(
                kept,
                n.min(group.len()),
                "{what}: row {r} group {g} keeps {kept}"
            );
            let key = |j: usize| (group[j].abs().to_bits(), j);
            let max_pruned = (0..group.len()).filter(|&j| mg[j] == 0.0).map(key).max();
            let min_kept = (0..group.len()).filter(|&j| mg[j] == 1.0).map(key).min();
            if let (Some(p), Some(k)) = (max_pruned, min_kept) {
                assert!(
                    p < k,
                    "{what}: row {r} group {g} prunes {p:?} above kept {k:?}"
                );
            }
        }
    }
}

fn models() -> Vec<(&'static str, Model)> {
    let mut rng = Rng::seed(11);
    let small = Model::new(ModelSpec::new(Arch::Small, [1, 28, 28], 10), &mut rng).unwrap();
    // Conv rows of 3·3·3 = 27: every row of the first layer ends in a tail of 3.
    let mut cnn7 = ModelSpec::new(Arch::Cnn7, [3, 32, 32], 10);
    cnn7.width = 0.25;
    let cnn7 = Model::new(cnn7, &mut rng).unwrap();
    let mlp = Model::new(ModelSpec::new(Arch::Mlp, [1, 28, 28], 10), &mut rng).unwrap();
    // Ties: weights rounded to a few levels.
    let mut tied = small.clone();
    for w in tied.net.layers.iter_mut().filter_map(Layer::weight_mut) {
        let v: Vec<f32> = w.data().iter().map(|x| (x * 30.0).round() / 30.0).collect();
        *w = Tensor::from_vec(v, w.shape());
    }
    vec![
        ("small", small),
        ("cnn7", cnn7),
        ("mlp", mlp),
        ("tied small", tied),
    ]
}

#[test]
fn every_group_keeps_exactly_min_n_len_of_its_largest() {
    for (name, model) in models() {
        for (n, mm) in [(2, 4), (1, 4), (4, 8), (3, 7), (1, 2), (5, 64), (63, 64)] {
            let method = NmRule::method(n, mm).unwrap();
            let ratio = 1.0 - n as f64 / mm as f64;
            let masks = prune_masks(&model, method, ratio).unwrap();
            let what = format!("{name} {method}");
            assert_eq!(masks.ratio, ratio);
            assert!(masks.units.is_none());
            let (mut total, mut zeros, mut expected) = (0, 0, 0);
            for (i, layer) in model.net.layers.iter().enumerate() {
                let Some(w) = layer.weight() else {
                    assert!(masks.get(i).is_none());
                    continue;
                };
                // Every conv and linear layer, the classifier included.
                let mk = mask(&masks, i);
                let rows = w.dim(0);
                let row_len = w.numel() / rows;
                check_groups(w.data(), &mk, row_len, n, mm, &format!("{what} layer {i}"));
                total += w.numel();
                zeros += mk.iter().filter(|&&v| v == 0.0).count();
                expected += rows * pruned_per_row(row_len, n, mm);
            }
            assert_eq!(masks.total_weights, total, "{what}");
            assert_eq!(masks.pruned_weights, zeros, "{what}");
            assert_eq!(zeros, expected, "{what}");
            assert_eq!(masks.weight_sparsity(), zeros as f64 / total as f64);
            // At most 1 − N/M, equal when M divides every row.
            assert!(masks.weight_sparsity() <= ratio + 1e-12, "{what}");
        }
    }
    // small's rows (16, 256, 5408, 100) are multiples of 4: 2:4 is exactly half.
    let (_, small) = &models()[0];
    let masks = prune_masks(small, m("2:4"), 0.5).unwrap();
    assert_eq!(masks.pruned_weights * 2, masks.total_weights);
    // cnn7's first layer (rows of 27) keeps 2 of its tail of 3: a little below one half.
    let (_, cnn7) = &models()[1];
    let masks = prune_masks(cnn7, m("2:4"), 0.5).unwrap();
    assert!(masks.weight_sparsity() < 0.5 && masks.weight_sparsity() > 0.49);
}

#[test]
fn the_ratio_is_fixed_at_one_minus_n_over_m() {
    let (_, model) = &models()[0];
    for bad in [0.7, 0.0, 0.25] {
        let err = prune_masks(model, m("2:4"), bad).err().unwrap().to_string();
        assert!(
            err.contains("0.5") && err.contains(&bad.to_string()),
            "{err}"
        );
    }
    for bad in [1.0, -0.5, f64::NAN] {
        let err = prune_masks(model, m("2:4"), bad).err().unwrap().to_string();
        assert!(err.contains("[0, 1)"), "{err}");
    }
    // 1 − 2/3 computed or typed.
    assert!(prune_masks(model, m("2:3"), 1.0 / 3.0).is_ok());
    assert!(prune_masks(model, m("2:3"), 0.333).is_err());
    assert_eq!(m("2:4").ratio(None).unwrap(), 0.5);
    assert_eq!(m("2:4").ratio(Some(0.5)).unwrap(), 0.5);
    assert!(m("2:4").ratio(Some(0.6)).is_err());
}

#[test]
fn the_grid_evaluates_n_m_once_at_its_ratio() {
    let settings = grid(
        &[None, Some(m("2:4")), Some(m("gul1")), Some(m("1:4"))],
        &[0.0, 0.7, 0.9],
        &[Format::Fp32, Format::INT8],
        true,
    );
    let keys: Vec<String> = settings
        .iter()
        .map(|s| format!("{} {} {}", s.compression(), s.ratio, s.format))
        .collect();
    assert_eq!(
        keys,
        [
            "none 0 fp32",
            "none 0 int8",
            "2:4 0.5 fp32",
            "2:4 0.5 int8",
            "gul1 0.7 fp32",
            "gul1 0.7 int8",
            "gul1 0.9 fp32",
            "gul1 0.9 int8",
            "1:4 0.75 fp32",
            "1:4 0.75 int8",
        ]
    );
}

#[test]
fn gradients_reach_only_kept_weights() {
    let w1: Vec<f32> = (0..30).map(|i| 0.1 + (i * 7 % 30) as f32 / 30.0).collect();
    let model = mlp(&w1);
    let masks = prune_masks(&model, m("2:4"), 0.5).unwrap();
    let pruned = apply_masks(&model, &masks);
    let x = Tensor::full(&[2, 1, 1, 10], 0.5);
    let grads = pruned.forward(&x, Mode::Eval).sum().backward();
    let Layer::Linear(orig) = &model.net.layers[1] else {
        unreachable!()
    };
    let g = grads
        .get(&orig.weight)
        .expect("a gradient for the weight")
        .to_vec();
    for (j, (&gv, &mv)) in g.iter().zip(&mask(&masks, 1)).enumerate() {
        if mv == 0.0 {
            assert_eq!(gv, 0.0, "weight {j} is pruned but gets a gradient");
        }
    }
    assert!(g.iter().any(|&v| v != 0.0));
}
