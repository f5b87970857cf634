//! Samplers: the [`Sampler`] trait, the step-by-step [`Run`], and one module per algorithm.
//!
//! Every sampler is written once in `(alpha, sigma)` form around the model's estimate of `x0`,
//! so any sampler works with any schedule, grid and [`Prediction`] type. Two ways to drive one:
//!
//! * [`Sampler::sample`] with a [`Denoiser`]: one call, noise to data;
//! * [`Sampler::start`] and a [`Run`]: the sampler asks for a level, the caller answers with the
//!   model output — for models that cannot sit behind a trait (async, GPU queues), progress
//!   bars, previews, cancellation.
//!
//! ```
//! use diffusion_samplers::prelude::*;
//! use ndarray::Array2;
//! use rand::{rngs::StdRng, SeedableRng};
//!
//! let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
//! let grid = schedule.grid(20, Spacing::Leading { offset: 0 })?;
//! let mut model = GaussianMixture::gaussian(vec![1.0, -1.0], vec![0.1, 0.1])?;
//! let mut rng = StdRng::seed_from_u64(0);
//! let x: Array2<f32> = standard_normal((4, 2), &mut rng);
//! // Step by step: the caller runs the model.
//! let mut run = Ddim::new().clip_sample(None).start(x, &grid, Prediction::Epsilon, &mut rng)?;
//! while let Some(req) = run.request() {
//!     let out = model.denoise(req.x, &req.level).unwrap();
//!     run.respond(out)?;
//! }
//! let sample = run.into_sample();
//! assert!((sample[[0, 0]] - 1.0).abs() < 1.5);
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

/// Arrays at least this long are updated in parallel blocks with the `rayon` feature (below
/// about a million elements a step is too short for the threads' wake-up and the traffic
/// between the cores' caches to pay off; benches/steps.rs `scaling`).
#[cfg(feature = "rayon")]
pub(crate) const PAR_MIN: usize = 1 << 20;

/// One fused pass `zip.fold(.., |bad, args| ..)` (in a function generic over `F: Float`) whose
/// body returns a probe value per element
/// (finite iff everything it computed is finite); evaluates to whether all were finite.
/// The probes are OR-ed as `(v - v).to_bits()`, which vectorises (a boolean AND does not, and
/// costs as much as the update itself). Split into parallel blocks with the `rayon` feature on
/// large arrays (bit-identical: the pass is element-wise and the reduction is an OR).
macro_rules! fold_finite {
    // `clamp = c;`: the body calls `c.apply(raw)`; compiled twice, once with the identity clamp
    // (the common case, which then costs nothing) and once with `c`.
    (clamp = $c:ident; seq; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        if $c.is_none() {
            let $c = $crate::sampler::x0::NoClamp;
            fold_finite!(seq; $zip, |$($arg),*| $body)
        } else {
            fold_finite!(seq; $zip, |$($arg),*| $body)
        }
    };
    (clamp = $c:ident; par; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        fold_finite!(clamp = $c; $zip, |$($arg),*| $body)
    };
    (clamp = $c:ident; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        if $c.is_none() {
            let $c = $crate::sampler::x0::NoClamp;
            fold_finite!($zip, |$($arg),*| $body)
        } else {
            fold_finite!($zip, |$($arg),*| $body)
        }
    };
    // Six-array zips have no parallel fold in ndarray: always sequential.
    (seq; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        $zip.fold(<F as $crate::Float>::Bits::default(), |bad, $($arg),*| bad | $crate::Float::nonfinite_bits($body))
            == <F as $crate::Float>::Bits::default()
    };
    (par; $zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {
        fold_finite!($zip, |$($arg),*| $body)
    };
    ($zip:expr, |$($arg:pat_param),* $(,)?| $body:block) => {{
        let zip = $zip;
        #[cfg(feature = "rayon")]
        {
            if zip.size() >= $crate::sampler::PAR_MIN {
                zip.par_fold(
                    <F as $crate::Float>::Bits::default,
                    |bad, $($arg),*| bad | $crate::Float::nonfinite_bits($body),
                    |a, b| a | b,
                ) == <F as $crate::Float>::Bits::default()
            } else {
                fold_finite!(seq; zip, |$($arg),*| $body)
            }
        }
        #[cfg(not(feature = "rayon"))]
        {
            fold_finite!(seq; zip, |$($arg),*| $body)
        }
    }};
}

mod any;
mod coefs;
mod ddim;
mod ddpm;
mod dpm2;
mod dpmpp;
mod dpmpp_2s;
mod euler;
mod heun;
mod history;
mod kernel;
mod lcm;
mod lms;
mod pndm;
mod singlestep;
mod unipc;
mod walk;
pub(crate) mod x0;

pub use any::{AnySampler, AnyState};
pub use ddim::{Ddim, DdimState};
pub use ddpm::{Ddpm, DdpmState, DdpmVariance};
pub use dpm2::{Dpm2, Dpm2Ancestral, Dpm2AncestralState, Dpm2State};
pub use dpmpp::{DpmSolver, DpmSolverState, SolverType, ThirdOrder};
pub use dpmpp_2s::{DpmPp2sAncestral, DpmPp2sAncestralState};
pub use euler::{Euler, EulerAncestral, EulerAncestralState, EulerState};
pub use heun::{Heun, HeunState};
pub use lcm::{Lcm, LcmState};
pub use lms::{Deis, Lms, LmsState};
pub use pndm::{Ipndm, Pndm, PndmState};
pub use singlestep::{DpmSolverSinglestep, SinglestepState};
pub use unipc::{UniPc, UniPcState, UniPcVariant};
pub use x0::Thresholding;

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use crate::denoiser::{Denoiser, Prediction};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;
pub(crate) use walk::Walk;
use x0::Clamp;

/// A sampling algorithm: walks a [`Grid`] from noise to data.
///
/// Implementors provide [`init`](Self::init) (validate the configuration, set up the run's
/// state) and [`model_calls`](Self::model_calls); [`start`](Self::start) and
/// [`sample`](Self::sample) are provided.
pub trait Sampler {
    /// The state of one run of this sampler.
    type State<F: Float, D: Dimension>: SamplerState<F, D>;

    /// Sets up a run from `x`, the sample at `grid.levels()[0]` in the model's native scaling.
    /// Samplers that perturb the sample before the first model call (stochastic churn) draw
    /// that noise from `noise` here.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a configuration out of range.
    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Self::State<F, D>>;

    /// How many model evaluations a run over `grid` costs (NFE).
    fn model_calls(&self, grid: &Grid) -> usize;

    /// Starts a step-by-step [`Run`] for a model whose outputs are of type `prediction`,
    /// drawing any noise it needs from `noise`.
    ///
    /// # Errors
    /// As [`init`](Self::init).
    #[allow(clippy::type_complexity, reason = "the run type is spelled out once, here")]
    fn start<'n, F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        prediction: Prediction,
        noise: &'n mut N,
    ) -> Result<Run<'n, F, D, Self::State<F, D>, N>> {
        let state = self.init(x, grid, noise)?;
        Ok(Run::new(state, prediction, noise))
    }

    /// Samples from `x` (at `grid.levels()[0]`, in the model's native scaling) to the grid's
    /// final level. Deterministic samplers never touch `noise`.
    ///
    /// # Errors
    /// Configuration errors as [`init`](Self::init); during the run, each naming the step and
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
    /// let x = standard_normal::<f64, _, _, _>((16, 1), &mut SeededNoise::new(0)) * grid.levels()[0].sigma;
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
        let mut run = self.start(x, grid, prediction, noise)?;
        let mut call = 0;
        while let Some(req) = run.request() {
            let (step, level) = (req.step, req.level);
            let out = model
                .denoise(req.x.view(), &level)
                .map_err(|source| Error::Model { step, level, source })?;
            call += 1;
            if out.shape() == req.x.shape() {
                on_call(&Progress {
                    call,
                    total_calls,
                    step,
                    level,
                    x: req.x.view(),
                    output: out.view(),
                    prediction,
                });
            }
            run.respond(out)?;
        }
        Ok(run.into_sample())
    }
}

/// The state of one sampling run; driven by [`Run`]. Each sampler has its own.
pub trait SamplerState<F: Float, D: Dimension> {
    /// The next model evaluation the sampler needs, or `None` once the run is finished.
    fn pending(&self) -> Option<Request<'_, F, D>>;

    /// Consumes the model's output for the pending request and advances (drawing any noise the
    /// update, or the next request, needs). Returns a buffer the run may reuse for a later model
    /// output, if one became free.
    ///
    /// # Errors
    /// [`Error::NonFinite`] if the estimate, the noise or the updated sample is not finite.
    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Option<Array<F, D>>>;

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

/// A model evaluation the sampler asks for: evaluate the model on `x` at `level`.
#[derive(Debug)]
pub struct Request<'a, F, D: Dimension> {
    /// Sampler step (0 = first); multi-stage samplers ask several times per step.
    pub step: usize,
    /// The level to evaluate at (`level.t` is the model's timestep input).
    pub level: NoiseLevel,
    /// The input to evaluate, in the model's native scaling.
    pub x: ArrayView<'a, F, D>,
}

impl<F: Float, D: Dimension> Request<'_, F, D> {
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
    /// Model calls the run makes in all ([`Sampler::model_calls`]).
    pub total_calls: usize,
    /// Sampler step of this call (0 = first).
    pub step: usize,
    /// The level the model was evaluated at.
    pub level: NoiseLevel,
    /// The model input.
    pub x: ArrayView<'a, F, D>,
    /// The model output.
    pub output: ArrayView<'a, F, D>,
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
    /// clamp is the identity.
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

    pub(crate) fn into_buffer(self) -> Array<F, D> {
        self.out
    }
}

/// After an update pass found a non-finite value in the new sample: names the culprit — the
/// model output, the noise, or (if both are finite) the sample itself (overflow, or a
/// non-finite input sample). Only runs on the error path.
pub(crate) fn attribute<F: Float, D: Dimension>(
    x_ok: bool,
    est: &Estimate<F, D>,
    z: Option<&Array<F, D>>,
) -> Result<()> {
    if x_ok {
        return Ok(());
    }
    let what = if est.out.iter().any(|v| !v.is_finite()) {
        "model output"
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

/// A step-by-step sampling run: the sampler asks for a model evaluation
/// ([`request`](Self::request)), the caller answers ([`respond`](Self::respond)).
///
/// The run borrows the noise source it was started with. After an error from `respond` that
/// happened while updating the sample, the run is finished (`request` returns `None`). Errors
/// detected before the update (shape mismatch, undetermined estimate) leave the run unchanged,
/// so the caller may answer again.
pub struct Run<'n, F: Float, D: Dimension, S, N: ?Sized> {
    state: S,
    prediction: Prediction,
    noise: &'n mut N,
    /// Recycled model-output buffers for [`Run::output_buffer`].
    spares: Vec<Array<F, D>>,
    /// Whether `output_buffer` has pre-allocated the pool.
    pooled: bool,
    failed: bool,
}

impl<F: Float, D: Dimension, S: std::fmt::Debug, N: ?Sized> std::fmt::Debug for Run<'_, F, D, S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("state", &self.state)
            .field("prediction", &self.prediction)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<'n, F: Float, D: Dimension, S: SamplerState<F, D>, N: NoiseSource<F> + ?Sized> Run<'n, F, D, S, N> {
    /// A run over `state`, for a model whose outputs are of type `prediction`.
    pub fn new(state: S, prediction: Prediction, noise: &'n mut N) -> Self {
        Run {
            state,
            prediction,
            noise,
            spares: Vec::new(),
            pooled: false,
            failed: false,
        }
    }

    /// The next model evaluation to perform, or `None` when the run is finished.
    pub fn request(&self) -> Option<Request<'_, F, D>> {
        if self.failed { None } else { self.state.pending() }
    }

    /// `true` once there is nothing left to evaluate.
    pub fn is_finished(&self) -> bool {
        self.request().is_none()
    }

    /// The model's prediction type.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// Answers the pending request with the model's output.
    ///
    /// # Errors
    /// [`Error::Finished`] if nothing is pending; [`Error::ShapeMismatch`] if `output` differs
    /// from the sample in shape; [`Error::Undetermined`] if the prediction type cannot give
    /// `x0` at this level; [`Error::NonFinite`] from the update.
    pub fn respond(&mut self, output: Array<F, D>) -> Result<()> {
        let (step, level, shape_ok) = {
            let req = self.request().ok_or(Error::Finished)?;
            (req.step, req.level, req.x.shape() == output.shape())
        };
        if !shape_ok {
            return Err(Error::ShapeMismatch {
                step,
                level,
                expected: self.state.sample().shape().to_vec(),
                got: output.shape().to_vec(),
            });
        }
        let c = self.prediction.to_x0(&level).ok_or(Error::Undetermined {
            step,
            level,
            prediction: self.prediction,
            what: "x0",
        })?;
        let est = Estimate {
            out: output,
            cx: F::cast(c.x),
            co: F::cast(c.out),
            step,
            level,
        };
        match self.state.advance(est, self.noise) {
            Ok(spare) => {
                if let Some(buf) = spare
                    && self.pooled
                {
                    self.spares.push(buf);
                }
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// A buffer, shaped like the sample, for the model to write its output into; answer with
    /// [`respond_in_place`](Self::respond_in_place). The run recycles these buffers (and the
    /// ones its multistep history releases), so that after the first call no step allocates.
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// use ndarray::{Array2, Zip};
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// let grid = s.grid(10, Spacing::Trailing)?;
    /// let mut rng = StdRng::seed_from_u64(0);
    /// let mut run = DpmSolver::new().start(Array2::<f32>::zeros((2, 3)), &grid, Prediction::Sample, &mut rng)?;
    /// while let Some(req) = run.request() {
    ///     let _ = (req.step, req.level); // a model would read req.x here
    ///     let mut out = run.output_buffer();
    ///     out.fill(0.5); // "x0 = 0.5": write the model output in place
    ///     run.respond_in_place()?;
    /// }
    /// assert!(run.sample().iter().all(|v| (v - 0.5).abs() < 1e-6));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    pub fn output_buffer(&mut self) -> ArrayViewMut<'_, F, D> {
        if !self.pooled {
            self.pooled = true;
            let n = self.state.buffers_held() + 1;
            self.spares.reserve(n + 1);
            let dim = self.state.sample().raw_dim();
            for _ in 0..n {
                self.spares.push(Array::zeros(dim.clone()));
            }
        }
        if self.spares.is_empty() {
            self.spares.push(Array::zeros(self.state.sample().raw_dim()));
        }
        let last = self.spares.len() - 1;
        self.spares[last].view_mut()
    }

    /// The pending request together with the output buffer, so that a model can read the input
    /// and write its output in place in one go (then call
    /// [`respond_in_place`](Self::respond_in_place)). `None` once the run is finished.
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// use ndarray::{Array2, Zip};
    /// use rand::{rngs::StdRng, SeedableRng};
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// let grid = s.grid(10, Spacing::Trailing)?;
    /// let mut rng = StdRng::seed_from_u64(0);
    /// let mut run = Euler::new().start(Array2::<f64>::ones((2, 3)), &grid, Prediction::Sample, &mut rng)?;
    /// while let Some((req, mut out)) = run.request_with_output() {
    ///     // A model predicting x0 = x / 2, written straight into the run's buffer.
    ///     Zip::from(&mut out).and(&req.x).for_each(|o, &x| *o = 0.5 * x);
    ///     run.respond_in_place()?;
    /// }
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    pub fn request_with_output(&mut self) -> Option<(Request<'_, F, D>, ArrayViewMut<'_, F, D>)> {
        if self.failed || self.state.pending().is_none() {
            return None;
        }
        self.output_buffer();
        let last = self.spares.len() - 1;
        let buf = self.spares[last].view_mut();
        let req = self.state.pending()?;
        Some((req, buf))
    }

    /// Answers the pending request with the contents of [`output_buffer`](Self::output_buffer).
    ///
    /// # Errors
    /// As [`respond`](Self::respond).
    pub fn respond_in_place(&mut self) -> Result<()> {
        if self.spares.is_empty() {
            self.output_buffer();
        }
        let buf = self.spares.pop().ok_or(Error::Finished)?;
        self.respond(buf)
    }

    /// The current sample (the final sample once finished).
    pub fn sample(&self) -> ArrayView<'_, F, D> {
        self.state.sample()
    }

    /// The level the current sample is at.
    pub fn level(&self) -> NoiseLevel {
        self.state.level()
    }

    /// The current sample, mutably, between steps (e.g. to re-impose known pixels at the
    /// current [`level`](Self::level), as inpainting does).
    pub fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.state.sample_mut()
    }

    /// Edits the current sample between steps with access to the run's noise source: `f`
    /// receives the sample, the level it is at and the noise source (inpainting re-imposes known
    /// pixels this way).
    pub fn edit(&mut self, f: impl FnOnce(ArrayViewMut<'_, F, D>, &NoiseLevel, &mut N)) {
        let level = self.state.level();
        f(self.state.sample_mut(), &level, self.noise);
    }

    /// The sampler's state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Ends the run and returns the current sample (the final sample if the run finished).
    pub fn into_sample(self) -> Array<F, D> {
        self.state.into_sample()
    }
}

fn check_eta(eta: f64) -> Result<()> {
    if eta.is_finite() && eta >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "eta",
            value: eta,
            reason: "must be finite and non-negative",
        })
    }
}

/// Allocates (once) and returns the noise buffer, filled for `step`.
pub(crate) fn fill_noise<'a, F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
    buf: &'a mut Option<Array<F, D>>,
    like: &Array<F, D>,
    step: usize,
    noise: &mut N,
) -> &'a Array<F, D> {
    let z = buf.get_or_insert_with(|| Array::zeros(like.raw_dim()));
    noise.fill(step, z.view_mut());
    z
}
