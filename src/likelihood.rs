//! Likelihood of data under a diffusion model, in bits per dimension, for any [`Denoiser`]
//! without autograd:
//!
//! * [`Vlb`]: DDPM's variational bound `L_vlb = L_T + sum L_{t-1} + L_0` (Ho et al. 2020,
//!   eq. 5) for a discrete VP schedule, with fixed reverse variances and the discretised
//!   Gaussian decoder for 8-bit data (or a Gaussian decoder for continuous data). One model call
//!   per timestep of the chain; a subset of timesteps gives the bound of the strided model; a
//!   model with a learned variance (Improved DDPM) through [`Vlb::bits_per_dim_learned`].
//! * [`OdeNll`]: the probability-flow ODE's exact likelihood (Song et al. 2021, FFJORD's
//!   instantaneous change of variables): integrate the ODE and the divergence of its drift from
//!   `sigma_min` to `sigma_max` with an adaptive Dormand–Prince 5(4) solver, the divergence
//!   estimated by Hutchinson's trace estimator with Jacobian-vector products from finite
//!   differences through the denoiser (central or forward), or exact products from a model that
//!   implements [`DenoiserJvp`]; uniform dequantisation for discrete data; reports model calls
//!   and the estimator's standard error.
//!
//! ```
//! use diffusion_samplers::analytic::GaussianMixture;
//! use diffusion_samplers::likelihood::{OdeNll, Trace};
//! use diffusion_samplers::prelude::*;
//! use ndarray::Array2;
//! use rand::SeedableRng;
//! // Data N(0, 0.3) in 2-D; the exact denoiser's ODE likelihood is the data's own.
//! let gm = GaussianMixture::gaussian(vec![0.0, 0.0], vec![0.3, 0.3])?;
//! let x0: Array2<f64> = gm.sample(8, &mut rand::rngs::StdRng::seed_from_u64(0));
//! let grid = Grid::ve(&[80.0, 1e-3])?;
//! let report = OdeNll::new().trace(Trace::Exact)
//!     .bits_per_dim(&mut gm.clone(), &grid, x0.view(), &mut SeededNoise::new(1))?;
//! let exact = gm.log_density(x0.view(), &NoiseLevel::new(0.0, 1.0, 1e-3))?;
//! for (b, lp) in report.bits_per_dim.iter().zip(exact) {
//!     assert!((b + lp / (2.0 * std::f64::consts::LN_2)).abs() < 2e-3, "{b} {lp}");
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::f64::consts::{LN_2, PI};

use ndarray::{Array, ArrayView, Axis, Dimension, Zip};

use crate::denoiser::{Call, Denoiser, Prediction, call_model};
use crate::error::{BoxError, Error, Result};
use crate::float::Float;
use crate::forward::{posterior, transition};
use crate::grid::{Grid, ScheduleFamily};
use crate::learned::{LearnedVariance, VarianceDenoiser};
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::options::setters;
use crate::schedule::NoiseSchedule;
use crate::special::norm_cdf;

/// A model output and its Jacobian-vector product (see [`DenoiserJvp`]).
pub type OutputAndJvp<F, D> = (Array<F, D>, Array<F, D>);

/// The x0 estimate and its products with each tangent (k-diffusion coordinates).
type Evaluated<D> = (Array<f64, D>, Vec<Array<f64, D>>);

/// A model's x0 estimate and, for a learned variance, its variance parameter.
type Estimate = (ndarray::ArrayD<f64>, Option<ndarray::ArrayD<f64>>);

/// A model that gives exact Jacobian-vector products of its output: forward-mode automatic
/// differentiation (JAX's `jvp`, torch's `torch.func.jvp`), or an analytic formula. With it
/// [`OdeNll::bits_per_dim_jvp`] needs no finite differences.
///
/// ```
/// use diffusion_samplers::analytic::GaussianMixture;
/// use diffusion_samplers::likelihood::DenoiserJvp;
/// use diffusion_samplers::{NoiseLevel, Prediction};
/// use ndarray::array;
/// // The exact epsilon predictor of N(0, 1): eps = sigma / (alpha^2 + sigma^2) x, linear in x.
/// let mut g = GaussianMixture::gaussian(vec![0.0], vec![1.0])?.with_prediction(Prediction::Epsilon);
/// let l = NoiseLevel::from_alpha_bar(0.0, 0.36);
/// let (_, jv) = g.denoise_jvp(array![[0.7f64]].view(), array![[1.0f64]].view(), &l)?;
/// assert!((jv[[0, 0]] - l.sigma / (l.alpha * l.alpha + l.sigma * l.sigma)).abs() < 1e-12);
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
pub trait DenoiserJvp<F, D: Dimension>: Denoiser<F, D> {
    /// The model's output at `x`, `level` (as [`Denoiser::denoise`]) and its derivative along
    /// `v`: `(out, d out / dx . v)`.
    ///
    /// # Errors
    /// Any error of the model.
    fn denoise_jvp(
        &mut self,
        x: ArrayView<'_, F, D>,
        v: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<OutputAndJvp<F, D>, BoxError>;
}

/// Mean and standard error of per-sample values.
fn mean_and_error(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

fn batch_and_dims<F, D: Dimension>(x0: &ArrayView<'_, F, D>) -> Result<(usize, usize)> {
    if x0.ndim() < 2 || x0.is_empty() {
        return Err(Error::Shape {
            what: "data (batch on axis 0, at least one data axis, not empty)",
            expected: vec![1, 1],
            got: x0.shape().to_vec(),
        });
    }
    let b = x0.shape()[0];
    Ok((b, x0.len() / b))
}

fn check_finite<F: Float, D: Dimension>(x0: &ArrayView<'_, F, D>) -> Result<()> {
    if let Some(i) = x0.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidValue {
            what: "data",
            index: i,
            value: x0.iter().nth(i).map_or(f64::NAN, |v| v.as_f64()),
            reason: "not finite",
        });
    }
    Ok(())
}

/// The model's x0 estimate (f64) at `level` for a sample in model coordinates.
fn x0_estimate<F: Float, D: Dimension, M: Denoiser<F, D> + ?Sized>(
    model: &mut M,
    x: &Array<F, D>,
    call: &Call,
) -> Result<Array<f64, D>> {
    let out = call_model(model, x.view(), call)?;
    let pred = model.prediction();
    let x0 = pred
        .convert(Prediction::Sample, out.view(), x.view(), &call.level)
        .map_err(|e| attribute(e, call))?;
    Ok(x0.mapv(|v| v.as_f64()))
}

/// Puts a run's position into errors raised with step 0.
fn attribute(e: Error, call: &Call) -> Error {
    match e {
        Error::NonFinite { what, .. } => Error::NonFinite {
            step: call.step,
            level: call.level,
            what,
        },
        Error::Undetermined { prediction, what, .. } => Error::Undetermined {
            step: call.step,
            level: call.level,
            prediction,
            what,
        },
        e => e,
    }
}

// ------------------------------------------------------------------------------------------
// The variational bound
// ------------------------------------------------------------------------------------------

/// The reverse process's variance in the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReverseVariance {
    /// The posterior variance `beta~_t` (DDPM's `fixed_small`; the better bound of the two).
    #[default]
    FixedSmall,
    /// The forward variance `beta_t` (`fixed_large`).
    FixedLarge,
}

/// The decoder `p(x_0 | x_1)` of the bound's last term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decoder {
    /// Ho et al.'s discretised Gaussian for data on `levels` evenly spaced values in `[-1, 1]`
    /// (256 for 8-bit images: `x = k / 127.5 - 1`): the Gaussian's mass on the value's bin of
    /// width `2 / (levels - 1)`, the edge bins extended to infinity. The bound is then on the
    /// discrete data's NLL. (improved-diffusion evaluates the normal CDF with a tanh
    /// approximation; this is the exact CDF.)
    Discretized {
        /// The number of data values per dimension (256 for 8 bits).
        levels: u32,
    },
    /// A Gaussian density: the bound is on the continuous data's NLL (can be negative).
    Gaussian,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::Discretized { levels: 256 }
    }
}

/// DDPM's variational bound (Ho et al. 2020), in bits per dimension, for a model trained on a
/// discrete VP [`NoiseSchedule`]:
/// `L = KL(q(x_T | x_0) || N(0, I)) + sum_t KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) -
/// log p(x_0 | x_1)`, each term at a fresh `x_t ~ q(x_t | x_0)` (improved-diffusion's
/// `calc_bpd_loop`). The reverse mean is the posterior mean with the model's x0 estimate
/// (clipped to `[-1, 1]` on request), its variance fixed ([`ReverseVariance`]). The decoder
/// `p(x_0 | x_{t_0})` is centred on the model's x0 estimate at the least noisy level `t_0` with
/// variance `sigma^2 / alpha^2` there, about the x0 estimate's own error for data much wider
/// than that noise (Ho et al.'s `sigma_1^2 = beta_1`; improved-diffusion uses the second
/// posterior variance `beta~_2`, about half of it, which loosens the bound on continuous data).
///
/// With fixed variances the bound converges to the NLL (of the exact denoiser) only when the
/// chain's steps shrink everywhere, its least noisy level kept: a finer discretisation of one
/// continuous schedule, not DDPM's linear schedule with `T` scaled (whose first steps always
/// double the SNR). `FixedLarge` converges much faster than `FixedSmall` there.
///
/// On a subset of timesteps ([`timesteps`](Self::timesteps)) it is the bound of the strided
/// model on those levels (the posterior and variances between consecutive chosen levels):
/// fewer calls, a looser bound.
///
/// ```
/// use diffusion_samplers::analytic::GaussianMixture;
/// use diffusion_samplers::likelihood::{Decoder, ReverseVariance, Vlb};
/// use diffusion_samplers::prelude::*;
/// use ndarray::Array2;
/// use rand::SeedableRng;
/// let gm = GaussianMixture::gaussian(vec![0.0; 2], vec![0.25; 2])?;
/// let x0: Array2<f64> = gm.sample(4096, &mut rand::rngs::StdRng::seed_from_u64(0));
/// let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
/// let ts: Vec<usize> = (0..1000).step_by(10).collect();
/// let r = Vlb::new().decoder(Decoder::Gaussian).variance(ReverseVariance::FixedLarge).timesteps(ts)
///     .bits_per_dim(&mut gm.clone(), &schedule, x0.view(), &mut SeededNoise::new(1))?;
/// assert_eq!(r.calls, 100);
/// // The bound's expectation for this chain is 1.063 bits/dim (the data's entropy is
/// // 0.5 log2(2 pi e 0.25) = 1.047): within 4 standard errors.
/// assert!((r.mean() - 1.0627).abs() < 4.0 * r.std_error(), "{} {}", r.mean(), r.std_error());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Vlb {
    variance: ReverseVariance,
    decoder: Decoder,
    clip: bool,
    timesteps: Option<Vec<usize>>,
}

/// What [`Vlb::bits_per_dim`] measured.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct VlbReport {
    /// The bound of each sample, in bits per dimension.
    pub bits_per_dim: Vec<f64>,
    /// The prior term `L_T` of each sample (bits/dim).
    pub prior: Vec<f64>,
    /// The decoder term `L_0` of each sample (bits/dim).
    pub decoder: Vec<f64>,
    /// The batch mean of each KL term `L_{t-1}` (bits/dim), noisiest first, next to
    /// [`timesteps`](Self::timesteps).
    pub terms: Vec<f64>,
    /// The chain's timesteps, noisiest first (the term of `timesteps[i]` is `terms[i]`; the last
    /// one carries the decoder).
    pub timesteps: Vec<usize>,
    /// Model calls (one per timestep, the batch at once).
    pub calls: usize,
}

impl VlbReport {
    /// The batch mean (bits/dim).
    pub fn mean(&self) -> f64 {
        mean_and_error(&self.bits_per_dim).0
    }

    /// The standard error of the batch mean (NaN for one sample).
    pub fn std_error(&self) -> f64 {
        mean_and_error(&self.bits_per_dim).1
    }
}

impl Vlb {
    /// Fixed-small variances, the 8-bit discretised decoder, no clipping, every timestep.
    pub fn new() -> Self {
        Vlb::default()
    }

    setters! {
        /// The reverse variance.
        variance: ReverseVariance,
        /// The decoder.
        decoder: Decoder,
        /// Clip the model's x0 estimate to `[-1, 1]` (improved-diffusion's `clip_denoised`).
        clip: bool,
    }

    /// Evaluate the chain on these timesteps only (any order; distinct, `< T`).
    pub fn timesteps(mut self, timesteps: Vec<usize>) -> Self {
        self.timesteps = Some(timesteps);
        self
    }

    fn chain(&self, schedule: &NoiseSchedule) -> Result<Vec<usize>> {
        let t_train = schedule.len();
        let mut ts = match &self.timesteps {
            Some(ts) => ts.clone(),
            None => (0..t_train).collect(),
        };
        ts.sort_unstable();
        let bad = |value: f64, reason| {
            Err(Error::InvalidParameter {
                name: "timesteps",
                value,
                reason,
            })
        };
        if ts.is_empty() {
            return bad(0.0, "the chain needs at least one timestep");
        }
        if ts.windows(2).any(|w| w[0] == w[1]) {
            return bad(f64::NAN, "timesteps must be distinct");
        }
        if let Some(&t) = ts.last().filter(|&&t| t >= t_train) {
            return bad(t as f64, "a timestep is not below the schedule's T");
        }
        if let Decoder::Discretized { levels } = self.decoder
            && levels < 2
        {
            return Err(Error::InvalidParameter {
                name: "levels",
                value: f64::from(levels),
                reason: "the discretised decoder needs at least 2 data values",
            });
        }
        ts.reverse();
        Ok(ts)
    }

    /// The bound for the data `x0` (batch on axis 0): `noise` draws each `x_t` (step key = the
    /// chain position).
    ///
    /// # Errors
    /// [`Error::Shape`] for data without a batch and a data axis; [`Error::InvalidParameter`]
    /// for an empty, repeated or out-of-range timestep list, or a decoder with fewer than 2
    /// levels; [`Error::InvalidValue`] for non-finite data or, with the discretised decoder,
    /// data outside `[-1, 1]`; the model's errors and non-finite outputs with the chain
    /// position as the step.
    pub fn bits_per_dim<F, D, M, N>(
        &self,
        model: &mut M,
        schedule: &NoiseSchedule,
        x0: ArrayView<'_, F, D>,
        noise: &mut N,
    ) -> Result<VlbReport>
    where
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
    {
        self.run(schedule, x0, noise, None, |xt, call| {
            Ok((x0_estimate(model, xt, call)?.into_dyn(), None))
        })
    }

    /// The bound of a model that also outputs its reverse variance (Improved DDPM: a learned
    /// `Sigma_theta`, read as `kind` says, per element; the variance options of this `Vlb` are
    /// not used). With `LearnedRange` at the decoder step the posterior variance is that of the
    /// step above (improved-diffusion's clipped log-variance at `t = 0`).
    ///
    /// ```
    /// use diffusion_samplers::analytic::GaussianMixture;
    /// use diffusion_samplers::learned::{LearnedVariance, VarianceDenoiser, WithVariance};
    /// use diffusion_samplers::likelihood::{Decoder, ReverseVariance, Vlb};
    /// use diffusion_samplers::prelude::*;
    /// use ndarray::{Array2, ArrayView2};
    /// use rand::SeedableRng;
    /// // An exact x0 model that answers v = 1 (the forward variance): fixed-large's bound.
    /// struct Large(GaussianMixture);
    /// impl VarianceDenoiser<f64, ndarray::Ix2> for Large {
    ///     fn prediction(&self) -> Prediction { Prediction::Sample }
    ///     fn denoise_with_variance(&mut self, x: ArrayView2<'_, f64>, l: &NoiseLevel)
    ///         -> Result<WithVariance<f64, ndarray::Ix2>, BoxError> {
    ///         Ok((self.0.x0(x, l)?, Array2::ones(x.raw_dim())))
    ///     }
    /// }
    /// let gm = GaussianMixture::gaussian(vec![0.0; 2], vec![0.25; 2])?;
    /// let x0: Array2<f64> = gm.sample(16, &mut rand::rngs::StdRng::seed_from_u64(0));
    /// let s = NoiseSchedule::linear(100, 1e-3, 0.2)?;
    /// let vlb = Vlb::new().decoder(Decoder::Gaussian);
    /// let learned = vlb.bits_per_dim_learned(&mut Large(gm.clone()), LearnedVariance::LearnedRange,
    ///     &s, x0.view(), &mut SeededNoise::new(1))?;
    /// let fixed = vlb.clone().variance(ReverseVariance::FixedLarge)
    ///     .bits_per_dim(&mut gm.clone().with_prediction(Prediction::Sample), &s, x0.view(), &mut SeededNoise::new(1))?;
    /// // Every KL term is fixed-large's (the decoders differ: learned uses beta at t = 0).
    /// for (a, b) in learned.terms.iter().zip(&fixed.terms).take(99) {
    ///     assert!((a - b).abs() < 1e-9 * b.abs().max(1.0));
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`bits_per_dim`](Self::bits_per_dim); [`Error::ShapeMismatch`] for a variance output
    /// shaped unlike the sample, [`Error::NonFinite`] for a learned variance that is not
    /// positive and finite.
    pub fn bits_per_dim_learned<F, D, M, N>(
        &self,
        model: &mut M,
        kind: LearnedVariance,
        schedule: &NoiseSchedule,
        x0: ArrayView<'_, F, D>,
        noise: &mut N,
    ) -> Result<VlbReport>
    where
        F: Float,
        D: Dimension,
        M: VarianceDenoiser<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
    {
        self.run(schedule, x0, noise, Some(kind), |xt, call| {
            let (out, var) = model
                .denoise_with_variance(xt.view(), &call.level)
                .map_err(|source| Error::Model {
                    step: call.step,
                    level: call.level,
                    source,
                })?;
            for o in [&out, &var] {
                if o.shape() != xt.shape() {
                    return Err(Error::ShapeMismatch {
                        step: call.step,
                        level: call.level,
                        expected: xt.shape().to_vec(),
                        got: o.shape().to_vec(),
                    });
                }
            }
            let x0 = model
                .prediction()
                .convert(Prediction::Sample, out.view(), xt.view(), &call.level)
                .map_err(|e| attribute(e, call))?;
            Ok((
                x0.mapv(|v| v.as_f64()).into_dyn(),
                Some(var.mapv(|v| v.as_f64()).into_dyn()),
            ))
        })
    }

    /// The bound's loop: `eval` gives the x0 estimate and, for a learned variance, its parameter.
    fn run<F, D, N, E>(
        &self,
        schedule: &NoiseSchedule,
        x0: ArrayView<'_, F, D>,
        noise: &mut N,
        learned: Option<LearnedVariance>,
        mut eval: E,
    ) -> Result<VlbReport>
    where
        F: Float,
        D: Dimension,
        N: NoiseSource<F> + ?Sized,
        E: FnMut(&Array<F, D>, &Call) -> Result<Estimate>,
    {
        let (batch, dims) = batch_and_dims(&x0)?;
        check_finite(&x0)?;
        let ts = self.chain(schedule)?;
        if matches!(self.decoder, Decoder::Discretized { .. })
            && let Some(i) = x0.iter().position(|v| v.as_f64().abs() > 1.0 + 1e-6)
        {
            return Err(Error::InvalidValue {
                what: "data",
                index: i,
                value: x0.iter().nth(i).map_or(f64::NAN, |v| v.as_f64()),
                reason: "the discretised decoder needs data in [-1, 1]",
            });
        }
        let x0f = x0.mapv(|v| v.as_f64()).into_dyn();
        let to_bits = 1.0 / (dims as f64 * LN_2);
        let levels: Vec<NoiseLevel> = ts.iter().map(|&t| schedule.level(t as f64)).collect();
        let k = ts.len();

        // L_T: KL(N(alpha x0, sigma^2) || N(0, 1)) per dimension.
        let top = levels[0];
        let prior: Vec<f64> = x0f
            .axis_iter(Axis(0))
            .map(|x| {
                let s2 = top.sigma * top.sigma;
                x.iter()
                    .map(|&x| 0.5 * (-1.0 - s2.ln() + s2 + top.alpha * top.alpha * x * x))
                    .sum::<f64>()
                    * to_bits
            })
            .collect();
        let mut total = prior.clone();
        let mut terms = Vec::with_capacity(k);
        let mut decoder = vec![0.0; batch];
        let mut eps = Array::<F, D>::zeros(x0.raw_dim());
        for (i, lt) in levels.iter().enumerate() {
            let call = Call::new(i, i, k, *lt);
            noise.fill(i, eps.view_mut());
            let (a, s) = (F::cast(lt.alpha), F::cast(lt.sigma));
            let xt = Zip::from(&x0).and(&eps).map_collect(|&x, &e| a * x + s * e);
            let (mut pred, param) = eval(&xt, &call)?;
            if self.clip {
                pred.mapv_inplace(|v| v.clamp(-1.0, 1.0));
            }
            // The step's forward and posterior variances (at the decoder: the clean level, with
            // the posterior variance of the step above, improved-diffusion's clipped value).
            let last = i + 1 == k;
            let ls = if last { NoiseLevel::CLEAN } else { levels[i + 1] };
            let post = posterior(lt, &ls);
            let beta = transition(&ls, lt).variance;
            let small = if !last {
                post.variance
            } else if k >= 2 {
                posterior(&levels[k - 2], lt).variance
            } else {
                beta
            };
            // The reverse variance of every element (None: one fixed value).
            let var: Option<ndarray::ArrayD<f64>> = match (learned, param) {
                (Some(LearnedVariance::Learned), Some(v)) => Some(v),
                (Some(_), Some(v)) => {
                    // As the learned-variance sampler reads it (`learned::DdpmLearned`).
                    let (lb, ls_) = (beta.max(1e-20).ln(), small.max(1e-20).ln());
                    Some(v.mapv(|v| LearnedVariance::range_log_variance(v, lb, ls_).exp()))
                }
                _ => None,
            };
            if let Some(v) = &var
                && v.iter().any(|v| !(v.is_finite() && *v > 0.0))
            {
                return Err(Error::NonFinite {
                    step: i,
                    level: *lt,
                    what: "learned variance (it must be positive and finite)",
                });
            }
            let per_sample: Vec<f64> = if !last {
                let vq = post.variance;
                let fixed = match self.variance {
                    ReverseVariance::FixedSmall => vq,
                    ReverseVariance::FixedLarge => beta,
                };
                let c2 = post.x0 * post.x0;
                let kl = |p: f64, x: f64, vp: f64| {
                    0.5 * ((vp / vq).ln() + vq / vp - 1.0) + 0.5 * c2 * (p - x) * (p - x) / vp
                };
                (0..batch)
                    .map(|b| {
                        let (p, x) = (pred.index_axis(Axis(0), b), x0f.index_axis(Axis(0), b));
                        let sum = match &var {
                            Some(v) => Zip::from(&p)
                                .and(&x)
                                .and(v.index_axis(Axis(0), b))
                                .fold(0.0, |acc, &p, &x, &vp| acc + kl(p, x, vp)),
                            None => Zip::from(&p)
                                .and(&x)
                                .fold(0.0, |acc, &p, &x| acc + kl(p, x, fixed)),
                        };
                        sum * to_bits
                    })
                    .collect()
            } else {
                // L_0: the decoder at the least noisy level; fixed variance sigma^2 / alpha^2.
                let fixed = (lt.sigma / lt.alpha).powi(2);
                let dec: Vec<f64> = (0..batch)
                    .map(|b| {
                        let (p, x) = (pred.index_axis(Axis(0), b), x0f.index_axis(Axis(0), b));
                        let sum = match &var {
                            Some(v) => Zip::from(&p)
                                .and(&x)
                                .and(v.index_axis(Axis(0), b))
                                .fold(0.0, |acc, &m, &x, &vp| acc + self.decoder_nll(x, m, vp)),
                            None => Zip::from(&p)
                                .and(&x)
                                .fold(0.0, |acc, &m, &x| acc + self.decoder_nll(x, m, fixed)),
                        };
                        sum * to_bits
                    })
                    .collect();
                decoder.clone_from(&dec);
                dec
            };
            if per_sample.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    step: i,
                    level: *lt,
                    what: "bound term (a zero variance, or a non-finite model output)",
                });
            }
            terms.push(per_sample.iter().sum::<f64>() / batch as f64);
            for (tot, v) in total.iter_mut().zip(&per_sample) {
                *tot += v;
            }
        }
        Ok(VlbReport {
            bits_per_dim: total,
            prior,
            decoder,
            terms,
            timesteps: ts,
            calls: k,
        })
    }

    /// `-log p(x | mean, var)` of one dimension (nats).
    fn decoder_nll(&self, x: f64, mean: f64, var: f64) -> f64 {
        let sd = var.sqrt();
        match self.decoder {
            Decoder::Gaussian => 0.5 * ((2.0 * PI * var).ln() + (x - mean) * (x - mean) / var),
            Decoder::Discretized { levels } => {
                let half = 1.0 / f64::from(levels - 1);
                let (lo, hi) = ((x - half - mean) / sd, (x + half - mean) / sd);
                let p = if x < -1.0 + half {
                    norm_cdf(hi)
                } else if x > 1.0 - half {
                    norm_cdf(-lo)
                } else if lo > 0.0 {
                    // Both edges in the upper tail: difference of upper tails, no cancellation.
                    norm_cdf(-lo) - norm_cdf(-hi)
                } else {
                    norm_cdf(hi) - norm_cdf(lo)
                };
                -p.max(f64::MIN_POSITIVE).ln()
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The probability-flow ODE likelihood
// ------------------------------------------------------------------------------------------

/// The distribution of Hutchinson's probe vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Probe {
    /// Entries `±1` (the smaller variance of the two).
    #[default]
    Rademacher,
    /// Standard normal entries.
    Gaussian,
}

/// How the divergence `tr(dD/dx)` is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trace {
    /// Hutchinson's estimator `E[v^T J v]` with `probes` probe vectors per sample, fixed for the
    /// whole solve (FFJORD); with two or more probes the report carries each sample's standard
    /// error.
    Hutchinson {
        /// The probes' distribution.
        probe: Probe,
        /// Probes per sample (each one product per evaluation).
        probes: usize,
    },
    /// The exact trace from one product per data dimension (for low-dimensional data).
    Exact,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::Hutchinson {
            probe: Probe::Rademacher,
            probes: 1,
        }
    }
}

/// The finite difference for Jacobian-vector products through a plain [`Denoiser`].
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub enum Difference {
    /// `(D(x + h v) - D(x - h v)) / 2h`: second order, two calls per product.
    #[default]
    Central,
    /// `(D(x + h v) - D(x)) / h`: first order, one call per product.
    Forward,
}

/// The probability-flow ODE likelihood (Song et al. 2021): `log p_0(x) = log p_T(x_T) +
/// integral of div f`, integrated in `ln sigma` from `sigma_min` to `sigma_max` in k-diffusion
/// coordinates (`x / alpha`, `sigma / alpha`), where the drift is `dx/d ln sigma = x - D(x)` and
/// its divergence `d - tr(dD/dx)` per sample (`d` dimensions), by an adaptive Dormand–Prince
/// 5(4) solver (torchdiffeq's `dopri5` error norm: RMS of `err / (atol + rtol max(|y|, |y'|))`
/// over the sample and the log-density).
///
/// The model is called at the grid's own levels (`Grid::level_at_sigma_ve`) with the sample
/// in its own scaling. Finite-difference products perturb the k-diffusion sample by `h v` with
/// `h = step sqrt(1 + sigma^2)` (the noisy data's scale for unit-variance data), `step`
/// defaulting to `cbrt(eps)` for central and `sqrt(eps)` for forward differences, `eps` the
/// model float type's epsilon (6e-6 / 1.5e-8 for f64, 4.9e-3 / 3.5e-4 for f32).
///
/// The prior at `sigma_max` (k-diffusion coordinates) is `N(0, 1 + sigma_max^2)` for VP and flow
/// grids (unit-variance data; for VP grids that is `N(0, 1)` in the model's own coordinates) and
/// `N(0, sigma_max^2)` for VE (k-diffusion's `log_likelihood`); it ignores the data's mean, an error of about `|mu| / sigma_max` nats per
/// dimension (raise [`sigma_max`](Self::sigma_max) beyond the grid to shrink it, for a model
/// that behaves there). With [`dequantize`](Self::dequantize) the data are taken as discrete
/// values in `[-1, 1]` and uniformly dequantised; the bits are then an upper bound on the
/// discrete NLL (Song et al.'s figure for CIFAR-10).
#[derive(Clone, Debug, PartialEq)]
pub struct OdeNll {
    rtol: f64,
    atol: f64,
    trace: Trace,
    difference: Difference,
    step: Option<f64>,
    sigma_min: Option<f64>,
    sigma_max: Option<f64>,
    dequantize: Option<u32>,
    max_evaluations: usize,
}

impl Default for OdeNll {
    fn default() -> Self {
        OdeNll {
            rtol: 1e-5,
            atol: 1e-5,
            trace: Trace::default(),
            difference: Difference::Central,
            step: None,
            sigma_min: None,
            sigma_max: None,
            dequantize: None,
            max_evaluations: 10_000,
        }
    }
}

/// What [`OdeNll::bits_per_dim`] measured.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct NllReport {
    /// The NLL of each sample in bits per dimension (the mean over its probes).
    pub bits_per_dim: Vec<f64>,
    /// The standard error of each sample's estimate over its probes (bits/dim; 0 for the exact
    /// trace, NaN for a single probe).
    pub probe_std_error: Vec<f64>,
    /// Right-hand-side evaluations of the ODE (accepted and rejected steps).
    pub evaluations: usize,
    /// Model calls, each on the whole batch: one per evaluation plus those of the products.
    pub calls: usize,
    /// Accepted steps.
    pub steps: usize,
    /// Rejected steps.
    pub rejected: usize,
}

impl NllReport {
    /// The batch mean (bits/dim).
    pub fn mean(&self) -> f64 {
        mean_and_error(&self.bits_per_dim).0
    }

    /// The standard error of the batch mean over samples (NaN for one sample): data and probe
    /// variation together.
    pub fn std_error(&self) -> f64 {
        mean_and_error(&self.bits_per_dim).1
    }
}

/// Products `J v` of the x0 estimate in k-diffusion coordinates.
trait Products<F, D: Dimension> {
    /// `D(x)` and, for each tangent, `dD/dx . v` (k-diffusion coordinates, f64).
    fn eval(
        &mut self,
        x_ve: &Array<f64, D>,
        level: &NoiseLevel,
        tangents: &[Array<f64, D>],
        call: &mut Call,
    ) -> Result<Evaluated<D>>;
}

struct FiniteDifferences<'m, M: ?Sized> {
    model: &'m mut M,
    difference: Difference,
    step: f64,
}

fn to_model<F: Float, D: Dimension>(x_ve: &Array<f64, D>, alpha: f64) -> Array<F, D> {
    x_ve.mapv(|v| F::cast(v * alpha))
}

impl<F: Float, D: Dimension, M: Denoiser<F, D> + ?Sized> Products<F, D> for FiniteDifferences<'_, M> {
    fn eval(
        &mut self,
        x_ve: &Array<f64, D>,
        level: &NoiseLevel,
        tangents: &[Array<f64, D>],
        call: &mut Call,
    ) -> Result<Evaluated<D>> {
        let mut calls = |x: &Array<f64, D>, call: &mut Call| {
            let r = x0_estimate(self.model, &to_model::<F, D>(x, level.alpha), call);
            call.index += 1;
            r
        };
        let d0 = calls(x_ve, call)?;
        let h = self.step * (1.0 + level.sigma_ve().powi(2)).sqrt();
        let mut out = Vec::with_capacity(tangents.len());
        for v in tangents {
            let plus = calls(&(x_ve + &(v * h)), call)?;
            let jv = match self.difference {
                Difference::Central => {
                    let minus = calls(&(x_ve - &(v * h)), call)?;
                    (plus - minus) / (2.0 * h)
                }
                Difference::Forward => (plus - &d0) / h,
            };
            out.push(jv);
        }
        Ok((d0, out))
    }
}

struct Exact<'m, M: ?Sized> {
    model: &'m mut M,
}

impl<F: Float, D: Dimension, M: DenoiserJvp<F, D> + ?Sized> Products<F, D> for Exact<'_, M> {
    fn eval(
        &mut self,
        x_ve: &Array<f64, D>,
        level: &NoiseLevel,
        tangents: &[Array<f64, D>],
        call: &mut Call,
    ) -> Result<Evaluated<D>> {
        let a = level.alpha;
        let xm = to_model::<F, D>(x_ve, a);
        let pred = self.model.prediction();
        let mut d0 = None;
        let mut out = Vec::with_capacity(tangents.len());
        let zero = Array::<f64, D>::zeros(x_ve.raw_dim());
        for v in tangents.iter().chain(tangents.is_empty().then_some(&zero)) {
            let vm = to_model::<F, D>(v, a);
            let (o, j) = self
                .model
                .denoise_jvp(xm.view(), vm.view(), level)
                .map_err(|source| Error::Model {
                    step: call.step,
                    level: *level,
                    source,
                })?;
            for r in [&o, &j] {
                if r.shape() != x_ve.shape() {
                    return Err(Error::ShapeMismatch {
                        step: call.step,
                        level: *level,
                        expected: x_ve.shape().to_vec(),
                        got: r.shape().to_vec(),
                    });
                }
            }
            call.index += 1;
            // The x0 estimate is linear in (x, output), so its derivative along alpha v (the
            // tangent in the model's coordinates) is the same map of (alpha v, J alpha v).
            let to_x0 = |o: &Array<F, D>, x: &Array<F, D>| {
                pred.convert(Prediction::Sample, o.view(), x.view(), level)
                    .map(|r| r.mapv(|e| e.as_f64()))
                    .map_err(|e| attribute(e, call))
            };
            if d0.is_none() {
                d0 = Some(to_x0(&o, &xm)?);
            }
            if !tangents.is_empty() {
                out.push(to_x0(&j, &vm)?);
            }
        }
        Ok((d0.expect("at least one product"), out))
    }
}

impl OdeNll {
    /// Tolerances 1e-5, one Rademacher probe, central differences, the grid's sigma range, no
    /// dequantisation, at most 10 000 evaluations.
    pub fn new() -> Self {
        OdeNll::default()
    }

    /// Relative and absolute tolerances of the adaptive solver (k-diffusion uses 1e-4).
    pub fn tolerances(mut self, rtol: f64, atol: f64) -> Self {
        self.rtol = rtol;
        self.atol = atol;
        self
    }

    setters! {
        /// The trace estimator.
        trace: Trace,
        /// The finite difference (for [`bits_per_dim`](Self::bits_per_dim)).
        difference: Difference,
        /// The most right-hand-side evaluations before giving up.
        max_evaluations: usize,
    }

    /// The relative finite-difference step (see the type's docs).
    pub fn step(mut self, step: f64) -> Self {
        self.step = Some(step);
        self
    }

    /// Integrate from `sigma_min` (k-diffusion sigma; default: the grid's last noisy level).
    pub fn sigma_min(mut self, sigma_min: f64) -> Self {
        self.sigma_min = Some(sigma_min);
        self
    }

    /// Integrate up to `sigma_max` (default: the grid's first level).
    pub fn sigma_max(mut self, sigma_max: f64) -> Self {
        self.sigma_max = Some(sigma_max);
        self
    }

    /// Treat the data as `levels` discrete values in `[-1, 1]` (256 for 8 bits) and dequantise
    /// uniformly within each value's bin.
    pub fn dequantize(mut self, levels: u32) -> Self {
        self.dequantize = Some(levels);
        self
    }

    /// The NLL of `x0` (batch on axis 0) under the model, with finite-difference products.
    /// `noise` draws the probe vectors (step key = probe index) and the dequantisation.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for tolerances or a step that are not finite and positive,
    /// zero probes, a sigma range that is not `0 < sigma_min < sigma_max < inf` (a
    /// zero-terminal-SNR grid needs an explicit `sigma_max`), fewer than 2 dequantisation
    /// levels, or too many evaluations; [`Error::Shape`] / [`Error::InvalidValue`] for data
    /// without a data axis, non-finite or (dequantised) outside `[-1, 1]`; the model's errors
    /// with the evaluation count as the step.
    pub fn bits_per_dim<F, D, M, N>(
        &self,
        model: &mut M,
        grid: &Grid,
        x0: ArrayView<'_, F, D>,
        noise: &mut N,
    ) -> Result<NllReport>
    where
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
    {
        let default_step = match self.difference {
            Difference::Central => F::epsilon().as_f64().cbrt(),
            Difference::Forward => F::epsilon().as_f64().sqrt(),
        };
        let step = self.step.unwrap_or(default_step);
        if !(step.is_finite() && step > 0.0) {
            return Err(Error::InvalidParameter {
                name: "step",
                value: step,
                reason: "the finite-difference step must be finite and positive",
            });
        }
        let mut products = FiniteDifferences {
            model,
            difference: self.difference,
            step,
        };
        self.run::<F, D, _, N>(&mut products, grid, x0, noise)
    }

    /// [`bits_per_dim`](Self::bits_per_dim) with the model's exact Jacobian-vector products
    /// (one call per product, which also gives the output).
    ///
    /// ```
    /// use diffusion_samplers::analytic::GaussianMixture;
    /// use diffusion_samplers::likelihood::{OdeNll, Probe, Trace};
    /// use diffusion_samplers::prelude::*;
    /// use ndarray::Array2;
    /// use rand::SeedableRng;
    /// let gm = GaussianMixture::new(vec![0.5, 0.5], vec![vec![-1.0, 0.0], vec![1.0, 0.0]],
    ///                               vec![vec![0.1, 0.2]; 2])?;
    /// let x0: Array2<f64> = gm.sample(32, &mut rand::rngs::StdRng::seed_from_u64(0));
    /// let grid = Grid::ve(&[500.0, 1e-3])?;
    /// let r = OdeNll::new().trace(Trace::Hutchinson { probe: Probe::Rademacher, probes: 4 })
    ///     .bits_per_dim_jvp(&mut gm.clone(), &grid, x0.view(), &mut SeededNoise::new(1))?;
    /// let exact = gm.log_density(x0.view(), &NoiseLevel::new(0.0, 1.0, 1e-3))?;
    /// // Each sample within 4 of its probe standard errors (plus the solver's 2e-3).
    /// for ((b, se), lp) in r.bits_per_dim.iter().zip(&r.probe_std_error).zip(exact) {
    ///     assert!((b + lp / (2.0 * std::f64::consts::LN_2)).abs() < 4.0 * se + 2e-3);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`bits_per_dim`](Self::bits_per_dim).
    pub fn bits_per_dim_jvp<F, D, M, N>(
        &self,
        model: &mut M,
        grid: &Grid,
        x0: ArrayView<'_, F, D>,
        noise: &mut N,
    ) -> Result<NllReport>
    where
        F: Float,
        D: Dimension,
        M: DenoiserJvp<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
    {
        self.run::<F, D, _, N>(&mut Exact { model }, grid, x0, noise)
    }

    fn validate(&self, grid: &Grid) -> Result<(f64, f64)> {
        let bad = |name, value, reason| Err(Error::InvalidParameter { name, value, reason });
        for (name, v) in [("rtol", self.rtol), ("atol", self.atol)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(name, v, "a tolerance must be finite and positive");
            }
        }
        if let Trace::Hutchinson { probes: 0, .. } = self.trace {
            return bad("probes", 0.0, "Hutchinson's estimator needs at least one probe");
        }
        if let Some(l) = self.dequantize
            && l < 2
        {
            return bad(
                "dequantize",
                f64::from(l),
                "dequantisation needs at least 2 data values",
            );
        }
        let lo = self.sigma_min.unwrap_or_else(|| grid.last_noisy().sigma_ve());
        let hi = self.sigma_max.unwrap_or_else(|| grid.levels()[0].sigma_ve());
        if !(lo.is_finite() && lo > 0.0) {
            return bad("sigma_min", lo, "must be finite and positive");
        }
        if !(hi.is_finite() && hi > lo) {
            return bad(
                "sigma_max",
                hi,
                "must be finite and above sigma_min (a grid that starts at pure noise - zero terminal SNR, flow sigma 1 - needs an explicit sigma_max, e.g. 1e3)",
            );
        }
        Ok((lo, hi))
    }

    fn run<F, D, P, N>(
        &self,
        products: &mut P,
        grid: &Grid,
        x0: ArrayView<'_, F, D>,
        noise: &mut N,
    ) -> Result<NllReport>
    where
        F: Float,
        D: Dimension,
        P: Products<F, D>,
        N: NoiseSource<F> + ?Sized,
    {
        let (batch, dims) = batch_and_dims(&x0)?;
        check_finite(&x0)?;
        let (sigma_min, sigma_max) = self.validate(grid)?;
        let mut x = x0.mapv(|v| v.as_f64());
        // Dequantisation: x + (u - 1/2) width, u uniform from the noise's normals.
        let mut log_offset = 0.0;
        if let Some(levels) = self.dequantize {
            if let Some(i) = x.iter().position(|v| v.abs() > 1.0 + 1e-6) {
                return Err(Error::InvalidValue {
                    what: "data",
                    index: i,
                    value: x.iter().nth(i).copied().unwrap_or(f64::NAN),
                    reason: "dequantised data must lie in [-1, 1]",
                });
            }
            let width = 2.0 / f64::from(levels - 1);
            let mut z = Array::<F, D>::zeros(x.raw_dim());
            noise.fill(usize::MAX - 1, z.view_mut());
            Zip::from(&mut x)
                .and(&z)
                .for_each(|x, &z| *x += (norm_cdf(z.as_f64()) - 0.5) * width);
            log_offset = -(dims as f64) * width.ln();
        }
        // Probe vectors.
        let tangents: Vec<Array<f64, D>> = match self.trace {
            Trace::Hutchinson { probe, probes } => (0..probes)
                .map(|k| {
                    let mut z = Array::<F, D>::zeros(x.raw_dim());
                    noise.fill(k, z.view_mut());
                    z.mapv(|v| match probe {
                        Probe::Gaussian => v.as_f64(),
                        Probe::Rademacher => {
                            if v.as_f64() < 0.0 {
                                -1.0
                            } else {
                                1.0
                            }
                        }
                    })
                })
                .collect(),
            Trace::Exact => (0..dims)
                .map(|j| {
                    let mut e = Array::<f64, D>::zeros(x.raw_dim());
                    for mut row in e.view_mut().into_dyn().axis_iter_mut(Axis(0)) {
                        if let Some(v) = row.iter_mut().nth(j) {
                            *v = 1.0;
                        }
                    }
                    e
                })
                .collect(),
        };
        let estimates = match self.trace {
            Trace::Hutchinson { probes, .. } => probes,
            Trace::Exact => 1,
        };
        let n_x = x.len();
        let shape = x.raw_dim();
        let mut call = Call::new(0, 0, 0, grid.levels()[0]);

        // The right-hand side in s = ln sigma: y = (x, A_1..A_K per sample).
        let mut evaluations = 0usize;
        let mut rhs = |s: f64, y: &[f64], call: &mut Call, evaluations: &mut usize| -> Result<Vec<f64>> {
            if *evaluations >= self.max_evaluations {
                return Err(Error::InvalidParameter {
                    name: "max_evaluations",
                    value: self.max_evaluations as f64,
                    reason: "the adaptive solver needed more evaluations (loosen the tolerances or raise the limit)",
                });
            }
            let sigma = s.exp();
            let level = grid.level_at_sigma_ve(sigma)?;
            call.level = level;
            call.step = *evaluations;
            *evaluations += 1;
            let xv = Array::from_shape_vec(shape.clone(), y[..n_x].to_vec()).map_err(|_| Error::Shape {
                what: "ODE state",
                expected: shape.slice().to_vec(),
                got: vec![n_x],
            })?;
            let (d0, jv) = products.eval(&xv, &level, &tangents, call)?;
            let mut dy = Vec::with_capacity(y.len());
            dy.extend(
                Zip::from(&xv)
                    .and(&d0)
                    .map_collect(|&x, &d| x - d)
                    .iter()
                    .copied(),
            );
            // Divergence of the drift per sample and estimate: d - tr(dD/dx).
            let mut div = vec![0.0; batch * estimates];
            match self.trace {
                Trace::Hutchinson { .. } => {
                    for (k, (v, j)) in tangents.iter().zip(&jv).enumerate() {
                        let prod = v * j;
                        for (b, row) in prod.view().into_dyn().axis_iter(Axis(0)).enumerate() {
                            div[b * estimates + k] = dims as f64 - row.sum();
                        }
                    }
                }
                Trace::Exact => {
                    let mut tr = vec![0.0; batch];
                    for (v, j) in tangents.iter().zip(&jv) {
                        let prod = v * j;
                        for (b, row) in prod.view().into_dyn().axis_iter(Axis(0)).enumerate() {
                            tr[b] += row.sum();
                        }
                    }
                    for (b, t) in tr.iter().enumerate() {
                        div[b] = dims as f64 - t;
                    }
                }
            }
            dy.extend(div);
            if dy.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    step: call.step,
                    level,
                    what: "probability-flow drift or divergence",
                });
            }
            Ok(dy)
        };

        let (s0, s1) = (sigma_min.ln(), sigma_max.ln());
        let mut y: Vec<f64> = x
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0.0, batch * estimates))
            .collect();
        let mut s = s0;
        let mut h = (s1 - s0) / 16.0;
        let mut k1 = rhs(s, &y, &mut call, &mut evaluations)?;
        let (mut steps, mut rejected) = (0usize, 0usize);
        let mut done = false;
        while !done {
            let last = s + h >= s1;
            let hs = if last { s1 - s } else { h };
            if hs.is_nan() || hs <= 4.0 * f64::EPSILON * s.abs().max(1.0) {
                return Err(Error::NonFinite {
                    step: evaluations,
                    level: grid.level_at_sigma_ve(s.exp())?,
                    what: "ODE step size (it collapsed: the model is too rough for the tolerances, or returned NaN)",
                });
            }
            let (y5, err, k7) = dopri_step(&mut rhs, s, &y, &k1, hs, &mut call, &mut evaluations)?;
            let norm = (y
                .iter()
                .zip(&y5)
                .zip(&err)
                .map(|((&a, &b), &e)| {
                    let sc = self.atol + self.rtol * a.abs().max(b.abs());
                    (e / sc) * (e / sc)
                })
                .sum::<f64>()
                / y.len() as f64)
                .sqrt();
            if !norm.is_finite() {
                return Err(Error::NonFinite {
                    step: evaluations,
                    level: grid.level_at_sigma_ve(s.exp())?,
                    what: "ODE error estimate",
                });
            }
            if norm <= 1.0 {
                s = if last { s1 } else { s + hs };
                y = y5;
                k1 = k7;
                steps += 1;
                done = last;
            } else {
                rejected += 1;
            }
            let factor = if norm == 0.0 {
                10.0
            } else {
                (0.9 * norm.powf(-0.2)).clamp(0.2, 10.0)
            };
            h = hs * factor;
        }

        // Prior at sigma_max in k-diffusion coordinates.
        // VE: k-diffusion's N(0, sigma_max^2). VP and flow: unit-variance data at sigma_max,
        // N(0, 1 + sigma_max^2) (for VP exactly N(0, 1) in the model's coordinates; for flow the
        // same limit at flow sigma 1, without the (1 + sigma)^2 of N(0, 1) in flow coordinates,
        // which is first-order wrong in 1 / sigma_max per sample).
        let prior_var = match grid.family() {
            ScheduleFamily::Ve => sigma_max * sigma_max,
            ScheduleFamily::Vp | ScheduleFamily::Flow => 1.0 + sigma_max * sigma_max,
        };
        let xt = Array::from_shape_vec(shape.clone(), y[..n_x].to_vec()).map_err(|_| Error::Shape {
            what: "ODE state",
            expected: shape.slice().to_vec(),
            got: vec![n_x],
        })?;
        let to_bits = 1.0 / (dims as f64 * LN_2);
        let mut bits = Vec::with_capacity(batch);
        let mut errs = Vec::with_capacity(batch);
        for (b, row) in xt.view().into_dyn().axis_iter(Axis(0)).enumerate() {
            let sq: f64 = row.iter().map(|v| v * v).sum();
            let log_prior = -0.5 * (sq / prior_var + dims as f64 * (2.0 * PI * prior_var).ln());
            let per: Vec<f64> = (0..estimates)
                .map(|k| (-(log_prior + y[n_x + b * estimates + k]) + log_offset) * to_bits)
                .collect();
            let (m, e) = mean_and_error(&per);
            bits.push(m);
            errs.push(match self.trace {
                Trace::Exact => 0.0,
                Trace::Hutchinson { .. } => e,
            });
        }
        Ok(NllReport {
            bits_per_dim: bits,
            probe_std_error: errs,
            evaluations,
            calls: call.index,
            steps,
            rejected,
        })
    }
}

/// One Dormand–Prince 5(4) step (FSAL): the 5th-order solution, the error estimate and the
/// derivative at the new point.
#[allow(clippy::type_complexity, reason = "a local helper's tuple")]
fn dopri_step<R>(
    rhs: &mut R,
    s: f64,
    y: &[f64],
    k1: &[f64],
    h: f64,
    call: &mut Call,
    evaluations: &mut usize,
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)>
where
    R: FnMut(f64, &[f64], &mut Call, &mut usize) -> Result<Vec<f64>>,
{
    const C: [f64; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
    const A: [&[f64]; 6] = [
        &[1.0 / 5.0],
        &[3.0 / 40.0, 9.0 / 40.0],
        &[44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0],
        &[
            19372.0 / 6561.0,
            -25360.0 / 2187.0,
            64448.0 / 6561.0,
            -212.0 / 729.0,
        ],
        &[
            9017.0 / 3168.0,
            -355.0 / 33.0,
            46732.0 / 5247.0,
            49.0 / 176.0,
            -5103.0 / 18656.0,
        ],
        &[
            35.0 / 384.0,
            0.0,
            500.0 / 1113.0,
            125.0 / 192.0,
            -2187.0 / 6784.0,
            11.0 / 84.0,
        ],
    ];
    // 5th minus 4th order weights.
    const E: [f64; 7] = [
        35.0 / 384.0 - 5179.0 / 57600.0,
        0.0,
        500.0 / 1113.0 - 7571.0 / 16695.0,
        125.0 / 192.0 - 393.0 / 640.0,
        -2187.0 / 6784.0 + 92097.0 / 339200.0,
        11.0 / 84.0 - 187.0 / 2100.0,
        -1.0 / 40.0,
    ];
    let mut ks: Vec<Vec<f64>> = vec![k1.to_vec()];
    let mut y_stage = vec![0.0; y.len()];
    for (&c, a) in C.iter().zip(A.iter()) {
        for (i, ys) in y_stage.iter_mut().enumerate() {
            *ys = y[i] + h * a.iter().zip(&ks).map(|(a, k)| a * k[i]).sum::<f64>();
        }
        let k = rhs(s + c * h, &y_stage, call, evaluations)?;
        ks.push(k);
    }
    // The last stage was evaluated at the 5th-order solution (FSAL).
    let y5 = y_stage;
    let err: Vec<f64> = (0..y.len())
        .map(|i| h * E.iter().zip(&ks).map(|(e, k)| e * k[i]).sum::<f64>())
        .collect();
    let k7 = ks.pop().expect("seven stages");
    Ok((y5, err, k7))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The discretised decoder's bins against closed-form normal CDF differences: interior,
    /// both edge bins (extended to infinity), the upper-tail branch, and 2 levels.
    #[test]
    fn discretised_decoder_bins() {
        let v = Vlb::new().decoder(Decoder::Discretized { levels: 256 });
        let h = 1.0 / 255.0;
        let (m, var) = (0.1f64, 0.04f64);
        let sd = var.sqrt();
        let interior = norm_cdf((0.2 + h - m) / sd) - norm_cdf((0.2 - h - m) / sd);
        assert!((v.decoder_nll(0.2, m, var) + interior.ln()).abs() < 1e-12);
        let lower = norm_cdf((-1.0 + h - m) / sd);
        assert!((v.decoder_nll(-1.0, m, var) + lower.ln()).abs() < 1e-12);
        let upper = 1.0 - norm_cdf((1.0 - h - m) / sd);
        assert!((v.decoder_nll(1.0, m, var) / -upper.ln() - 1.0).abs() < 1e-10);
        // Far in the upper tail of an interior bin: no cancellation to 0.
        let far = v.decoder_nll(0.9, -0.9, 0.01);
        assert!(far.is_finite() && far > 100.0, "{far}");
        // Two levels: -1 and 1, each bin half the line.
        let two = Vlb::new().decoder(Decoder::Discretized { levels: 2 });
        assert!((two.decoder_nll(1.0, 0.0, 1.0) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((two.decoder_nll(-1.0, 0.0, 1.0) - std::f64::consts::LN_2).abs() < 1e-12);
        // The Gaussian decoder is the normal density.
        let g = Vlb::new().decoder(Decoder::Gaussian);
        assert!((g.decoder_nll(0.3, 0.1, 0.04) - (0.5 * (2.0 * PI * 0.04).ln() + 0.5)).abs() < 1e-12);
    }
}
