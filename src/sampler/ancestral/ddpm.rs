//! DDPM ancestral sampling (Ho, Jain & Abbeel 2020).

use ndarray::Dimension;

use crate::error::Result;
use crate::float::Float;
use crate::forward::{posterior, transition};
use crate::noise::NoiseSource;
use crate::sampler::core::kernel::Affine;
use crate::sampler::core::options::{setters, x0_builders};
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

/// The variance of DDPM's reverse step (diffusers' `variance_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DdpmVariance {
    /// The posterior variance `beta~ = (sigma'^2 / sigma^2) (1 - alpha^2 / alpha'^2)`
    /// (`fixed_small`, the default).
    #[default]
    FixedSmall,
    /// The forward variance `beta = 1 - alpha^2 / alpha'^2` of the (strided) step (`fixed_large`).
    FixedLarge,
}

/// DDPM ancestral sampling[^ddpm], diffusers' `DDPMScheduler`: sample the posterior
/// `q(x' | x, x0)` with the model's x0 estimate plugged in.
///
/// From level `(alpha, sigma)` to the next level `(alpha', sigma')`, with `a = alpha / alpha'`
/// and `v = sigma^2 - a^2 sigma'^2` (the forward variance of the step, `beta_t` when the grid
/// visits every timestep):
///
/// ```text
/// x' = alpha' v / sigma^2 x0 + a sigma'^2 / sigma^2 x + std z
/// std^2 = v sigma'^2 / sigma^2   (FixedSmall)   or   v   (FixedLarge)
/// ```
///
/// Strided grids are handled exactly (the effective beta of each step, as diffusers).
///
/// | option | default | meaning |
/// |---|---|---|
/// | [`variance`](Self::variance) | `FixedSmall` | the reverse variance |
/// | [`clip_sample`](Self::clip_sample) | `None` | clamp x0 to `[-r, r]` (diffusers' class default `Some(1.0)` is what its configs get) |
/// | [`thresholding`](Self::thresholding) | `None` | dynamic thresholding, overrides clipping |
///
/// **Deliberate differences from diffusers**: `new()` does not clip x0 (see
/// [`Ddim`](crate::Ddim)); no noise is added on a step whose target is the
/// clean level. diffusers adds noise whenever `t > 0`, so a grid that ends above `t = 0` (e.g.
/// `leading` with `steps_offset = 1`, or `trailing`) gets noise of variance `1 - abar_t` on its
/// final step with `FixedLarge` (and `1e-20` with `FixedSmall`).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
/// let grid = schedule.grid(100, Spacing::Leading { offset: 0 })?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let mut rng = StdRng::seed_from_u64(1);
/// let x = Array2::<f32>::zeros((1, 1));
/// let out = Ddpm::new().variance(DdpmVariance::FixedSmall).sample(&mut model, x, &grid, &mut rng)?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.5);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a bad clip range or
/// thresholding; during a run, the errors of [`Sampler::sample`](crate::Sampler::sample).
///
/// [^ddpm]: J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020,
///     arXiv:2006.11239, eqs. 6–7 and Algorithm 2.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Ddpm {
    variance: DdpmVariance,
    policy: X0Policy,
    quiet_last: bool,
}

impl Ddpm {
    /// DDPM with the posterior variance (`FixedSmall`), no x0 processing.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The reverse-step variance.
        variance: DdpmVariance,
    }

    x0_builders!();

    /// Whether the last step adds noise when its target is not the clean level (default
    /// `true`). diffusers' `DDPMWuerstchenScheduler` (Würstchen, Stable Cascade) ends at
    /// `abar = 0.9999` and adds none there: `false` reproduces it.
    pub fn noise_on_last_step(mut self, yes: bool) -> Self {
        self.quiet_last = !yes;
        self
    }
}

impl Method for Ddpm {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.policy.validate()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        let p = posterior(&from, &to);
        let var = match self.variance {
            _ if to.is_clean() || (self.quiet_last && s.walk().is_last()) => 0.0,
            DdpmVariance::FixedSmall => p.variance,
            DdpmVariance::FixedLarge => transition(&to, &from).variance,
        };
        let k = Affine {
            clamped: p.x0,
            raw: 0.0,
            x: p.xt,
            z: var.sqrt(),
        };
        s.affine(&self.policy, k)?;
        Ok(Outcome::done())
    }
}
