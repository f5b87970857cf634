//! Shared helpers for the integration tests: fixture loading and the analytic model.
#![allow(dead_code)]

use diffusion_samplers::analytic::GaussianMixture;
use diffusion_samplers::grid::ModelSampling;
use diffusion_samplers::{FlowSchedule, FlowShift, NoiseSchedule, Prediction};
use serde_json::Value;

/// Parses `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| {
            if x.is_null() {
                f64::NAN
            } else {
                x.as_f64().unwrap_or_else(|| panic!("not a number: {x}"))
            }
        })
        .collect()
}

pub fn f64s2(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(f64s).collect()
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in case"))
}

/// Our schedule for a fixture schedule name (the generator's `SCHEDULES`).
pub fn schedule(name: &str) -> NoiseSchedule {
    let s = match name {
        "linear" | "linear_zero_snr" => NoiseSchedule::linear(1000, 0.0001, 0.02),
        "scaled_linear" | "scaled_linear_zero_snr" => NoiseSchedule::scaled_linear(1000, 0.00085, 0.012),
        "squaredcos_cap_v2" => NoiseSchedule::cosine(1000),
        "sigmoid" => NoiseSchedule::sigmoid(1000, 0.0001, 0.02),
        other => panic!("unknown schedule {other}"),
    }
    .unwrap();
    if name.ends_with("zero_snr") {
        s.with_zero_terminal_snr().unwrap()
    } else {
        s
    }
}

pub fn prediction(name: &str) -> Prediction {
    match name {
        "epsilon" => Prediction::Epsilon,
        "v_prediction" => Prediction::Velocity,
        "sample" => Prediction::Sample,
        "flow_prediction" => Prediction::Flow,
        other => panic!("unknown prediction {other}"),
    }
}

/// The generator's Gaussian mixture.
pub fn gmm(meta: &Value) -> GaussianMixture {
    let g = &meta["gmm"];
    GaussianMixture::new(f64s(&g["weights"]), f64s2(&g["means"]), f64s2(&g["variances"])).unwrap()
}

pub fn shape(meta: &Value) -> Vec<usize> {
    meta["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// Largest relative difference `|a - b| / |b|`.
pub fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| if *y == 0.0 { x.abs() } else { ((x - y) / y).abs() })
        .fold(0.0, f64::max)
}

/// Largest `|a - b| / (rtol |b| + atol)` and its index: at most 1 means within tolerance.
pub fn tol_ratio(a: &[f64], b: &[f64], rtol: f64, atol: f64) -> (f64, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut worst = (0.0, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let r = (x - y).abs() / (rtol * y.abs() + atol);
        if r > worst.0 || r.is_nan() {
            worst = (r, i);
        }
    }
    worst
}

/// Largest `|a - b| / tol(b)` and its index.
pub fn tol_ratio_by(a: &[f64], b: &[f64], tol: impl Fn(f64) -> f64) -> (f64, usize) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut worst = (0.0, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let r = (x - y).abs() / tol(*y);
        if r > worst.0 || r.is_nan() {
            worst = (r, i);
        }
    }
    worst
}

/// Tolerance for a k-diffusion sigma computed by diffusers in float32: relative 1e-5 (half the
/// relative error of the f32 cumulative product, measured up to 1.3e-5 at the cosine tail), plus the
/// cancellation in `1 - abar` (abar stored in f32, absolute error ~6e-8), which makes
/// `sigma = sqrt((1 - abar) / abar)` carry a relative error of `~3e-8 / (1 - abar)`, with
/// `1 - abar = sigma^2 / (1 + sigma^2)`. Adjacent training timesteps differ in sigma by >= 0.5%
/// relative, so an off-by-one stays far outside.
pub fn f32_sigma_tol(sigma: f64) -> f64 {
    let one_minus_abar = sigma * sigma / (1.0 + sigma * sigma);
    sigma * (1e-5 + 1e-7 / one_minus_abar)
}

/// Our model sampling for a fixture name.
pub fn model_sampling(name: &str) -> ModelSampling {
    let sd15 = || NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    match name {
        "sd15" => ModelSampling::discrete(&sd15()),
        "sd15_zsnr" => ModelSampling::discrete(&sd15().with_zero_terminal_snr().unwrap()),
        "sd3" => ModelSampling::flow(
            &FlowSchedule::new(1000)
                .unwrap()
                .with_shift(FlowShift::Static(3.0))
                .unwrap(),
        ),
        "flux" => ModelSampling::flux(
            &FlowSchedule::new(1000)
                .unwrap()
                .with_shift(FlowShift::Exponential { mu: 1.15 })
                .unwrap(),
        ),
        other => panic!("unknown model sampling {other}"),
    }
    .unwrap()
}
