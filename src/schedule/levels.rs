//! Queries of a [`NoiseSchedule`]: the level of a timestep (exact or interpolated), the
//! timestep of a sigma, and the DDPM posterior.

use super::NoiseSchedule;
use crate::error::{Error, Result};
use crate::level::NoiseLevel;

impl NoiseSchedule {
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

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

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
