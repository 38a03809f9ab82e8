//! Fuzzing of every file cactus reads: safetensors checkpoints (fp32, fp16, int8), training
//! states, IDX images and labels (plain and gzip), CIFAR-10 binary batches and the report JSON
//! that `cactus merge` reads back.
//!
//! Valid files are mutated — cut at many points, bits flipped, length and dimension fields set
//! to huge values, shapes and dtypes swapped, NaN and infinities written into values, JSON
//! fields replaced — about 900 cases per file type, from a fixed seed (`Rng`), and each
//! case must end in a clean error or a valid result: no panic (`catch_unwind` around the
//! library; for the binary, exit code 0 or 1, no "panicked", no signal), and memory bounded.
//! The loaders run under a 16 MiB limit (`memory::with_limit`) and a counting global allocator
//! measures each case's peak, which must stay under four times the limit; the binary runs with
//! `--max-memory 64M` and its peak resident set (`wait4`) is bounded the same way.
//!
//! `cargo test --release --test fuzz -- --nocapture` prints the counts per file type (and with
//! `CACTUS_FUZZ_VERBOSE=1`, every error).

use cactus::compress::quant::{Format, Granularity};
use cactus::data::{self, cifar, idx, Dataset, DatasetKind, Split};
use cactus::eval::{Report, Row};
use cactus::io::{load_checkpoint, parse_checkpoint, save_checkpoint, save_compressed_checkpoint};
use cactus::nn::{Arch, Init, Mode, Model, ModelSpec};
use cactus::rng::Rng;
use cactus::runtime::memory;
use cactus::train::trainer::STATE_FILE;
use cactus::train::{Method, TrainConfig, Trainer};
use cactus::Tensor;
use flate2::write::GzEncoder;
use flate2::Compression;
use indicatif::ProgressBar;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---- memory accounting ----------------------------------------------------------------------

/// The global allocator of this test binary: the system's, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size > layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests of this file run one at a time, so that a case's peak is its own.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The memory limit the loaders run under.
const LIMIT: u64 = 16 << 20;
/// What one case may allocate at its peak, above what was live before it.
const BOUND: usize = 4 * LIMIT as usize;

/// Cases of one file type: how many, how they ended, the largest peak, the failures.
struct Tally {
    name: &'static str,
    cases: usize,
    ok: usize,
    refused: usize,
    peak: usize,
    start: Instant,
    failures: Vec<String>,
}

impl Tally {
    fn new(name: &'static str) -> Tally {
        Tally {
            name,
            cases: 0,
            ok: 0,
            refused: 0,
            peak: 0,
            start: Instant::now(),
            failures: Vec::new(),
        }
    }

    /// Run one case under the limit: it may succeed or fail with an error whose text contains
    /// `names` (the file), on one line; a panic or a peak above `BOUND` is a failure.
    fn case<T>(&mut self, what: &str, names: &str, f: impl FnOnce() -> cactus::Result<T>) {
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let result = catch_unwind(AssertUnwindSafe(|| memory::with_limit(LIMIT, f)));
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        self.cases += 1;
        self.peak = self.peak.max(peak);
        if peak > BOUND {
            self.failures.push(format!(
                "{what}: allocated {} at its peak, above {}",
                memory::format_bytes(peak as u64),
                memory::format_bytes(BOUND as u64)
            ));
        }
        match result {
            Err(_) => self.failures.push(format!("{what}: panicked")),
            Ok(Ok(_)) => self.ok += 1,
            Ok(Err(e)) => {
                self.refused += 1;
                let text = e.to_string();
                if std::env::var_os("CACTUS_FUZZ_VERBOSE").is_some() {
                    println!("{}: {what}: {text}", self.name);
                }
                if !text.contains(names) || text.contains('\n') {
                    self.failures.push(format!(
                        "{what}: the error is not one line naming {names}: {text}"
                    ));
                }
            }
        }
    }

    /// Print the counts; fail with the first failures, if any.
    fn finish(self) {
        println!(
            "fuzz {:<22} {:>4} cases: {:>4} loaded, {:>4} refused; peak {} above baseline; {:.1} s",
            self.name,
            self.cases,
            self.ok,
            self.refused,
            memory::format_bytes(self.peak as u64),
            self.start.elapsed().as_secs_f64()
        );
        assert!(
            self.failures.is_empty(),
            "{}: {} of {} cases failed:\n{}",
            self.name,
            self.failures.len(),
            self.cases,
            self.failures[..self.failures.len().min(20)].join("\n")
        );
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-fuzz-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// ---- mutations --------------------------------------------------------------------------------

/// Values that break size arithmetic: zero, one, around 2^31 and 2^32, and near 2^64.
const HUGE: [u64; 9] = [
    0,
    1,
    65_537,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 40,
    u64::MAX / 2,
    u64::MAX,
];

/// f32 values that a loader must not take for weights or statistics.
const BAD_F32: [f32; 7] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    -1.0,
    3e38,
    -0.0,
    1e-45,
];

/// Cut points spread over `len` (both ends included), then a few random ones.
fn cuts(len: usize, spread: usize, rng: &mut Rng) -> Vec<usize> {
    let mut c: Vec<usize> = (0..=spread).map(|i| i * len / spread).collect();
    c.extend((0..spread / 4).map(|_| rng.below(len + 1)));
    c
}

fn flip_bits(bytes: &mut [u8], n: usize, rng: &mut Rng) {
    if bytes.is_empty() {
        return;
    }
    for _ in 0..n {
        let at = rng.below(bytes.len());
        bytes[at] ^= 1 << rng.below(8);
    }
}

fn hostile_json(rng: &mut Rng) -> Value {
    let options = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1),
        serde_json::json!(4096),
        serde_json::json!(4097),
        serde_json::json!(65_537),
        serde_json::json!(2_147_483_648u64),
        serde_json::json!(u64::MAX),
        serde_json::json!(1e30),
        serde_json::json!(-1e30),
        serde_json::json!(1e-30),
        serde_json::json!(1e-45),
        serde_json::json!(0.5),
        serde_json::json!(null),
        serde_json::json!(true),
        serde_json::json!("NaN"),
        serde_json::json!("\u{1b}[2J"),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!("0/1000000000000"),
        serde_json::json!([4096, 4096, 4096]),
        serde_json::json!([1e30]),
    ];
    options[rng.below(options.len())].clone()
}

/// Every node of `v` as a JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// Replace 1–3 random nodes of `v` with hostile values, or drop or repeat them.
fn mutate_json(v: &mut Value, rng: &mut Rng) {
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        pointers(v, String::new(), &mut all);
        let at = all[rng.below(all.len())].clone();
        let Some(node) = v.pointer_mut(&at) else {
            continue;
        };
        match (rng.below(4), node) {
            (0, Value::Object(m)) if !m.is_empty() => {
                let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
                m.remove(&k);
            }
            (0, Value::Array(a)) if !a.is_empty() => {
                if rng.below(2) == 0 {
                    a.pop();
                } else {
                    let x = a[0].clone();
                    a.push(x);
                }
            }
            (_, node) => *node = hostile_json(rng),
        }
    }
}

/// A safetensors file as its tensors and metadata, rebuilt by [`st_write`] (a valid container
/// whose contents a mutation changed).
struct St {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    meta: HashMap<String, String>,
}

fn st_read(bytes: &[u8]) -> St {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    // In name order: the library lists them in a hash map's.
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    St {
        tensors,
        meta: header.metadata().clone().unwrap_or_default(),
    }
}

fn st_write(st: &St) -> Vec<u8> {
    let views: Vec<_> = st
        .tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    canonical(&safetensors::serialize(views, Some(st.meta.clone())).unwrap())
}

/// The same file with its header's keys sorted: the metadata is written from a HashMap, in an
/// order that changes from process to process, and the cases must not.
fn canonical(bytes: &[u8]) -> Vec<u8> {
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(String, Value)> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    let (header, data) = st_split(bytes);
    st_join(&sorted(header), &data)
}

/// The raw header JSON and the data after it (for mutations that break the container).
fn st_split(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&bytes[8..8 + n]).unwrap(),
        bytes[8 + n..].to_vec(),
    )
}

fn st_join(header: &Value, data: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).unwrap();
    // Padded with spaces to a multiple of 8, as safetensors writes it.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend_from_slice(data);
    out
}

const DTYPES: [&str; 9] = [
    "F32", "F16", "BF16", "F64", "I8", "U8", "I32", "I64", "BOOL",
];

/// One mutation of a safetensors file, chosen by `kind` (0..16).
fn mutate_safetensors(good: &[u8], kind: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = good.to_vec();
    match kind {
        0 => b.truncate(rng.below(b.len())),
        1 => flip_bits(&mut b, 1 + rng.below(8), rng),
        2 => {
            // Bits of the header only (names, dtypes, shapes, offsets, metadata).
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let at = 8 + rng.below(n);
            b[at] ^= 1 << rng.below(8);
        }
        3 => {
            let v = HUGE[rng.below(HUGE.len())];
            b[..8].copy_from_slice(&v.to_le_bytes());
        }
        4..=7 => {
            let (mut header, data) = st_split(&b);
            let names: Vec<String> = header
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect();
            let name = &names[rng.below(names.len())];
            let other = names[rng.below(names.len())].clone();
            let entry = header.get_mut(name).unwrap();
            match kind {
                4 => {
                    // A dimension set huge or zero, or one added or dropped.
                    let shape = entry["shape"].as_array_mut().unwrap();
                    match rng.below(3) {
                        0 if !shape.is_empty() => {
                            let i = rng.below(shape.len());
                            shape[i] = serde_json::json!(HUGE[rng.below(HUGE.len())]);
                        }
                        1 => shape.push(serde_json::json!(HUGE[rng.below(HUGE.len())])),
                        _ => {
                            shape.pop();
                        }
                    }
                }
                5 => entry["dtype"] = serde_json::json!(DTYPES[rng.below(DTYPES.len())]),
                6 => {
                    let i = rng.below(2);
                    entry["data_offsets"][i] = serde_json::json!(HUGE[rng.below(HUGE.len())]);
                }
                _ => {
                    // Two tensors' shapes (or dtypes) swapped.
                    let key = if rng.below(2) == 0 { "shape" } else { "dtype" };
                    let a = header[name][key].clone();
                    let o = header[&other][key].clone();
                    header[name][key] = o;
                    header[&other][key] = a;
                }
            }
            b = st_join(&header, &data);
        }
        8 => {
            // NaN, infinities, negatives (a variance), huge values in one f32 tensor.
            let mut st = st_read(&b);
            let f32s: Vec<usize> = (0..st.tensors.len())
                .filter(|&i| st.tensors[i].1 == Dtype::F32 && !st.tensors[i].3.is_empty())
                .collect();
            let t = &mut st.tensors[f32s[rng.below(f32s.len())]];
            let at = 4 * rng.below(t.3.len() / 4);
            t.3[at..at + 4].copy_from_slice(&BAD_F32[rng.below(BAD_F32.len())].to_le_bytes());
            b = st_write(&st);
        }
        9 => {
            // A JSON field of the metadata (model description, layers, settings, history).
            let mut st = st_read(&b);
            // Sorted: the metadata is a HashMap, and the choice must not depend on its order.
            let mut keys: Vec<String> = st
                .meta
                .iter()
                .filter(|(_, v)| serde_json::from_str::<Value>(v).is_ok_and(|v| !v.is_number()))
                .map(|(k, _)| k.clone())
                .collect();
            keys.sort();
            if !keys.is_empty() {
                let k = &keys[rng.below(keys.len())];
                let mut v: Value = serde_json::from_str(&st.meta[k]).unwrap();
                mutate_json(&mut v, rng);
                st.meta.insert(k.clone(), v.to_string());
            }
            b = st_write(&st);
        }
        10 => {
            // A metadata value replaced or removed.
            let mut st = st_read(&b);
            let mut keys: Vec<String> = st.meta.keys().cloned().collect();
            keys.sort();
            let k = &keys[rng.below(keys.len())];
            let values = [
                "",
                "NaN",
                "-1",
                "18446744073709551615",
                "18446744073709551616",
                "0,0,0,0",
                "1,2,3",
                "int1",
                "fp99",
                "\u{1b}[2J",
                "{}",
                "[]",
            ];
            if rng.below(4) == 0 {
                st.meta.remove(k);
            } else {
                st.meta
                    .insert(k.clone(), values[rng.below(values.len())].into());
            }
            b = st_write(&st);
        }
        11 => {
            // A tensor removed, renamed, or given another (consistent) shape or dtype.
            let mut st = st_read(&b);
            let i = rng.below(st.tensors.len());
            match rng.below(4) {
                0 => {
                    st.tensors.remove(i);
                }
                1 => st.tensors[i].0.push('x'),
                2 => {
                    let t = &mut st.tensors[i];
                    let n = t.3.len() / (t.1.bitsize() / 8).max(1);
                    t.2 = vec![n];
                }
                _ => {
                    let t = &mut st.tensors[i];
                    let n = t.2.iter().product::<usize>();
                    if t.1 == Dtype::F32 {
                        t.1 = [Dtype::F16, Dtype::I8, Dtype::I64][rng.below(3)];
                        t.3 = vec![0x3c; n * t.1.bitsize() / 8];
                    }
                }
            }
            b = st_write(&st);
        }
        12 => {
            // A duplicate of a tensor under the name of another one.
            let mut st = st_read(&b);
            let i = rng.below(st.tensors.len());
            let j = rng.below(st.tensors.len());
            let (_, d, s, data) = st.tensors[i].clone();
            st.tensors[j] = (st.tensors[j].0.clone(), d, s, data);
            b = st_write(&st);
        }
        14 => {
            // The statistics the first layers divide by: a normalisation std or mean, or a
            // batch-norm running variance, set to what overflows or turns negative.
            let mut st = st_read(&b);
            let vars: Vec<usize> = (0..st.tensors.len())
                .filter(|&i| st.tensors[i].0.ends_with("running_var"))
                .collect();
            let Some(spec) = st.meta.get("cactus.model") else {
                // Not a checkpoint (a training state's container): poison a value instead.
                return mutate_safetensors(good, 8, rng);
            };
            let mut spec: Value = serde_json::from_str(spec).unwrap();
            if !vars.is_empty() && rng.below(2) == 0 {
                let t = &mut st.tensors[vars[rng.below(vars.len())]];
                let at = 4 * rng.below(t.3.len() / 4);
                let v = [-1.0f32, -1e-30, f32::NAN, 1e-45][rng.below(4)];
                t.3[at..at + 4].copy_from_slice(&v.to_le_bytes());
            } else {
                let values = [1e30, 1e-30, 1e-45, -1.0, 0.0, 3e38];
                let key = ["mean", "std"][rng.below(2)];
                spec["normalization"] = serde_json::json!({"mean": [0.1307], "std": [0.3081]});
                spec["normalization"][key][0] = serde_json::json!(values[rng.below(values.len())]);
                st.meta.insert("cactus.model".into(), spec.to_string());
            }
            b = st_write(&st);
        }
        _ => {
            // Random bytes where the data begins.
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let start = 8 + n;
            for _ in 0..1 + rng.below(16) {
                let at = start + rng.below(b.len() - start);
                b[at] = rng.below(256) as u8;
            }
        }
    }
    b
}

// ---- checkpoints ------------------------------------------------------------------------------

/// Checkpoints of every kind: an mlp; a cnn7 with batch norm and normalisation; `small` stored
/// int8 per channel; an mlp stored fp16.
fn checkpoint_bases(dir: &Path) -> Vec<Vec<u8>> {
    let mut rng = Rng::seed(1);
    let mut out = Vec::new();
    let mlp = Model::new(ModelSpec::new(Arch::Mlp, [1, 4, 4], 3), &mut rng).unwrap();
    let mut spec = ModelSpec::new(Arch::Cnn7, [1, 8, 8], 10);
    spec.width = 0.0625;
    spec.normalization = Some(DatasetKind::MnistMini.normalization());
    let mut cnn7 = Model::new(spec, &mut rng).unwrap();
    cnn7.forward_train(&Tensor::rand_uniform(&[4, 1, 8, 8], 0.0, 1.0, &mut rng));
    let small = Model::new(ModelSpec::new(Arch::Small, [1, 8, 8], 10), &mut rng).unwrap();
    let mut extra = BTreeMap::new();
    extra.insert("train.eps".to_string(), "0.1".to_string());
    extra.insert("train.config".to_string(), "{\"epochs\":2}".to_string());
    let p = dir.join("base.safetensors");
    for (model, format, granularity) in [
        (&mlp, Format::Fp32, Granularity::PerTensor),
        (&cnn7, Format::Fp32, Granularity::PerTensor),
        (&small, Format::Int(8), Granularity::PerChannel),
        (&mlp, Format::Fp16, Granularity::PerTensor),
    ] {
        if format == Format::Fp32 {
            save_checkpoint(&p, model, &extra).unwrap();
        } else {
            save_compressed_checkpoint(&p, model, format, granularity, &extra).unwrap();
        }
        out.push(canonical(&std::fs::read(&p).unwrap()));
    }
    out
}

/// What the binary does with a checkpoint: load it, then probe it if the probe fits.
fn load_and_probe(path: &Path, bytes: &[u8]) -> cactus::Result<()> {
    let ckpt = parse_checkpoint(path, bytes)?;
    let spec = &ckpt.model.spec;
    memory::check(|| "the probe".into(), spec.inference_bytes(1)?)
        .map_err(|e| cactus::Error::bad_file(path, e.to_string()))?;
    let [c, h, w] = spec.input_shape;
    let x = Tensor::full(&[1, c, h, w], 0.5);
    cactus::autodiff::with_no_grad(|| ckpt.model.forward_checked(&x, Mode::Eval))
        .map_err(|e| cactus::Error::bad_file(path, e.to_string()))?;
    // What was accepted computes finite values at every step, walked here independently of
    // the checks under test (a NaN that a ReLU turns into 0 would leave the logits finite).
    cactus::autodiff::with_no_grad(|| {
        let mut h = ckpt.model.normalize(&x);
        assert!(h.data().iter().all(|v| v.is_finite()), "normalised probe");
        for (i, layer) in ckpt.model.net.layers.iter().enumerate() {
            h = layer.forward(&h, Mode::Eval);
            assert!(
                h.data().iter().all(|v| v.is_finite()),
                "the probe is not finite after layer {i} of an accepted checkpoint"
            );
        }
    });
    Ok(())
}

#[test]
fn fuzz_checkpoints() {
    let _serial = serial();
    let dir = scratch("checkpoints");
    let mut rng = Rng::seed(101);
    let mut tally = Tally::new("safetensors checkpoint");
    let path = dir.join("fuzzed.safetensors");
    for (b, good) in checkpoint_bases(&dir).iter().enumerate() {
        tally.case("the unmutated file", "fuzzed", || {
            load_and_probe(&path, good)
        });
        for cut in cuts(good.len(), 24, &mut rng) {
            tally.case(&format!("base {b} cut at {cut}"), "fuzzed", || {
                load_and_probe(&path, &good[..cut])
            });
        }
        for i in 0..224 {
            let kind = i % 16;
            let bytes = mutate_safetensors(good, kind, &mut rng);
            let what = format!("base {b} mutation {i} (kind {kind})");
            if i % 7 == 0 {
                // Through the file, as `load_checkpoint` reads it.
                std::fs::write(&path, &bytes).unwrap();
                tally.case(&what, "fuzzed", || load_checkpoint(&path).map(|_| ()));
            } else {
                tally.case(&what, "fuzzed", || load_and_probe(&path, &bytes));
            }
        }
    }
    tally.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- training states --------------------------------------------------------------------------

/// Random 1x28x28 images of 10 classes.
fn digits(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::seed(seed);
    Dataset {
        name: "random".into(),
        images: (0..n * 784).map(|_| rng.uniform()).collect(),
        labels: (0..n).map(|_| rng.below(10)).collect(),
        shape: [1, 28, 28],
        num_classes: 10,
    }
}

/// A tiny run on mnist-mini's shape: one epoch done, its state saved in `dir`.
fn saved_state(dir: &Path) -> Vec<u8> {
    let config = TrainConfig {
        model: Arch::Mlp,
        width: 0.0625,
        init: Init::Pytorch,
        dataset: DatasetKind::MnistMini,
        method: Method::Std,
        epochs: 3,
        batch_size: 16,
        limit_train: Some(32),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(config, dir).unwrap();
    trainer
        .run_epoch(&digits(32, 1), &ProgressBar::hidden())
        .unwrap();
    let mut st = st_read(&std::fs::read(dir.join(STATE_FILE)).unwrap());
    let model = st.tensors.iter_mut().find(|t| t.0 == "model").unwrap();
    model.3 = canonical(&model.3);
    model.2 = vec![model.3.len()];
    st_write(&st)
}

/// One mutation of a training state: of the container (as any safetensors file), of its
/// counters and optimiser state, of its settings and history, or of the checkpoint inside it.
fn mutate_state(good: &[u8], i: usize, rng: &mut Rng) -> Vec<u8> {
    match i % 6 {
        0 => mutate_safetensors(good, rng.below(16), rng),
        1 => {
            let mut st = st_read(good);
            let keys = ["epoch", "step", "adam.step", "adam.buffers", "rng"];
            let k = keys[rng.below(keys.len())];
            let values = [
                "0".to_string(),
                "1".to_string(),
                "2".to_string(),
                "7".to_string(),
                "-1".to_string(),
                (1u64 << 40).to_string(),
                u64::MAX.to_string(),
                "0,0,0,0".to_string(),
                "1,0,0,0".to_string(),
                "x".to_string(),
            ];
            st.meta
                .insert(k.into(), values[rng.below(values.len())].clone());
            st_write(&st)
        }
        2 => {
            // Moments cut, lengthened, poisoned, dropped or given another dtype.
            let mut st = st_read(good);
            let moments: Vec<usize> = (0..st.tensors.len())
                .filter(|&i| st.tensors[i].0.starts_with("adam."))
                .collect();
            let t = &mut st.tensors[moments[rng.below(moments.len())]];
            match rng.below(5) {
                0 => t.3.truncate(4 * rng.below(t.3.len() / 4)),
                1 => t.3.extend(std::iter::repeat_n(0, 4 * (1 + rng.below(64)))),
                2 => {
                    let at = 4 * rng.below(t.3.len() / 4);
                    t.3[at..at + 4]
                        .copy_from_slice(&BAD_F32[rng.below(BAD_F32.len())].to_le_bytes());
                }
                3 => t.0 = format!("adam.m.{}x", HUGE[rng.below(HUGE.len())]),
                _ => t.1 = Dtype::I32,
            }
            t.2 = vec![t.3.len() / (t.1.bitsize() / 8)];
            st_write(&st)
        }
        3 => {
            let mut st = st_read(good);
            let k = ["config", "history"][rng.below(2)];
            let mut v: Value = serde_json::from_str(&st.meta[k]).unwrap();
            mutate_json(&mut v, rng);
            st.meta.insert(k.into(), v.to_string());
            st_write(&st)
        }
        _ => {
            // The embedded checkpoint, mutated as a checkpoint.
            let mut st = st_read(good);
            let m = st.tensors.iter_mut().find(|t| t.0 == "model").unwrap();
            m.3 = mutate_safetensors(&m.3, rng.below(16), rng);
            m.2 = vec![m.3.len()];
            st_write(&st)
        }
    }
}

#[test]
fn fuzz_training_states() {
    let _serial = serial();
    let dir = scratch("states");
    let good = saved_state(&dir);
    let data = digits(32, 2);
    let mut rng = Rng::seed(202);
    let mut tally = Tally::new("training state");
    // Resume and train one epoch, as `cactus train --resume` does.
    let resume = |bytes: &[u8]| -> cactus::Result<()> {
        // A folder holding the training state alone (one written before manifests): resuming
        // reads the file as it is, rather than refuse it for not matching a manifest.
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), bytes).unwrap();
        let mut t = Trainer::resume(&dir, |c| Ok(c.clone()))?;
        // Training errors (a batch larger than the data, a NaN loss) are the run's, not the
        // file's: named after it here only to keep one check for every case.
        t.run_epoch(&data, &ProgressBar::hidden())
            .map_err(|e| cactus::Error::bad_file(STATE_FILE, format!("training: {e}")))?;
        Ok(())
    };
    tally.case("the unmutated state", STATE_FILE, || resume(&good));
    for cut in cuts(good.len(), 24, &mut rng) {
        tally.case(&format!("cut at {cut}"), STATE_FILE, || {
            resume(&good[..cut])
        });
    }
    for i in 0..840 {
        let bytes = mutate_state(&good, i, &mut rng);
        tally.case(&format!("mutation {i}"), STATE_FILE, || resume(&bytes));
    }
    tally.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- IDX ---------------------------------------------------------------------------------------

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = [0x803, count, rows, cols]
        .iter()
        .flat_map(|x: &u32| x.to_be_bytes())
        .collect();
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = [0x801, labels.len() as u32]
        .iter()
        .flat_map(|x: &u32| x.to_be_bytes())
        .collect();
    v.extend_from_slice(labels);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// One mutation of a plain IDX file: cut, bits flipped, a header field set huge or off by
/// one, the magic number of the other kind, bytes added.
fn mutate_idx(good: &[u8], header_len: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b = good.to_vec();
    match rng.below(6) {
        0 => b.truncate(rng.below(b.len())),
        1 => flip_bits(&mut b, 1 + rng.below(8), rng),
        2 | 3 => {
            let field = 4 * (1 + rng.below(header_len / 4 - 1));
            let v = match rng.below(3) {
                0 => HUGE[rng.below(HUGE.len())] as u32,
                1 => u32::from_be_bytes(b[field..field + 4].try_into().unwrap()).wrapping_add(1),
                _ => u32::from_be_bytes(b[field..field + 4].try_into().unwrap()).wrapping_sub(1),
            };
            b[field..field + 4].copy_from_slice(&v.to_be_bytes());
        }
        4 => b[3] = [0x01, 0x03, 0x08, 0x0d][rng.below(4)],
        _ => b.extend((0..1 + rng.below(100)).map(|_| rng.below(256) as u8)),
    }
    b
}

#[test]
fn fuzz_idx() {
    let _serial = serial();
    let dir = scratch("idx");
    let mut rng = Rng::seed(303);
    let pixels: Vec<u8> = (0..20 * 28 * 28).map(|_| rng.below(256) as u8).collect();
    let labels: Vec<u8> = (0..20).map(|_| rng.below(10) as u8).collect();
    let (images, labels) = (idx_images(20, 28, 28, &pixels), idx_labels(&labels));
    let check = |d: Dataset| -> cactus::Result<()> {
        assert_eq!(d.images.len(), d.len() * d.image_len());
        assert!(d.images.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(d.labels.iter().all(|&l| l < 10));
        Ok(())
    };
    for compressed in [false, true] {
        let mut tally = Tally::new(if compressed { "IDX gzip" } else { "IDX plain" });
        let (ip, lp) = if compressed {
            (
                Path::new("train-images-idx3-ubyte.gz"),
                Path::new("train-labels-idx1-ubyte.gz"),
            )
        } else {
            (
                Path::new("train-images-idx3-ubyte"),
                Path::new("train-labels-idx1-ubyte"),
            )
        };
        let pack = |b: &[u8]| if compressed { gz(b) } else { b.to_vec() };
        let (gi, gl) = (pack(&images), pack(&labels));
        tally.case("the unmutated files", "ubyte", || {
            check(idx::from_bytes("t", ip, &gi, lp, &gl)?)
        });
        for cut in cuts(gi.len(), 40, &mut rng) {
            tally.case(&format!("images cut at {cut}"), "ubyte", || {
                check(idx::from_bytes("t", ip, &gi[..cut], lp, &gl)?)
            });
        }
        for cut in cuts(gl.len(), 16, &mut rng) {
            tally.case(&format!("labels cut at {cut}"), "ubyte", || {
                check(idx::from_bytes("t", ip, &gi, lp, &gl[..cut])?)
            });
        }
        for i in 0..840 {
            let images_hit = i % 3 != 0;
            let (mut bi, mut bl) = (gi.clone(), gl.clone());
            let target = if images_hit { &mut bi } else { &mut bl };
            let plain = if images_hit { &images } else { &labels };
            let header = if images_hit { 16 } else { 8 };
            *target = if compressed && i % 4 == 1 {
                // The compressed stream itself damaged (or a second member appended).
                let mut z = target.clone();
                if rng.below(2) == 0 {
                    flip_bits(&mut z, 1 + rng.below(4), &mut rng);
                } else {
                    z.extend(gz(&mutate_idx(plain, header, &mut rng)));
                }
                z
            } else {
                pack(&mutate_idx(plain, header, &mut rng))
            };
            let names = if images_hit { "images" } else { "labels" };
            let what = format!("mutation {i} of the {names}");
            if i % 10 == 0 {
                // Through the files, as `--dataset mnist --data DIR` reads them.
                std::fs::write(dir.join(ip), &bi).unwrap();
                std::fs::write(dir.join(lp), &bl).unwrap();
                tally.case(&what, "ubyte", || {
                    let d = data::load(DatasetKind::Mnist, Some(&dir), Split::Train);
                    std::fs::remove_file(dir.join(ip)).unwrap();
                    std::fs::remove_file(dir.join(lp)).unwrap();
                    check(d?)
                });
            } else {
                tally.case(&what, "ubyte", || {
                    check(idx::from_bytes("t", ip, &bi, lp, &bl)?)
                });
            }
        }
        if compressed {
            // Bombs: a truthful header over 64 MB of zeros (refused from the header), and
            // one that promises 10 images and inflates to 80,000 (stopped at the promise).
            let mut zeros = idx_images(80_000, 28, 28, &[]);
            zeros.resize(16 + 80_000 * 784, 0);
            let bomb = gz(&zeros);
            let many = pack(&idx_labels(&vec![0; 80_000]));
            tally.case("a gzip bomb", "ubyte", || {
                check(idx::from_bytes("t", ip, &bomb, lp, &many)?)
            });
            zeros[..16].copy_from_slice(&idx_images(10, 28, 28, &[]));
            let liar = gz(&zeros);
            tally.case("a gzip bomb behind a small header", "ubyte", || {
                check(idx::from_bytes("t", ip, &liar, lp, &gl)?)
            });
        }
        tally.finish();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- CIFAR-10 ----------------------------------------------------------------------------------

fn cifar_records(n: usize, rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(rng.below(10) as u8);
        v.extend((0..cifar::PIXELS).map(|_| rng.below(256) as u8));
    }
    v
}

fn mutate_cifar(good: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = good.to_vec();
    match rng.below(5) {
        0 => b.truncate(rng.below(b.len())),
        1 => flip_bits(&mut b, 1 + rng.below(8), rng),
        2 => {
            let r = rng.below(b.len() / cifar::RECORD);
            b[r * cifar::RECORD] = 10 + rng.below(246) as u8;
        }
        3 => b.extend((0..rng.below(2 * cifar::RECORD)).map(|_| rng.below(256) as u8)),
        _ => b.truncate(cifar::RECORD * rng.below(b.len() / cifar::RECORD)),
    }
    b
}

#[test]
fn fuzz_cifar() {
    let _serial = serial();
    let dir = scratch("cifar");
    let mut rng = Rng::seed(404);
    let good = cifar_records(3, &mut rng);
    let p = Path::new("data_batch_1.bin");
    let mut tally = Tally::new("CIFAR-10 batch");
    let check = |d: Dataset| -> cactus::Result<()> {
        assert_eq!(d.images.len(), d.len() * cifar::PIXELS);
        assert!(d.labels.iter().all(|&l| l < 10));
        Ok(())
    };
    tally.case("the unmutated batch", "data_batch", || {
        check(cifar::from_bytes("c", p, &good)?)
    });
    for cut in cuts(good.len(), 60, &mut rng) {
        tally.case(&format!("cut at {cut}"), "data_batch", || {
            check(cifar::from_bytes("c", p, &good[..cut])?)
        });
    }
    for i in 0..840 {
        let bytes = mutate_cifar(&good, &mut rng);
        if i % 6 == 0 {
            // A directory of five training batches, one of them mutated.
            for k in 1..=5 {
                let b = if k == 1 + i % 5 { &bytes } else { &good };
                std::fs::write(dir.join(format!("data_batch_{k}.bin")), b).unwrap();
            }
            tally.case(
                &format!("mutation {i}, in a directory"),
                "data_batch",
                || check(data::load(DatasetKind::Cifar10, Some(&dir), Split::Train)?),
            );
        } else {
            tally.case(&format!("mutation {i}"), "data_batch", || {
                check(cifar::from_bytes("c", p, &bytes)?)
            });
        }
    }
    tally.finish();
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- reports -----------------------------------------------------------------------------------

/// The three shard reports of one evaluation.
fn shard_reports() -> Vec<Report> {
    (0..3)
        .map(|k| Report {
            checkpoint: "out/model.safetensors".into(),
            dataset: "mnist-mini".into(),
            eps: 0.1,
            n: 668,
            bn_recalibration_batches: None,
            sound: false,
            shard: Some(format!("{k}/3")),
            rows: ["none", "gul1"]
                .iter()
                .map(|c| Row {
                    compression: c.to_string(),
                    ratio: if *c == "none" { 0.0 } else { 0.5 },
                    sparsity: 0.5,
                    format: "fp32".into(),
                    certifier: "ibp".into(),
                    clean: 0.9,
                    pgd: 0.8,
                    certified: 0.7 - 0.1 * k as f64,
                    seconds: 1.5,
                })
                .collect(),
        })
        .collect()
}

/// A report read back as `cactus merge` reads it, then merged with the other shards.
fn read_and_merge(text: &[u8], others: &[Report]) -> cactus::Result<()> {
    let bad = |e: String| cactus::Error::bad_file("report.json", e);
    let report: Report = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
    report.check().map_err(|e| bad(e.to_string()))?;
    let mut all = vec![report];
    all.extend_from_slice(others);
    let merged = Report::merge(&all).map_err(|e| bad(e.to_string()))?;
    merged.check().map_err(|e| bad(e.to_string()))?;
    Ok(())
}

#[test]
fn fuzz_reports() {
    let _serial = serial();
    let mut rng = Rng::seed(505);
    let shards = shard_reports();
    let good = shards[0].to_json().into_bytes();
    let mut tally = Tally::new("report JSON (merge)");
    tally.case("the unmutated reports", "report", || {
        read_and_merge(&good, &shards[1..])
    });
    for cut in cuts(good.len(), 40, &mut rng) {
        tally.case(&format!("cut at {cut}"), "report", || {
            read_and_merge(&good[..cut], &shards[1..])
        });
    }
    for i in 0..840 {
        let text = match i % 4 {
            0 => {
                let mut b = good.clone();
                flip_bits(&mut b, 1 + rng.below(4), &mut rng);
                b
            }
            1 => {
                // The fields merge computes with: shard, point count, ε, accuracies.
                let mut v: Value = serde_json::from_slice(&good).unwrap();
                let shards = [
                    "0/1000000000000",
                    "18446744073709551615/18446744073709551615",
                    "0/18446744073709551615",
                    "3/3",
                    "0/0",
                    "0/2",
                    "1/3",
                    "0/3/3",
                    "-1/3",
                    "",
                ];
                match rng.below(4) {
                    0 => v["shard"] = serde_json::json!(shards[rng.below(shards.len())]),
                    1 => v["n"] = serde_json::json!(HUGE[rng.below(HUGE.len())]),
                    2 => v["eps"] = hostile_json(&mut rng),
                    _ => {
                        let field = ["clean", "pgd", "certified", "seconds", "ratio"][rng.below(5)];
                        v["rows"][rng.below(2)][field] = hostile_json(&mut rng);
                    }
                }
                serde_json::to_vec(&v).unwrap()
            }
            _ => {
                let mut v: Value = serde_json::from_slice(&good).unwrap();
                mutate_json(&mut v, &mut rng);
                serde_json::to_vec(&v).unwrap()
            }
        };
        // Sometimes alone: a shard count the given reports cannot cover.
        let others = if i % 5 == 0 {
            &shards[..0]
        } else {
            &shards[1..]
        };
        tally.case(&format!("mutation {i}"), "report", || {
            read_and_merge(&text, others)
        });
    }
    tally.finish();
}

// ---- the binary --------------------------------------------------------------------------------

/// Exit code (None: killed by a signal), stderr and peak resident set in KiB of one run of the
/// binary under `--max-memory 64M`; killed after `limit`.
// The child is reaped by `wait4` (which also reports its peak memory), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_cli(args: &[&str], limit: Duration) -> (Option<i32>, String, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cactus"))
        .args(args)
        .args(["--max-memory", "64M"])
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child, with valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage);
        }
        if start.elapsed() > limit {
            // Killed and reaped here, so that a hang fails the case and leaves nothing behind.
            let _ = child.kill();
            let _ = child.wait();
            return (None, format!("killed after running for {limit:?}"), 0);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, reader.join().unwrap(), usage.ru_maxrss as u64)
}

#[test]
fn fuzz_the_binary() {
    let _serial = serial();
    let dir = scratch("cli");
    let d = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let mut rng = Rng::seed(606);
    let mut cases = Vec::new();
    // Checkpoints through `inspect --probe`.
    let bases = checkpoint_bases(&dir);
    for i in 0..48 {
        let bytes = mutate_safetensors(&bases[i % bases.len()], i % 16, &mut rng);
        let p = d(&format!("c{i}.safetensors"));
        std::fs::write(&p, bytes).unwrap();
        cases.push(vec!["inspect".into(), p, "--probe".into(), "0.5".into()]);
    }
    // Training states through `train --resume`.
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let state = saved_state(&run);
    for i in 0..24 {
        let out = dir.join(format!("run{i}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(STATE_FILE), mutate_state(&state, i, &mut rng)).unwrap();
        let out = out.to_str().unwrap().to_string();
        cases.push(
            [
                "train",
                "--out",
                &out,
                "--resume",
                "--epochs",
                "3",
                "--no-eval",
                "--quiet",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    // IDX and CIFAR-10 test sets through `eval` of a model of their shape.
    let mnist_model = d("mlp28.safetensors");
    let cifar_model = d("mlp32.safetensors");
    for (path, shape) in [(&mnist_model, [1, 28, 28]), (&cifar_model, [3, 32, 32])] {
        let m = Model::new(ModelSpec::new(Arch::Mlp, shape, 10), &mut rng).unwrap();
        save_checkpoint(Path::new(path), &m, &BTreeMap::new()).unwrap();
    }
    let pixels: Vec<u8> = (0..8 * 784).map(|_| rng.below(256) as u8).collect();
    let labels: Vec<u8> = (0..8).map(|_| rng.below(10) as u8).collect();
    for i in 0..24 {
        let data = dir.join(format!("mnist{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let (mut images, mut lab) = (idx_images(8, 28, 28, &pixels), idx_labels(&labels));
        if i % 2 == 0 {
            images = mutate_idx(&images, 16, &mut rng);
        } else {
            lab = mutate_idx(&lab, 8, &mut rng);
        }
        let suffix = if i % 3 == 0 { ".gz" } else { "" };
        let pack = |b: &[u8]| if suffix.is_empty() { b.to_vec() } else { gz(b) };
        std::fs::write(
            data.join(format!("t10k-images-idx3-ubyte{suffix}")),
            pack(&images),
        )
        .unwrap();
        std::fs::write(
            data.join(format!("t10k-labels-idx1-ubyte{suffix}")),
            pack(&lab),
        )
        .unwrap();
        let data = data.to_str().unwrap().to_string();
        cases.push(
            [
                "eval",
                "--checkpoint",
                &mnist_model,
                "--dataset",
                "mnist",
                "--data",
                &data,
                "--limit",
                "4",
                "--out",
                &data,
                "--quiet",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    let good_cifar = cifar_records(4, &mut rng);
    for i in 0..16 {
        let data = dir.join(format!("cifar{i}"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(
            data.join("test_batch.bin"),
            mutate_cifar(&good_cifar, &mut rng),
        )
        .unwrap();
        let data = data.to_str().unwrap().to_string();
        cases.push(
            [
                "eval",
                "--checkpoint",
                &cifar_model,
                "--dataset",
                "cifar10",
                "--data",
                &data,
                "--limit",
                "2",
                "--out",
                &data,
                "--quiet",
            ]
            .map(String::from)
            .to_vec(),
        );
    }
    // Reports through `merge`.
    let shards = shard_reports();
    for i in 0..24 {
        let mut v: Value = serde_json::from_str(&shards[0].to_json()).unwrap();
        mutate_json(&mut v, &mut rng);
        let mut args = vec![
            "merge".to_string(),
            "--out".into(),
            d(&format!("merged{i}")),
        ];
        for (k, s) in shards.iter().enumerate() {
            let p = d(&format!("r{i}-{k}.json"));
            let text = if k == 0 { v.to_string() } else { s.to_json() };
            std::fs::write(&p, text).unwrap();
            args.push(p);
        }
        cases.push(args);
    }
    // Files that are not regular files.
    cases.push(vec!["inspect".into(), "/dev/zero".into()]);
    let fifo = d("fifo.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    cases.push(vec!["inspect".into(), fifo]);

    let start = Instant::now();
    let (mut ok, mut refused, mut peak) = (0, 0, 0);
    let mut failures = Vec::new();
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err, rss) = run_cli(&args, Duration::from_secs(120));
        peak = peak.max(rss);
        match code {
            Some(0) => ok += 1,
            Some(1) if err.trim_end().lines().count() == 1 && err.starts_with("error: ") => {
                refused += 1
            }
            _ => failures.push(format!("cactus {args:?}: exit {code:?}:\n{err}")),
        }
        if err.contains("panicked") {
            failures.push(format!("cactus {args:?} panicked:\n{err}"));
        }
    }
    println!(
        "fuzz {:<22} {:>4} cases: {:>4} succeeded, {:>4} refused; peak RSS {}; {:.1} s",
        "the binary",
        cases.len(),
        ok,
        refused,
        memory::format_bytes(peak * 1024),
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 64 MiB of data and models at most, over the binary itself and its threads.
    assert!(
        peak * 1024 < 4 * (64 << 20),
        "a run peaked at {} resident",
        memory::format_bytes(peak * 1024)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
