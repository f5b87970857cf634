//! Step coefficients shared by several samplers, in `(alpha, sigma)` form.

use crate::grid::ScheduleFamily;
use crate::level::NoiseLevel;

/// How an ancestral step splits the next level's noise `sigma'` into the part carried over from
/// the current noise estimate (`ce`) and fresh noise (`std`, with `ce^2 + std^2 = sigma'^2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AncestralSplit {
    /// k-diffusion's split on VP and VE grids, ComfyUI's flow ("RF") split on flow grids —
    /// what ComfyUI runs for the ancestral samplers it switches on flow models.
    #[default]
    Auto,
    /// k-diffusion's `get_ancestral_step` in the level's own `(alpha, sigma)`: `std = min(eta
    /// sigma' sqrt(1 - r^2), sigma')`, `r = (sigma'/alpha') / (sigma/alpha)` — the DDPM
    /// posterior at `eta = 1` for any schedule family.
    KDiffusion,
    /// ComfyUI's rectified-flow split (`sample_euler_ancestral_RF` and friends), in flow
    /// sigmas `s = sigma / (alpha + sigma)`: down to `s_d = s' (1 + (s'/s - 1) eta)`, then
    /// rescaled by `alpha' / alpha_d` and renoised to `s'`.
    RectifiedFlow,
    /// k-diffusion's formula applied to the grid's sigma-space coordinates `tau` as if they were
    /// variance-exploding sigmas (ComfyUI's `ddpm` and `res_multistep_ancestral` on flow models);
    /// the same as `KDiffusion` on VP and VE grids. On flow grids it is not the posterior of
    /// the flow (its marginals are off), but it is what ComfyUI computes.
    SigmaSpace,
}

/// The ancestral split `(std, ce)` of a step from `from` to `to`: `x' = alpha' x0 + ce eps + std
/// z` (see [`AncestralSplit`]; `SigmaSpace` is not of this form on flow grids, see
/// [`sigma_space_ancestral`], and gives k-diffusion's split here).
pub(crate) fn ancestral_split(
    from: &NoiseLevel,
    to: &NoiseLevel,
    eta: f64,
    split: AncestralSplit,
    family: ScheduleFamily,
) -> (f64, f64) {
    match (split, family) {
        (AncestralSplit::Auto, ScheduleFamily::Flow) | (AncestralSplit::RectifiedFlow, _) => {
            rf_split(from, to, eta)
        }
        _ => ancestral(from, to, eta),
    }
}

/// The `SigmaSpace` ancestral step as `(kx, kd, kz)` with `x' = kx x + kd x0 + kz z`:
/// k-diffusion's step `y' = x0 + down (y - x0) / tau + up z` in the sigma-space coordinates,
/// `x' = c' y'`.
pub(crate) fn sigma_space_ancestral(
    from: &NoiseLevel,
    to: &NoiseLevel,
    eta: f64,
    family: ScheduleFamily,
) -> (f64, f64, f64) {
    let c = Coords::of(family);
    let (tau, ct) = (c.tau(from), c.c(to));
    let (down, up) = get_ancestral_step(tau, c.tau(to), eta);
    if !tau.is_finite() {
        return (0.0, ct, ct * up);
    }
    (ct * down / from.sigma, ct * (1.0 - down / tau), ct * up)
}

/// k-diffusion's `get_ancestral_step(sigma_from, sigma_to, eta)`: `(sigma_down, sigma_up)`.
pub(crate) fn get_ancestral_step(from: f64, to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (to, 0.0);
    }
    let up = if from.is_finite() {
        (eta * (to * to * (from * from - to * to) / (from * from))
            .max(0.0)
            .sqrt())
        .min(to)
    } else {
        (eta * to).min(to)
    };
    (((to * to - up * up).max(0.0)).sqrt(), up)
}

/// ComfyUI's rectified-flow ancestral split in flow sigmas `s = sigma / (alpha + sigma)`.
fn rf_split(from: &NoiseLevel, to: &NoiseLevel, eta: f64) -> (f64, f64) {
    if to.sigma == 0.0 || eta == 0.0 {
        return (0.0, to.sigma);
    }
    let flow = |l: &NoiseLevel| l.sigma / (l.alpha + l.sigma);
    let (s, sn) = (flow(from), flow(to));
    let down = (sn * (1.0 + (sn / s - 1.0) * eta)).clamp(0.0, sn);
    // ce / alpha' is the k-diffusion sigma of the flow level s_d.
    let ce = (to.alpha * down / (1.0 - down)).min(to.sigma);
    ((to.sigma * to.sigma - ce * ce).max(0.0).sqrt(), ce)
}

/// The level a sigma-space method computes its coefficients on for `l`, and the scale `k` with
/// `x = k x_virtual`: for flow grids the variance-exploding level `(t, 1, tau)` of the
/// sigma-space coordinates and `k = c` (ComfyUI's VE formulas on flow sigmas); for VP and VE
/// grids, where those formulas coincide with the level's own, `l` itself and 1.
pub(crate) fn sigma_space(l: &NoiseLevel, family: ScheduleFamily) -> (NoiseLevel, f64) {
    if family != ScheduleFamily::Flow {
        return (*l, 1.0);
    }
    let c = Coords::of(family);
    (NoiseLevel::new(l.t, 1.0, c.tau(l)), c.c(l))
}

/// Rescales sigma-space coefficients (computed on [`sigma_space`] levels, from scale `k_from`
/// to `k_to`) to the model's scaling.
pub(crate) fn rescale(k: &mut crate::sampler::core::kernel::Lin, k_from: f64, k_to: f64) {
    k.x *= k_to / k_from;
    k.d *= k_to;
    for h in &mut k.h {
        *h *= k_to;
    }
    k.z *= k_to;
}

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
