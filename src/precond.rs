//! EDM preconditioning (Karras et al. 2022): a raw network `F` becomes a [`Denoiser`] through
//! `D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma))`.
//!
//! EDM-style models (Playground v2.5, Stable Audio, consistency models, k-diffusion's
//! `Denoiser` wrappers) are trained as such a network, and diffusers' `EDMEulerScheduler`,
//! `EDMDPMSolverMultistepScheduler` and `CosineDPMSolverMultistepScheduler` apply the four
//! coefficients themselves (`precondition_inputs`, `precondition_noise`,
//! `precondition_outputs`). Here the wrapper [`Preconditioned`] applies them, so that every
//! sampler of the crate runs such a model: the network sees exactly the input diffusers gives
//! it (`c_in x` and the timestep `c_noise`), and the samplers see the denoised estimate
//! ([`Prediction::Sample`]).
//!
//! Training: [`EdmPrecond::training_batch`] gives the raw network's input, noise level, target
//! and loss weight, so a user writes the network and nothing else.
//!
//! ```
//! use diffusion_samplers::karras_sigmas;
//! use diffusion_samplers::precond::{EdmPrecond, Preconditioned};
//! use diffusion_samplers::prelude::*;
//! use ndarray::{Array1, ArrayView1};
//! // The exact EDM network of data N(0, 0.25) (sigma_data = 0.5): F = (D - c_skip x) / c_out.
//! let p = EdmPrecond::edm(0.5);
//! let net = move |x: ArrayView1<'_, f64>, l: &NoiseLevel| {
//!     let s = l.sigma / l.alpha; // the level of the scaled input carries sigma
//!     let x_ve = x.mapv(|v| v / l.alpha);
//!     let d = x_ve.mapv(|v| v * 0.25 / (0.25 + s * s)); // exact posterior mean
//!     Ok::<Array1<f64>, BoxError>((d - x_ve * p.c_skip(s)) / p.c_out(s))
//! };
//! let mut model = Preconditioned::new(net, p);
//! let grid = Grid::ve(&karras_sigmas(50, 0.002, 80.0, 7.0)?)?;
//! let x = grid.initial_sample::<f64, _, _, _>(4096, &mut SeededNoise::new(0))?;
//! let out = Heun::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
//! let var = out.mapv(|v| v * v).mean().unwrap();
//! assert!((var - 0.25).abs() < 0.03, "{var}");
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

use ndarray::{Array, ArrayView, Axis, Dimension, Zip};
use rand::Rng;

use crate::denoiser::{Denoiser, Prediction};
use crate::error::{BoxError, Error, Result};
use crate::float::Float;
use crate::forward::{Density, Draw, LossWeighting, TrainingBatch, batch_size, same_shape};
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;

/// What the raw network's output `F` is: diffusers' `prediction_type` of its EDM schedulers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum EdmOutput {
    /// EDM's own parameterisation, `c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`
    /// (diffusers' `"epsilon"` for its EDM schedulers, although `F` is not the noise).
    #[default]
    Edm,
    /// `c_out = -sigma sigma_data / sqrt(sigma^2 + sigma_data^2)` (diffusers'
    /// `"v_prediction"`: with `sigma_data = 1` the network predicts the velocity
    /// `v = alpha eps - sigma x0` of the variance-preserving level of `c_in x`, as
    /// Playground v2.5 does).
    Velocity,
}

/// The network's noise input `c_noise(sigma)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum EdmNoise {
    /// `ln(sigma) / 4` (EDM; diffusers' `EDMEulerScheduler`, `EDMDPMSolverMultistepScheduler`).
    #[default]
    QuarterLog,
    /// `atan(sigma) / pi * 2` (diffusers' `CosineDPMSolverMultistepScheduler`, Stable Audio).
    Atan,
    /// `sigma` itself, for networks that take the noise level directly.
    Sigma,
    /// `1000 ln(sigma) / 4` (OpenAI's consistency models; diffusers'
    /// `CMStochasticIterativeScheduler` computes `250 ln(sigma + 1e-44)`).
    ThousandQuarterLog,
    /// The grid level's own timestep `t`, passed through (OpenAI's consistency decoder: diffusers'
    /// `ConsistencyDecoderScheduler` gives the network its integer timestep).
    /// [`EdmPrecond::c_noise`] cannot compute it from sigma and returns NaN for it.
    Timestep,
}

/// EDM's preconditioning coefficients for a given `sigma_data`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmPrecond {
    /// The data's standard deviation the network was trained for (0.5 in EDM and diffusers'
    /// defaults, 1 for Stable Audio and Playground v2.5).
    pub sigma_data: f64,
    /// What the network outputs.
    pub output: EdmOutput,
    /// The network's noise input.
    pub noise: EdmNoise,
    /// Consistency models' boundary condition (Song et al. 2023): `c_skip` and `c_out` use
    /// `sigma - sigma_min`, so that the model is exactly the identity at `sigma_min`; 0 for
    /// EDM.
    pub sigma_min: f64,
}

impl EdmPrecond {
    /// EDM's preconditioning (`c_noise = ln(sigma) / 4`, EDM output) for `sigma_data`.
    pub fn edm(sigma_data: f64) -> Self {
        EdmPrecond {
            sigma_data,
            output: EdmOutput::Edm,
            noise: EdmNoise::QuarterLog,
            sigma_min: 0.0,
        }
    }

    /// Consistency models' parameterisation (Song et al. 2023; diffusers'
    /// `CMStochasticIterativeScheduler`): `c_skip = sd^2 / ((s - s_min)^2 + sd^2)`,
    /// `c_out = (s - s_min) sd / sqrt(s^2 + sd^2)`, `c_noise = 250 ln(s)`.
    pub fn consistency(sigma_data: f64, sigma_min: f64) -> Self {
        EdmPrecond {
            sigma_data,
            output: EdmOutput::Edm,
            noise: EdmNoise::ThousandQuarterLog,
            sigma_min,
        }
    }

    /// With another output parameterisation.
    pub fn output(mut self, output: EdmOutput) -> Self {
        self.output = output;
        self
    }

    /// With another noise input.
    pub fn noise(mut self, noise: EdmNoise) -> Self {
        self.noise = noise;
        self
    }

    /// Checks `sigma_data` (finite, positive) and `sigma_min` (finite, non-negative).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the parameter.
    pub fn validate(&self) -> Result<()> {
        if !(self.sigma_data.is_finite() && self.sigma_data > 0.0) {
            return Err(Error::InvalidParameter {
                name: "sigma_data",
                value: self.sigma_data,
                reason: "must be finite and positive",
            });
        }
        if !(self.sigma_min.is_finite() && self.sigma_min >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "sigma_min",
                value: self.sigma_min,
                reason: "must be finite and non-negative",
            });
        }
        Ok(())
    }

    fn norm(&self, sigma: f64) -> f64 {
        (sigma * sigma + self.sigma_data * self.sigma_data).sqrt()
    }

    /// `c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)`.
    pub fn c_skip(&self, sigma: f64) -> f64 {
        let sd2 = self.sigma_data * self.sigma_data;
        let s = sigma - self.sigma_min;
        sd2 / (s * s + sd2)
    }

    /// `c_out = ± (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)` (negative
    /// for [`EdmOutput::Velocity`]).
    pub fn c_out(&self, sigma: f64) -> f64 {
        let c = (sigma - self.sigma_min) * self.sigma_data / self.norm(sigma);
        match self.output {
            EdmOutput::Edm => c,
            EdmOutput::Velocity => -c,
        }
    }

    /// `c_in = 1 / sqrt(sigma^2 + sigma_data^2)`.
    pub fn c_in(&self, sigma: f64) -> f64 {
        1.0 / self.norm(sigma)
    }

    /// The network's noise input.
    pub fn c_noise(&self, sigma: f64) -> f64 {
        match self.noise {
            EdmNoise::QuarterLog => 0.25 * sigma.ln(),
            EdmNoise::Atan => sigma.atan() / std::f64::consts::PI * 2.0,
            EdmNoise::Sigma => sigma,
            EdmNoise::ThousandQuarterLog => 250.0 * (sigma + 1e-44).ln(),
            EdmNoise::Timestep => f64::NAN,
        }
    }

    /// The level the network is evaluated at for k-diffusion sigma `sigma`: `t = c_noise`,
    /// and the scaled input `c_in x = c_in x0 + c_in sigma eps`, i.e. `alpha = c_in`,
    /// `sigma = c_in sigma`.
    pub fn network_level(&self, sigma: f64) -> NoiseLevel {
        let c = self.c_in(sigma);
        NoiseLevel::new(self.c_noise(sigma), c, c * sigma)
    }
}

impl EdmPrecond {
    /// The weight on the raw network's squared error at `sigma` for an x0-space `weighting`:
    /// `D - x0 = c_out (F - F_target)`, so the weight is `w0(sigma) c_out(sigma)^2`. EDM's
    /// `lambda(sigma)` ([`LossWeighting::Edm`] with this `sigma_data`) gives 1 (k-diffusion's
    /// `"karras"`); [`LossWeighting::SoftMinSnr`] with `gamma = 1 / sigma_data^2` gives
    /// k-diffusion's `"soft-min-snr"` and [`LossWeighting::Snr`] its `"snr"`. The SD3 factors
    /// (`SigmaSqrt`, `Cosmap`) and `Uniform` are applied as they are.
    ///
    /// ```
    /// use diffusion_samplers::forward::LossWeighting;
    /// use diffusion_samplers::precond::EdmPrecond;
    /// let (p, sd) = (EdmPrecond::edm(0.5), 0.5);
    /// assert!((p.loss_weight(LossWeighting::Edm { sigma_data: sd }, 2.0)? - 1.0).abs() < 1e-12);
    /// // k-diffusion's "soft-min-snr": (sigma sd)^2 / (sigma^2 + sd^2)^2.
    /// let w = p.loss_weight(LossWeighting::SoftMinSnr { gamma: 1.0 / (sd * sd) }, 2.0)?;
    /// assert!((w - 1.0 / (4.25f64 * 4.25)).abs() < 1e-12);
    /// assert!(p.loss_weight(LossWeighting::Snr, 0.0).is_err()); // sigma 0: no target
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for invalid coefficients or weighting, or a `sigma` that is
    /// not finite and above `sigma_min` (where `c_out = 0` and the target is undefined).
    pub fn loss_weight(&self, weighting: LossWeighting, sigma: f64) -> Result<f64> {
        self.validate()?;
        weighting.validate()?;
        self.check_sigma(sigma)?;
        let level = NoiseLevel::new(sigma, 1.0, sigma);
        let w = match weighting.x0_weight(&level) {
            Some(w0) => {
                let c = self.c_out(sigma);
                w0 * c * c
            }
            None => weighting.weight_of(Prediction::Sample, &level),
        };
        if w.is_finite() {
            Ok(w)
        } else {
            Err(Error::InvalidParameter {
                name: "sigma",
                value: sigma,
                reason: "the loss weight overflows at this sigma",
            })
        }
    }

    fn check_sigma(&self, sigma: f64) -> Result<()> {
        if (sigma * sigma).is_finite() && sigma > self.sigma_min {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "sigma",
                value: sigma,
                reason: "an EDM training sigma must be finite and above sigma_min (c_out = 0 there)",
            })
        }
    }

    /// The training batch of an EDM-preconditioned network for clean samples `x0` (batch on
    /// axis 0), the sigma of each element and the noise: the network's input `c_in (x0 + sigma
    /// eps)` (in [`TrainingBatch::noisy`]), its level ([`network_level`](Self::network_level):
    /// `t = c_noise`), the target `F* = (x0 - c_skip (x0 + sigma eps)) / c_out` and the weights
    /// ([`loss_weight`](Self::loss_weight)). [`TrainingBatch::losses`] of the network's output
    /// is k-diffusion's `layers.Denoiser.loss`.
    ///
    /// ```
    /// use diffusion_samplers::forward::LossWeighting;
    /// use diffusion_samplers::precond::EdmPrecond;
    /// use ndarray::array;
    /// let p = EdmPrecond::edm(0.5);
    /// let x0 = array![[0.3f64, -0.2]];
    /// let b = p.training_batch(x0.view(), &[2.0], array![[1.0, 0.5]], LossWeighting::Edm { sigma_data: 0.5 })?;
    /// assert!((b.weights[0] - 1.0).abs() < 1e-12); // lambda(sigma) c_out^2 = 1
    /// // c_skip x + c_out F* is x0 again.
    /// let x = 0.3 + 2.0 * 1.0;
    /// assert!((p.c_skip(2.0) * x + p.c_out(2.0) * b.target[[0, 0]] - 0.3).abs() < 1e-12);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] if `noise` differs from `x0` or the number of sigmas from the batch
    /// size; as [`loss_weight`](Self::loss_weight) for a sigma, the coefficients or the
    /// weighting; [`Error::InvalidParameter`] for [`EdmNoise::Timestep`] (no timestep to give);
    /// [`Error::InvalidValue`] where finite data and noise give an input or target that
    /// overflows the float type.
    pub fn training_batch<F: Float, D: Dimension>(
        &self,
        x0: ArrayView<'_, F, D>,
        sigmas: &[f64],
        noise: Array<F, D>,
        weighting: LossWeighting,
    ) -> Result<TrainingBatch<F, D>> {
        if self.noise == EdmNoise::Timestep {
            return Err(Error::InvalidParameter {
                name: "noise",
                value: f64::NAN,
                reason: "EdmNoise::Timestep has no noise input to train with; pick QuarterLog, Atan, Sigma or ThousandQuarterLog",
            });
        }
        same_shape("noise vs x0", &x0, &noise.view())?;
        let n = batch_size(&x0)?;
        if sigmas.len() != n {
            return Err(Error::Shape {
                what: "sigmas (one per batch element on axis 0)",
                expected: vec![n],
                got: vec![sigmas.len()],
            });
        }
        let weights = sigmas
            .iter()
            .map(|&s| self.loss_weight(weighting, s))
            .collect::<Result<Vec<f64>>>()?;
        let mut noisy = Array::zeros(x0.raw_dim());
        let mut target = Array::zeros(x0.raw_dim());
        {
            let (x0, eps) = (x0.view().into_dyn(), noise.view().into_dyn());
            let (mut nd, mut td) = (noisy.view_mut().into_dyn(), target.view_mut().into_dyn());
            for (i, &s) in sigmas.iter().enumerate() {
                let (c_in, c_skip, c_out) = (self.c_in(s), self.c_skip(s), self.c_out(s));
                let mut overflow = false;
                Zip::from(nd.index_axis_mut(Axis(0), i))
                    .and(td.index_axis_mut(Axis(0), i))
                    .and(x0.index_axis(Axis(0), i))
                    .and(eps.index_axis(Axis(0), i))
                    .for_each(|n, t, &x0, &e| {
                        let (x0, e) = (x0.as_f64(), e.as_f64());
                        let x = x0 + s * e;
                        *n = F::cast(c_in * x);
                        *t = F::cast((x0 - c_skip * x) / c_out);
                        overflow |= x0.is_finite() && e.is_finite() && !(n.is_finite() && t.is_finite());
                    });
                if overflow {
                    return Err(Error::InvalidValue {
                        what: "sigmas",
                        index: i,
                        value: s,
                        reason: "the network input or target overflows the float type at this sigma",
                    });
                }
            }
        }
        Ok(TrainingBatch {
            draws: sigmas.to_vec(),
            levels: sigmas.iter().map(|&s| self.network_level(s)).collect(),
            noise,
            noisy,
            target,
            weights,
        })
    }

    /// [`training_batch`](Self::training_batch) with sigmas from `density` (spread as `draw`
    /// says) and Gaussian noise, both from `rng`. EDM's recipe is [`Density::edm`] with
    /// [`LossWeighting::Edm`].
    ///
    /// ```
    /// use diffusion_samplers::forward::{Density, Draw, LossWeighting};
    /// use diffusion_samplers::precond::EdmPrecond;
    /// use ndarray::Array2;
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let p = EdmPrecond::edm(0.5);
    /// let x0 = Array2::<f32>::zeros((16, 3));
    /// let b = p.training_example(x0.view(), Density::edm(), Draw::stratified(),
    ///                            LossWeighting::Edm { sigma_data: 0.5 }, &mut StdRng::seed_from_u64(0))?;
    /// // The network sees c_in x at t = c_noise = ln(sigma) / 4.
    /// assert!((b.levels[0].t - 0.25 * b.draws[0].ln()).abs() < 1e-12);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`training_batch`](Self::training_batch) and [`Density::sample`]; a timestep density
    /// (`Uniform`, ...) is refused.
    pub fn training_example<F: Float, D: Dimension, R: Rng + ?Sized>(
        &self,
        x0: ArrayView<'_, F, D>,
        density: Density,
        draw: Draw,
        weighting: LossWeighting,
        rng: &mut R,
    ) -> Result<TrainingBatch<F, D>> {
        if density.is_timestep() {
            return Err(Error::InvalidParameter {
                name: "density",
                value: 0.0,
                reason: "EDM training draws sigmas: use a sigma density (LogNormal, LogLogistic, ...)",
            });
        }
        let sigmas = density.sample(batch_size(&x0)?, draw, rng)?;
        let mut noise = Array::zeros(x0.raw_dim());
        NoiseSource::fill(rng, 0, noise.view_mut());
        self.training_batch(x0, &sigmas, noise, weighting)
    }
}

/// A raw network `F(x_in, level)`: its output is neither the noise nor the clean sample but
/// what [`EdmPrecond`] combines. `level.t` is `c_noise`, and `x_in = alpha x0 + sigma eps` at
/// `level` (see [`EdmPrecond::network_level`]). Closures
/// `FnMut(ArrayView<F, D>, &NoiseLevel) -> Result<Array<F, D>, BoxError>` implement it.
pub trait RawNetwork<F, D: Dimension> {
    /// Evaluates the network.
    ///
    /// # Errors
    /// Any error of the network; samplers wrap it in [`Error::Model`].
    fn forward(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError>;
}

impl<F, D, Fun> RawNetwork<F, D> for Fun
where
    D: Dimension,
    Fun: FnMut(ArrayView<'_, F, D>, &NoiseLevel) -> Result<Array<F, D>, BoxError>,
{
    fn forward(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        self(x, level)
    }
}

/// A raw network with EDM preconditioning: a [`Denoiser`] predicting the clean sample, at any
/// level of any grid (the network sees the k-diffusion sigma `level.sigma / level.alpha`
/// through [`EdmPrecond::network_level`]; the sample is divided by `level.alpha` first, so a
/// variance-exploding grid is the natural one). At `sigma = 0` it returns the sample without
/// calling the network (`c_skip = 1`, `c_out = 0`).
#[derive(Clone, Debug)]
pub struct Preconditioned<N> {
    net: N,
    precond: EdmPrecond,
}

impl<N> Preconditioned<N> {
    /// Wraps `net`.
    pub fn new(net: N, precond: EdmPrecond) -> Self {
        Preconditioned { net, precond }
    }

    /// The coefficients.
    pub fn precond(&self) -> &EdmPrecond {
        &self.precond
    }

    /// The network.
    pub fn network_mut(&mut self) -> &mut N {
        &mut self.net
    }

    /// Unwraps the network.
    pub fn into_inner(self) -> N {
        self.net
    }
}

/// The wrapper's coefficients at a level: `D(x) = skip x + c_out F(c_in x; level)`.
struct Coefs {
    skip: f64,
    c_in: f64,
    c_out: f64,
    level: NoiseLevel,
}

impl<N> Preconditioned<N> {
    /// The coefficients at `level` in the sample's own scaling, or `None` at `sigma = 0` (where
    /// `D(x) = x / alpha` without a network call).
    fn coefs(&self, level: &NoiseLevel) -> Result<Option<Coefs>, BoxError> {
        self.precond.validate()?;
        if level.alpha <= 0.0 {
            return Err(Box::new(Error::InvalidValue {
                what: "level",
                index: 0,
                value: level.alpha,
                reason: "EDM preconditioning needs alpha > 0 (a finite k-diffusion sigma)",
            }));
        }
        let inv_a = 1.0 / level.alpha;
        let s = level.sigma * inv_a;
        if s == 0.0 {
            return Ok(None);
        }
        let p = &self.precond;
        let mut net_level = p.network_level(s);
        if p.noise == EdmNoise::Timestep {
            net_level.t = level.t;
        }
        Ok(Some(Coefs {
            skip: p.c_skip(s) * inv_a,
            c_in: p.c_in(s) * inv_a,
            c_out: p.c_out(s),
            level: net_level,
        }))
    }
}

fn check_shape(got: &[usize], expected: &[usize], what: &'static str) -> Result<(), BoxError> {
    if got == expected {
        Ok(())
    } else {
        Err(Box::new(Error::Shape {
            what,
            expected: expected.to_vec(),
            got: got.to_vec(),
        }))
    }
}

/// `skip a + c_out b`, in place in `b`.
fn combine<F: Float, D: Dimension>(
    skip: f64,
    a: &ArrayView<'_, F, D>,
    c_out: f64,
    mut b: Array<F, D>,
) -> Array<F, D> {
    let (skip, c_out) = (F::cast(skip), F::cast(c_out));
    Zip::from(&mut b)
        .and(a)
        .for_each(|o, &xv| *o = skip * xv + c_out * *o);
    b
}

impl<F: Float, D: Dimension, N: RawNetwork<F, D>> Denoiser<F, D> for Preconditioned<N> {
    fn prediction(&self) -> Prediction {
        Prediction::Sample
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        let Some(c) = self.coefs(level)? else {
            return Ok(x.mapv(|v| v * F::cast(1.0 / level.alpha)));
        };
        let input = x.mapv(|v| v * F::cast(c.c_in));
        let out = self.net.forward(input.view(), &c.level)?;
        check_shape(out.shape(), x.shape(), "raw network output")?;
        Ok(combine(c.skip, &x, c.c_out, out))
    }
}

/// A raw network with exact Jacobian-vector products (forward-mode autodiff): with it,
/// [`Preconditioned`] implements [`DenoiserJvp`](crate::likelihood::DenoiserJvp), and the ODE
/// likelihood ([`OdeNll::bits_per_dim_jvp`](crate::likelihood::OdeNll::bits_per_dim_jvp)) needs no
/// finite differences.
///
/// ```
/// use diffusion_samplers::likelihood::{DenoiserJvp, OutputAndJvp};
/// use diffusion_samplers::precond::{EdmPrecond, Preconditioned, RawNetwork, RawNetworkJvp};
/// use diffusion_samplers::{BoxError, NoiseLevel};
/// use ndarray::{Array1, ArrayView1};
/// /// F(y) = tanh(y), with its derivative.
/// struct Tanh;
/// impl RawNetwork<f64, ndarray::Ix1> for Tanh {
///     fn forward(&mut self, y: ArrayView1<'_, f64>, _: &NoiseLevel) -> Result<Array1<f64>, BoxError> {
///         Ok(y.mapv(f64::tanh))
///     }
/// }
/// impl RawNetworkJvp<f64, ndarray::Ix1> for Tanh {
///     fn forward_jvp(&mut self, y: ArrayView1<'_, f64>, w: ArrayView1<'_, f64>, _: &NoiseLevel)
///         -> Result<OutputAndJvp<f64, ndarray::Ix1>, BoxError> {
///         Ok((y.mapv(f64::tanh), ndarray::Zip::from(&y).and(&w).map_collect(|y, w| w / y.cosh().powi(2))))
///     }
/// }
/// let mut m = Preconditioned::new(Tanh, EdmPrecond::edm(0.5));
/// let (x, v) = (ndarray::array![0.3, -1.2], ndarray::array![1.0, 0.0]);
/// let l = NoiseLevel::new(0.0, 1.0, 0.8);
/// let (_, jv) = m.denoise_jvp(x.view(), v.view(), &l)?;
/// // Against a central difference of the wrapper itself.
/// use diffusion_samplers::Denoiser;
/// let h = 1e-6;
/// let d = (m.denoise((&x + &(&v * h)).view(), &l)? - m.denoise((&x - &(&v * h)).view(), &l)?) / (2.0 * h);
/// assert!((jv[0] - d[0]).abs() < 1e-8 && jv[1].abs() < 1e-15);
/// # Ok::<(), BoxError>(())
/// ```
pub trait RawNetworkJvp<F, D: Dimension>: RawNetwork<F, D> {
    /// The network's output at `x`, `level` and its derivative along `v`: `(F, dF/dx . v)`.
    ///
    /// # Errors
    /// Any error of the network.
    fn forward_jvp(
        &mut self,
        x: ArrayView<'_, F, D>,
        v: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<crate::likelihood::OutputAndJvp<F, D>, BoxError>;
}

impl<F: Float, D: Dimension, N: RawNetworkJvp<F, D>> crate::likelihood::DenoiserJvp<F, D>
    for Preconditioned<N>
{
    fn denoise_jvp(
        &mut self,
        x: ArrayView<'_, F, D>,
        v: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<crate::likelihood::OutputAndJvp<F, D>, BoxError> {
        check_shape(v.shape(), x.shape(), "tangent")?;
        let Some(c) = self.coefs(level)? else {
            let k = F::cast(1.0 / level.alpha);
            return Ok((x.mapv(|e| e * k), v.mapv(|e| e * k)));
        };
        let ci = F::cast(c.c_in);
        let (input, vin) = (x.mapv(|e| e * ci), v.mapv(|e| e * ci));
        // D = skip x + c_out F(c_in x): dD . v = skip v + c_out dF . (c_in v).
        let (out, jv) = self.net.forward_jvp(input.view(), vin.view(), &c.level)?;
        check_shape(out.shape(), x.shape(), "raw network output")?;
        check_shape(jv.shape(), x.shape(), "raw network JVP")?;
        Ok((
            combine(c.skip, &x, c.c_out, out),
            combine(c.skip, &v, c.c_out, jv),
        ))
    }
}
