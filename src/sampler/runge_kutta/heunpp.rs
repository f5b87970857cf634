//! Heun++ (the `heunpp2` sampler of sd-webui-samplers-scheduler, as ComfyUI runs it).

use ndarray::Dimension;

use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::Coords;
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::options::{Churn, churn_builders};
use crate::sampler::core::state::X2;
use crate::sampler::core::walk::Walk;
use crate::sampler::{Input, Method, Outcome, Step};

/// Heun++ (ComfyUI's `heunpp2`, from the MIT-licensed sd-webui-samplers-scheduler): a
/// three-stage explicit method in the sigma-space coordinates `y`, `tau` (see
/// [`Heun`](crate::Heun)) that chains Euler predictors over the next two grid steps and averages
/// the three derivatives with weights tied to the grid's first sigma:
///
/// ```text
/// y2 = y + (tau1 - tau) d,   y3 = y2 + (tau2 - tau1) d2,     d_k = (y_k - x0(y_k)) / tau_k
/// y' = y + (tau1 - tau) (w1 d + w2 d2 + w3 d3),   w2 = tau1 / (3 tau_first), w3 = tau2 / (3 tau_first)
/// ```
///
/// (`w1 = 1 - w2 - w3`). The step before the last uses Heun's two stages with `w2 = tau1 / (2
/// tau_first)`, and the last is an Euler step: `3N - 3` model calls on `N >= 2` steps. The
/// weights are heuristic (not a consistent Runge–Kutta tableau for general grids: the method
/// is first order); it is here because ComfyUI offers it. EDM churn options as
/// [`Euler`](crate::Euler).
///
/// **Deliberate difference**: ComfyUI draws a churn noise at every step even when the churn is
/// off (and discards it); we draw only where churn applies.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::HeunPp2;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = HeunPp2::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for negative churn parameters.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct HeunPp2 {
    churn: Churn,
}

impl HeunPp2 {
    /// Heun++ without churn (ComfyUI's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    churn_builders!();
}

/// The x0 estimate of the first stage, then of the second.
const D0: usize = 1;
const D2: usize = 2;

/// The stages a step takes: 1 (last step, or a degenerate start), 2 (the step before the
/// last), 3.
fn stages(grid: &Grid, i: usize, end: usize) -> usize {
    let l = grid.levels();
    if i + 1 == end || Coords::of(grid.family()).degenerate(&l[i]) {
        1
    } else if i + 2 == end {
        2
    } else {
        3
    }
}

impl Method for HeunPp2 {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.churn.validate()
    }

    fn calls(&self, grid: &Grid) -> usize {
        let end = Walk::effective_steps(grid);
        (0..end).map(|i| stages(grid, i, end)).sum()
    }

    fn held(&self) -> usize {
        2
    }

    fn churn(&self) -> Option<&Churn> {
        Some(&self.churn)
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, l1, c) = (s.from(), s.to(), s.coords());
        let w = s.walk();
        let (i, end) = (w.step(), w.step() + w.remaining());
        let n = if i + 1 == end || c.degenerate(&from) {
            1
        } else if i + 2 == end {
            2
        } else {
            3
        };
        if n == 1 {
            s.euler(&Default::default())?;
            return Ok(Outcome::done());
        }
        let l2 = w.ahead(2).unwrap_or(l1);
        let first = c.tau(&w.level(0));
        let (c0, c1, c2) = (c.c(&from), c.c(&l1), c.c(&l2));
        let (t0, t1, t2) = (c.tau(&from), c.tau(&l1), c.tau(&l2));
        let (dt, dt2) = (t1 - t0, t2 - t1);
        match s.stage() {
            0 => {
                // x2 = c1 ((1 + dt / t0) y - (dt / t0) D0) at l1; D0 kept.
                let terms = [(Slot::X, c1 / c0 * (1.0 + dt / t0)), (Slot::X0, -c1 * dt / t0)];
                s.combo(&Combo::new(Slot::Buf(X2), &terms, Keep::X0), None)?;
                Ok(Outcome::stage(l1, Input::Buf(X2)).keep_buf(D0))
            }
            1 if n == 2 => {
                let w2 = t1 / (2.0 * first);
                let w1 = 1.0 - w2;
                let terms = [
                    (Slot::X, c1 / c0 * (1.0 + dt * w1 / t0)),
                    (Slot::Buf(D0), -c1 * dt * w1 / t0),
                    (Slot::Buf(X2), dt * w2 / t1),
                    (Slot::X0, -c1 * dt * w2 / t1),
                ];
                s.combo(&Combo::new(Slot::X, &terms, Keep::Raw), None)?;
                Ok(Outcome::done())
            }
            1 => {
                // x3 = c2 ((1 + dt2 / t1) y2 - (dt2 / t1) D2) at l2, over x2; D2 kept.
                let terms = [
                    (Slot::Buf(X2), c2 / c1 * (1.0 + dt2 / t1)),
                    (Slot::X0, -c2 * dt2 / t1),
                ];
                s.combo(&Combo::new(Slot::Buf(X2), &terms, Keep::X0), None)?;
                Ok(Outcome::stage(l2, Input::Buf(X2)).keep_buf(D2))
            }
            _ => {
                let (w2, w3) = (t1 / (3.0 * first), t2 / (3.0 * first));
                let w1 = 1.0 - w2 - w3;
                // y2 = (1 + dt / t0) y - (dt / t0) D0 (x2 was overwritten by x3).
                let (a, b) = (dt * w2 / t1, dt * w3 / t2);
                let terms = [
                    (Slot::X, c1 / c0 * (1.0 + dt * w1 / t0 + a * (1.0 + dt / t0))),
                    (Slot::Buf(D0), c1 * (-dt * w1 / t0 - a * dt / t0)),
                    (Slot::Buf(D2), -c1 * a),
                    (Slot::Buf(X2), c1 * b / c2),
                    (Slot::X0, -c1 * b),
                ];
                s.combo(&Combo::new(Slot::X, &terms, Keep::Raw), None)?;
                Ok(Outcome::done())
            }
        }
    }
}
