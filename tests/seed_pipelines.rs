//! From the seed alone (no replayed noise): whole runs of diffusers' pipelines, ComfyUI's
//! KSampler and k-diffusion's samplers with their own seed conventions
//! (tests/fixtures/gen_seed_pipelines.py), reproduced with `TorchGenerator`,
//! `TorchBrownianTree` and the convention constructors, in float32 (and float64 for
//! k-diffusion).
//!
//! Tolerances: float32 runs agree to about 1e-5 (both sides round their own coefficients; the
//! noise is the same bits); the bound 2e-4 absolute on results of size ~1 rejects a shifted seed,
//! a missing or extra draw, or a noise drawn at another step (all O(0.1) or more, checked by
//! `a_wrong_seed_is_far_off`). float64 runs: 1e-9.

mod common;

use common::{f64s, fixture, gmm, model_sampling, str_of};
use diffusion_samplers::config::DiffusersConfig;
use diffusion_samplers::noise::{TorchBrownianTree, TorchGenerator};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{AnySampler, DpmPpSde, Float, NoiseSource};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn worst(ours: &ArrayD<impl Float>, theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a.as_f64() - b).abs())
        .fold(0.0, f64::max)
}

/// A diffusers pipeline: one generator (or one per element) for the latents and every step.
fn diffusers_run(case: &Value, seeds: &[u64]) -> ArrayD<f32> {
    let fields = case["config"].as_object().unwrap().clone();
    let cfg = DiffusersConfig::from_fields(fields).unwrap();
    let (sampler, grid) = cfg.build(case["steps"].as_u64().unwrap() as usize).unwrap();
    let shape = usizes(&case["shape"]);
    let mut model = gmm(&fixture_meta()).with_prediction(Prediction::Epsilon);
    fn go<N: NoiseSource<f32>>(
        s: &AnySampler,
        m: &mut impl Denoiser<f32, IxDyn>,
        g: &Grid,
        shape: &[usize],
        mut n: N,
    ) -> ArrayD<f32> {
        let x: ArrayD<f32> = g.initial_sample(IxDyn(shape), &mut n).unwrap();
        s.sample(m, x, g, &mut n).unwrap()
    }
    if seeds.len() == 1 {
        go(&sampler, &mut model, &grid, &shape, TorchGenerator::new(seeds[0]))
    } else {
        go(
            &sampler,
            &mut model,
            &grid,
            &shape,
            TorchGenerator::per_element(seeds.iter().copied()),
        )
    }
}

fn fixture_meta() -> Value {
    fixture("seed_pipelines.json")["meta"].clone()
}

#[test]
fn diffusers_pipelines_from_a_seed() {
    let fx = fixture("seed_pipelines.json");
    let cases = fx["diffusers"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let seeds = u64s(&case["seeds"]);
        let out = diffusers_run(case, &seeds);
        let err = worst(&out, &f64s(&case["out"]));
        let label = format!(
            "{} {} seeds {seeds:?} {:?}",
            str_of(case, "class"),
            case["config"],
            usizes(&case["shape"])
        );
        assert!(err < 2e-4, "{label}: differs by {err:e}");
    }
}

/// One ComfyUI run of ours: the starting sample from `TorchGenerator::new(seed)` (ComfyUI's
/// `prepare_noise`), the sampler's noise from `comfyui_noise*`, on our sigmas (`own = true`) or
/// on the fixture's (ComfyUI's float32 sigmas, as `SamplerCustom` would pass them).
fn comfyui_run(case: &Value, meta: &Value, own: bool) -> ArrayD<f32> {
    let (name, model_name, sched) = (
        str_of(case, "sampler"),
        str_of(case, "model"),
        str_of(case, "scheduler"),
    );
    let steps = case["steps"].as_u64().unwrap() as usize;
    let seed = case["seed"].as_u64().unwrap();
    let shape = usizes(&case["shape"]);
    let ms = model_sampling(model_name);
    let preset = Preset::get(&format!("{name}_{sched}")).unwrap();
    let (sampler, grid, mut noise) = if own {
        let (sampler, grid) = preset.build(&ms, steps).unwrap();
        (
            sampler,
            grid,
            preset.comfyui_noise(&ms, steps, 1.0, seed, &shape).unwrap(),
        )
    } else {
        let sigmas = f64s(&case["sigmas"]);
        let (sampler, grid) = preset.on_sigmas(&ms, &sigmas).unwrap();
        (
            sampler,
            grid,
            preset
                .comfyui_noise_on_sigmas(&ms, &sigmas, seed, &shape)
                .unwrap(),
        )
    };
    let prediction = if ms.is_flow() {
        Prediction::Flow
    } else {
        Prediction::Epsilon
    };
    let mut model = gmm(meta).with_prediction(prediction);
    let x: ArrayD<f32> = grid
        .initial_sample(IxDyn(&shape), &mut TorchGenerator::new(seed))
        .unwrap();
    sampler.sample(&mut model, x, &grid, &mut noise).unwrap()
}

/// ComfyUI's KSampler for SD 1.5 (Karras) and SD3 (simple) from the seed alone: ancestral
/// samplers (a generator of their own, seeded with the seed) and the Brownian-tree samplers
/// (torchsde trees over the whole batch), on ComfyUI's float32 sigmas.
///
/// `dpmpp_sde` evaluates the tree at a midpoint it computes (`exp(-(lambda + h / 2))`), which
/// torch computes in float32 with MKL's `log` / `exp` (5% of them one ulp off the correctly
/// rounded value); one ulp moves torchsde's `round(t, 6)` to another cell in some steps, and
/// the tree's noise there by about 1e-3: 2e-3 for it.
#[test]
fn comfyui_ksampler_from_a_seed() {
    let fx = fixture("seed_pipelines.json");
    let meta = &fx["meta"];
    let cases = fx["comfyui"].as_array().unwrap();
    assert_eq!(cases.len(), 48);
    for case in cases {
        let name = str_of(case, "sampler");
        let label = format!(
            "{name} {} {} seed {} {:?}",
            str_of(case, "model"),
            str_of(case, "scheduler"),
            case["seed"],
            usizes(&case["shape"])
        );
        let theirs = f64s(&case["out"]);
        let err = worst(&comfyui_run(case, meta, false), &theirs);
        let tol = if name == "dpmpp_sde" { 2e-3 } else { 2e-4 };
        assert!(err < tol, "{label}: differs by {err:e}");
    }
}

/// The same runs on the sigmas our presets compute. They equal ComfyUI's for SD3's `simple`
/// (table values), so every sampler matches there; SD 1.5's Karras sigmas agree to float32
/// rounding only (ComfyUI evaluates the Karras formula in float32: up to 10 ulp apart), which
/// the ancestral samplers do not notice but the Brownian tree does (its times are quantised to
/// 1e-6): there the results are merely close.
#[test]
fn comfyui_presets_from_a_seed() {
    let fx = fixture("seed_pipelines.json");
    let meta = &fx["meta"];
    for case in fx["comfyui"].as_array().unwrap() {
        let name = str_of(case, "sampler");
        let label = format!(
            "{name} {} {} seed {} {:?}",
            str_of(case, "model"),
            str_of(case, "scheduler"),
            case["seed"],
            usizes(&case["shape"])
        );
        let err = worst(&comfyui_run(case, meta, true), &f64s(&case["out"]));
        let brownian = Preset::get(name).unwrap().uses_brownian_noise();
        let tol = match (brownian, str_of(case, "model")) {
            (false, _) => 2e-4,
            (true, "sd3") if name != "dpmpp_sde" => 2e-4,
            (true, _) => 5e-2,
        };
        assert!(err < tol, "{label}: differs by {err:e}");
    }
}

fn kdiffusion_sampler(name: &str) -> AnySampler {
    let ms = model_sampling("sd15");
    match name {
        "sample_euler_ancestral" => EulerAncestral::new().into(),
        "sample_dpmpp_sde" => DpmPpSde::new().into(),
        "sample_dpmpp_2m_sde" => Preset::get("dpmpp_2m_sde").unwrap().sampler(&ms).unwrap(),
        "sample_dpmpp_3m_sde" => Preset::get("dpmpp_3m_sde").unwrap().sampler(&ms).unwrap(),
        other => panic!("unknown {other}"),
    }
}

fn kdiffusion_run<F: Float>(case: &Value, meta: &Value) -> ArrayD<F> {
    let sigmas = f64s(&case["sigmas"]);
    let grid = Grid::ve(&sigmas[..sigmas.len() - 1]).unwrap();
    let shape = usizes(&case["shape"]);
    let fn_name = str_of(case, "fn");
    let sampler = kdiffusion_sampler(fn_name);
    let mut model = gmm(meta);
    // torch.manual_seed(seed); x = torch.randn(shape) * sigmas[0]
    let mut g = TorchGenerator::new(case["seed"].as_u64().unwrap());
    let x: ArrayD<F> = grid.initial_sample(IxDyn(&shape), &mut g).unwrap();
    if fn_name == "sample_euler_ancestral" {
        // torch.randn_like(x) from the same global generator.
        sampler.sample(&mut model, x, &grid, &mut g).unwrap()
    } else {
        // BrownianTreeNoiseSampler(x, sigma_min, sigma_max) seeded by torch.randint from it.
        let (lo, hi) = (sigmas[sigmas.len() - 2], sigmas[0]);
        let mut tree = TorchBrownianTree::from_generator(&mut g, lo, hi, &shape).unwrap();
        sampler.sample(&mut model, x, &grid, &mut tree).unwrap()
    }
}

#[test]
fn k_diffusion_samplers_from_a_seed() {
    let fx = fixture("seed_pipelines.json");
    let meta = &fx["meta"];
    let cases = fx["kdiffusion"].as_array().unwrap();
    assert_eq!(cases.len(), 32);
    for case in cases {
        let dtype = str_of(case, "dtype");
        let theirs = f64s(&case["out"]);
        // float32 dpmpp_sde: its midpoint times, as for ComfyUI above.
        let f32_tol = if str_of(case, "fn") == "sample_dpmpp_sde" {
            2e-3
        } else {
            2e-4
        };
        let (err, tol) = if dtype == "f32" {
            (worst(&kdiffusion_run::<f32>(case, meta), &theirs), f32_tol)
        } else {
            (worst(&kdiffusion_run::<f64>(case, meta), &theirs), 1e-9)
        };
        let label = format!(
            "{} {dtype} seed {} {:?}",
            str_of(case, "fn"),
            case["seed"],
            usizes(&case["shape"])
        );
        assert!(err < tol, "{label}: differs by {err:e}");
    }
}

/// The tolerances above reject a wrong seed, a wrong tree seed and a skipped draw.
#[test]
fn a_wrong_seed_is_far_off() {
    let fx = fixture("seed_pipelines.json");
    let meta = &fx["meta"];
    // diffusers DDPM with the next seed.
    let case = &fx["diffusers"][0];
    assert_eq!(str_of(case, "class"), "DDPMScheduler");
    let err = worst(&diffusers_run(case, &[43]), &f64s(&case["out"]));
    assert!(err > 0.05, "seed 43 instead of 42: {err:e}");
    // ComfyUI's dpmpp_2m_sde with the tree of another seed (the starting noise right).
    let case = fx["comfyui"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| str_of(c, "sampler") == "dpmpp_2m_sde" && str_of(c, "model") == "sd3")
        .unwrap();
    let mut other = case.clone();
    other["seed"] = serde_json::json!(case["seed"].as_u64().unwrap() + 1);
    let shape = usizes(&case["shape"]);
    let ms = model_sampling("sd3");
    let sigmas = f64s(&case["sigmas"]);
    let preset = Preset::get("dpmpp_2m_sde").unwrap();
    let (sampler, grid) = preset.on_sigmas(&ms, &sigmas).unwrap();
    let mut model = gmm(meta).with_prediction(Prediction::Flow);
    let seed = case["seed"].as_u64().unwrap();
    let x: ArrayD<f32> = grid
        .initial_sample(IxDyn(&shape), &mut TorchGenerator::new(seed))
        .unwrap();
    let mut noise = preset
        .comfyui_noise_on_sigmas(&ms, &sigmas, seed + 1, &shape)
        .unwrap();
    let out = sampler.sample(&mut model, x, &grid, &mut noise).unwrap();
    let err = worst(&out, &f64s(&case["out"]));
    assert!(err > 0.05, "tree seed + 1: {err:e}");
    // k-diffusion's euler_ancestral with one draw skipped.
    let case = &fx["kdiffusion"][0];
    assert_eq!(str_of(case, "fn"), "sample_euler_ancestral");
    let sigmas = f64s(&case["sigmas"]);
    let grid = Grid::ve(&sigmas[..sigmas.len() - 1]).unwrap();
    let shape = usizes(&case["shape"]);
    let mut g = TorchGenerator::new(case["seed"].as_u64().unwrap());
    let x: ArrayD<f32> = grid.initial_sample(IxDyn(&shape), &mut g).unwrap();
    let mut skipped = ArrayD::<f32>::zeros(IxDyn(&shape));
    g.fill(0, skipped.view_mut());
    let out = EulerAncestral::new()
        .sample(&mut gmm(meta), x, &grid, &mut g)
        .unwrap();
    let err = worst(&out, &f64s(&case["out"]));
    assert!(err > 0.05, "one draw skipped: {err:e}");
}

/// ComfyUI's `prepare_noise`, with and without a latent's `batch_index`, bit for bit.
#[test]
fn comfyui_prepare_noise_matches() {
    let fx = fixture("seed_pipelines.json");
    let cases = fx["comfyui_prepare_noise"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let shape = usizes(&case["shape"]);
        let index = case["batch_index"]
            .as_array()
            .map(|v| v.iter().map(|i| i.as_u64().unwrap() as usize).collect::<Vec<_>>());
        let seed = case["seed"].as_u64().unwrap();
        let ours: ArrayD<f32> =
            diffusion_samplers::noise::comfyui_prepare_noise(IxDyn(&shape), seed, index.as_deref()).unwrap();
        let theirs = f64s(&case["noise"]);
        assert!(
            ours.iter().zip(&theirs).all(|(a, b)| f64::from(*a) == *b),
            "seed {seed} {shape:?} {index:?}"
        );
    }
    assert!(
        diffusion_samplers::noise::comfyui_prepare_noise::<f32, _, _>(IxDyn(&[2, 3]), 1, Some(&[0])).is_err()
    );
}
