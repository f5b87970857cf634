//! Every ComfyUI sampler name against ComfyUI's own runs (tests/fixtures/gen_comfyui.py at the
//! pinned commit): the same starting noise, ComfyUI's noise replayed by interval, the exact
//! Gaussian-mixture denoiser; each model call's input and the result compared.
//!
//! ComfyUI works in k-diffusion's scaling for discrete models (`x / alpha`); this crate in the
//! model's own (`alpha x0 + sigma eps`): a VP sample is divided by its level's alpha before the
//! comparison, a flow sample compared as is.

mod common;

use common::{f64s, fixture, gmm, model_sampling, str_of};
use diffusion_samplers::grid::ModelSampling;
use diffusion_samplers::noise::{ByRef, NoiseSource};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{
    AnySampler, AnyState, BoxError, Denoiser, DpmAdaptive, DpmFast, DpmPpSde, NoiseLevel, Sampler,
};
use ndarray::{Array3, ArrayView3, ArrayViewMut, Dimension};
use serde_json::Value;

/// One recorded draw: its interval (ComfyUI sigmas; `None` for a bare `randn_like`) and values.
struct Draw {
    from: Option<f64>,
    to: Option<f64>,
    z: Vec<f64>,
}

/// Replays ComfyUI's draws: a request over `from -> to` takes the next recorded draw over the
/// same interval (relative 1e-7: ComfyUI's midpoints are computed in float64 like ours, while
/// neighbouring grid levels differ by more than 1e-3), skipping the draws ComfyUI makes but
/// multiplies by zero (res_multistep at eta 0, heunpp2's `randn_like`, dpm_fast's eta-0 noise,
/// zero-length intervals).
struct Replay {
    /// The model sampling whose sigmas the draws are over (`None`: VE levels, sigma itself).
    ms: Option<ModelSampling>,
    draws: Vec<Draw>,
    next: usize,
    errors: Vec<String>,
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-7 * a.abs().max(b.abs()) + 1e-12
}

impl NoiseSource<f64> for Replay {
    fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, f64, D>) {
        self.errors
            .push(format!("step {step}: noise without an interval"));
        let _ = out;
    }

    fn fill_interval<D: Dimension>(
        &mut self,
        step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        mut out: ArrayViewMut<'_, f64, D>,
    ) {
        let sigma = |l: &NoiseLevel| match &self.ms {
            Some(ms) => ms.sigma_of(l),
            None => l.sigma,
        };
        let (a, b) = (sigma(from), sigma(to));
        let found = (self.next..self.draws.len()).find(|&j| {
            let d = &self.draws[j];
            matches!((d.from, d.to), (Some(f), Some(t)) if close(f, a) && close(t, b))
        });
        match found {
            Some(j) => {
                for (o, z) in out.iter_mut().zip(&self.draws[j].z) {
                    *o = *z;
                }
                self.next = j + 1;
            }
            None => self.errors.push(format!(
                "step {step}: no recorded draw over {a} -> {b} after draw {}",
                self.next
            )),
        }
    }
}

/// The analytic denoiser, recording every call's level and input.
struct Recording<M> {
    model: M,
    calls: Vec<(NoiseLevel, Vec<f64>)>,
}

impl<M: Denoiser<f64, ndarray::Ix3>> Denoiser<f64, ndarray::Ix3> for Recording<M> {
    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }
    fn denoise(&mut self, x: ArrayView3<'_, f64>, level: &NoiseLevel) -> Result<Array3<f64>, BoxError> {
        self.calls.push((*level, x.iter().copied().collect()));
        self.model.denoise(x, level)
    }
}

fn draws(case: &Value) -> Vec<Draw> {
    case["draws"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| Draw {
            from: d["from"].as_f64(),
            to: d["to"].as_f64(),
            z: f64s(&d["z"]),
        })
        .collect()
}

fn array(v: &Value, shape: (usize, usize, usize)) -> Array3<f64> {
    Array3::from_shape_vec(shape, f64s(v)).unwrap()
}

/// ComfyUI's scaling of a sample of ours at `level`.
fn comfy_scale(ms: &ModelSampling, level: &NoiseLevel, x: &[f64]) -> Vec<f64> {
    let k = if ms.is_flow() { 1.0 } else { level.alpha };
    x.iter().map(|v| v / k).collect()
}

/// Runs one fixture case; returns the worst output error and a report line.
fn run(case: &Value, meta: &Value) -> Result<f64, String> {
    let name = str_of(case, "sampler");
    let ms = model_sampling(str_of(case, "model"));
    let sigmas = f64s(&case["sigmas"]);
    let preset = Preset::get(name).map_err(|e| e.to_string())?;
    // The KSampler's sigmas (scheduler, denoise, discarded penultimate) are ComfyUI's.
    let sched = diffusion_samplers::grid::ComfyScheduler::from_name(str_of(case, "scheduler")).unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let denoise = case["denoise"].as_f64().unwrap();
    let ours_sigmas = Preset::get(&format!("{name}_{}", sched.name()))
        .unwrap()
        .sigmas(&ms, steps, denoise)
        .map_err(|e| e.to_string())?;
    let rel = ours_sigmas
        .iter()
        .zip(&sigmas)
        .map(|(a, b)| (a - b).abs() / (b.abs() + 1e-12))
        .fold(0.0, f64::max);
    if ours_sigmas.len() != sigmas.len() || rel > 2e-6 {
        return Err(format!("sigmas differ: ours {ours_sigmas:?}, ComfyUI {sigmas:?}"));
    }
    let (sampler, grid) = preset.on_sigmas(&ms, &sigmas).map_err(|e| e.to_string())?;
    let shape = (2, 1, 4);
    let level0 = grid.levels()[0];
    let k0 = if ms.is_flow() { 1.0 } else { level0.alpha };
    let x = array(&case["x_init"], shape) * k0;
    let prediction = if ms.is_flow() {
        Prediction::Flow
    } else {
        Prediction::Epsilon
    };
    let mut model = Recording {
        model: gmm(meta).with_prediction(prediction),
        calls: Vec::new(),
    };
    let draws = draws(case);
    let mut noise = Replay {
        ms: Some(ms.clone()),
        draws,
        next: 0,
        errors: Vec::new(),
    };
    let out = sampler
        .sample(&mut model, x, &grid, &mut noise)
        .map_err(|e| e.to_string())?;
    // Model calls: the same count, sigmas and inputs (first divergence reported).
    let calls = case["calls"].as_array().unwrap();
    let mut first_bad = None;
    for (i, (c, (level, xin))) in calls.iter().zip(&model.calls).enumerate() {
        let s = c["sigma"].as_f64().unwrap();
        let dx = comfy_scale(&ms, level, xin)
            .iter()
            .zip(f64s(&c["x"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if first_bad.is_none() && (!close(ms.sigma_of(level), s) || dx > 1e-6 * (1.0 + s)) {
            first_bad = Some(format!(
                "call {i}: sigma ours {} ComfyUI {s}, input differs by {dx:.3e}",
                ms.sigma_of(level)
            ));
        }
    }
    let end = if matches!(name, "dpm_fast" | "dpm_adaptive") {
        grid.last_noisy()
    } else {
        *grid.levels().last().unwrap()
    };
    let ours: Vec<f64> = out.iter().copied().collect();
    let theirs = f64s(&case["out"]);
    // KSAMPLER's `inverse_noise_scaling(sigmas[-1], x)`: `x / (1 - sigma)` for flow models,
    // with uni_pc's in-place 0.001 end.
    let last = f64s(case.get("sigmas_after").unwrap_or(&case["sigmas"]));
    let unscale = if ms.is_flow() {
        1.0 - last[last.len() - 1]
    } else {
        1.0
    };
    let err = comfy_scale(&ms, &end, &ours)
        .iter()
        .map(|v| v / unscale)
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let mut problems = noise.errors;
    if calls.len() != model.calls.len() {
        problems.push(format!(
            "{} model calls, ComfyUI {}",
            model.calls.len(),
            calls.len()
        ));
    }
    problems.extend(first_bad);
    if problems.is_empty() {
        Ok(err)
    } else {
        Err(format!("{} (output error {err:.3e})", problems.join("; ")))
    }
}

/// Every sampler name on SD 1.5 (Karras and normal grids, 3 to 25 steps), zero-SNR SD 1.5,
/// SD3 and Flux (simple and normal), text-to-image and denoise 0.6. ComfyUI ran in float64:
/// the runs agree to 1e-12 where the sigmas are the fixture's; 1e-7 covers ComfyUI's f32 sigma
/// tables where a sampler reads them (sa_solver's tau interval, the flow offset of the first
/// sigma) and er_sde's f32 integration grid, while a one-index sigma shift moves the result by
/// more than 1e-3.
#[test]
fn every_sampler_reproduces_comfyuis_runs() {
    let fx = fixture("comfyui.json");
    let meta = &fx["meta"];
    let mut failures = Vec::new();
    let mut report = String::new();
    let cases = fx["trajectories"].as_array().unwrap();
    // 37 names on four model samplings, ten of them on six more settings.
    assert_eq!(cases.len(), 198);
    for case in cases {
        let label = format!(
            "{} {} {} {} steps denoise {}",
            str_of(case, "sampler"),
            str_of(case, "model"),
            str_of(case, "scheduler"),
            case["steps"],
            case["denoise"]
        );
        match run(case, meta) {
            Ok(err) if err <= 1e-7 => report += &format!("ok   {label}: {err:.2e}\n"),
            Ok(err) => failures.push(format!("{label}: output differs by {err:.3e}")),
            Err(e) => failures.push(format!("{label}: {e}")),
        }
    }
    if let Ok(path) = std::env::var("COMFY_REPORT") {
        std::fs::write(path, format!("{report}{}\n", failures.join("\n"))).unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// k-diffusion 0.1.1.post1's own `sample_dpm_fast`, `sample_dpm_adaptive` (orders 2 and 3,
/// with and without noise, two tolerances: the calls, accepted and rejected steps) and
/// `sample_dpmpp_sde` (Brownian-tree increments replayed) on a VE grid, in float64: 1e-9
/// absolute on the result (samples of size up to 30 at the start), where a one-step shift of
/// the grid or a changed controller decision moves it by more than 1e-3.
#[test]
fn dpm_fast_adaptive_and_sde_match_k_diffusion() {
    let fx = fixture("comfyui.json");
    let meta = &fx["meta"];
    let mut checked = 0;
    for case in fx["kdiffusion"].as_array().unwrap() {
        let o = &case["options"];
        let name = str_of(case, "sampler");
        let opt = |k: &str| o[k].as_f64().unwrap();
        let (sampler, sigmas): (AnySampler, Vec<f64>) = match name {
            "dpm_fast" => {
                // Only the ends and the number of steps (= calls) matter.
                let n = o["n"].as_u64().unwrap() as usize;
                let (lo, hi) = (opt("sigma_min"), opt("sigma_max"));
                let s = (0..n)
                    .map(|i| hi * (lo / hi).powf(i as f64 / (n - 1) as f64))
                    .collect();
                (DpmFast::new().eta(opt("eta")).into(), s)
            }
            "dpm_adaptive" => (
                DpmAdaptive::new()
                    .order(o["order"].as_u64().unwrap() as usize)
                    .eta(opt("eta"))
                    .rtol(opt("rtol"))
                    .atol(opt("atol"))
                    .into(),
                vec![opt("sigma_max"), opt("sigma_min")],
            ),
            "dpmpp_sde" => {
                // The grid: the sigma of every other call (k-diffusion computed its Karras
                // sigmas in f32; these are those values).
                let calls = case["calls"].as_array().unwrap();
                let s = calls
                    .iter()
                    .step_by(2)
                    .map(|c| c["sigma"].as_f64().unwrap())
                    .collect();
                (DpmPpSde::new().into(), s)
            }
            other => panic!("unknown k-diffusion case {other}"),
        };
        let grid = Grid::ve(&sigmas).unwrap();
        let x = array(&case["x_init"], (2, 1, 4));
        let mut model = Recording {
            model: gmm(meta),
            calls: Vec::new(),
        };
        let mut noise = Replay {
            ms: None,
            draws: draws(case),
            next: 0,
            errors: Vec::new(),
        };
        let label = format!("{name} {o}");
        let mut run = sampler
            .start(x, &grid, Prediction::Epsilon, ByRef(&mut noise))
            .unwrap();
        while let Some(req) = run.request() {
            let out = model.denoise(req.x.view(), &req.level).unwrap();
            run.respond(out).unwrap_or_else(|e| panic!("{label}: {e}"));
        }
        if let (Some(info), AnyState::DpmAdaptive(st)) = (case.get("info"), run.state()) {
            let i = st.info();
            let want = |k: &str| info[k].as_u64().unwrap() as usize;
            assert_eq!(
                (i.steps, i.nfe, i.n_accept, i.n_reject),
                (want("steps"), want("nfe"), want("n_accept"), want("n_reject")),
                "{label}"
            );
        }
        let out = run.into_sample();
        assert!(noise.errors.is_empty(), "{label}: {:?}", noise.errors);
        assert_eq!(
            model.calls.len(),
            case["calls"].as_array().unwrap().len(),
            "{label}"
        );
        let err = out
            .iter()
            .zip(f64s(&case["out"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-9, "{label}: result differs by {err:.3e}");
        checked += 1;
    }
    assert_eq!(checked, 18);
}
