//! ComfyUI's model samplings, schedulers and KSampler conventions against ComfyUI's own code
//! (tests/fixtures/gen_comfyui.py at the pinned commit; tests/fixtures/comfyui.json).

mod common;

use common::{f64s, fixture, model_sampling, str_of};
use diffusion_samplers::grid::ComfyScheduler;
use serde_json::Value;

/// ComfyUI stores sigma tables in f32 and computes most schedulers in f32: relative 2e-6 covers
/// that rounding (f32 epsilon 6e-8 through a handful of operations), while neighbouring table
/// entries differ by at least 5e-5 (flux's 10 000-entry table at the top; 1e-3 for SD 1.5), so
/// an index off by one fails.
const REL: f64 = 2e-6;

/// The worst `|a - b| / (rel |b| + 1e-12)` over two lists of equal length.
fn worst(ours: &[f64], theirs: &[f64], rel: f64) -> f64 {
    assert_eq!(ours.len(), theirs.len(), "lengths differ: {ours:?} vs {theirs:?}");
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs() / (rel * b.abs() + 1e-12))
        .fold(0.0, f64::max)
}

#[test]
fn sigma_tables_timesteps_and_percent_to_sigma_match_comfyui() {
    let fx = fixture("comfyui.json");
    for (name, m) in fx["model_samplings"].as_object().unwrap() {
        let ms = model_sampling(name);
        let table = f64s(&m["sigmas"]);
        let w = worst(ms.sigmas(), &table, REL);
        assert!(w <= 1.0, "{name}: sigma table off by {w} tolerances");
        for probe in m["timestep"].as_array().unwrap() {
            let (sigma, t) = (probe[0].as_f64().unwrap(), probe[1].as_f64().unwrap());
            let ours = ms.timestep(sigma);
            if ms.is_flow() {
                assert!(
                    (ours - t).abs() <= 1e-5 * t.abs().max(1.0),
                    "{name}: timestep({sigma}) = {ours}, ComfyUI {t}"
                );
            } else if ours != t {
                // A probe at the geometric midpoint of two entries is a tie that f32 and f64
                // logs break differently: either neighbour is right there.
                let (a, b) = (table[ours as usize].ln(), table[t as usize].ln());
                let tie = (ours - t).abs() == 1.0 && (sigma.ln() - (a + b) / 2.0).abs() < 1e-6;
                assert!(tie, "{name}: timestep({sigma}) = {ours}, ComfyUI {t}");
            }
        }
        // sigma(t) interpolates at f32 timesteps: the tolerance of `normal` (see scheduler_rel).
        for probe in m["sigma"].as_array().unwrap() {
            let (t, sigma) = (probe[0].as_f64().unwrap(), probe[1].as_f64().unwrap());
            let w = worst(&[ms.sigma(t)], &[sigma], INTERP);
            assert!(w <= 1.0, "{name}: sigma({t}) = {} vs {sigma}", ms.sigma(t));
        }
        for probe in m["percent_to_sigma"].as_array().unwrap() {
            let (p, sigma) = (probe[0].as_f64().unwrap(), probe[1].as_f64().unwrap());
            let w = worst(&[ms.percent_to_sigma(p)], &[sigma], INTERP);
            assert!(
                w <= 1.0,
                "{name}: percent_to_sigma({p}) = {} vs {sigma}",
                ms.percent_to_sigma(p)
            );
        }
    }
}

/// The tolerance of a scheduler's sigmas. `normal` and `sgm_uniform` interpolate the f32
/// log-sigma table at f32 timesteps near 1000, whose rounding (6e-5) moves the interpolation
/// weight: up to 3e-5 relative at SD 1.5's low end (where log-sigma changes 0.35 per timestep),
/// still 30 times below a shift of one timestep.
fn scheduler_rel(s: ComfyScheduler) -> f64 {
    match s {
        ComfyScheduler::Normal | ComfyScheduler::SgmUniform => INTERP,
        _ => REL,
    }
}

/// Interpolation in the f32 table at an f32 timestep (see [`scheduler_rel`]).
const INTERP: f64 = 3e-5;

/// Power-law sigma nodes computed in f32 (see [`every_sigma_node_gives_comfyuis_sigmas`]).
const POW: f64 = 1e-5;

/// `kl_optimal` takes `tan` of an f32 angle near pi/2 for large sigmas: the f32 rounding of the
/// angle is amplified by `(1 + sigma^2) / sigma`, about `1e-7 sigma` relative (4e-4 for the
/// zero-terminal-SNR top sigma 4519).
fn kl_tol(ours: &[f64], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs() / ((REL + 1.5e-7 * b) * b.abs() + 1e-12))
        .fold(0.0, f64::max)
}

#[test]
fn every_scheduler_gives_comfyuis_sigmas() {
    let fx = fixture("comfyui.json");
    let mut checked = 0;
    for case in fx["schedulers"].as_array().unwrap() {
        let ms = model_sampling(str_of(case, "model"));
        let sched = ComfyScheduler::from_name(str_of(case, "scheduler")).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let ours = sched.sigmas(&ms, steps).unwrap();
        let theirs = f64s(&case["sigmas"]);
        if sched == ComfyScheduler::KlOptimal && steps == 1 {
            // Deliberate difference: ComfyUI's 0/0 gives NaN; one step is [sigma_max, 0].
            assert!(theirs[0].is_nan());
            assert_eq!(ours, vec![ms.sigma_max(), 0.0]);
            continue;
        }
        let w = if sched == ComfyScheduler::KlOptimal {
            kl_tol(&ours, &theirs)
        } else {
            worst(&ours, &theirs, scheduler_rel(sched))
        };
        assert!(w <= 1.0, "{case}: {w} tolerances\nours   {ours:?}");
        // Every list builds a grid (ComfyUI's sigmas decrease strictly).
        assert!(ms.grid(&ours).is_ok(), "{case}");
        checked += 1;
    }
    assert!(checked > 480, "{checked} scheduler cases");
}

#[test]
fn ksampler_conventions_match_comfyui() {
    let fx = fixture("comfyui.json");
    for case in fx["ksampler_sigmas"].as_array().unwrap() {
        let ms = model_sampling(str_of(case, "model"));
        let sched = ComfyScheduler::from_name(str_of(case, "scheduler")).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let denoise = case["denoise"].as_f64().unwrap();
        let discard = matches!(
            str_of(case, "sampler"),
            "dpm_2" | "dpm_2_ancestral" | "uni_pc" | "uni_pc_bh2"
        );
        let ours = ms.ksampler_sigmas(sched, steps, denoise, discard).unwrap();
        let theirs = f64s(&case["sigmas"]);
        let w = if sched == ComfyScheduler::KlOptimal {
            kl_tol(&ours, &theirs)
        } else {
            worst(&ours, &theirs, scheduler_rel(sched))
        };
        assert!(w <= 1.0, "{case}: {w} tolerances\nours   {ours:?}");
    }
}

/// ComfyUI's sigma-list nodes (AlignYourSteps, GITS, OptimalSteps, Polyexponential, VP, Laplace,
/// SDTurbo, Karras, Exponential, BetaSampling, Basic) at 1 to 40 steps and several denoise
/// values. The nodes return f32 tensors (and compute most lists in f32): relative 2e-6 (as for
/// the schedulers), 3e-5 where the node interpolates the f32 table at f32 timesteps, 1e-5 for
/// the power-law nodes (f32 `x^rho`, `exp` of an f32 ramp times a log range of 10.6 amplify the
/// f32 rounding about tenfold); adjacent sigmas differ by more than 1e-2 relative.
#[test]
fn every_sigma_node_gives_comfyuis_sigmas() {
    use diffusion_samplers::grid::{
        AysModel, OptimalStepsModel, ays_sigmas, exponential_sigmas, gits_sigmas, karras_sigmas,
        laplace_sigmas, optimal_steps_sigmas, polyexponential_sigmas, vp_sigmas,
    };
    let fx = fixture("comfyui.json");
    let mut checked = 0;
    for case in fx["nodes"].as_array().unwrap() {
        let i = &case["inputs"];
        let f = |k: &str| i[k].as_f64().unwrap();
        let steps = i["steps"].as_u64().unwrap() as usize;
        let denoise = i.get("denoise").and_then(Value::as_f64).unwrap_or(1.0);
        let ms = || model_sampling(str_of(case, "model"));
        let with_zero = |mut s: Vec<f64>| {
            s.push(0.0);
            s
        };
        let (ours, rel) = match str_of(case, "node") {
            "AlignYourStepsScheduler" => {
                let m = match i["model_type"].as_str().unwrap() {
                    "SD1" => AysModel::Sd1,
                    "SDXL" => AysModel::Sdxl,
                    _ => AysModel::Svd,
                };
                (ays_sigmas(m, steps, denoise), REL)
            }
            "GITSScheduler" => (gits_sigmas(f("coeff"), steps, denoise), REL),
            "OptimalStepsScheduler" => {
                let m = match i["model_type"].as_str().unwrap() {
                    "FLUX" => OptimalStepsModel::Flux,
                    "Wan" => OptimalStepsModel::Wan,
                    _ => OptimalStepsModel::Chroma,
                };
                (optimal_steps_sigmas(m, steps, denoise), REL)
            }
            "PolyexponentialScheduler" => (
                polyexponential_sigmas(steps, f("sigma_min"), f("sigma_max"), f("rho")),
                POW,
            ),
            "VPScheduler" => (vp_sigmas(steps, f("beta_d"), f("beta_min"), f("eps_s")), REL),
            "LaplaceScheduler" => (
                laplace_sigmas(steps, f("sigma_min"), f("sigma_max"), f("mu"), f("beta")),
                POW,
            ),
            "KarrasScheduler" => (
                karras_sigmas(steps, f("sigma_min"), f("sigma_max"), f("rho")).map(with_zero),
                POW,
            ),
            "ExponentialScheduler" => (
                exponential_sigmas(steps, f("sigma_min"), f("sigma_max")).map(with_zero),
                POW,
            ),
            "SDTurboScheduler" => (ms().sd_turbo_sigmas(steps, denoise), INTERP),
            "BetaSamplingScheduler" => (ms().beta_sigmas(steps, f("alpha"), f("beta")), REL),
            "BasicScheduler" => {
                let s = ComfyScheduler::from_name(i["scheduler"].as_str().unwrap()).unwrap();
                (ms().ksampler_sigmas(s, steps, denoise, false), scheduler_rel(s))
            }
            other => panic!("unknown node {other}"),
        };
        let ours = ours.unwrap_or_else(|e| panic!("{case}: {e}"));
        let theirs = f64s(&case["sigmas"]);
        let w = worst(&ours, &theirs, rel);
        assert!(w <= 1.0, "{case}: {w} tolerances\nours   {ours:?}");
        checked += 1;
    }
    assert_eq!(checked, 316);
}
