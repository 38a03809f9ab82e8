//! Verification beyond interval bounds: CROWN linear bounds (`crown`), optimised slopes
//! (`alpha`, α-CROWN) and β-CROWN branch and bound (`bab`), on a model viewed as a chain of
//! affine steps and ReLUs (`net`).
//!
//! Every certifier answers the same question: lower bounds of `z_y − z_j` over the box
//! `[x − ε, x + ε] ∩ [0, 1]`, one per class; a point is verified when all of them (j ≠ y) are
//! positive. IBP is the one of `bounds::ibp`, the same code training uses.

pub mod alpha;
pub mod bab;
pub mod crown;
pub mod lp;
pub mod net;
pub mod property;

pub use alpha::{alpha_crown_margins, AlphaConfig};
pub use bab::{BabConfig, BabOutcome, Verdict};
pub use crown::{crown_margins, Intermediate, LayerBounds};
pub use net::BoundNet;

use crate::autodiff::with_no_grad;
use crate::bounds::{box_corners, enclosing_box, margin_lower_bounds, rounding, BnSource};
use crate::nn::Model;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A certifier, from the loosest and fastest to the tightest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Certifier {
    /// Interval bound propagation.
    Ibp,
    /// CROWN on the final layer, interval bounds for the intermediate ones.
    CrownIbp,
    /// CROWN everywhere (intermediate bounds by CROWN where IBP leaves neurons unstable).
    Crown,
    /// CROWN with optimised lower slopes.
    AlphaCrown,
    /// β-CROWN branch and bound: complete, up to its time limit.
    Bab,
}

impl Certifier {
    pub const ALL: [Certifier; 5] = [
        Certifier::Ibp,
        Certifier::CrownIbp,
        Certifier::Crown,
        Certifier::AlphaCrown,
        Certifier::Bab,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Certifier::Ibp => "ibp",
            Certifier::CrownIbp => "crown-ibp",
            Certifier::Crown => "crown",
            Certifier::AlphaCrown => "alpha-crown",
            Certifier::Bab => "bab",
        }
    }
}

impl fmt::Display for Certifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Certifier {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Certifier::ALL
            .into_iter()
            .find(|c| c.name() == s || (s == "alpha" && *c == Certifier::AlphaCrown))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "unknown certifier '{s}' (expected one of {})",
                    Certifier::ALL.map(Certifier::name).join(", ")
                ))
            })
    }
}

/// Settings of the certifiers.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    pub alpha: AlphaConfig,
    pub bab: BabConfig,
    /// Bytes one batch of linear-bound coefficients may take (rows are processed in chunks
    /// that fit).
    pub memory_budget: usize,
    /// Margin bounds that hold under f32 rounding (the default): each is lowered by a rigorous
    /// bound on the rounding error of its computation (`bounds::rounding`). Branch and bound
    /// has no such bound yet and runs only without it.
    pub sound: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            alpha: AlphaConfig::default(),
            bab: BabConfig::default(),
            memory_budget: 1 << 30,
            sound: true,
        }
    }
}

/// The box `[x − ε, x + ε] ∩ [0, 1]` as corners `[points, ...]` on the model's device.
pub fn input_corners(x: &Tensor, eps: f32, device: crate::Device) -> Result<(Tensor, Tensor)> {
    let (lo, hi) = box_corners(x, eps);
    Ok((
        Tensor::from_vec(lo, x.shape()).to_device(device)?,
        Tensor::from_vec(hi, x.shape()).to_device(device)?,
    ))
}

/// Margin lower bounds `[points × classes]` (row-major, 0 at j = y) of the ε-boxes around `x`
/// by a bounding certifier (not `Bab`, which decides points: see [`bab::verify_point`]).
pub fn margin_bounds(
    model: &Model,
    net: &BoundNet,
    x: &Tensor,
    labels: &[usize],
    eps: f32,
    certifier: Certifier,
    cfg: &VerifyConfig,
) -> Result<Vec<f32>> {
    let (lo, hi) = box_corners(x, eps);
    margin_bounds_of_box(model, net, &lo, &hi, x.shape(), labels, certifier, cfg)
}

/// [`margin_bounds`] over any boxes: corners `lo ≤ hi` (host values, row-major, `shape` =
/// [points, ...]), which need not lie in [0, 1].
#[allow(clippy::too_many_arguments)]
pub fn margin_bounds_of_box(
    model: &Model,
    net: &BoundNet,
    lo: &[f32],
    hi: &[f32],
    shape: &[usize],
    labels: &[usize],
    certifier: Certifier,
    cfg: &VerifyConfig,
) -> Result<Vec<f32>> {
    if labels.is_empty() {
        return Ok(Vec::new());
    }
    let device = net.device;
    let boxes = || enclosing_box(lo, hi, shape).to_device(device);
    let corners = || -> Result<(Tensor, Tensor)> {
        Ok((
            Tensor::from_vec(lo.to_vec(), shape).to_device(device)?,
            Tensor::from_vec(hi.to_vec(), shape).to_device(device)?,
        ))
    };
    let lower = match certifier {
        // The propagation training uses, on the host box (ops follow the model's device).
        Certifier::Ibp if cfg.sound => {
            // One propagation gives the bounds and their rounding slack.
            let boxes = boxes()?;
            let (lower, slack) =
                with_no_grad(|| rounding::ibp_margins_with_slack_of_boxes(model, boxes, labels));
            return Ok(rounding::sound_lower_bounds(&lower, &slack, 1.0));
        }
        Certifier::Ibp => {
            let boxes = boxes()?;
            with_no_grad(|| margin_lower_bounds(model, &boxes, labels, BnSource::Running).to_vec())
        }
        Certifier::CrownIbp | Certifier::Crown => {
            let mode = if certifier == Certifier::Crown {
                Intermediate::Crown
            } else {
                Intermediate::Ibp
            };
            let (lo, hi) = corners()?;
            crown_margins(net, &lo, &hi, labels, mode, cfg.memory_budget).to_vec()
        }
        Certifier::AlphaCrown => {
            let (lo, hi) = corners()?;
            alpha_crown_margins(net, &lo, &hi, labels, &cfg.alpha, cfg.memory_budget)
        }
        Certifier::Bab => {
            return Err(Error::Invalid(
                "branch and bound decides points; it gives no margin bounds".into(),
            ))
        }
    };
    if !cfg.sound {
        return Ok(lower);
    }
    // A linear-relaxation certifier's bounds (sound IBP returned above).
    let boxes = boxes()?;
    let slack = with_no_grad(|| rounding::margin_slack_of_boxes(model, boxes, labels));
    Ok(rounding::sound_lower_bounds(
        &lower,
        &slack,
        rounding::LINEAR_RELAXATION_FACTOR,
    ))
}

/// Refuse sound certificates (the default) with a certifier whose bounds do not account for
/// f32 rounding yet.
pub fn check_sound(certifiers: &[Certifier]) -> Result<()> {
    if certifiers.contains(&Certifier::Bab) {
        return Err(Error::Invalid(
            "branch and bound (bab) does not bound its f32 rounding yet, so its certificates \
             are not sound: add --unsound to run it (every certifier's bounds then go \
             unadjusted), or leave bab out of --certifier"
                .into(),
        ));
    }
    Ok(())
}
