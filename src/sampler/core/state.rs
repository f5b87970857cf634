//! The generic run state: a sampler is its options plus a [`Method`] — the update of one model
//! call — and [`State`] does the rest (walking the grid, pending requests, churn, the history
//! ring, buffers, noise, the input check).

use std::fmt::Debug;

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::coefs::{AncestralSplit, Coords, ancestral_split, sigma_space_ancestral};
use super::combo::{Combo, Keep as ComboKeep, combo_pass};
use super::history::History;
use super::kernel::{Affine, Clamps, Finish, Lin, Store, affine_step, finish_step, lin_step};
use super::options::{Churn, Stochastic};
use super::walk::Walk;
use super::x0::{Clamp, X0Policy};
use super::{Estimate, Request, SamplerState, Spares, attribute};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::{Grid, ScheduleFamily};
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;

/// Which array a pending request evaluates the model on.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The sample.
    Sample,
    /// One of the run's working buffers (a predictor's point).
    Buf(usize),
}

/// What a [`Method`] does with the model-output buffer of the call it just used, and what comes
/// next.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    next: Next,
    keep: Keep,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Next {
    /// The step is complete: move to the next grid level.
    Done,
    /// Another model call in this step.
    Stage(NoiseLevel, Input),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Keep {
    /// Give the buffer back to the run's pool.
    Release,
    /// Push it into the history ring (newest first), tagged with a level.
    History(NoiseLevel),
    /// Keep it as working buffer `i` (the previous one goes back to the pool).
    Buf(usize),
}

impl Outcome {
    /// The step is complete; the output buffer is released.
    pub(crate) fn done() -> Self {
        Outcome {
            next: Next::Done,
            keep: Keep::Release,
        }
    }

    /// Another model call at `level` on `input` is needed within this step.
    pub(crate) fn stage(level: NoiseLevel, input: Input) -> Self {
        Outcome {
            next: Next::Stage(level, input),
            keep: Keep::Release,
        }
    }

    /// The output buffer (which the update overwrote with what the method keeps: the processed
    /// x0, a noise or derivative estimate) joins the history at `level`.
    pub(crate) fn keep_history(self, level: NoiseLevel) -> Self {
        Outcome {
            keep: Keep::History(level),
            ..self
        }
    }

    /// The output buffer becomes working buffer `i`.
    pub(crate) fn keep_buf(self, i: usize) -> Self {
        Outcome {
            keep: Keep::Buf(i),
            ..self
        }
    }
}

/// A sampler's update rule: what one model call does to the run. The shared [`State`] walks the
/// grid, applies churn, draws noise, keeps the history and buffers, checks the input and
/// attributes non-finite values; a method computes its coefficients in `(alpha, sigma)` form
/// and runs its fused pass, usually through [`Step`]'s kernels.
#[doc(hidden)]
pub trait Method: Clone + Debug {
    /// Scalars a run of this method carries between calls (beyond the walk, the stage and the
    /// number of completed steps, which every run has).
    type Vars: Clone + Debug + Default;

    /// Checks the options.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the option.
    fn check(&self) -> Result<()>;

    /// Checks the options against the grid a run starts on (default: nothing to check).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the option that does not fit the grid.
    fn check_grid(&self, _grid: &Grid) -> Result<()> {
        Ok(())
    }

    /// Model calls of a run over `grid` (one per step taken by default).
    fn calls(&self, grid: &Grid) -> usize {
        Walk::effective_steps(grid)
    }

    /// Capacity of the history ring.
    fn history(&self) -> usize {
        0
    }

    /// Model-output buffers a run may keep at once (history and working buffers).
    fn held(&self) -> usize {
        self.history()
    }

    /// EDM churn applied before every step, if any.
    fn churn(&self) -> Option<&Churn> {
        None
    }

    /// Consumes the model output of the pending call.
    ///
    /// # Errors
    /// [`Error::NonFinite`] (through the kernels' attribution) and the errors of thresholding.
    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, Self::Vars>,
    ) -> Result<Outcome>;
}

/// Everything a run has, whatever the sampler.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Core<F, D: Dimension> {
    /// The sample.
    pub(crate) x: Array<F, D>,
    pub(crate) walk: Walk,
    /// The level the sample is at (the step's grid level, or the churned level).
    pub(crate) hat: NoiseLevel,
    /// The pending request's level and input.
    pub(crate) req: NoiseLevel,
    pub(crate) input: Input,
    /// Model calls made in the current step.
    pub(crate) stage: usize,
    /// Steps completed.
    pub(crate) steps_done: usize,
    /// Model calls answered.
    pub(crate) calls: usize,
    pub(crate) hist: History<F, D>,
    /// Working buffers (predictor points, derivatives, a block's start), allocated on first use.
    pub(crate) bufs: [Option<Array<F, D>>; 3],
    /// The noise buffer.
    pub(crate) z: Option<Array<F, D>>,
    /// The step of the last noise draw and the draws made in it (later draws of a step get
    /// their own keys, [`crate::noise::draw_key`]).
    pub(crate) drawn: (usize, usize),
    /// Scratch space for thresholding quantiles.
    pub(crate) scratch: Vec<F>,
}

/// The working buffer of a two-stage step's predictor point.
pub(crate) const X2: usize = 0;

/// Buffer `slot`, allocated (once) like `like`.
pub(crate) fn buf<'a, F: Float, D: Dimension>(
    slot: &'a mut Option<Array<F, D>>,
    like: &Array<F, D>,
) -> &'a mut Array<F, D> {
    slot.get_or_insert_with(|| Array::zeros(like.raw_dim()))
}

/// The noise buffer, allocated once and filled for `step`, the interval `from -> to`.
/// The `k`-th draw of a step gets key [`draw_key(step, k)`](crate::noise::draw_key).
pub(crate) fn fill_noise<'a, F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
    slot: &'a mut Option<Array<F, D>>,
    like: &Array<F, D>,
    drawn: &mut (usize, usize),
    step: usize,
    (from, to): (&NoiseLevel, &NoiseLevel),
    noise: &mut N,
) -> &'a Array<F, D> {
    let z = buf(slot, like);
    if drawn.0 != step {
        *drawn = (step, 0);
    }
    let key = crate::noise::draw_key(step, drawn.1);
    drawn.1 += 1;
    noise.fill_interval(key, from, to, z.view_mut());
    z
}

/// What a pass writes and reads: the sample, this step's noise (if drawn), the working buffers
/// and the history.
struct Parts<'a, F, D: Dimension> {
    x: &'a mut Array<F, D>,
    z: Option<&'a Array<F, D>>,
    bufs: &'a [Option<Array<F, D>>; 3],
    hist: &'a History<F, D>,
}

/// The run's parts, with the noise of the current step over `from -> to` drawn if `wanted`.
fn step_noise<'a, F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
    core: &'a mut Core<F, D>,
    wanted: bool,
    interval: (&NoiseLevel, &NoiseLevel),
    noise: &mut N,
) -> Parts<'a, F, D> {
    let step = core.walk.step();
    let Core {
        x,
        z,
        bufs,
        hist,
        drawn,
        ..
    } = core;
    let z = if wanted {
        Some(fill_noise(z, x, drawn, step, interval, noise))
    } else {
        None
    };
    Parts { x, z, bufs, hist }
}

impl<F: Float, D: Dimension> Core<F, D> {
    fn new(x: Array<F, D>, grid: &Grid, history: usize) -> Result<Self> {
        let first = grid.levels()[0];
        if !fold_finite!(Zip::from(&x), |&v| { v }) {
            return Err(Error::NonFinite {
                step: 0,
                level: first,
                what: "input sample",
            });
        }
        Ok(Core {
            x,
            walk: Walk::new(grid),
            hat: first,
            req: first,
            input: Input::Sample,
            stage: 0,
            steps_done: 0,
            calls: 0,
            hist: History::new(history),
            bufs: [None, None, None],
            z: None,
            scratch: Vec::new(),
            drawn: (usize::MAX, 0),
        })
    }

    /// Sets up the current step: the level the sample is at (churned if asked) and the request.
    fn enter_step<N: NoiseSource<F> + ?Sized>(&mut self, churn: Option<&Churn>, noise: &mut N) -> Result<()> {
        self.stage = 0;
        self.input = Input::Sample;
        self.hat = match churn {
            _ if self.walk.done() => self.walk.current(),
            Some(c) => self.churn(c, noise)?,
            None => self.walk.from(),
        };
        self.req = self.hat;
        Ok(())
    }

    /// EDM churn before the current step, `x <- (alpha_hat / alpha) x + alpha_hat
    /// sqrt(s_hat^2 - s^2) s_noise z`; returns the level the sample is then at. Without churn
    /// at this level, returns the step's level untouched (no noise drawn).
    fn churn<N: NoiseSource<F> + ?Sized>(&mut self, c: &Churn, noise: &mut N) -> Result<NoiseLevel> {
        let level = self.walk.from();
        let gamma = c.gamma(&level, self.walk.grid_steps());
        if gamma <= 0.0 {
            return Ok(level);
        }
        let s = level.sigma_ve();
        let s_hat = s * (1.0 + gamma);
        let hat = self.walk.level_at_sigma_ve(s_hat);
        let kx = F::cast(hat.alpha / level.alpha);
        let kz = F::cast(hat.alpha * (s_hat * s_hat - s * s).sqrt() * c.s_noise);
        let z = fill_noise(
            &mut self.z,
            &self.x,
            &mut self.drawn,
            self.walk.step(),
            (&level, &hat),
            noise,
        );
        let ok = fold_finite!(Zip::from(&mut self.x).and(z), |x, &z| {
            *x = kx * *x + kz * z;
            *x
        });
        if ok {
            Ok(hat)
        } else {
            Err(Error::NonFinite {
                step: self.walk.step(),
                level,
                what: if z.iter().all(|v| v.is_finite()) {
                    "sample"
                } else {
                    "noise"
                },
            })
        }
    }

    fn input_view(&self) -> ArrayView<'_, F, D> {
        match self.input {
            Input::Buf(i) => self.bufs[i].as_ref().map_or(self.x.view(), |b| b.view()),
            Input::Sample => self.x.view(),
        }
    }
}

/// The state of a run of any of the crate's samplers: the shared [`Core`], the sampler's
/// options (its [`Method`]) and its per-run scalars.
#[derive(Clone, Debug)]
pub struct State<F, D: Dimension, M: Method> {
    core: Core<F, D>,
    method: M,
    vars: M::Vars,
}

impl<F: Float, D: Dimension, M: Method> State<F, D, M> {
    /// A run of `method` from `x` at the grid's first level.
    ///
    /// # Errors
    /// The method's option check; [`Error::NonFinite`] for a non-finite `x`; errors of the
    /// first churn.
    pub(crate) fn new<N: NoiseSource<F> + ?Sized>(
        method: M,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Self> {
        method.check()?;
        method.check_grid(grid)?;
        let mut core = Core::new(x, grid, method.history())?;
        core.enter_step(method.churn(), noise)?;
        Ok(State {
            core,
            method,
            vars: M::Vars::default(),
        })
    }
}

impl<F: Float, D: Dimension, M: Method> SamplerState<F, D> for State<F, D, M> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        (!self.core.walk.done()).then(|| Request {
            step: self.core.walk.step(),
            level: self.core.req,
            x: self.core.input_view(),
            index: self.core.calls,
            steps: self.core.walk.grid_steps(),
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Spares<F, D>> {
        let outcome = self.method.update(&mut Step {
            core: &mut self.core,
            est: &mut est,
            noise: &mut *noise,
            vars: &mut self.vars,
        })?;
        let core = &mut self.core;
        core.calls += 1;
        let (out, uncond) = est.into_buffers();
        let spare = match outcome.keep {
            Keep::Release => Some(out),
            Keep::History(level) => core.hist.push(out, level),
            Keep::Buf(i) => core.bufs[i].replace(out),
        };
        match outcome.next {
            Next::Stage(level, input) => {
                core.req = level;
                core.input = input;
                core.stage += 1;
            }
            Next::Done => {
                core.walk.next();
                core.steps_done += 1;
                core.enter_step(self.method.churn(), noise)?;
            }
        }
        Ok([spare, uncond])
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.core.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.core.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.core.hat
    }

    fn into_sample(self) -> Array<F, D> {
        self.core.x
    }

    fn buffers_held(&self) -> usize {
        self.method.held()
    }
}

/// One model call being consumed: the run's [`Core`], the model's [`Estimate`], the noise
/// source and the method's scalars, with the kernels most methods need.
#[doc(hidden)]
pub struct Step<'a, F, D: Dimension, N: ?Sized, V> {
    pub(crate) core: &'a mut Core<F, D>,
    pub(crate) est: &'a mut Estimate<F, D>,
    pub(crate) noise: &'a mut N,
    pub(crate) vars: &'a mut V,
}

impl<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized, V> Step<'_, F, D, N, V> {
    /// The step index.
    pub(crate) fn step(&self) -> usize {
        self.core.walk.step()
    }

    /// Model calls already made in this step.
    pub(crate) fn stage(&self) -> usize {
        self.core.stage
    }

    /// The level the step starts from (churned if churn applied).
    pub(crate) fn from(&self) -> NoiseLevel {
        self.core.hat
    }

    /// The level the step ends at.
    pub(crate) fn to(&self) -> NoiseLevel {
        self.core.walk.to()
    }

    /// The level of the pending call.
    pub(crate) fn level(&self) -> NoiseLevel {
        self.core.req
    }

    pub(crate) fn walk(&self) -> &Walk {
        &self.core.walk
    }

    /// The ODE coordinates of the grid's family.
    pub(crate) fn coords(&self) -> Coords {
        Coords::of(self.core.walk.family())
    }

    /// `(c_x, c_out)` of the x0 estimate `c_x input + c_out output`.
    pub(crate) fn conv(&self) -> (F, F) {
        (self.est.cx, self.est.co)
    }

    /// The clamp for `policy` on this call's input (thresholding first materialises the x0
    /// estimate in the output buffer and returns the identity).
    pub(crate) fn clamp(&mut self, policy: &X0Policy) -> Result<Clamp<F>> {
        let Core {
            x,
            bufs,
            scratch,
            input,
            ..
        } = &mut *self.core;
        let inp = match input {
            Input::Buf(i) => bufs[*i].as_ref().ok_or(Error::Finished)?,
            Input::Sample => &*x,
        };
        self.est.prepare(inp, policy, scratch)
    }

    /// Checks a pass's finiteness probe, naming the culprit.
    pub(crate) fn check(&self, ok: bool) -> Result<()> {
        attribute(ok, self.est, None)
    }

    /// `x <- clamped clamp(x0) + raw x0 + x x + z z` (see [`Affine`]) on the sample, with the
    /// x0 policy applied and noise for the step drawn if `k.z != 0`.
    pub(crate) fn affine(&mut self, policy: &X0Policy, k: Affine) -> Result<()> {
        let clamps = Clamps::for_policy(self.est, &self.core.x, policy, &mut self.core.scratch)?;
        let (from, to) = (self.from(), self.to());
        let p = step_noise(self.core, k.z != 0.0, (&from, &to), self.noise);
        let ok = affine_step(p.x, self.est, &clamps, k, p.z);
        attribute(ok, self.est, p.z)
    }

    /// A multistep pass (see [`Lin`]) over the newest `n` history entries, storing `store` into
    /// the output buffer; noise drawn if `k.z != 0`.
    pub(crate) fn lin(&mut self, policy: &X0Policy, k: Lin, store: Store, n: usize) -> Result<()> {
        let clamp = self.clamp(policy)?;
        let (from, to) = (self.from(), self.to());
        let p = step_noise(self.core, k.z != 0.0, (&from, &to), self.noise);
        let ok = lin_step(p.x, self.est, clamp, store, p.hist, n, p.z, &k);
        attribute(ok, self.est, p.z)
    }

    /// The Euler step (= DDIM with `eta = 0`) from [`from`](Self::from) to [`to`](Self::to):
    /// `x' = alpha' x0 + sigma' eps`.
    pub(crate) fn euler(&mut self, policy: &X0Policy) -> Result<()> {
        let (from, to) = (self.from(), self.to());
        let r = to.sigma / from.sigma;
        self.affine(
            policy,
            Affine {
                clamped: to.alpha - from.alpha * r,
                raw: 0.0,
                x: r,
                z: 0.0,
            },
        )
    }

    /// The Euler-ancestral step with `noise` (`eta`, `s_noise`) and `split`: `x' = alpha' x0 + ce
    /// eps + std s_noise z` (see [`ancestral_split`]), or the sigma-space step.
    pub(crate) fn euler_ancestral(
        &mut self,
        policy: &X0Policy,
        noise: Stochastic,
        split: AncestralSplit,
    ) -> Result<()> {
        let (from, to, family) = (self.from(), self.to(), self.core.walk.family());
        if split == AncestralSplit::SigmaSpace && family == ScheduleFamily::Flow {
            let (kx, kd, kz) = sigma_space_ancestral(&from, &to, noise.eta, family);
            return self.affine(
                policy,
                Affine {
                    clamped: kd,
                    raw: 0.0,
                    x: kx,
                    z: kz * noise.s_noise,
                },
            );
        }
        let (std, ce) = ancestral_split(&from, &to, noise.eta, split, family);
        self.affine(
            policy,
            Affine {
                clamped: to.alpha - ce * from.alpha / from.sigma,
                raw: 0.0,
                x: ce / from.sigma,
                z: std * noise.s_noise,
            },
        )
    }

    /// The predictor of a two-stage step: the Euler (DDIM) step from [`from`](Self::from) to
    /// `level`, `x2 = alpha_l x0 + sigma_l eps`, into working buffer `X2`; then the request at
    /// `level` on it.
    pub(crate) fn predict(&mut self, policy: &X0Policy, level: NoiseLevel) -> Result<Outcome> {
        let from = self.from();
        let clamp = self.clamp(policy)?;
        let (cx, co) = self.conv();
        let r = level.sigma / from.sigma;
        let (kx, kd) = (F::cast(r), F::cast(level.alpha - from.alpha * r));
        let Core { x, bufs, .. } = &mut *self.core;
        let x2 = buf(&mut bufs[X2], x);
        let ok = fold_finite!(clamp = clamp; Zip::from(x2).and(&*x).and(&self.est.out), |x2, &x, &o| {
            let raw = cx * x + co * o;
            *x2 = kx * x + kd * clamp.apply(raw);
            clamp.keep(*x2, raw)
        });
        self.check(ok)?;
        Ok(Outcome::stage(level, Input::Buf(X2)))
    }

    /// The general fused pass (see [`Combo`]), after drawing this step's noise over `interval`
    /// when given (terms on [`Slot::Noise`](super::combo::Slot::Noise) read it). After a pass
    /// that keeps the x0 estimate in the output buffer, later passes of the same call read it
    /// from there.
    pub(crate) fn combo(&mut self, c: &Combo<'_>, interval: Option<(NoiseLevel, NoiseLevel)>) -> Result<()> {
        if let super::combo::Slot::Buf(i) = c.into {
            let Core { x, bufs, .. } = &mut *self.core;
            buf(&mut bufs[i], x);
        }
        if let Some((a, b)) = interval {
            let step = self.core.walk.step();
            let Core { x, z, drawn, .. } = &mut *self.core;
            fill_noise(z, x, drawn, step, (&a, &b), self.noise);
        }
        let ok = combo_pass(self.core, self.est, c)?;
        if c.keep == ComboKeep::X0 {
            self.est.cx = F::zero();
            self.est.co = F::one();
        }
        attribute(ok, self.est, interval.and(self.core.z.as_ref()))
    }

    /// Moves the noise just drawn into working buffer `i` (whose old array becomes the next
    /// noise buffer): for samplers that reuse a draw later in the step.
    pub(crate) fn stash_noise(&mut self, i: usize) {
        let Core { z, bufs, .. } = &mut *self.core;
        std::mem::swap(z, &mut bufs[i]);
    }

    /// The last pass of a two-stage step whose call was on working buffer `X2` (see
    /// [`Finish`]), with working buffer `g` if given and noise for the step if `k.z != 0`.
    pub(crate) fn finish(&mut self, policy: &X0Policy, k: Finish, g: Option<usize>) -> Result<()> {
        let clamp = self.clamp(policy)?;
        let (from, to) = (self.from(), self.to());
        let p = step_noise(self.core, k.z != 0.0, (&from, &to), self.noise);
        let (x2, g) = match (&p.bufs[X2], g.map(|i| &p.bufs[i])) {
            (Some(x2), None) => (x2, None),
            (Some(x2), Some(Some(g))) => (x2, Some(g)),
            _ => return Err(Error::Finished),
        };
        let ok = finish_step(p.x, x2, self.est, g, p.z, clamp, &k);
        attribute(ok, self.est, p.z)
    }
}

/// Implements [`Sampler`](crate::Sampler) for samplers that are a [`Method`].
macro_rules! impl_sampler {
    ($($ty:ty),* $(,)?) => {$(
        impl $crate::sampler::Sampler for $ty {
            type State<F: $crate::Float, D: ndarray::Dimension> = $crate::sampler::State<F, D, $ty>;

            fn validate(&self) -> $crate::Result<()> {
                $crate::sampler::Method::check(self)
            }

            fn init<F: $crate::Float, D: ndarray::Dimension, N: $crate::NoiseSource<F> + ?Sized>(
                &self,
                x: ndarray::Array<F, D>,
                grid: &$crate::Grid,
                noise: &mut N,
            ) -> $crate::Result<Self::State<F, D>> {
                $crate::sampler::State::new(self.clone(), x, grid, noise)
            }

            fn model_calls(&self, grid: &$crate::Grid) -> usize {
                $crate::sampler::Method::calls(self, grid)
            }
        }
    )*};
}
pub(crate) use impl_sampler;
