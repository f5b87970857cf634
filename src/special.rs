//! Special functions the grids and the training densities need: the regularised incomplete beta
//! function and its inverse (diffusers' beta-distributed sigmas), the normal CDF / quantile and
//! the logistic function, written out so that no scipy-like dependency is needed.

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

/// erfc(x) to ~1e-15 relative: the everywhere-convergent series `erf(x) = 2x/sqrt(pi) e^{-x^2}
/// sum (2x^2)^n / (2n+1)!!` below 1 (where `erfc > 0.15`, so `1 - erf` keeps its digits), the
/// continued fraction `e^{-x^2}/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))`
/// (modified Lentz) from 1 on.
pub(crate) fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    const FRAC_1_SQRT_PI: f64 = 0.564_189_583_547_756_3;
    if x < 1.0 {
        let x2 = x * x;
        let (mut term, mut sum) = (1.0f64, 1.0f64);
        for n in 1..200 {
            term *= 2.0 * x2 / (2 * n + 1) as f64;
            sum += term;
            if term < 1e-17 * sum {
                break;
            }
        }
        return 1.0 - 2.0 * x * FRAC_1_SQRT_PI * (-x2).exp() * sum;
    }
    if x > 27.0 {
        return 0.0;
    }
    const TINY: f64 = 1e-300;
    // K = x + a1/(x + a2/(x + ...)), a_n = n / 2 (modified Lentz).
    let mut f = x;
    let mut c = x;
    let mut d = 0.0f64;
    for n in 1..5000 {
        let a = n as f64 * 0.5;
        d = x + a * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = x + a / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = c * d;
        f *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    FRAC_1_SQRT_PI * (-x * x).exp() / f
}

/// The standard normal CDF `Phi(x)` (relative accuracy ~1e-15 in both tails).
pub(crate) fn norm_cdf(x: f64) -> f64 {
    0.5 * erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}

/// The standard normal density.
pub(crate) fn norm_pdf(x: f64) -> f64 {
    const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
    FRAC_1_SQRT_2PI * (-0.5 * x * x).exp()
}

/// The standard normal quantile `Phi^{-1}(p)` (`-inf` at 0, `+inf` at 1, NaN outside [0, 1]):
/// Acklam's rational approximation refined by two Halley steps on [`norm_cdf`] (~1e-15).
pub(crate) fn norm_ppf(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p > 0.5 {
        // 1 - p is exact for p in [0.5, 1].
        return -norm_ppf(1.0 - p);
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let mut x = if p < 0.024_25 {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    for _ in 0..2 {
        let e = norm_cdf(x) - p;
        let u = e / norm_pdf(x);
        if !u.is_finite() {
            break;
        }
        x -= u / (1.0 + 0.5 * x * u);
    }
    x
}

/// The logistic function `1 / (1 + e^{-x})`.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln(p / (1 - p))`.
pub(crate) fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
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
    #[test]
    fn normal_cdf_and_quantile() {
        // Known values (scipy.special.ndtr / ndtri).
        assert!((norm_cdf(0.0) - 0.5).abs() < 1e-16);
        assert!((norm_cdf(1.959_963_984_540_054) - 0.975).abs() < 1e-15);
        assert!((norm_cdf(-5.0) / 2.866_515_718_791_933e-7 - 1.0).abs() < 1e-13);
        assert!((norm_cdf(-10.0) / 7.619_853_024_160_47e-24 - 1.0).abs() < 1e-12);
        assert!((erfc(3.0) / 2.209_049_699_858_544_5e-5 - 1.0).abs() < 1e-13);
        assert!((erfc(0.5) - 0.479_500_122_186_953_5).abs() < 1e-15);
        // Both sides of the series / continued-fraction cut-over at 1 (scipy.special.erfc).
        for (x, want) in [
            (0.99, 0.161_491_930_444_630_17),
            (1.0, 0.157_299_207_050_285_16),
            (1.01, 0.153_189_503_771_723_33),
            (1.5, 0.033_894_853_524_689_27),
            (1.99, 0.004_888_586_800_383_002),
            (2.0, 0.004_677_734_981_047_266),
            (2.01, 0.004_475_150_644_751_764),
            (2.45, 0.000_530_580_112_251_053_8),
            (4.0, 1.541_725_790_028_002e-8),
        ] {
            assert!(
                (erfc(x) / want - 1.0).abs() < 2e-14,
                "{x}: {}",
                erfc(x) / want - 1.0
            );
        }
        assert!((norm_ppf(0.975) - 1.959_963_984_540_054).abs() < 1e-14);
        assert!((norm_ppf(1e-10) + 6.361_340_902_404_056).abs() < 1e-12);
        assert!((norm_ppf(0.3) + 0.524_400_512_708_040_9).abs() < 1e-14);
        for &x in &[-8.0, -3.3, -1.0, -0.01, 0.2, 2.0, 3.0] {
            // (above ~3 the round trip loses digits to 1 - Phi(x) itself, not to the quantile)
            assert!(
                (norm_ppf(norm_cdf(x)) - x).abs() < 1e-12 * (1.0 + x.abs()),
                "{x} {}",
                norm_ppf(norm_cdf(x))
            );
        }
        assert_eq!(norm_ppf(0.0), f64::NEG_INFINITY);
        assert_eq!(norm_ppf(1.0), f64::INFINITY);
        assert!(norm_ppf(1.5).is_nan());
        assert!((logit(sigmoid(0.7)) - 0.7).abs() < 1e-15);
        assert!((sigmoid(-800.0)).abs() < 1e-300);
    }
}
