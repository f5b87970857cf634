//! Trajectory Consistency Distillation sampling (Zheng et al. 2024), diffusers' `TCDScheduler`.

use ndarray::Dimension;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::kernel::Affine;
use crate::sampler::core::options::{setters, x0_builders};
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

/// Strategic stochastic sampling of TCD[^tcd], diffusers' `TCDScheduler`: from level `t` to the
/// next level `t'`, the model's estimates `(x0, eps)` are first carried to the intermediate
/// timestep `s = floor((1 - gamma) t')` deterministically, then forward-noised to `t'`:
///
/// ```text
/// x_s = alpha_s x0 + sigma_s eps,    x' = (alpha'/alpha_s) x_s + sqrt(sigma'^2 - (alpha' sigma_s / alpha_s)^2) z
/// ```
///
/// `gamma = 0` is deterministic DDIM; `gamma = 1` renoises the x0 estimate afresh at every
/// step (consistency sampling). On grids of integer timesteps `s` is computed in float32 as
/// torch does, so that it lands on the same training timestep (`floor(0.7 * 90)` is 62 in f64
/// but 63 in diffusers); on continuous-time grids it is `(1 - gamma) t'` itself. Use it with
/// [`Spacing::Lcm`](crate::Spacing::Lcm) grids ending at
/// [`FinalLevel::FirstTimestep`](crate::FinalLevel) — diffusers' TCD ends at training
/// timestep 0, not at the clean level — and an epsilon, velocity or sample model. diffusers
/// accepts and ignores clipping and thresholding options for TCD; so does
/// [`DiffusersConfig`](crate::config::DiffusersConfig) (here they are available through the
/// builders, off by default).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Tcd;
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(4, Spacing::Lcm { original_steps: 50 })?.with_final(FinalLevel::FirstTimestep);
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let x = grid.initial_sample::<f64, _, _, _>((4096, 1), &mut SeededNoise::new(0))?;
/// let out = Tcd::new().gamma(0.3).sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.01);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for `gamma` outside [0, 1].
///
/// [^tcd]: J. Zheng, M. Hu, Z. Fan, C. Wang, C. Ding, D. Tao, T.-J. Cham, *Trajectory
///     Consistency Distillation*, arXiv:2402.19159.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tcd {
    gamma: f64,
    policy: X0Policy,
}

impl Default for Tcd {
    fn default() -> Self {
        Tcd {
            gamma: 0.3,
            policy: X0Policy::default(),
        }
    }
}

impl Tcd {
    /// TCD with `gamma = 0.3` (diffusers' `step` default and the TCD model cards'; the
    /// Stable Diffusion pipelines pass their own `eta`, 0 unless set).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The stochasticity `gamma` in [0, 1] (diffusers' `eta` argument of `step`).
        gamma: f64,
    }

    x0_builders!();

    /// The intermediate timestep `s` for the next level's timestep `t_next`, in float32 as
    /// torch computes `floor((1 - eta) * prev_timestep)`.
    pub fn intermediate_timestep(&self, t_next: f64) -> f64 {
        #[allow(clippy::cast_possible_truncation, reason = "torch computes it in float32")]
        let (g, t) = ((1.0 - self.gamma) as f32, t_next as f32);
        f64::from((g * t).floor())
    }
}

impl Method for Tcd {
    type Vars = ();

    fn check(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.gamma) {
            return Err(Error::InvalidParameter {
                name: "gamma",
                value: self.gamma,
                reason: "must be in [0, 1]",
            });
        }
        self.policy.validate()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        let k = if to.is_clean() {
            Affine {
                clamped: 1.0,
                raw: 0.0,
                x: 0.0,
                z: 0.0,
            }
        } else {
            let mid = if self.gamma == 0.0 {
                to
            } else if to.t.fract() == 0.0 {
                s.walk().level_at_t(self.intermediate_timestep(to.t))
            } else {
                // A continuous-time grid: no training timestep to floor to.
                s.walk().level_at_t((1.0 - self.gamma) * to.t)
            };
            // eps-coefficient kept from the deterministic part, and the fresh noise's.
            let ce = if mid.alpha > 0.0 {
                to.alpha * mid.sigma / mid.alpha
            } else {
                to.sigma
            };
            let ce = ce.min(to.sigma);
            let std = (to.sigma * to.sigma - ce * ce).max(0.0).sqrt();
            Affine {
                clamped: to.alpha - ce * from.alpha / from.sigma,
                raw: 0.0,
                x: ce / from.sigma,
                z: std,
            }
        };
        s.affine(&self.policy, k)?;
        Ok(Outcome::done())
    }
}
