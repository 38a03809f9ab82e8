//! Compression of a trained network, and the registry of its pruning methods. Conv and linear
//! weights only; biases and batch norm stay as they are.
//!
//! - **Pruning** is a set of 0/1 masks ([`Masks`]), one per conv/linear weight, multiplied into
//!   the weights by [`apply_masks`]. Each way of choosing the masks is a [`PruneRule`] in its
//!   own folder (`prune/`: the paper's magnitude pruning), listed once in [`PRUNE_RULES`]; a
//!   [`PruneMethod`] is one rule with its parameters (`gul1`, `lsl2`, …). Parsing, printing,
//!   serde, the command line's help and error messages, the evaluation grid and CACTUS's
//!   compression sets all go through the registry, so a new rule is its folder, its line in
//!   [`PRUNE_RULES`] and its tests (docs/extending.md).
//! - **Quantization** (`quant/`): fake quantization of weights to fp16 or intN.

/// Serialise a type as its `Display` name and read it back through `FromStr`, so that files
/// hold the names the command line takes (and an unknown name in a file gets the same error).
macro_rules! serde_as_name {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod nm;
pub mod prune;
pub mod quant;

use crate::nn::Model;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

/// Every pruning rule, in the order help texts and error messages list them.
pub static PRUNE_RULES: &[&dyn PruneRule] = &[&prune::MagnitudeRule, &nm::NmRule];

/// A rule's parameters, encoded by the rule itself (magnitude pruning: scope, structure and
/// norm). Small and `Copy`, so that a [`PruneMethod`] is too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleParams(pub [u8; 4]);

/// A way of choosing pruning masks: the names it answers to, its help line, its masks, and
/// whether its parameters fix the pruning ratio. Rules compute their masks where the weights
/// live (the CPU, or the GPU through their own kernels): the match on the device stays in the
/// rule's folder.
pub trait PruneRule: Sync + std::panic::RefUnwindSafe {
    /// A key unique in [`PRUNE_RULES`] (for equality; never shown or stored).
    fn key(&self) -> &'static str;
    /// The names help texts and errors list, as [`PruneRule::name`] prints them.
    fn names(&self) -> &'static [&'static str];
    /// The form of the names the rule accepts beyond [`PruneRule::names`], for help texts
    /// (`None`: exactly those names).
    fn syntax(&self) -> Option<&'static str> {
        None
    }
    /// One line for help texts: what the rule removes.
    fn help(&self) -> &'static str;
    /// The parameters `name` (trimmed, in lower case) stands for: `Ok(None)` when the name is
    /// not this rule's, an error when it has the rule's form with parameters out of range.
    fn parse(&self, name: &str) -> Result<Option<RuleParams>>;
    /// The canonical name of these parameters (what `Display` and serde write).
    fn name(&self, params: RuleParams) -> String;
    /// The ratio these parameters prune, when they fix it (`None`: the caller chooses).
    fn implied_ratio(&self, _params: RuleParams) -> Option<f64> {
        None
    }
    /// The masks of `model`'s conv/linear weights for `method` (this rule's) at `ratio`, already
    /// checked to be in [0, 1) and, for a fixed ratio, to be it.
    fn masks(&self, model: &Model, method: PruneMethod, ratio: f64) -> Result<Masks>;
}

/// A pruning method: one rule of [`PRUNE_RULES`] with its parameters. Written and parsed as
/// its name (`gul1`, case-insensitive), in files too.
#[derive(Clone, Copy)]
pub struct PruneMethod {
    rule: &'static dyn PruneRule,
    params: RuleParams,
}

impl PruneMethod {
    /// `rule` with `params` (the rule's own constructors call this).
    pub fn new(rule: &'static dyn PruneRule, params: RuleParams) -> PruneMethod {
        PruneMethod { rule, params }
    }

    pub fn rule(self) -> &'static dyn PruneRule {
        self.rule
    }

    pub fn params(self) -> RuleParams {
        self.params
    }

    /// The canonical name, e.g. `gul1`.
    pub fn name(self) -> String {
        self.rule.name(self.params)
    }

    /// The ratio the method fixes, if it does (`None`: any ratio in [0, 1)).
    pub fn implied_ratio(self) -> Option<f64> {
        self.rule.implied_ratio(self.params)
    }

    /// The ratio to prune at: the one the method fixes, or `requested`. A requested ratio that
    /// disagrees with a fixed one is an error, as is no ratio for a method that needs one.
    pub fn ratio(self, requested: Option<f64>) -> Result<f64> {
        match (self.implied_ratio(), requested) {
            (Some(fixed), None) => Ok(fixed),
            (Some(fixed), Some(r)) if same_ratio(fixed, r) => Ok(fixed),
            (Some(fixed), Some(r)) => Err(Error::Invalid(format!(
                "{self} prunes a fixed ratio of {fixed}, not {r}"
            ))),
            (None, Some(r)) => Ok(r),
            (None, None) => Err(Error::Invalid(format!("{self} needs a pruning ratio"))),
        }
    }

    /// Every method the registry lists by name, in its order.
    pub fn listed() -> impl Iterator<Item = PruneMethod> {
        PRUNE_RULES.iter().flat_map(|rule| {
            rule.names().iter().map(move |name| {
                let params =
                    rule.parse(name).ok().flatten().unwrap_or_else(|| {
                        panic!("the registry lists {name:?}, which does not parse")
                    });
                PruneMethod::new(*rule, params)
            })
        })
    }
}

/// Ratios equal up to rounding (a ratio typed as `0.5` for 2:4, `0.333…` for 2:3).
fn same_ratio(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9
}

/// The registry's names for help texts and errors: each rule's names (and form), e.g.
/// `gul1, gul2, …, lsl2`.
pub fn prune_names() -> String {
    PRUNE_RULES
        .iter()
        .map(|rule| {
            let mut names = rule.names().join(", ");
            if let Some(syntax) = rule.syntax() {
                names = format!("{syntax} (e.g. {names})");
            }
            names
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The registry described for `--help`: each rule's names with its help line.
pub fn prune_help() -> String {
    PRUNE_RULES
        .iter()
        .map(|rule| {
            let names = match rule.syntax() {
                Some(syntax) => format!("{syntax}, e.g. {}", rule.names().join(", ")),
                None => rule.names().join(", "),
            };
            format!("{names} ({})", rule.help())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl PartialEq for PruneMethod {
    fn eq(&self, other: &PruneMethod) -> bool {
        self.rule.key() == other.rule.key() && self.params == other.params
    }
}

impl Eq for PruneMethod {}

impl Hash for PruneMethod {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.rule.key().hash(h);
        self.params.hash(h);
    }
}

impl fmt::Debug for PruneMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PruneMethod({})", self.name())
    }
}

impl fmt::Display for PruneMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for PruneMethod {
    type Err = Error;

    /// Any rule's name, case-insensitive, surrounding blanks ignored: `GUL1`, `gsl2`, …
    fn from_str(s: &str) -> Result<PruneMethod> {
        let lower = s.trim().to_ascii_lowercase();
        for rule in PRUNE_RULES {
            if let Some(params) = rule.parse(&lower)? {
                return Ok(PruneMethod::new(*rule, params));
            }
        }
        Err(Error::Invalid(format!(
            "unknown pruning method {s:?}: expected one of {}",
            prune_names()
        )))
    }
}

serde_as_name!(PruneMethod);

/// Structured pruning's unit counts (over the prunable layers, the classifier excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitReport {
    /// Output channels of convs plus output neurons of hidden linear layers.
    pub total: usize,
    /// Units removed.
    pub pruned: usize,
    /// Units the ratio asked for (`floor(δ·total)` global, `Σ floor(δ·u_l)` local). Larger than
    /// `pruned` only when the one-unit-per-layer rule made the exact count impossible.
    pub requested: usize,
}

impl UnitReport {
    /// Fraction of units removed.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.pruned as f64 / self.total as f64
        }
    }
}

/// One 0/1 mask per conv/linear weight, with what the pruning achieved.
#[derive(Clone)]
pub struct Masks {
    pub method: PruneMethod,
    pub ratio: f64,
    /// Indexed by layer index of `model.net.layers`: `Some(mask)` (same shape as the weight,
    /// values 0.0 or 1.0) for every conv and linear layer, `None` for the others.
    pub layers: Vec<Option<Tensor>>,
    /// Conv and linear weights in the model (biases excluded).
    pub total_weights: usize,
    /// Of those, how many the masks zero.
    pub pruned_weights: usize,
    /// Structured pruning only.
    pub units: Option<UnitReport>,
}

impl Masks {
    /// The mask of layer `index` (None for layers without a prunable weight).
    pub fn get(&self, index: usize) -> Option<&Tensor> {
        self.layers.get(index).and_then(|m| m.as_ref())
    }

    /// Fraction of all conv/linear weights set to zero by the masks.
    pub fn weight_sparsity(&self) -> f64 {
        if self.total_weights == 0 {
            0.0
        } else {
            self.pruned_weights as f64 / self.total_weights as f64
        }
    }

    /// Fraction of units removed (structured pruning only).
    pub fn unit_fraction(&self) -> Option<f64> {
        self.units.map(|u| u.fraction())
    }
}

pub(crate) fn check_ratio(ratio: f64) -> Result<()> {
    if (0.0..1.0).contains(&ratio) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "pruning ratio must be in [0, 1), got {ratio}"
        )))
    }
}

/// The pruning masks of `model` for `method` at `ratio` (δ ∈ [0, 1); for a method that fixes
/// its ratio, that ratio), computed by the method's rule where the weights live.
pub fn prune_masks(model: &Model, method: PruneMethod, ratio: f64) -> Result<Masks> {
    check_ratio(ratio)?;
    let ratio = method.ratio(Some(ratio))?;
    method.rule.masks(model, method, ratio)
}

/// A pruned copy of `model`: every conv/linear weight `w` that has a mask becomes
/// `w.mul(&mask)`, recorded by autodiff. When `model`'s weights are parameter leaves (and
/// gradients are enabled), a loss computed with the copy backpropagates into those leaves with
/// gradient exactly zero at pruned entries (`∂(w·m)/∂w = m`): this is how a CACTUS training step
/// trains through a pruned network. Biases, batch norm (parameters and running statistics) and
/// every other layer are shared with `model` unchanged.
///
/// Panics if `masks` was not computed for a model of this structure (mask shapes differ).
pub fn apply_masks(model: &Model, masks: &Masks) -> Model {
    let mut copy = model.clone();
    assert_eq!(
        masks.layers.len(),
        copy.net.layers.len(),
        "masks for {} layers applied to a model with {}",
        masks.layers.len(),
        copy.net.layers.len()
    );
    for (i, layer) in copy.net.layers.iter_mut().enumerate() {
        let Some(w) = layer.weight_mut() else {
            continue;
        };
        if let Some(m) = masks.get(i) {
            assert_eq!(
                m.shape(),
                w.shape(),
                "mask of layer {i} does not fit its weight"
            );
            *w = w.mul(m);
        }
    }
    copy
}

/// `prune_masks` then `apply_masks`: the pruned copy with the masks (for their report).
pub fn prune(model: &Model, method: PruneMethod, ratio: f64) -> Result<(Model, Masks)> {
    let masks = prune_masks(model, method, ratio)?;
    Ok((apply_masks(model, &masks), masks))
}
