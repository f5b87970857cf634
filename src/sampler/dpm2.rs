//! DPM-Solver-2 as k-diffusion writes it (midpoint in log sigma), and its ancestral variant.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::coefs::{Churn, Coords, ancestral};
use super::heun::two_stage_calls;
use super::kernel::{Affine, Clamps, affine_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute, check_eta, fill_noise};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

/// The midpoint of a step from `from` to `to` (coordinate `tau_to`): geometric mean in `tau`.
fn midpoint(walk: &Walk, coords: &Coords, from: &NoiseLevel, tau_to: f64) -> NoiseLevel {
    let tau_mid = (coords.tau(from).ln() + tau_to.ln()).mul_add(0.5, 0.0).exp();
    walk.level_at_sigma_ve(coords.sigma_ve_of_tau(tau_mid))
}

/// Predictor to the midpoint: `x2 = alpha_m x0 + sigma_m eps` (an Euler / DDIM step from `from`
/// to `mid`), written into `x2`.
fn predict<F: Float, D: Dimension>(
    est: &Estimate<F, D>,
    x: &Array<F, D>,
    x2: &mut Array<F, D>,
    clamp: super::x0::Clamp<F>,
    from: &NoiseLevel,
    mid: &NoiseLevel,
) -> bool {
    let (cx, co) = (est.cx, est.co);
    let r = mid.sigma / from.sigma;
    let (kx, kd) = (F::cast(r), F::cast(mid.alpha - from.alpha * r));
    fold_finite!(clamp = clamp; Zip::from(x2).and(x).and(&est.out), |x2, &x, &o| {
        let raw = cx * x + co * o;
        *x2 = kx * x + kd * clamp.apply(raw);
        *x2 + raw * F::zero()
    })
}

/// DPM-Solver-2 (Lu et al. 2022, in k-diffusion's form): an Euler half-step to the midpoint
/// `tau_mid = sqrt(tau tau')` (geometric mean of the sigmas), then the full step with the
/// midpoint's derivative; k-diffusion's `sample_dpm_2`, diffusers' `KDPM2DiscreteScheduler`.
///
/// ```text
/// y2 = y + (tau_mid - tau) g(y, tau);   y' = y + (tau' - tau) g(y2, tau_mid)
/// ```
///
/// Second order, two model calls per step and one on the step to the clean level (an Euler
/// step). Coordinates and churn as [`Heun`](crate::Heun).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Dpm2;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(15, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = Dpm2::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`Euler`](crate::Euler).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Dpm2 {
    churn: Churn,
    policy: X0Policy,
}

impl Dpm2 {
    /// Deterministic DPM-2 (no churn).
    pub fn new() -> Self {
        Self::default()
    }

    /// EDM's `S_churn` (0 = deterministic).
    pub fn s_churn(mut self, v: f64) -> Self {
        self.churn.s_churn = v;
        self
    }

    /// Lowest k-diffusion sigma at which churn applies.
    pub fn s_tmin(mut self, v: f64) -> Self {
        self.churn.s_tmin = v;
        self
    }

    /// Highest k-diffusion sigma at which churn applies.
    pub fn s_tmax(mut self, v: f64) -> Self {
        self.churn.s_tmax = v;
        self
    }

    /// EDM's `S_noise`.
    pub fn s_noise(mut self, v: f64) -> Self {
        self.churn.s_noise = v;
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

impl Sampler for Dpm2 {
    type State<F: Float, D: Dimension> = Dpm2State<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        mut x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Dpm2State<F, D>> {
        self.churn.validate()?;
        self.policy.validate()?;
        let walk = Walk::new(grid);
        let mut z = None;
        let hat = if walk.done() {
            walk.current()
        } else {
            self.churn.apply(&mut x, &walk, &mut z, noise)?
        };
        Ok(Dpm2State {
            coords: Coords {
                kappa: walk.family().kappa(),
            },
            x,
            x2: None,
            mid: None,
            walk,
            hat,
            cfg: *self,
            z,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        two_stage_calls(grid)
    }
}

/// The state of a [`Dpm2`] run.
#[derive(Clone, Debug)]
pub struct Dpm2State<F, D: Dimension> {
    coords: Coords,
    x: Array<F, D>,
    x2: Option<Array<F, D>>,
    mid: Option<NoiseLevel>,
    walk: Walk,
    hat: NoiseLevel,
    cfg: Dpm2,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for Dpm2State<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        if self.walk.done() {
            return None;
        }
        Some(match (self.mid, &self.x2) {
            (Some(mid), Some(x2)) => Request {
                step: self.walk.step(),
                level: mid,
                x: x2.view(),
            },
            _ => Request {
                step: self.walk.step(),
                level: self.hat,
                x: self.x.view(),
            },
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Option<Array<F, D>>> {
        let (from, to) = (self.hat, self.walk.to());
        match self.mid.take() {
            None if to.is_clean() || self.coords.degenerate(&from) => {
                let r = to.sigma / from.sigma;
                let k = Affine {
                    clamped: to.alpha - from.alpha * r,
                    raw: 0.0,
                    x: r,
                    z: 0.0,
                };
                let clamps = Clamps::for_policy(&mut est, &self.x, &self.cfg.policy, &mut self.scratch)?;
                let ok = affine_step(&mut self.x, &est, &clamps, k, None);
                attribute(ok, &est, None)?;
            }
            None => {
                let mid = midpoint(&self.walk, &self.coords, &from, self.coords.tau(&to));
                let clamp = est.prepare(&self.x, &self.cfg.policy, &mut self.scratch)?;
                let x2 = self.x2.get_or_insert_with(|| Array::zeros(self.x.raw_dim()));
                let ok = predict(&est, &self.x, x2, clamp, &from, &mid);
                attribute(ok, &est, None)?;
                self.mid = Some(mid);
                return Ok(Some(est.into_buffer()));
            }
            Some(mid) => {
                let x2 = self.x2.as_ref().ok_or(Error::Finished)?;
                let clamp = est.prepare(x2, &self.cfg.policy, &mut self.scratch)?;
                let (cx, co) = (est.cx, est.co);
                let c = &self.coords;
                let (gx, gd) = c.g(&mid);
                let (gx, gd) = (F::cast(gx), F::cast(gd));
                let kx = F::cast(c.c(&to) / c.c(&from));
                let kg = F::cast(c.c(&to) * (c.tau(&to) - c.tau(&from)));
                let ok = fold_finite!(clamp = clamp; Zip::from(&mut self.x).and(x2).and(&est.out), |x, &x2, &o| {
                    let raw = cx * x2 + co * o;
                    *x = kx * *x + kg * (gx * x2 + gd * clamp.apply(raw));
                    *x + raw * F::zero()
                });
                attribute(ok, &est, None)?;
            }
        }
        self.walk.next();
        self.hat = if self.walk.done() {
            self.walk.current()
        } else {
            self.cfg
                .churn
                .apply(&mut self.x, &self.walk, &mut self.z, noise)?
        };
        Ok(Some(est.into_buffer()))
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.hat
    }

    fn into_sample(self) -> Array<F, D> {
        self.x
    }
}

/// Ancestral DPM-Solver-2: k-diffusion's `sample_dpm_2_ancestral`, diffusers'
/// `KDPM2AncestralDiscreteScheduler`. Each step is a DPM-2 step down to k-diffusion's
/// `sigma_down` (midpoint `sqrt(sigma sigma_down)`) followed by fresh noise `sigma_up` (see
/// [`EulerAncestral`](crate::EulerAncestral)); in k-diffusion's coordinates `x / alpha`,
/// `sigma / alpha` for every schedule family.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Dpm2Ancestral;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(15, Spacing::Linspace)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = Dpm2Ancestral::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.5);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for a negative `eta` or `s_noise`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dpm2Ancestral {
    eta: f64,
    s_noise: f64,
    policy: X0Policy,
}

impl Default for Dpm2Ancestral {
    fn default() -> Self {
        Dpm2Ancestral {
            eta: 1.0,
            s_noise: 1.0,
            policy: X0Policy::default(),
        }
    }
}

impl Dpm2Ancestral {
    /// `eta = 1`, `s_noise = 1` (k-diffusion's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    /// The noise weight.
    pub fn eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }

    /// Multiplies the added noise.
    pub fn s_noise(mut self, v: f64) -> Self {
        self.s_noise = v;
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

/// `sigma_down` as a level with k-diffusion sigma `ce / alpha'`, for the ancestral two-stage
/// samplers.
fn down_sigma(to: &NoiseLevel, ce: f64) -> f64 {
    ce / to.alpha
}

impl Sampler for Dpm2Ancestral {
    type State<F: Float, D: Dimension> = Dpm2AncestralState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<Dpm2AncestralState<F, D>> {
        check_eta(self.eta)?;
        check_eta(self.s_noise).map_err(|_| Error::InvalidParameter {
            name: "s_noise",
            value: self.s_noise,
            reason: "must be finite and non-negative",
        })?;
        self.policy.validate()?;
        Ok(Dpm2AncestralState {
            x,
            x2: None,
            mid: None,
            walk: Walk::new(grid),
            cfg: *self,
            z: None,
            scratch: Vec::new(),
        })
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        let coords = Coords { kappa: 0.0 };
        let n = Walk::effective_steps(grid);
        let l = grid.levels();
        (0..n)
            .map(|i| {
                let (_, ce) = ancestral(&l[i], &l[i + 1], self.eta);
                if ce == 0.0 || coords.degenerate(&l[i]) {
                    1
                } else {
                    2
                }
            })
            .sum()
    }
}

/// The state of a [`Dpm2Ancestral`] run.
#[derive(Clone, Debug)]
pub struct Dpm2AncestralState<F, D: Dimension> {
    x: Array<F, D>,
    x2: Option<Array<F, D>>,
    mid: Option<NoiseLevel>,
    walk: Walk,
    cfg: Dpm2Ancestral,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for Dpm2AncestralState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        if self.walk.done() {
            return None;
        }
        Some(match (self.mid, &self.x2) {
            (Some(mid), Some(x2)) => Request {
                step: self.walk.step(),
                level: mid,
                x: x2.view(),
            },
            _ => Request {
                step: self.walk.step(),
                level: self.walk.from(),
                x: self.x.view(),
            },
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        mut est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Option<Array<F, D>>> {
        let (step, from, to) = (self.walk.step(), self.walk.from(), self.walk.to());
        let (std, ce) = ancestral(&from, &to, self.cfg.eta);
        let ve = Coords { kappa: 0.0 };
        match self.mid.take() {
            None if ce == 0.0 || ve.degenerate(&from) => {
                // Euler ancestral step.
                let k = Affine {
                    clamped: to.alpha - ce * from.alpha / from.sigma,
                    raw: 0.0,
                    x: ce / from.sigma,
                    z: std * self.cfg.s_noise,
                };
                let clamps = Clamps::for_policy(&mut est, &self.x, &self.cfg.policy, &mut self.scratch)?;
                let z = if k.z > 0.0 {
                    Some(fill_noise(&mut self.z, &self.x, step, noise))
                } else {
                    None
                };
                let ok = affine_step(&mut self.x, &est, &clamps, k, z);
                attribute(ok, &est, z)?;
            }
            None => {
                let s_down = down_sigma(&to, ce);
                let tau_mid = (from.sigma_ve().ln() + s_down.ln()).mul_add(0.5, 0.0).exp();
                let mid = self.walk.level_at_sigma_ve(tau_mid);
                let clamp = est.prepare(&self.x, &self.cfg.policy, &mut self.scratch)?;
                let x2 = self.x2.get_or_insert_with(|| Array::zeros(self.x.raw_dim()));
                let ok = predict(&est, &self.x, x2, clamp, &from, &mid);
                attribute(ok, &est, None)?;
                self.mid = Some(mid);
                return Ok(Some(est.into_buffer()));
            }
            Some(mid) => {
                // x' = alpha' (x / alpha + (s_down - s) eps2) + std z
                let x2 = self.x2.as_ref().ok_or(Error::Finished)?;
                let clamp = est.prepare(x2, &self.cfg.policy, &mut self.scratch)?;
                let (cx, co) = (est.cx, est.co);
                let kx = F::cast(to.alpha / from.alpha);
                let ke = F::cast(ce - to.alpha * from.sigma_ve());
                let (ex, ed) = (F::cast(1.0 / mid.sigma), F::cast(-mid.alpha / mid.sigma));
                let kz = F::cast(std * self.cfg.s_noise);
                let z = if std > 0.0 {
                    Some(fill_noise(&mut self.z, &self.x, step, noise))
                } else {
                    None
                };
                let ok = match z {
                    Some(z) => fold_finite!(clamp = clamp;
                        Zip::from(&mut self.x).and(x2).and(&est.out).and(z),
                        |x, &x2, &o, &z| {
                            let raw = cx * x2 + co * o;
                            *x = kx * *x + ke * (ex * x2 + ed * clamp.apply(raw)) + kz * z;
                            *x + raw * F::zero()
                        }
                    ),
                    None => {
                        fold_finite!(clamp = clamp; Zip::from(&mut self.x).and(x2).and(&est.out), |x, &x2, &o| {
                            let raw = cx * x2 + co * o;
                            *x = kx * *x + ke * (ex * x2 + ed * clamp.apply(raw));
                            *x + raw * F::zero()
                        })
                    }
                };
                attribute(ok, &est, z)?;
            }
        }
        self.walk.next();
        Ok(Some(est.into_buffer()))
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
