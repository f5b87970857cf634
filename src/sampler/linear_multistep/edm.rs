//! Adams methods on `dy/dtau` in the sigma-space coordinates, as zju-pi's diff-solvers (and
//! ComfyUI, which takes them from there) write them for EDM sigmas: iPNDM, iPNDM-v, DEIS-tAB,
//! and the gradient-estimation sampler.

use ndarray::Dimension;

use super::lms::check_order;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::options::setters;
use crate::sampler::{Method, Outcome, Step};

/// One step `y' = y + sum_j w[j] d_j` over the derivative `d_0 = (y - x0) / tau` of this call
/// and the history `d_1, d_2, ...` (newest first), in the model's scaling; the new derivative
/// joins the history. A step to the clean level returns the x0 estimate (the zju-pi solvers'
/// "denoising step"); a step from a level where the coordinates are degenerate (the pure-noise
/// level of a zero-terminal-SNR VP schedule) is a DDIM step.
fn sigma_step<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized, V>(
    s: &mut Step<'_, F, D, N, V>,
    w: &[f64],
    keep: bool,
) -> Result<Outcome> {
    let (from, to, c) = (s.from(), s.to(), s.coords());
    if to.is_clean() || c.degenerate(&from) {
        s.euler(&Default::default())?;
        return Ok(Outcome::done());
    }
    let (cf, ct, tau) = (c.c(&from), c.c(&to), c.tau(&from));
    let mut terms = [
        (Slot::X, ct / cf + ct * w[0] / from.sigma),
        (Slot::X0, -ct * w[0] / tau),
        (Slot::Hist(0), 0.0),
        (Slot::Hist(1), 0.0),
        (Slot::Hist(2), 0.0),
    ];
    for j in 1..w.len() {
        terms[j + 1].1 = ct * w[j];
    }
    let n = w.len() + 1;
    s.combo(
        &Combo::new(
            Slot::X,
            &terms[..n],
            Keep::Lin {
                ex: 1.0 / from.sigma,
                ed: -1.0 / tau,
            },
        ),
        None,
    )?;
    Ok(if keep {
        Outcome::done().keep_history(from)
    } else {
        Outcome::done()
    })
}

/// The sigma-space coordinate `tau` of history entry `j` (newest first) and of the step's ends.
fn taus<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized, V>(
    s: &Step<'_, F, D, N, V>,
    n: usize,
) -> [f64; 4] {
    let c = s.coords();
    let mut t = [c.tau(&s.from()); 4];
    for (j, tj) in t.iter_mut().enumerate().take(n).skip(1) {
        *tj = c.tau(&s.core.hist.level(j - 1));
    }
    t
}

/// iPNDM in EDM sigma space[^ipndm] (zju-pi/diff-solvers; ComfyUI's `ipndm` and, with
/// [`variable_step`](Self::variable_step), `ipndm_v`): Adams–Bashforth of order up to 4 on
/// `dy/dtau = (y - x0) / tau` in the sigma-space coordinates (k-diffusion's `x / alpha`,
/// `sigma / alpha`; `x`, `sigma` for rectified flow), warming up with lower orders, one model
/// call per step, the last step to the clean level returning the x0 estimate:
///
/// ```text
/// y' = y + (tau' - tau) sum_j b_j d_j,   b = [1], [3, -1]/2, [23, -16, 5]/12, [55, -59, 37, -9]/24
/// ```
///
/// the fixed-step coefficients; `variable_step` uses the variable-step Adams–Bashforth
/// coefficients of the actual `tau` steps (iPNDM-v) — the reference's formulas, whose order-4
/// weights do not reduce to Adams–Bashforth's on uniform steps (`[57, -65, 43, -11] / 24`
/// there). This differs from [`Ipndm`](crate::Ipndm),
/// which extrapolates the noise estimate and steps with the DDIM transfer.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{karras_sigmas, EdmIpndm};
/// use ndarray::Array2;
/// let grid = Grid::ve(&karras_sigmas(10, 0.002, 80.0, 7.0)?)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let x = Array2::<f64>::from_elem((1, 1), 30.0);
/// let out = EdmIpndm::new().sample(&mut model, x, &grid, &mut SeededNoise::new(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for an order outside 1–4.
///
/// [^ipndm]: Q. Zhang, Y. Chen, *Fast Sampling of Diffusion Models with Exponential Integrator*,
///     ICLR 2023, arXiv:2204.13902; Z. Zhou et al., *Fast ODE-based Sampling for Diffusion
///     Models in Around 5 Steps*, CVPR 2024 (the diff-solvers implementation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmIpndm {
    order: usize,
    variable_step: bool,
}

impl Default for EdmIpndm {
    fn default() -> Self {
        EdmIpndm {
            order: 4,
            variable_step: false,
        }
    }
}

impl EdmIpndm {
    /// Order 4, fixed-step coefficients (ComfyUI's `ipndm`).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The maximum order, 1 to 4.
        order: usize,
        /// Variable-step coefficients (ComfyUI's `ipndm_v`).
        variable_step: bool,
    }
}

/// The fixed-step Adams–Bashforth weights of order `n` (newest first).
fn ab_fixed(n: usize) -> [f64; 4] {
    match n {
        1 => [1.0, 0.0, 0.0, 0.0],
        2 => [1.5, -0.5, 0.0, 0.0],
        3 => [23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0, 0.0],
        _ => [55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
    }
}

/// The variable-step weights of diff-solvers' `ipndm_v` for the steps `h[0] = tau' - tau`,
/// `h[k] = tau_{-k+1} - tau_{-k}` (ComfyUI's formulas, term for term).
#[allow(clippy::similar_names, reason = "the reference's names")]
fn ab_variable(n: usize, h: [f64; 4]) -> [f64; 4] {
    let [hn, hn1, hn2, hn3] = h;
    match n {
        1 => [1.0, 0.0, 0.0, 0.0],
        2 => {
            let c1 = (2.0 + hn / hn1) / 2.0;
            [c1, -(hn / hn1) / 2.0, 0.0, 0.0]
        }
        3 => {
            let temp = (1.0 - hn / (3.0 * (hn + hn1)) * (hn * (hn + hn1)) / (hn1 * (hn1 + hn2))) / 2.0;
            let c1 = (2.0 + hn / hn1) / 2.0 + temp;
            let c2 = -(hn / hn1) / 2.0 - (1.0 + hn1 / hn2) * temp;
            [c1, c2, temp * hn1 / hn2, 0.0]
        }
        _ => {
            let t1 = (1.0 - hn / (3.0 * (hn + hn1)) * (hn * (hn + hn1)) / (hn1 * (hn1 + hn2))) / 2.0;
            let t2 = ((1.0 - hn / (3.0 * (hn + hn1))) / 2.0
                + (1.0 - hn / (2.0 * (hn + hn1))) * hn / (6.0 * (hn + hn1 + hn2)))
                * (hn * (hn + hn1) * (hn + hn1 + hn2))
                / (hn1 * (hn1 + hn2) * (hn1 + hn2 + hn3));
            let q = hn1 * (hn1 + hn2) / (hn2 * (hn2 + hn3));
            let c1 = (2.0 + hn / hn1) / 2.0 + t1 + t2;
            let c2 = -(hn / hn1) / 2.0 - (1.0 + hn1 / hn2) * t1 - (1.0 + hn1 / hn2 + q) * t2;
            let c3 = t1 * hn1 / hn2 + (hn1 / hn2 + q * (1.0 + hn2 / hn3)) * t2;
            let c4 = -t2 * q * hn1 / hn2;
            [c1, c2, c3, c4]
        }
    }
}

impl Method for EdmIpndm {
    type Vars = ();

    fn check(&self) -> Result<()> {
        check_order(self.order, 4, "iPNDM supports orders 1 to 4")
    }

    fn history(&self) -> usize {
        self.order - 1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let n = (s.core.hist.len() + 1).min(self.order);
        let t = taus(s, n);
        let dt = s.coords().tau(&s.to()) - t[0];
        let b = if self.variable_step {
            ab_variable(n, [dt, t[0] - t[1], t[1] - t[2], t[2] - t[3]])
        } else {
            ab_fixed(n)
        };
        let w = b.map(|b| b * dt);
        sigma_step(s, &w[..n], self.order > 1)
    }
}

/// DEIS-tAB in EDM sigma space[^deis] (zju-pi/diff-solvers' `get_deis_coeff_list`, ComfyUI's
/// `deis`): Adams–Bashforth on `dy/dtau` whose past derivatives are interpolated by a polynomial
/// in the time `t` of a VP-SDE fitted to EDM's range (`sigma` in `[0.002, 80]`, `eps_s =
/// 1e-3`), the coefficients `c_j = integral l_j(t) dsigma(t)` over the step taken as the
/// reference does: a Riemann sum over 10 000 points (accurate to about 1e-4; we keep the sum so
/// that the steps are the reference's). Orders 1–4 (default 3, ComfyUI's); the last step to the
/// clean level returns the x0 estimate.
///
/// This is not diffusers' DEIS ([`Deis`](crate::Deis), log-rho polynomials in the noise
/// estimate, integrated exactly).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::EdmDeis;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = EdmDeis::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for an order outside 1–4 or fewer than 2 integration points.
///
/// [^deis]: Q. Zhang, Y. Chen, *Fast Sampling of Diffusion Models with Exponential Integrator*,
///     ICLR 2023, arXiv:2204.13902.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdmDeis {
    order: usize,
    points: usize,
}

impl Default for EdmDeis {
    fn default() -> Self {
        EdmDeis {
            order: 3,
            points: 10_000,
        }
    }
}

impl EdmDeis {
    /// Order 3 with the reference's 10 000-point integration.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The maximum order, 1 to 4.
        order: usize,
        /// Points of the Riemann sum of each coefficient (10 000 in the reference).
        points: usize,
    }
}

/// The VP-SDE `(beta_min, beta_d)` the reference fits to EDM's sigma range.
fn deis_vp() -> (f64, f64) {
    let (smin, smax, eps): (f64, f64, f64) = (0.002, 80.0, 1e-3);
    let beta_d = 2.0 * ((smin * smin + 1.0).ln() / eps - (smax * smax + 1.0).ln()) / (eps - 1.0);
    ((smax * smax + 1.0).ln() - 0.5 * beta_d, beta_d)
}

/// The reference's `edm2t`: the VP time of sigma.
fn deis_t(sigma: f64, (beta_min, beta_d): (f64, f64)) -> f64 {
    ((beta_min * beta_min + 2.0 * beta_d * (sigma * sigma + 1.0).ln()).sqrt() - beta_min) / beta_d
}

/// The coefficients of one DEIS-tAB step from VP time `ts[0]` to `t_next` over the nodes `ts`
/// (newest first), by the reference's Riemann sum over `points` points of `linspace(ts[0],
/// t_next, points)` with `dtau = (t_next - ts[0]) / points`.
pub(crate) fn deis_tab_coefs(ts: &[f64], t_next: f64, points: usize, vp: (f64, f64)) -> [f64; 4] {
    let (beta_min, beta_d) = vp;
    let m = ts.len();
    let mut out = [0.0; 4];
    let dtau = (t_next - ts[0]) / points as f64;
    for tau in crate::grid::torch_linspace_iter(ts[0], t_next, points) {
        let alpha = (-0.5 * tau * tau * beta_d - tau * beta_min).exp();
        let integrand = 0.5 * (tau * beta_d + beta_min) / (alpha * (1.0 - alpha)).sqrt();
        for (j, o) in out.iter_mut().enumerate().take(m) {
            let mut poly = 1.0;
            for (k, &tk) in ts.iter().enumerate() {
                if k != j {
                    poly *= (tau - tk) / (ts[j] - tk);
                }
            }
            *o += integrand * poly;
        }
    }
    out.map(|o| o * dtau)
}

/// A DEIS-tAB run's coefficients, computed for the whole grid on its first step (as the
/// reference computes its `coeff_list` before sampling): per step, the order used and the
/// weights.
#[derive(Clone, Debug, Default)]
pub struct DeisVars {
    first: usize,
    steps: Vec<(usize, [f64; 4])>,
}

impl EdmDeis {
    /// The weights of a step from `tau[0]` to `tau_next` over the `n` nodes `tau`.
    fn weights(&self, tau: &[f64; 4], tau_next: f64, n: usize) -> [f64; 4] {
        if n == 1 {
            return [tau_next - tau[0], 0.0, 0.0, 0.0];
        }
        let vp = deis_vp();
        let ts = tau.map(|t| deis_t(t, vp));
        deis_tab_coefs(&ts[..n], deis_t(tau_next, vp), self.points, vp)
    }
}

impl Method for EdmDeis {
    type Vars = DeisVars;

    fn check(&self) -> Result<()> {
        check_order(self.order, 4, "DEIS-tAB supports orders 1 to 4")?;
        if self.points < 2 {
            return Err(Error::InvalidParameter {
                name: "points",
                value: self.points as f64,
                reason: "the integration needs at least 2 points",
            });
        }
        Ok(())
    }

    fn history(&self) -> usize {
        self.order - 1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, DeisVars>,
    ) -> Result<Outcome> {
        let n = (s.core.hist.len() + 1).min(self.order);
        let tau = taus(s, n);
        let c = s.coords();
        let tau_next = c.tau(&s.to());
        let i0 = s.walk().step();
        if s.vars.steps.is_empty() {
            // Every later step's weights, assuming each step keeps its level in the history
            // (checked below; a step that does not is computed on its own).
            let w = s.walk();
            let end = i0 + w.remaining();
            let steps: Vec<(usize, [f64; 4])> = (i0..end)
                .map(|i| {
                    let m = (n + (i - i0)).min(self.order);
                    let mut t = [c.tau(&w.level(i)); 4];
                    for (j, tj) in t.iter_mut().enumerate().take(m).skip(1) {
                        *tj = c.tau(&w.level(i - j));
                    }
                    (m, self.weights(&t, c.tau(&w.level(i + 1)), m))
                })
                .collect();
            s.vars.first = i0;
            s.vars.steps = steps;
        }
        let cached = i0
            .checked_sub(s.vars.first)
            .and_then(|k| s.vars.steps.get(k))
            .copied();
        let w = s.walk();
        let expected = (1..n).all(|j| i0 >= j && s.core.hist.level(j - 1) == w.level(i0 - j));
        let wts = match cached {
            Some((m, wts)) if m == n && expected => wts,
            _ => self.weights(&tau, tau_next, n),
        };
        sigma_step(s, &wts[..n], self.order > 1)
    }
}

/// The gradient-estimation sampler[^ge] (ComfyUI's `gradient_estimation`): Euler in the
/// sigma-space coordinates with the derivative extrapolated from the previous one,
/// `y' = y + (tau' - tau) (d + (gamma - 1) (d - d_prev))` (`gamma = 2`: a second-order
/// Adams–Bashforth-like correction for uniform steps), the last step returning the x0 estimate.
///
/// With [`cfg_pp`](Self::cfg_pp) (ComfyUI's `gradient_estimation_cfg_pp`) the derivative comes
/// from the unconditional branch of a guided model, `d_u = (y - x0_u) / tau`, and the step
/// restarts from the guided estimate: `y' = x0_g + tau' d_u + (gamma - 1) (tau' - tau) (d_u -
/// d_u,prev)`.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::GradientEstimation;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = GradientEstimation::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for a non-finite `gamma`.
///
/// [^ge]: *Denoising Diffusion Models as Gradient Estimators* (the "gradient estimation"
///     sampler of R. Permenter and C. Yuan, *Interpreting and Improving Diffusion Models from an
///     Optimization Perspective*, ICML 2024, arXiv:2306.04848).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradientEstimation {
    gamma: f64,
    cfg_pp: bool,
}

impl Default for GradientEstimation {
    fn default() -> Self {
        GradientEstimation {
            gamma: 2.0,
            cfg_pp: false,
        }
    }
}

impl GradientEstimation {
    /// `gamma = 2` (ComfyUI's default).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The extrapolation weight (`ge_gamma`); 1 is plain Euler.
        gamma: f64,
        /// CFG++: the derivative from the unconditional branch of a guided model (ComfyUI's
        /// `gradient_estimation_cfg_pp`; see the type's docs).
        cfg_pp: bool,
    }
}

impl Method for GradientEstimation {
    type Vars = ();

    fn check(&self) -> Result<()> {
        if self.gamma.is_finite() {
            Ok(())
        } else {
            Err(Error::InvalidParameter {
                name: "gamma",
                value: self.gamma,
                reason: "must be finite",
            })
        }
    }

    fn history(&self) -> usize {
        1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let dt = s.coords().tau(&s.to()) - s.coords().tau(&s.from());
        if self.cfg_pp {
            return self.cfg_pp_step(s, dt);
        }
        if s.core.hist.len() == 0 {
            return sigma_step(s, &[dt], true);
        }
        sigma_step(s, &[self.gamma * dt, (1.0 - self.gamma) * dt], true)
    }
}

impl GradientEstimation {
    /// The CFG++ step: `y' = x0_g + A d_u - (gamma - 1) dt d_u,prev` with `A = tau' + (gamma - 1)
    /// dt` (`tau'` on the first step), `d_u = (y - x0_u) / tau` kept for the next step.
    fn cfg_pp_step<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
        dt: f64,
    ) -> Result<Outcome> {
        let (from, to, c) = (s.from(), s.to(), s.coords());
        if to.is_clean() || c.degenerate(&from) {
            s.euler(&Default::default())?;
            return Ok(Outcome::done());
        }
        let (cf, ct, tau, tau_next) = (c.c(&from), c.c(&to), c.tau(&from), c.tau(&to));
        let g = if s.core.hist.len() == 0 {
            0.0
        } else {
            (self.gamma - 1.0) * dt
        };
        let a = tau_next + g;
        let terms = [
            (Slot::X, ct * a / (tau * cf)),
            (Slot::X0, ct),
            (Slot::X0Uncond, -ct * a / tau),
            (Slot::Hist(0), -ct * g),
        ];
        let n = if g == 0.0 { 3 } else { 4 };
        s.combo(
            &Combo::new(
                Slot::X,
                &terms[..n],
                Keep::LinUncond {
                    ex: 1.0 / from.sigma,
                    ed: -1.0 / tau,
                },
            ),
            None,
        )?;
        Ok(Outcome::done().keep_history(from))
    }
}
