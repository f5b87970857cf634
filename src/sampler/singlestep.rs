//! DPM-Solver++ singlestep (Lu et al. 2022b), diffusers' `DPMSolverSinglestepScheduler`.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::dpmpp::SolverType;
use super::history::History;
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

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
/// [`Error::InvalidParameter`] for an order outside 1–3.
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

    /// The order, 1 to 3.
    pub fn order(mut self, order: usize) -> Self {
        self.order = order;
        self
    }

    /// Midpoint or Heun form.
    pub fn solver_type(mut self, t: SolverType) -> Self {
        self.solver_type = t;
        self
    }

    /// diffusers' `lower_order_final` pattern of orders.
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

    /// diffusers' `get_order_list`, with the last order 1 when the grid ends at the clean level.
    fn order_list(&self, steps: usize, to_clean: bool) -> Vec<usize> {
        let (o, n) = (self.order, steps);
        let mut v: Vec<usize> = match (self.lower_order_final, o) {
            (_, 1) => vec![1; n],
            (true, 2) if n % 2 == 0 => [1, 2].repeat(n / 2 - 1).into_iter().chain([1, 1]).collect(),
            (true, 2) => [1, 2].repeat(n / 2).into_iter().chain([1]).collect(),
            (true, _) if n % 3 == 0 => [1, 2, 3].repeat(n / 3 - 1).into_iter().chain([1, 2, 1]).collect(),
            (true, _) if n % 3 == 1 => [1, 2, 3].repeat(n / 3).into_iter().chain([1]).collect(),
            (true, _) => [1, 2, 3].repeat(n / 3).into_iter().chain([1, 2]).collect(),
            (false, 2) => [1, 2].repeat(n.div_ceil(2)),
            (false, _) => [1, 2, 3].repeat(n.div_ceil(3)),
        };
        v.resize(n, 1);
        if to_clean && n > 0 {
            v[n - 1] = 1;
        }
        v
    }
}

impl Sampler for DpmSolverSinglestep {
    type State<F: Float, D: Dimension> = SinglestepState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<SinglestepState<F, D>> {
        if !(1..=3).contains(&self.order) {
            return Err(Error::InvalidParameter {
                name: "order",
                value: self.order as f64,
                reason: "DPM-Solver singlestep supports orders 1, 2 and 3",
            });
        }
        self.policy.validate()?;
        let walk = Walk::new(grid);
        let n = walk.remaining();
        let orders = self.order_list(n, grid.levels()[grid.steps()].is_clean());
        Ok(SinglestepState {
            start: None,
            x,
            walk,
            hist: History::new(2),
            orders,
            block: 0,
            cfg: *self,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        Walk::effective_steps(grid)
    }
}

/// The state of a [`DpmSolverSinglestep`] run.
#[derive(Clone, Debug)]
pub struct SinglestepState<F, D: Dimension> {
    /// The block's first sample.
    start: Option<Array<F, D>>,
    x: Array<F, D>,
    walk: Walk,
    hist: History<F, D>,
    orders: Vec<usize>,
    /// Calls so far in the current block.
    block: usize,
    cfg: DpmSolverSinglestep,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for SinglestepState<F, D> {
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
        let (step, s0, t) = (self.walk.step(), self.walk.from(), self.walk.to());
        let mut order = self.orders[step].min(self.block + 1);
        // The block start is `order - 1` calls back; a pure-noise start restarts the block.
        if order > 1 && self.hist.level(order - 2).alpha == 0.0 {
            order = 1;
        }
        if order == 1 {
            let start = self.start.get_or_insert_with(|| Array::zeros(self.x.raw_dim()));
            start.assign(&self.x);
            self.block = 0;
        }
        let b = if order == 1 {
            s0
        } else {
            self.hist.level(order - 2)
        };
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
                let c2 = match self.cfg.solver_type {
                    SolverType::Midpoint => 0.5 * e,
                    SolverType::Heun => phi2,
                };
                (t.alpha * c2 * inv_r, t.alpha * (e - c2 * inv_r), 0.0)
            }
            _ => {
                // m2 = hist(1) (block start), m1 = hist(0), m0 = new.
                let s1 = self.hist.level(0);
                let (r0, r1) = ((s0.lambda() - b.lambda()) / h, (s1.lambda() - b.lambda()) / h);
                // D1_0 = (m1 - m2) / r1, D1_1 = (m0 - m2) / r0 as [m0, m1, m2] coefficients.
                let d10 = [0.0, 1.0 / r1, -1.0 / r1];
                let d11 = [1.0 / r0, 0.0, -1.0 / r0];
                let c: [f64; 3] = match self.cfg.solver_type {
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
        let clamp = est.prepare(&self.x, &self.cfg.policy, &mut self.scratch)?;
        let (cx, co) = (est.cx, est.co);
        let f = F::cast;
        let (ks, k_new, k_h0, k_h1) = (f(ks), f(k_new), f(k_h0), f(k_h1));
        let start = self.start.as_ref().ok_or(Error::Finished)?;
        let ok = match order {
            1 => fold_finite!(clamp = clamp;
                Zip::from(&mut self.x).and(&mut est.out).and(start),
                |x, o, &st| {
                    let raw = cx * *x + co * *o;
                    let d = clamp.apply(raw);
                    *o = clamp.keep(d, raw);
                    *x = ks * st + k_new * d;
                    *x + raw * F::zero()
                }
            ),
            2 => fold_finite!(clamp = clamp;
                Zip::from(&mut self.x)
                    .and(&mut est.out)
                    .and(start)
                    .and(self.hist.array(0)),
                |x, o, &st, &h0| {
                    let raw = cx * *x + co * *o;
                    let d = clamp.apply(raw);
                    *o = clamp.keep(d, raw);
                    *x = ks * st + k_new * d + k_h0 * h0;
                    *x + raw * F::zero()
                }
            ),
            _ => fold_finite!(clamp = clamp;
                Zip::from(&mut self.x)
                    .and(&mut est.out)
                    .and(start)
                    .and(self.hist.array(0))
                    .and(self.hist.array(1)),
                |x, o, &st, &h0, &h1| {
                    let raw = cx * *x + co * *o;
                    let d = clamp.apply(raw);
                    *o = clamp.keep(d, raw);
                    *x = ks * st + k_new * d + k_h0 * h0 + k_h1 * h1;
                    *x + raw * F::zero()
                }
            ),
        };
        attribute(ok, &est, None)?;
        let spare = self.hist.push(est.into_buffer(), s0);
        self.block += 1;
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
        2
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

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
