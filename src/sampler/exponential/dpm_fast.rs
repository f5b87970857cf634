//! k-diffusion's DPM-Solver-fast: fixed-NFE DPM-Solver on a log-SNR uniform grid.

use ndarray::{Array, Dimension};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::{Coords, get_ancestral_step};
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::options::{Stochastic, noise_builders};
use crate::sampler::core::state::X2;
use crate::sampler::{Input, Method, Outcome, Sampler, State, Step};

/// DPM-Solver-fast[^dpm] (k-diffusion's `sample_dpm_fast`, ComfyUI's `dpm_fast`,
/// AUTOMATIC1111's "DPM fast"): DPM-Solver in the noise prediction with a fixed budget of model
/// calls, spread over steps uniform in `t = -ln(tau)` (the sigma-space sigma, k-diffusion's
/// VE formulas — on flow grids applied to the flow sigmas, as ComfyUI does): `NFE` calls give
/// `m = floor(NFE / 3) + 1` steps of order 3, the last ones of order `NFE mod 3` (or 2 then 1).
///
/// It takes from the grid only its ends, as ComfyUI does: the first level, the last level with
/// noise (`sigma_min`; no final denoising step), and `NFE` = the grid's number of steps. With
/// `eta > 0` each step is ancestral (k-diffusion's split, with fresh noise).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::DpmFast;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = DpmFast::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for a negative `eta` or `s_noise`; at the start of a run,
/// [`Error::InvalidParameter`] (`"grid"`) for a grid of one level with noise or starting from
/// pure noise (infinite sigma).
///
/// [^dpm]: C. Lu, Y. Zhou, F. Bao, J. Chen, C. Li, J. Zhu, *DPM-Solver: A Fast ODE Solver for
///     Diffusion Probabilistic Model Sampling in Around 10 Steps*, NeurIPS 2022,
///     arXiv:2206.00927.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmFast {
    noise: Stochastic,
    /// The call budget of the run (set from the grid when a run starts).
    nfe: usize,
}

impl Default for DpmFast {
    fn default() -> Self {
        DpmFast {
            noise: Stochastic::new(0.0),
            nfe: 0,
        }
    }
}

impl DpmFast {
    /// The deterministic solver (`eta = 0`, k-diffusion's default).
    pub fn new() -> Self {
        Self::default()
    }

    noise_builders!();

    /// The orders of the steps for `nfe` calls (k-diffusion's rule).
    pub(crate) fn orders(nfe: usize) -> impl Iterator<Item = usize> {
        let m = nfe / 3 + 1;
        (0..m).map(move |k| {
            if nfe.is_multiple_of(3) {
                if k + 2 < m {
                    3
                } else if k + 2 == m {
                    2
                } else {
                    1
                }
            } else if k + 1 < m {
                3
            } else {
                nfe % 3
            }
        })
    }

    /// The run's own grid: `floor(nfe / 3) + 1` steps uniform in `-ln(tau)` between `grid`'s
    /// first level and its last level with noise, on `grid`'s schedule.
    fn inner_grid(grid: &Grid) -> Result<(Grid, usize)> {
        let levels = grid.levels();
        let nfe = grid.steps();
        let c = Coords::of(grid.family());
        let (start, end) = (levels[0], grid.last_noisy());
        let (t0, t1) = (-c.tau(&start).ln(), -c.tau(&end).ln());
        if !(t0.is_finite() && t1.is_finite()) || (t0 - t1).abs() <= 1e-12 || nfe == 0 {
            return Err(Error::InvalidParameter {
                name: "grid",
                value: c.tau(&start),
                reason: "DPM-Solver-fast integrates in log-sigma from the first level to the last level with noise: \
                         both need finite, distinct sigmas",
            });
        }
        let m = nfe / 3 + 1;
        let ts = crate::grid::torch_linspace(t0, t1, m + 1);
        let mut inner: Vec<NoiseLevel> = ts
            .iter()
            .map(|t| grid.level_at_sigma_ve(c.sigma_ve_of_tau((-t).exp())))
            .collect::<Result<_>>()?;
        inner[0] = start;
        inner[m] = end;
        Ok((grid.with_levels(inner)?, nfe))
    }
}

/// `eps` at a stage: `(y - x0) / tau` with `y = x / c`.
struct Eps {
    /// Coefficient on the stage's input `x_k` (model scaling) and on its x0 estimate.
    x: f64,
    d: f64,
}

fn eps_of(l: &NoiseLevel, c: Coords) -> Eps {
    let tau = c.tau(l);
    Eps {
        x: 1.0 / (c.c(l) * tau),
        d: -1.0 / tau,
    }
}

/// Per-run scalars: the order of the current step.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastVars {
    order: usize,
}

/// The first stage's x0 estimate, and the second's.
const D0: usize = 1;
const D1: usize = 2;

impl Method for DpmFast {
    type Vars = FastVars;

    fn check(&self) -> Result<()> {
        self.noise.check()
    }

    fn calls(&self, grid: &Grid) -> usize {
        grid.steps()
    }

    fn held(&self) -> usize {
        2
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, FastVars>,
    ) -> Result<Outcome> {
        let (from, to, c) = (s.from(), s.to(), s.coords());
        if s.stage() == 0 {
            s.vars.order = Self::orders(self.nfe).nth(s.step()).unwrap_or(1);
        }
        let order = s.vars.order;
        let (tau, tau_next) = (c.tau(&from), c.tau(&to));
        let (t, t_next_grid) = (-tau.ln(), -tau_next.ln());
        let t_end = -c.tau(&s.walk().final_level()).ln();
        // The ancestral target: k-diffusion's sigma_down, then fresh noise up to tau'.
        let (t_next, up) = if self.noise.eta > 0.0 {
            let (down, _) = get_ancestral_step(tau, tau_next, self.noise.eta);
            let tn = t_end.min(-down.ln());
            (tn, (tau_next * tau_next - (-2.0 * tn).exp()).max(0.0).sqrt())
        } else {
            (t_next_grid, 0.0)
        };
        let h = t_next - t;
        let sig = |t: f64| (-t).exp();
        let at = |t: f64| s.walk().level_at_sigma_ve(c.sigma_ve_of_tau(sig(t)));
        let (cf, ct) = (c.c(&from), c.c(&to));
        let e0 = eps_of(&from, c);
        let (r1, r2) = if order == 3 {
            (1.0 / 3.0, 2.0 / 3.0)
        } else {
            (0.5, 0.0)
        };
        // Final y' = y - sig(tn) E eps0 - k (eps_r - eps0), E = e^h - 1, in the model scaling.
        let big_e = h.exp_m1();
        let kz = ct * up * self.noise.s_noise;
        let noise = (kz != 0.0).then_some((from, to));
        let finish = |k: f64, r_eps: Option<(&NoiseLevel, Slot)>| {
            // y' = y - sig(tn) E (1 - ...) eps0 - k eps_r + k eps0
            let k0 = -sig(t_next) * big_e + k;
            let mut terms = [
                (Slot::X, ct / cf + ct * k0 * e0.x),
                (Slot::Buf(D0), ct * k0 * e0.d),
                (Slot::Buf(X2), 0.0),
                (Slot::X0, 0.0),
                (Slot::Noise, kz),
            ];
            if let Some((l, _)) = r_eps {
                let e = eps_of(l, c);
                terms[2].1 = -ct * k * e.x * c.c(l);
                terms[3].1 = -ct * k * e.d;
                // e.x applies to y_l = x_l / c_l; the buffer holds x_l.
                terms[2].1 /= c.c(l);
            }
            terms
        };
        match (order, s.stage()) {
            (1, _) => {
                let mut terms = finish(0.0, None);
                // Order 1 reads this call's estimate, not a kept one.
                terms[1].0 = Slot::X0;
                s.combo(&Combo::new(Slot::X, &terms, Keep::Raw), noise)?;
                Ok(Outcome::done())
            }
            (_, 0) => {
                // u1 = y - sig(s1) (e^{r1 h} - 1) eps0 at s1.
                let s1 = t + r1 * h;
                let l1 = at(s1);
                let k = -sig(s1) * (r1 * h).exp_m1();
                let c1 = c.c(&l1);
                let terms = [(Slot::X, c1 / cf + c1 * k * e0.x), (Slot::X0, c1 * k * e0.d)];
                s.combo(&Combo::new(Slot::Buf(X2), &terms, Keep::X0), None)?;
                Ok(Outcome::stage(l1, Input::Buf(X2)).keep_buf(D0))
            }
            (2, _) => {
                let l1 = s.level();
                let k = sig(t_next) / (2.0 * r1) * big_e;
                let terms = finish(k, Some((&l1, Slot::Buf(X2))));
                s.combo(&Combo::new(Slot::X, &terms, Keep::Raw), noise)?;
                Ok(Outcome::done())
            }
            (_, 1) => {
                // u2 = y - sig(s2) (e^{r2 h} - 1) eps0 - sig(s2) (r2 / r1) ((e^{r2 h} - 1) / (r2 h) - 1) (eps_r1 - eps0)
                let l1 = s.level();
                let s2 = t + r2 * h;
                let l2 = at(s2);
                let e2 = (r2 * h).exp_m1();
                let k = sig(s2) * (r2 / r1) * (e2 / (r2 * h) - 1.0);
                let k0 = -sig(s2) * e2 + k;
                let c2 = c.c(&l2);
                let e1 = eps_of(&l1, c);
                let terms = [
                    (Slot::X, c2 / cf + c2 * k0 * e0.x),
                    (Slot::Buf(D0), c2 * k0 * e0.d),
                    (Slot::Buf(X2), -c2 * k * e1.x),
                    (Slot::X0, -c2 * k * e1.d),
                ];
                s.combo(&Combo::new(Slot::Buf(X2), &terms, Keep::X0), None)?;
                Ok(Outcome::stage(l2, Input::Buf(X2)).keep_buf(D1))
            }
            _ => {
                let l2 = s.level();
                let k = sig(t_next) / r2 * (big_e / h - 1.0);
                let terms = finish(k, Some((&l2, Slot::Buf(X2))));
                s.combo(&Combo::new(Slot::X, &terms, Keep::Raw), noise)?;
                Ok(Outcome::done())
            }
        }
    }
}

impl Sampler for DpmFast {
    type State<F: Float, D: Dimension> = State<F, D, DpmFast>;

    fn validate(&self) -> Result<()> {
        self.check()
    }

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Self::State<F, D>> {
        self.check()?;
        let (inner, nfe) = Self::inner_grid(grid)?;
        State::new(DpmFast { nfe, ..*self }, x, &inner, noise)
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        grid.steps()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_spend_the_budget() {
        for nfe in 1..40 {
            let o: Vec<usize> = DpmFast::orders(nfe).collect();
            assert_eq!(o.iter().sum::<usize>(), nfe, "{nfe}: {o:?}");
            assert_eq!(o.len(), nfe / 3 + 1);
        }
        assert_eq!(DpmFast::orders(6).collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(DpmFast::orders(7).collect::<Vec<_>>(), vec![3, 3, 1]);
    }
}
