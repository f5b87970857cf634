//! Error against model calls (NFE) for every sampler, on an analytic 2-D Gaussian mixture.
//!
//!     cargo run --release --example sampler_table
//!
//! The model is the exact denoiser of a 3-mode mixture (epsilon prediction) on Stable
//! Diffusion's schedule; every sampler walks a Karras grid with as many steps as fit in the NFE
//! budget (two-stage samplers get half as many). Two numbers per cell:
//!
//! * ODE: the mean distance of the samples to the exact end point of the probability-flow ODE
//!   from the same starting noise (a 2000-step UniPC-3 run): how well a deterministic solver
//!   integrates. Stochastic samplers show `-`.
//! * SW2: the sliced Wasserstein-2 distance from the samples to fresh data (4000 points each,
//!   64 projections), minus nothing: the floor (two fresh data sets) is printed below the table.
//!
//! The markdown table is what docs/samplers.md shows.

use diffusion_samplers::prelude::*;
use diffusion_samplers::{
    Deis, Denoiser, Dpm2, Dpm2Ancestral, DpmAdaptive, DpmFast, DpmPp2sAncestral, DpmPpSde,
    DpmSolverSinglestep, EdmDeis, EdmIpndm, ErSde, GradientEstimation, Heun, HeunPp2, Ipndm, Lcm, Lms, Pndm,
    ResMultistep, Restart, SaSolver, Seeds2, Seeds3, Tcd, ThirdOrder, UniPc,
};
use ndarray::{Array1, Array2, Axis};
use rand::{Rng, SeedableRng, rngs::StdRng};

const NFES: [usize; 4] = [5, 10, 20, 50];
const N: usize = 4000;

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.5, 0.3, 0.2],
        vec![vec![-1.0, 0.0], vec![0.75, 0.75], vec![0.5, -1.0]],
        vec![vec![0.02, 0.02], vec![0.02, 0.02], vec![0.02, 0.02]],
    )
    .unwrap()
}

fn sliced_w2(a: &Array2<f64>, b: &Array2<f64>, rng: &mut StdRng) -> f64 {
    let mut total = 0.0;
    let k = 64;
    for _ in 0..k {
        let th: f64 = rng.random::<f64>() * std::f64::consts::TAU;
        let dir = Array1::from(vec![th.cos(), th.sin()]);
        let mut pa: Vec<f64> = a.dot(&dir).to_vec();
        let mut pb: Vec<f64> = b.dot(&dir).to_vec();
        pa.sort_by(f64::total_cmp);
        pb.sort_by(f64::total_cmp);
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / pa.len() as f64;
    }
    (total / k as f64).sqrt()
}

struct Bench {
    schedule: NoiseSchedule,
    x: Array2<f64>,
    data: Array2<f64>,
}

impl Bench {
    /// The largest grid whose cost fits in `nfe` calls.
    fn grid_for<S: Sampler>(&self, sampler: &S, nfe: usize) -> Option<Grid> {
        (1..=nfe)
            .rev()
            .filter_map(|n| self.schedule.grid(n, Spacing::KARRAS).ok())
            .find(|g| sampler.model_calls(g) <= nfe)
    }

    fn run<S: Sampler>(&self, sampler: &S, grid: &Grid) -> Array2<f64> {
        let mut model = mixture();
        // Start every run from the same noise at the grid's first level (sigma_max is the same for
        // every Karras grid of this schedule).
        let x = &self.x * grid.initial_scale();
        sampler
            .sample(&mut model, x, grid, &mut StdRng::seed_from_u64(11))
            .unwrap()
    }

    fn row<S: Sampler>(&self, name: &str, sampler: &S, deterministic: bool, reference: &Array2<f64>) {
        let mut cells = Vec::new();
        for nfe in NFES {
            let Some(grid) = self.grid_for(sampler, nfe) else {
                cells.push("-".to_string());
                continue;
            };
            let out = self.run(sampler, &grid);
            let sw2 = sliced_w2(&out, &self.data, &mut StdRng::seed_from_u64(5));
            let ode = if deterministic {
                let d = (&out - reference)
                    .mapv(|v| v * v)
                    .sum_axis(Axis(1))
                    .mapv(f64::sqrt);
                format!("{:.3}", d.mean().unwrap())
            } else {
                "-".to_string()
            };
            cells.push(format!("{ode} / {sw2:.3}"));
        }
        println!("| {name} | {} |", cells.join(" | "));
    }
}

fn main() {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let mut rng = StdRng::seed_from_u64(2026);
    let x: Array2<f64> = standard_normal((N, 2), &mut rng);
    let data: Array2<f64> = mixture().sample(N, &mut rng);
    let floor = sliced_w2(
        &mixture().sample(N, &mut rng),
        &data,
        &mut StdRng::seed_from_u64(5),
    );
    let bench = Bench { schedule, x, data };
    let ref_grid = bench.schedule.grid(1000, Spacing::KARRAS).unwrap();
    let reference = bench.run(&UniPc::new().order(3), &ref_grid);

    println!("| sampler | NFE 5 (ODE / SW2) | NFE 10 | NFE 20 | NFE 50 |");
    println!("|---|---|---|---|---|");
    bench.row("DDIM (= Euler)", &Ddim::new(), true, &reference);
    bench.row("Heun", &Heun::new(), true, &reference);
    bench.row("Restart (AUTOMATIC1111)", &Restart::new(), false, &reference);
    bench.row("DPM-2", &Dpm2::new(), true, &reference);
    bench.row("LMS (order 4)", &Lms::new(), true, &reference);
    bench.row("PLMS", &Pndm::new().skip_prk_steps(true), true, &reference);
    bench.row("PNDM", &Pndm::new(), true, &reference);
    bench.row("iPNDM (order 4)", &Ipndm::new(), true, &reference);
    bench.row("DEIS-2", &Deis::new(), true, &reference);
    bench.row("DEIS-3", &Deis::new().order(3), true, &reference);
    bench.row("DPM-Solver++ 2M", &DpmSolver::new(), true, &reference);
    bench.row("DPM-Solver++ 3M", &DpmSolver::new().order(3), true, &reference);
    bench.row(
        "DPM-Solver++ 3M (corrected)",
        &DpmSolver::new().order(3).third_order(ThirdOrder::Corrected),
        true,
        &reference,
    );
    bench.row(
        "DPM-Solver++ 2S (eta 0)",
        &DpmPp2sAncestral::new().eta(0.0),
        true,
        &reference,
    );
    bench.row(
        "DPM-Solver++ singlestep 2",
        &DpmSolverSinglestep::new(),
        true,
        &reference,
    );
    bench.row(
        "DPM-Solver++ singlestep 3",
        &DpmSolverSinglestep::new().order(3),
        true,
        &reference,
    );
    bench.row("UniPC-2", &UniPc::new(), true, &reference);
    bench.row("UniPC-3", &UniPc::new().order(3), true, &reference);
    bench.row(
        "UniPC-2, noise form",
        &UniPc::new().predict_x0(false),
        true,
        &reference,
    );
    bench.row("DDPM", &Ddpm::new(), false, &reference);
    bench.row("Euler ancestral", &EulerAncestral::new(), false, &reference);
    bench.row("DPM-2 ancestral", &Dpm2Ancestral::new(), false, &reference);
    bench.row(
        "DPM-Solver++ 2S ancestral",
        &DpmPp2sAncestral::new(),
        false,
        &reference,
    );
    bench.row(
        "DPM-Solver++ 2M SDE",
        &DpmSolver::new().sde(true),
        false,
        &reference,
    );
    bench.row(
        "DPM-Solver++ 3M SDE",
        &DpmSolver::new().order(3).sde(true),
        false,
        &reference,
    );
    bench.row("Euler, churn 10", &Euler::new().s_churn(10.0), false, &reference);
    bench.row("LCM", &Lcm::new().boundary_condition(None), false, &reference);
    bench.row("TCD (gamma 0.3)", &Tcd::new(), false, &reference);
    // ComfyUI's and k-diffusion's own solvers.
    bench.row("HeunPP2", &HeunPp2::new(), true, &reference);
    bench.row("iPNDM (EDM, ComfyUI ipndm)", &EdmIpndm::new(), true, &reference);
    bench.row(
        "iPNDM-v (ComfyUI ipndm_v)",
        &EdmIpndm::new().variable_step(true),
        true,
        &reference,
    );
    bench.row("DEIS-tAB 3 (ComfyUI deis)", &EdmDeis::new(), true, &reference);
    bench.row(
        "gradient estimation",
        &GradientEstimation::new(),
        true,
        &reference,
    );
    bench.row("res_multistep", &ResMultistep::new(), true, &reference);
    bench.row("exp_heun_2_x0", &Seeds2::exp_heun(), true, &reference);
    bench.row(
        "DPM-Solver-fast (ends at sigma_min)",
        &DpmFast::new(),
        true,
        &reference,
    );
    bench.row(
        "res_multistep ancestral",
        &ResMultistep::ancestral(),
        false,
        &reference,
    );
    bench.row(
        "exp_heun_2_x0_sde",
        &Seeds2::exp_heun().eta(1.0),
        false,
        &reference,
    );
    bench.row(
        "DPM++ SDE (independent noise)",
        &DpmPpSde::new(),
        false,
        &reference,
    );
    bench.row("SEEDS-2", &Seeds2::new(), false, &reference);
    bench.row("SEEDS-3", &Seeds3::new(), false, &reference);
    bench.row("ER-SDE", &ErSde::new(), false, &reference);
    bench.row("SA-Solver (tau 1)", &SaSolver::new(), false, &reference);
    bench.row(
        "SA-Solver PECE (tau 1)",
        &SaSolver::new().pece(true),
        false,
        &reference,
    );
    println!("\nSW2 floor (two independent data sets of {N} points): {floor:.3}");
    // The adaptive solver chooses its own steps: its calls for a tolerance.
    println!(
        "\n| DPM adaptive (ends at sigma_min) | rtol 0.05, atol 0.0078 (default) | 1e-2 | 1e-3 | 1e-4 |"
    );
    println!("|---|---|---|---|---|");
    let grid = bench.schedule.grid(10, Spacing::KARRAS).unwrap();
    let cells: Vec<String> = [(0.05, 0.0078), (1e-2, 1e-2), (1e-3, 1e-3), (1e-4, 1e-4)]
        .iter()
        .map(|&(rtol, atol)| {
            let sampler = DpmAdaptive::new().rtol(rtol).atol(atol);
            let mut model = mixture();
            let x = &bench.x * grid.initial_scale();
            let mut run = sampler
                .start(x, &grid, Prediction::Epsilon, StdRng::seed_from_u64(11))
                .unwrap();
            while let Some(req) = run.request() {
                let out = model.denoise(req.x.view(), &req.level).unwrap();
                run.respond(out).unwrap();
            }
            let nfe = run.state().info().nfe;
            let out = run.into_sample();
            let d = (&out - &reference)
                .mapv(|v| v * v)
                .sum_axis(Axis(1))
                .mapv(f64::sqrt);
            let sw2 = sliced_w2(&out, &bench.data, &mut StdRng::seed_from_u64(5));
            format!("NFE {nfe}: {:.3} / {sw2:.3}", d.mean().unwrap())
        })
        .collect();
    println!("| ODE / SW2 | {} |", cells.join(" | "));
}
