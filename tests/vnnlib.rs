//! VNN-LIB: the reader against files in the shapes VNN-COMP ships (MNIST robustness, ACAS Xu,
//! disjunctions of input boxes), exact write/read round trips, outward rounding of bounds
//! checked in exact rational arithmetic, one clear error per kind of malformed input, and
//! random mutations of a valid file that must never panic.

use cactus::rng::Rng;
use cactus::vnnlib::{exact_decimal, write_robustness, Constraint, Property};
use rand::RngCore;
use std::cmp::Ordering;
use std::io::Write;
use std::path::PathBuf;

/// A VNN-COMP `mnist_fc`-style property: 784 pixels within `eps` of an image (clipped to
/// [0, 1]), label 7 of 10, bounds printed as Python prints floats (shortest round trip).
fn mnist_text(eps: f64) -> (String, Vec<f64>, Vec<f64>) {
    let mut text = String::from("; Mnist property with label: 7.\n");
    for i in 0..784 {
        text.push_str(&format!("(declare-const X_{i} Real)\n"));
    }
    for j in 0..10 {
        text.push_str(&format!("(declare-const Y_{j} Real)\n"));
    }
    text.push_str("\n; Input constraints:\n");
    let (mut lows, mut highs) = (Vec::new(), Vec::new());
    for i in 0..784 {
        let pixel = ((i * 37) % 256) as f64 / 255.0;
        let (l, u) = ((pixel - eps).max(0.0), (pixel + eps).min(1.0));
        text.push_str(&format!(
            "(assert (<= X_{i} {u:?}))\n(assert (>= X_{i} {l:?}))\n"
        ));
        lows.push(l);
        highs.push(u);
    }
    text.push_str("\n; Output constraints:\n(assert (or\n");
    for j in (0..10).filter(|&j| j != 7) {
        text.push_str(&format!("\t(and (>= Y_{j} Y_7))\n"));
    }
    text.push_str("))\n");
    (text, lows, highs)
}

const ACAS_BOUNDS: &str = "\
; ACAS Xu property 1
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const X_3 Real)
(declare-const X_4 Real)

(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)
(declare-const Y_3 Real)
(declare-const Y_4 Real)

; Unscaled Input 0: (55947.691, 60760)
(assert (<= X_0 0.679857769))
(assert (>= X_0 0.6))
(assert (<= X_1 0.5))
(assert (>= X_1 -0.5))
(assert (<= X_2 0.5))
(assert (>= X_2 -0.5))
(assert (<= X_3 0.5))
(assert (>= X_3 0.45))
(assert (<= X_4 -0.45))
(assert (>= X_4 -0.5))
";

fn acas_1() -> String {
    format!("{ACAS_BOUNDS}\n; unsafe if COC >= 1500\n(assert (>= Y_0 3.991125645861615))\n")
}

fn acas_3() -> String {
    format!(
        "{ACAS_BOUNDS}\n; unsafe if COC is minimal\n(assert (or\n    \
         (and (<= Y_0 Y_1) (<= Y_0 Y_2))\n    (and (<= Y_0 Y_3) (<= Y_0 Y_4))\n))\n"
    )
}

fn ge(terms: &[(usize, f64)], constant: f64) -> Constraint {
    Constraint {
        terms: terms.to_vec(),
        constant,
        strict: false,
    }
}

fn parse_err(text: &str) -> String {
    match Property::parse(text) {
        Ok(p) => panic!("expected an error, parsed {p:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "'{message}' should mention '{part}'"
        );
    }
}

/// The order of a nonnegative f32 against the rational `k / 10^p` (exact, in u128: the f32s
/// used here lie in [2^-40, 2^40] and `k, 10^p ≤ 10^9`).
fn cmp_rational(v: f32, k: u128, p: u32) -> Ordering {
    assert!(v >= 0.0);
    if v == 0.0 {
        return 0.cmp(&k);
    }
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32;
    let (m, e) = if exp == 0 {
        (u128::from(bits & 0x7f_ffff), -149)
    } else {
        (u128::from((bits & 0x7f_ffff) | 0x80_0000), exp - 150)
    };
    assert!((-64..=16).contains(&e), "{v} out of the test's range");
    // v = m·2^e against k/10^p, both sides times 10^p (and 2^-e when e < 0).
    if e >= 0 {
        ((m << e) * 10u128.pow(p)).cmp(&k)
    } else {
        (m * 10u128.pow(p)).cmp(&(k << (-e) as u32))
    }
}

#[test]
fn exact_decimals_of_known_values() {
    assert_eq!(exact_decimal(0.5), "0.5");
    assert_eq!(exact_decimal(0.1), "0.100000001490116119384765625");
    assert_eq!(exact_decimal(1.0), "1");
    assert_eq!(exact_decimal(0.0), "0");
    assert_eq!(exact_decimal(-0.0), "0");
    assert_eq!(exact_decimal(-2.75), "-2.75");
    assert_eq!(exact_decimal(16777216.0), "16777216");
    assert_eq!(exact_decimal(2f32.powi(-10)), "0.0009765625");
}

#[test]
fn exact_decimals_read_back_exactly() {
    let mut rng = Rng::seed(1);
    let mut checked = 0;
    let specials = [
        0.0f32,
        1.0,
        0.1,
        1e-30,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x007f_ffff),
        f32::MAX,
        -f32::MAX,
        123456.79,
    ];
    let randoms = (0..20_000).map(|_| f32::from_bits(rng.next_u32()));
    for v in specials
        .into_iter()
        .chain(randoms)
        .filter(|v| v.is_finite())
    {
        let text = exact_decimal(v);
        assert!(!text.contains('e') && !text.contains('E'), "{text}");
        assert!(!text.contains('.') || !text.ends_with('0'), "{text}");
        let back: f64 = text.parse().unwrap();
        // Exact: the decimal is the f32's value, so even the f64 reading is exact.
        assert_eq!(back, f64::from(v), "{text}");
        assert_eq!(back as f32, v);
        checked += 1;
    }
    assert!(checked > 19_000);
}

/// A random bound: tiny, subnormal, zero, one, non-binary decimals, any exponent.
fn random_value(rng: &mut Rng) -> f32 {
    let magnitude = match rng.below(8) {
        0 => 0.0,
        1 => 1.0,
        2 => 0.1,
        3 => 1e-30,
        4 => f32::from_bits(1 + rng.below(0x7f_ffff) as u32),
        5 => rng.uniform(),
        6 => rng.uniform() * 1e6,
        _ => loop {
            let v = f32::from_bits(rng.next_u32() & 0x7fff_ffff);
            if v.is_finite() && v < 1e30 {
                break v;
            }
        },
    };
    if rng.below(2) == 0 {
        -magnitude
    } else {
        magnitude
    }
}

#[test]
fn robustness_round_trip_is_exact() {
    let mut rng = Rng::seed(2);
    for _ in 0..300 {
        let n = 1 + rng.below(12);
        let outputs = 2 + rng.below(9);
        let label = rng.below(outputs);
        let (mut lower, mut upper) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let (a, b) = (random_value(&mut rng), random_value(&mut rng));
            lower.push(a.min(b));
            upper.push(a.max(b));
        }
        let text = write_robustness(&lower, &upper, label, outputs).unwrap();
        let p = Property::parse(&text).unwrap();
        assert_eq!((p.num_inputs, p.num_outputs), (n, outputs));
        assert_eq!(p.cases.len(), 1);
        // −0 is written as 0: compare values, then bits with zeros made positive.
        let positive_zero = |v: &[f32]| -> Vec<u32> {
            v.iter()
                .map(|x| if *x == 0.0 { 0 } else { x.to_bits() })
                .collect()
        };
        assert_eq!(positive_zero(&p.cases[0].lower), positive_zero(&lower));
        assert_eq!(positive_zero(&p.cases[0].upper), positive_zero(&upper));
        let others: Vec<usize> = (0..outputs).filter(|&j| j != label).collect();
        assert_eq!(p.robustness_label(), Some((label, others)));
    }
}

#[test]
fn written_robustness_file_has_the_vnncomp_shape() {
    let text = write_robustness(&[0.0, 0.25], &[0.5, 1.0], 2, 3).unwrap();
    assert!(text.starts_with(';'));
    for line in [
        "(declare-const X_1 Real)",
        "(declare-const Y_2 Real)",
        "(assert (<= X_0 0.5))\n(assert (>= X_0 0))",
        "(assert (<= X_1 1))\n(assert (>= X_1 0.25))",
        "(assert (or\n    (and (>= Y_0 Y_2))\n    (and (>= Y_1 Y_2))\n))",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[test]
fn writer_refuses_bad_arguments() {
    // (lower, upper, label, outputs, expected message)
    type Call<'a> = (&'a [f32], &'a [f32], usize, usize, &'a str);
    let cases: [Call; 6] = [
        (&[0.0], &[1.0, 2.0], 0, 2, "1 lower bounds but 2 upper"),
        (&[], &[], 0, 2, "no inputs"),
        (&[2.0], &[1.0], 0, 2, "exceeds its upper bound"),
        (&[f32::NAN], &[1.0], 0, 2, "non-finite"),
        (&[0.0], &[1.0], 2, 2, "label 2"),
        (&[0.0], &[1.0], 0, 1, "at least 2"),
    ];
    for (lower, upper, label, outputs, expected) in cases {
        let e = write_robustness(lower, upper, label, outputs).unwrap_err();
        assert_mentions(&e.to_string(), &[expected]);
    }
}

#[test]
fn mnist_property() {
    let eps = 10.0 / 255.0;
    assert_eq!(format!("{eps:?}"), "0.0392156862745098");
    let (text, lows, highs) = mnist_text(eps);
    let p = Property::parse(&text).unwrap();
    assert_eq!((p.num_inputs, p.num_outputs, p.cases.len()), (784, 10, 1));
    let case = &p.cases[0];
    for i in 0..784 {
        // Outward: the f32 box holds the decimal (here the f64 it spells), and is the tightest
        // such f32 box (up to the f64 rounding of the decimal, hence ≥ and ≤ there).
        let (l, u) = (f64::from(case.lower[i]), f64::from(case.upper[i]));
        assert!(
            l <= lows[i] && f64::from(case.lower[i].next_up()) >= lows[i],
            "X_{i}"
        );
        assert!(
            u >= highs[i] && f64::from(case.upper[i].next_down()) <= highs[i],
            "X_{i}"
        );
    }
    assert_eq!(case.unsafe_region.len(), 9);
    assert_eq!(case.unsafe_region[0], vec![ge(&[(0, 1.0), (7, -1.0)], 0.0)]);
    assert_eq!(
        p.robustness_label(),
        Some((7, vec![0, 1, 2, 3, 4, 5, 6, 8, 9]))
    );
}

#[test]
fn acas_properties() {
    let p1 = Property::parse(&acas_1()).unwrap();
    assert_eq!((p1.num_inputs, p1.num_outputs, p1.cases.len()), (5, 5, 1));
    let case = &p1.cases[0];
    assert_eq!(case.lower[1], -0.5);
    // −0.45f32 is −0.449999988…, above −0.45: the smallest f32 at or above it.
    assert_eq!((case.lower[4], case.upper[4]), (-0.5, -0.45));
    assert!(f64::from(case.upper[0]) >= 0.679857769 && f64::from(case.lower[0]) <= 0.6);
    assert_eq!(
        case.unsafe_region,
        vec![vec![ge(&[(0, 1.0)], -3.991125645861615)]]
    );
    assert_eq!(p1.robustness_label(), None);

    let p3 = Property::parse(&acas_3()).unwrap();
    assert_eq!(p3.cases.len(), 1);
    assert_eq!(
        p3.cases[0].unsafe_region,
        vec![
            vec![
                ge(&[(0, -1.0), (1, 1.0)], 0.0),
                ge(&[(0, -1.0), (2, 1.0)], 0.0)
            ],
            vec![
                ge(&[(0, -1.0), (3, 1.0)], 0.0),
                ge(&[(0, -1.0), (4, 1.0)], 0.0)
            ],
        ]
    );
    assert_eq!(p3.robustness_label(), None);
    // The same property as separate asserts: one conjunction.
    let separate = format!(
        "{ACAS_BOUNDS}(assert (<= Y_0 Y_1))\n(assert (<= Y_0 Y_2))\n(assert (<= Y_0 Y_3))\n\
         (assert (<= Y_0 Y_4))\n"
    );
    let p = Property::parse(&separate).unwrap();
    assert_eq!(p.cases[0].unsafe_region.len(), 1);
    assert_eq!(p.cases[0].unsafe_region[0].len(), 4);
}

const ONE_INPUT_HEADER: &str = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n\
                                (declare-const Y_1 Real)\n";

#[test]
fn disjunction_of_boxes_gives_cases() {
    let text = format!(
        "{ONE_INPUT_HEADER}(assert (or (and (>= X_0 0) (<= X_0 1) (>= Y_0 Y_1)) \
         (and (>= X_0 2) (<= X_0 3) (>= Y_0 Y_1))))"
    );
    let p = Property::parse(&text).unwrap();
    assert_eq!(p.cases.len(), 2);
    assert_eq!((p.cases[0].lower[0], p.cases[0].upper[0]), (0.0, 1.0));
    assert_eq!((p.cases[1].lower[0], p.cases[1].upper[0]), (2.0, 3.0));
    for case in &p.cases {
        assert_eq!(
            case.unsafe_region,
            vec![vec![ge(&[(0, 1.0), (1, -1.0)], 0.0)]]
        );
    }
    assert_eq!(p.robustness_label(), Some((1, vec![0])));

    // Disjuncts over the same box share a case; an empty box drops out.
    let text = format!(
        "{ONE_INPUT_HEADER}(assert (or (and (>= X_0 0) (<= X_0 1) (>= Y_0 Y_1)) \
         (and (>= X_0 0) (<= X_0 1) (> Y_1 0.5)) (and (>= X_0 2) (<= X_0 1))))"
    );
    let p = Property::parse(&text).unwrap();
    assert_eq!(p.cases.len(), 1);
    assert_eq!(p.cases[0].unsafe_region.len(), 2);
    assert!(p.cases[0].unsafe_region[1][0].strict);
    assert_eq!(p.robustness_label(), None);

    // Nothing can be violated when every disjunct drops out.
    let text = format!("{ONE_INPUT_HEADER}(assert (or (and (>= X_0 2) (<= X_0 1))))");
    assert!(Property::parse(&text).unwrap().cases.is_empty());
}

#[test]
fn bounds_round_outward() {
    let bound = |assertions: &str| {
        let p = Property::parse(&format!("{ONE_INPUT_HEADER}{assertions}")).unwrap();
        (p.cases[0].lower[0], p.cases[0].upper[0])
    };
    let (_, up) = bound("(assert (<= X_0 0.1))\n(assert (>= X_0 0))");
    let (down, _) = bound("(assert (<= X_0 1))\n(assert (>= X_0 0.1))");
    assert_eq!(exact_decimal(up), "0.100000001490116119384765625");
    assert_eq!(exact_decimal(down), "0.0999999940395355224609375");
    assert_eq!(down.next_up(), up);
    // Scaled, negated or computed spellings of the same bound give the same f32.
    for spelled in [
        "(assert (<= (* 2 X_0) 0.2))",
        "(assert (<= (* X_0 10) 1))",
        "(assert (>= (- X_0) (- 0.1)))",
        "(assert (<= -0.1 (- X_0)))",
        "(assert (<= (/ X_0 10) 0.01))",
        "(assert (< X_0 0.1))",
    ] {
        let (_, u) = bound(&format!("{spelled}\n(assert (>= X_0 0))"));
        assert_eq!(u, up, "{spelled}");
    }
    // Exact decimals k/10^p of all kinds: the box holds each and is the tightest f32 box.
    let mut rng = Rng::seed(3);
    for _ in 0..2_000 {
        let k = 1 + rng.below(999_999_999) as u128;
        let p = rng.below(10) as u32;
        let digits = format!("{k:0>width$}", width = p as usize + 1);
        let (int, frac) = digits.split_at(digits.len() - p as usize);
        let text = if p == 0 {
            int.to_string()
        } else {
            format!("{int}.{frac}")
        };
        let (l, _) = bound(&format!("(assert (>= X_0 {text}))\n(assert (<= X_0 1e10))"));
        let (_, u) = bound(&format!("(assert (<= X_0 {text}))\n(assert (>= X_0 0))"));
        assert_ne!(cmp_rational(l, k, p), Ordering::Greater, "{text}");
        assert_eq!(cmp_rational(l.next_up(), k, p), Ordering::Greater, "{text}");
        assert_ne!(cmp_rational(u, k, p), Ordering::Less, "{text}");
        assert_eq!(cmp_rational(u.next_down(), k, p), Ordering::Less, "{text}");
    }
}

#[test]
fn robustness_label_spellings() {
    let labelled = |region: &str| {
        let text = format!(
            "{ONE_INPUT_HEADER}(declare-const Y_2 Real)\n(assert (<= 0 X_0 1))\n(assert {region})"
        );
        Property::parse(&text).unwrap().robustness_label()
    };
    assert_eq!(
        labelled("(or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2)))"),
        Some((2, vec![0, 1]))
    );
    assert_eq!(
        labelled("(or (and (<= Y_2 Y_0)) (and (<= Y_2 Y_1)))"),
        Some((2, vec![0, 1]))
    );
    assert_eq!(
        labelled("(or (>= (- Y_0 Y_2) 0) (<= 0 (+ (- Y_2) Y_1)))"),
        Some((2, vec![0, 1]))
    );
    assert_eq!(labelled("(>= Y_1 Y_0)"), Some((0, vec![1])));
    // Not robustness: two labels, a margin, a strict or scaled comparison, a conjunction.
    assert_eq!(labelled("(or (>= Y_0 Y_2) (>= Y_1 Y_0))"), None);
    assert_eq!(labelled("(or (>= Y_0 (+ Y_2 1)) (>= Y_1 Y_2))"), None);
    assert_eq!(labelled("(or (> Y_0 Y_2) (>= Y_1 Y_2))"), None);
    assert_eq!(labelled("(>= (* 2 Y_0) (* 2 Y_2))"), None);
    assert_eq!(labelled("(and (>= Y_0 Y_2) (>= Y_1 Y_2))"), None);
    // Cases that disagree.
    let text = format!(
        "{ONE_INPUT_HEADER}(assert (or (and (>= X_0 0) (<= X_0 1) (>= Y_0 Y_1)) \
         (and (>= X_0 2) (<= X_0 3) (>= Y_1 Y_0))))"
    );
    assert_eq!(Property::parse(&text).unwrap().robustness_label(), None);
}

#[test]
fn constraint_holds() {
    let c = ge(&[(0, 1.0), (2, -2.0)], 0.5);
    assert!(c.holds(&[1.5, 0.0, 1.0]));
    assert!(!c.holds(&[1.4, 0.0, 1.0]));
    let strict = Constraint {
        strict: true,
        ..c.clone()
    };
    assert!(!strict.holds(&[1.5, 0.0, 1.0]));
    assert!(strict.holds(&[1.6, 0.0, 1.0]));
    assert!(!c.holds(&[1.0, 2.0]), "too few outputs");
    assert!(ge(&[], 0.0).holds(&[]));
}

#[test]
fn malformed_inputs_are_clear_errors() {
    let h = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("{h}(assert (<= X_0 1)\n(assert (>= X_0 0))"),
            vec!["line 3", "unbalanced parentheses", "never closed"],
        ),
        (
            format!("{h}(assert (<= X_0 1)))"),
            vec!["line 3", "unbalanced parentheses", "')'"],
        ),
        (
            "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const X_2 Real)\n\
             (declare-const X_3 Real)\n(assert (and (<= 0 X_0 1) (<= 0 X_1 1) (<= 0 X_2 1)))\n\
             (assert (>= X_3 0))"
                .to_string(),
            vec!["X_3 has no upper bound"],
        ),
        (
            format!("{h}(assert (<= X_5 1))"),
            vec!["line 3", "undeclared variable 'X_5'"],
        ),
        (
            "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(assert (<= 0 X_0 1))".into(),
            vec!["X_1 is not declared", "X_2", "contiguously"],
        ),
        (
            format!("{h}(define-fun f () Real 1.0)"),
            vec!["line 3", "unsupported command 'define-fun'"],
        ),
        (
            format!("{h}(assert (<= 0 X_0 1))\n(assert (not (>= Y_0 0)))"),
            vec!["line 4", "negation is not supported", "(not (>= Y_0 0))"],
        ),
        (
            format!(
                "{h}(declare-const Y_1 Real)\n(assert (<= 0 X_0 1))\n(assert (>= (* X_0 Y_1) 0))"
            ),
            vec!["line 5", "nonlinear", "(* X_0 Y_1)"],
        ),
        (
            format!("{h}(assert (>= X_0 Y_0))"),
            vec!["line 3", "mixed input/output", "(>= X_0 Y_0)"],
        ),
        (
            format!("{h}(declare-const X_1 Real)\n(assert (<= (+ X_0 X_1) 1))"),
            vec!["line 4", "several inputs (X_0, X_1)"],
        ),
        (
            format!("{h}(assert (<= X_0 1.2.3))"),
            vec!["line 3", "malformed number '1.2.3'"],
        ),
        (String::new(), vec!["empty"]),
        ("; only a comment\n\n".into(), vec!["empty"]),
        (
            "(declare-const X_0 Int)".into(),
            vec!["line 1", "X_0", "sort 'Int'"],
        ),
        (
            format!("{h}(declare-const X_0 Real)"),
            vec!["line 3", "X_0 is declared twice (first at line 1)"],
        ),
        (
            "(declare-const foo Real)".into(),
            vec!["line 1", "unsupported variable name 'foo'"],
        ),
        (
            format!("{h}(assert (<= 0 X_0 1))\nY_0"),
            vec!["line 4", "stray token 'Y_0'"],
        ),
        (
            format!("{h}(assert (<= 0 X_0 1) (>= Y_0 0))"),
            vec!["line 3", "assert takes one formula"],
        ),
        (
            "(declare-const Y_0 Real)\n(assert (>= Y_0 0))".into(),
            vec!["no inputs declared"],
        ),
        (
            format!("{h}(assert (<= X_0 1e39))\n(assert (>= X_0 0))"),
            vec!["X_0", "f32 range"],
        ),
    ];
    for (text, parts) in &cases {
        assert_mentions(&parse_err(text), parts);
    }
}

#[test]
fn normal_form_blowup_is_refused_before_expansion() {
    let mut text = String::from("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n");
    text.push_str("(declare-const Y_1 Real)\n(assert (<= 0 X_0 1))\n");
    for _ in 0..21 {
        text.push_str("(assert (or (>= Y_0 Y_1) (>= Y_1 Y_0)))\n");
    }
    let started = std::time::Instant::now();
    let message = parse_err(&text);
    assert_mentions(&message, &["2097152 disjuncts", "1000000"]);
    assert!(started.elapsed().as_secs_f64() < 1.0);
    // 2^16 disjuncts are still fine, and group into one case.
    let mut text = String::from(ONE_INPUT_HEADER);
    text.push_str("(assert (<= 0 X_0 1))\n");
    for _ in 0..16 {
        text.push_str("(assert (or (>= Y_0 Y_1) (>= Y_1 Y_0)))\n");
    }
    let p = Property::parse(&text).unwrap();
    assert_eq!(p.cases.len(), 1);
    assert_eq!(p.cases[0].unsafe_region.len(), 1 << 16);
}

#[test]
fn mutated_files_never_panic() {
    let valid = format!(
        "; a small property\n{ONE_INPUT_HEADER}(declare-const X_1 Real)\n\
         (assert (<= X_0 0.5))\n(assert (>= X_0 (- 0.5)))\n(assert (<= 1e-05 X_1 1.5E+3))\n\
         (assert (or (and (>= Y_0 Y_1) (< (* 2 Y_1) 0.25)) (and (<= (+ Y_0 (- Y_1)) -1))))\n\
         (check-sat)\n"
    );
    assert!(Property::parse(&valid).is_ok());
    let bytes = valid.as_bytes();
    let alphabet = b"()()  \n;|\"X_Y_0123456789.-+eE*/<=>andornot";
    // Whole tokens, so that mutations reach past the s-expression syntax.
    let pool = [
        "X_0",
        "X_1",
        "X_7",
        "Y_0",
        "Y_1",
        "Y_2",
        "0",
        "-1",
        "0.1",
        "1e400",
        "1e-400",
        "1.2.3",
        "(- 0.5)",
        "and",
        "or",
        "not",
        "<=",
        ">=",
        "<",
        ">",
        "=",
        "*",
        "/",
        "+",
        "-",
        "true",
        "false",
        "Real",
        "Int",
        "(* X_0 Y_1)",
        "(+ X_0 X_1)",
        "(/ X_0 0)",
        "()",
        "|q|",
        "\"s\"",
        "declare-const",
        "assert",
        "check-sat",
        "(assert (>= Y_0 Y_1))",
    ];
    let mut rng = Rng::seed(4);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..2_000 {
        let mut m = bytes.to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(m.len() + 1);
            match rng.below(10) {
                6..=9 => {
                    // Replace the token around `at` (a run of bytes other than blanks and
                    // parentheses) with one from the pool.
                    let in_token = |b: u8| !b" \n()".contains(&b);
                    let mut from = at.min(m.len());
                    while from > 0 && in_token(m[from - 1]) {
                        from -= 1;
                    }
                    let mut to = from;
                    while to < m.len() && in_token(m[to]) {
                        to += 1;
                    }
                    let token = pool[rng.below(pool.len())].bytes();
                    m.splice(from..to, token);
                }
                0 => m.truncate(at),
                1 if at < m.len() => m[at] = alphabet[rng.below(alphabet.len())],
                2 if at < m.len() => m[at] = rng.next_u32() as u8,
                3 => {
                    let parens: Vec<usize> = (0..m.len())
                        .filter(|&i| m[i] == b'(' || m[i] == b')')
                        .collect();
                    if !parens.is_empty() {
                        m.remove(parens[rng.below(parens.len())]);
                    }
                }
                4 => {
                    let parens: Vec<usize> = (0..m.len())
                        .filter(|&i| m[i] == b'(' || m[i] == b')')
                        .collect();
                    if !parens.is_empty() {
                        let i = parens[rng.below(parens.len())];
                        m.insert(i, m[i]);
                    }
                }
                _ => {
                    let from = rng.below(m.len() + 1);
                    let to = (from + rng.below(40)).min(m.len());
                    let piece = m[from..to].to_vec();
                    let at = at.min(m.len());
                    m.splice(at..at, piece);
                }
            }
        }
        let text = String::from_utf8_lossy(&m);
        match Property::parse(&text) {
            Ok(p) => {
                ok += 1;
                for case in &p.cases {
                    assert_eq!(case.lower.len(), p.num_inputs);
                    assert!(case.lower.iter().zip(&case.upper).all(|(l, u)| l <= u));
                }
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty());
                if std::env::var_os("CACTUS_FUZZ_VERBOSE").is_some() {
                    eprintln!("{e}");
                }
            }
        }
    }
    println!("mutations: {ok} parsed, {err} refused");
    assert!(ok > 0 && err > 0, "{ok} parsed, {err} refused");
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cactus-vnnlib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn read_plain_and_gzip_files() {
    let text = write_robustness(&[0.1, -1.0], &[0.2, 1e-30], 1, 3).unwrap();
    let plain = temp_path("p.vnnlib");
    std::fs::write(&plain, &text).unwrap();
    let gz = temp_path("p.vnnlib.gz");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    std::fs::write(&gz, encoder.finish().unwrap()).unwrap();
    let expected = Property::parse(&text).unwrap();
    assert_eq!(Property::read(&plain).unwrap(), expected);
    assert_eq!(Property::read(&gz).unwrap(), expected);

    let bad = temp_path("bad.vnnlib");
    std::fs::write(&bad, "(declare-const X_0 Real)\n(assert (<= X_0 1.2.3))\n").unwrap();
    let message = Property::read(&bad).unwrap_err().to_string();
    assert!(message.starts_with(&bad.display().to_string()), "{message}");
    assert_mentions(&message, &["line 2", "malformed number '1.2.3'"]);

    let corrupt = temp_path("corrupt.vnnlib.gz");
    std::fs::write(&corrupt, b"\x1f\x8b\x08\x00garbage").unwrap();
    assert_mentions(
        &Property::read(&corrupt).unwrap_err().to_string(),
        &["gzip"],
    );
    let binary = temp_path("binary.vnnlib");
    std::fs::write(&binary, b"(\xff\xfe)").unwrap();
    assert_mentions(
        &Property::read(&binary).unwrap_err().to_string(),
        &["UTF-8"],
    );
    let missing = temp_path("missing.vnnlib");
    assert!(Property::read(&missing).is_err());
    assert_mentions(
        &Property::read(&std::env::temp_dir())
            .unwrap_err()
            .to_string(),
        &["not a regular file"],
    );
    let _ = std::fs::remove_dir_all(plain.parent().unwrap());
}
