//! Consistency-model sampling (Latent Consistency Models, Luo et al. 2023).

use ndarray::Dimension;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::kernel::Affine;
use crate::sampler::core::options::x0_builders;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

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
    /// Consistency models' renoising: `(sigma_min, sigma_max, s_noise)`.
    renoise: Option<(f64, f64, f64)>,
}

impl Default for Lcm {
    fn default() -> Self {
        Lcm {
            timestep_scaling: Some(10.0),
            policy: X0Policy::default(),
            renoise: None,
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

    /// Consistency models' multistep sampling (Song et al. 2023, Algorithm 1; diffusers'
    /// `CMStochasticIterativeScheduler`): renoise to `x' = alpha' (x0 + s_noise sqrt(s'^2 -
    /// sigma_min^2) z)` with the next k-diffusion sigma `s'` clamped to
    /// `[sigma_min, sigma_max]`, instead of the full `sigma' z` — the model is then told the
    /// level `s'` although the sample's noise is slightly below it, as in the paper. `None`
    /// (the default) renoises with `sigma'`.
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// use diffusion_samplers::karras_sigmas;
    /// // OpenAI's consistency-model sampling: 2 steps on EDM's sigma range.
    /// let grid = Grid::ve(&karras_sigmas(2, 0.002, 80.0, 7.0)?)?;
    /// let cm = Lcm::new().boundary_condition(None).consistency_renoise(Some((0.002, 80.0, 1.0)));
    /// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?.with_prediction(Prediction::Sample);
    /// let x = grid.initial_sample::<f64, _, _, _>((512, 1), &mut SeededNoise::new(0))?;
    /// let out = cm.sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
    /// assert!((out.mean().unwrap() - 0.5).abs() < 0.02);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    pub fn consistency_renoise(mut self, sigma_min_max_noise: Option<(f64, f64, f64)>) -> Self {
        self.renoise = sigma_min_max_noise;
        self
    }

    x0_builders!();

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

impl Method for Lcm {
    type Vars = ();

    fn check(&self) -> Result<()> {
        if let Some(k) = self.timestep_scaling
            && !(k > 0.0 && k.is_finite())
        {
            return Err(Error::InvalidParameter {
                name: "timestep_scaling",
                value: k,
                reason: "must be positive and finite",
            });
        }
        if let Some((lo, hi, s_noise)) = self.renoise {
            let bad = |name, value, reason| Err(Error::InvalidParameter { name, value, reason });
            if !(lo.is_finite() && lo >= 0.0) {
                return bad("sigma_min", lo, "must be finite and non-negative");
            }
            if hi.is_nan() || hi < lo {
                return bad("sigma_max", hi, "must be at least sigma_min");
            }
            if !(s_noise.is_finite() && s_noise >= 0.0) {
                return bad("s_noise", s_noise, "must be finite and non-negative");
            }
        }
        self.policy.validate()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        let (c_skip, c_out) = self.scalings(from.t);
        let k = Affine {
            clamped: to.alpha * c_out,
            raw: 0.0,
            x: to.alpha * c_skip,
            z: match self.renoise {
                None => to.sigma,
                Some((lo, hi, s_noise)) => {
                    let sv = to.sigma_ve().clamp(lo, hi);
                    s_noise * to.alpha * (sv * sv - lo * lo).max(0.0).sqrt()
                }
            },
        };
        s.affine(&self.policy, k)?;
        Ok(Outcome::done())
    }
}
