//! The parser's numbers: the nearest f64 (what output constraints keep) together with an f64
//! interval that certainly holds the real value (what input bounds are rounded out from), so
//! that arithmetic in a file (`(* 2 X_0)`, `(- 0.5)`, sums of constants) never shrinks a box.

/// A real number known to lie in `[lo, hi]`, with `near` its f64 approximation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Num {
    pub(crate) near: f64,
    pub(crate) lo: f64,
    pub(crate) hi: f64,
}

/// Below this magnitude the error terms of `*` and `/` may underflow, so the residual tests
/// below cannot be trusted: results there are widened by one ulp both ways instead.
const TINY: f64 = 1e-270;

impl Num {
    pub(crate) fn exact(v: f64) -> Num {
        Num {
            near: v,
            lo: v,
            hi: v,
        }
    }

    pub(crate) fn neg(self) -> Num {
        Num {
            near: -self.near,
            lo: -self.hi,
            hi: -self.lo,
        }
    }

    /// `None` on overflow, as for the other operations.
    pub(crate) fn add(self, other: Num) -> Option<Num> {
        let (lo, _) = add_round(self.lo, other.lo);
        let (_, hi) = add_round(self.hi, other.hi);
        finite(Num {
            near: self.near + other.near,
            lo,
            hi,
        })
    }

    pub(crate) fn mul(self, other: Num) -> Option<Num> {
        let (lo, hi) = corners(self, other, mul_round);
        finite(Num {
            near: self.near * other.near,
            lo,
            hi,
        })
    }

    /// `None` also when the divisor's interval holds zero.
    pub(crate) fn div(self, other: Num) -> Option<Num> {
        if other.lo <= 0.0 && other.hi >= 0.0 {
            return None;
        }
        let (lo, hi) = corners(self, other, div_round);
        finite(Num {
            near: self.near / other.near,
            lo,
            hi,
        })
    }

    /// Whether the real value is certainly positive (`Some(true)`) or negative
    /// (`Some(false)`); `None` when the interval holds zero.
    pub(crate) fn sign(self) -> Option<bool> {
        if self.lo > 0.0 {
            Some(true)
        } else if self.hi < 0.0 {
            Some(false)
        } else {
            None
        }
    }
}

fn finite(n: Num) -> Option<Num> {
    (n.near.is_finite() && n.lo.is_finite() && n.hi.is_finite()).then_some(n)
}

/// The interval of `op` over the corners of two intervals (right for `*` and for `/` by an
/// interval without zero, both monotone in each argument on such boxes).
fn corners(a: Num, b: Num, op: fn(f64, f64) -> (f64, f64)) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for x in [a.lo, a.hi] {
        for y in [b.lo, b.hi] {
            let (d, u) = op(x, y);
            lo = lo.min(d);
            hi = hi.max(u);
        }
    }
    (lo, hi)
}

/// `v` rounded down and up, given the sign of the rounding error `err` (true value = v + err).
fn bracket(v: f64, err: f64) -> (f64, f64) {
    if err > 0.0 {
        (v, v.next_up())
    } else if err < 0.0 {
        (v.next_down(), v)
    } else {
        (v, v)
    }
}

/// `a + b` rounded down and up: TwoSum gives the exact error of the rounded sum.
fn add_round(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    if !s.is_finite() {
        return (s, s);
    }
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    bracket(s, err)
}

/// `a × b` rounded down and up: the fused multiply-add gives the exact error of the product.
fn mul_round(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    if a == 0.0 || b == 0.0 || !p.is_finite() {
        return (p, p);
    }
    if p.abs() < TINY {
        return (p.next_down(), p.next_up());
    }
    bracket(p, a.mul_add(b, -p))
}

/// `a / b` rounded down and up: `a − q·b`, exact through the fused multiply-add, has the sign
/// of the error times the sign of `b`.
fn div_round(a: f64, b: f64) -> (f64, f64) {
    let q = a / b;
    if a == 0.0 || !q.is_finite() {
        return (q, q);
    }
    if q.abs() < TINY || a.abs() < TINY {
        return (q.next_down(), q.next_up());
    }
    let r = (-q).mul_add(b, a);
    bracket(q, if b > 0.0 { r } else { -r })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_operations_stay_points() {
        let two = Num::exact(2.0);
        let half = Num::exact(0.5);
        assert_eq!(two.mul(half).unwrap(), Num::exact(1.0));
        assert_eq!(half.div(two).unwrap(), Num::exact(0.25));
        assert_eq!(two.add(half.neg()).unwrap(), Num::exact(1.5));
    }

    #[test]
    fn inexact_operations_enclose() {
        let third = Num::exact(1.0).div(Num::exact(3.0)).unwrap();
        assert!(third.lo < third.hi && third.hi == third.lo.next_up());
        assert!(third.lo <= 1.0 / 3.0 && 1.0 / 3.0 <= third.hi);
        let (lo, hi) = add_round(0.1, 0.2);
        assert!(lo < hi && (lo == 0.1 + 0.2 || hi == 0.1 + 0.2));
        // 3 × (1/3 rounded down) < 1 < 3 × (1/3 rounded up), exactly.
        let (d, _) = mul_round(third.lo, 3.0);
        let (_, u) = mul_round(third.hi, 3.0);
        assert!(d < 1.0 && u > 1.0);
    }

    #[test]
    fn zero_divisors_and_overflow_are_refused() {
        let around_zero = Num {
            near: 0.0,
            lo: -1e-300,
            hi: 1e-300,
        };
        assert!(Num::exact(1.0).div(around_zero).is_none());
        assert!(Num::exact(1e300).mul(Num::exact(1e300)).is_none());
        assert_eq!(Num::exact(1.0).sign(), Some(true));
        assert_eq!(around_zero.sign(), None);
    }
}
