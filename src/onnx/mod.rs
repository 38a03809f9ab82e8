//! ONNX, the network format other verifiers and runtimes read: `export` writes a model as a
//! graph, `import` reads the feed-forward subset back into cactus's layers, `proto` holds the
//! protobuf messages and `tensor` their tensor payloads.

pub mod export;
pub mod import;
pub mod proto;
pub mod tensor;

pub use export::{export_model, ExportOptions};
pub use import::{import_model, Imported};

use crate::io::write_atomic;
use crate::runtime::memory;
use crate::{Error, Result};
use prost::Message;
use std::io::Read;
use std::path::Path;

/// The operator set written: 13 (see `export`).
pub const OPSET: i64 = 13;
/// The IR version written: 8, what opset 13 needs and every current runtime reads.
pub const IR_VERSION: i64 = 8;
/// The graph input and output names of an exported model.
pub const INPUT_NAME: &str = "input";
pub const OUTPUT_NAME: &str = "logits";

/// Serialise and write a model atomically.
pub fn write_model(path: &Path, model: &proto::ModelProto) -> Result<()> {
    write_atomic(path, &model.encode_to_vec())
}

/// The bytes of a file, gunzipped when its name ends in `.gz` (inflated within the memory
/// limit, so a small file cannot ask for more).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = memory::read_file(path)?;
    if path.extension().is_none_or(|e| e != "gz") {
        return Ok(bytes);
    }
    let cap = memory::limit();
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::bad_file(path, format!("not a readable gzip file: {e}")))?;
    if let Some(why) = memory::exceeds(out.len() as u64) {
        return Err(Error::bad_file(
            path,
            format!("inflates beyond the limit; {why}"),
        ));
    }
    Ok(out)
}

/// Read an ONNX model (`.onnx`, or `.onnx.gz`).
pub fn read_model(path: &Path) -> Result<proto::ModelProto> {
    let bytes = read_maybe_gz(path)?;
    proto::ModelProto::decode(bytes.as_slice()).map_err(|e| {
        Error::bad_file(
            path,
            format!("not a readable ONNX model (protobuf decoding failed: {e})"),
        )
    })
}

/// Write one input and the output cactus computes for it in the layout of ONNX's test data
/// (`DIR/test_data_set_K/input_0.pb`, `output_0.pb`: serialised `TensorProto`s named as the
/// graph's input and output), which ONNX's backend test runners and our check script read.
pub fn write_test_data(
    dir: &Path,
    index: usize,
    input: (&[usize], &[f32]),
    output: (&[usize], &[f32]),
) -> Result<()> {
    let set = dir.join(format!("test_data_set_{index}"));
    std::fs::create_dir_all(&set).map_err(|e| Error::io(&set, e))?;
    let tensor = |name, (dims, values): (&[usize], &[f32])| {
        tensor::f32_tensor(name, dims, values).encode_to_vec()
    };
    write_atomic(&set.join("input_0.pb"), &tensor(INPUT_NAME, input))?;
    write_atomic(&set.join("output_0.pb"), &tensor(OUTPUT_NAME, output))
}
