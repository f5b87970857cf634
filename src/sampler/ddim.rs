//! DDIM (Song, Meng & Ermon 2021).

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use super::coefs::ancestral;
use super::kernel::{Affine, Clamps, affine_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute, check_eta, fill_noise};
use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

/// DDIM: denoising diffusion implicit models[^ddim], diffusers' `DDIMScheduler`.
///
/// From level `(alpha, sigma)` to the next level `(alpha', sigma')` of the grid, with the x0
/// estimate `x0` (clipped or thresholded if configured) and `eps = (x - alpha x0_raw) / sigma`:
///
/// ```text
/// var   = sigma'^2 (1 - r^2),  r = (sigma'/alpha') / (sigma/alpha)    (posterior variance)
/// std   = min(eta sqrt(var), sigma')
/// x'    = alpha' x0 + sqrt(sigma'^2 - std^2) eps + std z,   z ~ N(0, I)
/// ```
///
/// For variance-preserving schedules `var` is DDIM's `(1 - abar') / (1 - abar) (1 - abar /
/// abar')`; written this way it is the posterior variance for every schedule family, so that
/// DDIM(eta) is exactly [`EulerAncestral`](crate::EulerAncestral)`(eta)`.
///
/// `eta = 0` is deterministic (and equals the Euler step of the probability-flow ODE); `eta = 1`
/// is ancestral sampling with the DDPM posterior variance.
///
/// | option | default (diffusers') | meaning |
/// |---|---|---|
/// | [`eta`](Self::eta) | 0 | noise weight, `>= 0` |
/// | [`clip_sample`](Self::clip_sample) | `Some(1.0)` | clamp x0 to `[-r, r]`; `None` for latent models |
/// | [`thresholding`](Self::thresholding) | `None` | dynamic thresholding, overrides clipping |
/// | [`use_clipped_model_output`](Self::use_clipped_model_output) | `false` | re-derive `eps` from the clipped x0 |
///
/// **Deliberate difference from diffusers**: the previous level is the grid's next level. diffusers'
/// DDIM steps back by a fixed stride `T // N`, which is wrong for `trailing` and `linspace`
/// grids whose step count does not divide `T` (diffusers issues #11347, #12633); on grids where
/// the stride is right (every `leading` grid) the two agree. `set_alpha_to_one = False`
/// corresponds to [`FinalLevel::FirstTimestep`](crate::FinalLevel::FirstTimestep).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
/// let grid = schedule.grid(50, Spacing::Leading { offset: 0 })?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let x = Array2::<f64>::from_elem((1, 1), 0.3);
/// let out = Ddim::new().sample(&mut model, x, &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a negative or non-finite
/// `eta` or clip range; during a run, the errors of [`Sampler::sample`].
///
/// [^ddim]: J. Song, C. Meng, S. Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021,
///     arXiv:2010.02502, eqs. 12 and 16.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ddim {
    eta: f64,
    policy: X0Policy,
    use_clipped_model_output: bool,
}

impl Default for Ddim {
    fn default() -> Self {
        Ddim {
            eta: 0.0,
            policy: X0Policy {
                clip: Some(1.0),
                threshold: None,
            },
            use_clipped_model_output: false,
        }
    }
}

impl Ddim {
    /// DDIM with diffusers' defaults: `eta = 0`, `clip_sample = Some(1.0)`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The noise weight `eta` (0 = deterministic DDIM, 1 = DDPM-like ancestral sampling).
    pub fn eta(mut self, eta: f64) -> Self {
        self.eta = eta;
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

    /// Re-derive `eps` from the clipped x0 (GLIDE); diffusers' `use_clipped_model_output`.
    pub fn use_clipped_model_output(mut self, yes: bool) -> Self {
        self.use_clipped_model_output = yes;
        self
    }

    /// The configured `eta`.
    pub fn get_eta(&self) -> f64 {
        self.eta
    }
}

impl Sampler for Ddim {
    type State<F: Float, D: Dimension> = DdimState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<DdimState<F, D>> {
        check_eta(self.eta)?;
        self.policy.validate()?;
        Ok(DdimState {
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

/// The state of a [`Ddim`] run.
#[derive(Clone, Debug)]
pub struct DdimState<F, D: Dimension> {
    x: Array<F, D>,
    walk: Walk,
    cfg: Ddim,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for DdimState<F, D> {
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
        // ce * eps = ce / sigma * x - ce * alpha / sigma * x0_e
        let (kx, kd) = (ce / from.sigma, -ce * from.alpha / from.sigma);
        let k = if self.cfg.use_clipped_model_output {
            Affine {
                clamped: to.alpha + kd,
                raw: 0.0,
                x: kx,
                z: std,
            }
        } else {
            Affine {
                clamped: to.alpha,
                raw: kd,
                x: kx,
                z: std,
            }
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
