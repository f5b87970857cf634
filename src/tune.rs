//! Grids tuned on the user's own model: the fewest model calls for a given accuracy.
//!
//! Published step schedules (Align Your Steps, GITS) are tables for a few public models.
//! [`tune_grid`] makes one for *your* model and sampler from a batch of starting samples:
//!
//! 1. **Teacher.** One run of a third-order solver over a fine grid records the trajectory
//!    `x_i` and the model's x0 estimates at every fine level (`fine.steps()` model calls).
//! 2. **Dynamic programme** (GITS, Chen et al. 2024). The cost of jumping from fine level `i`
//!    to level `j` is the distance of one DDIM step from the teacher's `x_i` (with the stored
//!    estimate, no model call) to the teacher's `x_j`; the path of `K` jumps from the first
//!    level to the last with the least total cost is found exactly. `K` is the number of steps
//!    at which the sampler costs exactly the asked number of calls.
//! 3. **Refinement.** Starting from the better of that path and the fine grid thinned evenly
//!    (for a Karras fine grid, the Karras grid), a pattern search moves each interior level
//!    along the fine grid while the *sampler's own* end point, from the same starting samples,
//!    gets closer to the reference end point (the teacher's, or an adaptive solver's at a tight
//!    tolerance: [`Reference`]). Each try costs one run of `nfe` calls.
//!
//! The result is a plain [`Grid`] on the fine grid's schedule: it runs with any sampler, and it
//! saves as its sigmas or timesteps ([`Grid::sigmas_ve`], [`python_sigmas`]) and loads back with
//! [`NoiseSchedule::grid_from_sigmas`](crate::NoiseSchedule::grid_from_sigmas) (or
//! [`Grid::ve`] for VE grids). [`Tuner::tune`] also reports what tuning spent.
//!
//! Errors are the mean over the batch of the Euclidean distance (over each element's values)
//! to the reference end point. Stochastic samplers are tuned against the ODE's end point with a
//! fixed noise seed ([`Tuner::seed`]): that is rarely what one wants; tune a deterministic
//! sampler and use its grid.

use std::time::Instant;

use ndarray::{Array, ArrayView, Dimension};

use crate::denoiser::Denoiser;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::SeededNoise;
use crate::sampler::{AnySampler, DpmAdaptive, DpmSolver, FittedMultistep, Sampler, ThirdOrder};

/// What the tuned sampler's end point is compared with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reference {
    /// The teacher's own end point (third-order DPM-Solver++ over the fine grid).
    Teacher,
    /// Adaptive DPM-Solver ([`DpmAdaptive`]) from the first level to the fine grid's last
    /// level with noise at these tolerances, then the teacher's final step: independent of the
    /// fine grid's resolution.
    Adaptive {
        /// Relative tolerance.
        rtol: f64,
        /// Absolute tolerance.
        atol: f64,
    },
}

/// Options of [`tune_grid`]; [`Tuner::tune`] also reports what tuning spent.
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::tune::Tuner;
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let fine = s.grid(60, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::new(
///     vec![0.5, 0.5],
///     vec![vec![-1.0, 0.0], vec![1.0, 0.5]],
///     vec![vec![0.02, 0.02], vec![0.02, 0.02]],
/// )?;
/// let x: ndarray::Array2<f64> = fine.initial_sample((64, 2), &mut SeededNoise::new(0))?;
/// let tuned = Tuner::new().tune(&DpmSolver::new(), &mut model, x.view(), &fine, 6)?;
/// assert_eq!(tuned.grid.steps(), 6);
/// assert!(tuned.report.error <= tuned.report.error_dp);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuner {
    rounds: usize,
    reference: Reference,
    seed: u64,
    evals: usize,
}

impl Default for Tuner {
    fn default() -> Self {
        Tuner {
            rounds: 8,
            reference: Reference::Teacher,
            seed: 0,
            evals: 0,
        }
    }
}

/// A tuned grid and what tuning it took.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuned {
    /// The grid.
    pub grid: Grid,
    /// What tuning spent and reached.
    pub report: TuneReport,
}

/// What [`Tuner::tune`] spent and reached.
#[derive(Clone, Debug, PartialEq)]
pub struct TuneReport {
    /// Model calls in all (teacher, reference, refinement runs).
    pub model_calls: usize,
    /// Of these, the teacher's.
    pub teacher_calls: usize,
    /// Of these, the adaptive reference's (0 with [`Reference::Teacher`]).
    pub reference_calls: usize,
    /// Sampler runs made to measure and refine grids (each `nfe` calls).
    pub runs: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The sampler's error on the dynamic programme's grid.
    pub error_dp: f64,
    /// The sampler's error on the returned grid.
    pub error: f64,
    /// The returned grid's levels as indices into the fine grid.
    pub indices: Vec<usize>,
}

impl Tuner {
    /// Eight refinement rounds, the teacher as reference, noise seed 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refinement rounds: passes of the pattern search over the interior levels (0: the dynamic
    /// programme's grid as is, with one run to measure it).
    pub fn rounds(mut self, rounds: usize) -> Self {
        self.rounds = rounds;
        self
    }

    /// The reference end point.
    pub fn reference(mut self, reference: Reference) -> Self {
        self.reference = reference;
        self
    }

    /// The most runs [`tune_solver`](Self::tune_solver) makes while fitting (0: `400` per fitted
    /// parameter, about `1200 nfe`).
    pub fn max_runs(mut self, runs: usize) -> Self {
        self.evals = runs;
        self
    }

    /// The noise seed of stochastic samplers' runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Fits a [`FittedMultistep`] solver and its grid for `nfe` calls on `model`: the grid
    /// starts as the one [`tune`](Self::tune) finds for DPM-Solver++(2M) and the coefficients
    /// as DPM-Solver++(2M)'s; then the coefficients `(a_i, b_i)` and the log-sigma spacing of
    /// the levels between that grid's first and last noisy level are fitted together by a
    /// Nelder–Mead search (restarted until it stalls) on the solver's own error from `x`
    /// against the reference end point. Each try is one run of `nfe` calls; the report counts
    /// them (`runs`). The fit is on `x`: measure on other noise.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] (`"nfe"`) for `nfe` of 0 or beyond the fine grid's steps; as
    /// [`tune`](Self::tune) otherwise.
    pub fn tune_solver<F, D, M>(
        &self,
        model: &mut M,
        x: ArrayView<'_, F, D>,
        fine: &Grid,
        nfe: usize,
    ) -> Result<(FittedMultistep, Tuned)>
    where
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
    {
        let clock = Instant::now();
        let (start, target) = self.tune_with_target(&DpmSolver::new(), model, x.view(), fine, nfe)?;
        let levels = start.grid.levels().to_vec();
        let k = levels.len() - 1;
        let last = levels[k];
        // The spacing is fitted between the first level and the last noisy one (both kept);
        // a first level at infinite sigma (zero terminal SNR) keeps the grid as tuned.
        let noisy = if last.is_clean() { k } else { k + 1 };
        let (hi, lo) = (levels[0].sigma_ve().ln(), levels[noisy - 1].sigma_ve().ln());
        let free_grid = hi.is_finite() && noisy >= 3;
        let gaps: Vec<f64> = if free_grid {
            (0..noisy - 1)
                .map(|j| {
                    (levels[j].sigma_ve().ln() - levels[j + 1].sigma_ve().ln())
                        .max(1e-9)
                        .ln()
                })
                .collect()
        } else {
            Vec::new()
        };
        let coefs0 = FittedMultistep::dpmpp_2m(&start.grid);
        let mut p0 = gaps.clone();
        for c in coefs0.coefficients().iter().skip(1) {
            p0.push(c[0]);
        }
        for c in coefs0.coefficients().iter().skip(2) {
            p0.push(c[1]);
        }
        let ng = gaps.len();
        let build = |p: &[f64]| -> Result<(FittedMultistep, Grid)> {
            let grid = if free_grid {
                let w: Vec<f64> = p[..ng].iter().map(|u| u.exp()).collect();
                let total: f64 = w.iter().sum();
                let mut lv = vec![levels[0]];
                let mut acc = 0.0;
                for wj in &w[..ng - 1] {
                    acc += wj / total;
                    lv.push(fine.level_at_sigma_ve((hi - acc * (hi - lo)).exp())?);
                }
                lv.push(levels[noisy - 1]);
                if last.is_clean() {
                    lv.push(last);
                }
                fine.with_levels(lv)?
            } else {
                start.grid.clone()
            };
            let mut coefs = vec![[0.0; 2]; k];
            for i in 1..k {
                coefs[i][0] = p[ng + i - 1];
            }
            for i in 2..k {
                coefs[i][1] = p[ng + (k - 1) + i - 2];
            }
            Ok((FittedMultistep::new(coefs), grid))
        };
        let mut eval = Evaluator {
            sampler: &DpmSolver::new(),
            x: x.view(),
            fine,
            target: &target,
            seed: self.seed,
            runs: 0,
        };
        let mut runs = 0usize;
        let mut objective = |p: &[f64], model: &mut M| -> Result<f64> {
            runs += 1;
            let (solver, grid) = match build(p) {
                Ok(v) => v,
                Err(_) => return Ok(f64::INFINITY),
            };
            match eval.error_with(&solver, model, &grid) {
                Ok(e) if e.is_finite() => Ok(e),
                Err(Error::Model { step, level, source }) => Err(Error::Model { step, level, source }),
                _ => Ok(f64::INFINITY),
            }
        };
        let budget = if self.evals > 0 {
            self.evals
        } else {
            400 * p0.len().max(1)
        };
        let (best, error) = nelder_mead(&mut objective, model, p0, budget)?;
        let (solver, grid) = build(&best)?;
        let error_dp = start.report.error;
        Ok((
            solver,
            Tuned {
                grid,
                report: TuneReport {
                    model_calls: start.report.model_calls + runs * nfe,
                    teacher_calls: start.report.teacher_calls,
                    reference_calls: start.report.reference_calls,
                    runs: start.report.runs + runs,
                    seconds: clock.elapsed().as_secs_f64(),
                    error_dp,
                    error,
                    indices: start.report.indices,
                },
            },
        ))
    }

    /// Tunes a grid for `sampler` on `model` (see the [module docs](self)).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] (`"nfe"`) when no grid on `fine` costs exactly `nfe` calls
    /// with `sampler` (e.g. an even number for Heun, `2N - 1` calls), or the sampler's calls are
    /// not known in advance (adaptive samplers); (`"fine"`) for a fine grid with fewer than two
    /// steps; [`Error::NonFinite`] for a non-finite starting sample; the model's and the
    /// samplers' errors from the runs.
    pub fn tune<S, F, D, M>(
        &self,
        sampler: &S,
        model: &mut M,
        x: ArrayView<'_, F, D>,
        fine: &Grid,
        nfe: usize,
    ) -> Result<Tuned>
    where
        S: Sampler,
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
    {
        self.tune_with_target(sampler, model, x, fine, nfe)
            .map(|(t, _)| t)
    }

    /// [`tune`](Self::tune), also returning the reference end point (flat, f64) it measured
    /// against.
    fn tune_with_target<S, F, D, M>(
        &self,
        sampler: &S,
        model: &mut M,
        x: ArrayView<'_, F, D>,
        fine: &Grid,
        nfe: usize,
    ) -> Result<(Tuned, Vec<f64>)>
    where
        S: Sampler,
        F: Float,
        D: Dimension,
        M: Denoiser<F, D> + ?Sized,
    {
        let clock = Instant::now();
        sampler.validate()?;
        if fine.steps() < 2 {
            return Err(Error::InvalidParameter {
                name: "fine",
                value: fine.steps() as f64,
                reason: "the fine grid needs at least two steps",
            });
        }
        if let Some(v) = x.iter().find(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                step: 0,
                level: fine.levels()[0],
                what: if v.is_nan() {
                    "starting sample (NaN)"
                } else {
                    "starting sample (infinite)"
                },
            });
        }
        let steps = steps_for(sampler, fine, nfe)?;
        let teacher = Teacher::record(model, x.view(), fine)?;
        let (target, reference_calls) = match self.reference {
            Reference::Teacher => (teacher.xs[teacher.xs.len() - 1].clone(), 0),
            Reference::Adaptive { rtol, atol } => {
                let (end, calls) = adaptive_end(model, x.view(), fine, rtol, atol)?;
                (flat(&end), calls)
            }
        };
        let dp = teacher.path(fine, steps);
        let mut eval = Evaluator {
            sampler,
            x,
            fine,
            target: &target,
            seed: self.seed,
            runs: 0,
        };
        let error_dp = eval.error(model, &dp)?;
        // Refine from the better of the programme's path and the fine grid's own spacing thinned
        // evenly (a Karras fine grid gives a Karras grid): the result is never worse than either
        // on the tuning batch.
        let (start, error_start) = if self.rounds > 0 {
            let even = uniform(fine.steps(), steps);
            match eval.error(model, &even) {
                Ok(e) if e < error_dp => (even, e),
                _ => (dp, error_dp),
            }
        } else {
            (dp, error_dp)
        };
        let (indices, error) = refine(&mut eval, model, start, error_start, fine.steps(), self.rounds)?;
        let grid = fine.subset(&indices)?;
        if sampler.exact_model_calls(&grid) != Some(nfe) {
            return Err(no_grid(
                nfe,
                "the tuned grid's calls differ (a sampler whose calls depend on the levels)",
            ));
        }
        let tuned = Tuned {
            grid,
            report: TuneReport {
                model_calls: teacher.calls + reference_calls + eval.runs * nfe,
                teacher_calls: teacher.calls,
                reference_calls,
                runs: eval.runs,
                seconds: clock.elapsed().as_secs_f64(),
                error_dp,
                error,
                indices,
            },
        };
        Ok((tuned, target))
    }
}

/// A grid of `nfe` model calls with `sampler` on `fine`'s levels, tuned on `model` from the
/// starting samples `x` (at `fine`'s first level) against a fine reference run: [`Tuner`]'s
/// defaults (see the [module docs](self)).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// let fine = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(40, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![1.0, -0.5], vec![0.05, 0.05])?;
/// let x: ndarray::Array2<f64> = fine.initial_sample((16, 2), &mut SeededNoise::new(0))?;
/// let grid = diffusion_samplers::tune::tune_grid(&DpmSolver::new(), &mut model, x.view(), &fine, 4)?;
/// assert_eq!(DpmSolver::new().model_calls(&grid), 4);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`Tuner::tune`].
pub fn tune_grid<S, F, D, M>(
    sampler: &S,
    model: &mut M,
    x: ArrayView<'_, F, D>,
    fine: &Grid,
    nfe: usize,
) -> Result<Grid>
where
    S: Sampler,
    F: Float,
    D: Dimension,
    M: Denoiser<F, D> + ?Sized,
{
    Tuner::new().tune(sampler, model, x, fine, nfe).map(|t| t.grid)
}

/// A solver and grid of `nfe` model calls fitted on `model` from the starting samples `x` (at
/// `fine`'s first level): a [`FittedMultistep`] integrator whose per-step coefficients and
/// levels are fitted together (see [`Tuner::tune_solver`]). Where a tuned grid alone cannot
/// reach an accuracy, this usually can: on the sampler table's 2-D mixture, 5 calls reach the
/// error DDIM has at 50 (docs/samplers.md).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// let fine = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(40, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![1.0, -0.5], vec![0.05, 0.05])?;
/// let x: ndarray::Array2<f64> = fine.initial_sample((16, 2), &mut SeededNoise::new(0))?;
/// let (sampler, grid) = diffusion_samplers::tune::tune_solver(&mut model, x.view(), &fine, 3)?;
/// assert_eq!(sampler.kind(), "FittedMultistep");
/// assert_eq!(sampler.model_calls(&grid), 3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`Tuner::tune_solver`].
pub fn tune_solver<F, D, M>(
    model: &mut M,
    x: ArrayView<'_, F, D>,
    fine: &Grid,
    nfe: usize,
) -> Result<(AnySampler, Grid)>
where
    F: Float,
    D: Dimension,
    M: Denoiser<F, D> + ?Sized,
{
    let (solver, tuned) = Tuner::new().tune_solver(model, x, fine, nfe)?;
    Ok((solver.into(), tuned.grid))
}

/// The end point of the probability-flow ODE from `x` at `grid`'s first level to its final
/// level, by adaptive DPM-Solver (order 3) at `rtol` / `atol` down to the last level with
/// noise, then one step of the teacher to the final level; returns it and the model calls it
/// took. A high-accuracy reference that costs far fewer calls than a 1000-step run (about 150
/// at `rtol = 1e-4` on Stable Diffusion's schedule).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// // A grid ending at a level with noise: no final step, the ODE integrated all the way.
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?
///     .grid(10, Spacing::KARRAS)?
///     .with_final(FinalLevel::FirstTimestep);
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((8, 1), &mut SeededNoise::new(0))?;
/// let (end, calls) = diffusion_samplers::tune::adaptive_end(&mut model, x.view(), &grid, 1e-5, 1e-5)?;
/// // For a single Gaussian the ODE's end point is known exactly.
/// let exact = model.ode_solution(x.view(), &grid.levels()[0], grid.levels().last().unwrap())?;
/// assert!((&end - &exact).iter().all(|d| d.abs() < 1e-3));
/// assert!(calls > 10);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`DpmAdaptive`]'s runs; the model's errors.
pub fn adaptive_end<F, D, M>(
    model: &mut M,
    x: ArrayView<'_, F, D>,
    grid: &Grid,
    rtol: f64,
    atol: f64,
) -> Result<(Array<F, D>, usize)>
where
    F: Float,
    D: Dimension,
    M: Denoiser<F, D> + ?Sized,
{
    let adaptive = DpmAdaptive::new().rtol(rtol).atol(atol);
    let mut calls = 0;
    let y = adaptive.sample_with(model, x.to_owned(), grid, &mut SeededNoise::new(0), |_| {
        calls += 1
    })?;
    // The last step: from the last level with noise to the final one.
    let n = grid.steps();
    let last = grid.levels()[n - 1];
    if grid.levels()[n].sigma_ve() >= last.sigma_ve() || last != grid.last_noisy() {
        return Ok((y, calls));
    }
    let tail = grid.subset(&[n - 1, n])?;
    let out = teacher_sampler().sample(model, y, &tail, &mut SeededNoise::new(0))?;
    Ok((out, calls + 1))
}

/// k-diffusion's `sigmas=` list of a grid: its sigmas `sigma / alpha`, the final one included,
/// each printed so that it parses back to the same `f64`.
///
/// ```
/// use diffusion_samplers::prelude::*;
/// let g = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(3, Spacing::KARRAS)?;
/// let text = diffusion_samplers::tune::python_sigmas(&g);
/// assert!(text.starts_with("sigmas=[14.6"));
/// assert!(text.ends_with(", 0.0]"));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
pub fn python_sigmas(grid: &Grid) -> String {
    let s: Vec<String> = grid.sigmas_ve().iter().map(|v| format!("{v:?}")).collect();
    format!("sigmas=[{}]", s.join(", "))
}

fn teacher_sampler() -> DpmSolver {
    DpmSolver::new().order(3).third_order(ThirdOrder::Corrected)
}

fn no_grid(nfe: usize, reason: &'static str) -> Error {
    Error::InvalidParameter {
        name: "nfe",
        value: nfe as f64,
        reason,
    }
}

/// The number of steps at which `sampler` costs exactly `nfe` calls on `fine`'s levels.
fn steps_for<S: Sampler>(sampler: &S, fine: &Grid, nfe: usize) -> Result<usize> {
    let m = fine.steps();
    for k in 1..=m {
        let idx = uniform(m, k);
        let grid = fine.subset(&idx)?;
        match sampler.exact_model_calls(&grid) {
            None => {
                return Err(no_grid(
                    nfe,
                    "the sampler's calls are not known in advance (adaptive)",
                ));
            }
            Some(c) if c == nfe => return Ok(k),
            Some(c) if c > nfe => break,
            Some(_) => {}
        }
    }
    Err(no_grid(
        nfe,
        "no grid on the fine grid costs exactly this many calls with this sampler",
    ))
}

/// `k + 1` increasing indices from 0 to `m`, evenly spread.
fn uniform(m: usize, k: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=k).map(|i| (i * m + k / 2) / k).collect();
    v[k] = m;
    for i in 1..=k {
        if v[i] <= v[i - 1] {
            v[i] = v[i - 1] + 1;
        }
    }
    v
}

/// The teacher's trajectory: the sample at every fine level (the last its end point) and the x0
/// estimate at every level with noise, flattened in f64.
struct Teacher {
    xs: Vec<Vec<f64>>,
    x0s: Vec<Vec<f64>>,
    batch: usize,
    calls: usize,
}

impl Teacher {
    fn record<F: Float, D: Dimension, M: Denoiser<F, D> + ?Sized>(
        model: &mut M,
        x: ArrayView<'_, F, D>,
        fine: &Grid,
    ) -> Result<Self> {
        let (mut xs, mut x0s) = (Vec::new(), Vec::new());
        let mut failed = None;
        // One call per fine level: each call's input is the trajectory at that level.
        let end = teacher_sampler().sample_with(
            model,
            x.to_owned(),
            fine,
            &mut SeededNoise::new(0),
            |p| match p.x0() {
                Ok(x0) => {
                    xs.push(p.x.iter().map(|v| v.as_f64()).collect());
                    x0s.push(flat(&x0));
                }
                Err(e) => failed = failed.take().or(Some(e)),
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
        let calls = x0s.len();
        xs.push(flat(&end));
        Ok(Teacher {
            xs,
            x0s,
            batch: batch(x.shape()),
            calls,
        })
    }

    /// GITS's cost of the jump `i -> j`: one DDIM step from the teacher's point and estimate.
    fn cost(&self, levels: &[NoiseLevel], i: usize, j: usize) -> f64 {
        let (from, to) = (levels[i], levels[j]);
        let (x, x0, target) = (&self.xs[i], &self.x0s[i], &self.xs[j]);
        // x' = alpha' x0 + sigma' (x - alpha x0) / sigma.
        let r = to.sigma / from.sigma;
        let k0 = to.alpha - r * from.alpha;
        mean_distance(
            x.iter().zip(x0).map(|(&x, &x0)| r * x + k0 * x0),
            target,
            self.batch,
        )
    }

    /// The path of `k` jumps from level 0 to the last fine level with the least total cost.
    fn path(&self, fine: &Grid, k: usize) -> Vec<usize> {
        let levels = fine.levels();
        let m = self.xs.len() - 1;
        let mut cost = vec![vec![f64::INFINITY; m + 1]; m + 1];
        for (i, row) in cost.iter_mut().enumerate().take(m) {
            for (j, c) in row.iter_mut().enumerate().skip(i + 1) {
                *c = self.cost(levels, i, j);
            }
        }
        // best[s][j]: the least cost of reaching j in s jumps; from[s][j] the level before.
        let mut best = vec![vec![f64::INFINITY; m + 1]; k + 1];
        let mut prev = vec![vec![0usize; m + 1]; k + 1];
        best[0][0] = 0.0;
        for s in 1..=k {
            for j in s..=m {
                for i in (s - 1)..j {
                    let v = best[s - 1][i] + cost[i][j];
                    if v < best[s][j] {
                        best[s][j] = v;
                        prev[s][j] = i;
                    }
                }
            }
        }
        let mut path = vec![m];
        let mut j = m;
        for s in (1..=k).rev() {
            j = prev[s][j];
            path.push(j);
        }
        path.reverse();
        path
    }
}

/// The values of `a` in logical order, in f64.
fn flat<F: Float, D: Dimension>(a: &Array<F, D>) -> Vec<f64> {
    a.iter().map(|v| v.as_f64()).collect()
}

/// Batch elements of an array of `shape` (its first axis; 1 for 0-dimensional arrays).
fn batch(shape: &[usize]) -> usize {
    shape.first().map_or(1, |&b| b.max(1))
}

/// The mean over `batch` elements of the Euclidean distance between `a` and `b` (flat, in
/// logical order).
fn mean_distance(a: impl Iterator<Item = f64>, b: &[f64], batch: usize) -> f64 {
    let per = (b.len() / batch.max(1)).max(1);
    let mut sums = vec![0.0; b.len().div_ceil(per)];
    for (i, (a, &b)) in a.zip(b).enumerate() {
        sums[i / per] += (a - b) * (a - b);
    }
    sums.iter().map(|s| s.sqrt()).sum::<f64>() / sums.len().max(1) as f64
}

/// Runs the sampler on candidate grids and measures the error to the target.
struct Evaluator<'a, S, F, D: Dimension> {
    sampler: &'a S,
    x: ArrayView<'a, F, D>,
    fine: &'a Grid,
    target: &'a [f64],
    seed: u64,
    runs: usize,
}

impl<S: Sampler, F: Float, D: Dimension> Evaluator<'_, S, F, D> {
    fn error<M: Denoiser<F, D> + ?Sized>(&mut self, model: &mut M, indices: &[usize]) -> Result<f64> {
        let grid = self.fine.subset(indices)?;
        self.error_with(self.sampler, model, &grid)
    }

    /// The error of `sampler`'s run over `grid`.
    fn error_with<T: Sampler, M: Denoiser<F, D> + ?Sized>(
        &mut self,
        sampler: &T,
        model: &mut M,
        grid: &Grid,
    ) -> Result<f64> {
        self.runs += 1;
        let out = sampler.sample(model, self.x.to_owned(), grid, &mut SeededNoise::new(self.seed))?;
        Ok(mean_distance(
            out.iter().map(|v| v.as_f64()),
            self.target,
            batch(out.shape()),
        ))
    }
}

/// Pattern search over the interior levels' positions on the fine grid: each level tries a
/// move by `delta` fine steps either way, keeping a move that lowers the error; `delta` halves
/// after a pass without improvement.
fn refine<S: Sampler, F: Float, D: Dimension, M: Denoiser<F, D> + ?Sized>(
    eval: &mut Evaluator<'_, S, F, D>,
    model: &mut M,
    mut path: Vec<usize>,
    mut error: f64,
    m: usize,
    rounds: usize,
) -> Result<(Vec<usize>, f64)> {
    let k = path.len() - 1;
    let mut delta = (m / (4 * k)).max(1);
    let mut round = 0;
    while round < rounds && k > 1 {
        let mut improved = false;
        for n in 1..k {
            for dir in [-1isize, 1] {
                let Some(candidate) = path[n].checked_add_signed(dir * delta as isize) else {
                    continue;
                };
                if candidate <= path[n - 1] || candidate >= path[n + 1] {
                    continue;
                }
                let mut trial = path.clone();
                trial[n] = candidate;
                // A candidate the sampler cannot run (e.g. a non-finite result) is skipped.
                match eval.error(model, &trial) {
                    Ok(e) if e < error => {
                        error = e;
                        path = trial;
                        improved = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(Error::Model { step, level, source }) => {
                        return Err(Error::Model { step, level, source });
                    }
                    Err(_) => {}
                }
            }
        }
        if !improved {
            if delta == 1 {
                break;
            }
            delta /= 2;
        }
        round += 1;
    }
    Ok((path, error))
}

/// Nelder–Mead minimisation of `f` from `p0` within `budget` evaluations (the adaptive
/// coefficients of Gao and Han 2012), restarted from the best point while a restart improves it
/// by more than 0.1%. Returns the best point and value.
fn nelder_mead<M: ?Sized>(
    f: &mut impl FnMut(&[f64], &mut M) -> Result<f64>,
    model: &mut M,
    p0: Vec<f64>,
    budget: usize,
) -> Result<(Vec<f64>, f64)> {
    let n = p0.len();
    let mut best_v = f(&p0, model)?;
    let mut best = p0;
    let mut used = 1;
    if n == 0 {
        return Ok((best, best_v));
    }
    let nf = n as f64;
    let (gamma, rho, sigma) = (1.0 + 2.0 / nf, 0.75 - 1.0 / (2.0 * nf), 1.0 - 1.0 / nf);
    loop {
        let start_v = best_v;
        // A simplex around the best point: steps of 10% (0.05 for values near 0).
        let mut simplex: Vec<(Vec<f64>, f64)> = vec![(best.clone(), best_v)];
        for i in 0..n {
            let mut p = best.clone();
            p[i] += if p[i].abs() > 0.05 { 0.1 * p[i] } else { 0.05 };
            let v = f(&p, model)?;
            used += 1;
            simplex.push((p, v));
        }
        while used < budget {
            simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
            let (lo, hi) = (simplex[0].1, simplex[n].1);
            if (hi - lo).abs() <= 1e-12 * lo.abs().max(1e-300) {
                break;
            }
            let centroid: Vec<f64> = (0..n)
                .map(|j| simplex[..n].iter().map(|(p, _)| p[j]).sum::<f64>() / nf)
                .collect();
            let towards = |t: f64, p: &[f64]| -> Vec<f64> {
                (0..n).map(|j| centroid[j] + t * (p[j] - centroid[j])).collect()
            };
            let worst = simplex[n].0.clone();
            let xr = towards(-1.0, &worst);
            let vr = f(&xr, model)?;
            used += 1;
            if vr < simplex[0].1 {
                let xe = towards(-gamma, &worst);
                let ve = f(&xe, model)?;
                used += 1;
                simplex[n] = if ve < vr { (xe, ve) } else { (xr, vr) };
            } else if vr < simplex[n - 1].1 {
                simplex[n] = (xr, vr);
            } else {
                let outside = vr < simplex[n].1;
                let xc = if outside {
                    towards(-rho, &worst)
                } else {
                    towards(rho, &worst)
                };
                let vc = f(&xc, model)?;
                used += 1;
                if vc < vr.min(simplex[n].1) {
                    simplex[n] = (xc, vc);
                } else {
                    // Shrink towards the best vertex.
                    let b = simplex[0].0.clone();
                    for (p, v) in simplex.iter_mut().skip(1) {
                        for j in 0..n {
                            p[j] = b[j] + sigma * (p[j] - b[j]);
                        }
                        *v = f(p, model)?;
                        used += 1;
                    }
                }
            }
        }
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        if simplex[0].1 < best_v {
            best_v = simplex[0].1;
            best = simplex[0].0.clone();
        }
        if used >= budget || best_v >= start_v * (1.0 - 1e-3) {
            return Ok((best, best_v));
        }
    }
}
