//! `verify::property`: an `unsat` answer is never contradicted by sampling the box or by PGD,
//! a `sat` answer's counterexample lies in the box and satisfies the unsafe region, on
//! networks imported from ONNX (normalisation, batch norm) and for general linear output
//! constraints as well as robustness margins.

use cactus::attack::{pgd_outcome, PgdConfig, Region};
use cactus::nn::{Arch, Layer, Mode, Model, ModelSpec, Normalization};
use cactus::onnx::{export_model, import_model, ExportOptions};
use cactus::rng::Rng;
use cactus::verify::property::{
    check_property, is_counterexample, outputs, Answer, PropertyConfig,
};
use cactus::vnnlib::{Case, Constraint, Property};
use cactus::Tensor;
use std::collections::BTreeMap;
use std::time::Duration;

/// A random network, through ONNX and back (what `cactus verify` runs on).
fn network(arch: Arch, input: [usize; 3], seed: u64) -> Model {
    let mut rng = Rng::seed(seed);
    let mut spec = ModelSpec::new(arch, input, 4);
    spec.width = 0.25;
    spec.normalization = Some(Normalization {
        mean: vec![0.3; input[0]],
        std: vec![0.7; input[0]],
    });
    let mut m = Model::new(spec, &mut rng).unwrap();
    for layer in &mut m.net.layers {
        if let Layer::BatchNorm(b) = layer {
            let c = b.channels();
            b.weight = Tensor::rand_uniform(&[c], 0.5, 1.5, &mut rng);
            b.running_mean = Tensor::rand_uniform(&[c], -0.2, 0.2, &mut rng);
            b.running_var = Tensor::rand_uniform(&[c], 0.5, 2.0, &mut rng);
        }
    }
    let proto = export_model(
        &m,
        &BTreeMap::new(),
        &BTreeMap::new(),
        ExportOptions::default(),
    )
    .unwrap();
    import_model(&proto).unwrap().model
}

fn robustness(lo: Vec<f32>, hi: Vec<f32>, label: usize, classes: usize) -> Property {
    let region = (0..classes)
        .filter(|&j| j != label)
        .map(|j| {
            vec![Constraint {
                terms: vec![(label, -1.0), (j, 1.0)],
                constant: 0.0,
                strict: false,
            }]
        })
        .collect();
    Property {
        num_inputs: lo.len(),
        num_outputs: classes,
        cases: vec![Case {
            lower: lo,
            upper: hi,
            unsafe_region: region,
        }],
    }
}

fn config() -> PropertyConfig {
    PropertyConfig {
        timeout: Duration::from_secs(30),
        restarts: 4,
        steps: 20,
        attack_rounds: 1,
        ..Default::default()
    }
}

/// No sampled point of the box, and no PGD point, is a counterexample.
fn assert_unbreakable(model: &Model, property: &Property, label: Option<usize>, rng: &mut Rng) {
    let [c, h, w] = model.spec.input_shape;
    for case in &property.cases {
        for _ in 0..300 {
            let x: Vec<f32> = case
                .lower
                .iter()
                .zip(&case.upper)
                .map(|(&l, &u)| {
                    if rng.uniform() < 0.3 {
                        if rng.uniform() < 0.5 {
                            l
                        } else {
                            u
                        }
                    } else {
                        (l + (u - l) * rng.uniform()).min(u)
                    }
                })
                .collect();
            assert!(
                is_counterexample(model, case, &x).is_none(),
                "an unsat property has a sampled counterexample"
            );
        }
        if let Some(y) = label {
            let lo = Tensor::from_vec(case.lower.clone(), &[1, c, h, w]);
            let hi = Tensor::from_vec(case.upper.clone(), &[1, c, h, w]);
            let eps = case
                .lower
                .iter()
                .zip(&case.upper)
                .map(|(l, u)| u - l)
                .fold(0.0, f32::max);
            let centre = lo.add(&hi).mul_scalar(0.5);
            let out = pgd_outcome(
                model,
                &centre,
                &[y],
                &Region::new(lo, hi, eps),
                &PgdConfig::evaluation(),
                Mode::Eval,
                rng,
            );
            assert!(
                is_counterexample(model, case, &out.x_adv.to_vec()).is_none(),
                "PGD breaks an unsat property"
            );
        }
    }
}

fn check_answer(
    model: &Model,
    property: &Property,
    answer: &Answer,
    label: Option<usize>,
    rng: &mut Rng,
) {
    match answer {
        Answer::Sat { x, y } => {
            let case = property
                .cases
                .iter()
                .find(|c| is_counterexample(model, c, x).is_some())
                .expect("the counterexample lies in a case's box and is unsafe");
            assert!(case
                .unsafe_region
                .iter()
                .any(|conj| conj.iter().all(|k| k.holds(y))));
            assert_eq!(&outputs(model, x), y, "reported outputs are the model's");
        }
        Answer::Unsat => assert_unbreakable(model, property, label, rng),
        Answer::Unknown | Answer::Timeout => {}
    }
}

#[test]
fn robustness_answers_hold_under_sampling_and_attack() {
    let mut rng = Rng::seed(11);
    let mut seen = BTreeMap::new();
    for (arch, input) in [
        (Arch::Mlp, [1, 5, 5]),
        (Arch::Small, [1, 8, 8]),
        (Arch::Cnn7, [2, 6, 6]),
    ] {
        let model = network(arch, input, 3);
        let n: usize = input.iter().product();
        for (k, eps) in [1e-4f32, 0.002, 0.05, 0.3].into_iter().enumerate() {
            let x: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
            let logits = outputs(&model, &x);
            let label = (0..4)
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap();
            // A wrong label as well: its property is sat at the centre.
            for y in [label, (label + 1 + k) % 4] {
                let lo: Vec<f32> = x.iter().map(|&v| (v - eps).max(0.0)).collect();
                let hi: Vec<f32> = x.iter().map(|&v| (v + eps).min(1.0)).collect();
                let prop = robustness(lo, hi, y, 4);
                let answer = check_property(&model, &prop, &config()).unwrap();
                if y != label {
                    assert!(
                        matches!(answer, Answer::Sat { .. }),
                        "misclassified centre must be sat"
                    );
                }
                check_answer(&model, &prop, &answer, Some(y), &mut rng);
                *seen.entry(answer.name()).or_insert(0) += 1;
            }
        }
    }
    assert!(
        seen.get("unsat").copied().unwrap_or(0) > 0,
        "some property proved: {seen:?}"
    );
    assert!(
        seen.get("sat").copied().unwrap_or(0) > 0,
        "some property broken: {seen:?}"
    );
}

#[test]
fn general_linear_constraints_are_decided_soundly() {
    let mut rng = Rng::seed(12);
    let model = network(Arch::Mlp, [1, 4, 4], 5);
    let x: Vec<f32> = (0..16).map(|_| rng.uniform()).collect();
    let y0 = outputs(&model, &x);
    let mut seen = BTreeMap::new();
    for eps in [0.001f32, 0.05, 0.5] {
        let lo: Vec<f32> = x.iter().map(|&v| (v - eps).max(0.0)).collect();
        let hi: Vec<f32> = x.iter().map(|&v| (v + eps).min(1.0)).collect();
        // Unsafe when y_0 ≥ t for thresholds around the centre's value, or
        // y_1 − 2·y_2 + c ≥ 0 together with y_3 ≤ y_0.
        for shift in [-0.5f64, -0.01, 0.01, 0.5] {
            let t = y0[0] as f64 + shift;
            let c = -(y0[1] as f64 - 2.0 * y0[2] as f64) + shift;
            let prop = Property {
                num_inputs: 16,
                num_outputs: 4,
                cases: vec![Case {
                    lower: lo.clone(),
                    upper: hi.clone(),
                    unsafe_region: vec![
                        vec![Constraint {
                            terms: vec![(0, 1.0)],
                            constant: -t,
                            strict: false,
                        }],
                        vec![
                            Constraint {
                                terms: vec![(1, 1.0), (2, -2.0)],
                                constant: c,
                                strict: true,
                            },
                            Constraint {
                                terms: vec![(0, 1.0), (3, -1.0)],
                                constant: 0.0,
                                strict: false,
                            },
                        ],
                    ],
                }],
            };
            let answer = check_property(&model, &prop, &config()).unwrap();
            check_answer(&model, &prop, &answer, None, &mut rng);
            *seen.entry(answer.name()).or_insert(0) += 1;
        }
    }
    assert!(
        seen.contains_key("unsat") && seen.contains_key("sat"),
        "{seen:?}"
    );
}

#[test]
fn whole_box_unsafe_mismatched_property_and_timeout() {
    let model = network(Arch::Mlp, [1, 3, 3], 6);
    let lo = vec![0.2f32; 9];
    let hi = vec![0.4f32; 9];
    // An empty conjunction: every point of the box is unsafe.
    let everywhere = Property {
        num_inputs: 9,
        num_outputs: 4,
        cases: vec![Case {
            lower: lo.clone(),
            upper: hi.clone(),
            unsafe_region: vec![vec![]],
        }],
    };
    let answer = check_property(&model, &everywhere, &config()).unwrap();
    assert!(matches!(answer, Answer::Sat { .. }), "{answer:?}");
    // No case at all: nothing can be a counterexample.
    let nothing = Property {
        num_inputs: 9,
        num_outputs: 4,
        cases: vec![],
    };
    assert_eq!(
        check_property(&model, &nothing, &config()).unwrap(),
        Answer::Unsat
    );
    let wrong = robustness(vec![0.0; 10], vec![1.0; 10], 0, 4);
    let e = check_property(&model, &wrong, &config())
        .unwrap_err()
        .to_string();
    assert!(e.contains("10 inputs") && e.contains("9 inputs"), "{e}");
    // A huge box no certifier proves, with no time: timeout (or sat if the first attack wins).
    let cfg = PropertyConfig {
        timeout: Duration::ZERO,
        ..config()
    };
    let answer =
        check_property(&model, &robustness(vec![0.0; 9], vec![1.0; 9], 0, 4), &cfg).unwrap();
    assert!(
        matches!(answer, Answer::Timeout | Answer::Sat { .. }),
        "{answer:?}"
    );
}
