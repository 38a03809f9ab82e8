//! CPU-vs-CUDA parity of the compression kernels (`compress/prune/prune.cu`, `compress/nm/nm.cu`,
//! `compress/quant/quant.cu`): pruning masks are identical (exact counts and the same tie rule;
//! N:M masks on every model, tail groups, ties and NaN included), fake quantization and the
//! integer codes are bit-identical (the same f64 arithmetic and rounding), the STE gradient
//! equal. Each test skips, saying why, where no GPU is present.

use cactus::compress::nm::{launch::nm_mask as cuda_nm_mask, nm_mask};
use cactus::compress::prune::launch::{apply_mask, prune_masks as cuda_masks, DeviceWeight};
use cactus::compress::prune::{prune_masks, Magnitude};
use cactus::compress::quant::launch::{
    fake_quantize_fp16, fake_quantize_int, quant_params, quantize_codes, ste_backward,
};
use cactus::compress::quant::{fake_quantize, quantize_int, Format, Granularity};
use cactus::nn::{Arch, Init, Layer, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::runtime::cuda::{device_or_skip, DeviceBuffer};
use cactus::{Device, Tensor};

fn models() -> Vec<Model> {
    let mut small = ModelSpec::new(Arch::Small, [1, 28, 28], 10);
    small.init = Init::Ibp;
    let mut cnn7 = ModelSpec::new(Arch::Cnn7, [3, 32, 32], 10);
    cnn7.width = 0.25;
    let mut rng = Rng::seed(3);
    let mut out = vec![
        Model::new(small, &mut rng).unwrap(),
        Model::new(cnn7, &mut rng).unwrap(),
    ];
    // Ties: a model whose weights are rounded to a few levels.
    let mut tied = out[0].clone();
    for w in tied.net.layers.iter_mut().filter_map(Layer::weight_mut) {
        let v: Vec<f32> = w.data().iter().map(|x| (x * 50.0).round() / 50.0).collect();
        *w = Tensor::from_vec(v, w.shape());
    }
    out.push(tied);
    // Rows whose scores tie up to rounding: every odd row of every weight is the row before it
    // reversed, so only the order of summation separates their scores.
    let mut permuted = out[1].clone();
    for w in permuted.net.layers.iter_mut().filter_map(Layer::weight_mut) {
        let row = w.numel() / w.dim(0);
        let mut v = w.to_vec();
        for r in (1..w.dim(0)).step_by(2) {
            let prev: Vec<f32> = v[(r - 1) * row..r * row].iter().rev().copied().collect();
            v[r * row..(r + 1) * row].copy_from_slice(&prev);
        }
        *w = Tensor::from_vec(v, w.shape());
    }
    out.push(permuted);
    out
}

#[test]
fn pruning_masks_match_the_cpu() {
    let Some(_gpu) = device_or_skip("pruning_masks_match_the_cpu") else {
        return;
    };
    for model in models() {
        let layers = &model.net.layers;
        let classifier = layers.iter().rposition(|l| matches!(l, Layer::Linear(_)));
        let uploaded: Vec<(usize, DeviceBuffer, Vec<usize>)> = layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.weight().map(|w| (i, w, w.shape().to_vec())))
            .map(|(i, w, s)| (i, DeviceBuffer::from_host(w.data()).unwrap(), s))
            .collect();
        let weights: Vec<DeviceWeight<'_>> = uploaded
            .iter()
            .map(|(i, b, s)| DeviceWeight {
                values: b,
                shape: s,
                classifier: Some(*i) == classifier,
            })
            .collect();
        for method in Magnitude::ALL {
            for ratio in [0.0, 0.1, 0.5, 0.7, 0.95, 0.99] {
                let cpu = prune_masks(&model, method.method(), ratio).unwrap();
                let gpu = cuda_masks(&weights, method, ratio).unwrap();
                assert_eq!(gpu.units, cpu.units, "{method} at {ratio}: unit counts");
                for ((i, _, _), g) in uploaded.iter().zip(&gpu.masks) {
                    let c = cpu.get(*i).unwrap();
                    assert_eq!(
                        g.to_host().unwrap(),
                        c.data(),
                        "{method} at {ratio}: layer {i} differs"
                    );
                }
            }
        }
        // Masking equals multiplying.
        let (_, w, _) = &uploaded[0];
        let mask = &cuda_masks(&weights, "gul1".parse().unwrap(), 0.5)
            .unwrap()
            .masks[0];
        let y = apply_mask(w, mask).unwrap().to_host().unwrap();
        let expect: Vec<f32> = w
            .to_host()
            .unwrap()
            .iter()
            .zip(mask.to_host().unwrap())
            .map(|(a, b)| a * b)
            .collect();
        assert_eq!(y, expect);
    }
}

#[test]
fn nm_masks_match_the_cpu() {
    let Some(_gpu) = device_or_skip("nm_masks_match_the_cpu") else {
        return;
    };
    for model in models() {
        // Through the registry: weights on the GPU get their masks computed there.
        let on_gpu = model.to_device(Device::Cuda).unwrap();
        for name in ["2:4", "1:4", "4:8", "3:7", "63:64"] {
            let method: cactus::compress::PruneMethod = name.parse().unwrap();
            let ratio = method.implied_ratio().unwrap();
            let cpu = prune_masks(&model, method, ratio).unwrap();
            let gpu = prune_masks(&on_gpu, method, ratio).unwrap();
            assert_eq!(gpu.pruned_weights, cpu.pruned_weights, "{name}");
            assert_eq!(gpu.total_weights, cpu.total_weights, "{name}");
            for (i, (c, g)) in cpu.layers.iter().zip(&gpu.layers).enumerate() {
                match (c, g) {
                    (Some(c), Some(g)) => {
                        assert!(g.is_cuda(), "{name}: layer {i}'s mask left the GPU");
                        assert_eq!(g.to_vec(), c.to_vec(), "{name}: layer {i} differs");
                    }
                    (None, None) => {}
                    _ => panic!("{name}: layer {i} has a mask on one device only"),
                }
            }
        }
    }
    // The kernel on NaN, infinities, signed zeros and ties, in rows of every tail length.
    let mut rng = Rng::seed(6);
    let mut values: Vec<f32> = Tensor::randn(&[4 * 3 * 5 * 7], 0.0, 1.0, &mut rng).to_vec();
    for (k, v) in values.iter_mut().enumerate() {
        match k % 11 {
            0 => *v = f32::NAN,
            1 => *v = -f32::NAN,
            2 => *v = f32::INFINITY,
            3 => *v = -0.0,
            4 => *v = 0.0,
            5 | 6 => *v = -0.5,
            7 => *v = 0.5,
            _ => {}
        }
    }
    let dev = DeviceBuffer::from_host(&values).unwrap();
    for (rows, row_len) in [
        (420, 1),
        (140, 3),
        (84, 5),
        (60, 7),
        (28, 15),
        (12, 35),
        (1, 420),
    ] {
        for (n, m) in [(2, 4), (1, 4), (3, 4), (4, 8), (1, 2), (5, 64)] {
            let gpu = cuda_nm_mask(&dev, rows, row_len, n, m)
                .unwrap()
                .to_host()
                .unwrap();
            let cpu = nm_mask(&values, row_len, n, m);
            assert_eq!(gpu, cpu, "{n}:{m} on {rows} rows of {row_len}");
        }
    }
    assert!(
        cuda_nm_mask(&dev, 7, 7, 2, 4).is_err(),
        "a shape that does not fit"
    );
    assert!(cuda_nm_mask(&dev, 420, 1, 4, 4).is_err(), "N = M");
    assert!(cuda_nm_mask(&dev, 420, 1, 1, 65).is_err(), "M > 64");
}

#[test]
fn fake_quantization_matches_the_cpu_bit_for_bit() {
    let Some(_gpu) = device_or_skip("fake_quantization_matches_the_cpu_bit_for_bit") else {
        return;
    };
    let mut rng = Rng::seed(5);
    let mut tensors = vec![
        Tensor::randn(&[64, 32, 3, 3], 0.0, 0.05, &mut rng),
        Tensor::randn(&[10, 100], 0.3, 1.0, &mut rng),
        Tensor::randn(&[1, 7], 0.0, 1.0, &mut rng),
        Tensor::full(&[3, 5], 0.25),
        Tensor::randn(&[300_001], 0.0, 2.0, &mut rng),
    ];
    // A constant channel among varying ones.
    let mut v = Tensor::randn(&[4, 9], 0.0, 1.0, &mut rng).to_vec();
    v[9..18].iter_mut().for_each(|x| *x = -0.5);
    tensors.push(Tensor::from_vec(v, &[4, 9]));
    for w in &tensors {
        let dev = DeviceBuffer::from_host(w.data()).unwrap();
        for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
            for bits in [8u8, 4, 3, 2] {
                let p = quant_params(&dev, w.shape(), bits, granularity).unwrap();
                let gpu = fake_quantize_int(&dev, &p).unwrap().to_host().unwrap();
                let cpu = fake_quantize(w, Format::Int(bits), granularity);
                let same = gpu
                    .iter()
                    .zip(cpu.data())
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "int{bits} {granularity} {:?}", w.shape());
                let (q, _, _) = quantize_int(w, bits, granularity);
                assert_eq!(quantize_codes(&dev, &p).unwrap(), q);
                // STE: the CPU op's gradient for an upstream gradient g.
                let g = Tensor::randn(w.shape(), 0.0, 1.0, &mut rng);
                let leaf = w.requires_grad();
                let y = fake_quantize(&leaf, Format::Int(bits), granularity);
                let grads = y.mul(&g).sum().backward();
                let cpu_grad = grads.get(&leaf).unwrap().to_vec();
                let gpu_grad = ste_backward(&dev, &DeviceBuffer::from_host(g.data()).unwrap(), &p)
                    .unwrap()
                    .to_host()
                    .unwrap();
                assert_eq!(gpu_grad, cpu_grad, "STE int{bits} {granularity}");
            }
        }
        let gpu = fake_quantize_fp16(&dev).unwrap().to_host().unwrap();
        let cpu = fake_quantize(w, Format::Fp16, Granularity::PerTensor);
        assert!(gpu
            .iter()
            .zip(cpu.data())
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // fp16 edge values: ties, overflow, subnormals, infinities.
    let edge = vec![
        1.0 + 2f32.powi(-11),
        65520.0,
        1e9,
        -1e9,
        6e-8,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
    ];
    let dev = DeviceBuffer::from_host(&edge).unwrap();
    let gpu = fake_quantize_fp16(&dev).unwrap().to_host().unwrap();
    let cpu = fake_quantize(
        &Tensor::from_vec(edge.clone(), &[8]),
        Format::Fp16,
        Granularity::PerTensor,
    );
    assert!(
        gpu.iter()
            .zip(cpu.data())
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{gpu:?}"
    );
}

#[test]
fn bad_shapes_are_errors() {
    let Some(_gpu) = device_or_skip("bad_shapes_are_errors") else {
        return;
    };
    let dev = DeviceBuffer::from_host(&[1.0, 2.0, 3.0]).unwrap();
    assert!(quant_params(&dev, &[2, 2], 8, Granularity::PerTensor).is_err());
    assert!(quant_params(&dev, &[3], 9, Granularity::PerTensor).is_err());
    let other = DeviceBuffer::from_host(&[1.0, 2.0]).unwrap();
    assert!(apply_mask(&dev, &other).is_err());
    // Non-finite weights cannot be quantized (the CPU refuses them too).
    for bad in [f32::NAN, f32::INFINITY] {
        let dev = DeviceBuffer::from_host(&[1.0, bad, -2.0]).unwrap();
        for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
            let err = quant_params(&dev, &[3, 1], 8, granularity).err().unwrap();
            assert!(err.to_string().contains("NaN or infinite"), "{err}");
        }
    }
}
