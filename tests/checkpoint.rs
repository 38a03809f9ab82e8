//! Checkpoints: bit-exact round trips, and a clear error for every kind of bad file.

use cactus::io::{load_checkpoint, load_checkpoint_for, save_checkpoint};
use cactus::nn::{Arch, Layer, Model, ModelSpec, Normalization};
use cactus::rng::Rng;
use cactus::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cactus-ckpt-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A cnn7 whose batch-norm running statistics moved away from their initial values.
fn trained_cnn7() -> Model {
    let mut rng = Rng::seed(3);
    let mut spec = ModelSpec::new(Arch::Cnn7, [3, 8, 8], 10);
    spec.width = 0.125;
    spec.normalization = Some(Normalization {
        mean: vec![0.5, 0.4, 0.3],
        std: vec![0.2, 0.25, 0.3],
    });
    let mut model = Model::new(spec, &mut rng).unwrap();
    let x = Tensor::rand_uniform(&[4, 3, 8, 8], 0.0, 1.0, &mut rng);
    model.forward_train(&x);
    model.forward_train(&x);
    model
}

fn assert_same(a: &Model, b: &Model) {
    assert_eq!(a.spec, b.spec);
    let (pa, pb) = (a.net.named_parameters(), b.net.named_parameters());
    assert_eq!(pa.len(), pb.len());
    for ((na, ta), (nb, tb)) in pa.iter().zip(&pb) {
        assert_eq!(na, nb);
        assert!(ta.bit_eq(tb), "{na} differs after the round trip");
    }
    for (la, lb) in a.net.layers.iter().zip(&b.net.layers) {
        if let (Layer::BatchNorm(x), Layer::BatchNorm(y)) = (la, lb) {
            assert!(x.running_mean.bit_eq(&y.running_mean));
            assert!(x.running_var.bit_eq(&y.running_var));
            assert_eq!(x.num_batches_tracked, y.num_batches_tracked);
        }
    }
}

#[test]
fn round_trip_is_bit_exact_with_pytorch_names() {
    let dir = temp_dir("roundtrip");
    let path = dir.join("model.safetensors");
    let model = trained_cnn7();
    let mut extra = BTreeMap::new();
    extra.insert("training".to_string(), "{\"method\":\"std\"}".to_string());
    save_checkpoint(&path, &model, &extra).unwrap();
    let back = load_checkpoint(&path).unwrap();
    assert_same(&model, &back.model);
    assert_eq!(back.extra.get("training").unwrap(), "{\"method\":\"std\"}");

    // The names and layouts are PyTorch's state_dict for the same nn.Sequential.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert!(names.contains(&"0.weight") && names.contains(&"1.running_mean"));
    assert_eq!(st.tensor("0.weight").unwrap().shape(), &[8, 3, 3, 3]);
    assert_eq!(
        st.tensor("1.num_batches_tracked").unwrap().dtype(),
        Dtype::I64
    );
    assert_eq!(
        load_checkpoint(&path).unwrap().model.net.layers.len(),
        model.net.layers.len()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn error_of(path: &std::path::Path) -> String {
    match load_checkpoint(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrite a checkpoint's tensors and metadata through `edit`.
fn rewrite(
    src: &std::path::Path,
    dst: &std::path::Path,
    edit: impl Fn(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>, &mut HashMap<String, String>),
) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut meta);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn bad_checkpoints_are_rejected_with_a_reason() {
    let dir = temp_dir("bad");
    let good = dir.join("good.safetensors");
    let model = trained_cnn7();
    save_checkpoint(&good, &model, &BTreeMap::new()).unwrap();

    let missing = dir.join("nope.safetensors");
    let e = error_of(&missing);
    assert!(
        e.contains("nope.safetensors") && e.contains("No such file"),
        "{e}"
    );

    let truncated = dir.join("truncated.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = error_of(&truncated);
    assert!(e.contains("truncated or corrupt"), "{e}");

    let wrong_shape = dir.join("shape.safetensors");
    rewrite(&good, &wrong_shape, |ts, _| {
        let t = ts.iter_mut().find(|t| t.0 == "0.weight").unwrap();
        t.2 = vec![4, 6, 3, 3];
    });
    let e = error_of(&wrong_shape);
    assert!(
        e.contains("'0.weight' has shape [4, 6, 3, 3], expected [8, 3, 3, 3]"),
        "{e}"
    );

    let missing_tensor = dir.join("missing.safetensors");
    rewrite(&good, &missing_tensor, |ts, _| {
        ts.retain(|t| t.0 != "4.running_var")
    });
    let e = error_of(&missing_tensor);
    assert!(e.contains("missing tensor '4.running_var'"), "{e}");

    let nan = dir.join("nan.safetensors");
    rewrite(&good, &nan, |ts, _| {
        let t = ts.iter_mut().find(|t| t.0 == "0.bias").unwrap();
        t.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = error_of(&nan);
    assert!(e.contains("'0.bias' contains NaN"), "{e}");

    let other_arch = dir.join("arch.safetensors");
    rewrite(&good, &other_arch, |_, meta| {
        let layers = meta
            .get("cactus.layers")
            .unwrap()
            .replace("Conv2d(3, 8", "Conv2d(3, 9");
        meta.insert("cactus.layers".into(), layers);
    });
    let e = error_of(&other_arch);
    assert!(
        e.contains("architecture differs") && e.contains("layer 0"),
        "{e}"
    );

    let foreign = dir.join("foreign.safetensors");
    rewrite(&good, &foreign, |_, meta| {
        meta.remove("cactus.model");
    });
    assert!(error_of(&foreign).contains("not a cactus checkpoint"));

    // Right file, wrong expectations: a cnn7 where a small net was asked for.
    let want = ModelSpec::new(Arch::Small, [1, 28, 28], 10);
    let e = load_checkpoint_for(&good, &want)
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        e.contains("architecture cnn7 (expected small)") && e.contains("input shape"),
        "{e}"
    );
    assert!(load_checkpoint_for(&good, &model.spec).is_ok());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn random_and_truncated_bytes_never_panic() {
    let dir = temp_dir("fuzz");
    let good = dir.join("good.safetensors");
    let mut rng = Rng::seed(9);
    let model = Model::new(ModelSpec::new(Arch::Mlp, [1, 4, 4], 3), &mut rng).unwrap();
    save_checkpoint(&good, &model, &BTreeMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.join("fuzzed.safetensors");
    for i in 0..300 {
        let mut b = if i % 3 == 0 {
            bytes[..rng.below(bytes.len())].to_vec()
        } else {
            bytes.clone()
        };
        if i % 3 != 0 {
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(b.len());
                b[at] = rng.below(256) as u8;
            }
        }
        if i % 50 == 1 {
            b = (0..rng.below(200)).map(|_| rng.below(256) as u8).collect();
        }
        std::fs::write(&path, &b).unwrap();
        // Either loads (a flipped bit inside a weight is still a valid file) or errors: no panic.
        let _ = load_checkpoint(&path);
    }
    std::fs::remove_dir_all(dir).unwrap();
}
