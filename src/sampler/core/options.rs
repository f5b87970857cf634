//! Options many samplers share — EDM churn, the ancestral noise weight and its multiplier —
//! with their checks, and the builder methods for them, written once (the macros below expand
//! into each sampler's inherent builders).

use crate::error::{Error, Result};
use crate::level::NoiseLevel;

/// EDM stochastic churn (Karras et al. 2022, Algorithm 2): before a step at noise level
/// `sigma/alpha = s` in `[s_tmin, s_tmax]`, raise it to `s (1 + gamma)`, `gamma = min(s_churn /
/// N, sqrt(2) - 1)`, by adding fresh noise.
#[derive(Clone, Copy, Debug, PartialEq)]
#[doc(hidden)]
pub struct Churn {
    pub s_churn: f64,
    pub s_tmin: f64,
    pub s_tmax: f64,
    pub s_noise: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: 1.0,
        }
    }
}

impl Churn {
    pub(crate) fn validate(&self) -> Result<()> {
        let checks = [
            (
                "s_churn",
                self.s_churn,
                self.s_churn >= 0.0 && self.s_churn.is_finite(),
            ),
            ("s_tmin", self.s_tmin, self.s_tmin >= 0.0 && !self.s_tmin.is_nan()),
            ("s_tmax", self.s_tmax, self.s_tmax >= self.s_tmin),
            (
                "s_noise",
                self.s_noise,
                self.s_noise >= 0.0 && self.s_noise.is_finite(),
            ),
        ];
        for (name, value, ok) in checks {
            if !ok {
                return Err(Error::InvalidParameter {
                    name,
                    value,
                    reason: "churn needs s_churn >= 0, 0 <= s_tmin <= s_tmax, s_noise >= 0 (finite)",
                });
            }
        }
        Ok(())
    }

    /// `gamma` for a step starting at `level` on a grid of `n` steps.
    pub(crate) fn gamma(&self, level: &NoiseLevel, n: usize) -> f64 {
        let s = level.sigma_ve();
        if self.s_churn == 0.0 || level.alpha == 0.0 || !(self.s_tmin <= s && s <= self.s_tmax) {
            return 0.0;
        }
        (self.s_churn / n as f64).min(std::f64::consts::SQRT_2 - 1.0)
    }
}

/// The noise of stochastic samplers: `eta` (0 = deterministic, 1 = the posterior / ancestral
/// amount) and `s_noise`, a multiplier on the drawn noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stochastic {
    pub eta: f64,
    pub s_noise: f64,
}

impl Stochastic {
    /// `eta`, with `s_noise = 1`.
    pub(crate) const fn new(eta: f64) -> Self {
        Stochastic { eta, s_noise: 1.0 }
    }

    pub(crate) fn check(&self) -> Result<()> {
        for (name, value) in [("eta", self.eta), ("s_noise", self.s_noise)] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(Error::InvalidParameter {
                    name,
                    value,
                    reason: "must be finite and non-negative",
                });
            }
        }
        Ok(())
    }
}

/// `clip_sample` and `thresholding` builders over a field `policy: X0Policy`.
macro_rules! x0_builders {
    () => {
        /// Clamp the x0 estimate to `[-r, r]` (`Some(r)`), or not (`None`, the default of
        /// `new()`; diffusers' configs may turn it on).
        pub fn clip_sample(mut self, range: Option<f64>) -> Self {
            self.policy.clip = range;
            self
        }

        /// Dynamic thresholding of the x0 estimate (Imagen); takes priority over clipping.
        pub fn thresholding(mut self, t: Option<$crate::sampler::Thresholding>) -> Self {
            self.policy.threshold = t;
            self
        }
    };
}

/// EDM churn builders over a field `churn: Churn`.
macro_rules! churn_builders {
    () => {
        /// EDM's `S_churn`: the amount of stochasticity (0, the default, is deterministic).
        pub fn s_churn(mut self, v: f64) -> Self {
            self.churn.s_churn = v;
            self
        }

        /// Lowest k-diffusion sigma at which churn applies (default 0).
        pub fn s_tmin(mut self, v: f64) -> Self {
            self.churn.s_tmin = v;
            self
        }

        /// Highest k-diffusion sigma at which churn applies (default infinity).
        pub fn s_tmax(mut self, v: f64) -> Self {
            self.churn.s_tmax = v;
            self
        }

        /// EDM's `S_noise`: the churn noise is multiplied by it (default 1).
        pub fn s_noise(mut self, v: f64) -> Self {
            self.churn.s_noise = v;
            self
        }
    };
}

/// `eta` and `s_noise` builders over a field `noise: Stochastic`.
macro_rules! noise_builders {
    () => {
        /// The noise weight `eta` (0 = deterministic; 1 = the ancestral / posterior amount).
        pub fn eta(mut self, eta: f64) -> Self {
            self.noise.eta = eta;
            self
        }

        /// Multiplies the added noise (default 1).
        pub fn s_noise(mut self, v: f64) -> Self {
            self.noise.s_noise = v;
            self
        }
    };
}

/// Plain builder methods `name(self, v) -> Self` that set the field of the same name, each with
/// its doc comment.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.$name = v;
            self
        }
    )*};
}

pub(crate) use {churn_builders, noise_builders, setters, x0_builders};

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    #[test]
    fn churn_gamma() {
        let c = Churn {
            s_churn: 40.0,
            s_tmin: 0.05,
            s_tmax: 50.0,
            s_noise: 1.003,
        };
        let l = NoiseLevel::from_sigma_ve(0.0, 1.0);
        assert!((c.gamma(&l, 256) - 40.0 / 256.0).abs() < 1e-15);
        assert!((c.gamma(&l, 10) - (2f64.sqrt() - 1.0)).abs() < 1e-15);
        assert_eq!(c.gamma(&NoiseLevel::from_sigma_ve(0.0, 80.0), 10), 0.0);
        assert_eq!(Churn::default().gamma(&l, 10), 0.0);
        assert!(
            Churn {
                s_churn: -1.0,
                ..Churn::default()
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn stochastic_options_are_checked() {
        assert!(Stochastic::new(1.0).check().is_ok());
        assert!(Stochastic::new(-1.0).check().is_err());
        assert!(
            Stochastic {
                eta: 0.0,
                s_noise: f64::NAN
            }
            .check()
            .is_err()
        );
    }
}
