//! Step-by-step runs own their noise source: they can be stored, moved and advanced in any
//! order, as async, queue- or server-based callers do, with the same results as one-call
//! sampling.

use diffusion_samplers::prelude::*;
use diffusion_samplers::{AnyState, NoiseLevel};
use ndarray::{Array2, Ix2};
use rand::SeedableRng;

type Job = Run<f64, Ix2, AnyState<f64, Ix2>, SeededNoise>;

/// A queue of jobs, each a run of a different sampler with its own seed, advanced
/// round-robin — one model call per job per turn — ends exactly where one `sample` call per
/// job ends.
#[test]
fn runs_in_a_vec_advanced_round_robin_equal_one_call_sampling() {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = schedule.grid(12, Spacing::KARRAS).unwrap();
    let model = GaussianMixture::new(
        vec![0.4, 0.6],
        vec![vec![-1.0, 0.5], vec![1.0, -0.5]],
        vec![vec![0.05, 0.1], vec![0.1, 0.02]],
    )
    .unwrap();
    let samplers: Vec<AnySampler> = vec![
        DpmSolver::new().order(3).sde(true).into(),
        EulerAncestral::new().into(),
        Heun::new().s_churn(2.0).into(),
        UniPc::new().into(),
        Pndm::new().into(),
        DpmPp2sAncestral::new().into(),
        Ddpm::new().into(),
    ];
    let start = |i: usize| {
        grid.initial_sample::<f64, _, _, _>((5, 2), &mut SeededNoise::new(100 + i as u64))
            .unwrap()
    };
    let mut jobs: Vec<Job> = samplers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.start(start(i), &grid, Prediction::Epsilon, SeededNoise::new(i as u64))
                .unwrap()
        })
        .collect();
    // Move the queue around (into a struct and back) to show the runs borrow nothing.
    struct Queue {
        jobs: Vec<Job>,
    }
    let mut queue = Queue {
        jobs: std::mem::take(&mut jobs),
    };
    let mut m = model.clone();
    let mut turns = 0;
    while queue.jobs.iter().any(|j| !j.is_finished()) {
        for job in queue.jobs.iter_mut().rev().filter(|j| !j.is_finished()) {
            let req = job.request().unwrap();
            let out = m.denoise(req.x, &req.level).unwrap();
            job.respond(out).unwrap();
        }
        turns += 1;
    }
    assert!(turns > 12);
    for (i, (s, job)) in samplers.iter().zip(queue.jobs).enumerate() {
        let (got, _noise) = job.into_parts();
        let want = s
            .sample(
                &mut model.clone(),
                start(i),
                &grid,
                &mut SeededNoise::new(i as u64),
            )
            .unwrap();
        assert_eq!(got, want, "{}", s.kind());
    }
}

/// A run can also borrow its noise source (`&mut` any of the crate's sources or a `rand`
/// generator), and gives it back in the state the run left it.
#[test]
fn runs_can_borrow_their_noise() {
    let grid = NoiseSchedule::linear(1000, 1e-4, 0.02)
        .unwrap()
        .grid(6, Spacing::Trailing)
        .unwrap();
    let x = Array2::<f64>::zeros((2, 2));
    let mut model = GaussianMixture::gaussian(vec![0.0, 0.0], vec![1.0, 1.0]).unwrap();
    fn finish<S: diffusion_samplers::SamplerState<f64, Ix2>, N: NoiseSource<f64>>(
        mut run: Run<f64, Ix2, S, N>,
        model: &mut GaussianMixture,
    ) -> Array2<f64> {
        while let Some(req) = run.request() {
            let out = model.denoise(req.x, &req.level).unwrap();
            run.respond(out).unwrap();
        }
        run.into_sample()
    }
    let ddim = Ddim::new().eta(1.0);
    let mut seeded = SeededNoise::new(5);
    let a = finish(
        ddim.start(x.clone(), &grid, Prediction::Epsilon, &mut seeded)
            .unwrap(),
        &mut model,
    );
    let b = finish(
        ddim.start(x.clone(), &grid, Prediction::Epsilon, SeededNoise::new(5))
            .unwrap(),
        &mut model,
    );
    assert_eq!(a, b);
    let mut replay = ReplayNoise::new(vec![vec![0.1; 4]; 6]);
    let c = finish(
        ddim.start(x.clone(), &grid, Prediction::Epsilon, &mut replay)
            .unwrap(),
        &mut model,
    );
    assert!(c.iter().all(|v| v.is_finite()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let d = finish(
        ddim.start(x, &grid, Prediction::Epsilon, &mut rng).unwrap(),
        &mut model,
    );
    assert!(d.iter().all(|v| v.is_finite()));
    let _: NoiseLevel = grid.levels()[0];
}
