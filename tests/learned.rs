//! DDPM with a learned variance: against diffusers' DDPMScheduler (`learned`, `learned_range`;
//! tests/fixtures/learned.json from gen_learned.py), and an analytic model whose learned
//! variance is the exact one, which then samples the data's variance exactly at few steps.

mod common;
use common::*;
use diffusion_samplers::learned::{DdpmLearned, LearnedVariance, SplitChannels, VarianceDenoiser};
use diffusion_samplers::prelude::*;
use ndarray::{Array, Array2, ArrayView, ArrayView2, Axis, Ix2, IxDyn, concatenate};

/// diffusers keeps alphas_cumprod in float32; ~1e-6 relative on O(1) samples over 10–20 steps.
/// A variance read with the wrong interpolation (e.g. `v` instead of `(v + 1) / 2`) moves a
/// step's noise by a factor of several, far above this.
const TOL: f64 = 2e-5;

#[test]
fn learned_variances_match_diffusers() {
    let fx = fixture("learned.json");
    let meta = &fx["meta"];
    let sh = shape(meta);
    for run in fx["runs"].as_array().unwrap() {
        let name = str_of(run, "name");
        let sched = schedule(str_of(run, "schedule"));
        let steps = run["steps"].as_u64().unwrap() as usize;
        let grid = sched.grid(steps, Spacing::Leading { offset: 0 }).unwrap();
        assert_eq!(grid.timesteps(), f64s(&run["timesteps"]), "{name}");
        let kind = match str_of(run, "variance") {
            "learned" => LearnedVariance::Learned,
            _ => LearnedVariance::LearnedRange,
        };
        let pred = prediction(str_of(run, "prediction"));
        let mut inner = gmm(meta).with_prediction(pred);
        let net = move |x: ArrayView<'_, f64, IxDyn>, l: &NoiseLevel| {
            let out = inner.denoise(x.view(), l)?;
            let v = match kind {
                LearnedVariance::Learned => x.mapv(|a| 1e-3 * (1.5 + a.tanh())),
                _ => x.mapv(f64::tanh),
            };
            Ok::<_, BoxError>(concatenate(Axis(1), &[out.view(), v.view()])?)
        };
        let mut model = SplitChannels::new(net, pred, 1);
        let x = Array::from_shape_vec(IxDyn(&sh), f64s(&run["x_init"])).unwrap();
        let noise: Vec<Vec<f64>> = run["noise"].as_array().unwrap().iter().map(f64s).collect();
        let out = DdpmLearned::new(kind)
            .sample(&mut model, x, &grid, &mut ReplayNoise::new(noise))
            .unwrap();
        let want = run["trajectory"].as_array().unwrap().last().map(f64s).unwrap();
        let err = max_abs_diff(out.as_slice().unwrap(), &want);
        println!("{name:28} err {err:.1e}");
        assert!(err < TOL, "{name}: {err:e}");
    }
}

/// Gaussian data N(mu, s2): the reverse step's exact distribution is Gaussian with the
/// posterior mean and variance `beta~ + c0^2 Var(x0 | x_t)`. A model that outputs that
/// variance (as `learned_range`'s `v`) makes 10-step DDPM sample the data's moments exactly,
/// where the fixed variances miss.
struct ExactVariance {
    mu: f64,
    s2: f64,
    levels: Vec<NoiseLevel>,
}

impl VarianceDenoiser<f64, Ix2> for ExactVariance {
    fn prediction(&self) -> Prediction {
        Prediction::Sample
    }
    fn denoise_with_variance(
        &mut self,
        x: ArrayView2<'_, f64>,
        l: &NoiseLevel,
    ) -> Result<(Array2<f64>, Array2<f64>), BoxError> {
        let (a, s) = (l.alpha, l.sigma);
        let gain = a * self.s2 / (a * a * self.s2 + s * s);
        let x0 = x.mapv(|v| self.mu + gain * (v - a * self.mu));
        let post_var = self.s2 * s * s / (a * a * self.s2 + s * s);
        let k = self
            .levels
            .iter()
            .position(|m| m == l)
            .ok_or("level not on the grid")?;
        let to = self.levels[k + 1];
        let p = diffusion_samplers::forward::posterior(l, &to);
        let beta = diffusion_samplers::forward::transition(&to, l).variance;
        let want = p.variance + p.x0 * p.x0 * post_var;
        let f = (want.ln() - p.variance.ln()) / (beta.ln() - p.variance.ln());
        Ok((x0, Array2::from_elem(x.raw_dim(), 2.0 * f - 1.0)))
    }
}

#[test]
fn the_exact_learned_variance_samples_the_data_exactly() {
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let grid = s.grid(10, Spacing::Leading { offset: 0 }).unwrap();
    let (mu, s2) = (0.4, 0.3);
    let n = 40_000;
    let x: Array2<f64> = grid.initial_sample((n, 1), &mut SeededNoise::new(3)).unwrap();
    let mut model = ExactVariance {
        mu,
        s2,
        levels: grid.levels().to_vec(),
    };
    let out = DdpmLearned::new(LearnedVariance::LearnedRange)
        .sample(&mut model, x.clone(), &grid, &mut SeededNoise::new(4))
        .unwrap();
    let moments = |a: &Array2<f64>| {
        let m = a.mean().unwrap();
        (m, a.mapv(|v| (v - m).powi(2)).mean().unwrap())
    };
    let (m, v) = moments(&out);
    // 40 000 samples: mean within ~0.005, variance within ~1.5% (3 standard errors).
    assert!((m - mu).abs() < 0.01, "mean {m}");
    assert!((v / s2 - 1.0).abs() < 0.03, "learned_range variance {v} vs {s2}");
    // The fixed variances, same noise: fixed_small under-disperses at 10 steps.
    let mut plain = GaussianMixture::gaussian(vec![mu], vec![s2]).unwrap();
    let small = Ddpm::new()
        .sample(&mut plain, x.clone(), &grid, &mut SeededNoise::new(4))
        .unwrap();
    let large = Ddpm::new()
        .variance(DdpmVariance::FixedLarge)
        .sample(&mut plain, x, &grid, &mut SeededNoise::new(4))
        .unwrap();
    let (vs, vl) = (moments(&small).1, moments(&large).1);
    println!("10 steps, data variance {s2}: learned_range {v:.4}, fixed_small {vs:.4}, fixed_large {vl:.4}");
    assert!(vs < 0.9 * s2 && vl > 1.1 * s2, "{vs} {vl}");
}

#[test]
fn bad_outputs_are_errors() {
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let grid = s.grid(5, Spacing::Leading { offset: 0 }).unwrap();
    let x = Array::zeros(IxDyn(&[2, 3]));
    // Not twice the channels.
    let same = |x: ArrayView<'_, f64, IxDyn>, _: &NoiseLevel| Ok::<_, BoxError>(x.to_owned());
    let r = DdpmLearned::new(LearnedVariance::LearnedRange).sample(
        &mut SplitChannels::new(same, Prediction::Epsilon, 1),
        x.clone(),
        &grid,
        &mut SeededNoise::new(0),
    );
    assert!(matches!(r, Err(Error::Model { step: 0, .. })), "{r:?}");
    // A negative "learned" variance.
    let neg = |x: ArrayView<'_, f64, IxDyn>, _: &NoiseLevel| {
        Ok::<_, BoxError>(concatenate(Axis(1), &[x.view(), x.mapv(|_| -1.0).view()])?)
    };
    let r = DdpmLearned::new(LearnedVariance::Learned).sample(
        &mut SplitChannels::new(neg, Prediction::Epsilon, 1),
        x,
        &grid,
        &mut SeededNoise::new(0),
    );
    assert!(matches!(r, Err(Error::NonFinite { step: 0, .. })), "{r:?}");
}
