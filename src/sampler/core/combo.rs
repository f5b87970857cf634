//! The general fused update: `target <- sum_k c_k * source_k` over the run's arrays in one
//! memory pass, for samplers whose steps combine more arrays than the fixed-arity kernels of
//! `kernel.rs` take (multi-stage exponential integrators, predictor–corrector methods, stored
//! noise). The pass is chunked: each chunk of a few hundred elements is accumulated term by
//! term in a stack buffer (which vectorises for any number of terms) and written once, so the
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
}

/// What the model-output buffer holds after the pass (it may then be kept as history or a
/// working buffer): the raw output (untouched), the x0 estimate, or `ex input + ed x0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Keep {
    Raw,
    X0,
    Lin { ex: f64, ed: f64 },
}

/// `into <- sum (slot, c) in terms: c * slot` (a term on `into` reads its old value), and the
/// output buffer becomes `keep`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Combo<'a> {
    pub into: Slot,
    pub terms: &'a [(Slot, f64)],
    pub keep: Keep,
}

const CHUNK: usize = 256;
const MAX_TERMS: usize = 10;

/// A resolved source: a slice of another array, the target's old value, or the x0 estimate.
#[derive(Clone, Copy)]
enum Src<'a, F> {
    Slice(&'a [F]),
    Old,
    X0,
}

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
            Slot::X0 => None,
        })
    };
    let in_slot = match input {
        Input::Sample => Slot::X,
        Input::Buf(i) => Slot::Buf(i),
    };
    let inp = array_of(in_slot)?;
    let (cx, co) = (est.cx, est.co);
    let out = &mut est.out;
    // Every array must share the target's memory layout for the slice path.
    let target_ro: &Array<F, D> = target;
    let same = |a: &Array<F, D>| a.strides() == target_ro.strides() && a.as_slice_memory_order().is_some();
    // Terms with a zero coefficient are dropped (their arrays need not exist).
    let mut arrays: [Option<&Array<F, D>>; MAX_TERMS] = [None; MAX_TERMS];
    let mut slots = [Slot::X0; MAX_TERMS];
    let mut coefs = [F::zero(); MAX_TERMS];
    let mut fast = target_ro.as_slice_memory_order().is_some() && same(out) && inp.is_none_or(same);
    let mut n = 0;
    for &(slot, coef) in c.terms {
        if coef == 0.0 {
            continue;
        }
        slots[n] = slot;
        coefs[n] = F::cast(coef);
        if slot != Slot::X0 {
            arrays[n] = array_of(slot)?;
            fast &= arrays[n].is_none_or(same);
        }
        n += 1;
    }
    if fast {
        let srcs: [Src<'_, F>; MAX_TERMS] = std::array::from_fn(|k| match (slots[k], arrays[k]) {
            (Slot::X0, _) => Src::X0,
            (_, Some(a)) => Src::Slice(a.as_slice_memory_order().unwrap_or(&[])),
            _ => Src::Old,
        });
        let inp_src = match inp {
            Some(a) => Src::Slice(a.as_slice_memory_order().unwrap_or(&[])),
            None => Src::Old,
        };
        let t = target.as_slice_memory_order_mut().ok_or(Error::Finished)?;
        let o = out.as_slice_memory_order_mut().ok_or(Error::Finished)?;
        return Ok(slices(t, o, inp_src, (cx, co), &srcs[..n], &coefs[..n], c.keep));
    }
    Ok(logical(
        target,
        out,
        inp,
        (cx, co),
        c.keep,
        (&slots[..n], &arrays[..n], &coefs[..n]),
    ))
}

/// The slice path, chunk by chunk.
fn slices<F: Float>(
    t: &mut [F],
    o: &mut [F],
    inp: Src<'_, F>,
    (cx, co): (F, F),
    srcs: &[Src<'_, F>],
    coefs: &[F],
    keep: Keep,
) -> bool {
    let (ex, ed) = match keep {
        Keep::Lin { ex, ed } => (F::cast(ex), F::cast(ed)),
        _ => (F::zero(), F::one()),
    };
    let mut bad = F::Bits::default();
    let mut start = 0;
    for (tc, oc) in t.chunks_mut(CHUNK).zip(o.chunks_mut(CHUNK)) {
        let len = tc.len();
        let range = start..start + len;
        start += len;
        let mut old = [F::zero(); CHUNK];
        old[..len].copy_from_slice(tc);
        let ic: &[F] = match inp {
            Src::Slice(s) => &s[range.clone()],
            _ => &old[..len],
        };
        let mut d = [F::zero(); CHUNK];
        for ((d, &i), &r) in d.iter_mut().zip(ic).zip(oc.iter()) {
            *d = cx * i + co * r;
        }
        let mut acc = [F::zero(); CHUNK];
        for (src, &k) in srcs.iter().zip(coefs) {
            let s: &[F] = match src {
                Src::Slice(s) => &s[range.clone()],
                Src::Old => &old[..len],
                Src::X0 => &d[..len],
            };
            for (a, &v) in acc[..len].iter_mut().zip(s) {
                *a += k * v;
            }
        }
        for (tv, &a) in tc.iter_mut().zip(&acc[..len]) {
            *tv = a;
            bad = bad | a.nonfinite_bits();
        }
        match keep {
            Keep::Raw => {}
            Keep::X0 => oc.copy_from_slice(&d[..len]),
            Keep::Lin { .. } => {
                for ((ov, &dv), &i) in oc.iter_mut().zip(&d[..len]).zip(ic) {
                    *ov = ex * i + ed * dv;
                    bad = bad | ov.nonfinite_bits();
                }
            }
        }
        if keep == Keep::X0 {
            for &dv in &d[..len] {
                bad = bad | dv.nonfinite_bits();
            }
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
    (cx, co): (F, F),
    keep: Keep,
    (slots, arrays, coefs): (&[Slot], &[Option<&Array<F, D>>], &[F]),
) -> bool {
    let (ex, ed) = match keep {
        Keep::Lin { ex, ed } => (F::cast(ex), F::cast(ed)),
        _ => (F::zero(), F::one()),
    };
    let n = slots.len();
    let mut its: [Option<ndarray::iter::Iter<'_, F, D>>; MAX_TERMS] = std::array::from_fn(|_| None);
    for (it, a) in its.iter_mut().zip(arrays) {
        *it = a.map(|a| a.iter());
    }
    let mut inp_it = inp.map(|a| a.iter());
    let mut bad = F::Bits::default();
    for (tv, ov) in target.iter_mut().zip(out.iter_mut()) {
        let old = *tv;
        let i = inp_it.as_mut().and_then(Iterator::next).copied().unwrap_or(old);
        let d = cx * i + co * *ov;
        let mut acc = F::zero();
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
        match keep {
            Keep::Raw => {}
            Keep::X0 => {
                *ov = d;
                bad = bad | d.nonfinite_bits();
            }
            Keep::Lin { .. } => {
                *ov = ex * i + ed * d;
                bad = bad | ov.nonfinite_bits();
            }
        }
    }
    bad == F::Bits::default()
}
