//! Discrete training schedules: betas, cumulative products and the noise levels they define.
//!
//! A [`NoiseSchedule`] is the path of [`NoiseLevel`]s a model was trained on, computed in `f64`.
//! Beta schedules match diffusers' formulas (`linear`, `scaled_linear`, `squaredcos_cap_v2`,
//! `sigmoid`, `laplace`, `exp`), and [`NoiseSchedule::with_zero_terminal_snr`] is Algorithm 1 of
//! Lin et al. 2023.

mod betas;
mod flow;

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

    /// The level of integer timestep `t` (exact `abar_t`, no interpolation).
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// assert_eq!(s.level_at(999)?, s.level(999.0));
    /// assert!(s.level_at(1000).is_err());
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t >= self.len()`; use [`level`](Self::level) for a
    /// clamped, fractional lookup.
    pub fn level_at(&self, t: usize) -> Result<NoiseLevel> {
        self.check_t(t)?;
        Ok(self.level_of(t))
    }

    /// The level of a timestep known to be in range.
    pub(crate) fn level_of(&self, t: usize) -> NoiseLevel {
        NoiseLevel::from_alpha_bar(t as f64, self.alphas_cumprod[t])
    }

    fn check_t(&self, t: usize) -> Result<()> {
        if t < self.len() {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "t",
                value: t as f64,
                reason: "a timestep must be below the number of training timesteps T",
            })
        }
    }

    /// The level at timestep `t`, fractional values allowed.
    ///
    /// At integer `t` this is `abar_t` exactly. Between integers the k-diffusion sigma is
    /// interpolated linearly, as diffusers' `np.interp(t, arange(T), sigmas)`; next to a terminal
    /// level (`sigma/alpha = inf`) `alpha` is interpolated instead. `t` outside `[0, T - 1]` is
    /// clamped, as `np.interp` does — the returned level's `t` too, so a model is never fed a
    /// timestep it was not trained on; a NaN `t` gives a NaN level (grids reject it).
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// assert_eq!(s.level(5000.0), s.level(999.0));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    pub fn level(&self, t: f64) -> NoiseLevel {
        if t.is_nan() {
            return NoiseLevel::new(t, f64::NAN, f64::NAN);
        }
        let tmax = (self.len() - 1) as f64;
        let tc = t.clamp(0.0, tmax);
        let i = tc.floor() as usize;
        let frac = tc - i as f64;
        if frac == 0.0 {
            return NoiseLevel::from_alpha_bar(tc, self.alphas_cumprod[i]);
        }
        let (s0, s1) = (self.sigmas_ve[i], self.sigmas_ve[i + 1]);
        if s1.is_finite() {
            NoiseLevel::from_sigma_ve(tc, (1.0 - frac) * s0 + frac * s1)
        } else {
            let a = (1.0 - frac) * self.alphas_cumprod[i].sqrt() + frac * self.alphas_cumprod[i + 1].sqrt();
            NoiseLevel::from_alpha_bar(tc, a * a)
        }
    }

    /// The level with k-diffusion sigma `sigma_ve`, its `t` found as diffusers' `_sigma_to_t`
    /// does: linear interpolation of `ln sigma` between neighbouring training timesteps,
    /// clamped to `[0, T - 1]`.
    ///
    /// # Errors
    /// As [`sigma_to_t`](Self::sigma_to_t).
    pub fn level_from_sigma_ve(&self, sigma_ve: f64) -> Result<NoiseLevel> {
        Ok(NoiseLevel::from_sigma_ve(self.sigma_to_t(sigma_ve)?, sigma_ve))
    }

    /// [`level_from_sigma_ve`](Self::level_from_sigma_ve) for a sigma known to be valid.
    pub(crate) fn level_of_sigma_ve(&self, sigma_ve: f64) -> NoiseLevel {
        NoiseLevel::from_sigma_ve(self.t_of_sigma_ve(sigma_ve), sigma_ve)
    }

    /// diffusers' `_sigma_to_t`: the fractional timestep whose interpolated log-sigma equals
    /// `ln(sigma_ve)` (sigmas below the first training sigma give 0, above the last `T - 1`).
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// assert!((s.sigma_to_t(s.sigmas_ve()[500])? - 500.0).abs() < 1e-9);
    /// assert!(s.sigma_to_t(f64::NAN).is_err());
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a NaN or negative sigma.
    pub fn sigma_to_t(&self, sigma_ve: f64) -> Result<f64> {
        if sigma_ve.is_nan() || sigma_ve < 0.0 {
            return Err(Error::InvalidParameter {
                name: "sigma",
                value: sigma_ve,
                reason: "a k-diffusion sigma must be a non-negative number",
            });
        }
        Ok(self.t_of_sigma_ve(sigma_ve))
    }

    fn t_of_sigma_ve(&self, sigma_ve: f64) -> f64 {
        let n = self.len();
        if n == 1 {
            return 0.0;
        }
        let ls = sigma_ve.max(1e-10).ln();
        // Index of the last training log-sigma <= ls, clipped to n - 2.
        let k = self.sigmas_ve.partition_point(|&s| s.ln() <= ls);
        let low = k.saturating_sub(1).min(n - 2);
        let (lo, hi) = (self.sigmas_ve[low].ln(), self.sigmas_ve[low + 1].ln());
        let w = if hi.is_infinite() {
            0.0
        } else {
            ((lo - ls) / (lo - hi)).clamp(0.0, 1.0)
        };
        if hi.is_infinite() && ls.is_infinite() {
            return (n - 1) as f64;
        }
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// Variance of the DDPM posterior `q(x_{t-1} | x_t, x_0)`:
    /// `beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t`, with `abar_{-1} = 1` (so 0 at `t = 0`).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t >= self.len()`.
    pub fn posterior_variance(&self, t: usize) -> Result<f64> {
        self.check_t(t)?;
        let prev = if t == 0 { 1.0 } else { self.alphas_cumprod[t - 1] };
        Ok((1.0 - prev) / (1.0 - self.alphas_cumprod[t]) * self.betas[t])
    }

    /// Coefficients `(c_x0, c_xt)` of the DDPM posterior mean `c_x0 x_0 + c_xt x_t` of
    /// `q(x_{t-1} | x_t, x_0)` (Ho et al. 2020, eq. 7).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] if `t >= self.len()`.
    pub fn posterior_mean_coefs(&self, t: usize) -> Result<(f64, f64)> {
        self.check_t(t)?;
        let prev = if t == 0 { 1.0 } else { self.alphas_cumprod[t - 1] };
        let abar = self.alphas_cumprod[t];
        let beta = self.betas[t];
        Ok((
            beta * prev.sqrt() / (1.0 - abar),
            (1.0 - prev) * (1.0 - beta).sqrt() / (1.0 - abar),
        ))
    }
}

/// Training step counts are bounded by [`MAX_STEPS`]: a mistyped count (`usize::MAX`, a config's
/// `num_train_timesteps: 1000000000000`) is an error, not an allocation failure that aborts.
fn check_steps(steps: usize) -> Result<()> {
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

    #[test]
    fn fractional_level_interpolates_sigma() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let l = s.level(10.25);
        let want = 0.75 * s.sigmas_ve()[10] + 0.25 * s.sigmas_ve()[11];
        assert_relative_eq!(l.sigma_ve(), want, max_relative = 1e-12);
        assert_eq!(s.level(-3.0).alpha, s.level(0.0).alpha);
        assert_eq!(s.level(5000.0).alpha, s.level(999.0).alpha);
        // Regression: the clamped level kept t = 5000, which a model would be fed.
        assert_eq!(s.level(5000.0), s.level(999.0));
        assert_eq!(s.level(-3.0).t, 0.0);
    }

    #[test]
    fn sigma_to_t_inverts_log_interpolation() {
        let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        for &t in &[0.0, 1.0, 17.0, 500.0, 998.0, 999.0] {
            assert_relative_eq!(
                s.sigma_to_t(s.sigmas_ve()[t as usize]).unwrap(),
                t,
                epsilon = 1e-9
            );
        }
        let mid = ((s.sigmas_ve()[3].ln() + s.sigmas_ve()[4].ln()) / 2.0).exp();
        assert_relative_eq!(s.sigma_to_t(mid).unwrap(), 3.5, epsilon = 1e-9);
        assert_eq!(s.sigma_to_t(1e-9).unwrap(), 0.0);
        assert_eq!(s.sigma_to_t(1e9).unwrap(), 999.0);
    }

    /// Regression: `level_at`, `posterior_variance` and `posterior_mean_coefs` panicked for
    /// `t >= T` (documented under `# Panics`); `sigma_to_t(NaN)` returned 0.
    #[test]
    fn out_of_range_timesteps_are_errors() {
        let s = NoiseSchedule::linear(10, 1e-4, 0.02).unwrap();
        assert!(matches!(
            s.level_at(10),
            Err(Error::InvalidParameter { name: "t", .. })
        ));
        assert!(s.posterior_variance(10).is_err());
        assert!(s.posterior_mean_coefs(usize::MAX).is_err());
        assert!(s.sigma_to_t(f64::NAN).is_err());
        assert!(s.sigma_to_t(-1.0).is_err());
        assert!(s.level_from_sigma_ve(f64::NAN).is_err());
        assert_eq!(s.sigma_to_t(0.0).unwrap(), 0.0);
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

    #[test]
    fn posterior_matches_ddpm_formulas() {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        assert_eq!(s.posterior_variance(0).unwrap(), 0.0);
        let t = 400;
        let (a, ap, b) = (s.alphas_cumprod()[t], s.alphas_cumprod()[t - 1], s.betas()[t]);
        assert_relative_eq!(
            s.posterior_variance(t).unwrap(),
            (1.0 - ap) / (1.0 - a) * b,
            max_relative = 1e-14
        );
        let (c0, ct) = s.posterior_mean_coefs(t).unwrap();
        assert_relative_eq!(c0, b * ap.sqrt() / (1.0 - a), max_relative = 1e-14);
        assert_relative_eq!(
            ct,
            (1.0 - ap) * (1.0 - b).sqrt() / (1.0 - a),
            max_relative = 1e-14
        );
    }
}
