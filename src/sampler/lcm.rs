//! Consistency-model sampling (Latent Consistency Models, Luo et al. 2023).

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use super::kernel::{Affine, Clamps, affine_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute, fill_noise};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

/// Multistep consistency sampling[^lcm], diffusers' `LCMScheduler`: at each level the model's
/// x0 estimate is taken as the answer and re-noised to the next level with fresh noise,
///
/// ```text
/// denoised = c_out(t) x0 + c_skip(t) x,   x' = alpha' denoised + sigma' z
/// ```
///
/// with the LCM boundary-condition scalings `c_skip = s_d^2 / ((k t)^2 + s_d^2)`,
/// `c_out = k t / sqrt((k t)^2 + s_d^2)` (`s_d = 0.5`, `k` = `timestep_scaling`, 10 by default;
/// [`boundary_condition(None)`](Self::boundary_condition) uses `denoised = x0`). The last step
/// returns `denoised`. Use it with [`Spacing::Lcm`](crate::Spacing::Lcm) grids (2–8 steps).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Lcm;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(4, Spacing::Lcm { original_steps: 50 })?;
/// assert_eq!(grid.timesteps(), vec![999.0, 759.0, 499.0, 259.0]);
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = Lcm::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for a non-positive `timestep_scaling`.
///
/// [^lcm]: S. Luo, Y. Tan, L. Huang, J. Li, H. Zhao, *Latent Consistency Models*,
///     arXiv:2310.04378.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lcm {
    timestep_scaling: Option<f64>,
    policy: X0Policy,
}

impl Default for Lcm {
    fn default() -> Self {
        Lcm {
            timestep_scaling: Some(10.0),
            policy: X0Policy::default(),
        }
    }
}

impl Lcm {
    /// LCM with diffusers' defaults (boundary condition with `timestep_scaling = 10`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The boundary-condition `timestep_scaling`, or `None` to use the x0 estimate as is.
    pub fn boundary_condition(mut self, timestep_scaling: Option<f64>) -> Self {
        self.timestep_scaling = timestep_scaling;
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

    /// `(c_skip, c_out)` at timestep `t`.
    fn scalings(&self, t: f64) -> (f64, f64) {
        match self.timestep_scaling {
            None => (0.0, 1.0),
            Some(k) => {
                let sd2 = 0.25;
                let s = k * t;
                (sd2 / (s * s + sd2), s / (s * s + sd2).sqrt())
            }
        }
    }
}

impl Sampler for Lcm {
    type State<F: Float, D: Dimension> = LcmState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<LcmState<F, D>> {
        if let Some(k) = self.timestep_scaling
            && !(k > 0.0 && k.is_finite())
        {
            return Err(Error::InvalidParameter {
                name: "timestep_scaling",
                value: k,
                reason: "must be positive and finite",
            });
        }
        self.policy.validate()?;
        Ok(LcmState {
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

/// The state of an [`Lcm`] run.
#[derive(Clone, Debug)]
pub struct LcmState<F, D: Dimension> {
    x: Array<F, D>,
    walk: Walk,
    cfg: Lcm,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for LcmState<F, D> {
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
        let (c_skip, c_out) = self.cfg.scalings(from.t);
        let k = Affine {
            clamped: to.alpha * c_out,
            raw: 0.0,
            x: to.alpha * c_skip,
            z: to.sigma,
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
