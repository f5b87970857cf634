//! The machinery every sampler shares, written once: the [`Sampler`] trait and its one-call
//! API, the step-by-step [`Run`], walking the grid, the history ring and buffer pool, the x0
//! policy (clip, thresholding), churn, drawing noise, the fused kernels, finiteness checks with
//! step / level / cause attribution, progress callbacks and model-call counting.
//!
//! A sampler is its options plus a [`Method`]: the update of one model call in `(alpha,
//! sigma)` form (see `state.rs`). Everything else comes from here.

pub(crate) mod coefs;
pub(crate) mod combo;
mod expect;
pub(crate) mod history;
pub(crate) mod kernel;
pub(crate) mod options;
mod run;
pub(crate) mod state;
pub(crate) mod walk;
pub(crate) mod x0;

pub use expect::Expecting;
pub use run::Run;
pub use state::State;
#[doc(hidden)]
pub use state::{Core, Input, Method, Outcome, Step};

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use crate::denoiser::{Call, Denoiser, Prediction};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::{ByRef, NoiseSource};
use x0::Clamp;

/// A sampling algorithm: walks a [`Grid`] from noise to data.
///
/// Every sampler of the crate implements it; [`start`](Self::start), [`sample`](Self::sample)
/// and [`sample_with`](Self::sample_with) are provided.
pub trait Sampler {
    /// The state of one run of this sampler.
    type State<F: Float, D: Dimension>: SamplerState<F, D>;

    /// Checks the configuration (orders, `eta`, clip range, ...) without starting a run; the
    /// diffusers config reader calls it when the file is read.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the option that is out of range.
    fn validate(&self) -> Result<()>;

    /// Sets up a run from `x`, the sample at `grid.levels()[0]` in the model's native scaling.
    /// Samplers that perturb the sample before the first model call (stochastic churn) draw
    /// that noise from `noise` here.
    ///
    /// # Errors
    /// As [`validate`](Self::validate); [`Error::NonFinite`] if `x` holds a NaN or infinity.
    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Self::State<F, D>>;

    /// How many model evaluations a run over `grid` costs (NFE).
    fn model_calls(&self, grid: &Grid) -> usize;

    /// The number of model calls a run over `grid` makes, if it is known before the run:
    /// `Some(model_calls(grid))` for every fixed-step sampler; `None` for adaptive ones
    /// ([`DpmAdaptive`](crate::DpmAdaptive)), whose [`model_calls`](Self::model_calls) is an
    /// estimate.
    fn exact_model_calls(&self, grid: &Grid) -> Option<usize> {
        Some(self.model_calls(grid))
    }

    /// The prediction type this sampler was set up for, if any ([`expecting`](Self::expecting),
    /// a diffusers config's `prediction_type`): starting a run for a model of another type is
    /// an [`Error::PredictionMismatch`].
    fn expected_prediction(&self) -> Option<Prediction> {
        None
    }

    /// This sampler, refusing models whose prediction type is not `prediction` (what the
    /// diffusers config reader returns, so that a `v_prediction` config cannot silently sample
    /// an epsilon model).
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// let grid = NoiseSchedule::linear(1000, 1e-4, 0.02)?.grid(10, Spacing::Trailing)?;
    /// let mut eps_model = GaussianMixture::gaussian(vec![0.0], vec![1.0])?; // predicts epsilon
    /// let x = grid.initial_sample::<f64, _, _, _>((2, 1), &mut SeededNoise::new(0))?;
    /// let v_sampler = Ddim::new().expecting(Prediction::Velocity);
    /// let r = v_sampler.sample(&mut eps_model, x, &grid, &mut SeededNoise::new(1));
    /// assert!(matches!(r, Err(Error::PredictionMismatch { expected: Prediction::Velocity, got: Prediction::Epsilon })));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    fn expecting(self, prediction: Prediction) -> Expecting<Self>
    where
        Self: Sized,
    {
        Expecting::new(self, prediction)
    }

    /// Starts a step-by-step [`Run`] for a model whose outputs are of type `prediction`; the run
    /// owns `noise` (pass an owned source to keep the run in a struct or a queue, or `&mut
    /// source` to lend one).
    ///
    /// # Errors
    /// As [`init`](Self::init); [`Error::PredictionMismatch`] as
    /// [`expected_prediction`](Self::expected_prediction) says.
    #[allow(clippy::type_complexity, reason = "the run type is spelled out once, here")]
    fn start<F: Float, D: Dimension, N: NoiseSource<F>>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        prediction: Prediction,
        mut noise: N,
    ) -> Result<Run<F, D, Self::State<F, D>, N>> {
        if let Some(expected) = self.expected_prediction()
            && expected != prediction
        {
            return Err(Error::PredictionMismatch {
                expected,
                got: prediction,
            });
        }
        let state = self.init(x, grid, &mut noise)?;
        Ok(Run::new(state, prediction, noise))
    }

    /// Samples from `x` (at `grid.levels()[0]`, in the model's native scaling) to the grid's
    /// final level. Deterministic samplers never touch `noise`.
    ///
    /// # Errors
    /// Configuration errors as [`start`](Self::start); during the run, each naming the step and
    /// level: [`Error::Model`] (the model failed), [`Error::ShapeMismatch`],
    /// [`Error::NonFinite`] (model output, noise or sample), [`Error::Undetermined`] (e.g. an
    /// epsilon prediction at a zero-SNR level).
    fn sample<F, D, M, N>(
        &self,
        model: &mut M,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Array<F, D>>
    where
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
    {
        self.sample_with(model, x, grid, noise, |_| {})
    }

    /// As [`sample`](Self::sample), calling `on_call` after every model evaluation with the
    /// call count, the step, the level, the model's input and output and, on demand, the
    /// current x0 estimate ([`Progress::x0`]): for progress bars and previews.
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(8, Spacing::KARRAS)?;
    /// let mut model = GaussianMixture::gaussian(vec![1.0], vec![0.25])?;
    /// let x = grid.initial_sample::<f64, _, _, _>((16, 1), &mut SeededNoise::new(0))?;
    /// let mut seen = Vec::new();
    /// DpmSolver::new().sample_with(&mut model, x, &grid, &mut SeededNoise::new(1), |p| {
    ///     seen.push((p.call, p.total_calls, p.x0().unwrap().mean().unwrap()));
    /// })?;
    /// assert_eq!(seen.len(), 8);
    /// assert!((seen[7].2 - 1.0).abs() < 0.2); // the last preview is close to the result
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`sample`](Self::sample).
    fn sample_with<F, D, M, N, C>(
        &self,
        model: &mut M,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
        mut on_call: C,
    ) -> Result<Array<F, D>>
    where
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
        N: NoiseSource<F> + ?Sized,
        C: FnMut(&Progress<'_, F, D>),
    {
        let total_calls = self.model_calls(grid);
        let prediction = model.prediction();
        let mut run = self.start(x, grid, prediction, ByRef(noise))?;
        while let Some(req) = run.request() {
            let call = req.call();
            let (step, level) = (req.step, req.level);
            let out = model
                .denoise_call(req.x.view(), &call)
                .map_err(|source| Error::Model { step, level, source })?;
            let shaped = |a: &Option<Array<F, D>>| a.as_ref().is_none_or(|a| a.shape() == req.x.shape());
            if out.output.shape() == req.x.shape() && shaped(&out.cond) && shaped(&out.uncond) {
                on_call(&Progress {
                    call: call.index + 1,
                    total_calls,
                    step,
                    level,
                    x: req.x.view(),
                    output: out.output.view(),
                    cond: out.cond.as_ref().map(|a| a.view()),
                    uncond: out.uncond.as_ref().map(|a| a.view()),
                    prediction,
                });
            }
            run.respond_guided(out)?;
        }
        Ok(run.into_sample())
    }
}

/// The state of one sampling run; driven by [`Run`]. Every sampler's is a [`State`].
pub trait SamplerState<F: Float, D: Dimension> {
    /// The next model evaluation the sampler needs, or `None` once the run is finished.
    fn pending(&self) -> Option<Request<'_, F, D>>;

    /// Consumes the model's output for the pending request and advances (drawing any noise the
    /// update, or the next request, needs). Returns the buffers the run may reuse for later
    /// model outputs, those that became free.
    ///
    /// # Errors
    /// [`Error::NonFinite`] if the estimate, the noise or the updated sample is not finite.
    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Spares<F, D>>;

    /// The current sample.
    fn sample(&self) -> ArrayView<'_, F, D>;

    /// The current sample, mutably (e.g. to re-impose a known region between steps). Only
    /// meaningful between whole steps: [`level`](Self::level) tells which level it is at.
    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D>;

    /// The level the current sample is at (the grid level of the next step's start, or the final
    /// level once finished).
    fn level(&self) -> NoiseLevel;

    /// The current sample, by value.
    fn into_sample(self) -> Array<F, D>;

    /// How many model-output buffers the state may keep at once (multistep history); a
    /// [`Run`] answering in place pre-allocates that many spares, so that no step allocates.
    fn buffers_held(&self) -> usize {
        0
    }
}

/// Model-output buffers an update handed back for reuse (the output's, unless the sampler kept
/// it; the unconditional branch's).
pub type Spares<F, D> = [Option<Array<F, D>>; 2];

/// A model evaluation the sampler asks for: evaluate the model on `x` at `level`.
#[derive(Debug)]
pub struct Request<'a, F, D: Dimension> {
    /// Sampler step (0 = first); multi-stage samplers ask several times per step.
    pub step: usize,
    /// The level to evaluate at (`level.t` is the model's timestep input).
    pub level: NoiseLevel,
    /// The input to evaluate, in the model's native scaling.
    pub x: ArrayView<'a, F, D>,
    /// Model calls answered before this one.
    pub(crate) index: usize,
    /// The run's grid steps (0 for adaptive samplers).
    pub(crate) steps: usize,
}

impl<F: Float, D: Dimension> Request<'_, F, D> {
    /// Where this call sits in the run (what [`Denoiser::denoise_call`] receives).
    pub fn call(&self) -> Call {
        Call::new(self.index, self.step, self.steps, self.level)
    }

    /// The model's estimate of the clean sample from its `output` for this request (e.g. a
    /// preview image while sampling step by step).
    ///
    /// # Errors
    /// [`Error::Undetermined`] if `prediction` cannot determine x0 at this level (epsilon at
    /// zero SNR); [`Error::ShapeMismatch`] if `output` is not shaped like the input.
    pub fn x0(&self, prediction: Prediction, output: ArrayView<'_, F, D>) -> Result<Array<F, D>> {
        x0_estimate(self.step, self.level, prediction, self.x.view(), output)
    }
}

/// `x0 = c_x x + c_out output` for `prediction` at `level`.
fn x0_estimate<F: Float, D: Dimension>(
    step: usize,
    level: NoiseLevel,
    prediction: Prediction,
    x: ArrayView<'_, F, D>,
    output: ArrayView<'_, F, D>,
) -> Result<Array<F, D>> {
    if x.shape() != output.shape() {
        return Err(Error::ShapeMismatch {
            step,
            level,
            expected: x.shape().to_vec(),
            got: output.shape().to_vec(),
        });
    }
    let c = prediction.to_x0(&level).ok_or(Error::Undetermined {
        step,
        level,
        prediction,
        what: "x0",
    })?;
    let (cx, co) = (F::cast(c.x), F::cast(c.out));
    let mut out = output.to_owned();
    Zip::from(&mut out)
        .and(&x)
        .for_each(|o, &x| *o = cx * x + co * *o);
    Ok(out)
}

/// What a progress callback ([`Sampler::sample_with`]) sees after each model call.
#[derive(Debug)]
pub struct Progress<'a, F, D: Dimension> {
    /// Model calls made so far, this one included (1-based).
    pub call: usize,
    /// Model calls the run makes in all ([`Sampler::model_calls`]; an estimate for adaptive
    /// samplers, whose [`Sampler::exact_model_calls`] is `None`).
    pub total_calls: usize,
    /// Sampler step of this call (0 = first).
    pub step: usize,
    /// The level the model was evaluated at.
    pub level: NoiseLevel,
    /// The model input.
    pub x: ArrayView<'a, F, D>,
    /// The model output (the guided output, for guidance).
    pub output: ArrayView<'a, F, D>,
    /// The conditional branch's output, when the model has branches ([`Guided`](crate::Guided)).
    pub cond: Option<ArrayView<'a, F, D>>,
    /// The unconditional branch's output, when the model has one.
    pub uncond: Option<ArrayView<'a, F, D>>,
    /// The model's prediction type.
    pub prediction: Prediction,
}

impl<F: Float, D: Dimension> Progress<'_, F, D> {
    /// The current estimate of the clean sample (allocates; for previews).
    ///
    /// # Errors
    /// As [`Request::x0`].
    pub fn x0(&self) -> Result<Array<F, D>> {
        x0_estimate(
            self.step,
            self.level,
            self.prediction,
            self.x.view(),
            self.output.view(),
        )
    }

    /// The conditional branch's estimate of the clean sample, when the model has branches.
    ///
    /// # Errors
    /// As [`Request::x0`].
    pub fn cond_x0(&self) -> Option<Result<Array<F, D>>> {
        self.cond
            .as_ref()
            .map(|c| x0_estimate(self.step, self.level, self.prediction, self.x.view(), c.view()))
    }

    /// The unconditional branch's estimate of the clean sample, when the model has one.
    ///
    /// # Errors
    /// As [`Request::x0`].
    pub fn uncond_x0(&self) -> Option<Result<Array<F, D>>> {
        self.uncond
            .as_ref()
            .map(|u| x0_estimate(self.step, self.level, self.prediction, self.x.view(), u.view()))
    }
}

/// The model's output for a pending [`Request`], with the coefficients that turn it into the x0
/// estimate. Built by [`Run::respond`].
#[derive(Debug)]
pub struct Estimate<F, D: Dimension> {
    pub(crate) out: Array<F, D>,
    pub(crate) cx: F,
    pub(crate) co: F,
    pub(crate) step: usize,
    pub(crate) level: NoiseLevel,
    /// The unconditional branch's raw output, for CFG++ samplers (its x0 estimate is
    /// `ucx input + uco uncond`).
    pub(crate) uncond: Option<Array<F, D>>,
    pub(crate) ucx: F,
    pub(crate) uco: F,
}

impl<F: Float, D: Dimension> Estimate<F, D> {
    /// The step this output belongs to.
    pub fn step(&self) -> usize {
        self.step
    }

    /// The level the model was evaluated at.
    pub fn level(&self) -> NoiseLevel {
        self.level
    }

    /// Prepares the estimate under `policy` for samplers that only use the processed x0: returns
    /// the clamp to apply inline (identity, or `clip_sample`); with thresholding the output is
    /// first turned into the processed x0 in place (one extra pass, opt-in) and the returned
    /// clamp is the identity. `x` is the model's input.
    pub(crate) fn prepare(
        &mut self,
        x: &Array<F, D>,
        policy: &x0::X0Policy,
        scratch: &mut Vec<F>,
    ) -> Result<Clamp<F>> {
        match (policy.threshold, policy.clip) {
            (None, None) => Ok(Clamp::none()),
            (None, Some(c)) => Ok(Clamp {
                lim: F::cast(c),
                inv: F::one(),
            }),
            (Some(t), _) => {
                let clamps = self.materialize_thresholds(x, t, scratch)?;
                let mut a = self.out.view_mut().into_dyn();
                if a.ndim() == 0 {
                    let c = clamps[0];
                    a.mapv_inplace(|v| c.apply(v));
                } else {
                    for (mut sub, &c) in a.axis_iter_mut(ndarray::Axis(0)).zip(&clamps) {
                        sub.mapv_inplace(|v| c.apply(v));
                    }
                }
                Ok(Clamp::none())
            }
        }
    }

    /// Converts the output in place into the raw x0 estimate (checking it is finite) and returns
    /// the per-batch-element thresholds. Afterwards `x0(x, o) == o`.
    pub(crate) fn materialize_thresholds(
        &mut self,
        x: &Array<F, D>,
        t: x0::Thresholding,
        scratch: &mut Vec<F>,
    ) -> Result<Vec<Clamp<F>>> {
        let (cx, co) = (self.cx, self.co);
        let ok = fold_finite!(Zip::from(&mut self.out).and(x), |o, &x| {
            *o = cx * x + co * *o;
            *o
        });
        self.cx = F::zero();
        self.co = F::one();
        if !ok {
            return Err(Error::NonFinite {
                step: self.step,
                level: self.level,
                what: "model output",
            });
        }
        Ok(x0::thresholds(&self.out, t, scratch))
    }

    /// The output buffer and the unconditional branch's buffer.
    pub(crate) fn into_buffers(self) -> (Array<F, D>, Option<Array<F, D>>) {
        (self.out, self.uncond)
    }
}

/// After an update pass found a non-finite value: names the culprit — the model output, the
/// noise, or (if both are finite) the sample itself (overflow). Only runs on the error path.
pub(crate) fn attribute<F: Float, D: Dimension>(
    ok: bool,
    est: &Estimate<F, D>,
    z: Option<&Array<F, D>>,
) -> Result<()> {
    if ok {
        return Ok(());
    }
    let what = if est.out.iter().any(|v| !v.is_finite()) {
        "model output"
    } else if est
        .uncond
        .as_ref()
        .is_some_and(|u| u.iter().any(|v| !v.is_finite()))
    {
        "unconditional model output"
    } else if z.is_some_and(|z| z.iter().any(|v| !v.is_finite())) {
        "noise"
    } else {
        "sample"
    };
    Err(Error::NonFinite {
        step: est.step,
        level: est.level,
        what,
    })
}
