//! DPM-Solver++(2S) ancestral (k-diffusion's `sample_dpmpp_2s_ancestral`).

use ndarray::{Dimension, Zip};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::ancestral;
use crate::sampler::core::options::{Stochastic, noise_builders, x0_builders};
use crate::sampler::core::state::buf;
use crate::sampler::core::walk::Walk;
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Core, Input, Method, Outcome, Step};

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
    noise: Stochastic,
    policy: X0Policy,
}

impl Default for DpmPp2sAncestral {
    fn default() -> Self {
        DpmPp2sAncestral {
            noise: Stochastic::new(1.0),
            policy: X0Policy::default(),
        }
    }
}

impl DpmPp2sAncestral {
    /// `eta = 1`, `s_noise = 1` (k-diffusion's defaults).
    pub fn new() -> Self {
        Self::default()
    }

    noise_builders!();
    x0_builders!();
}

/// The midpoint sample.
const X2: usize = 0;

impl Method for DpmPp2sAncestral {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.noise.check()?;
        self.policy.validate()
    }

    fn calls(&self, grid: &Grid) -> usize {
        let l = grid.levels();
        (0..Walk::effective_steps(grid))
            .map(|i| {
                let (_, ce) = ancestral(&l[i], &l[i + 1], self.noise.eta);
                if ce == 0.0 || l[i].alpha == 0.0 { 1 } else { 2 }
            })
            .sum()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        let (std, ce) = ancestral(&from, &to, self.noise.eta);
        if s.stage() == 0 && (ce == 0.0 || from.alpha == 0.0) {
            s.euler_ancestral(&self.policy, self.noise)?;
            return Ok(Outcome::done());
        }
        let h = from.sigma_ve().ln() - (ce / to.alpha).ln();
        let clamp = s.clamp(&self.policy)?;
        let (cx, co) = s.conv();
        let f = F::cast;
        if s.stage() == 0 {
            // DPM-Solver++(1) to the midpoint lambda + h / 2.
            let mid = s.walk().level_at_sigma_ve(from.sigma_ve() * (-0.5 * h).exp());
            let (kx, kd) = (f(mid.sigma / from.sigma), f(mid.alpha * -(-0.5 * h).exp_m1()));
            let Core { x, bufs, .. } = &mut *s.core;
            let x2 = buf(&mut bufs[X2], x);
            let ok = fold_finite!(clamp = clamp; Zip::from(x2).and(&*x).and(&s.est.out), |x2, &x, &o| {
                let raw = cx * x + co * o;
                *x2 = kx * x + kd * clamp.apply(raw);
                *x2 + raw * F::zero()
            });
            s.check(ok)?;
            return Ok(Outcome::stage(mid, Input::Buf(X2)));
        }
        // x' = alpha' [(s_down / s) x / alpha + (1 - e^{-h}) x0(x_mid)] + s_noise std z
        let (kx, kd) = (f(ce / from.sigma), f(to.alpha * -(-h).exp_m1()));
        let noisy = std * self.noise.s_noise != 0.0;
        let kz = f(std * self.noise.s_noise);
        if noisy {
            s.noise(&from, &to);
        }
        let Core { x, bufs, z, .. } = &mut *s.core;
        let x2 = bufs[X2].as_ref().ok_or(Error::Finished)?;
        let ok = match z.as_ref().filter(|_| noisy) {
            Some(z) => {
                fold_finite!(clamp = clamp; Zip::from(x).and(x2).and(&s.est.out).and(z), |x, &x2, &o, &z| {
                    let raw = cx * x2 + co * o;
                    *x = kx * *x + kd * clamp.apply(raw) + kz * z;
                    *x + raw * F::zero()
                })
            }
            None => fold_finite!(clamp = clamp; Zip::from(x).and(x2).and(&s.est.out), |x, &x2, &o| {
                let raw = cx * x2 + co * o;
                *x = kx * *x + kd * clamp.apply(raw);
                *x + raw * F::zero()
            }),
        };
        s.check_noisy(ok, noisy)?;
        Ok(Outcome::done())
    }
}
