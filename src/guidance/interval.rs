//! Guidance only on part of the run: step fractions (diffusers' `start` / `stop`) or a range of
//! noise levels (Kynkäänniemi et al. 2024's guidance interval).

use ndarray::{ArrayViewMut, Dimension};

use super::rule::{Context, GuidanceRule};
use crate::denoiser::Call;
use crate::error::{Error, Result};
use crate::float::Float;

/// Where the interval is measured.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Range {
    /// Steps `floor(start N) <= step < floor(stop N)` of a run of `N` steps.
    Steps { start: f64, stop: f64 },
    /// Levels with `lo <= sigma <= hi`, `sigma` k-diffusion's `sigma / alpha`.
    Sigmas { lo: f64, hi: f64 },
}

/// A rule applied on part of the run only; elsewhere the conditional output is the guided one
/// and the unconditional branch is not evaluated (so stateful rules, APG's momentum, advance
/// only inside the interval, as in diffusers).
///
/// * [`steps`](Self::steps): diffusers' `start` / `stop` on every guider — guidance on steps
///   `floor(start N) <= step < floor(stop N)` of `N` (truncated, half-open, as diffusers
///   computes it);
/// * [`sigmas`](Self::sigmas): the guidance interval of Kynkäänniemi et al. (2024), guidance at
///   levels whose k-diffusion sigma (`sigma / alpha`; for flow models `s / (1 - s)` of the flow
///   sigma `s`) lies in `[lo, hi]`, both ends included as in ComfyUI's percent ranges
///   (`ModelSampling::percent_to_sigma` converts ComfyUI's percents).
///
/// A guidance interval covering every level is the rule itself.
///
/// ```
/// use diffusion_samplers::guidance::{Cfg, GuidanceRule, Interval};
/// use diffusion_samplers::{Call, NoiseLevel};
/// let rule = Interval::steps(Cfg::new(5.0), 0.2, 0.8)?;
/// let at = |step| Call::new(step, step, 5, NoiseLevel::from_alpha_bar(0.0, 0.5));
/// let on: Vec<bool> = (0..5).map(|k| rule.needs_uncond(&at(k))).collect();
/// assert_eq!(on, [false, true, true, true, false]); // steps 1, 2, 3 of 5
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// [^interval]: T. Kynkäänniemi, M. Aittala, T. Karras, S. Laine, T. Aila, J. Lehtinen,
///     *Applying Guidance in a Limited Interval Improves Sample and Distribution Quality in
///     Diffusion Models*, NeurIPS 2024, arXiv:2404.07724.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval<R> {
    inner: R,
    range: Range,
}

impl<R> Interval<R> {
    /// `inner` on steps `floor(start N) <= step < floor(stop N)` (diffusers' `start`, `stop`:
    /// `0 <= start < 1`, `start <= stop <= 1`).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] outside those ranges.
    pub fn steps(inner: R, start: f64, stop: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&start) {
            return Err(Error::InvalidParameter {
                name: "start",
                value: start,
                reason: "must be in [0, 1)",
            });
        }
        if !(start..=1.0).contains(&stop) {
            return Err(Error::InvalidParameter {
                name: "stop",
                value: stop,
                reason: "must be in [start, 1]",
            });
        }
        Ok(Interval {
            inner,
            range: Range::Steps { start, stop },
        })
    }

    /// `inner` at levels whose k-diffusion sigma is in `[lo, hi]` (`hi` may be infinite).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] unless `0 <= lo <= hi` (and `lo` finite).
    pub fn sigmas(inner: R, lo: f64, hi: f64) -> Result<Self> {
        if !(lo.is_finite() && lo >= 0.0) {
            return Err(Error::InvalidParameter {
                name: "lo",
                value: lo,
                reason: "must be finite and non-negative",
            });
        }
        if hi.is_nan() || hi < lo {
            return Err(Error::InvalidParameter {
                name: "hi",
                value: hi,
                reason: "must be at least lo",
            });
        }
        Ok(Interval {
            inner,
            range: Range::Sigmas { lo, hi },
        })
    }

    /// The wrapped rule.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Whether guidance is on for `call`.
    pub fn contains(&self, call: &Call) -> bool {
        match self.range {
            // An adaptive run (no step count): on throughout, as diffusers without one.
            Range::Steps { .. } if call.steps == 0 => true,
            Range::Steps { start, stop } => {
                let n = call.steps as f64;
                let (a, b) = ((start * n) as usize, (stop * n) as usize);
                (a..b).contains(&call.step)
            }
            Range::Sigmas { lo, hi } => {
                let s = call.level.sigma_ve();
                lo <= s && s <= hi
            }
        }
    }
}

impl<R: GuidanceRule> GuidanceRule for Interval<R> {
    fn check(&self) -> Result<()> {
        self.inner.check()
    }

    fn needs_uncond(&self, call: &Call) -> bool {
        self.contains(call) && self.inner.needs_uncond(call)
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        if self.contains(&ctx.call) {
            self.inner.combine(ctx, cond, uncond)
        } else {
            Ok(())
        }
    }
}
