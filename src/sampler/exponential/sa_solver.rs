//! SA-Solver: the stochastic Adams predictor–corrector (ComfyUI's `sa_solver`, `sa_solver_pece`).

use ndarray::Dimension;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::Coords;
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::options::setters;
use crate::sampler::{Input, Method, Outcome, Step};

/// SA-Solver[^sa] (ComfyUI's `sa_solver` and, with [`pece`](Self::pece), `sa_solver_pece`):
/// stochastic Adams methods in data prediction and `lambda = ln(alpha / sigma)`, a predictor of
/// order up to 3 and a corrector of order up to 4 that reuse the model call of the predicted
/// point (one call per step; PECE evaluates the corrected point again, two calls). With the
/// stochasticity `tau`, the predictor from `lambda_i` to `lambda_{i+1}`, `h = lambda_{i+1} -
/// lambda_i`, is
///
/// ```text
/// x_pred = (sigma_{i+1} / sigma_i) e^{-tau^2 h} x_i + sum_k b_k x0_k + sigma_{i+1} sqrt(1 - e^{-2 tau^2 h}) s_noise z
/// ```
///
/// with `b_k = alpha_{i+1} integral e^{(1 + tau^2)(l - lambda_{i+1})} (1 + tau^2) L_k(l) dl`
/// over the Lagrange basis `L_k` of the last x0 estimates in `lambda`; the corrector is the same
/// integral with the new point included, applied to the previous corrected sample. `tau` is
/// [`tau`](Self::tau) where the sigma-space sigma of the next level lies in
/// [`tau_interval`](Self::tau_interval), 0 elsewhere (ComfyUI: 1 between its 20% and 80%
/// sampling points, which [`Preset`](crate::Preset) sets from the model sampling; the default
/// here is the whole grid). On grids to the clean level the orders drop near the end and the
/// last step returns the x0 estimate. Written in `(alpha, sigma)`: VP, VE and flow grids alike
/// (ComfyUI's half-log-SNR version).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::SaSolver;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = SaSolver::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for orders outside 1–3 (predictor) and 1–4 (corrector), a
/// negative or non-finite `tau` or `s_noise`, or an empty interval.
///
/// [^sa]: S. Xue, M. Yi, W. Luo, S. Zhang, J. Sun, Z. Li, Z.-M. Ma, *SA-Solver: Stochastic
///     Adams Solver for Fast Sampling of Diffusion Models*, NeurIPS 2023, arXiv:2309.05019.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SaSolver {
    predictor_order: usize,
    corrector_order: usize,
    pece: bool,
    simple_order_2: bool,
    tau: f64,
    tau_interval: (f64, f64),
    tau_timesteps: Option<(f64, f64)>,
    lower_order_final: bool,
    s_noise: f64,
}

impl Default for SaSolver {
    fn default() -> Self {
        SaSolver {
            predictor_order: 3,
            corrector_order: 4,
            pece: false,
            simple_order_2: false,
            tau: 1.0,
            tau_interval: (f64::INFINITY, 0.0),
            tau_timesteps: None,
            lower_order_final: false,
            s_noise: 1.0,
        }
    }
}

impl SaSolver {
    /// Predictor order 3, corrector order 4, `tau = 1` on the whole grid, `s_noise = 1`.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The predictor order, 1 to 3.
        predictor_order: usize,
        /// The corrector order, 1 to 4.
        corrector_order: usize,
        /// Evaluate the corrected sample again (PECE: two model calls per step).
        pece: bool,
        /// The paper's simplified order-2 coefficients where two points are used.
        simple_order_2: bool,
        /// The stochasticity inside the interval (0 is the ODE).
        tau: f64,
        /// Multiplies the added noise.
        s_noise: f64,
    }

    /// `tau` applies where the sigma-space sigma (`sigma / alpha` on VP grids, the flow sigma
    /// on flow grids) of the next level is in `[low, high]`.
    pub fn tau_interval(mut self, high: f64, low: f64) -> Self {
        self.tau_interval = (high, low);
        self
    }

    /// diffusers' rule instead of [`tau_interval`](Self::tau_interval): `tau` applies to the
    /// step (predictor, and the corrector that later corrects it) leaving a level whose
    /// timestep `t` lies in `[low, high]` (diffusers' default `tau_func`: 1 for `200 <= t <=
    /// 800`).
    pub fn tau_timestep_range(mut self, low: f64, high: f64) -> Self {
        self.tau_timesteps = Some((low, high));
        self
    }

    /// diffusers' `lower_order_final` on grids that do not end at the clean level: step `i` of
    /// `N` uses a predictor of order at most `N - i` and a corrector of order at most
    /// `N - i + 2` (on grids to the clean level the orders always drop near the end).
    pub fn lower_order_final(mut self, yes: bool) -> Self {
        self.lower_order_final = yes;
        self
    }

    fn tau_at(&self, l: &NoiseLevel, c: Coords) -> f64 {
        let s = c.tau(l);
        if self.tau > 0.0 && s <= self.tau_interval.0 && s >= self.tau_interval.1 {
            self.tau
        } else {
            0.0
        }
    }
}

/// Per-run scalars: the previous predictor's `tau`, `h` and noise coefficient.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaVars {
    tau: f64,
    h: f64,
    noise: f64,
}

/// The corrected sample and the previous predictor's noise.
const XC: usize = 1;
const NZ: usize = 2;

/// Solves `a x = b` (`n <= 4`) by Gaussian elimination with partial pivoting.
fn solve(mut a: [[f64; 4]; 4], mut b: [f64; 4], n: usize) -> [f64; 4] {
    for col in 0..n {
        let p = (col..n).fold(col, |p, r| if a[r][col].abs() > a[p][col].abs() { r } else { p });
        a.swap(col, p);
        b.swap(col, p);
        for r in col + 1..n {
            let f = a[r][col] / a[col][col];
            let pivot = a[col];
            for (v, &pv) in a[r][col..n].iter_mut().zip(&pivot[col..n]) {
                *v -= f * pv;
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = [0.0; 4];
    for r in (0..n).rev() {
        let mut acc = b[r];
        for k in r + 1..n {
            acc -= a[r][k] * x[k];
        }
        x[r] = acc / a[r][r];
    }
    x
}

/// The SA-Solver coefficients over the x0 estimates at `lambdas` (oldest first) for a step
/// from `ls` to `lt` with stochasticity `tau`, scaled by `alpha_t` (ComfyUI's
/// `compute_stochastic_adams_b_coeffs`, the same recursion and Vandermonde solve).
pub(crate) fn sa_coefs(
    alpha_t: f64,
    lambdas: &[f64],
    ls: f64,
    lt: f64,
    tau: f64,
    simple: bool,
    corrector: bool,
) -> [f64; 4] {
    let k = lambdas.len();
    let tau_mul = 1.0 + tau * tau;
    let h = lt - ls;
    if simple && k == 2 {
        let e = -(-h * tau_mul).exp_m1();
        return if corrector {
            let b1 = alpha_t * 0.5 * tau_mul * h;
            [alpha_t * e - b1, b1, 0.0, 0.0]
        } else {
            let b2 = alpha_t * 0.5 * tau_mul * h * h / (lambdas[0] - ls);
            [b2, alpha_t * e - b2, 0.0, 0.0]
        };
    }
    // (1 + tau^2) integral_s^t e^{(1 + tau^2)(x - t)} x^p dx by integration by parts.
    let decay = (-tau_mul * h).exp();
    let prod: [f64; 4] = std::array::from_fn(|p| lt.powi(p as i32) - ls.powi(p as i32) * decay);
    let mut m = [0.0; 4];
    let mut fact = [1.0; 5];
    for p in 1..5 {
        fact[p] = fact[p - 1] * p as f64;
    }
    for (p, mp) in m.iter_mut().enumerate().take(k) {
        for q in 0..=p {
            let sign = if (p - q) % 2 == 0 { 1.0 } else { -1.0 };
            *mp += sign * fact[p] / fact[q] * tau_mul.powi(-((p - q) as i32)) * prod[q];
        }
    }
    let mut v = [[0.0; 4]; 4];
    for (p, row) in v.iter_mut().enumerate().take(k) {
        for (j, vj) in row.iter_mut().enumerate().take(k) {
            *vj = lambdas[j].powi(p as i32);
        }
    }
    solve(v, m, k).map(|c| alpha_t * c)
}

impl Method for SaSolver {
    type Vars = SaVars;

    fn check(&self) -> Result<()> {
        let bad = |name, value: f64, reason| Err(Error::InvalidParameter { name, value, reason });
        if !(1..=3).contains(&self.predictor_order) {
            return bad(
                "predictor_order",
                self.predictor_order as f64,
                "SA-Solver's predictor has orders 1 to 3",
            );
        }
        if !(1..=4).contains(&self.corrector_order) {
            return bad(
                "corrector_order",
                self.corrector_order as f64,
                "SA-Solver's corrector has orders 1 to 4",
            );
        }
        for (name, v) in [("tau", self.tau), ("s_noise", self.s_noise)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, v, "must be finite and non-negative");
            }
        }
        if self.tau_interval.0.is_nan()
            || self.tau_interval.1.is_nan()
            || self.tau_interval.0 < self.tau_interval.1
        {
            return bad("tau_interval", self.tau_interval.1, "needs high >= low");
        }
        if let Some((lo, hi)) = self.tau_timesteps
            && (lo.is_nan() || hi.is_nan() || hi < lo)
        {
            return bad("tau_timestep_range", lo, "needs low <= high");
        }
        Ok(())
    }

    fn calls(&self, grid: &crate::Grid) -> usize {
        let n = crate::sampler::core::walk::Walk::effective_steps(grid);
        if !self.pece || n < 2 {
            return n;
        }
        // Every step but the first evaluates its corrected sample again.
        2 * n - 1
    }

    fn history(&self) -> usize {
        // The corrector needs the previous level even at order 1.
        self.predictor_order.max(self.corrector_order).max(2) - 1
    }

    fn held(&self) -> usize {
        self.history()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, SaVars>,
    ) -> Result<Outcome> {
        let (from, to, c) = (s.from(), s.to(), s.coords());
        let w = s.walk();
        let (i, steps) = (w.step(), w.step() + w.remaining());
        let to_clean_grid = w.final_level().is_clean();
        let len = s.core.hist.len() + 1;
        // lambda of this level and the history, newest first; `oldest_first(k)` the last k.
        let mut lams = [from.lambda(); 4];
        for (j, l) in lams.iter_mut().enumerate().skip(1).take(len - 1) {
            *l = s.core.hist.level(j - 1).lambda();
        }
        let oldest_first =
            |k: usize| -> [f64; 4] { std::array::from_fn(|j| if j < k { lams[k - 1 - j] } else { 0.0 }) };
        let mut p_used = self.predictor_order.min(len);
        let mut c_used = if i == 0 || s.core.hist.len() == 0 || (to.is_clean() && !self.pece) {
            0
        } else {
            self.corrector_order.min(len)
        };
        if to_clean_grid {
            p_used = p_used.min(steps.saturating_sub(1 + i));
            c_used = c_used.min(steps - i);
        } else if self.lower_order_final {
            p_used = p_used.min(steps - i);
            c_used = c_used.min(steps - i + 2);
        }
        if s.stage() == 0 && c_used > 0 && from.alpha > 0.0 {
            // Corrector: x_c = (sigma_i / sigma_{i-1}) e^{-tau^2 h} x_c + sum b x0 + noise.
            let prev = s.core.hist.level(0);
            let v = *s.vars;
            let lambdas = oldest_first(c_used);
            let b = sa_coefs(
                from.alpha,
                &lambdas[..c_used],
                prev.lambda(),
                from.lambda(),
                v.tau,
                self.simple_order_2,
                true,
            );
            let mut terms = [
                (
                    Slot::Buf(XC),
                    from.sigma / prev.sigma * (-(v.tau * v.tau) * v.h).exp(),
                ),
                (Slot::Buf(NZ), v.noise),
                (Slot::X0, b[c_used - 1]),
                (Slot::Hist(0), 0.0),
                (Slot::Hist(1), 0.0),
                (Slot::Hist(2), 0.0),
            ];
            for k in 1..c_used {
                terms[2 + k].1 = b[c_used - 1 - k];
            }
            s.combo(&Combo::new(Slot::Buf(XC), &terms, Keep::X0), None)?;
            if self.pece {
                return Ok(Outcome::stage(from, Input::Buf(XC)));
            }
        } else if s.stage() == 0 {
            let terms = [(Slot::X, 1.0)];
            s.combo(&Combo::new(Slot::Buf(XC), &terms, Keep::Raw), None)?;
        }
        // Predictor from the corrected sample.
        if to.is_clean() || p_used == 0 || from.alpha == 0.0 {
            // The DDIM step from x_c (x0 itself on the last step).
            let r = to.sigma / from.sigma;
            let terms = [(Slot::Buf(XC), r), (Slot::X0, to.alpha - from.alpha * r)];
            s.combo(&Combo::new(Slot::X, &terms, Keep::X0), None)?;
            *s.vars = SaVars {
                tau: 0.0,
                h: to.lambda() - from.lambda(),
                noise: 0.0,
            };
            return Ok(Outcome::done().keep_history(from));
        }
        let tau = match self.tau_timesteps {
            Some((lo, hi)) if from.t >= lo && from.t <= hi => self.tau,
            Some(_) => 0.0,
            None => self.tau_at(&to, c),
        };
        let h = to.lambda() - from.lambda();
        let lambdas = oldest_first(p_used);
        let b = sa_coefs(
            to.alpha,
            &lambdas[..p_used],
            from.lambda(),
            to.lambda(),
            tau,
            self.simple_order_2,
            false,
        );
        let kz = if tau > 0.0 && self.s_noise > 0.0 {
            to.sigma * (-(-2.0 * tau * tau * h).exp_m1()).max(0.0).sqrt() * self.s_noise
        } else {
            0.0
        };
        let mut terms = [
            (Slot::Buf(XC), to.sigma / from.sigma * (-(tau * tau) * h).exp()),
            (Slot::Noise, kz),
            (Slot::X0, b[p_used - 1]),
            (Slot::Hist(0), 0.0),
            (Slot::Hist(1), 0.0),
        ];
        for k in 1..p_used {
            terms[2 + k].1 = b[p_used - 1 - k];
        }
        s.combo(
            &Combo::new(Slot::X, &terms, Keep::X0),
            (kz != 0.0).then_some((from, to)),
        )?;
        if kz != 0.0 {
            s.stash_noise(NZ);
        }
        *s.vars = SaVars { tau, h, noise: kz };
        Ok(Outcome::done().keep_history(from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One point: the DDIM coefficient alpha_t (1 - e^{-(1 + tau^2) h}).
    #[test]
    fn first_order_coefficient() {
        let b = sa_coefs(0.7, &[1.2], 1.2, 1.9, 0.5, false, false);
        let want = 0.7 * -(-(1.25f64) * 0.7).exp_m1();
        assert!((b[0] - want).abs() < 1e-14);
    }

    /// The coefficients integrate constants exactly: their sum is the first-order coefficient.
    #[test]
    fn coefficients_sum_to_the_first_order_one() {
        for k in 2..=4 {
            let lambdas: Vec<f64> = (0..k).map(|j| -1.0 + 0.4 * j as f64).collect();
            let ls = lambdas[k - 1];
            let b = sa_coefs(0.8, &lambdas, ls, ls + 0.5, 0.3, false, false);
            let one = sa_coefs(0.8, &[ls], ls, ls + 0.5, 0.3, false, false)[0];
            let sum: f64 = b[..k].iter().sum();
            assert!((sum - one).abs() < 1e-12, "order {k}: {sum} vs {one}");
        }
    }
}
