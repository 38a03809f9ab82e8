//! Real networks and properties that nobody here made: VNN-COMP 2021 instances vendored in
//! `tests/fixtures/vnncomp/` (mnistfc 256x2, oval21 base and deep conv nets) with the
//! competition's published per-tool results.
//!
//! - the imported networks compute what onnxruntime computes (its outputs at box centres are
//!   stored beside the instances);
//! - every property file parses, with the input and output counts of its network;
//! - on instances that are quick to decide, cactus's answers never contradict the published
//!   ones and every `sat` comes with a counterexample the network checks.
//!
//! The whole benchmarks, with the competition's time limits, are compared by
//! `scripts/verify/vnncomp_compare.sh` (results in docs/interchange.md).

use cactus::nn::Model;
use cactus::onnx::{import_model, read_model};
use cactus::verify::property::{
    check_property, is_counterexample, outputs, Answer, PropertyConfig,
};
use cactus::verify::Certifier;
use cactus::vnnlib::Property;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vnncomp")
}

/// The file, or its `.gz` as stored.
fn stored(path: PathBuf) -> PathBuf {
    if path.exists() {
        return path;
    }
    let mut gz = path.into_os_string();
    gz.push(".gz");
    PathBuf::from(gz)
}

fn network(bench: &str, onnx: &str) -> Model {
    let path = stored(fixtures().join(bench).join(onnx));
    import_model(&read_model(&path).unwrap()).unwrap().model
}

fn property(bench: &str, vnnlib: &str) -> Property {
    Property::read(&stored(fixtures().join(bench).join(vnnlib))).unwrap()
}

/// instances.csv rows: (onnx, vnnlib).
fn instances(bench: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(fixtures().join(bench).join("instances.csv"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].trim().to_string(), f[1].trim().to_string())
        })
        .collect()
}

/// The published answers per vnnlib file: "sat" if any tool found a counterexample, "unsat"
/// if some tool proved it and none found one.
fn published(bench: &str) -> BTreeMap<String, &'static str> {
    let text = std::fs::read_to_string(fixtures().join(bench).join("published.csv")).unwrap();
    let mut out: BTreeMap<String, &'static str> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (vnnlib, result) = (f[1].to_string(), f[3]);
        let entry = out.entry(vnnlib).or_insert("unknown");
        match result {
            // nnv's 2021 answers contradict every other tool on oval21's sat instances: a
            // sat anywhere wins.
            "sat" => *entry = "sat",
            "unsat" if *entry != "sat" => *entry = "unsat",
            _ => {}
        }
    }
    out
}

#[test]
fn imported_networks_compute_what_onnxruntime_computes() {
    for bench in ["mnistfc", "oval21"] {
        let text =
            std::fs::read_to_string(fixtures().join(bench).join("reference_outputs.json")).unwrap();
        let refs: serde_json::Value = serde_json::from_str(&text).unwrap();
        let refs = refs.as_array().unwrap();
        assert!(!refs.is_empty());
        for r in refs {
            let (onnx, vnnlib) = (r["onnx"].as_str().unwrap(), r["vnnlib"].as_str().unwrap());
            let model = network(bench, onnx);
            let prop = property(bench, vnnlib);
            let case = &prop.cases[0];
            let centre: Vec<f32> = case
                .lower
                .iter()
                .zip(&case.upper)
                .map(|(&l, &u)| ((l as f64 + u as f64) / 2.0) as f32)
                .collect();
            let got = outputs(&model, &centre);
            let want: Vec<f64> = r["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * scale,
                    "{bench}/{onnx} on {vnnlib}: cactus {got:?}, onnxruntime {want:?}"
                );
            }
        }
    }
}

#[test]
fn every_vendored_property_fits_its_network() {
    for bench in ["mnistfc", "oval21"] {
        let mut nets = BTreeMap::new();
        for (onnx, vnnlib) in instances(bench) {
            let model = nets
                .entry(onnx.clone())
                .or_insert_with(|| network(bench, &onnx));
            let prop = property(bench, &vnnlib);
            let numel: usize = model.spec.input_shape.iter().product();
            assert_eq!(prop.num_inputs, numel, "{vnnlib}");
            assert_eq!(prop.num_outputs, model.spec.num_classes, "{vnnlib}");
            assert!(
                prop.robustness_label().is_some(),
                "{vnnlib} is a robustness property"
            );
        }
    }
}

/// Instances each decided in well under a second, by attack (sat) or by bounds (unsat).
#[test]
fn answers_never_contradict_the_competition() {
    let quick = [
        ("mnistfc", "prop_7_0.03.vnnlib", false),
        ("mnistfc", "prop_1_0.05.vnnlib", false),
        ("mnistfc", "prop_0_0.03.vnnlib", true),
        (
            "oval21",
            "vnnlib/cifar_base_kw-img1697-eps0.0014379084967320263.vnnlib",
            false,
        ),
        (
            "oval21",
            "vnnlib/cifar_base_kw-img1598-eps0.0026143790849673205.vnnlib",
            false,
        ),
        (
            "oval21",
            "vnnlib/cifar_deep_kw-img8406-eps0.00392156862745098.vnnlib",
            true,
        ),
    ];
    let mut decided = 0;
    for (bench, vnnlib, unsound) in quick {
        let (onnx, _) = instances(bench)
            .into_iter()
            .find(|(_, v)| v == vnnlib)
            .unwrap();
        let model = network(bench, &onnx);
        let prop = property(bench, vnnlib);
        let mut cfg = PropertyConfig {
            timeout: Duration::from_secs(20),
            attack_rounds: 1,
            ..Default::default()
        };
        if unsound {
            // As the competition's tools bound: in floating point, with branch and bound.
            cfg.verify.sound = false;
            cfg.certifiers = vec![Certifier::Crown, Certifier::Bab];
        }
        let answer = check_property(&model, &prop, &cfg).unwrap();
        let want = published(bench)[vnnlib];
        match &answer {
            Answer::Sat { x, .. } => {
                assert_ne!(want, "unsat", "{vnnlib}: cactus sat, the competition unsat");
                assert!(
                    prop.cases
                        .iter()
                        .any(|c| is_counterexample(&model, c, x).is_some()),
                    "{vnnlib}: the counterexample does not check"
                );
                decided += 1;
            }
            Answer::Unsat => {
                assert_ne!(want, "sat", "{vnnlib}: cactus unsat, the competition sat");
                decided += 1;
            }
            Answer::Unknown | Answer::Timeout => {}
        }
    }
    assert!(
        decided >= 5,
        "only {decided} of the quick instances decided"
    );
}
