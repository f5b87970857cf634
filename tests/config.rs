//! Reading diffusers' scheduler_config.json (feature `serde`) against diffusers itself: for each
//! config in tests/fixtures/configs.json (published model configs, and the same files with the
//! scheduler swapped as users do), our schedule, the grid of `set_timesteps(n)` for n = 4, 20,
//! 50, and the final sample of a 10-step run with the analytic model (noise replayed) must
//! match what diffusers' `from_config` + `set_timesteps` + `step` produced.
#![cfg(feature = "serde")]

mod common;

use common::{f32_sigma_tol, f64s, fixture, gmm, shape, str_of};
use diffusion_samplers::AnySampler;
use diffusion_samplers::config::{DiffusersConfig, SchedulerClass};
use diffusion_samplers::precond::{EdmNoise, Preconditioned};
use diffusion_samplers::prelude::*;
use ndarray::{Array, ArrayView, IxDyn};
use serde_json::Value;

/// diffusers keeps alphas_cumprod in float32: ~1e-7 relative; final samples agree to the
/// f32-derived tolerance of the other diffusers comparisons (tests/golden_samplers.rs). A grid
/// one training timestep off moves sigma by >= 0.5% and a final sample by >= 1e-3.
const SAMPLE_TOL: f64 = 2e-4;

/// Replays recorded draws in the order they are asked for.
struct InOrder(Vec<Vec<f64>>, usize);

impl NoiseSource<f64> for InOrder {
    fn fill<D: ndarray::Dimension>(&mut self, _step: usize, mut out: ndarray::ArrayViewMut<'_, f64, D>) {
        let block = self.0.get(self.1).cloned().unwrap_or_default();
        self.1 += 1;
        for (o, v) in out
            .iter_mut()
            .zip(block.iter().chain(std::iter::repeat(&f64::NAN)))
        {
            *o = *v;
        }
    }
}

fn config(case: &Value) -> DiffusersConfig {
    DiffusersConfig::from_json(&case["config"].to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", str_of(case, "name")))
}

fn dedup(mut v: Vec<f64>) -> Vec<f64> {
    v.dedup();
    v
}

fn grid_for(cfg: &DiffusersConfig, case: &Value, n: usize) -> Grid {
    if cfg.needs_mu() {
        let mu = cfg
            .mu_for_image_seq_len(case["image_seq_len"].as_u64().unwrap() as usize)
            .unwrap();
        assert!((mu - case["mu"].as_f64().unwrap()).abs() < 1e-12);
        cfg.grid_with_mu(n, mu).unwrap()
    } else {
        cfg.grid(n).unwrap()
    }
}

#[test]
fn grids_match_diffusers_set_timesteps() {
    let fx = fixture("configs.json");
    let cases = fx["configs"].as_array().unwrap();
    assert!(cases.len() >= 25);
    for case in cases {
        let name = str_of(case, "name");
        let cfg = config(case);
        let flow = matches!(
            cfg.class(),
            SchedulerClass::FlowMatchEuler
                | SchedulerClass::FlowMatchHeun
                | SchedulerClass::FlowMatchLcm
                | SchedulerClass::LtxEulerAncestralRf
                | SchedulerClass::MiniMaxH3
        );
        if let Some(ac) = case.get("alphas_cumprod") {
            let s = cfg.noise_schedule().unwrap();
            for (k, v) in ac.as_object().unwrap() {
                let (i, want) = (k.parse::<usize>().unwrap(), v.as_f64().unwrap());
                let got = s.alphas_cumprod()[i];
                assert!(
                    (got - want).abs() <= 2e-6 * want.max(1e-3),
                    "{name}: abar[{i}] {got} vs {want}"
                );
            }
        }
        for g in case["grids"].as_array().unwrap() {
            let n = g["steps"].as_u64().unwrap() as usize;
            let grid = grid_for(&cfg, case, n);
            let want_t = f64s(&g["timesteps"]);
            let got_t = grid.timesteps();
            // PNDM (PRK steps) and Heun repeat timesteps: compare the distinct ones in order;
            // KDPM2 interleaves its midpoints: compare the step starts.
            let two_stage = matches!(
                cfg.class(),
                SchedulerClass::Kdpm2 | SchedulerClass::Kdpm2Ancestral | SchedulerClass::DpmSde
            );
            // EDM classes: the model's timestep is c_noise(sigma); the grid's own t is sigma.
            let got_t = match cfg.edm_precond().unwrap() {
                Some(p) if p.noise != EdmNoise::Timestep => {
                    grid.levels()[..n].iter().map(|l| p.c_noise(l.sigma)).collect()
                }
                _ => got_t,
            };
            let want_t = match cfg.class() {
                // SCM: TrigFlow times (ending 0) as the flow levels r = sin t / (sin t + cos t).
                SchedulerClass::Scm => want_t[..n]
                    .iter()
                    .map(|t| (t.sin() / (t.sin() + t.cos())).min(1.0))
                    .collect(),
                // Würstchen: the ratios linspace(1, 0, n + 1), the last one the final level's.
                // Leading steps between clamped, equal levels are dropped: ours is a suffix.
                SchedulerClass::DdpmWuerstchen => want_t[n - got_t.len()..n].to_vec(),
                SchedulerClass::Pndm | SchedulerClass::Heun => dedup(want_t),
                _ if two_stage => want_t.iter().step_by(2).copied().collect(),
                _ => want_t,
            };
            assert_eq!(got_t.len(), want_t.len(), "{name} n={n}: {got_t:?} vs {want_t:?}");
            for (a, b) in got_t.iter().zip(&want_t) {
                // diffusers' flow timesteps are f32 products sigma * T.
                let tol = if flow { 2e-3 * b.abs().max(1.0) } else { 2e-3 };
                assert!((a - b).abs() <= tol, "{name} n={n}: t {a} vs {b}");
            }
            if let Some(ws) = g.get("sigmas") {
                let want_s = match cfg.class() {
                    SchedulerClass::Heun
                    | SchedulerClass::Kdpm2
                    | SchedulerClass::Kdpm2Ancestral
                    | SchedulerClass::DpmSde => dedup(f64s(ws)),
                    _ => f64s(ws),
                };
                let mut got_s: Vec<f64> = if flow {
                    grid.levels().iter().map(|l| l.sigma).collect()
                } else {
                    grid.sigmas_ve()
                };
                let mut want_s = want_s;
                if cfg.class() == SchedulerClass::CmStochasticIterative {
                    // diffusers ends its list at sigma_min, where renoising adds nothing: the
                    // same last step as ending at the clean level (compared in the runs).
                    got_s.pop();
                    want_s.pop();
                }
                assert!(
                    got_s.len() == want_s.len(),
                    "{name} n={n}: {got_s:?} vs {want_s:?}"
                );
                for (i, (a, b)) in got_s.iter().zip(&want_s).enumerate() {
                    if b.is_infinite() || (*b > 4000.0 && a.is_infinite()) {
                        continue; // zero terminal SNR: diffusers' 2^-24 stand-in for abar = 0
                    }
                    let tol = if flow {
                        1e-6
                    } else if *b == 0.0 {
                        0.0
                    } else {
                        3.0 * f32_sigma_tol(*b)
                    };
                    assert!((a - b).abs() <= tol, "{name} n={n}: sigma[{i}] {a} vs {b}");
                }
            }
            if let Some(fa) = g.get("final_alpha_cumprod").and_then(Value::as_f64) {
                let last = grid.levels().last().unwrap();
                let got = last.alpha * last.alpha;
                assert!((got - fa).abs() <= 2e-6, "{name} n={n}: final abar {got} vs {fa}");
            }
        }
    }
}

#[test]
fn sampling_matches_diffusers_pipelines() {
    let fx = fixture("configs.json");
    let meta = &fx["meta"];
    let sh = shape(meta);
    for case in fx["configs"].as_array().unwrap() {
        let name = str_of(case, "name");
        let cfg = config(case);
        let n = case["run_steps"].as_u64().unwrap() as usize;
        let grid = grid_for(&cfg, case, n);
        let sampler = cfg.sampler().unwrap();
        let mut model = gmm(meta).with_prediction(cfg.prediction().unwrap());
        let x = Array::from_shape_vec(IxDyn(&sh), f64s(&case["x_init"])).unwrap();
        if let Some(p) = cfg.edm_precond().unwrap() {
            // The raw EDM network of the analytic model, F = (x0 - c_skip x) / c_out, behind
            // the crate's preconditioning wrapper.
            let mut inner = gmm(meta).with_prediction(Prediction::Sample);
            let net = move |x: ArrayView<'_, f64, IxDyn>, l: &NoiseLevel| {
                let s = l.sigma / l.alpha;
                let x_ve = x.mapv(|v| v / l.alpha);
                let x0 = inner.denoise(x, l)?;
                Ok::<_, BoxError>((x0 - x_ve * p.c_skip(s)) / p.c_out(s))
            };
            let mut wrapped = Preconditioned::new(net, p);
            let noise: Vec<Vec<f64>> = case["noise"].as_array().unwrap().iter().map(f64s).collect();
            let scale = cfg.initial_noise_scale(&grid);
            let eps = f64s(&case["eps"]);
            let d = x
                .iter()
                .zip(&eps)
                .fold(0.0f64, |m, (a, e)| m.max((a - e * scale).abs()));
            assert!(d < 1e-4, "{name}: initial latent scale {scale} is off by {d}");
            let out = sampler
                .sample(&mut wrapped, x, &grid, &mut ReplayNoise::new(noise))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let err = out
                .iter()
                .zip(&f64s(&case["final"]))
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            println!("{name:32} {:24} err {err:.1e}", sampler.kind());
            assert!(err < SAMPLE_TOL, "{name}: final sample differs by {err:e}");
            continue;
        }
        // The pipeline's first latent is unit noise times initial_noise_scale.
        let scale = cfg.initial_noise_scale(&grid);
        let eps = f64s(&case["eps"]);
        let d = x
            .iter()
            .zip(&eps)
            .fold(0.0f64, |m, (a, e)| m.max((a - e * scale).abs()));
        assert!(d < 1e-6, "{name}: initial latent scale {scale} is off by {d}");
        let noise: Vec<Vec<f64>> = case["noise"].as_array().unwrap().iter().map(f64s).collect();
        let out = if cfg.class() == SchedulerClass::DpmSde {
            // Two Brownian queries per step (to the midpoint, to the next level), in order.
            sampler.sample(&mut model, x, &grid, &mut InOrder(noise, 0))
        } else {
            sampler.sample(&mut model, x, &grid, &mut ReplayNoise::new(noise))
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = f64s(&case["final"]);
        if want.iter().any(|v| v.is_nan()) {
            // diffusers returns NaN here (UniPC-bh1 multiplies B(h) = -inf by 0 on the step to
            // sigma = 0; KDPM2-ancestral computes sigma_up = 0 / 0 on its zero-length steps:
            // see the guide). Our run must stay finite; the grids were compared above and
            // the samplers against diffusers in tests/golden_samplers.rs.
            assert!(
                name.contains("bh1") || name.contains("kdpm2_a"),
                "{name}: unexpected NaN in the reference"
            );
            assert!(out.iter().all(|v| v.is_finite()), "{name}: {out:?}");
            println!("{name:32} {:24} (diffusers: NaN)", sampler.kind());
            continue;
        }
        let err = out
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        // Zero terminal SNR: diffusers starts from abar = 2^-24 instead of 0 (see the guide).
        // UnCLIP starts at t = 999 of the cosine schedule, where diffusers' float32 abar (~1e-5)
        // is off by ~1e-3 relative: the same run with a float64 table moves by 5.2e-4.
        let tol = if name.contains("zero_snr") || name.contains("unclip") {
            2e-3
        } else {
            SAMPLE_TOL
        };
        println!("{name:32} {:24} err {err:.1e}", sampler.kind());
        assert!(err < tol, "{name}: final sample differs by {err:e}");
    }
}

#[test]
fn published_configs_read_as_expected() {
    let fx = fixture("configs.json");
    let by_name = |n: &str| {
        let case = fx["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| str_of(c, "name") == n)
            .unwrap();
        config(case)
    };
    let sd15 = by_name("sd15_pndm");
    assert_eq!(sd15.class(), SchedulerClass::Pndm);
    assert!(sd15.unused_keys() == ["clip_sample"], "{:?}", sd15.unused_keys());
    let sd21 = by_name("sd21_v_ddim");
    assert_eq!(sd21.prediction().unwrap(), Prediction::Velocity);
    assert_eq!(sd21.unused_keys(), ["skip_prk_steps"]);
    let sdxl = by_name("sdxl_euler");
    let mut unused = sdxl.unused_keys().to_vec();
    unused.sort();
    assert_eq!(
        unused,
        [
            "clip_sample",
            "sample_max_value",
            "set_alpha_to_one",
            "skip_prk_steps"
        ]
    );
    assert_eq!(sdxl.sampler().unwrap().kind(), "Euler");
    let unipc = by_name("sd15_unipc");
    assert!(unipc.unused_keys().contains(&"skip_prk_steps".to_string()));
    let flux = by_name("flux_flow_dynamic");
    assert!(flux.needs_mu());
    assert!(matches!(flux.grid(20), Err(Error::Config { key, .. }) if key == "use_dynamic_shifting"));
    let sde = by_name("sdxl_dpmpp_2m_sde_karras");
    assert_eq!(
        *sde.sampler().unwrap(),
        AnySampler::from(DpmSolver::new().sde(true))
    );
}

#[test]
fn unsupported_options_are_errors_naming_the_key() {
    let fx = fixture("configs.json");
    for case in fx["refused"].as_array().unwrap() {
        let name = str_of(case, "name");
        let key = str_of(case, "key");
        match DiffusersConfig::from_json(&case["config"].to_string()) {
            Err(Error::Config { key: k, reason }) => assert_eq!(k, key, "{name}: {reason}"),
            Err(Error::UnknownName { what, name: n, .. }) => {
                assert_eq!((what, key), ("scheduler class", "_class_name"), "{name}: {n}")
            }
            other => panic!("{name}: expected an error on `{key}`, got {other:?}"),
        }
    }
    // Malformed input.
    assert!(matches!(
        DiffusersConfig::from_json("[1, 2]"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        DiffusersConfig::from_json("{"),
        Err(Error::Config { .. })
    ));
    assert!(matches!(
        DiffusersConfig::from_json(r#"{"_class_name": "DDIMScheduler", "beta_start": "small"}"#),
        Err(Error::Config { key, .. }) if key == "beta_start"
    ));
    assert!(matches!(
        DiffusersConfig::from_json(r#"{"_class_name": "DDIMScheduler", "beta_schedule": "quadratic"}"#),
        Err(Error::UnknownName {
            what: "beta_schedule",
            ..
        })
    ));
}

#[test]
fn configs_round_trip_and_can_be_edited() {
    let fx = fixture("configs.json");
    for case in fx["configs"].as_array().unwrap() {
        let cfg = config(case);
        let again = DiffusersConfig::from_json(&cfg.to_json()).unwrap();
        assert_eq!(cfg, again, "{}", str_of(case, "name"));
    }
    let case = &fx["configs"][0];
    let mut cfg = config(case);
    cfg.set("_class_name", Value::from("DPMSolverMultistepScheduler"))
        .unwrap();
    cfg.set("use_karras_sigmas", Value::from(true)).unwrap();
    let (s, g) = cfg.build(12).unwrap();
    assert_eq!((s.kind(), g.steps()), ("DpmSolver", 12));
    // A rejected edit leaves the config as it was.
    assert!(cfg.set("algorithm_type", Value::from("dpmsolver")).is_err());
    assert_eq!(cfg.fields()["use_karras_sigmas"], Value::from(true));
    assert!(cfg.sampler().is_ok());
}

/// Every scheduler class diffusers 0.42.1 exports is recognised: built with its defaults, or
/// refused with an error that names the class and says why — never "unknown class".
#[test]
fn every_diffusers_class_is_recognised() {
    let fx = fixture("configs.json");
    let classes = fx["classes"].as_array().unwrap();
    assert!(classes.len() >= 50);
    let mut built = 0;
    for c in classes {
        let name = c.as_str().unwrap();
        let json = format!(r#"{{"_class_name": "{name}"}}"#);
        match DiffusersConfig::from_json(&json) {
            Ok(cfg) => {
                let alias = match name {
                    "DDPMParallelScheduler" => "DDPMScheduler",
                    "DDIMParallelScheduler" => "DDIMScheduler",
                    n => n,
                };
                assert_eq!(cfg.class().name(), alias);
                // The consistency decoder has exactly 2 steps.
                let n = if name == "ConsistencyDecoderScheduler" {
                    2
                } else {
                    4
                };
                let (s, g) = cfg.build(n).unwrap_or_else(|e| panic!("{name}: {e}"));
                // MiniMax-H3's set_timesteps(n) counts grid points: n - 1 calls.
                let calls = if name == "MiniMaxH3Scheduler" { n - 1 } else { n };
                assert!(s.model_calls(&g) >= calls, "{name}");
                built += 1;
            }
            Err(Error::Config { key, reason }) => {
                assert_eq!(key, "_class_name", "{name}: {reason}");
                assert!(reason.starts_with(name), "{name}: {reason}");
            }
            Err(e) => panic!("{name}: {e}"),
        }
    }
    println!("{built} of {} classes built from their defaults", classes.len());
    assert!(built >= 34, "{built}");
}

/// Options that reach the sampler: thresholding on the multistep classes (a regression test),
/// and the combinations refused.
#[test]
fn thresholding_reaches_the_multistep_samplers() {
    use diffusion_samplers::{Deis, Thresholding, UniPc};
    let thr = Some(Thresholding {
        ratio: 0.99,
        max: 1.5,
    });
    let read = |cls: &str, extra: &str| {
        DiffusersConfig::from_json(&format!(
            r#"{{"_class_name": "{cls}", "thresholding": true, "dynamic_thresholding_ratio": 0.99, "sample_max_value": 1.5{extra}}}"#
        ))
    };
    assert_eq!(
        *read("UniPCMultistepScheduler", "").unwrap().sampler().unwrap(),
        AnySampler::from(UniPc::new().thresholding(thr))
    );
    assert_eq!(
        *read("DEISMultistepScheduler", "").unwrap().sampler().unwrap(),
        AnySampler::from(Deis::new().thresholding(thr))
    );
    assert!(matches!(
        read("UniPCMultistepScheduler", r#", "predict_x0": false"#),
        Err(Error::Config { key, .. }) if key == "thresholding"
    ));
    assert!(matches!(
        DiffusersConfig::ddpm_learned_from_json(
            r#"{"_class_name": "DDPMScheduler", "variance_type": "learned_range", "thresholding": true}"#,
            10
        ),
        Err(Error::Config { key, .. }) if key == "thresholding"
    ));
    // UnCLIP has learned_range but not learned.
    assert!(
        DiffusersConfig::ddpm_learned_from_json(
            r#"{"_class_name": "UnCLIPScheduler", "variance_type": "learned_range"}"#,
            10
        )
        .is_ok()
    );
    assert!(matches!(
        DiffusersConfig::ddpm_learned_from_json(r#"{"_class_name": "UnCLIPScheduler", "variance_type": "learned"}"#, 10),
        Err(Error::Config { key, .. }) if key == "variance_type"
    ));
}
