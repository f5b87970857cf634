//! ComfyUI's `cfgpp_ud10_ab`: CFG++ Euler with unconditional-history extrapolation and an
//! Adams–Bashforth blend.

use ndarray::{Dimension, Zip};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::state::{Core, buf};
use crate::sampler::{Method, Outcome, Step};

/// ComfyUI's `cfgpp_ud10_ab`[^cfgpp] (its `_sample_cfgpp_history` with history weight 1/4,
/// unconditional-history weight 1/10, the last step extrapolated to zero): in the sigma-space
/// coordinates `y = x / c`, `tau` of ComfyUI's sigmas, with `dt = tau' - tau`,
///
/// ```text
/// e  = eps_u + w (eps_u - eps_u,prev),   eps_u = (x - alpha x0_u) / sigma,   w = dt / (10 (tau - tau_prev))
/// E  = alpha_c' x0_g + tau' e - y,       d = E / dt
/// y' = y + E + (c0 d + c1 d_prev - E) / 4,   c0 = dt + dt^2 / (2 dt_prev),  c1 = -dt^2 / (2 dt_prev)
/// ```
///
/// (`alpha_c' = alpha' / c'` the model's alpha in those coordinates; the first step is `y + E`,
/// an Euler CFG++ step) and the step to the clean level extrapolates the guided estimates
/// linearly to sigma 0: `x' = x0_g - tau (x0_g - x0_g,prev) / (tau - tau_prev)`. No noise; one
/// model call per step; from pure noise (`alpha = 0`) an Euler step. ComfyUI evaluates `c0`, `c1` by quadrature; the closed form here differs
/// by at most 2e-16.
///
/// At guidance scale 1 ComfyUI skips the unconditional branch for this sampler (its CFG-1
/// optimisation) and renoises with the conditional one; a guidance wrapper here evaluates both
/// at any scale: pass the plain model for that case.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{CfgPpUd10Ab, Guidance};
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
/// let mut guided = Guidance::new(
///     GaussianMixture::gaussian(vec![1.0], vec![0.1])?,
///     GaussianMixture::gaussian(vec![0.0], vec![1.0])?,
///     1.5,
/// );
/// let x: ndarray::Array2<f64> = grid.initial_sample((64, 1), &mut SeededNoise::new(0))?;
/// let out = CfgPpUd10Ab::new().sample(&mut guided, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.iter().all(|v| v.is_finite()));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// [^cfgpp]: H. Chung et al., *CFG++*, arXiv:2406.08070; ComfyUI PR #15951.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CfgPpUd10Ab;

impl CfgPpUd10Ab {
    /// ComfyUI's `cfgpp_ud10_ab`.
    pub fn new() -> Self {
        CfgPpUd10Ab
    }
}

/// Working buffers: the previous unconditional noise estimate, derivative and guided x0.
const E_PREV: usize = 0;
const D_PREV: usize = 1;
const X0_PREV: usize = 2;

impl Method for CfgPpUd10Ab {
    /// The previous step's `tau`, once a step was taken.
    type Vars = Option<f64>;

    fn check(&self) -> Result<()> {
        Ok(())
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, Option<f64>>,
    ) -> Result<Outcome> {
        let (from, to, c) = (s.from(), s.to(), s.coords());
        if c.degenerate(&from) {
            // From pure noise (alpha = 0, where eps_u = x / sigma): an Euler step, no history.
            let terms = [(Slot::X, to.sigma / from.sigma), (Slot::X0, to.alpha)];
            s.combo(&Combo::new(Slot::X, &terms, Keep::Raw), None)?;
            return Ok(Outcome::done());
        }
        let (cf, ct) = (c.c(&from), c.c(&to));
        let (tau, tau_next) = (c.tau(&from), c.tau(&to));
        let dt = tau_next - tau;
        let prev = *s.vars;
        let f = F::cast;
        // e_u = (x - alpha x0_u) / sigma; its extrapolation weight.
        let (ka, ks) = (f(from.alpha / from.sigma), f(1.0 / from.sigma));
        let w = prev.map_or(0.0, |tp| 0.1 * dt / (tau - tp));
        let alpha_t = if to.is_clean() { 1.0 } else { to.alpha / ct };
        let (ax, tn, icf, idt) = (f(alpha_t), f(tau_next), f(1.0 / cf), f(1.0 / dt));
        let (kw, k1) = (f(w), f(1.0 + w));
        // The blend: y' = y + E + (c0 d + c1 d_prev - E) / 4.
        let (b_e, b_d) = match prev {
            Some(tp) => {
                let hp = tau - tp;
                let (c0, c1) = (dt + dt * dt / (2.0 * hp), -dt * dt / (2.0 * hp));
                (f(0.75 + 0.25 * c0 / dt), f(0.25 * c1))
            }
            None => (F::one(), F::zero()),
        };
        let last = to.is_clean() && prev.is_some();
        let slope = prev.map_or(0.0, |tp| tau / (tau - tp));
        let (ks0, ks1) = (f(1.0 - slope), f(slope));
        let (cx, co) = s.conv();
        let (ucx, uco) = (s.est.ucx, s.est.uco);
        let first = prev.is_none();
        let ct_f = f(ct);
        let Core { x, bufs, .. } = &mut *s.core;
        for i in [E_PREV, D_PREV, X0_PREV] {
            buf(&mut bufs[i], x);
        }
        let [Some(ep), Some(dp), Some(gp)] = bufs else {
            return Err(Error::Finished);
        };
        let out = &s.est.out;
        let unc = s.est.uncond.as_ref().unwrap_or(out);
        let (ucx, uco) = if s.est.uncond.is_some() {
            (ucx, uco)
        } else {
            (cx, co)
        };
        let ok = fold_finite!(
            seq;
            Zip::from(&mut *x).and(out).and(unc).and(ep).and(dp).and(gp),
            |x, &o, &u, ep, dp, gp| {
                let xv = *x;
                let g = cx * xv + co * o;
                let un = ucx * xv + uco * u;
                let e_cur = ks * xv - ka * un;
                let e = if first { e_cur } else { k1 * e_cur - kw * *ep };
                let y = xv * icf;
                let big_e = ax * g + tn * e - y;
                let d = big_e * idt;
                let y_next = if last {
                    ks0 * g + ks1 * *gp
                } else {
                    y + b_e * big_e + b_d * *dp
                };
                *x = ct_f * y_next;
                *ep = e_cur;
                *dp = d;
                *gp = g;
                *x
            }
        );
        s.check(ok)?;
        *s.vars = Some(tau);
        Ok(Outcome::done())
    }
}
