//! Three training recipes for the same 2-D MLP on the eight-Gaussians data, each written with
//! this crate's training side, then sampled and scored in bits per dimension:
//!
//!     cargo run --release --example training            # ~1 min on 2 cores
//!     cargo run --release --example training -- --steps 500   # a quick look
//!
//! * DDPM: epsilon prediction on DDPM's linear schedule (`Training` on `Process::Discrete`,
//!   uniform timesteps);
//!   scored with the variational bound (`likelihood::Vlb`, 1000 calls) and the ODE likelihood.
//! * Flow matching (SD3 / Flux): `Training::flow_matching()` — rectified flow, logit-normal
//!   timesteps, velocity target; sampled with Euler / Heun on a flow grid.
//! * EDM: the raw network behind `precond::EdmPrecond` (`training_example` with EDM's
//!   log-normal sigmas, stratified, and `LossWeighting::Edm`), sampled through the
//!   `Preconditioned` wrapper with Heun on Karras sigmas.
//!
//! The data's own density is known (a mixture of eight Gaussians, sd 0.1, on a circle of radius
//! 1.4), so the table prints its exact NLL of the held-out points next to each model's ODE
//! NLL (probability-flow ODE, exact 2-D trace through finite differences of the model) and
//! the variational bound, with the model calls each took and the sliced W2 distance of 20-call
//! samples to fresh data.

#[allow(dead_code, reason = "shared with the tests, which use other parts")]
mod models;

use std::time::Instant;

use diffusion_samplers::analytic::GaussianMixture;
use diffusion_samplers::forward::{Density, Draw, Process, Training, TrainingBatch};
use diffusion_samplers::likelihood::{Decoder, OdeNll, ReverseVariance, Trace, Vlb};
use diffusion_samplers::precond::{EdmPrecond, Preconditioned};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{BoxError, FlowSchedule, LossWeighting, karras_sigmas};
use models::data2d::{Toy, eight_centers, sliced_w2};
use models::mlp::Mlp;
use models::nn::{Adam, Module, weighted_mse};
use ndarray::{Array2, ArrayView2, Ix2};
use rand::{SeedableRng, rngs::StdRng};

/// The MLP's time input for an EDM network level (`t = c_noise = ln(sigma) / 4`), mapped to the
/// [0, 1000] range its sinusoidal features were sized for.
fn edm_time(c_noise: f64) -> f64 {
    250.0 * (c_noise + 2.0)
}

/// Draws one training batch for clean samples.
type BatchFn<'a> = dyn FnMut(&Array2<f32>, &mut StdRng) -> TrainingBatch<f32, Ix2> + 'a;

/// Trains `model` for `steps` Adam steps on batches from `batch` (cosine learning-rate decay);
/// `time` maps a batch level to the MLP's time input. Returns the mean loss of the first and
/// last 10% of steps.
fn train(
    model: &mut Mlp<f32>,
    steps: usize,
    rng: &mut StdRng,
    batch: &mut BatchFn<'_>,
    time: &dyn Fn(&NoiseLevel) -> f64,
) -> (f64, f64) {
    let mut opt = Adam::new(2e-3);
    let tail = (steps / 10).max(1);
    let (mut first, mut last) = (0.0, 0.0);
    for step in 0..steps {
        let frac = step as f64 / steps as f64;
        opt.lr = 2e-3 * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()));
        let x0 = Toy::EightGaussians.sample(512, rng);
        let b = batch(&x0, rng);
        let t: Vec<f64> = b.levels.iter().map(time).collect();
        model.zero_grad();
        let out = model.forward(b.noisy.view(), &t);
        let (loss, g) = weighted_mse(&out, &b.target, &b.weights);
        model.backward(g.view());
        opt.step(model);
        if step < tail {
            first += loss / tail as f64;
        }
        if step + tail >= steps {
            last += loss / tail as f64;
        }
    }
    (first, last)
}

fn main() -> Result<(), BoxError> {
    let steps: usize = std::env::args()
        .skip_while(|a| a != "--steps")
        .nth(1)
        .map_or(Ok(4000), |s| s.parse())?;
    let truth = GaussianMixture::new(
        vec![1.0; 8],
        eight_centers().iter().map(|&(x, y)| vec![x, y]).collect(),
        vec![vec![0.01, 0.01]; 8],
    )?;
    let mut rng = StdRng::seed_from_u64(0);
    let held_out: Array2<f32> = Toy::EightGaussians.sample(256, &mut StdRng::seed_from_u64(1));
    let fresh = Toy::EightGaussians.sample(2000, &mut StdRng::seed_from_u64(2));
    let exact_nll = truth
        .log_density(held_out.view(), &NoiseLevel::CLEAN)?
        .iter()
        .map(|l| -l / (2.0 * std::f64::consts::LN_2))
        .sum::<f64>()
        / held_out.nrows() as f64;
    let x = standard_normal((2000, 2), &mut SeededNoise::new(3));
    let sw2 = |out: ArrayView2<'_, f32>| sliced_w2(out, fresh.view(), 64, &mut StdRng::seed_from_u64(9));
    let ode = OdeNll::new().trace(Trace::Exact).tolerances(1e-4, 1e-4);
    println!(
        "eight Gaussians, {steps} steps of 512 per recipe; exact NLL of the 256 held-out points: {exact_nll:.3} bits/dim\n"
    );
    println!(
        "| recipe | loss first / last 10% | SW2 at 20 calls | ODE NLL (bits/dim) | ODE calls | VLB (bits/dim) | VLB calls | train s |"
    );
    println!("|---|---|---|---|---|---|---|---|");

    // 1. DDPM: epsilon prediction, uniform timesteps.
    let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    // The discrete schedule through `Training`: uniform timesteps, as `ForwardProcess` draws them.
    let ddpm_training = Training::new(Process::Discrete(schedule.clone()), Prediction::Epsilon);
    let mut ddpm = Mlp::<f32>::new(Prediction::Epsilon, 128, 3, &mut rng);
    let start = Instant::now();
    let (first, last) = train(
        &mut ddpm,
        steps,
        &mut rng,
        &mut |x0, rng| ddpm_training.batch(x0.view(), rng).expect("a batch"),
        &|l| l.t,
    );
    let secs = start.elapsed().as_secs_f64();
    let grid = schedule.grid(20, Spacing::KARRAS)?;
    let out = DpmSolver::new().sample(&mut ddpm, x.clone(), &grid, &mut SeededNoise::new(4))?;
    let vp = schedule
        .grid(10, Spacing::Linspace)?
        .with_final(FinalLevel::FirstTimestep);
    let o = ode.bits_per_dim(&mut ddpm, &vp, held_out.view(), &mut SeededNoise::new(5))?;
    let v = Vlb::new()
        .decoder(Decoder::Gaussian)
        .variance(ReverseVariance::FixedLarge)
        .bits_per_dim(&mut ddpm, &schedule, held_out.view(), &mut SeededNoise::new(6))?;
    println!(
        "| DDPM (epsilon, DPM++ 2M) | {first:.3} / {last:.3} | {:.3} | {:.3} ± {:.3} | {} | {:.3} ± {:.3} | {} | {secs:.1} |",
        sw2(out.view()),
        o.mean(),
        o.std_error(),
        o.calls,
        v.mean(),
        v.std_error(),
        v.calls
    );

    // 2. Flow matching: SD3's recipe.
    let training = Training::flow_matching();
    let mut flow = Mlp::<f32>::new(Prediction::Flow, 128, 3, &mut rng);
    let start = Instant::now();
    let (first, last) = train(
        &mut flow,
        steps,
        &mut rng,
        &mut |x0, rng| training.batch(x0.view(), rng).expect("a batch"),
        &|l| l.t,
    );
    let secs = start.elapsed().as_secs_f64();
    let fs = FlowSchedule::new(1000)?;
    let grid = fs.grid(10, Spacing::Linspace)?;
    let out = Heun::new().sample(&mut flow, x.clone(), &grid, &mut SeededNoise::new(4))?;
    let fgrid = fs.grid_from_sigmas(&[0.999, 1e-3])?;
    let o = ode.bits_per_dim(&mut flow, &fgrid, held_out.view(), &mut SeededNoise::new(5))?;
    println!(
        "| flow matching (velocity, Heun) | {first:.3} / {last:.3} | {:.3} | {:.3} ± {:.3} | {} | – | – | {secs:.1} |",
        sw2(out.view()),
        o.mean(),
        o.std_error(),
        o.calls
    );

    // 3. EDM preconditioning: the MLP is the raw network F.
    let sigma_data = 1.0;
    let p = EdmPrecond::edm(sigma_data);
    let mut raw = Mlp::<f32>::new(Prediction::Sample, 128, 3, &mut rng);
    let start = Instant::now();
    let (first, last) = train(
        &mut raw,
        steps,
        &mut rng,
        &mut |x0, rng| {
            p.training_example(
                x0.view(),
                Density::edm(),
                Draw::stratified(),
                LossWeighting::Edm { sigma_data },
                rng,
            )
            .expect("a batch")
        },
        &|l| edm_time(l.t),
    );
    let secs = start.elapsed().as_secs_f64();
    let net = move |x: ArrayView2<'_, f32>, l: &NoiseLevel| -> Result<Array2<f32>, BoxError> {
        let t = vec![edm_time(l.t); x.nrows()];
        Ok(raw.forward(x, &t))
    };
    let mut edm = Preconditioned::new(net, p);
    let grid = Grid::ve(&karras_sigmas(10, 0.002, 80.0, 7.0)?)?;
    let x_ve = grid.initial_sample::<f32, _, _, _>((2000, 2), &mut SeededNoise::new(3))?;
    let out = Heun::new().sample(&mut edm, x_ve, &grid, &mut SeededNoise::new(4))?;
    let vegrid = Grid::ve(&[80.0, 0.002])?;
    let o = ode.bits_per_dim(&mut edm, &vegrid, held_out.view(), &mut SeededNoise::new(5))?;
    println!(
        "| EDM (preconditioned, Heun) | {first:.3} / {last:.3} | {:.3} | {:.3} ± {:.3} | {} | – | – | {secs:.1} |",
        sw2(out.view()),
        o.mean(),
        o.std_error(),
        o.calls
    );
    println!(
        "\nSW2 between two fresh data sets: {:.3}. The VLB bounds the NLL of the discrete DDPM chain; the ODE NLL is the exact likelihood of the probability-flow model (solver tolerance 1e-4), a different model once the network is imperfect.",
        sw2(Toy::EightGaussians
            .sample(2000, &mut StdRng::seed_from_u64(8))
            .view())
    );
    Ok(())
}
