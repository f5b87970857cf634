//! A small convolutional U-Net trained from scratch in pure Rust on procedurally generated
//! 16x16 shapes, then sampled with DPM-Solver++(2M) and DDIM.
//!
//!     cargo run --release --example unet              # 15000 steps: about 9 minutes on 2 cores
//!     cargo run --release --example unet -- --quick   # 1500 steps: about a minute
//!     cargo run --release --example unet -- --load target/unet/unet.safetensors
//!     cargo run --release --example unet -- --load target/unet/unet.safetensors --budget
//!
//! The model (`examples/models/unet.rs`): residual blocks of GroupNorm, SiLU and 3x3
//! convolutions with the timestep embedding added in each block, two average-pool downsamplings,
//! nearest upsampling, skip connections by concatenation; v-prediction on a scaled-linear
//! schedule; hand-written backward pass and Adam (gradient-checked in `tests/gradients.rs`).
//! Training shows a progress bar; the weights are saved as `safetensors` (names in diffusers'
//! style, readable from Python) and read back before sampling. Writes
//! `target/figures/unet.png` (real images, DPM-Solver++ 20 steps, DDIM 50 steps) and prints
//! statistics of real and generated images side by side.
//!
//! After sampling it prints the likelihood of 16 held-out images quantised to 8 bits, in
//! bits/dim: DDPM's variational bound and the probability-flow ODE (`likelihood`), with their
//! model calls and seconds.
//!
//! `--budget`: 8 model calls instead of 20 or 50. Grids for DPM-Solver++(2M) and UniPC-3 at 8
//! calls are tuned on this model (`tune::Tuner`, 64 starting noises, a 100-step Karras fine
//! grid), a solver is fitted with its grid (`Tuner::tune_solver`, 32 noises, 400 tries), and all
//! are compared with 8-call Karras grids and DDIM at 50 calls on 2048 fresh noises: the image
//! statistics, their L1 distance to the real data's, and the tuning cost. Writes
//! `target/figures/unet_budget.png`.

#[allow(dead_code, reason = "shared with the tests, which use other parts")]
mod models;

use std::path::PathBuf;
use std::time::Instant;

use diffusion_samplers::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use models::nn::{Adam, Module};
use models::plot::{BLACK, Canvas, WHITE};
use models::shapes::{Stats, shapes, stats};
use models::unet::{UNet, train_step_parallel};
use ndarray::s;
use rand::{SeedableRng, rngs::StdRng};

const SIDE: usize = 16;

struct Args {
    budget: bool,
    steps: usize,
    batch: usize,
    base: usize,
    load: Option<PathBuf>,
    weights: PathBuf,
    out: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        budget: false,
        steps: 15_000,
        batch: 32,
        base: 16,
        load: None,
        weights: "target/unet/unet.safetensors".into(),
        out: "target/figures/unet.png".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--quick" => a.steps = 1500,
            "--budget" => a.budget = true,
            "--steps" => a.steps = it.next().and_then(|v| v.parse().ok()).expect("--steps N"),
            "--batch" => a.batch = it.next().and_then(|v| v.parse().ok()).expect("--batch N"),
            "--base" => a.base = it.next().and_then(|v| v.parse().ok()).expect("--base C"),
            "--load" => a.load = Some(it.next().expect("--load PATH").into()),
            "--weights" => a.weights = it.next().expect("--weights PATH").into(),
            "--out" => a.out = it.next().expect("--out PATH").into(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn print_stats(names: &[&str], all: &[Stats]) {
    println!("| statistic | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(names.len()));
    let row = |label: &str, f: &dyn Fn(&Stats) -> f64| {
        let cells: Vec<String> = all.iter().map(|s| format!("{:.3}", f(s))).collect();
        println!("| {label} | {} |", cells.join(" | "));
    };
    row("foreground fraction", &|s| s.foreground);
    for k in 0..4 {
        let label = if k == 3 {
            "3+ components".to_string()
        } else {
            format!("{k} components")
        };
        row(&label, &|s| s.n_components[k]);
    }
    let mut lo = 1;
    for (b, &(hi, _)) in all[0].sizes.iter().enumerate() {
        let label = if hi == usize::MAX {
            format!("component size > {}", lo - 1)
        } else {
            format!("component size {lo}-{hi}")
        };
        row(&label, &|s| s.sizes[b].1);
        lo = hi.saturating_add(1);
    }
}

/// Side-by-side panels of `rows` rows of 8 images each, titled.
fn figure(panels: &[(String, ndarray::Array4<f32>)], rows: usize) -> Canvas {
    let scale = 4;
    let tile = (SIDE * scale + 4) as i64;
    let block = 8 * tile + 20;
    let mut fig = Canvas::new(
        panels.len() * block as usize + 10,
        rows * tile as usize + 30,
        WHITE,
    );
    for (p, (name, imgs)) in panels.iter().enumerate() {
        let x0 = 10 + p as i64 * block;
        fig.text(x0, 6, name, 2, BLACK);
        for i in 0..rows * 8 {
            let (r, c) = ((i / 8) as i64, (i % 8) as i64);
            fig.image(
                x0 + c * tile,
                24 + r * tile,
                imgs.slice(s![i, 0, .., ..]),
                scale as i64,
            );
        }
    }
    fig
}

/// The L1 distance between two images' statistics (foreground fraction, component counts,
/// component sizes).
fn stats_distance(a: &Stats, b: &Stats) -> f64 {
    let mut d = (a.foreground - b.foreground).abs();
    d += a
        .n_components
        .iter()
        .zip(&b.n_components)
        .map(|(p, q)| (p - q).abs())
        .sum::<f64>();
    d += a
        .sizes
        .iter()
        .zip(&b.sizes)
        .map(|(p, q)| (p.1 - q.1).abs())
        .sum::<f64>();
    d
}

/// `--budget`: a tuned 8-call grid against the 8-call Karras grid and DDIM at 50 calls.
fn budget(model: &mut UNet<f32>, schedule: &NoiseSchedule, args: &Args) -> Result<(), BoxError> {
    use diffusion_samplers::tune::Tuner;
    let n = 2048;
    let start = |grid: &Grid, n: usize, seed: u64| {
        grid.initial_sample::<f32, _, _, _>((n, 1, SIDE, SIDE), &mut SeededNoise::new(seed))
    };
    let fine = schedule.grid(100, Spacing::KARRAS)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs: Vec<(String, ndarray::Array4<f32>)> = Vec::new();
    let ddim_grid = schedule.grid(50, Spacing::Trailing)?;
    runs.push((
        "DDIM, 50 calls".into(),
        Ddim::new().sample(
            model,
            start(&ddim_grid, n, 5)?,
            &ddim_grid,
            &mut SeededNoise::new(9),
        )?,
    ));
    let karras = schedule.grid(8, Spacing::KARRAS)?;
    for (name, sampler) in [
        ("DPM++ 2M", AnySampler::from(DpmSolver::new())),
        ("UniPC-3", AnySampler::from(UniPc::new().order(3))),
    ] {
        runs.push((
            format!("{name}, 8, Karras"),
            sampler.sample(model, start(&karras, n, 5)?, &karras, &mut SeededNoise::new(9))?,
        ));
        let clock = Instant::now();
        let tuned = Tuner::new().tune(&sampler, model, start(&fine, 64, 11)?.view(), &fine, 8)?;
        println!(
            "{name}: tuned an 8-call grid on 64 noises: {} model calls ({} teacher, {} runs of 8) in {:.1} s on {threads} threads",
            tuned.report.model_calls,
            tuned.report.teacher_calls,
            tuned.report.runs,
            clock.elapsed().as_secs_f64()
        );
        println!("  {}", diffusion_samplers::tune::python_sigmas(&tuned.grid));
        runs.push((
            format!("{name}, 8, tuned"),
            sampler.sample(
                model,
                start(&tuned.grid, n, 5)?,
                &tuned.grid,
                &mut SeededNoise::new(9),
            )?,
        ));
    }
    // A solver fitted with its grid, on a smaller batch and budget (each try: 8 calls on 32).
    let clock = Instant::now();
    let (fitted, fitted_grid) =
        Tuner::new()
            .max_runs(400)
            .tune_solver(model, start(&fine, 32, 12)?.view(), &fine, 8)?;
    println!(
        "fitted an 8-call solver on 32 noises: {} model calls ({} runs of 8) in {:.1} s",
        fitted_grid.report.model_calls,
        fitted_grid.report.runs,
        clock.elapsed().as_secs_f64()
    );
    runs.push((
        "fitted, 8".into(),
        fitted.sample(
            model,
            start(&fitted_grid.grid, n, 5)?,
            &fitted_grid.grid,
            &mut SeededNoise::new(9),
        )?,
    ));
    let real = shapes(n, SIDE, &mut StdRng::seed_from_u64(8));
    let real_stats = stats(real.view());
    let mut names = vec!["real (2048)"];
    let mut all = vec![real_stats.clone()];
    for (name, out) in &runs {
        names.push(name.as_str());
        all.push(stats(out.view()));
    }
    print_stats(&names, &all);
    let d: Vec<String> = all
        .iter()
        .map(|s| format!("{:.3}", stats_distance(s, &real_stats)))
        .collect();
    println!("| L1 distance to real | {} |", d.join(" | "));
    // The statistic's own sampling noise: other sets of real images.
    let floor: Vec<String> = [9, 10, 11]
        .iter()
        .map(|&seed| {
            let other = stats(shapes(n, SIDE, &mut StdRng::seed_from_u64(seed)).view());
            format!("{:.3}", stats_distance(&other, &real_stats))
        })
        .collect();
    println!(
        "L1 distance of three other real sets of {n}: {}",
        floor.join(", ")
    );

    // The figure: real, DDIM at 50 calls, DPM++ 2M at 8 on Karras and tuned grids.
    let mut panels = vec![("real".to_string(), real)];
    panels.extend(runs.into_iter().take(3));
    let fig = figure(&panels, 4);
    let out = args.out.with_file_name("unet_budget.png");
    fig.save(&out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = args();
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    let fp = ForwardProcess::new(schedule.clone());
    let mut rng = StdRng::seed_from_u64(0);
    let mut model = UNet::<f32>::new(Prediction::Velocity, args.base, &mut rng);
    println!(
        "U-Net with {} parameters, {SIDE}x{SIDE} images",
        model.num_params()
    );

    let weights = match &args.load {
        Some(path) => path.clone(),
        None => {
            let bar = ProgressBar::new(args.steps as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} steps, loss {msg} (eta {eta})",
                )?
                .progress_chars("=> "),
            );
            let mut opt = Adam::new(2e-3);
            // Data parallelism: one replica per core computes gradients for its part of each batch.
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let mut replicas = vec![model.clone(); threads];
            let start = Instant::now();
            let mut avg = None;
            for step in 0..args.steps {
                // Linear warm-up over 100 steps, then cosine decay to 10%.
                let frac = step as f64 / args.steps as f64;
                let warm = ((step + 1) as f64 / 100.0).min(1.0);
                opt.lr = 2e-3 * warm * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()));
                let x0 = shapes(args.batch, SIDE, &mut rng);
                let loss = train_step_parallel(
                    &mut model,
                    &mut replicas,
                    &mut opt,
                    &fp,
                    x0.view(),
                    LossWeighting::Uniform,
                    &mut rng,
                );
                let a: f64 = avg.map_or(loss, |a: f64| 0.98 * a + 0.02 * loss);
                avg = Some(a);
                bar.set_message(format!("{a:.4}"));
                bar.inc(1);
            }
            bar.finish();
            println!(
                "trained {} steps of {} images in {:.1} s",
                args.steps,
                args.batch,
                start.elapsed().as_secs_f64()
            );
            model.save(&args.weights)?;
            println!("saved {}", args.weights.display());
            args.weights.clone()
        }
    };

    // Sample from weights read back from disk.
    let mut model = UNet::<f32>::new(Prediction::Velocity, args.base, &mut StdRng::seed_from_u64(1));
    model.load(&weights)?;
    println!("loaded {}", weights.display());

    if args.budget {
        return budget(&mut model, &schedule, &args);
    }

    let n = 64;
    let real = shapes(n, SIDE, &mut StdRng::seed_from_u64(7));
    // Both samplers start from the same seed's noise at their grid's first level.
    let start =
        |grid: &Grid| grid.initial_sample::<f32, _, _, _>((n, 1, SIDE, SIDE), &mut SeededNoise::new(5));
    let mut outputs = Vec::new();
    for (name, sampler_out) in [
        ("DPM-Solver++ 2M, 20 steps", {
            // The step-by-step form: the caller runs the model.
            let grid = schedule.grid(20, Spacing::KARRAS)?;
            let bar = ProgressBar::new(DpmSolver::new().model_calls(&grid) as u64);
            let mut noise_src = SeededNoise::new(9);
            let mut run = DpmSolver::new().start(start(&grid)?, &grid, model.prediction, &mut noise_src)?;
            while let Some(req) = run.request() {
                let out = model.denoise(req.x, &req.level)?;
                run.respond(out)?;
                bar.inc(1);
            }
            bar.finish_and_clear();
            run.into_sample()
        }),
        ("DDIM, 50 steps", {
            // The one-call form with a progress callback (which could also render previews
            // from `p.x0()`).
            let grid = schedule.grid(50, Spacing::Trailing)?;
            let bar = ProgressBar::new(grid.steps() as u64);
            let out =
                Ddim::new().sample_with(&mut model, start(&grid)?, &grid, &mut SeededNoise::new(9), |p| {
                    bar.set_position(p.call as u64)
                })?;
            bar.finish_and_clear();
            out
        }),
    ] {
        outputs.push((name, sampler_out));
    }

    let mut panels = vec![("real".to_string(), real.clone())];
    panels.extend(outputs.iter().map(|(n, a)| (n.to_string(), a.clone())));
    let fig = figure(&panels, 8);
    fig.save(&args.out)?;
    println!("wrote {}\n", args.out.display());

    let big_real = shapes(512, SIDE, &mut StdRng::seed_from_u64(8));
    let mut names = vec!["real (512)"];
    let mut all = vec![stats(big_real.view())];
    for (name, out) in &outputs {
        names.push(name);
        all.push(stats(out.view()));
    }
    print_stats(&names, &all);
    bits_per_dim(&mut model, &schedule)
}

/// Likelihood of 16 held-out images quantised to 8 bits, in bits/dim: DDPM's variational bound
/// (discretised decoder, fixed-large variances, all 1000 timesteps) and the probability-flow ODE
/// (uniform dequantisation, one Rademacher probe, central differences, tolerance 1e-4), with
/// the model calls and seconds each took.
fn bits_per_dim(model: &mut UNet<f32>, schedule: &NoiseSchedule) -> Result<(), BoxError> {
    use diffusion_samplers::likelihood::{OdeNll, ReverseVariance, Vlb};
    let x0 = shapes(16, SIDE, &mut StdRng::seed_from_u64(11))
        .mapv(|v| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0);
    let start = Instant::now();
    let vlb = Vlb::new().variance(ReverseVariance::FixedLarge).bits_per_dim(
        model,
        schedule,
        x0.view(),
        &mut SeededNoise::new(12),
    )?;
    let vlb_secs = start.elapsed().as_secs_f64();
    let grid = schedule
        .grid(10, Spacing::Linspace)?
        .with_final(FinalLevel::FirstTimestep);
    let start = Instant::now();
    let ode = OdeNll::new()
        .tolerances(1e-4, 1e-4)
        .dequantize(256)
        .bits_per_dim(model, &grid, x0.view(), &mut SeededNoise::new(13))?;
    let ode_secs = start.elapsed().as_secs_f64();
    println!("\nbits/dim of 16 held-out 8-bit images:");
    println!(
        "  variational bound: {:.3} ± {:.3} ({} calls of the batch, {vlb_secs:.1} s)",
        vlb.mean(),
        vlb.std_error(),
        vlb.calls
    );
    println!(
        "  probability-flow ODE: {:.3} ± {:.3} ({} calls of the batch = {} per image, {} steps, {ode_secs:.1} s)",
        ode.mean(),
        ode.std_error(),
        ode.calls,
        ode.calls,
        ode.steps
    );
    Ok(())
}
