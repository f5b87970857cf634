//! Properties every sampler must have: exact identities between samplers, model-call
//! accounting, f32 / f64 agreement, zero-terminal-SNR and rectified-flow grids.

use diffusion_samplers::prelude::*;
use diffusion_samplers::{
    Deis, Dpm2, Dpm2Ancestral, DpmPp2sAncestral, DpmSolverSinglestep, Heun, Ipndm, Lcm, Lms, Pndm, Restart,
    RestartInterval, Tcd, ThirdOrder, UniPc,
};
use ndarray::{Array2, ArrayView2};
use rand::{SeedableRng, rngs::StdRng};

fn mixture() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.4, 0.6],
        vec![vec![-1.0, 0.5], vec![1.0, -0.5]],
        vec![vec![0.05, 0.1], vec![0.1, 0.02]],
    )
    .unwrap()
}

fn start(seed: u64) -> Array2<f64> {
    standard_normal((6, 2), &mut StdRng::seed_from_u64(seed))
}

fn run<S: Sampler>(s: &S, grid: &Grid, pred: Prediction, seed: u64) -> Array2<f64> {
    let mut model = mixture().with_prediction(pred);
    s.sample(&mut model, start(seed), grid, &mut StdRng::seed_from_u64(99))
        .unwrap()
}

fn max_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Calls `f` with every sampler (boxed through a closure per type).
macro_rules! for_each_sampler {
    ($f:ident) => {{
        $f("Ddpm", &Ddpm::new().clip_sample(None));
        $f("Ddim", &Ddim::new().clip_sample(None));
        $f("Ddim eta 1", &Ddim::new().eta(1.0).clip_sample(None));
        $f("Euler", &Euler::new());
        $f("Euler churn", &Euler::new().s_churn(5.0));
        $f("EulerAncestral", &EulerAncestral::new());
        $f("Heun", &Heun::new());
        $f("Heun churn", &Heun::new().s_churn(5.0));
        $f("Dpm2", &Dpm2::new());
        $f("Dpm2Ancestral", &Dpm2Ancestral::new());
        $f("DpmSolver 1", &DpmSolver::new().order(1));
        $f("DpmSolver 2M", &DpmSolver::new());
        $f("DpmSolver 3M", &DpmSolver::new().order(3));
        $f(
            "DpmSolver 3M corrected",
            &DpmSolver::new().order(3).third_order(ThirdOrder::Corrected),
        );
        $f("DpmSolver 2M SDE", &DpmSolver::new().sde(true));
        $f("DpmSolver 3M SDE", &DpmSolver::new().order(3).sde(true));
        $f("DpmPp2sAncestral", &DpmPp2sAncestral::new());
        $f("DpmSolverSinglestep 2", &DpmSolverSinglestep::new());
        $f("DpmSolverSinglestep 3", &DpmSolverSinglestep::new().order(3));
        $f("UniPc 2", &UniPc::new());
        $f("Restart", &Restart::new());
        $f(
            "Restart (intervals)",
            &Restart::new().intervals(vec![RestartInterval {
                min_sigma: 0.5,
                steps: 3,
                times: 2,
                max_sigma: 3.0,
            }]),
        );
        $f("UniPc 3", &UniPc::new().order(3));
        $f("Deis 3", &Deis::new().order(3));
        $f("Lms", &Lms::new());
        $f("Pndm", &Pndm::new());
        $f("Plms", &Pndm::new().skip_prk_steps(true));
        $f("Ipndm", &Ipndm::new());
        $f("Lcm", &Lcm::new());
        $f("Tcd", &Tcd::new());
        $f(
            "Lcm (consistency renoise)",
            &Lcm::new()
                .boundary_condition(None)
                .consistency_renoise(Some((0.002, 80.0, 1.0))),
        );
    }};
}

/// DDIM(eta = 0) = Euler = DPM-Solver++(1) = UniP-1 = DEIS-1 = LMS-1 = iPNDM-1: all are the same
/// first-order update `x' = alpha' x0 + sigma' eps` (the DESIGN identities).
#[test]
fn first_order_methods_are_one_update() {
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    for grid in [
        s.grid(17, Spacing::Trailing).unwrap(),
        s.grid(9, Spacing::KARRAS).unwrap(),
        s.with_zero_terminal_snr()
            .unwrap()
            .grid(12, Spacing::Trailing)
            .unwrap(),
    ] {
        let p = Prediction::Velocity;
        let ddim = run(&Ddim::new().clip_sample(None), &grid, p, 1);
        let others = [
            ("Euler", run(&Euler::new(), &grid, p, 1)),
            ("DPM++ 1", run(&DpmSolver::new().order(1), &grid, p, 1)),
            (
                "UniP-1",
                run(&UniPc::new().order(1).corrector(false), &grid, p, 1),
            ),
            ("DEIS-1", run(&Deis::new().order(1), &grid, p, 1)),
            ("LMS-1", run(&Lms::new().order(1), &grid, p, 1)),
            ("iPNDM-1", run(&Ipndm::new().order(1), &grid, p, 1)),
            (
                "singlestep-1",
                run(&DpmSolverSinglestep::new().order(1), &grid, p, 1),
            ),
        ];
        for (name, out) in others {
            let d = max_diff(&ddim, &out);
            assert!(d < 1e-12, "{name} differs from DDIM by {d:e}");
        }
    }
}

/// DDIM(eta) = Euler-ancestral(eta) with the same noise, and DDPM (posterior variance) =
/// DDIM(eta = 1) without clipping.
#[test]
fn ancestral_identities() {
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let grid = s.grid(25, Spacing::Leading { offset: 1 }).unwrap();
    for eta in [0.3, 1.0] {
        let a = run(
            &Ddim::new().eta(eta).clip_sample(None),
            &grid,
            Prediction::Epsilon,
            2,
        );
        let b = run(&EulerAncestral::new().eta(eta), &grid, Prediction::Epsilon, 2);
        assert!(max_diff(&a, &b) < 1e-12, "eta {eta}: {}", max_diff(&a, &b));
    }
    let a = run(&Ddpm::new().clip_sample(None), &grid, Prediction::Epsilon, 3);
    let b = run(
        &Ddim::new().eta(1.0).clip_sample(None),
        &grid,
        Prediction::Epsilon,
        3,
    );
    assert!(max_diff(&a, &b) < 1e-12);
    // DPM-Solver++ 2M SDE with eta = 0 is DPM-Solver++ 2M.
    let a = run(
        &DpmSolver::new().sde(true).eta(0.0),
        &grid,
        Prediction::Epsilon,
        4,
    );
    let b = run(&DpmSolver::new(), &grid, Prediction::Epsilon, 4);
    assert!(max_diff(&a, &b) < 1e-15);
}

/// `model_calls` is exactly the number of model evaluations, for every sampler, on grids that
/// end at the clean level, at the first timestep (a zero-length last step), at pure noise.
#[test]
fn model_call_accounting() {
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grids = [
        s.grid(10, Spacing::LinspaceRounded).unwrap(),
        s.grid(10, Spacing::LinspaceRounded)
            .unwrap()
            .with_final(FinalLevel::FirstTimestep),
        s.grid(7, Spacing::KARRAS)
            .unwrap()
            .with_final(FinalLevel::FirstTimestep),
        s.with_zero_terminal_snr()
            .unwrap()
            .grid(6, Spacing::Trailing)
            .unwrap(),
        s.grid(1, Spacing::Trailing).unwrap(),
    ];
    let check = |name: &str, sampler: &dyn Fn(&Grid) -> (usize, usize)| {
        for g in &grids {
            let (calls, promised) = sampler(g);
            assert_eq!(calls, promised, "{name} on {:?}", g.timesteps());
        }
    };
    fn count<S: Sampler>(sampler: &S, g: &Grid) -> (usize, usize) {
        let mut calls = 0;
        let mut model = FnDenoiser::new(Prediction::Velocity, |x: ArrayView2<'_, f64>, l: &NoiseLevel| {
            calls += 1;
            let gm = mixture().with_prediction(Prediction::Velocity);
            let mut gm = gm;
            gm.denoise(x, l)
        });
        sampler
            .sample(&mut model, start(0), g, &mut StdRng::seed_from_u64(0))
            .unwrap();
        (calls, sampler.model_calls(g))
    }
    macro_rules! one {
        ($name:expr, $s:expr) => {
            check($name, &|g| count($s, g))
        };
    }
    one!("Heun (2N - 1)", &Heun::new());
    let g = s.grid(18, Spacing::KARRAS).unwrap();
    assert_eq!(Heun::new().model_calls(&g), 35);
    fn all(name: &str, sampler: &impl Sampler) {
        let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        for g in [
            s.grid(10, Spacing::LinspaceRounded).unwrap(),
            s.grid(10, Spacing::LinspaceRounded)
                .unwrap()
                .with_final(FinalLevel::FirstTimestep),
            s.grid(7, Spacing::KARRAS)
                .unwrap()
                .with_final(FinalLevel::FirstTimestep),
            s.with_zero_terminal_snr()
                .unwrap()
                .grid(6, Spacing::Trailing)
                .unwrap(),
            s.grid(1, Spacing::Trailing).unwrap(),
        ] {
            let (calls, promised) = count(sampler, &g);
            assert_eq!(calls, promised, "{name} on {:?}", g.timesteps());
        }
    }
    for_each_sampler!(all);
}

/// Every sampler runs in f32 and agrees with its f64 run (same noise) to f32 precision, on a
/// v-prediction model over a zero-terminal-SNR grid that starts at pure noise.
#[test]
fn f32_f64_and_zero_terminal_snr() {
    fn check(name: &str, sampler: &impl Sampler) {
        let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)
            .unwrap()
            .with_zero_terminal_snr()
            .unwrap();
        let grid = s.grid(12, Spacing::Trailing).unwrap();
        // One block per step, and more for samplers that take steps beyond the grid's (Restart).
        let noise: Vec<Vec<f64>> = (0..48)
            .map(|k| standard_normal::<f64, _, _, _>(12, &mut StdRng::seed_from_u64(k)).to_vec())
            .collect();
        let mut model = mixture().with_prediction(Prediction::Velocity);
        let x64 = start(5);
        let a = sampler
            .sample(
                &mut model,
                x64.clone(),
                &grid,
                &mut ReplayNoise::new(noise.clone()),
            )
            .unwrap();
        let n32: Vec<Vec<f32>> = noise
            .iter()
            .map(|v| v.iter().map(|&x| x as f32).collect())
            .collect();
        let b = sampler
            .sample(
                &mut model,
                x64.mapv(|v| v as f32),
                &grid,
                &mut ReplayNoise::new(n32),
            )
            .unwrap();
        let d = a
            .iter()
            .zip(b.iter())
            .fold(0.0f64, |m, (p, q)| m.max((p - f64::from(*q)).abs()));
        assert!(a.iter().all(|v| v.is_finite()), "{name}: non-finite output");
        assert!(d < 1e-3, "{name}: f32 and f64 differ by {d:e}");
    }
    for_each_sampler!(check);
}

/// Rectified flow: every deterministic sampler converges to the exact ODE solution of a
/// Gaussian on a shifted flow grid (errors at 80 steps well below those at 10).
#[test]
fn samplers_work_on_flow_grids() {
    fn check(name: &str, sampler: &impl Sampler) {
        let flow = FlowSchedule::new(1000)
            .unwrap()
            .with_shift(FlowShift::Static(3.0))
            .unwrap();
        let g = GaussianMixture::gaussian(vec![0.4, -0.2], vec![0.09, 0.25]).unwrap();
        let model = g.clone().with_prediction(Prediction::Flow);
        let err = |n: usize| {
            let grid = flow.grid(n, Spacing::DpmLinspace).unwrap();
            let x = start(7);
            let exact = g
                .ode_solution(x.view(), &grid.levels()[0], &grid.levels()[n])
                .unwrap();
            let mut m = model.clone();
            let out = sampler
                .sample(&mut m, x, &grid, &mut StdRng::seed_from_u64(1))
                .unwrap();
            max_diff(&out, &exact)
        };
        let (e10, e80) = (err(10), err(80));
        println!("{name:28} flow grid: error {e10:.2e} at 10 steps, {e80:.2e} at 80");
        // 8 times the steps must shrink the error several times over. (The flow-matching
        // linspace grid ends with a long jump in log-SNR, to sigma = 0.003, that limits every
        // method; orders are measured in tests/convergence.rs.)
        let gain = 6.0;
        assert!(e80 < e10 / gain, "{name}: {e10:e} -> {e80:e}");
    }
    check("Euler", &Euler::new());
    check("Heun", &Heun::new());
    check("Dpm2", &Dpm2::new());
    check("DpmSolver 2M", &DpmSolver::new());
    check(
        "DpmSolver 3M corrected",
        &DpmSolver::new().order(3).third_order(ThirdOrder::Corrected),
    );
    check("UniPc 2", &UniPc::new());
    check("UniPc 3", &UniPc::new().order(3));
    check("Deis 2", &Deis::new());
    check("Lms", &Lms::new());
    check("DpmSolverSinglestep 2", &DpmSolverSinglestep::new());
    check("Ipndm", &Ipndm::new());
}

/// A NaN or infinite model output at any call of any sampler (clamped or not) is reported as
/// `NonFinite { what: "model output" }` at the step of that call, never written on.
#[test]
fn non_finite_model_output_is_caught_at_every_call() {
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = s.grid(6, Spacing::Trailing).unwrap();
    fn clean_calls<S: Sampler>(sampler: &S, grid: &Grid) -> usize {
        let mut rng = StdRng::seed_from_u64(0);
        let mut run = sampler
            .start(Array2::<f32>::ones((2, 3)), grid, Prediction::Epsilon, &mut rng)
            .unwrap();
        let mut n = 0;
        while run.request().is_some() {
            run.output_buffer().fill(0.1);
            run.respond_in_place().unwrap();
            n += 1;
        }
        n
    }
    fn check<S: Sampler>(name: &str, sampler: &S, grid: &Grid) {
        let calls = clean_calls(sampler, grid);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for k in 0..calls {
                let mut rng = StdRng::seed_from_u64(0);
                let mut run = sampler
                    .start(Array2::<f32>::ones((2, 3)), grid, Prediction::Epsilon, &mut rng)
                    .unwrap();
                for _ in 0..k {
                    run.output_buffer().fill(0.1);
                    run.respond_in_place().unwrap();
                }
                let step = run.request().unwrap().step;
                let mut out = run.output_buffer();
                out.fill(0.1);
                out[[1, 2]] = bad;
                match run.respond_in_place() {
                    Err(Error::NonFinite {
                        step: s,
                        what: "model output",
                        ..
                    }) if s == step => {}
                    other => panic!("{name}: {bad} at call {k} (step {step}): {other:?}"),
                }
                assert!(run.request().is_none(), "{name}: the run stops after an error");
            }
        }
    }
    macro_rules! one {
        ($name:expr, $s:expr) => {
            check($name, $s, &grid)
        };
    }
    fn each<S: Sampler>(name: &str, s: &S) {
        let s_ = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        check(name, s, &s_.grid(6, Spacing::Trailing).unwrap());
    }
    for_each_sampler!(each);
    // Clamped x0 estimates (a clamp would map the bad value to a bound).
    one!("Ddim clip", &Ddim::new().clip_sample(Some(1.0)));
    one!("Ddpm clip", &Ddpm::new().clip_sample(Some(1.0)));
    let t = Thresholding::default();
    one!("DpmSolver thresholding", &DpmSolver::new().thresholding(Some(t)));
    one!("UniPc thresholding", &UniPc::new().thresholding(Some(t)));
    one!("Heun clip", &Heun::new().clip_sample(Some(1.0)));
}

/// `sample_with` runs exactly as `sample` and reports every model call in order, with a
/// working x0 preview.
#[test]
fn progress_callback_sees_every_call() {
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = s.grid(7, Spacing::KARRAS).unwrap();
    fn check<S: Sampler>(name: &str, sampler: &S, grid: &Grid) {
        let plain = sampler
            .sample(&mut mixture(), start(3), grid, &mut StdRng::seed_from_u64(4))
            .unwrap();
        let mut calls = Vec::new();
        let mut last_x0 = None;
        let with = sampler
            .sample_with(
                &mut mixture(),
                start(3),
                grid,
                &mut StdRng::seed_from_u64(4),
                |p| {
                    calls.push((p.call, p.total_calls, p.step, p.level));
                    last_x0 = Some(p.x0().unwrap());
                },
            )
            .unwrap();
        assert_eq!(plain, with, "{name}");
        let total = sampler.model_calls(grid);
        assert_eq!(calls.len(), total, "{name}");
        let mut last_step = 0;
        for (i, &(call, tot, step, level)) in calls.iter().enumerate() {
            assert_eq!((call, tot), (i + 1, total), "{name}");
            // Steps count up from 0, at most one per call (Restart's walks add steps beyond the
            // grid's).
            assert!(step <= i && step >= last_step && level.sigma > 0.0, "{name}");
            last_step = step;
        }
        let x0 = last_x0.unwrap();
        assert!(x0.iter().all(|v| v.is_finite()), "{name}");
    }
    fn each<S: Sampler>(name: &str, s: &S) {
        let sch = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        check(name, s, &sch.grid(7, Spacing::KARRAS).unwrap());
    }
    for_each_sampler!(each);
    // DDIM's last call is at the last level before the clean one; its x0 preview is the result.
    let mut model = mixture();
    let mut preview = None;
    let out = Ddim::new()
        .clip_sample(None)
        .sample_with(&mut model, start(5), &grid, &mut StdRng::seed_from_u64(0), |p| {
            preview = Some(p.x0().unwrap());
        })
        .unwrap();
    assert!(max_diff(&out, &preview.unwrap()) < 1e-12);
}
