//! Heun's method (Karras et al. 2022, Algorithm 2).

use ndarray::{Dimension, Zip};

use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::Coords;
use crate::sampler::core::kernel::Finish;
use crate::sampler::core::options::{Churn, churn_builders, x0_builders};
use crate::sampler::core::state::{X2, buf};
use crate::sampler::core::walk::Walk;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Core, Input, Method, Outcome, Step};

/// Heun's second-order method (EDM Algorithm 2, with optional churn): k-diffusion's
/// `sample_heun`, diffusers' `HeunDiscreteScheduler` and, on flow grids,
/// `FlowMatchHeunDiscreteScheduler`.
///
/// In the ODE coordinates `y = x / c`, `tau = sigma / c` (k-diffusion's `x / alpha`,
/// `sigma / alpha` for VP and VE grids; `x`, `sigma` for rectified flow, see
/// [`ScheduleFamily`](crate::ScheduleFamily)), with `g = dy/dtau` from the x0 estimate:
///
/// ```text
/// y2 = y + (tau' - tau) g(y, tau)                       (Euler predictor = DDIM)
/// y' = y + (tau' - tau) (g(y, tau) + g(y2, tau')) / 2   (trapezoid corrector)
/// ```
///
/// Two model calls per step, one on a step to the clean level (an Euler step, as k-diffusion
/// and diffusers do): `2N - 1` in all on a grid ending at the clean level. A step from the
/// pure-noise level of a zero-terminal-SNR VP schedule (where `tau` is infinite) is a DDIM step.
/// Churn options as [`Euler`](crate::Euler).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{karras_sigmas, Heun};
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let grid = Grid::ve(&karras_sigmas(18, 0.002, 80.0, 7.0)?)?; // EDM: 35 model calls
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?.with_prediction(Prediction::Sample);
/// assert_eq!(Heun::new().model_calls(&grid), 35);
/// let x = Array2::<f64>::from_elem((1, 1), 40.0);
/// let out = Heun::new().sample(&mut model, x, &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`Euler`](crate::Euler).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Heun {
    churn: Churn,
    policy: X0Policy,
}

impl Heun {
    /// Deterministic Heun (no churn).
    pub fn new() -> Self {
        Self::default()
    }

    churn_builders!();
    x0_builders!();
}

/// Model calls of a two-stage method that falls back to one call on steps to the clean level
/// and on degenerate (`c = 0`) starts.
pub(crate) fn two_stage_calls(grid: &Grid) -> usize {
    let coords = Coords::of(grid.family());
    let l = grid.levels();
    (0..Walk::effective_steps(grid))
        .map(|i| {
            if l[i + 1].is_clean() || coords.degenerate(&l[i]) {
                1
            } else {
                2
            }
        })
        .sum()
}

/// The first derivative (the predictor's point `y2` is the shared working buffer `X2`).
const G1: usize = 1;

impl Method for Heun {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.churn.validate()?;
        self.policy.validate()
    }

    fn calls(&self, grid: &Grid) -> usize {
        two_stage_calls(grid)
    }

    fn held(&self) -> usize {
        1
    }

    fn churn(&self) -> Option<&Churn> {
        Some(&self.churn)
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to, c, stage) = (s.from(), s.to(), s.coords(), s.stage());
        if stage == 0 && (to.is_clean() || c.degenerate(&from)) {
            s.euler(&self.policy)?; // Euler (= DDIM) step
            return Ok(Outcome::done());
        }
        if stage == 0 {
            let clamp = s.clamp(&self.policy)?;
            let (cx, co) = s.conv();
            let f = F::cast;
            let Core { x, bufs, .. } = &mut *s.core;
            // Predictor: g1 into the output buffer (kept as G1), y2 (as x2) into X2.
            let (gx, gd) = c.g(&from);
            let x2 = buf(&mut bufs[X2], x);
            let kd = to.alpha - to.sigma * from.alpha / from.sigma;
            // Without a clamp, d = cx x + co o folds into the coefficients (in f64).
            let (fx, fo) = (gx + gd * cx.as_f64(), gd * co.as_f64());
            let (yx, yo) = (kd * cx.as_f64() + to.sigma / from.sigma, kd * co.as_f64());
            let ok = if clamp.is_none() && yo != 0.0 {
                let (fx, fo, yx, yo) = (f(fx), f(fo), f(yx), f(yo));
                fold_finite!(Zip::from(&mut s.est.out).and(&*x).and(x2), |o, &x, x2| {
                    let o0 = *o;
                    *o = fx * x + fo * o0;
                    *x2 = yx * x + yo * o0;
                    *x2
                })
            } else {
                let (gx, gd, ka, ks) = (f(gx), f(gd), f(to.alpha), f(to.sigma));
                let (ex, ed) = (f(1.0 / from.sigma), f(-from.alpha / from.sigma));
                fold_finite!(clamp = clamp; Zip::from(&mut s.est.out).and(&*x).and(x2), |o, &x, x2| {
                    let raw = cx * x + co * *o;
                    let d = clamp.apply(raw);
                    *o = clamp.keep(gx * x + gd * d, raw);
                    *x2 = ka * d + ks * (ex * x + ed * d);
                    clamp.keep(*x2, raw)
                })
            };
            s.check(ok)?;
            return Ok(Outcome::stage(to, Input::Buf(X2)).keep_buf(G1));
        }
        // Corrector: y' = y + (tau' - tau) (g1 + g2) / 2, with g2 at (x2, tau').
        let (gx, gd) = c.g(&to);
        let kg = c.c(&to) * (c.tau(&to) - c.tau(&from)) / 2.0;
        let k = Finish {
            x: c.c(&to) / c.c(&from),
            x2: kg * gx,
            d: kg * gd,
            g: kg,
            z: 0.0,
        };
        s.finish(&self.policy, k, Some(G1))?;
        Ok(Outcome::done())
    }
}
