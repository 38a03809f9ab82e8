//! The verifiers on batches of mnist-mini test points: CROWN on 100 points of `small` and of the
//! quarter-width `cnn7`, α-CROWN (20 iterations) on 20 points of `small`.
//!
//! A checkpoint trained for the task makes the figures representative (the work follows the
//! neurons interval propagation leaves unstable): set `CACTUS_VERIFY_SMALL` and
//! `CACTUS_VERIFY_CNN7` to model.safetensors files of `small` and `cnn7 --width 0.25` trained on
//! mnist-mini, and `CACTUS_VERIFY_EPS` to their ε (default 0.1). Without them the networks are
//! freshly initialised (IBP initialisation) and ε is 0.02, which keeps a comparable share of
//! neurons unstable. `scripts/verify/crosscheck_auto_lirpa.py` times auto_LiRPA on trained
//! networks for the comparison.

use cactus::data::{self, DatasetKind, Split};
use cactus::io::load_checkpoint;
use cactus::nn::{Arch, Init, Model};
use cactus::rng::Rng;
use cactus::verify::{margin_bounds, BoundNet, Certifier, VerifyConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn network(arch: Arch, var: &str) -> (Model, f32) {
    if let Ok(path) = std::env::var(var) {
        let eps = std::env::var("CACTUS_VERIFY_EPS")
            .ok()
            .and_then(|e| e.parse().ok())
            .unwrap_or(0.1);
        let ckpt = load_checkpoint(std::path::Path::new(&path))
            .unwrap_or_else(|e| panic!("{var}={path}: {e}"));
        return (ckpt.model, eps);
    }
    let cfg = cactus::train::TrainConfig {
        model: arch,
        dataset: DatasetKind::MnistMini,
        init: Init::Ibp,
        width: if arch == Arch::Cnn7 { 0.25 } else { 1.0 },
        ..Default::default()
    };
    let model = Model::new(cfg.model_spec(), &mut Rng::seed(0)).unwrap();
    (model, 0.02)
}

fn bench(c: &mut Criterion, name: &str, arch: Arch, var: &str, points: usize, cert: Certifier) {
    let (model, eps) = network(arch, var);
    let net = BoundNet::new(&model).unwrap();
    let test = data::load(DatasetKind::MnistMini, None, Split::Test).unwrap();
    let idx: Vec<usize> = (0..points).collect();
    let (x, y) = test.batch(&idx);
    // The bounds as computed (the figures compare with other verifiers, which report those).
    let cfg = VerifyConfig {
        sound: false,
        ..Default::default()
    };
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    g.throughput(Throughput::Elements(points as u64));
    g.bench_function(name, |b| {
        b.iter(|| margin_bounds(&model, &net, &x, &y, eps, cert, &cfg).unwrap())
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    cactus::runtime::cpu::allocator::keep_freed_memory();
    bench(
        c,
        "crown_small_b100",
        Arch::Small,
        "CACTUS_VERIFY_SMALL",
        100,
        Certifier::Crown,
    );
    bench(
        c,
        "alpha_crown_small_b20",
        Arch::Small,
        "CACTUS_VERIFY_SMALL",
        20,
        Certifier::AlphaCrown,
    );
    bench(
        c,
        "crown_cnn7w025_b100",
        Arch::Cnn7,
        "CACTUS_VERIFY_CNN7",
        100,
        Certifier::Crown,
    );
}

criterion_group!(benches, verify);
criterion_main!(benches);
