//! Pseudo numerical methods (Liu et al. 2022): PNDM / PLMS, and iPNDM.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::history::History;
use super::kernel::{Affine, Clamps, Lin, Store, affine_step, lin_step};
use super::x0::Clamp;
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

/// Adams–Bashforth weights on equally spaced steps (newest first), orders 1–4.
const AB: [[f64; 4]; 4] = [
    [1.0, 0.0, 0.0, 0.0],
    [1.5, -0.5, 0.0, 0.0],
    [23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0, 0.0],
    [55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
];

/// The transfer `phi(x, a -> b, eps) = (alpha_b / alpha_a) x + (sigma_b - alpha_b sigma_a /
/// alpha_a) eps` (PNDM's eq. 9, the DDIM step with a given noise estimate), as `(kx, ke)`.
fn transfer(a: &NoiseLevel, b: &NoiseLevel) -> (f64, f64) {
    let r = b.alpha / a.alpha;
    (r, b.sigma - r * a.sigma)
}

/// PNDM[^pndm], diffusers' `PNDMScheduler`: pseudo linear multistep on the noise estimate with
/// the DDIM transfer `x' = (alpha'/alpha) x + (sigma' - alpha' sigma / alpha) eps_comb`, where
/// `eps_comb` is the fourth-order Adams–Bashforth combination `(55 e_k - 59 e_{k-1} + 37
/// e_{k-2} - 9 e_{k-3}) / 24` once four noise estimates exist.
///
/// The warm-up is diffusers': with [`skip_prk_steps`](Self::skip_prk_steps) (PLMS, what Stable
/// Diffusion uses) the first step takes a second model call at the predicted point and averages
/// the two noise estimates, then orders 2 and 3 follow (`N + 1` model calls in all); otherwise
/// the first three steps are pseudo Runge–Kutta (four calls each, at the step's start, twice at
/// its midpoint timestep, and at its end).
///
/// **Deliberate differences from diffusers**: the next level is the grid's (diffusers' PNDM
/// steps by the fixed stride `T // N`, as its DDIM does); noise estimates are converted at their
/// own level before being combined (diffusers combines raw v-predictions and converts the
/// combination at the current level); with fewer than four steps and Runge–Kutta warm-up every
/// step is a Runge–Kutta step (diffusers stops before the last level), except a step to the
/// clean level, which is a DDIM step.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Pndm;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(20, Spacing::Leading { offset: 1 })?;
/// let plms = Pndm::new().skip_prk_steps(true);
/// assert_eq!(plms.model_calls(&grid), 21);
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = plms.sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// During a run, the errors of [`Sampler::sample`].
///
/// [^pndm]: L. Liu, Y. Ren, Z. Lin, Z. Zhao, *Pseudo Numerical Methods for Diffusion Models on
///     Manifolds*, ICLR 2022, arXiv:2202.09778.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Pndm {
    skip_prk_steps: bool,
}

impl Pndm {
    /// PNDM with Runge–Kutta warm-up (diffusers' default `skip_prk_steps = False`).
    pub fn new() -> Self {
        Self::default()
    }

    /// PLMS: skip the Runge–Kutta warm-up.
    pub fn skip_prk_steps(mut self, yes: bool) -> Self {
        self.skip_prk_steps = yes;
        self
    }
}

/// iPNDM (Zhang & Chen 2023): Adams–Bashforth on the noise estimate with the DDIM transfer,
/// warming up with lower orders instead of extra model calls (one call per step). The
/// strongest training-free solver at very low NFE in the zju-pi/diff-solvers benchmark.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{karras_sigmas, Ipndm};
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let grid = Grid::ve(&karras_sigmas(10, 0.002, 80.0, 7.0))?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?.with_prediction(Prediction::Sample);
/// let out = Ipndm::new().sample(&mut model, Array2::<f64>::from_elem((1, 1), 30.0), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for an order outside 1–4.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ipndm {
    order: usize,
}

impl Default for Ipndm {
    fn default() -> Self {
        Ipndm { order: 4 }
    }
}

impl Ipndm {
    /// iPNDM of order 4.
    pub fn new() -> Self {
        Self::default()
    }

    /// The maximum order, 1 to 4.
    pub fn order(mut self, order: usize) -> Self {
        self.order = order;
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Warmup {
    /// iPNDM: lower Adams–Bashforth orders.
    LowerOrder,
    /// PLMS: a second call on the first step.
    Plms,
    /// PNDM: Runge–Kutta for the first three steps.
    RungeKutta,
}

/// Where a step is: one call (multistep), the PLMS warm-up's second call, or a Runge–Kutta
/// stage (1–3: the call being waited for).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Start,
    PlmsSecond,
    Rk(u8),
}

/// Model calls of a run, following `advance`'s rules step by step.
fn pndm_calls(grid: &Grid, warmup: Warmup) -> usize {
    let n = Walk::effective_steps(grid);
    let levels = grid.levels();
    let mut calls = 0;
    for (i, from) in levels.iter().enumerate().take(n) {
        calls += if from.alpha == 0.0 {
            1
        } else if warmup == Warmup::RungeKutta && (i < 3 || n < 4) && !levels[i + 1].is_clean() {
            4
        } else if warmup == Warmup::Plms && i == 0 && i + 1 != n {
            2
        } else {
            1
        };
    }
    calls
}

impl Sampler for Pndm {
    type State<F: Float, D: Dimension> = PndmState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<PndmState<F, D>> {
        let warmup = if self.skip_prk_steps {
            Warmup::Plms
        } else {
            Warmup::RungeKutta
        };
        Ok(PndmState::new(x, grid, warmup, 4))
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        pndm_calls(
            grid,
            if self.skip_prk_steps {
                Warmup::Plms
            } else {
                Warmup::RungeKutta
            },
        )
    }
}

impl Sampler for Ipndm {
    type State<F: Float, D: Dimension> = PndmState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<PndmState<F, D>> {
        if !(1..=4).contains(&self.order) {
            return Err(Error::InvalidParameter {
                name: "order",
                value: self.order as f64,
                reason: "iPNDM supports orders 1 to 4",
            });
        }
        Ok(PndmState::new(x, grid, Warmup::LowerOrder, self.order))
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        pndm_calls(grid, Warmup::LowerOrder)
    }
}

/// The state of a [`Pndm`] or [`Ipndm`] run.
#[derive(Clone, Debug)]
pub struct PndmState<F, D: Dimension> {
    x: Array<F, D>,
    /// The evaluation point of warm-up stages.
    eval: Option<Array<F, D>>,
    /// Runge–Kutta accumulator of noise estimates.
    acc: Option<Array<F, D>>,
    stage: Stage,
    mid: NoiseLevel,
    walk: Walk,
    ets: History<F, D>,
    warmup: Warmup,
    order: usize,
    done: usize,
}

impl<F: Float, D: Dimension> PndmState<F, D> {
    fn new(x: Array<F, D>, grid: &Grid, warmup: Warmup, order: usize) -> Self {
        PndmState {
            x,
            eval: None,
            acc: None,
            stage: Stage::Start,
            mid: NoiseLevel::CLEAN,
            walk: Walk::new(grid),
            ets: History::new(3),
            warmup,
            order,
            done: 0,
        }
    }

    /// The Runge–Kutta midpoint level of the current step: diffusers' `t - (stride // 2)` on
    /// integer timesteps.
    fn midpoint(&self) -> NoiseLevel {
        let (a, b) = (self.walk.from(), self.walk.to());
        let d = a.t - b.t;
        let t = if a.t.fract() == 0.0 && b.t.fract() == 0.0 && !b.is_clean() {
            a.t - (d / 2.0).floor()
        } else if b.is_clean() {
            // To the clean level: halfway in log-sigma.
            return self.walk.level_at_sigma_ve(a.sigma_ve() * 0.5);
        } else {
            a.t - d / 2.0
        };
        self.walk.level_at_t(t)
    }

    /// A Runge–Kutta warm-up step: one of the first three (or every step of a grid shorter than
    /// four), but never a step to the clean level, where the noise estimate of its last stage
    /// would be undefined.
    fn rk_step(&self) -> bool {
        self.warmup == Warmup::RungeKutta
            && (self.walk.step() < 3 || self.walk.step() + self.walk.remaining() < 4)
            && !self.walk.to().is_clean()
    }
}

/// `eps` from the model output at `level` for input `x`, into `out` (clamp-free: PNDM has no
/// x0 processing).
fn eps_into<F: Float, D: Dimension>(est: &mut Estimate<F, D>, x: &Array<F, D>, level: &NoiseLevel) -> bool {
    let (cx, co) = (est.cx, est.co);
    let (ex, ed) = (F::cast(1.0 / level.sigma), F::cast(-level.alpha / level.sigma));
    fold_finite!(Zip::from(&mut est.out).and(x), |o, &x| {
        let d = cx * x + co * *o;
        *o = ex * x + ed * d;
        *o
    })
}

impl<F: Float, D: Dimension> SamplerState<F, D> for PndmState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        if self.walk.done() {
            return None;
        }
        let step = self.walk.step();
        let eval = || self.eval.as_ref().map_or(self.x.view(), |e| e.view());
        Some(match self.stage {
            Stage::Start => Request {
                step,
                level: self.walk.from(),
                x: self.x.view(),
            },
            Stage::PlmsSecond => Request {
                step,
                level: self.walk.to(),
                x: eval(),
            },
            Stage::Rk(1) | Stage::Rk(2) => Request {
                step,
                level: self.mid,
                x: eval(),
            },
            Stage::Rk(_) => Request {
                step,
                level: self.walk.to(),
                x: eval(),
            },
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        _noise: &mut N,
    ) -> Result<Option<Array<F, D>>> {
        let (from, to) = (self.walk.from(), self.walk.to());
        let f = F::cast;
        match self.stage {
            Stage::Start if from.alpha == 0.0 => {
                // From pure noise: a DDIM step; the noise estimate there does not join the history.
                let r = to.sigma / from.sigma;
                let k = Affine {
                    clamped: to.alpha - from.alpha * r,
                    raw: 0.0,
                    x: r,
                    z: 0.0,
                };
                let ok = affine_step(&mut self.x, &est, &Clamps::Uniform(Clamp::none()), k, None);
                attribute(ok, &est, None)?;
            }
            Stage::Start
                if self.rk_step()
                    || (self.warmup == Warmup::Plms && self.done == 0 && !self.walk.is_last()) =>
            {
                // First call of a warm-up step: eps into the output buffer, first predictor point.
                let ok = eps_into(&mut est, &self.x, &from);
                attribute(ok, &est, None)?;
                let target = if self.warmup == Warmup::Plms {
                    to
                } else {
                    self.midpoint()
                };
                self.mid = target;
                let (kx, ke) = transfer(&from, &target);
                let (kx, ke) = (f(kx), f(ke));
                let eval = self.eval.get_or_insert_with(|| Array::zeros(self.x.raw_dim()));
                Zip::from(eval)
                    .and(&self.x)
                    .and(&est.out)
                    .for_each(|e, &x, &o| *e = kx * x + ke * o);
                if self.warmup == Warmup::RungeKutta {
                    let acc = self.acc.get_or_insert_with(|| Array::zeros(self.x.raw_dim()));
                    let sixth = f(1.0 / 6.0);
                    Zip::from(acc).and(&est.out).for_each(|a, &o| *a = sixth * o);
                    self.stage = Stage::Rk(1);
                } else {
                    self.stage = Stage::PlmsSecond;
                }
                let spare = self.ets.push(est.into_buffer(), from);
                return Ok(spare);
            }
            Stage::Start => {
                // Pseudo linear multistep: AB combination of the noise estimates, DDIM transfer.
                let order = (self.ets.len() + 1).min(self.order);
                let w = AB[order - 1];
                let (kx, ke) = transfer(&from, &to);
                let k = Lin {
                    x: kx + ke * w[0] / from.sigma,
                    d: -ke * w[0] * from.alpha / from.sigma,
                    h: [ke * w[1], ke * w[2], ke * w[3]],
                    z: 0.0,
                };
                let store = Store::Eps {
                    ex: 1.0 / from.sigma,
                    ed: -from.alpha / from.sigma,
                };
                let none = Clamp::none();
                let ok = match order {
                    1 => lin_step(&mut self.x, &mut est, none, store, &[], None, &k),
                    2 => lin_step(&mut self.x, &mut est, none, store, &[self.ets.array(0)], None, &k),
                    3 => lin_step(
                        &mut self.x,
                        &mut est,
                        none,
                        store,
                        &[self.ets.array(0), self.ets.array(1)],
                        None,
                        &k,
                    ),
                    _ => lin_step(
                        &mut self.x,
                        &mut est,
                        none,
                        store,
                        &[self.ets.array(0), self.ets.array(1), self.ets.array(2)],
                        None,
                        &k,
                    ),
                };
                attribute(ok, &est, None)?;
                let spare = self.ets.push(est.into_buffer(), from);
                self.done += 1;
                self.walk.next();
                return Ok(spare);
            }
            Stage::PlmsSecond => {
                // x' = phi(x, from -> to, (e0 + e1') / 2)
                let eval = self.eval.as_ref().ok_or(Error::Finished)?;
                let ok = eps_into(&mut est, eval, &to);
                attribute(ok, &est, None)?;
                let (kx, ke) = transfer(&from, &to);
                let (kx, ke2) = (f(kx), f(ke / 2.0));
                let e0 = self.ets.array(0);
                Zip::from(&mut self.x)
                    .and(e0)
                    .and(&est.out)
                    .for_each(|x, &e0, &e1| *x = kx * *x + ke2 * (e0 + e1));
            }
            Stage::Rk(s) => {
                let level = if s < 3 { self.mid } else { to };
                let eval = self.eval.as_mut().ok_or(Error::Finished)?;
                let ok = eps_into(&mut est, eval, &level);
                attribute(ok, &est, None)?;
                let acc = self.acc.as_mut().ok_or(Error::Finished)?;
                if s < 3 {
                    // Accumulate e_s / 3 and move the evaluation point.
                    let target = if s == 1 { self.mid } else { to };
                    let (kx, ke) = transfer(&from, &target);
                    let (kx, ke, third) = (f(kx), f(ke), f(1.0 / 3.0));
                    Zip::from(acc)
                        .and(eval)
                        .and(&self.x)
                        .and(&est.out)
                        .for_each(|a, e, &x, &o| {
                            *a += third * o;
                            *e = kx * x + ke * o;
                        });
                    self.stage = Stage::Rk(s + 1);
                    return Ok(Some(est.into_buffer()));
                }
                let (kx, ke) = transfer(&from, &to);
                let (kx, ke, sixth) = (f(kx), f(ke), f(1.0 / 6.0));
                Zip::from(&mut self.x)
                    .and(&*acc)
                    .and(&est.out)
                    .for_each(|x, &a, &o| *x = kx * *x + ke * (a + sixth * o));
            }
        }
        if !self.x.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFinite {
                step: self.walk.step(),
                level: from,
                what: "sample",
            });
        }
        self.stage = Stage::Start;
        self.done += 1;
        self.walk.next();
        Ok(Some(est.into_buffer()))
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.walk.current()
    }

    fn into_sample(self) -> Array<F, D> {
        self.x
    }

    fn buffers_held(&self) -> usize {
        3
    }
}
