//! Restart sampling (Xu et al. 2023) as AUTOMATIC1111 ships it ("Restart").

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::heun::Heun;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::{Estimate, HeunState, Request, Sampler, SamplerState, Spares};

/// One restart interval: AUTOMATIC1111's `restart_list` entry `{min_sigma: [steps, times,
/// max_sigma]}`. After the main walk reaches the level nearest `min_sigma`, the sample is noised
/// up to the level nearest `max_sigma` and walked back down with `steps - 1` Heun steps on a
/// Karras ramp, `times` times over. Sigmas are k-diffusion's (`sigma / alpha`).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{Restart, RestartInterval};
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
/// let r = Restart::new().intervals(vec![RestartInterval { min_sigma: 0.5, steps: 4, times: 2, max_sigma: 3.0 }]);
/// // Ten main steps plus two restarts of three Heun steps each.
/// assert_eq!(r.plan(&grid)?.len(), 10 + 2 * 3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RestartInterval {
    /// Where the interval ends (the main grid's sigma nearest it).
    pub min_sigma: f64,
    /// Sigmas of each backward pass (`steps - 1` Heun steps).
    pub steps: usize,
    /// How many times the interval is restarted.
    pub times: usize,
    /// Where each restart begins (the main grid's sigma nearest it).
    pub max_sigma: f64,
}

/// Restart sampling[^restart] (AUTOMATIC1111's "Restart", `restart_sampler` in its
/// `sd_samplers_extra.py`): Heun's method (an Euler step to the clean level) along the grid,
/// and in *restart intervals* the sample is pushed back to a higher noise level with fresh
/// noise — the forward process, `y <- y + s_noise sqrt(tau_max^2 - tau_min^2) z` in
/// k-diffusion's coordinates — and integrated down again. The added noise contracts the errors
/// the ODE steps accumulated, so that it reaches lower sample error than an ODE sampler at the
/// same number of calls while taking larger steps than an SDE sampler.
///
/// [`Restart::new`] is AUTOMATIC1111's automatic configuration: on a grid of `N >= 20` steps
/// the main walk is replaced by a Karras ramp of `N - r t` steps between the grid's first and
/// last noisy sigma, with one interval `{0.1: [r + 1, t, 2]}`, `r = 9, t = 1` (from 36 steps on:
/// `r = N / 4, t = 2`); below 20 steps it is Heun. [`intervals`](Restart::intervals) gives
/// intervals of one's own on the grid as it is. Keys follow AUTOMATIC1111: the grid index with
/// the nearest sigma (the first on ties), later intervals with the same index replacing earlier
/// ones, an interval whose `max_sigma` maps at or below its `min_sigma` ignored.
///
/// Model calls: two per Heun step, one per step to the clean level ([`Restart::plan`] lists the
/// steps). Noise: one draw per restart, with the key of the global step it precedes; the
/// sigmas are f64 here (AUTOMATIC1111 computes its Karras ramps in float32).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Restart;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// // AUTOMATIC1111 at 20 steps: an 11-level Karras walk plus one restart of 9 Heun steps.
/// assert_eq!(Restart::new().model_calls(&grid), 2 * 10 + 1 + 2 * 9);
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = Restart::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.05);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for a negative or non-finite `s_noise`, an interval with a
/// non-finite or negative sigma or fewer than two steps; during a run as [`Heun`].
///
/// [^restart]: Y. Xu, M. Deng, X. Cheng, Y. Tian, Z. Liu, T. Jaakkola, *Restart Sampling for
///     Improving Generative Processes*, NeurIPS 2023, arXiv:2306.14878.
#[derive(Clone, Debug, PartialEq)]
pub struct Restart {
    s_noise: f64,
    intervals: Option<Vec<RestartInterval>>,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            s_noise: 1.0,
            intervals: None,
        }
    }
}

/// One walk of the plan: strictly decreasing sigmas, and whether noise lifts the sample to its
/// first sigma from the previous walk's last.
#[derive(Clone, Debug, PartialEq)]
struct Walk {
    sigmas: Vec<f64>,
    restart: bool,
}

impl Restart {
    /// AUTOMATIC1111's automatic configuration (see the type's docs), `s_noise = 1`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restart intervals of one's own (AUTOMATIC1111's `restart_list`), on the grid as given.
    pub fn intervals(mut self, intervals: Vec<RestartInterval>) -> Self {
        self.intervals = Some(intervals);
        self
    }

    /// The scale of the restart noise.
    pub fn s_noise(mut self, s: f64) -> Self {
        self.s_noise = s;
        self
    }

    fn check(&self) -> Result<()> {
        if !(self.s_noise >= 0.0 && self.s_noise.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "s_noise",
                value: self.s_noise,
                reason: "must be finite and non-negative",
            });
        }
        for r in self.intervals.iter().flatten() {
            for (name, v) in [("min_sigma", r.min_sigma), ("max_sigma", r.max_sigma)] {
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(Error::InvalidParameter {
                        name,
                        value: v,
                        reason: "restart sigmas must be finite and non-negative",
                    });
                }
            }
            if r.steps < 2 {
                return Err(Error::InvalidParameter {
                    name: "steps",
                    value: r.steps as f64,
                    reason: "a restart interval needs at least two sigmas (one step)",
                });
            }
        }
        Ok(())
    }

    /// The steps a run over `grid` takes, in order, as k-diffusion sigma pairs `(from, to)`
    /// (AUTOMATIC1111's `step_list`); a pair whose `from` is above the previous `to` is a
    /// restart (noise first).
    ///
    /// # Errors
    /// As the option check.
    pub fn plan(&self, grid: &Grid) -> Result<Vec<(f64, f64)>> {
        Ok(self
            .walks(grid)?
            .iter()
            .flat_map(|w| w.sigmas.windows(2).map(|p| (p[0], p[1])).collect::<Vec<_>>())
            .collect())
    }

    fn walks(&self, grid: &Grid) -> Result<Vec<Walk>> {
        self.check()?;
        let mut sigmas = grid.sigmas_ve();
        let steps = sigmas.len() - 1;
        let intervals = match &self.intervals {
            Some(v) => v.clone(),
            None if steps >= 20 && sigmas[0].is_finite() => {
                let (mut r, mut t) = (9, 1);
                if steps >= 36 {
                    r = steps / 4;
                    t = 2;
                }
                let last = sigmas[steps];
                sigmas = karras(steps - r * t, sigmas[steps - 1], sigmas[0]);
                sigmas.push(last);
                vec![RestartInterval {
                    min_sigma: 0.1,
                    steps: r + 1,
                    times: t,
                    max_sigma: 2.0,
                }]
            }
            None => Vec::new(),
        };
        // Index -> interval, the later of two with the same index winning (a Python dict).
        let nearest = |key: f64| {
            let mut best = 0;
            for (i, s) in sigmas.iter().enumerate() {
                if (s - key).abs() < (sigmas[best] - key).abs() {
                    best = i;
                }
            }
            best
        };
        let mut at: Vec<Option<RestartInterval>> = vec![None; sigmas.len()];
        for r in intervals {
            at[nearest(r.min_sigma)] = Some(r);
        }
        let mut walks = vec![Walk {
            sigmas: vec![sigmas[0]],
            restart: false,
        }];
        for i in 0..sigmas.len() - 1 {
            walks.last_mut().expect("one walk").sigmas.push(sigmas[i + 1]);
            let Some(r) = at[i + 1] else { continue };
            let (min_idx, max_idx) = (i + 1, nearest(r.max_sigma));
            if max_idx >= min_idx {
                continue;
            }
            let ramp = karras(r.steps, sigmas[min_idx], sigmas[max_idx]);
            for _ in 0..r.times {
                walks.push(Walk {
                    sigmas: ramp.clone(),
                    restart: true,
                });
            }
            walks.push(Walk {
                sigmas: vec![sigmas[min_idx]],
                restart: false,
            });
        }
        // Walks of one sigma (a restart walk's end joins the main walk there) take no step.
        let mut out: Vec<Walk> = Vec::new();
        for w in walks {
            match out.last_mut() {
                Some(prev) if !w.restart && prev.sigmas.last() == w.sigmas.first() => {
                    prev.sigmas.extend_from_slice(&w.sigmas[1..]);
                }
                _ if w.sigmas.len() >= 2 => out.push(w),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Each walk as a grid on `grid`'s schedule.
    #[allow(
        clippy::float_cmp,
        reason = "a sigma copied from the grid finds its own level exactly"
    )]
    fn grids(&self, grid: &Grid) -> Result<Vec<(Grid, bool)>> {
        let level = |s: f64| -> Result<NoiseLevel> {
            match grid.levels().iter().find(|l| l.sigma_ve() == s) {
                Some(l) => Ok(*l),
                None => grid.level_at_sigma_ve(s),
            }
        };
        self.walks(grid)?
            .into_iter()
            .map(|w| {
                let levels = w.sigmas.iter().map(|&s| level(s)).collect::<Result<Vec<_>>>()?;
                Ok((grid.with_levels(levels)?, w.restart))
            })
            .collect()
    }
}

/// k-diffusion's `get_sigmas_karras(n, sigma_min, sigma_max)` without the appended zero
/// (`sigma_min` may be 0).
fn karras(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let rho = 7.0;
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    (0..n)
        .map(|i| {
            let r = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
            (hi + r * (lo - hi)).powf(rho)
        })
        .collect()
}

/// The state of a [`Restart`] run: a Heun run per walk, noised up between restarts.
#[derive(Clone, Debug)]
pub struct RestartState<F: Float, D: Dimension> {
    walks: Vec<(Grid, bool)>,
    next: usize,
    inner: Option<HeunState<F, D>>,
    s_noise: f64,
    /// Steps of the walks before the current one, model calls so far, steps in all.
    offset: usize,
    calls: usize,
    total: usize,
}

impl<F: Float, D: Dimension> RestartState<F, D> {
    fn inner(&self) -> &HeunState<F, D> {
        self.inner.as_ref().expect("a restart run always holds a walk")
    }

    /// Errors of a walk's run, with the run's global step.
    fn global(&self, e: Error) -> Error {
        let k = self.offset;
        match e {
            Error::NonFinite { step, level, what } => Error::NonFinite {
                step: step + k,
                level,
                what,
            },
            Error::Model { step, level, source } => Error::Model {
                step: step + k,
                level,
                source,
            },
            Error::Undetermined {
                step,
                level,
                prediction,
                what,
            } => Error::Undetermined {
                step: step + k,
                level,
                prediction,
                what,
            },
            Error::ShapeMismatch {
                step,
                level,
                expected,
                got,
            } => Error::ShapeMismatch {
                step: step + k,
                level,
                expected,
                got,
            },
            other => other,
        }
    }

    /// Moves to the next walk once the current one is finished: noise from its last level up to
    /// the next walk's first (for a restart), then a fresh Heun run.
    fn next_walk<N: NoiseSource<F> + ?Sized>(&mut self, noise: &mut N) -> Result<()> {
        while self.inner().pending().is_none() && self.next < self.walks.len() {
            let done = self.inner.take().expect("a walk");
            let from = done.level();
            self.offset += self.walks[self.next - 1].0.steps();
            let mut x = done.into_sample();
            let (grid, restart) = (&self.walks[self.next].0, self.walks[self.next].1);
            let to = grid.levels()[0];
            if restart {
                // y = x / alpha; y' = y + s_noise sqrt(tau'^2 - tau^2) z; x' = alpha' y'.
                let (t0, t1) = (from.sigma_ve(), to.sigma_ve());
                let k = self.s_noise * (t1 * t1 - t0 * t0).max(0.0).sqrt();
                let mut z = Array::zeros(x.raw_dim());
                noise.fill(self.offset, z.view_mut());
                let (a, b) = (F::cast(to.alpha / from.alpha), F::cast(to.alpha * k));
                let ok = Zip::from(&mut x).and(&z).fold(true, |ok, x, &z| {
                    *x = a * *x + b * z;
                    ok & x.is_finite()
                });
                if !ok {
                    return Err(Error::NonFinite {
                        step: self.offset,
                        level: to,
                        what: if z.iter().all(|v| v.is_finite()) {
                            "sample"
                        } else {
                            "noise"
                        },
                    });
                }
            }
            let inner = Heun::new().init(x, grid, noise).map_err(|e| self.global(e))?;
            self.inner = Some(inner);
            self.next += 1;
        }
        Ok(())
    }
}

impl<F: Float, D: Dimension> SamplerState<F, D> for RestartState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        self.inner().pending().map(|r| Request {
            step: r.step + self.offset,
            level: r.level,
            x: r.x,
            index: self.calls,
            steps: self.total,
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Spares<F, D>> {
        // The walk's run counts its own steps (its errors get the global step back).
        est.step = est.step.saturating_sub(self.offset);
        let inner = self.inner.as_mut().expect("a walk");
        let r = inner.advance(est, noise);
        let spares = r.map_err(|e| self.global(e))?;
        self.calls += 1;
        self.next_walk(noise)?;
        Ok(spares)
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.inner().sample()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.inner.as_mut().expect("a walk").sample_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.inner().level()
    }

    fn into_sample(self) -> Array<F, D> {
        self.inner.expect("a walk").into_sample()
    }

    fn buffers_held(&self) -> usize {
        self.inner().buffers_held()
    }
}

impl Sampler for Restart {
    type State<F: Float, D: Dimension> = RestartState<F, D>;

    fn validate(&self) -> Result<()> {
        self.check()
    }

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Self::State<F, D>> {
        let walks = self.grids(grid)?;
        let total = walks.iter().map(|(g, _)| g.steps()).sum();
        let inner = Heun::new().init(x, &walks[0].0, noise)?;
        let mut state = RestartState {
            walks,
            next: 1,
            inner: Some(inner),
            s_noise: self.s_noise,
            offset: 0,
            calls: 0,
            total,
        };
        state.next_walk(noise)?;
        Ok(state)
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        self.grids(grid)
            .map(|w| w.iter().map(|(g, _)| Heun::new().model_calls(g)).sum())
            .unwrap_or(0)
    }
}
