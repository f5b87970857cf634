//! DPM-Solver++ singlestep (Lu et al. 2022b), diffusers' `DPMSolverSinglestepScheduler`.

use ndarray::{Dimension, Zip};

use super::dpmpp::SolverType;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::options::{setters, x0_builders};
use crate::sampler::core::state::buf;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Core, Method, Outcome, Step};

/// Singlestep DPM-Solver++[^dpmpp], diffusers' `DPMSolverSinglestepScheduler` (ODE,
/// `dpmsolver++`): the grid's levels are grouped into blocks of 1–3 model calls; within a block
/// every call's sample is computed from the block's first sample with all the block's x0
/// estimates so far (orders 1, 2, 3 in turn), so the block's last update is of the block's
/// order. The order pattern is diffusers' `get_order_list` (e.g. `1, 2, 3, 1, 2, 3, ..., 1, 2,
/// 1` for order 3 with `lower_order_final`), and the step to the clean level is first order.
///
/// With `h = lambda' - lambda_b` from the block start `b`, `r_k = (lambda_k - lambda_b) / h`:
///
/// ```text
/// order 1: x' = (sigma'/sigma_b) x_b + alpha' (1 - e^{-h}) m_b
/// order 2: ... + alpha' c2 (m_1 - m_b) / r_1        (c2: 1/2 (1 - e^{-h}) midpoint, phi_2 heun)
/// order 3: diffusers' DPM-Solver-3 singlestep update (midpoint: phi_2 D1_1; heun: phi_2 D1 - phi_3 D2)
/// ```
///
/// One model call per grid level. A block whose start is the pure-noise level of a
/// zero-terminal-SNR schedule is first order. The SDE variant of the singlestep scheduler is
/// not offered (use [`DpmSolver::sde`](crate::DpmSolver::sde) or
/// [`DpmPp2sAncestral`](crate::DpmPp2sAncestral)).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::DpmSolverSinglestep;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(12, Spacing::DpmLinspace)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = DpmSolverSinglestep::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for an order outside 1–3.
///
/// [^dpmpp]: C. Lu et al., *DPM-Solver++*, arXiv:2211.01095.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmSolverSinglestep {
    order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    policy: X0Policy,
}

impl Default for DpmSolverSinglestep {
    fn default() -> Self {
        DpmSolverSinglestep {
            order: 2,
            solver_type: SolverType::Midpoint,
            lower_order_final: true,
            policy: X0Policy::default(),
        }
    }
}

impl DpmSolverSinglestep {
    /// Order 2, midpoint, `lower_order_final` (diffusers' defaults).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The order, 1 to 3.
        order: usize,
        /// Midpoint or Heun form.
        solver_type: SolverType,
        /// diffusers' `lower_order_final` pattern of orders.
        lower_order_final: bool,
    }

    x0_builders!();

    /// Step `i`'s entry of diffusers' `get_order_list` for `n` steps, with the last order 1 when
    /// the grid ends at the clean level: repeats of `1, 2, (3)`, with diffusers' tails
    /// (`..., 1, 1` / `..., 1` for order 2; `..., 1, 2, 1` / `..., 1` / `..., 1, 2` for order 3).
    fn order_at(&self, i: usize, n: usize, to_clean: bool) -> usize {
        let o = self.order.clamp(1, 3);
        if to_clean && i + 1 == n {
            return 1;
        }
        if !self.lower_order_final || o == 1 {
            return 1 + i % o;
        }
        // The steps before diffusers' tail cycle through 1..=o; then the tail.
        let full = if n.is_multiple_of(o) {
            (n / o).saturating_sub(1)
        } else {
            n / o
        };
        let body = o * full;
        match (o, n % o) {
            _ if i < body => 1 + i % o,
            (2, 0) => 1,
            (3, 0) => [1, 2, 1][(i - body).min(2)],
            _ => 1 + (i - body),
        }
    }

    /// diffusers' `get_order_list` (see [`order_at`](Self::order_at)).
    #[cfg(test)]
    fn order_list(&self, n: usize, to_clean: bool) -> Vec<usize> {
        (0..n).map(|i| self.order_at(i, n, to_clean)).collect()
    }
}

/// The block's first sample.
const START: usize = 0;

impl Method for DpmSolverSinglestep {
    /// Calls so far in the current block.
    type Vars = usize;

    fn check(&self) -> Result<()> {
        if !(1..=3).contains(&self.order) {
            return Err(Error::InvalidParameter {
                name: "order",
                value: self.order as f64,
                reason: "DPM-Solver singlestep supports orders 1, 2 and 3",
            });
        }
        self.policy.validate()
    }

    fn history(&self) -> usize {
        2
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, usize>,
    ) -> Result<Outcome> {
        let (step, s0, t) = (s.step(), s.from(), s.to());
        let w = s.walk();
        let n = w.step() + w.remaining();
        let hist = &s.core.hist;
        let mut order = self
            .order_at(step, n, w.final_level().is_clean())
            .min(*s.vars + 1);
        // The block start is `order - 1` calls back; a pure-noise start restarts the block.
        if order > 1 && hist.level(order - 2).alpha == 0.0 {
            order = 1;
        }
        if order == 1 {
            let Core { x, bufs, .. } = &mut *s.core;
            buf(&mut bufs[START], x).assign(x);
            *s.vars = 0;
        }
        let hist = &s.core.hist;
        let b = if order == 1 { s0 } else { hist.level(order - 2) };
        let h = t.lambda() - b.lambda();
        let e = -(-h).exp_m1(); // 1 - e^{-h}
        let phi2 = (-h).exp_m1() / h + 1.0;
        // Coefficients over (start, m_new, hist(0), hist(1)).
        let ks = if t.is_clean() { 0.0 } else { t.sigma / b.sigma };
        let (k_new, k_h0, k_h1) = match order {
            1 => (t.alpha * e, 0.0, 0.0),
            2 => {
                // m_b = hist(0), m_1 = new.
                let inv_r = h / (s0.lambda() - b.lambda());
                let c2 = match self.solver_type {
                    SolverType::Midpoint => 0.5 * e,
                    SolverType::Heun => phi2,
                };
                (t.alpha * c2 * inv_r, t.alpha * (e - c2 * inv_r), 0.0)
            }
            _ => {
                // m2 = hist(1) (block start), m1 = hist(0), m0 = new.
                let s1 = hist.level(0);
                let (r0, r1) = ((s0.lambda() - b.lambda()) / h, (s1.lambda() - b.lambda()) / h);
                // D1_0 = (m1 - m2) / r1, D1_1 = (m0 - m2) / r0 as [m0, m1, m2] coefficients.
                let d10 = [0.0, 1.0 / r1, -1.0 / r1];
                let d11 = [1.0 / r0, 0.0, -1.0 / r0];
                let c: [f64; 3] = match self.solver_type {
                    SolverType::Midpoint => std::array::from_fn(|j| phi2 * d11[j]),
                    SolverType::Heun => {
                        let phi3 = phi2 / h - 0.5;
                        std::array::from_fn(|j| {
                            let d1 = (r0 * d10[j] - r1 * d11[j]) / (r0 - r1);
                            let d2 = 2.0 * (d11[j] - d10[j]) / (r0 - r1);
                            phi2 * d1 - phi3 * d2
                        })
                    }
                };
                (t.alpha * c[0], t.alpha * c[1], t.alpha * (e + c[2]))
            }
        };
        let clamp = s.clamp(&self.policy)?;
        let (cx, co) = s.conv();
        let f = F::cast;
        let (ks, k_new, k_h0, k_h1) = (f(ks), f(k_new), f(k_h0), f(k_h1));
        let Core { x, bufs, hist, .. } = &mut *s.core;
        let start = bufs[START].as_ref().ok_or(Error::Finished)?;
        let o = &mut s.est.out;
        let ok = match order {
            1 => fold_finite!(clamp = clamp; Zip::from(x).and(o).and(start), |x, o, &st| {
                let raw = cx * *x + co * *o;
                let d = clamp.apply(raw);
                *o = clamp.keep(d, raw);
                *x = ks * st + k_new * d;
                clamp.keep(*x, raw)
            }),
            2 => {
                fold_finite!(clamp = clamp; Zip::from(x).and(o).and(start).and(hist.array(0)), |x, o, &st, &h0| {
                    let raw = cx * *x + co * *o;
                    let d = clamp.apply(raw);
                    *o = clamp.keep(d, raw);
                    *x = ks * st + k_new * d + k_h0 * h0;
                    clamp.keep(*x, raw)
                })
            }
            _ => fold_finite!(clamp = clamp;
                Zip::from(x).and(o).and(start).and(hist.array(0)).and(hist.array(1)),
                |x, o, &st, &h0, &h1| {
                    let raw = cx * *x + co * *o;
                    let d = clamp.apply(raw);
                    *o = clamp.keep(d, raw);
                    *x = ks * st + k_new * d + k_h0 * h0 + k_h1 * h1;
                    clamp.keep(*x, raw)
                }
            ),
        };
        s.check(ok)?;
        *s.vars += 1;
        Ok(Outcome::done().keep_history(s0))
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    /// Regression: a grid with no effective step (one zero-length step) made `order_list`
    /// overflow a subtraction.
    #[test]
    fn no_effective_step_is_no_order() {
        for o in 1..=3 {
            for lof in [true, false] {
                assert!(
                    DpmSolverSinglestep::new()
                        .order(o)
                        .lower_order_final(lof)
                        .order_list(0, true)
                        .is_empty()
                );
            }
        }
    }

    #[test]
    fn order_lists_match_diffusers() {
        let s = |o| DpmSolverSinglestep::new().order(o);
        assert_eq!(s(3).order_list(9, true), vec![1, 2, 3, 1, 2, 3, 1, 2, 1]);
        assert_eq!(s(3).order_list(10, true), vec![1, 2, 3, 1, 2, 3, 1, 2, 3, 1]);
        assert_eq!(s(3).order_list(8, false), vec![1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(s(2).order_list(6, true), vec![1, 2, 1, 2, 1, 1]);
        assert_eq!(s(2).order_list(5, false), vec![1, 2, 1, 2, 1]);
        assert_eq!(
            s(2).lower_order_final(false).order_list(5, true),
            vec![1, 2, 1, 2, 1]
        );
    }
}
