//! Rectified-flow schedules (Liu et al. 2022; Esser et al. 2024, *Stable Diffusion 3*).

use crate::error::{Error, MAX_STEPS, Result};
use crate::level::NoiseLevel;

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
    /// [`Error::InvalidSteps`] for 0 or more than [`MAX_STEPS`](crate::MAX_STEPS).
    pub fn new(train_steps: usize) -> Result<Self> {
        if train_steps == 0 || train_steps > MAX_STEPS {
            return Err(Error::InvalidSteps {
                steps: train_steps,
                max: MAX_STEPS,
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
    /// let mu = diffusion_samplers::FlowSchedule::mu_for_seq_len(4096, 256, 4096, 0.5, 1.15)?;
    /// assert!((mu - 1.15).abs() < 1e-12);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] when `max_seq_len == base_seq_len` (the line is undefined),
    /// a shift is not finite, or `mu` overflows.
    pub fn mu_for_seq_len(
        seq_len: usize,
        base_seq_len: usize,
        max_seq_len: usize,
        base_shift: f64,
        max_shift: f64,
    ) -> Result<f64> {
        if max_seq_len == base_seq_len {
            return Err(Error::InvalidParameter {
                name: "max_seq_len",
                value: max_seq_len as f64,
                reason: "must differ from base_seq_len (mu is interpolated between the two)",
            });
        }
        for (name, v) in [("base_shift", base_shift), ("max_shift", max_shift)] {
            if !v.is_finite() {
                return Err(Error::InvalidParameter {
                    name,
                    value: v,
                    reason: "must be finite",
                });
            }
        }
        let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
        let b = base_shift - m * base_seq_len as f64;
        let mu = seq_len as f64 * m + b;
        if mu.is_finite() {
            Ok(mu)
        } else {
            Err(Error::InvalidParameter {
                name: "max_shift",
                value: max_shift,
                reason: "the shifts are so far apart that mu overflows",
            })
        }
    }

    /// Number of training timesteps `T`.
    pub fn train_steps(&self) -> usize {
        self.train_steps
    }

    /// The shift.
    pub fn shift(&self) -> FlowShift {
        self.shift
    }

    /// The terminal sigma the shifted sigmas are stretched to, if set.
    pub fn shift_terminal(&self) -> Option<f64> {
        self.shift_terminal
    }

    /// The level at timestep `t` (`s = t / T`, clamped to [0, 1], so `t` is clamped to
    /// `[0, T]`; a NaN `t` gives a NaN level, which grids reject).
    pub fn level(&self, t: f64) -> NoiseLevel {
        self.level_from_sigma((t / self.train_steps as f64).clamp(0.0, 1.0))
    }

    /// The level with flow sigma `s` (`alpha = 1 - s`, `t = s T`).
    pub fn level_from_sigma(&self, s: f64) -> NoiseLevel {
        NoiseLevel::new(s * self.train_steps as f64, 1.0 - s, s)
    }

    /// Shifts flow sigmas in place (and stretches them to `shift_terminal`).
    pub(crate) fn shifted(&self, sigmas: &mut [f64]) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `mu_for_seq_len` with `base == max` returned NaN.
    #[test]
    fn mu_for_equal_seq_lens_is_an_error() {
        assert!(FlowSchedule::mu_for_seq_len(1024, 256, 256, 0.5, 1.15).is_err());
        assert!(FlowSchedule::mu_for_seq_len(1024, 256, 4096, f64::NAN, 1.15).is_err());
        let mu = FlowSchedule::mu_for_seq_len(256, 256, 4096, 0.5, 1.15).unwrap();
        assert!((mu - 0.5).abs() < 1e-12);
        assert!(FlowSchedule::new(MAX_STEPS + 1).is_err());
        assert!(FlowSchedule::new(usize::MAX).is_err());
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
    }
}
