//! Step coefficients shared by several samplers, in `(alpha, sigma)` form.

use ndarray::{Array, Dimension, Zip};

use super::{Walk, fill_noise};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

/// The ancestral split of a step from `from` to `to` with noise weight `eta`:
/// `x' = alpha' x0 + ce eps + std z`, with `std = min(sigma', eta sigma' sqrt(1 - r^2))`,
/// `r = (sigma'/alpha') / (sigma/alpha)`, `ce = sqrt(sigma'^2 - std^2)`.
///
/// `std^2` at `eta = 1` is the posterior variance of `q(x' | x, x0)` for any schedule family;
/// for VP schedules it equals DDIM's `(1 - abar') / (1 - abar) (1 - abar / abar')`, and `std /
/// alpha'`, `ce / alpha'` are k-diffusion's `sigma_up`, `sigma_down`. `eta = 0` is the
/// deterministic DDIM / Euler step (`ce = sigma'`).
pub(crate) fn ancestral(from: &NoiseLevel, to: &NoiseLevel, eta: f64) -> (f64, f64) {
    if to.sigma == 0.0 || eta == 0.0 {
        return (0.0, to.sigma);
    }
    let r = (to.sigma * from.alpha) / (to.alpha * from.sigma);
    let std = (eta * to.sigma * (1.0 - r * r).max(0.0).sqrt()).min(to.sigma);
    (std, (to.sigma * to.sigma - std * std).max(0.0).sqrt())
}

/// EDM stochastic churn (Karras et al. 2022, Algorithm 2): before a step at noise level
/// `sigma/alpha = s` in `[s_tmin, s_tmax]`, raise it to `s (1 + gamma)`, `gamma = min(s_churn /
/// N, sqrt(2) - 1)`, by adding fresh noise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Churn {
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

    /// Perturbs `x` (at the walk's current step level) and returns the level it is then at:
    /// `x <- (alpha_hat / alpha) x + alpha_hat sqrt(s_hat^2 - s^2) s_noise z`. Without churn,
    /// returns the step's level untouched (no noise drawn).
    pub(crate) fn apply<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: &mut Array<F, D>,
        walk: &Walk,
        z: &mut Option<Array<F, D>>,
        noise: &mut N,
    ) -> Result<NoiseLevel> {
        let level = walk.from();
        let gamma = self.gamma(&level, walk.grid_steps());
        if gamma <= 0.0 {
            return Ok(level);
        }
        let s = level.sigma_ve();
        let s_hat = s * (1.0 + gamma);
        let hat = walk.level_at_sigma_ve(s_hat);
        let kx = F::cast(hat.alpha / level.alpha);
        let kz = F::cast(hat.alpha * (s_hat * s_hat - s * s).sqrt() * self.s_noise);
        let z = fill_noise(z, x, walk.step(), noise);
        let ok = fold_finite!(Zip::from(x).and(z), |x, &z| {
            *x = kx * *x + kz * z;
            *x
        });
        if ok {
            Ok(hat)
        } else {
            Err(Error::NonFinite {
                step: walk.step(),
                level,
                what: if z.iter().all(|v| v.is_finite()) {
                    "sample"
                } else {
                    "noise"
                },
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    #[test]
    fn ancestral_matches_ddim_variance_for_vp() {
        let from = NoiseLevel::from_alpha_bar(800.0, 0.05);
        let to = NoiseLevel::from_alpha_bar(700.0, 0.12);
        let (std, ce) = ancestral(&from, &to, 1.0);
        let (a, ap) = (0.05, 0.12);
        let ddim_var = (1.0 - ap) / (1.0 - a) * (1.0 - a / ap);
        assert!((std * std - ddim_var).abs() < 1e-15);
        assert!((ce * ce + std * std - (1.0 - ap)).abs() < 1e-15);
        // k-diffusion: sigma_up = std / alpha', sigma_down = ce / alpha'.
        let (sf, st) = (from.sigma_ve(), to.sigma_ve());
        let up = (st * st * (sf * sf - st * st) / (sf * sf)).sqrt();
        assert!((std / to.alpha - up).abs() < 1e-12);
        assert!((ce / to.alpha - (st * st - up * up).sqrt()).abs() < 1e-12);
        assert_eq!(ancestral(&from, &NoiseLevel::CLEAN, 1.0), (0.0, 0.0));
        assert_eq!(ancestral(&from, &to, 0.0), (0.0, to.sigma));
        // eta > 1 is capped at sigma' (k-diffusion's min(sigma_to, ...)).
        assert!(ancestral(&from, &to, 100.0).0 <= to.sigma);
    }

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
}

/// The ODE coordinates sigma-space samplers integrate in: `y = x / c`, `tau = sigma / c` with
/// `c = alpha + kappa sigma` (see [`ScheduleFamily::kappa`](crate::ScheduleFamily::kappa)). Then
/// `dy/dtau = eps - kappa x0 =: g`, written `g = x / sigma - (alpha / sigma + kappa) x0` at the
/// point where `x0` was estimated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Coords {
    pub kappa: f64,
}

impl Coords {
    pub(crate) fn c(&self, l: &NoiseLevel) -> f64 {
        l.alpha + self.kappa * l.sigma
    }

    /// `tau` of a level (`inf` where `c = 0`: the pure-noise level in VE coordinates).
    pub(crate) fn tau(&self, l: &NoiseLevel) -> f64 {
        let c = self.c(l);
        if c == 0.0 { f64::INFINITY } else { l.sigma / c }
    }

    /// The k-diffusion sigma of the level with coordinate `tau`.
    pub(crate) fn sigma_ve_of_tau(&self, tau: f64) -> f64 {
        tau / (1.0 - self.kappa * tau)
    }

    /// Coefficients `(on x, on x0)` of `g` at level `l`.
    pub(crate) fn g(&self, l: &NoiseLevel) -> (f64, f64) {
        (1.0 / l.sigma, -(l.alpha / l.sigma + self.kappa))
    }

    /// `true` if a step from `l` cannot be taken in these coordinates (`c = 0`); samplers then
    /// take a first-order (DDIM) step.
    pub(crate) fn degenerate(&self, l: &NoiseLevel) -> bool {
        self.c(l) == 0.0
    }
}
