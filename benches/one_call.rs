//! The one-call path against the in-place path, and whole runs on long grids.
//!
//!     cargo bench --bench one_call
//!
//! * `one_call/…/sample/<name>`: `Sampler::sample` with a model that returns a freshly
//!   allocated array per call (`x.to_owned()`), as most users' models do; whole 50-step runs,
//!   start-up included, reported per model call.
//! * `one_call/…/in_place/<name>`: the same whole runs step by step, the model writing into the
//!   run's buffer (`request_with_output` + `respond_in_place`); the difference to `sample` is
//!   what the one-call path costs on top.
//! * `long_grid/euler_churn/<n>`: a whole churned-Euler run of `n` steps on a VE grid with a
//!   one-element sample: the cost of the off-grid (churned) level lookups, which should grow
//!   linearly with `n`.
//!
//! Only API that exists since 0.1 is used, so that the same file measures an older checkout
//! in the same session.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{BoxError, FnDenoiser, UniPc};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4};

fn whole_runs<S: Sampler>(
    sampler: &S,
    grid: &Grid,
    x0: &Array4<f32>,
    iters: u64,
    in_place: bool,
) -> Duration {
    let calls = sampler.model_calls(grid) as u64;
    let runs = iters.div_ceil(calls);
    let mut model = FnDenoiser::new(Prediction::Sample, |x: ArrayView4<'_, f32>, _: &NoiseLevel| {
        Ok::<_, BoxError>(x.to_owned())
    });
    let start = Instant::now();
    for r in 0..runs {
        let mut noise = SeededNoise::new(r);
        let out = if in_place {
            let mut run = sampler
                .start(x0.clone(), grid, Prediction::Sample, &mut noise)
                .unwrap();
            while let Some((req, mut out)) = run.request_with_output() {
                out.assign(&req.x);
                run.respond_in_place().unwrap();
            }
            run.into_sample()
        } else {
            sampler.sample(&mut model, x0.clone(), grid, &mut noise).unwrap()
        };
        black_box(out);
    }
    // Per model call, scaled to the `iters` calls criterion asked for.
    start.elapsed().mul_f64(iters as f64 / (runs * calls) as f64)
}

fn bench_one_call(c: &mut Criterion) {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = schedule.grid(50, Spacing::KARRAS).unwrap();
    let mut x0 = Array4::<f32>::zeros((1, 4, 64, 64));
    SeededNoise::new(0).fill(0, x0.view_mut());
    let mut group = c.benchmark_group("one_call/1x4x64x64/f32");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    macro_rules! s {
        ($name:expr, $sampler:expr) => {
            for (kind, in_place) in [("sample", false), ("in_place", true)] {
                group.bench_function(BenchmarkId::new(kind, $name), |b| {
                    b.iter_custom(|i| whole_runs(&$sampler, &grid, &x0, i, in_place))
                });
            }
        };
    }
    s!("ddim", Ddim::new().clip_sample(None));
    s!("dpmpp_2m", DpmSolver::new());
    s!("unipc_2", UniPc::new());
    group.finish();
}

fn bench_long_grids(c: &mut Criterion) {
    let mut group = c.benchmark_group("long_grid");
    group.sample_size(10).warm_up_time(Duration::from_millis(300));
    for n in [2500usize, 10_000, 40_000] {
        // Geometric sigmas from 80 to 0.002 (a VE grid), churn on every step.
        let sigmas: Vec<f64> = (0..n)
            .map(|i| 80.0 * (0.002f64 / 80.0).powf(i as f64 / (n - 1) as f64))
            .collect();
        let grid = Grid::ve(&sigmas).unwrap();
        let euler = Euler::new().s_churn(1.0);
        group.bench_function(BenchmarkId::new("euler_churn", n), |b| {
            b.iter(|| {
                let mut model =
                    FnDenoiser::new(Prediction::Sample, |x: ArrayView1<'_, f64>, _: &NoiseLevel| {
                        Ok::<_, BoxError>(x.mapv(|v| 0.5 * v))
                    });
                let x = Array1::from_elem(1, 40.0);
                black_box(
                    euler
                        .sample(&mut model, x, &grid, &mut SeededNoise::new(1))
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_one_call, bench_long_grids);
criterion_main!(benches);
