//! Grids of rectified-flow schedules ([`FlowSchedule::grid`]).

use super::sigmas::{beta_sigmas, check_sigma_list, exponential_sigmas, karras_sigmas};
use super::{Grid, LevelMap, Spacing};
use crate::error::{Error, MAX_STEPS, Result};
use crate::level::NoiseLevel;
use crate::schedule::{FlowSchedule, FlowShift};

impl FlowSchedule {
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
    /// The grid always has exactly `steps` steps: where the sigmas would repeat (a schedule of
    /// one training timestep, or a shift so extreme that distinct sigmas round to the same
    /// `f64`), it is an error rather than a shorter grid.
    ///
    /// ```
    /// use diffusion_samplers::{Error, FlowSchedule, FlowShift, Spacing};
    /// let s = FlowSchedule::new(1000)?;
    /// assert_eq!(s.grid(10, Spacing::Linspace)?.steps(), 10);
    /// let huge = s.with_shift(FlowShift::Static(1e300))?;
    /// assert!(matches!(huge.grid(10, Spacing::Linspace), Err(Error::InvalidParameter { name: "shift", .. })));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for 0 steps, more than [`MAX_STEPS`], or more than one step on
    /// a schedule with one training timestep; [`Error::UnknownName`] for a timestep spacing
    /// that flow schedules do not have (`Leading`, `Trailing`, ...); [`Error::InvalidParameter`]
    /// naming the shift (or `rho`, ...) when the shifted sigmas leave (0, 1] or repeat.
    pub fn grid(&self, steps: usize, spacing: Spacing) -> Result<Grid> {
        let t = self.train_steps() as f64;
        let max = if self.train_steps() == 1 { 1 } else { MAX_STEPS };
        if steps == 0 || steps > max {
            return Err(Error::InvalidSteps { steps, max });
        }
        let lin = |n: usize| crate::schedule::linspace(1.0, 1.0 / t, n);
        let sig = match spacing {
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
                if steps > 1 {
                    self.check_shifted(&[hi, lo])?;
                }
                match spacing {
                    Spacing::Karras { rho } => karras_sigmas(steps, lo, hi, rho)?,
                    Spacing::Exponential => exponential_sigmas(steps, lo, hi)?,
                    Spacing::Beta { alpha, beta } => beta_sigmas(steps, lo, hi, alpha, beta)?,
                    _ => unreachable!("matched above"),
                }
            }
            other => {
                return Err(Error::UnknownName {
                    what: "flow grid spacing",
                    name: format!("{other:?}"),
                    known: "Linspace, DpmLinspace, Karras, Exponential, Beta".to_string(),
                });
            }
        };
        self.check_shifted(&sig)?;
        self.levels_grid(&sig)
    }

    /// A grid through the given flow sigmas (in (0, 1], strictly decreasing, trailing 0
    /// optional), shifted as the schedule's sigmas are — as diffusers'
    /// `set_timesteps(sigmas=...)`. Use [`Grid::from_levels`] for unshifted custom levels.
    ///
    /// # Errors
    /// [`Error::InvalidValue`] for sigmas out of (0, 1] or out of order;
    /// [`Error::InvalidParameter`] naming the shift when it maps them out of (0, 1] or onto
    /// each other.
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
        self.check_shifted(&sig)?;
        self.levels_grid(&sig)
    }

    /// Shifted sigmas must stay in (0, 1] and strictly decreasing; otherwise the shift is to
    /// blame (the unshifted sigmas were checked).
    fn check_shifted(&self, sig: &[f64]) -> Result<()> {
        let in_range = sig.iter().all(|s| s.is_finite() && *s > 0.0 && *s <= 1.0);
        if in_range && sig.windows(2).all(|w| w[1] < w[0]) {
            return Ok(());
        }
        let (name, value) = match self.shift() {
            FlowShift::Static(k) => ("shift", k),
            FlowShift::Exponential { mu } | FlowShift::Linear { mu } => ("mu", mu),
        };
        Err(Error::InvalidParameter {
            name,
            value,
            reason: if in_range {
                "the shift maps distinct sigmas onto the same f64 (too extreme for this many steps)"
            } else {
                "the shift maps sigmas outside (0, 1] (too extreme)"
            },
        })
    }

    fn levels_grid(&self, sig: &[f64]) -> Result<Grid> {
        let mut levels: Vec<NoiseLevel> = sig.iter().map(|&s| self.level_from_sigma(s)).collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::checked(
            levels,
            Some(self.level_from_sigma(1.0 / self.train_steps() as f64)),
            LevelMap::Flow {
                t_max: self.train_steps() as f64,
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
        let mid = g.level_at_sigma_ve(1.0).unwrap();
        assert!((mid.sigma - 0.5).abs() < 1e-15 && (mid.t - 500.0).abs() < 1e-12);
    }

    #[test]
    fn timestep_spacings_are_unknown_to_flow_schedules() {
        let r = FlowSchedule::new(10).unwrap().grid(5, Spacing::Trailing);
        assert!(matches!(r, Err(Error::UnknownName { .. })), "{r:?}");
    }

    #[test]
    fn shift_terminal_ends_at_terminal() {
        let s = FlowSchedule::new(1000).unwrap().with_shift_terminal(0.1).unwrap();
        let g = s.grid(10, Spacing::Linspace).unwrap();
        assert!((g.levels()[9].sigma - 0.1).abs() < 1e-12);
    }

    /// Regression: a flow grid silently had fewer steps than asked (a `dedup`) for T = 1 or an
    /// extreme shift.
    #[test]
    fn flow_grids_have_the_steps_asked_for_or_fail() {
        let one = FlowSchedule::new(1).unwrap();
        assert!(matches!(
            one.grid(10, Spacing::Linspace),
            Err(Error::InvalidSteps { steps: 10, max: 1 })
        ));
        assert_eq!(one.grid(1, Spacing::Linspace).unwrap().steps(), 1);
        let s = FlowSchedule::new(1000).unwrap();
        for shift in [FlowShift::Static(1e300), FlowShift::Exponential { mu: 700.0 }] {
            let r = s.clone().with_shift(shift).unwrap().grid(10, Spacing::Linspace);
            assert!(
                matches!(r, Err(Error::InvalidParameter { .. })),
                "{shift:?}: {r:?}"
            );
        }
        // mu = -1000 shifts every sigma to 0: the error names mu, not the spacing.
        let r = s
            .with_shift(FlowShift::Exponential { mu: -1000.0 })
            .unwrap()
            .grid(10, Spacing::Linspace);
        assert!(
            matches!(r, Err(Error::InvalidParameter { name: "mu", value, .. }) if value == -1000.0),
            "{r:?}"
        );
        for n in [1, 2, 7, 50] {
            for sp in [
                Spacing::Linspace,
                Spacing::DpmLinspace,
                Spacing::KARRAS,
                Spacing::Exponential,
            ] {
                assert_eq!(FlowSchedule::new(1000).unwrap().grid(n, sp).unwrap().steps(), n);
            }
        }
    }
}
