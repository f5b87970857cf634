//! DPM-Solver++(2S) ancestral (k-diffusion's `sample_dpmpp_2s_ancestral`).

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::coefs::ancestral;
use super::kernel::{Affine, Clamps, affine_step};
use super::x0::{Thresholding, X0Policy};
use super::{Estimate, Request, Sampler, SamplerState, Walk, attribute, check_eta, fill_noise};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::schedule::NoiseLevel;

/// DPM-Solver++(2S) ancestral: a single-step second-order DPM-Solver++ step down to
/// k-diffusion's `sigma_down`, then fresh noise `sigma_up` (see
/// [`EulerAncestral`](crate::EulerAncestral)). With `lambda = -ln(sigma / alpha)`,
/// `h = lambda_down - lambda` and the midpoint `lambda + h / 2`:
///
/// ```text
/// x_mid = (sigma_mid / sigma) x + alpha_mid (1 - e^{-h/2}) x0          (DPM-Solver++ order 1)
/// x'    = alpha' [ (s_down / s) x / alpha + (1 - e^{-h}) x0(x_mid) ] + s_noise alpha' sigma_up z
/// ```
///
/// Two model calls per step, one on the step to the clean level. `eta = 0` gives the
/// deterministic DPM-Solver++(2S).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::DpmPp2sAncestral;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let grid = s.grid(15, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let out = DpmPp2sAncestral::new().sample(&mut model, Array2::<f64>::zeros((1, 1)), &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.5);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for a negative `eta` or `s_noise`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmPp2sAncestral {
    eta: f64,
    s_noise: f64,
    policy: X0Policy,
}

impl Default for DpmPp2sAncestral {
    fn default() -> Self {
        DpmPp2sAncestral {
            eta: 1.0,
            s_noise: 1.0,
            policy: X0Policy::default(),
        }
    }
}

impl DpmPp2sAncestral {
    /// `eta = 1`, `s_noise = 1` (k-diffusion's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    /// The noise weight (0 = deterministic DPM-Solver++(2S)).
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

impl Sampler for DpmPp2sAncestral {
    type State<F: Float, D: Dimension> = DpmPp2sAncestralState<F, D>;

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<DpmPp2sAncestralState<F, D>> {
        check_eta(self.eta)?;
        check_eta(self.s_noise).map_err(|_| Error::InvalidParameter {
            name: "s_noise",
            value: self.s_noise,
            reason: "must be finite and non-negative",
        })?;
        self.policy.validate()?;
        Ok(DpmPp2sAncestralState {
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
        let n = Walk::effective_steps(grid);
        let l = grid.levels();
        (0..n)
            .map(|i| {
                let (_, ce) = ancestral(&l[i], &l[i + 1], self.eta);
                if ce == 0.0 || l[i].alpha == 0.0 { 1 } else { 2 }
            })
            .sum()
    }
}

/// The state of a [`DpmPp2sAncestral`] run.
#[derive(Clone, Debug)]
pub struct DpmPp2sAncestralState<F, D: Dimension> {
    x: Array<F, D>,
    x2: Option<Array<F, D>>,
    mid: Option<NoiseLevel>,
    walk: Walk,
    cfg: DpmPp2sAncestral,
    z: Option<Array<F, D>>,
    scratch: Vec<F>,
}

impl<F: Float, D: Dimension> SamplerState<F, D> for DpmPp2sAncestralState<F, D> {
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
        let s_down = ce / to.alpha;
        let h = from.sigma_ve().ln() - s_down.ln();
        match self.mid.take() {
            None if ce == 0.0 || from.alpha == 0.0 => {
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
                let mid = self.walk.level_at_sigma_ve(from.sigma_ve() * (-0.5 * h).exp());
                let clamp = est.prepare(&self.x, &self.cfg.policy, &mut self.scratch)?;
                let (cx, co) = (est.cx, est.co);
                let kx = F::cast(mid.sigma / from.sigma);
                let kd = F::cast(mid.alpha * -(-0.5 * h).exp_m1());
                let x2 = self.x2.get_or_insert_with(|| Array::zeros(self.x.raw_dim()));
                let ok = fold_finite!(clamp = clamp; Zip::from(x2).and(&self.x).and(&est.out), |x2, &x, &o| {
                    let raw = cx * x + co * o;
                    *x2 = kx * x + kd * clamp.apply(raw);
                    *x2 + raw * F::zero()
                });
                attribute(ok, &est, None)?;
                self.mid = Some(mid);
                return Ok(Some(est.into_buffer()));
            }
            Some(_) => {
                let x2 = self.x2.as_ref().ok_or(Error::Finished)?;
                let clamp = est.prepare(x2, &self.cfg.policy, &mut self.scratch)?;
                let (cx, co) = (est.cx, est.co);
                let kx = F::cast(ce / from.sigma);
                let kd = F::cast(to.alpha * -(-h).exp_m1());
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
                            *x = kx * *x + kd * clamp.apply(raw) + kz * z;
                            *x + raw * F::zero()
                        }
                    ),
                    None => {
                        fold_finite!(clamp = clamp; Zip::from(&mut self.x).and(x2).and(&est.out), |x, &x2, &o| {
                            let raw = cx * x2 + co * o;
                            *x = kx * *x + kd * clamp.apply(raw);
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
