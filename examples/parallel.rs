//! Parallel sampling (ParaDiGMS Picard iterations) against sequential sampling, on a model whose
//! cost is dominated by the call: every call — one input or a batch — takes a fixed latency
//! (`--latency-ms`, 5 by default: a GPU network whose batch of 10 costs what a batch of 1 does),
//! plus the analytic model's own (negligible) arithmetic.
//!
//!     cargo run --release --example parallel [-- --latency-ms 5]
//!
//! Prints, per sampler and tolerance: sequential rounds of calls, evaluations, wall time, the
//! speed-up in wall time against the sequential run, and the distance from it.

use std::time::{Duration, Instant};

use diffusion_samplers::parallel::Parallel;
use diffusion_samplers::prelude::*;
use diffusion_samplers::{AnySampler, BoxError};
use ndarray::{Array, ArrayView, Ix2};

/// The analytic model behind a fixed per-call latency.
struct Latency {
    inner: GaussianMixture,
    latency: Duration,
}

impl Latency {
    fn wait(&self) {
        let t = Instant::now();
        while t.elapsed() < self.latency {
            std::hint::spin_loop();
        }
    }
}

impl Denoiser<f64, Ix2> for Latency {
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }
    fn denoise(
        &mut self,
        x: ArrayView<'_, f64, Ix2>,
        level: &NoiseLevel,
    ) -> Result<Array<f64, Ix2>, BoxError> {
        self.wait();
        self.inner.denoise(x, level)
    }
    fn denoise_many(
        &mut self,
        xs: &[ArrayView<'_, f64, Ix2>],
        levels: &[NoiseLevel],
    ) -> Result<Vec<Array<f64, Ix2>>, BoxError> {
        self.wait(); // one batched call
        xs.iter()
            .zip(levels)
            .map(|(x, l)| self.inner.denoise(x.view(), l))
            .collect()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let ms: u64 = args
        .iter()
        .position(|a| a == "--latency-ms")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(5), |v| v.parse())?;
    let mut model = Latency {
        inner: GaussianMixture::new(
            vec![0.3, 0.7],
            vec![vec![-1.0, 0.5, 0.2], vec![0.8, -0.3, -0.4]],
            vec![vec![0.05, 0.1, 0.2], vec![0.08, 0.02, 0.1]],
        )?,
        latency: Duration::from_millis(ms),
    };
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    let grid = s.grid(50, Spacing::Leading { offset: 1 })?;
    let x: Array<f64, Ix2> = grid.initial_sample((256, 3), &mut SeededNoise::new(0))?;
    println!("50 steps, window 10, {ms} ms per model call (batched or not)\n");
    println!("| sampler | tolerance | rounds | evaluations | wall time | speed-up | max abs. difference |");
    println!("|---|---|---|---|---|---|---|");
    let samplers: Vec<(&str, AnySampler)> = vec![
        ("DDIM", Ddim::new().into()),
        ("DDPM", Ddpm::new().into()),
        ("DPM-Solver++ 2M", DpmSolver::new().into()),
        ("Heun", Heun::new().into()),
    ];
    for (name, sampler) in samplers {
        let t = Instant::now();
        let seq = sampler.sample(&mut model, x.clone(), &grid, &mut SeededNoise::new(1))?;
        let t_seq = t.elapsed();
        println!(
            "| {name} | sequential | {} | {} | {:.0} ms | 1.0× | – |",
            sampler.model_calls(&grid),
            sampler.model_calls(&grid),
            t_seq.as_secs_f64() * 1e3
        );
        for tol in [0.1, 1e-3, 0.0] {
            let t = Instant::now();
            let (par, r) =
                Parallel::new(10, tol).sample(&sampler, &mut model, x.clone(), &grid, SeededNoise::new(1))?;
            let t_par = t.elapsed();
            let err = (&par - &seq).iter().fold(0.0f64, |a, v| a.max(v.abs()));
            println!(
                "| {name} | {tol} | {} | {} | {:.0} ms | {:.1}× | {err:.1e} |",
                r.rounds,
                r.evaluations,
                t_par.as_secs_f64() * 1e3,
                t_seq.as_secs_f64() / t_par.as_secs_f64()
            );
        }
    }
    Ok(())
}
