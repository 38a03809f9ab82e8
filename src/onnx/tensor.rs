//! `TensorProto` to and from plain values: weights are written as little-endian `raw_data`;
//! reading also accepts the typed fields (`float_data`, `int64_data`, ...) other producers use.

use crate::onnx::proto::{data_type, TensorProto};
use crate::{Error, Result};

/// A float32 tensor.
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    debug_assert_eq!(dims.iter().product::<usize>(), values.len());
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int8 tensor.
pub fn i8_tensor(name: &str, dims: &[usize], values: &[i8]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::INT8,
        raw_data: values.iter().map(|&v| v as u8).collect(),
        ..Default::default()
    }
}

/// A float16 tensor from the half-precision bit patterns.
pub fn f16_tensor(name: &str, dims: &[usize], bits: &[u16]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::FLOAT16,
        raw_data: bits.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// The dimensions of a tensor, checked non-negative.
pub fn dims(t: &TensorProto) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| {
                Error::Invalid(format!("tensor '{}' has a negative dimension {d}", t.name))
            })
        })
        .collect()
}

fn numel(t: &TensorProto) -> Result<usize> {
    dims(t)?
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::Invalid(format!("tensor '{}' is too large", t.name)))
}

/// Little-endian fixed-width values from `raw_data`, checked against the element count.
fn raw<const N: usize, T>(
    t: &TensorProto,
    n: usize,
    from: impl Fn([u8; N]) -> T,
) -> Result<Vec<T>> {
    if t.raw_data.len() != n * N {
        return Err(Error::Invalid(format!(
            "tensor '{}' holds {} bytes of data for {n} values of {} bytes",
            t.name,
            t.raw_data.len(),
            N
        )));
    }
    Ok(t.raw_data
        .chunks_exact(N)
        .map(|b| from(b.try_into().expect("chunk of N bytes")))
        .collect())
}

/// Check that a typed field holds exactly the element count.
fn typed<T: Copy>(t: &TensorProto, n: usize, values: &[T]) -> Result<Vec<T>> {
    if values.len() != n {
        return Err(Error::Invalid(format!(
            "tensor '{}' holds {} values for its {n} elements",
            t.name,
            values.len()
        )));
    }
    Ok(values.to_vec())
}

/// The values of a numeric tensor as f64 (exact for every type read here: f16, f32, f64 and
/// integers of at most 32 bits; int64 values beyond 2^53 are refused).
pub fn values_f64(t: &TensorProto) -> Result<Vec<f64>> {
    if t.data_location == 1 {
        return Err(Error::Invalid(format!(
            "tensor '{}' keeps its data in an external file, which is not supported: save the \
             model with its data inside (onnx.save(model, path, save_as_external_data=False))",
            t.name
        )));
    }
    let n = numel(t)?;
    let has_raw = !t.raw_data.is_empty() || n == 0;
    let out: Vec<f64> = match t.data_type {
        data_type::FLOAT if has_raw => raw(t, n, f32::from_le_bytes)?
            .into_iter()
            .map(f64::from)
            .collect(),
        data_type::FLOAT => typed(t, n, &t.float_data)?
            .into_iter()
            .map(f64::from)
            .collect(),
        data_type::DOUBLE if has_raw => raw(t, n, f64::from_le_bytes)?,
        data_type::DOUBLE => typed(t, n, &t.double_data)?,
        data_type::FLOAT16 if has_raw => raw(t, n, u16::from_le_bytes)?
            .into_iter()
            .map(|b| f64::from(half::f16::from_bits(b).to_f32()))
            .collect(),
        // float16 in the typed field: one bit pattern per int32.
        data_type::FLOAT16 => typed(t, n, &t.int32_data)?
            .into_iter()
            .map(|b| f64::from(half::f16::from_bits(b as u16).to_f32()))
            .collect(),
        data_type::INT8 if has_raw => raw(t, n, |[b]: [u8; 1]| f64::from(b as i8))?,
        data_type::UINT8 if has_raw => raw(t, n, |[b]: [u8; 1]| f64::from(b))?,
        data_type::INT8 | data_type::UINT8 | data_type::INT32 if !has_raw => {
            typed(t, n, &t.int32_data)?
                .into_iter()
                .map(f64::from)
                .collect()
        }
        data_type::INT32 => raw(t, n, i32::from_le_bytes)?
            .into_iter()
            .map(f64::from)
            .collect(),
        data_type::INT64 => {
            let v = if has_raw {
                raw(t, n, i64::from_le_bytes)?
            } else {
                typed(t, n, &t.int64_data)?
            };
            v.into_iter()
                .map(|i| {
                    if i.unsigned_abs() <= 1 << 53 {
                        Ok(i as f64)
                    } else {
                        Err(Error::Invalid(format!(
                            "tensor '{}' holds the int64 {i}, beyond what is supported",
                            t.name
                        )))
                    }
                })
                .collect::<Result<_>>()?
        }
        other => {
            return Err(Error::Invalid(format!(
                "tensor '{}' has data type {}, which is not supported",
                t.name,
                data_type::name(other)
            )))
        }
    };
    Ok(out)
}
