//! Fused element-wise update kernels shared by several samplers.

use ndarray::{Array, ArrayView, ArrayViewMut, Axis, Dimension, Zip};

use super::Estimate;
use super::x0::{Clamp, X0Policy};
use crate::error::Result;
use crate::float::Float;

/// Coefficients of `x <- clamped * clamp(d) + raw * d + x * x + z * z`, where `d` is the raw x0
/// estimate: the shape of the DDPM and DDIM updates (and of Euler / Euler ancestral).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Affine {
    pub clamped: f64,
    pub raw: f64,
    pub x: f64,
    pub z: f64,
}

/// How the x0 estimate is clamped: one clamp for the whole array, or one per batch element.
pub(crate) enum Clamps<F> {
    Uniform(Clamp<F>),
    PerSample(Vec<Clamp<F>>),
}

impl<F: Float> Clamps<F> {
    /// The clamps for `policy`; with thresholding the estimate is materialised first.
    pub(crate) fn for_policy<D: Dimension>(
        est: &mut Estimate<F, D>,
        x: &Array<F, D>,
        policy: &X0Policy,
        scratch: &mut Vec<F>,
    ) -> Result<Self> {
        Ok(match (policy.threshold, policy.clip) {
            (Some(t), _) => Clamps::PerSample(est.materialize_thresholds(x, t, scratch)?),
            (None, Some(c)) => Clamps::Uniform(Clamp {
                lim: F::cast(c),
                inv: F::one(),
            }),
            (None, None) => Clamps::Uniform(Clamp::none()),
        })
    }
}

/// Applies the [`Affine`] update in place, in one pass (per batch element when thresholding).
pub(crate) fn affine_step<F: Float, D: Dimension>(
    x: &mut Array<F, D>,
    est: &Estimate<F, D>,
    clamps: &Clamps<F>,
    k: Affine,
    z: Option<&Array<F, D>>,
) -> bool {
    let (cx, co) = (est.cx, est.co);
    match clamps {
        Clamps::Uniform(c) => affine_view(x.view_mut(), est.out.view(), z.map(|z| z.view()), cx, co, *c, k),
        Clamps::PerSample(cs) if x.ndim() == 0 => affine_view(
            x.view_mut(),
            est.out.view(),
            z.map(|z| z.view()),
            cx,
            co,
            cs[0],
            k,
        ),
        Clamps::PerSample(cs) => {
            let mut fin = true;
            let mut x = x.view_mut().into_dyn();
            let out = est.out.view().into_dyn();
            let z = z.map(|z| z.view().into_dyn());
            for (b, c) in cs.iter().enumerate() {
                let zb = z.as_ref().map(|z| z.index_axis(Axis(0), b));
                fin &= affine_view(
                    x.index_axis_mut(Axis(0), b),
                    out.index_axis(Axis(0), b),
                    zb,
                    cx,
                    co,
                    *c,
                    k,
                );
            }
            fin
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn affine_view<F: Float, E: Dimension>(
    x: ArrayViewMut<'_, F, E>,
    out: ArrayView<'_, F, E>,
    z: Option<ArrayView<'_, F, E>>,
    cx: F,
    co: F,
    c: Clamp<F>,
    k: Affine,
) -> bool {
    let (kc, kr, kx, kz) = (F::cast(k.clamped), F::cast(k.raw), F::cast(k.x), F::cast(k.z));
    // The fast path: no clamp, so clamp(d) = d and the update is linear in (x, out, z).
    // Non-finite values propagate into the new sample (NaN * 0 is NaN), so checking the new
    // sample alone catches a bad model output or noise; `attribute` says which it was.
    if c.is_none() {
        let (kd, kx2) = (kc + kr, kx);
        return match z {
            None => Zip::from(x).and(out).fold(true, |ok, x, &o| {
                let nx = kd * (cx * *x + co * o) + kx2 * *x;
                *x = nx;
                ok & nx.is_finite()
            }),
            Some(z) => Zip::from(x).and(out).and(z).fold(true, |ok, x, &o, &z| {
                let nx = kd * (cx * *x + co * o) + kx2 * *x + kz * z;
                *x = nx;
                ok & nx.is_finite()
            }),
        };
    }
    match z {
        None => Zip::from(x).and(out).fold(true, |ok, x, &o| {
            let d = cx * *x + co * o;
            let nx = kc * c.apply(d) + kr * d + kx * *x;
            *x = nx;
            // clamp() maps NaN to a bound: check d itself too.
            ok & nx.is_finite() & d.is_finite()
        }),
        Some(z) => Zip::from(x).and(out).and(z).fold(true, |ok, x, &o, &z| {
            let d = cx * *x + co * o;
            let nx = kc * c.apply(d) + kr * d + kx * *x + kz * z;
            *x = nx;
            ok & nx.is_finite() & d.is_finite()
        }),
    }
}
