//! The training side against its Python references (tests/fixtures/training.json, written by
//! gen_training.py from k-diffusion 0.1.1.post1, diffusers 0.42.1 and torch 2.15 CPU): the
//! timestep / sigma densities drawn from a seeded torch generator, SD3's and Min-SNR's loss
//! weights, k-diffusion's preconditioned `Denoiser.loss` / `forward`; then statistical checks
//! (Kolmogorov–Smirnov of every density, stratification) and exact-model checks (the EDM wrapper
//! around the exact network is the exact denoiser and minimises the training loss; the flow
//! matching batch and its exact velocity model).

mod common;
use common::*;
use diffusion_samplers::forward::{Density, Draw, LossWeighting, Process, Training};
use diffusion_samplers::noise::TorchGenerator;
use diffusion_samplers::precond::{EdmPrecond, Preconditioned};
use diffusion_samplers::prelude::*;
use ndarray::{Array2, ArrayD, ArrayView, Axis, IxDyn};
use rand::{SeedableRng, rngs::StdRng};
use serde_json::Value;

/// A numeric parameter of a fixture case; `null` stands for `+inf` there.
fn param(params: &Value, key: &str) -> f64 {
    let v = &params[key];
    if v.is_null() {
        f64::INFINITY
    } else {
        v.as_f64()
            .unwrap_or_else(|| panic!("no number {key} in {params}"))
    }
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key} in case")) as usize
}

/// The crate's density for a k-diffusion `rand_*` function and its keyword arguments.
fn kdiffusion_density(name: &str, p: &Value) -> Density {
    match name {
        "log_normal" => Density::LogNormal {
            mean: param(p, "loc"),
            std: param(p, "scale"),
        },
        "log_logistic" => Density::LogLogistic {
            loc: param(p, "loc"),
            scale: param(p, "scale"),
            min: param(p, "min_value"),
            max: param(p, "max_value"),
        },
        "log_uniform" => Density::LogUniform {
            min: param(p, "min_value"),
            max: param(p, "max_value"),
        },
        "v_diffusion" => Density::VDiffusion {
            sigma_data: param(p, "sigma_data"),
            min: param(p, "min_value"),
            max: param(p, "max_value"),
        },
        "cosine_interpolated" => Density::CosineInterpolated {
            image_d: param(p, "image_d"),
            noise_d_low: param(p, "noise_d_low"),
            noise_d_high: param(p, "noise_d_high"),
            sigma_data: param(p, "sigma_data"),
            min: param(p, "min_value"),
            max: param(p, "max_value"),
        },
        "split_log_normal" => Density::SplitLogNormal {
            loc: param(p, "loc"),
            scale_1: param(p, "scale_1"),
            scale_2: param(p, "scale_2"),
        },
        other => panic!("unknown k-diffusion density {other}"),
    }
}

fn draw_of(strat: &Value) -> Draw {
    if strat.is_null() {
        Draw::Independent
    } else {
        Draw::Stratified {
            group: usize_of(strat, "group"),
            groups: usize_of(strat, "groups"),
        }
    }
}

/// Records the worst relative error of each family, in first-seen order.
#[derive(Default)]
struct Worst(Vec<(String, f64)>);

impl Worst {
    fn add(&mut self, name: &str, err: f64) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, e)) => *e = e.max(err),
            None => self.0.push((name.to_string(), err)),
        }
    }

    fn print(&self, what: &str) {
        for (name, err) in &self.0 {
            println!("{what}: {name:20} worst relative error {err:.2e}");
        }
    }
}

/// Relative tolerance of a density value computed in f64 from the same torch draws that the
/// reference pushed through its float32 arithmetic. The reference's float32 rounding (its
/// `(offsets + u) / n`, `u * (1 - 2e-7) + 1e-7`, `2 u - 1` inside the normal `icdf`, the `lerp`s
/// and the final cast) is a few 1e-8 on each intermediate, amplified by the exponential of
/// log-sigmas up to |6| (log-uniform from 0.002), by the normal quantile's slope in the tails
/// and by `tan` near `pi / 2`; measured worst 4.2e-6 (log-normal, whose float32 `erfinv` and
/// `2 u - 1` near the tails dominate; see the printout). A wrong draw — another seed, another
/// stream position, a uniform used as `1 - u`, stratum order — moves a value by O(1) relative
/// (checked below with another seed: at least 8% on every case, 49% on the diffusers ones),
/// three to four orders of magnitude above.
const DENSITY_TOL: f64 = 2e-5;

#[test]
fn kdiffusion_densities_from_the_seed() {
    let fx = fixture("training.json");
    let mut worst = Worst::default();
    let mut other_seed = f64::INFINITY;
    for case in fx["kdiffusion_densities"].as_array().unwrap() {
        let name = str_of(case, "name");
        let d = kdiffusion_density(name, &case["params"]);
        let (seed, n) = (case["seed"].as_u64().unwrap(), usize_of(case, "n"));
        let draw = draw_of(&case["stratified"]);
        let want = f64s(&case["values"]);
        assert_eq!(want.len(), n, "{name}");
        let got = d.sample_torch(n, draw, &mut TorchGenerator::new(seed)).unwrap();
        let err = max_rel_diff(&got, &want);
        let label = if matches!(d, Density::LogLogistic { max, .. } | Density::VDiffusion { max, .. } if max.is_finite())
        {
            format!("{name} (truncated)")
        } else {
            name.to_string()
        };
        worst.add(&label, err);
        if name == "log_logistic" {
            // rand_log_logistic draws and computes in float64 and casts only its result to
            // float32: ours, in float64 too, rounds to the very same float32 (all 184 values;
            // before rounding 5.6e-8 relative at most, half an ulp of float32).
            for (k, (&g, &w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    (g as f32).to_bits(),
                    (w as f32).to_bits(),
                    "{name} {draw:?} seed {seed}: value {k}: {g} vs {w}"
                );
            }
        }
        assert!(
            err < DENSITY_TOL,
            "{name} {draw:?} seed {seed} n {n}: {err:e}\n got {got:?}\nwant {want:?}"
        );
        let wrong = d
            .sample_torch(n, draw, &mut TorchGenerator::new(seed + 1000))
            .unwrap();
        other_seed = other_seed.min(max_rel_diff(&wrong, &want));
    }
    worst.print("k-diffusion");
    println!("k-diffusion: another seed is off by at least {other_seed:.2} relative (per case)");
    assert!(other_seed > 0.01, "{other_seed}");
}

#[test]
fn diffusers_densities_from_the_seed() {
    let fx = fixture("training.json");
    let mut worst = Worst::default();
    let mut other_seed = f64::INFINITY;
    for case in fx["diffusers_densities"].as_array().unwrap() {
        let scheme = str_of(case, "scheme");
        let d = match scheme {
            "logit_normal" => Density::LogitNormal {
                mean: param(case, "logit_mean"),
                std: param(case, "logit_std"),
            },
            "mode" => Density::Mode {
                scale: param(case, "mode_scale"),
            },
            "uniform" => Density::Uniform,
            other => panic!("unknown scheme {other}"),
        };
        let (seed, n) = (case["seed"].as_u64().unwrap(), usize_of(case, "n"));
        let want = f64s(&case["values"]);
        let got = d
            .sample_torch(n, Draw::Independent, &mut TorchGenerator::new(seed))
            .unwrap();
        let err = max_rel_diff(&got, &want);
        worst.add(scheme, err);
        // float32 on their side (torch.normal's `mean + std z`, sigmoid; the mode map's
        // `1 - u - s (cos^2 - 1 + u)`), f64 here from the same draws: as DENSITY_TOL. A uniform
        // draw is the float32 value itself.
        assert!(
            err < DENSITY_TOL,
            "{scheme} seed {seed} n {n}: {err:e}\n got {got:?}\nwant {want:?}"
        );
        let wrong = d
            .sample_torch(n, Draw::Independent, &mut TorchGenerator::new(seed + 1))
            .unwrap();
        other_seed = other_seed.min(max_rel_diff(&wrong, &want));
    }
    worst.print("diffusers");
    println!("diffusers: another seed is off by at least {other_seed:.2} relative (per case)");
    assert!(other_seed > 0.01, "{other_seed}");
}

#[test]
fn sd3_weights() {
    let fx = fixture("training.json");
    let w = &fx["sd3_weights"];
    let sigmas = f64s(&w["sigmas"]);
    let weights = |lw: LossWeighting| -> Vec<f64> {
        sigmas
            .iter()
            .map(|&s| {
                lw.weight(Prediction::Flow, &NoiseLevel::new(s * 1000.0, 1.0 - s, s))
                    .unwrap()
            })
            .collect()
    };
    let sq = max_rel_diff(&weights(LossWeighting::SigmaSqrt), &f64s(&w["sigma_sqrt"]));
    let cm = max_rel_diff(&weights(LossWeighting::Cosmap), &f64s(&w["cosmap"]));
    println!("sigma_sqrt: worst relative error {sq:.2e}; cosmap: {cm:.2e}");
    // diffusers casts sigma_sqrt's result to float32 (half an ulp: 6e-8 relative); cosmap stays
    // float64 (a few ulps of the same expression).
    assert!(sq < 1e-7, "{sq:e}");
    assert!(cm < 1e-13, "{cm:e}");
}

#[test]
fn min_snr_matches_diffusers_training_script() {
    let fx = fixture("training.json");
    for case in fx["min_snr"].as_array().unwrap() {
        let name = str_of(case, "beta_schedule");
        let sched = schedule(name); // linear(1000, 1e-4, 0.02) or cosine(1000) = squaredcos_cap_v2
        let gamma = case["gamma"].as_f64().unwrap();
        let ts: Vec<usize> = f64s(&case["timesteps"]).iter().map(|&t| t as usize).collect();
        let abar32 = f64s(&case["alphas_cumprod"]);
        let snr32 = f64s(&case["snr"]);
        let w = LossWeighting::MinSnr { gamma };
        for (key, pred) in [
            ("epsilon", Prediction::Epsilon),
            ("v_prediction", Prediction::Velocity),
            ("sample", Prediction::Sample),
        ] {
            let want = f64s(&case[key]);
            // (a) The formula, at diffusers' own float32 alphas_cumprod: float32 arithmetic on
            // their side (sqrt, divide, square, min, divide): a few ulps.
            let at_theirs: Vec<f64> = ts
                .iter()
                .zip(&abar32)
                .map(|(&t, &ab)| w.weight(pred, &NoiseLevel::from_alpha_bar(t as f64, ab)).unwrap())
                .collect();
            let formula = max_rel_diff(&at_theirs, &want);
            // (b) Our float64 schedule. diffusers' float32 alphas_cumprod is ~1e-5 relative off
            // in sigma (common::f32_sigma_tol), and worse where `1 - abar` cancels: at t = 0,
            // 1 - abar is 1e-4 (linear) and 4e-5 (cosine) with abar rounded to float32, measured
            // 1.7e-4 and 5.3e-4 relative on the SNR (bounds 2e-3 and 5e-3 there). The SNR is
            // sigma_ve^-2, so twice sigma_ve's relative tolerance; the weights are SNR, 1/SNR or
            // SNR / (SNR + 1) times constants, no worse. An off-by-one timestep moves the SNR by
            // 0.5% or more (the cosine schedule's beta ~3e-3 at t = 500; a factor of 2 between
            // t = 0 and 1), far outside.
            let ours: Vec<f64> = ts
                .iter()
                .map(|&t| w.weight(pred, &sched.level_at(t).unwrap()).unwrap())
                .collect();
            let mut worst_sched: f64 = 0.0;
            for (k, &t) in ts.iter().enumerate() {
                let l = sched.level_at(t).unwrap();
                let s = l.sigma_ve();
                let tol = 2.0 * f32_sigma_tol(s) / s;
                let rel = (ours[k] / want[k] - 1.0).abs();
                worst_sched = worst_sched.max(rel);
                assert!(
                    rel < tol,
                    "{name} {key} t {t}: ours {} vs {} ({rel:e} > {tol:e})",
                    ours[k],
                    want[k]
                );
            }
            println!(
                "min-snr {name:18} {key:13}: formula at their abar {formula:.2e}, our schedule {worst_sched:.2e} (relative)"
            );
            assert!(formula < 1e-6, "{name} {key}: {formula:e}");
        }
        // The SNR itself (the sample weight before the clamp).
        let snr: Vec<f64> = abar32
            .iter()
            .map(|&ab| NoiseLevel::from_alpha_bar(0.0, ab).snr())
            .collect();
        let e = max_rel_diff(&snr, &snr32);
        println!("min-snr {name:18} snr at their abar: {e:.2e}");
        assert!(e < 1e-6, "{name}: {e:e}");
    }
}

/// k-diffusion's inner model of the fixture: `tanh(x) (1 + 0.1 sigma) + 0.05 x^2`, on the scaled
/// input and the raw sigma.
fn inner(x: f64, sigma: f64) -> f64 {
    x.tanh() * (1.0 + 0.1 * sigma) + 0.05 * x * x
}

#[test]
fn kdiffusion_denoiser_loss() {
    let fx = fixture("training.json");
    let (mut worst_loss, mut worst_weight, mut worst_fwd) = (0.0f64, 0.0f64, 0.0f64);
    for case in fx["kdiffusion_denoiser_loss"].as_array().unwrap() {
        let sd = case["sigma_data"].as_f64().unwrap();
        let name = str_of(case, "weighting");
        let weighting = match name {
            "karras" => LossWeighting::Edm { sigma_data: sd },
            "soft-min-snr" => LossWeighting::SoftMinSnr {
                gamma: 1.0 / (sd * sd),
            },
            "snr" => LossWeighting::Snr,
            other => panic!("unknown weighting {other}"),
        };
        let shape: Vec<usize> = f64s(&case["shape"]).iter().map(|&v| v as usize).collect();
        let x0 = ArrayD::from_shape_vec(IxDyn(&shape), f64s(&case["input"])).unwrap();
        let noise = ArrayD::from_shape_vec(IxDyn(&shape), f64s(&case["noise"])).unwrap();
        let sigmas = f64s(&case["sigma"]);
        let p = EdmPrecond::edm(sd);
        let batch = p
            .training_batch(x0.view(), &sigmas, noise.clone(), weighting)
            .unwrap();
        // The network's input is batch.noisy (c_in times the noised input); its level has t =
        // c_noise, so the inner model gets the fixture's raw sigma instead.
        let mut out = batch.noisy.clone();
        for (mut o, &s) in out.axis_iter_mut(Axis(0)).zip(&sigmas) {
            o.mapv_inplace(|x| inner(x, s));
        }
        for (l, &s) in batch.levels.iter().zip(&sigmas) {
            assert!((l.t - 0.25 * s.ln()).abs() < 1e-15, "{l:?} at sigma {s}");
        }
        let losses = batch.losses(out.view()).unwrap();
        let want = f64s(&case["loss"]);
        let el = max_rel_diff(&losses, &want);
        let ew = max_rel_diff(&batch.weights, &f64s(&case["c_weight"]));
        let mean = batch.loss(out.view()).unwrap();
        let want_mean = want.iter().sum::<f64>() / want.len() as f64;
        assert!(
            (mean / want_mean - 1.0).abs() < 1e-12,
            "{name} sd {sd}: {mean} vs {want_mean}"
        );

        // The Preconditioned wrapper's output on the noised input, one level per call.
        let net = |x: ArrayView<'_, f64, IxDyn>, l: &NoiseLevel| {
            let s = (4.0 * l.t).exp(); // c_noise = ln(sigma) / 4
            Ok::<_, BoxError>(x.mapv(|v| inner(v, s)))
        };
        let mut model = Preconditioned::new(net, p);
        let mut fwd = Vec::new();
        for (i, &s) in sigmas.iter().enumerate() {
            let xi = &x0.index_axis(Axis(0), i) + &(&noise.index_axis(Axis(0), i) * s);
            let xi = xi.insert_axis(Axis(0));
            let d = model.denoise(xi.view(), &NoiseLevel::new(s, 1.0, s)).unwrap();
            fwd.extend(d.iter().copied());
        }
        let want_fwd = f64s(&case["forward"]);
        // Relative to max(|value|, 1): forward values are O(1), some near zero.
        let (ef, _) = tol_ratio(&fwd, &want_fwd, 1.0, 1.0);
        println!(
            "denoiser loss sigma_data {sd} {name:12}: loss {el:.2e}, weight {ew:.2e}, forward {ef:.2e} (relative)"
        );
        worst_loss = worst_loss.max(el);
        worst_weight = worst_weight.max(ew);
        worst_fwd = worst_fwd.max(ef);
    }
    // Both sides in float64, the same formulas up to the order of operations; the target's
    // cancellation at sigma = 0.01 (x0 - c_skip x, 4e-4 of x0) costs a few digits at most.
    assert!(worst_loss < 1e-12, "loss {worst_loss:e}");
    assert!(worst_weight < 1e-12, "weight {worst_weight:e}");
    assert!(worst_fwd < 1e-12, "forward {worst_fwd:e}");
}

// ---------------------------------------------------------------------------------------------
// Statistical checks of the densities
// ---------------------------------------------------------------------------------------------

/// Every density variant, truncated and untruncated where that applies (as the unit tests'
/// list in src/forward/density.rs).
fn all_densities() -> Vec<Density> {
    vec![
        Density::Uniform,
        Density::logit_normal(),
        Density::LogitNormal { mean: 0.5, std: 0.8 },
        Density::Mode { scale: 1.29 },
        Density::Mode { scale: -0.5 },
        Density::CosMap,
        Density::edm(),
        Density::LogLogistic {
            loc: -0.5,
            scale: 0.6,
            min: 0.0,
            max: f64::INFINITY,
        },
        Density::LogLogistic {
            loc: -0.5,
            scale: 0.6,
            min: 1e-3,
            max: 80.0,
        },
        Density::LogUniform {
            min: 0.002,
            max: 80.0,
        },
        Density::VDiffusion {
            sigma_data: 0.5,
            min: 0.0,
            max: f64::INFINITY,
        },
        Density::VDiffusion {
            sigma_data: 1.0,
            min: 1e-2,
            max: 50.0,
        },
        Density::CosineInterpolated {
            image_d: 64.0,
            noise_d_low: 32.0,
            noise_d_high: 64.0,
            sigma_data: 0.5,
            min: 1e-3,
            max: 1e3,
        },
        Density::SplitLogNormal {
            loc: -0.5,
            scale_1: 1.0,
            scale_2: 1.6,
        },
    ]
}

/// The Kolmogorov–Smirnov statistic `sup |F_n - F|` of the draws against `d.cdf`: the empirical
/// CDF jumps at each sorted draw, so both its value before (`i / n`) and after (`(i + 1) / n`)
/// the jump are compared (ties are covered: the outermost of a run dominate).
fn ks(d: &Density, mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len() as f64;
    xs.iter()
        .enumerate()
        .map(|(i, &x)| {
            let f = d.cdf(x);
            (f - i as f64 / n).max((i + 1) as f64 / n - f)
        })
        .fold(0.0, f64::max)
}

const KS_N: usize = 20000;

/// The 1% critical value of the one-sample KS statistic (asymptotic, `1.63 / sqrt(n)`, ~0.0115
/// at 20000 draws). Seeds are fixed, so the test is deterministic. At 20000 draws a log-sigma
/// off by 0.1 (D ~ 0.033), a scale 10% off (D ~ 0.023), a missed truncation or `u` for `1 - u`
/// in an asymmetric density are two times this and more (see the next test); a scale 5% off
/// (D ~ 0.012) is about at the limit.
fn ks_critical(n: usize) -> f64 {
    1.63 / (n as f64).sqrt()
}

#[test]
fn every_density_passes_kolmogorov_smirnov() {
    let crit = ks_critical(KS_N);
    let mut worst: f64 = 0.0;
    for (k, d) in all_densities().iter().enumerate() {
        let xs = d
            .sample(
                KS_N,
                Draw::Independent,
                &mut StdRng::seed_from_u64(7000 + k as u64),
            )
            .unwrap();
        let (lo, hi) = d.support();
        assert!(
            xs.iter().all(|&x| x >= lo && x <= hi),
            "{d:?}: a draw outside [{lo}, {hi}]"
        );
        let stat = ks(d, xs);
        println!("KS sample       D = {stat:.4} (1% critical {crit:.4})  {d:?}");
        worst = worst.max(stat);
        assert!(stat < crit, "{d:?}: D = {stat}");
    }
    println!("KS sample: worst D = {worst:.4}");
}

/// The torch-stream draws follow the density too (float32 uniforms are on a 2^-24 grid, far
/// finer than the KS resolution; log-normal and logit-normal through torch's normals, the split
/// log-normal through `|z|` and a uniform).
#[test]
fn torch_draws_pass_kolmogorov_smirnov() {
    let crit = ks_critical(KS_N);
    for (k, d) in all_densities().iter().enumerate() {
        let xs = d
            .sample_torch(KS_N, Draw::Independent, &mut TorchGenerator::new(8000 + k as u64))
            .unwrap();
        let stat = ks(d, xs);
        println!("KS sample_torch D = {stat:.4} (1% critical {crit:.4})  {d:?}");
        assert!(stat < crit, "{d:?}: D = {stat}");
    }
}

/// The KS test is not blind: EDM's log-normal with its log-mean off by 0.1, or its scale 10% too
/// wide, fails it by a factor of two or more (expected D: 0.033 and 0.023 plus sampling noise).
#[test]
fn kolmogorov_smirnov_rejects_a_wrong_density() {
    let d = Density::edm();
    for (what, wrong) in [
        ("log-mean + 0.1", Density::LogNormal { mean: -1.1, std: 1.2 }),
        (
            "scale x 1.1",
            Density::LogNormal {
                mean: -1.2,
                std: 1.32,
            },
        ),
    ] {
        let xs = wrong
            .sample(KS_N, Draw::Independent, &mut StdRng::seed_from_u64(1))
            .unwrap();
        let stat = ks(&d, xs);
        println!("KS of EDM's log-normal with {what}: D = {stat:.4}");
        assert!(stat > 1.8 * ks_critical(KS_N), "{what}: {stat}");
    }
}

/// The stratum (of `n` equal-probability strata) that each draw's CDF value falls in. The CDF
/// is inverted by bisection for the mode and cosine-interpolated densities and torch's draws
/// are float32; a CDF value within 1e-7 of a stratum boundary is counted on the side `expect`
/// says (no draw comes that close otherwise: a stratified uniform is at least 2^-24 / n inside
/// its stratum in float32, 2^-54 / n in float64, and these seeds keep well clear).
fn strata(d: &Density, xs: &[f64], expect: impl Fn(usize) -> usize) -> Vec<usize> {
    let n = xs.len();
    xs.iter()
        .enumerate()
        .map(|(i, &x)| {
            let u = d.cdf(x) * n as f64;
            let want = expect(i);
            if u >= want as f64 - 1e-7 * n as f64 && u <= (want + 1) as f64 + 1e-7 * n as f64 {
                want
            } else {
                (u as usize).min(n - 1)
            }
        })
        .collect()
}

fn assert_one_per_stratum(what: &str, d: &Density, strata: &[usize], total: usize) {
    let mut count = vec![0usize; total];
    for &k in strata {
        count[k] += 1;
    }
    assert!(
        count.iter().all(|&c| c == 1),
        "{what} {d:?}: strata counts {count:?}"
    );
}

/// `Draw::stratified()`: draw `i` of 256 lies in stratum `i` (`[i / 256, (i + 1) / 256)` of the
/// CDF), so there is exactly one draw per stratum; two groups of 128 (`Stratified { group,
/// groups: 2 }`) cover the strata `group + 2 i` of 256, together each once.
#[test]
fn stratified_batch_has_one_draw_per_stratum() {
    let n = 256;
    for (k, d) in all_densities().iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(9000 + k as u64);
        let xs = d.sample(n, Draw::stratified(), &mut rng).unwrap();
        let got = strata(d, &xs, |i| i);
        assert!(
            got.iter().enumerate().all(|(i, &s)| s == i),
            "sample {d:?}: strata {got:?}"
        );
        let mut all = Vec::new();
        for group in 0..2 {
            let xs = d
                .sample(n / 2, Draw::Stratified { group, groups: 2 }, &mut rng)
                .unwrap();
            // strata() counts in n / 2 strata; ask for the CDF in n strata instead.
            let got: Vec<usize> = xs
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    let want = group + 2 * i;
                    let u = d.cdf(x) * n as f64;
                    assert!(
                        u >= want as f64 - 1e-7 * n as f64 && u <= (want + 1) as f64 + 1e-7 * n as f64,
                        "sample {d:?} group {group}: draw {i} at {u} / {n}"
                    );
                    want
                })
                .collect();
            all.extend(got);
        }
        assert_one_per_stratum("sample, 2 groups", d, &all, n);
    }
}

/// The torch-stream draws stratify too (all but the split log-normal, which k-diffusion does
/// not stratify): one draw per stratum, in stratum order — except where k-diffusion's own map
/// is decreasing in its uniform (cosine-interpolated: draw `i` is in stratum `n - 1 - i`, as
/// the fixture's stratified values, largest first, show). The mode density's order has its
/// own test below.
#[test]
fn stratified_torch_draws_have_one_draw_per_stratum() {
    let n = 256;
    for (k, d) in all_densities().iter().enumerate() {
        if matches!(d, Density::SplitLogNormal { .. }) {
            continue;
        }
        let xs = d
            .sample_torch(n, Draw::stratified(), &mut TorchGenerator::new(9100 + k as u64))
            .unwrap();
        let reversed = matches!(d, Density::CosineInterpolated { .. });
        let order = |i: usize| if reversed { n - 1 - i } else { i };
        let got = strata(d, &xs, order);
        assert_one_per_stratum("sample_torch", d, &got, n);
        if !matches!(d, Density::Mode { .. }) {
            assert!(
                got.iter().enumerate().all(|(i, &s)| s == order(i)),
                "sample_torch {d:?}: strata {got:?}"
            );
        }
    }
}

/// Regression: `sample_torch`'s stratified `Mode` draws pushed the stratified uniform through
/// the (decreasing) mode map itself, so draw `i` landed in stratum `n - 1 - i`, unlike the
/// documented stratum order (the independent draws must use the map, to reproduce diffusers;
/// the stratified ones go through the quantile).
#[test]
fn stratified_torch_mode_draws_follow_the_documented_order() {
    let n = 64;
    let d = Density::Mode { scale: 1.29 };
    let xs = d
        .sample_torch(n, Draw::stratified(), &mut TorchGenerator::new(1))
        .unwrap();
    let got = strata(&d, &xs, |i| i);
    assert!(got.iter().enumerate().all(|(i, &s)| s == i), "strata {got:?}");
    let xs = d
        .sample_torch(
            n / 2,
            Draw::Stratified { group: 0, groups: 2 },
            &mut TorchGenerator::new(2),
        )
        .unwrap();
    for (i, &x) in xs.iter().enumerate() {
        let u = d.cdf(x) * n as f64;
        assert!(
            u >= (2 * i) as f64 && u <= (2 * i + 1) as f64,
            "group 0: draw {i} at {u} / {n}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Exact models
// ---------------------------------------------------------------------------------------------

fn data() -> GaussianMixture {
    GaussianMixture::gaussian(vec![0.3, -1.0], vec![0.25, 2.0]).unwrap()
}

/// The exact raw EDM network of `gm` for `p`: `F(c_in x) = (D(x; sigma) - c_skip x) / c_out`,
/// with `D` the posterior mean at the variance-exploding level `sigma` (recovered from the
/// network level: `sigma_in / alpha_in = c_in sigma / c_in`).
fn exact_network(
    gm: GaussianMixture,
    p: EdmPrecond,
) -> impl FnMut(ArrayView<'_, f64, IxDyn>, &NoiseLevel) -> Result<ArrayD<f64>, BoxError> {
    move |x_in: ArrayView<'_, f64, IxDyn>, l: &NoiseLevel| {
        let s = l.sigma / l.alpha;
        let x = x_in.mapv(|v| v / l.alpha); // c_in = alpha of the network level
        let d = gm.x0(x.view(), &NoiseLevel::new(0.0, 1.0, s))?;
        Ok((d - &x * p.c_skip(s)) / p.c_out(s))
    }
}

#[test]
fn edm_wrapper_with_the_exact_network_is_the_exact_denoiser() {
    let gm = data();
    let mut worst: f64 = 0.0;
    for sd in [0.5, 1.0] {
        let p = EdmPrecond::edm(sd);
        let mut model = Preconditioned::new(exact_network(gm.clone(), p), p);
        for (k, s) in [0.01, 0.5, 3.0, 80.0].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(40 + k as u64);
            let x0: Array2<f64> = gm.sample(64, &mut rng);
            let eps: Array2<f64> = GaussianMixture::gaussian(vec![0.0, 0.0], vec![1.0, 1.0])
                .unwrap()
                .sample(64, &mut rng);
            let x = (&x0 + &(&eps * s)).into_dyn();
            // Variance exploding: the level of x itself.
            let ve = NoiseLevel::new(s, 1.0, s);
            let got = model.denoise(x.view(), &ve).unwrap();
            let want = gm.x0(x.view(), &ve).unwrap();
            let (e_ve, _) = tol_ratio(got.as_slice().unwrap(), want.as_slice().unwrap(), 1.0, 1.0);
            // Variance preserving: the wrapper divides the sample by alpha first.
            let vp = NoiseLevel::from_sigma_ve(0.0, s);
            let x_vp = &x * vp.alpha;
            let got = model.denoise(x_vp.view(), &vp).unwrap();
            let want = gm.x0(x_vp.view(), &vp).unwrap();
            let (e_vp, _) = tol_ratio(got.as_slice().unwrap(), want.as_slice().unwrap(), 1.0, 1.0);
            println!("sigma_data {sd} sigma {s:5}: VE {e_ve:.1e}, VP {e_vp:.1e} (relative to max(|x0|, 1))");
            worst = worst.max(e_ve).max(e_vp);
        }
    }
    // Everything in float64; `F = (D - c_skip x) / c_out` and back `c_skip x + c_out F` loses a
    // few ulps of x / x0 (x up to ~250 at sigma 80).
    assert!(worst < 1e-12, "{worst:e}");
}

/// The EDM training loss of the exact network is the posterior variance of the target: for
/// Gaussian data `N(mu, v)` per dimension, `F* - F_exact = (x0 - E[x0 | x]) / c_out` has
/// variance `v sigma^2 / (v + sigma^2) / c_out^2`, and EDM's weighting makes the weight 1. A
/// shifted network pays the square of its shift on top (the exact posterior mean minimises the
/// expected loss).
#[test]
fn edm_training_loss_of_the_exact_network() {
    let gm = data();
    let n = 8192;
    for sd in [0.5, 1.0] {
        let p = EdmPrecond::edm(sd);
        let mut net = exact_network(gm.clone(), p);
        let mut rng = StdRng::seed_from_u64(if sd == 0.5 { 11 } else { 12 });
        let x0: Array2<f64> = gm.sample(n, &mut rng);
        let batch = p
            .training_example(
                x0.view(),
                Density::edm(),
                Draw::stratified(),
                LossWeighting::Edm { sigma_data: sd },
                &mut rng,
            )
            .unwrap();
        assert!(batch.weights.iter().all(|&w| (w - 1.0).abs() < 1e-12));
        let mut out = batch.noisy.clone();
        for (i, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
            let xi = batch.noisy.index_axis(Axis(0), i).to_owned().into_dyn();
            let f = net(xi.view(), &batch.levels[i]).unwrap();
            row.assign(&f.into_dimensionality::<ndarray::Ix1>().unwrap());
        }
        let exact = batch.loss(out.view()).unwrap();
        let expected = batch
            .draws
            .iter()
            .map(|&s| {
                let c = p.c_out(s);
                gm.variances()[0]
                    .iter()
                    .map(|&v| v * s * s / (v + s * s) / (c * c))
                    .sum::<f64>()
                    / 2.0
            })
            .sum::<f64>()
            / n as f64;
        let shifted = batch.loss((&out + 0.5).view()).unwrap();
        println!(
            "sigma_data {sd}: exact loss {exact:.4} (expected {expected:.4}), shifted by 0.5 {shifted:.4}"
        );
        // 16384 squared Gaussians of per-element variance ~O(1): relative standard deviation
        // ~1.5% (a bit more for the spread of sigma); 6% is four of them.
        assert!((exact / expected - 1.0).abs() < 0.06, "{exact} vs {expected}");
        // Shifting adds 0.25 on average, plus a cross term of mean 0 and std ~0.03.
        assert!(shifted > exact + 0.1, "{shifted} vs {exact}");
    }
}

#[test]
fn flow_matching_batch_is_consistent() {
    let gm = data();
    let n = 4096;
    let mut rng = StdRng::seed_from_u64(21);
    let x0: Array2<f64> = gm.sample(n, &mut rng);
    let tr = Training::flow_matching();
    let b = tr.batch(x0.view(), &mut rng).unwrap();
    let mut flow = gm.clone().with_prediction(Prediction::Flow);
    let mut out = Array2::<f64>::zeros((n, 2));
    let mut expected = 0.0;
    for i in 0..n {
        let (l, s) = (b.levels[i], b.draws[i]);
        // No shift: the level is the flow sigma s itself, at t = 1000 s.
        assert!(s > 0.0 && s < 1.0, "{s}");
        assert!(
            (l.sigma - s).abs() < 1e-15 && (l.alpha - (1.0 - s)).abs() < 1e-15,
            "{l:?} {s}"
        );
        assert!((l.t - 1000.0 * s).abs() < 1e-12, "{l:?}");
        for j in 0..2 {
            let (x, e) = (x0[[i, j]], b.noise[[i, j]]);
            assert!((b.noisy[[i, j]] - ((1.0 - s) * x + s * e)).abs() < 1e-14);
            assert!((b.target[[i, j]] - (e - x)).abs() < 1e-14);
        }
        assert_eq!(b.weights[i], 1.0, "uniform weighting");
        let row = b.noisy.index_axis(Axis(0), i).insert_axis(Axis(0)).to_owned();
        let v = flow.denoise(row.view(), &l).unwrap();
        out.index_axis_mut(Axis(0), i).assign(&v.index_axis(Axis(0), 0));
        // eps - x0 = (x_t - x0) / s: its posterior variance is Var(x0 | x_t) / s^2.
        for &v in &gm.variances()[0] {
            let a = 1.0 - s;
            expected += v / (a * a * v + s * s) / 2.0;
        }
    }
    expected /= n as f64;
    let exact = b.loss(out.view()).unwrap();
    let zero = b.loss(Array2::<f64>::zeros((n, 2)).view()).unwrap();
    let shifted = b.loss((&out + 0.5).view()).unwrap();
    println!(
        "flow matching: exact loss {exact:.4} (expected {expected:.4}), zero model {zero:.4}, shifted by 0.5 {shifted:.4}"
    );
    // 8192 squared Gaussians: ~2% relative standard deviation; 8% is four.
    assert!((exact / expected - 1.0).abs() < 0.08, "{exact} vs {expected}");
    // The zero model pays E[(eps - x0)^2] = 1 + E[x0^2] = 2.67 on average.
    assert!(exact + 0.5 < zero, "{exact} vs {zero}");
    assert!(shifted > exact + 0.1, "{shifted} vs {exact}");

    // Continuous VP, v-prediction, Min-SNR-5: weight min(SNR, 5) / (SNR + 1) at each level.
    let (bmin, bmax) = (0.1, 20.0);
    let tr = Training::new(
        Process::Vp {
            beta_min: bmin,
            beta_max: bmax,
        },
        Prediction::Velocity,
    )
    .weighting(LossWeighting::min_snr());
    let x0: Array2<f64> = gm.sample(256, &mut rng);
    let b = tr.batch(x0.view(), &mut rng).unwrap();
    let mut clamped = 0;
    for (i, (l, &u)) in b.levels.iter().zip(&b.draws).enumerate() {
        let log_abar = -0.5 * u * u * (bmax - bmin) - u * bmin;
        assert!(
            (l.alpha_bar() / log_abar.exp() - 1.0).abs() < 1e-12,
            "{l:?} at {u}"
        );
        assert!((l.alpha * l.alpha + l.sigma * l.sigma - 1.0).abs() < 1e-12);
        let snr = l.snr();
        let want = snr.min(5.0) / (snr + 1.0);
        assert!(
            (b.weights[i] / want - 1.0).abs() < 1e-12,
            "{} vs {want} at SNR {snr}",
            b.weights[i]
        );
        clamped += usize::from(snr > 5.0);
        for j in 0..2 {
            let v = l.alpha * b.noise[[i, j]] - l.sigma * x0[[i, j]];
            assert!((b.target[[i, j]] - v).abs() < 1e-14);
        }
    }
    // Both sides of the clamp were exercised.
    println!("VP min-SNR: {clamped} of 256 levels clamped");
    assert!(clamped > 10 && clamped < 246, "{clamped}");
}
