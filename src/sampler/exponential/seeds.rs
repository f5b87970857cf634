//! Stochastic exponential Runge–Kutta samplers in half-log-SNR time: k-diffusion's DPM-Solver++
//! SDE and ComfyUI's SEEDS-2 / SEEDS-3 (with the exponential Heun as SEEDS-2 at `r = 1`).
//!
//! Each is written in `(alpha, sigma)` with `lambda = ln(alpha / sigma)` of the grid's own
//! levels, so it runs on VP, VE and flow grids alike (ComfyUI's "half-log-SNR" versions, which
//! it uses for flow models too). Intermediate levels are found by `lambda`.

use ndarray::Dimension;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::get_ancestral_step;
use crate::sampler::core::combo::{Combo, Keep, Slot};
use crate::sampler::core::options::{Stochastic, noise_builders, setters};
use crate::sampler::core::state::X2;
use crate::sampler::core::walk::Walk;
use crate::sampler::{Input, Method, Outcome, Step};

/// The first stage's x0 estimate, and the accumulated normalised noise of the step.
const D0: usize = 1;
const NZ: usize = 2;

/// `h phi_1(h) = e^h - 1`.
fn phi1(h: f64) -> f64 {
    h.exp_m1()
}

/// `h phi_2(h) = (e^h - 1 - h) / h`.
fn phi2(h: f64) -> f64 {
    (h.exp_m1() - h) / h
}

/// Model calls of an `n`-stage method: one on steps to the clean level and from pure noise.
fn stage_calls(grid: &Grid, n: usize) -> usize {
    let l = grid.levels();
    (0..Walk::effective_steps(grid))
        .map(|i| {
            if l[i + 1].is_clean() || l[i].alpha == 0.0 {
                1
            } else {
                n
            }
        })
        .sum()
}

/// The grid's level with `lambda = ln(alpha / sigma)`.
fn at_lambda<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized, V>(
    s: &Step<'_, F, D, N, V>,
    lambda: f64,
) -> NoiseLevel {
    s.walk().level_at_sigma_ve((-lambda).exp())
}

fn check_r(name: &'static str, r: f64, max: f64) -> Result<()> {
    if r > 0.0 && r <= max {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value: r,
            reason: "the intermediate point must lie inside the step",
        })
    }
}

/// DPM-Solver++ (stochastic, singlestep)[^dpmpp] — k-diffusion's `sample_dpmpp_sde`
/// (ComfyUI's `dpmpp_sde`, `dpmpp_sde_gpu`; AUTOMATIC1111's "DPM++ SDE"): a second-order
/// stochastic step through the intermediate `lambda_s1 = lambda + r h`, each half an ancestral
/// DPM-Solver++(1) step with k-diffusion's split of `sigma / alpha`:
///
/// ```text
/// x2 = (alpha_s1 / alpha) e^{-h1} x + alpha_s1 (1 - e^{-h1}) x0 + s_noise alpha_s1 up1 z1
/// x' = (alpha' / alpha) e^{-h2} x + alpha' (1 - e^{-h2}) ((1 - 1/(2r)) x0 + x0(x2) / (2r)) + s_noise alpha' up2 z2
/// ```
///
/// with `h1 = lambda(down1) - lambda`, `h2 = lambda(down2) - lambda` from the ancestral splits
/// of the intervals `lambda -> lambda_s1` and `lambda -> lambda'` (the two draws overlap: from
/// a Brownian source they are correlated as k-diffusion's are). Two model calls per step, one on
/// the last; `eta = 0` is the deterministic DPM-Solver-2 in data prediction. ComfyUI draws the
/// noise from a Brownian tree: pass a Brownian source to reproduce that.
///
/// A step from pure noise (`alpha = 0`, where `lambda = -inf`) is a DDIM step.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::DpmPpSde;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = DpmPpSde::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for `r` outside `(0, 1]`, a negative `eta` or `s_noise`.
///
/// [^dpmpp]: C. Lu, Y. Zhou, F. Bao, J. Chen, C. Li, J. Zhu, *DPM-Solver++*, arXiv:2211.01095;
///     K. Crowson, k-diffusion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmPpSde {
    noise: Stochastic,
    r: f64,
}

impl Default for DpmPpSde {
    fn default() -> Self {
        DpmPpSde {
            noise: Stochastic::new(1.0),
            r: 0.5,
        }
    }
}

impl DpmPpSde {
    /// `eta = 1`, `s_noise = 1`, `r = 1/2` (k-diffusion's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The intermediate point's fraction of the step in `lambda`.
        r: f64,
    }

    noise_builders!();
}

impl Method for DpmPpSde {
    type Vars = ();

    fn check(&self) -> Result<()> {
        check_r("r", self.r, 1.0)?;
        self.noise.check()
    }

    fn calls(&self, grid: &Grid) -> usize {
        stage_calls(grid, 2)
    }

    fn held(&self) -> usize {
        1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        if to.is_clean() || from.alpha == 0.0 {
            s.euler(&Default::default())?;
            return Ok(Outcome::done());
        }
        let (ls, lt) = (from.lambda(), to.lambda());
        let h = lt - ls;
        let mid = at_lambda(s, ls + self.r * h);
        let noisy = self.noise.eta > 0.0 && self.noise.s_noise > 0.0;
        // The ancestral split of lambda_s -> lambda_target in sigma / alpha = e^{-lambda}.
        let split = |target: &NoiseLevel| {
            let (down, up) = get_ancestral_step((-ls).exp(), (-target.lambda()).exp(), self.noise.eta);
            (-down.ln() - ls, up)
        };
        if s.stage() == 0 {
            let (h1, up) = split(&mid);
            let k = mid.alpha / from.alpha;
            let terms = [
                (Slot::X, k * (-h1).exp()),
                (Slot::X0, -mid.alpha * (-h1).exp_m1()),
                (
                    Slot::Noise,
                    if noisy {
                        mid.alpha * up * self.noise.s_noise
                    } else {
                        0.0
                    },
                ),
            ];
            s.combo(
                &Combo::new(Slot::Buf(X2), &terms, Keep::X0),
                noisy.then_some((from, mid)),
            )?;
            return Ok(Outcome::stage(mid, Input::Buf(X2)).keep_buf(D0));
        }
        let (h2, up) = split(&to);
        let fac = 1.0 / (2.0 * self.r);
        let kd = -to.alpha * (-h2).exp_m1();
        let terms = [
            (Slot::X, to.alpha / from.alpha * (-h2).exp()),
            (Slot::Buf(D0), kd * (1.0 - fac)),
            (Slot::X0, kd * fac),
            (
                Slot::Noise,
                if noisy {
                    to.alpha * up * self.noise.s_noise
                } else {
                    0.0
                },
            ),
        ];
        s.combo(
            &Combo::new(Slot::X, &terms, Keep::Raw),
            noisy.then_some((from, to)),
        )?;
        Ok(Outcome::done())
    }
}

/// How SEEDS-2 combines its two stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SeedsSolver {
    /// `x0` interpolated at the midpoint (`lerp(x0, x0_2, 1 / (2r))`) in a `phi_1` step
    /// (ComfyUI's default for `seeds_2`).
    #[default]
    Phi1,
    /// The `phi_2` weights `b2 = phi_2(-h) / r`, `b1 = phi_1(-h) - b2` (ComfyUI's
    /// `exp_heun_2_x0`).
    Phi2,
}

/// SEEDS-2[^seeds] (ComfyUI's `seeds_2`), and the exponential Heun method in data prediction
/// ([`exp_heun`](Self::exp_heun): ComfyUI's `exp_heun_2_x0`, and with noise
/// `exp_heun_2_x0_sde`): a two-stage stochastic exponential integrator in `lambda` with the
/// intermediate point `lambda + r h`, `H = (1 + eta) h`:
///
/// ```text
/// x2 = (sigma_1 / sigma) e^{-r eta h} x - alpha_1 phi_1(-r H) x0 + s_noise sigma_1 n1
/// x' = (sigma' / sigma) e^{-eta h} x - alpha' phi_1(-H) lerp(x0, x0_2, 1/(2r)) + s_noise sigma' n2     (Phi1)
///      ... - alpha' (b1 x0 + b2 x0_2)                                                                 (Phi2)
/// ```
///
/// with `phi_1(u) = e^u - 1`, `n1 = sqrt(1 - e^{-2 r eta h}) z1` and `n2 = e^{(r - 1) eta h} n1
/// + sqrt(1 - e^{2 (r - 1) eta h}) z2` (z1 over the first part of the step, z2 over the
/// second). `eta = 0` is deterministic. Two model calls per step, one on the last.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Seeds2;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = Seeds2::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for `r` outside `(0, 1]`, a negative `eta` or `s_noise`.
///
/// [^seeds]: M. Gonzalez, N. Fernandez, T. Tran, E. Gherbi, H. Hajri, N. Masmoudi, *SEEDS:
///     Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion Models*, NeurIPS
///     2023, arXiv:2305.14267.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seeds2 {
    noise: Stochastic,
    r: f64,
    solver: SeedsSolver,
}

impl Default for Seeds2 {
    fn default() -> Self {
        Seeds2 {
            noise: Stochastic::new(1.0),
            r: 0.5,
            solver: SeedsSolver::Phi1,
        }
    }
}

impl Seeds2 {
    /// SEEDS-2 with ComfyUI's defaults (`eta = 1`, `s_noise = 1`, `r = 1/2`, `Phi1`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The deterministic exponential Heun method in data prediction (`r = 1`, `Phi2`, `eta =
    /// 0`): ComfyUI's `exp_heun_2_x0`; `.eta(1.0)` gives `exp_heun_2_x0_sde`.
    pub fn exp_heun() -> Self {
        Seeds2 {
            noise: Stochastic {
                eta: 0.0,
                s_noise: 1.0,
            },
            r: 1.0,
            solver: SeedsSolver::Phi2,
        }
    }

    setters! {
        /// The intermediate point's fraction of the step in `lambda`.
        r: f64,
        /// How the stages are combined.
        solver: SeedsSolver,
    }

    noise_builders!();
}

impl Method for Seeds2 {
    type Vars = ();

    fn check(&self) -> Result<()> {
        check_r("r", self.r, 1.0)?;
        self.noise.check()
    }

    fn calls(&self, grid: &Grid) -> usize {
        stage_calls(grid, 2)
    }

    fn held(&self) -> usize {
        1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        if to.is_clean() || from.alpha == 0.0 {
            s.euler(&Default::default())?;
            return Ok(Outcome::done());
        }
        let (eta, r) = (self.noise.eta, self.r);
        let noisy = eta > 0.0 && self.noise.s_noise > 0.0;
        let (ls, lt) = (from.lambda(), to.lambda());
        let h = lt - ls;
        let big_h = h * (eta + 1.0);
        let mid = at_lambda(s, ls + r * h);
        let n1 = (-(-2.0 * r * h * eta).exp_m1()).max(0.0).sqrt();
        if s.stage() == 0 {
            let terms = [
                (Slot::X, mid.sigma / from.sigma * (-r * h * eta).exp()),
                (Slot::X0, -mid.alpha * phi1(-r * big_h)),
                (
                    Slot::Noise,
                    if noisy {
                        mid.sigma * self.noise.s_noise * n1
                    } else {
                        0.0
                    },
                ),
            ];
            s.combo(
                &Combo::new(Slot::Buf(X2), &terms, Keep::X0),
                noisy.then_some((from, mid)),
            )?;
            if noisy {
                s.stash_noise(NZ);
            }
            return Ok(Outcome::stage(mid, Input::Buf(X2)).keep_buf(D0));
        }
        let (b0, b2) = match self.solver {
            SeedsSolver::Phi1 => {
                let fac = 1.0 / (2.0 * r);
                (phi1(-big_h) * (1.0 - fac), phi1(-big_h) * fac)
            }
            SeedsSolver::Phi2 => {
                let b2 = phi2(-big_h) / r;
                (phi1(-big_h) - b2, b2)
            }
        };
        let seg = (r - 1.0) * h * eta;
        let kz = to.sigma * self.noise.s_noise;
        let n2 = (-(2.0 * seg).exp_m1()).max(0.0).sqrt();
        let fresh = noisy && n2 != 0.0;
        let terms = [
            (Slot::X, to.sigma / from.sigma * (-h * eta).exp()),
            (Slot::Buf(D0), -to.alpha * b0),
            (Slot::X0, -to.alpha * b2),
            (Slot::Buf(NZ), if noisy { kz * seg.exp() * n1 } else { 0.0 }),
            (Slot::Noise, if fresh { kz * n2 } else { 0.0 }),
        ];
        s.combo(
            &Combo::new(Slot::X, &terms, Keep::Raw),
            fresh.then_some((mid, to)),
        )?;
        Ok(Outcome::done())
    }
}

/// SEEDS-3[^seeds3] (ComfyUI's `seeds_3`): the three-stage stochastic exponential integrator in
/// `lambda` with intermediate points `lambda + r1 h`, `lambda + r2 h` (1/3, 2/3):
///
/// ```text
/// x2 = (sigma_1 / sigma) e^{-r1 eta h} x - alpha_1 phi_1(-r1 H) x0 + s_noise sigma_1 n1
/// x3 = (sigma_2 / sigma) e^{-r2 eta h} x - alpha_2 (a1 x0 + a2 x0_2) + s_noise sigma_2 n2,  a2 = (r2/r1) phi_2(-r2 H)
/// x' = (sigma' / sigma) e^{-eta h} x - alpha' (b1 x0 + b3 x0_3) + s_noise sigma' n3,        b3 = phi_2(-H) / r2
/// ```
///
/// (`a1 = phi_1(-r2 H) - a2`, `b1 = phi_1(-H) - b3`), the noises chained as in [`Seeds2`].
/// Three model calls per step, one on the last.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Seeds3;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(20, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let out = Seeds3::new().sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!((out.mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] unless `0 < r1 < r2 <= 1`; a negative `eta` or `s_noise`.
///
/// [^seeds3]: As [`Seeds2`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Seeds3 {
    noise: Stochastic,
    r1: f64,
    r2: f64,
}

impl Default for Seeds3 {
    fn default() -> Self {
        Seeds3 {
            noise: Stochastic::new(1.0),
            r1: 1.0 / 3.0,
            r2: 2.0 / 3.0,
        }
    }
}

impl Seeds3 {
    /// SEEDS-3 with ComfyUI's defaults (`eta = 1`, `s_noise = 1`, `r1 = 1/3`, `r2 = 2/3`).
    pub fn new() -> Self {
        Self::default()
    }

    setters! {
        /// The first intermediate point's fraction of the step in `lambda`.
        r1: f64,
        /// The second.
        r2: f64,
    }

    noise_builders!();
}

impl Method for Seeds3 {
    type Vars = ();

    fn check(&self) -> Result<()> {
        check_r("r1", self.r1, self.r2)?;
        check_r("r2", self.r2, 1.0)?;
        if self.r1 >= self.r2 {
            return Err(Error::InvalidParameter {
                name: "r1",
                value: self.r1,
                reason: "must be below r2",
            });
        }
        self.noise.check()
    }

    fn calls(&self, grid: &Grid) -> usize {
        stage_calls(grid, 3)
    }

    fn held(&self) -> usize {
        1
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        if to.is_clean() || from.alpha == 0.0 {
            s.euler(&Default::default())?;
            return Ok(Outcome::done());
        }
        let (eta, r1, r2) = (self.noise.eta, self.r1, self.r2);
        let noisy = eta > 0.0 && self.noise.s_noise > 0.0;
        let (ls, lt) = (from.lambda(), to.lambda());
        let h = lt - ls;
        let big_h = h * (eta + 1.0);
        let (l1, l2) = (at_lambda(s, ls + r1 * h), at_lambda(s, ls + r2 * h));
        let sn = self.noise.s_noise;
        // Chaining n_next = e^{seg} n + sqrt(1 - e^{2 seg}) z over a segment.
        let chain = |seg: f64| (seg.exp(), (-(2.0 * seg).exp_m1()).max(0.0).sqrt());
        let on = |v: f64| if noisy { v } else { 0.0 };
        match s.stage() {
            0 => {
                let n1 = (-(-2.0 * r1 * h * eta).exp_m1()).max(0.0).sqrt();
                let terms = [
                    (Slot::X, l1.sigma / from.sigma * (-r1 * h * eta).exp()),
                    (Slot::X0, -l1.alpha * phi1(-r1 * big_h)),
                    (Slot::Noise, on(l1.sigma * sn * n1)),
                ];
                s.combo(
                    &Combo::new(Slot::Buf(X2), &terms, Keep::X0),
                    noisy.then_some((from, l1)),
                )?;
                if noisy {
                    // NZ = n1 (the normalised noise so far).
                    let t = [(Slot::Noise, n1)];
                    s.combo(&Combo::new(Slot::Buf(NZ), &t, Keep::Raw), None)?;
                }
                Ok(Outcome::stage(l1, Input::Buf(X2)).keep_buf(D0))
            }
            1 => {
                let a2 = r2 / r1 * phi2(-r2 * big_h);
                let a1 = phi1(-r2 * big_h) - a2;
                let (e, q) = chain((r1 - r2) * h * eta);
                let terms = [
                    (Slot::X, l2.sigma / from.sigma * (-r2 * h * eta).exp()),
                    (Slot::Buf(D0), -l2.alpha * a1),
                    (Slot::X0, -l2.alpha * a2),
                    (Slot::Buf(NZ), on(l2.sigma * sn * e)),
                    (Slot::Noise, on(l2.sigma * sn * q)),
                ];
                s.combo(
                    &Combo::new(Slot::Buf(X2), &terms, Keep::Raw),
                    noisy.then_some((l1, l2)),
                )?;
                if noisy {
                    let t = [(Slot::Buf(NZ), e), (Slot::Noise, q)];
                    s.combo(&Combo::new(Slot::Buf(NZ), &t, Keep::Raw), None)?;
                }
                Ok(Outcome::stage(l2, Input::Buf(X2)))
            }
            _ => {
                let b3 = phi2(-big_h) / r2;
                let b1 = phi1(-big_h) - b3;
                let (e, q) = chain((r2 - 1.0) * h * eta);
                let fresh = noisy && q != 0.0;
                let terms = [
                    (Slot::X, to.sigma / from.sigma * (-h * eta).exp()),
                    (Slot::Buf(D0), -to.alpha * b1),
                    (Slot::X0, -to.alpha * b3),
                    (Slot::Buf(NZ), on(to.sigma * sn * e)),
                    (Slot::Noise, if fresh { to.sigma * sn * q } else { 0.0 }),
                ];
                s.combo(&Combo::new(Slot::X, &terms, Keep::Raw), fresh.then_some((l2, to)))?;
                Ok(Outcome::done())
            }
        }
    }
}
