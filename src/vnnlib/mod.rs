//! VNN-LIB, the property format of the VNN-COMP verification competition (a subset of
//! SMT-LIB): a reader that turns a property file into input boxes and the output regions that
//! would be counterexamples there, and a writer for the local-robustness property.
//!
//! A file declares the flattened inputs `X_0 … X_{n−1}` and outputs `Y_0 … Y_{m−1}` as reals
//! and asserts a formula over them; the property is *violated* (SAT) when some input satisfying
//! the formula's input bounds maps to outputs satisfying its output constraints. The reader
//! expands the formula into disjunctive normal form, gathers each disjunct's input bounds into
//! a box and its output atoms into a conjunction, and groups disjuncts by box ([`Case`]).
//!
//! Input bounds are rounded *outward* to f32, so the f32 box always contains the file's real
//! box, however the bound was spelled (`(<= X_0 0.1)`, `(<= (* 2 X_0) 0.2)`, `(>= (- X_0) -1)`):
//! the reader carries an f64 interval around every number for that. The writer prints every
//! f32 as its exact decimal ([`exact_decimal`]), so writing then reading gives back the box bit
//! for bit.

mod decimal;
mod num;
mod parse;
mod robustness;
mod sexpr;
mod write;

pub use decimal::exact_decimal;
pub use write::write_robustness;

use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// `Σ terms + constant ≥ 0` (or `> 0` when `strict`), over the outputs `Y_j`: `terms` holds
/// `(j, coefficient)` pairs sorted by `j`, each `j` once, no zero coefficient.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    pub terms: Vec<(usize, f64)>,
    pub constant: f64,
    pub strict: bool,
}

/// One input box with the output region that would be a counterexample there.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// Per-input lower bounds in the flattened input order, as f32 rounded OUTWARD from the
    /// file's decimals (down): with `upper`, the f32 box always contains the real box.
    pub lower: Vec<f32>,
    /// Per-input upper bounds, rounded up.
    pub upper: Vec<f32>,
    /// Disjunction of conjunctions: a point x of the box is a counterexample when, for some
    /// conjunction, every constraint holds at y = f(x). An empty conjunction holds everywhere
    /// (the whole box is unsafe).
    pub unsafe_region: Vec<Vec<Constraint>>,
}

/// A property: SAT (violated) iff for some case there is x in its box whose output lies in its
/// unsafe region. No cases means the property cannot be violated.
#[derive(Clone, Debug, PartialEq)]
pub struct Property {
    pub num_inputs: usize,
    pub num_outputs: usize,
    pub cases: Vec<Case>,
}

/// Files (plain or inflated) larger than this are refused rather than read into memory.
const MAX_FILE_BYTES: u64 = 256 << 20;

impl Constraint {
    /// Whether the constraint holds at outputs `y` (evaluated in f64). False when `y` is too
    /// short for the constraint's indices or a value is NaN.
    pub fn holds(&self, y: &[f32]) -> bool {
        let mut sum = self.constant;
        for &(j, c) in &self.terms {
            let Some(&v) = y.get(j) else {
                return false;
            };
            sum += c * f64::from(v);
        }
        if self.strict {
            sum > 0.0
        } else {
            sum >= 0.0
        }
    }
}

impl Property {
    /// Parses VNN-LIB text. Errors (`Error::Invalid`) name the problem and, where it has one,
    /// the line and the offending token or form.
    ///
    /// Accepted: `(declare-const X_i Real)` / `(declare-const Y_j Real)` (also the
    /// `(declare-fun X_i () Real)` spelling), declared contiguously from 0; `(assert F)` where F
    /// is built from `and`, `or`, `true`, `false` and the atoms `<=`, `>=`, `<`, `>`, `=`
    /// (chains like `(<= a b c)` too) over linear terms — variables, decimals, `(- e)`,
    /// `(+ e …)`, `(- e e …)`, `(* c e)`, `(/ e c)`; and, ignored, `check-sat`, `get-model`,
    /// `exit`, `set-info`, `set-logic`. Every atom must bound a single input (`c·X_i ⋈ d`) or
    /// constrain outputs only; every disjunct must bound every input from both sides.
    /// Strict input bounds become closed ones (the box is a superset, which is sound).
    pub fn parse(text: &str) -> Result<Property> {
        parse::parse(text)
    }

    /// Reads and parses a property file, gunzipping it first if its name ends in `.gz`. Errors
    /// are `Error::BadFile` (or `Error::Io`) naming the path.
    pub fn read(path: &Path) -> Result<Property> {
        let text = read_text(path)?;
        Property::parse(&text).map_err(|e| match e {
            Error::Invalid(message) => Error::bad_file(path, message),
            other => other,
        })
    }

    /// If every case's unsafe region is exactly "some j ≠ y has Y_j ≥ Y_y" for one label y
    /// (each conjunction the single constraint Y_j − Y_y ≥ 0, however spelled: `(>= Y_j Y_y)`,
    /// `(<= Y_y Y_j)`, the terms in any order, coefficients ±1, constant 0, not strict), the
    /// label y and the classes j that appear, sorted. `None` otherwise, when there are no
    /// cases, or when cases disagree on the label or on the classes.
    pub fn robustness_label(&self) -> Option<(usize, Vec<usize>)> {
        robustness::label(self)
    }
}

/// The file's text: a regular file of at most `MAX_FILE_BYTES`, inflated if `.gz` (to at
/// most as much), valid UTF-8.
fn read_text(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::bad_file(path, "not a regular file"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Error::bad_file(
            path,
            format!(
                "the file is {} bytes, more than the {MAX_FILE_BYTES} a property may take",
                meta.len()
            ),
        ));
    }
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        // One byte past the cap tells "too large" from an exact fit.
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::bad_file(path, format!("corrupt gzip data: {e}")))?;
        if out.len() as u64 > MAX_FILE_BYTES {
            return Err(Error::bad_file(
                path,
                format!("inflates to more than {MAX_FILE_BYTES} bytes (256 MiB); refusing it"),
            ));
        }
        out
    } else {
        raw
    };
    String::from_utf8(bytes).map_err(|e| {
        Error::bad_file(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_evaluates_in_f64() {
        let c = Constraint {
            terms: vec![(0, 1.0), (2, -1.0)],
            constant: 0.0,
            strict: false,
        };
        assert!(c.holds(&[1.0, 9.0, 1.0]));
        assert!(!c.holds(&[1.0, 9.0, 1.5]));
        assert!(!c.holds(&[1.0]));
        let strict = Constraint {
            strict: true,
            ..c.clone()
        };
        assert!(!strict.holds(&[1.0, 9.0, 1.0]));
        assert!(!c.holds(&[f32::NAN, 0.0, 0.0]));
    }
}
