//! From VNN-LIB text to a [`Property`]: the commands, formulas over linear terms, their
//! disjunctive normal form, and the grouping of its disjuncts by input box.

use super::decimal::{self, Decimal};
use super::num::Num;
use super::sexpr::{self, shorten, SExpr};
use super::{Case, Constraint, Property};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// More disjuncts than this in the normal form are refused (counted before any is built).
pub(crate) const MAX_DISJUNCTS: u64 = 1_000_000;
/// Nor may the disjuncts' output constraints hold more than this many terms in all, each
/// constraint counting one more (an output constraint copied into a disjunct takes some 40
/// bytes and 16 a term).
const MAX_EXPANDED_TERMS: u64 = 10_000_000;
/// Nor may the distinct boxes hold more bounds than this in all (8 bytes each).
const MAX_BOX_VALUES: usize = 1 << 26;

/// A declared variable: an input `X_i` or an output `Y_j` (inputs order first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Var {
    X(usize),
    Y(usize),
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::X(i) => write!(f, "X_{i}"),
            Var::Y(j) => write!(f, "Y_{j}"),
        }
    }
}

/// `Σ terms + constant`; no term has an exactly zero coefficient.
#[derive(Clone, Debug)]
struct Linear {
    terms: BTreeMap<Var, Num>,
    constant: Num,
}

impl Linear {
    fn constant(c: Num) -> Linear {
        Linear {
            terms: BTreeMap::new(),
            constant: c,
        }
    }

    fn var(v: Var) -> Linear {
        Linear {
            terms: BTreeMap::from([(v, Num::exact(1.0))]),
            constant: Num::exact(0.0),
        }
    }

    fn add(mut self, other: Linear) -> Option<Linear> {
        for (v, c) in other.terms {
            let sum = match self.terms.get(&v) {
                Some(&mine) => mine.add(c)?,
                None => c,
            };
            if sum.lo == 0.0 && sum.hi == 0.0 {
                self.terms.remove(&v);
            } else {
                self.terms.insert(v, sum);
            }
        }
        self.constant = self.constant.add(other.constant)?;
        Some(self)
    }

    fn neg(mut self) -> Linear {
        for c in self.terms.values_mut() {
            *c = c.neg();
        }
        self.constant = self.constant.neg();
        self
    }

    fn scale(mut self, k: Num, op: fn(Num, Num) -> Option<Num>) -> Option<Linear> {
        for c in self.terms.values_mut() {
            *c = op(*c, k)?;
        }
        self.terms.retain(|_, c| !(c.lo == 0.0 && c.hi == 0.0));
        self.constant = op(self.constant, k)?;
        Some(self)
    }
}

/// An atom after normalisation: a bound on one input (already rounded outward in f64), or a
/// constraint on the outputs.
#[derive(Clone, Debug)]
enum Atom {
    Lower(usize, f64),
    Upper(usize, f64),
    Output(Constraint),
}

/// A formula over atoms (indices into the reader's atoms), simplified as it is built: no
/// `True`/`False` inside an `And`/`Or`, no `And` directly in an `And`, no `Or` in an `Or`.
#[derive(Clone, Debug)]
enum Formula {
    Atom(usize),
    And(Vec<Formula>),
    Or(Vec<Formula>),
    True,
    False,
}

fn and(children: Vec<Formula>) -> Formula {
    let mut flat = Vec::new();
    for c in children {
        match c {
            Formula::True => {}
            Formula::False => return Formula::False,
            Formula::And(inner) => flat.extend(inner),
            other => flat.push(other),
        }
    }
    match flat.len() {
        0 => Formula::True,
        1 => flat.pop().unwrap_or(Formula::True),
        _ => Formula::And(flat),
    }
}

fn or(children: Vec<Formula>) -> Formula {
    let mut flat = Vec::new();
    for c in children {
        match c {
            Formula::False => {}
            // A disjunct that always holds makes the whole disjunction hold.
            Formula::True => return Formula::True,
            Formula::Or(inner) => flat.extend(inner),
            other => flat.push(other),
        }
    }
    match flat.len() {
        0 => Formula::False,
        1 => flat.pop().unwrap_or(Formula::False),
        _ => Formula::Or(flat),
    }
}

fn error(line: usize, message: impl fmt::Display) -> Error {
    Error::Invalid(format!("line {line}: {message}"))
}

/// `X_<i>` or `Y_<j>` with `i`, `j` written without leading zeros.
fn parse_var(text: &str) -> Option<Var> {
    let (make, digits): (fn(usize) -> Var, &str) = if let Some(d) = text.strip_prefix("X_") {
        (Var::X, d)
    } else {
        (Var::Y, text.strip_prefix("Y_")?)
    };
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok().map(make)).flatten()
}

/// Whether a token is meant as a number (then it must be a well-formed one).
fn looks_numeric(text: &str) -> bool {
    let b = text.as_bytes();
    let digit_or_point = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_digit() || *c == b'.');
    digit_or_point(b.first())
        || (matches!(b.first(), Some(b'-' | b'+')) && digit_or_point(b.get(1)))
}

/// The commands' state: declared variables (with their lines) and the atoms read so far.
#[derive(Default)]
struct Reader {
    declared: HashMap<Var, usize>,
    atoms: Vec<Atom>,
}

pub(crate) fn parse(text: &str) -> Result<Property> {
    let forms = sexpr::read(text)?;
    if forms.is_empty() {
        return Err(Error::Invalid(
            "empty property: the text has no commands (declare-const, assert)".into(),
        ));
    }
    let mut reader = Reader::default();
    let mut asserts = Vec::new();
    for form in &forms {
        let line = form.line();
        let bad_command = || error(line, format!("malformed command '{}'", form.show()));
        let SExpr::List { items, .. } = form else {
            return Err(bad_command());
        };
        let Some(name) = items.first().and_then(SExpr::atom) else {
            return Err(bad_command());
        };
        match name {
            "declare-const" => {
                let [_, var, sort] = items.as_slice() else {
                    return Err(error(
                        line,
                        format!("declare-const takes a name and a sort: '{}'", form.show()),
                    ));
                };
                reader.declare(var, sort, line)?;
            }
            "declare-fun" => match items.as_slice() {
                [_, var, SExpr::List { items: args, .. }, sort] if args.is_empty() => {
                    reader.declare(var, sort, line)?
                }
                _ => {
                    return Err(error(
                        line,
                        format!(
                            "only constants are supported, as (declare-fun NAME () Real): '{}'",
                            form.show()
                        ),
                    ))
                }
            },
            "assert" => {
                let [_, formula] = items.as_slice() else {
                    return Err(error(
                        line,
                        format!("assert takes one formula: '{}'", form.show()),
                    ));
                };
                asserts.push(formula);
            }
            "check-sat" | "get-model" | "exit" | "set-info" | "set-logic" => {}
            other => {
                return Err(error(
                    line,
                    format!("unsupported command '{}'", shorten(other, 40)),
                ))
            }
        }
    }
    let num_inputs = reader.count('X')?;
    let num_outputs = reader.count('Y')?;
    if num_inputs == 0 {
        return Err(Error::Invalid(
            "no inputs declared: a property needs (declare-const X_0 Real) and so on".into(),
        ));
    }
    let mut conjuncts = Vec::new();
    for a in asserts {
        match reader.formula(a)? {
            Formula::And(children) => conjuncts.extend(children),
            f => conjuncts.push(f),
        }
    }
    let cases = expand(&reader.atoms, conjuncts, num_inputs)?;
    Ok(Property {
        num_inputs,
        num_outputs,
        cases,
    })
}

impl Reader {
    fn declare(&mut self, var: &SExpr, sort: &SExpr, line: usize) -> Result<()> {
        let name = var.atom().unwrap_or("");
        let Some(v) = parse_var(name) else {
            return Err(error(
                line,
                format!(
                    "unsupported variable name '{}' (inputs are X_0, X_1, …, outputs Y_0, \
                     Y_1, …)",
                    shorten(&var.show(), 40)
                ),
            ));
        };
        if sort.atom() != Some("Real") {
            return Err(error(
                line,
                format!(
                    "{v} is declared with sort '{}'; only Real is supported",
                    shorten(&sort.show(), 40)
                ),
            ));
        }
        if let Some(first) = self.declared.insert(v, line) {
            return Err(error(
                line,
                format!("{v} is declared twice (first at line {first})"),
            ));
        }
        Ok(())
    }

    /// The number of inputs (`'X'`) or outputs (`'Y'`), which must be declared from 0 on
    /// without gaps.
    fn count(&self, kind: char) -> Result<usize> {
        let mut indices: Vec<usize> = self
            .declared
            .keys()
            .filter_map(|v| match (v, kind) {
                (Var::X(i), 'X') | (Var::Y(i), 'Y') => Some(*i),
                _ => None,
            })
            .collect();
        indices.sort_unstable();
        for (k, &i) in indices.iter().enumerate() {
            if i != k {
                let last = indices[indices.len() - 1];
                return Err(Error::Invalid(format!(
                    "{kind}_{k} is not declared but {kind}_{last} is: variables must be \
                     declared contiguously from {kind}_0"
                )));
            }
        }
        Ok(indices.len())
    }

    // `formula` and `linear` recurse once per nesting level: what each level does beyond
    // dispatching lives in functions kept out of line, so that their frames stay small.
    fn formula(&mut self, e: &SExpr) -> Result<Formula> {
        let (op, args) = match e {
            SExpr::Atom { text: "true", .. } => return Ok(Formula::True),
            SExpr::Atom { text: "false", .. } => return Ok(Formula::False),
            SExpr::Atom { .. } => return Err(form_error(e, "expected a formula")),
            SExpr::List { items, .. } => match items.split_first() {
                Some((SExpr::Atom { text, .. }, args)) => (*text, args),
                _ => return Err(form_error(e, "expected a formula")),
            },
        };
        match op {
            "and" | "or" => {
                let mut children = Vec::with_capacity(args.len());
                for a in args {
                    children.push(self.formula(a)?);
                }
                Ok(if op == "and" {
                    and(children)
                } else {
                    or(children)
                })
            }
            "<=" | ">=" | "<" | ">" | "=" => self.comparison(op, args, e),
            "not" => Err(form_error(e, "negation is not supported")),
            _ => Err(unsupported(op, e)),
        }
    }

    /// `(op a b …)`: a chain is the conjunction of its neighbouring pairs.
    #[inline(never)]
    fn comparison(&mut self, op: &str, args: &[SExpr], e: &SExpr) -> Result<Formula> {
        if args.len() < 2 {
            return Err(form_error(e, &format!("'{op}' needs two arguments")));
        }
        let terms = args
            .iter()
            .map(|a| self.linear(a))
            .collect::<Result<Vec<_>>>()?;
        let diff = |p: &Linear, q: &Linear| {
            p.clone()
                .add(q.clone().neg())
                .ok_or_else(|| form_error(e, "arithmetic overflows"))
        };
        let mut parts = Vec::new();
        for pair in terms.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            // Each atom as `d ≥ 0` or `d > 0`.
            let atoms = match op {
                ">=" => vec![(diff(a, b)?, false)],
                "<=" => vec![(diff(b, a)?, false)],
                ">" => vec![(diff(a, b)?, true)],
                "<" => vec![(diff(b, a)?, true)],
                _ => vec![(diff(a, b)?, false), (diff(b, a)?, false)],
            };
            for (d, strict) in atoms {
                parts.push(self.atom(d, strict, e)?);
            }
        }
        Ok(and(parts))
    }

    /// Classifies `d ≥ 0` (`d > 0` when strict), written as `e`: an input bound, an output
    /// constraint, or a constant truth value.
    fn atom(&mut self, d: Linear, strict: bool, e: &SExpr) -> Result<Formula> {
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        for (v, c) in &d.terms {
            if c.near == 0.0 {
                continue;
            }
            match v {
                Var::X(i) => inputs.push((*i, *c)),
                Var::Y(j) => outputs.push((*j, c.near)),
            }
        }
        if inputs.len() > 1 {
            let names: Vec<String> = inputs.iter().map(|(i, _)| format!("X_{i}")).collect();
            return Err(form_error(
                e,
                &format!(
                    "a constraint over several inputs ({}) is not supported",
                    shorten(&names.join(", "), 40)
                ),
            ));
        }
        if !inputs.is_empty() && !outputs.is_empty() {
            return Err(form_error(
                e,
                "mixed input/output constraint is not supported",
            ));
        }
        let atom = if let Some(&(i, a)) = inputs.first() {
            // a·X_i + c ≥ 0 is X_i ≥ −c/a when a > 0 and X_i ≤ −c/a when a < 0; the interval
            // of −c/a gives the outward end.
            let Some(positive) = a.sign() else {
                return Err(form_error(
                    e,
                    &format!("the coefficient of X_{i} cannot be told from zero"),
                ));
            };
            let bound = d
                .constant
                .neg()
                .div(a)
                .ok_or_else(|| form_error(e, "arithmetic overflows"))?;
            if positive {
                Atom::Lower(i, bound.lo)
            } else {
                Atom::Upper(i, bound.hi)
            }
        } else if !outputs.is_empty() {
            Atom::Output(Constraint {
                terms: outputs,
                constant: d.constant.near,
                strict,
            })
        } else {
            // Constants only. When rounding leaves the sign open the atom is kept as true:
            // a larger unsafe region is the sound side to err on.
            let c = d.constant;
            let fails = if strict { c.hi <= 0.0 } else { c.hi < 0.0 };
            return Ok(if fails { Formula::False } else { Formula::True });
        };
        self.atoms.push(atom);
        Ok(Formula::Atom(self.atoms.len() - 1))
    }

    fn linear(&self, e: &SExpr) -> Result<Linear> {
        let (op, args) = match e {
            SExpr::Atom { text, line } => return self.leaf(text, *line),
            SExpr::List { items, .. } => match items.split_first() {
                Some((SExpr::Atom { text, .. }, args)) => (*text, args),
                _ => return Err(form_error(e, "expected a term")),
            },
        };
        let enough = match op {
            "+" | "-" | "*" => !args.is_empty(),
            "/" => args.len() >= 2,
            _ => return Err(unsupported(op, e)),
        };
        if !enough {
            return Err(form_error(e, &format!("too few arguments for '{op}'")));
        }
        let mut terms = Vec::with_capacity(args.len());
        for a in args {
            terms.push(self.linear(a)?);
        }
        combine(op, terms, e)
    }

    /// A number or a declared variable.
    fn leaf(&self, text: &str, line: usize) -> Result<Linear> {
        if looks_numeric(text) {
            let shown = shorten(text, 40);
            let d = Decimal::parse(text)
                .ok_or_else(|| error(line, format!("malformed number '{shown}'")))?;
            let (near, lo, hi) = decimal::enclose(&d, text)
                .ok_or_else(|| error(line, format!("number '{shown}' is out of range")))?;
            return Ok(Linear::constant(Num { near, lo, hi }));
        }
        match parse_var(text) {
            Some(v) if self.declared.contains_key(&v) => Ok(Linear::var(v)),
            Some(v) => Err(error(line, format!("undeclared variable '{v}'"))),
            None => Err(error(
                line,
                format!(
                    "unknown symbol '{}' (expected a variable X_<i> or Y_<j>, or a number)",
                    shorten(text, 40)
                ),
            )),
        }
    }
}

/// `(op t₁ t₂ …)` for the arithmetic operators, `terms` non-empty (`/`: at least two).
#[inline(never)]
fn combine(op: &str, terms: Vec<Linear>, e: &SExpr) -> Result<Linear> {
    let overflow = || form_error(e, "arithmetic overflows");
    let single = terms.len() == 1;
    let mut terms = terms.into_iter();
    let first = terms.next().ok_or_else(overflow)?;
    match op {
        "+" => terms.try_fold(first, |acc, t| acc.add(t).ok_or_else(overflow)),
        "-" if single => Ok(first.neg()),
        "-" => terms.try_fold(first, |acc, t| acc.add(t.neg()).ok_or_else(overflow)),
        "*" => {
            // Linear only: every factor but (at most) one must be a constant.
            let mut factor = Num::exact(1.0);
            let mut variable: Option<Linear> = None;
            for t in std::iter::once(first).chain(terms) {
                if t.terms.is_empty() {
                    factor = factor.mul(t.constant).ok_or_else(overflow)?;
                } else if variable.is_none() {
                    variable = Some(t);
                } else {
                    return Err(form_error(e, "nonlinear product is not supported"));
                }
            }
            match variable {
                Some(v) => v.scale(factor, Num::mul).ok_or_else(overflow),
                None => Ok(Linear::constant(factor)),
            }
        }
        _ => terms.try_fold(first, |acc, t| {
            if !t.terms.is_empty() {
                return Err(form_error(
                    e,
                    "division by a non-constant term is not supported",
                ));
            }
            acc.scale(t.constant, Num::div)
                .ok_or_else(|| form_error(e, "division by zero or overflow"))
        }),
    }
}

#[cold]
#[inline(never)]
fn unsupported(op: &str, e: &SExpr) -> Error {
    form_error(e, &format!("unsupported operator '{}'", shorten(op, 40)))
}

/// "line N: {what}: '(the form)'", for errors about a whole form.
#[cold]
#[inline(never)]
fn form_error(e: &SExpr, what: &str) -> Error {
    error(e.line(), format!("{what}: '{}'", e.show()))
}

/// The weight of an atom in a disjunct: what copying it costs, in terms.
fn weight(atom: &Atom) -> u64 {
    match atom {
        Atom::Output(c) => 1 + c.terms.len() as u64,
        Atom::Lower(..) | Atom::Upper(..) => 1,
    }
}

/// The number of disjuncts of `f`'s normal form and the weight of the atoms they hold in all,
/// saturating.
fn size(f: &Formula, atoms: &[Atom]) -> (u64, u64) {
    match f {
        Formula::Atom(i) => (1, weight(&atoms[*i])),
        Formula::True => (1, 0),
        Formula::False => (0, 0),
        Formula::Or(children) => children.iter().fold((0, 0), |(c, t), x| {
            let (c2, t2) = size(x, atoms);
            (c.saturating_add(c2), t.saturating_add(t2))
        }),
        Formula::And(children) => children
            .iter()
            .fold((1, 0), |acc, x| and_size(acc, size(x, atoms))),
    }
}

/// The size of a conjunction from its two sides' sizes: every pair of disjuncts.
fn and_size((c1, t1): (u64, u64), (c2, t2): (u64, u64)) -> (u64, u64) {
    (
        c1.saturating_mul(c2),
        t1.saturating_mul(c2).saturating_add(t2.saturating_mul(c1)),
    )
}

/// `f` in disjunctive normal form: each inner list a conjunction of atom indices.
fn dnf(f: &Formula) -> Vec<Vec<usize>> {
    match f {
        Formula::Atom(i) => vec![vec![*i]],
        Formula::True => vec![vec![]],
        Formula::False => vec![],
        Formula::Or(children) => children.iter().flat_map(dnf).collect(),
        Formula::And(children) => children.iter().fold(vec![vec![]], |acc, child| {
            let right = dnf(child);
            let mut out = Vec::with_capacity(acc.len() * right.len());
            for l in &acc {
                for r in &right {
                    out.push(l.iter().chain(r).copied().collect());
                }
            }
            out
        }),
    }
}

/// Per-input bounds of one disjunct, in f64 (already rounded outward).
#[derive(Clone)]
struct Bounds {
    lo: Vec<f64>,
    hi: Vec<f64>,
}

impl Bounds {
    fn apply(&mut self, atom: &Atom) {
        match *atom {
            Atom::Lower(i, v) => self.lo[i] = self.lo[i].max(v),
            Atom::Upper(i, v) => self.hi[i] = self.hi[i].min(v),
            Atom::Output(_) => {}
        }
    }
}

/// The cases of the conjunction of `conjuncts`: its normal form, one disjunct at a time (the
/// conjuncts that are plain conjunctions applied once to all), grouped by box.
fn expand(atoms: &[Atom], conjuncts: Vec<Formula>, num_inputs: usize) -> Result<Vec<Case>> {
    let mut base = Bounds {
        lo: vec![f64::NEG_INFINITY; num_inputs],
        hi: vec![f64::INFINITY; num_inputs],
    };
    let mut base_outputs = Vec::new();
    let mut choices = Vec::new();
    for c in conjuncts {
        match size(&c, atoms) {
            (0, _) => return Ok(Vec::new()),
            (1, _) => {
                for id in dnf(&c).into_iter().flatten() {
                    match &atoms[id] {
                        Atom::Output(constraint) => base_outputs.push(constraint.clone()),
                        bound => base.apply(bound),
                    }
                }
            }
            _ => choices.push(c),
        }
    }
    let (count, choice_weight) = choices
        .iter()
        .fold((1, 0), |acc, c| and_size(acc, size(c, atoms)));
    // Every disjunct also gets a copy of the output constraints common to all.
    let base_weight: u64 = base_outputs.iter().map(|c| 1 + c.terms.len() as u64).sum();
    let expanded = choice_weight.saturating_add(count.saturating_mul(base_weight));
    if count > MAX_DISJUNCTS {
        return Err(Error::Invalid(format!(
            "the formula expands to {} disjuncts in disjunctive normal form, more than the \
             {MAX_DISJUNCTS} supported",
            if count == u64::MAX {
                "too many".to_string()
            } else {
                count.to_string()
            }
        )));
    }
    if expanded > MAX_EXPANDED_TERMS {
        return Err(Error::Invalid(format!(
            "the formula's disjunctive normal form holds more than {MAX_EXPANDED_TERMS} \
             output terms"
        )));
    }
    let tables: Vec<Vec<Vec<usize>>> = choices.iter().map(dnf).collect();
    let mut grouper = Grouper {
        num_inputs,
        count,
        cases: Vec::new(),
        index: HashMap::new(),
    };
    // The base box's case, once known (`Some(None)`: the base box is empty).
    let mut base_case: Option<Option<usize>> = None;
    let mut pick = vec![0usize; tables.len()];
    for k in 0..count {
        let mut own: Option<Bounds> = None;
        let mut outputs = base_outputs.clone();
        for (table, &p) in tables.iter().zip(&pick) {
            for &id in &table[p] {
                match &atoms[id] {
                    Atom::Output(constraint) => outputs.push(constraint.clone()),
                    bound => own.get_or_insert_with(|| base.clone()).apply(bound),
                }
            }
        }
        let case = match own {
            Some(bounds) => grouper.place(&bounds, k)?,
            None => match base_case {
                Some(case) => case,
                None => *base_case.insert(grouper.place(&base, k)?),
            },
        };
        if let Some(c) = case {
            grouper.cases[c].unsafe_region.push(outputs);
        }
        // The next combination, last table fastest.
        for pos in (0..pick.len()).rev() {
            pick[pos] += 1;
            if pick[pos] < tables[pos].len() {
                break;
            }
            pick[pos] = 0;
        }
    }
    Ok(grouper.cases)
}

/// Cases by box, in order of first appearance.
struct Grouper {
    num_inputs: usize,
    count: u64,
    cases: Vec<Case>,
    index: HashMap<Vec<u32>, usize>,
}

impl Grouper {
    /// The case of disjunct `k`'s box (made if new); `None` when the box is empty (the
    /// disjunct can never hold).
    fn place(&mut self, b: &Bounds, k: u64) -> Result<Option<usize>> {
        if b.lo.iter().zip(&b.hi).any(|(lo, hi)| lo > hi) {
            return Ok(None);
        }
        let at = if self.count > 1 {
            format!(
                " (in disjunct {} of {} of the formula's disjunctive normal form)",
                k + 1,
                self.count
            )
        } else {
            String::new()
        };
        let mut lower = Vec::with_capacity(self.num_inputs);
        let mut upper = Vec::with_capacity(self.num_inputs);
        for (i, (&lo, &hi)) in b.lo.iter().zip(&b.hi).enumerate() {
            for (missing, side) in [
                (lo == f64::NEG_INFINITY, "lower"),
                (hi == f64::INFINITY, "upper"),
            ] {
                if missing {
                    return Err(Error::Invalid(format!("X_{i} has no {side} bound{at}")));
                }
            }
            let (l, u) = (decimal::f32_down(lo), decimal::f32_up(hi));
            if !l.is_finite() || !u.is_finite() {
                return Err(Error::Invalid(format!(
                    "X_{i}'s bounds [{lo:e}, {hi:e}] reach beyond the f32 range{at}"
                )));
            }
            lower.push(l);
            upper.push(u);
        }
        let key: Vec<u32> = lower.iter().chain(&upper).map(|v| v.to_bits()).collect();
        if let Some(&c) = self.index.get(&key) {
            return Ok(Some(c));
        }
        if (self.cases.len() + 1).saturating_mul(self.num_inputs) > MAX_BOX_VALUES {
            return Err(Error::Invalid(format!(
                "the formula has more distinct input boxes than the {} that fit in {} bounds",
                self.cases.len(),
                MAX_BOX_VALUES
            )));
        }
        self.index.insert(key, self.cases.len());
        self.cases.push(Case {
            lower,
            upper,
            unsafe_region: Vec::new(),
        });
        Ok(Some(self.cases.len() - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_input(assertions: &str) -> Result<Property> {
        parse(&format!(
            "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n{assertions}"
        ))
    }

    fn message(text: &str) -> String {
        one_input(text).unwrap_err().to_string()
    }

    #[test]
    fn variable_names() {
        assert_eq!(parse_var("X_0"), Some(Var::X(0)));
        assert_eq!(parse_var("Y_12"), Some(Var::Y(12)));
        for bad in [
            "X_",
            "X_01",
            "X_a",
            "Z_1",
            "x_1",
            "X_99999999999999999999999",
        ] {
            assert_eq!(parse_var(bad), None, "{bad}");
        }
    }

    #[test]
    fn terms_combine_and_normalise() {
        let p = one_input(
            "(assert (<= 0 X_0 1))\n\
             (assert (>= (+ Y_1 (* 2 Y_0) (- Y_1) (* Y_0 -1)) (- 0.5)))",
        )
        .unwrap();
        assert_eq!(p.cases.len(), 1);
        assert_eq!((p.cases[0].lower[0], p.cases[0].upper[0]), (0.0, 1.0));
        assert_eq!(
            p.cases[0].unsafe_region,
            vec![vec![Constraint {
                terms: vec![(0, 1.0)],
                constant: 0.5,
                strict: false
            }]]
        );
    }

    #[test]
    fn scaled_and_negated_bounds_round_outward() {
        let p = one_input(
            "(assert (<= (* 3 X_0) 1))\n(assert (>= (- X_0) -1))\n(assert (>= (/ X_0 3) -0.1))",
        )
        .unwrap();
        let (l, u) = (p.cases[0].lower[0], p.cases[0].upper[0]);
        // 1/3 and −0.3 are not f32: the box must reach past both.
        assert!(f64::from(u) > 1.0 / 3.0 && f64::from(u.next_down()) < 1.0 / 3.0);
        assert!(f64::from(l) < -0.3 && f64::from(l.next_up()) > -0.3);
    }

    #[test]
    fn equalities_and_constant_atoms() {
        let p = one_input("(assert (= X_0 0.5))\n(assert (< 1 2))\n(assert (>= Y_0 Y_1))").unwrap();
        assert_eq!((p.cases[0].lower[0], p.cases[0].upper[0]), (0.5, 0.5));
        let never = one_input("(assert (= X_0 0.5))\n(assert (> 1 1))").unwrap();
        assert!(never.cases.is_empty());
        let empty_box = one_input("(assert (<= 1 X_0 0))").unwrap();
        assert!(empty_box.cases.is_empty());
    }

    #[test]
    fn no_output_constraint_means_the_whole_box() {
        let p = one_input("(assert (and (<= X_0 1) (>= X_0 0)))").unwrap();
        assert_eq!(p.cases[0].unsafe_region, vec![Vec::<Constraint>::new()]);
    }

    #[test]
    fn deepest_nesting_fits_a_small_stack() {
        // The walk is recursive: at the reader's depth limit it must fit a stack eight times
        // smaller than a test thread's (debug builds take more per frame).
        let run = || {
            let d = sexpr::MAX_DEPTH - 2;
            // assert, and × d, and the atom itself.
            let ands = format!("{}(<= X_0 1){}", "(and ".repeat(d - 1), ")".repeat(d - 1));
            // assert, <=, − × d (d even: X_0 ≤ 1).
            let negations = format!("{}X_0{}", "(- ".repeat(d), ")".repeat(d));
            for formula in [ands, format!("(<= {negations} 1)")] {
                let p = one_input(&format!("(assert (>= X_0 0))\n(assert {formula})")).unwrap();
                assert_eq!(p.cases[0].upper[0], 1.0);
            }
            let too_deep = format!("(assert {}true{})", "(and ".repeat(300), ")".repeat(300));
            assert!(message(&too_deep).contains("nested deeper"));
        };
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn copies_of_common_constraints_count_toward_the_cap() {
        // 2^14 disjuncts, each holding the 400 common constraints: refused before expansion.
        let mut text = String::from("(assert (<= 0 X_0 1))\n");
        for _ in 0..400 {
            text.push_str("(assert (>= Y_0 Y_1))\n");
        }
        for _ in 0..14 {
            text.push_str("(assert (or (>= Y_0 0) (>= Y_1 0)))\n");
        }
        assert!(message(&text).contains("output terms"));
    }

    #[test]
    fn errors_name_line_and_form() {
        assert!(message("(assert (<= (* X_0 X_0) 1))").contains("line 4: nonlinear"));
        assert!(message("(assert (<= (/ 1 X_0) 1))").contains("line 4: division by a non-constant"));
        assert!(message("(assert (<= (/ X_0 0) 1))").contains("division by zero"));
        assert!(message("(assert (ite true true false))").contains("unsupported operator 'ite'"));
        assert!(message("(assert (<= X_0))").contains("needs two arguments"));
        assert!(message("(assert (<= foo 1))").contains("unknown symbol 'foo'"));
        assert!(message("(assert (<= X_0 1e400))").contains("out of range"));
        assert!(
            message("(assert (<= (* 1e300 X_0) 1e300))\n(assert (>= (* 1e300 1e300) 0))")
                .contains("overflows")
        );
        assert!(message("(assert (<= X_0 1))").contains("X_0 has no lower bound"));
        assert!(message("(assert (<= -1 X_0 1e39))").contains("f32 range"));
        assert!(message("(assert (<= (+ X_0 X_0 (- X_0)) 1))").contains("no lower bound"));
    }
}
