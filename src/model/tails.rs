//! Student-t and Gaussian upper-tail quantiles, for the threshold's design rate (spec load only, never per
//! epoch).
//!
//! The personal threshold (`model::alert`) extrapolates each series' tail to a false-alarm rate `p` per
//! observation along the Student-t family. Its exponent table is fitted at `P_FIT` = 3·10⁻⁶; a spec whose
//! design rate per observation is another `p` (an epoch length other than 5 minutes, or another rate per
//! series-day) scales the threshold of a tail like t(ν) by
//!
//! ```text
//! g_ν(p) = Q_ν(1 − p/2) / Q_ν(1 − P_FIT/2)        Q_ν: the t(ν) quantile (ν = ∞: Gaussian)
//! P(T > t) = ½ · I_{ν/(ν+t²)}(ν/2, ½)             I: the regularised incomplete beta function
//! P(Z > z) = ½ · erfc(z/√2)
//! ```
//!
//! Quantiles by bisection on these (60 halvings in log t: far below f32 resolution).

/// The design rate (per observation, both sides) the threshold's exponent table is fitted at.
pub const P_FIT: f64 = 3e-6;

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // reflection
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, &g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// What the modified Lentz algorithm puts in place of a zero denominator.
const TINY: f64 = 1e-300;

/// One step of the modified Lentz algorithm for a continued fraction's term `a / (b + …)`: updates `c` and
/// `d` (each kept away from zero) and returns the factor `del` the fraction's value is multiplied by.
fn lentz_step(a: f64, b: f64, c: &mut f64, d: &mut f64) -> f64 {
    *d = b + a * *d;
    if d.abs() < TINY {
        *d = TINY;
    }
    *c = b + a / *c;
    if c.abs() < TINY {
        *c = TINY;
    }
    *d = 1.0 / *d;
    *d * *c
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        h *= lentz_step(
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            1.0,
            &mut c,
            &mut d,
        );
        let del = lentz_step(
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
            1.0,
            &mut c,
            &mut d,
        );
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b).
fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// erfc(x) for x ≥ 0 by its continued fraction's relative, the incomplete gamma: erfc(x) = Q(½, x²).
fn erfc(x: f64) -> f64 {
    // Q(a, y) by the continued fraction for y > a + 1, else 1 − P(a, y) by the series.
    let (a, y) = (0.5f64, x * x);
    let gln = ln_gamma(a);
    if y < a + 1.0 {
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..500 {
            ap += 1.0;
            del *= y / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        1.0 - sum * (-y + a * y.ln() - gln).exp()
    } else {
        let mut b = y + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..500 {
            b += 2.0;
            let del = lentz_step(-(i as f64) * (i as f64 - a), b, &mut c, &mut d);
            h *= del;
            if (del - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (-y + a * y.ln() - gln).exp() * h
    }
}

/// P(T > t) for t ≥ 0 under t(ν); `nu = f64::INFINITY`: Gaussian.
pub fn upper_tail(nu: f64, t: f64) -> f64 {
    if nu.is_infinite() {
        0.5 * erfc(t / std::f64::consts::SQRT_2)
    } else {
        0.5 * inc_beta(nu / 2.0, 0.5, nu / (nu + t * t))
    }
}

/// The `t` with P(T > t) = `tail` (0 < tail < ½) under t(ν) (`f64::INFINITY`: Gaussian).
pub fn upper_quantile(nu: f64, tail: f64) -> f64 {
    // P(T > t) decreases in t; bisect in log t over [1e-3, 1e9]
    let (mut lo, mut hi) = ((1e-3f64).ln(), (1e9f64).ln());
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if upper_tail(nu, mid.exp()) > tail {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// g_ν(p): how a t(ν) tail's threshold at design rate `p` (per observation, both sides) compares with its
/// threshold at `P_FIT`.
pub fn rate_factor(nu: f64, p: f64) -> f64 {
    upper_quantile(nu, p / 2.0) / upper_quantile(nu, P_FIT / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        ((a - b) / b).abs() < rel
    }

    #[test]
    fn gaussian_quantiles_from_tables() {
        // Φ⁻¹(0.975) = 1.959964, Φ⁻¹(1 − 10⁻⁴) = 3.719016, Φ⁻¹(1 − 1.5·10⁻⁶) = 4.673 (Abramowitz & Stegun)
        assert!(close(upper_quantile(f64::INFINITY, 0.025), 1.959_964, 1e-5));
        assert!(close(upper_quantile(f64::INFINITY, 1e-4), 3.719_016, 1e-5));
        assert!(close(upper_tail(f64::INFINITY, 3.0), 1.349_898e-3, 1e-5));
    }

    #[test]
    fn student_t_quantiles_from_tables_and_closed_forms() {
        // t(1) is Cauchy: P(T > t) = ½ − atan(t)/π, so the 1 % upper quantile is tan(0.49π) = 31.820 52
        assert!(close(upper_quantile(1.0, 0.01), 31.820_52, 1e-5));
        // t(2): P(T > t) = ½ − t/(2√(2 + t²)); the 10⁻⁴ quantile is 70.700 07
        assert!(close(upper_quantile(2.0, 1e-4), 70.700_07, 1e-5));
        // t(3) one-sided 0.025: 3.182 446; 10⁻⁴: 22.203 74 (statistical tables)
        assert!(close(upper_quantile(3.0, 0.025), 3.182_446, 1e-5));
        assert!(close(upper_quantile(3.0, 1e-4), 22.203_74, 1e-4));
        // t(30) 0.005: 2.749 996
        assert!(close(upper_quantile(30.0, 0.005), 2.749_996, 1e-5));
    }

    #[test]
    fn rate_factor_is_one_at_the_fitted_rate_and_heavier_tails_move_more() {
        for nu in [2.0, 3.0, 10.0, f64::INFINITY] {
            assert!(close(rate_factor(nu, P_FIT), 1.0, 1e-9));
        }
        // twelve times the rate (hourly epochs at the 5-minute design): t(2) ≈ 12^(-1/2) far in the tail
        // (0.2887); the Gaussian moves least (z 4.673 → 4.134: 0.8847)
        let g2 = rate_factor(2.0, 12.0 * P_FIT);
        assert!(close(g2, 12f64.powf(-0.5), 1e-3), "{g2}");
        let gn = rate_factor(f64::INFINITY, 12.0 * P_FIT);
        assert!(close(gn, 0.8847, 1e-3), "{gn}");
        let g3 = rate_factor(3.0, 12.0 * P_FIT);
        assert!(g2 < g3 && g3 < gn);
    }
}
