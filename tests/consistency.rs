//! Consistency-family samplers: TCD's and consistency models' identities and statistics (the
//! diffusers runs are in tests/config.rs: `TCDScheduler`, `CMStochasticIterativeScheduler`,
//! `FlowMatchLCMScheduler`).

use diffusion_samplers::karras_sigmas;
use diffusion_samplers::precond::{EdmPrecond, Preconditioned};
use diffusion_samplers::prelude::*;
use ndarray::{Array1, Array2, ArrayView1};

fn run<S: Sampler>(s: &S, grid: &Grid, seed: u64, n: usize) -> Array2<f64> {
    let mut model = GaussianMixture::new(
        vec![0.4, 0.6],
        vec![vec![-0.8, 0.3], vec![0.6, -0.2]],
        vec![vec![0.05, 0.1], vec![0.08, 0.04]],
    )
    .unwrap()
    .with_prediction(Prediction::Epsilon);
    let x = grid
        .initial_sample::<f64, _, _, _>((n, 2), &mut SeededNoise::new(seed))
        .unwrap();
    s.sample(&mut model, x, grid, &mut SeededNoise::new(seed + 1))
        .unwrap()
}

#[test]
fn tcd_with_gamma_zero_is_ddim() {
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    for grid in [
        s.grid(4, Spacing::Lcm { original_steps: 50 })
            .unwrap()
            .with_final(FinalLevel::FirstTimestep),
        s.grid(13, Spacing::Trailing).unwrap(),
    ] {
        let a = run(&Tcd::new().gamma(0.0), &grid, 3, 8);
        let b = run(&Ddim::new(), &grid, 3, 8);
        let d = (&a - &b).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(d < 1e-12, "{d:e}");
        // gamma > 0 differs (the negative control).
        let c = run(&Tcd::new().gamma(0.3), &grid, 3, 8);
        assert!((&c - &b).iter().any(|v| v.abs() > 1e-3));
    }
}

#[test]
fn tcd_intermediate_timestep_is_computed_in_f32() {
    // diffusers: floor(float32(0.7) * 90) = 63; in f64 it is 62.
    assert_eq!(Tcd::new().gamma(0.3).intermediate_timestep(90.0), 63.0);
    assert_eq!(((1.0f64 - 0.3) * 90.0).floor(), 62.0);
    assert_eq!(Tcd::new().gamma(1.0).intermediate_timestep(999.0), 0.0);
    assert_eq!(Tcd::new().gamma(0.0).intermediate_timestep(759.0), 759.0);
}

/// TCD's moments against an independent propagation of the paper's update (Zheng et al. 2024,
/// Eq. 12: `x_s = alpha_s x0 + sigma_s eps`, then `x' = (alpha'/alpha_s) x_s +
/// sqrt(1 - alpha'^2/alpha_s^2) z`) for Gaussian data, where every step is linear in `x` and
/// `z` and the mean and variance propagate exactly.
#[test]
fn tcd_moments_match_the_papers_update() {
    let (mu, v) = (0.5, 0.3);
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    for (gamma, grid) in [
        (0.3, s.grid(4, Spacing::Lcm { original_steps: 50 }).unwrap()),
        (0.7, s.grid(8, Spacing::Lcm { original_steps: 50 }).unwrap()),
        (1.0, s.grid(6, Spacing::Trailing).unwrap()),
    ] {
        let grid = grid.with_final(FinalLevel::FirstTimestep);
        let n = 40_000;
        let x = grid
            .initial_sample::<f64, _, _, _>((n, 1), &mut SeededNoise::new(2))
            .unwrap();
        let (mut m, mut var) = {
            let m = x.mean().unwrap();
            (m, x.mapv(|a| (a - m).powi(2)).mean().unwrap())
        };
        let mut model = GaussianMixture::gaussian(vec![mu], vec![v]).unwrap();
        let out = Tcd::new()
            .gamma(gamma)
            .sample(&mut model, x, &grid, &mut SeededNoise::new(3))
            .unwrap();
        for w in grid.levels().windows(2) {
            let (l, next) = (w[0], w[1]);
            let (a, sg) = (l.alpha, l.sigma);
            let g = a * v / (a * a * v + sg * sg);
            // x0 = p0 + p1 x, eps = e0 + e1 x
            let (p0, p1) = (mu - g * a * mu, g);
            let (e0, e1) = (-a * p0 / sg, (1.0 - a * p1) / sg);
            let t_s = ((1.0 - gamma) as f32 * next.t as f32).floor() as f64;
            let ls = s.level(t_s);
            let (xs0, xs1) = (ls.alpha * p0 + ls.sigma * e0, ls.alpha * p1 + ls.sigma * e1);
            let r = next.alpha / ls.alpha;
            let c = (1.0 - r * r).max(0.0).sqrt();
            m = r * (xs0 + xs1 * m);
            var = r * r * xs1 * xs1 * var + c * c;
        }
        let got_m = out.mean().unwrap();
        let got_v = out.mapv(|a| (a - got_m).powi(2)).mean().unwrap();
        // 40 000 samples: the sampler's own noise moves the mean by ~0.003 and the variance by
        // ~1%.
        assert!((got_m - m).abs() < 0.01, "gamma {gamma}: mean {got_m} vs {m}");
        assert!(
            (got_v / var - 1.0).abs() < 0.03,
            "gamma {gamma}: var {got_v} vs {var}"
        );
    }
}

/// Consistency models' renoising with sigma_min = 0 is plain LCM renoising (`sigma' z`); with
/// sigma_min > 0 the noise is `sqrt(s'^2 - sigma_min^2)`.
#[test]
fn consistency_renoise_reduces_to_lcm() {
    let grid = Grid::ve(&karras_sigmas(4, 0.002, 80.0, 7.0).unwrap()).unwrap();
    let lcm = Lcm::new().boundary_condition(None);
    let a = run(&lcm, &grid, 5, 4);
    let b = run(
        &lcm.consistency_renoise(Some((0.0, f64::INFINITY, 1.0))),
        &grid,
        5,
        4,
    );
    assert_eq!(a, b);
    let c = run(&lcm.consistency_renoise(Some((0.5, 80.0, 1.0))), &grid, 5, 4);
    assert!((&c - &a).iter().any(|v| v.abs() > 1e-6));
    assert!(matches!(
        lcm.consistency_renoise(Some((1.0, 0.5, 1.0))).sample(
            &mut GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap(),
            Array2::<f64>::zeros((1, 1)),
            &grid,
            &mut SeededNoise::new(0)
        ),
        Err(Error::InvalidParameter {
            name: "sigma_max",
            ..
        })
    ));
}

/// The consistency preconditioning is the identity at sigma_min (Song et al. 2023's boundary
/// condition), and the wrapper with F set to the exact network gives the exact denoiser.
#[test]
fn consistency_precond_boundary_and_exactness() {
    let p = EdmPrecond::consistency(0.5, 0.002);
    assert!((p.c_skip(0.002) - 1.0).abs() < 1e-15 && p.c_out(0.002).abs() < 1e-15);
    assert!((p.c_noise(80.0) - 250.0 * 80f64.ln()).abs() < 1e-9);
    // Data N(0.3, 0.04): exact denoiser at VE sigma s.
    let exact = |x: f64, s: f64| 0.3 + 0.04 / (0.04 + s * s) * (x - 0.3);
    let net = move |x: ArrayView1<'_, f64>, l: &NoiseLevel| {
        let s = l.sigma / l.alpha;
        let x_ve = x.mapv(|v| v / l.alpha);
        Ok::<Array1<f64>, BoxError>(x_ve.mapv(|v| (exact(v, s) - p.c_skip(s) * v) / p.c_out(s)))
    };
    let mut m = Preconditioned::new(net, p);
    for s in [0.01, 0.3, 2.0, 80.0] {
        let x = ndarray::array![1.5, -0.7];
        let d = m.denoise(x.view(), &NoiseLevel::new(s, 1.0, s)).unwrap();
        for (a, b) in d.iter().zip(x.iter()) {
            assert!((a - exact(*b, s)).abs() < 1e-12, "{s}: {a} vs {}", exact(*b, s));
        }
    }
}
