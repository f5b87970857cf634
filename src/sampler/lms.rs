//! Linear multistep (Adams–Bashforth in sigma) with exact polynomial-integral coefficients.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use super::coefs::Coords;
use super::history::History;
use super::kernel::{Affine, Clamps, Lin, Store, affine_step, lin_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

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
/// [`Error::InvalidParameter`] for an order outside 1–4.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Lms {
    order: usize,
    policy: X0Policy,
}

impl Default for Lms {
    fn default() -> Self {
        Lms {
            order: 4,
            policy: X0Policy::default(),
        }
    }
}

impl Lms {
    /// Order 4 (diffusers' and k-diffusion's default).
    pub fn new() -> Self {
        Self::default()
    }

    /// The order, 1 to 4.
    pub fn order(mut self, order: usize) -> Self {
        self.order = order;
        self
    }

    /// Clamp the x0 estimate to `[-r, r]`.
    pub fn clip_sample(mut self, range: Option<f64>) -> Self {
        self.policy.clip = range;
        self
    }

    /// Dynamic thresholding of the x0 estimate.
    pub fn thresholding(mut self, t: Option<Thresholding>) -> Self {
        self.policy.threshold = t;
        self
    }
}

impl Sampler for Lms {
    type State<F: Float, D: Dimension> = LmsState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<LmsState<F, D>> {
        if !(1..=4).contains(&self.order) {
            return Err(Error::InvalidParameter {
                name: "order",
                value: self.order as f64,
                reason: "LMS supports orders 1 to 4",
            });
        }
        self.policy.validate()?;
        Ok(LmsState {
            coords: Coords {
                kappa: grid.family().kappa(),
            },
            x,
            walk: Walk::new(grid),
            hist: History::new(self.order - 1),
            order: self.order,
            log_basis: false,
            lower_order_final: false,
            policy: self.policy,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        Walk::effective_steps(grid)
    }
}

/// The state of an [`Lms`] run.
#[derive(Clone, Debug)]
pub struct LmsState<F, D: Dimension> {
    coords: Coords,
    x: Array<F, D>,
    walk: Walk,
    hist: History<F, D>,
    order: usize,
    /// Interpolate in `ln tau` (DEIS) rather than `tau` (LMS).
    log_basis: bool,
    /// diffusers' DEIS rule: first order on the last step and at most second order on the one
    /// before, on grids of fewer than 15 steps.
    lower_order_final: bool,
    policy: X0Policy,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for LmsState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        (!self.walk.done()).then(|| Request {
            step: self.walk.step(),
            level: self.walk.from(),
            x: self.x.view(),
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        _noise: &mut N,
    ) -> Result<Option<Array<F, D>>> {
        let (from, to) = (self.walk.from(), self.walk.to());
        let c = self.coords;
        if c.degenerate(&from) {
            let r = to.sigma / from.sigma;
            let k = Affine {
                clamped: to.alpha - from.alpha * r,
                raw: 0.0,
                x: r,
                z: 0.0,
            };
            let clamps = Clamps::for_policy(&mut est, &self.x, &self.policy, &mut self.scratch)?;
            let ok = affine_step(&mut self.x, &est, &clamps, k, None);
            attribute(ok, &est, None)?;
            self.walk.next();
            return Ok(Some(est.into_buffer()));
        }
        let mut order = (self.hist.len() + 1).min(self.order);
        if self.lower_order_final && self.walk.step() + self.walk.remaining() < 15 {
            if self.walk.is_last() {
                order = 1;
            } else if self.walk.remaining() == 2 {
                order = order.min(2);
            }
        }
        let mut nodes = [c.tau(&from); 4];
        for (j, node) in nodes.iter_mut().enumerate().take(order).skip(1) {
            *node = c.tau(&self.hist.level(j - 1));
        }
        let coef = if self.log_basis {
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
        let clamp = est.prepare(&self.x, &self.policy, &mut self.scratch)?;
        let store = Store::Eps { ex: gx, ed: gd };
        let ok = match order {
            1 => lin_step(&mut self.x, &mut est, clamp, store, &[], None, &k),
            2 => lin_step(
                &mut self.x,
                &mut est,
                clamp,
                store,
                &[self.hist.array(0)],
                None,
                &k,
            ),
            3 => lin_step(
                &mut self.x,
                &mut est,
                clamp,
                store,
                &[self.hist.array(0), self.hist.array(1)],
                None,
                &k,
            ),
            _ => lin_step(
                &mut self.x,
                &mut est,
                clamp,
                store,
                &[self.hist.array(0), self.hist.array(1), self.hist.array(2)],
                None,
                &k,
            ),
        };
        attribute(ok, &est, None)?;
        let spare = if self.order > 1 {
            self.hist.push(est.into_buffer(), from)
        } else {
            Some(est.into_buffer())
        };
        self.walk.next();
        Ok(spare)
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.walk.current()
    }

    fn into_sample(self) -> Array<F, D> {
        self.x
    }

    fn buffers_held(&self) -> usize {
        self.order.saturating_sub(1)
    }
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
/// [`Error::InvalidParameter`] for an order outside 1–3.
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

    /// The order, 1 to 3.
    pub fn order(mut self, order: usize) -> Self {
        self.order = order;
        self
    }

    /// Lower orders on the last two steps of grids shorter than 15 steps (diffusers).
    pub fn lower_order_final(mut self, yes: bool) -> Self {
        self.lower_order_final = yes;
        self
    }

    /// Clamp the x0 estimate to `[-r, r]`.
    pub fn clip_sample(mut self, range: Option<f64>) -> Self {
        self.policy.clip = range;
        self
    }

    /// Dynamic thresholding of the x0 estimate.
    pub fn thresholding(mut self, t: Option<Thresholding>) -> Self {
        self.policy.threshold = t;
        self
    }
}

impl Sampler for Deis {
    type State<F: Float, D: Dimension> = LmsState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<LmsState<F, D>> {
        if !(1..=3).contains(&self.order) {
            return Err(Error::InvalidParameter {
                name: "order",
                value: self.order as f64,
                reason: "DEIS supports orders 1, 2 and 3",
            });
        }
        self.policy.validate()?;
        Ok(LmsState {
            coords: Coords { kappa: 0.0 },
            x,
            walk: Walk::new(grid),
            hist: History::new(self.order - 1),
            order: self.order,
            log_basis: true,
            lower_order_final: self.lower_order_final,
            policy: self.policy,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        Walk::effective_steps(grid)
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
