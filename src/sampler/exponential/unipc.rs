//! UniPC (Zhao et al. 2023): unified predictor–corrector, data-prediction form.

use ndarray::{Dimension, Zip};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::sigma_space;
use crate::sampler::core::options::{setters, x0_builders};
use crate::sampler::core::state::buf;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Core, Method, Outcome, Step};

/// The `B(h)` of UniPC (diffusers' `solver_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UniPcVariant {
    /// `B(h) = h` (UniPC-bh1; recommended by the authors for unconditional sampling).
    Bh1,
    /// `B(h) = e^h - 1` (UniPC-bh2; diffusers' default, recommended for guided sampling).
    #[default]
    Bh2,
}

/// UniPC[^unipc], diffusers' `UniPCMultistepScheduler` (data prediction, `predict_x0 = True`):
/// a multistep predictor (UniP) of order `p` and, after each model call, a corrector (UniC)
/// that re-uses that call to raise the order of the previous step to `p + 1` at no extra cost.
///
/// With `lambda = ln(alpha / sigma)`, `h = lambda' - lambda`, the x0 estimates `m_0` (now) and
/// `m_k` (earlier, at `lambda_k`), `r_k = (lambda_k - lambda) / h` and `D_k = (m_k - m_0) / r_k`:
///
/// ```text
/// UniP:  x' = (sigma'/sigma) x - alpha' (e^{-h} - 1) m_0 - alpha' B(h) sum_k rho_k D_k
/// ```
///
/// where the `rho` solve the small Vandermonde system `R rho = b` of the paper (for `p = 2`,
/// `rho = 1/2`). UniC applies the same formula to the previous step with the new model output
/// as one more point. Order selection follows diffusers (warm-up; with `lower_order_final`,
/// order `min(p, steps left)`); a step to the clean level is first order. After a step from the
/// pure-noise level (zero terminal SNR, rectified flow) the bh2 corrector takes its finite limit
/// and the bh1 corrector (whose `B(h) = h` is infinite there) is skipped.
///
/// | option | default (diffusers) | |
/// |---|---|---|
/// | [`order`](Self::order) | 2 | predictor order 1–3 |
/// | [`variant`](Self::variant) | `Bh2` | |
/// | [`corrector`](Self::corrector) | on | UniC after every model call |
/// | [`disable_corrector`](Self::disable_corrector) | none | steps whose output is not corrected |
/// | [`lower_order_final`](Self::lower_order_final) | true | |
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::UniPc;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(10, Spacing::DpmLinspace)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = UniPc::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for an order outside 1–3; during a run, the errors of
/// [`Sampler::sample`](crate::Sampler::sample).
///
/// [^unipc]: W. Zhao, L. Bai, Y. Rao, J. Zhou, J. Lu, *UniPC: A Unified Predictor-Corrector
///     Framework for Fast Sampling of Diffusion Models*, NeurIPS 2023, arXiv:2302.04867.
#[derive(Clone, Debug, PartialEq)]
pub struct UniPc {
    order: usize,
    variant: UniPcVariant,
    corrector: bool,
    disabled: Vec<usize>,
    lower_order_final: bool,
    sigma_space: bool,
    noise_form: bool,
    policy: X0Policy,
}

impl Default for UniPc {
    fn default() -> Self {
        UniPc {
            order: 2,
            variant: UniPcVariant::Bh2,
            corrector: true,
            disabled: Vec::new(),
            lower_order_final: true,
            sigma_space: false,
            noise_form: false,
            policy: X0Policy::default(),
        }
    }
}

impl UniPc {
    /// UniPC-2 (bh2, corrector on), diffusers' defaults.
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// Predictor order, 1 to 3.
        order: usize,
        /// `B(h)`.
        variant: UniPcVariant,
        /// Turns the corrector on or off (off: UniP alone, a multistep exponential integrator).
        corrector: bool,
    }

    /// Steps whose model output is not used to correct them (diffusers' `disable_corrector`;
    /// the authors suggest `[0]` for guided sampling at large scales).
    pub fn disable_corrector(mut self, steps: &[usize]) -> Self {
        self.disabled = steps.to_vec();
        self
    }

    setters! {
        /// Lower the order on the last steps (`min(order, steps left)`).
        lower_order_final: bool,
        /// On flow grids, compute the steps in the sigma-space coordinates (`y = x`, `tau =
        /// sigma`) as variance-exploding levels, as ComfyUI's `uni_pc` does for flow models (it
        /// converts every sigma to a VP level with `alpha = 1 / sqrt(1 + sigma^2)`). No effect
        /// on VP and VE grids. Off by default.
        sigma_space: bool,
    }

    /// `false` for UniPC's noise-prediction form (diffusers' `predict_x0 = False`): the
    /// multistep history holds noise estimates, the update is the exponential integrator of
    /// the noise form (`x' = (alpha'/alpha) x - sigma' (e^h - 1) eps + ...`). Clipping and
    /// thresholding do not apply there (diffusers ignores them; here asking for both is an
    /// [`Error::InvalidParameter`]). A step to the clean level
    /// takes the first-order limit `x0 = (x - sigma eps) / alpha` (diffusers computes `0 * inf`
    /// and returns NaN there); a step from a pure-noise level (`alpha = 0`) is an
    /// [`Error::Undetermined`]. Default `true` (the data-prediction form).
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let grid = s.grid(20, Spacing::DpmLinspace)?.with_final(FinalLevel::FirstTimestep);
    /// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
    /// let x = grid.initial_sample::<f64, _, _, _>((256, 1), &mut SeededNoise::new(0))?;
    /// let a = UniPc::new().sample(&mut model, x.clone(), &grid, &mut SeededNoise::new(1))?;
    /// let b = UniPc::new().predict_x0(false).sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
    /// // Two forms of the same third-order solver: close at 20 steps.
    /// assert!((&a - &b).iter().all(|d| d.abs() < 1e-2));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    pub fn predict_x0(mut self, yes: bool) -> Self {
        self.noise_form = !yes;
        self
    }

    x0_builders!();

    /// The predictor order of step `k` of `end` (diffusers: warm-up, then with
    /// `lower_order_final` at most the steps left), before the zero-SNR and clean-level guards.
    fn predictor_order(&self, k: usize, end: usize) -> usize {
        let o = if self.lower_order_final {
            self.order.min(end - k)
        } else {
            self.order
        };
        o.min(k + 1)
    }
}

/// Solves `a x = b` for `n <= 3` by Gaussian elimination with partial pivoting.
#[allow(
    clippy::needless_range_loop,
    reason = "index arithmetic over rows and columns"
)]
fn solve(mut a: [[f64; 3]; 3], mut b: [f64; 3], n: usize) -> [f64; 3] {
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, piv);
        b.swap(col, piv);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = [0.0; 3];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// One UniP / UniC update from `s0` to `t` as coefficients:
/// `x' = kx x_s0 + k0 m_0 + sum_k kh[k] m_k (+ knew m_new for UniC)`.
/// `prev` are the levels of `m_1, m_2`; `with_new` adds the corrector's extra point at `t`.
#[allow(clippy::too_many_arguments)]
fn unipc_coefs(
    s0: &NoiseLevel,
    t: &NoiseLevel,
    prev: &[NoiseLevel],
    order: usize,
    variant: UniPcVariant,
    with_new: bool,
    noise_form: bool,
) -> (f64, f64, [f64; 2], f64) {
    if noise_form && t.is_clean() {
        // The first-order limit at h = inf: x0 = (x - sigma eps) / alpha.
        return (1.0 / s0.alpha, -s0.sigma / s0.alpha, [0.0; 2], 0.0);
    }
    let h = t.lambda() - s0.lambda();
    let hh = if noise_form { h } else { -h };
    let h_phi_1 = hh.exp_m1();
    let (kx, m) = if noise_form {
        (t.alpha / s0.alpha, -t.sigma)
    } else {
        (if t.is_clean() { 0.0 } else { t.sigma / s0.sigma }, -t.alpha)
    };
    let mut k0 = m * h_phi_1;
    let mut kh = [0.0; 2];
    let mut knew = 0.0;
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    // rks: previous points, then 1 (the point at t for the corrector / the normalisation).
    let mut rks = [1.0; 3];
    for k in 1..order {
        rks[k - 1] = (prev[k - 1].lambda() - s0.lambda()) / h;
    }
    rks[order - 1] = 1.0;
    let mut r = [[0.0; 3]; 3];
    let mut b = [0.0; 3];
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    for i in 1..=order {
        for (j, rk) in rks.iter().enumerate().take(order) {
            r[i - 1][j] = rk.powi(i as i32 - 1);
        }
        b[i - 1] = h_phi_k * factorial / b_h;
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    let rhos: [f64; 3] = if with_new {
        if order == 1 {
            [0.5, 0.0, 0.0]
        } else {
            solve(r, b, order)
        }
    } else if order == 1 {
        [0.0; 3]
    } else if order == 2 {
        [0.5, 0.0, 0.0]
    } else {
        solve(r, b, order - 1)
    };
    // Sum_k rho_k (m_k - m_0) / r_k over the previous points ...
    for k in 1..order {
        let c = m * b_h * rhos[k - 1] / rks[k - 1];
        kh[k - 1] += c;
        k0 -= c;
    }
    // ... and for UniC the new point: rho_last (m_new - m_0).
    if with_new {
        let c = m * b_h * rhos[order - 1];
        knew += c;
        k0 -= c;
    }
    (kx, k0, kh, knew)
}

/// `(x_corr, x_next)` for one element: the corrector (coefficients `c`, over `last`, `d`, the
/// history) then the predictor (`p`, over `x_corr`, `d`, the history).
#[derive(Clone, Copy)]
struct Pc<F> {
    correct: bool,
    c_last: F,
    c_d: F,
    c_h: [F; 3],
    p_x: F,
    p_d: F,
    p_h: [F; 2],
}

macro_rules! unipc_pass {
    ($mode:ident; $x:expr, $last:expr, $o:expr, $conv:expr, $clamp:expr, $k:expr; $($h:ident: $j:tt),*) => {{
        let (cx, co) = $conv;
        let k: Pc<F> = $k;
        let clamp = $clamp;
        // The corrector's presence is fixed for the pass: two specialised loops.
        if k.correct {
            fold_finite!(clamp = clamp; $mode; Zip::from($x).and($last).and($o)$(.and($h))*, |x, last, o, $($h),*| {
                let raw = cx * *x + co * *o;
                let d = clamp.apply(raw);
                *o = clamp.keep(d, raw);
                let xc = k.c_last * *last + k.c_d * d $(+ k.c_h[$j] * *$h)*;
                *last = xc;
                let hs = [$(*$h,)* F::zero(), F::zero()];
                *x = k.p_x * xc + k.p_d * d + k.p_h[0] * hs[0] + k.p_h[1] * hs[1];
                // clamp() maps an infinite raw output to a bound: probe it too.
                clamp.keep(*x, raw)
            })
        } else {
            fold_finite!(clamp = clamp; $mode; Zip::from($x).and($last).and($o)$(.and($h))*, |x, last, o, $($h),*| {
                let raw = cx * *x + co * *o;
                let d = clamp.apply(raw);
                *o = clamp.keep(d, raw);
                *last = *x;
                let hs = [$(*$h,)* F::zero(), F::zero()];
                *x = k.p_x * *x + k.p_d * d + k.p_h[0] * hs[0] + k.p_h[1] * hs[1];
                clamp.keep(*x, raw)
            })
        }
    }};
}

/// The sample at the previous step's start (the corrector's starting point).
const LAST: usize = 0;

impl Method for UniPc {
    type Vars = ();

    fn check(&self) -> Result<()> {
        if !(1..=3).contains(&self.order) {
            return Err(Error::InvalidParameter {
                name: "order",
                value: self.order as f64,
                reason: "UniPC supports orders 1, 2 and 3",
            });
        }
        if self.noise_form && (self.policy.clip.is_some() || self.policy.threshold.is_some()) {
            return Err(Error::InvalidParameter {
                name: "predict_x0",
                value: 0.0,
                reason: "UniPC's noise form has no x0 estimate to clip or threshold",
            });
        }
        if self.noise_form && self.sigma_space {
            return Err(Error::InvalidParameter {
                name: "predict_x0",
                value: 0.0,
                reason: "UniPC's noise form has no sigma-space (flow) variant",
            });
        }
        self.policy.validate()
    }

    fn history(&self) -> usize {
        3
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let family = if self.sigma_space {
            s.walk().family()
        } else {
            crate::grid::ScheduleFamily::Vp
        };
        let v = |l: &NoiseLevel| sigma_space(l, family);
        let (step, (sl, k_sl), (t, k_t)) = (s.step(), v(&s.from()), v(&s.to()));
        let end = s.walk().step() + s.walk().remaining();
        let hist = &s.core.hist;
        let hl = |i: usize| v(&hist.level(i));
        let f = F::cast;
        let mut pc = Pc {
            correct: false,
            c_last: F::zero(),
            c_d: F::zero(),
            c_h: [F::zero(); 3],
            p_x: F::zero(),
            p_d: F::zero(),
            p_h: [F::zero(); 2],
        };
        // Corrector of the previous step (from the newest history level to `sl`). After a step
        // from the pure-noise level (lambda = -inf) the bh2 corrector has a finite limit; bh1's
        // B(h) = h does not, so that correction is skipped.
        let mut needed = 0;
        let finite = hist.len() > 0 && (hl(0).0.alpha > 0.0 || self.variant == UniPcVariant::Bh2);
        if self.corrector && step > 0 && !self.disabled.contains(&(step - 1)) && finite {
            let (s0, k_s0) = hl(0);
            let mut order = self.predictor_order(step - 1, end).min(hist.len());
            while order > 1 && hl(order - 1).0.alpha == 0.0 {
                order -= 1;
            }
            let prev = [1, 2].map(|i| hl(i.min(hist.len() - 1)).0);
            let (kx, k0, kh, knew) = unipc_coefs(&s0, &sl, &prev, order, self.variant, true, self.noise_form);
            needed = order;
            pc.correct = true;
            pc.c_last = f(kx * k_sl / k_s0);
            pc.c_d = f(knew * k_sl);
            pc.c_h = [f(k0 * k_sl), f(kh[0] * k_sl), f(kh[1] * k_sl)];
        }
        // The predictor for this step.
        let mut order = self.predictor_order(step, end);
        if t.is_clean() || sl.alpha == 0.0 {
            order = 1;
        }
        while order > 1 && hl(order - 2).0.alpha == 0.0 {
            order -= 1;
        }
        let prev = [0, 1].map(|i| if hist.len() > i { hl(i).0 } else { sl });
        let (kx, k0, kh, _) = unipc_coefs(&sl, &t, &prev, order, self.variant, false, self.noise_form);
        pc.p_x = f(kx * k_t / k_sl);
        pc.p_d = f(k0 * k_t);
        pc.p_h = [f(kh[0] * k_t), f(kh[1] * k_t)];
        let n = needed.max(order - 1).min(hist.len());

        let (clamp, conv) = if self.noise_form {
            // eps = (x - alpha x0) / sigma from the x0 conversion, at the call's own level.
            let from = s.from();
            if from.alpha == 0.0 {
                return Err(Error::Undetermined {
                    step,
                    level: from,
                    prediction: crate::denoiser::Prediction::Epsilon,
                    what: "x (UniPC's noise form from a pure-noise level)",
                });
            }
            let (cx, co) = s.conv();
            let (a, sg) = (F::cast(from.alpha), F::cast(from.sigma));
            (
                crate::sampler::core::x0::Clamp::none(),
                ((F::one() - a * cx) / sg, -(a * co) / sg),
            )
        } else {
            (s.clamp(&self.policy)?, s.conv())
        };
        let Core { x, bufs, hist, .. } = &mut *s.core;
        let last = buf(&mut bufs[LAST], x);
        let o = &mut s.est.out;
        let ok = match n {
            0 => unipc_pass!(par; x, last, o, conv, clamp, pc;),
            1 => {
                let h0 = hist.array(0);
                unipc_pass!(par; x, last, o, conv, clamp, pc; h0: 0)
            }
            2 => {
                let (h0, h1) = (hist.array(0), hist.array(1));
                unipc_pass!(par; x, last, o, conv, clamp, pc; h0: 0, h1: 1)
            }
            _ => {
                let (h0, h1, h2) = (hist.array(0), hist.array(1), hist.array(2));
                unipc_pass!(seq; x, last, o, conv, clamp, pc; h0: 0, h1: 1, h2: 2)
            }
        };
        s.check(ok)?;
        Ok(Outcome::done().keep_history(s.from()))
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    #[test]
    fn solve_small_systems() {
        let a = [[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]];
        let x = solve(a, [3.0, 5.0, 5.0], 3);
        for (i, row) in a.iter().enumerate() {
            let got: f64 = row.iter().zip(&x).map(|(r, v)| r * v).sum();
            assert!((got - [3.0, 5.0, 5.0][i]).abs() < 1e-12);
        }
    }

    /// UniP-1 is DPM-Solver++(1) = DDIM.
    #[test]
    fn first_order_predictor_is_ddim() {
        let s = NoiseLevel::from_alpha_bar(0.0, 0.05);
        let t = NoiseLevel::from_alpha_bar(0.0, 0.2);
        let (kx, k0, _, _) = unipc_coefs(&s, &t, &[], 1, UniPcVariant::Bh2, false, false);
        assert!((kx - t.sigma / s.sigma).abs() < 1e-14);
        assert!((k0 - (t.alpha - t.sigma * s.alpha / s.sigma)).abs() < 1e-14);
    }
}
