//! DPM-Solver++ CFG++ (ComfyUI's `dpmpp_2s_ancestral_cfg_pp`, `dpmpp_2m_cfg_pp`).

use ndarray::Dimension;

use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::{Coords, get_ancestral_step};
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::options::{Stochastic, noise_builders};
use crate::sampler::core::state::X2;
use crate::sampler::core::walk::Walk;
use crate::sampler::{Input, Method, Outcome, Step};

/// The first call's guided x0 estimate, kept for the second stage.
const D0: usize = 1;

/// DPM-Solver++(2S) ancestral CFG++[^cfgpp] (ComfyUI's `dpmpp_2s_ancestral_cfg_pp`): in the
/// sigma-space coordinates `y = x / c`, `tau` (see the [module](crate::sampler) table), with
/// `(tau_d, tau_u)` the ancestral split of `tau -> tau'`, `r = tau_d / tau` and the midpoint
/// `tau_m = sqrt(tau tau_d)`:
///
/// ```text
/// y_m = sqrt(r) (y + x0_g - x0_u) + (1 - sqrt(r)) x0_g                 (model call at tau_m)
/// y'  = r (y + x0_g - x0_u(y_m)) + (1 - r) x0_g(y_m) + s_noise tau_u z
/// ```
///
/// where the last step uses the *midpoint's* unconditional estimate `x0_u(y_m)` with the first
/// call's guided `x0_g` — ComfyUI's code does (its hook keeps the latest unconditional output),
/// so even without guidance (`x0_u = x0_g`) this is not [`DpmPp2sAncestral`](crate::DpmPp2sAncestral)
/// (about 0.04 apart over a Stable Diffusion run). The step to the clean level returns `x0_g`.
/// On flow grids the same formulas apply to `x` and the flow sigma (ComfyUI's version has no
/// rectified-flow branch). Two model calls per step, one on the last.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{DpmPp2sAncestralCfgPp, Guidance};
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
/// let cond = GaussianMixture::gaussian(vec![1.0], vec![0.1])?;
/// let uncond = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
/// let mut guided = Guidance::new(cond, uncond, 1.5);
/// let x: ndarray::Array2<f64> = grid.initial_sample((64, 1), &mut SeededNoise::new(0))?;
/// let sampler = DpmPp2sAncestralCfgPp::new();
/// assert_eq!(sampler.model_calls(&grid), 19);
/// let out = sampler.sample(&mut guided, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.iter().all(|v| v.is_finite()));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a negative `eta` or `s_noise`.
///
/// [^cfgpp]: H. Chung et al., *CFG++*, arXiv:2406.08070.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmPp2sAncestralCfgPp {
    noise: Stochastic,
}

impl Default for DpmPp2sAncestralCfgPp {
    fn default() -> Self {
        DpmPp2sAncestralCfgPp {
            noise: Stochastic::new(1.0),
        }
    }
}

impl DpmPp2sAncestralCfgPp {
    /// `eta = 1`, `s_noise = 1` (ComfyUI's).
    pub fn new() -> Self {
        Self::default()
    }

    noise_builders!();
}

impl Method for DpmPp2sAncestralCfgPp {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.noise.check()
    }

    fn calls(&self, grid: &Grid) -> usize {
        let (l, c) = (grid.levels(), Coords::of(grid.family()));
        (0..Walk::effective_steps(grid))
            .map(|i| {
                let (down, _) = get_ancestral_step(c.tau(&l[i]), c.tau(&l[i + 1]), self.noise.eta);
                if down == 0.0 || c.degenerate(&l[i]) { 1 } else { 2 }
            })
            .sum()
    }

    fn held(&self) -> usize {
        1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to, c) = (s.from(), s.to(), s.coords());
        let (tau, tau_next) = (c.tau(&from), c.tau(&to));
        let (down, up) = get_ancestral_step(tau, tau_next, self.noise.eta);
        let (cf, ct) = (c.c(&from), c.c(&to));
        let noise = ct * up * self.noise.s_noise;
        let noisy = tau_next > 0.0 && self.noise.s_noise != 0.0;
        if s.stage() == 0 && (down == 0.0 || c.degenerate(&from)) {
            // The step to the clean level (x0_g), or from pure noise: the Euler CFG++ step.
            let r = if c.degenerate(&from) { 0.0 } else { down / tau };
            let terms = [
                (Slot::X, ct * r / cf),
                (Slot::X0, ct),
                (Slot::X0Uncond, -ct * r),
                (Slot::Noise, noise),
            ];
            let terms = if noisy { &terms[..] } else { &terms[..3] };
            s.combo(
                &Combo::new(Slot::X, terms, Keep::Raw),
                noisy.then_some((from, to)),
            )?;
            return Ok(Outcome::done());
        }
        let t = -tau.ln();
        let h = -down.ln() - t;
        if s.stage() == 0 {
            let tm = (-(t + 0.5 * h)).exp();
            let mid = s.walk().level_at_sigma_ve(c.sigma_ve_of_tau(tm));
            let (rm, cm) = (tm / tau, c.c(&mid));
            let terms = [
                (Slot::X, cm * rm / cf),
                (Slot::X0, cm),
                (Slot::X0Uncond, -cm * rm),
            ];
            s.combo(&Combo::new(Slot::Buf(X2), &terms, Keep::X0), None)?;
            return Ok(Outcome::stage(mid, Input::Buf(X2)).keep_buf(D0));
        }
        let r = down / tau;
        let terms = [
            (Slot::X, ct * r / cf),
            (Slot::Buf(D0), ct * r),
            (Slot::X0Uncond, -ct * r),
            (Slot::X0, -ct * (-h).exp_m1()),
            (Slot::Noise, noise),
        ];
        let terms = if noisy { &terms[..] } else { &terms[..4] };
        s.combo(
            &Combo::new(Slot::X, terms, Keep::Raw),
            noisy.then_some((from, to)),
        )?;
        Ok(Outcome::done())
    }
}

/// DPM-Solver++(2M) CFG++[^cfgpp] (ComfyUI's `dpmpp_2m_cfg_pp`): in the sigma-space coordinates
/// `y = x / c`, `tau`, with `h = ln(tau / tau')` and `r` the ratio of the previous step's `h`
/// to this one's,
///
/// ```text
/// y' = x0_g + e^{-h} (y - x0_u) + (1 - e^{-h}) / (2 r) (x0_g - x0_u,prev)
/// ```
///
/// the correction pairing the guided estimate with the *previous step's unconditional* one, as
/// ComfyUI's code does (the plain 2M uses `x0 - x0_prev`); the first step has no correction and
/// the step to the clean level returns `x0_g`. One model call per step.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{DpmPp2mCfgPp, Guidance};
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
/// let mut guided = Guidance::new(
///     GaussianMixture::gaussian(vec![1.0], vec![0.1])?,
///     GaussianMixture::gaussian(vec![0.0], vec![1.0])?,
///     1.5,
/// );
/// let x: ndarray::Array2<f64> = grid.initial_sample((64, 1), &mut SeededNoise::new(0))?;
/// let out = DpmPp2mCfgPp::new().sample(&mut guided, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.iter().all(|v| v.is_finite()));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// [^cfgpp]: H. Chung et al., *CFG++*, arXiv:2406.08070.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DpmPp2mCfgPp;

impl DpmPp2mCfgPp {
    /// ComfyUI's `dpmpp_2m_cfg_pp`.
    pub fn new() -> Self {
        DpmPp2mCfgPp
    }
}

impl Method for DpmPp2mCfgPp {
    type Vars = ();

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn history(&self) -> usize {
        1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to, c) = (s.from(), s.to(), s.coords());
        let (cf, ct) = (c.c(&from), c.c(&to));
        if c.degenerate(&from) {
            // From pure noise: x' = alpha' x0_g + sigma' x / sigma (eps_u = x / sigma there).
            let terms = [(Slot::X, to.sigma / from.sigma), (Slot::X0, to.alpha)];
            s.combo(&Combo::new(Slot::X, &terms, Keep::X0_UNCOND), None)?;
            return Ok(Outcome::done().keep_history(from));
        }
        let (tau, tau_next) = (c.tau(&from), c.tau(&to));
        let t = -tau.ln();
        let h = -tau_next.ln() - t;
        let e = (-h).exp();
        let k = if s.core.hist.len() == 0 || to.is_clean() {
            0.0
        } else {
            let t_prev = -c.tau(&s.core.hist.level(0)).ln();
            let r = (t - t_prev) / h;
            -(-h).exp_m1() / (2.0 * r)
        };
        let terms = [
            (Slot::X, ct * e / cf),
            (Slot::X0, ct * (1.0 + k)),
            (Slot::X0Uncond, -ct * e),
            (Slot::Hist(0), -ct * k),
        ];
        let n = if k == 0.0 { 3 } else { 4 };
        s.combo(&Combo::new(Slot::X, &terms[..n], Keep::X0_UNCOND), None)?;
        Ok(Outcome::done().keep_history(from))
    }
}
