//! Named presets (ComfyUI / AUTOMATIC1111 names): every name resolves to ComfyUI's sampler and
//! scheduler, and every one of the 37 × 9 ComfyUI pairs samples a Gaussian on a VP and a flow
//! schedule.

use diffusion_samplers::grid::{ComfyScheduler, ModelSampling};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{AnySampler, FlowSchedule, FlowShift, PRESETS, PresetSigmas, UniPc, UniPcVariant};
use ndarray::{Array2, Axis};

#[test]
fn names_resolve_to_samplers_and_schedulers() {
    let sd15 = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let cases: [(&str, &str, AnySampler, ComfyScheduler); 7] = [
        (
            "dpmpp_2m_karras",
            "dpmpp_2m_karras",
            DpmSolver::new().sigma_space(true).into(),
            ComfyScheduler::Karras,
        ),
        (
            "DPM++ 2M Karras",
            "dpmpp_2m_karras",
            DpmSolver::new().sigma_space(true).into(),
            ComfyScheduler::Karras,
        ),
        (
            "Euler a",
            "euler_ancestral",
            EulerAncestral::new().into(),
            ComfyScheduler::Normal,
        ),
        (
            "euler_ancestral_exponential",
            "euler_ancestral_exponential",
            EulerAncestral::new().into(),
            ComfyScheduler::Exponential,
        ),
        (
            "heun_sgm_uniform",
            "heun_sgm_uniform",
            Heun::new().into(),
            ComfyScheduler::SgmUniform,
        ),
        (
            "uni_pc",
            "uni_pc",
            UniPc::new()
                .order(3)
                .variant(UniPcVariant::Bh1)
                .sigma_space(true)
                .into(),
            ComfyScheduler::Normal,
        ),
        ("ddim", "ddim", Euler::new().into(), ComfyScheduler::Normal),
    ];
    for (name, canonical, sampler, scheduler) in cases {
        let p = Preset::get(name).unwrap();
        assert_eq!(p.name(), canonical, "{name}");
        assert_eq!(p.sampler(&sd15).unwrap(), sampler, "{name}");
        assert_eq!(p.scheduler(), PresetSigmas::Scheduler(scheduler), "{name}");
    }
    for (a1111, comfy) in [
        ("DPM++ SDE Karras", "dpmpp_sde_karras"),
        ("DPM fast", "dpm_fast"),
        ("DPM adaptive", "dpm_adaptive"),
        ("DPM++ 2M SDE Heun Exponential", "dpmpp_2m_sde_heun_exponential"),
        ("dpm++ 2m sde  heun  exponential", "dpmpp_2m_sde_heun_exponential"),
        ("Euler a SGM Uniform", "euler_ancestral_sgm_uniform"),
        ("DPM++ 3M SDE KL Optimal", "dpmpp_3m_sde_kl_optimal"),
        ("DPM2 a Beta", "dpm_2_ancestral_beta"),
        ("DDPM Karras", "ddpm_karras"),
    ] {
        assert_eq!(
            Preset::get(a1111).map(|p| p.name().to_string()).ok().as_deref(),
            Some(comfy),
            "{a1111}"
        );
    }
    match Preset::get("dpmpp_9m") {
        Err(Error::UnknownName { what, name, known }) => {
            assert_eq!((what, name.as_str()), ("sampler preset", "dpmpp_9m"));
            assert!(known.starts_with("closest: dpmpp_2m"), "{known}");
            assert!(
                known.contains("dpmpp_2m_sde") && known.contains("kl_optimal"),
                "{known}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Every ComfyUI pair resolves to itself.
    let mut n = 0;
    for base in PRESETS {
        for s in ComfyScheduler::ALL {
            let p = Preset::get(&format!("{base}_{}", s.name())).unwrap();
            assert_eq!(
                (p.sampler_name(), p.scheduler()),
                (base, PresetSigmas::Scheduler(s))
            );
            n += 1;
        }
    }
    assert_eq!(n, PRESETS.len() * 9);
}

/// The VP (SD 1.5) and flow (SD3, shift 3) model samplings the pairs are sampled on.
fn samplings() -> [(&'static str, ModelSampling); 2] {
    let sd15 = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let sd3 = FlowSchedule::new(1000)
        .unwrap()
        .with_shift(FlowShift::Static(3.0))
        .unwrap();
    [
        ("sd15", ModelSampling::discrete(&sd15).unwrap()),
        ("sd3", ModelSampling::flow(&sd3).unwrap()),
    ]
}

#[test]
fn every_pair_samples_a_gaussian() {
    let n = 4000;
    let mut report = String::new();
    for (model_name, ms) in samplings() {
        for base in PRESETS {
            for s in ComfyScheduler::ALL {
                let name = format!("{base}_{}", s.name());
                let (sampler, grid) = Preset::get(&name)
                    .unwrap()
                    .build(&ms, 30)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let mut model = GaussianMixture::gaussian(vec![1.0], vec![0.25])
                    .unwrap()
                    .with_prediction(if ms.is_flow() {
                        Prediction::Flow
                    } else {
                        Prediction::Epsilon
                    });
                let x: Array2<f64> = grid.initial_sample((n, 1), &mut SeededNoise::new(1)).unwrap();
                let out = sampler
                    .sample(&mut model, x, &grid, &mut SeededNoise::new(2))
                    .unwrap_or_else(|e| panic!("{model_name} {name}: {e}"));
                let mean = out.mean_axis(Axis(0)).unwrap()[0];
                let var = out.var_axis(Axis(0), 1.0)[0];
                assert!(mean.is_finite() && var.is_finite(), "{model_name} {name}");
                report += &format!("{model_name} {name} {mean:.4} {var:.4}\n");
            }
        }
    }
    if let Ok(path) = std::env::var("PRESET_REPORT") {
        std::fs::write(path, report).unwrap();
    }
}
