//! Per-step cost of every sampler, against the floor of one fused pass over the same arrays.
//!
//!     cargo bench --bench steps                  # all groups
//!     cargo bench --bench steps -- noise         # one group
//!     cargo bench --bench steps --features rayon -- scaling
//!
//! A "step" here is one model call answered in place (`Run::request_with_output` +
//! `respond_in_place`) with the cheapest model there is: it copies its input into the output
//! buffer. The floors do that same copy plus one fused `Zip` pass over `n` arrays (the sample
//! read and written, `n - 1` read): the memory traffic a fused step cannot avoid. Each sampler
//! is reported next to the floor with the arrays its steady-state step touches (see
//! docs/benchmarks.md for the ratios and the command that produced them).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{
    Deis, Dpm2, Dpm2Ancestral, DpmAdaptive, DpmFast, DpmPp2sAncestral, DpmPpSde, DpmSolverSinglestep,
    EdmDeis, EdmIpndm, ErSde, Float, GradientEstimation, Heun, HeunPp2, Ipndm, Lcm, Lms, Pndm, ResMultistep,
    SaSolver, SeededNoise, Seeds2, Seeds3, Tcd, UniPc,
};
use ndarray::{Array4, Zip};
use rand::{SeedableRng, rngs::SmallRng};
use rand_distr::{Distribution, StandardNormal};

const SHAPES: [(usize, usize, usize); 3] = [(1, 4, 64), (1, 4, 128), (8, 4, 64)];

/// The model: copies its input into the output buffer — with the `rayon` feature, in parallel
/// on the arrays the crate updates in parallel (a million elements and up), as a real model
/// would run: a sequential copy would leave half the data in the other core's cache and bill
/// the step for fetching it.
fn model<F: Float>(x: &ndarray::ArrayView4<'_, F>, out: &mut ndarray::ArrayViewMut4<'_, F>) {
    #[cfg(feature = "rayon")]
    if x.len() >= 1 << 20 {
        Zip::from(out).and(x).par_for_each(|o, &x| *o = x);
        return;
    }
    out.assign(x);
}

/// Time `iters` model calls of `sampler` (runs restarted as they finish; start-up excluded).
fn time_steps<F: Float, S: Sampler>(sampler: &S, grid: &Grid, x0: &Array4<F>, iters: u64) -> Duration {
    let mut noise = SeededNoise::new(1);
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let mut run = sampler
            .start(x0.clone(), grid, Prediction::Sample, &mut noise)
            .unwrap();
        // The first calls allocate the run's buffers: not timed.
        for _ in 0..2 {
            if let Some((req, mut out)) = run.request_with_output() {
                model(&req.x, &mut out);
                run.respond_in_place().unwrap();
            }
        }
        let start = Instant::now();
        while let Some((req, mut out)) = run.request_with_output() {
            model(&req.x, &mut out);
            run.respond_in_place().unwrap();
            done += 1;
            if done == iters {
                break;
            }
        }
        total += start.elapsed();
        black_box(run.sample());
    }
    total
}

/// The floor of a step that writes `w` arrays (read first) and reads `r` more: the model's copy
/// into its output buffer, then one fused pass with the least arithmetic that touches them all.
fn floor<F: Float>(w: usize, r: usize, x0: &Array4<F>, iters: u64) -> Duration {
    let mut a: Vec<Array4<F>> = (0..w).map(|_| x0.clone()).collect();
    let b: Vec<Array4<F>> = (1..r).map(|_| x0.clone()).collect();
    let mut out = x0.clone();
    let (p, q) = (F::cast(0.9), F::cast(0.1));
    let start = Instant::now();
    for _ in 0..iters {
        // The model: copies its input into the output buffer (one of the arrays read).
        model(&a[0].view(), &mut out.view_mut());
        let (o, rest) = (&out, &b[..]);
        match (&mut a[..], rest) {
            ([x], []) => Zip::from(x).and(o).for_each(|x, &o| *x = p * *x + q * o),
            ([x], [h]) => Zip::from(x)
                .and(o)
                .and(h)
                .for_each(|x, &o, &h| *x = p * *x + q * (o + h)),
            ([x], [h, g]) => Zip::from(x)
                .and(o)
                .and(h)
                .and(g)
                .for_each(|x, &o, &h, &g| *x = p * *x + q * (o + h + g)),
            ([x, y], []) => Zip::from(x).and(y).and(o).for_each(|x, y, &o| {
                *y = p * *y + q * o;
                *x = p * *x + q * o;
            }),
            ([x, y], [h]) => Zip::from(x).and(y).and(o).and(h).for_each(|x, y, &o, &h| {
                *y = p * *y + q * o;
                *x = p * *x + q * (o + h);
            }),
            ([x, y], [h, g]) => Zip::from(x)
                .and(y)
                .and(o)
                .and(h)
                .and(g)
                .for_each(|x, y, &o, &h, &g| {
                    *y = p * *y + q * o;
                    *x = p * *x + q * (o + h + g);
                }),
            ([x, y, z], []) => Zip::from(x).and(y).and(z).and(o).for_each(|x, y, z, &o| {
                *z = p * *z + q * o;
                *y = p * *y + q * o;
                *x = p * *x + q * o;
            }),
            ([x, y, z], [h]) => Zip::from(x)
                .and(y)
                .and(z)
                .and(o)
                .and(h)
                .for_each(|x, y, z, &o, &h| {
                    *z = p * *z + q * o;
                    *y = p * *y + q * o;
                    *x = p * *x + q * (o + h);
                }),
            ([x, y, z], [h, g]) => {
                Zip::from(x)
                    .and(y)
                    .and(z)
                    .and(o)
                    .and(h)
                    .and(g)
                    .for_each(|x, y, z, &o, &h, &g| {
                        *z = p * *z + q * o;
                        *y = p * *y + q * o;
                        *x = p * *x + q * (o + h + g);
                    })
            }
            _ => unreachable!("floor({w}, {r}) is not defined"),
        }
        black_box(&a);
    }
    start.elapsed()
}

/// The floors measured: (arrays written, arrays read), the model output counted as read.
const FLOORS: [(usize, usize); 9] = [
    (1, 1),
    (1, 2),
    (1, 3),
    (2, 1),
    (2, 2),
    (2, 3),
    (3, 1),
    (3, 2),
    (3, 3),
];

fn bench_dtype<F: Float>(c: &mut Criterion, dtype: &str) {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = schedule.grid(50, Spacing::KARRAS).unwrap();
    for &(n, ch, h) in &SHAPES {
        let mut group = c.benchmark_group(format!("step/{n}x{ch}x{h}x{h}/{dtype}"));
        group
            .sample_size(20)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        group.throughput(Throughput::Elements((n * ch * h * h) as u64));
        let mut x0 = Array4::<F>::zeros((n, ch, h, h));
        SeededNoise::new(0).fill(0, x0.view_mut());
        for (w, r) in FLOORS {
            group.bench_function(BenchmarkId::new("floor", format!("{w}w+{r}r")), |b| {
                b.iter_custom(|i| floor(w, r, &x0, i))
            });
        }
        macro_rules! s {
            ($name:expr, $sampler:expr) => {
                group.bench_function(BenchmarkId::new("sampler", $name), |b| {
                    b.iter_custom(|i| time_steps(&$sampler, &grid, &x0, i))
                });
            };
        }
        s!("ddim", Ddim::new());
        s!("ddpm", Ddpm::new());
        s!("euler", Euler::new());
        s!("euler_ancestral", EulerAncestral::new());
        s!("heun", Heun::new());
        s!("dpm_2", Dpm2::new());
        s!("dpm_2_ancestral", Dpm2Ancestral::new());
        s!("dpmpp_2m", DpmSolver::new());
        s!("dpmpp_3m", DpmSolver::new().order(3));
        s!("dpmpp_2m_sde", DpmSolver::new().sde(true));
        s!("dpmpp_2s_ancestral", DpmPp2sAncestral::new());
        s!("dpmpp_singlestep_2", DpmSolverSinglestep::new());
        s!("unipc_2", UniPc::new());
        s!("unipc_3", UniPc::new().order(3));
        s!("deis_2", Deis::new());
        s!("lms_4", Lms::new());
        s!("plms", Pndm::new().skip_prk_steps(true));
        s!("ipndm", Ipndm::new());
        s!("lcm", Lcm::new());
        s!("tcd", Tcd::new());
        s!("unipc_2_noise_form", UniPc::new().predict_x0(false));
        // ComfyUI's / k-diffusion's own solvers (ComfyUI's names).
        s!("heunpp2", HeunPp2::new());
        s!("ipndm_edm", EdmIpndm::new());
        s!("ipndm_v", EdmIpndm::new().variable_step(true));
        s!("deis_tab_3", EdmDeis::new());
        s!("gradient_estimation", GradientEstimation::new());
        s!("res_multistep", ResMultistep::new());
        s!("res_multistep_ancestral", ResMultistep::ancestral());
        s!("exp_heun_2_x0", Seeds2::exp_heun());
        s!("dpmpp_sde", DpmPpSde::new());
        s!("seeds_2", Seeds2::new());
        s!("seeds_3", Seeds3::new());
        s!("er_sde", ErSde::new());
        s!("sa_solver", SaSolver::new());
        s!("dpm_fast", DpmFast::new());
        s!("dpm_adaptive", DpmAdaptive::new());
        group.finish();
    }
}

fn bench_steps(c: &mut Criterion) {
    bench_dtype::<f32>(c, "f32");
    bench_dtype::<f64>(c, "f64");
}

/// A whole 50-step DPM-Solver++(2M) run at 1x4x64x64 (start-up included).
fn bench_loop(c: &mut Criterion) {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = schedule.grid(50, Spacing::KARRAS).unwrap();
    let mut x0 = Array4::<f32>::zeros((1, 4, 64, 64));
    SeededNoise::new(0).fill(0, x0.view_mut());
    let mut group = c.benchmark_group("loop50");
    group.sample_size(20);
    group.bench_function("dpmpp_2m_1x4x64x64_f32", |b| {
        b.iter(|| {
            let mut noise = SeededNoise::new(1);
            let mut run = DpmSolver::new()
                .start(x0.clone(), &grid, Prediction::Sample, &mut noise)
                .unwrap();
            while let Some((req, mut out)) = run.request_with_output() {
                model(&req.x, &mut out);
                run.respond_in_place().unwrap();
            }
            black_box(run.into_sample())
        })
    });
    group.finish();
}

/// Gaussian noise in ns per sample (1M samples).
fn bench_noise(c: &mut Criterion) {
    let n = 1 << 20;
    let mut group = c.benchmark_group("noise");
    group.throughput(Throughput::Elements(n as u64));
    let mut a32 = ndarray::Array1::<f32>::zeros(n);
    let mut a64 = ndarray::Array1::<f64>::zeros(n);
    let mut noise = SeededNoise::new(3);
    let mut step = 0;
    group.bench_function("seeded_ziggurat_f32", |b| {
        b.iter(|| {
            step += 1;
            noise.fill(step, a32.view_mut());
            black_box(&a32);
        })
    });
    group.bench_function("seeded_ziggurat_f64", |b| {
        b.iter(|| {
            step += 1;
            noise.fill(step, a64.view_mut());
            black_box(&a64);
        })
    });
    let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)
        .unwrap()
        .grid(50, Spacing::KARRAS)
        .unwrap();
    let mut brownian = diffusion_samplers::noise::BrownianNoise::new(3, &grid).unwrap();
    // Consecutive steps' intervals, as a sampler asks for them: each call evaluates the motion
    // at one new time (the other end is cached).
    let mut k = 0;
    group.bench_function("brownian_interval_f32", |b| {
        b.iter(|| {
            k = (k + 1) % 49;
            let (from, to) = (grid.levels()[k], grid.levels()[k + 1]);
            brownian.fill_interval(k, &from, &to, a32.view_mut());
            black_box(&a32);
        })
    });
    // torch.randn's stream, bit for bit (torch itself: benches/diffusers_compare.py).
    let mut torch = diffusion_samplers::noise::TorchGenerator::new(3);
    group.bench_function("torch_generator_f32", |b| {
        b.iter(|| {
            torch.fill(0, a32.view_mut());
            black_box(&a32);
        })
    });
    let mut torch_scalar = diffusion_samplers::noise::TorchGenerator::new(3)
        .with_kernel(diffusion_samplers::noise::TorchCpuKernel::Scalar);
    group.bench_function("torch_generator_scalar_kernel_f32", |b| {
        b.iter(|| {
            torch_scalar.fill(0, a32.view_mut());
            black_box(&a32);
        })
    });
    group.bench_function("torch_generator_f64", |b| {
        b.iter(|| {
            torch.fill(0, a64.view_mut());
            black_box(&a64);
        })
    });
    // torchsde's tree as ComfyUI uses it, over the same 1M elements (one tree over the whole
    // array), consecutive steps of a 50-step Karras run as a sampler asks for them.
    let sigma = |l: &NoiseLevel| l.sigma / l.alpha;
    let mut tree = diffusion_samplers::noise::TorchBrownianTree::new(
        &[3],
        sigma(&grid.last_noisy()),
        sigma(&grid.levels()[0]),
        &[n],
    )
    .unwrap();
    let mut k = 0;
    group.sample_size(10);
    group.bench_function("torch_brownian_tree_interval_f32", |b| {
        b.iter(|| {
            k = (k + 1) % 49;
            let (from, to) = (grid.levels()[k], grid.levels()[k + 1]);
            tree.fill_interval(k, &from, &to, a32.view_mut());
            black_box(&a32);
        })
    });
    group.sample_size(100);
    let mut rng = SmallRng::seed_from_u64(3);
    group.bench_function("rand_distr_standard_normal_smallrng_f32", |b| {
        b.iter(|| {
            for v in a32.iter_mut() {
                *v = StandardNormal.sample(&mut rng);
            }
            black_box(&a32);
        })
    });
    group.finish();
}

/// Time per DDIM step against the number of elements, 16K to 16M (f32).
fn bench_scaling(c: &mut Criterion) {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = schedule.grid(50, Spacing::KARRAS).unwrap();
    let mut group = c.benchmark_group("scaling");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for side in [64usize, 128, 256, 512, 1024, 2048] {
        let elems = 4 * side * side;
        group.throughput(Throughput::Elements(elems as u64));
        let mut x0 = Array4::<f32>::zeros((1, 4, side, side));
        SeededNoise::new(0).fill(0, x0.view_mut());
        group.bench_function(BenchmarkId::new("ddim_step", elems), |b| {
            b.iter_custom(|i| time_steps(&Ddim::new(), &grid, &x0, i))
        });
        group.bench_function(BenchmarkId::new("dpmpp_2m_sde_step", elems), |b| {
            b.iter_custom(|i| time_steps(&DpmSolver::new().sde(true), &grid, &x0, i))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_noise, bench_steps, bench_loop, bench_scaling);
criterion_main!(benches);
