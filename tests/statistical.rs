//! Statistical tests with the exact denoiser of a 1-D Gaussian: DDPM reproduces the data
//! distribution, DDIM(eta = 0) follows the exact probability-flow ODE.

use diffusion_samplers::prelude::*;
use ndarray::{Array2, Axis};
use rand::{SeedableRng, rngs::StdRng};

const MU: f64 = 0.3;
const VAR: f64 = 0.25;

/// The exact output distribution of an ancestral sampler driven by the exact denoiser of
/// N(mu, s^2): each step is `x' = A x + b + std z` (linear, because the posterior mean of a
/// Gaussian is linear in x), so mean and variance propagate in closed form. Written from the
/// papers' formulas on alphas_cumprod (DDIM eq. 12/16, DDPM eq. 7), independently of the crate.
fn exact_output(abar: &[f64], eta_or_large: Result<f64, ()>, start: (f64, f64)) -> (f64, f64) {
    let (mut m, mut v) = start;
    for k in 0..abar.len() {
        let at = abar[k];
        let ap = if k + 1 < abar.len() { abar[k + 1] } else { 1.0 };
        let (a, s, a2) = (at.sqrt(), (1.0 - at).sqrt(), ap.sqrt());
        let g = a * VAR / (a * a * VAR + s * s); // D = mu + g (x - a mu)
        let (cd, cx, std2) = match eta_or_large {
            Ok(eta) => {
                // DDIM: x' = a2 D + sqrt(1 - ap - std^2) (x - a D) / s + std z
                let std2 = eta * eta * (1.0 - ap) / (1.0 - at) * (1.0 - at / ap);
                let ce = (1.0 - ap - std2).max(0.0).sqrt();
                (a2 - ce * a / s, ce / s, std2)
            }
            Err(()) => {
                // DDPM fixed_large: posterior mean, forward variance beta = 1 - at / ap
                let beta = 1.0 - at / ap;
                let std2 = if ap == 1.0 { 0.0 } else { beta };
                (
                    a2 * beta / (1.0 - at),
                    (at / ap).sqrt() * (1.0 - ap) / (1.0 - at),
                    std2,
                )
            }
        };
        let big_a = cd * g + cx;
        let b = cd * (MU - g * a * MU);
        m = big_a * m + b;
        v = big_a * big_a * v + std2;
    }
    (m, v)
}

fn check_stats(name: &str, out: &Array2<f64>, (mean, var): (f64, f64)) {
    let m = out.len() as f64;
    let got_m = out.mean().unwrap();
    let got_v = out.var_axis(Axis(0), 1.0)[0];
    let (se_m, se_v) = ((var / m).sqrt(), var * (2.0 / (m - 1.0)).sqrt());
    println!("{name}: mean {got_m:.4} (exact {mean:.4}), var {got_v:.4} (exact {var:.4}; data {VAR})");
    assert!(
        (got_m - mean).abs() < 4.0 * se_m,
        "{name}: mean {got_m} vs {mean}"
    );
    assert!((got_v - var).abs() < 4.0 * se_v, "{name}: var {got_v} vs {var}");
}

/// DDPM with 1000 steps on the exact denoiser of N(mu, s^2), 20 000 paths.
///
/// * The sample mean and variance match the sampler's exact output distribution within 4
///   standard errors (mean: s / sqrt(M) = 3.5e-3; variance: s^2 sqrt(2 / (M - 1)) = 2.5e-3).
/// * That distribution is the data distribution up to the ancestral sampler's own bias:
///   `FixedLarge` reproduces the data variance within sampling error (bias 3e-4), while
///   `FixedSmall` (the posterior variance, a lower bound of the true reverse variance)
///   undershoots it by 1.5% (0.2461 vs 0.25), a known property of DDPM, not of this crate.
#[test]
fn ddpm_1000_steps_reproduces_mean_and_variance() {
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let g = s.grid(1000, Spacing::Leading { offset: 0 }).unwrap();
    let abar: Vec<f64> = s.alphas_cumprod().iter().rev().copied().collect();
    let m = 20_000;
    let se_v = VAR * (2.0 / (m - 1) as f64).sqrt();
    for (pred, variance) in [
        (Prediction::Epsilon, DdpmVariance::FixedLarge),
        (Prediction::Velocity, DdpmVariance::FixedSmall),
    ] {
        let mut model = GaussianMixture::gaussian(vec![MU], vec![VAR])
            .unwrap()
            .with_prediction(pred);
        let mut rng = StdRng::seed_from_u64(42);
        let x: Array2<f64> = standard_normal((m, 1), &mut rng);
        let out = Ddpm::new()
            .variance(variance)
            .clip_sample(None)
            .sample(&mut model, x, &g, &mut rng)
            .unwrap();
        let exact = if variance == DdpmVariance::FixedLarge {
            exact_output(&abar, Err(()), (0.0, 1.0))
        } else {
            exact_output(&abar, Ok(1.0), (0.0, 1.0))
        };
        check_stats(&format!("DDPM {variance:?} {pred:?}"), &out, exact);
        assert!((exact.0 - MU).abs() < 1e-4);
        if variance == DdpmVariance::FixedLarge {
            assert!((exact.1 - VAR).abs() < se_v, "fixed_large bias {}", exact.1 - VAR);
            check_stats("DDPM FixedLarge vs data", &out, (MU, VAR));
        } else {
            assert!(
                (exact.1 / VAR - 0.9845).abs() < 0.002,
                "fixed_small bias {}",
                exact.1
            );
        }
    }
}

/// Stochastic DDIM (eta = 1) on a strided 100-step trailing grid: ancestral sampling with the
/// posterior variance. Matches its exact output distribution (which, with 100 steps,
/// undershoots the data variance by 13%: the coarse ancestral bias the DDIM paper's Table 1
/// shows as worse FID for eta = 1 at few steps).
#[test]
fn ddim_eta1_matches_its_exact_output_distribution() {
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let g = s.grid(100, Spacing::Trailing).unwrap();
    let abar: Vec<f64> = g
        .timesteps()
        .iter()
        .map(|&t| s.alphas_cumprod()[t as usize])
        .collect();
    let m = 20_000;
    let mut model = GaussianMixture::gaussian(vec![MU], vec![VAR]).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let x: Array2<f64> = standard_normal((m, 1), &mut rng);
    // Start from the exact marginal at the first level: alpha mu + sqrt(alpha^2 s^2 + sigma^2) z.
    let l0 = g.levels()[0];
    let sd0 = (l0.alpha * l0.alpha * VAR + l0.sigma * l0.sigma).sqrt();
    let x = x.mapv(|z| l0.alpha * MU + sd0 * z);
    let out = Ddim::new()
        .eta(1.0)
        .clip_sample(None)
        .sample(&mut model, x, &g, &mut rng)
        .unwrap();
    let exact = exact_output(&abar, Ok(1.0), (l0.alpha * MU, sd0 * sd0));
    check_stats("DDIM eta=1, 100 steps", &out, exact);
}

/// DDIM(eta = 0) is the Euler step of the probability-flow ODE: each starting noise lands on
/// the exact ODE solution, with an error that shrinks like 1 / steps (first order).
#[test]
fn ddim_eta0_follows_the_exact_ode() {
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let mut model = GaussianMixture::gaussian(vec![MU], vec![VAR]).unwrap();
    let x: Array2<f64> = standard_normal((64, 1), &mut StdRng::seed_from_u64(3));
    let mut errs = Vec::new();
    for steps in [100, 200, 400, 1000] {
        let g = s.grid(steps, Spacing::Trailing).unwrap();
        let (first, last) = (g.levels()[0], g.levels()[steps]);
        let exact = model.ode_solution(x.view(), &first, &last).unwrap();
        let out = Ddim::new()
            .clip_sample(None)
            .sample(&mut model, x.clone(), &g, &mut StdRng::seed_from_u64(0))
            .unwrap();
        let err = (&out - &exact).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        println!("{steps} steps: max |x - exact| = {err:.3e}");
        errs.push(err);
    }
    // 64 paths starting at |x| <= 3: 3e-3 at 1000 steps is the Euler error of this ODE.
    assert!(errs[3] < 4e-3, "1000 steps: {}", errs[3]);
    // First order: doubling the steps halves the error (within 20%).
    for w in errs[..3].windows(2) {
        let ratio = w[0] / w[1];
        assert!((1.6..2.4).contains(&ratio), "error ratio {ratio}");
    }
}

/// The forward process: x_t from q(x_t | x_0) has mean alpha_t mu and variance
/// alpha_t^2 s^2 + sigma_t^2; chaining single forward steps gives the same.
#[test]
fn forward_process_marginals() {
    let fp = ForwardProcess::new(NoiseSchedule::cosine(200).unwrap());
    let g = GaussianMixture::gaussian(vec![MU], vec![VAR]).unwrap();
    let m = 40_000;
    let mut rng = StdRng::seed_from_u64(11);
    let x0: Array2<f64> = g.sample(m, &mut rng);
    let t = 120;
    let (xt, _) = fp.sample_q(x0.view(), &vec![t; m], &mut rng).unwrap();
    let mut chain = x0.clone();
    for k in 0..=t {
        chain = fp.step(chain.view(), &vec![k; m], &mut rng).unwrap();
    }
    let l = fp.schedule().level_at(t).unwrap();
    let (mean, var) = (l.alpha * MU, l.alpha * l.alpha * VAR + l.sigma * l.sigma);
    for (name, a) in [("q(x_t|x_0)", &xt), ("chained steps", &chain)] {
        let am = a.mean().unwrap();
        let av = a.var_axis(Axis(0), 1.0)[0];
        assert!(
            (am - mean).abs() < 4.0 * (var / m as f64).sqrt(),
            "{name}: mean {am} vs {mean}"
        );
        assert!(
            (av - var).abs() < 4.0 * var * (2.0 / m as f64).sqrt(),
            "{name}: var {av} vs {var}"
        );
    }
    // The posterior q(x_{t-1} | x_t, x_0) has the DDPM variance.
    let (_, pv) = fp.posterior(x0.view(), xt.view(), &vec![t; m]).unwrap();
    assert!((pv[0] - fp.schedule().posterior_variance(t).unwrap()).abs() < 1e-15);
}

/// Every stochastic sampler's output distribution converges to the data distribution: with the
/// exact denoiser of N(mu, s^2), 20 000 paths, the sample mean is within 4 standard errors and
/// the variance error shrinks as the grid is refined (ancestral samplers are biased at coarse
/// grids, exact in the limit).
#[test]
fn stochastic_samplers_converge_in_distribution() {
    use diffusion_samplers::{
        Dpm2Ancestral, DpmAdaptive, DpmFast, DpmPp2sAncestral, DpmPpSde, ErSde, Heun, HeunPp2, Lcm,
        ResMultistep, SaSolver, Seeds2, Seeds3,
    };
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let m = 20_000;
    let se_m = (VAR / m as f64).sqrt();
    fn stats<S: Sampler>(sampler: &S, grid: &Grid, m: usize) -> (f64, f64) {
        let mut model = GaussianMixture::gaussian(vec![MU], vec![VAR]).unwrap();
        let mut rng = StdRng::seed_from_u64(21);
        let l0 = grid.levels()[0];
        let sd0 = (l0.alpha * l0.alpha * VAR + l0.sigma * l0.sigma).sqrt();
        let x: Array2<f64> = standard_normal((m, 1), &mut rng);
        let x = x.mapv(|z| l0.alpha * MU + sd0 * z);
        let out = sampler.sample(&mut model, x, grid, &mut rng).unwrap();
        (out.mean().unwrap(), out.var_axis(Axis(0), 1.0)[0])
    }
    // tol: relative variance error allowed at 100 steps (first-order ancestral samplers carry
    // an O(step) bias: 8.6% at 100 Karras steps, below 3% at 400, checked below).
    macro_rules! check {
        ($name:expr, $sampler:expr, $tol:expr) => {{
            let coarse = stats(&$sampler, &s.grid(10, Spacing::KARRAS).unwrap(), m);
            let fine = stats(&$sampler, &s.grid(100, Spacing::KARRAS).unwrap(), m);
            println!(
                "{:28} 10 steps: mean {:.4} var {:.4}   100 steps: mean {:.4} var {:.4}   (data {MU}, {VAR})",
                $name, coarse.0, coarse.1, fine.0, fine.1
            );
            assert!((fine.0 - MU).abs() < 4.0 * se_m, "{}: mean {}", $name, fine.0);
            assert!(
                (fine.1 - VAR).abs() < $tol * VAR,
                "{}: variance {}",
                $name,
                fine.1
            );
            assert!(
                (fine.1 - VAR).abs() < (coarse.1 - VAR).abs(),
                "{}: no convergence",
                $name
            );
        }};
    }
    check!("Euler ancestral", EulerAncestral::new(), 0.12);
    check!("DDIM eta = 1", Ddim::new().eta(1.0).clip_sample(None), 0.12);
    check!("DDPM", Ddpm::new().clip_sample(None), 0.12);
    check!("DPM-2 ancestral", Dpm2Ancestral::new(), 0.03);
    check!("DPM++ 2S ancestral", DpmPp2sAncestral::new(), 0.03);
    check!("DPM++ 2M SDE", DpmSolver::new().sde(true), 0.03);
    check!("DPM++ 3M SDE", DpmSolver::new().order(3).sde(true), 0.03);
    check!("Euler with churn", Euler::new().s_churn(10.0), 0.12);
    check!("Heun with churn", Heun::new().s_churn(10.0), 0.03);
    // The ComfyUI / k-diffusion stochastic samplers.
    // k-diffusion draws DPM++ SDE's two noises over overlapping intervals from a Brownian tree
    // (correlated); with independent draws it is 7% low at 100 steps (exact in the limit), with
    // Brownian noise within 3% (checked below).
    check!("DPM++ SDE", DpmPpSde::new(), 0.08);
    check!("exp_heun_2_x0_sde", Seeds2::exp_heun().eta(1.0), 0.03);
    check!("SEEDS-2", Seeds2::new(), 0.03);
    check!("SEEDS-3", Seeds3::new(), 0.03);
    check!("ER-SDE", ErSde::new(), 0.03);
    check!("SA-Solver (tau 1)", SaSolver::new(), 0.03);
    check!("res_multistep ancestral", ResMultistep::ancestral(), 0.03);
    check!("DPM-Solver-fast (eta 1)", DpmFast::new().eta(1.0), 0.03);
    check!("HeunPP2 with churn", HeunPp2::new().s_churn(10.0), 0.12);
    // The adaptive solver picks its own steps (only the grid's ends matter).
    let adaptive = stats(
        &DpmAdaptive::new().eta(1.0),
        &s.grid(10, Spacing::KARRAS).unwrap(),
        m,
    );
    println!(
        "DPM adaptive (eta 1): mean {:.4} var {:.4}",
        adaptive.0, adaptive.1
    );
    assert!((adaptive.0 - MU).abs() < 4.0 * se_m && (adaptive.1 - VAR).abs() < 0.03 * VAR);
    {
        let grid = s.grid(100, Spacing::KARRAS).unwrap();
        let mut model = GaussianMixture::gaussian(vec![MU], vec![VAR]).unwrap();
        let l0 = grid.levels()[0];
        let sd0 = (l0.alpha * l0.alpha * VAR + l0.sigma * l0.sigma).sqrt();
        let x: Array2<f64> = standard_normal((m, 1), &mut StdRng::seed_from_u64(21));
        let x = x.mapv(|z| l0.alpha * MU + sd0 * z);
        let mut noise = diffusion_samplers::noise::BrownianNoise::new(3, &grid).unwrap();
        let out = DpmPpSde::new().sample(&mut model, x, &grid, &mut noise).unwrap();
        let (mean, var) = (out.mean().unwrap(), out.var_axis(Axis(0), 1.0)[0]);
        println!("DPM++ SDE, Brownian noise, 100 steps: mean {mean:.4} var {var:.4}");
        assert!(
            (mean - MU).abs() < 4.0 * se_m && (var - VAR).abs() < 0.03 * VAR,
            "{mean} {var}"
        );
    }
    let fine = stats(&EulerAncestral::new(), &s.grid(400, Spacing::KARRAS).unwrap(), m);
    assert!(
        (fine.1 - VAR).abs() < 0.03 * VAR,
        "Euler ancestral, 400 steps: variance {}",
        fine.1
    );
    // Consistency sampling with the exact denoiser returns the posterior mean at the last
    // level: its variance undershoots; only the mean is checked.
    let lcm = stats(
        &Lcm::new().boundary_condition(None),
        &s.grid(8, Spacing::Lcm { original_steps: 50 }).unwrap(),
        m,
    );
    assert!((lcm.0 - MU).abs() < 4.0 * se_m);
}
