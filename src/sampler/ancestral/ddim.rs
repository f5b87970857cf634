//! DDIM (Song, Meng & Ermon 2021).

use ndarray::Dimension;

use crate::error::Result;
use crate::float::Float;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::ancestral;
use crate::sampler::core::kernel::Affine;
use crate::sampler::core::options::{Stochastic, noise_builders, setters, x0_builders};
use crate::sampler::core::x0::X0Policy;
use crate::sampler::{Method, Outcome, Step};

/// DDIM: denoising diffusion implicit models[^ddim], diffusers' `DDIMScheduler`.
///
/// From level `(alpha, sigma)` to the next level `(alpha', sigma')` of the grid, with the x0
/// estimate `x0` (clipped or thresholded if configured) and `eps = (x - alpha x0_raw) / sigma`:
///
/// ```text
/// var   = sigma'^2 (1 - r^2),  r = (sigma'/alpha') / (sigma/alpha)    (posterior variance)
/// std   = min(eta sqrt(var), sigma')
/// x'    = alpha' x0 + sqrt(sigma'^2 - std^2) eps + std z,   z ~ N(0, I)
/// ```
///
/// For variance-preserving schedules `var` is DDIM's `(1 - abar') / (1 - abar) (1 - abar /
/// abar')`; written this way it is the posterior variance for every schedule family, so that
/// DDIM(eta) is exactly [`EulerAncestral`](crate::EulerAncestral)`(eta)`.
///
/// `eta = 0` is deterministic (and equals the Euler step of the probability-flow ODE); `eta = 1`
/// is ancestral sampling with the DDPM posterior variance.
///
/// | option | default | meaning |
/// |---|---|---|
/// | [`eta`](Self::eta) | 0 | noise weight, `>= 0` |
/// | [`s_noise`](Self::s_noise) | 1 | multiplies the added noise |
/// | [`clip_sample`](Self::clip_sample) | `None` | clamp x0 to `[-r, r]` (diffusers' class default is `Some(1.0)`, which its configs reproduce) |
/// | [`thresholding`](Self::thresholding) | `None` | dynamic thresholding, overrides clipping |
/// | [`use_clipped_model_output`](Self::use_clipped_model_output) | `false` | re-derive `eps` from the clipped x0 |
///
/// **Deliberate differences from diffusers**: `new()` does not clip x0 (diffusers' class
/// default `clip_sample = True` silently pulls data outside `[-1, 1]` in; a diffusers config
/// read by the `config` module still gets diffusers' default). The previous level is the
/// grid's next level: diffusers' DDIM steps back by a fixed stride `T // N`, which is wrong for `trailing` and `linspace`
/// grids whose step count does not divide `T` (diffusers issues #11347, #12633); on grids where
/// the stride is right (every `leading` grid) the two agree. `set_alpha_to_one = False`
/// corresponds to [`FinalLevel::FirstTimestep`](crate::FinalLevel::FirstTimestep).
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
/// let grid = schedule.grid(50, Spacing::Leading { offset: 0 })?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.01])?;
/// let x = Array2::<f64>::from_elem((1, 1), 0.3);
/// let out = Ddim::new().sample(&mut model, x, &grid, &mut StdRng::seed_from_u64(0))?;
/// assert!((out[[0, 0]] - 0.5).abs() < 0.3);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`](crate::Error::InvalidParameter) for a negative or non-finite
/// `eta` or clip range; during a run, the errors of
/// [`Sampler::sample`](crate::Sampler::sample).
///
/// [^ddim]: J. Song, C. Meng, S. Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021,
///     arXiv:2010.02502, eqs. 12 and 16.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ddim {
    noise: Stochastic,
    policy: X0Policy,
    use_clipped_model_output: bool,
}

impl Default for Ddim {
    fn default() -> Self {
        Ddim {
            noise: Stochastic::new(0.0),
            policy: X0Policy::default(),
            use_clipped_model_output: false,
        }
    }
}

impl Ddim {
    /// Deterministic DDIM (`eta = 0`), no x0 processing.
    pub fn new() -> Self {
        Self::default()
    }

    noise_builders!();
    x0_builders!();

    setters! {
        /// Re-derive `eps` from the clipped x0 (GLIDE); diffusers' `use_clipped_model_output`.
        use_clipped_model_output: bool,
    }

    /// The configured `eta`.
    pub fn get_eta(&self) -> f64 {
        self.noise.eta
    }
}

impl Method for Ddim {
    type Vars = ();

    fn check(&self) -> Result<()> {
        self.noise.check()?;
        self.policy.validate()
    }

    fn update<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        s: &mut Step<'_, F, D, N, ()>,
    ) -> Result<Outcome> {
        let (from, to) = (s.from(), s.to());
        let (std, ce) = ancestral(&from, &to, self.noise.eta);
        // ce eps = ce / sigma x - ce alpha / sigma x0: on the raw x0 (diffusers), or on the
        // clipped one (`use_clipped_model_output`).
        let (kx, kd) = (ce / from.sigma, -ce * from.alpha / from.sigma);
        let (clamped, raw) = if self.use_clipped_model_output {
            (to.alpha + kd, 0.0)
        } else {
            (to.alpha, kd)
        };
        let k = Affine {
            clamped,
            raw,
            x: kx,
            z: std * self.noise.s_noise,
        };
        s.affine(&self.policy, k)?;
        Ok(Outcome::done())
    }
}
