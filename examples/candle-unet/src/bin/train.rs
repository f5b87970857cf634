//! Training a candle model on this crate's training targets, then sampling it and measuring its
//! likelihood with this crate.
//!
//!     cargo run --release --manifest-path examples/candle-unet/Cargo.toml --bin train
//!
//! The data are eight Gaussians on a circle (standard deviation 0.1 each, unit variance per
//! coordinate), drawn in-process. A small `candle-nn` MLP (`[x, sin/cos features of the noise
//! level]` -> 128 -> 128 -> 2, SiLU) is trained with candle's autograd and `AdamW` twice:
//!
//! * **flow matching** with [`Training::flow_matching`] (rectified flow, logit-normal
//!   timesteps, velocity target): each step draws a [`TrainingBatch`] (`noisy`, `levels`,
//!   `target`, `weights`), the network sees `noisy` and the flow sigma of each element, and the
//!   loss is `mean(weight * mean((out - target)^2))`, the expression of
//!   [`TrainingBatch::loss`] (checked against it);
//! * **EDM preconditioning** with [`EdmPrecond::training_example`] (log-normal sigmas,
//!   stratified, EDM weighting): the raw network `F` sees `c_in x` and `c_noise = ln(sigma) / 4`
//!   (the batch's `levels[i].t`).
//!
//! The losses are printed every 50 steps, next to the loss of the exact denoiser on the same
//! batches (the mixture's posterior mean, [`GaussianMixture::x0`]): neither loss can fall to 0,
//! the exact denoiser's is the floor, and training closes most of the gap to it. Then the flow
//! model, a [`Denoiser`] predicting
//! [`Prediction::Flow`], is sampled with Euler on a flow grid, and the raw EDM network, wrapped
//! in [`Preconditioned`], with Heun on Karras sigmas; the samples' share near a mode and their
//! moments are printed next to the same figures for the untrained networks. Last, the
//! probability-flow ODE's likelihood of held-out data in bits/dim ([`OdeNll`], exact trace by
//! finite differences through the denoiser), next to the data's true entropy.
//!
//! The program exits with an error if a loss did not fall (its excess over the exact denoiser's,
//! over the last 50 steps, at least 0.7 times that over the first 50), if candle's loss and
//! [`TrainingBatch::loss`] disagree, or if a trained model puts no more samples near a mode
//! than an untrained one. Seeds are fixed; it takes about 10 s in release on two cores.

use std::f64::consts::LN_2;
use std::time::Instant;

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW};
use diffusion_samplers::forward::{Density, Draw, Training, TrainingBatch};
use diffusion_samplers::karras_sigmas;
use diffusion_samplers::likelihood::{OdeNll, Trace};
use diffusion_samplers::precond::{EdmPrecond, Preconditioned};
use diffusion_samplers::prelude::*;
use ndarray::{Array2, ArrayView2, Axis, Ix2, s};
use rand::{Rng, SeedableRng, rngs::StdRng};

type CResult<T> = candle_core::Result<T>;

/// Modes on the circle, their standard deviation, and the circle's radius (unit variance per
/// coordinate: `R^2 / 2 + STD^2 = 1`).
const MODES: usize = 8;
const MODE_STD: f64 = 0.1;
const SIGMA_DATA: f64 = 1.0;
/// Frequencies of the noise-level features (sin and cos of each). A few low ones: with eight
/// (up to 11 rad per unit) the first layer sees mostly the noise level, and EDM training sits on
/// a plateau near `F = 0` (the exact network of unit-variance Gaussian data) for 1000 steps.
const FREQUENCIES: [f64; 2] = [1.0, std::f64::consts::SQRT_2];
const FEATURES: usize = 2 * FREQUENCIES.len();
const HIDDEN: usize = 128;
const BATCH: usize = 256;
const STEPS: usize = 600;
const REPORT: usize = 50;
const LR: f64 = 2e-3;
/// Samples drawn to judge a model, held-out points for the likelihood.
const SAMPLES: usize = 2000;
const HELD_OUT: usize = 500;

fn data() -> Result<GaussianMixture, Error> {
    let r = (2.0 * (SIGMA_DATA * SIGMA_DATA - MODE_STD * MODE_STD)).sqrt();
    let means = (0..MODES)
        .map(|k| {
            let a = 2.0 * std::f64::consts::PI * k as f64 / MODES as f64;
            vec![r * a.cos(), r * a.sin()]
        })
        .collect();
    GaussianMixture::new(
        vec![1.0 / MODES as f64; MODES],
        means,
        vec![vec![MODE_STD * MODE_STD; 2]; MODES],
    )
}

/// Sinusoidal features of a noise coordinate `c` (the flow sigma in `[0, 1]`, or EDM's
/// `c_noise = ln(sigma) / 4` in about `[-1.6, 1.1]`).
fn features(c: f64) -> impl Iterator<Item = f32> {
    FREQUENCIES
        .into_iter()
        .flat_map(move |w| [(w * c).sin() as f32, (w * c).cos() as f32])
}

/// `[x, features(c)]` -> 128 -> 128 -> 2 with SiLU, its weights as candle `Var`s for the
/// optimiser.
struct Mlp {
    layers: Vec<Linear>,
    vars: Vec<Var>,
    device: Device,
}

impl Mlp {
    /// PyTorch's `nn.Linear` initialisation, `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, from a seeded
    /// RNG (candle's own initialisers draw from an unseedable thread RNG on the CPU).
    fn new(seed: u64, device: &Device) -> CResult<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let sizes = [2 + FEATURES, HIDDEN, HIDDEN, 2];
        let (mut layers, mut vars) = (Vec::new(), Vec::new());
        for w in sizes.windows(2) {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut draw =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect() };
            let weight = Var::from_tensor(&Tensor::from_vec(
                draw(fan_in * fan_out),
                (fan_out, fan_in),
                device,
            )?)?;
            let bias = Var::from_tensor(&Tensor::from_vec(draw(fan_out), fan_out, device)?)?;
            layers.push(Linear::new(
                weight.as_tensor().clone(),
                Some(bias.as_tensor().clone()),
            ));
            vars.extend([weight, bias]);
        }
        Ok(Mlp {
            layers,
            vars,
            device: device.clone(),
        })
    }

    /// The network on a batch `x` (n, 2) with one noise coordinate per row.
    fn forward(&self, x: &Tensor, coords: &[f64]) -> CResult<Tensor> {
        let n = coords.len();
        let f: Vec<f32> = coords.iter().flat_map(|&c| features(c)).collect();
        let f = Tensor::from_vec(f, (n, FEATURES), &self.device)?;
        let mut h = Tensor::cat(&[x, &f], 1)?;
        for (k, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if k + 1 < self.layers.len() {
                h = h.silu()?;
            }
        }
        Ok(h)
    }

    /// ndarray in, candle in the middle, ndarray out: one noise coordinate for the whole batch.
    fn eval(&self, x: ArrayView2<'_, f32>, c: f64) -> Result<Array2<f32>, BoxError> {
        let input = to_tensor(x, &self.device)?;
        let out = self.forward(&input, &vec![c; x.nrows()])?.detach();
        to_array(&out)
    }
}

fn to_tensor(x: ArrayView2<'_, f32>, device: &Device) -> CResult<Tensor> {
    let data: Vec<f32> = x.iter().copied().collect(); // logical (row-major) order
    Tensor::from_vec(data, x.dim(), device)
}

fn to_array(t: &Tensor) -> Result<Array2<f32>, BoxError> {
    let dims = t.dims2()?;
    Ok(Array2::from_shape_vec(dims, t.flatten_all()?.to_vec1::<f32>()?)?)
}

/// The flow model as this crate sees it: velocity `eps - x0` at the level's flow sigma.
struct FlowModel<'a>(&'a Mlp);

impl Denoiser<f32, Ix2> for FlowModel<'_> {
    fn prediction(&self) -> Prediction {
        Prediction::Flow
    }

    fn denoise(&mut self, x: ArrayView2<'_, f32>, level: &NoiseLevel) -> Result<Array2<f32>, BoxError> {
        // The flow sigma (`alpha + sigma = 1` on flow grids; this also holds off them).
        self.0.eval(x, level.sigma / (level.alpha + level.sigma))
    }
}

/// The raw EDM network `F(c_in x; c_noise)`: the level's `t` is `c_noise`.
fn raw_network(
    mlp: &Mlp,
) -> impl FnMut(ArrayView2<'_, f32>, &NoiseLevel) -> Result<Array2<f32>, BoxError> + '_ {
    move |x, level| mlp.eval(x, level.t)
}

/// Trains `mlp` for [`STEPS`] AdamW steps on batches from `batch`; `coord` gives the network's
/// noise coordinate of an element's level, `optimal(level, draw, input, E[x0 | input])` the
/// exact denoiser's output (per coordinate). Fails if the loss's excess over the exact
/// denoiser's did not fall.
fn train(
    name: &str,
    mlp: &Mlp,
    gm: &GaussianMixture,
    mut batch: impl FnMut(ArrayView2<'_, f32>, &mut StdRng) -> Result<TrainingBatch<f32, Ix2>, Error>,
    coord: impl Fn(&NoiseLevel) -> f64,
    optimal: impl Fn(&NoiseLevel, f64, f64, f64) -> f64,
    seed: u64,
) -> Result<(), BoxError> {
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let params = ParamsAdamW {
        lr: LR,
        ..Default::default()
    };
    let mut opt = AdamW::new(mlp.vars.clone(), params)?;
    let mut window = Vec::with_capacity(REPORT);
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    let mut best = Array2::<f32>::zeros((BATCH, 2));
    let mut worst_check = 0.0f64;
    println!("{name}: {STEPS} AdamW steps (lr {LR}, batch {BATCH}); mean loss per {REPORT} steps:");
    for step in 0..STEPS {
        let x0: Array2<f32> = gm.sample(BATCH, &mut rng);
        let b = batch(x0.view(), &mut rng)?;
        let input = to_tensor(b.noisy.view(), &mlp.device)?;
        let coords: Vec<f64> = b.levels.iter().map(&coord).collect();
        let target = to_tensor(b.target.view(), &mlp.device)?;
        let weights: Vec<f32> = b.weights.iter().map(|&w| w as f32).collect();
        let weights = Tensor::from_vec(weights, BATCH, &mlp.device)?;
        let out = mlp.forward(&input, &coords)?;
        // TrainingBatch::loss on tensors: mean over the batch of weight * mean((out - target)^2).
        let loss = (out.sub(&target)?.sqr()?.mean(1)? * weights)?.mean_all()?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        if step % REPORT == 0 {
            // The crate's loss of the same output agrees with candle's.
            let reference = b.loss(to_array(&out.detach())?.view())?;
            let rel = (value - reference).abs() / reference.abs().max(1e-12);
            if rel > 1e-5 {
                return Err(format!("{name}: candle loss {value} vs TrainingBatch::loss {reference}").into());
            }
            worst_check = worst_check.max(rel);
        }
        opt.backward_step(&loss)?;
        // The exact denoiser's loss on the same batch: its output is E[target | input], from
        // the mixture's exact posterior mean E[x0 | input] at each element's level.
        for (i, level) in b.levels.iter().enumerate() {
            let x = b.noisy.slice(s![i..i + 1, ..]);
            let x0 = gm.x0(x, level)?;
            for j in 0..2 {
                best[[i, j]] = optimal(level, b.draws[i], f64::from(x[[0, j]]), f64::from(x0[[0, j]])) as f32;
            }
        }
        window.push((value, b.loss(best.view())?));
        if window.len() == REPORT {
            let loss = window.iter().map(|w| w.0).sum::<f64>() / REPORT as f64;
            let floor = window.iter().map(|w| w.1).sum::<f64>() / REPORT as f64;
            println!(
                "  steps {:>3}-{:>3}: loss {loss:.4}   exact denoiser {floor:.4}   excess {:.4}",
                step + 1 - REPORT,
                step,
                loss - floor
            );
            if first.is_nan() {
                first = loss - floor;
            }
            last = loss - floor;
            window.clear();
        }
    }
    println!(
        "  {:.2} s; candle's loss vs TrainingBatch::loss: max relative difference {worst_check:.1e}",
        start.elapsed().as_secs_f64()
    );
    if !last.is_finite() || last >= 0.7 * first {
        return Err(format!(
            "{name}: the loss did not fall: its excess over the exact denoiser's was {first:.4} in the first {REPORT} steps, {last:.4} in the last"
        )
        .into());
    }
    Ok(())
}

/// Share of samples within 3 standard deviations of their nearest mode, the number of modes
/// holding at least a quarter of their share, and the samples' mean and standard deviation
/// per coordinate.
struct Quality {
    near: f64,
    modes: usize,
    mean: [f64; 2],
    std: [f64; 2],
}

fn quality(gm: &GaussianMixture, x: &Array2<f32>) -> Quality {
    let mut counts = [0usize; MODES];
    let mut near = 0usize;
    for row in x.rows() {
        let p = [f64::from(row[0]), f64::from(row[1])];
        let k = gm.component_of(&p);
        let m = &gm.means()[k];
        if ((p[0] - m[0]).powi(2) + (p[1] - m[1]).powi(2)).sqrt() < 3.0 * MODE_STD {
            near += 1;
            counts[k] += 1;
        }
    }
    let n = x.nrows() as f64;
    let x = x.mapv(f64::from);
    let mean = x.mean_axis(Axis(0)).expect("samples");
    let std = x.std_axis(Axis(0), 0.0);
    Quality {
        near: near as f64 / n,
        modes: counts
            .iter()
            .filter(|&&c| c as f64 >= n / (4.0 * MODES as f64))
            .count(),
        mean: [mean[0], mean[1]],
        std: [std[0], std[1]],
    }
}

fn print_quality(what: &str, q: &Quality) {
    println!(
        "  {what:<28} within 3 std of a mode {:>5.1}%, modes covered {}/{MODES}, mean ({:+.3}, {:+.3}), std ({:.3}, {:.3})",
        100.0 * q.near,
        q.modes,
        q.mean[0],
        q.mean[1],
        q.std[0],
        q.std[1]
    );
}

fn main() -> Result<(), BoxError> {
    let start = Instant::now();
    let device = Device::Cpu;
    let gm = data()?;
    let fresh: Array2<f32> = gm.sample(SAMPLES, &mut StdRng::seed_from_u64(100));
    let held_out: Array2<f32> = gm.sample(HELD_OUT, &mut StdRng::seed_from_u64(101));
    println!(
        "data: {MODES} Gaussians (std {MODE_STD}) on a circle of radius {:.3}, per-coordinate std {SIGMA_DATA}",
        gm.means()[0][0]
    );
    print_quality("fresh data:", &quality(&gm, &fresh));

    // (a) Flow matching.
    let flow_net = Mlp::new(1, &device)?;
    let training = Training::flow_matching();
    train(
        "flow matching (rectified flow, logit-normal t, velocity target)",
        &flow_net,
        &gm,
        |x0, rng| training.batch(x0, rng),
        // The flow sigma of each element (the level's t is sigma * 1000).
        |l: &NoiseLevel| l.sigma,
        // x = (1 - s) x0 + s eps, target eps - x0 = (x - x0) / s.
        |l, _, x, x0| (x - x0) / l.sigma,
        2,
    )?;

    // (b) EDM preconditioning.
    let edm_net = Mlp::new(3, &device)?;
    let p = EdmPrecond::edm(SIGMA_DATA);
    let weighting = LossWeighting::Edm {
        sigma_data: SIGMA_DATA,
    };
    train(
        "EDM (log-normal sigma, stratified, c_in x and c_noise = ln(sigma)/4)",
        &edm_net,
        &gm,
        |x0, rng| p.training_example(x0, Density::edm(), Draw::stratified(), weighting, rng),
        |l: &NoiseLevel| l.t,
        // The input is c_in (x0 + sigma eps), the target (x0 - c_skip (x0 + sigma eps)) / c_out.
        |l, sigma, x, x0| (x0 - p.c_skip(sigma) * x / l.alpha) / p.c_out(sigma),
        4,
    )?;

    // Sampling with the crate, trained networks next to untrained ones (the same initial weights).
    let flow_grid = FlowSchedule::new(1000)?.grid(50, Spacing::Linspace)?;
    let ve_grid = Grid::ve(&karras_sigmas(18, 0.002, 80.0, 7.0)?)?;
    let (flow_untrained, edm_untrained) = (Mlp::new(1, &device)?, Mlp::new(3, &device)?);
    let sample_flow = |mlp: &Mlp| -> Result<Array2<f32>, BoxError> {
        let x: Array2<f32> = flow_grid.initial_sample((SAMPLES, 2), &mut SeededNoise::new(7))?;
        Ok(Euler::new().sample(&mut FlowModel(mlp), x, &flow_grid, &mut SeededNoise::new(8))?)
    };
    let sample_edm = |mlp: &Mlp| -> Result<Array2<f32>, BoxError> {
        let x: Array2<f32> = ve_grid.initial_sample((SAMPLES, 2), &mut SeededNoise::new(7))?;
        let mut model = Preconditioned::new(raw_network(mlp), p);
        Ok(Heun::new().sample(&mut model, x, &ve_grid, &mut SeededNoise::new(8))?)
    };
    let t = Instant::now();
    println!("sampling {SAMPLES} points:");
    let runs = [
        (
            "flow, Euler 50 steps",
            sample_flow(&flow_net)?,
            sample_flow(&flow_untrained)?,
        ),
        (
            "EDM, Heun 18 steps (35 calls)",
            sample_edm(&edm_net)?,
            sample_edm(&edm_untrained)?,
        ),
    ];
    let mut pairs = Vec::new();
    for (what, trained, untrained) in &runs {
        let (q, q0) = (quality(&gm, trained), quality(&gm, untrained));
        print_quality(&format!("{what}, trained:"), &q);
        print_quality(&format!("{what}, untrained:"), &q0);
        pairs.push((what, q.near, q0.near));
    }
    println!("  {:.2} s", t.elapsed().as_secs_f64());

    // Likelihood of held-out data by the probability-flow ODE, exact trace (2 dimensions).
    let t = Instant::now();
    let exact = gm.log_density(held_out.view(), &NoiseLevel::CLEAN)?;
    let truth = -exact.iter().sum::<f64>() / (exact.len() as f64 * 2.0 * LN_2);
    println!("likelihood of {HELD_OUT} held-out points (the data's own: {truth:.3} bits/dim):");
    let nll = OdeNll::new().trace(Trace::Exact);
    // The flow grid starts at flow sigma 1 (sigma_ve infinite): integrate up to sigma_ve 1000.
    let flow_nll = nll.clone().sigma_max(1e3);
    for (what, result) in [
        (
            // The exact denoiser through the same finite differences: what the ODE gives a
            // perfect model, next to the data's own figure.
            "exact mixture, flow grid",
            flow_nll.bits_per_dim(
                &mut gm.clone(),
                &flow_grid,
                held_out.view(),
                &mut SeededNoise::new(1),
            ),
        ),
        (
            "exact mixture, VE grid",
            nll.bits_per_dim(
                &mut gm.clone(),
                &ve_grid,
                held_out.view(),
                &mut SeededNoise::new(1),
            ),
        ),
        (
            "flow, trained",
            flow_nll.bits_per_dim(
                &mut FlowModel(&flow_net),
                &flow_grid,
                held_out.view(),
                &mut SeededNoise::new(1),
            ),
        ),
        (
            "flow, untrained",
            flow_nll.bits_per_dim(
                &mut FlowModel(&flow_untrained),
                &flow_grid,
                held_out.view(),
                &mut SeededNoise::new(1),
            ),
        ),
        (
            "EDM, trained",
            nll.bits_per_dim(
                &mut Preconditioned::new(raw_network(&edm_net), p),
                &ve_grid,
                held_out.view(),
                &mut SeededNoise::new(1),
            ),
        ),
        (
            "EDM, untrained",
            nll.bits_per_dim(
                &mut Preconditioned::new(raw_network(&edm_untrained), p),
                &ve_grid,
                held_out.view(),
                &mut SeededNoise::new(1),
            ),
        ),
    ] {
        match result {
            Ok(r) => println!(
                "  {what:<24} {:.3} ± {:.3} bits/dim ({} ODE evaluations, {} steps + {} rejected, {} model calls)",
                r.mean(),
                r.std_error(),
                r.evaluations,
                r.steps,
                r.rejected,
                r.calls
            ),
            Err(e) => println!("  {what:<24} failed: {e}"),
        }
    }
    println!("  {:.2} s", t.elapsed().as_secs_f64());
    println!("total {:.1} s", start.elapsed().as_secs_f64());

    for (what, trained, untrained) in pairs {
        if trained <= untrained + 0.2 {
            return Err(format!(
                "{what}: the trained model puts {:.1}% near a mode, the untrained one {:.1}%",
                100.0 * trained,
                100.0 * untrained
            )
            .into());
        }
    }
    Ok(())
}
