//! The general fused update: `target <- sum_k c_k * source_k` over the run's arrays in one
//! memory pass, for samplers whose steps combine more arrays than the fixed-arity kernels of
//! `kernel.rs` take (multi-stage exponential integrators, predictor–corrector methods, stored
//! noise). The pass is one loop over the elements, monomorphised on the number of source arrays
//! (terms on the target's old value and on the x0 estimate fold into two coefficients), so the
//! traffic is one read of every source and one write of the target, as in a hand-fused loop.
//! Arrays of different memory layouts (a caller's Fortran-order sample with C-order buffers)
//! take a slower element-by-element path in logical order, with the same results.

use ndarray::{Array, Dimension};

use super::Estimate;
use super::state::{Core, Input};
use crate::error::{Error, Result};
use crate::float::Float;

/// An array a combination reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The sample.
    X,
    /// Working buffer `i`.
    Buf(usize),
    /// History entry `j` (0 = newest).
    Hist(usize),
    /// The noise drawn for this pass.
    Noise,
    /// The x0 estimate of the pending call: `c_x input + c_out output`.
    X0,
    /// The unconditional branch's x0 estimate of the pending call (CFG++), or [`X0`](Self::X0)
    /// when the model has no branches.
    X0Uncond,
}

/// What the model-output buffer holds after the pass (it may then be kept as history or a
/// working buffer): the raw output (untouched), the x0 estimate, `ex input + ed x0`, or `ex
/// input + ed x0_u` with the unconditional branch's x0 estimate (CFG++ samplers that remember
/// it; `x0` itself for a model without branches).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Keep {
    Raw,
    X0,
    Lin { ex: f64, ed: f64 },
    LinUncond { ex: f64, ed: f64 },
}

impl Keep {
    /// The unconditional branch's x0 estimate.
    pub(crate) const X0_UNCOND: Keep = Keep::LinUncond { ex: 0.0, ed: 1.0 };
}

/// `into <- sum (slot, c) in terms: c * slot` (a term on `into` reads its old value), and the
/// output buffer becomes `keep`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Combo<'a> {
    pub into: Slot,
    pub terms: &'a [(Slot, f64)],
    pub keep: Keep,
}

impl<'a> Combo<'a> {
    /// `into <- terms`, the output buffer becoming `keep`.
    pub(crate) const fn new(into: Slot, terms: &'a [(Slot, f64)], keep: Keep) -> Self {
        Combo { into, terms, keep }
    }
}

const MAX_TERMS: usize = 10;

/// Runs the combination on `core`, with the x0 estimate from `est` (whose buffer is updated as
/// `c.keep` asks). Returns whether every value written is finite.
pub(crate) fn combo_pass<F: Float, D: Dimension>(
    core: &mut Core<F, D>,
    est: &mut Estimate<F, D>,
    c: &Combo<'_>,
) -> Result<bool> {
    if c.terms.len() > MAX_TERMS {
        return Err(Error::Finished);
    }
    let input = core.input;
    let Core { x, bufs, hist, z, .. } = core;
    let [b0, b1, b2] = bufs;
    let mut bs = [b0.as_mut(), b1.as_mut(), b2.as_mut()];
    let (target, xr): (&mut Array<F, D>, Option<&Array<F, D>>) = match c.into {
        Slot::X => (x, None),
        Slot::Buf(i) => (bs[i].take().ok_or(Error::Finished)?, Some(&*x)),
        _ => return Err(Error::Finished),
    };
    let bs = bs.map(|b| b.map(|b| &*b));
    let array_of = |s: Slot| -> Result<Option<&Array<F, D>>> {
        Ok(match s {
            _ if s == c.into => None,
            Slot::X => xr,
            Slot::Buf(j) => Some(bs[j].ok_or(Error::Finished)?),
            Slot::Hist(j) if j < hist.len() => Some(hist.array(j)),
            Slot::Noise => Some(z.as_ref().ok_or(Error::Finished)?),
            Slot::Hist(_) => return Err(Error::Finished),
            Slot::X0 | Slot::X0Uncond => None,
        })
    };
    let in_slot = match input {
        Input::Sample => Slot::X,
        Input::Buf(i) => Slot::Buf(i),
    };
    let inp = array_of(in_slot)?;
    let (cx, co) = (est.cx, est.co);
    // The unconditional x0, `ucx input + uco uncond`: its array joins the sources and its input
    // part the input's coefficient. Without branches it is the x0 itself.
    let (ucx, uco) = (est.ucx.as_f64(), est.uco.as_f64());
    let uncond = est.uncond.as_ref();
    let mut c_in = 0.0;
    let keep = match (c.keep, uncond) {
        (Keep::LinUncond { ex, ed }, None) => Keep::Lin { ex, ed },
        (k, _) => k,
    };
    // The unconditional output, when the output buffer is to keep its x0.
    let keep_u = if matches!(keep, Keep::LinUncond { .. }) {
        uncond
    } else {
        None
    };
    let out = &mut est.out;
    // Every array must share the target's memory layout for the slice path.
    let target_ro: &Array<F, D> = target;
    let same = |a: &Array<F, D>| a.strides() == target_ro.strides() && a.as_slice_memory_order().is_some();
    // Terms with a zero coefficient are dropped (their arrays need not exist).
    let mut arrays: [Option<&Array<F, D>>; MAX_TERMS] = [None; MAX_TERMS];
    let mut slots = [Slot::X0; MAX_TERMS];
    let mut coefs = [F::zero(); MAX_TERMS];
    let mut fast = target_ro.as_slice_memory_order().is_some()
        && same(out)
        && inp.is_none_or(same)
        && keep_u.is_none_or(same);
    let mut n = 0;
    for &(slot, coef) in c.terms {
        if coef == 0.0 {
            continue;
        }
        match (slot, uncond) {
            (Slot::X0Uncond, Some(u)) => {
                c_in += coef * ucx;
                slots[n] = Slot::X0Uncond;
                coefs[n] = F::cast(coef * uco);
                arrays[n] = Some(u);
                fast &= same(u);
            }
            (Slot::X0Uncond | Slot::X0, _) => {
                slots[n] = Slot::X0;
                coefs[n] = F::cast(coef);
            }
            _ => {
                slots[n] = slot;
                coefs[n] = F::cast(coef);
                arrays[n] = array_of(slot)?;
                fast &= arrays[n].is_none_or(same);
            }
        }
        n += 1;
    }
    if fast {
        // Fold the terms on the target's old value and on the x0 estimate into two
        // coefficients; the rest read other arrays' slices.
        let (mut c_old, mut c_d) = (F::zero(), F::zero());
        let mut sl: [&[F]; MAX_TERMS] = [&[]; MAX_TERMS];
        let mut sc = [F::zero(); MAX_TERMS];
        let mut m = 0;
        for k in 0..n {
            match (slots[k], arrays[k]) {
                (Slot::X0, _) => c_d += coefs[k],
                (_, Some(a)) => {
                    sl[m] = a.as_slice_memory_order().ok_or(Error::Finished)?;
                    sc[m] = coefs[k];
                    m += 1;
                }
                _ => c_old += coefs[k],
            }
        }
        let inp_s = match inp {
            Some(a) => Some(a.as_slice_memory_order().ok_or(Error::Finished)?),
            None => None,
        };
        let unc_s = match keep_u {
            Some(a) => a.as_slice_memory_order().ok_or(Error::Finished)?,
            None => &[],
        };
        let t = target.as_slice_memory_order_mut().ok_or(Error::Finished)?;
        let o = out.as_slice_memory_order_mut().ok_or(Error::Finished)?;
        let k = Pass {
            cx,
            co,
            c_old,
            c_d,
            c_in,
            keep,
            ucx,
            uco,
        };
        return Ok(match m {
            0 => pass::<F, 0>(t, o, inp_s, unc_s, k, [], []),
            1 => pass::<F, 1>(t, o, inp_s, unc_s, k, [sl[0]], [sc[0]]),
            2 => pass::<F, 2>(t, o, inp_s, unc_s, k, [sl[0], sl[1]], [sc[0], sc[1]]),
            3 => pass::<F, 3>(
                t,
                o,
                inp_s,
                unc_s,
                k,
                [sl[0], sl[1], sl[2]],
                [sc[0], sc[1], sc[2]],
            ),
            4 => pass::<F, 4>(t, o, inp_s, unc_s, k, first(&sl), first(&sc)),
            5 => pass::<F, 5>(t, o, inp_s, unc_s, k, first(&sl), first(&sc)),
            6 => pass::<F, 6>(t, o, inp_s, unc_s, k, first(&sl), first(&sc)),
            7 => pass::<F, 7>(t, o, inp_s, unc_s, k, first(&sl), first(&sc)),
            8 => pass::<F, 8>(t, o, inp_s, unc_s, k, first(&sl), first(&sc)),
            9 => pass::<F, 9>(t, o, inp_s, unc_s, k, first(&sl), first(&sc)),
            _ => pass::<F, MAX_TERMS>(t, o, inp_s, unc_s, k, sl, sc),
        });
    }
    Ok(logical(
        target,
        out,
        inp,
        keep_u,
        Pass {
            cx,
            co,
            c_old: F::zero(),
            c_d: F::zero(),
            c_in,
            keep,
            ucx,
            uco,
        },
        (&slots[..n], &arrays[..n], &coefs[..n]),
    ))
}

/// The first `N` of an array.
fn first<T: Copy, const N: usize>(a: &[T; MAX_TERMS]) -> [T; N] {
    std::array::from_fn(|k| a[k])
}

/// The scalars of a pass: the x0 estimate `d = cx input + co output`, the coefficients on the
/// target's old value, on `d` and (the unconditional x0's part) on the input, what the output
/// buffer becomes, and the unconditional x0's coefficients `ucx input + uco uncond`.
#[derive(Clone, Copy)]
struct Pass<F> {
    cx: F,
    co: F,
    c_old: F,
    c_d: F,
    c_in: f64,
    keep: Keep,
    ucx: f64,
    uco: f64,
}

impl<F: Float> Pass<F> {
    /// `(b_in, b_o, b_u)`: the output buffer becomes `b_in input + b_o output + b_u uncond`.
    fn keep_coefs(&self) -> (F, F, F) {
        let (cx, co) = (self.cx.as_f64(), self.co.as_f64());
        let (b_in, b_o, b_u) = match self.keep {
            Keep::Raw => (0.0, 1.0, 0.0),
            Keep::X0 => (cx, co, 0.0),
            Keep::Lin { ex, ed } => (ex + ed * cx, ed * co, 0.0),
            Keep::LinUncond { ex, ed } => (ex + ed * self.ucx, 0.0, ed * self.uco),
        };
        (F::cast(b_in), F::cast(b_o), F::cast(b_u))
    }
}

/// The slice path: `t <- c_old t + c_d d + sum_k c_k s_k` in one pass (the input is `t`'s old
/// value when `inp` is `None`), monomorphised on the number of other arrays so the element
/// loop vectorises; then the output buffer as `keep` asks (from `unc` for the unconditional x0).
fn pass<F: Float, const N: usize>(
    t: &mut [F],
    o: &mut [F],
    inp: Option<&[F]>,
    unc: &[F],
    k: Pass<F>,
    srcs: [&[F]; N],
    coefs: [F; N],
) -> bool {
    match (inp, k.keep) {
        (None, Keep::Raw) => pass_with::<F, N, false, false, false>(t, o, &[], unc, k, srcs, coefs),
        (None, Keep::LinUncond { .. }) => {
            pass_with::<F, N, false, true, true>(t, o, &[], unc, k, srcs, coefs)
        }
        (None, _) => pass_with::<F, N, false, true, false>(t, o, &[], unc, k, srcs, coefs),
        (Some(i), Keep::Raw) => pass_with::<F, N, true, false, false>(t, o, i, unc, k, srcs, coefs),
        (Some(i), Keep::LinUncond { .. }) => {
            pass_with::<F, N, true, true, true>(t, o, i, unc, k, srcs, coefs)
        }
        (Some(i), _) => pass_with::<F, N, true, true, false>(t, o, i, unc, k, srcs, coefs),
    }
}

#[inline(always)]
fn pass_with<F: Float, const N: usize, const INP: bool, const OUT: bool, const UNC: bool>(
    t: &mut [F],
    o: &mut [F],
    inp: &[F],
    unc: &[F],
    k: Pass<F>,
    srcs: [&[F]; N],
    coefs: [F; N],
) -> bool {
    let len = t.len();
    let (o, inp) = (&mut o[..len], if INP { &inp[..len] } else { &[][..] });
    let unc = if UNC { &unc[..len] } else { &[][..] };
    let srcs = srcs.map(|s| &s[..len]);
    // d = cx input + co out folds into the coefficients (in f64): the target is
    // a_old old + a_in input + a_o out + sum c_j s_j, the output b_in input + b_o out + b_u unc.
    let (cx, co, c_d) = (k.cx.as_f64(), k.co.as_f64(), k.c_d.as_f64());
    let (a_in, a_o) = (F::cast(c_d * cx + k.c_in), F::cast(c_d * co));
    let a_old = if INP {
        k.c_old
    } else {
        F::cast(k.c_old.as_f64() + c_d * cx + k.c_in)
    };
    let (b_in, b_o, b_u) = k.keep_coefs();
    let mut bad = F::Bits::default();
    for i in 0..len {
        let old = t[i];
        let ov = o[i];
        let mut acc = a_old * old + a_o * ov;
        if INP {
            acc += a_in * inp[i];
        }
        for j in 0..N {
            acc += coefs[j] * srcs[j][i];
        }
        t[i] = acc;
        bad = bad | acc.nonfinite_bits();
        if OUT {
            let iv = if INP { inp[i] } else { old };
            let nv = if UNC {
                b_in * iv + b_u * unc[i]
            } else {
                b_in * iv + b_o * ov
            };
            o[i] = nv;
            bad = bad | nv.nonfinite_bits();
        }
    }
    bad == F::Bits::default()
}

/// The element-by-element path in logical order, for arrays of different layouts.
#[allow(clippy::type_complexity)]
fn logical<F: Float, D: Dimension>(
    target: &mut Array<F, D>,
    out: &mut Array<F, D>,
    inp: Option<&Array<F, D>>,
    unc: Option<&Array<F, D>>,
    k: Pass<F>,
    (slots, arrays, coefs): (&[Slot], &[Option<&Array<F, D>>], &[F]),
) -> bool {
    let (b_in, b_o, b_u) = k.keep_coefs();
    let (cx, co, c_in) = (k.cx, k.co, F::cast(k.c_in));
    let n = slots.len();
    let mut its: [Option<ndarray::iter::Iter<'_, F, D>>; MAX_TERMS] = std::array::from_fn(|_| None);
    for (it, a) in its.iter_mut().zip(arrays) {
        *it = a.map(|a| a.iter());
    }
    let mut inp_it = inp.map(|a| a.iter());
    let mut unc_it = unc.map(|a| a.iter());
    let mut bad = F::Bits::default();
    for (tv, ov) in target.iter_mut().zip(out.iter_mut()) {
        let old = *tv;
        let i = inp_it.as_mut().and_then(Iterator::next).copied().unwrap_or(old);
        let u = unc_it
            .as_mut()
            .and_then(Iterator::next)
            .copied()
            .unwrap_or(F::zero());
        let d = cx * i + co * *ov;
        let mut acc = c_in * i;
        for k in 0..n {
            let v = match (slots[k], its[k].as_mut()) {
                (Slot::X0, _) => d,
                (_, Some(it)) => it.next().copied().unwrap_or(F::zero()),
                _ => old,
            };
            acc += coefs[k] * v;
        }
        *tv = acc;
        bad = bad | acc.nonfinite_bits();
        if k.keep != Keep::Raw {
            *ov = b_in * i + b_o * *ov + b_u * u;
            bad = bad | ov.nonfinite_bits();
        }
    }
    bad == F::Bits::default()
}
