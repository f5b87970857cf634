//! Euler and Euler-ancestral samplers (Karras et al. 2022; k-diffusion).

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use super::coefs::{Churn, ancestral};
use super::kernel::{Affine, Clamps, affine_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute, check_eta, fill_noise};
use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

/// The Euler method for the probability-flow ODE, with EDM's optional stochastic churn:
/// k-diffusion's `sample_euler`, diffusers' `EulerDiscreteScheduler`.
///
/// In k-diffusion's coordinates (`x / alpha`, `s = sigma / alpha`) the step is
/// `x' = x + (s' - s) (x - x0) / s`; in the model's own scaling that is
///
/// ```text
/// x' = (sigma' / sigma) x + (alpha' - alpha sigma' / sigma) x0  =  alpha' x0 + sigma' eps
/// ```
///
/// — the same update as deterministic [`Ddim`](crate::Ddim). With churn (Karras et al. 2022,
/// Algorithm 2), before each step with `s_tmin <= s <= s_tmax` the level is raised to
/// `s (1 + gamma)`, `gamma = min(s_churn / N, sqrt(2) - 1)`, by adding noise of standard
/// deviation `sqrt(s_hat^2 - s^2) s_noise`, and the model is evaluated there (as k-diffusion
/// does; diffusers evaluates the model before adding the churn noise, an approximation we do not
/// reproduce).
///
/// | option | default (diffusers / k-diffusion) | meaning |
/// |---|---|---|
/// | [`s_churn`](Self::s_churn) | 0 | amount of stochasticity |
/// | [`s_tmin`](Self::s_tmin), [`s_tmax`](Self::s_tmax) | 0, inf | sigma range where churn applies |
/// | [`s_noise`](Self::s_noise) | 1 | noise inflation |
/// | [`clip_sample`](Self::clip_sample), [`thresholding`](Self::thresholding) | off | x0 processing |
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = schedule.grid(30, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let x = Array2::<f64>::from_elem((1, 1), 0.3);
/// let out = Euler::new().sample(&mut model, x, &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for negative churn parameters;
/// during a run, the errors of [`Sampler::sample`].
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Euler {
    churn: Churn,
    policy: X0Policy,
}

impl Euler {
    /// Deterministic Euler (no churn), diffusers' defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// EDM's `S_churn` (0 = deterministic).
    pub fn s_churn(mut self, v: f64) -> Self {
        self.churn.s_churn = v;
        self
    }

    /// Lowest k-diffusion sigma at which churn applies.
    pub fn s_tmin(mut self, v: f64) -> Self {
        self.churn.s_tmin = v;
        self
    }

    /// Highest k-diffusion sigma at which churn applies.
    pub fn s_tmax(mut self, v: f64) -> Self {
        self.churn.s_tmax = v;
        self
    }

    /// EDM's `S_noise`: the churn noise is multiplied by it.
    pub fn s_noise(mut self, v: f64) -> Self {
        self.churn.s_noise = v;
        self
    }

    /// Clamp the x0 estimate to `[-r, r]`.
    pub fn clip_sample(mut self, range: Option<f64>) -> Self {
        self.policy.clip = range;
        self
    }

    /// Dynamic thresholding of the x0 estimate.
    pub fn thresholding(mut self, t: Option<Thresholding>) -> Self {
        self.policy.threshold = t;
        self
    }
}

impl Sampler for Euler {
    type State<F: Float, D: Dimension> = EulerState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        mut x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<EulerState<F, D>> {
        self.churn.validate()?;
        self.policy.validate()?;
        let walk = Walk::new(grid);
        let mut z = None;
        let hat = if walk.done() {
            walk.current()
        } else {
            self.churn.apply(&mut x, &walk, &mut z, noise)?
        };
        Ok(EulerState {
            x,
            walk,
            hat,
            churn: self.churn,
            policy: self.policy,
            z,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        Walk::effective_steps(grid)
    }
}

/// The state of an [`Euler`] run.
#[derive(Clone, Debug)]
pub struct EulerState<F, D: Dimension> {
    x: Array<F, D>,
    walk: Walk,
    hat: NoiseLevel,
    churn: Churn,
    policy: X0Policy,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for EulerState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        (!self.walk.done()).then(|| Request {
            step: self.walk.step(),
            level: self.hat,
            x: self.x.view(),
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Option<Array<F, D>>> {
        let (from, to) = (self.hat, self.walk.to());
        let r = to.sigma / from.sigma;
        let k = Affine {
            clamped: to.alpha - from.alpha * r,
            raw: 0.0,
            x: r,
            z: 0.0,
        };
        let clamps = Clamps::for_policy(&mut est, &self.x, &self.policy, &mut self.scratch)?;
        let ok = affine_step(&mut self.x, &est, &clamps, k, None);
        attribute(ok, &est, None)?;
        self.walk.next();
        self.hat = if self.walk.done() {
            self.walk.current()
        } else {
            self.churn.apply(&mut self.x, &self.walk, &mut self.z, noise)?
        };
        Ok(Some(est.into_buffer()))
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.hat
    }

    fn into_sample(self) -> Array<F, D> {
        self.x
    }
}

/// Euler ancestral sampling: k-diffusion's `sample_euler_ancestral`, diffusers'
/// `EulerAncestralDiscreteScheduler`. Each step goes down to `sigma_down` with an Euler step
/// and adds fresh noise `sigma_up` (k-diffusion's `get_ancestral_step`); in the model's scaling:
///
/// ```text
/// std = min(eta sigma' sqrt(1 - r^2), sigma'),  r = (sigma'/alpha') / (sigma/alpha)
/// x'  = alpha' x0 + sqrt(sigma'^2 - std^2) eps + s_noise std z
/// ```
///
/// which is DDIM with the same `eta` (an identity the tests check). `eta = 1` (the default)
/// samples the DDPM posterior.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = schedule.grid(30, Spacing::Linspace)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let x = Array2::<f32>::zeros((2, 1));
/// let out = EulerAncestral::new().sample(&mut model, x, &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.5);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a negative `eta` or
/// `s_noise`; during a run, the errors of [`Sampler::sample`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EulerAncestral {
    eta: f64,
    s_noise: f64,
    policy: X0Policy,
}

impl Default for EulerAncestral {
    fn default() -> Self {
        EulerAncestral {
            eta: 1.0,
            s_noise: 1.0,
            policy: X0Policy::default(),
        }
    }
}

impl EulerAncestral {
    /// Euler ancestral with `eta = 1`, `s_noise = 1` (diffusers / k-diffusion defaults).
    pub fn new() -> Self {
        Self::default()
    }

    /// The noise weight (0 = deterministic Euler).
    pub fn eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }

    /// Multiplies the added noise.
    pub fn s_noise(mut self, v: f64) -> Self {
        self.s_noise = v;
        self
    }

    /// Clamp the x0 estimate to `[-r, r]`.
    pub fn clip_sample(mut self, range: Option<f64>) -> Self {
        self.policy.clip = range;
        self
    }

    /// Dynamic thresholding of the x0 estimate.
    pub fn thresholding(mut self, t: Option<Thresholding>) -> Self {
        self.policy.threshold = t;
        self
    }
}

impl Sampler for EulerAncestral {
    type State<F: Float, D: Dimension> = EulerAncestralState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<EulerAncestralState<F, D>> {
        check_eta(self.eta)?;
        check_eta(self.s_noise).map_err(|_| crate::Error::InvalidParameter {
            name: "s_noise",
            value: self.s_noise,
            reason: "must be finite and non-negative",
        })?;
        self.policy.validate()?;
        Ok(EulerAncestralState {
            x,
            walk: Walk::new(grid),
            cfg: *self,
            z: None,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        Walk::effective_steps(grid)
    }
}

/// The state of an [`EulerAncestral`] run.
#[derive(Clone, Debug)]
pub struct EulerAncestralState<F, D: Dimension> {
    x: Array<F, D>,
    walk: Walk,
    cfg: EulerAncestral,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for EulerAncestralState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        (!self.walk.done()).then(|| Request {
            step: self.walk.step(),
            level: self.walk.from(),
            x: self.x.view(),
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Option<Array<F, D>>> {
        let (step, from, to) = (self.walk.step(), self.walk.from(), self.walk.to());
        let (std, ce) = ancestral(&from, &to, self.cfg.eta);
        let k = Affine {
            clamped: to.alpha - ce * from.alpha / from.sigma,
            raw: 0.0,
            x: ce / from.sigma,
            z: std * self.cfg.s_noise,
        };
        let clamps = Clamps::for_policy(&mut est, &self.x, &self.cfg.policy, &mut self.scratch)?;
        let z = if k.z > 0.0 {
            Some(fill_noise(&mut self.z, &self.x, step, noise))
        } else {
            None
        };
        let ok = affine_step(&mut self.x, &est, &clamps, k, z);
        attribute(ok, &est, z)?;
        self.walk.next();
        Ok(Some(est.into_buffer()))
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.walk.current()
    }

    fn into_sample(self) -> Array<F, D> {
        self.x
    }
}
