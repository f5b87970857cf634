//! [`NoiseLevel`]: one point `(t, alpha, sigma)` of a noise schedule (a leaf module).

use std::fmt;

use crate::text::Num;

/// One noise level: `x_t = alpha * x_0 + sigma * eps`, with `t` the model's own timestep input.
///
/// * `t` is what the model is conditioned on (fractional values are allowed),
/// * `alpha` scales the signal, `sigma` the noise. For a variance-preserving (VP) schedule
///   `alpha = sqrt(abar_t)` and `sigma = sqrt(1 - abar_t)`.
///
/// Derived quantities: the k-diffusion / EDM sigma [`sigma_ve`](Self::sigma_ve) `= sigma /
/// alpha`, the [`log_snr`](Self::log_snr) `= 2 ln(alpha / sigma)` and [`lambda`](Self::lambda)
/// `= ln(alpha / sigma)` of DPM-Solver.
///
/// The clean level (`alpha = 1, sigma = 0`) has `sigma_ve = 0` and `log_snr = +inf`; the
/// terminal level of a zero-terminal-SNR schedule (`alpha = 0, sigma = 1`) has `sigma_ve = +inf`
/// and `log_snr = -inf`. Every sampler copes with both.
///
/// ```
/// use diffusion_samplers::NoiseLevel;
/// let l = NoiseLevel::from_alpha_bar(10.0, 0.64);
/// assert!((l.alpha - 0.8).abs() < 1e-15 && (l.sigma - 0.6).abs() < 1e-15);
/// assert!((l.sigma_ve() - 0.75).abs() < 1e-15);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseLevel {
    /// The model's timestep input.
    pub t: f64,
    /// Signal scale.
    pub alpha: f64,
    /// Noise scale.
    pub sigma: f64,
}

impl NoiseLevel {
    /// The clean level `alpha = 1, sigma = 0` (at `t = 0`; the model is never evaluated there).
    pub const CLEAN: NoiseLevel = NoiseLevel {
        t: 0.0,
        alpha: 1.0,
        sigma: 0.0,
    };

    /// A level from its three parts.
    pub fn new(t: f64, alpha: f64, sigma: f64) -> Self {
        NoiseLevel { t, alpha, sigma }
    }

    /// A variance-preserving level from the cumulative product `abar = alpha^2`.
    pub fn from_alpha_bar(t: f64, alpha_bar: f64) -> Self {
        NoiseLevel {
            t,
            alpha: alpha_bar.sqrt(),
            sigma: (1.0 - alpha_bar).sqrt(),
        }
    }

    /// A variance-preserving level from the k-diffusion sigma `s = sigma / alpha`
    /// (`alpha = 1 / sqrt(1 + s^2)`); `s = +inf` gives the terminal level `alpha = 0, sigma = 1`.
    pub fn from_sigma_ve(t: f64, sigma_ve: f64) -> Self {
        if sigma_ve.is_infinite() && sigma_ve > 0.0 {
            return NoiseLevel {
                t,
                alpha: 0.0,
                sigma: 1.0,
            };
        }
        let n = 1.0f64.hypot(sigma_ve);
        NoiseLevel {
            t,
            alpha: 1.0 / n,
            sigma: sigma_ve / n,
        }
    }

    /// `alpha^2`: the cumulative product of `1 - beta` for a VP schedule.
    pub fn alpha_bar(&self) -> f64 {
        self.alpha * self.alpha
    }

    /// The k-diffusion / EDM sigma, `sigma / alpha` (`+inf` when `alpha = 0`).
    pub fn sigma_ve(&self) -> f64 {
        if self.alpha == 0.0 {
            f64::INFINITY
        } else {
            self.sigma / self.alpha
        }
    }

    /// DPM-Solver's `lambda = ln(alpha / sigma)` (half the log-SNR).
    pub fn lambda(&self) -> f64 {
        self.alpha.ln() - self.sigma.ln()
    }

    /// The log signal-to-noise ratio `2 ln(alpha / sigma)`.
    pub fn log_snr(&self) -> f64 {
        2.0 * self.lambda()
    }

    /// The signal-to-noise ratio `alpha^2 / sigma^2`.
    pub fn snr(&self) -> f64 {
        (self.alpha * self.alpha) / (self.sigma * self.sigma)
    }

    /// `true` for a level without noise (`sigma = 0`).
    pub fn is_clean(&self) -> bool {
        self.sigma == 0.0
    }

    /// `true` when every part is finite, `alpha >= 0`, `sigma >= 0`, and not both are zero.
    pub fn is_valid(&self) -> bool {
        self.t.is_finite()
            && self.alpha.is_finite()
            && self.sigma.is_finite()
            && self.alpha >= 0.0
            && self.sigma >= 0.0
            && (self.alpha > 0.0 || self.sigma > 0.0)
    }
}

impl fmt::Display for NoiseLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t = {}, alpha = {:.6e}, sigma = {:.6e}, sigma/alpha = {:.6e}",
            Num(self.t),
            self.alpha,
            self.sigma,
            self.sigma_ve()
        )
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn vp_conversions_round_trip() {
        for &abar in &[1e-8, 0.01, 0.5, 0.999] {
            let a = NoiseLevel::from_alpha_bar(3.0, abar);
            let b = NoiseLevel::from_sigma_ve(3.0, a.sigma_ve());
            assert_relative_eq!(a.alpha, b.alpha, max_relative = 1e-12);
            assert_relative_eq!(a.sigma, b.sigma, max_relative = 1e-12);
            assert_relative_eq!(a.snr(), abar / (1.0 - abar), max_relative = 1e-12);
            assert_relative_eq!(a.log_snr(), a.snr().ln(), max_relative = 1e-12);
        }
    }

    #[test]
    fn terminal_and_clean_levels() {
        let term = NoiseLevel::from_sigma_ve(999.0, f64::INFINITY);
        assert_eq!((term.alpha, term.sigma), (0.0, 1.0));
        assert!(term.sigma_ve().is_infinite());
        assert_eq!(term.log_snr(), f64::NEG_INFINITY);
        assert!(term.is_valid());
        assert!(NoiseLevel::CLEAN.is_clean());
        assert_eq!(NoiseLevel::CLEAN.sigma_ve(), 0.0);
        assert_eq!(NoiseLevel::CLEAN.log_snr(), f64::INFINITY);
        assert!(!NoiseLevel::new(0.0, 0.0, 0.0).is_valid());
        assert!(!NoiseLevel::new(f64::NAN, 1.0, 0.0).is_valid());
    }

    #[test]
    fn display_names_all_parts() {
        let s = NoiseLevel::from_alpha_bar(7.0, 0.25).to_string();
        assert!(s.contains("t = 7") && s.contains("alpha") && s.contains("sigma/alpha"));
    }
}
