//! Times the `small` network's convolutions (the `conv_small` bench shapes) at several group
//! sizes G (samples per GEMM) through the `*_grouped` entry points, for choosing the rule in
//! `src/ops/conv/cpu.rs` (docs/performance.md, "Batched small convolutions"). The settings are
//! cycled through `rounds` times (first argument, default 25) and each keeps its fastest time,
//! so that load from other jobs on a shared machine, which only adds time, drops out of the
//! comparison. Prints, per pass, `setting(G):µs/ratio` with ratio = time at G = 1 ÷ time.
//!
//! `cargo run --release --example conv_group_sweep -- 25`

use cactus::ops::conv::cpu::{
    abs_weight, conv2d_backward_grouped, conv2d_forward_grouped, group_size_for_columns,
    interval_conv2d_backward_grouped, interval_conv2d_forward_grouped, ConvGeometry,
};
use cactus::rng::Rng;
use cactus::Tensor;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let mut rng = Rng::seed(0);
    for n in [32usize, 128] {
        for (name, c_in, hw, c_out, stride, need_input) in
            [("c1", 1, 28, 16, 2, false), ("c2", 16, 14, 32, 1, true)]
        {
            let geo = ConvGeometry {
                n,
                c_in,
                h: hw,
                w: hw,
                c_out,
                kh: 4,
                kw: 4,
                stride: (stride, stride),
                padding: (1, 1),
            };
            let x = Tensor::rand_uniform(&[2 * geo.input_len()], 0.0, 1.0, &mut rng);
            let w = Tensor::randn(&[geo.weight_len()], 0.0, 0.05, &mut rng);
            let b = Tensor::randn(&[geo.c_out], 0.0, 0.05, &mut rng);
            let gout = Tensor::randn(&[2 * geo.output_len()], 0.0, 1.0, &mut rng);
            let (x, w, b, gout) = (x.data(), w.data(), b.data(), gout.data());
            let (x1, gout1) = (&x[..geo.input_len()], &gout[..geo.output_len()]);
            let aw = abs_weight(w);
            let need = [need_input, true, true];
            // (label, G for the plain passes, G for the interval stack of 2n samples)
            let fixed = [1, 2, 4, 8, 16, 64].map(|g| (format!("G{g}"), g, g));
            let by_cols = [256, 512, 1024, 2048, 4096].map(|c| {
                let rule = |items| group_size_for_columns(&geo, items, c);
                (format!("C{c}"), rule(n), rule(2 * n))
            });
            let settings: Vec<_> = fixed.into_iter().chain(by_cols).collect();
            for pass in ["fwd", "bwd", "ifwd", "ibwd"] {
                let mut best = vec![f64::INFINITY; settings.len()];
                let reps = if n == 32 { 10 } else { 3 };
                for _ in 0..rounds {
                    for (i, (_, gp, gi)) in settings.iter().enumerate() {
                        let t = Instant::now();
                        for _ in 0..reps {
                            match pass {
                                "fwd" => {
                                    black_box(conv2d_forward_grouped(x1, w, Some(b), &geo, *gp));
                                }
                                "bwd" => {
                                    black_box(conv2d_backward_grouped(
                                        x1, w, gout1, &geo, need, *gp,
                                    ));
                                }
                                "ifwd" => {
                                    black_box(interval_conv2d_forward_grouped(
                                        x,
                                        w,
                                        &aw,
                                        Some(b),
                                        &geo,
                                        *gi,
                                    ));
                                }
                                _ => {
                                    black_box(interval_conv2d_backward_grouped(
                                        x, w, &aw, gout, &geo, need, *gi,
                                    ));
                                }
                            }
                        }
                        best[i] = best[i].min(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
                    }
                }
                let row: Vec<String> = settings
                    .iter()
                    .zip(&best)
                    .map(|((label, gp, gi), t)| {
                        let g = if pass.starts_with('i') { gi } else { gp };
                        format!("{label}({g}):{t:.0}/{:.2}", best[0] / t)
                    })
                    .collect();
                println!("{pass} {name} b{n}: {}", row.join(" "));
            }
        }
    }
}
