//! Training batches for every schedule family: a [`Process`] maps a draw from a [`Density`] to a
//! noise level, [`Training`] draws levels and noise and returns the model input, the target of
//! the model's [`Prediction`] and the loss weights.

use std::f64::consts::FRAC_PI_2;

use ndarray::{Array, ArrayView, Axis, Dimension, Zip};
use rand::Rng;

use super::{LossWeighting, batch_size, per_sample_combine, same_shape};
use crate::denoiser::Prediction;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::options::setters;
use crate::schedule::{FlowSchedule, NoiseLevel, NoiseSchedule};

use super::density::{Density, Draw};

/// How a draw (a timestep `t` in `[0, 1]`, or a sigma) becomes a noise level
/// `x_t = alpha x0 + sigma eps`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Process {
    /// A discrete schedule: `t` in `[0, 1)` picks training timestep `floor(t T)` (`T - 1` for
    /// `t = 1`); the level's `t` is that integer timestep.
    Discrete(NoiseSchedule),
    /// Continuous-time VP with linear `beta(t)` (Song et al. 2021): `ln alpha_bar(t) = -t^2
    /// (beta_max - beta_min) / 2 - t beta_min`; score SDE uses 0.1 and 20. The level's `t` is
    /// `t` in `[0, 1]`.
    Vp {
        /// `beta(0)`.
        beta_min: f64,
        /// `beta(1)`.
        beta_max: f64,
    },
    /// Continuous-time cosine VP (Nichol & Dhariwal 2021): `alpha_bar(t) = cos^2(pi/2 (t + s) /
    /// (1 + s)) / cos^2(pi/2 s / (1 + s))`, `s = 0.008`; `t = 1` is pure noise.
    VpCosine {
        /// The offset `s`.
        s: f64,
    },
    /// Continuous-time VE (score SDE's NCSN): `sigma(t) = sigma_min (sigma_max /
    /// sigma_min)^t`, `alpha = 1`.
    Ve {
        /// `sigma(0)`.
        sigma_min: f64,
        /// `sigma(1)`.
        sigma_max: f64,
    },
    /// The draw is the k-diffusion sigma itself (EDM, k-diffusion): `alpha = 1`, the level's
    /// `t` is sigma. Pair it with a sigma density ([`Density::edm`], ...).
    Sigma,
    /// Rectified flow: `t` is shifted by the schedule's shift to the flow sigma `s`, `x_t = (1 -
    /// s) x0 + s eps` and the level's `t` is `s T` (SD3 / Flux; the velocity target is `eps -
    /// x0`). The schedule's `shift_terminal` (a stretch of a sampling grid) is not applied.
    ///
    /// This is the SD3 paper's `t`. diffusers' SD3 / Flux scripts index the scheduler's
    /// descending timesteps with `(u * T).long()`, so their sigma is about `shift(1 - u)`: the
    /// same for the symmetric densities (logit-normal with mean 0, mode), the mirror image for a
    /// logit-normal mean `m` (use `-m` here to train as the scripts do).
    Flow(FlowSchedule),
}

impl Process {
    /// Rectified flow without shift and `T = 1000` (SD3's timestep scale).
    pub fn flow() -> Self {
        Process::Flow(FlowSchedule::new(1000).expect("1000 training steps are valid"))
    }

    fn validate(&self) -> Result<()> {
        let bad = |name, value, reason| Err(Error::InvalidParameter { name, value, reason });
        match *self {
            Process::Vp { beta_min, beta_max } => {
                if !(beta_min.is_finite() && beta_min >= 0.0) {
                    return bad("beta_min", beta_min, "must be finite and non-negative");
                }
                if !(beta_max.is_finite() && beta_max >= beta_min && beta_max > 0.0) {
                    return bad("beta_max", beta_max, "must be finite, positive and >= beta_min");
                }
            }
            Process::VpCosine { s } if !(s.is_finite() && s > 0.0) => {
                return bad("s", s, "the cosine offset must be finite and positive");
            }
            Process::Ve { sigma_min, sigma_max } => {
                if !(sigma_min.is_finite() && sigma_min > 0.0) {
                    return bad("sigma_min", sigma_min, "must be finite and positive");
                }
                if !(sigma_max.is_finite() && sigma_max > sigma_min) {
                    return bad("sigma_max", sigma_max, "must be finite and above sigma_min");
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the process takes timesteps in `[0, 1]` (all but [`Process::Sigma`]).
    pub fn takes_timesteps(&self) -> bool {
        !matches!(self, Process::Sigma)
    }

    /// The level of draw `u`.
    ///
    /// ```
    /// use diffusion_samplers::forward::Process;
    /// let l = Process::flow().level(0.25)?;
    /// assert_eq!((l.alpha, l.sigma, l.t), (0.75, 0.25, 250.0));
    /// let l = Process::Vp { beta_min: 0.1, beta_max: 20.0 }.level(1.0)?;
    /// assert!((l.alpha_bar() - (-10.05f64).exp()).abs() < 1e-15);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for the process's parameters out of range, a NaN draw, a
    /// timestep outside `[0, 1]` or a sigma that is negative.
    pub fn level(&self, u: f64) -> Result<NoiseLevel> {
        self.validate()?;
        let range = if self.takes_timesteps() {
            (0.0..=1.0).contains(&u)
        } else {
            u >= 0.0
        };
        if !range {
            return Err(Error::InvalidParameter {
                name: "draw",
                value: u,
                reason: if self.takes_timesteps() {
                    "a training timestep must lie in [0, 1]"
                } else {
                    "a training sigma must be non-negative"
                },
            });
        }
        let level = match self {
            Process::Discrete(s) => {
                let t = ((u * s.len() as f64) as usize).min(s.len() - 1);
                s.level(t as f64)
            }
            &Process::Vp { beta_min, beta_max } => {
                let log_ab = -0.5 * u * u * (beta_max - beta_min) - u * beta_min;
                NoiseLevel::new(u, (0.5 * log_ab).exp(), (-log_ab.exp_m1()).sqrt())
            }
            &Process::VpCosine { s } => {
                let f = |t: f64| (FRAC_PI_2 * (t + s) / (1.0 + s)).cos();
                let a = (f(u) / f(0.0)).clamp(0.0, 1.0);
                NoiseLevel::new(u, a, (1.0 - a * a).max(0.0).sqrt())
            }
            &Process::Ve { sigma_min, sigma_max } => {
                NoiseLevel::new(u, 1.0, sigma_min * (sigma_max / sigma_min).powf(u))
            }
            Process::Sigma => NoiseLevel::new(u, 1.0, u),
            Process::Flow(f) => f.level_from_sigma(f.shift().apply(u).clamp(0.0, 1.0)),
        };
        if level.is_valid() && level.alpha.is_finite() && level.sigma.is_finite() {
            Ok(level)
        } else {
            Err(Error::InvalidParameter {
                name: "draw",
                value: u,
                reason: "the process's level at this draw is not finite (its parameters overflow f64)",
            })
        }
    }
}

/// One training batch: the levels drawn, the noise, the model input, the target and the loss
/// weights (batch on axis 0, one level per element).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TrainingBatch<F, D: Dimension> {
    /// The draw of each element (a timestep in `[0, 1]` or a sigma).
    pub draws: Vec<f64>,
    /// The level of each element: what the model is called with (for an EDM batch, the raw
    /// network's level: `t = c_noise`, see [`EdmPrecond::network_level`](crate::precond::EdmPrecond::network_level)).
    pub levels: Vec<NoiseLevel>,
    /// The noise `eps` that was added.
    pub noise: Array<F, D>,
    /// The model input (`alpha x0 + sigma eps`; for an EDM batch the raw network's input `c_in
    /// (x0 + sigma eps)`).
    pub noisy: Array<F, D>,
    /// What the model should output.
    pub target: Array<F, D>,
    /// The loss weight of each element.
    pub weights: Vec<f64>,
}

impl<F: Float, D: Dimension> TrainingBatch<F, D> {
    /// The weighted loss of a model output: the mean over the batch of `weight * mean((output -
    /// target)^2)` (each element's mean over its own entries), in f64. A framework with autograd
    /// computes the same expression on its tensors.
    ///
    /// ```
    /// use diffusion_samplers::forward::{Process, Training};
    /// use diffusion_samplers::Prediction;
    /// use ndarray::Array2;
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let tr = Training::new(Process::Vp { beta_min: 0.1, beta_max: 20.0 }, Prediction::Epsilon);
    /// let b = tr.batch(Array2::<f64>::zeros((8, 2)).view(), &mut StdRng::seed_from_u64(0))?;
    /// assert_eq!(b.loss(b.target.view())?, 0.0); // the target itself
    /// let zero = Array2::<f64>::zeros((8, 2));
    /// let per = b.losses(zero.view())?; // what k-diffusion's Denoiser.loss returns
    /// assert!((b.loss(zero.view())? - per.iter().sum::<f64>() / 8.0).abs() < 1e-15);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] if `output` differs from the target in shape.
    pub fn loss(&self, output: ArrayView<'_, F, D>) -> Result<f64> {
        Ok(self.losses(output)?.iter().sum::<f64>() / self.weights.len().max(1) as f64)
    }

    /// The weighted loss of each batch element (`weight * mean((output - target)^2)`), what
    /// k-diffusion's `Denoiser.loss` returns.
    ///
    /// # Errors
    /// As [`loss`](Self::loss).
    pub fn losses(&self, output: ArrayView<'_, F, D>) -> Result<Vec<f64>> {
        same_shape("model output vs target", &self.target.view(), &output)?;
        let (o, t) = (output.into_dyn(), self.target.view().into_dyn());
        Ok(o.axis_iter(Axis(0))
            .zip(t.axis_iter(Axis(0)))
            .zip(&self.weights)
            .map(|((o, t), &w)| {
                let mut sum = 0.0;
                Zip::from(&o).and(&t).for_each(|&a, &b| {
                    let d = a.as_f64() - b.as_f64();
                    sum += d * d;
                });
                w * sum / o.len().max(1) as f64
            })
            .collect())
    }
}

/// A training recipe: the process, the density its draws come from (and how a batch spreads
/// them), the model's prediction type and the loss weighting. [`batch`](Self::batch) draws a
/// batch; the user computes the model's output on `noisy` at `levels` and minimises
/// [`TrainingBatch::loss`].
///
/// ```
/// use diffusion_samplers::forward::{Density, Draw, Process, Training, LossWeighting};
/// use diffusion_samplers::Prediction;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// // SD3 / Flux: rectified flow, logit-normal timesteps, velocity target.
/// let tr = Training::flow_matching();
/// let x0 = Array2::<f32>::ones((4, 2));
/// let b = tr.batch(x0.view(), &mut StdRng::seed_from_u64(0))?;
/// for (i, l) in b.levels.iter().enumerate() {
///     // x_t = (1 - s) x0 + s eps, target eps - x0.
///     let want = (1.0 - l.sigma) + l.sigma * f64::from(b.noise[[i, 0]]);
///     assert!((f64::from(b.noisy[[i, 0]]) - want).abs() < 1e-6);
///     assert!((b.target[[i, 0]] - (b.noise[[i, 0]] - 1.0)).abs() < 1e-6);
/// }
/// // Min-SNR-5 for an epsilon-predicting VP model with stratified timesteps.
/// let tr = Training::new(Process::Vp { beta_min: 0.1, beta_max: 20.0 }, Prediction::Epsilon)
///     .draw(Draw::stratified())
///     .weighting(LossWeighting::min_snr());
/// let b = tr.batch(x0.view(), &mut StdRng::seed_from_u64(1))?;
/// assert!(b.draws[0] < 0.25 && b.draws[3] >= 0.75);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Training {
    process: Process,
    density: Density,
    draw: Draw,
    prediction: Prediction,
    weighting: LossWeighting,
}

impl Training {
    /// `process` with a model predicting `prediction`: uniform timesteps (for
    /// [`Process::Sigma`]: EDM's log-normal sigmas), independent draws, uniform weights.
    pub fn new(process: Process, prediction: Prediction) -> Self {
        let density = if process.takes_timesteps() {
            Density::Uniform
        } else {
            Density::edm()
        };
        Training {
            process,
            density,
            draw: Draw::Independent,
            prediction,
            weighting: LossWeighting::Uniform,
        }
    }

    /// SD3's recipe: rectified flow (no shift, `T = 1000`), logit-normal(0, 1) timesteps,
    /// velocity (`eps - x0`) target, uniform weights.
    pub fn flow_matching() -> Self {
        Training::new(Process::flow(), Prediction::Flow).density(Density::logit_normal())
    }

    setters! {
        /// The density of the draws.
        density: Density,
        /// How a batch spreads its draws.
        draw: Draw,
        /// The loss weighting.
        weighting: LossWeighting,
    }

    /// The process.
    pub fn process(&self) -> &Process {
        &self.process
    }

    /// The model's prediction type.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn validate(&self) -> Result<()> {
        self.weighting.validate()?;
        self.density.validate()?;
        if self.density.is_timestep() != self.process.takes_timesteps() {
            return Err(Error::InvalidParameter {
                name: "density",
                value: 0.0,
                reason: if self.process.takes_timesteps() {
                    "this process takes timesteps in [0, 1]: use a timestep density (Uniform, LogitNormal, Mode, CosMap)"
                } else {
                    "Process::Sigma takes sigmas: use a sigma density (LogNormal, LogLogistic, ...)"
                },
            });
        }
        Ok(())
    }

    /// Draws `n` levels: `(draws, levels)`.
    ///
    /// ```
    /// use diffusion_samplers::forward::{Density, Process, Training};
    /// use diffusion_samplers::Prediction;
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let tr = Training::new(Process::Sigma, Prediction::Sample).density(Density::edm());
    /// let (sigmas, levels) = tr.levels(3, &mut StdRng::seed_from_u64(0))?;
    /// assert!(levels.iter().zip(&sigmas).all(|(l, &s)| l.alpha == 1.0 && l.sigma == s));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`batch`](Self::batch).
    pub fn levels<R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Result<(Vec<f64>, Vec<NoiseLevel>)> {
        self.validate()?;
        let draws = self.density.sample(n, self.draw, rng)?;
        let levels = draws
            .iter()
            .map(|&u| self.process.level(u))
            .collect::<Result<_>>()?;
        Ok((draws, levels))
    }

    /// Draws a batch for the clean samples `x0` (batch on axis 0): a level per element from the
    /// density, Gaussian noise from `rng`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a density, weighting or process parameter out of range,
    /// or a density of the wrong kind for the process (timesteps vs sigmas); [`Error::Shape`]
    /// if `x0` has no batch axis.
    pub fn batch<F: Float, D: Dimension, R: Rng + ?Sized>(
        &self,
        x0: ArrayView<'_, F, D>,
        rng: &mut R,
    ) -> Result<TrainingBatch<F, D>> {
        let n = batch_size(&x0)?;
        self.validate()?;
        let draws = self.density.sample(n, self.draw, rng)?;
        let mut noise = Array::zeros(x0.raw_dim());
        NoiseSource::fill(rng, 0, noise.view_mut());
        self.batch_with(x0, &draws, noise)
    }

    /// The batch for given draws and noise (for noise from another source, a seeded torch
    /// generator, or tests).
    ///
    /// # Errors
    /// As [`batch`](Self::batch); [`Error::Shape`] if `noise` differs from `x0` or the number
    /// of draws from the batch size; [`Error::InvalidParameter`] for a draw out of the
    /// process's range; [`Error::InvalidValue`] for a draw whose loss weight is not finite (an
    /// SNR weighting at a clean level).
    pub fn batch_with<F: Float, D: Dimension>(
        &self,
        x0: ArrayView<'_, F, D>,
        draws: &[f64],
        noise: Array<F, D>,
    ) -> Result<TrainingBatch<F, D>> {
        self.validate()?;
        same_shape("noise vs x0", &x0, &noise.view())?;
        let n = batch_size(&x0)?;
        if draws.len() != n {
            return Err(Error::Shape {
                what: "draws (one per batch element on axis 0)",
                expected: vec![n],
                got: vec![draws.len()],
            });
        }
        let levels: Vec<NoiseLevel> = draws
            .iter()
            .map(|&u| self.process.level(u))
            .collect::<Result<_>>()?;
        let coefs: Vec<(f64, f64)> = levels.iter().map(|l| (l.alpha, l.sigma)).collect();
        let noisy = per_sample_combine(x0.view(), noise.view(), &coefs);
        let coefs: Vec<(f64, f64)> = levels
            .iter()
            .map(|l| self.prediction.target_coefficients(l))
            .collect();
        let target = per_sample_combine(x0, noise.view(), &coefs);
        let weights: Vec<f64> = levels
            .iter()
            .map(|l| self.weighting.weight_of(self.prediction, l))
            .collect();
        if let Some(i) = weights.iter().position(|w| !w.is_finite()) {
            return Err(Error::InvalidValue {
                what: "draws",
                index: i,
                value: draws[i],
                reason: "the loss weight is not finite at this draw's level (a clean level, sigma = 0?)",
            });
        }
        Ok(TrainingBatch {
            draws: draws.to_vec(),
            levels,
            noise,
            noisy,
            target,
            weights,
        })
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use ndarray::Array2;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn processes_give_their_levels() {
        let l = Process::VpCosine { s: 0.008 }.level(0.0).unwrap();
        assert!((l.alpha - 1.0).abs() < 1e-15);
        let l = Process::VpCosine { s: 0.008 }.level(1.0).unwrap();
        assert!(l.alpha < 1e-15);
        let l = Process::Ve {
            sigma_min: 0.01,
            sigma_max: 50.0,
        }
        .level(0.5)
        .unwrap();
        assert!((l.sigma - (0.01f64 * 50.0).sqrt()).abs() < 1e-12);
        let sched = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let l = Process::Discrete(sched.clone()).level(0.4999).unwrap();
        assert_eq!(l, sched.level(499.0));
        assert_eq!(Process::Discrete(sched).level(1.0).unwrap().t, 999.0);
        let f = FlowSchedule::new(1000)
            .unwrap()
            .with_shift(crate::schedule::FlowShift::Static(3.0))
            .unwrap();
        let l = Process::Flow(f.clone()).level(0.5).unwrap();
        assert!((l.sigma - 0.75).abs() < 1e-15);
        // Regression: a shift_terminal stretched the one-element draw to the terminal value.
        let ft = f.with_shift_terminal(0.1).unwrap();
        let sig: Vec<f64> = [0.1, 0.5, 0.9]
            .iter()
            .map(|&u| Process::Flow(ft.clone()).level(u).unwrap().sigma)
            .collect();
        assert!(
            (sig[1] - 0.75).abs() < 1e-15 && sig[0] < sig[1] && sig[1] < sig[2],
            "{sig:?}"
        );
        assert!(Process::flow().level(1.5).is_err());
        assert!(Process::Sigma.level(-1.0).is_err());
        assert!(Process::Sigma.level(f64::NAN).is_err());
    }

    #[test]
    fn mismatched_density_and_shapes_are_errors() {
        let x0 = Array2::<f64>::zeros((3, 2));
        let mut rng = StdRng::seed_from_u64(0);
        let t = Training::new(Process::Sigma, Prediction::Sample).density(Density::Uniform);
        assert!(matches!(
            t.batch(x0.view(), &mut rng),
            Err(Error::InvalidParameter { name: "density", .. })
        ));
        let t = Training::flow_matching();
        assert!(
            t.batch_with(x0.view(), &[0.5, 0.5], Array2::zeros((3, 2)))
                .is_err()
        );
        assert!(t.batch_with(x0.view(), &[0.5; 3], Array2::zeros((3, 1))).is_err());
        assert!(
            t.batch_with(x0.view(), &[0.5, 0.5, 2.0], Array2::zeros((3, 2)))
                .is_err()
        );
        let b = t.batch_with(x0.view(), &[0.5; 3], Array2::ones((3, 2))).unwrap();
        assert!(b.loss(Array2::zeros((3, 1)).view()).is_err());
        // Output = target gives zero loss; output off by 1 gives the weight.
        assert_eq!(b.loss(b.target.view()).unwrap(), 0.0);
        let off = &b.target + 1.0;
        assert!((b.loss(off.view()).unwrap() - 1.0).abs() < 1e-15);
    }
}
