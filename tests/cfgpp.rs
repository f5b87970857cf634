//! The CFG++ samplers against ComfyUI's (tests/fixtures/gen_cfgpp.py): every CFG++ name with
//! every scheduler on SD 1.5, and on SD3 and Flux, guided by two different Gaussian mixtures at
//! scales 1 to 2, from the seed alone (ComfyUI's starting noise and noise sampler through
//! `TorchGenerator`), float64, to 1e-10 (the two compute the same formulas in another order; a
//! shifted level, a missing draw or the plain sampler's update are all > 1e-3 off). Plus the
//! identities: CFG++ at scale 1 is the conditional model's CFG++ run, and without branches the
//! CFG++ samplers are their plain counterparts.

mod common;

use common::{f64s, fixture, model_sampling, str_of};
use diffusion_samplers::analytic::GaussianMixture;
use diffusion_samplers::guidance::Cfg;
use diffusion_samplers::noise::TorchGenerator;
use diffusion_samplers::prelude::*;
use ndarray::Array3;
use serde_json::Value;

fn mixture(v: &Value) -> GaussianMixture {
    GaussianMixture::new(
        f64s(&v["weights"]),
        common::f64s2(&v["means"]),
        common::f64s2(&v["variances"]),
    )
    .unwrap()
}

fn run(fx: &Value, case: &Value, scale: Option<f64>) -> Array3<f64> {
    let name = str_of(case, "sampler");
    let ms = model_sampling(str_of(case, "model"));
    let sigmas = f64s(&case["sigmas"]);
    let preset = Preset::get(name).unwrap();
    let (sampler, grid) = preset.on_sigmas(&ms, &sigmas).unwrap();
    let seed = fx["seed"].as_u64().unwrap();
    let cond = mixture(&fx["cond"]).with_prediction(Prediction::Sample);
    let uncond = mixture(&fx["uncond"]).with_prediction(Prediction::Sample);
    let x: Array3<f64> = grid
        .initial_sample((2, 1, 4), &mut TorchGenerator::new(seed))
        .unwrap();
    let mut noise = preset
        .comfyui_noise_on_sigmas(&ms, &sigmas, seed, &[2, 1, 4])
        .unwrap();
    match scale {
        Some(s) => {
            // ComfyUI's CFG++ samplers evaluate the unconditional branch at scale 1 too, all
            // but cfgpp_ud10_ab (which keeps ComfyUI's CFG-1 optimisation).
            let rule = Cfg::new(s).uncond_at_one(name != "cfgpp_ud10_ab");
            let mut model = Guidance::with_rule(cond, uncond, rule);
            sampler.sample(&mut model, x, &grid, &mut noise).unwrap()
        }
        None => {
            let mut model = cond;
            sampler.sample(&mut model, x, &grid, &mut noise).unwrap()
        }
    }
}

#[test]
fn cfg_pp_samplers_match_comfyui() {
    let fx = fixture("cfgpp.json");
    let runs = fx["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 112);
    let mut failures = Vec::new();
    for case in runs {
        let out = run(&fx, case, case["cfg"].as_f64());
        let theirs = f64s(&case["out"]);
        let err = out
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let label = format!(
            "{} {} {} {} steps, cfg {}",
            str_of(case, "sampler"),
            str_of(case, "model"),
            str_of(case, "scheduler"),
            case["steps"],
            case["cfg"]
        );
        if err.is_nan() || err >= 1e-10 {
            failures.push(format!("{label}: differs by {err:e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Without branches (a plain model: the unconditional estimate is the guided one) each CFG++
/// sampler is its plain counterpart, up to rounding, on a VP grid with the same noise — except
/// `dpmpp_2s_ancestral_cfg_pp`, whose last stage pairs the first call's guided estimate with the
/// midpoint's unconditional one (ComfyUI's code; about 0.04 apart here). On a flow grid the
/// ancestral Euler pair differs too (the plain one uses the rectified-flow split there).
#[test]
fn without_branches_cfg_pp_is_the_plain_sampler() {
    let fx = fixture("cfgpp.json");
    let ms = model_sampling("sd15");
    let pairs = [
        ("euler_cfg_pp", "euler"),
        ("euler_ancestral_cfg_pp", "euler_ancestral"),
        ("dpmpp_2m_cfg_pp", "dpmpp_2m"),
        ("res_multistep_cfg_pp", "res_multistep"),
        ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral"),
        ("gradient_estimation_cfg_pp", "gradient_estimation"),
        ("dpmpp_2s_ancestral_cfg_pp", "dpmpp_2s_ancestral"),
    ];
    for (pp, plain) in pairs {
        let run = |name: &str| {
            let (sampler, grid) = Preset::get(&format!("{name}_karras"))
                .unwrap()
                .build(&ms, 12)
                .unwrap();
            let mut model = mixture(&fx["cond"]).with_prediction(Prediction::Epsilon);
            let x: Array3<f64> = grid.initial_sample((8, 1, 4), &mut SeededNoise::new(3)).unwrap();
            sampler
                .sample(&mut model, x, &grid, &mut SeededNoise::new(4))
                .unwrap()
        };
        let (a, b) = (run(pp), run(plain));
        let diff = a.iter().zip(&b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        if pp == "dpmpp_2s_ancestral_cfg_pp" {
            assert!(diff > 1e-3, "{pp}: {diff:e}");
        } else {
            assert!(diff < 1e-10, "{pp} vs {plain}: {diff:e}");
        }
    }
}

/// Guidance at scale 1 skips the unconditional branch (as diffusers and ComfyUI's CFG-1
/// optimisation do): every CFG++ sampler then runs as on the conditional model alone, bit for
/// bit; forcing the branch (ComfyUI's CFG++ samplers) renoises with it and differs.
#[test]
fn scale_one_is_the_conditional_run() {
    let fx = fixture("cfgpp.json");
    let ms = model_sampling("sd15");
    for name in [
        "euler_ancestral_cfg_pp",
        "dpmpp_2m_cfg_pp",
        "cfgpp_ud10_ab",
        "gradient_estimation_cfg_pp",
    ] {
        let (sampler, grid) = Preset::get(&format!("{name}_karras"))
            .unwrap()
            .build(&ms, 10)
            .unwrap();
        let x: Array3<f64> = grid.initial_sample((4, 1, 4), &mut SeededNoise::new(5)).unwrap();
        let cond = || mixture(&fx["cond"]).with_prediction(Prediction::Sample);
        let uncond = || mixture(&fx["uncond"]).with_prediction(Prediction::Sample);
        let alone = sampler
            .sample(&mut cond(), x.clone(), &grid, &mut SeededNoise::new(6))
            .unwrap();
        let mut one = Guidance::new(cond(), uncond(), 1.0);
        let guided = sampler
            .sample(&mut one, x.clone(), &grid, &mut SeededNoise::new(6))
            .unwrap();
        assert_eq!(alone, guided, "{name}");
        let mut forced = Guidance::with_rule(cond(), uncond(), Cfg::new(1.0).uncond_at_one(true));
        let renoised = sampler
            .sample(&mut forced, x, &grid, &mut SeededNoise::new(6))
            .unwrap();
        let diff = alone
            .iter()
            .zip(&renoised)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(diff > 1e-3, "{name}: {diff:e}");
    }
}
