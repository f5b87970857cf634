//! Fused element-wise update kernels shared by several samplers.

use ndarray::{Array, ArrayView, ArrayViewMut, Axis, Dimension, Zip};

use super::Estimate;
use super::history::History;
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
    // The fast path: no clamp, so clamp(d) = d and the update is linear in (x, out, z), with
    // the coefficients folded in `f64`. Non-finite values propagate into the new sample (NaN * a
    // and inf * a are non-finite for a != 0, and NaN * 0 too), so probing the new sample alone
    // catches a bad model output or noise; `attribute` says which it was.
    let kd = k.clamped + k.raw;
    if c.is_none() && kd * co.as_f64() != 0.0 {
        let (ax, ao) = (F::cast(kd * cx.as_f64() + k.x), F::cast(kd * co.as_f64()));
        return match z {
            None => fold_finite!(Zip::from(x).and(out), |x, &o| {
                *x = ax * *x + ao * o;
                *x
            }),
            Some(z) => fold_finite!(Zip::from(x).and(out).and(z), |x, &o, &z| {
                *x = ax * *x + ao * o + kz * z;
                *x
            }),
        };
    }
    // clamp() maps NaN to a bound: probe the raw estimate too.
    match z {
        None => fold_finite!(Zip::from(x).and(out), |x, &o| {
            let d = cx * *x + co * o;
            *x = kc * c.apply(d) + kr * d + kx * *x;
            *x + d * F::zero()
        }),
        Some(z) => fold_finite!(Zip::from(x).and(out).and(z), |x, &o, &z| {
            let d = cx * *x + co * o;
            *x = kc * c.apply(d) + kr * d + kx * *x + kz * z;
            *x + d * F::zero()
        }),
    }
}

/// What a multistep update writes back into the model-output buffer (which then joins the
/// history): the processed x0 estimate, the noise estimate `ex x_old + ed x0`, or nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Store {
    X0,
    Eps { ex: f64, ed: f64 },
}

/// Coefficients of `x <- x * x + d * x0 + sum_j h[j] * history[j] + z * noise`, where `x0` is the
/// (clamped) estimate from the model output. Folding `eps = (x - alpha x0) / sigma` terms into
/// `x` and `d` is the caller's job.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub(crate) struct Lin {
    pub x: f64,
    pub d: f64,
    pub h: [f64; 3],
    pub z: f64,
}

macro_rules! lin_kernel {
    ($name:ident; $mode:ident; $($h:ident: $j:tt),*) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<F: Float, D: Dimension>(
            x: &mut Array<F, D>,
            o: &mut Array<F, D>,
            $($h: &Array<F, D>,)*
            z: Option<&Array<F, D>>,
            conv: (F, F),
            c: Clamp<F>,
            store: Store,
            k: &Lin,
        ) -> bool {
            let (cx, co) = conv;
            let (kx, kd, kz) = (F::cast(k.x), F::cast(k.d), F::cast(k.z));
            let kh = [F::cast(k.h[0]), F::cast(k.h[1]), F::cast(k.h[2])];
            let _ = kh;
            let (sx, sd) = match store {
                Store::X0 => (0.0, 1.0),
                Store::Eps { ex, ed } => (ex, ed),
            };
            // The fast path, without a clamp: d = cx x + co o is folded into both outputs'
            // coefficients (in f64), and only the new sample is probed — it is non-finite if
            // the model output is (NaN * a and inf * a are non-finite for a != 0).
            let (ax, ao) = (k.x + k.d * cx.as_f64(), k.d * co.as_f64());
            if c.is_none() && ao != 0.0 {
                let (cx, co) = (cx.as_f64(), co.as_f64());
                let (ox, oo) = (F::cast(sx + sd * cx), F::cast(sd * co));
                let (ax, ao) = (F::cast(ax), F::cast(ao));
                return match z {
                    None => fold_finite!(par; Zip::from(x).and(o)$(.and($h))*, |x, o, $($h),*| {
                        let (x0, o0) = (*x, *o);
                        *o = ox * x0 + oo * o0;
                        *x = ax * x0 + ao * o0 $(+ kh[$j] * *$h)*;
                        *x
                    }),
                    Some(z) => fold_finite!($mode; Zip::from(x).and(o)$(.and($h))*.and(z), |x, o, $($h,)* &z| {
                        let (x0, o0) = (*x, *o);
                        *o = ox * x0 + oo * o0;
                        *x = ax * x0 + ao * o0 $(+ kh[$j] * *$h)* + kz * z;
                        *x
                    }),
                };
            }
            let (sx, sd) = (F::cast(sx), F::cast(sd));
            // clamp() maps NaN to a bound: probe the raw estimate too.
            match z {
                None => fold_finite!(par; Zip::from(x).and(o)$(.and($h))*, |x, o, $($h),*| {
                    let raw = cx * *x + co * *o;
                    let d = c.apply(raw);
                    *o = c.keep(sx * *x + sd * d, raw);
                    *x = kx * *x + kd * d $(+ kh[$j] * *$h)*;
                    *x + raw * F::zero()
                }),
                Some(z) => fold_finite!($mode; Zip::from(x).and(o)$(.and($h))*.and(z), |x, o, $($h,)* &z| {
                    let raw = cx * *x + co * *o;
                    let d = c.apply(raw);
                    *o = c.keep(sx * *x + sd * d, raw);
                    *x = kx * *x + kd * d $(+ kh[$j] * *$h)* + kz * z;
                    *x + raw * F::zero()
                }),
            }
        }
    };
}

lin_kernel!(lin0; par;);
lin_kernel!(lin1; par; h0: 0);
lin_kernel!(lin2; par; h0: 0, h1: 1);
lin_kernel!(lin3; seq; h0: 0, h1: 1, h2: 2);

/// One fused pass of a multistep update: turns the model output in `est` into the clamped x0
/// estimate, stores it (or the noise estimate) back into the output buffer, and updates `x`
/// with `k` over the newest `n` (at most three) history arrays. Returns whether everything
/// stayed finite.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lin_step<F: Float, D: Dimension>(
    x: &mut Array<F, D>,
    est: &mut Estimate<F, D>,
    clamp: Clamp<F>,
    store: Store,
    hist: &History<F, D>,
    n: usize,
    z: Option<&Array<F, D>>,
    k: &Lin,
) -> bool {
    let conv = (est.cx, est.co);
    let o = &mut est.out;
    match n.min(hist.len()) {
        0 => lin0(x, o, z, conv, clamp, store, k),
        1 => lin1(x, o, hist.array(0), z, conv, clamp, store, k),
        2 => lin2(x, o, hist.array(0), hist.array(1), z, conv, clamp, store, k),
        _ => lin3(
            x,
            o,
            hist.array(0),
            hist.array(1),
            hist.array(2),
            z,
            conv,
            clamp,
            store,
            k,
        ),
    }
}

/// Coefficients of the last pass of a two-stage step whose second model call was on a working
/// buffer `x2`: `x <- x * x + x2 * x2 + d * clamp(x0(x2, out)) + g * g_buf + z * noise`
/// (`g_buf` an optional second working buffer, e.g. Heun's first derivative).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub(crate) struct Finish {
    pub x: f64,
    pub x2: f64,
    pub d: f64,
    pub g: f64,
    pub z: f64,
}

macro_rules! finish_kernel {
    ($name:ident; $($g:ident)?; $($z:ident)?) => {
        #[allow(clippy::too_many_arguments)]
        fn $name<F: Float, D: Dimension>(
            x: &mut Array<F, D>,
            x2: &Array<F, D>,
            o: &Array<F, D>,
            $($g: &Array<F, D>,)?
            $($z: &Array<F, D>,)?
            (cx, co): (F, F),
            c: Clamp<F>,
            k: &Finish,
        ) -> bool {
            let (kg, kz) = (F::cast(k.g), F::cast(k.z));
            let _ = (kg, kz);
            // Without a clamp, d = cx x2 + co o folds into the coefficients (in f64); the new
            // sample alone is probed (a non-finite output makes it non-finite).
            let (a2, ao) = (k.x2 + k.d * cx.as_f64(), k.d * co.as_f64());
            if c.is_none() && ao != 0.0 {
                let (ax, a2, ao) = (F::cast(k.x), F::cast(a2), F::cast(ao));
                return fold_finite!(Zip::from(x).and(x2).and(o)$(.and($g))?$(.and($z))?, |x, &x2, &o $(, &$g)? $(, &$z)?| {
                    *x = ax * *x + a2 * x2 + ao * o $(+ kg * $g)? $(+ kz * $z)?;
                    *x
                });
            }
            let (ax, a2, ad) = (F::cast(k.x), F::cast(k.x2), F::cast(k.d));
            // clamp() maps NaN to a bound: probe the raw estimate too.
            fold_finite!(clamp = c; Zip::from(x).and(x2).and(o)$(.and($g))?$(.and($z))?, |x, &x2, &o $(, &$g)? $(, &$z)?| {
                let raw = cx * x2 + co * o;
                *x = ax * *x + a2 * x2 + ad * c.apply(raw) $(+ kg * $g)? $(+ kz * $z)?;
                c.keep(*x, raw)
            })
        }
    };
}

finish_kernel!(finish_plain;;);
finish_kernel!(finish_g; g;);
finish_kernel!(finish_z;; z);
finish_kernel!(finish_gz; g; z);

/// The last pass of a two-stage step (see [`Finish`]); returns whether it stayed finite.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_step<F: Float, D: Dimension>(
    x: &mut Array<F, D>,
    x2: &Array<F, D>,
    est: &Estimate<F, D>,
    g: Option<&Array<F, D>>,
    z: Option<&Array<F, D>>,
    clamp: Clamp<F>,
    k: &Finish,
) -> bool {
    let conv = (est.cx, est.co);
    let o = &est.out;
    match (g, z) {
        (None, None) => finish_plain(x, x2, o, conv, clamp, k),
        (Some(g), None) => finish_g(x, x2, o, g, conv, clamp, k),
        (None, Some(z)) => finish_z(x, x2, o, z, conv, clamp, k),
        (Some(g), Some(z)) => finish_gz(x, x2, o, g, z, conv, clamp, k),
    }
}
