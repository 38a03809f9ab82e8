//! Writing the VNN-COMP local-robustness property, every bound as its exact decimal so that
//! reading the file back gives the same f32 box bit for bit.

use super::decimal::exact_decimal;
use crate::error::{Error, Result};
use std::fmt::Write as _;

/// The local-robustness property of VNN-COMP: the input box [lower, upper] (f32 values,
/// printed exactly) and the unsafe region "some j ≠ label has Y_j ≥ Y_label", as
/// `(assert (or (and (>= Y_j Y_label)) …))`. Errors when the bounds differ in length, are
/// empty, not finite or crossed (lower > upper), when `num_outputs < 2`, or when
/// `label >= num_outputs`.
pub fn write_robustness(
    lower: &[f32],
    upper: &[f32],
    label: usize,
    num_outputs: usize,
) -> Result<String> {
    let invalid = |m: String| Err(Error::Invalid(format!("robustness property: {m}")));
    if lower.len() != upper.len() {
        return invalid(format!(
            "{} lower bounds but {} upper bounds",
            lower.len(),
            upper.len()
        ));
    }
    if lower.is_empty() {
        return invalid("no inputs".to_string());
    }
    for (i, (&l, &u)) in lower.iter().zip(upper).enumerate() {
        if !l.is_finite() || !u.is_finite() {
            return invalid(format!("input {i} has a non-finite bound [{l}, {u}]"));
        }
        if l > u {
            return invalid(format!(
                "input {i}'s lower bound {l} exceeds its upper bound {u}"
            ));
        }
    }
    if num_outputs < 2 {
        return invalid(format!(
            "{num_outputs} outputs; robustness needs at least 2 classes"
        ));
    }
    if label >= num_outputs {
        return invalid(format!(
            "label {label} is not one of the {num_outputs} outputs"
        ));
    }
    let n = lower.len();
    let mut out = String::with_capacity(80 * n + 30 * num_outputs);
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "; Local robustness: {n} inputs, {num_outputs} outputs, label {label} (written by \
         cactus)"
    );
    out.push('\n');
    for i in 0..n {
        let _ = writeln!(out, "(declare-const X_{i} Real)");
    }
    out.push('\n');
    for j in 0..num_outputs {
        let _ = writeln!(out, "(declare-const Y_{j} Real)");
    }
    out.push_str("\n; Input constraints:\n");
    for (i, (&l, &u)) in lower.iter().zip(upper).enumerate() {
        let _ = writeln!(out, "(assert (<= X_{i} {}))", exact_decimal(u));
        let _ = writeln!(out, "(assert (>= X_{i} {}))", exact_decimal(l));
    }
    out.push_str("\n; Output constraints:\n(assert (or\n");
    for j in (0..num_outputs).filter(|&j| j != label) {
        let _ = writeln!(out, "    (and (>= Y_{j} Y_{label}))");
    }
    out.push_str("))\n");
    Ok(out)
}
