//! The Restart sampler: AUTOMATIC1111's configuration and plan, identities with Heun, the model
//! call count, the noise it injects, and the distribution it samples.

mod common;

use common::{f64s, fixture, gmm, shape};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{Restart, RestartInterval};
use ndarray::{Array2, ArrayD, Axis, IxDyn};

fn schedule() -> NoiseSchedule {
    NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap()
}

fn model() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.4, 0.6],
        vec![vec![-1.0, 0.5], vec![1.0, -0.5]],
        vec![vec![0.05, 0.1], vec![0.1, 0.02]],
    )
    .unwrap()
}

fn start(grid: &Grid, n: usize, seed: u64) -> Array2<f64> {
    grid.initial_sample((n, 2), &mut SeededNoise::new(seed)).unwrap()
}

/// Below 20 steps AUTOMATIC1111's configuration is plain Heun, and so are no intervals: bit
/// for bit.
#[test]
fn without_restarts_it_is_heun() {
    for steps in [5, 19] {
        let grid = schedule().grid(steps, Spacing::KARRAS).unwrap();
        let x = start(&grid, 16, 1);
        let heun = Heun::new()
            .sample(&mut model(), x.clone(), &grid, &mut SeededNoise::new(2))
            .unwrap();
        let a = Restart::new()
            .sample(&mut model(), x.clone(), &grid, &mut SeededNoise::new(2))
            .unwrap();
        let b = Restart::new()
            .intervals(vec![])
            .sample(&mut model(), x, &grid, &mut SeededNoise::new(2))
            .unwrap();
        assert_eq!(a, heun, "{steps} steps");
        assert_eq!(b, heun, "{steps} steps");
        assert_eq!(Restart::new().model_calls(&grid), Heun::new().model_calls(&grid));
    }
}

/// AUTOMATIC1111's plan at 20 and 40 steps: the main walk a Karras ramp of `N - r t` levels
/// between the grid's first and last noisy sigma, then `t` restarts from the level nearest 2
/// down to the one nearest 0.1 in `r` steps; the calls a run makes are the ones it promises.
#[test]
fn automatic1111_plan() {
    for (steps, r, t) in [(20usize, 9usize, 1usize), (40, 10, 2)] {
        let grid = schedule().grid(steps, Spacing::KARRAS).unwrap();
        let sig = grid.sigmas_ve();
        let plan = Restart::new().plan(&grid).unwrap();
        let main = karras(steps - r * t, sig[steps - 1], sig[0]);
        assert_eq!(plan.len(), (main.len()) + r * t, "{steps}");
        // Where the restart sits: after the main level nearest 0.1.
        let nearest = |key: f64| {
            (0..main.len())
                .min_by(|&a, &b| (main[a] - key).abs().total_cmp(&(main[b] - key).abs()))
                .unwrap()
        };
        let (lo, hi) = (nearest(0.1), nearest(2.0));
        for (i, &(a, b)) in plan.iter().enumerate().take(lo) {
            assert!((a - main[i]).abs() < 1e-12 && (b - main[i + 1]).abs() < 1e-12);
        }
        let ramp = karras(r + 1, main[lo], main[hi]);
        for k in 0..t {
            let seg = &plan[lo + k * r..lo + (k + 1) * r];
            assert!(
                (seg[0].0 - main[hi]).abs() < 1e-12,
                "restart {k} starts at the level nearest 2"
            );
            for (j, &(a, b)) in seg.iter().enumerate() {
                assert!((a - ramp[j]).abs() < 1e-9 && (b - ramp[j + 1]).abs() < 1e-9);
            }
            assert!(seg[0].0 > plan[lo + k * r - 1].1, "noise first");
        }
        assert_eq!(plan.last().unwrap().1, 0.0);
        // Calls: two per step, one for the step to the clean level.
        let promised = Restart::new().model_calls(&grid);
        assert_eq!(promised, 2 * plan.len() - 1);
        let mut m = model();
        let mut run = Restart::new()
            .start(
                start(&grid, 4, 1),
                &grid,
                Prediction::Epsilon,
                SeededNoise::new(3),
            )
            .unwrap();
        let (mut calls, mut last_step) = (0, 0);
        while let Some(req) = run.request() {
            let call = req.call();
            assert_eq!(call.index, calls);
            assert_eq!(call.steps, plan.len());
            assert!(req.step >= last_step && req.step < plan.len());
            last_step = req.step;
            let out = m.denoise(req.x, &req.level).unwrap();
            run.respond(out).unwrap();
            calls += 1;
        }
        assert_eq!(calls, promised);
    }
}

fn karras(n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (hi.powf(1.0 / 7.0), lo.powf(1.0 / 7.0));
    (0..n)
        .map(|i| (a + (i as f64 / (n - 1).max(1) as f64) * (b - a)).powf(7.0))
        .collect()
}

/// The restart noise: with `s_noise = 0` a restart re-walks the interval deterministically
/// (a different result from no restart, the same for any noise); with noise the run depends on
/// the noise source.
#[test]
fn restart_noise() {
    let grid = schedule().grid(12, Spacing::KARRAS).unwrap();
    let x = start(&grid, 16, 1);
    let r = Restart::new().intervals(vec![RestartInterval {
        min_sigma: 0.3,
        steps: 4,
        times: 2,
        max_sigma: 3.0,
    }]);
    let run = |s: &Restart, seed| {
        s.sample(&mut model(), x.clone(), &grid, &mut SeededNoise::new(seed))
            .unwrap()
    };
    let quiet = r.clone().s_noise(0.0);
    assert_eq!(run(&quiet, 1), run(&quiet, 2));
    let heun = Heun::new()
        .sample(&mut model(), x.clone(), &grid, &mut SeededNoise::new(1))
        .unwrap();
    assert!((&run(&quiet, 1) - &heun).iter().any(|d| d.abs() > 1e-6));
    assert!((&run(&r, 1) - &run(&r, 2)).iter().any(|d| d.abs() > 1e-3));
    assert_eq!(r.model_calls(&grid), 2 * 12 - 1 + 2 * 2 * 3);
}

/// Restart samples the data distribution: mean and covariance of 4000 samples of the 2-D
/// mixture within 4 standard errors (the same check passes for a 200-step Heun run; an
/// off-by-one level or noise without its scale fails it).
#[test]
fn samples_the_data() {
    let grid = schedule().grid(24, Spacing::KARRAS).unwrap();
    let n = 4000;
    let out = Restart::new()
        .sample(&mut model(), start(&grid, n, 7), &grid, &mut SeededNoise::new(8))
        .unwrap();
    let m = model();
    let (w, mu, var) = ([0.4, 0.6], [[-1.0, 0.5], [1.0, -0.5]], [[0.05, 0.1], [0.1, 0.02]]);
    for d in 0..2 {
        let mean: f64 = (0..2).map(|k| w[k] * mu[k][d]).sum();
        let second: f64 = (0..2).map(|k| w[k] * (var[k][d] + mu[k][d] * mu[k][d])).sum();
        let variance = second - mean * mean;
        let col = out.index_axis(Axis(1), d);
        let got_mean = col.mean().unwrap();
        let got_var = col.var(1.0);
        let se_mean = (variance / n as f64).sqrt();
        assert!(
            (got_mean - mean).abs() < 4.0 * se_mean,
            "dim {d}: mean {got_mean} vs {mean}"
        );
        // The variance's standard error from the fourth moment, bounded generously.
        assert!(
            (got_var - variance).abs() < 4.0 * variance * (2.0 / n as f64).sqrt() * 2.0,
            "dim {d}: var {got_var} vs {variance}"
        );
    }
    let _ = m;
}

/// Bad options are typed errors.
#[test]
fn bad_options() {
    let grid = schedule().grid(12, Spacing::KARRAS).unwrap();
    let x = start(&grid, 2, 1);
    for s in [
        Restart::new().s_noise(-1.0),
        Restart::new().s_noise(f64::NAN),
        Restart::new().intervals(vec![RestartInterval {
            min_sigma: 0.1,
            steps: 1,
            times: 1,
            max_sigma: 2.0,
        }]),
        Restart::new().intervals(vec![RestartInterval {
            min_sigma: f64::INFINITY,
            steps: 3,
            times: 1,
            max_sigma: 2.0,
        }]),
    ] {
        let r = s.sample(&mut model(), x.clone(), &grid, &mut SeededNoise::new(1));
        assert!(matches!(r, Err(Error::InvalidParameter { .. })), "{r:?}");
        assert!(s.validate().is_err());
    }
}

/// AUTOMATIC1111's `restart_sampler` (tests/fixtures/gen_restart.py: its automatic
/// configuration at 12, 20 and 40 steps, and a `restart_list` of two intervals, one restarted
/// twice) on Stable Diffusion's Karras sigmas with the mixture's exact denoiser, its restart
/// noise replayed: the same model calls and the same result to 1e-12 (both float64; restart
/// noise 1% too strong is already 9e-3 away).
#[test]
fn matches_automatic1111() {
    let fx = fixture("restart.json");
    let sh = shape(&fx);
    for case in fx["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let sigmas = f64s(&case["sigmas"]);
        let grid = schedule().grid_from_sigmas(&sigmas).unwrap();
        let sampler = match case["restart_list"].as_array() {
            None => Restart::new(),
            Some(list) => Restart::new().intervals(
                list.iter()
                    .map(|e| {
                        let v = f64s(e);
                        RestartInterval {
                            min_sigma: v[0],
                            steps: v[1] as usize,
                            times: v[2] as usize,
                            max_sigma: v[3],
                        }
                    })
                    .collect(),
            ),
        };
        assert_eq!(
            sampler.model_calls(&grid),
            case["calls"].as_u64().unwrap() as usize,
            "{name}"
        );
        // Each draw goes to the step its restart begins with.
        let plan = sampler.plan(&grid).unwrap();
        let draws: Vec<Vec<f64>> = case["noise"].as_array().unwrap().iter().map(f64s).collect();
        let mut blocks = vec![Vec::new(); plan.len()];
        let restarts: Vec<usize> = (1..plan.len()).filter(|&i| plan[i].0 > plan[i - 1].1).collect();
        assert_eq!(restarts.len(), draws.len(), "{name}: restarts");
        for (&i, d) in restarts.iter().zip(draws) {
            blocks[i] = d;
        }
        let a0 = grid.levels()[0].alpha;
        let x = ArrayD::from_shape_vec(IxDyn(&sh), f64s(&case["x_init"]))
            .unwrap()
            .mapv(|v| v * a0);
        let out = sampler
            .sample(&mut gmm(&fx), x, &grid, &mut ReplayNoise::new(blocks))
            .unwrap();
        let want = f64s(&case["final"]);
        let d = out
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-12, "{name}: {d:e}");
    }
}
