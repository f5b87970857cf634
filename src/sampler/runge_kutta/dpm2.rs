//! DPM-Solver-2 as k-diffusion writes it (midpoint in log sigma), and its ancestral variant.

use ndarray::Dimension;

use super::two_stage_calls;
use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::grid::ScheduleFamily;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::{AncestralSplit, Coords, ancestral_split};
use crate::sampler::core::kernel::Finish;
use crate::sampler::core::options::{
    Churn, Stochastic, churn_builders, noise_builders, setters, x0_builders,
};
use crate::sampler::core::walk::Walk;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

/// DPM-Solver-2 (Lu et al. 2022, in k-diffusion's form): an Euler half-step to the midpoint
/// `tau_mid = sqrt(tau tau')` (geometric mean of the sigmas), then the full step with the
/// midpoint's derivative; k-diffusion's `sample_dpm_2`, diffusers' `KDPM2DiscreteScheduler`.
///
/// ```text
/// y2 = y + (tau_mid - tau) g(y, tau);   y' = y + (tau' - tau) g(y2, tau_mid)
/// ```
///
/// Second order, two model calls per step and one on the step to the clean level (an Euler
/// step). Coordinates and churn as [`Heun`](crate::Heun).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Dpm2;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(15, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = Dpm2::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`Euler`](crate::Euler).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Dpm2 {
    churn: Churn,
    policy: X0Policy,
}

impl Dpm2 {
    /// Deterministic DPM-2 (no churn).
    pub fn new() -> Self {
        Self::default()
    }

    churn_builders!();
    x0_builders!();
}

impl Method for Dpm2 {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.churn.validate()?;
        self.policy.validate()
    }

    fn calls(&self, grid: &Grid) -> usize {
        two_stage_calls(grid)
    }

    fn churn(&self) -> Option<&Churn> {
        Some(&self.churn)
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to, c) = (s.from(), s.to(), s.coords());
        if s.stage() == 0 {
            if to.is_clean() || c.degenerate(&from) {
                s.euler(&self.policy)?;
                return Ok(Outcome::done());
            }
            // The midpoint: the geometric mean of tau and tau'.
            let tau_mid = ((c.tau(&from).ln() + c.tau(&to).ln()) * 0.5).exp();
            let mid = s.walk().level_at_sigma_ve(c.sigma_ve_of_tau(tau_mid));
            return s.predict(&self.policy, mid);
        }
        // y' = y + (tau' - tau) g(y2, tau_mid), in the model's scaling.
        let mid = s.level();
        let (gx, gd) = c.g(&mid);
        let kg = c.c(&to) * (c.tau(&to) - c.tau(&from));
        let k = Finish {
            x: c.c(&to) / c.c(&from),
            x2: kg * gx,
            d: kg * gd,
            ..Finish::default()
        };
        s.finish(&self.policy, k, None)?;
        Ok(Outcome::done())
    }
}

/// Ancestral DPM-Solver-2: k-diffusion's `sample_dpm_2_ancestral`, diffusers'
/// `KDPM2AncestralDiscreteScheduler`. Each step is a DPM-2 step down to k-diffusion's
/// `sigma_down` (midpoint `sqrt(sigma sigma_down)`) followed by fresh noise `sigma_up` (see
/// [`EulerAncestral`](crate::EulerAncestral)); in k-diffusion's coordinates `x / alpha`,
/// `sigma / alpha` for every schedule family.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Dpm2Ancestral;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(15, Spacing::Linspace)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = Dpm2Ancestral::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.5);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a negative `eta` or `s_noise`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dpm2Ancestral {
    noise: Stochastic,
    split: AncestralSplit,
    policy: X0Policy,
}

impl Default for Dpm2Ancestral {
    fn default() -> Self {
        Dpm2Ancestral {
            noise: Stochastic::new(1.0),
            split: AncestralSplit::Auto,
            policy: X0Policy::default(),
        }
    }
}

impl Dpm2Ancestral {
    /// `eta = 1`, `s_noise = 1` (k-diffusion's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// How the next level's noise is split (see [`EulerAncestral`](crate::EulerAncestral)):
        /// by default k-diffusion's on VP and VE grids, ComfyUI's rectified-flow split on flow
        /// grids (`sample_dpm_2_ancestral_RF`, whose DPM-2 step is in flow sigmas).
        split: AncestralSplit,
    }

    noise_builders!();
    x0_builders!();

    /// The split and the coordinates of the DPM-2 step: k-diffusion's `x / alpha`,
    /// `sigma / alpha` for its split, the grid's own for the rectified-flow split.
    fn resolve(&self, family: ScheduleFamily) -> (AncestralSplit, Coords) {
        match (self.split, family) {
            (AncestralSplit::Auto, ScheduleFamily::Flow) | (AncestralSplit::RectifiedFlow, _) => {
                (AncestralSplit::RectifiedFlow, Coords::of(family))
            }
            _ => (AncestralSplit::KDiffusion, Coords { kappa: 0.0 }),
        }
    }
}

impl Method for Dpm2Ancestral {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.noise.check()?;
        self.policy.validate()
    }

    fn calls(&self, grid: &Grid) -> usize {
        let l = grid.levels();
        let (split, c) = self.resolve(grid.family());
        (0..Walk::effective_steps(grid))
            .map(|i| {
                let (_, ce) = ancestral_split(&l[i], &l[i + 1], self.noise.eta, split, grid.family());
                if ce == 0.0 || c.degenerate(&l[i]) { 1 } else { 2 }
            })
            .sum()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to, family) = (s.from(), s.to(), s.walk().family());
        let (split, c) = self.resolve(family);
        let (std, ce) = ancestral_split(&from, &to, self.noise.eta, split, family);
        if s.stage() == 0 {
            if ce == 0.0 || c.degenerate(&from) {
                s.euler_ancestral(&self.policy, self.noise, split)?;
                return Ok(Outcome::done());
            }
            // The midpoint between tau and tau_down (the level with k-diffusion sigma ce / alpha').
            let down = s.walk().level_at_sigma_ve(ce / to.alpha);
            let tau_mid = ((c.tau(&from).ln() + c.tau(&down).ln()) * 0.5).exp();
            let mid = s.walk().level_at_sigma_ve(c.sigma_ve_of_tau(tau_mid));
            return s.predict(&self.policy, mid);
        }
        // y_d = y + (tau_d - tau) g(y2, tau_mid), x' = (alpha' / alpha_d) c_d y_d + std z.
        let (mid, down) = (s.level(), s.walk().level_at_sigma_ve(ce / to.alpha));
        let (gx, gd) = c.g(&mid);
        let big_k = to.alpha * c.c(&down) / down.alpha;
        let kg = big_k * (c.tau(&down) - c.tau(&from));
        let k = Finish {
            x: big_k / c.c(&from),
            x2: kg * gx,
            d: kg * gd,
            g: 0.0,
            z: std * self.noise.s_noise,
        };
        s.finish(&self.policy, k, None)?;
        Ok(Outcome::done())
    }
}
