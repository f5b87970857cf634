//! ComfyUI's model samplings (the sigma tables its schedulers read) and its nine schedulers.
//!
//! ComfyUI does not sample on a diffusers-style timestep grid: its `KSampler` asks a scheduler
//! for a list of sigmas, computed from the model's `model_sampling` object — a table of the
//! training sigmas plus a `timestep(sigma)` / `sigma(timestep)` pair — and conditions the model
//! on `timestep(sigma)` for every sigma a sampler visits. [`ModelSampling`] is that object for
//! our schedules, [`ComfyScheduler`] the nine scheduler names, and
//! [`ModelSampling::ksampler_sigmas`] the `KSampler`'s own conventions (`denoise`, the samplers
//! that drop the penultimate sigma). A [`Grid`] built by [`ModelSampling::grid`] carries
//! ComfyUI's model timesteps and starting-noise scale, so any sampler of this crate runs on
//! exactly the levels ComfyUI's would.

use std::sync::Arc;

use super::{Grid, LevelMap, ScheduleFamily};
use crate::error::{Error, MAX_STEPS, Result};
use crate::level::NoiseLevel;
use crate::schedule::{FlowSchedule, NoiseSchedule, check_steps};

/// ComfyUI's last cumulative alpha for zero-terminal-SNR models
/// (`rescale_zero_terminal_snr_sigmas` in `comfy/model_sampling.py`), which keeps the top sigma
/// finite (about 4519).
const ZSNR_LAST_ALPHA_BAR: f64 = 4.897_345_189_085_343_5e-8;

/// A model's sampling table as ComfyUI sees it (`comfy/model_sampling.py`): the ascending sigma
/// table its schedulers index, `timestep(sigma)` and `sigma(timestep)`.
///
/// * [`discrete`](Self::discrete) — `ModelSamplingDiscrete` (SD 1.x / 2.x / XL, eps or v):
///   the table is the schedule's k-diffusion sigmas `sigma / alpha`; `timestep(sigma)` is the
///   index of the nearest table entry in log-sigma (an integer); `sigma(t)` interpolates the
///   table in log-sigma. Zero-terminal-SNR schedules get ComfyUI's finite top sigma
///   (`alpha_bar = 4.897e-8`, sigma about 4519) instead of pure noise.
/// * [`flow`](Self::flow) — `ModelSamplingDiscreteFlow` (SD3, Wan, ...): `T` entries
///   `shift(k / T)`, `timestep = sigma T`.
/// * [`flux`](Self::flux) — `ModelSamplingFlux`: 10 000 entries `shift(k / 10000)` and
///   `timestep = sigma` (the model is still given the flow schedule's `t = sigma T`).
///
/// Sigmas here are ComfyUI's: k-diffusion sigmas for discrete models, flow sigmas for flow
/// models. ComfyUI stores the table in `f32`; we keep `f64` (the values agree to `f32`
/// rounding, 6e-8 relative).
///
/// ```
/// use diffusion_samplers::grid::{ComfyScheduler, ModelSampling};
/// use diffusion_samplers::NoiseSchedule;
/// let sd15 = ModelSampling::discrete(&NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?)?;
/// assert!((sd15.sigma_max() - 14.6146).abs() < 1e-4);
/// assert_eq!(sd15.timestep(1.0), 354.0); // the nearest training timestep
/// let sigmas = ComfyScheduler::Karras.sigmas(&sd15, 20)?;
/// assert_eq!(sigmas.len(), 21);
/// let grid = sd15.grid(&sigmas)?; // levels at ComfyUI's sigmas and timesteps
/// assert_eq!(grid.steps(), 20);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSampling {
    kind: Kind,
    /// Ascending table (`model_sampling.sigmas`).
    sigmas: Vec<f64>,
    /// `ln` of the table (discrete models).
    log_sigmas: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Discrete(Arc<NoiseSchedule>),
    /// `sigma(t) = shift(t / multiplier)`, `timestep(sigma) = sigma multiplier`; the grid's
    /// model timestep is `sigma * t_max` (the flow schedule's own convention).
    Flow {
        schedule: FlowSchedule,
        multiplier: f64,
    },
}

impl ModelSampling {
    /// ComfyUI's `ModelSamplingDiscrete` for a discrete VP schedule.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a schedule of fewer than two training steps (ComfyUI's
    /// schedulers index the table's second entry).
    pub fn discrete(schedule: &NoiseSchedule) -> Result<Self> {
        let mut sigmas = schedule.sigmas_ve().to_vec();
        if sigmas.len() < 2 {
            return Err(Error::InvalidParameter {
                name: "train_steps",
                value: sigmas.len() as f64,
                reason: "ComfyUI's model sampling needs at least two training timesteps",
            });
        }
        if let Some(last) = sigmas.last_mut().filter(|s| s.is_infinite()) {
            *last = ((1.0 - ZSNR_LAST_ALPHA_BAR) / ZSNR_LAST_ALPHA_BAR).sqrt();
        }
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Ok(ModelSampling {
            kind: Kind::Discrete(Arc::new(schedule.clone())),
            sigmas,
            log_sigmas,
        })
    }

    /// ComfyUI's `ModelSamplingDiscreteFlow` for a flow schedule (`T` table entries
    /// `shift(k / T)`, `k = 1..=T`).
    ///
    /// # Errors
    /// As [`flux`](Self::flux).
    pub fn flow(schedule: &FlowSchedule) -> Result<Self> {
        let t = schedule.train_steps();
        Self::flow_table(schedule, t, t as f64)
    }

    /// ComfyUI's `ModelSamplingFlux` (Flux, Chroma, ...): 10 000 table entries
    /// `shift(k / 10000)` and ComfyUI timestep `sigma`. Use the schedule's shift that ComfyUI
    /// uses: `FlowShift::Exponential { mu: 1.15 }` for Flux dev.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a schedule with a `shift_terminal` (ComfyUI's flow
    /// samplings have none).
    pub fn flux(schedule: &FlowSchedule) -> Result<Self> {
        Self::flow_table(schedule, 10_000, 1.0)
    }

    fn flow_table(schedule: &FlowSchedule, entries: usize, multiplier: f64) -> Result<Self> {
        if let Some(term) = schedule.shift_terminal() {
            return Err(Error::InvalidParameter {
                name: "shift_terminal",
                value: term,
                reason: "ComfyUI's flow model samplings have no shift_terminal",
            });
        }
        let shift = schedule.shift();
        let sigmas: Vec<f64> = (1..=entries)
            .map(|k| shift.apply(k as f64 / entries as f64))
            .collect();
        Ok(ModelSampling {
            kind: Kind::Flow {
                schedule: schedule.clone(),
                multiplier,
            },
            sigmas,
            log_sigmas: Vec::new(),
        })
    }

    /// The discrete schedule of a [`discrete`](Self::discrete) sampling.
    pub fn discrete_schedule(&self) -> Option<&NoiseSchedule> {
        match &self.kind {
            Kind::Discrete(s) => Some(s),
            Kind::Flow { .. } => None,
        }
    }

    /// The flow schedule of a [`flow`](Self::flow) or [`flux`](Self::flux) sampling.
    pub fn flow_schedule(&self) -> Option<&FlowSchedule> {
        match &self.kind {
            Kind::Discrete(_) => None,
            Kind::Flow { schedule, .. } => Some(schedule),
        }
    }

    /// `true` for the flow samplings (ComfyUI's `CONST` models).
    pub fn is_flow(&self) -> bool {
        matches!(self.kind, Kind::Flow { .. })
    }

    /// The schedule family of the grids this sampling builds.
    pub fn family(&self) -> ScheduleFamily {
        if self.is_flow() {
            ScheduleFamily::Flow
        } else {
            ScheduleFamily::Vp
        }
    }

    /// The ascending sigma table (`model_sampling.sigmas`).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// The smallest table sigma (`sigma_min`).
    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    /// The largest table sigma (`sigma_max`).
    pub fn sigma_max(&self) -> f64 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// ComfyUI's `timestep(sigma)`: the nearest table index in log-sigma (discrete; the lower
    /// index on a tie, 0 for a zero sigma), `sigma * multiplier` (flow).
    pub fn timestep(&self, sigma: f64) -> f64 {
        match &self.kind {
            Kind::Flow { multiplier, .. } => sigma * multiplier,
            Kind::Discrete(_) => {
                if !(sigma > 0.0 && sigma.is_finite()) {
                    return 0.0;
                }
                let ls = sigma.ln();
                let table = &self.log_sigmas;
                let k = table.partition_point(|&l| l < ls);
                if k == 0 {
                    return 0.0;
                }
                if k == table.len() {
                    return (k - 1) as f64;
                }
                // torch's argmin returns the first minimum: the lower index on a tie.
                if (ls - table[k - 1]).abs() <= (table[k] - ls).abs() {
                    (k - 1) as f64
                } else {
                    k as f64
                }
            }
        }
    }

    /// ComfyUI's `sigma(timestep)`: the table interpolated in log-sigma at `t` clamped to
    /// `[0, T - 1]` (discrete), `shift(t / multiplier)` (flow).
    pub fn sigma(&self, t: f64) -> f64 {
        match &self.kind {
            Kind::Flow { schedule, multiplier } => schedule.shift().apply(t / multiplier),
            Kind::Discrete(_) => {
                let t = t.clamp(0.0, (self.sigmas.len() - 1) as f64);
                let (lo, hi) = (t.floor() as usize, t.ceil() as usize);
                let w = t - t.floor();
                ((1.0 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()
            }
        }
    }

    /// ComfyUI's `percent_to_sigma(p)`: the sigma a fraction `p` of the way through sampling
    /// (`p <= 0` gives ComfyUI's "above every sigma" value, 999999999.9 for discrete models and
    /// 1 for flow; `p >= 1` gives 0). Discrete models use ComfyUI's fixed `(1 - p) * 999`
    /// timestep whatever the table length.
    pub fn percent_to_sigma(&self, p: f64) -> f64 {
        if p >= 1.0 {
            return 0.0;
        }
        match &self.kind {
            Kind::Discrete(_) if p <= 0.0 => 999_999_999.9,
            Kind::Discrete(_) => self.sigma((1.0 - p) * 999.0),
            Kind::Flow { .. } if p <= 0.0 => 1.0,
            Kind::Flow { schedule, .. } => schedule.shift().apply(1.0 - p),
        }
    }

    /// The level ComfyUI evaluates the model at for sigma `sigma` (a k-diffusion sigma for
    /// discrete models, a flow sigma in `[0, 1]` for flow models).
    pub fn level(&self, sigma: f64) -> NoiseLevel {
        match &self.kind {
            Kind::Discrete(_) => NoiseLevel::from_sigma_ve(self.timestep(sigma), sigma),
            Kind::Flow { schedule, .. } => schedule.level_from_sigma(sigma),
        }
    }

    /// The ComfyUI sigma of a level: `sigma / alpha` for discrete models, `sigma` for flow.
    pub fn sigma_of(&self, level: &NoiseLevel) -> f64 {
        if self.is_flow() {
            level.sigma
        } else {
            level.sigma_ve()
        }
    }

    /// The grid ComfyUI samples for a list of its sigmas (descending): each level at ComfyUI's
    /// model timestep, levels between grid points (churn, midpoints) too. A trailing 0 is the
    /// clean final level; a list without one ends at its last sigma, as ComfyUI's samplers do
    /// on such lists (the first part of a split schedule). The starting sample's scale follows ComfyUI's
    /// `noise_scaling`: for a discrete model whose first sigma is its `sigma_max` (ComfyUI's
    /// `max_denoise`), the noise is scaled to `sqrt(1 + sigma^2)` in ComfyUI's scaling, which
    /// is 1 in the model's; otherwise `sigma` (the level's own noise scale).
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for an empty list; [`Error::InvalidValue`] for sigmas that are
    /// not positive and finite, do not decrease strictly (ComfyUI runs repeated sigmas as
    /// zero-length steps; this crate's grids do not allow them), or exceed 1 on a flow model.
    pub fn grid(&self, sigmas: &[f64]) -> Result<Grid> {
        let body = super::check_sigma_list(sigmas, false)?;
        let to_clean = sigmas.last() == Some(&0.0);
        if !to_clean && body.len() < 2 {
            return Err(Error::InvalidSteps {
                steps: 0,
                max: MAX_STEPS,
            });
        }
        if self.is_flow()
            && let Some((index, &value)) = body.iter().enumerate().find(|(_, s)| **s > 1.0)
        {
            return Err(Error::InvalidValue {
                what: "sigmas",
                index,
                value,
                reason: "flow sigmas are at most 1",
            });
        }
        let mut levels: Vec<NoiseLevel> = body.iter().map(|&s| self.level(s)).collect();
        if to_clean {
            levels.push(NoiseLevel::CLEAN);
        }
        let (map, first) = match &self.kind {
            Kind::Discrete(_) => (
                LevelMap::Nearest(Arc::new(self.clone())),
                Some(NoiseLevel::from_sigma_ve(0.0, self.sigmas[0])),
            ),
            Kind::Flow { schedule, .. } => (
                LevelMap::Flow {
                    t_max: schedule.train_steps() as f64,
                },
                None,
            ),
        };
        let grid = Grid::checked(levels, first, map)?;
        let max_denoise = {
            let (top, s0) = (self.sigma_max(), body[0]);
            (s0 - top).abs() <= 1e-5 * s0.abs().max(top.abs()) || s0 > top
        };
        if !self.is_flow() && max_denoise {
            grid.with_initial_scale(1.0)
        } else {
            Ok(grid)
        }
    }

    /// The sigmas ComfyUI's `KSampler` samples: `scheduler`'s sigmas for `steps` steps with
    /// its conventions — `denoise < 1` computes `int(steps / denoise)` steps and keeps the last
    /// `steps + 1` sigmas (img2img), and `discard_penultimate` (ComfyUI does it for `dpm_2`,
    /// `dpm_2_ancestral`, `uni_pc`, `uni_pc_bh2`) computes one step more and drops the
    /// penultimate sigma.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for `denoise` outside `(0, 1]` (ComfyUI returns no sigmas
    /// for `denoise <= 0`); [`Error::InvalidSteps`] for 0 steps; as
    /// [`ComfyScheduler::sigmas`].
    pub fn ksampler_sigmas(
        &self,
        scheduler: ComfyScheduler,
        steps: usize,
        denoise: f64,
        discard_penultimate: bool,
    ) -> Result<Vec<f64>> {
        if !(denoise > 0.0 && denoise <= 1.0) {
            return Err(Error::InvalidParameter {
                name: "denoise",
                value: denoise,
                reason: "must be in (0, 1]",
            });
        }
        check_steps(steps)?;
        let calc = |n: usize| -> Result<Vec<f64>> {
            if discard_penultimate {
                let mut s = scheduler.sigmas(self, n + 1)?;
                let len = s.len();
                if len >= 2 {
                    s.remove(len - 2);
                }
                Ok(s)
            } else {
                scheduler.sigmas(self, n)
            }
        };
        if denoise > 0.9999 {
            return calc(steps);
        }
        let total = (steps as f64 / denoise) as usize;
        check_steps(total)?;
        let s = calc(total)?;
        let keep = (steps + 1).min(s.len());
        Ok(s[s.len() - keep..].to_vec())
    }
}

/// ComfyUI's nine scheduler names (`comfy/samplers.py`, `SCHEDULER_NAMES`), each a way to pick
/// `steps` sigmas from a [`ModelSampling`]. Each list ends with 0.
///
/// | name | sigmas |
/// |---|---|
/// | `simple` | every `T / steps`-th table entry from the top |
/// | `sgm_uniform` | `sigma(t)` at `steps` timesteps evenly spaced from `timestep(sigma_max)` towards `timestep(sigma_min)`, the end excluded |
/// | `karras` | Karras et al. (rho 7) between the table's ends |
/// | `exponential` | evenly spaced in log-sigma between the table's ends |
/// | `ddim_uniform` | table entries `1, 1 + T/steps, ...` (integer stride), reversed: may give more steps than asked when `T / steps` is not an integer |
/// | `beta` | table entries at `rint(ppf_{Beta(0.6, 0.6)}(1 - i/steps) (T - 1))`, repeats dropped: may give fewer steps |
/// | `normal` | `sigma(t)` at `steps` timesteps evenly spaced from `timestep(sigma_max)` to `timestep(sigma_min)`, both included |
/// | `linear_quadratic` | Mochi's schedule: linear to 0.025 over the first half, then quadratic, times `sigma_max` |
/// | `kl_optimal` | `tan` of evenly spaced `atan(sigma)` between the table's ends |
///
/// **Deliberate difference**: ComfyUI's `kl_optimal` divides by `steps - 1` and returns NaN
/// for one step; here one step is `[sigma_max, 0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ComfyScheduler {
    /// `simple`.
    Simple,
    /// `sgm_uniform`.
    SgmUniform,
    /// `karras`.
    Karras,
    /// `exponential`.
    Exponential,
    /// `ddim_uniform`.
    DdimUniform,
    /// `beta`.
    Beta,
    /// `normal`.
    Normal,
    /// `linear_quadratic`.
    LinearQuadratic,
    /// `kl_optimal`.
    KlOptimal,
}

impl ComfyScheduler {
    /// All nine, in ComfyUI's order.
    pub const ALL: [ComfyScheduler; 9] = [
        ComfyScheduler::Simple,
        ComfyScheduler::SgmUniform,
        ComfyScheduler::Karras,
        ComfyScheduler::Exponential,
        ComfyScheduler::DdimUniform,
        ComfyScheduler::Beta,
        ComfyScheduler::Normal,
        ComfyScheduler::LinearQuadratic,
        ComfyScheduler::KlOptimal,
    ];

    /// ComfyUI's name.
    pub fn name(self) -> &'static str {
        match self {
            ComfyScheduler::Simple => "simple",
            ComfyScheduler::SgmUniform => "sgm_uniform",
            ComfyScheduler::Karras => "karras",
            ComfyScheduler::Exponential => "exponential",
            ComfyScheduler::DdimUniform => "ddim_uniform",
            ComfyScheduler::Beta => "beta",
            ComfyScheduler::Normal => "normal",
            ComfyScheduler::LinearQuadratic => "linear_quadratic",
            ComfyScheduler::KlOptimal => "kl_optimal",
        }
    }

    /// The scheduler with ComfyUI's name `name`.
    ///
    /// # Errors
    /// [`Error::UnknownName`] listing the nine names.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| Error::UnknownName {
                what: "ComfyUI scheduler",
                name: name.to_string(),
                known: Self::ALL.map(Self::name).join(", "),
            })
    }

    /// The sigmas for `steps` steps, ending with 0 (`comfy.samplers.calculate_sigmas`).
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for 0 or more than [`MAX_STEPS`] steps.
    pub fn sigmas(self, ms: &ModelSampling, steps: usize) -> Result<Vec<f64>> {
        check_steps(steps)?;
        let (smin, smax) = (ms.sigma_min(), ms.sigma_max());
        let n_table = ms.sigmas.len();
        let mut s = match self {
            ComfyScheduler::Simple => {
                let ss = n_table as f64 / steps as f64;
                (0..steps)
                    .map(|x| {
                        let back = 1 + (x as f64 * ss) as usize;
                        ms.sigmas[n_table.saturating_sub(back)]
                    })
                    .collect()
            }
            ComfyScheduler::SgmUniform => {
                let (start, end) = (ms.timestep(smax), ms.timestep(smin));
                let mut t = torch_linspace(start, end, steps + 1);
                t.pop();
                t.into_iter().map(|t| ms.sigma(t)).collect()
            }
            ComfyScheduler::Normal => {
                let (start, end) = (ms.timestep(smax), ms.timestep(smin));
                let ends_clean = ms.sigma(end).abs() <= 1e-5;
                let n = if ends_clean { steps + 1 } else { steps };
                let s: Vec<f64> = torch_linspace(start, end, n)
                    .into_iter()
                    .map(|t| ms.sigma(t))
                    .collect();
                if ends_clean {
                    return Ok(s);
                }
                s
            }
            ComfyScheduler::Karras => {
                let mut s = super::karras_sigmas(steps, smin, smax, 7.0)?;
                s.push(0.0);
                return Ok(s);
            }
            ComfyScheduler::Exponential => {
                let mut s = super::exponential_sigmas(steps, smin, smax)?;
                s.push(0.0);
                return Ok(s);
            }
            ComfyScheduler::DdimUniform => {
                let starts_clean = ms.sigmas[1].abs() <= 1e-5;
                let n = if starts_clean { steps + 1 } else { steps };
                let ss = (n_table / n).max(1);
                let mut s: Vec<f64> = if starts_clean { Vec::new() } else { vec![0.0] };
                s.extend((1..n_table).step_by(ss).map(|x| ms.sigmas[x]));
                s.reverse();
                return Ok(s);
            }
            ComfyScheduler::Beta => return ms.beta_sigmas(steps, 0.6, 0.6),
            ComfyScheduler::LinearQuadratic => {
                let mut s = linear_quadratic(steps, 0.025);
                for v in &mut s {
                    *v *= smax;
                }
                return Ok(s);
            }
            ComfyScheduler::KlOptimal if steps == 1 => vec![smax],
            ComfyScheduler::KlOptimal => {
                let (a, b) = (smin.atan(), smax.atan());
                (0..steps)
                    .map(|i| {
                        let adj = i as f64 / (steps - 1) as f64;
                        (adj * a + (1.0 - adj) * b).tan()
                    })
                    .collect()
            }
        };
        s.push(0.0);
        Ok(s)
    }
}

impl std::str::FromStr for ComfyScheduler {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s)
    }
}

/// `torch.linspace(start, end, n)` (the step from the nearer end, as torch computes it).
pub(crate) fn torch_linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    torch_linspace_iter(start, end, n).collect()
}

/// [`torch_linspace`] without the allocation.
pub(crate) fn torch_linspace_iter(start: f64, end: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 {
        (end - start) / (n - 1) as f64
    } else {
        0.0
    };
    let half = n / 2;
    (0..n).map(move |i| {
        if n == 1 || i < half {
            start + step * i as f64
        } else {
            end - step * (n - 1 - i) as f64
        }
    })
}

/// Mochi's linear-quadratic schedule (`linear_quadratic_schedule`), as fractions of
/// `sigma_max`, ending with 0.
fn linear_quadratic(steps: usize, threshold: f64) -> Vec<f64> {
    if steps == 1 {
        return vec![1.0, 0.0];
    }
    let lin = steps / 2;
    let (n, l) = (steps as f64, lin as f64);
    let diff = l - threshold * n;
    let quad = n - l;
    let qc = diff / (l * quad * quad);
    let lc = threshold / l - 2.0 * diff / (quad * quad);
    let c = qc * l * l;
    let mut s: Vec<f64> = (0..lin).map(|i| i as f64 * threshold / l).collect();
    s.extend((lin..steps).map(|i| {
        let i = i as f64;
        qc * i * i + lc * i + c
    }));
    s.push(1.0);
    s.into_iter().map(|v| 1.0 - v).collect()
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "integer timesteps by construction")]
mod tests {
    use super::*;

    #[test]
    fn torch_linspace_ends_exactly() {
        let t = torch_linspace(999.0, 0.0, 7);
        assert_eq!(t.first(), Some(&999.0));
        assert_eq!(t.last(), Some(&0.0));
        assert!((t[3] - 499.5).abs() < 1e-12);
    }

    /// ComfyUI runs repeated sigmas as zero-length steps; a grid here refuses them, by name.
    #[test]
    fn repeated_sigmas_are_an_error() {
        let ms =
            ModelSampling::discrete(&NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap()).unwrap();
        assert!(matches!(
            ms.grid(&[14.6, 3.0, 3.0, 0.0]),
            Err(Error::InvalidValue { what: "sigmas", .. })
        ));
        let flow = ModelSampling::flow(&FlowSchedule::new(1000).unwrap()).unwrap();
        assert!(matches!(
            flow.grid(&[1.5, 0.5, 0.0]),
            Err(Error::InvalidValue { .. })
        ));
        assert!(ms.grid(&[]).is_err() && ms.grid(&[1.0]).is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in ComfyScheduler::ALL {
            assert_eq!(ComfyScheduler::from_name(s.name()).unwrap(), s);
        }
        assert!(ComfyScheduler::from_name("karas").is_err());
    }

    #[test]
    fn timestep_is_the_nearest_index() {
        let ms =
            ModelSampling::discrete(&NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap()).unwrap();
        for (i, &s) in ms.sigmas().iter().enumerate().step_by(37) {
            assert_eq!(ms.timestep(s), i as f64);
            assert_eq!(ms.timestep(s * 1.0001), i as f64);
            assert!((ms.sigma(i as f64) - s).abs() < 1e-12 * s);
        }
        assert_eq!(ms.timestep(1e-9), 0.0);
        assert_eq!(ms.timestep(1e9), 999.0);
    }

    #[test]
    fn linear_quadratic_ends_at_one_and_zero() {
        for steps in [1, 2, 3, 10, 25] {
            let s = linear_quadratic(steps, 0.025);
            assert_eq!(s.len(), steps + 1);
            assert!((s[0] - 1.0).abs() < 1e-15 && s[steps] == 0.0, "{steps}: {s:?}");
            assert!(s.windows(2).all(|w| w[1] < w[0]), "{steps}: {s:?}");
        }
    }
}
