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
    let u: Vec<f64> = t.iter().map(|v| v - t[0]).collect();
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
        let anti = |x: f64| (0..=deg).rev().fold(0.0, |acc, d| acc * x + poly[d] / (d + 1) as f64) * x;
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
            coords: Coords { kappa: grid.family().kappa() },
            x,
            walk: Walk::new(grid),
            hist: History::new(self.order - 1),
            cfg: *self,
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
    cfg: Lms,
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

    fn advance<N: NoiseSource<F> + ?Sized>(&mut self, mut est: Estimate<F, D>, _noise: &mut N) -> Result<Option<Array<F, D>>> {
        let (from, to) = (self.walk.from(), self.walk.to());
        let c = self.coords;
        if c.degenerate(&from) {
            let r = to.sigma / from.sigma;
            let k = Affine { clamped: to.alpha - from.alpha * r, raw: 0.0, x: r, z: 0.0 };
            let clamps = Clamps::for_policy(&mut est, &self.x, &self.cfg.policy, &mut self.scratch)?;
            let ok = affine_step(&mut self.x, &est, &clamps, k, None);
            attribute(ok, &est, None)?;
            self.walk.next();
            return Ok(Some(est.into_buffer()));
        }
        let order = (self.hist.len() + 1).min(self.cfg.order);
        let mut nodes = [c.tau(&from); 4];
        for (j, node) in nodes.iter_mut().enumerate().take(order).skip(1) {
            *node = c.tau(&self.hist.level(j - 1));
        }
        let coef = lagrange_integrals(&nodes[..order], c.tau(&from), c.tau(&to));
        let (gx, gd) = c.g(&from);
        let cn = c.c(&to);
        let k = Lin {
            x: cn / c.c(&from) + cn * coef[0] * gx,
            d: cn * coef[0] * gd,
            h: [cn * coef[1], cn * coef[2], cn * coef[3]],
            z: 0.0,
        };
        let clamp = est.prepare(&self.x, &self.cfg.policy, &mut self.scratch)?;
        let store = Store::Eps { ex: gx, ed: gd };
        let ok = match order {
            1 => lin_step(&mut self.x, &mut est, clamp, store, &[], None, &k),
            2 => lin_step(&mut self.x, &mut est, clamp, store, &[self.hist.array(0)], None, &k),
            3 => lin_step(&mut self.x, &mut est, clamp, store, &[self.hist.array(0), self.hist.array(1)], None, &k),
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
        let spare = if self.cfg.order > 1 { self.hist.push(est.into_buffer(), from) } else { Some(est.into_buffer()) };
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
}

#[cfg(test)]
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
