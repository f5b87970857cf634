//! DPM-Solver++(2S) ancestral (k-diffusion's `sample_dpmpp_2s_ancestral`).

use ndarray::Dimension;

use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::grid::ScheduleFamily;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::{AncestralSplit, ancestral_split};
use crate::sampler::core::kernel::Finish;
use crate::sampler::core::options::{Stochastic, noise_builders, setters, x0_builders};
use crate::sampler::core::walk::Walk;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

/// DPM-Solver++(2S) ancestral: a single-step second-order DPM-Solver++ step down to
/// k-diffusion's `sigma_down`, then fresh noise `sigma_up` (see
/// [`EulerAncestral`](crate::EulerAncestral)). With `lambda = -ln(sigma / alpha)`,
/// `h = lambda_down - lambda` and the midpoint `lambda + h / 2`:
///
/// ```text
/// x_mid = (sigma_mid / sigma) x + alpha_mid (1 - e^{-h/2}) x0          (DPM-Solver++ order 1)
/// x'    = alpha' [ (s_down / s) x / alpha + (1 - e^{-h}) x0(x_mid) ] + s_noise alpha' sigma_up z
/// ```
///
/// Two model calls per step, one on the step to the clean level. `eta = 0` gives the
/// deterministic DPM-Solver++(2S).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::DpmPp2sAncestral;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(15, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = DpmPp2sAncestral::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.5);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a negative `eta` or `s_noise`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmPp2sAncestral {
    noise: Stochastic,
    split: AncestralSplit,
    policy: X0Policy,
}

impl Default for DpmPp2sAncestral {
    fn default() -> Self {
        DpmPp2sAncestral {
            noise: Stochastic::new(1.0),
            split: AncestralSplit::Auto,
            policy: X0Policy::default(),
        }
    }
}

impl DpmPp2sAncestral {
    /// `eta = 1`, `s_noise = 1` (k-diffusion's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// How the next level's noise is split (see [`EulerAncestral`](crate::EulerAncestral)):
        /// by default k-diffusion's on VP and VE grids, ComfyUI's rectified-flow split on flow
        /// grids (`sample_dpmpp_2s_ancestral_RF`).
        split: AncestralSplit,
    }

    noise_builders!();
    x0_builders!();

    fn resolve(&self, family: ScheduleFamily) -> AncestralSplit {
        match (self.split, family) {
            (AncestralSplit::Auto, ScheduleFamily::Flow) | (AncestralSplit::RectifiedFlow, _) => {
                AncestralSplit::RectifiedFlow
            }
            _ => AncestralSplit::KDiffusion,
        }
    }

    /// One model call for a step: to the clean level (`ce = 0`), or from pure noise with
    /// k-diffusion's split (ComfyUI's flow split evaluates its midpoint at flow sigma 0.9999).
    fn single(&self, from: &NoiseLevel, ce: f64, split: AncestralSplit) -> bool {
        ce == 0.0 || (from.alpha == 0.0 && split != AncestralSplit::RectifiedFlow)
    }
}

impl Method for DpmPp2sAncestral {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.noise.check()?;
        self.policy.validate()
    }

    fn calls(&self, grid: &Grid) -> usize {
        let l = grid.levels();
        let split = self.resolve(grid.family());
        (0..Walk::effective_steps(grid))
            .map(|i| {
                let (_, ce) = ancestral_split(&l[i], &l[i + 1], self.noise.eta, split, grid.family());
                if self.single(&l[i], ce, split) { 1 } else { 2 }
            })
            .sum()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to, family) = (s.from(), s.to(), s.walk().family());
        let split = self.resolve(family);
        let (std, ce) = ancestral_split(&from, &to, self.noise.eta, split, family);
        if s.stage() == 0 && self.single(&from, ce, split) {
            s.euler_ancestral(&self.policy, self.noise, split)?;
            return Ok(Outcome::done());
        }
        let h = from.sigma_ve().ln() - (ce / to.alpha).ln();
        if s.stage() == 0 {
            // DPM-Solver++(1) (= DDIM) to the midpoint lambda + h / 2 (from pure noise, where
            // lambda is -inf, ComfyUI's flow sigma 0.9999).
            let mid = if from.alpha == 0.0 {
                s.walk().level_at_sigma_ve(0.9999 / (1.0 - 0.9999))
            } else {
                s.walk().level_at_sigma_ve(from.sigma_ve() * (-0.5 * h).exp())
            };
            return s.predict(&self.policy, mid);
        }
        // x' = alpha' [(s_down / s) x / alpha + (1 - e^{-h}) x0(x_mid)] + s_noise std z
        let k = Finish {
            x: ce / from.sigma,
            d: to.alpha * -(-h).exp_m1(),
            z: std * self.noise.s_noise,
            ..Finish::default()
        };
        s.finish(&self.policy, k, None)?;
        Ok(Outcome::done())
    }
}
