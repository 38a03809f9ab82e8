//! Output tile shapes of the GEMM-shaped kernels (`kernels/tile_gemm.cuh`) and the choice of
//! one per launch.
//!
//! Every GEMM and convolution kernel has an entry point per tile shape: `name` (64 × 64),
//! `name_128x64`, `name_64x128` and `name_128x128` (M × N), where a thread of the 256 computes
//! 4 × 4, 8 × 4, 4 × 8 or 8 × 8 outputs. Per loaded float from shared memory the 64 × 64 tile
//! does 2 FMAs and the 128 × 128 tile 4: shared-memory bandwidth, not the FMA units, bounds
//! the small tile. The bigger tiles cost registers (about 63, 125 and 165 per thread for the
//! plain forward convolution, no spills, from `ptxas -v` for sm_90) and give fewer blocks, so
//! small problems keep 64 × 64.
//!
//! The rule ([`Tiles::choose`]): the biggest shape the kernel has that (a) pads M and N to no
//! more than 1/8 more work than 64 × 64 tiles would and (b) still gives at least one block per
//! multiprocessor. `CACTUS_GEMM_TILES=64x64|128x64|64x128|128x128` forces a shape (the nearest
//! smaller one where a kernel lacks it): for benchmarks that compare shapes, and for tests that
//! cover every entry point.

use crate::{Error, Result};
use std::sync::OnceLock;

/// An output tile shape, rows (M) × columns (N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiles {
    T64x64,
    T128x64,
    T64x128,
    T128x128,
}

impl Tiles {
    /// Every shape, biggest first (the order [`Tiles::choose`] tries them).
    pub const ALL: [Tiles; 4] = [
        Tiles::T128x128,
        Tiles::T128x64,
        Tiles::T64x128,
        Tiles::T64x64,
    ];

    pub fn rows(self) -> usize {
        match self {
            Tiles::T64x64 | Tiles::T64x128 => 64,
            Tiles::T128x64 | Tiles::T128x128 => 128,
        }
    }

    pub fn cols(self) -> usize {
        match self {
            Tiles::T64x64 | Tiles::T128x64 => 64,
            Tiles::T64x128 | Tiles::T128x128 => 128,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tiles::T64x64 => "64x64",
            Tiles::T128x64 => "128x64",
            Tiles::T64x128 => "64x128",
            Tiles::T128x128 => "128x128",
        }
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
        let base = padded(Tiles::T64x64);
        Tiles::ALL
            .into_iter()
            .filter(|t| kernel.has(*t))
            .find(|&t| {
                let blocks = m.div_ceil(t.rows()) * n.div_ceil(t.cols()) * depth.max(1);
                8 * padded(t) <= 9 * base && blocks >= multiprocessors
            })
            .unwrap_or(Tiles::T64x64)
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
    /// In the order of [`Tiles::ALL`]: 128 × 128, 128 × 64, 64 × 128, 64 × 64.
    pub names: [Option<&'static str>; 4],
}

impl KernelShapes {
    /// A kernel with all four shapes: `base`, `base_128x64`, `base_64x128`, `base_128x128`.
    pub const fn all(module: &'static str, names: [&'static str; 4]) -> KernelShapes {
        KernelShapes {
            module,
            names: [
                Some(names[0]),
                Some(names[1]),
                Some(names[2]),
                Some(names[3]),
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL4: KernelShapes = KernelShapes::all("m", ["k_128x128", "k_128x64", "k_64x128", "k"]);
    const NO_BIG: KernelShapes = KernelShapes {
        module: "m",
        names: [None, Some("k_128x64"), Some("k_64x128"), Some("k")],
    };

    #[test]
    fn cnn7_layers_get_wide_tiles_and_small_problems_keep_64() {
        let sms = 132;
        // cnn7 at batch 128 on CIFAR: 64 channels over 131,072 pixels, 128 over 32,768.
        assert_eq!(Tiles::auto(&ALL4, 64, 131_072, 1, sms), Tiles::T64x128);
        assert_eq!(Tiles::auto(&ALL4, 128, 32_768, 1, sms), Tiles::T128x128);
        assert_eq!(Tiles::auto(&NO_BIG, 128, 32_768, 1, sms), Tiles::T128x64);
        // 3 input channels (the first layer's input gradient): 64-row tiles, wide along pixels.
        assert_eq!(Tiles::auto(&ALL4, 3, 131_072, 1, sms), Tiles::T64x128);
        assert_eq!(Tiles::auto(&ALL4, 100, 1000, 1, sms), Tiles::T64x64);
        // 192 rows: 128-row tiles would pad to 256 (a third more work).
        assert_eq!(Tiles::auto(&ALL4, 192, 65_536, 1, sms), Tiles::T64x128);
        // Depth (split-K chunks, stride phases) counts towards the blocks.
        assert_eq!(Tiles::auto(&ALL4, 128, 1152, 1, sms), Tiles::T64x64);
        assert_eq!(Tiles::auto(&ALL4, 128, 1152, 64, sms), Tiles::T128x128);
    }

    #[test]
    fn entries_follow_the_shapes() {
        assert_eq!(NO_BIG.entry(Tiles::T128x128), None);
        assert_eq!(NO_BIG.entry(Tiles::T64x128), Some("k_64x128"));
        assert_eq!(ALL4.entries().count(), 4);
        assert_eq!(Tiles::T128x64.grid(300, 1000), (16, 3));
        for t in Tiles::ALL {
            assert_eq!(Tiles::parse(t.name()), Some(t));
        }
        assert_eq!(Tiles::parse("32x32"), None);
    }
}
