//! Likelihood in bits per dimension against closed forms: the probability-flow ODE NLL of the
//! exact denoiser equals the data's own log density (Gaussian, Gaussian mixture), within the
//! stated tolerance and the estimator's standard error; the variational bound agrees with its
//! expectation computed independently, lies above the exact NLL and approaches it as the chain
//! is refined.
//!
//! `cargo test --all-features --test likelihood -- --nocapture` prints the figures.

use std::f64::consts::{LN_2, PI};

use diffusion_samplers::analytic::GaussianMixture;
use diffusion_samplers::likelihood::{Decoder, Difference, OdeNll, Probe, ReverseVariance, Trace, Vlb};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{BoxError, Error, FnDenoiser};
use ndarray::{Array2, ArrayView2};
use rand::{SeedableRng, rngs::StdRng};

fn bits(logp: f64, dims: usize) -> f64 {
    -logp / (dims as f64 * LN_2)
}

/// A VP grid of DDPM's linear schedule: sigma from 0.01 to 157.
fn vp_grid() -> Grid {
    NoiseSchedule::linear(1000, 1e-4, 0.02)
        .unwrap()
        .grid(10, Spacing::Linspace)
        .unwrap()
        .with_final(FinalLevel::FirstTimestep)
}

/// Gaussian data N(mu, diag v) in 6-D on a VP grid, through central finite differences:
/// with one Rademacher probe (exact for a diagonal Jacobian) and with the exact trace each
/// sample agrees with the closed form to 2e-3 bits/dim — a wrong sign or factor in the
/// divergence, a missing prior term or a sigma off by one grid level moves it by 0.1 or more;
/// with 8 Gaussian probes (high variance here) each sample is within 3 of its own standard
/// errors for all but a few, and the batch mean within 3 standard errors. The ODE runs to
/// sigma 2e4 (the grid ends at 157): the prior N(0, 1) ignores the data's mean, an error of
/// about |mu| / sigma_max nats per dimension (6e-3 at 157).
#[test]
fn ode_nll_of_a_gaussian_is_the_closed_form() {
    let mu = vec![0.5, -0.3, 0.0, 1.0, -1.0, 0.2];
    let var = vec![0.25, 0.5, 1.0, 0.1, 0.3, 2.0];
    let gm = GaussianMixture::gaussian(mu, var).unwrap();
    let x0: Array2<f64> = gm.sample(64, &mut StdRng::seed_from_u64(7));
    let grid = vp_grid();
    let smin = grid.last_noisy().sigma_ve();
    let exact: Vec<f64> = gm
        .log_density(x0.view(), &NoiseLevel::new(0.0, 1.0, smin))
        .unwrap()
        .into_iter()
        .map(|l| bits(l, 6))
        .collect();
    let mean_exact = exact.iter().sum::<f64>() / exact.len() as f64;
    let base = OdeNll::new().sigma_max(2e4);
    for (name, trace) in [("Rademacher x1", Trace::default()), ("exact trace", Trace::Exact)] {
        let r = base
            .clone()
            .trace(trace)
            .bits_per_dim(&mut gm.clone(), &grid, x0.view(), &mut SeededNoise::new(3))
            .unwrap();
        let worst = r
            .bits_per_dim
            .iter()
            .zip(&exact)
            .map(|(b, e)| (b - e).abs())
            .fold(0.0, f64::max);
        println!(
            "Gaussian 6-D, {name}: mean {:.5} vs exact {mean_exact:.5} bits/dim, worst per-sample error {worst:.2e}; {} calls, {} evaluations, {} steps",
            r.mean(),
            r.calls,
            r.evaluations,
            r.steps
        );
        assert!(worst < 2e-3, "{name}: {worst}");
    }
    let r = base
        .trace(Trace::Hutchinson {
            probe: Probe::Gaussian,
            probes: 8,
        })
        .bits_per_dim(&mut gm.clone(), &grid, x0.view(), &mut SeededNoise::new(3))
        .unwrap();
    let within = r
        .bits_per_dim
        .iter()
        .zip(&r.probe_std_error)
        .zip(&exact)
        .filter(|((b, se), e)| (*b - *e).abs() <= 3.0 * **se + 2e-3)
        .count();
    println!(
        "Gaussian 6-D, Gaussian probes x8: mean {:.4} +- {:.4} vs exact {mean_exact:.4}; {within}/64 within 3 SE; {} calls",
        r.mean(),
        r.std_error(),
        r.calls
    );
    assert!(within >= 58, "{within}");
    assert!((r.mean() - mean_exact).abs() < 3.0 * r.std_error());
}

/// A two-component mixture in 2-D with the exact trace, three ways (central and forward
/// differences, exact JVPs): per sample against the closed-form mixture density, and the
/// batch mean against the differential entropy computed by quadrature on a 2-D grid (within
/// 3 standard errors of the sample mean).
#[test]
fn ode_nll_of_a_mixture_matches_its_density_and_entropy() {
    let gm = GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![-1.0, 0.5], vec![1.0, -0.5]],
        vec![vec![0.1, 0.2], vec![0.15, 0.05]],
    )
    .unwrap();
    let x0: Array2<f64> = gm.sample(256, &mut StdRng::seed_from_u64(11));
    // VE up to sigma 2000: the prior N(0, sigma^2) ignores the mean (0.4, -0.2), ~1e-4 there.
    let grid = Grid::ve(&[2000.0, 1e-3]).unwrap();
    let exact: Vec<f64> = gm
        .log_density(x0.view(), &NoiseLevel::new(0.0, 1.0, 1e-3))
        .unwrap()
        .into_iter()
        .map(|l| bits(l, 2))
        .collect();
    let run = |nll: OdeNll, jvp: bool| {
        let mut m = gm.clone();
        if jvp {
            nll.bits_per_dim_jvp(&mut m, &grid, x0.view(), &mut SeededNoise::new(1))
        } else {
            nll.bits_per_dim(&mut m, &grid, x0.view(), &mut SeededNoise::new(1))
        }
        .unwrap()
    };
    let base = OdeNll::new().trace(Trace::Exact);
    for (name, r) in [
        ("central", run(base.clone(), false)),
        (
            "forward",
            run(base.clone().difference(Difference::Forward), false),
        ),
        ("exact JVP", run(base.clone(), true)),
    ] {
        let worst = r
            .bits_per_dim
            .iter()
            .zip(&exact)
            .map(|(b, e)| (b - e).abs())
            .fold(0.0, f64::max);
        println!(
            "mixture 2-D {name}: worst {worst:.2e} bits/dim, {} calls",
            r.calls
        );
        assert!(worst < 2e-3, "{name}: {worst}");
    }
    // Hutchinson (Rademacher, 8 probes) with a non-diagonal Jacobian: within 3 standard errors.
    let r = run(
        OdeNll::new().trace(Trace::Hutchinson {
            probe: Probe::Rademacher,
            probes: 8,
        }),
        false,
    );
    let within = r
        .bits_per_dim
        .iter()
        .zip(&r.probe_std_error)
        .zip(&exact)
        .filter(|((b, se), e)| (*b - *e).abs() <= 3.0 * **se + 2e-3)
        .count();
    println!(
        "mixture 2-D Rademacher x8: {within}/256 within 3 SE, mean SE {:.4}",
        r.probe_std_error.iter().sum::<f64>() / 256.0
    );
    assert!(within >= 240, "{within}");
    // Differential entropy by quadrature (step 0.01 over +-5 sd).
    let h = 0.01;
    let mut entropy = 0.0;
    let mut pts = Vec::new();
    for i in 0..700 {
        for j in 0..700 {
            pts.push([-3.5 + h * i as f64, -3.5 + h * j as f64]);
        }
    }
    let flat: Vec<f64> = pts.iter().flatten().copied().collect();
    let a = Array2::from_shape_vec((pts.len(), 2), flat).unwrap();
    for l in gm.log_density(a.view(), &NoiseLevel::CLEAN).unwrap() {
        entropy -= l.exp() * l * h * h;
    }
    let entropy_bits = entropy / (2.0 * LN_2);
    let r = run(base, true);
    println!(
        "mixture entropy {entropy_bits:.4} bits/dim (quadrature); ODE mean {:.4} +- {:.4}",
        r.mean(),
        r.std_error()
    );
    assert!((r.mean() - entropy_bits).abs() < 3.0 * r.std_error() + 0.01);
}

/// A flow grid (rectified flow, flow prediction): the prior at sigma_max is N(0, 1 +
/// sigma_max^2) in k-diffusion coordinates, so unit-variance data gives the closed form per
/// sample to 2e-3 bits/dim from sigma_max = 100 on (N(0, 1) in flow coordinates, variance
/// (1 + sigma)^2, was 0.05 off there).
#[test]
fn ode_nll_on_a_flow_grid() {
    let gm = GaussianMixture::gaussian(vec![0.0, 0.0], vec![1.0, 1.0])
        .unwrap()
        .with_prediction(Prediction::Flow);
    let x0: Array2<f64> = gm.sample(64, &mut StdRng::seed_from_u64(4));
    let grid = diffusion_samplers::FlowSchedule::new(1000)
        .unwrap()
        .grid(10, Spacing::Linspace)
        .unwrap();
    let exact: Vec<f64> = gm
        .log_density(x0.view(), &NoiseLevel::new(0.0, 1.0, 1e-3))
        .unwrap()
        .into_iter()
        .map(|l| bits(l, 2))
        .collect();
    // The grid starts at pure noise: sigma_max must be given.
    let no_max = OdeNll::new().bits_per_dim(&mut gm.clone(), &grid, x0.view(), &mut SeededNoise::new(1));
    assert!(matches!(
        no_max,
        Err(Error::InvalidParameter {
            name: "sigma_max",
            ..
        })
    ));
    let r = OdeNll::new()
        .trace(Trace::Exact)
        .sigma_min(1e-3)
        .sigma_max(100.0)
        .bits_per_dim_jvp(&mut gm.clone(), &grid, x0.view(), &mut SeededNoise::new(1))
        .unwrap();
    let worst = r
        .bits_per_dim
        .iter()
        .zip(&exact)
        .map(|(b, e)| (b - e).abs())
        .fold(0.0, f64::max);
    println!(
        "flow grid, sigma_max 100: worst {worst:.2e} bits/dim, {} calls",
        r.calls
    );
    assert!(worst < 2e-3, "{worst}");
}

/// An f32 model: the default step (cbrt of f32's epsilon, relative to the noisy data scale)
/// keeps the finite-difference divergence within 0.01 bits/dim of the closed form.
#[test]
fn ode_nll_of_an_f32_model() {
    let gm = GaussianMixture::gaussian(vec![0.2, -0.4], vec![0.3, 0.6]).unwrap();
    let x0: Array2<f32> = gm.sample(32, &mut StdRng::seed_from_u64(5));
    let grid = vp_grid();
    let smin = grid.last_noisy().sigma_ve();
    let exact: Vec<f64> = gm
        .log_density(x0.view(), &NoiseLevel::new(0.0, 1.0, smin))
        .unwrap()
        .into_iter()
        .map(|l| bits(l, 2))
        .collect();
    let r = OdeNll::new()
        .trace(Trace::Exact)
        .bits_per_dim(&mut gm.clone(), &grid, x0.view(), &mut SeededNoise::new(1))
        .unwrap();
    let worst = r
        .bits_per_dim
        .iter()
        .zip(&exact)
        .map(|(b, e)| (b - e).abs())
        .fold(0.0, f64::max);
    println!("f32 model: worst {worst:.2e} bits/dim, {} calls", r.calls);
    assert!(worst < 0.01, "{worst}");
}

/// 8-bit data: uniform dequantisation gives an upper bound on the discrete NLL, close to it.
/// The exact discrete NLL of the quantised Gaussian is a product of normal CDF differences.
#[test]
fn dequantised_ode_nll_bounds_the_discrete_nll() {
    // sd 0.25: the edge bins (which hold the whole tails) are rare.
    let (mu, sd) = (0.1, 0.25);
    let gm = GaussianMixture::gaussian(vec![mu; 3], vec![sd * sd; 3]).unwrap();
    let raw: Array2<f64> = gm.sample(128, &mut StdRng::seed_from_u64(2));
    let x0 = raw.mapv(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0);
    let half = 1.0 / 255.0;
    let phi = |z: f64| 0.5 * quad_erfc(-z / 2f64.sqrt());
    let discrete: Vec<f64> = x0
        .rows()
        .into_iter()
        .map(|r| {
            let lp: f64 = r
                .iter()
                .map(|&x| {
                    let hi = if x > 1.0 - half {
                        1.0
                    } else {
                        phi((x + half - mu) / sd)
                    };
                    let lo = if x < -1.0 + half {
                        0.0
                    } else {
                        phi((x - half - mu) / sd)
                    };
                    (hi - lo).ln()
                })
                .sum();
            bits(lp, 3)
        })
        .collect();
    let r = OdeNll::new()
        .trace(Trace::Exact)
        .dequantize(256)
        .bits_per_dim(&mut gm.clone(), &vp_grid(), x0.view(), &mut SeededNoise::new(9))
        .unwrap();
    let d = discrete.iter().sum::<f64>() / discrete.len() as f64;
    println!(
        "8-bit data: dequantised ODE {:.4} +- {:.4} vs discrete NLL {d:.4} bits/dim",
        r.mean(),
        r.std_error()
    );
    // Jensen: the bound is above, by little (the density varies little within a bin).
    assert!(r.mean() > d - 3.0 * r.std_error());
    assert!(r.mean() - d < 0.02);
}

/// erfc by Simpson quadrature, independent of the crate's own special functions.
fn quad_erfc(x: f64) -> f64 {
    // erfc(x) = 2/sqrt(pi) * integral_x^inf e^{-t^2} dt; Simpson on [x, x + 12] (the tail
    // beyond is < 1e-60).
    let (a, b) = (x, x.max(0.0) + 12.0);
    let n = 20_000;
    let h = (b - a) / n as f64;
    let f = |t: f64| (-t * t).exp();
    let mut s = f(a) + f(b);
    for i in 1..n {
        s += f(a + h * i as f64) * if i % 2 == 1 { 4.0 } else { 2.0 };
    }
    2.0 / PI.sqrt() * s * h / 3.0
}

/// The bound's expectation for Gaussian data N(0, v) per dimension under the exact denoiser,
/// written independently of the crate from the closed forms: prior KL, `0.5 (ln(vp/vq) + vq/vp
/// - 1) + 0.5 c^2 Var(x0 | x_t) / vp` per step (c the posterior's x0 coefficient), and the
/// Gaussian decoder `0.5 ln(2 pi var) + 0.5 Var(x0 | x_t0) / var`, var = sigma^2/alpha^2.
fn expected_vlb(alpha_bar: &[f64], v: f64, large: bool) -> f64 {
    let t_n = alpha_bar.len();
    let s2: Vec<f64> = alpha_bar.iter().map(|a| 1.0 - a).collect();
    let mut tot = 0.5 * (-1.0 - s2[t_n - 1].ln() + s2[t_n - 1] + alpha_bar[t_n - 1] * v);
    for i in (1..t_n).rev() {
        let at2 = alpha_bar[i] / alpha_bar[i - 1];
        let vv = s2[i] - at2 * s2[i - 1];
        let c = alpha_bar[i - 1].sqrt() * vv / s2[i];
        let vq = vv * s2[i - 1] / s2[i];
        let vp = if large { vv } else { vq };
        let post = v * s2[i] / (alpha_bar[i] * v + s2[i]);
        tot += 0.5 * ((vp / vq).ln() + vq / vp - 1.0) + 0.5 * c * c * post / vp;
    }
    let var = s2[0] / alpha_bar[0];
    let post0 = v * s2[0] / (alpha_bar[0] * v + s2[0]);
    tot += 0.5 * (2.0 * PI * var).ln() + 0.5 * post0 / var;
    tot / LN_2
}

/// A continuous VP process (beta 0.1 .. 20) discretised at `n` times from 1e-3 to 1.
fn continuous_vp(n: usize) -> NoiseSchedule {
    let ab: Vec<f64> = (0..n)
        .map(|i| {
            let t = 1e-3 + (1.0 - 1e-3) * i as f64 / (n - 1) as f64;
            (-0.5 * t * t * 19.9 - 0.1 * t).exp()
        })
        .collect();
    let betas: Vec<f64> = (0..n)
        .map(|i| 1.0 - ab[i] / if i == 0 { 1.0 } else { ab[i - 1] })
        .collect();
    NoiseSchedule::from_betas(&betas).unwrap()
}

/// The Monte Carlo bound matches its independently computed expectation within 4 standard
/// errors (DDPM's linear schedule and a continuous VP discretisation, both variances); the
/// expectations lie above the exact NLL and, for the refined discretisation with fixed-large
/// variances, approach it (theory: the continuous-time bound of the exact score is the NLL).
#[test]
fn vlb_matches_its_expectation_and_approaches_the_nll() {
    let v = 0.25;
    let gm = GaussianMixture::gaussian(vec![0.0; 2], vec![v; 2]).unwrap();
    let x0: Array2<f64> = gm.sample(2048, &mut StdRng::seed_from_u64(1));
    let entropy = 0.5 * (2.0 * PI * std::f64::consts::E * v).log2();
    let cases = [
        ("linear T=1000", NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap()),
        ("continuous VP T=100", continuous_vp(100)),
        ("continuous VP T=1000", continuous_vp(1000)),
        ("continuous VP T=4000", continuous_vp(4000)),
    ];
    for (name, schedule) in &cases {
        for (large, variance) in [
            (false, ReverseVariance::FixedSmall),
            (true, ReverseVariance::FixedLarge),
        ] {
            let r = Vlb::new()
                .decoder(Decoder::Gaussian)
                .variance(variance)
                .bits_per_dim(&mut gm.clone(), schedule, x0.view(), &mut SeededNoise::new(4))
                .unwrap();
            let want = expected_vlb(schedule.alphas_cumprod(), v, large);
            println!(
                "{name} {variance:?}: VLB {:.4} +- {:.4}, expected {want:.4}, exact NLL {entropy:.4} bits/dim ({} calls)",
                r.mean(),
                r.std_error(),
                r.calls
            );
            assert_eq!(r.calls, schedule.len());
            assert!(
                (r.mean() - want).abs() < 4.0 * r.std_error(),
                "{name} {variance:?}"
            );
            assert!(want > entropy);
        }
    }
    // Refining the continuous discretisation: the fixed-large bound's gap shrinks towards 0.
    let gaps: Vec<f64> = [100, 1000, 4000, 16000]
        .iter()
        .map(|&n| expected_vlb(continuous_vp(n).alphas_cumprod(), v, true) - entropy)
        .collect();
    println!("fixed-large gaps at T = 100, 1000, 4000, 16000: {gaps:.5?}");
    assert!(gaps.windows(2).all(|w| w[1] < w[0] && w[1] > 0.0));
    assert!(gaps[3] < 1e-3);
}

/// A strided chain is the bound of the strided model: its calls are the chosen timesteps, and
/// with fixed-large variances it is still above the exact NLL.
#[test]
fn strided_vlb_and_discretised_decoder() {
    let gm = GaussianMixture::gaussian(vec![0.1; 3], vec![0.16; 3]).unwrap();
    let raw: Array2<f64> = gm.sample(512, &mut StdRng::seed_from_u64(3));
    let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let ts: Vec<usize> = (0..1000).step_by(20).collect();
    let r = Vlb::new()
        .decoder(Decoder::Gaussian)
        .variance(ReverseVariance::FixedLarge)
        .timesteps(ts.clone())
        .bits_per_dim(&mut gm.clone(), &schedule, raw.view(), &mut SeededNoise::new(2))
        .unwrap();
    let nll: f64 = gm
        .log_density(raw.view(), &NoiseLevel::CLEAN)
        .unwrap()
        .iter()
        .map(|&l| bits(l, 3))
        .sum::<f64>()
        / 512.0;
    println!(
        "strided (50 calls) VLB {:.4} +- {:.4} vs NLL {nll:.4}",
        r.mean(),
        r.std_error()
    );
    assert_eq!(r.calls, 50);
    assert_eq!(r.timesteps[0], 980);
    assert!(r.mean() > nll);
    // 8-bit data with the discretised decoder: a bound on the discrete NLL (continuous NLL
    // plus log2 of the bin width's inverse, 6.99 bits/dim).
    let x0 = raw.mapv(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0);
    let r = Vlb::new()
        .variance(ReverseVariance::FixedLarge)
        .bits_per_dim(&mut gm.clone(), &schedule, x0.view(), &mut SeededNoise::new(2))
        .unwrap();
    let discrete = nll + (127.5f64).log2();
    println!(
        "8-bit VLB {:.4} +- {:.4} vs discrete NLL ~{discrete:.4}",
        r.mean(),
        r.std_error()
    );
    assert!(r.mean() > discrete - 3.0 * r.std_error() && r.mean() < discrete + 0.3);
}

/// A model with a learned variance (Improved DDPM): the exact x0 estimate of Gaussian data and
/// the optimal reverse variance of each step, `vq + c^2 Var(x0 | x_t)` (`Var(x0 | x_t)` at the
/// decoder). For Gaussian data that reverse kernel is exact, so the bound equals the NLL for any
/// chain, however short: 1.0471 bits/dim at 10, 100 and 1000 steps (the expectation, computed
/// independently, is the entropy to 1e-9). The Monte Carlo bound must be within 4 standard
/// errors of it; the fixed-large bound of the 10-step chain is 0.09 bits/dim above.
#[test]
fn learned_variance_bound_is_tight_on_short_chains() {
    use diffusion_samplers::learned::{LearnedVariance, VarianceDenoiser, WithVariance};
    struct Optimal {
        gm: GaussianMixture,
        var: Vec<f64>,
        chain: Vec<NoiseLevel>,
    }
    impl VarianceDenoiser<f64, ndarray::Ix2> for Optimal {
        fn prediction(&self) -> Prediction {
            Prediction::Sample
        }
        fn denoise_with_variance(
            &mut self,
            x: ArrayView2<'_, f64>,
            l: &NoiseLevel,
        ) -> Result<WithVariance<f64, ndarray::Ix2>, BoxError> {
            let x0 = self.gm.x0(x, l)?;
            let (a, s) = (l.alpha, l.sigma);
            let i = self
                .chain
                .iter()
                .position(|c| c.t == l.t)
                .ok_or("level not in the chain")?;
            let v: Vec<f64> = self
                .var
                .iter()
                .map(|&v| {
                    let post = v * s * s / (a * a * v + s * s);
                    if i == 0 {
                        return post;
                    }
                    let n = self.chain[i - 1];
                    let r = a / n.alpha;
                    let vv = s * s - r * r * n.sigma * n.sigma;
                    let c = n.alpha * vv / (s * s);
                    vv * n.sigma * n.sigma / (s * s) + c * c * post
                })
                .collect();
            let var = Array2::from_shape_fn(x.raw_dim(), |(_, j)| v[j]);
            Ok((x0, var))
        }
    }
    let var = vec![0.25, 0.5];
    let gm = GaussianMixture::gaussian(vec![0.3, -0.2], var.clone()).unwrap();
    let x0: Array2<f64> = gm.sample(2048, &mut StdRng::seed_from_u64(21));
    let entropy = 0.5 * (2.0 * PI * std::f64::consts::E * (0.25f64 * 0.5).sqrt()).log2();
    let schedule = continuous_vp(1000);
    for stride in [100usize, 10, 1] {
        let ts: Vec<usize> = (0..1000).step_by(stride).collect();
        // Levels by timestep, least noisy first (the model looks up the next one down).
        let chain: Vec<NoiseLevel> = ts.iter().map(|&t| schedule.level(t as f64)).collect();
        let mut model = Optimal {
            gm: gm.clone(),
            var: var.clone(),
            chain,
        };
        let vlb = Vlb::new().decoder(Decoder::Gaussian).timesteps(ts.clone());
        let r = vlb
            .bits_per_dim_learned(
                &mut model,
                LearnedVariance::Learned,
                &schedule,
                x0.view(),
                &mut SeededNoise::new(5),
            )
            .unwrap();
        let fixed = vlb
            .clone()
            .variance(ReverseVariance::FixedLarge)
            .bits_per_dim(&mut gm.clone(), &schedule, x0.view(), &mut SeededNoise::new(5))
            .unwrap();
        println!(
            "{} steps: learned (optimal) variance {:.4} +- {:.4}, fixed-large {:.4}, NLL {entropy:.4} bits/dim",
            ts.len(),
            r.mean(),
            r.std_error(),
            fixed.mean()
        );
        assert!((r.mean() - entropy).abs() < 4.0 * r.std_error(), "{stride}");
        if stride == 100 {
            assert!(fixed.mean() - entropy > 0.05);
        }
    }
    // A variance that is not positive is a typed error naming the step.
    struct Negative(GaussianMixture);
    impl VarianceDenoiser<f64, ndarray::Ix2> for Negative {
        fn prediction(&self) -> Prediction {
            Prediction::Sample
        }
        fn denoise_with_variance(
            &mut self,
            x: ArrayView2<'_, f64>,
            l: &NoiseLevel,
        ) -> Result<WithVariance<f64, ndarray::Ix2>, BoxError> {
            Ok((self.0.x0(x, l)?, Array2::from_elem(x.raw_dim(), -1.0)))
        }
    }
    let e = Vlb::new()
        .decoder(Decoder::Gaussian)
        .bits_per_dim_learned(
            &mut Negative(gm.clone()),
            LearnedVariance::Learned,
            &schedule,
            x0.view(),
            &mut SeededNoise::new(5),
        )
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { step: 0, .. }), "{e:?}");
}

/// EDM preconditioning with exact products: a raw network with its own JVP
/// (`RawNetworkJvp`, here the exact EDM network of a Gaussian, linear in its input) makes the
/// `Preconditioned` wrapper a `DenoiserJvp`; its ODE likelihood equals the finite-difference one
/// and the closed form.
#[test]
fn preconditioned_network_with_exact_jvps() {
    use diffusion_samplers::likelihood::OutputAndJvp;
    use diffusion_samplers::precond::{EdmPrecond, Preconditioned, RawNetwork, RawNetworkJvp};
    /// F(y) = (D(y / c_in) - c_skip y / c_in) / c_out for data N(0, v I): D(x) = g x.
    struct Exact {
        p: EdmPrecond,
        v: f64,
    }
    impl Exact {
        /// dF/dy at the network level (t = ln(sigma) / 4).
        fn slope(&self, l: &NoiseLevel) -> f64 {
            let s = (4.0 * l.t).exp();
            let g = self.v / (self.v + s * s);
            (g - self.p.c_skip(s)) / (self.p.c_in(s) * self.p.c_out(s))
        }
    }
    impl RawNetwork<f64, ndarray::Ix2> for Exact {
        fn forward(&mut self, y: ArrayView2<'_, f64>, l: &NoiseLevel) -> Result<Array2<f64>, BoxError> {
            let k = self.slope(l);
            Ok(y.mapv(|e| e * k))
        }
    }
    impl RawNetworkJvp<f64, ndarray::Ix2> for Exact {
        fn forward_jvp(
            &mut self,
            y: ArrayView2<'_, f64>,
            w: ArrayView2<'_, f64>,
            l: &NoiseLevel,
        ) -> Result<OutputAndJvp<f64, ndarray::Ix2>, BoxError> {
            let k = self.slope(l);
            Ok((y.mapv(|e| e * k), w.mapv(|e| e * k)))
        }
    }
    let v = 0.3;
    let gm = GaussianMixture::gaussian(vec![0.0; 3], vec![v; 3]).unwrap();
    let x0: Array2<f64> = gm.sample(32, &mut StdRng::seed_from_u64(8));
    let p = EdmPrecond::edm(0.5);
    let grid = Grid::ve(&[2000.0, 1e-3]).unwrap();
    let exact: Vec<f64> = gm
        .log_density(x0.view(), &NoiseLevel::new(0.0, 1.0, 1e-3))
        .unwrap()
        .into_iter()
        .map(|l| bits(l, 3))
        .collect();
    let nll = OdeNll::new().trace(Trace::Exact);
    let mut model = Preconditioned::new(Exact { p, v }, p);
    let a = nll
        .bits_per_dim_jvp(&mut model, &grid, x0.view(), &mut SeededNoise::new(1))
        .unwrap();
    let b = nll
        .bits_per_dim(&mut model, &grid, x0.view(), &mut SeededNoise::new(1))
        .unwrap();
    let worst = a
        .bits_per_dim
        .iter()
        .zip(&exact)
        .map(|(x, e)| (x - e).abs())
        .fold(0.0, f64::max);
    let fd = a
        .bits_per_dim
        .iter()
        .zip(&b.bits_per_dim)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    println!(
        "EDM wrapper, exact JVPs: worst {worst:.2e} bits/dim vs closed form, {fd:.2e} vs finite differences ({} vs {} calls)",
        a.calls, b.calls
    );
    assert!(worst < 2e-3 && fd < 1e-6, "{worst} {fd}");
}

#[test]
fn bad_inputs_are_typed_errors() {
    let gm = GaussianMixture::gaussian(vec![0.0; 2], vec![0.5; 2]).unwrap();
    let x0 = Array2::<f64>::zeros((4, 2));
    let grid = vp_grid();
    let mut noise = SeededNoise::new(0);
    let nll = |o: OdeNll, x: ArrayView2<'_, f64>| {
        o.bits_per_dim(&mut gm.clone(), &grid, x, &mut SeededNoise::new(0))
    };
    let probes0 = OdeNll::new().trace(Trace::Hutchinson {
        probe: Probe::Gaussian,
        probes: 0,
    });
    assert!(matches!(
        nll(probes0, x0.view()),
        Err(Error::InvalidParameter { name: "probes", .. })
    ));
    assert!(matches!(
        nll(OdeNll::new().sigma_min(200.0), x0.view()),
        Err(Error::InvalidParameter {
            name: "sigma_max",
            ..
        })
    ));
    assert!(matches!(
        nll(OdeNll::new().tolerances(0.0, 1e-5), x0.view()),
        Err(Error::InvalidParameter { name: "rtol", .. })
    ));
    assert!(matches!(
        nll(OdeNll::new().step(-1.0), x0.view()),
        Err(Error::InvalidParameter { name: "step", .. })
    ));
    assert!(matches!(
        nll(OdeNll::new().max_evaluations(5), x0.view()),
        Err(Error::InvalidParameter {
            name: "max_evaluations",
            ..
        })
    ));
    let mut bad = x0.clone();
    bad[[1, 1]] = f64::NAN;
    assert!(matches!(
        nll(OdeNll::new(), bad.view()),
        Err(Error::InvalidValue { index: 3, .. })
    ));
    bad[[1, 1]] = 1.5;
    assert!(matches!(
        nll(OdeNll::new().dequantize(256), bad.view()),
        Err(Error::InvalidValue { .. })
    ));
    // A zero-terminal-SNR grid needs an explicit sigma_max.
    let zsnr = NoiseSchedule::linear(1000, 1e-4, 0.02)
        .unwrap()
        .with_zero_terminal_snr()
        .unwrap()
        .grid(10, Spacing::Trailing)
        .unwrap();
    let r = OdeNll::new().bits_per_dim(&mut gm.clone(), &zsnr, x0.view(), &mut SeededNoise::new(0));
    assert!(matches!(
        r,
        Err(Error::InvalidParameter {
            name: "sigma_max",
            ..
        })
    ));
    assert!(
        OdeNll::new()
            .sigma_max(100.0)
            .bits_per_dim(&mut gm.clone(), &zsnr, x0.view(), &mut SeededNoise::new(0))
            .is_ok()
    );
    // A model returning NaN: a typed error naming the evaluation and level.
    let mut nan = FnDenoiser::new(
        Prediction::Epsilon,
        |x: ndarray::ArrayView2<'_, f64>, l: &NoiseLevel| {
            Ok::<Array2<f64>, BoxError>(x.mapv(|v| if l.sigma_ve() > 1.0 { f64::NAN } else { v }))
        },
    );
    let e = OdeNll::new()
        .bits_per_dim(&mut nan, &grid, x0.view(), &mut noise)
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { .. }), "{e:?}");
    // Regression: a model whose output grows as the solver's stages close in on each other (it
    // answers 1 / the log-sigma distance to its previous call) makes every step's error
    // estimate independent of the step size, so the step shrinks until the stages coincide;
    // that used to end in an unrelated error (a non-finite drift, or zero-length steps); now
    // the collapsed step is reported as such, with where it happened.
    let mut last = f64::NAN;
    let mut rough = FnDenoiser::new(
        Prediction::Sample,
        move |x: ndarray::ArrayView2<'_, f64>, l: &NoiseLevel| {
            let ls = l.sigma_ve().ln();
            let k = if last.is_nan() || ls == last {
                1.0
            } else {
                1.0 / (ls - last).abs()
            };
            last = ls;
            Ok::<Array2<f64>, BoxError>(x.mapv(|v| v + k))
        },
    );
    let data: Array2<f64> = gm.sample(4, &mut StdRng::seed_from_u64(0));
    let e = OdeNll::new()
        .max_evaluations(1_000_000)
        .bits_per_dim(&mut rough, &grid, data.view(), &mut noise)
        .unwrap_err();
    assert!(
        matches!(e, Error::NonFinite { what, .. } if what.starts_with("ODE step size")),
        "{e:?}"
    );
    let schedule = NoiseSchedule::linear(100, 1e-4, 0.02).unwrap();
    let e = Vlb::new()
        .bits_per_dim(&mut nan, &schedule, x0.view(), &mut noise)
        .unwrap_err();
    assert!(matches!(e, Error::NonFinite { step: 0, .. }), "{e:?}");
    let vlb = |v: Vlb, x: ArrayView2<'_, f64>| {
        v.bits_per_dim(&mut gm.clone(), &schedule, x, &mut SeededNoise::new(0))
    };
    assert!(matches!(
        vlb(Vlb::new().timesteps(vec![]), x0.view()),
        Err(Error::InvalidParameter {
            name: "timesteps",
            ..
        })
    ));
    assert!(matches!(
        vlb(Vlb::new().timesteps(vec![3, 3]), x0.view()),
        Err(Error::InvalidParameter {
            name: "timesteps",
            ..
        })
    ));
    assert!(matches!(
        vlb(Vlb::new().timesteps(vec![100]), x0.view()),
        Err(Error::InvalidParameter {
            name: "timesteps",
            ..
        })
    ));
    assert!(matches!(
        vlb(Vlb::new(), bad.view()),
        Err(Error::InvalidValue { .. })
    ));
    let flat = ndarray::Array1::<f64>::zeros(3);
    assert!(matches!(
        Vlb::new().bits_per_dim(&mut gm.clone(), &schedule, flat.view(), &mut SeededNoise::new(0)),
        Err(Error::Shape { .. })
    ));
}
