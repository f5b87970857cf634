//! DDPM with a learned reverse-step variance (Nichol & Dhariwal 2021, *Improved DDPM*):
//! diffusers' `DDPMScheduler` with `variance_type = "learned"` or `"learned_range"`, as used by
//! models whose network outputs twice the channels — the prediction, then the variance
//! (OpenAI's improved-DDPM and guided-diffusion models, DiT, DeepFloyd IF, Kandinsky, the
//! UnCLIP decoders).
//!
//! Such a model implements [`VarianceDenoiser`] (or wraps a `2C`-channel network in
//! [`SplitChannels`]), and [`DdpmLearned`] samples it.
//!
//! ```
//! use diffusion_samplers::learned::{DdpmLearned, LearnedVariance, SplitChannels};
//! use diffusion_samplers::prelude::*;
//! use ndarray::{concatenate, Array, ArrayView, Axis, IxDyn};
//! // A toy network on (batch, channels) data: epsilon of data N(0, 1) in the first channel,
//! // the variance parameter v = 0 (the geometric mean of the two bounds) in the second.
//! let net = |x: ArrayView<'_, f64, IxDyn>, l: &NoiseLevel| {
//!     let eps = x.mapv(|v| v * l.sigma); // for N(0, 1) data, E[eps | x] = sigma x
//!     let v = Array::zeros(x.raw_dim());
//!     Ok::<_, BoxError>(concatenate(Axis(1), &[eps.view(), v.view()])?)
//! };
//! let mut model = SplitChannels::new(net, Prediction::Epsilon, 1);
//! let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
//! let grid = s.grid(50, Spacing::Leading { offset: 0 })?;
//! let x = grid.initial_sample::<f64, _, _, _>(IxDyn(&[4096, 1]), &mut SeededNoise::new(0))?;
//! let out = DdpmLearned::new(LearnedVariance::LearnedRange).sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
//! let var = out.mapv(|v| v * v).mean().unwrap();
//! assert!((var - 1.0).abs() < 0.1, "{var}");
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

use ndarray::{Array, ArrayView, Axis, Dimension, RemoveAxis, Zip};

use crate::denoiser::Prediction;
use crate::error::{BoxError, Error, Result};
use crate::float::Float;
use crate::forward::{posterior, transition};
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;

/// How the variance output is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LearnedVariance {
    /// The output is the variance itself (diffusers' `"learned"`); it must be non-negative.
    Learned,
    /// The output `v` in [-1, 1] interpolates the log-variance between the posterior variance
    /// `beta~` and the forward variance `beta` of the step: `log var = f log beta + (1 - f)
    /// log beta~`, `f = (v + 1) / 2` (diffusers' `"learned_range"`, Improved DDPM eq. 15).
    LearnedRange,
}

impl LearnedVariance {
    /// `learned_range`'s log-variance for output `v`: `f ln beta + (1 - f) ln beta~`, `f = (v +
    /// 1) / 2`.
    pub(crate) fn range_log_variance(v: f64, ln_beta: f64, ln_small: f64) -> f64 {
        let f = (v + 1.0) * 0.5;
        f * ln_beta + (1.0 - f) * ln_small
    }
}

/// A model's prediction and its variance parameter, each shaped like the input.
pub type WithVariance<F, D> = (Array<F, D>, Array<F, D>);

/// A model that outputs its prediction and its variance parameter (each shaped like `x`).
pub trait VarianceDenoiser<F, D: Dimension> {
    /// What the first output is.
    fn prediction(&self) -> Prediction;

    /// Evaluates the model: `(prediction, variance parameter)`.
    ///
    /// # Errors
    /// Any error of the model.
    fn denoise_with_variance(
        &mut self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<WithVariance<F, D>, BoxError>;
}

/// A network whose output has twice the input's channels along `axis` (the prediction's
/// channels, then the variance's: diffusers splits `model_output` along axis 1), as a
/// [`VarianceDenoiser`]. The network is a closure or any
/// [`RawNetwork`](crate::precond::RawNetwork).
#[derive(Clone, Debug)]
pub struct SplitChannels<N> {
    net: N,
    prediction: Prediction,
    axis: usize,
}

impl<N> SplitChannels<N> {
    /// Wraps `net`, whose first half of channels along `axis` is of type `prediction`.
    pub fn new(net: N, prediction: Prediction, axis: usize) -> Self {
        SplitChannels {
            net,
            prediction,
            axis,
        }
    }
}

impl<F, D, N> VarianceDenoiser<F, D> for SplitChannels<N>
where
    F: Float,
    D: Dimension + RemoveAxis,
    N: crate::precond::RawNetwork<F, D>,
{
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn denoise_with_variance(
        &mut self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<WithVariance<F, D>, BoxError> {
        let out = self.net.forward(x.view(), level)?;
        let ax = Axis(self.axis);
        let c = x.shape().get(self.axis).copied().unwrap_or(0);
        if self.axis >= x.ndim() || out.ndim() != x.ndim() || out.len_of(ax) != 2 * c {
            return Err(Box::new(Error::Shape {
                what: "learned-variance output (twice the channels along the split axis)",
                expected: {
                    let mut s = x.shape().to_vec();
                    if let Some(v) = s.get_mut(self.axis) {
                        *v *= 2;
                    }
                    s
                },
                got: out.shape().to_vec(),
            }));
        }
        let (a, b) = out.view().split_at(ax, c);
        Ok((a.to_owned(), b.to_owned()))
    }
}

/// DDPM ancestral sampling with the model's variance (see the [module docs](self)): the mean
/// is DDPM's posterior mean with the model's `x0` estimate, the standard deviation the model's
/// (no noise on a step to the clean level). diffusers adds noise whenever the timestep is
/// positive, also on a last step to the clean level (`steps_offset = 1` grids), where
/// `learned_range` interpolates towards a clamped `1e-20`: that draw is not reproduced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdpmLearned {
    variance: LearnedVariance,
    clip: Option<f64>,
}

impl DdpmLearned {
    /// Reads the variance output as `variance` says; no clipping.
    pub fn new(variance: LearnedVariance) -> Self {
        DdpmLearned { variance, clip: None }
    }

    /// Clamp the x0 estimate to `[-r, r]` (diffusers' `clip_sample`).
    pub fn clip_sample(mut self, range: Option<f64>) -> Self {
        self.clip = range;
        self
    }

    /// Samples `x` (at the grid's first level) to the final level.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a bad clip range; [`Error::Model`],
    /// [`Error::ShapeMismatch`], [`Error::Undetermined`], [`Error::NonFinite`] (a negative
    /// `Learned` variance, a non-finite output) naming the step and level.
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
        M: VarianceDenoiser<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
    {
        if let Some(r) = self.clip
            && !(r.is_finite() && r > 0.0)
        {
            return Err(Error::InvalidParameter {
                name: "clip_sample",
                value: r,
                reason: "must be positive and finite",
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
        let lim = F::cast(self.clip.unwrap_or(f64::INFINITY));
        let mut x = x;
        let mut z = Array::zeros(x.raw_dim());
        for step in 0..levels.len() - 1 {
            let (from, to) = (levels[step], levels[step + 1]);
            if to.sigma_ve() >= from.sigma_ve() {
                continue; // zero-length step
            }
            let (out, v) = model
                .denoise_with_variance(x.view(), &from)
                .map_err(|source| Error::Model {
                    step,
                    level: from,
                    source,
                })?;
            for a in [&out, &v] {
                if a.shape() != x.shape() {
                    return Err(Error::ShapeMismatch {
                        step,
                        level: from,
                        expected: x.shape().to_vec(),
                        got: a.shape().to_vec(),
                    });
                }
            }
            let c = pred.to_x0(&from).ok_or(Error::Undetermined {
                step,
                level: from,
                prediction: pred,
                what: "x0",
            })?;
            let p = posterior(&from, &to);
            let beta = transition(&to, &from).variance;
            let noisy = !to.is_clean();
            if noisy {
                noise.fill_interval(step, &from, &to, z.view_mut());
            }
            let (cx, co) = (F::cast(c.x), F::cast(c.out));
            let (m0, mt) = (F::cast(p.x0), F::cast(p.xt));
            let (ln_b, ln_small) = (beta.max(1e-20).ln(), p.variance.max(1e-20).ln());
            let kind = self.variance;
            let mut bad = false;
            Zip::from(&mut x)
                .and(&out)
                .and(&v)
                .and(&z)
                .for_each(|x, &o, &v, &z| {
                    let x0 = (cx * *x + co * o).max(-lim).min(lim);
                    let mean = m0 * x0 + mt * *x;
                    let std = if noisy {
                        match kind {
                            LearnedVariance::Learned => v.as_f64().sqrt(),
                            LearnedVariance::LearnedRange => {
                                (0.5 * LearnedVariance::range_log_variance(v.as_f64(), ln_b, ln_small)).exp()
                            }
                        }
                    } else {
                        0.0
                    };
                    *x = mean + F::cast(std) * z;
                    bad |= !x.is_finite();
                });
            if bad {
                return Err(Error::NonFinite {
                    step,
                    level: to,
                    what: if out.iter().chain(v.iter()).all(|a| a.is_finite()) {
                        "sample (a negative learned variance?)"
                    } else {
                        "model output"
                    },
                });
            }
        }
        Ok(x)
    }
}
