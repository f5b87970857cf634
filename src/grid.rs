//! Sampling grids: the noise levels a sampler walks, noisiest first.
//!
//! A [`Grid`] is built from a [`NoiseSchedule`] with a [`Spacing`] (diffusers' exact formulas),
//! from custom timesteps or k-diffusion sigmas, or from explicit [`NoiseLevel`]s. It ends at a
//! final level chosen by [`FinalLevel`].

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::schedule::{NoiseLevel, NoiseSchedule};

/// How a grid's timesteps (or sigmas) are spaced over the training schedule.
///
/// `T` is the number of training timesteps, `N` the number of sampling steps. Formulas follow
/// diffusers (`timestep_spacing`, `use_karras_sigmas`, `use_exponential_sigmas`,
/// `use_beta_sigmas`, LCM's `original_inference_steps`), with numpy's round-half-to-even.
///
/// | variant | timesteps (noisiest first) | diffusers |
/// |---|---|---|
/// | `Leading { offset }` | `(arange(N) * (T // N))[::-1] + offset` | `"leading"` + `steps_offset` (DDIM, DDPM, PNDM default) |
/// | `Trailing` | `round(T - i T / N) - 1`, `i = 0..N` | `"trailing"` |
/// | `Linspace` | `linspace(0, T - 1, N)[::-1]`, fractional | `"linspace"` of the Euler family (default there) |
/// | `LinspaceRounded` | `round(linspace(0, T - 1, N))[::-1]` | `"linspace"` of DDIM / DDPM / PNDM |
/// | `DpmLinspace` | `round(linspace(0, T - 1, N + 1))[::-1][:-1]` | `"linspace"` of DPM-Solver, UniPC, DEIS (default there) |
/// | `DpmLeading { offset }` | `(arange(N + 1) * (T // (N + 1)))[::-1][:-1] + offset` | `"leading"` of DPM-Solver, UniPC, DEIS |
/// | `Karras { rho }` | sigmas `(smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho` | `use_karras_sigmas` (rho = 7) |
/// | `Exponential` | sigmas `exp(linspace(ln smax, ln smin, N))` | `use_exponential_sigmas` |
/// | `Beta { alpha, beta }` | sigmas `smin + ppf(1 - i/(N-1)) (smax - smin)`, ppf of Beta(alpha, beta) | `use_beta_sigmas` (0.6, 0.6) |
/// | `Lcm { original_steps }` | every `len / N`-th of `[T/k - 1, 2T/k - 1, ..., T - 1]`, `k = original_steps` | `LCMScheduler` (50) |
///
/// For the sigma spacings `smin`, `smax` are the k-diffusion sigmas of the first and last
/// training timesteps, and each sigma's `t` is found by log-sigma interpolation
/// ([`NoiseSchedule::sigma_to_t`]). For a [`FlowSchedule`](crate::FlowSchedule) see its
/// [`grid`](crate::FlowSchedule::grid).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Spacing {
    /// Multiples of `T // N` plus an offset (Stable Diffusion uses `offset = 1`).
    Leading {
        /// diffusers' `steps_offset`.
        offset: usize,
    },
    /// Counted back from the last training timestep: always starts at `T - 1`.
    Trailing,
    /// Evenly spaced fractional timesteps from `T - 1` to 0 (Euler family).
    Linspace,
    /// Evenly spaced timesteps from `T - 1` to 0, rounded to integers (DDIM / DDPM family).
    LinspaceRounded,
    /// The DPM-Solver family's linspace: `N + 1` rounded points from `T - 1` to 0, the last
    /// (t = 0) dropped.
    DpmLinspace,
    /// The DPM-Solver family's leading spacing: multiples of `T // (N + 1)`, the last dropped.
    DpmLeading {
        /// diffusers' `steps_offset`.
        offset: usize,
    },
    /// Karras et al. 2022 (EDM) sigmas with exponent `rho` (7 in EDM and diffusers).
    Karras {
        /// The EDM exponent.
        rho: f64,
    },
    /// Sigmas evenly spaced in log-sigma.
    Exponential,
    /// Sigmas at the quantiles of a Beta distribution (Lee et al. 2024, *Beta sampling is all
    /// you need*); diffusers uses `alpha = beta = 0.6`.
    Beta {
        /// First shape parameter.
        alpha: f64,
        /// Second shape parameter.
        beta: f64,
    },
    /// Latent Consistency Models' timesteps: a subset of the `original_steps` distillation
    /// timesteps.
    Lcm {
        /// diffusers' `original_inference_steps` (50).
        original_steps: usize,
    },
}

impl Spacing {
    /// diffusers' beta sigmas: `Beta { alpha: 0.6, beta: 0.6 }`.
    pub const BETA: Spacing = Spacing::Beta {
        alpha: 0.6,
        beta: 0.6,
    };
    /// EDM / diffusers' Karras sigmas: `Karras { rho: 7.0 }`.
    pub const KARRAS: Spacing = Spacing::Karras { rho: 7.0 };
}

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
    /// let g = Grid::ve(&karras_sigmas(18, 0.002, 80.0, 7.0))?; // EDM's CIFAR-10 grid
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
        if levels.len() < 2 {
            return Err(Error::InvalidSteps {
                steps: levels.len().saturating_sub(1),
                max: usize::MAX,
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
        })
    }

    /// The family of the grid's levels (see [`ScheduleFamily`]).
    pub fn family(&self) -> ScheduleFamily {
        match &self.map {
            LevelMap::Schedule(_) => ScheduleFamily::Vp,
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
    /// let mid = g.level_at_sigma_ve(1.0);
    /// assert_eq!(mid, s.level_from_sigma_ve(1.0));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    pub fn level_at_sigma_ve(&self, sigma_ve: f64) -> NoiseLevel {
        match &self.map {
            LevelMap::Schedule(s) => s.level_from_sigma_ve(sigma_ve),
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
    /// half-way timesteps.
    pub fn level_at_t(&self, t: f64) -> NoiseLevel {
        match &self.map {
            LevelMap::Schedule(s) => s.level(t),
            LevelMap::Flow { t_max } => {
                let s = (t / t_max).clamp(0.0, 1.0);
                NoiseLevel::new(t, 1.0 - s, s)
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
    /// grid's first and last step levels).
    fn interpolated_t(&self, s: f64) -> f64 {
        let body = &self.levels[..self.levels.len() - 1];
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
        // Below the last step level: towards the final level.
        let last = self.levels[self.levels.len() - 1];
        let lb = body[body.len() - 1];
        let (a, b) = (lb.sigma_ve(), last.sigma_ve());
        if b > 0.0 && s > b {
            let w = (a.ln() - s.ln()) / (a.ln() - b.ln());
            lb.t + w * (last.t - lb.t)
        } else {
            lb.t
        }
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
        })
    }
}

/// Karras et al. 2022 sigmas: `(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho`,
/// `i = 0..n` (k-diffusion's `get_sigmas_karras` without the appended zero).
///
/// ```
/// let s = diffusion_samplers::karras_sigmas(3, 0.002, 80.0, 7.0);
/// assert!((s[0] - 80.0).abs() < 1e-12 && (s[2] - 0.002).abs() < 1e-15);
/// ```
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    ramp(n)
        .into_iter()
        .map(|r| (hi + r * (lo - hi)).powf(rho))
        .collect()
}

/// Sigmas evenly spaced in log-sigma from `sigma_max` down to `sigma_min` (k-diffusion's
/// `get_sigmas_exponential` without the appended zero).
///
/// ```
/// let s = diffusion_samplers::exponential_sigmas(3, 0.1, 10.0);
/// assert!((s[1] - 1.0).abs() < 1e-12);
/// ```
pub fn exponential_sigmas(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.ln(), sigma_max.ln());
    crate::schedule::linspace(hi, lo, n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// Sigmas at the quantiles of Beta(alpha, beta) between `sigma_max` and `sigma_min`
/// (diffusers' `use_beta_sigmas`: `smin + ppf(1 - i/(n-1)) (smax - smin)`).
///
/// ```
/// let s = diffusion_samplers::grid::beta_sigmas(5, 0.03, 14.6, 0.6, 0.6);
/// assert!((s[0] - 14.6).abs() < 1e-9 && (s[4] - 0.03).abs() < 1e-12);
/// assert!((s[2] - (0.03 + 14.6) / 2.0).abs() < 1e-9); // the median of a symmetric Beta
/// ```
pub fn beta_sigmas(n: usize, sigma_min: f64, sigma_max: f64, alpha: f64, beta: f64) -> Vec<f64> {
    ramp(n)
        .into_iter()
        .map(|r| sigma_min + crate::special::beta_ppf(1.0 - r, alpha, beta) * (sigma_max - sigma_min))
        .collect()
}

fn check_beta_shape(alpha: f64, beta: f64) -> Result<()> {
    for (name, v) in [("alpha", alpha), ("beta", beta)] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(Error::InvalidParameter {
                name,
                value: v,
                reason: "Beta shape parameters must be positive and finite",
            });
        }
    }
    Ok(())
}

/// Validates a list of sigmas (strictly decreasing, positive; the first may be `+inf` when
/// `allow_inf` holds; an optional trailing 0) and returns it without the trailing 0.
pub(crate) fn check_sigma_list(sigmas: &[f64], allow_inf: bool) -> Result<&[f64]> {
    let body = match sigmas.split_last() {
        Some((&0.0, rest)) => rest,
        _ => sigmas,
    };
    if body.is_empty() {
        return Err(Error::InvalidSteps {
            steps: 0,
            max: usize::MAX,
        });
    }
    let bad = |index, value, reason| Error::InvalidValue {
        what: "sigmas",
        index,
        value,
        reason,
    };
    for (i, &s) in body.iter().enumerate() {
        if s.is_nan() || s <= 0.0 || (s.is_infinite() && (i > 0 || !allow_inf)) {
            return Err(bad(
                i,
                s,
                "sigmas must be positive and finite (the first may be +inf where pure noise exists)",
            ));
        }
        if i > 0 && s >= body[i - 1] {
            return Err(bad(i, s, "sigmas must decrease strictly"));
        }
    }
    Ok(body)
}

/// `linspace(0, 1, n)`.
fn ramp(n: usize) -> Vec<f64> {
    crate::schedule::linspace(0.0, 1.0, n)
}

impl NoiseSchedule {
    /// A grid of `steps` steps with the given spacing, ending at the clean level (change that
    /// with [`Grid::with_final`]).
    ///
    /// ```
    /// use diffusion_samplers::{NoiseSchedule, Spacing};
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// assert_eq!(s.grid(4, Spacing::Trailing)?.timesteps(), vec![999.0, 749.0, 499.0, 249.0]);
    /// assert_eq!(s.grid(4, Spacing::LinspaceRounded)?.timesteps(), vec![999.0, 666.0, 333.0, 0.0]);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// Deliberate differences from diffusers (see the guide): `Trailing` always gives exactly
    /// `steps` timesteps (numpy's float `arange` gives one more, ending at `-1`, for 62 step
    /// counts below 1000, e.g. 61); `Linspace` and `LinspaceRounded` with one step start at
    /// `T - 1` rather than at 0.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] unless `1 <= steps <= T`; [`Error::InvalidValue`] when a
    /// `Leading` offset pushes a timestep past `T - 1`; [`Error::InvalidParameter`] for a
    /// non-positive `rho`, or a sigma spacing on a schedule whose last level is pure noise
    /// (infinite sigma, zero terminal SNR).
    pub fn grid(&self, steps: usize, spacing: Spacing) -> Result<Grid> {
        let t_train = self.len();
        if steps == 0 || steps > t_train {
            return Err(Error::InvalidSteps { steps, max: t_train });
        }
        let tmax = (t_train - 1) as f64;
        let ts: Vec<f64> = match spacing {
            Spacing::Leading { offset } => {
                let ratio = t_train / steps;
                (0..steps).rev().map(|i| (i * ratio + offset) as f64).collect()
            }
            Spacing::DpmLeading { offset } => {
                let ratio = t_train / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + offset) as f64).collect()
            }
            Spacing::Trailing => {
                // numpy: arange(T, 0, -T/N) computes start + i * delta with
                // delta = (start + step) - start.
                let start = t_train as f64;
                let delta = (start - start / steps as f64) - start;
                (0..steps)
                    .map(|i| (start + i as f64 * delta).round_ties_even() - 1.0)
                    .collect()
            }
            Spacing::Linspace | Spacing::LinspaceRounded => {
                let mut ts = if steps == 1 {
                    vec![tmax]
                } else {
                    crate::schedule::linspace(0.0, tmax, steps)
                };
                ts.reverse();
                if spacing == Spacing::LinspaceRounded {
                    ts.iter_mut().for_each(|t| *t = t.round_ties_even());
                }
                ts
            }
            Spacing::DpmLinspace => {
                let mut ts: Vec<f64> = crate::schedule::linspace(0.0, tmax, steps + 1)
                    .into_iter()
                    .map(f64::round_ties_even)
                    .collect();
                ts.reverse();
                ts.pop();
                ts
            }
            Spacing::Lcm { original_steps } => {
                if original_steps == 0 || original_steps > t_train || steps > original_steps {
                    return Err(Error::InvalidParameter {
                        name: "original_steps",
                        value: original_steps as f64,
                        reason: "LCM needs steps <= original_steps <= training timesteps",
                    });
                }
                let k = t_train / original_steps;
                let origin: Vec<usize> = (1..=original_steps).rev().map(|i| i * k - 1).collect();
                (0..steps)
                    .map(|i| origin[(i as f64 * origin.len() as f64 / steps as f64).floor() as usize] as f64)
                    .collect()
            }
            Spacing::Karras { rho } => {
                if !(rho > 0.0 && rho.is_finite()) {
                    return Err(Error::InvalidParameter {
                        name: "rho",
                        value: rho,
                        reason: "must be positive and finite",
                    });
                }
                let (lo, hi) = self.sigma_range()?;
                return self.grid_from_spaced_sigmas(&karras_sigmas(steps, lo, hi, rho), "rho", rho);
            }
            Spacing::Exponential => {
                let (lo, hi) = self.sigma_range()?;
                return self.grid_from_spaced_sigmas(
                    &exponential_sigmas(steps, lo, hi),
                    "steps",
                    steps as f64,
                );
            }
            Spacing::Beta { alpha, beta } => {
                check_beta_shape(alpha, beta)?;
                let (lo, hi) = self.sigma_range()?;
                return self.grid_from_spaced_sigmas(
                    &beta_sigmas(steps, lo, hi, alpha, beta),
                    "alpha",
                    alpha,
                );
            }
        };
        self.grid_from_timesteps(&ts)
    }

    /// Sigmas computed by a spacing formula must all be positive and finite (an extreme `rho`
    /// can underflow or overflow them); a computed 0 is not a final-level marker.
    fn grid_from_spaced_sigmas(&self, sigmas: &[f64], name: &'static str, value: f64) -> Result<Grid> {
        if sigmas.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(Error::InvalidParameter {
                name,
                value,
                reason: "the spacing formula produces sigmas that underflow, overflow or repeat",
            });
        }
        self.grid_from_sigmas(sigmas)
            .map_err(|_| Error::InvalidParameter {
                name,
                value,
                reason: "the spacing formula produces sigmas that underflow, overflow or repeat",
            })
    }

    fn sigma_range(&self) -> Result<(f64, f64)> {
        let s = self.sigmas_ve();
        let hi = s[s.len() - 1];
        if !hi.is_finite() {
            return Err(Error::InvalidParameter {
                name: "sigma_max",
                value: hi,
                reason: "sigma spacings need a finite largest sigma; a zero-terminal-SNR schedule has none (use a timestep spacing, or grid_from_sigmas with your own sigma_max)",
            });
        }
        Ok((s[0], hi))
    }

    /// A grid through the given model timesteps (strictly decreasing, within `[0, T - 1]`,
    /// fractional allowed), ending at the clean level.
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// let g = s.grid_from_timesteps(&[999.0, 500.5, 10.0])?;
    /// assert_eq!(g.steps(), 3);
    /// assert!(s.grid_from_timesteps(&[10.0, 500.0]).is_err());
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for an empty list; [`Error::InvalidValue`] for a timestep that
    /// is non-finite, out of range, or not below its predecessor.
    pub fn grid_from_timesteps(&self, timesteps: &[f64]) -> Result<Grid> {
        if timesteps.is_empty() {
            return Err(Error::InvalidSteps {
                steps: 0,
                max: self.len(),
            });
        }
        let tmax = (self.len() - 1) as f64;
        let bad = |index, value, reason| Error::InvalidValue {
            what: "timesteps",
            index,
            value,
            reason,
        };
        for (i, &t) in timesteps.iter().enumerate() {
            if !t.is_finite() {
                return Err(bad(i, t, "must be finite"));
            }
            if t < 0.0 || t > tmax {
                return Err(bad(i, t, "outside the training timesteps [0, T - 1]"));
            }
            if i > 0 && t >= timesteps[i - 1] {
                return Err(bad(i, t, "timesteps must decrease strictly"));
            }
        }
        let mut levels: Vec<NoiseLevel> = timesteps.iter().map(|&t| self.level(t)).collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::checked(
            levels,
            Some(self.level_at(0)),
            LevelMap::Schedule(Arc::new(self.clone())),
        )
    }

    /// A grid through the given k-diffusion sigmas (`sigma / alpha`, strictly decreasing,
    /// positive; the first may be `+inf` for a zero-terminal-SNR start). A trailing 0, as in
    /// k-diffusion's sigma lists, marks the clean final level and is optional. Each level's `t`
    /// comes from [`NoiseSchedule::sigma_to_t`].
    ///
    /// ```
    /// use diffusion_samplers::{karras_sigmas, NoiseSchedule};
    /// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let g = s.grid_from_sigmas(&karras_sigmas(20, 0.03, 14.6, 7.0))?;
    /// assert_eq!(g.steps(), 20);
    /// assert!((g.levels()[0].sigma_ve() - 14.6).abs() < 1e-12);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for an empty list (or only a 0); [`Error::InvalidValue`] for a
    /// sigma that is NaN, negative, zero before the end, or not below its predecessor.
    pub fn grid_from_sigmas(&self, sigmas: &[f64]) -> Result<Grid> {
        let body = check_sigma_list(sigmas, true)?;
        let mut levels: Vec<NoiseLevel> = body.iter().map(|&s| self.level_from_sigma_ve(s)).collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::checked(
            levels,
            Some(self.level_at(0)),
            LevelMap::Schedule(Arc::new(self.clone())),
        )
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    fn sd() -> NoiseSchedule {
        NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap()
    }

    #[test]
    fn spacings_match_diffusers_examples() {
        let s = sd();
        let ts = |sp| s.grid(10, sp).unwrap().timesteps();
        assert_eq!(ts(Spacing::Leading { offset: 0 })[..3], [900.0, 800.0, 700.0]);
        assert_eq!(
            ts(Spacing::Trailing)[..],
            [
                999.0, 899.0, 799.0, 699.0, 599.0, 499.0, 399.0, 299.0, 199.0, 99.0
            ]
        );
        assert_eq!(
            ts(Spacing::LinspaceRounded)[..],
            [999.0, 888.0, 777.0, 666.0, 555.0, 444.0, 333.0, 222.0, 111.0, 0.0]
        );
        assert_eq!(ts(Spacing::Linspace)[1], 888.0);
    }

    #[test]
    fn trailing_never_gives_extra_steps() {
        let s = sd();
        for n in [61, 103, 121, 998, 999, 1000] {
            let g = s.grid(n, Spacing::Trailing).unwrap();
            assert_eq!(g.steps(), n);
            assert_eq!(g.timesteps()[0], 999.0);
        }
    }

    #[test]
    fn bad_steps_and_offsets_are_errors() {
        let s = sd();
        assert!(matches!(
            s.grid(0, Spacing::Trailing),
            Err(Error::InvalidSteps { steps: 0, max: 1000 })
        ));
        assert!(matches!(
            s.grid(1001, Spacing::Linspace),
            Err(Error::InvalidSteps { .. })
        ));
        // diffusers issue #10003: 1000 leading steps with steps_offset = 1 index t = 1000.
        assert!(matches!(
            s.grid(1000, Spacing::Leading { offset: 1 }),
            Err(Error::InvalidValue {
                what: "timesteps",
                index: 0,
                ..
            })
        ));
        assert!(s.grid(10, Spacing::Karras { rho: 0.0 }).is_err());
        let z = s.with_zero_terminal_snr().unwrap();
        assert!(matches!(
            z.grid(10, Spacing::Karras { rho: 7.0 }),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(z.grid(10, Spacing::Trailing).unwrap().levels()[0].alpha == 0.0);
    }

    #[test]
    fn custom_lists_are_validated() {
        let s = sd();
        assert!(s.grid_from_timesteps(&[]).is_err());
        assert!(s.grid_from_timesteps(&[f64::NAN]).is_err());
        assert!(s.grid_from_timesteps(&[1000.0]).is_err());
        assert!(s.grid_from_timesteps(&[5.0, 5.0]).is_err());
        assert!(s.grid_from_sigmas(&[0.0]).is_err());
        assert!(s.grid_from_sigmas(&[1.0, 2.0]).is_err());
        assert!(s.grid_from_sigmas(&[1.0, -2.0]).is_err());
        assert!(s.grid_from_sigmas(&[1.0, 0.0, 0.0]).is_err());
        let a = s.grid_from_sigmas(&[10.0, 1.0, 0.1]).unwrap();
        let b = s.grid_from_sigmas(&[10.0, 1.0, 0.1, 0.0]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.steps(), 3);
        assert!(s.grid_from_sigmas(&[f64::INFINITY, 1.0]).is_ok());
        assert!(Grid::from_levels(vec![NoiseLevel::CLEAN]).is_err());
        assert!(Grid::from_levels(vec![NoiseLevel::CLEAN, NoiseLevel::CLEAN]).is_err());
    }

    #[test]
    fn final_level_and_skip() {
        let s = sd();
        let g = s
            .grid(10, Spacing::LinspaceRounded)
            .unwrap()
            .with_final(FinalLevel::FirstTimestep);
        // The last step starts at t = 0 and ends there: a zero-length step.
        assert_eq!(g.levels()[9], g.levels()[10]);
        let g2 = g.clone().with_final(FinalLevel::Clean);
        assert!(g2.levels()[10].is_clean());
        let k = g.skip(4).unwrap();
        assert_eq!(k.steps(), 6);
        assert_eq!(k.timesteps()[0], 555.0);
        assert!(g.skip(10).is_err());
        let r = s.grid(5, Spacing::Karras { rho: 7.0 }).unwrap().round_timesteps();
        assert!(r.timesteps().iter().all(|t| t.fract() == 0.0));
    }
}
