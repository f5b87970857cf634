//! Rectified-flow schedules (Liu et al. 2022; Esser et al. 2024, *Stable Diffusion 3*).

use crate::error::{Error, Result};
use crate::grid::{
    Grid, LevelMap, Spacing, beta_sigmas, check_sigma_list, exponential_sigmas, karras_sigmas,
};
use crate::schedule::NoiseLevel;

/// How a flow schedule's sigmas are shifted towards noise (diffusers' `shift`,
/// `use_dynamic_shifting` with `mu`, `time_shift_type`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum FlowShift {
    /// `s' = shift s / (1 + (shift - 1) s)`; SD3 uses 3.0, 1.0 is no shift.
    Static(f64),
    /// Resolution-dependent shifting, exponential: `s' = e^mu / (e^mu + (1/s - 1))` (equal to
    /// `Static(e^mu)`); see [`FlowSchedule::mu_for_seq_len`].
    Exponential {
        /// The shift exponent.
        mu: f64,
    },
    /// Resolution-dependent shifting, linear: `s' = mu / (mu + (1/s - 1))`.
    Linear {
        /// The shift.
        mu: f64,
    },
}

impl FlowShift {
    /// Applies the shift to a flow sigma `s` in [0, 1].
    pub fn apply(self, s: f64) -> f64 {
        if s <= 0.0 {
            return 0.0;
        }
        match self {
            FlowShift::Static(k) => k * s / (1.0 + (k - 1.0) * s),
            FlowShift::Exponential { mu } => mu.exp() / (mu.exp() + (1.0 / s - 1.0)),
            FlowShift::Linear { mu } => mu / (mu + (1.0 / s - 1.0)),
        }
    }

    fn validate(self) -> Result<()> {
        let (name, v, ok) = match self {
            FlowShift::Static(k) => ("shift", k, k > 0.0 && k.is_finite()),
            FlowShift::Exponential { mu } => ("mu", mu, mu.is_finite()),
            FlowShift::Linear { mu } => ("mu", mu, mu > 0.0 && mu.is_finite()),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name,
                value: v,
                reason: "must be finite (and positive for a static or linear shift)",
            })
        }
    }
}

/// A rectified-flow schedule: `x_s = (1 - s) x0 + s eps`, so `alpha = 1 - s`, `sigma = s`, and
/// the model's timestep is `t = s T` (`T` training timesteps, 1000 for SD3 / Flux). The model
/// predicts the flow velocity `eps - x0` ([`Prediction::Flow`](crate::Prediction::Flow)).
///
/// The level at `s = 1` is pure noise (`alpha = 0`); every sampler starts there with a
/// first-order step, and DPM-Solver++ / UniPC work on flow grids like on any other.
///
/// ```
/// use diffusion_samplers::{FlowSchedule, FlowShift, Spacing};
/// // Stable Diffusion 3: shift 3.
/// let s = FlowSchedule::new(1000)?.with_shift(FlowShift::Static(3.0))?;
/// let g = s.grid(28, Spacing::Linspace)?;
/// assert_eq!(g.levels()[0].sigma, 1.0);
/// assert!(g.levels()[28].is_clean());
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FlowSchedule {
    train_steps: usize,
    shift: FlowShift,
    shift_terminal: Option<f64>,
}

impl FlowSchedule {
    /// A flow schedule with `train_steps` training timesteps and no shift.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for 0.
    pub fn new(train_steps: usize) -> Result<Self> {
        if train_steps == 0 {
            return Err(Error::InvalidSteps {
                steps: 0,
                max: usize::MAX,
            });
        }
        Ok(FlowSchedule {
            train_steps,
            shift: FlowShift::Static(1.0),
            shift_terminal: None,
        })
    }

    /// Sets the shift.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a non-finite or non-positive shift.
    pub fn with_shift(mut self, shift: FlowShift) -> Result<Self> {
        shift.validate()?;
        self.shift = shift;
        Ok(self)
    }

    /// Stretches the shifted sigmas so the last step's sigma is `terminal` (diffusers'
    /// `shift_terminal`, LTX-Video).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `0 < terminal < 1`.
    pub fn with_shift_terminal(mut self, terminal: f64) -> Result<Self> {
        if !(terminal > 0.0 && terminal < 1.0) {
            return Err(Error::InvalidParameter {
                name: "shift_terminal",
                value: terminal,
                reason: "must be in (0, 1)",
            });
        }
        self.shift_terminal = Some(terminal);
        Ok(self)
    }

    /// diffusers' resolution-dependent `mu`: linear in the image token count between
    /// `(base_seq_len, base_shift)` and `(max_seq_len, max_shift)` (SD3 / Flux defaults: 256,
    /// 4096, 0.5, 1.15).
    ///
    /// ```
    /// let mu = diffusion_samplers::FlowSchedule::mu_for_seq_len(4096, 256, 4096, 0.5, 1.15);
    /// assert!((mu - 1.15).abs() < 1e-12);
    /// ```
    pub fn mu_for_seq_len(
        seq_len: usize,
        base_seq_len: usize,
        max_seq_len: usize,
        base_shift: f64,
        max_shift: f64,
    ) -> f64 {
        let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
        let b = base_shift - m * base_seq_len as f64;
        seq_len as f64 * m + b
    }

    /// Number of training timesteps `T`.
    pub fn train_steps(&self) -> usize {
        self.train_steps
    }

    /// The shift.
    pub fn shift(&self) -> FlowShift {
        self.shift
    }

    /// The level at timestep `t` (`s = t / T`, clamped to [0, 1]).
    pub fn level(&self, t: f64) -> NoiseLevel {
        self.level_from_sigma((t / self.train_steps as f64).clamp(0.0, 1.0))
    }

    /// The level with flow sigma `s` (`alpha = 1 - s`, `t = s T`).
    pub fn level_from_sigma(&self, s: f64) -> NoiseLevel {
        NoiseLevel::new(s * self.train_steps as f64, 1.0 - s, s)
    }

    fn shifted(&self, sigmas: &mut [f64]) {
        for s in sigmas.iter_mut() {
            *s = self.shift.apply(*s);
        }
        if let (Some(term), Some(&last)) = (self.shift_terminal, sigmas.last()) {
            let scale = (1.0 - last) / (1.0 - term);
            for s in sigmas.iter_mut() {
                *s = 1.0 - (1.0 - *s) / scale;
            }
        }
    }

    /// A grid of `steps` steps ending at the clean level.
    ///
    /// | spacing | sigmas (noisiest first) | diffusers |
    /// |---|---|---|
    /// | `Linspace` | `shift(linspace(1, 1/T, N))` | `FlowMatchEulerDiscreteScheduler`, `FlowMatchHeunDiscreteScheduler` |
    /// | `DpmLinspace` | `shift(1 - linspace(1, 1/T, N + 1))[::-1][:-1]` | `use_flow_sigmas` of DPM-Solver / UniPC |
    /// | `Karras`, `Exponential`, `Beta` | between the ends of the shifted `Linspace` sigmas | `use_karras_sigmas`, ... of FlowMatch |
    ///
    /// **Deliberate difference**: diffusers' `FlowMatchEulerDiscreteScheduler` with a static
    /// shift shifts the smallest sigma twice (its constructor stores shifted sigmas, and
    /// `set_timesteps` shifts the `linspace` between them again; diffusers issue #13243). We
    /// shift once; diffusers gives the same grid when the unshifted sigmas are passed to
    /// `set_timesteps(sigmas=...)`, or with dynamic shifting.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for 0 steps; [`Error::InvalidParameter`] for a timestep spacing
    /// that flow schedules do not have (`Leading`, `Trailing`, ...).
    pub fn grid(&self, steps: usize, spacing: Spacing) -> Result<Grid> {
        if steps == 0 {
            return Err(Error::InvalidSteps {
                steps,
                max: usize::MAX,
            });
        }
        let t = self.train_steps as f64;
        let lin = |n: usize| crate::schedule::linspace(1.0, 1.0 / t, n);
        let mut sig = match spacing {
            Spacing::Linspace => {
                let mut s = lin(steps);
                self.shifted(&mut s);
                s
            }
            Spacing::DpmLinspace => {
                let mut s: Vec<f64> = lin(steps + 1).into_iter().map(|a| 1.0 - a).collect();
                self.shifted(&mut s);
                s.reverse();
                s.pop();
                s
            }
            Spacing::Karras { .. } | Spacing::Exponential | Spacing::Beta { .. } => {
                let mut ends = lin(steps.max(2));
                self.shifted(&mut ends);
                let (lo, hi) = (ends[ends.len() - 1], ends[0]);
                match spacing {
                    Spacing::Karras { rho } => karras_sigmas(steps, lo, hi, rho),
                    Spacing::Exponential => exponential_sigmas(steps, lo, hi),
                    Spacing::Beta { alpha, beta } => beta_sigmas(steps, lo, hi, alpha, beta),
                    _ => unreachable!("matched above"),
                }
            }
            _ => {
                return Err(Error::InvalidParameter {
                    name: "spacing",
                    value: f64::NAN,
                    reason: "flow schedules support Linspace, DpmLinspace, Karras, Exponential and Beta spacings",
                });
            }
        };
        if sig.iter().any(|s| !(s.is_finite() && *s > 0.0 && *s <= 1.0)) {
            return Err(Error::InvalidParameter {
                name: "spacing",
                value: f64::NAN,
                reason: "the spacing produces flow sigmas outside (0, 1]",
            });
        }
        sig.dedup();
        self.levels_grid(&sig)
    }

    /// A grid through the given flow sigmas (in (0, 1], strictly decreasing, trailing 0
    /// optional), shifted as the schedule's sigmas are — as diffusers'
    /// `set_timesteps(sigmas=...)`. Use [`Grid::from_levels`] for unshifted custom levels.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for sigmas out of (0, 1] or out of order.
    pub fn grid_from_sigmas(&self, sigmas: &[f64]) -> Result<Grid> {
        let body = check_sigma_list(sigmas, false)?;
        if let Some((i, &s)) = body.iter().enumerate().find(|(_, s)| **s > 1.0) {
            return Err(Error::InvalidValue {
                what: "sigmas",
                index: i,
                value: s,
                reason: "flow sigmas must be at most 1",
            });
        }
        let mut sig = body.to_vec();
        self.shifted(&mut sig);
        self.levels_grid(&sig)
    }

    fn levels_grid(&self, sig: &[f64]) -> Result<Grid> {
        let mut levels: Vec<NoiseLevel> = sig.iter().map(|&s| self.level_from_sigma(s)).collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::checked(
            levels,
            Some(self.level_from_sigma(1.0 / self.train_steps as f64)),
            LevelMap::Flow {
                t_max: self.train_steps as f64,
            },
        )
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use crate::grid::ScheduleFamily;

    #[test]
    fn static_shift_is_applied_once() {
        let s = FlowSchedule::new(1000)
            .unwrap()
            .with_shift(FlowShift::Static(3.0))
            .unwrap();
        let g = s.grid(4, Spacing::Linspace).unwrap();
        let sig: Vec<f64> = g.levels().iter().map(|l| l.sigma).collect();
        let want = |x: f64| 3.0 * x / (1.0 + 2.0 * x);
        let lin = crate::schedule::linspace(1.0, 0.001, 4);
        for i in 0..4 {
            assert!((sig[i] - want(lin[i])).abs() < 1e-15);
        }
        assert_eq!(sig[4], 0.0);
        assert_eq!(g.family(), ScheduleFamily::Flow);
        assert_eq!(g.levels()[1].t, sig[1] * 1000.0);
        let mid = g.level_at_sigma_ve(1.0);
        assert!((mid.sigma - 0.5).abs() < 1e-15 && (mid.t - 500.0).abs() < 1e-12);
    }

    #[test]
    fn exponential_shift_equals_static_exp_mu() {
        let a = FlowShift::Exponential { mu: 1.1 }.apply(0.3);
        let b = FlowShift::Static(1.1f64.exp()).apply(0.3);
        assert!((a - b).abs() < 1e-15);
        assert!(
            FlowSchedule::new(1000)
                .unwrap()
                .with_shift(FlowShift::Static(-1.0))
                .is_err()
        );
        assert!(FlowSchedule::new(0).is_err());
        assert!(FlowSchedule::new(10).unwrap().grid(5, Spacing::Trailing).is_err());
    }

    #[test]
    fn shift_terminal_ends_at_terminal() {
        let s = FlowSchedule::new(1000).unwrap().with_shift_terminal(0.1).unwrap();
        let g = s.grid(10, Spacing::Linspace).unwrap();
        assert!((g.levels()[9].sigma - 0.1).abs() < 1e-12);
    }
}
