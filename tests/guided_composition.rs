//! Every guidance rule composes with every sampler (ComfyUI's 45 names), with img2img,
//! inpainting and the step-by-step run, and progress callbacks see both branches.

use diffusion_samplers::edit::{self, Inpaint};
use diffusion_samplers::guidance::{
    Apg, ApgMix, Cfg, CfgNorm, CfgZeroStar, Context, EpsScaling, FreSca, FrequencyDecoupled, GuidanceRule,
    Interval, MagnitudeAware, Mahiro, Space, Tangential,
};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{DpmPp2mCfgPp, EulerCfgPp, Guidance, PRESETS};
use ndarray::Array4;

fn cond() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![1.0, -0.5, 0.8, 0.2], vec![-0.6, 0.9, 0.1, -1.0]],
        vec![vec![0.05, 0.1, 0.2, 0.05], vec![0.1, 0.05, 0.1, 0.2]],
    )
    .unwrap()
}

fn uncond() -> GaussianMixture {
    GaussianMixture::gaussian(vec![0.1, 0.0, -0.2, 0.0], vec![1.0, 0.8, 1.2, 1.0]).unwrap()
}

fn schedule() -> NoiseSchedule {
    NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap()
}

fn start(grid: &Grid) -> Array4<f64> {
    grid.initial_sample((2, 1, 4, 4), &mut SeededNoise::new(5))
        .unwrap()
}

fn max_diff(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// Calls `$f(&$ctx, name, rule)` with every rule at scale 4 (intervals open at the first level).
macro_rules! for_each_rule {
    ($ctx:expr, $f:ident) => {{
        $f(&$ctx, "CFG", Cfg::new(4.0));
        $f(
            &$ctx,
            "CFG rescale",
            Cfg::new(4.0).rescale(0.7).rescale_space(Space::Residual),
        );
        $f(&$ctx, "APG", Apg::new(4.0).eta(0.0).momentum(Some(-0.5)));
        $f(&$ctx, "ComfyUI APG", Apg::comfyui(4.0).eta(0.5));
        $f(&$ctx, "APG mix", ApgMix::new().scale(4.0).start_step(2));
        $f(&$ctx, "CFG-Zero*", CfgZeroStar::new(4.0));
        $f(&$ctx, "ComfyUI CFG-Zero*", CfgZeroStar::comfyui(4.0));
        $f(&$ctx, "TCFG", Tangential::comfyui(4.0));
        $f(&$ctx, "MAMBO-G", MagnitudeAware::new(4.0));
        $f(&$ctx, "FreSca", FreSca::new(4.0).freq_cutoff(1));
        $f(&$ctx, "FDG", FrequencyDecoupled::new(vec![6.0, 4.0]));
        $f(&$ctx, "CFGNorm", CfgNorm::new(Cfg::new(4.0)));
        $f(&$ctx, "eps scaling", EpsScaling::new(Cfg::new(4.0)).factor(1.02));
        $f(&$ctx, "Mahiro", Mahiro::new(4.0));
        $f(
            &$ctx,
            "interval",
            Interval::sigmas(Apg::new(4.0).momentum(Some(-0.5)), 1.0, f64::INFINITY).unwrap(),
        );
    }};
}

/// One sampler (a ComfyUI name), its grid and its unguided run.
struct Case {
    name: &'static str,
    sampler: AnySampler,
    grid: Grid,
    plain: Array4<f64>,
}

/// The guided run succeeds, is finite, and guidance moves it away from the conditional model's
/// own run (by more than 1e-3: every rule here guides at scale 4).
fn guided<R: GuidanceRule>(case: &Case, rule_name: &str, rule: R) {
    let mut m = Guidance::with_rule(cond(), uncond(), rule);
    let out = case
        .sampler
        .sample(&mut m, start(&case.grid), &case.grid, &mut SeededNoise::new(6))
        .unwrap_or_else(|e| panic!("{} with {rule_name}: {e}", case.name));
    assert!(
        out.iter().all(|v| v.is_finite()),
        "{} with {rule_name}",
        case.name
    );
    let d = max_diff(&out, &case.plain);
    assert!(d > 1e-3, "{} with {rule_name}: no effect ({d:e})", case.name);
}

/// Every rule with every sampler ComfyUI names (Karras grids; dpm_fast / dpm_adaptive their
/// own).
#[test]
fn every_rule_with_every_sampler() {
    let s = schedule();
    for name in PRESETS {
        let (sampler, grid) = Preset::get(&format!("{name}_karras"))
            .unwrap()
            .build(&s, 8)
            .unwrap();
        let plain = sampler
            .sample(&mut cond(), start(&grid), &grid, &mut SeededNoise::new(6))
            .unwrap();
        let case = Case {
            name,
            sampler,
            grid,
            plain,
        };
        for_each_rule!(case, guided);
    }
}

/// A stateful rule (APG with momentum; TCFG rewriting the unconditional branch) driven step by
/// step through a run — both branches written into the run's buffers, the rule combining in
/// place — is bit for bit the one-call `sample`, on a CFG++ sampler and an ancestral one.
#[test]
fn step_by_step_equals_sample() {
    let grid = schedule().grid(10, Spacing::KARRAS).unwrap();
    fn by_steps<S: Sampler, R: GuidanceRule>(s: &S, grid: &Grid, mut rule: R) -> Array4<f64> {
        let (mut c, mut u) = (cond(), uncond());
        let mut run = s
            .start(start(grid), grid, Prediction::Epsilon, SeededNoise::new(6))
            .unwrap();
        while let Some((req, mut out, mut un)) = run.request_with_branches() {
            let level = req.level;
            out.assign(&c.denoise(req.x.view(), &level).unwrap());
            un.assign(&u.denoise(req.x.view(), &level).unwrap());
            let ctx = Context::new(req.x.view(), req.call(), Prediction::Epsilon);
            rule.combine(&ctx, out.view_mut(), Some(un.view_mut())).unwrap();
            run.respond_in_place_guided().unwrap();
        }
        run.into_sample()
    }
    fn one_call<S: Sampler, R: GuidanceRule>(s: &S, grid: &Grid, rule: R) -> Array4<f64> {
        let mut m = Guidance::with_rule(cond(), uncond(), rule);
        s.sample(&mut m, start(grid), grid, &mut SeededNoise::new(6))
            .unwrap()
    }
    let apg = || Apg::new(4.0).eta(0.0).momentum(Some(-0.5));
    for (name, a, b) in [
        (
            "dpmpp_2m_cfg_pp + APG",
            by_steps(&DpmPp2mCfgPp::new(), &grid, apg()),
            one_call(&DpmPp2mCfgPp::new(), &grid, apg()),
        ),
        (
            "euler_ancestral_cfg_pp + TCFG",
            by_steps(&EulerCfgPp::ancestral(), &grid, Tangential::comfyui(3.0)),
            one_call(&EulerCfgPp::ancestral(), &grid, Tangential::comfyui(3.0)),
        ),
        (
            "DPM++ 2M SDE + APG",
            by_steps(&DpmSolver::new().sde(true), &grid, apg()),
            one_call(&DpmSolver::new().sde(true), &grid, apg()),
        ),
    ] {
        assert_eq!(a, b, "{name}");
    }
}

/// img2img with a guided model is sampling the noised input over the grid's tail with it
/// (the rule's step fractions count the tail's steps); inpainting with a guided model keeps
/// the known region exactly and guides the rest.
#[test]
fn img2img_and_inpainting_guided() {
    let grid = schedule().grid(12, Spacing::KARRAS).unwrap();
    let x0 = Array4::from_shape_fn((2, 1, 4, 4), |(b, _, h, w)| 0.3 * (b + h) as f64 - 0.2 * w as f64);
    let rule = || Interval::steps(Apg::new(4.0).momentum(Some(-0.5)), 0.0, 0.5).unwrap();
    for (name, sampler) in [
        ("dpmpp_2m_cfg_pp", AnySampler::from(DpmPp2mCfgPp::new())),
        ("DPM++ 2M", AnySampler::from(DpmSolver::new())),
    ] {
        let mut m = Guidance::with_rule(cond(), uncond(), rule());
        let a = edit::img2img(&sampler, &mut m, x0.view(), &grid, 0.6, &mut SeededNoise::new(3)).unwrap();
        // By hand: the tail, the input noised to its first level, a fresh rule.
        let tail = edit::for_strength(&grid, 0.6).unwrap();
        let mut noise = SeededNoise::new(3);
        let mut eps = Array4::zeros(x0.raw_dim());
        noise.fill(diffusion_samplers::noise::INITIAL_STEP, eps.view_mut());
        let x = edit::noise_to(x0.view(), eps.view(), &tail.levels()[0]).unwrap();
        let mut m = Guidance::with_rule(cond(), uncond(), rule());
        let b = sampler.sample(&mut m, x, &tail, &mut noise).unwrap();
        assert_eq!(a, b, "img2img with {name}");
        let plain = edit::img2img(
            &sampler,
            &mut cond(),
            x0.view(),
            &grid,
            0.6,
            &mut SeededNoise::new(3),
        )
        .unwrap();
        assert!(
            max_diff(&a, &plain) > 1e-3,
            "img2img with {name}: guidance has no effect"
        );

        // Inpainting: the left half of each image kept.
        let keep = Array4::from_shape_fn(x0.raw_dim(), |(_, _, _, w)| if w < 2 { 1.0 } else { 0.0 });
        let inpaint = Inpaint::new(x0.view(), keep.view()).unwrap();
        let mut m = Guidance::with_rule(cond(), uncond(), rule());
        let out = inpaint
            .sample(&sampler, &mut m, start(&grid), &grid, &mut SeededNoise::new(4))
            .unwrap();
        let plain = inpaint
            .sample(
                &sampler,
                &mut cond(),
                start(&grid),
                &grid,
                &mut SeededNoise::new(4),
            )
            .unwrap();
        for ((idx, &o), &k) in out.indexed_iter().zip(&keep) {
            if k == 1.0 {
                assert_eq!(
                    o, x0[idx],
                    "inpainting with {name}: kept value changed at {idx:?}"
                );
            }
        }
        assert!(
            max_diff(&out, &plain) > 1e-3,
            "inpainting with {name}: guidance has no effect"
        );
    }
}

/// Progress callbacks see the guided output and both branches: the branches are the models'
/// own outputs, the output their CFG combination; an unguided model shows no branches.
#[test]
fn progress_shows_both_branches() {
    let grid = schedule().grid(8, Spacing::KARRAS).unwrap();
    let mut calls = 0;
    let mut m = Guidance::with_rule(cond(), uncond(), Cfg::new(3.0));
    DpmPp2mCfgPp::new()
        .sample_with(&mut m, start(&grid), &grid, &mut SeededNoise::new(1), |p| {
            let (c, u) = (
                p.cond.expect("the conditional branch"),
                p.uncond.expect("the unconditional branch"),
            );
            let want_c = cond().denoise(p.x.view(), &p.level).unwrap();
            let want_u = uncond().denoise(p.x.view(), &p.level).unwrap();
            assert_eq!(c, want_c);
            assert_eq!(u, want_u);
            for ((o, c), u) in p.output.iter().zip(&c).zip(&u) {
                assert!((o - (u + 3.0 * (c - u))).abs() < 1e-12);
            }
            // The previews of each branch are x0 estimates like the guided one.
            assert!(p.x0().unwrap().iter().all(|v| v.is_finite()));
            calls += 1;
        })
        .unwrap();
    assert_eq!(calls, 8);
    DpmSolver::new()
        .sample_with(&mut cond(), start(&grid), &grid, &mut SeededNoise::new(1), |p| {
            assert!(p.cond.is_none() && p.uncond.is_none());
        })
        .unwrap();
}
