//! Training-time densities of the timestep `t` or the noise level `sigma`: SD3's logit-normal,
//! mode and cosmap densities (diffusers' training scripts), k-diffusion's sigma densities
//! (`utils.py`: log-normal, log-logistic, log-uniform, v-diffusion, cosine-interpolated, split
//! log-normal), each with its CDF, density and quantile, and stratified draws.
//!
//! Every density is the push-forward of a uniform `u` in `(0, 1)` through its
//! [`quantile`](Density::quantile) (k-diffusion's own construction for all but the split
//! log-normal), so a stratified batch has exactly one draw in each of `n` equal-probability
//! strata. [`Density::sample_torch`] draws what the Python function draws from a torch
//! generator seeded the same way (the same uniforms or normals, consumed in the same order).
//!
//! ```
//! use diffusion_samplers::forward::{Density, Draw};
//! use rand::{rngs::StdRng, SeedableRng};
//! // EDM's training sigmas: ln(sigma) ~ N(-1.2, 1.2^2), one per stratum of a batch of 8.
//! let d = Density::LogNormal { mean: -1.2, std: 1.2 };
//! let s = d.sample(8, Draw::stratified(), &mut StdRng::seed_from_u64(0))?;
//! for (i, &sigma) in s.iter().enumerate() {
//!     let u = d.cdf(sigma);
//!     assert!(u >= i as f64 / 8.0 && u <= (i + 1) as f64 / 8.0);
//! }
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

use std::f64::consts::{FRAC_PI_2, PI};

use rand::Rng;

use crate::error::{Error, Result};
use crate::noise::TorchGenerator;
use crate::special::{logit, norm_cdf, norm_pdf, norm_ppf, sigmoid};

/// A density of the training timestep `t` in `(0, 1)` (the flow sigma of SD3 / Flux) or of the
/// k-diffusion noise level `sigma` (EDM and k-diffusion).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Density {
    /// `t` uniform in `(0, 1)` (diffusers' `"none"` weighting scheme).
    Uniform,
    /// `t = sigmoid(z)`, `z ~ N(mean, std^2)` (SD3's `logit_normal`; the paper's `lognorm(0, 1)`).
    LogitNormal {
        /// Mean of the logit.
        mean: f64,
        /// Standard deviation of the logit.
        std: f64,
    },
    /// SD3's mode sampling with heavy tails: `t = 1 - u - scale (cos^2(pi u / 2) - 1 + u)` for
    /// uniform `u` (`scale` in `[-1, 2 / (pi - 2)]`, where the map is monotone; SD3 uses 1.29).
    Mode {
        /// The scale `s`.
        scale: f64,
    },
    /// SD3's cosmap: `t = 1 - 1 / (tan(pi u / 2) + 1)`, density `2 / (pi (1 - 2t + 2t^2))`.
    /// (diffusers' scripts name the same function as a loss weight, [`LossWeighting::Cosmap`](crate::forward::LossWeighting::Cosmap),
    /// and then draw `t` uniformly.)
    CosMap,
    /// `ln(sigma) ~ N(mean, std^2)` (EDM's `P_mean`, `P_std` = -1.2, 1.2; k-diffusion's
    /// `rand_log_normal(loc, scale)`).
    LogNormal {
        /// Mean of `ln(sigma)`.
        mean: f64,
        /// Standard deviation of `ln(sigma)`.
        std: f64,
    },
    /// `ln(sigma)` logistic with location `loc` and scale `scale`, truncated to `[min, max]`
    /// (k-diffusion's `rand_log_logistic`; `min = 0`, `max = inf` for no truncation).
    LogLogistic {
        /// Location of `ln(sigma)`.
        loc: f64,
        /// Scale of `ln(sigma)`.
        scale: f64,
        /// Lower truncation (0 for none).
        min: f64,
        /// Upper truncation (`inf` for none).
        max: f64,
    },
    /// `ln(sigma)` uniform in `[ln min, ln max]` (k-diffusion's `rand_log_uniform`).
    LogUniform {
        /// Smallest sigma.
        min: f64,
        /// Largest sigma.
        max: f64,
    },
    /// v-diffusion's cosine schedule as a sigma density: `sigma = sigma_data tan(pi u / 2)`,
    /// truncated to `[min, max]` (k-diffusion's `rand_v_diffusion`).
    VDiffusion {
        /// The data standard deviation.
        sigma_data: f64,
        /// Lower truncation (0 for none).
        min: f64,
        /// Upper truncation (`inf` for none).
        max: f64,
    },
    /// simple diffusion's interpolated shifted-cosine schedule (Hoogeboom et al. 2023): the
    /// log-SNR of the cosine schedule shifted for resolution `noise_d_low` and for `noise_d_high`
    /// relative to `image_d`, interpolated linearly in `u`; support `[min, max]`
    /// (k-diffusion's `rand_cosine_interpolated`).
    CosineInterpolated {
        /// The image resolution.
        image_d: f64,
        /// The base resolution of the low-noise end.
        noise_d_low: f64,
        /// The base resolution of the high-noise end.
        noise_d_high: f64,
        /// The data standard deviation.
        sigma_data: f64,
        /// Smallest sigma.
        min: f64,
        /// Largest sigma.
        max: f64,
    },
    /// `ln(sigma) = loc - |z| scale_1` with probability `scale_1 / (scale_1 + scale_2)`, else
    /// `loc + |z| scale_2` (`z ~ N(0, 1)`; a density continuous at `loc`; k-diffusion's
    /// `rand_split_log_normal`).
    SplitLogNormal {
        /// The mode of `ln(sigma)`.
        loc: f64,
        /// Scale left of the mode.
        scale_1: f64,
        /// Scale right of the mode.
        scale_2: f64,
    },
}

/// How a batch of draws is spread.
///
/// ```
/// use diffusion_samplers::forward::{Density, Draw};
/// use rand::{rngs::StdRng, SeedableRng};
/// // Process 1 of 4, 8 draws each: strata 1, 5, 9, ... of 32.
/// let u = Density::Uniform.sample(8, Draw::Stratified { group: 1, groups: 4 }, &mut StdRng::seed_from_u64(0))?;
/// for (i, &t) in u.iter().enumerate() {
///     assert_eq!((t * 32.0) as usize, 1 + 4 * i);
/// }
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Draw {
    /// Independent draws.
    #[default]
    Independent,
    /// k-diffusion's stratified draws (`stratified_uniform`): draw `i` of `n` takes its uniform
    /// from stratum `group + i groups` of `n groups` equal strata, so one process of `groups`
    /// (say, one GPU of `groups`) covers its share and all of them together cover every stratum
    /// once. `group = 0, groups = 1` ([`Draw::stratified`]) puts one draw in each of the `n`
    /// strata, in stratum order.
    Stratified {
        /// This process's index in `0..groups`.
        group: usize,
        /// The number of processes.
        groups: usize,
    },
}

impl Draw {
    /// One draw per stratum (`group 0` of `1`).
    pub fn stratified() -> Self {
        Draw::Stratified { group: 0, groups: 1 }
    }

    fn validate(self, n: usize) -> Result<()> {
        if let Draw::Stratified { group, groups } = self {
            if groups == 0 || group >= groups {
                return Err(Error::InvalidParameter {
                    name: "group",
                    value: group as f64,
                    reason: "stratified draws need groups >= 1 and group < groups",
                });
            }
            if n.checked_mul(groups).is_none() {
                return Err(Error::InvalidParameter {
                    name: "groups",
                    value: groups as f64,
                    reason: "the number of strata (draws times groups) overflows usize",
                });
            }
        }
        Ok(())
    }

    /// Turns `n` uniforms in `(0, 1)` into this draw's uniforms (in place).
    fn spread(self, u: &mut [f64]) {
        if let Draw::Stratified { group, groups } = self {
            let total = (u.len() * groups) as f64;
            for (i, v) in u.iter_mut().enumerate() {
                *v = ((group + i * groups) as f64 + *v) / total;
            }
        }
    }
}

/// A uniform draw in the open interval `(0, 1)` (53 random bits, centred in its cell).
fn open_uniform<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

fn bad(name: &'static str, value: f64, reason: &'static str) -> Result<()> {
    Err(Error::InvalidParameter { name, value, reason })
}

fn positive(name: &'static str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        bad(name, v, "must be finite and positive")
    }
}

fn finite(name: &'static str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        bad(name, v, "must be finite")
    }
}

/// Truncation bounds `0 <= min < max <= inf`.
fn bounds(min: f64, max: f64) -> Result<()> {
    if !(min.is_finite() && min >= 0.0) {
        return bad("min", min, "must be finite and non-negative");
    }
    if max.is_nan() || max <= min {
        return bad("max", max, "must be greater than min (inf for no truncation)");
    }
    Ok(())
}

/// The cosine schedule's log-SNR pieces of simple diffusion, as k-diffusion writes them.
#[derive(Clone, Copy)]
struct CosineInterp {
    lo: (f64, f64, f64),
    hi: (f64, f64, f64),
    sigma_data: f64,
}

impl CosineInterp {
    fn new(image_d: f64, noise_d_low: f64, noise_d_high: f64, sigma_data: f64, min: f64, max: f64) -> Self {
        let logsnr_min = -2.0 * (min / sigma_data).ln();
        let logsnr_max = -2.0 * (max / sigma_data).ln();
        // (t_min, t_max, shift) of logsnr_schedule_cosine_shifted.
        let piece = |noise_d: f64| {
            let shift = 2.0 * (noise_d / image_d).ln();
            let t_min = (-0.5 * (logsnr_max - shift)).exp().atan();
            let t_max = (-0.5 * (logsnr_min - shift)).exp().atan();
            (t_min, t_max, shift)
        };
        CosineInterp {
            lo: piece(noise_d_low),
            hi: piece(noise_d_high),
            sigma_data,
        }
    }

    /// `(logsnr, d logsnr / du)` of one shifted cosine piece.
    fn piece(p: (f64, f64, f64), u: f64) -> (f64, f64) {
        let (t_min, t_max, shift) = p;
        let th = t_min + u * (t_max - t_min);
        (
            -2.0 * th.tan().ln() + shift,
            -4.0 * (t_max - t_min) / (2.0 * th).sin(),
        )
    }

    /// `(ln sigma, d ln sigma / du)` at `u`.
    fn log_sigma(&self, u: f64) -> (f64, f64) {
        let (l, dl) = Self::piece(self.lo, u);
        let (h, dh) = Self::piece(self.hi, u);
        let logsnr = l + u * (h - l);
        let dlogsnr = dl + (h - l) + u * (dh - dl);
        (-0.5 * logsnr + self.sigma_data.ln(), -0.5 * dlogsnr)
    }

    /// The `u` whose sigma is `sigma` (the map is decreasing): bisection in `u`.
    fn inverse(&self, sigma: f64) -> f64 {
        let target = sigma.ln();
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..80 {
            let mid = 0.5 * (lo + hi);
            if self.log_sigma(mid).0 > target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    }
}

/// Draws that overflowed (a density far outside f64's range) are an error, not `Ok(inf)`.
fn finite_draws(draws: Vec<f64>) -> Result<Vec<f64>> {
    match draws.iter().find(|v| !v.is_finite()) {
        Some(&v) => Err(Error::InvalidParameter {
            name: "density",
            value: v,
            reason: "the density's parameters put draws beyond f64's range",
        }),
        None => Ok(draws),
    }
}

impl Density {
    /// SD3's default logit-normal density (`mean 0`, `std 1`).
    pub fn logit_normal() -> Self {
        Density::LogitNormal { mean: 0.0, std: 1.0 }
    }

    /// EDM's training sigma density (`ln sigma ~ N(-1.2, 1.2^2)`).
    pub fn edm() -> Self {
        Density::LogNormal { mean: -1.2, std: 1.2 }
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the first parameter out of range: non-finite values,
    /// non-positive scales, truncation bounds not `0 <= min < max`, a mode scale outside
    /// `[-1, 2 / (pi - 2)]`, a cosine-interpolated `min` that is zero or resolutions that make its
    /// map non-monotone, a truncation that leaves no probability mass.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Density::Uniform | Density::CosMap => Ok(()),
            Density::LogitNormal { mean, std } | Density::LogNormal { mean, std } => {
                finite("mean", mean)?;
                positive("std", std)
            }
            Density::Mode { scale } => {
                if (-1.0..=2.0 / (PI - 2.0)).contains(&scale) {
                    Ok(())
                } else {
                    bad(
                        "scale",
                        scale,
                        "the mode density needs scale in [-1, 2 / (pi - 2)]",
                    )
                }
            }
            Density::LogLogistic { loc, scale, min, max } => {
                finite("loc", loc)?;
                positive("scale", scale)?;
                bounds(min, max)?;
                self.mass()
            }
            Density::LogUniform { min, max } => {
                positive("min", min)?;
                positive("max", max)?;
                bounds(min, max)
            }
            Density::VDiffusion { sigma_data, min, max } => {
                positive("sigma_data", sigma_data)?;
                bounds(min, max)?;
                self.mass()
            }
            Density::CosineInterpolated {
                image_d,
                noise_d_low,
                noise_d_high,
                sigma_data,
                min,
                max,
            } => {
                positive("image_d", image_d)?;
                positive("noise_d_low", noise_d_low)?;
                positive("noise_d_high", noise_d_high)?;
                positive("sigma_data", sigma_data)?;
                positive("min", min)?;
                positive("max", max)?;
                bounds(min, max)?;
                // The CDF and density invert the map: it must decrease everywhere.
                let Some(c) = self.cosine() else { return Ok(()) };
                if (0..=64).any(|i| {
                    c.log_sigma(f64::from(i) / 64.0).1.partial_cmp(&0.0) != Some(std::cmp::Ordering::Less)
                }) {
                    return bad(
                        "noise_d_low",
                        noise_d_low,
                        "these resolutions make the interpolated schedule non-monotone (its CDF would not exist)",
                    );
                }
                Ok(())
            }
            Density::SplitLogNormal {
                loc,
                scale_1,
                scale_2,
            } => {
                finite("loc", loc)?;
                positive("scale_1", scale_1)?;
                positive("scale_2", scale_2)
            }
        }
    }

    /// Whether the density is of the timestep `t` in `(0, 1)` (`Uniform`, `LogitNormal`, `Mode`,
    /// `CosMap`) rather than of sigma.
    pub fn is_timestep(&self) -> bool {
        matches!(
            self,
            Density::Uniform | Density::LogitNormal { .. } | Density::Mode { .. } | Density::CosMap
        )
    }

    /// The support `[lo, hi]`.
    pub fn support(&self) -> (f64, f64) {
        match *self {
            Density::Uniform | Density::LogitNormal { .. } | Density::Mode { .. } | Density::CosMap => {
                (0.0, 1.0)
            }
            Density::LogNormal { .. } | Density::SplitLogNormal { .. } => (0.0, f64::INFINITY),
            Density::LogLogistic { min, max, .. }
            | Density::LogUniform { min, max }
            | Density::VDiffusion { min, max, .. }
            | Density::CosineInterpolated { min, max, .. } => (min, max),
        }
    }

    /// A truncation that leaves (numerically) no probability mass is an error.
    fn mass(&self) -> Result<()> {
        let (a, b) = self.truncation();
        if b > a {
            Ok(())
        } else {
            bad(
                "max",
                self.support().1,
                "the truncation [min, max] holds no probability mass in f64",
            )
        }
    }

    /// The interpolated cosine map of a `CosineInterpolated` density.
    fn cosine(&self) -> Option<CosineInterp> {
        match *self {
            Density::CosineInterpolated {
                image_d,
                noise_d_low,
                noise_d_high,
                sigma_data,
                min,
                max,
            } => Some(CosineInterp::new(
                image_d,
                noise_d_low,
                noise_d_high,
                sigma_data,
                min,
                max,
            )),
            _ => None,
        }
    }

    /// `(F(min), F(max))` of a truncated density's untruncated CDF.
    fn truncation(&self) -> (f64, f64) {
        match *self {
            Density::LogLogistic { loc, scale, min, max } => {
                let f = |x: f64| sigmoid((x.ln() - loc) / scale);
                (f(min), f(max))
            }
            Density::VDiffusion { sigma_data, min, max } => {
                let f = |x: f64| (x / sigma_data).atan() / FRAC_PI_2;
                (f(min), f(max))
            }
            _ => (0.0, 1.0),
        }
    }

    fn mode_map(scale: f64, u: f64) -> f64 {
        let c = (FRAC_PI_2 * u).cos();
        1.0 - u - scale * (c * c - 1.0 + u)
    }

    /// The quantile function: the value whose CDF is `u` (for `u` in `[0, 1]`).
    pub fn quantile(&self, u: f64) -> f64 {
        match *self {
            Density::Uniform => u,
            Density::LogitNormal { mean, std } => sigmoid(mean + std * norm_ppf(u)),
            // The mode map is decreasing: CDF(t) = 1 - map^-1(t).
            Density::Mode { scale } => Self::mode_map(scale, 1.0 - u),
            Density::CosMap => 1.0 - 1.0 / ((FRAC_PI_2 * u).tan() + 1.0),
            Density::LogNormal { mean, std } => (mean + std * norm_ppf(u)).exp(),
            Density::LogLogistic { loc, scale, .. } => {
                let (lo, hi) = self.truncation();
                (logit(lo + u * (hi - lo)) * scale + loc).exp()
            }
            Density::LogUniform { min, max } => (min.ln() + u * (max.ln() - min.ln())).exp(),
            Density::VDiffusion { sigma_data, .. } => {
                let (lo, hi) = self.truncation();
                (FRAC_PI_2 * (lo + u * (hi - lo))).tan() * sigma_data
            }
            // k-diffusion's map is decreasing in its uniform: quantile u is its 1 - u.
            Density::CosineInterpolated { .. } => {
                self.cosine().map_or(f64::NAN, |c| c.log_sigma(1.0 - u).0.exp())
            }
            Density::SplitLogNormal {
                loc,
                scale_1,
                scale_2,
            } => {
                let r = scale_1 / (scale_1 + scale_2);
                if u < r {
                    (loc + scale_1 * norm_ppf(0.5 * u / r)).exp()
                } else {
                    (loc + scale_2 * norm_ppf(0.5 + 0.5 * (u - r) / (1.0 - r))).exp()
                }
            }
        }
    }

    /// The cumulative distribution function.
    pub fn cdf(&self, x: f64) -> f64 {
        let (lo, hi) = self.support();
        if x <= lo {
            return 0.0;
        }
        if x >= hi {
            return 1.0;
        }
        match *self {
            Density::Uniform => x,
            Density::LogitNormal { mean, std } => norm_cdf((logit(x) - mean) / std),
            Density::Mode { scale } => {
                // Invert the decreasing map by bisection.
                let (mut a, mut b) = (0.0f64, 1.0f64);
                for _ in 0..80 {
                    let m = 0.5 * (a + b);
                    if Self::mode_map(scale, m) > x {
                        a = m;
                    } else {
                        b = m;
                    }
                }
                1.0 - 0.5 * (a + b)
            }
            Density::CosMap => (x / (1.0 - x)).atan() / FRAC_PI_2,
            Density::LogNormal { mean, std } => norm_cdf((x.ln() - mean) / std),
            Density::LogLogistic { loc, scale, .. } => {
                let (a, b) = self.truncation();
                (sigmoid((x.ln() - loc) / scale) - a) / (b - a)
            }
            Density::LogUniform { min, max } => (x.ln() - min.ln()) / (max.ln() - min.ln()),
            Density::VDiffusion { sigma_data, .. } => {
                let (a, b) = self.truncation();
                ((x / sigma_data).atan() / FRAC_PI_2 - a) / (b - a)
            }
            Density::CosineInterpolated { .. } => self.cosine().map_or(f64::NAN, |c| 1.0 - c.inverse(x)),
            Density::SplitLogNormal {
                loc,
                scale_1,
                scale_2,
            } => {
                let r = scale_1 / (scale_1 + scale_2);
                let y = x.ln() - loc;
                if y < 0.0 {
                    2.0 * r * norm_cdf(y / scale_1)
                } else {
                    r + 2.0 * (1.0 - r) * (norm_cdf(y / scale_2) - 0.5)
                }
            }
        }
    }

    /// The probability density at `x` (with respect to `t` or `sigma` itself, not its log), for
    /// importance weighting.
    ///
    /// ```
    /// use diffusion_samplers::forward::Density;
    /// // SD3's cosmap density is the cosmap loss weight: 2 / (pi (1 - 2t + 2t^2)).
    /// let t = 0.3f64;
    /// let want = 2.0 / (std::f64::consts::PI * (1.0 - 2.0 * t + 2.0 * t * t));
    /// assert!((Density::CosMap.pdf(t) - want).abs() < 1e-15);
    /// // Weights that turn logit-normal draws into uniform ones: 1 / pdf.
    /// let w = 1.0 / Density::logit_normal().pdf(t);
    /// assert!(w > 0.0 && w.is_finite());
    /// ```
    pub fn pdf(&self, x: f64) -> f64 {
        let (lo, hi) = self.support();
        if !(x > lo && x < hi) {
            return 0.0;
        }
        match *self {
            Density::Uniform => 1.0,
            Density::LogitNormal { mean, std } => norm_pdf((logit(x) - mean) / std) / (std * x * (1.0 - x)),
            Density::Mode { scale } => {
                let u = 1.0 - self.cdf(x);
                // |d map / du| = 1 + scale (1 - pi/2 sin(pi u)).
                1.0 / (1.0 + scale * (1.0 - FRAC_PI_2 * (PI * u).sin()))
            }
            Density::CosMap => 2.0 / (PI * (1.0 - 2.0 * x + 2.0 * x * x)),
            Density::LogNormal { mean, std } => norm_pdf((x.ln() - mean) / std) / (std * x),
            Density::LogLogistic { loc, scale, .. } => {
                let (a, b) = self.truncation();
                let s = sigmoid((x.ln() - loc) / scale);
                s * (1.0 - s) / (scale * x * (b - a))
            }
            Density::LogUniform { min, max } => 1.0 / (x * (max.ln() - min.ln())),
            Density::VDiffusion { sigma_data, .. } => {
                let (a, b) = self.truncation();
                sigma_data / (FRAC_PI_2 * (sigma_data * sigma_data + x * x) * (b - a))
            }
            Density::CosineInterpolated { .. } => self
                .cosine()
                .map_or(f64::NAN, |c| 1.0 / (x * c.log_sigma(c.inverse(x)).1.abs())),
            Density::SplitLogNormal {
                loc,
                scale_1,
                scale_2,
            } => {
                let y = x.ln() - loc;
                let s = if y < 0.0 { scale_1 } else { scale_2 };
                2.0 * norm_pdf(y / s) / ((scale_1 + scale_2) * x)
            }
        }
    }

    /// Draws `n` values with `rng` (through the quantile of uniforms in `(0, 1)`; stratified as
    /// `draw` says).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for parameters out of range (see
    /// [`validate`](Self::validate)), a stratification with `group >= groups` (or so many groups
    /// that the strata overflow `usize`), or draws that
    /// overflow f64 (a log-normal with a mean of 800, say).
    pub fn sample<R: Rng + ?Sized>(&self, n: usize, draw: Draw, rng: &mut R) -> Result<Vec<f64>> {
        self.validate()?;
        draw.validate(n)?;
        let mut u: Vec<f64> = (0..n).map(|_| open_uniform(rng)).collect();
        draw.spread(&mut u);
        let (lo, hi) = self.support();
        finite_draws(u.into_iter().map(|u| self.quantile(u).clamp(lo, hi)).collect())
    }

    /// Draws `n` values as the Python reference does from a torch generator `generator`, so a seeded
    /// Python training run's timesteps / sigmas are reproduced (computed in f64 from the same
    /// float32 / float64 draws; the reference computes in float32, ~1e-6 relative apart):
    ///
    /// * k-diffusion's `rand_log_normal` (`torch.rand` float32, squeezed to `[1e-7, 1 - 1e-7]`,
    ///   then the normal quantile), `rand_log_logistic` (`torch.rand` float64),
    ///   `rand_log_uniform`, `rand_v_diffusion`, `rand_cosine_interpolated` (`torch.rand`
    ///   float32), `rand_split_log_normal` (`torch.randn` then `torch.rand`, float32; it ignores
    ///   stratification, so a stratified `draw` is refused); stratified draws as
    ///   `utils.enable_stratified(group, groups)` makes them;
    /// * diffusers' `compute_density_for_timestep_sampling`: `logit_normal` (`torch.normal`),
    ///   `mode` and uniform (`torch.rand` float32) — stratified draws use k-diffusion's
    ///   stratified uniforms and the quantile instead;
    /// * `CosMap` has no Python sampler: `torch.rand` float32 through the quantile.
    ///
    /// ```
    /// use diffusion_samplers::forward::{Density, Draw};
    /// use diffusion_samplers::noise::TorchGenerator;
    /// // torch.manual_seed(0); k_diffusion.utils.rand_log_normal([4], -1.2, 1.2): the same
    /// // sigmas, drawn from the same uniforms.
    /// let d = Density::edm();
    /// let a = d.sample_torch(4, Draw::Independent, &mut TorchGenerator::new(0))?;
    /// let mut g = TorchGenerator::new(0);
    /// let mut u = [0f32; 4];
    /// g.rand_f32(&mut u);
    /// for (s, u) in a.iter().zip(u) {
    ///     assert!((s - d.quantile(f64::from(u) * (1.0 - 2e-7) + 1e-7)).abs() < 1e-12);
    /// }
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`sample`](Self::sample); also a stratified `draw` for `SplitLogNormal`.
    pub fn sample_torch(&self, n: usize, draw: Draw, generator: &mut TorchGenerator) -> Result<Vec<f64>> {
        let (lo, hi) = self.support();
        finite_draws(
            self.torch_draws(n, draw, generator)?
                .into_iter()
                .map(|v| v.clamp(lo, hi))
                .collect(),
        )
    }

    fn torch_draws(&self, n: usize, draw: Draw, generator: &mut TorchGenerator) -> Result<Vec<f64>> {
        self.validate()?;
        draw.validate(n)?;
        let rand_f32 = |generator: &mut TorchGenerator| {
            let mut u = vec![0f32; n];
            generator.rand_f32(&mut u);
            u.into_iter().map(f64::from).collect::<Vec<f64>>()
        };
        let randn = |generator: &mut TorchGenerator| {
            // Below 16 elements torch draws float32 normals from its double-precision scalar
            // sampler; from 16 on with its float32 block kernel.
            if n < 16 {
                let mut z = vec![0f64; n];
                generator.randn_f64(&mut z);
                z
            } else {
                let mut z = vec![0f32; n];
                generator.randn_f32(&mut z);
                z.into_iter().map(f64::from).collect()
            }
        };
        match *self {
            Density::SplitLogNormal {
                loc,
                scale_1,
                scale_2,
            } => {
                if draw != Draw::Independent {
                    return Err(Error::InvalidParameter {
                        name: "draw",
                        value: 0.0,
                        reason: "k-diffusion's split log-normal does not stratify; use sample() for stratified draws",
                    });
                }
                let z = randn(generator);
                let u = rand_f32(generator);
                let r = scale_1 / (scale_1 + scale_2);
                Ok(z.iter()
                    .zip(&u)
                    .map(|(&z, &u)| {
                        let a = z.abs();
                        if u < r {
                            loc - a * scale_1
                        } else {
                            loc + a * scale_2
                        }
                        .exp()
                    })
                    .collect())
            }
            Density::LogitNormal { mean, std } if draw == Draw::Independent => Ok(randn(generator)
                .into_iter()
                .map(|z| sigmoid(mean + std * z))
                .collect()),
            _ => {
                let mut u = if matches!(self, Density::LogLogistic { .. }) {
                    let mut u = vec![0f64; n];
                    generator.rand_f64(&mut u);
                    u
                } else {
                    rand_f32(generator)
                };
                draw.spread(&mut u);
                Ok(u.into_iter()
                    .map(|u| match *self {
                        Density::LogNormal { .. } => self.quantile(u * (1.0 - 2e-7) + 1e-7),
                        // diffusers' own map of the uniform (its draws reversed); stratified
                        // draws keep stratum order through the quantile.
                        Density::Mode { scale } if draw == Draw::Independent => Self::mode_map(scale, u),
                        Density::CosineInterpolated { .. } => self.quantile(1.0 - u),
                        _ => self.quantile(u),
                    })
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn all() -> Vec<Density> {
        vec![
            Density::Uniform,
            Density::logit_normal(),
            Density::LogitNormal { mean: 0.5, std: 0.8 },
            Density::Mode { scale: 1.29 },
            Density::Mode { scale: -0.5 },
            Density::CosMap,
            Density::edm(),
            Density::LogLogistic {
                loc: -0.5,
                scale: 0.6,
                min: 0.0,
                max: f64::INFINITY,
            },
            Density::LogLogistic {
                loc: -0.5,
                scale: 0.6,
                min: 1e-3,
                max: 80.0,
            },
            Density::LogUniform {
                min: 0.002,
                max: 80.0,
            },
            Density::VDiffusion {
                sigma_data: 0.5,
                min: 0.0,
                max: f64::INFINITY,
            },
            Density::VDiffusion {
                sigma_data: 1.0,
                min: 1e-2,
                max: 50.0,
            },
            Density::CosineInterpolated {
                image_d: 64.0,
                noise_d_low: 32.0,
                noise_d_high: 64.0,
                sigma_data: 0.5,
                min: 1e-3,
                max: 1e3,
            },
            Density::SplitLogNormal {
                loc: -0.5,
                scale_1: 1.0,
                scale_2: 1.6,
            },
        ]
    }

    /// The quantile inverts the CDF, and the density is the CDF's derivative (central
    /// differences in log space, relative 1e-6: an error in either formula is far larger).
    #[test]
    fn quantile_cdf_and_pdf_agree() {
        for d in all() {
            for &u in &[0.01, 0.1, 0.3, 0.5, 0.77, 0.95, 0.999] {
                let x = d.quantile(u);
                assert!((d.cdf(x) - u).abs() < 1e-9, "{d:?} u {u}: cdf {}", d.cdf(x));
                let h = 1e-5 * x.max(1e-300);
                let num = (d.cdf(x + h) - d.cdf(x - h)) / (2.0 * h);
                assert!(
                    (num / d.pdf(x) - 1.0).abs() < 1e-5,
                    "{d:?} at {x}: {num} vs {}",
                    d.pdf(x)
                );
            }
        }
    }

    #[test]
    fn stratified_draws_fill_every_stratum_once() {
        let mut rng = StdRng::seed_from_u64(3);
        for d in all() {
            let s = d.sample(64, Draw::stratified(), &mut rng).unwrap();
            for (i, &x) in s.iter().enumerate() {
                let u = d.cdf(x);
                assert!(
                    u >= i as f64 / 64.0 - 1e-9 && u <= (i + 1) as f64 / 64.0 + 1e-9,
                    "{d:?} {i} {u}"
                );
            }
            // Two groups of 32 cover the 64 strata together.
            let mut cover = vec![0; 64];
            for g in 0..2 {
                let s = d
                    .sample(32, Draw::Stratified { group: g, groups: 2 }, &mut rng)
                    .unwrap();
                for x in s {
                    cover[((d.cdf(x) * 64.0) as usize).min(63)] += 1;
                }
            }
            assert!(cover.iter().all(|&c| c == 1), "{d:?} {cover:?}");
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        let mut rng = StdRng::seed_from_u64(0);
        let bad = [
            Density::LogNormal { mean: 0.0, std: 0.0 },
            Density::LogitNormal {
                mean: f64::NAN,
                std: 1.0,
            },
            Density::Mode { scale: 2.0 },
            Density::LogUniform { min: 1.0, max: 1.0 },
            Density::LogLogistic {
                loc: 0.0,
                scale: 1.0,
                min: -1.0,
                max: 1.0,
            },
            Density::VDiffusion {
                sigma_data: 1.0,
                min: 2.0,
                max: 1.0,
            },
        ];
        for d in bad {
            assert!(
                matches!(
                    d.sample(4, Draw::Independent, &mut rng),
                    Err(Error::InvalidParameter { .. })
                ),
                "{d:?}"
            );
        }
        assert!(
            Density::Uniform
                .sample(4, Draw::Stratified { group: 2, groups: 2 }, &mut rng)
                .is_err()
        );
        // Regression: strata counts overflowing usize panicked (debug) or wrapped (release).
        assert!(
            Density::Uniform
                .sample(
                    2,
                    Draw::Stratified {
                        group: 0,
                        groups: usize::MAX
                    },
                    &mut rng
                )
                .is_err()
        );
        // Regression: resolutions making the interpolated cosine map non-monotone were accepted
        // (its CDF then misses by up to 0.98).
        let wild = Density::CosineInterpolated {
            image_d: 64.0,
            noise_d_low: 4096.0,
            noise_d_high: 1.0,
            sigma_data: 1.0,
            min: 1e-3,
            max: 1e3,
        };
        assert!(wild.validate().is_err());
        // A truncation with no mass in f64.
        let empty = Density::VDiffusion {
            sigma_data: 1e-300,
            min: 0.5,
            max: 1.0,
        };
        assert!(empty.sample(2, Draw::Independent, &mut rng).is_err());
        let split = Density::SplitLogNormal {
            loc: 0.0,
            scale_1: 1.0,
            scale_2: 1.0,
        };
        assert!(
            split
                .sample_torch(4, Draw::stratified(), &mut TorchGenerator::new(0))
                .is_err()
        );
    }
}
