//! The ε and certified-weight schedule of certified training (DESIGN "Specification"):
//! `warmup` batches of pure cross-entropy, then over `ramp` batches ε rises linearly from 0 to
//! its target and the certified weight from 0 to `cert_weight`; then both stay.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Target ε (pixel space).
    pub eps: f32,
    /// Final weight of the certified loss, 1 − λ.
    pub cert_weight: f32,
    pub warmup_batches: u64,
    pub ramp_batches: u64,
}

/// Where the schedule stands at one batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    pub eps: f32,
    /// Weight of the certified loss; the clean cross-entropy gets 1 − this.
    pub cert_weight: f32,
}

impl Schedule {
    /// The phase of batch `step` (0-based, counted over the whole run). The ramp's first batch
    /// already has a small ε, its last one the full target.
    pub fn at(&self, step: u64) -> Phase {
        let progress = if step < self.warmup_batches {
            0.0
        } else if self.ramp_batches == 0 {
            1.0
        } else {
            ((step - self.warmup_batches + 1) as f64 / self.ramp_batches as f64).min(1.0)
        };
        Phase {
            eps: (self.eps as f64 * progress) as f32,
            cert_weight: (self.cert_weight as f64 * progress) as f32,
        }
    }

    /// Batches until the schedule reaches its targets.
    pub fn length(&self) -> u64 {
        self.warmup_batches + self.ramp_batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_ramp_then_constant() {
        let s = Schedule {
            eps: 0.1,
            cert_weight: 0.75,
            warmup_batches: 10,
            ramp_batches: 4,
        };
        assert_eq!(s.at(0).eps, 0.0);
        assert_eq!(s.at(9).cert_weight, 0.0);
        assert!((s.at(10).eps - 0.025).abs() < 1e-7);
        assert!((s.at(11).cert_weight - 0.375).abs() < 1e-7);
        assert_eq!(s.at(13).eps, 0.1);
        assert_eq!(s.at(1000).cert_weight, 0.75);
        let no_ramp = Schedule {
            ramp_batches: 0,
            ..s
        };
        assert_eq!(no_ramp.at(9).eps, 0.0);
        assert_eq!(no_ramp.at(10).eps, 0.1);
    }
}
