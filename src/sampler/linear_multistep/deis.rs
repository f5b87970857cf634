//! DEIS (Zhang & Chen 2023) with the log-rho polynomial extrapolation.

use ndarray::Dimension;

use super::lms::{adams, check_order};
use crate::error::Result;
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::Coords;
use crate::sampler::core::options::{setters, x0_builders};
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Outcome, Step};

/// `integral_a^b P_j(ln s) ds` for the Lagrange basis `P_j` over the nodes `ln t_k` (newest
/// first): DEIS's log-rho Adams coefficients, integrated exactly. With `v = ln s - ln t[0]`
/// the integrand is `t[0] Q_j(v) e^v`, whose antiderivative is `e^v R(v)` with `R + R' = Q`;
/// `b = 0` (the clean level, `v = -inf`) contributes 0.
pub(crate) fn log_lagrange_integrals(t: &[f64], a: f64, b: f64) -> [f64; 4] {
    let m = t.len();
    let mut out = [0.0; 4];
    let l0 = t[0].ln();
    let mut v = [0.0f64; 4];
    for (vi, x) in v.iter_mut().zip(t) {
        *vi = x.ln() - l0;
    }
    let (va, vb) = (a.ln() - l0, b.ln() - l0);
    for j in 0..m {
        let mut poly = [0.0f64; 4];
        poly[0] = 1.0;
        let mut deg = 0;
        let mut denom = 1.0;
        for k in 0..m {
            if k == j {
                continue;
            }
            for d in (0..=deg).rev() {
                poly[d + 1] += poly[d];
                poly[d] *= -v[k];
            }
            deg += 1;
            denom *= v[j] - v[k];
        }
        // R = Q - dQ + d2Q - d3Q (coefficients, lowest degree first).
        let mut r = [0.0f64; 4];
        let mut deriv = poly;
        let mut sign = 1.0;
        for _ in 0..=deg {
            for d in 0..=deg {
                r[d] += sign * deriv[d];
            }
            for d in 0..deg {
                deriv[d] = deriv[d + 1] * (d + 1) as f64;
            }
            deriv[deg] = 0.0;
            sign = -sign;
        }
        let at = |x: f64| {
            if x == f64::NEG_INFINITY {
                0.0
            } else {
                x.exp() * (0..=deg).rev().fold(0.0, |acc, d| acc * x + r[d])
            }
        };
        out[j] = t[0] * (at(vb) - at(va)) / denom;
    }
    out
}

/// DEIS[^deis] with the log-rho polynomial extrapolation, diffusers' `DEISMultistepScheduler`
/// (`algorithm_type = "deis"`, `solver_type = "logrho"`): a linear multistep method for the
/// noise prediction in k-diffusion's coordinates `y = x / alpha`, `rho = sigma / alpha`, whose
/// past noise estimates are interpolated by a polynomial in `ln rho`:
///
/// ```text
/// y' = y + sum_j c_j eps_j,   c_j = integral_rho^rho' prod_{k != j} (ln s - ln rho_k) / (ln rho_j - ln rho_k) ds
/// ```
///
/// integrated exactly (diffusers' closed forms for orders 2 and 3). Orders 1–3 (default 2);
/// order 1 is DDIM. diffusers' DEIS ends at the first training timestep, not the clean level:
/// build its grids with [`FinalLevel::FirstTimestep`](crate::FinalLevel::FirstTimestep).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Deis;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(12, Spacing::DpmLinspace)?.with_final(FinalLevel::FirstTimestep);
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = Deis::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for an order outside 1–3; during a run, the errors of
/// [`Sampler::sample`](crate::Sampler::sample).
///
/// [^deis]: Q. Zhang, Y. Chen, *Fast Sampling of Diffusion Models with Exponential Integrator*,
///     ICLR 2023, arXiv:2204.13902.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deis {
    order: usize,
    lower_order_final: bool,
    policy: X0Policy,
}

impl Default for Deis {
    fn default() -> Self {
        Deis {
            order: 2,
            lower_order_final: true,
            policy: X0Policy::default(),
        }
    }
}

impl Deis {
    /// DEIS-2 with diffusers' defaults.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The order, 1 to 3.
        order: usize,
        /// Lower orders on the last two steps of grids shorter than 15 steps (diffusers).
        lower_order_final: bool,
    }

    x0_builders!();
}

impl crate::sampler::Method for Deis {
    type Vars = ();

    fn check(&self) -> Result<()> {
        check_order(self.order, 3, "DEIS supports orders 1, 2 and 3")?;
        self.policy.validate()
    }

    fn history(&self) -> usize {
        self.order.saturating_sub(1)
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        // k-diffusion's coordinates `x / alpha`, `sigma / alpha` whatever the family.
        adams(
            s,
            &self.policy,
            self.order,
            (Coords { kappa: 0.0 }, true, self.lower_order_final),
        )
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    #[test]
    fn log_lagrange_matches_diffusers_closed_forms() {
        // diffusers' second-order DEIS: ind_fn(t, b, c) = t (-ln c + ln t - 1) / (ln b - ln c).
        let ind = |t: f64, b: f64, c: f64| t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln());
        let (rt, r0, r1) = (0.4, 1.3, 3.1);
        let c = log_lagrange_integrals(&[r0, r1], r0, rt);
        assert!((c[0] - (ind(rt, r0, r1) - ind(r0, r0, r1))).abs() < 1e-13);
        assert!((c[1] - (ind(rt, r1, r0) - ind(r0, r1, r0))).abs() < 1e-13);
        // Third order against diffusers' closed form.
        let ind3 = |t: f64, b: f64, c: f64, d: f64| {
            let (lt, lb, lc, ld) = (t.ln(), b.ln(), c.ln(), d.ln());
            t * (lc * (ld - lt + 1.0) - ld * lt + ld + lt * lt - 2.0 * lt + 2.0) / ((lb - lc) * (lb - ld))
        };
        let r2 = 7.0;
        let c = log_lagrange_integrals(&[r0, r1, r2], r0, rt);
        assert!((c[0] - (ind3(rt, r0, r1, r2) - ind3(r0, r0, r1, r2))).abs() < 1e-12);
        assert!((c[1] - (ind3(rt, r1, r2, r0) - ind3(r0, r1, r2, r0))).abs() < 1e-12);
        assert!((c[2] - (ind3(rt, r2, r0, r1) - ind3(r0, r2, r0, r1))).abs() < 1e-12);
        // One node: rho' - rho; to rho' = 0 the integrals stay finite.
        assert!((log_lagrange_integrals(&[2.0], 2.0, 0.5)[0] + 1.5).abs() < 1e-14);
        assert!(
            log_lagrange_integrals(&[2.0, 4.0], 2.0, 0.0)
                .iter()
                .all(|v| v.is_finite())
        );
    }
}
