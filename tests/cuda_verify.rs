//! The verifiers on the GPU against the CPU: the same network and points, once with the weights
//! on each device. CROWN-IBP and CROWN bounds agree within rounding; α-CROWN (an Adam trajectory
//! through the same ops) within a looser tolerance, and never looser than CROWN on either
//! device; branch and bound reaches the same verdicts. Skips, saying why, where no GPU is present.

use cactus::autodiff::with_no_grad;
use cactus::nn::{Arch, Layer, Model, ModelSpec, Normalization};
use cactus::rng::Rng;
use cactus::runtime::cuda::device_or_skip;
use cactus::verify::bab::verify_point;
use cactus::verify::{margin_bounds, AlphaConfig, BabConfig, BoundNet, Certifier, VerifyConfig};
use cactus::{Device, Tensor};

fn model(arch: Arch, input: [usize; 3], seed: u64) -> Model {
    let mut rng = Rng::seed(seed);
    let mut spec = ModelSpec::new(arch, input, 5);
    spec.width = 0.25;
    spec.normalization = Some(Normalization {
        mean: vec![0.4; input[0]],
        std: vec![0.3; input[0]],
    });
    let mut m = Model::new(spec, &mut rng).unwrap();
    for layer in &mut m.net.layers {
        if let Layer::BatchNorm(b) = layer {
            let c = b.channels();
            b.weight = Tensor::rand_uniform(&[c], -1.5, 1.5, &mut rng);
            b.running_mean = Tensor::rand_uniform(&[c], -0.3, 0.3, &mut rng);
            b.running_var = Tensor::rand_uniform(&[c], 0.5, 2.0, &mut rng);
        }
    }
    m
}

fn close(what: &str, gpu: &[f32], cpu: &[f32], rel: f32) {
    let scale = cpu.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert!(
            (g - c).abs() <= rel * scale,
            "{what}: entry {i}: GPU {g}, CPU {c}"
        );
    }
}

#[test]
fn verifiers_on_the_gpu_match_the_cpu() {
    let Some(_gpu) = device_or_skip("verifiers_on_the_gpu_match_the_cpu") else {
        return;
    };
    let cfg = VerifyConfig {
        alpha: AlphaConfig {
            iterations: 3,
            ..Default::default()
        },
        bab: BabConfig {
            iterations: 6,
            ..Default::default()
        },
        ..Default::default()
    };
    for (arch, input) in [(Arch::Small, [1, 8, 8]), (Arch::Cnn7, [2, 5, 5])] {
        let cpu = model(arch, input, 3);
        let gpu = cpu.to_device(Device::Cuda).unwrap();
        let (net_c, net_g) = (BoundNet::new(&cpu).unwrap(), BoundNet::new(&gpu).unwrap());
        let mut rng = Rng::seed(4);
        let x = Tensor::rand_uniform(&[2, input[0], input[1], input[2]], 0.0, 1.0, &mut rng);
        let labels = [0, 4];
        let mut crown = Vec::new();
        for c in [Certifier::CrownIbp, Certifier::Crown, Certifier::AlphaCrown] {
            let on_cpu = margin_bounds(&cpu, &net_c, &x, &labels, 0.02, c, &cfg).unwrap();
            let on_gpu = margin_bounds(&gpu, &net_g, &x, &labels, 0.02, c, &cfg).unwrap();
            let rel = if c == Certifier::AlphaCrown {
                1e-3
            } else {
                1e-4
            };
            close(&format!("{} {c}", arch.name()), &on_gpu, &on_cpu, rel);
            if c == Certifier::Crown {
                crown = vec![on_cpu, on_gpu];
            } else if c == Certifier::AlphaCrown {
                for (a, b) in on_cpu.iter().zip(&crown[0]) {
                    assert!(a >= b, "CPU alpha-CROWN {a} looser than CROWN {b}");
                }
                for (a, b) in on_gpu.iter().zip(&crown[1]) {
                    assert!(a >= b, "GPU alpha-CROWN {a} looser than CROWN {b}");
                }
            }
        }
        eprintln!("{}: CROWN-IBP, CROWN and alpha-CROWN ok", arch.name());
    }

    // Branch and bound on a tiny network: the same verdicts on both devices.
    let mut rng = Rng::seed(8);
    let mut spec = ModelSpec::new(Arch::Mlp, [1, 1, 2], 3);
    spec.width = 8.0 / 256.0;
    let cpu = Model::new(spec, &mut rng).unwrap();
    let gpu = cpu.to_device(Device::Cuda).unwrap();
    let (net_c, net_g) = (BoundNet::new(&cpu).unwrap(), BoundNet::new(&gpu).unwrap());
    for i in 0..2 {
        let x = Tensor::from_vec(
            vec![0.2 + 0.3 * i as f32, 0.7 - 0.1 * i as f32],
            &[1, 1, 1, 2],
        );
        let y = with_no_grad(|| cpu.forward(&x, cactus::nn::Mode::Eval)).argmax_rows()[0];
        for eps in [0.05, 0.2] {
            let a = verify_point(&cpu, &net_c, &x, y, eps, None, &cfg).unwrap();
            let b = verify_point(&gpu, &net_g, &x, y, eps, None, &cfg).unwrap();
            assert_eq!(
                std::mem::discriminant(&a.verdict),
                std::mem::discriminant(&b.verdict),
                "point {i} eps {eps}: CPU {:?}, GPU {:?}",
                a.verdict,
                b.verdict
            );
        }
    }
    eprintln!("branch and bound: ok");
}
