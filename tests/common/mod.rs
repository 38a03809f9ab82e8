//! Helpers shared by the GPU parity tests (`tests/cuda_*.rs`): host/device copies, exact
//! comparison, f32 rounding bounds and random data.
#![allow(dead_code)] // each test file uses its own subset

use cactus::rng::Rng;
use cactus::runtime::cuda::DeviceBuffer;

/// f32 unit roundoff.
pub const U: f64 = 1.0 / (1u64 << 24) as f64;

/// γ_n: the relative error bound of an n-term f32 sum (or dot product).
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    assert!(nu < 0.5, "gamma({n}) is no bound");
    nu / (1.0 - nu)
}

/// Host values on the device.
pub fn up(v: &[f32]) -> DeviceBuffer {
    if v.is_empty() {
        // No zero-byte copy to the device.
        return DeviceBuffer::uninit(0).unwrap();
    }
    DeviceBuffer::from_host(v).unwrap()
}

/// Device values on the host.
pub fn down(b: &DeviceBuffer) -> Vec<f32> {
    b.to_host().unwrap()
}

/// Equal values (±0 equal, NaN equal to NaN).
pub fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: GPU {g} vs CPU {w}"
        );
    }
}

/// `len` values uniform in [lo, hi).
pub fn uniform(len: usize, lo: f32, hi: f32, rng: &mut Rng) -> Vec<f32> {
    (0..len).map(|_| lo + (hi - lo) * rng.uniform()).collect()
}

/// max |a − b| ≤ rel · max(1, max |b|): float rounding in other orders of summation.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], rel: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        err <= rel * scale,
        "{what}: max difference {err} (scale {scale})"
    );
}
