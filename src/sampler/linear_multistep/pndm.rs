//! Pseudo numerical methods (Liu et al. 2022): PNDM / PLMS, and iPNDM.

use ndarray::{Array, Dimension, Zip};

use super::lms::check_order;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::kernel::{Lin, Store};
use crate::sampler::core::options::setters;
use crate::sampler::core::state::buf;
use crate::sampler::core::walk::Walk;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Core, Estimate, Input, Method, Outcome, Step};

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
/// During a run, the errors of [`Sampler::sample`](crate::Sampler::sample).
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

    setters! {
        /// PLMS: skip the Runge–Kutta warm-up.
        skip_prk_steps: bool,
    }

    fn warmup(&self) -> Warmup {
        if self.skip_prk_steps {
            Warmup::Plms
        } else {
            Warmup::RungeKutta
        }
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
/// let grid = Grid::ve(&karras_sigmas(10, 0.002, 80.0, 7.0)?)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?.with_prediction(Prediction::Sample);
/// let out = Ipndm::new().sample(&mut model, Array2::<f64>::from_elem((1, 1), 30.0), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for an order outside 1–4; during a run, the errors of
/// [`Sampler::sample`](crate::Sampler::sample).
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

    setters! {
        /// The maximum order, 1 to 4.
        order: usize,
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

/// Working buffers: the evaluation point of warm-up stages (`EVAL`), then the Runge–Kutta
/// accumulator of noise estimates (read as `[eval, acc, _]`).
const EVAL: usize = 0;

/// Whether step `i` of `n` (ending at `to`) is a Runge–Kutta warm-up step: one of the first
/// three (or every step of a grid shorter than four), but never a step to the clean level,
/// where the noise estimate of its last stage would be undefined.
fn rk_step(warmup: Warmup, i: usize, n: usize, to: &NoiseLevel) -> bool {
    warmup == Warmup::RungeKutta && (i < 3 || n < 4) && !to.is_clean()
}

/// Model calls of a run, following `pndm_update`'s rules step by step.
fn pndm_calls(grid: &Grid, warmup: Warmup) -> usize {
    let n = Walk::effective_steps(grid);
    let levels = grid.levels();
    (0..n)
        .map(|i| {
            if levels[i].alpha == 0.0 {
                1
            } else if rk_step(warmup, i, n, &levels[i + 1]) {
                4
            } else if warmup == Warmup::Plms && i == 0 && i + 1 != n {
                2
            } else {
                1
            }
        })
        .sum()
}

/// The Runge–Kutta midpoint level of the current step: diffusers' `t - (stride // 2)` on
/// integer timesteps.
fn midpoint(w: &Walk) -> NoiseLevel {
    let (a, b) = (w.from(), w.to());
    let d = a.t - b.t;
    let t = if a.t.fract() == 0.0 && b.t.fract() == 0.0 && !b.is_clean() {
        a.t - (d / 2.0).floor()
    } else if b.is_clean() {
        // To the clean level: halfway in log-sigma.
        return w.level_at_sigma_ve(a.sigma_ve() * 0.5);
    } else {
        a.t - d / 2.0
    };
    w.level_at_t(t)
}

/// `eps` from the model output at `level` for input `x`, into the output buffer (clamp-free:
/// PNDM has no x0 processing).
fn eps_into<F: Float, D: Dimension>(est: &mut Estimate<F, D>, x: &Array<F, D>, level: &NoiseLevel) -> bool {
    let (cx, co) = (est.cx, est.co);
    let (ex, ed) = (F::cast(1.0 / level.sigma), F::cast(-level.alpha / level.sigma));
    fold_finite!(Zip::from(&mut est.out).and(x), |o, &x| {
        let d = cx * x + co * *o;
        *o = ex * x + ed * d;
        *o
    })
}

/// One model call of PNDM / PLMS / iPNDM.
fn pndm_update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
    s: &mut Step<'_, F, D, N, ()>,
    warmup: Warmup,
    max_order: usize,
) -> Result<Outcome> {
    let (from, to, stage) = (s.from(), s.to(), s.stage());
    let f = F::cast;
    let w = s.walk();
    let (i, n) = (w.step(), w.step() + w.remaining());
    if stage == 0 {
        if from.alpha == 0.0 {
            // From pure noise: a DDIM step; the noise estimate there does not join the history.
            s.euler(&X0Policy::default())?;
            return Ok(Outcome::done());
        }
        let plms_first = warmup == Warmup::Plms && s.core.steps_done == 0 && !w.is_last();
        if rk_step(warmup, i, n, &to) || plms_first {
            // First call of a warm-up step: eps into the output buffer, first predictor point.
            let target = if plms_first { to } else { midpoint(w) };
            let ok = eps_into(s.est, &s.core.x, &from);
            s.check(ok)?;
            let Core { x, bufs, .. } = &mut *s.core;
            let (kx, ke) = transfer(&from, &target);
            let (kx, ke) = (f(kx), f(ke));
            let [eval, acc, _] = bufs;
            let eval = buf(eval, x);
            Zip::from(eval)
                .and(&*x)
                .and(&s.est.out)
                .for_each(|e, &x, &o| *e = kx * x + ke * o);
            if warmup == Warmup::RungeKutta {
                let sixth = f(1.0 / 6.0);
                Zip::from(buf(acc, x))
                    .and(&s.est.out)
                    .for_each(|a, &o| *a = sixth * o);
            }
            return Ok(Outcome::stage(target, Input::Buf(EVAL)).keep_history(from));
        }
        // Pseudo linear multistep: AB combination of the noise estimates, DDIM transfer.
        let order = (s.core.hist.len() + 1).min(max_order);
        let wts = AB[order - 1];
        let (kx, ke) = transfer(&from, &to);
        let k = Lin {
            x: kx + ke * wts[0] / from.sigma,
            d: -ke * wts[0] * from.alpha / from.sigma,
            h: [ke * wts[1], ke * wts[2], ke * wts[3]],
            z: 0.0,
        };
        let store = Store::Eps {
            ex: 1.0 / from.sigma,
            ed: -from.alpha / from.sigma,
        };
        s.lin(&X0Policy::default(), k, store, order - 1)?;
        return Ok(Outcome::done().keep_history(from));
    }
    let level = s.level();
    let ok = eps_into(s.est, s.core.bufs[EVAL].as_ref().ok_or(Error::Finished)?, &level);
    s.check(ok)?;
    let Core { x, bufs, hist, .. } = &mut *s.core;
    let [eval, acc, _] = bufs;
    let (eval, acc) = (eval.as_mut().ok_or(Error::Finished)?, acc.as_mut());
    let o = &s.est.out;
    let ok = match (warmup, stage) {
        (Warmup::Plms, _) => {
            // x' = phi(x, from -> to, (e0 + e1') / 2)
            let (kx, ke) = transfer(&from, &to);
            let (kx, ke2) = (f(kx), f(ke / 2.0));
            fold_finite!(Zip::from(x).and(hist.array(0)).and(o), |x, &e0, &e1| {
                *x = kx * *x + ke2 * (e0 + e1);
                *x
            })
        }
        (_, 1 | 2) => {
            // Accumulate e_s / 3 and move the evaluation point (to the midpoint, then the end).
            let target = if stage == 1 { level } else { to };
            let (kx, ke) = transfer(&from, &target);
            let (kx, ke, third) = (f(kx), f(ke), f(1.0 / 3.0));
            let acc = acc.ok_or(Error::Finished)?;
            Zip::from(acc).and(eval).and(&*x).and(o).for_each(|a, e, &x, &o| {
                *a += third * o;
                *e = kx * x + ke * o;
            });
            return Ok(Outcome::stage(target, Input::Buf(EVAL)));
        }
        _ => {
            let (kx, ke) = transfer(&from, &to);
            let (kx, ke, sixth) = (f(kx), f(ke), f(1.0 / 6.0));
            let acc = acc.ok_or(Error::Finished)?;
            fold_finite!(Zip::from(x).and(&*acc).and(o), |x, &a, &o| {
                *x = kx * *x + ke * (a + sixth * o);
                *x
            })
        }
    };
    s.check(ok)?;
    Ok(Outcome::done())
}

impl Method for Pndm {
    type Vars = ();

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn calls(&self, grid: &Grid) -> usize {
        pndm_calls(grid, self.warmup())
    }

    fn history(&self) -> usize {
        3
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        pndm_update(s, self.warmup(), 4)
    }
}

impl Method for Ipndm {
    type Vars = ();

    fn check(&self) -> Result<()> {
        check_order(self.order, 4, "iPNDM supports orders 1 to 4")
    }

    fn calls(&self, grid: &Grid) -> usize {
        pndm_calls(grid, Warmup::LowerOrder)
    }

    fn history(&self) -> usize {
        3
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        pndm_update(s, Warmup::LowerOrder, self.order)
    }
}
