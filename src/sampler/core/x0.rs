//! Processing of the x0 estimate: clipping (`clip_sample`) and dynamic thresholding (Imagen).

use ndarray::{Axis, Dimension};

use crate::error::{Error, Result};
use crate::float::Float;

/// Dynamic thresholding of the x0 estimate (Saharia et al. 2022, *Imagen*), as diffusers'
/// `thresholding = True`: per batch element, `s` = the `ratio` quantile of `|x0|`, clamped to
/// `[1, max]`; then `x0 <- clamp(x0, -s, s) / s`.
///
/// Defaults are diffusers' (`dynamic_thresholding_ratio = 0.995`, `sample_max_value = 1.0`).
/// With `max = 1` it is plain clipping to `[-1, 1]`; pixel-space models use larger `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholding {
    /// The quantile of `|x0|` used as the threshold, in (0, 1].
    pub ratio: f64,
    /// Upper bound of the threshold (`sample_max_value`), at least 1.
    pub max: f64,
}

impl Default for Thresholding {
    fn default() -> Self {
        Thresholding {
            ratio: 0.995,
            max: 1.0,
        }
    }
}

/// What is done to the x0 estimate before a sampler uses it. Thresholding takes priority over
/// clipping, as in diffusers.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub(crate) struct X0Policy {
    pub clip: Option<f64>,
    pub threshold: Option<Thresholding>,
}

impl X0Policy {
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(t) = self.threshold {
            if !(t.ratio > 0.0 && t.ratio <= 1.0) {
                return Err(Error::InvalidParameter {
                    name: "thresholding.ratio",
                    value: t.ratio,
                    reason: "must be in (0, 1]",
                });
            }
            if !(t.max >= 1.0 && t.max.is_finite()) {
                return Err(Error::InvalidParameter {
                    name: "thresholding.max",
                    value: t.max,
                    reason: "must be finite and at least 1",
                });
            }
        }
        // Checked even when thresholding (which takes priority) is set: an invalid value is
        // never silently ignored.
        if let Some(c) = self.clip
            && !(c > 0.0 && c.is_finite())
        {
            return Err(Error::InvalidParameter {
                name: "clip_sample",
                value: c,
                reason: "the clip range must be positive and finite",
            });
        }
        Ok(())
    }
}

/// `v -> clamp(v, -lim, lim) * inv`, per element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Clamp<F> {
    pub lim: F,
    pub inv: F,
}

impl<F: Float> Clamp<F> {
    pub(crate) fn none() -> Self {
        Clamp {
            lim: F::infinity(),
            inv: F::one(),
        }
    }
    #[allow(
        clippy::float_cmp,
        reason = "the identity clamp is built from exact constants"
    )]
    pub(crate) fn is_none(&self) -> bool {
        self.lim == F::infinity() && self.inv == F::one()
    }

    /// `v`, made NaN if `raw` is not finite: what a kernel stores from a clamped estimate, so
    /// that a bad model output is still visible (and attributed) after the clamp hid it.
    #[inline(always)]
    pub(crate) fn keep(self, v: F, raw: F) -> F {
        v + raw * F::zero()
    }

    /// Clamps to `[-lim, lim]` and rescales; NaN stays NaN (as `torch.clamp`). Written with
    /// comparisons, which vectorise (`max`/`min` must ignore NaN, and do not).
    #[inline(always)]
    pub(crate) fn apply(self, v: F) -> F {
        let v = if v > self.lim { self.lim } else { v };
        let v = if v < -self.lim { -self.lim } else { v };
        v * self.inv
    }
}

/// The identity clamp, for kernels specialised to the unclamped case.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NoClamp;

impl NoClamp {
    #[inline(always)]
    pub(crate) fn apply<F>(self, v: F) -> F {
        v
    }
    #[inline(always)]
    pub(crate) fn keep<F>(self, v: F, _raw: F) -> F {
        v
    }
}

/// Per-batch-element thresholds of an x0 estimate (axis 0 is the batch; a 0-d array is one
/// element). `scratch` is reused between steps.
pub(crate) fn thresholds<F: Float, D: Dimension>(
    x0: &ndarray::Array<F, D>,
    t: Thresholding,
    scratch: &mut Vec<F>,
) -> Vec<Clamp<F>> {
    let mut one = |values: &mut dyn Iterator<Item = F>| {
        scratch.clear();
        scratch.extend(values.map(|v| v.abs()));
        let s = quantile(scratch, t.ratio).clamp(1.0, t.max);
        Clamp {
            lim: F::cast(s),
            inv: F::cast(1.0 / s),
        }
    };
    if x0.ndim() == 0 {
        return vec![one(&mut x0.iter().copied())];
    }
    x0.view()
        .into_dyn()
        .axis_iter(Axis(0))
        .map(|sub| one(&mut sub.iter().copied()))
        .collect()
}

/// torch.quantile with linear interpolation; `v` is reordered. NaNs sort last.
fn quantile<F: Float>(v: &mut [F], q: f64) -> f64 {
    if v.is_empty() {
        return 1.0;
    }
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = pos - lo as f64;
    let (_, &mut a, rest) = v.select_nth_unstable_by(lo, |a, b| a.as_f64().total_cmp(&b.as_f64()));
    let a = a.as_f64();
    if frac == 0.0 || rest.is_empty() {
        return a;
    }
    let b = rest.iter().map(|v| v.as_f64()).fold(f64::INFINITY, f64::min);
    a + frac * (b - a)
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn quantile_matches_torch_linear() {
        // torch.quantile(tensor([1., 2., 3., 4.]), 0.995) = 3.985
        let mut v = vec![4.0f64, 1.0, 3.0, 2.0];
        assert!((quantile(&mut v, 0.995) - 3.985).abs() < 1e-12);
        let mut v = vec![5.0f64];
        assert_eq!(quantile(&mut v, 0.5), 5.0);
    }

    #[test]
    fn per_element_thresholds() {
        let x0 = array![[0.5f64, -3.0, 2.0], [0.1, 0.2, -0.3]];
        let t = thresholds(&x0, Thresholding { ratio: 1.0, max: 2.5 }, &mut Vec::new());
        assert_eq!(t[0].lim, 2.5); // quantile 3 clamped to max
        assert_eq!(t[1].lim, 1.0); // quantile 0.3 clamped to 1
        assert_eq!(t[0].apply(-3.0), -1.0);
        assert_eq!(Clamp::<f64>::none().apply(7.0), 7.0);
    }

    #[test]
    fn validation() {
        let p = X0Policy {
            clip: Some(-1.0),
            threshold: None,
        };
        assert!(p.validate().is_err());
        let p = X0Policy {
            clip: None,
            threshold: Some(Thresholding { ratio: 0.0, max: 1.0 }),
        };
        assert!(p.validate().is_err());
        let p = X0Policy {
            clip: None,
            threshold: Some(Thresholding { ratio: 0.9, max: 0.5 }),
        };
        assert!(p.validate().is_err());
        assert!(X0Policy::default().validate().is_ok());
        // Regression: an invalid clip range was ignored when thresholding was also set.
        let p = X0Policy {
            clip: Some(f64::NAN),
            threshold: Some(Thresholding::default()),
        };
        assert!(p.validate().is_err());
    }
}
