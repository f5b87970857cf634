//! A multistep exponential integrator whose per-step coefficients are fitted on the model
//! ([`tune::tune_solver`](crate::tune::tune_solver)).

use ndarray::Dimension;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::sampler::core::kernel::{Lin, Store};
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

/// A multistep exponential integrator with free per-step coefficients (data prediction, the
/// form of DPM-Solver++): in k-diffusion's coordinates `y = x / alpha`, `tau = sigma / alpha`,
///
/// ```text
/// y' = (tau' / tau) y + (1 - tau' / tau) D,    D = x0_0 + a_i (x0_0 - x0_1) + b_i (x0_1 - x0_2)
/// ```
///
/// with `x0_0, x0_1, x0_2` the model's newest x0 estimates (the older ones left out while the
/// history is shorter). `a_i = b_i = 0` everywhere is DDIM; `a_i = 1 / (2 r_i)`, `b_i = 0` is
/// DPM-Solver++(2M) ([`FittedMultistep::dpmpp_2m`]). [`tune::tune_solver`](crate::tune::tune_solver)
/// fits `(a_i, b_i)` and the grid together on the user's model for a call budget, in the spirit
/// of bespoke solvers (Shaul et al. 2023) and learned solver coefficients (AMED, Zhou et al.
/// 2024): the coefficients belong to one grid and one model, and are data (they save and load as
/// the numbers [`coefficients`](Self::coefficients) returns).
///
/// One model call per step. Starting a run on a grid with another number of steps than
/// coefficients is an error (before any model call).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::FittedMultistep;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(8, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((4, 1), &mut SeededNoise::new(0))?;
/// // With DPM-Solver++(2M)'s coefficients it is DPM-Solver++(2M) (to rounding).
/// let a = FittedMultistep::dpmpp_2m(&grid).sample(&mut model, x.clone(), &grid, &mut SeededNoise::new(1))?;
/// let b = DpmSolver::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((&a - &b).iter().all(|d| d.abs() < 1e-12));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] (`"coefficients"`) for a non-finite coefficient or a grid whose
/// number of steps differs from the coefficients'; during a run as every sampler.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FittedMultistep {
    coefs: Vec<[f64; 2]>,
}

impl FittedMultistep {
    /// The solver with coefficients `(a_i, b_i)` for steps `i = 0, 1, ...` (`a_0`, `b_0`, `b_1`
    /// multiply history that does not exist yet and are ignored).
    pub fn new(coefficients: Vec<[f64; 2]>) -> Self {
        FittedMultistep { coefs: coefficients }
    }

    /// DPM-Solver++(2M)'s coefficients on `grid` (first order on the first step and on a step to
    /// the clean level, as diffusers' `lower_order_final`): the starting point of a fit.
    pub fn dpmpp_2m(grid: &Grid) -> Self {
        let l = grid.levels();
        let lambda = |i: usize| (l[i].alpha / l[i].sigma).ln();
        let coefs = (0..grid.steps())
            .map(|i| {
                if i == 0 || l[i + 1].is_clean() || l[i - 1].alpha == 0.0 {
                    return [0.0, 0.0];
                }
                let (h, h_prev) = (lambda(i + 1) - lambda(i), lambda(i) - lambda(i - 1));
                [h / (2.0 * h_prev), 0.0]
            })
            .collect();
        FittedMultistep { coefs }
    }

    /// The coefficients `(a_i, b_i)`, one pair per step.
    pub fn coefficients(&self) -> &[[f64; 2]] {
        &self.coefs
    }
}

impl Method for FittedMultistep {
    type Vars = ();

    fn check(&self) -> Result<()> {
        if let Some(v) = self.coefs.iter().flatten().find(|v| !v.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "coefficients",
                value: *v,
                reason: "must be finite",
            });
        }
        if self.coefs.is_empty() {
            return Err(Error::InvalidParameter {
                name: "coefficients",
                value: 0.0,
                reason: "one pair per step is needed",
            });
        }
        Ok(())
    }

    fn check_grid(&self, grid: &Grid) -> Result<()> {
        if grid.steps() == self.coefs.len() {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "coefficients",
                value: self.coefs.len() as f64,
                reason: "the solver was fitted for another number of steps than the grid has",
            })
        }
    }

    fn history(&self) -> usize {
        2
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        let i = s.core.steps_done;
        // History usable: entries before a level with alpha = 0 (no finite x0 there).
        let hist = &s.core.hist;
        let mut n = 0;
        while n < 2 && n < hist.len() && hist.level(n).alpha > 0.0 {
            n += 1;
        }
        if from.alpha == 0.0 {
            n = 0;
        }
        let [a, b] = self.coefs[i];
        let (a, b) = (if n >= 1 { a } else { 0.0 }, if n >= 2 { b } else { 0.0 });
        // x' = (sigma'/sigma) x + (alpha' - sigma' alpha / sigma) D.
        let kd = to.alpha - to.sigma * from.alpha / from.sigma;
        let k = Lin {
            x: to.sigma / from.sigma,
            d: kd * (1.0 + a),
            h: [kd * (b - a), -kd * b, 0.0],
            z: 0.0,
        };
        s.lin(&X0Policy::default(), k, Store::X0, n)?;
        Ok(Outcome::done().keep_history(from))
    }
}
