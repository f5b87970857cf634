//! Grids tuned on the model against fixed spacings, at 5 and 10 model calls.
//!
//!     cargo run --release --example tuned_grids
//!
//! The model is the exact denoiser of a Gaussian mixture (the sampler table's 3-mode 2-D
//! mixture, and a second, 8-D one) with epsilon prediction on Stable Diffusion's schedule. For
//! each sampler and budget, `tune::Tuner` tunes a grid on one batch of starting noises (256) and
//! the error is measured on another (2000): the mean distance to the exact probability-flow ODE
//! end point from the same noise (adaptive DPM-Solver at rtol 1e-7). Rows: Karras and uniform
//! (trailing) grids, Align Your Steps' SD 1.5 table and GITS's where they apply, the tuned grid;
//! DDIM at 50 and 200 calls for scale; last, `tune::tune_solver` (a multistep solver whose
//! coefficients are fitted with its grid). Tuning cost is printed per row (model calls of the
//! 256-sample batch, and seconds).

use std::time::Instant;

use diffusion_samplers::grid::{AysModel, ays_sigmas, gits_sigmas};
use diffusion_samplers::prelude::*;
use diffusion_samplers::tune::{Reference, Tuner, adaptive_end};
use diffusion_samplers::{Deis, Ipndm, ThirdOrder, UniPc};
use ndarray::{Array2, Axis};
use rand::{SeedableRng, rngs::StdRng};

fn mixture_2d() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.5, 0.3, 0.2],
        vec![vec![-1.0, 0.0], vec![0.75, 0.75], vec![0.5, -1.0]],
        vec![vec![0.02, 0.02], vec![0.02, 0.02], vec![0.02, 0.02]],
    )
    .unwrap()
}

fn mixture_8d() -> GaussianMixture {
    let means = (0..4)
        .map(|k| (0..8).map(|j| ((k * 8 + j) as f64 * 0.7).sin()).collect())
        .collect();
    GaussianMixture::new(vec![0.1, 0.2, 0.3, 0.4], means, vec![vec![0.05; 8]; 4]).unwrap()
}

fn error(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b)
        .mapv(|v| v * v)
        .sum_axis(Axis(1))
        .mapv(f64::sqrt)
        .mean()
        .unwrap()
}

struct Case {
    name: &'static str,
    model: GaussianMixture,
    schedule: NoiseSchedule,
    eval_x: Array2<f64>,
    tune_x: Array2<f64>,
    reference: Array2<f64>,
    fine: Grid,
}

impl Case {
    fn new(name: &'static str, model: GaussianMixture) -> Case {
        let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        let fine = schedule.grid(200, Spacing::KARRAS).unwrap();
        let d = model.dim();
        let eval_x: Array2<f64> = fine.initial_sample((2000, d), &mut SeededNoise::new(1)).unwrap();
        let tune_x: Array2<f64> = fine.initial_sample((256, d), &mut SeededNoise::new(2)).unwrap();
        let mut m = model.clone();
        let (reference, calls) = adaptive_end(&mut m, eval_x.view(), &fine, 1e-7, 1e-7).unwrap();
        println!("\n### {name}\n\nreference: adaptive DPM-Solver, {calls} calls\n");
        Case {
            name,
            model,
            schedule,
            eval_x,
            tune_x,
            reference,
            fine,
        }
    }

    fn err<S: Sampler>(&self, sampler: &S, grid: &Grid) -> f64 {
        let mut m = self.model.clone();
        let x = &self.eval_x * (grid.initial_scale() / self.fine.initial_scale());
        let out = sampler.sample(&mut m, x, grid, &mut SeededNoise::new(3)).unwrap();
        error(&out, &self.reference)
    }

    fn steps_for<S: Sampler>(&self, sampler: &S, nfe: usize) -> Option<usize> {
        (1..=nfe).find(|&n| {
            self.schedule
                .grid(n, Spacing::KARRAS)
                .is_ok_and(|g| sampler.model_calls(&g) == nfe)
        })
    }

    fn row<S: Sampler>(&self, label: &str, sampler: &S) {
        for nfe in [5, 10] {
            let Some(n) = self.steps_for(sampler, nfe) else {
                continue;
            };
            let karras = self.err(sampler, &self.schedule.grid(n, Spacing::KARRAS).unwrap());
            let uniform = self.err(sampler, &self.schedule.grid(n, Spacing::Trailing).unwrap());
            let table = |sig: Option<Vec<f64>>| {
                sig.and_then(|s| self.schedule.grid_from_sigmas(&s).ok())
                    .map_or("-".to_string(), |g| format!("{:.4}", self.err(sampler, &g)))
            };
            let ays = table(ays_sigmas(AysModel::Sd1, n, 1.0).ok());
            let gits = table(gits_sigmas(1.2, n, 1.0).ok());
            let t = Instant::now();
            let mut m = self.model.clone();
            let tuned = Tuner::new()
                .reference(Reference::Teacher)
                .tune(sampler, &mut m, self.tune_x.view(), &self.fine, nfe)
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let e = self.err(sampler, &tuned.grid);
            println!(
                "| {} | {label} | {nfe} | {karras:.4} | {uniform:.4} | {ays} | {gits} | **{e:.4}** | {} calls, {secs:.1} s |",
                self.name, tuned.report.model_calls
            );
        }
    }
}

impl Case {
    /// `tune::tune_solver`: a fitted multistep solver and its grid.
    fn fitted(&self) {
        for nfe in [5, 10] {
            let t = Instant::now();
            let mut m = self.model.clone();
            let (solver, tuned) = Tuner::new()
                .tune_solver(&mut m, self.tune_x.view(), &self.fine, nfe)
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let e = self.err(&solver, &tuned.grid);
            println!(
                "| {} | fitted solver (`tune_solver`) | {nfe} | - | - | - | - | **{e:.4}** | {} calls, {secs:.1} s |",
                self.name, tuned.report.model_calls
            );
        }
    }
}

fn main() {
    let _ = StdRng::seed_from_u64(0);
    for (name, model) in [("2-D, 3 modes", mixture_2d()), ("8-D, 4 modes", mixture_8d())] {
        let case = Case::new(name, model);
        let ddim = Ddim::new();
        let at = |n| case.err(&ddim, &case.schedule.grid(n, Spacing::KARRAS).unwrap());
        println!(
            "DDIM on Karras grids: 50 calls {:.4}, 200 calls {:.4}\n",
            at(50),
            at(200)
        );
        println!("| mixture | sampler | calls | Karras | uniform | AYS | GITS | tuned | tuning cost |");
        println!("|---|---|---|---|---|---|---|---|---|");
        case.row("DDIM", &ddim);
        case.row("DPM-Solver++ 2M", &DpmSolver::new());
        case.row(
            "DPM-Solver++ 3M",
            &DpmSolver::new().order(3).third_order(ThirdOrder::Corrected),
        );
        case.row("UniPC-3", &UniPc::new().order(3));
        case.row("iPNDM", &Ipndm::new());
        case.row("DEIS-3", &Deis::new().order(3));
        case.fitted();
    }
}
