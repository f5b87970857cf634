//! Euler and Euler-ancestral samplers (Karras et al. 2022; k-diffusion).

use ndarray::Dimension;

use crate::error::Result;
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::AncestralSplit;
use crate::sampler::core::options::{
    Churn, Stochastic, churn_builders, noise_builders, setters, x0_builders,
};
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

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
/// during a run, the errors of [`Sampler::sample`](crate::Sampler::sample).
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

    churn_builders!();
    x0_builders!();
}

impl Method for Euler {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.churn.validate()?;
        self.policy.validate()
    }

    fn churn(&self) -> Option<&Churn> {
        Some(&self.churn)
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        s.euler(&self.policy)?;
        Ok(Outcome::done())
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
/// On flow grids the default [`split`](Self::split) is ComfyUI's rectified-flow formula
/// (`sample_euler_ancestral_RF`, which ComfyUI runs for every flow model): the step goes down to
/// the flow sigma `s_d = s' (1 + (s'/s - 1) eta)` and renoises to `s'`, `x' = (alpha' /
/// alpha_d) x_d + sqrt(s'^2 - s_d^2 alpha'^2 / alpha_d^2) z`. [`AncestralSplit::KDiffusion`]
/// keeps the posterior split above there too; [`AncestralSplit::SigmaSpace`] is ComfyUI's
/// `ddpm` step (k-diffusion's formula on the flow sigmas, see its docs).
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
/// `s_noise`; during a run, the errors of [`Sampler::sample`](crate::Sampler::sample).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EulerAncestral {
    noise: Stochastic,
    split: AncestralSplit,
    policy: X0Policy,
}

impl Default for EulerAncestral {
    fn default() -> Self {
        EulerAncestral {
            noise: Stochastic::new(1.0),
            split: AncestralSplit::Auto,
            policy: X0Policy::default(),
        }
    }
}

impl EulerAncestral {
    /// Euler ancestral with `eta = 1`, `s_noise = 1` (diffusers / k-diffusion defaults).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// How the next level's noise is split (default [`AncestralSplit::Auto`]: k-diffusion's
        /// on VP and VE grids, ComfyUI's rectified-flow split on flow grids).
        split: AncestralSplit,
    }

    noise_builders!();
    x0_builders!();
}

impl Method for EulerAncestral {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.noise.check()?;
        self.policy.validate()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        s.euler_ancestral(&self.policy, self.noise, self.split)?;
        Ok(Outcome::done())
    }
}
