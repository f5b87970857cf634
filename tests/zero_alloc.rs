//! After the first steps (which allocate a run's few working buffers), a step-by-step run that
//! answers in place allocates nothing: every update is fused and in place, multistep history
//! lives in recycled buffers. Checked with a counting global allocator, for every sampler.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use diffusion_samplers::prelude::*;
use diffusion_samplers::{
    AncestralSplit, CfgPpUd10Ab, Deis, Dpm2, Dpm2Ancestral, DpmAdaptive, DpmFast, DpmPp2mCfgPp,
    DpmPp2sAncestral, DpmPp2sAncestralCfgPp, DpmPpSde, DpmSolverSinglestep, EdmDeis, EdmIpndm, ErSde,
    EulerCfgPp, FlowSchedule, FlowShift, GradientEstimation, Heun, HeunPp2, Ipndm, Lcm, Lms, Pndm,
    ResMultistep, SaSolver, Seeds2, Seeds3, Tcd, UniPc,
};
use ndarray::{Array4, Zip};
use rand::{SeedableRng, rngs::SmallRng};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Only the measuring thread counts (the test harness's own threads allocate at times).
    static MEASURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn counts() -> bool {
    COUNTING.load(Ordering::Relaxed) && MEASURING.with(|m| m.get())
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counts() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counts() {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `sampler` in place with a cheap analytic "model" (x0 = 0.8 x) and returns the number of
/// allocations made after the first two steps.
fn allocations_after_warmup<S: Sampler>(sampler: &S, grid: &Grid) -> usize {
    let x = Array4::<f32>::from_elem((1, 4, 8, 8), 0.3);
    let mut rng = SmallRng::seed_from_u64(1);
    let mut run = sampler.start(x, grid, Prediction::Sample, &mut rng).unwrap();
    let mut steps_seen = 0;
    let mut last_step = usize::MAX;
    ALLOCS.store(0, Ordering::SeqCst);
    while let Some((req, mut out)) = run.request_with_output() {
        if req.step != last_step {
            last_step = req.step;
            steps_seen += 1;
            if steps_seen == 3 {
                COUNTING.store(true, Ordering::SeqCst);
            }
        }
        Zip::from(&mut out).and(&req.x).for_each(|o, &x| *o = 0.8 * x);
        run.respond_in_place().unwrap();
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert!(steps_seen >= 6, "grid too short to measure");
    ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn steps_do_not_allocate() {
    MEASURING.with(|m| m.set(true));
    // The counter counts: an owned copy of the sample per step (answering with `respond`
    // instead of in place) shows up.
    {
        let x = Array4::<f32>::from_elem((1, 4, 8, 8), 0.3);
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let copy = x.to_owned();
        COUNTING.store(false, Ordering::SeqCst);
        assert!(ALLOCS.load(Ordering::SeqCst) >= 1);
        drop(copy);
    }
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grids = [
        s.grid(12, Spacing::KARRAS).unwrap(),
        s.grid(12, Spacing::Leading { offset: 1 })
            .unwrap()
            .with_final(FinalLevel::FirstTimestep),
    ];
    // One test thread at a time counts: this file holds a single test.
    fn check(name: &str, sampler: &impl Sampler, grids: &[Grid]) {
        for g in grids {
            let n = allocations_after_warmup(sampler, g);
            assert_eq!(n, 0, "{name}: {n} allocations in steady-state steps");
        }
    }
    check("Ddpm", &Ddpm::new(), &grids);
    check("Ddim", &Ddim::new(), &grids);
    check("Ddim eta 1", &Ddim::new().eta(1.0), &grids);
    check("Euler", &Euler::new(), &grids);
    check("Euler churn", &Euler::new().s_churn(5.0), &grids);
    check("EulerAncestral", &EulerAncestral::new(), &grids);
    check("Heun", &Heun::new(), &grids);
    check("Dpm2", &Dpm2::new(), &grids);
    check("Dpm2Ancestral", &Dpm2Ancestral::new(), &grids);
    check("DpmSolver 2M", &DpmSolver::new(), &grids);
    check("DpmSolver 3M SDE", &DpmSolver::new().order(3).sde(true), &grids);
    check("DpmPp2sAncestral", &DpmPp2sAncestral::new(), &grids);
    check(
        "DpmSolverSinglestep 3",
        &DpmSolverSinglestep::new().order(3),
        &grids,
    );
    check("UniPc 3", &UniPc::new().order(3), &grids);
    check("Deis 3", &Deis::new().order(3), &grids);
    check("Lms", &Lms::new(), &grids);
    check("Pndm", &Pndm::new(), &grids);
    check("Plms", &Pndm::new().skip_prk_steps(true), &grids);
    check("Ipndm", &Ipndm::new(), &grids);
    check("Lcm", &Lcm::new(), &grids);
    check("Tcd", &Tcd::new(), &grids);
    // The ComfyUI / k-diffusion samplers.
    check("EdmIpndm", &EdmIpndm::new(), &grids);
    check("EdmIpndm variable", &EdmIpndm::new().variable_step(true), &grids);
    check("EdmDeis", &EdmDeis::new(), &grids);
    check("GradientEstimation", &GradientEstimation::new(), &grids);
    check("HeunPp2", &HeunPp2::new(), &grids);
    check("ResMultistep ancestral", &ResMultistep::ancestral(), &grids);
    check(
        "ResMultistep CFG++",
        &ResMultistep::ancestral().cfg_pp(true),
        &grids,
    );
    check(
        "GradientEstimation CFG++",
        &GradientEstimation::new().cfg_pp(true),
        &grids,
    );
    check("EulerCfgPp ancestral", &EulerCfgPp::ancestral(), &grids);
    check("DpmPp2sAncestralCfgPp", &DpmPp2sAncestralCfgPp::new(), &grids);
    check("DpmPp2mCfgPp", &DpmPp2mCfgPp::new(), &grids);
    check("CfgPpUd10Ab", &CfgPpUd10Ab::new(), &grids);
    check("DpmPpSde", &DpmPpSde::new(), &grids);
    check("Seeds2", &Seeds2::new(), &grids);
    check("Seeds2 exp_heun sde", &Seeds2::exp_heun().eta(1.0), &grids);
    check("Seeds3", &Seeds3::new(), &grids);
    check("ErSde", &ErSde::new(), &grids);
    check("SaSolver", &SaSolver::new(), &grids);
    check("SaSolver pece", &SaSolver::new().pece(true), &grids);
    // DPM-Solver-fast takes about a third as many steps as the grid has; the adaptive solver
    // its own.
    let long = [s.grid(30, Spacing::KARRAS).unwrap()];
    check("DpmFast eta 1", &DpmFast::new().eta(1.0), &long);
    check("DpmAdaptive eta 1", &DpmAdaptive::new().eta(1.0), &long);
    // A fitted solver's coefficients belong to one grid.
    for g in &grids {
        let fitted = diffusion_samplers::FittedMultistep::new(vec![[0.3, -0.1]; g.steps()]);
        check("FittedMultistep", &fitted, std::slice::from_ref(g));
    }
    // Restart starts a Heun run per walk (a new run allocates its buffers): on these 12-step grids
    // AUTOMATIC1111's configuration is one walk, and the wrapper adds nothing per step.
    check("Restart", &diffusion_samplers::Restart::new(), &grids);
    check(
        "Dpm2Ancestral rectified flow",
        &Dpm2Ancestral::new().split(AncestralSplit::RectifiedFlow),
        &grids,
    );
    let flow = FlowSchedule::new(1000)
        .unwrap()
        .with_shift(FlowShift::Static(3.0))
        .unwrap();
    let flow_grids = [flow.grid(12, Spacing::Linspace).unwrap()];
    check("EulerAncestral on flow", &EulerAncestral::new(), &flow_grids);
    check(
        "DpmSolver sigma space on flow",
        &DpmSolver::new().sigma_space(true),
        &flow_grids,
    );
    check(
        "UniPc sigma space on flow",
        &UniPc::new().order(3).sigma_space(true),
        &flow_grids,
    );
    torch_noise_sources_do_not_allocate();
    guided_steps_do_not_allocate();
}

/// As [`allocations_after_warmup`], with the given noise source and warm-up length.
fn allocations_with_noise<S: Sampler, N: diffusion_samplers::NoiseSource<f32>>(
    sampler: &S,
    grid: &Grid,
    noise: N,
    warmup: usize,
) -> usize {
    let x = Array4::<f32>::from_elem((2, 4, 8, 8), 0.3);
    let mut run = sampler.start(x, grid, Prediction::Sample, noise).unwrap();
    let mut steps_seen = 0;
    let mut last_step = usize::MAX;
    ALLOCS.store(0, Ordering::SeqCst);
    while let Some((req, mut out)) = run.request_with_output() {
        if req.step != last_step {
            last_step = req.step;
            steps_seen += 1;
            if steps_seen == warmup {
                COUNTING.store(true, Ordering::SeqCst);
            }
        }
        Zip::from(&mut out).and(&req.x).for_each(|o, &x| *o = 0.8 * x);
        run.respond_in_place().unwrap();
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert!(steps_seen >= warmup + 10, "grid too short to measure");
    ALLOCS.load(Ordering::SeqCst)
}

/// The torch-compatible sources: a generator, one per batch element, and the torchsde tree
/// (once its node cache is full, nodes reuse the evicted buffers). Called from the file's one
/// test (the counter is global).
fn torch_noise_sources_do_not_allocate() {
    use diffusion_samplers::noise::{TorchBrownianTree, TorchGenerator};
    let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)
        .unwrap()
        .grid(60, Spacing::KARRAS)
        .unwrap();
    let sde = DpmSolver::new().sde(true);
    let n = allocations_with_noise(&sde, &grid, TorchGenerator::new(1), 3);
    assert_eq!(n, 0, "TorchGenerator");
    let n = allocations_with_noise(&sde, &grid, TorchGenerator::per_element([1, 2]), 3);
    assert_eq!(n, 0, "TorchGenerator::per_element");
    let sigma = |l: &NoiseLevel| l.sigma / l.alpha;
    let tree = TorchBrownianTree::new(
        &[7],
        sigma(&grid.last_noisy()),
        sigma(&grid.levels()[0]),
        &[2, 4, 8, 8],
    )
    .unwrap()
    .with_cache_nodes(16);
    let n = allocations_with_noise(&sde, &grid, tree, 12);
    assert_eq!(n, 0, "TorchBrownianTree");
    let tree = TorchBrownianTree::new(
        &[7, 8],
        sigma(&grid.last_noisy()),
        sigma(&grid.levels()[0]),
        &[4, 8, 8],
    )
    .unwrap()
    .with_cache_nodes(16);
    let n = allocations_with_noise(&DpmPpSde::new(), &grid, tree, 12);
    assert_eq!(n, 0, "TorchBrownianTree, two trees, DPM++ SDE");
}

/// Guided steps answered in place: both branches written into the run's two buffers, combined
/// by the rule in place, CFG++ samplers reading the unconditional one — no allocation after the
/// first steps. Called from the file's one test.
fn guided_steps_do_not_allocate() {
    use diffusion_samplers::guidance::{
        Apg, ApgMix, Cfg, CfgNorm, CfgZeroStar, Context, EpsScaling, FreSca, FrequencyDecoupled,
        GuidanceRule, Interval, MagnitudeAware, Mahiro, Space, Tangential,
    };
    let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)
        .unwrap()
        .grid(12, Spacing::KARRAS)
        .unwrap();
    fn count<S: Sampler, R: GuidanceRule>(sampler: &S, grid: &Grid, rule: &mut R) -> usize {
        let x = Array4::<f32>::from_elem((1, 4, 8, 8), 0.3);
        let mut run = sampler
            .start(x, grid, Prediction::Sample, SmallRng::seed_from_u64(1))
            .unwrap();
        let mut steps_seen = 0;
        let mut last_step = usize::MAX;
        ALLOCS.store(0, Ordering::SeqCst);
        while let Some((req, mut guided, mut uncond)) = run.request_with_branches() {
            if req.step != last_step {
                last_step = req.step;
                steps_seen += 1;
                if steps_seen == 3 {
                    COUNTING.store(true, Ordering::SeqCst);
                }
            }
            Zip::from(&mut guided).and(&req.x).for_each(|o, &x| *o = 0.8 * x);
            Zip::from(&mut uncond).and(&req.x).for_each(|o, &x| *o = 0.5 * x);
            let ctx = Context::new(req.x.view(), req.call(), Prediction::Sample);
            rule.combine(&ctx, guided.view_mut(), Some(uncond.view_mut()))
                .unwrap();
            run.respond_in_place_guided().unwrap();
        }
        COUNTING.store(false, Ordering::SeqCst);
        assert!(steps_seen >= 6);
        ALLOCS.load(Ordering::SeqCst)
    }
    let mut rule = Cfg::new(2.0);
    for (name, s) in [
        (
            "euler_ancestral_cfg_pp",
            AnySampler::from(EulerCfgPp::ancestral()),
        ),
        ("dpmpp_2s_ancestral_cfg_pp", DpmPp2sAncestralCfgPp::new().into()),
        ("dpmpp_2m_cfg_pp", DpmPp2mCfgPp::new().into()),
        ("res_multistep_cfg_pp", ResMultistep::new().cfg_pp(true).into()),
        (
            "gradient_estimation_cfg_pp",
            GradientEstimation::new().cfg_pp(true).into(),
        ),
        ("cfgpp_ud10_ab", CfgPpUd10Ab::new().into()),
        ("dpmpp_2m (plain, guided)", DpmSolver::new().into()),
    ] {
        let n = count(&s, &grid, &mut rule);
        assert_eq!(n, 0, "{name}: {n} allocations in steady-state guided steps");
    }
    // Every rule, on a CFG++ sampler (which reads the branch a rule may rewrite): the buffers a
    // rule keeps (momentum, its work arrays, TCFG's SVD) are sized at its first active call, so
    // phases start within the warm-up (APG-mix switches after step 0, the interval is open from
    // the first level and closes later).
    let sampler = AnySampler::from(DpmPp2mCfgPp::new());
    let check = |name: &str, n: usize| {
        assert_eq!(n, 0, "{name}: {n} allocations in steady-state guided steps");
    };
    check(
        "CFG rescaled",
        count(&sampler, &grid, &mut Cfg::new(3.0).rescale(0.7)),
    );
    check(
        "CFG rescaled in x - x0",
        count(
            &sampler,
            &grid,
            &mut Cfg::new(3.0).rescale(0.7).rescale_space(Space::Residual),
        ),
    );
    check(
        "APG",
        count(&sampler, &grid, &mut Apg::new(4.0).momentum(Some(-0.5))),
    );
    check(
        "ComfyUI APG",
        count(&sampler, &grid, &mut Apg::comfyui(4.0).eta(0.3)),
    );
    check(
        "APG mix",
        count(&sampler, &grid, &mut ApgMix::new().scale(4.0).start_step(0)),
    );
    check("CFG-Zero*", count(&sampler, &grid, &mut CfgZeroStar::new(4.0)));
    check(
        "ComfyUI CFG-Zero*",
        count(&sampler, &grid, &mut CfgZeroStar::comfyui(4.0)),
    );
    check("TCFG", count(&sampler, &grid, &mut Tangential::comfyui(4.0)));
    check("MAMBO-G", count(&sampler, &grid, &mut MagnitudeAware::new(4.0)));
    check(
        "FreSca",
        count(&sampler, &grid, &mut FreSca::new(4.0).freq_cutoff(2)),
    );
    check(
        "FDG",
        count(&sampler, &grid, &mut FrequencyDecoupled::new(vec![6.0, 3.0])),
    );
    check(
        "CFGNorm",
        count(&sampler, &grid, &mut CfgNorm::new(Cfg::new(4.0))),
    );
    check(
        "epsilon scaling",
        count(&sampler, &grid, &mut EpsScaling::new(Cfg::new(4.0)).factor(1.01)),
    );
    check("Mahiro", count(&sampler, &grid, &mut Mahiro::new(4.0)));
    check(
        "interval",
        count(
            &sampler,
            &grid,
            &mut Interval::sigmas(Apg::new(4.0).momentum(Some(-0.5)), 2.0, f64::INFINITY).unwrap(),
        ),
    );
}
