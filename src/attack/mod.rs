//! Adversarial attacks: PGD in the L-inf ball of inputs, and AWP on weights.
//!
//! - `loss`: the per-sample objectives (cross-entropy, margin).
//! - `pgd`: the attack itself, its configuration (SABR's and evaluation's) and search box.
//! - `robust`: PGD accuracy flags for evaluation.
//! - `awp`: adversarial weight perturbation, CACTUS's proxy of quantization.

pub mod awp;
pub mod loss;
pub mod pgd;
pub mod robust;

pub use awp::{awp_perturbation, awp_radii, perturbed, AwpConfig, Perturbation};
pub use loss::{margin_loss, per_sample_cross_entropy, AttackLoss};
pub use pgd::{pgd, pgd_outcome, pgd_search, PgdConfig, PgdOutcome, Region, StepDecay};
pub use robust::{pgd_robust_flags, RobustFlags};
