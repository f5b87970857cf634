//! Discrete training schedules: betas, cumulative products and the noise levels they define.
//!
//! A [`NoiseSchedule`] is the path of [`NoiseLevel`]s a model was trained on, computed in `f64`.
//! Beta schedules match diffusers' formulas (`linear`, `scaled_linear`, `squaredcos_cap_v2`,
//! `sigmoid`, `laplace`, `exp`), and [`NoiseSchedule::with_zero_terminal_snr`] is Algorithm 1 of
//! Lin et al. 2023.

mod betas;
mod flow;
mod levels;

pub(crate) use betas::linspace;
pub use flow::{FlowSchedule, FlowShift};

use crate::error::{Error, MAX_STEPS, Result};
pub use crate::level::NoiseLevel;

/// A discrete training schedule of `T` timesteps `t = 0, ..., T - 1`, computed in `f64`.
///
/// Level `t` has `abar_t = prod_{i <= t} (1 - beta_i)`, `alpha = sqrt(abar_t)`, `sigma =
/// sqrt(1 - abar_t)`. Constructors validate: at least one step, betas finite and in (0, 1) —
/// except that the last beta may be exactly 1, which makes the terminal level pure noise
/// (`abar = 0`, `sigma / alpha = inf`), as a zero-terminal-SNR schedule does.
///
/// ```
/// use diffusion_samplers::NoiseSchedule;
/// // Stable Diffusion's training schedule.
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// assert_eq!(s.len(), 1000);
/// let last = s.level(999.0);
/// assert!((last.alpha_bar() - 0.0046).abs() < 1e-4);
/// // Zero terminal SNR (Lin et al. 2023): the last level is pure noise.
/// let z = s.with_zero_terminal_snr()?;
/// assert_eq!(z.level(999.0).alpha, 0.0);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// k-diffusion sigmas `sqrt((1 - abar) / abar)`, increasing; `inf` at a terminal `abar = 0`.
    sigmas_ve: Vec<f64>,
}

impl NoiseSchedule {
    /// `beta = linspace(beta_start, beta_end, steps)` (DDPM: `1e-4, 0.02`).
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for `steps = 0`, [`Error::InvalidBeta`] if a beta leaves (0, 1).
    pub fn linear(steps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        check_steps(steps)?;
        Self::from_betas(&betas::linspace(beta_start, beta_end, steps))
    }

    /// `beta = linspace(sqrt(beta_start), sqrt(beta_end), steps)^2`, the latent-diffusion schedule
    /// (Stable Diffusion: `0.00085, 0.012`).
    ///
    /// # Errors
    /// As [`linear`](Self::linear); also [`Error::InvalidParameter`] for a negative bound.
    pub fn scaled_linear(steps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        check_steps(steps)?;
        for (name, v) in [("beta_start", beta_start), ("beta_end", beta_end)] {
            if v.is_nan() || v < 0.0 {
                return Err(Error::InvalidParameter {
                    name,
                    value: v,
                    reason: "must be a non-negative number",
                });
            }
        }
        let b: Vec<f64> = betas::linspace(beta_start.sqrt(), beta_end.sqrt(), steps)
            .into_iter()
            .map(|r| r * r)
            .collect();
        Self::from_betas(&b)
    }

    /// The cosine schedule of Nichol & Dhariwal 2021 (diffusers' `squaredcos_cap_v2`):
    /// `abar(t) = cos^2((t + 0.008) / 1.008 * pi / 2)` discretised as
    /// `beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999)`.
    ///
    /// The ratio uses floating-point `i / T`; ports that wrote integer division got all-zero
    /// betas but the last (see the guide).
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for `steps = 0`.
    pub fn cosine(steps: usize) -> Result<Self> {
        Self::from_alpha_bar_fn(steps, 0.999, betas::cosine_alpha_bar)
    }

    /// diffusers' `sigmoid` schedule (GeoDiff): `beta = sigmoid(linspace(-6, 6, steps)) *
    /// (beta_end - beta_start) + beta_start`.
    ///
    /// # Errors
    /// As [`linear`](Self::linear).
    pub fn sigmoid(steps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        check_steps(steps)?;
        let b: Vec<f64> = betas::linspace(-6.0, 6.0, steps)
            .into_iter()
            .map(|x| 1.0 / (1.0 + (-x).exp()) * (beta_end - beta_start) + beta_start)
            .collect();
        Self::from_betas(&b)
    }

    /// diffusers' `laplace` schedule: `betas_for_alpha_bar` with the Laplace log-SNR
    /// `lambda(t) = -0.5 sign(0.5 - t) ln(1 - 2|0.5 - t| + 1e-6)`, `abar = sqrt(snr / (1 + snr))`.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for `steps = 0`.
    pub fn laplace(steps: usize) -> Result<Self> {
        Self::from_alpha_bar_fn(steps, 0.999, betas::laplace_alpha_bar)
    }

    /// diffusers' `exp` schedule: `betas_for_alpha_bar` with `abar(t) = exp(-12 t)`.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for `steps = 0`.
    pub fn exp(steps: usize) -> Result<Self> {
        Self::from_alpha_bar_fn(steps, 0.999, |t| (-12.0 * t).exp())
    }

    /// Discretises a continuous `abar(t)`, `t` in [0, 1], as diffusers' `betas_for_alpha_bar`:
    /// `beta_i = min(1 - abar((i + 1) / T) / abar(i / T), max_beta)`.
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let s = NoiseSchedule::from_alpha_bar_fn(100, 0.999, |t| 1.0 - t * 0.99)?;
    /// assert_eq!(s.len(), 100);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for `steps = 0` (or above [`MAX_STEPS`]),
    /// [`Error::InvalidParameter`] for `max_beta` outside (0, 1], [`Error::InvalidBeta`] if
    /// `abar` produces a beta outside (0, 1) or not a number.
    pub fn from_alpha_bar_fn(steps: usize, max_beta: f64, alpha_bar: impl Fn(f64) -> f64) -> Result<Self> {
        check_steps(steps)?;
        if !(max_beta > 0.0 && max_beta <= 1.0) {
            return Err(Error::InvalidParameter {
                name: "max_beta",
                value: max_beta,
                reason: "must be in (0, 1]",
            });
        }
        let n = steps as f64;
        let b: Vec<f64> = (0..steps)
            .map(|i| {
                let t1 = i as f64 / n;
                let t2 = (i + 1) as f64 / n;
                // Not `f64::min`, which would drop a NaN and hide a bad `alpha_bar`.
                let b = 1.0 - alpha_bar(t2) / alpha_bar(t1);
                if b > max_beta { max_beta } else { b }
            })
            .collect();
        Self::from_betas(&b)
    }

    /// A schedule from explicit betas (diffusers' `trained_betas`).
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for an empty slice; [`Error::InvalidBeta`] for a beta that is not
    /// finite or not in (0, 1) (the last may be exactly 1); [`Error::InvalidValue`] when a beta is
    /// so small that `1 - beta` rounds to 1, or the cumulative product underflows to 0 before the
    /// last step — either would make two levels identical.
    #[allow(
        clippy::float_cmp,
        reason = "only an exact 1 marks a pure-noise terminal level"
    )]
    pub fn from_betas(betas: &[f64]) -> Result<Self> {
        check_steps(betas.len())?;
        let last = betas.len() - 1;
        for (index, &value) in betas.iter().enumerate() {
            let ok = value.is_finite() && value > 0.0 && (value < 1.0 || (index == last && value == 1.0));
            if !ok {
                return Err(Error::InvalidBeta { index, value });
            }
        }
        let mut alphas_cumprod = Vec::with_capacity(betas.len());
        let mut acc = 1.0f64;
        for (index, &b) in betas.iter().enumerate() {
            let next = acc * (1.0 - b);
            let strictly_lower = next < acc;
            let positive = next > 0.0 || index == last;
            if !strictly_lower || !positive {
                return Err(Error::InvalidValue {
                    what: "alphas_cumprod",
                    index,
                    value: next,
                    reason: if strictly_lower {
                        "underflows to 0 before the last step"
                    } else {
                        "does not decrease (beta too small for f64)"
                    },
                });
            }
            acc = next;
            alphas_cumprod.push(acc);
        }
        let sigmas_ve = alphas_cumprod
            .iter()
            .map(|&a| {
                if a == 0.0 {
                    f64::INFINITY
                } else {
                    ((1.0 - a) / a).sqrt()
                }
            })
            .collect();
        Ok(NoiseSchedule {
            betas: betas.to_vec(),
            alphas_cumprod,
            sigmas_ve,
        })
    }

    /// Rescales the schedule to zero terminal SNR (Lin et al. 2023, *Common Diffusion Noise
    /// Schedules and Sample Steps are Flawed*, Algorithm 1): `sqrt(abar)` is shifted so that its
    /// last value is 0 and scaled so that its first value is unchanged; betas are re-derived.
    /// The last level becomes pure noise (`alpha = 0`); train such models with velocity
    /// prediction.
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let z = NoiseSchedule::linear(1000, 1e-4, 0.02)?.with_zero_terminal_snr()?;
    /// assert_eq!(z.alphas_cumprod()[999], 0.0);
    /// assert_eq!(z.betas()[999], 1.0);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a one-step schedule (the rescale divides by
    /// `sqrt(abar_0) - sqrt(abar_T)`, which is then 0).
    pub fn with_zero_terminal_snr(&self) -> Result<Self> {
        let n = self.len();
        if n < 2 {
            return Err(Error::InvalidParameter {
                name: "steps",
                value: n as f64,
                reason: "zero terminal SNR needs at least 2 training steps",
            });
        }
        let s: Vec<f64> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let (s0, st) = (s[0], s[n - 1]);
        let scale = s0 / (s0 - st);
        let abar: Vec<f64> = s
            .iter()
            .map(|&v| {
                let r = (v - st) * scale;
                r * r
            })
            .collect();
        let mut b = Vec::with_capacity(n);
        b.push(1.0 - abar[0]);
        for i in 1..n {
            b.push(1.0 - abar[i] / abar[i - 1]);
        }
        Self::from_betas(&b)
    }

    /// Divides every level's signal-to-noise ratio by `scale` (CogVideoX's `snr_shift_scale`,
    /// diffusers' `CogVideoXDDIMScheduler` / `CogVideoXDPMScheduler`):
    /// `abar' = abar / (scale + (1 - scale) abar)`, i.e. log-SNR moves by `-ln(scale)`; betas
    /// are re-derived. Apply it before [`with_zero_terminal_snr`](Self::with_zero_terminal_snr),
    /// as diffusers does.
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let shifted = s.with_snr_shift(3.0)?;
    /// let snr = |a: f64| a / (1.0 - a);
    /// let (a, b) = (s.alphas_cumprod()[500], shifted.alphas_cumprod()[500]);
    /// assert!((snr(a) / snr(b) - 3.0).abs() < 1e-9);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a `scale` that is not finite and positive.
    pub fn with_snr_shift(&self, scale: f64) -> Result<Self> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::InvalidParameter {
                name: "snr_shift_scale",
                value: scale,
                reason: "must be finite and positive",
            });
        }
        let abar: Vec<f64> = self
            .alphas_cumprod
            .iter()
            .map(|&a| a / (scale + (1.0 - scale) * a))
            .collect();
        let mut b = Vec::with_capacity(abar.len());
        b.push(1.0 - abar[0]);
        for i in 1..abar.len() {
            b.push(1.0 - abar[i] / abar[i - 1]);
        }
        Self::from_betas(&b)
    }

    /// Number of training timesteps `T`.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always `false`: a schedule has at least one step.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The betas `beta_t`.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `alpha_t = 1 - beta_t` for each timestep (a new vector).
    pub fn alphas(&self) -> Vec<f64> {
        self.betas.iter().map(|b| 1.0 - b).collect()
    }

    /// The cumulative products `abar_t = prod_{i <= t} (1 - beta_i)`.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The k-diffusion sigmas `sqrt((1 - abar_t) / abar_t)`, increasing in `t`; `inf` at a
    /// terminal level with `abar = 0`.
    pub fn sigmas_ve(&self) -> &[f64] {
        &self.sigmas_ve
    }

    /// The log signal-to-noise ratio `ln(abar_t / (1 - abar_t))` of each timestep.
    pub fn log_snrs(&self) -> Vec<f64> {
        (0..self.len()).map(|t| self.level_of(t).log_snr()).collect()
    }
}

/// Training step counts are bounded by [`MAX_STEPS`]: a mistyped count (`usize::MAX`, a config's
/// `num_train_timesteps: 1000000000000`) is an error, not an allocation failure that aborts.
/// Sampling step counts (schedulers, sigma tables) use the same bound.
pub(crate) fn check_steps(steps: usize) -> Result<()> {
    if steps == 0 || steps > MAX_STEPS {
        Err(Error::InvalidSteps {
            steps,
            max: MAX_STEPS,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn cosine_is_not_integer_division() {
        // The bug copied by several Rust ports: `i / T` in integer arithmetic is 0, so every beta
        // but the last is 0.
        let s = NoiseSchedule::cosine(1000).unwrap();
        assert!(s.betas()[0] > 1e-5 && s.betas()[500] > 1e-3);
        assert_relative_eq!(s.betas()[999], 0.999, max_relative = 1e-12);
        // abar(t) follows the continuous cosine closely away from the cap.
        let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
        assert_relative_eq!(s.alphas_cumprod()[499], f(0.5) / f(0.0), max_relative = 1e-9);
    }

    #[test]
    fn rejects_bad_betas() {
        assert!(matches!(
            NoiseSchedule::from_betas(&[]),
            Err(Error::InvalidSteps { .. })
        ));
        assert!(matches!(
            NoiseSchedule::from_betas(&[0.1, 1.0, 0.2]),
            Err(Error::InvalidBeta { index: 1, .. })
        ));
        assert!(matches!(
            NoiseSchedule::from_betas(&[0.1, f64::NAN]),
            Err(Error::InvalidBeta { index: 1, .. })
        ));
        assert!(matches!(
            NoiseSchedule::from_betas(&[0.0, 0.1]),
            Err(Error::InvalidBeta { index: 0, .. })
        ));
        assert!(matches!(
            NoiseSchedule::from_betas(&[1e-20, 0.1]),
            Err(Error::InvalidValue { index: 0, .. })
        ));
        assert!(NoiseSchedule::from_betas(&[0.1, 1.0]).is_ok());
        assert!(NoiseSchedule::linear(0, 1e-4, 0.02).is_err());
        assert!(NoiseSchedule::linear(10, -1e-4, 0.02).is_err());
        assert!(NoiseSchedule::scaled_linear(10, -1.0, 0.02).is_err());
        assert!(NoiseSchedule::from_alpha_bar_fn(10, 1.5, |t| 1.0 - t).is_err());
    }

    #[test]
    fn zero_terminal_snr_keeps_first_level() {
        let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        let z = s.with_zero_terminal_snr().unwrap();
        assert_relative_eq!(z.alphas_cumprod()[0], s.alphas_cumprod()[0], max_relative = 1e-12);
        assert_eq!(z.alphas_cumprod()[999], 0.0);
        assert!(z.sigmas_ve()[999].is_infinite());
        assert!(
            NoiseSchedule::linear(1, 1e-4, 0.02)
                .unwrap()
                .with_zero_terminal_snr()
                .is_err()
        );
        // Fractional levels next to the terminal one stay finite and ordered.
        let l = z.level(998.5);
        assert!(l.alpha > 0.0 && l.alpha < z.level(998.0).alpha);
        assert_eq!(z.sigma_to_t(f64::INFINITY).unwrap(), 999.0);
    }

    /// Regression: step counts had no bound (`linear(usize::MAX, ..)` overflowed a capacity).
    #[test]
    fn training_step_counts_are_bounded() {
        for n in [usize::MAX, MAX_STEPS + 1] {
            assert!(matches!(
                NoiseSchedule::linear(n, 1e-4, 0.02),
                Err(Error::InvalidSteps { max: MAX_STEPS, .. })
            ));
            assert!(NoiseSchedule::cosine(n).is_err());
            assert!(NoiseSchedule::scaled_linear(n, 1e-4, 0.02).is_err());
        }
    }

    /// Regression: `from_alpha_bar_fn` with a NaN `abar` gave `Ok` with every beta at the cap
    /// (`f64::min` drops NaN).
    #[test]
    fn nan_alpha_bar_is_an_invalid_beta() {
        let r = NoiseSchedule::from_alpha_bar_fn(1000, 0.5, |_| f64::NAN);
        assert!(matches!(r, Err(Error::InvalidBeta { index: 0, .. })), "{r:?}");
    }
}
