//! Special functions the grids need: the regularised incomplete beta function and its inverse
//! (for diffusers' beta-distributed sigmas), written out so that no scipy-like dependency is
//! needed.

/// ln Gamma(x) for x > 0 (Lanczos, g = 7, n = 9; relative error ~1e-15).
pub(crate) fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
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
        // Reflection: Gamma(x) Gamma(1 - x) = pi / sin(pi x).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..500 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b), the CDF of Beta(a, b).
pub(crate) fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// The quantile function (inverse CDF) of Beta(a, b), as `scipy.stats.beta.ppf`: bisection to
/// bracket, then Newton steps that stay inside the bracket. Accurate to ~1e-14.
pub(crate) fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let ln_norm = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    let mut x = 0.5;
    for _ in 0..200 {
        let f = beta_cdf(x, a, b) - p;
        if f.abs() < 1e-16 {
            break;
        }
        if f > 0.0 {
            hi = x;
        } else {
            lo = x;
        }
        let pdf = (ln_norm + (a - 1.0) * x.ln() + (b - 1.0) * (1.0 - x).ln()).exp();
        let newton = x - f / pdf;
        x = if pdf.is_finite() && pdf > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if hi - lo < 1e-16 {
            break;
        }
    }
    x
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-14);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
        assert!((ln_gamma(0.6) - 0.398_233_858_069_234_8).abs() < 1e-13);
    }

    #[test]
    fn beta_ppf_inverts_the_cdf() {
        for &(a, b) in &[(0.6, 0.6), (2.0, 5.0), (1.0, 1.0)] {
            for i in 1..20 {
                let p = i as f64 / 20.0;
                let x = beta_ppf(p, a, b);
                assert!((beta_cdf(x, a, b) - p).abs() < 1e-13, "a={a} b={b} p={p}");
            }
        }
        // Uniform: the identity. Symmetric: the median is 1/2.
        assert!((beta_ppf(0.3, 1.0, 1.0) - 0.3).abs() < 1e-14);
        assert!((beta_ppf(0.5, 0.6, 0.6) - 0.5).abs() < 1e-14);
        // scipy.stats.beta.ppf(0.1, 0.6, 0.6)
        assert!((beta_ppf(0.1, 0.6, 0.6) - 0.039_584_405_588_780_85).abs() < 1e-12);
    }
}
