//! Parallel sampling by Picard iterations (ParaDiGMS, Shih et al. 2023; diffusers'
//! `StableDiffusionParadigmsPipeline` with `DDPMParallelScheduler` / `DDIMParallelScheduler`).
//!
//! A sampler walks its grid one model call after another. When the model's cost is dominated
//! by the call itself — a GPU that evaluates a batch of 8 as fast as a batch of 1 — the walk
//! can instead guess the samples of a window of upcoming calls, evaluate all of them in **one
//! batched call** ([`Denoiser::denoise_many`]), re-walk the window with those outputs (no model
//! call), and repeat: a fixed-point (Picard) iteration whose fixed point is exactly the
//! sequential run. Calls whose inputs stopped moving are final and the window slides past
//! them. With a tolerance of 0 the result equals sequential sampling bit for bit; with
//! ParaDiGMS' 0.1 it is within the tolerance's fraction of a step's noise, in far fewer
//! sequential rounds.
//!
//! [`Parallel`] drives **any** sampler of the crate this way: every model call of the run, of
//! a single-stage or multi-stage (Heun, DPM-2) or multistep method, is one entry of the
//! window; the sampler's own update does the re-walk. Stochastic samplers work too when their
//! noise source replays the same draws (every source here is cloned at the window's start).
//!
//! ```
//! use diffusion_samplers::parallel::Parallel;
//! use diffusion_samplers::prelude::*;
//! let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
//! let grid = s.grid(50, Spacing::Leading { offset: 1 })?;
//! let mut model = GaussianMixture::gaussian(vec![0.3, -0.5], vec![0.2, 0.05])?;
//! let x = grid.initial_sample::<f64, _, _, _>((4, 2), &mut SeededNoise::new(0))?;
//! let seq = Ddim::new().sample(&mut model, x.clone(), &grid, &mut SeededNoise::new(1))?;
//! let (par, report) = Parallel::new(10, 0.0).sample(&Ddim::new(), &mut model, x, &grid, SeededNoise::new(1))?;
//! assert_eq!(par, seq); // tolerance 0: the sequential result exactly
//! assert!(report.rounds < 50); // in fewer sequential rounds of model calls
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

use std::collections::VecDeque;

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::{Run, Sampler, SamplerState};

/// How a parallel run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ParallelReport {
    /// Sequential rounds of model calls (each one [`Denoiser::denoise_many`] call): the
    /// latency of the run in model calls.
    pub rounds: usize,
    /// Model evaluations in all (the sum of the batch sizes): the work.
    pub evaluations: usize,
    /// Model calls of the same run done sequentially.
    pub sequential_calls: usize,
}

impl ParallelReport {
    /// `sequential_calls / rounds`: the speed-up in latency when a batched call costs what a
    /// single call does.
    pub fn speedup(&self) -> f64 {
        self.sequential_calls as f64 / self.rounds.max(1) as f64
    }
}

/// The Picard-iteration driver (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Parallel {
    window: usize,
    tolerance: f64,
}

/// A model call of the window: its input and level, and the model's output at that input
/// (`None` until evaluated, or after the input moved).
struct Entry<F, D: Dimension> {
    step: usize,
    level: NoiseLevel,
    input: Array<F, D>,
    output: Option<Array<F, D>>,
}

impl Parallel {
    /// A window of `window` model calls (ParaDiGMS' `parallel`, 10 in diffusers' pipeline) and
    /// a `tolerance` on how far a call's input may move between iterations for its output to
    /// be final: root-mean-square change at most `tolerance` times the noise standard deviation
    /// an ancestral step from that level would add (ParaDiGMS' rule: 0.1 in diffusers'
    /// pipeline; on a last step to the clean level, which adds none, any change counts). 0 asks
    /// for the sequential result exactly.
    pub fn new(window: usize, tolerance: f64) -> Self {
        Parallel { window, tolerance }
    }

    fn check(&self) -> Result<()> {
        if self.window == 0 {
            return Err(Error::InvalidParameter {
                name: "window",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "tolerance",
                value: self.tolerance,
                reason: "must be finite and non-negative",
            });
        }
        Ok(())
    }

    /// Samples `x` (at the grid's first level) with `sampler`, `window` model calls at a time.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a zero window, a bad tolerance, or an adaptive sampler
    /// (whose calls depend on the model's answers: no fixed sequence to iterate on); otherwise
    /// as [`Sampler::sample`] (a model error names the step and level of the call that
    /// failed).
    pub fn sample<S, F, D, M, N>(
        &self,
        sampler: &S,
        model: &mut M,
        x: Array<F, D>,
        grid: &Grid,
        noise: N,
    ) -> Result<(Array<F, D>, ParallelReport)>
    where
        S: Sampler,
        S::State<F, D>: Clone,
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
        N: NoiseSource<F> + Clone,
    {
        self.check()?;
        if sampler.exact_model_calls(grid).is_none() {
            return Err(Error::InvalidParameter {
                name: "sampler",
                value: f64::NAN,
                reason: "parallel sampling needs a fixed sequence of model calls (not an adaptive sampler)",
            });
        }
        let prediction = model.prediction();
        let mut base = sampler.start(x, grid, prediction, noise)?;
        let levels = grid.levels();
        let mut report = ParallelReport::default();
        let mut window: VecDeque<Entry<F, D>> = VecDeque::new();
        while !base.is_finished() {
            // Evaluate every entry whose output is missing, in one batched call.
            if window.is_empty() {
                let req = base.request().ok_or_else(unreachable_finished)?;
                window.push_back(Entry {
                    step: req.step,
                    level: req.level,
                    input: req.x.to_owned(),
                    output: None,
                });
            }
            self.evaluate(model, &mut window, &mut report)?;
            // Re-walk the window from its start with the outputs (guessing past the last one).
            let converged = self.sweep(&base, &mut window, levels)?;
            // The leading converged calls are final: move the window's start past them.
            for _ in 0..converged {
                let e = window.pop_front().ok_or_else(unreachable_finished)?;
                let out = e.output.ok_or_else(unreachable_finished)?;
                base.respond(out)?;
                report.sequential_calls += 1;
            }
        }
        Ok((base.into_sample(), report))
    }

    fn evaluate<F, D, M>(
        &self,
        model: &mut M,
        window: &mut VecDeque<Entry<F, D>>,
        report: &mut ParallelReport,
    ) -> Result<()>
    where
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
    {
        let todo: Vec<usize> = (0..window.len())
            .filter(|&j| window[j].output.is_none())
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let xs: Vec<ArrayView<'_, F, D>> = todo.iter().map(|&j| window[j].input.view()).collect();
        let lv: Vec<NoiseLevel> = todo.iter().map(|&j| window[j].level).collect();
        let first = &window[todo[0]];
        let outs = model.denoise_many(&xs, &lv).map_err(|source| Error::Model {
            step: first.step,
            level: first.level,
            source,
        })?;
        if outs.len() != todo.len() {
            return Err(Error::Model {
                step: first.step,
                level: first.level,
                source: format!(
                    "denoise_many returned {} outputs for {} inputs",
                    outs.len(),
                    todo.len()
                )
                .into(),
            });
        }
        report.rounds += 1;
        report.evaluations += todo.len();
        for (&j, out) in todo.iter().zip(outs) {
            let e = &mut window[j];
            if out.shape() != e.input.shape() {
                return Err(Error::ShapeMismatch {
                    step: e.step,
                    level: e.level,
                    expected: e.input.shape().to_vec(),
                    got: out.shape().to_vec(),
                });
            }
            if out.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    step: e.step,
                    level: e.level,
                    what: "model output",
                });
            }
            e.output = Some(out);
        }
        Ok(())
    }

    /// Walks a copy of `base` through the window, answering each call with its entry's output
    /// (the last output for calls past the window's evaluated ones). Records every call's new
    /// input; returns how many leading calls were answered with an output computed within
    /// tolerance of their input.
    fn sweep<S, F, D, N>(
        &self,
        base: &Run<F, D, S, N>,
        window: &mut VecDeque<Entry<F, D>>,
        levels: &[NoiseLevel],
    ) -> Result<usize>
    where
        S: SamplerState<F, D> + Clone,
        F: Float,
        D: Dimension,
        N: NoiseSource<F> + Clone,
    {
        let mut run = Run::new(base.state().clone(), base.prediction(), base.noise().clone());
        let mut converged = 0;
        let mut leading = true;
        let mut guess: Option<Array<F, D>> = None;
        for j in 0..self.window {
            let Some(req) = run.request() else { break };
            let (step, level) = (req.step, req.level);
            let answer = match window.get_mut(j) {
                Some(e) => {
                    let out = e.output.clone().ok_or_else(unreachable_finished)?;
                    // The same call (level and step) with an input within tolerance.
                    let same_call = e.level == level && e.step == step;
                    let ok = same_call && self.within(req.x.view(), e.input.view(), step, levels);
                    if !same_call {
                        leading = false;
                        e.input.assign(&req.x);
                        (e.level, e.step) = (level, step);
                        e.output = None;
                    } else if ok && leading {
                        // Final: its output (computed within tolerance of this input) stays.
                        converged += 1;
                    } else if !exactly_equal(req.x.view(), e.input.view()) {
                        leading = false;
                        e.input.assign(&req.x);
                        e.level = level;
                        e.output = None;
                    }
                    out
                }
                None => {
                    leading = false;
                    window.push_back(Entry {
                        step,
                        level,
                        input: req.x.to_owned(),
                        output: None,
                    });
                    match guess.take() {
                        Some(g) => g,
                        None => break,
                    }
                }
            };
            guess = Some(answer.clone());
            run.respond(answer)?;
        }
        Ok(converged)
    }

    /// Whether `x` is within tolerance of `old` for a call of step `step`.
    fn within<F: Float, D: Dimension>(
        &self,
        x: ArrayView<'_, F, D>,
        old: ArrayView<'_, F, D>,
        step: usize,
        levels: &[NoiseLevel],
    ) -> bool {
        if exactly_equal(x.view(), old.view()) {
            return true;
        }
        if self.tolerance == 0.0 {
            return false;
        }
        let n = x.len().max(1) as f64;
        let ms = Zip::from(&x).and(&old).fold(0.0f64, |acc, &a, &b| {
            let d = (a - b).as_f64();
            acc + d * d
        }) / n;
        let scale = step_noise_std(levels, step);
        ms.sqrt() <= self.tolerance * scale
    }
}

fn exactly_equal<F: Float, D: Dimension>(a: ArrayView<'_, F, D>, b: ArrayView<'_, F, D>) -> bool {
    #[allow(clippy::float_cmp, reason = "bit-equal inputs give bit-equal outputs")]
    Zip::from(&a).and(&b).all(|&x, &y| x == y)
}

/// The standard deviation of the noise an ancestral step from `levels[step]` to the next level
/// adds, in the sample's scaling: `alpha' sqrt(s'^2 (s^2 - s'^2) / s^2)` with k-diffusion sigmas
/// `s`, `s'` (DDPM's posterior standard deviation on a variance-preserving grid).
fn step_noise_std(levels: &[NoiseLevel], step: usize) -> f64 {
    let (Some(a), Some(b)) = (levels.get(step), levels.get(step + 1)) else {
        return 0.0;
    };
    let (s, s2) = (a.sigma_ve(), b.sigma_ve());
    if !(s.is_finite() && s > 0.0) {
        return b.sigma;
    }
    b.alpha * (s2 * s2 * (s * s - s2 * s2) / (s * s)).max(0.0).sqrt()
}

fn unreachable_finished() -> Error {
    Error::InvalidValue {
        what: "parallel window",
        index: 0,
        value: f64::NAN,
        reason: "internal: a window entry without its output",
    }
}
