//! Step coefficients shared by several samplers, in `(alpha, sigma)` form.

use crate::grid::ScheduleFamily;
use crate::level::NoiseLevel;

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
    /// The coordinates of a grid family.
    pub(crate) fn of(family: ScheduleFamily) -> Self {
        Coords {
            kappa: family.kappa(),
        }
    }

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
