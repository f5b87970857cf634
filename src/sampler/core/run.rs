//! [`Run`]: a step-by-step sampling run that owns its state and its noise source.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use super::{Estimate, Request, SamplerState};
use crate::denoiser::{Guided, Prediction};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;

/// A step-by-step sampling run: the sampler asks for a model evaluation
/// ([`request`](Self::request)), the caller answers ([`respond`](Self::respond)).
///
/// The run owns its state and its noise source `N` (an owned generator, or `&mut` one lent by
/// the caller), borrows nothing else, and can be moved, stored in a struct or a queue, and
/// advanced whenever the caller's model output is ready — several runs side by side:
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::AnyState;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![1.0], vec![0.1])?;
/// let samplers: [AnySampler; 2] = [DpmSolver::new().into(), EulerAncestral::new().into()];
/// // Runs of different samplers in one Vec, each owning its noise.
/// let mut runs: Vec<Run<f64, ndarray::Ix2, AnyState<f64, ndarray::Ix2>, SeededNoise>> = samplers
///     .iter()
///     .enumerate()
///     .map(|(i, s)| {
///         let x = grid.initial_sample((4, 1), &mut SeededNoise::new(i as u64))?;
///         s.start(x, &grid, Prediction::Epsilon, SeededNoise::new(10 + i as u64))
///     })
///     .collect::<Result<_, _>>()?;
/// // Advance them round-robin, one model call each in turn.
/// while runs.iter().any(|r| !r.is_finished()) {
///     for run in runs.iter_mut().filter(|r| !r.is_finished()) {
///         let req = run.request().unwrap();
///         let out = model.denoise(req.x, &req.level).unwrap();
///         run.respond(out)?;
///     }
/// }
/// assert!(runs.iter().all(|r| r.sample().iter().all(|v| v.is_finite())));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// After an error from `respond` that happened while updating the sample, the run is finished
/// (`request` returns `None`). Errors detected before the update (shape mismatch, undetermined
/// estimate) leave the run unchanged, so the caller may answer again.
pub struct Run<F: Float, D: Dimension, S, N> {
    state: S,
    prediction: Prediction,
    noise: N,
    /// Recycled model-output buffers for [`Run::output_buffer`].
    spares: Vec<Array<F, D>>,
    /// Whether `output_buffer` has pre-allocated the pool.
    pooled: bool,
    failed: bool,
}

impl<F: Float, D: Dimension, S: std::fmt::Debug, N> std::fmt::Debug for Run<F, D, S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("state", &self.state)
            .field("prediction", &self.prediction)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<F: Float, D: Dimension, S: SamplerState<F, D>, N: NoiseSource<F>> Run<F, D, S, N> {
    /// A run over `state`, for a model whose outputs are of type `prediction`.
    pub fn new(state: S, prediction: Prediction, noise: N) -> Self {
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
        self.respond_guided(Guided::plain(output))
    }

    /// Answers the pending request with a guided output and its branches ([`Guided`], what
    /// [`Denoiser::denoise_call`](crate::Denoiser::denoise_call) returns): the CFG++ samplers
    /// renoise with the unconditional branch; the others use the guided output alone.
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// use diffusion_samplers::{Guided, Preset};
    /// use ndarray::Array2;
    /// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let (sampler, grid) = Preset::get("euler_cfg_pp")?.build(&schedule, 8)?;
    /// let x = grid.initial_sample::<f64, _, _, _>((2, 1), &mut SeededNoise::new(0))?;
    /// let mut run = sampler.start(x, &grid, Prediction::Sample, SeededNoise::new(1))?;
    /// while let Some(req) = run.request() {
    ///     let (cond, uncond) = (Array2::from_elem((2, 1), 1.0), Array2::from_elem((2, 1), 0.0));
    ///     let guided = &uncond + 3.0 * (&cond - &uncond); // CFG, scale 3, in x0 space
    ///     run.respond_guided(Guided { output: guided, cond: Some(cond), uncond: Some(uncond) })?;
    /// }
    /// assert!(run.sample().iter().all(|v| (v - 3.0).abs() < 1e-9));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`respond`](Self::respond), for either branch.
    pub fn respond_guided(&mut self, output: Guided<F, D>) -> Result<()> {
        let (step, level) = {
            let req = self.request().ok_or(Error::Finished)?;
            (req.step, req.level)
        };
        let sample = self.state.sample();
        for a in [Some(&output.output), output.uncond.as_ref()]
            .into_iter()
            .flatten()
        {
            if a.shape() != sample.shape() {
                return Err(Error::ShapeMismatch {
                    step,
                    level,
                    expected: sample.shape().to_vec(),
                    got: a.shape().to_vec(),
                });
            }
        }
        let c = self.prediction.to_x0(&level).ok_or(Error::Undetermined {
            step,
            level,
            prediction: self.prediction,
            what: "x0",
        })?;
        let (cx, co) = (F::cast(c.x), F::cast(c.out));
        let est = Estimate {
            out: output.output,
            cx,
            co,
            step,
            level,
            uncond: output.uncond,
            ucx: cx,
            uco: co,
        };
        match self.state.advance(est, &mut self.noise) {
            Ok(spares) => {
                if self.pooled {
                    self.spares.extend(spares.into_iter().flatten());
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
    /// use ndarray::Array2;
    /// let grid = NoiseSchedule::linear(1000, 1e-4, 0.02)?.grid(10, Spacing::Trailing)?;
    /// let mut run = DpmSolver::new().start(Array2::<f32>::zeros((2, 3)), &grid, Prediction::Sample, SeededNoise::new(0))?;
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
            // The history and working buffers the state may hold, the output's, an
            // unconditional branch's.
            let n = self.state.buffers_held() + 2;
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
    /// let grid = NoiseSchedule::linear(1000, 1e-4, 0.02)?.grid(10, Spacing::Trailing)?;
    /// let mut run = Euler::new().start(Array2::<f64>::ones((2, 3)), &grid, Prediction::Sample, SeededNoise::new(0))?;
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

    /// The pending request with two output buffers — the guided output and the unconditional
    /// branch's — for a guider that writes both in place (then call
    /// [`respond_in_place_guided`](Self::respond_in_place_guided)). `None` once the run is
    /// finished.
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// use diffusion_samplers::Preset;
    /// use ndarray::Array2;
    /// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let (sampler, grid) = Preset::get("dpmpp_2m_cfg_pp")?.build(&schedule, 6)?;
    /// let mut run = sampler.start(Array2::<f32>::zeros((2, 3)), &grid, Prediction::Sample, SeededNoise::new(0))?;
    /// while let Some((_req, mut guided, mut uncond)) = run.request_with_branches() {
    ///     uncond.fill(0.0);
    ///     guided.fill(2.0); // x0: u + 2 (c - u) with c = 1, u = 0
    ///     run.respond_in_place_guided()?;
    /// }
    /// assert!(run.sample().iter().all(|v| (v - 2.0).abs() < 1e-5));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    #[allow(clippy::type_complexity, reason = "a request and two buffers")]
    pub fn request_with_branches(
        &mut self,
    ) -> Option<(Request<'_, F, D>, ArrayViewMut<'_, F, D>, ArrayViewMut<'_, F, D>)> {
        if self.failed || self.state.pending().is_none() {
            return None;
        }
        self.output_buffer();
        while self.spares.len() < 2 {
            self.spares.push(Array::zeros(self.state.sample().raw_dim()));
        }
        let n = self.spares.len();
        let (rest, last) = self.spares.split_at_mut(n - 1);
        let req = self.state.pending()?;
        Some((req, last[0].view_mut(), rest[n - 2].view_mut()))
    }

    /// Answers the pending request with the two buffers of
    /// [`request_with_branches`](Self::request_with_branches): the guided output and the
    /// unconditional branch's.
    ///
    /// # Errors
    /// As [`respond`](Self::respond).
    pub fn respond_in_place_guided(&mut self) -> Result<()> {
        while self.spares.len() < 2 {
            self.spares.push(Array::zeros(self.state.sample().raw_dim()));
        }
        let output = self.spares.pop().ok_or(Error::Finished)?;
        let uncond = self.spares.pop().ok_or(Error::Finished)?;
        self.respond_guided(Guided {
            output,
            cond: None,
            uncond: Some(uncond),
        })
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
        f(self.state.sample_mut(), &level, &mut self.noise);
    }

    /// The run's noise source.
    pub fn noise(&self) -> &N {
        &self.noise
    }

    /// The run's noise source, mutably.
    pub fn noise_mut(&mut self) -> &mut N {
        &mut self.noise
    }

    /// The sampler's state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Ends the run and returns the current sample (the final sample if the run finished).
    pub fn into_sample(self) -> Array<F, D> {
        self.state.into_sample()
    }

    /// Ends the run and returns the current sample and the noise source (to continue its
    /// stream elsewhere).
    pub fn into_parts(self) -> (Array<F, D>, N) {
        (self.state.into_sample(), self.noise)
    }
}
