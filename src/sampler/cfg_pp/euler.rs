//! Euler CFG++ with and without noise (ComfyUI's `euler_cfg_pp`, `euler_ancestral_cfg_pp`).

use ndarray::Dimension;

use crate::error::Result;
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::get_ancestral_step;
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::options::{Stochastic, noise_builders};
use crate::sampler::{Method, Outcome, Step};

/// Euler CFG++[^cfgpp] (ComfyUI's `euler_cfg_pp`; [`ancestral`](Self::ancestral):
/// `euler_ancestral_cfg_pp`): the ancestral Euler step that denoises with the guided x0
/// estimate `x0_g` and renoises with the unconditional branch's noise estimate
/// `eps_u = (x - alpha x0_u) / sigma`:
///
/// ```text
/// x' = alpha' (x0_g + s_down eps_u + s_noise s_up z)
/// ```
///
/// with `(s_down, s_up)` the ancestral split (`eta`) of the k-diffusion sigmas `sigma / alpha ->
/// sigma' / alpha'` — on flow grids too, as ComfyUI's (its plain `euler_ancestral` switches to
/// the rectified-flow split there). Without noise (`eta = 0`) it is DDIM with the renoising
/// direction from the unconditional branch: `x' = alpha' x0_g + sigma' eps_u`; the step to the
/// clean level returns `x0_g`. From pure noise (`alpha = 0`) the step is `alpha' (x0_g + s' z)`,
/// as ComfyUI's. One model call per step.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{EulerCfgPp, Guidance};
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let cond = GaussianMixture::gaussian(vec![1.0], vec![0.1])?;
/// let uncond = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
/// let mut guided = Guidance::new(cond, uncond, 2.0); // CFG++ scales are small (ComfyUI: 1-2)
/// let x: ndarray::Array2<f64> = grid.initial_sample((64, 1), &mut SeededNoise::new(0))?;
/// let out = EulerCfgPp::new().sample(&mut guided, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.mean().unwrap() > 1.0); // pushed past the conditional mean
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a negative `eta` or `s_noise`.
///
/// [^cfgpp]: H. Chung et al., *CFG++*, arXiv:2406.08070.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EulerCfgPp {
    noise: Stochastic,
}

impl Default for EulerCfgPp {
    fn default() -> Self {
        EulerCfgPp {
            noise: Stochastic::new(0.0),
        }
    }
}

impl EulerCfgPp {
    /// Without noise (ComfyUI's `euler_cfg_pp`).
    pub fn new() -> Self {
        Self::default()
    }

    /// With ancestral noise, `eta = 1` (ComfyUI's `euler_ancestral_cfg_pp`).
    pub fn ancestral() -> Self {
        EulerCfgPp {
            noise: Stochastic::new(1.0),
        }
    }

    noise_builders!();
}

impl Method for EulerCfgPp {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.noise.check()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        if to.is_clean() {
            s.combo(&Combo::new(Slot::X, &[(Slot::X0, to.alpha)], Keep::Raw), None)?;
            return Ok(Outcome::done());
        }
        let (sd, su) = get_ancestral_step(from.sigma_ve(), to.sigma_ve(), self.noise.eta);
        let a = to.alpha;
        let noisy = self.noise.eta > 0.0 && self.noise.s_noise > 0.0;
        let terms = [
            (Slot::X, a * sd / from.sigma),
            (Slot::X0, a),
            (Slot::X0Uncond, -a * sd * from.alpha / from.sigma),
            (Slot::Noise, a * su * self.noise.s_noise),
        ];
        let terms = if noisy { &terms[..] } else { &terms[..3] };
        s.combo(
            &Combo::new(Slot::X, terms, Keep::Raw),
            noisy.then_some((from, to)),
        )?;
        Ok(Outcome::done())
    }
}
