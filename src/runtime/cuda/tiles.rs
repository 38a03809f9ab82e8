//! Output tile shapes of the GEMM-shaped kernels (`runtime/cuda/tile_gemm.cuh`) and the choice of
//! one per launch.
//!
//! Every GEMM and convolution kernel has an entry point per tile shape (M × N): `name`
//! (64 × 64), `name_128x64`, `name_64x128` and `name_128x128`, where each of the 256 threads
//! computes 4 × 4, 8 × 4, 4 × 8 or 8 × 8 outputs, and the plain convolution's input gradient
//! also `name_16x256` (4 × 4 per thread, the threads 4 down and 64 across), for a short M such
//! as a first layer's 3 input channels, which would fill 3 of 64 rows. Per float loaded from
//! shared memory a thread does 4·qm·qn / (qm + qn) FMAs with qm × qn micro-tiles of 4 × 4: 2 at
//! 64 × 64 and 16 × 256, 2.7 at 128 × 64, 4 at 128 × 128. Shared-memory bandwidth, not the FMA
//! units, bounds the small tiles. The bigger tiles cost registers (about 63, 125 and 165 per
//! thread for the plain forward convolution, no spills, from `ptxas -v` for sm_90) and give
//! fewer blocks.
//!
//! The rule ([`Tiles::choose`]): among the shapes the kernel has that give at least one block per
//! multiprocessor, the one with the fewest shared-memory loads, i.e. the least
//! (padded M·N) / (FMAs per load); ties go to the bigger tile; 64 × 64 when none gives enough
//! blocks. `CACTUS_GEMM_TILES=64x64|128x64|64x128|128x128|16x256` forces a shape (where a
//! kernel lacks it, its biggest shape that fits inside): for benchmarks that compare shapes,
//! and for tests that cover every entry point.

use crate::runtime::cuda::buffer::DeviceBuffer;
use crate::runtime::cuda::context::CudaBackend;
use crate::{Error, Result};
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaView, CudaViewMut, LaunchConfig};
use std::sync::OnceLock;

/// An output tile shape, rows (M) × columns (N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    T64x64,
    T128x64,
    T64x128,
    T128x128,
    T16x256,
}

impl Tiles {
    /// Every shape, in the order ties go (biggest first).
    pub const ALL: [Tiles; 5] = [
        Tiles::T128x128,
        Tiles::T128x64,
        Tiles::T64x128,
        Tiles::T64x64,
        Tiles::T16x256,
    ];

    pub fn rows(self) -> usize {
        match self {
            Tiles::T16x256 => 16,
            Tiles::T64x64 | Tiles::T64x128 => 64,
            Tiles::T128x64 | Tiles::T128x128 => 128,
        }
    }

    pub fn cols(self) -> usize {
        match self {
            Tiles::T64x64 | Tiles::T128x64 => 64,
            Tiles::T64x128 | Tiles::T128x128 => 128,
            Tiles::T16x256 => 256,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tiles::T64x64 => "64x64",
            Tiles::T128x64 => "128x64",
            Tiles::T64x128 => "64x128",
            Tiles::T128x128 => "128x128",
            Tiles::T16x256 => "16x256",
        }
    }

    /// FMAs a thread does per float it loads from shared memory: 4·qm·qn / (qm + qn) for qm × qn
    /// micro-tiles of 4 × 4.
    pub fn fmas_per_load(self) -> f64 {
        let (qm, qn) = match self {
            Tiles::T64x64 | Tiles::T16x256 => (1.0, 1.0),
            Tiles::T128x64 => (2.0, 1.0),
            Tiles::T64x128 => (1.0, 2.0),
            Tiles::T128x128 => (2.0, 2.0),
        };
        4.0 * qm * qn / (qm + qn)
    }

    fn parse(s: &str) -> Option<Tiles> {
        Tiles::ALL.into_iter().find(|t| t.name() == s)
    }

    /// The grid's (x, y) for an M × N output: x over N, y over M.
    pub fn grid(self, m: usize, n: usize) -> (u32, u32) {
        (
            n.div_ceil(self.cols()).max(1) as u32,
            m.div_ceil(self.rows()).max(1) as u32,
        )
    }

    /// The shape for an M × N output computed `depth` times over (grid z: split-K chunks or
    /// stride phases) on `multiprocessors`, among the shapes `kernel` has; the forced shape
    /// where `CACTUS_GEMM_TILES` names one.
    pub fn choose(
        kernel: &KernelShapes,
        m: usize,
        n: usize,
        depth: usize,
        multiprocessors: usize,
    ) -> Result<Tiles> {
        if let Some(forced) = forced()? {
            // The kernel's biggest shape that fits inside the forced one.
            return Ok(Tiles::ALL
                .into_iter()
                .find(|t| kernel.has(*t) && t.rows() <= forced.rows() && t.cols() <= forced.cols())
                .unwrap_or(Tiles::T64x64));
        }
        Ok(Tiles::auto(kernel, m, n, depth, multiprocessors))
    }

    /// [`Tiles::choose`]'s rule without the override.
    pub fn auto(
        kernel: &KernelShapes,
        m: usize,
        n: usize,
        depth: usize,
        multiprocessors: usize,
    ) -> Tiles {
        let padded = |t: Tiles| m.div_ceil(t.rows()) * t.rows() * n.div_ceil(t.cols()) * t.cols();
        let loads = |t: Tiles| padded(t) as f64 / t.fmas_per_load();
        let mut best: Option<Tiles> = None;
        for t in Tiles::ALL.into_iter().filter(|t| kernel.has(*t)) {
            let blocks = m.div_ceil(t.rows()) * n.div_ceil(t.cols()) * depth.max(1);
            // Strictly fewer loads to displace an earlier (bigger) shape.
            if blocks >= multiprocessors && best.is_none_or(|b| loads(t) < loads(b)) {
                best = Some(t);
            }
        }
        best.unwrap_or(Tiles::T64x64)
    }
}

/// `CACTUS_GEMM_TILES`, read once: None for unset or `auto`.
fn forced() -> Result<Option<Tiles>> {
    static FORCED: OnceLock<std::result::Result<Option<Tiles>, String>> = OnceLock::new();
    FORCED
        .get_or_init(|| match std::env::var("CACTUS_GEMM_TILES") {
            Err(_) => Ok(None),
            Ok(v) if v.is_empty() || v == "auto" => Ok(None),
            Ok(v) => Tiles::parse(&v).map(Some).ok_or_else(|| {
                format!("CACTUS_GEMM_TILES={v}: expected auto, 64x64, 128x64, 64x128 or 128x128")
            }),
        })
        .clone()
        .map_err(Error::Invalid)
}

/// A kernel's entry points by tile shape (None where it has no such shape).
#[derive(Clone, Copy, Debug)]
pub struct KernelShapes {
    pub module: &'static str,
    /// In the order of [`Tiles::ALL`]: 128 × 128, 128 × 64, 64 × 128, 64 × 64, 16 × 256.
    pub names: [Option<&'static str>; 5],
}

impl KernelShapes {
    /// A kernel with the four square-ish shapes (128 × 128, 128 × 64, 64 × 128, 64 × 64), in
    /// that order, and no 16 × 256.
    pub const fn four(module: &'static str, names: [&'static str; 4]) -> KernelShapes {
        KernelShapes {
            module,
            names: [
                Some(names[0]),
                Some(names[1]),
                Some(names[2]),
                Some(names[3]),
                None,
            ],
        }
    }

    pub fn has(&self, t: Tiles) -> bool {
        self.entry(t).is_some()
    }

    /// The entry point for `t`.
    pub fn entry(&self, t: Tiles) -> Option<&'static str> {
        let i = Tiles::ALL.iter().position(|&x| x == t).expect("a shape");
        self.names[i]
    }

    /// Every entry point.
    pub fn entries(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.names.iter().flatten().copied()
    }
}

// Shared by the GEMM-shaped launch wrappers (convolutions and matrix products).
/// The entry point of `kernel` for an M × N output, `depth` deep in grid z, and its shape.
pub fn pick(
    backend: &CudaBackend,
    kernel: &KernelShapes,
    m: usize,
    n: usize,
    depth: usize,
) -> Result<(&'static str, Tiles)> {
    let t = Tiles::choose(kernel, m, n, depth, multiprocessors(backend))?;
    let name = kernel
        .entry(t)
        .expect("choose returns a shape the kernel has");
    Ok((name, t))
}

/// Tensors handed to the kernels hold fewer values than this: indices are 32-bit, and the
/// factor 2 of headroom covers the index arithmetic past the last K-step.
pub const MAX_ELEMENTS: usize = 1 << 30;

/// The largest output tile edge (M or N) of any kernel ([`Tiles`]): offsets are formed up to
/// this far past an operand's end.
pub const TILE: usize = 256;
/// The smallest tile edge along M: grid y is at most M / this.
pub const MIN_TILE: usize = 16;
/// K-step of every kernel.
pub const TILE_K: usize = 16;
pub const THREADS: u32 = 256;
/// CUDA's limit on grid dimensions y and z.
pub const GRID_YZ: usize = 65_535;

pub fn config(grid: (u32, u32, u32)) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The first `len` values of a buffer, as a kernel argument.
pub fn view(b: &DeviceBuffer, len: usize) -> CudaView<'_, f32> {
    b.slice().slice(0..len)
}

pub fn view_mut(b: &mut DeviceBuffer, len: usize) -> CudaViewMut<'_, f32> {
    b.slice_mut().slice_mut(0..len)
}

pub fn multiprocessors(backend: &CudaBackend) -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        backend
            .context
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map(|v| v.max(1) as usize)
            .unwrap_or(132)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOUR: KernelShapes = KernelShapes::four("m", ["k_128x128", "k_128x64", "k_64x128", "k"]);
    const FIVE: KernelShapes = KernelShapes {
        module: "m",
        names: [
            Some("k_128x128"),
            Some("k_128x64"),
            Some("k_64x128"),
            Some("k"),
            Some("k_16x256"),
        ],
    };
    const NO_BIG: KernelShapes = KernelShapes {
        module: "m",
        names: [None, Some("k_128x64"), Some("k_64x128"), Some("k"), None],
    };

    #[test]
    fn cnn7_layers_get_wide_tiles_and_small_problems_keep_64() {
        let sms = 132;
        // cnn7 at batch 128 on CIFAR: 64 channels over 131,072 pixels, 128 over 32,768.
        assert_eq!(Tiles::auto(&FIVE, 64, 131_072, 1, sms), Tiles::T64x128);
        assert_eq!(Tiles::auto(&FIVE, 128, 32_768, 1, sms), Tiles::T128x128);
        assert_eq!(Tiles::auto(&NO_BIG, 128, 32_768, 1, sms), Tiles::T128x64);
        // The first layer's input gradient: 3 channels fill 3 of 16 rows instead of 3 of 64.
        assert_eq!(Tiles::auto(&FIVE, 3, 131_072, 1, sms), Tiles::T16x256);
        assert_eq!(Tiles::auto(&FOUR, 3, 131_072, 1, sms), Tiles::T64x128);
        // Too few blocks for anything bigger.
        assert_eq!(Tiles::auto(&FIVE, 100, 1000, 1, sms), Tiles::T64x64);
        // 192 rows: 128-row tiles pad to 256, a third more work, but load half as often.
        assert_eq!(Tiles::auto(&FIVE, 192, 65_536, 1, sms), Tiles::T128x128);
        // Depth (split-K chunks, stride phases) counts towards the blocks.
        assert_eq!(Tiles::auto(&FIVE, 128, 1152, 1, sms), Tiles::T64x64);
        assert_eq!(Tiles::auto(&FIVE, 128, 1152, 64, sms), Tiles::T128x128);
    }

    #[test]
    fn entries_follow_the_shapes() {
        assert_eq!(NO_BIG.entry(Tiles::T128x128), None);
        assert_eq!(NO_BIG.entry(Tiles::T64x128), Some("k_64x128"));
        assert_eq!(FOUR.entries().count(), 4);
        assert_eq!(FIVE.entry(Tiles::T16x256), Some("k_16x256"));
        assert_eq!(Tiles::T128x64.grid(300, 1000), (16, 3));
        assert_eq!(Tiles::T16x256.grid(3, 1000), (4, 1));
        for t in Tiles::ALL {
            assert_eq!(Tiles::parse(t.name()), Some(t));
        }
        assert_eq!(Tiles::parse("32x32"), None);
        assert_eq!(Tiles::T128x128.fmas_per_load(), 4.0);
        assert_eq!(Tiles::T16x256.fmas_per_load(), 2.0);
    }
}
