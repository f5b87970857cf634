//! Bias and spread of every guidance rule against the distribution guidance aims at, at 10, 20
//! and 50 sampler calls, on analytic Gaussians.
//!
//!     cargo run --release --example guidance_table
//!
//! The conditional model is the exact denoiser of `N(mu_c, 0.5^2)` per coordinate, the
//! unconditional one of `N(mu_u, 1)` (epsilon prediction, Stable Diffusion's schedule, 8 × 8
//! "images", 2000 samples). Guidance with scale `w` aims at the tilted density
//! `p_c^w p_u^(1-w)` — a Gaussian with precision `w / 0.25 + (1 - w) / 1` — whose mean and
//! standard deviation are known in closed form. Per rule and budget (DPM++ 2M on a Karras grid
//! with as many steps as calls; every call evaluates both branches):
//!
//! * bias: the mean over coordinates of `|mean(samples) - target mean| / target std`;
//! * spread: the mean over coordinates of `std(samples) / target std` (1 is right; CFG's known
//!   over-sharpening shows below 1);
//! * ODE: the root-mean-square distance of the samples to the same rule's 400-step run from the
//!   same noise — how far the budget is from the rule's own converged result.
//!
//! The markdown table is what docs/guidance.md shows.

use diffusion_samplers::guidance::{
    Apg, Cfg, CfgNorm, CfgZeroStar, EpsScaling, FreSca, FrequencyDecoupled, GuidanceRule, Interval,
    MagnitudeAware, Mahiro, Tangential,
};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{DpmPp2mCfgPp, Guidance};
use ndarray::{Array4, Axis};

const W: f64 = 3.0;
const N: usize = 2000;
const BUDGETS: [usize; 3] = [10, 20, 50];
const REFERENCE_STEPS: usize = 400;
const VAR_C: f64 = 0.25;
const VAR_U: f64 = 1.0;

fn mu_c(j: usize) -> f64 {
    1.0 + 0.5 * (j as f64).sin()
}

fn mu_u(j: usize) -> f64 {
    0.3 * (j as f64).cos()
}

fn models() -> (GaussianMixture, GaussianMixture) {
    let g = |mu: fn(usize) -> f64, var: f64| {
        GaussianMixture::gaussian((0..8).map(mu).collect(), vec![var; 8])
            .unwrap()
            .with_prediction(Prediction::Epsilon)
    };
    (g(mu_c, VAR_C), g(mu_u, VAR_U))
}

/// The tilted target's mean and standard deviation of coordinate `j`.
fn target(j: usize) -> (f64, f64) {
    let precision = W / VAR_C + (1.0 - W) / VAR_U;
    let mean = (W * mu_c(j) / VAR_C + (1.0 - W) * mu_u(j) / VAR_U) / precision;
    (mean, precision.recip().sqrt())
}

/// Bias and spread in target units, over the 8 coordinates (the last axis).
fn stats(x: &Array4<f64>) -> (f64, f64) {
    let flat = x.to_shape((x.len() / 8, 8)).unwrap();
    let (mut bias, mut spread) = (0.0, 0.0);
    for (j, col) in flat.axis_iter(Axis(1)).enumerate() {
        let (m, s) = target(j);
        let mean = col.mean().unwrap();
        let std = col.std(1.0);
        bias += (mean - m).abs() / s;
        spread += std / s;
    }
    (bias / 8.0, spread / 8.0)
}

fn rms(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    ((a - b).mapv(|v| v * v).mean().unwrap()).sqrt()
}

struct Setup {
    schedule: NoiseSchedule,
}

impl Setup {
    fn run<R: GuidanceRule + Clone, S: Sampler>(&self, sampler: &S, rule: &R, steps: usize) -> Array4<f64> {
        let grid = self.schedule.grid(steps, Spacing::KARRAS).unwrap();
        // The same standard-normal draw on every grid, scaled to its first level.
        let x: Array4<f64> = grid
            .initial_sample((N / 8, 1, 8, 8), &mut SeededNoise::new(0))
            .unwrap();
        let (c, u) = models();
        let mut m = Guidance::with_rule(c, u, rule.clone());
        sampler
            .sample(&mut m, x, &grid, &mut SeededNoise::new(1))
            .unwrap()
    }

    fn row<R: GuidanceRule + Clone, S: Sampler>(&self, name: &str, sampler: &S, rule: R) {
        let reference = self.run(sampler, &rule, REFERENCE_STEPS);
        let mut cells = Vec::new();
        for &steps in &BUDGETS {
            let x = self.run(sampler, &rule, steps);
            let (b, s) = stats(&x);
            cells.push(format!("{b:.3} / {s:.3} / {:.1e}", rms(&x, &reference)));
        }
        let (b, s) = stats(&reference);
        println!("| {name} | {} | {b:.3} / {s:.3} |", cells.join(" | "));
    }
}

fn main() {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let setup = Setup { schedule };
    println!(
        "Guided target per coordinate: N(m_j, {:.4}^2); scale {W}; {N} samples; cells: bias / spread / ODE\n",
        target(0).1
    );
    println!(
        "| rule (DPM++ 2M Karras) | 10 calls | 20 calls | 50 calls | {REFERENCE_STEPS} calls (bias / spread) |"
    );
    println!("|---|---|---|---|---|");
    let dpm = DpmSolver::new();
    setup.row("CFG", &dpm, Cfg::new(W));
    setup.row("CFG, rescale 0.7", &dpm, Cfg::new(W).rescale(0.7));
    setup.row(
        "APG (eta 0, momentum -0.5, r 15)",
        &dpm,
        Apg::new(W).eta(0.0).momentum(Some(-0.5)),
    );
    setup.row("APG, ComfyUI node (eta 1, r 5)", &dpm, Apg::comfyui(W));
    setup.row("CFG-Zero* (diffusers)", &dpm, CfgZeroStar::new(W));
    setup.row("CFG-Zero* (ComfyUI)", &dpm, CfgZeroStar::comfyui(W));
    setup.row(
        "interval, sigma in [0.28, 5.42]",
        &dpm,
        Interval::sigmas(Cfg::new(W), 0.28, 5.42).unwrap(),
    );
    setup.row("TCFG", &dpm, Tangential::comfyui(W));
    setup.row("MAMBO-G (alpha 8)", &dpm, MagnitudeAware::new(W));
    setup.row(
        "FreSca (low 1, high 1.25, cutoff 2)",
        &dpm,
        FreSca::new(W).freq_cutoff(2),
    );
    setup.row(
        "FDG (scales 4, 3)",
        &dpm,
        FrequencyDecoupled::new(vec![W + 1.0, W]),
    );
    setup.row("CFGNorm", &dpm, CfgNorm::new(Cfg::new(W)));
    setup.row(
        "epsilon scaling 1.005",
        &dpm,
        EpsScaling::new(Cfg::new(W)).factor(1.005),
    );
    setup.row("Mahiro", &dpm, Mahiro::new(W));
    // CFG++'s scale is not CFG's: the paper's lambda in [0, 1] is ComfyUI's cfg; 1 is the
    // conditional model alone.
    for s in [1.0, 1.2, 1.5, W] {
        setup.row(
            &format!("CFG++ (dpmpp_2m_cfg_pp), scale {s}"),
            &DpmPp2mCfgPp::new(),
            Cfg::new(s),
        );
    }
}
