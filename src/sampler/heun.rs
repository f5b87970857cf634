//! Heun's method (Karras et al. 2022, Algorithm 2).

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::coefs::{Churn, Coords};
use super::kernel::{Affine, Clamps, affine_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

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
/// let grid = Grid::ve(&karras_sigmas(18, 0.002, 80.0, 7.0))?; // EDM: 35 model calls
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

    /// EDM's `S_churn` (0 = deterministic).
    pub fn s_churn(mut self, v: f64) -> Self {
        self.churn.s_churn = v;
        self
    }

    /// Lowest k-diffusion sigma at which churn applies.
    pub fn s_tmin(mut self, v: f64) -> Self {
        self.churn.s_tmin = v;
        self
    }

    /// Highest k-diffusion sigma at which churn applies.
    pub fn s_tmax(mut self, v: f64) -> Self {
        self.churn.s_tmax = v;
        self
    }

    /// EDM's `S_noise`.
    pub fn s_noise(mut self, v: f64) -> Self {
        self.churn.s_noise = v;
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
}

/// Model calls of a two-stage method that falls back to one call on steps to the clean level
/// and on degenerate (`c = 0`) starts.
pub(crate) fn two_stage_calls(grid: &Grid) -> usize {
    let coords = Coords {
        kappa: grid.family().kappa(),
    };
    let n = Walk::effective_steps(grid);
    let l = grid.levels();
    (0..n)
        .map(|i| {
            if l[i + 1].is_clean() || coords.degenerate(&l[i]) {
                1
            } else {
                2
            }
        })
        .sum()
}

impl Sampler for Heun {
    type State<F: Float, D: Dimension> = HeunState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        mut x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<HeunState<F, D>> {
        self.churn.validate()?;
        self.policy.validate()?;
        let walk = Walk::new(grid);
        let mut z = None;
        let hat = if walk.done() {
            walk.current()
        } else {
            self.churn.apply(&mut x, &walk, &mut z, noise)?
        };
        Ok(HeunState {
            coords: Coords {
                kappa: walk.family().kappa(),
            },
            x,
            x2: None,
            g1: None,
            second: false,
            walk,
            hat,
            cfg: *self,
            z,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        two_stage_calls(grid)
    }
}

/// The state of a [`Heun`] run.
#[derive(Clone, Debug)]
pub struct HeunState<F, D: Dimension> {
    coords: Coords,
    x: Array<F, D>,
    x2: Option<Array<F, D>>,
    g1: Option<Array<F, D>>,
    second: bool,
    walk: Walk,
    hat: NoiseLevel,
    cfg: Heun,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> HeunState<F, D> {
    fn finish_step<N: NoiseSource<F> + ?Sized>(&mut self, noise: &mut N) -> Result<()> {
        self.walk.next();
        self.second = false;
        self.hat = if self.walk.done() {
            self.walk.current()
        } else {
            self.cfg
                .churn
                .apply(&mut self.x, &self.walk, &mut self.z, noise)?
        };
        Ok(())
    }
}

impl<F: Float, D: Dimension> SamplerState<F, D> for HeunState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        if self.walk.done() {
            return None;
        }
        Some(if self.second {
            Request {
                step: self.walk.step(),
                level: self.walk.to(),
                x: self.x2.as_ref().map(|a| a.view()).unwrap_or(self.x.view()),
            }
        } else {
            Request {
                step: self.walk.step(),
                level: self.hat,
                x: self.x.view(),
            }
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Option<Array<F, D>>> {
        let (from, to) = (self.hat, self.walk.to());
        if !self.second {
            if to.is_clean() || self.coords.degenerate(&from) {
                // Euler (= DDIM) step.
                let r = to.sigma / from.sigma;
                let k = Affine {
                    clamped: to.alpha - from.alpha * r,
                    raw: 0.0,
                    x: r,
                    z: 0.0,
                };
                let clamps = Clamps::for_policy(&mut est, &self.x, &self.cfg.policy, &mut self.scratch)?;
                let ok = affine_step(&mut self.x, &est, &clamps, k, None);
                attribute(ok, &est, None)?;
                self.finish_step(noise)?;
                return Ok(Some(est.into_buffer()));
            }
            // Predictor: g1 into the output buffer, y2 (as x2) into its own buffer.
            let clamp = est.prepare(&self.x, &self.cfg.policy, &mut self.scratch)?;
            let (cx, co) = (est.cx, est.co);
            let (gx, gd) = self.coords.g(&from);
            let (gx, gd) = (F::cast(gx), F::cast(gd));
            let (ka, ks) = (F::cast(to.alpha), F::cast(to.sigma));
            let (ex, ed) = (F::cast(1.0 / from.sigma), F::cast(-from.alpha / from.sigma));
            let x2 = self.x2.get_or_insert_with(|| Array::zeros(self.x.raw_dim()));
            // Without a clamp, d = cx x + co o folds into the coefficients (in f64).
            let (fx, fo) = (gx.as_f64() + gd.as_f64() * cx.as_f64(), gd.as_f64() * co.as_f64());
            let kd = to.alpha - to.sigma * from.alpha / from.sigma;
            let (yx, yo) = (kd * cx.as_f64() + to.sigma / from.sigma, kd * co.as_f64());
            if clamp.is_none() && yo != 0.0 {
                let (fx, fo, yx, yo) = (F::cast(fx), F::cast(fo), F::cast(yx), F::cast(yo));
                let ok = fold_finite!(Zip::from(&mut est.out).and(&self.x).and(x2), |o, &x, x2| {
                    let o0 = *o;
                    *o = fx * x + fo * o0;
                    *x2 = yx * x + yo * o0;
                    *x2
                });
                attribute(ok, &est, None)?;
                self.second = true;
                return Ok(self.g1.replace(est.into_buffer()));
            }
            let ok = fold_finite!(clamp = clamp; Zip::from(&mut est.out).and(&self.x).and(x2), |o, &x, x2| {
                let raw = cx * x + co * *o;
                let d = clamp.apply(raw);
                *o = clamp.keep(gx * x + gd * d, raw);
                *x2 = ka * d + ks * (ex * x + ed * d);
                *x2 + raw * F::zero()
            });
            attribute(ok, &est, None)?;
            self.second = true;
            return Ok(self.g1.replace(est.into_buffer()));
        }
        // Corrector.
        let x2 = self.x2.as_ref().ok_or(Error::Finished)?;
        let g1 = self.g1.as_ref().ok_or(Error::Finished)?;
        let clamp = est.prepare(x2, &self.cfg.policy, &mut self.scratch)?;
        let (cx, co) = (est.cx, est.co);
        let c = &self.coords;
        let (gx, gd) = c.g(&to);
        let (gx, gd) = (F::cast(gx), F::cast(gd));
        let kx = F::cast(c.c(&to) / c.c(&from));
        let kg = F::cast(c.c(&to) * (c.tau(&to) - c.tau(&from)) / 2.0);
        let (k2x, k2o) = (
            kg.as_f64() * (gx.as_f64() + gd.as_f64() * cx.as_f64()),
            kg.as_f64() * gd.as_f64() * co.as_f64(),
        );
        if clamp.is_none() && k2o != 0.0 {
            // Without a clamp, g2 = gx x2 + gd (cx x2 + co o) folds into the coefficients.
            let (k2x, k2o) = (F::cast(k2x), F::cast(k2o));
            let ok = fold_finite!(
                Zip::from(&mut self.x).and(g1).and(x2).and(&est.out),
                |x, &g1, &x2, &o| {
                    *x = kx * *x + kg * g1 + k2x * x2 + k2o * o;
                    *x
                }
            );
            attribute(ok, &est, None)?;
            self.finish_step(noise)?;
            return Ok(Some(est.into_buffer()));
        }
        let ok = fold_finite!(clamp = clamp;
            Zip::from(&mut self.x).and(g1).and(x2).and(&est.out),
            |x, &g1, &x2, &o| {
                let raw = cx * x2 + co * o;
                let d = clamp.apply(raw);
                let g2 = gx * x2 + gd * d;
                *x = kx * *x + kg * (g1 + g2);
                *x + raw * F::zero()
            }
        );
        attribute(ok, &est, None)?;
        self.finish_step(noise)?;
        Ok(Some(est.into_buffer()))
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.hat
    }

    fn into_sample(self) -> Array<F, D> {
        self.x
    }

    fn buffers_held(&self) -> usize {
        1
    }
}
