//! Sampling grids: the noise levels a sampler walks, noisiest first.
//!
//! A [`Grid`] is built from a [`NoiseSchedule`] with a [`Spacing`] (diffusers' exact formulas),
//! from custom timesteps or k-diffusion sigmas, or from explicit [`NoiseLevel`]s. It ends at a
//! final level chosen by [`FinalLevel`].
//!
//! The module is split by concern: [`Grid`] and its invariants here, the [`Spacing`] formulas of
//! discrete schedules in `spacing.rs`, sigma lists (Karras, exponential, Beta) in `sigmas.rs`,
//! and the grids of [`FlowSchedule`](crate::FlowSchedule)s in `flow.rs`.

mod comfy;
mod flow;
mod sigmas;
mod spacing;
mod tables;

use std::sync::Arc;

use crate::error::{Error, MAX_STEPS, Result};
use crate::float::Float;
use crate::level::NoiseLevel;
use crate::noise::{INITIAL_STEP, NoiseSource};
use crate::schedule::NoiseSchedule;

pub use comfy::{ComfyScheduler, ModelSampling};
pub(crate) use comfy::{torch_linspace, torch_linspace_iter};
pub(crate) use sigmas::check_sigma_list;
pub use sigmas::{beta_sigmas, exponential_sigmas, karras_sigmas};
pub use spacing::Spacing;
pub use tables::{
    AysModel, OptimalStepsModel, ays_sigmas, diffusers_ays_sigmas, diffusers_ays_timesteps, gits_sigmas,
    laplace_sigmas, loglinear_interp, optimal_steps_sigmas, polyexponential_sigmas, vp_sigmas,
};

/// The family a grid's levels belong to. It decides how levels between grid points are built
/// (stochastic churn, midpoints) and which ODE coordinates the sigma-space samplers (Heun,
/// DPM-2, LMS, iPNDM) integrate in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleFamily {
    /// Variance preserving: `alpha^2 + sigma^2 = 1` (DDPM, Stable Diffusion, cosine, ...).
    /// Sigma-space samplers use k-diffusion's coordinates `x / alpha`, `sigma / alpha`.
    Vp,
    /// Variance exploding: `alpha = 1` (EDM, score SDE VE). Same coordinates as `Vp`.
    Ve,
    /// Rectified flow: `alpha + sigma = 1`. Sigma-space samplers integrate `dx/dsigma` directly,
    /// as diffusers' FlowMatch schedulers do.
    Flow,
}

impl ScheduleFamily {
    /// The level of this family with k-diffusion sigma `s = sigma / alpha` and timestep `t`.
    pub fn level(self, t: f64, sigma_ve: f64) -> NoiseLevel {
        match self {
            ScheduleFamily::Vp => NoiseLevel::from_sigma_ve(t, sigma_ve),
            ScheduleFamily::Ve => NoiseLevel::new(t, 1.0, sigma_ve),
            ScheduleFamily::Flow => {
                if sigma_ve.is_infinite() {
                    NoiseLevel::new(t, 0.0, 1.0)
                } else {
                    let s = sigma_ve / (1.0 + sigma_ve);
                    NoiseLevel::new(t, 1.0 - s, s)
                }
            }
        }
    }

    /// The weight `kappa` of the ODE coordinates `y = x / (alpha + kappa sigma)`,
    /// `tau = sigma / (alpha + kappa sigma)` that sigma-space samplers integrate in: 0 (VE
    /// coordinates) for `Vp` and `Ve`, 1 (`y = x`, `tau = sigma`) for `Flow`.
    pub fn kappa(self) -> f64 {
        match self {
            ScheduleFamily::Flow => 1.0,
            _ => 0.0,
        }
    }
}

/// How a grid builds levels between its own (churned or midpoint sigmas).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LevelMap {
    /// Through the discrete schedule (`t` by log-sigma interpolation).
    Schedule(Arc<NoiseSchedule>),
    /// A flow schedule with `T` training timesteps: `t = sigma T`.
    Flow { t_max: f64 },
    /// `t` interpolated in log-sigma between the grid's own levels.
    Interpolated(ScheduleFamily),
    /// ComfyUI's discrete model sampling: `t` is the nearest training timestep.
    Nearest(Arc<ModelSampling>),
}

/// Where a grid ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FinalLevel {
    /// The clean level `alpha = 1, sigma = 0` (diffusers' `set_alpha_to_one = True`,
    /// `final_sigmas_type = "zero"`).
    #[default]
    Clean,
    /// The first training timestep `t = 0` (`set_alpha_to_one = False`,
    /// `final_sigmas_type = "sigma_min"`).
    FirstTimestep,
}

/// The noise levels a sampler walks: `steps + 1` entries, noisiest first, the last one the final
/// level.
///
/// Invariants (checked by every constructor): at least one step; every level finite with
/// `alpha, sigma >= 0`; the k-diffusion sigma `sigma / alpha` strictly decreasing, except that the
/// final level may equal the one before it (a zero-length step, which samplers skip without a
/// model call); the first level is not clean. The first level may be the terminal level of a
/// zero-terminal-SNR schedule (`alpha = 0`).
///
/// ```
/// use diffusion_samplers::{FinalLevel, NoiseSchedule, Spacing};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let g = s.grid(10, Spacing::Leading { offset: 1 })?;
/// assert_eq!(g.timesteps(), vec![901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]);
/// assert!(g.levels()[10].is_clean());
/// let g = g.with_final(FinalLevel::FirstTimestep);
/// assert_eq!(g.levels()[10], s.level(0.0));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    levels: Vec<NoiseLevel>,
    first_timestep: Option<NoiseLevel>,
    map: LevelMap,
    /// Overrides the starting sample's noise scale (`levels[0].sigma` otherwise).
    initial_scale: Option<f64>,
}

impl Grid {
    /// A grid from explicit levels: the `steps` levels the model is evaluated at, then the final
    /// level. Its [`family`](Self::family) is `Ve` if every `alpha` is 1, `Flow` if every level
    /// has `alpha + sigma = 1` (and not all are VP), `Vp` otherwise; levels between grid points
    /// take their `t` by log-sigma interpolation.
    ///
    /// ```
    /// use diffusion_samplers::{Grid, NoiseLevel};
    /// let g = Grid::from_levels(vec![
    ///     NoiseLevel::from_sigma_ve(999.0, 80.0),
    ///     NoiseLevel::from_sigma_ve(500.0, 1.0),
    ///     NoiseLevel::CLEAN,
    /// ])?;
    /// assert_eq!(g.steps(), 2);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for fewer than two levels, [`Error::InvalidValue`] for a level
    /// that breaks the invariants above.
    pub fn from_levels(levels: Vec<NoiseLevel>) -> Result<Self> {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9;
        let all = |f: &dyn Fn(&NoiseLevel) -> bool| levels.iter().all(f);
        let family = if all(&|l| close(l.alpha, 1.0)) {
            ScheduleFamily::Ve
        } else if all(&|l| close(l.alpha + l.sigma, 1.0))
            && !all(&|l| close(l.alpha * l.alpha + l.sigma * l.sigma, 1.0))
        {
            ScheduleFamily::Flow
        } else {
            ScheduleFamily::Vp
        };
        Self::checked(levels, None, LevelMap::Interpolated(family))
    }

    /// A variance-exploding grid (`alpha = 1`, `sigma` = the given sigmas), as EDM and
    /// k-diffusion use: `x = x0 + sigma n`. Each level's `t` is its sigma (EDM models compute
    /// their own `c_noise = ln(sigma) / 4` from `level.sigma`). A trailing 0 marks the clean
    /// final level and is optional.
    ///
    /// ```
    /// use diffusion_samplers::{karras_sigmas, Grid};
    /// let g = Grid::ve(&karras_sigmas(18, 0.002, 80.0, 7.0)?)?; // EDM's CIFAR-10 grid
    /// assert_eq!(g.steps(), 18);
    /// assert_eq!(g.levels()[0].alpha, 1.0);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`NoiseSchedule::grid_from_sigmas`].
    pub fn ve(sigmas: &[f64]) -> Result<Self> {
        let body = check_sigma_list(sigmas, false)?;
        let mut levels: Vec<NoiseLevel> = body.iter().map(|&s| NoiseLevel::new(s, 1.0, s)).collect();
        levels.push(NoiseLevel::CLEAN);
        Self::checked(levels, None, LevelMap::Interpolated(ScheduleFamily::Ve))
    }

    pub(crate) fn checked(
        levels: Vec<NoiseLevel>,
        first_timestep: Option<NoiseLevel>,
        map: LevelMap,
    ) -> Result<Self> {
        if levels.len() < 2 || levels.len() > MAX_STEPS + 1 {
            return Err(Error::InvalidSteps {
                steps: levels.len().saturating_sub(1),
                max: MAX_STEPS,
            });
        }
        let bad = |index: usize, value: f64, reason: &'static str| Error::InvalidValue {
            what: "levels",
            index,
            value,
            reason,
        };
        for (i, l) in levels.iter().enumerate() {
            if !l.is_valid() {
                let v = [l.t, l.alpha, l.sigma]
                    .into_iter()
                    .find(|v| !v.is_finite() || *v < 0.0)
                    .unwrap_or(0.0);
                return Err(bad(
                    i,
                    v,
                    "levels need finite t, alpha >= 0, sigma >= 0, not both 0",
                ));
            }
        }
        if levels[0].is_clean() {
            return Err(bad(0, levels[0].sigma, "the first level must be noisy"));
        }
        let last = levels.len() - 1;
        #[allow(
            clippy::float_cmp,
            reason = "a zero-length final step is an exact repeat of the level"
        )]
        for i in 1..levels.len() {
            let (prev, cur) = (levels[i - 1].sigma_ve(), levels[i].sigma_ve());
            let ok = cur < prev || (i == last && cur == prev);
            if !ok {
                return Err(bad(i, cur, "sigma / alpha must decrease strictly along the grid"));
            }
        }
        Ok(Grid {
            levels,
            first_timestep,
            map,
            initial_scale: None,
        })
    }

    /// The family of the grid's levels (see [`ScheduleFamily`]).
    pub fn family(&self) -> ScheduleFamily {
        match &self.map {
            LevelMap::Schedule(_) | LevelMap::Nearest(_) => ScheduleFamily::Vp,
            LevelMap::Flow { .. } => ScheduleFamily::Flow,
            LevelMap::Interpolated(f) => *f,
        }
    }

    /// The level with k-diffusion sigma `sigma_ve` (`sigma / alpha`), as the grid's schedule
    /// defines it: through the training schedule for grids built from a [`NoiseSchedule`]
    /// (`t` by log-sigma interpolation, diffusers' `_sigma_to_t`), `t = sigma T` for flow
    /// schedules, and for other grids `t` interpolated in log-sigma between the grid's levels.
    /// Samplers use it for levels off the grid: EDM's churned sigma, DPM-2's midpoint.
    ///
    /// ```
    /// use diffusion_samplers::{NoiseSchedule, Spacing};
    /// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let g = s.grid(10, Spacing::Linspace)?;
    /// let mid = g.level_at_sigma_ve(1.0)?;
    /// assert_eq!(mid, s.level_from_sigma_ve(1.0)?);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a NaN or negative sigma.
    pub fn level_at_sigma_ve(&self, sigma_ve: f64) -> Result<NoiseLevel> {
        if sigma_ve.is_nan() || sigma_ve < 0.0 {
            return Err(Error::InvalidParameter {
                name: "sigma",
                value: sigma_ve,
                reason: "a k-diffusion sigma must be a non-negative number",
            });
        }
        Ok(self.level_of_sigma_ve(sigma_ve))
    }

    /// [`level_at_sigma_ve`](Self::level_at_sigma_ve) for a sigma the caller computed from the
    /// grid's own levels (non-negative, not NaN).
    pub(crate) fn level_of_sigma_ve(&self, sigma_ve: f64) -> NoiseLevel {
        match &self.map {
            LevelMap::Schedule(s) => s.level_of_sigma_ve(sigma_ve),
            LevelMap::Nearest(ms) => ms.level(sigma_ve),
            LevelMap::Flow { t_max } => {
                let l = ScheduleFamily::Flow.level(0.0, sigma_ve);
                NoiseLevel {
                    t: l.sigma * t_max,
                    ..l
                }
            }
            LevelMap::Interpolated(f) => f.level(self.interpolated_t(sigma_ve), sigma_ve),
        }
    }

    /// The level at model timestep `t`, as the grid's schedule defines it: `NoiseSchedule::level`
    /// (fractional `t` interpolated as diffusers' `np.interp`) for grids from a discrete schedule,
    /// `sigma = t / T` for flow schedules, and for other grids log-sigma interpolated in `t`
    /// between the grid's levels. PNDM's Runge-Kutta warm-up evaluates the model at such
    /// half-way timesteps. `t` outside the schedule's range is clamped.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a NaN `t`.
    pub fn level_at_t(&self, t: f64) -> Result<NoiseLevel> {
        if t.is_nan() {
            return Err(Error::InvalidParameter {
                name: "t",
                value: t,
                reason: "a timestep must be a number",
            });
        }
        Ok(self.level_of_t(t))
    }

    /// [`level_at_t`](Self::level_at_t) for a `t` that is a number.
    pub(crate) fn level_of_t(&self, t: f64) -> NoiseLevel {
        match &self.map {
            LevelMap::Schedule(s) => s.level(t),
            LevelMap::Nearest(ms) => NoiseLevel::from_sigma_ve(t, ms.sigma(t)),
            LevelMap::Flow { t_max } => {
                let s = (t / t_max).clamp(0.0, 1.0);
                NoiseLevel::new(s * t_max, 1.0 - s, s)
            }
            LevelMap::Interpolated(f) => {
                let body = &self.levels[..self.levels.len() - 1];
                let mut sigma = body[0].sigma_ve();
                for w in body.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    if (t <= a.t && t >= b.t) || (t >= a.t && t <= b.t) {
                        let u = if (b.t - a.t).abs() < f64::MIN_POSITIVE {
                            0.0
                        } else {
                            (t - a.t) / (b.t - a.t)
                        };
                        let (la, lb) = (a.sigma_ve().ln(), b.sigma_ve().ln());
                        sigma = (la + u * (lb - la)).exp();
                        break;
                    }
                    sigma = b.sigma_ve();
                }
                f.level(t, sigma)
            }
        }
    }

    /// `t` for a sigma between the grid's levels, interpolated in log-sigma (clamped to the
    /// grid's first and last step levels). A binary search: churned or midpoint levels on long
    /// grids cost O(log n) each.
    fn interpolated_t(&self, s: f64) -> f64 {
        let body = &self.levels[..self.levels.len() - 1];
        // First step level at or below s (the sigmas decrease strictly along the body).
        let k = body.partition_point(|l| l.sigma_ve() > s);
        if k == 0 {
            return body[0].t;
        }
        if k < body.len() {
            let (a, b) = (body[k - 1].sigma_ve(), body[k].sigma_ve());
            let w = if a.is_finite() {
                (a.ln() - s.ln()) / (a.ln() - b.ln())
            } else {
                1.0
            };
            return body[k - 1].t + w * (body[k].t - body[k - 1].t);
        }
        // Below the last step level: towards the final level.
        let last = self.levels[self.levels.len() - 1];
        let lb = body[body.len() - 1];
        let (a, b) = (lb.sigma_ve(), last.sigma_ve());
        if b > 0.0 && s > b {
            // From a pure-noise level (a = inf) every finite sigma is at the far end.
            let w = if a.is_finite() {
                (a.ln() - s.ln()) / (a.ln() - b.ln())
            } else {
                1.0
            };
            lb.t + w * (last.t - lb.t)
        } else {
            lb.t
        }
    }

    /// The standard deviation of the starting sample [`initial_sample`](Self::initial_sample)
    /// draws: the noise scale `sigma` of the first level in the model's own scaling (`x =
    /// alpha x0 + sigma eps`), unless [`with_initial_scale`](Self::with_initial_scale) set
    /// another (the diffusers config reader sets diffusers' `init_noise_sigma` convention).
    ///
    /// For a variance-preserving grid that is about 1 (Stable Diffusion: 0.998); for a VE (EDM)
    /// grid it is `sigma_max` (80); for rectified flow 1. It is *not* k-diffusion's `sigma_max`
    /// on a VP grid: that sigma is `sigma / alpha`, in k-diffusion's scaling, not the model's.
    pub fn initial_scale(&self) -> f64 {
        self.initial_scale.unwrap_or(self.levels[0].sigma)
    }

    /// Sets the starting sample's scale (see [`initial_scale`](Self::initial_scale)).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `scale` is positive and finite.
    pub fn with_initial_scale(mut self, scale: f64) -> Result<Self> {
        if !(scale > 0.0 && scale.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "initial_scale",
                value: scale,
                reason: "must be positive and finite",
            });
        }
        self.initial_scale = Some(scale);
        Ok(self)
    }

    /// The starting sample of a run over this grid: `initial_scale() * eps`, `eps ~ N(0, I)`
    /// drawn from `noise` (with the key [`INITIAL_STEP`], so a keyed source such as
    /// [`SeededNoise`](crate::SeededNoise) gives the run's own step-0 noise independently of
    /// it). This is the one way to start: it is in the model's own scaling for every schedule
    /// family, and needs no casts for `f32` arrays.
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// use ndarray::Array2;
    /// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
    /// let mut noise = SeededNoise::new(7);
    /// let x: Array2<f32> = grid.initial_sample((4096, 2), &mut noise)?;
    /// let var = x.mapv(|v| v * v).mean().unwrap();
    /// assert!((var - 0.996).abs() < 0.05); // about 1 for a VP schedule (sigma = 0.998)
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NonFinite`] if the draw is not finite: the noise source gave NaN (a
    /// [`ReplayNoise`](crate::ReplayNoise) without a starting block) or the scale overflows the
    /// float type (a VE grid with `sigma_max` beyond `f32`'s range).
    pub fn initial_sample<F, Sh, D, N>(&self, shape: Sh, noise: &mut N) -> Result<ndarray::Array<F, D>>
    where
        F: Float,
        Sh: ndarray::ShapeBuilder<Dim = D>,
        D: ndarray::Dimension,
        N: NoiseSource<F> + ?Sized,
    {
        let mut a = ndarray::Array::zeros(shape);
        noise.fill(INITIAL_STEP, a.view_mut());
        let k = F::cast(self.initial_scale());
        a.mapv_inplace(|v| v * k);
        if a.iter().all(|v| v.is_finite()) {
            Ok(a)
        } else {
            Err(Error::NonFinite {
                step: 0,
                level: self.levels[0],
                what: "starting sample (non-finite noise, or a scale beyond the float type's range)",
            })
        }
    }

    /// The grid through the levels at `indices` (increasing, the first 0 and the last the final
    /// level's), keeping this grid's schedule for off-grid levels and its starting scale.
    pub(crate) fn subset(&self, indices: &[usize]) -> Result<Self> {
        let levels = indices
            .iter()
            .map(|&i| {
                self.levels.get(i).copied().ok_or(Error::InvalidValue {
                    what: "grid indices",
                    index: i,
                    value: i as f64,
                    reason: "beyond the grid",
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.with_levels(levels)
    }

    /// All levels: `steps() + 1` entries, the last the final level.
    pub fn levels(&self) -> &[NoiseLevel] {
        &self.levels
    }

    /// Number of steps (levels minus one).
    pub fn steps(&self) -> usize {
        self.levels.len() - 1
    }

    /// The model timesteps of the `steps()` levels where a step starts.
    pub fn timesteps(&self) -> Vec<f64> {
        self.levels[..self.steps()].iter().map(|l| l.t).collect()
    }

    /// The k-diffusion sigmas `sigma / alpha` of all levels, final included (k-diffusion's
    /// `sigmas` with the appended final value).
    pub fn sigmas_ve(&self) -> Vec<f64> {
        self.levels.iter().map(NoiseLevel::sigma_ve).collect()
    }

    /// Replaces the final level.
    ///
    /// `FirstTimestep` needs the schedule's first level; a grid made by
    /// [`from_levels`](Self::from_levels) has none and keeps its final level. If the last step
    /// already starts at `t = 0`, the final step becomes a zero-length step, which samplers skip.
    pub fn with_final(mut self, last: FinalLevel) -> Self {
        let target = match last {
            FinalLevel::Clean => Some(NoiseLevel::CLEAN),
            FinalLevel::FirstTimestep => self.first_timestep,
        };
        if let Some(target) = target {
            let n = self.levels.len();
            // A final level noisier than the last step's level would break the grid; keep the
            // old final level then (it cannot happen for grids built from a schedule).
            if target.sigma_ve() <= self.levels[n - 2].sigma_ve() {
                self.levels[n - 1] = target;
            }
        }
        self
    }

    /// Rounds every step's timestep to the nearest integer (half to even), keeping alpha and
    /// sigma: the DPM-Solver family of diffusers rounds the timesteps it gives the model while
    /// stepping with the unrounded sigmas.
    pub fn round_timesteps(mut self) -> Self {
        for l in &mut self.levels {
            l.t = l.t.round_ties_even();
        }
        self
    }

    /// A grid of other levels on the same schedule (its level map, first timestep and starting
    /// scale kept): for samplers that pick their own levels between a grid's ends.
    pub(crate) fn with_levels(&self, levels: Vec<NoiseLevel>) -> Result<Self> {
        let mut g = Self::checked(levels, self.first_timestep, self.map.clone())?;
        g.initial_scale = self.initial_scale;
        Ok(g)
    }

    /// The last level with noise: the final level, or the one before it if the final level is
    /// clean.
    pub fn last_noisy(&self) -> NoiseLevel {
        let n = self.levels.len();
        if self.levels[n - 1].is_clean() {
            self.levels[n - 2]
        } else {
            self.levels[n - 1]
        }
    }

    /// The grid from level `start` on (img2img: drop the first `start` steps).
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] when no step would remain.
    pub fn skip(&self, start: usize) -> Result<Self> {
        if start >= self.steps() {
            return Err(Error::InvalidSteps {
                steps: start,
                max: self.steps().saturating_sub(1),
            });
        }
        Ok(Grid {
            levels: self.levels[start..].to_vec(),
            first_timestep: self.first_timestep,
            map: self.map.clone(),
            initial_scale: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The linear scan `interpolated_t` replaced (it made churned and midpoint levels on VE or
    /// `from_levels` grids cost O(n) each, O(n^2) per run).
    fn interpolated_t_by_scan(g: &Grid, s: f64) -> f64 {
        let body = &g.levels[..g.levels.len() - 1];
        let sig: Vec<f64> = body.iter().map(NoiseLevel::sigma_ve).collect();
        if s >= sig[0] {
            return body[0].t;
        }
        for i in 0..body.len() - 1 {
            let (a, b) = (sig[i], sig[i + 1]);
            if s <= a && s >= b {
                let w = if a.is_finite() {
                    (a.ln() - s.ln()) / (a.ln() - b.ln())
                } else {
                    1.0
                };
                return body[i].t + w * (body[i + 1].t - body[i].t);
            }
        }
        let last = g.levels[g.levels.len() - 1];
        let lb = body[body.len() - 1];
        let (a, b) = (lb.sigma_ve(), last.sigma_ve());
        if b > 0.0 && s > b {
            let w = if a.is_finite() {
                (a.ln() - s.ln()) / (a.ln() - b.ln())
            } else {
                1.0
            };
            lb.t + w * (last.t - lb.t)
        } else {
            lb.t
        }
    }

    /// Regression (DPM-2 and churned Euler / Heun on VE or `from_levels` grids were O(n^2)):
    /// the binary search gives the scan's answer on every sigma, grid points included.
    #[test]
    fn interpolated_t_is_a_binary_search_with_the_scans_answers() {
        let sig = karras_sigmas(300, 0.002, 80.0, 7.0).unwrap();
        let ve = Grid::ve(&sig).unwrap();
        let mut levels: Vec<NoiseLevel> = sig[..299]
            .iter()
            .map(|&s| NoiseLevel::from_sigma_ve(s * 10.0, s))
            .collect();
        levels.push(NoiseLevel::from_sigma_ve(0.0, 0.002));
        let vp = Grid::from_levels(levels).unwrap();
        for g in [&ve, &vp] {
            let probes = g
                .levels()
                .iter()
                .map(NoiseLevel::sigma_ve)
                .chain((0..2000).map(|i| 0.0005 * 1.007f64.powi(i)));
            for s in probes {
                let (a, b) = (g.interpolated_t(s), interpolated_t_by_scan(g, s));
                assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "sigma {s}: {a} vs {b}");
            }
        }
    }
}
