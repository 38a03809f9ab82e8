//! Exact decimals: the full expansion of a binary float and the exact comparison of a file's
//! decimal with it, so that bounds round outward to f32 and write back without loss.

use std::cmp::Ordering;

/// A decimal number held exactly: `±0.d₁d₂…dₙ × 10^exponent`, digits (0–9) without leading or
/// trailing zeros; zero has no digits and is never negative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exponent: i64,
}

/// Exponents beyond this are clamped: the value is then far outside f64 anyway, and
/// comparisons with any f64 still come out right.
const EXPONENT_CLAMP: i64 = 1_000_000_000_000_000;

impl Decimal {
    /// Parses `[+-]? (d+ (. d*)? | . d+) ([eE] [+-]? d+)?`; `None` when `text` is not of that
    /// form (Rust's `f64` parser would also take "inf" or "nan", which no property means).
    pub(crate) fn parse(text: &str) -> Option<Decimal> {
        let bytes = text.as_bytes();
        let mut at = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                at = 1;
                true
            }
            Some(b'+') => {
                at = 1;
                false
            }
            _ => false,
        };
        let digits_from = |from: usize| {
            bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
        };
        let int_len = digits_from(at);
        let int_part = &bytes[at..at + int_len];
        at += int_len;
        let mut frac_part: &[u8] = &[];
        if bytes.get(at) == Some(&b'.') {
            let frac_len = digits_from(at + 1);
            frac_part = &bytes[at + 1..at + 1 + frac_len];
            at += 1 + frac_len;
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        let mut exp: i64 = 0;
        if matches!(bytes.get(at), Some(b'e' | b'E')) {
            at += 1;
            let exp_negative = match bytes.get(at) {
                Some(b'-') => {
                    at += 1;
                    true
                }
                Some(b'+') => {
                    at += 1;
                    false
                }
                _ => false,
            };
            let exp_len = digits_from(at);
            if exp_len == 0 {
                return None;
            }
            for &d in &bytes[at..at + exp_len] {
                exp = (exp * 10 + i64::from(d - b'0')).min(EXPONENT_CLAMP);
            }
            if exp_negative {
                exp = -exp;
            }
            at += exp_len;
        }
        if at != bytes.len() {
            return None;
        }
        let all: Vec<u8> = int_part.iter().chain(frac_part).map(|d| d - b'0').collect();
        let point = (int_part.len() as i64).saturating_add(exp);
        Some(Decimal::normalised(negative, all, point))
    }

    /// The exact value of a finite `x` (every binary float has a finite decimal expansion).
    pub(crate) fn of_f64(x: f64) -> Decimal {
        let bits = x.to_bits();
        let negative = bits >> 63 == 1;
        let biased = ((bits >> 52) & 0x7ff) as i64;
        let fraction = bits & ((1u64 << 52) - 1);
        // x = mantissa × 2^power, subnormals included.
        let (mantissa, power) = if biased == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1u64 << 52), biased - 1075)
        };
        if mantissa == 0 {
            return Decimal::normalised(false, Vec::new(), 0);
        }
        let mut big = Big::from_u64(mantissa);
        let digits;
        let point;
        if power >= 0 {
            big.mul_pow(2, power as u32);
            digits = big.digits();
            point = digits.len() as i64;
        } else {
            // m / 2^k = m·5^k / 10^k.
            big.mul_pow(5, (-power) as u32);
            digits = big.digits();
            point = digits.len() as i64 + power;
        }
        Decimal::normalised(negative, digits, point)
    }

    fn normalised(negative: bool, mut digits: Vec<u8>, mut exponent: i64) -> Decimal {
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        exponent = exponent.saturating_sub(leading as i64);
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return Decimal {
                negative: false,
                digits,
                exponent: 0,
            };
        }
        Decimal {
            negative,
            digits,
            exponent,
        }
    }

    /// The numeric order of two decimals.
    pub(crate) fn cmp_value(&self, other: &Decimal) -> Ordering {
        let sign = |d: &Decimal| match (d.digits.is_empty(), d.negative) {
            (true, _) => 0,
            (false, true) => -1,
            (false, false) => 1,
        };
        let by_sign = sign(self).cmp(&sign(other));
        if by_sign != Ordering::Equal || sign(self) == 0 {
            return by_sign;
        }
        // Same sign, both nonzero: the first digit is nonzero, so the exponent decides first;
        // a shorter digit string equal so far is the smaller (it ends in implicit zeros).
        let magnitude = self
            .exponent
            .cmp(&other.exponent)
            .then_with(|| self.digits.cmp(&other.digits));
        if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        }
    }

    /// The order of `self` against `x` in 128-bit integers when both fit (most decimals in
    /// property files: up to 19 digits, exponents near zero); `None` otherwise.
    fn cmp_small(&self, x: f64) -> Option<Ordering> {
        if self.digits.is_empty() || x == 0.0 || self.negative != (x < 0.0) {
            return None;
        }
        if self.digits.len() > 19 {
            return None;
        }
        // self = D × 10^q with D the digits as an integer.
        let d = self
            .digits
            .iter()
            .fold(0u128, |acc, &digit| acc * 10 + u128::from(digit));
        let q = self.exponent.checked_sub(self.digits.len() as i64)?;
        // |x| = m × 2^e.
        let bits = x.abs().to_bits();
        let biased = (bits >> 52) as i64;
        let fraction = u128::from(bits & ((1u64 << 52) - 1));
        let (m, e) = if biased == 0 {
            (fraction, -1074)
        } else {
            (fraction | (1u128 << 52), biased - 1075)
        };
        // Both sides times 10^−q and 2^−e where those are negative, so both are integers.
        let scale = |v: u128, ten: i64, two: i64| -> Option<u128> {
            let v = v.checked_mul(10u128.checked_pow(u32::try_from(ten.max(0)).ok()?)?)?;
            let shift = u32::try_from(two.max(0)).ok()?;
            (shift < v.leading_zeros()).then(|| v << shift)
        };
        let lhs = scale(d, q, -e)?;
        let rhs = scale(m, -q, e)?;
        let magnitude = lhs.cmp(&rhs);
        Some(if self.negative {
            magnitude.reverse()
        } else {
            magnitude
        })
    }

    /// Positional notation, no exponent: "0", "12", "-0.0625".
    fn to_plain(&self) -> String {
        if self.digits.is_empty() {
            return "0".to_string();
        }
        let digit = |d: &u8| char::from(b'0' + d);
        let mut out = String::new();
        if self.negative {
            out.push('-');
        }
        let n = self.digits.len() as i64;
        if self.exponent <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-self.exponent) as usize));
            out.extend(self.digits.iter().map(digit));
        } else if self.exponent >= n {
            out.extend(self.digits.iter().map(digit));
            out.extend(std::iter::repeat_n('0', (self.exponent - n) as usize));
        } else {
            let (int, frac) = self.digits.split_at(self.exponent as usize);
            out.extend(int.iter().map(digit));
            out.push('.');
            out.extend(frac.iter().map(digit));
        }
        out
    }
}

/// The exact decimal expansion of `v`: no exponent, no trailing zeros, integers without a
/// point ("0.5", "3", "0.100000001490116119384765625"); −0 prints as "0". Parsed as a real
/// (or by any correctly rounded float parser) it gives back exactly `v`. Non-finite values
/// have no decimal and print as Rust prints them ("inf", "NaN").
pub fn exact_decimal(v: f32) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    Decimal::of_f64(f64::from(v)).to_plain()
}

/// The nearest f64 to `d` and the two f64 that enclose its real value (equal when `d` is a
/// binary float); `None` beyond the f64 range. `text` is `d`'s spelling, for the parser.
pub(crate) fn enclose(d: &Decimal, text: &str) -> Option<(f64, f64, f64)> {
    let near: f64 = text.parse().ok()?;
    if !near.is_finite() {
        return None;
    }
    let order = d
        .cmp_small(near)
        .unwrap_or_else(|| d.cmp_value(&Decimal::of_f64(near)));
    let (lo, hi) = match order {
        Ordering::Equal => (near, near),
        Ordering::Greater => (near, near.next_up()),
        Ordering::Less => (near.next_down(), near),
    };
    (lo.is_finite() && hi.is_finite()).then_some((near, lo, hi))
}

/// The largest f32 ≤ `x` (−∞ below the f32 range); zero comes back as +0.
pub(crate) fn f32_down(x: f64) -> f32 {
    let mut f = x as f32;
    if f64::from(f) > x {
        f = f.next_down();
    }
    if f == 0.0 {
        0.0
    } else {
        f
    }
}

/// The smallest f32 ≥ `x` (+∞ above the f32 range); zero comes back as +0.
pub(crate) fn f32_up(x: f64) -> f32 {
    let mut f = x as f32;
    if f64::from(f) < x {
        f = f.next_up();
    }
    if f == 0.0 {
        0.0
    } else {
        f
    }
}

/// A nonnegative integer in base 10⁹, least significant limb first: just enough arithmetic
/// for `m × 2^k` and `m × 5^k` with `m < 2⁵³`, `k ≤ 1074`.
struct Big(Vec<u32>);

const LIMB: u64 = 1_000_000_000;

impl Big {
    fn from_u64(mut v: u64) -> Big {
        let mut limbs = Vec::new();
        while v > 0 {
            limbs.push((v % LIMB) as u32);
            v /= LIMB;
        }
        Big(limbs)
    }

    fn mul_small(&mut self, k: u64) {
        let mut carry = 0u64;
        for limb in &mut self.0 {
            let t = u64::from(*limb) * k + carry;
            *limb = (t % LIMB) as u32;
            carry = t / LIMB;
        }
        while carry > 0 {
            self.0.push((carry % LIMB) as u32);
            carry /= LIMB;
        }
    }

    /// Multiplies by `base^exp` (base 2 or 5) in chunks whose product stays below 2⁶⁴.
    fn mul_pow(&mut self, base: u64, mut exp: u32) {
        let chunk = if base == 2 { 31 } else { 13 };
        while exp > 0 {
            let e = exp.min(chunk);
            self.mul_small(base.pow(e));
            exp -= e;
        }
    }

    fn digits(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 * self.0.len());
        for limb in self.0.iter().rev() {
            let mut group = [0u8; 9];
            let mut v = *limb;
            for d in group.iter_mut().rev() {
                *d = (v % 10) as u8;
                v /= 10;
            }
            out.extend_from_slice(&group);
        }
        // The top limb's leading zeros; `normalised` drops them anyway.
        let leading = out.iter().take_while(|&&d| d == 0).count();
        out.drain(..leading);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_expansions() {
        assert_eq!(exact_decimal(0.5), "0.5");
        assert_eq!(exact_decimal(0.1), "0.100000001490116119384765625");
        assert_eq!(exact_decimal(-0.0), "0");
        assert_eq!(exact_decimal(3.0), "3");
        assert_eq!(exact_decimal(-1024.25), "-1024.25");
        assert_eq!(
            exact_decimal(f32::MAX),
            "340282346638528859811704183484516925440"
        );
        assert_eq!(
            exact_decimal(f32::from_bits(1)),
            Decimal::of_f64(f64::from(f32::from_bits(1))).to_plain()
        );
        assert!(exact_decimal(f32::from_bits(1))
            .starts_with("0.0000000000000000000000000000000000000000000014012984643"));
    }

    #[test]
    fn parse_forms() {
        for (text, plain) in [
            ("0", "0"),
            ("-0.0", "0"),
            ("007.50", "7.5"),
            (".5", "0.5"),
            ("5.", "5"),
            ("1e-05", "0.00001"),
            ("1.5E+3", "1500"),
            ("+2.5e1", "25"),
            ("-0.000", "0"),
        ] {
            assert_eq!(Decimal::parse(text).unwrap().to_plain(), plain, "{text}");
        }
        for bad in [
            "", "-", ".", "1.2.3", "1e", "e5", "inf", "nan", "1e+", "--1", "1x", "0x10",
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn enclosure_brackets_the_real_value() {
        // 0.1 lies strictly between two f64; 0.5 is one.
        let (near, lo, hi) = enclose(&Decimal::parse("0.1").unwrap(), "0.1").unwrap();
        assert_eq!(near, 0.1);
        assert_eq!((lo, hi), (0.1f64.next_down(), 0.1));
        assert_eq!(
            enclose(&Decimal::parse("0.5").unwrap(), "0.5").unwrap(),
            (0.5, 0.5, 0.5)
        );
        let (_, lo, hi) = enclose(&Decimal::parse("1e-400").unwrap(), "1e-400").unwrap();
        assert_eq!((lo, hi), (0.0, f64::from_bits(1)));
        assert!(enclose(&Decimal::parse("1e400").unwrap(), "1e400").is_none());
    }

    #[test]
    fn small_comparison_agrees_with_the_exact_one() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut fast = 0;
        for _ in 0..20_000 {
            let r = next();
            let text = format!(
                "{}{}e{}",
                if r & 1 == 1 { "-" } else { "" },
                (r >> 1) % 10u64.pow(1 + (r >> 60) as u32 % 19),
                (next() % 60) as i64 - 40
            );
            let d = Decimal::parse(&text).unwrap();
            let Ok(near) = text.parse::<f64>() else {
                continue;
            };
            for x in [near, near.next_up(), near.next_down(), -near] {
                if let Some(order) = d.cmp_small(x) {
                    fast += 1;
                    assert_eq!(order, d.cmp_value(&Decimal::of_f64(x)), "{text} vs {x:e}");
                }
            }
        }
        assert!(fast > 20_000, "{fast}");
    }

    #[test]
    fn outward_f32() {
        let x = 0.1f64;
        assert!(f64::from(f32_down(x)) <= x && f64::from(f32_up(x)) >= x);
        assert_eq!(f32_up(x).next_down(), f32_down(x));
        assert_eq!(f32_down(0.5), 0.5);
        assert_eq!(f32_up(0.5), 0.5);
        assert_eq!(f32_up(-1e-50).to_bits(), 0);
        assert_eq!(f32_down(-1e-50), -f32::from_bits(1));
        assert_eq!(f32_up(1e39), f32::INFINITY);
        assert_eq!(f32_down(1e39), f32::MAX);
    }
}
