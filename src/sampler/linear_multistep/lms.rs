//! Linear multistep (Adams–Bashforth in sigma) with exact polynomial-integral coefficients.

use ndarray::Dimension;

use super::deis::log_lagrange_integrals;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::Coords;
use crate::sampler::core::kernel::{Lin, Store};
use crate::sampler::core::options::{setters, x0_builders};
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Outcome, Step};

/// `integral_a^b prod_{k != j} (tau - t_k) / (t_j - t_k) dtau` for each `j`: the Adams
/// coefficients over nodes `t` (newest first), integrated exactly (in the variable
/// `u = tau - t[0]` for conditioning).
pub(crate) fn lagrange_integrals(t: &[f64], a: f64, b: f64) -> [f64; 4] {
    let m = t.len();
    let mut out = [0.0; 4];
    let mut u = [0.0f64; 4];
    for (ui, v) in u.iter_mut().zip(t) {
        *ui = v - t[0];
    }
    let (ua, ub) = (a - t[0], b - t[0]);
    for j in 0..m {
        // Coefficients of prod_{k != j} (u - u_k), lowest degree first.
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
                poly[d] *= -u[k];
            }
            deg += 1;
            denom *= u[j] - u[k];
        }
        let anti = |x: f64| {
            (0..=deg)
                .rev()
                .fold(0.0, |acc, d| acc * x + poly[d] / (d + 1) as f64)
                * x
        };
        out[j] = (anti(ub) - anti(ua)) / denom;
    }
    out
}

/// Linear multistep in sigma: k-diffusion's `sample_lms`, diffusers' `LMSDiscreteScheduler`.
///
/// In the ODE coordinates of [`Heun`](crate::Heun) (`y = x / alpha`, `tau = sigma / alpha` for
/// VP grids), with the derivatives `g_j` of the last `order` steps at their `tau_j`:
///
/// ```text
/// y' = y + sum_j c_j g_j,   c_j = integral_tau^tau' prod_{k != j} (s - tau_k) / (tau_j - tau_k) ds
/// ```
///
/// The references evaluate `c_j` with `scipy.integrate.quad`; here the Lagrange polynomials are
/// integrated exactly. The first steps warm up with lower orders (`min(step + 1, order)`).
/// A step from the pure-noise level of a zero-terminal-SNR VP schedule is a DDIM step and does
/// not enter the history.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Lms;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(25, Spacing::Linspace)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = Lms::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for an order outside 1–4; during a run, the errors of
/// [`Sampler::sample`](crate::Sampler::sample).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lms {
    order: usize,
    x0_at_clean: bool,
    policy: X0Policy,
}

impl Default for Lms {
    fn default() -> Self {
        Lms {
            order: 4,
            x0_at_clean: false,
            policy: X0Policy::default(),
        }
    }
}

impl Lms {
    /// Order 4 (diffusers' and k-diffusion's default).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The order, 1 to 4.
        order: usize,
        /// A step to the clean level returns the x0 estimate (ComfyUI's `lms`, whose last step
        /// is `x = denoised`) instead of the multistep integral (k-diffusion, diffusers).
        x0_at_clean: bool,
    }

    x0_builders!();
}

/// Checks an Adams method's order.
pub(super) fn check_order(order: usize, max: usize, reason: &'static str) -> Result<()> {
    if (1..=max).contains(&order) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "order",
            value: order as f64,
            reason,
        })
    }
}

/// An Adams step in the ODE coordinates `c` over the derivatives of the last steps (history),
/// interpolated in `tau` (LMS) or `ln tau` (DEIS, `log_basis`); with `lower_final`, diffusers'
/// DEIS rule (first order on the last step, at most second on the one before, on grids of
/// fewer than 15 steps). A step from a degenerate level (`c = 0`: the pure-noise level in VE
/// coordinates) is a DDIM step and does not enter the history.
pub(super) fn adams<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
    s: &mut Step<'_, F, D, N, ()>,
    policy: &X0Policy,
    max_order: usize,
    (c, log_basis, lower_final): (Coords, bool, bool),
) -> Result<Outcome> {
    let (from, to) = (s.from(), s.to());
    if c.degenerate(&from) {
        s.euler(policy)?;
        return Ok(Outcome::done());
    }
    let (w, hist) = (s.walk(), &s.core.hist);
    let mut order = (hist.len() + 1).min(max_order);
    if lower_final && w.step() + w.remaining() < 15 {
        if w.is_last() {
            order = 1;
        } else if w.remaining() == 2 {
            order = order.min(2);
        }
    }
    let mut nodes = [c.tau(&from); 4];
    for (j, node) in nodes.iter_mut().enumerate().take(order).skip(1) {
        *node = c.tau(&hist.level(j - 1));
    }
    let coef = if log_basis {
        log_lagrange_integrals(&nodes[..order], c.tau(&from), c.tau(&to))
    } else {
        lagrange_integrals(&nodes[..order], c.tau(&from), c.tau(&to))
    };
    let (gx, gd) = c.g(&from);
    let cn = c.c(&to);
    let k = Lin {
        x: cn / c.c(&from) + cn * coef[0] * gx,
        d: cn * coef[0] * gd,
        h: [cn * coef[1], cn * coef[2], cn * coef[3]],
        z: 0.0,
    };
    s.lin(policy, k, Store::Eps { ex: gx, ed: gd }, order - 1)?;
    Ok(if max_order > 1 {
        Outcome::done().keep_history(from)
    } else {
        Outcome::done()
    })
}

impl crate::sampler::Method for Lms {
    type Vars = ();

    fn check(&self) -> Result<()> {
        check_order(self.order, 4, "LMS supports orders 1 to 4")?;
        self.policy.validate()
    }

    fn history(&self) -> usize {
        self.order.saturating_sub(1)
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let c = s.coords();
        if self.x0_at_clean && s.to().is_clean() {
            s.euler(&self.policy)?;
            return Ok(Outcome::done());
        }
        adams(s, &self.policy, self.order, (c, false, false))
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    #[test]
    fn lagrange_integrals_are_exact_for_polynomials() {
        // The coefficients integrate any polynomial of degree < m through the nodes exactly.
        let t = [3.0, 2.2, 1.5, 0.7];
        let (a, b) = (3.0, 1.9);
        let f = |x: f64| 0.3 * x * x * x - x * x + 2.0 * x - 5.0;
        let anti = |x: f64| 0.075 * x.powi(4) - x.powi(3) / 3.0 + x * x - 5.0 * x;
        let c = lagrange_integrals(&t, a, b);
        let got: f64 = (0..4).map(|j| c[j] * f(t[j])).sum();
        assert!((got - (anti(b) - anti(a))).abs() < 1e-12);
        // One node: the Euler coefficient b - a.
        assert!((lagrange_integrals(&[3.0], 3.0, 1.0)[0] + 2.0).abs() < 1e-15);
    }
}
