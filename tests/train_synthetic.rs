//! End to end: models learn a synthetic, separable image problem with Adam.

use cactus::nn::{Arch, Mode, Model, ModelSpec};
use cactus::ops::cross_entropy;
use cactus::rng::Rng;
use cactus::train::{Adam, AdamConfig};
use cactus::Tensor;

/// Images [n, 1, 12, 12]: class k lights up a 3×3 patch at one of four corners, over noise.
fn dataset(n: usize, rng: &mut Rng) -> (Tensor, Vec<usize>) {
    let (h, w) = (12, 12);
    let corners = [(1, 1), (1, 8), (8, 1), (8, 8)];
    let mut x = vec![0.0; n * h * w];
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let k = rng.below(4);
        y.push(k);
        let img = &mut x[i * h * w..(i + 1) * h * w];
        for v in img.iter_mut() {
            *v = 0.3 * rng.uniform();
        }
        let (r0, c0) = corners[k];
        for r in r0..r0 + 3 {
            for c in c0..c0 + 3 {
                img[r * w + c] = 0.7 + 0.3 * rng.uniform();
            }
        }
    }
    (Tensor::from_vec(x, &[n, 1, h, w]), y)
}

fn accuracy(model: &Model, x: &Tensor, y: &[usize]) -> f32 {
    let pred = cactus::autodiff::with_no_grad(|| model.forward(x, Mode::Eval)).argmax_rows();
    pred.iter().zip(y).filter(|(p, t)| p == t).count() as f32 / y.len() as f32
}

fn train(arch: Arch, width: f32) -> f32 {
    let mut rng = Rng::seed(11);
    let (xs, ys) = dataset(512, &mut rng);
    let (xt, yt) = dataset(256, &mut rng);
    let mut spec = ModelSpec::new(arch, [1, 12, 12], 4);
    spec.width = width;
    let mut model = Model::new(spec, &mut rng).unwrap();
    let mut opt = Adam::new(AdamConfig {
        lr: 2e-3,
        max_grad_norm: Some(10.0),
        ..AdamConfig::default()
    });
    let batch = 32;
    for _epoch in 0..3 {
        let mut order: Vec<usize> = (0..ys.len()).collect();
        rng.shuffle(&mut order);
        for idx in order.chunks(batch) {
            let xb = xs.index_rows(idx);
            let yb: Vec<usize> = idx.iter().map(|&i| ys[i]).collect();
            let loss = cross_entropy(&model.forward_train(&xb), &yb);
            assert!(loss.item().is_finite());
            let grads = loss.backward();
            opt.step(&mut model.net.parameters_mut(), &grads).unwrap();
        }
    }
    accuracy(&model, &xt, &yt)
}

#[test]
fn small_learns_a_separable_problem() {
    let acc = train(Arch::Small, 1.0);
    assert!(acc > 0.95, "small reached only {acc}");
}

#[test]
fn cnn7_with_batch_norm_learns_a_separable_problem() {
    let acc = train(Arch::Cnn7, 0.125);
    assert!(acc > 0.95, "cnn7 reached only {acc}");
}

#[test]
fn an_untrained_model_is_at_chance() {
    // Guards the tests above: the problem is not solved without training.
    let mut rng = Rng::seed(11);
    let (xt, yt) = dataset(256, &mut rng);
    let model = Model::new(ModelSpec::new(Arch::Small, [1, 12, 12], 4), &mut rng).unwrap();
    assert!(accuracy(&model, &xt, &yt) < 0.6);
}
