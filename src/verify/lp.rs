//! A small dense linear-program solver (two-phase simplex, Bland's rule, f64) for the leaves of
//! branch and bound: once every ReLU of a domain is fixed the network is affine there, and the
//! minimum margin over the domain (a box cut by the split constraints) is a linear program.
//! Sized for leaves (few variables or few constraints); dense, so not for large inputs with
//! many constraints.

/// The answer of [`minimize`].
#[derive(Clone, Debug, PartialEq)]
pub enum Lp {
    /// The minimiser and the minimum.
    Optimal(Vec<f64>, f64),
    Infeasible,
}

const EPS: f64 = 1e-9;

/// min c·x subject to lo ≤ x ≤ hi and rows g_i·x ≤ h_i. The box makes it bounded.
pub fn minimize(c: &[f64], lo: &[f64], hi: &[f64], g: &[Vec<f64>], h: &[f64]) -> Lp {
    let d = c.len();
    assert!(lo.len() == d && hi.len() == d && g.len() == h.len());
    if lo.iter().zip(hi).any(|(l, u)| l > u) {
        return Lp::Infeasible;
    }
    // y = x − lo ∈ [0, hi − lo]; rows a·y ≤ b: the constraints, then the upper bounds.
    let mut rows: Vec<(Vec<f64>, f64)> = g
        .iter()
        .zip(h)
        .map(|(gi, &hi_)| {
            let shift: f64 = gi.iter().zip(lo).map(|(a, l)| a * l).sum();
            (gi.clone(), hi_ - shift)
        })
        .collect();
    for i in 0..d {
        let mut e = vec![0.0; d];
        e[i] = 1.0;
        rows.push((e, hi[i] - lo[i]));
    }
    let m = rows.len();
    let artificial: Vec<usize> = (0..m).filter(|&i| rows[i].1 < 0.0).collect();
    let na = artificial.len();
    // Columns: y (d), slacks (m), artificials (na), right-hand side.
    let cols = d + m + na + 1;
    let rhs = cols - 1;
    let mut t = vec![vec![0.0; cols]; m];
    let mut basis = vec![0; m];
    for (i, (a, b)) in rows.iter().enumerate() {
        let sign = if *b < 0.0 { -1.0 } else { 1.0 };
        for j in 0..d {
            t[i][j] = sign * a[j];
        }
        t[i][d + i] = sign;
        t[i][rhs] = sign * b;
        basis[i] = d + i;
    }
    for (k, &i) in artificial.iter().enumerate() {
        t[i][d + m + k] = 1.0;
        basis[i] = d + m + k;
    }
    let mut tab = Tableau { t, basis, rhs };
    if na > 0 {
        let mut cost = vec![0.0; cols - 1];
        for k in 0..na {
            cost[d + m + k] = 1.0;
        }
        tab.optimize(&cost, cols - 1);
        if tab.objective(&cost) > 1e-7 * (1.0 + tab.scale()) {
            return Lp::Infeasible;
        }
        // Drive artificials out of the basis (or drop their rows: redundant).
        let mut i = 0;
        while i < tab.t.len() {
            if tab.basis[i] >= d + m {
                match (0..d + m).find(|&j| tab.t[i][j].abs() > EPS) {
                    Some(j) => tab.pivot(i, j),
                    None => {
                        tab.t.remove(i);
                        tab.basis.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
    }
    let mut cost = vec![0.0; cols - 1];
    cost[..d].copy_from_slice(c);
    // Phase 2 never lets an artificial column enter.
    tab.optimize(&cost, d + m);
    let mut y = vec![0.0; d];
    for (i, &b) in tab.basis.iter().enumerate() {
        if b < d {
            y[b] = tab.t[i][rhs];
        }
    }
    let x: Vec<f64> = y
        .iter()
        .zip(lo)
        .zip(hi)
        .map(|((y, l), u)| (y + l).clamp(*l, *u))
        .collect();
    let value = c.iter().zip(&x).map(|(a, b)| a * b).sum();
    Lp::Optimal(x, value)
}

struct Tableau {
    t: Vec<Vec<f64>>,
    basis: Vec<usize>,
    rhs: usize,
}

impl Tableau {
    fn scale(&self) -> f64 {
        self.t.iter().map(|r| r[self.rhs].abs()).fold(0.0, f64::max)
    }

    fn objective(&self, cost: &[f64]) -> f64 {
        self.basis
            .iter()
            .enumerate()
            .map(|(i, &b)| cost[b] * self.t[i][self.rhs])
            .sum()
    }

    fn pivot(&mut self, r: usize, c: usize) {
        let p = self.t[r][c];
        for v in self.t[r].iter_mut() {
            *v /= p;
        }
        let row = self.t[r].clone();
        for (i, other) in self.t.iter_mut().enumerate() {
            if i != r {
                let f = other[c];
                if f != 0.0 {
                    for (o, &v) in other.iter_mut().zip(&row) {
                        *o -= f * v;
                    }
                }
            }
        }
        self.basis[r] = c;
    }

    /// Minimise cost·z over the columns `0..allowed` (Bland's rule: no cycling).
    fn optimize(&mut self, cost: &[f64], allowed: usize) {
        loop {
            // Reduced costs of the non-basic columns.
            let entering = (0..allowed).find(|&j| {
                if self.basis.contains(&j) {
                    return false;
                }
                let z: f64 = self
                    .basis
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| cost[b] * self.t[i][j])
                    .sum();
                cost[j] - z < -EPS
            });
            let Some(j) = entering else { return };
            let mut leave: Option<(usize, f64)> = None;
            for i in 0..self.t.len() {
                let a = self.t[i][j];
                if a > EPS {
                    let ratio = self.t[i][self.rhs] / a;
                    let better = match leave {
                        None => true,
                        Some((li, lr)) => {
                            ratio < lr - EPS
                                || (ratio <= lr + EPS && self.basis[i] < self.basis[li])
                        }
                    };
                    if better {
                        leave = Some((i, ratio));
                    }
                }
            }
            match leave {
                Some((i, _)) => self.pivot(i, j),
                // Unbounded cannot happen inside a box; stop rather than loop.
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_only() {
        let lp = minimize(&[1.0, -2.0], &[0.0, -1.0], &[1.0, 3.0], &[], &[]);
        let Lp::Optimal(x, v) = lp else { panic!() };
        assert_eq!(x, vec![0.0, 3.0]);
        assert!((v + 6.0).abs() < 1e-12);
    }

    #[test]
    fn a_cut_corner_and_infeasibility() {
        // min −x − y on [0,1]² with x + y ≤ 1.5: 1.5.
        let Lp::Optimal(x, v) = minimize(
            &[-1.0, -1.0],
            &[0.0, 0.0],
            &[1.0, 1.0],
            &[vec![1.0, 1.0]],
            &[1.5],
        ) else {
            panic!()
        };
        assert!((v + 1.5).abs() < 1e-9, "{v} at {x:?}");
        // x ≥ 0.8 (as −x ≤ −0.8) and x ≤ 0.5: empty.
        let lp = minimize(
            &[1.0],
            &[0.0],
            &[1.0],
            &[vec![-1.0], vec![1.0]],
            &[-0.8, 0.5],
        );
        assert_eq!(lp, Lp::Infeasible);
        // x ≥ 0.25 binding from below: min x = 0.25.
        let Lp::Optimal(_, v) = minimize(&[1.0], &[-1.0], &[1.0], &[vec![-1.0]], &[-0.25]) else {
            panic!()
        };
        assert!((v - 0.25).abs() < 1e-9, "{v}");
    }
}
