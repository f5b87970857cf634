//! DDPM ancestral sampling (Ho, Jain & Abbeel 2020).

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use super::kernel::{Affine, Clamps, affine_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute, fill_noise};
use crate::error::Result;
use crate::float::Float;
use crate::forward::{posterior, transition};
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

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
/// | option | default (diffusers') | meaning |
/// |---|---|---|
/// | [`variance`](Self::variance) | `FixedSmall` | the reverse variance |
/// | [`clip_sample`](Self::clip_sample) | `Some(1.0)` | clamp x0 to `[-r, r]`; `None` for latent models |
/// | [`thresholding`](Self::thresholding) | `None` | dynamic thresholding, overrides clipping |
///
/// **Deliberate difference from diffusers**: no noise is added on a step whose target is the
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
/// thresholding; during a run, the errors of [`Sampler::sample`].
///
/// [^ddpm]: J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020,
///     arXiv:2006.11239, eqs. 6–7 and Algorithm 2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ddpm {
    variance: DdpmVariance,
    policy: X0Policy,
}

impl Default for Ddpm {
    fn default() -> Self {
        Ddpm {
            variance: DdpmVariance::FixedSmall,
            policy: X0Policy {
                clip: Some(1.0),
                threshold: None,
            },
        }
    }
}

impl Ddpm {
    /// DDPM with diffusers' defaults: `FixedSmall`, `clip_sample = Some(1.0)`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The reverse-step variance.
    pub fn variance(mut self, v: DdpmVariance) -> Self {
        self.variance = v;
        self
    }

    /// Clamp the x0 estimate to `[-r, r]` (`Some(r)`), or not (`None`).
    pub fn clip_sample(mut self, range: Option<f64>) -> Self {
        self.policy.clip = range;
        self
    }

    /// Dynamic thresholding of the x0 estimate; takes priority over clipping.
    pub fn thresholding(mut self, t: Option<Thresholding>) -> Self {
        self.policy.threshold = t;
        self
    }
}

impl Sampler for Ddpm {
    type State<F: Float, D: Dimension> = DdpmState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<DdpmState<F, D>> {
        self.policy.validate()?;
        Ok(DdpmState {
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

/// The state of a [`Ddpm`] run.
#[derive(Clone, Debug)]
pub struct DdpmState<F, D: Dimension> {
    x: Array<F, D>,
    walk: Walk,
    cfg: Ddpm,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for DdpmState<F, D> {
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
        let p = posterior(&from, &to);
        let var = if to.is_clean() {
            0.0
        } else {
            match self.cfg.variance {
                DdpmVariance::FixedSmall => p.variance,
                DdpmVariance::FixedLarge => transition(&to, &from).variance,
            }
        };
        let std = var.sqrt();
        let k = Affine {
            clamped: p.x0,
            raw: 0.0,
            x: p.xt,
            z: std,
        };
        let clamps = Clamps::for_policy(&mut est, &self.x, &self.cfg.policy, &mut self.scratch)?;
        let z = if std > 0.0 {
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
