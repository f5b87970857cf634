//! The forward (noising) process and the training side: `q(x_t | x_0)`, `q(x_t | x_{t-1})`, the
//! posterior `q(x_{t-1} | x_t, x_0)`, training targets and loss weights for discrete schedules
//! ([`ForwardProcess`]) and for continuous-time VP / VE, EDM and rectified-flow training
//! ([`Training`], [`Process`]), and the timestep / sigma densities they draw from ([`Density`]).
//!
//! The level-to-level formulas ([`transition`], [`posterior`]) are written for any two
//! [`NoiseLevel`]s, so they hold for strided grids and non-VP schedules alike; the DDPM sampler
//! uses the same [`posterior`]. EDM-preconditioned training (a raw network `F` and its target)
//! is [`EdmPrecond::training_batch`](crate::precond::EdmPrecond::training_batch).

mod density;
mod training;

pub use density::{Density, Draw};
pub use training::{Process, Training, TrainingBatch};

use ndarray::{Array, ArrayView, Axis, Dimension, Zip};
use rand::Rng;

use crate::denoiser::Prediction;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::schedule::{NoiseLevel, NoiseSchedule};

/// `q(x_t | x_s) = N(scale x_s, variance I)` from a less noisy level `s` to a noisier level `t`:
/// `scale = alpha_t / alpha_s`, `variance = sigma_t^2 - scale^2 sigma_s^2`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// Multiplies `x_s`.
    pub scale: f64,
    /// Variance of the added noise.
    pub variance: f64,
}

/// The Gaussian `q(x_t | x_s)` between two levels (`s` less noisy than `t`).
///
/// ```
/// use diffusion_samplers::{forward::transition, NoiseSchedule};
/// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
/// // One DDPM forward step: scale sqrt(1 - beta_t), variance beta_t.
/// let tr = transition(&s.level_at(99)?, &s.level_at(100)?);
/// assert!((tr.scale - (1.0 - s.betas()[100]).sqrt()).abs() < 1e-12);
/// assert!((tr.variance - s.betas()[100]).abs() < 1e-12);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
pub fn transition(s: &NoiseLevel, t: &NoiseLevel) -> Transition {
    let scale = t.alpha / s.alpha;
    Transition {
        scale,
        variance: (t.sigma * t.sigma - scale * scale * s.sigma * s.sigma).max(0.0),
    }
}

/// `q(x_s | x_t, x_0) = N(x0 * c_x0 + x_t * c_xt, variance I)`, the posterior of a less noisy
/// level `s` given the noisier `x_t` and the clean sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Posterior {
    /// Coefficient of `x_0` in the mean.
    pub x0: f64,
    /// Coefficient of `x_t` in the mean.
    pub xt: f64,
    /// Posterior variance.
    pub variance: f64,
}

/// The posterior `q(x_s | x_t, x_0)` from level `t` to the less noisy level `s` (Ho et al. 2020,
/// eqs. 6–7, for any two levels): with `a = alpha_t / alpha_s` and `v = sigma_t^2 - a^2
/// sigma_s^2`, mean `= alpha_s v / sigma_t^2 x_0 + a sigma_s^2 / sigma_t^2 x_t`, variance
/// `= v sigma_s^2 / sigma_t^2`. Valid at a terminal `t` (`alpha_t = 0`) and a clean `s`.
///
/// ```
/// use diffusion_samplers::{forward::posterior, NoiseSchedule};
/// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
/// let p = posterior(&s.level_at(500)?, &s.level_at(499)?);
/// assert!((p.variance - s.posterior_variance(500)?).abs() < 1e-15);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
pub fn posterior(t: &NoiseLevel, s: &NoiseLevel) -> Posterior {
    let a = if t.alpha == 0.0 { 0.0 } else { t.alpha / s.alpha };
    let (st2, ss2) = (t.sigma * t.sigma, s.sigma * s.sigma);
    let v = (st2 - a * a * ss2).max(0.0);
    Posterior {
        x0: s.alpha * v / st2,
        xt: a * ss2 / st2,
        variance: v * ss2 / st2,
    }
}

/// How training losses are weighted per level. Weights multiply the mean squared error in
/// the prediction's own space (epsilon, x0, v or flow).
///
/// The SNR family (`MinSnr`, `SoftMinSnr`, `Snr`, `Edm`) is defined by its weight on the x0
/// error, `w0(SNR)`, and converted to the prediction's space: a target `c_x0 x0 + c_eps eps`
/// has error `(c_x0 - c_eps alpha / sigma)^2` times the x0 error, so the weight returned is
/// `w0 / (c_x0 - c_eps alpha / sigma)^2` (`w0 / SNR` for epsilon, `w0 / (SNR + 1)` for v on a
/// VP level, `w0 sigma^2` for the flow velocity). SD3's `SigmaSqrt` and `Cosmap` are the
/// factors diffusers' training scripts multiply the loss with, whatever the target.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
#[non_exhaustive]
pub enum LossWeighting {
    /// Weight 1 in the prediction's own space (DDPM's `L_simple` for epsilon prediction).
    #[default]
    Uniform,
    /// Min-SNR-gamma (Hang et al. 2023): the effective x0-space weight is `min(SNR, gamma)`;
    /// in epsilon space that is `min(SNR, gamma) / SNR`, in v space `min(SNR, gamma) / (SNR +
    /// 1)`. The paper's default is `gamma = 5` ([`LossWeighting::min_snr`]).
    MinSnr {
        /// The clamp `gamma`.
        gamma: f64,
    },
    /// Soft-min-SNR (Crowson et al. 2024, hourglass diffusion): the x0-space weight is
    /// `1 / (1/SNR + 1/gamma)`, a smooth `min(SNR, gamma)`. With `gamma = 1 / sigma_data^2`
    /// it is k-diffusion's `"soft-min-snr"` weighting of an EDM-preconditioned network.
    SoftMinSnr {
        /// The soft clamp `gamma`.
        gamma: f64,
    },
    /// The effective x0-space weight is `SNR` (the weighting epsilon-prediction training
    /// implies): 1 in epsilon space, `SNR` in x0 space, `SNR / (SNR + 1)` in v space
    /// (k-diffusion's `"snr"` weighting).
    Snr,
    /// EDM's `lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = SNR + 1 /
    /// sigma_data^2` in x0 space (Karras et al. 2022, k-diffusion's `"karras"`): weight 1 on an
    /// EDM-preconditioned network's own output.
    Edm {
        /// The data standard deviation.
        sigma_data: f64,
    },
    /// SD3's `sigma_sqrt`: `sigma^-2` (diffusers' `compute_loss_weighting_for_sd3`), applied as
    /// is to the loss in the prediction's space.
    SigmaSqrt,
    /// SD3's `cosmap`: `2 / (pi (1 - 2 sigma + 2 sigma^2))` (diffusers'
    /// `compute_loss_weighting_for_sd3`), applied as is.
    Cosmap,
}

impl LossWeighting {
    /// Min-SNR with the paper's `gamma = 5`.
    pub fn min_snr() -> Self {
        LossWeighting::MinSnr { gamma: 5.0 }
    }

    /// The weight at `level` for a model predicting `prediction`.
    ///
    /// ```
    /// use diffusion_samplers::{forward::LossWeighting, NoiseLevel, Prediction};
    /// let l = NoiseLevel::from_alpha_bar(0.0, 0.9); // SNR = 9
    /// let w = LossWeighting::min_snr().weight(Prediction::Epsilon, &l)?;
    /// assert!((w - 5.0 / 9.0).abs() < 1e-12);
    /// assert!(LossWeighting::MinSnr { gamma: -1.0 }.weight(Prediction::Epsilon, &l).is_err());
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a `gamma` that is not positive (NaN included; `+inf`
    /// is allowed and means [`Snr`](Self::Snr)) or a `sigma_data` that is not finite and
    /// positive; [`Error::InvalidValue`] where the weight is infinite (an SNR weighting at a
    /// clean level).
    pub fn weight(self, prediction: Prediction, level: &NoiseLevel) -> Result<f64> {
        self.validate()?;
        let w = self.weight_of(prediction, level);
        if w.is_finite() {
            Ok(w)
        } else {
            Err(Error::InvalidValue {
                what: "level sigma",
                index: 0,
                value: level.sigma,
                reason: "the weighting is not finite at this level (an SNR weighting at a clean level)",
            })
        }
    }

    /// Checks the weighting's parameters.
    ///
    /// # Errors
    /// As [`weight`](Self::weight).
    pub fn validate(self) -> Result<()> {
        match self {
            LossWeighting::MinSnr { gamma } | LossWeighting::SoftMinSnr { gamma }
                if gamma.is_nan() || gamma <= 0.0 =>
            {
                Err(Error::InvalidParameter {
                    name: "gamma",
                    value: gamma,
                    reason: "min-SNR's clamp must be positive",
                })
            }
            LossWeighting::Edm { sigma_data } if !(sigma_data.is_finite() && sigma_data > 0.0) => {
                Err(Error::InvalidParameter {
                    name: "sigma_data",
                    value: sigma_data,
                    reason: "must be finite and positive",
                })
            }
            _ => Ok(()),
        }
    }

    /// The weight on the x0 error (`None` for the weightings applied as is).
    pub(crate) fn x0_weight(self, level: &NoiseLevel) -> Option<f64> {
        let snr = level.snr();
        match self {
            LossWeighting::Uniform | LossWeighting::SigmaSqrt | LossWeighting::Cosmap => None,
            LossWeighting::MinSnr { gamma } => Some(snr.min(gamma)),
            // 1 / (1/SNR + 1/gamma): SNR for gamma = inf, gamma for SNR = inf.
            LossWeighting::SoftMinSnr { gamma } => Some(1.0 / (1.0 / snr + 1.0 / gamma)),
            LossWeighting::Snr => Some(snr),
            LossWeighting::Edm { sigma_data } => Some(snr + 1.0 / (sigma_data * sigma_data)),
        }
    }

    pub(crate) fn weight_of(self, prediction: Prediction, level: &NoiseLevel) -> f64 {
        let x0_weight = match self {
            LossWeighting::Uniform => return 1.0,
            LossWeighting::SigmaSqrt => return 1.0 / (level.sigma * level.sigma),
            LossWeighting::Cosmap => {
                let s = level.sigma;
                return 2.0 / (std::f64::consts::PI * (1.0 - 2.0 * s + 2.0 * s * s));
            }
            _ => self.x0_weight(level).unwrap_or(1.0),
        };
        let snr = level.snr();
        // x0-space weight w0 -> weight in the prediction's space. For a target c_x0 x0 + c_eps eps
        // the error is |target error|^2 = x0 error^2 * (c_x0 - c_eps alpha / sigma)^2.
        let (cx, ce) = prediction.target_coefficients(level);
        let factor = if ce == 0.0 {
            cx
        } else {
            cx - ce * level.alpha / level.sigma
        };
        let factor2 = factor * factor;
        if factor2 == 0.0 || !factor2.is_finite() {
            // Limits: epsilon at alpha = 0 (SNR = 0) has weight min(SNR, g)/SNR -> 1.
            return if x0_weight == 0.0 || snr == 0.0 { 1.0 } else { 0.0 };
        }
        x0_weight / factor2
    }
}

/// One training batch drawn by [`ForwardProcess::training_example`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingExample<F, D: Dimension> {
    /// The timestep of each batch element.
    pub timesteps: Vec<usize>,
    /// The noise `eps` that was added.
    pub noise: Array<F, D>,
    /// The model input `alpha_t x0 + sigma_t eps`.
    pub noisy: Array<F, D>,
    /// What the model should output.
    pub target: Array<F, D>,
    /// Loss weight of each batch element.
    pub weights: Vec<f64>,
}

/// The forward process of a [`NoiseSchedule`], for training and for noising inputs (img2img).
///
/// Batched arrays carry the batch on axis 0, with one timestep per batch element.
///
/// ```
/// use diffusion_samplers::{ForwardProcess, NoiseSchedule, Prediction, forward::LossWeighting};
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let fp = ForwardProcess::new(NoiseSchedule::linear(1000, 1e-4, 0.02)?);
/// let x0 = Array2::<f32>::ones((8, 2));
/// let ex = fp.training_example(x0.view(), Prediction::Epsilon, LossWeighting::min_snr(),
///                              &mut StdRng::seed_from_u64(0))?;
/// assert_eq!(ex.timesteps.len(), 8);
/// assert_eq!(ex.target, ex.noise); // epsilon prediction: the target is the noise
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ForwardProcess {
    schedule: NoiseSchedule,
}

impl ForwardProcess {
    /// The forward process of `schedule`.
    pub fn new(schedule: NoiseSchedule) -> Self {
        ForwardProcess { schedule }
    }

    /// The schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    fn levels(&self, batch: usize, timesteps: &[usize]) -> Result<Vec<NoiseLevel>> {
        if timesteps.len() != batch {
            return Err(Error::Shape {
                what: "timesteps (one per batch element on axis 0)",
                expected: vec![batch],
                got: vec![timesteps.len()],
            });
        }
        timesteps
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t < self.schedule.len() {
                    Ok(self.schedule.level_of(t))
                } else {
                    Err(Error::InvalidValue {
                        what: "timesteps",
                        index: i,
                        value: t as f64,
                        reason: "outside the training timesteps [0, T - 1]",
                    })
                }
            })
            .collect()
    }

    /// `x_t = alpha_t x0 + sigma_t eps` for each batch element (diffusers' `add_noise`).
    ///
    /// # Errors
    /// [`Error::Shape`] if `noise` differs from `x0` in shape, `x0` has no batch axis, or the
    /// number of timesteps differs from the batch size; [`Error::InvalidValue`] for a timestep
    /// `>= T`.
    pub fn add_noise<F: Float, D: Dimension>(
        &self,
        x0: ArrayView<'_, F, D>,
        noise: ArrayView<'_, F, D>,
        timesteps: &[usize],
    ) -> Result<Array<F, D>> {
        same_shape("noise vs x0", &x0, &noise)?;
        let levels = self.levels(batch_size(&x0)?, timesteps)?;
        let coefs: Vec<(f64, f64)> = levels.iter().map(|l| (l.alpha, l.sigma)).collect();
        Ok(per_sample_combine(x0, noise, &coefs))
    }

    /// Draws `x_t ~ q(x_t | x_0)` for each batch element; returns `(x_t, eps)`.
    ///
    /// # Errors
    /// As [`add_noise`](Self::add_noise).
    pub fn sample_q<F: Float, D: Dimension, R: Rng + ?Sized>(
        &self,
        x0: ArrayView<'_, F, D>,
        timesteps: &[usize],
        rng: &mut R,
    ) -> Result<(Array<F, D>, Array<F, D>)> {
        let mut eps = Array::zeros(x0.raw_dim());
        NoiseSource::fill(rng, 0, eps.view_mut());
        let xt = self.add_noise(x0, eps.view(), timesteps)?;
        Ok((xt, eps))
    }

    /// One forward step `x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)` for each
    /// batch element (`x_{-1}` is the clean sample).
    ///
    /// # Errors
    /// As [`add_noise`](Self::add_noise).
    pub fn step<F: Float, D: Dimension, R: Rng + ?Sized>(
        &self,
        x_prev: ArrayView<'_, F, D>,
        timesteps: &[usize],
        rng: &mut R,
    ) -> Result<Array<F, D>> {
        let levels = self.levels(batch_size(&x_prev)?, timesteps)?;
        let coefs: Vec<(f64, f64)> = timesteps
            .iter()
            .zip(&levels)
            .map(|(&t, l)| {
                let prev = if t == 0 {
                    NoiseLevel::CLEAN
                } else {
                    self.schedule.level_of(t - 1)
                };
                let tr = transition(&prev, l);
                (tr.scale, tr.variance.sqrt())
            })
            .collect();
        let mut eps = Array::zeros(x_prev.raw_dim());
        NoiseSource::fill(rng, 0, eps.view_mut());
        Ok(per_sample_combine(x_prev, eps.view(), &coefs))
    }

    /// Mean and variance of the posterior `q(x_{t-1} | x_t, x_0)` for each batch element.
    ///
    /// # Errors
    /// As [`add_noise`](Self::add_noise).
    pub fn posterior<F: Float, D: Dimension>(
        &self,
        x0: ArrayView<'_, F, D>,
        xt: ArrayView<'_, F, D>,
        timesteps: &[usize],
    ) -> Result<(Array<F, D>, Vec<f64>)> {
        same_shape("x_t vs x0", &x0, &xt)?;
        let levels = self.levels(batch_size(&x0)?, timesteps)?;
        let post: Vec<Posterior> = timesteps
            .iter()
            .zip(&levels)
            .map(|(&t, l)| {
                let prev = if t == 0 {
                    NoiseLevel::CLEAN
                } else {
                    self.schedule.level_of(t - 1)
                };
                posterior(l, &prev)
            })
            .collect();
        let coefs: Vec<(f64, f64)> = post.iter().map(|p| (p.x0, p.xt)).collect();
        Ok((
            per_sample_combine(x0, xt, &coefs),
            post.iter().map(|p| p.variance).collect(),
        ))
    }

    /// The training target of `prediction` for each batch element: `eps`, `x0`, `v = alpha eps
    /// - sigma x0` or the flow velocity `eps - x0`.
    ///
    /// # Errors
    /// As [`add_noise`](Self::add_noise).
    pub fn target<F: Float, D: Dimension>(
        &self,
        prediction: Prediction,
        x0: ArrayView<'_, F, D>,
        noise: ArrayView<'_, F, D>,
        timesteps: &[usize],
    ) -> Result<Array<F, D>> {
        same_shape("noise vs x0", &x0, &noise)?;
        let levels = self.levels(batch_size(&x0)?, timesteps)?;
        let coefs: Vec<(f64, f64)> = levels.iter().map(|l| prediction.target_coefficients(l)).collect();
        Ok(per_sample_combine(x0, noise, &coefs))
    }

    /// The loss weight of timestep `t` (see [`LossWeighting`]).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t >= T` or the weighting's parameter is out of range.
    pub fn loss_weight(&self, weighting: LossWeighting, prediction: Prediction, t: usize) -> Result<f64> {
        weighting.weight(prediction, &self.schedule.level_at(t)?)
    }

    /// Draws a whole training batch: uniform timesteps in `[0, T)`, Gaussian noise, the noisy
    /// input, the target for `prediction` and the loss weights.
    ///
    /// # Errors
    /// [`Error::Shape`] if `x0` has no batch axis.
    pub fn training_example<F: Float, D: Dimension, R: Rng + ?Sized>(
        &self,
        x0: ArrayView<'_, F, D>,
        prediction: Prediction,
        weighting: LossWeighting,
        rng: &mut R,
    ) -> Result<TrainingExample<F, D>> {
        weighting.validate()?;
        let batch = batch_size(&x0)?;
        let t_train = self.schedule.len();
        let timesteps: Vec<usize> = (0..batch).map(|_| rng.random_range(0..t_train)).collect();
        let mut noise = Array::zeros(x0.raw_dim());
        NoiseSource::fill(rng, 0, noise.view_mut());
        let noisy = self.add_noise(x0.view(), noise.view(), &timesteps)?;
        let target = self.target(prediction, x0.view(), noise.view(), &timesteps)?;
        let weights = timesteps
            .iter()
            .map(|&t| weighting.weight_of(prediction, &self.schedule.level_of(t)))
            .collect();
        Ok(TrainingExample {
            timesteps,
            noise,
            noisy,
            target,
            weights,
        })
    }
}

pub(crate) fn batch_size<F, D: Dimension>(x: &ArrayView<'_, F, D>) -> Result<usize> {
    if x.ndim() == 0 {
        return Err(Error::Shape {
            what: "batched array (batch on axis 0)",
            expected: vec![1],
            got: vec![],
        });
    }
    Ok(x.shape()[0])
}

pub(crate) fn same_shape<F, D: Dimension>(
    what: &'static str,
    a: &ArrayView<'_, F, D>,
    b: &ArrayView<'_, F, D>,
) -> Result<()> {
    if a.shape() == b.shape() {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected: a.shape().to_vec(),
            got: b.shape().to_vec(),
        })
    }
}

/// `out[b] = ca[b] * a[b] + cb[b] * b[b]` per batch element (axis 0).
fn per_sample_combine<F: Float, D: Dimension>(
    a: ArrayView<'_, F, D>,
    b: ArrayView<'_, F, D>,
    coefs: &[(f64, f64)],
) -> Array<F, D> {
    let mut out = Array::zeros(a.raw_dim());
    {
        let (a, b) = (a.into_dyn(), b.into_dyn());
        let mut o = out.view_mut().into_dyn();
        for (i, mut o) in o.axis_iter_mut(Axis(0)).enumerate() {
            let (ca, cb) = (F::cast(coefs[i].0), F::cast(coefs[i].1));
            Zip::from(&mut o)
                .and(a.index_axis(Axis(0), i))
                .and(b.index_axis(Axis(0), i))
                .for_each(|o, &a, &b| *o = ca * a + cb * b);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::{Array2, array};
    use rand::{SeedableRng, rngs::StdRng};

    fn fp() -> ForwardProcess {
        ForwardProcess::new(NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap())
    }

    #[test]
    fn add_noise_uses_each_elements_timestep() {
        let f = fp();
        let x0 = array![[1.0f64, 2.0], [3.0, 4.0]];
        let eps = array![[0.5, 0.5], [-1.0, 1.0]];
        let xt = f.add_noise(x0.view(), eps.view(), &[0, 999]).unwrap();
        let (l0, l1) = (f.schedule().level_of(0), f.schedule().level_of(999));
        assert_relative_eq!(xt[[0, 1]], 2.0 * l0.alpha + 0.5 * l0.sigma, max_relative = 1e-14);
        assert_relative_eq!(xt[[1, 0]], 3.0 * l1.alpha - l1.sigma, max_relative = 1e-14);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let f = fp();
        let x0 = Array2::<f32>::zeros((2, 3));
        let e = Array2::<f32>::zeros((2, 4));
        assert!(matches!(
            f.add_noise(x0.view(), e.view(), &[0, 1]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            f.add_noise(x0.view(), x0.view(), &[0]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            f.add_noise(x0.view(), x0.view(), &[0, 1000]),
            Err(Error::InvalidValue { index: 1, .. })
        ));
        let scalar = ndarray::arr0(1.0f32);
        assert!(
            f.training_example(
                scalar.view(),
                Prediction::Epsilon,
                LossWeighting::Uniform,
                &mut StdRng::seed_from_u64(0)
            )
            .is_err()
        );
    }

    #[test]
    fn targets_for_each_prediction() {
        let f = fp();
        let x0 = array![[1.0f64, -2.0]];
        let eps = array![[0.3, 0.7]];
        let l = f.schedule().level_of(300);
        let v = f
            .target(Prediction::Velocity, x0.view(), eps.view(), &[300])
            .unwrap();
        assert_relative_eq!(v[[0, 0]], l.alpha * 0.3 - l.sigma * 1.0, max_relative = 1e-14);
        let s = f
            .target(Prediction::Sample, x0.view(), eps.view(), &[300])
            .unwrap();
        assert_eq!(s, x0);
        let fl = f.target(Prediction::Flow, x0.view(), eps.view(), &[300]).unwrap();
        assert_relative_eq!(fl[[0, 1]], 0.7 + 2.0, max_relative = 1e-14);
    }

    /// Regression: `loss_weight` panicked for `t >= T`; `MinSnr` accepted `gamma <= 0` and NaN
    /// (giving negative weights).
    #[test]
    fn bad_weightings_and_timesteps_are_errors() {
        let f = fp();
        assert!(
            f.loss_weight(LossWeighting::Uniform, Prediction::Epsilon, 1000)
                .is_err()
        );
        let l = NoiseLevel::from_alpha_bar(0.0, 0.5);
        for gamma in [0.0, -1.0, f64::NAN] {
            let w = LossWeighting::MinSnr { gamma };
            assert!(matches!(
                w.weight(Prediction::Epsilon, &l),
                Err(Error::InvalidParameter { name: "gamma", .. })
            ));
            let x0 = Array2::<f32>::zeros((2, 3));
            assert!(
                f.training_example(x0.view(), Prediction::Epsilon, w, &mut StdRng::seed_from_u64(0))
                    .is_err()
            );
        }
        let inf = LossWeighting::MinSnr { gamma: f64::INFINITY };
        assert!(inf.weight(Prediction::Epsilon, &l).unwrap().is_finite());
        // Regression: soft-min-SNR with gamma = inf gave Ok(NaN); it is SNR.
        let soft = LossWeighting::SoftMinSnr { gamma: f64::INFINITY };
        assert!((soft.weight(Prediction::Sample, &l).unwrap() - l.snr()).abs() < 1e-12);
        // An SNR weighting at a clean level is infinite: an error, not Ok(inf).
        assert!(
            LossWeighting::Snr
                .weight(Prediction::Sample, &NoiseLevel::CLEAN)
                .is_err()
        );
    }

    #[test]
    fn min_snr_weights() {
        let w = LossWeighting::min_snr();
        let hi = NoiseLevel::from_alpha_bar(0.0, 0.99); // SNR 99
        let lo = NoiseLevel::from_alpha_bar(0.0, 0.5); // SNR 1
        assert_relative_eq!(
            w.weight(Prediction::Epsilon, &hi).unwrap(),
            5.0 / 99.0,
            max_relative = 1e-12
        );
        assert_relative_eq!(
            w.weight(Prediction::Epsilon, &lo).unwrap(),
            1.0,
            max_relative = 1e-12
        );
        assert_relative_eq!(
            w.weight(Prediction::Velocity, &hi).unwrap(),
            5.0 / 100.0,
            max_relative = 1e-12
        );
        assert_relative_eq!(
            w.weight(Prediction::Sample, &hi).unwrap(),
            5.0,
            max_relative = 1e-12
        );
        assert_relative_eq!(
            w.weight(Prediction::Sample, &lo).unwrap(),
            1.0,
            max_relative = 1e-12
        );
        assert_relative_eq!(
            LossWeighting::Snr.weight(Prediction::Epsilon, &hi).unwrap(),
            1.0,
            max_relative = 1e-12
        );
        assert_relative_eq!(
            LossWeighting::Snr.weight(Prediction::Velocity, &hi).unwrap(),
            0.99,
            max_relative = 1e-12
        );
        assert_eq!(
            LossWeighting::Uniform.weight(Prediction::Sample, &hi).unwrap(),
            1.0
        );
        // Zero terminal SNR: epsilon weight tends to 1.
        let term = NoiseLevel::new(999.0, 0.0, 1.0);
        assert_eq!(w.weight(Prediction::Epsilon, &term).unwrap(), 1.0);
        assert_eq!(w.weight(Prediction::Velocity, &term).unwrap(), 0.0);
    }

    #[test]
    fn posterior_of_terminal_and_clean_levels() {
        let term = NoiseLevel::new(999.0, 0.0, 1.0);
        let s = NoiseLevel::from_alpha_bar(998.0, 0.01);
        let p = posterior(&term, &s);
        assert_eq!(p.xt, 0.0);
        assert_relative_eq!(p.x0, 0.1, max_relative = 1e-12);
        assert_relative_eq!(p.variance, 0.99, max_relative = 1e-12);
        let p = posterior(&s, &NoiseLevel::CLEAN);
        assert_eq!((p.x0, p.xt, p.variance), (1.0, 0.0, 0.0));
    }
}
