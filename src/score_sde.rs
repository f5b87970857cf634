//! The score-SDE predictor–corrector sampler (Song et al. 2021, *Score-Based Generative
//! Modeling through Stochastic Differential Equations*, Algorithm 2 for the VE SDE): diffusers'
//! `ScoreSdeVeScheduler` with its pipeline loop.
//!
//! Each step first runs `correct_steps` Langevin corrector steps at the current level,
//!
//! ```text
//! x <- x + e score + sqrt(2 e) z,   e = 2 (snr mean_b |z_b| / mean_b |score_b|)^2
//! ```
//!
//! (norms over each batch element — axis 0 — averaged over the batch: one step size for the
//! whole batch, as diffusers computes it), then the reverse-diffusion predictor, the ancestral
//! step with DDPM's forward variance (`x' = x + (s^2 - s'^2) score + sqrt(s^2 - s'^2) z` on a
//! variance-exploding grid). The last step to the clean level adds no noise, which is the
//! pipeline's `prev_sample_mean`. The score comes from any model through its noise estimate:
//! `score = -eps / sigma`.
//!
//! ```
//! use diffusion_samplers::prelude::*;
//! use diffusion_samplers::score_sde::PredictorCorrector;
//! let grid = PredictorCorrector::diffusers_grid(200, 0.01, 50.0, 1e-5)?;
//! let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
//! let x = grid.initial_sample::<f64, _, _, _>((2000, 1), &mut SeededNoise::new(0))?;
//! let out = PredictorCorrector::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
//! let m = out.mean().unwrap();
//! let v = out.mapv(|a| (a - m).powi(2)).mean().unwrap();
//! assert!((m - 0.5).abs() < 0.03 && (v - 0.04).abs() < 0.01, "{m} {v}");
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

use ndarray::{Array, Axis, Dimension, Zip};

use crate::denoiser::{Call, Denoiser, call_model};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::forward::{posterior, transition};
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::{NoiseSource, draw_key};
use crate::sampler::core::options::setters;

/// The predictor–corrector sampler (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictorCorrector {
    snr: f64,
    correct_steps: usize,
}

impl Default for PredictorCorrector {
    fn default() -> Self {
        PredictorCorrector {
            snr: 0.15,
            correct_steps: 1,
        }
    }
}

impl PredictorCorrector {
    /// diffusers' defaults: `snr = 0.15`, one corrector step.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The corrector's signal-to-noise ratio.
        snr: f64,
        /// Langevin corrector steps per step (0: the predictor alone, i.e. ancestral sampling).
        correct_steps: usize,
    }

    /// Model calls on `grid`: `correct_steps + 1` per step.
    pub fn model_calls(&self, grid: &Grid) -> usize {
        let steps = grid
            .levels()
            .windows(2)
            .filter(|w| w[1].sigma_ve() < w[0].sigma_ve())
            .count();
        steps * (self.correct_steps + 1)
    }

    /// The grid diffusers' `ScoreSdeVeScheduler` walks after `set_timesteps(n)` and
    /// `set_sigmas(n)`: the model is told `sigma_min (sigma_max / sigma_min)^t_i` at the times
    /// `t_i = linspace(1, sampling_eps, n)` (each level's `t`), while the predictor steps
    /// between the geometric `discrete_sigmas` (each level's `sigma`; within a factor
    /// `(sigma_max / sigma_min)^sampling_eps` of the former, 1.2e-4 for diffusers' defaults);
    /// then the clean level. The starting sample is `sigma_max` times unit noise.
    /// diffusers computes both lists in float32 (here float64).
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for fewer than 2 steps; [`Error::InvalidParameter`] for
    /// `sigma_min`, `sigma_max` out of range or `sampling_eps` outside `(0, 1 / (steps - 1))`.
    pub fn diffusers_grid(steps: usize, sigma_min: f64, sigma_max: f64, sampling_eps: f64) -> Result<Grid> {
        if steps < 2 {
            return Err(Error::InvalidSteps {
                steps,
                max: crate::error::MAX_STEPS,
            });
        }
        if !(sigma_min.is_finite() && sigma_min > 0.0) {
            return Err(Error::InvalidParameter {
                name: "sigma_min",
                value: sigma_min,
                reason: "must be positive and finite",
            });
        }
        if !(sigma_max.is_finite() && sigma_max > sigma_min) {
            return Err(Error::InvalidParameter {
                name: "sigma_max",
                value: sigma_max,
                reason: "must be finite and above sigma_min",
            });
        }
        if !(sampling_eps > 0.0 && sampling_eps * ((steps - 1) as f64) < 1.0) {
            return Err(Error::InvalidParameter {
                name: "sampling_eps",
                value: sampling_eps,
                reason: "must be in (0, 1 / (steps - 1)): larger values repeat the predictor's sigmas",
            });
        }
        let n = steps as f64 - 1.0;
        let ratio = sigma_max / sigma_min;
        let mut levels: Vec<NoiseLevel> = (0..steps)
            .map(|i| {
                let t = 1.0 + (sampling_eps - 1.0) * i as f64 / n;
                let model_sigma = sigma_min * ratio.powf(t);
                // The predictor's index: floor(t_i (n - 1)) as torch computes it in float32.
                #[allow(clippy::cast_possible_truncation, reason = "torch's float32 product")]
                let k = (t as f32 * n as f32).floor() as f64;
                let sigma = sigma_min * ratio.powf(k / n);
                NoiseLevel::new(model_sigma, 1.0, sigma)
            })
            .collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::from_levels(levels)?.with_initial_scale(sigma_max)
    }

    /// Samples `x` (at the grid's first level) to the final level. The first draw of step `k`
    /// is keyed `k`, the later ones [`draw_key`]`(k, j)` (corrector draws first, the predictor's
    /// last).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a negative or non-finite `snr` or more than 15
    /// corrector steps; [`Error::Model`],
    /// [`Error::ShapeMismatch`], [`Error::Undetermined`], [`Error::NonFinite`] naming the step
    /// and level (a zero score makes the corrector's step infinite: non-finite).
    pub fn sample<F, D, M, N>(
        &self,
        model: &mut M,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Array<F, D>>
    where
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
    {
        if !(self.snr.is_finite() && self.snr >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "snr",
                value: self.snr,
                reason: "must be finite and non-negative",
            });
        }
        if self.correct_steps > 15 {
            return Err(Error::InvalidParameter {
                name: "correct_steps",
                value: self.correct_steps as f64,
                reason: "at most 15 (each step keys 16 noise draws)",
            });
        }
        let levels = grid.levels();
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                step: 0,
                level: levels[0],
                what: "starting sample",
            });
        }
        let pred = model.prediction();
        let steps = levels.len() - 1;
        let mut x = x;
        let mut z = Array::zeros(x.raw_dim());
        let mut calls = 0;
        for step in 0..steps {
            let (from, to) = (levels[step], levels[step + 1]);
            if to.sigma_ve() >= from.sigma_ve() {
                continue;
            }
            let ce = pred.to_eps(&from).ok_or(Error::Undetermined {
                step,
                level: from,
                prediction: pred,
                what: "eps",
            })?;
            // score = -eps / sigma = sx x + so output
            let (sx, so) = (F::cast(-ce.x / from.sigma), F::cast(-ce.out / from.sigma));
            for c in 0..self.correct_steps {
                let out = finite_call(model, &x, &Call::new(calls, step, steps, from))?;
                calls += 1;
                let mut score = out;
                Zip::from(&mut score)
                    .and(&x)
                    .for_each(|o, &xv| *o = sx * xv + so * *o);
                noise.fill_interval(draw_key(step, c), &from, &from, z.view_mut());
                let (gn, zn) = (mean_norm(&score), mean_norm(&z));
                let e = 2.0 * (self.snr * zn / gn).powi(2);
                let (ef, sf) = (F::cast(e), F::cast((2.0 * e).sqrt()));
                Zip::from(&mut x)
                    .and(&score)
                    .and(&z)
                    .for_each(|x, &s, &z| *x = *x + ef * s + sf * z);
                if !e.is_finite() || x.iter().any(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        step,
                        level: from,
                        what: "corrector sample (a zero or non-finite score?)",
                    });
                }
            }
            let out = finite_call(model, &x, &Call::new(calls, step, steps, from))?;
            calls += 1;
            let c0 = pred.to_x0(&from).ok_or(Error::Undetermined {
                step,
                level: from,
                prediction: pred,
                what: "x0",
            })?;
            let p = posterior(&from, &to);
            let std = if to.is_clean() {
                0.0
            } else {
                noise.fill_interval(draw_key(step, self.correct_steps), &from, &to, z.view_mut());
                transition(&to, &from).variance.sqrt()
            };
            let (cx, co, m0, mt, sd) = (
                F::cast(c0.x),
                F::cast(c0.out),
                F::cast(p.x0),
                F::cast(p.xt),
                F::cast(std),
            );
            Zip::from(&mut x).and(&out).and(&z).for_each(|x, &o, &z| {
                let x0 = cx * *x + co * o;
                *x = m0 * x0 + mt * *x + sd * z;
            });
            if x.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    step,
                    level: to,
                    what: "sample",
                });
            }
        }
        Ok(x)
    }
}

/// The L2 norm of each batch element (axis 0), averaged over the batch (`torch.norm(a.reshape(B,
/// -1), dim=-1).mean()`); the whole array's norm for a 0-d array.
fn mean_norm<F: Float, D: Dimension>(a: &Array<F, D>) -> f64 {
    if a.ndim() == 0 {
        return a.iter().map(|v| v.as_f64().powi(2)).sum::<f64>().sqrt();
    }
    let b = a.len_of(Axis(0));
    if b == 0 || a.is_empty() {
        return 0.0;
    }
    // Batch element i is the i-th run of len / b elements in logical order.
    let per = a.len() / b;
    let (mut total, mut acc, mut k) = (0.0, 0.0, 0);
    for v in a.iter() {
        acc += v.as_f64().powi(2);
        k += 1;
        if k == per {
            total += acc.sqrt();
            acc = 0.0;
            k = 0;
        }
    }
    total / b as f64
}

/// A model call whose output must be finite (the corrector's step size divides by its norm).
fn finite_call<F, D, M>(model: &mut M, x: &Array<F, D>, call: &Call) -> Result<Array<F, D>>
where
    F: Float,
    D: Dimension,
    M: Denoiser<F, D> + ?Sized,
{
    let out = call_model(model, x.view(), call)?;
    if out.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            step: call.step,
            level: call.level,
            what: "model output",
        });
    }
    Ok(out)
}
