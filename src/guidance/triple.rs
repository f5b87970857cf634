//! Guidance from three branches: Perp-Neg and dual / nested CFG (ComfyUI's `PerpNegGuider`,
//! `DualCFGGuider`).

use ndarray::{Array, ArrayView, Dimension, Zip};

use super::check_branches as check_same;
use crate::denoiser::{Call, Denoiser, Guided, Prediction};
use crate::error::{BoxError, Error, Result};
use crate::float::Float;
use crate::level::NoiseLevel;

/// How three branches become the guided output (see [`TripleGuidance`]).
pub trait TripleRule {
    /// Checks the options.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the option.
    fn check(&self) -> Result<()>;

    /// Which of the second and third branches this call needs (the first is always evaluated);
    /// a branch not evaluated is zero in [`combine`](Self::combine), as in ComfyUI's CFG-1
    /// optimisation.
    fn needs(&self, call: &Call) -> [bool; 2];

    /// Combines the branches: `first` becomes the guided output. Returns which branch is the
    /// "unconditional" one a CFG++ sampler renoises with (1 or 2), if any.
    fn combine<F: Float, D: Dimension>(
        &mut self,
        first: &mut Array<F, D>,
        second: &Array<F, D>,
        third: &Array<F, D>,
    ) -> Option<usize>;
}

/// Guidance from three models (or three conditionings of one model as three [`Denoiser`]s),
/// combined by a [`TripleRule`]: [`PerpNeg`] (positive, negative, empty prompt) or [`DualCfg`]
/// (first condition, second condition, negative). The branches combine in the models' output
/// space (both rules are linear there, so they equal ComfyUI's in x0 space).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::guidance::{PerpNeg, TripleGuidance};
/// let positive = GaussianMixture::gaussian(vec![1.0], vec![0.1])?;
/// let negative = GaussianMixture::gaussian(vec![-1.0], vec![0.1])?;
/// let empty = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
/// let mut guided = TripleGuidance::new(positive, negative, empty, PerpNeg::new(4.0));
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((8, 1), &mut SeededNoise::new(0))?;
/// let out = Euler::new().sample(&mut guided, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.iter().all(|v| v.is_finite()));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct TripleGuidance<A, B, C, R> {
    first: A,
    second: B,
    third: C,
    rule: R,
}

impl<A, B, C, R> TripleGuidance<A, B, C, R> {
    /// The three branches and the rule that combines them.
    pub fn new(first: A, second: B, third: C, rule: R) -> Self {
        TripleGuidance {
            first,
            second,
            third,
            rule,
        }
    }

    /// The wrapped models.
    pub fn into_inner(self) -> (A, B, C) {
        (self.first, self.second, self.third)
    }
}

impl<F, D, A, B, C, R> Denoiser<F, D> for TripleGuidance<A, B, C, R>
where
    F: Float,
    D: Dimension,
    A: Denoiser<F, D>,
    B: Denoiser<F, D>,
    C: Denoiser<F, D>,
    R: TripleRule,
{
    fn prediction(&self) -> Prediction {
        self.first.prediction()
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        Ok(self.denoise_call(x, &Call::new(0, 0, 0, *level))?.output)
    }

    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        self.rule.check()?;
        let p = self.first.prediction();
        if self.second.prediction() != p || self.third.prediction() != p {
            return Err("the three branches predict different things".into());
        }
        let a = self.first.denoise(x.view(), &call.level)?;
        let [n2, n3] = self.rule.needs(call);
        let zeros = || Array::zeros(a.raw_dim());
        let b = if n2 {
            self.second.denoise(x.view(), &call.level)?
        } else {
            zeros()
        };
        let c = if n3 {
            self.third.denoise(x.view(), &call.level)?
        } else {
            zeros()
        };
        check_same(&a, &b)?;
        check_same(&a, &c)?;
        let mut output = a.clone();
        let which = self.rule.combine(&mut output, &b, &c);
        let uncond = match which {
            Some(1) if n2 => Some(b),
            Some(2) if n3 => Some(c),
            _ => None,
        };
        Ok(Guided {
            output,
            cond: Some(a),
            uncond,
        })
    }
}

/// `math.isclose(v, target)` with ComfyUI's relative tolerance.
fn close(v: f64, target: f64) -> bool {
    (v - target).abs() <= 1e-9 * v.abs().max(target.abs())
}

/// Perp-Neg[^perpneg] (ComfyUI's `PerpNegGuider`): with the positive `p`, negative `n` and
/// empty-prompt `e` predictions, the negative direction's part perpendicular to the positive one
/// is removed against, not the whole negative:
///
/// ```text
/// pos = p - e,  neg = n - e,  perp = neg - (<neg, pos> / |pos|^2) pos
/// out = e + scale (pos - neg_scale perp)
/// ```
///
/// the inner products over the whole batch together, as ComfyUI's. Branches: first the positive,
/// second the negative (the unconditional branch a CFG++ sampler renoises with), third the empty
/// prompt; with `neg_scale = 0` the negative is not evaluated, and with a scale of 1 as well
/// neither is the empty prompt.
///
/// [^perpneg]: M. Armandpour, A. Sadeghian, H. Zheng, A. Sadeghian, M. Zhou, *Re-imagine the
///     Negative Prompt Algorithm: Transform 2D Diffusion into 3D, alleviate Janus problem and
///     Beyond*, arXiv:2304.04968.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerpNeg {
    scale: f64,
    neg_scale: f64,
}

impl PerpNeg {
    /// Perp-Neg with `scale` (ComfyUI's `cfg`) and `neg_scale = 1`.
    pub fn new(scale: f64) -> Self {
        PerpNeg {
            scale,
            neg_scale: 1.0,
        }
    }

    /// The weight of the perpendicular negative direction.
    pub fn neg_scale(mut self, s: f64) -> Self {
        self.neg_scale = s;
        self
    }
}

impl TripleRule for PerpNeg {
    fn check(&self) -> Result<()> {
        for (name, v) in [("scale", self.scale), ("neg_scale", self.neg_scale)] {
            if !v.is_finite() {
                return Err(Error::InvalidParameter {
                    name,
                    value: v,
                    reason: "must be finite",
                });
            }
        }
        Ok(())
    }

    fn needs(&self, _call: &Call) -> [bool; 2] {
        let no_neg = close(self.neg_scale, 0.0);
        [!no_neg, !(no_neg && close(self.scale, 1.0))]
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        first: &mut Array<F, D>,
        second: &Array<F, D>,
        third: &Array<F, D>,
    ) -> Option<usize> {
        let (mut np, mut pp) = (0.0, 0.0);
        Zip::from(&*first).and(second).and(third).for_each(|&p, &n, &e| {
            let (pos, neg) = ((p - e).as_f64(), (n - e).as_f64());
            np += neg * pos;
            pp += pos * pos;
        });
        let k = if pp > 0.0 { np / pp } else { 0.0 };
        let (s, ns) = (self.scale, self.neg_scale);
        Zip::from(first).and(second).and(third).for_each(|p, &n, &e| {
            let (pos, neg) = ((*p - e).as_f64(), (n - e).as_f64());
            let perp = neg - k * pos;
            *p = F::cast(e.as_f64() + s * (pos - ns * perp));
        });
        Some(1)
    }
}

/// Dual CFG (ComfyUI's `DualCFGGuider`): two conditions `c1`, `c2` and a negative `n`,
///
/// ```text
/// regular: out = n + scale2 (c2 - n) + scale1 (c1 - c2)
/// nested:  out = n + scale2 ((c2 + scale1 (c1 - c2)) - n)
/// ```
///
/// Branches: first `c1`, second `c2`, third the negative. The unconditional branch a CFG++
/// sampler renoises with is the negative (regular) or `c2` (nested), as in ComfyUI; in the
/// regular style with `scale2 = 1` the negative is not evaluated, and with `scale1 = 1` as well
/// neither is `c2`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DualCfg {
    scale1: f64,
    scale2: f64,
    nested: bool,
}

impl DualCfg {
    /// Regular dual CFG: `scale1` between the conditions (ComfyUI's `cfg_conds`), `scale2`
    /// against the negative (`cfg_cond2_negative`).
    pub fn new(scale1: f64, scale2: f64) -> Self {
        DualCfg {
            scale1,
            scale2,
            nested: false,
        }
    }

    /// The nested style.
    pub fn nested(mut self, yes: bool) -> Self {
        self.nested = yes;
        self
    }
}

impl TripleRule for DualCfg {
    fn check(&self) -> Result<()> {
        for (name, v) in [("scale1", self.scale1), ("scale2", self.scale2)] {
            if !v.is_finite() {
                return Err(Error::InvalidParameter {
                    name,
                    value: v,
                    reason: "must be finite",
                });
            }
        }
        Ok(())
    }

    fn needs(&self, _call: &Call) -> [bool; 2] {
        if self.nested {
            return [true, true];
        }
        let no_neg = close(self.scale2, 1.0);
        [!(no_neg && close(self.scale1, 1.0)), !no_neg]
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        first: &mut Array<F, D>,
        second: &Array<F, D>,
        third: &Array<F, D>,
    ) -> Option<usize> {
        let (s1, s2) = (F::cast(self.scale1), F::cast(self.scale2));
        if self.nested {
            Zip::from(first).and(second).and(third).for_each(|c1, &c2, &n| {
                let text = c2 + s1 * (*c1 - c2);
                *c1 = n + s2 * (text - n);
            });
            Some(1)
        } else {
            Zip::from(first).and(second).and(third).for_each(|c1, &c2, &n| {
                *c1 = n + s2 * (c2 - n) + s1 * (*c1 - c2);
            });
            Some(2)
        }
    }
}
