//! Per-step cost of the samplers against the floor: one fused pass over the same arrays.
//!
//!     cargo bench --bench steps
//!
//! The "model" returns a copy of its input (the cheapest model there is), so a step costs the
//! model's copy plus the sampler's update. The floor does exactly that copy plus one fused
//! `Zip` pass reading the sample and the output and writing the sample.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use diffusion_samplers::prelude::*;
use ndarray::{Array4, ArrayView4, Ix4, Zip};
use rand::{SeedableRng, rngs::SmallRng};
use std::hint::black_box;

const STEPS: usize = 10;

type ModelFn = fn(ArrayView4<'_, f32>, &NoiseLevel) -> Result<Array4<f32>, BoxError>;

fn copy_model() -> FnDenoiser<ModelFn> {
    FnDenoiser::new(Prediction::Sample, |x, _| Ok(x.to_owned()))
}

fn bench_steps(c: &mut Criterion) {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = schedule.grid(STEPS, Spacing::Leading { offset: 1 }).unwrap();
    for &(n, ch, h) in &[(1usize, 4usize, 64usize), (8, 4, 64)] {
        let shape = (n, ch, h, h);
        let elems = n * ch * h * h;
        let mut group = c.benchmark_group(format!("step_{n}x{ch}x{h}x{h}_f32"));
        group.throughput(Throughput::Elements(elems as u64));
        let x0: Array4<f32> = standard_normal(shape, &mut SmallRng::seed_from_u64(0));

        group.bench_function(BenchmarkId::new("floor", "copy+fused pass"), |b| {
            let mut x = x0.clone();
            b.iter(|| {
                let out = x.to_owned();
                Zip::from(&mut x)
                    .and(&out)
                    .for_each(|x, &o| *x = 0.99 * *x + 0.01 * o);
                black_box(&x);
            })
        });
        let mut model = copy_model();
        for (name, eta) in [("ddim_eta0", 0.0), ("ddim_eta1", 1.0)] {
            group.bench_function(BenchmarkId::new(name, "per step"), |b| {
                let mut rng = SmallRng::seed_from_u64(1);
                b.iter_custom(|iters| {
                    let runs = iters.div_ceil(STEPS as u64);
                    let start = std::time::Instant::now();
                    for _ in 0..runs {
                        let out = Ddim::new()
                            .eta(eta)
                            .clip_sample(None)
                            .sample::<f32, Ix4, _, _>(&mut model, x0.clone(), &grid, &mut rng)
                            .unwrap();
                        black_box(out);
                    }
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (runs * STEPS as u64) as f64)
                })
            });
        }
        group.bench_function(BenchmarkId::new("ddpm", "per step"), |b| {
            let mut rng = SmallRng::seed_from_u64(2);
            b.iter_custom(|iters| {
                let runs = iters.div_ceil(STEPS as u64);
                let start = std::time::Instant::now();
                for _ in 0..runs {
                    let out = Ddpm::new()
                        .clip_sample(None)
                        .sample(&mut model, x0.clone(), &grid, &mut rng)
                        .unwrap();
                    black_box(out);
                }
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (runs * STEPS as u64) as f64)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench_steps);
criterion_main!(benches);
