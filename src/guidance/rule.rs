//! The guidance rule interface: how the branches' outputs become the guided output.

use ndarray::{ArrayView, ArrayViewMut, Axis, Dimension, Zip};

use crate::denoiser::{Call, Prediction};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::level::NoiseLevel;

/// What a guidance rule sees besides the branches: the model input, where the run is, and the
/// model's prediction type (for rules that work in another space).
#[derive(Debug)]
pub struct Context<'a, F, D: Dimension> {
    /// The model input `x` (in the model's native scaling).
    pub x: ArrayView<'a, F, D>,
    /// The sampler's call: step, number of steps, level, and the call's index in the run (0:
    /// reset any state).
    pub call: Call,
    /// What the branches' outputs are.
    pub prediction: Prediction,
}

impl<'a, F: Float, D: Dimension> Context<'a, F, D> {
    /// A context (for calling a rule by hand).
    pub fn new(x: ArrayView<'a, F, D>, call: Call, prediction: Prediction) -> Self {
        Context { x, call, prediction }
    }

    /// `(a, b)` with `space_value = a x + b output`: the conversion of this call's model output
    /// into `space`.
    ///
    /// # Errors
    /// [`Error::Undetermined`] where the prediction type does not determine that space here
    /// (epsilon at zero SNR for x0).
    pub fn to_space(&self, space: Space) -> Result<(f64, f64)> {
        let level = &self.call.level;
        let undetermined = |what| Error::Undetermined {
            step: self.call.step,
            level: *level,
            prediction: self.prediction,
            what,
        };
        Ok(match space {
            Space::Output => (0.0, 1.0),
            Space::X0 => {
                let c = self.prediction.to_x0(level).ok_or_else(|| undetermined("x0"))?;
                (c.x, c.out)
            }
            Space::Eps => {
                let c = self.prediction.to_eps(level).ok_or_else(|| undetermined("eps"))?;
                (c.x, c.out)
            }
            Space::Residual => {
                // ComfyUI's x - x0: on flow levels its x is ours, x - x0 = sigma (eps - x0);
                // elsewhere its x is x / alpha, x / alpha - x0 = sigma_ve eps. At alpha = 0 (a
                // flow model's first level, a zero-terminal-SNR model's last) x = sigma eps:
                // sigma (eps - x0) where the prediction determines x0 there, else the noise (the
                // rules using this space are blind to its scale).
                let sigma = level.sigma;
                let scaled = |(a, b): (f64, f64), k: f64| (k * a, k * b);
                if level.alpha == 0.0 {
                    return match self.to_space(Space::Flow) {
                        Ok(c) => Ok(scaled(c, sigma)),
                        Err(_) => self.to_space(Space::Eps),
                    };
                }
                if flow_level(level) {
                    scaled(self.to_space(Space::Flow)?, sigma)
                } else {
                    scaled(self.to_space(Space::Eps)?, level.sigma_ve())
                }
            }
            Space::Velocity | Space::Flow => {
                let to = if space == Space::Velocity {
                    Prediction::Velocity
                } else {
                    Prediction::Flow
                };
                let (tx0, teps) = to.target_coefficients(level);
                let (mut a, mut b) = (0.0, 0.0);
                if tx0 != 0.0 {
                    let c = self.prediction.to_x0(level).ok_or_else(|| undetermined("x0"))?;
                    a += tx0 * c.x;
                    b += tx0 * c.out;
                }
                if teps != 0.0 {
                    let c = self.prediction.to_eps(level).ok_or_else(|| undetermined("eps"))?;
                    a += teps * c.x;
                    b += teps * c.out;
                }
                (a, b)
            }
        })
    }

    /// Converts `a` (a model output) into `space` in place.
    ///
    /// # Errors
    /// As [`to_space`](Self::to_space).
    pub fn convert_into(&self, space: Space, mut a: ArrayViewMut<'_, F, D>) -> Result<()> {
        let (ka, kb) = self.to_space(space)?;
        if (ka, kb) == (0.0, 1.0) {
            return Ok(());
        }
        let (ka, kb) = (F::cast(ka), F::cast(kb));
        Zip::from(&mut a)
            .and(&self.x)
            .for_each(|v, &x| *v = ka * x + kb * *v);
        Ok(())
    }

    /// Converts `a` back from `space` into a model output in place.
    ///
    /// # Errors
    /// As [`to_space`](Self::to_space); [`Error::Undetermined`] where `space` does not
    /// determine the output (a zero coefficient).
    pub fn convert_from(&self, space: Space, mut a: ArrayViewMut<'_, F, D>) -> Result<()> {
        let (ka, kb) = self.to_space(space)?;
        if (ka, kb) == (0.0, 1.0) {
            return Ok(());
        }
        if kb == 0.0 || !kb.is_finite() {
            return Err(Error::Undetermined {
                step: self.call.step,
                level: self.call.level,
                prediction: self.prediction,
                what: "the model output from the guidance space",
            });
        }
        let (ka, ikb) = (F::cast(ka), F::cast(1.0 / kb));
        Zip::from(&mut a)
            .and(&self.x)
            .for_each(|v, &x| *v = (*v - ka * x) * ikb);
        Ok(())
    }
}

/// Whether `level` is a flow level, `alpha + sigma = 1` (to rounding), strictly between the ends.
pub(crate) fn flow_level(level: &NoiseLevel) -> bool {
    level.sigma > 0.0 && level.alpha > 0.0 && (level.alpha + level.sigma - 1.0).abs() <= 1e-12
}

/// The space a nonlinear guidance rule works in. Plain CFG is the same in every space (it is
/// linear); APG, rescale, CFG-Zero* and the others are not, and the Python tools differ:
/// diffusers' guiders take the model's raw output ([`Output`](Self::Output): epsilon for Stable
/// Diffusion, the flow velocity for SD3 / Flux), ComfyUI's nodes the x0 estimate
/// ([`X0`](Self::X0)) or `x - x0` ([`Residual`](Self::Residual)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Space {
    /// The model's own output, whatever its prediction type (diffusers).
    Output,
    /// The x0 estimate ("denoised", ComfyUI).
    X0,
    /// The noise estimate.
    Eps,
    /// The v-prediction target `alpha eps - sigma x0`.
    Velocity,
    /// The flow velocity `eps - x0`.
    Flow,
    /// `x - x0` in ComfyUI's coordinates, what its `sampler_cfg_function` hooks receive as
    /// `cond` / `uncond`: on flow levels (`alpha + sigma = 1`, ComfyUI's `CONST` models, whose
    /// `x` is this crate's) `sigma (eps - x0)`, the scaled flow velocity; on other levels
    /// (ComfyUI's `x` is `x / alpha`) `sigma_ve eps`, the scaled noise. Told apart by the level,
    /// not the prediction type, so an x0-predicting model on a flow grid works as ComfyUI's.
    Residual,
}

/// How the branches' outputs of one model call become the guided output: classifier-free
/// guidance ([`Cfg`](super::Cfg)) and its variants. A rule may keep state across the calls of a
/// run (APG's momentum), reset when `ctx.call.index == 0`.
///
/// Rules combine in place: `cond` holds the conditional output and becomes the guided one, so
/// that a step-by-step run answering in place ([`Run::request_with_branches`](crate::Run::request_with_branches))
/// allocates nothing.
pub trait GuidanceRule {
    /// Checks the options.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] naming the option.
    fn check(&self) -> Result<()>;

    /// Whether this call needs the unconditional branch: when not (guidance switched off at this
    /// step or level, a scale of 1), the unconditional model call is saved and
    /// [`combine`](Self::combine) gets `None` for it.
    fn needs_uncond(&self, call: &Call) -> bool;

    /// Combines the branches: `cond` (the conditional output) becomes the guided output.
    /// `uncond` is `None` where [`needs_uncond`](Self::needs_uncond) said so (most rules then
    /// leave `cond` as it is). A rule that guides against a modified unconditional estimate
    /// (TCFG's tangential-filtered one) writes that estimate into `uncond`, a model output
    /// like `cond`: that is what CFG++ samplers then renoise with, as ComfyUI's
    /// `uncond_denoised` after the guider's post-CFG step. Other rules leave it as it is.
    ///
    /// # Errors
    /// [`Error::Undetermined`] if the rule's space is not determined at this level;
    /// [`Error::InvalidParameter`] for options out of range.
    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()>;
}

/// Working copies of a call's arrays in `f64` and in a rule's space, kept by the rule between
/// calls (no allocation once sized): `c`, `u` (the branches in the space) and `x`, in logical
/// order, with the batch size.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Work {
    pub c: Vec<f64>,
    pub u: Vec<f64>,
    pub x: Vec<f64>,
    /// Batch elements (the first axis; 1 for 0-dimensional arrays).
    pub batch: usize,
    /// The space conversion `value = ka x + kb output`.
    pub ka: f64,
    pub kb: f64,
}

impl Work {
    /// Loads the call's arrays converted into `space` (`u` only when given).
    pub(crate) fn load<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        space: Space,
        cond: &ArrayViewMut<'_, F, D>,
        uncond: Option<&ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        let (ka, kb) = ctx.to_space(space)?;
        self.ka = ka;
        self.kb = kb;
        self.batch = if cond.ndim() == 0 {
            1
        } else {
            cond.shape()[0].max(1)
        };
        load_f64(&mut self.x, ctx.x.view(), &[], (0.0, 1.0));
        load_f64(&mut self.c, cond.view(), &self.x, (ka, kb));
        match uncond {
            Some(u) => load_f64(&mut self.u, u.view(), &self.x, (ka, kb)),
            None => self.u.clear(),
        }
        Ok(())
    }

    /// Writes `g` (a result in the loaded space) back into `cond` as a model output.
    pub(crate) fn store<F: Float, D: Dimension>(
        &self,
        ctx: &Context<'_, F, D>,
        g: &[f64],
        cond: &mut ArrayViewMut<'_, F, D>,
    ) -> Result<()> {
        if self.kb == 0.0 || !self.kb.is_finite() {
            return Err(Error::Undetermined {
                step: ctx.call.step,
                level: ctx.call.level,
                prediction: ctx.prediction,
                what: "the model output from the guidance space",
            });
        }
        let (ka, ikb) = (self.ka, 1.0 / self.kb);
        let put = |(o, (&g, &x)): (&mut F, (&f64, &f64))| *o = F::cast((g - ka * x) * ikb);
        match cond.as_slice_mut() {
            // Contiguous arrays (the usual case) as slices: a loop the compiler vectorises.
            Some(o) => o.iter_mut().zip(g.iter().zip(&self.x)).for_each(put),
            None => cond.iter_mut().zip(g.iter().zip(&self.x)).for_each(put),
        }
        Ok(())
    }

    /// The number of values per batch element.
    pub(crate) fn per(&self) -> usize {
        self.c.len() / self.batch.max(1)
    }
}

/// `dst <- ka x + kb a` in `f64`, in logical order (`x` empty: `ka` ignored).
fn load_f64<F: Float, D: Dimension>(
    dst: &mut Vec<f64>,
    a: ArrayView<'_, F, D>,
    x: &[f64],
    (ka, kb): (f64, f64),
) {
    dst.clear();
    dst.reserve(a.len());
    match (a.as_slice(), x.is_empty()) {
        // Contiguous arrays (the usual case) as slices: a loop the compiler vectorises.
        (Some(a), true) => dst.extend(a.iter().map(|v| kb * v.as_f64())),
        (Some(a), false) => dst.extend(a.iter().zip(x).map(|(v, x)| ka * x + kb * v.as_f64())),
        (None, true) => dst.extend(a.iter().map(|v| kb * v.as_f64())),
        (None, false) => dst.extend(a.iter().zip(x).map(|(v, x)| ka * x + kb * v.as_f64())),
    }
}

/// `sum a b` over a slice pair, in eight interleaved partial sums (independent additions the
/// compiler can vectorise; a single running sum is bound by the addition's latency).
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Per batch element (axis 0; the whole array for 0-dimensional ones): calls `f` with each
/// element's views.
pub(crate) fn per_element<F: Float, D: Dimension>(
    a: ArrayViewMut<'_, F, D>,
    b: ArrayView<'_, F, D>,
    mut f: impl FnMut(ArrayViewMut<'_, F, ndarray::IxDyn>, ArrayView<'_, F, ndarray::IxDyn>),
) {
    let (mut a, b) = (a.into_dyn(), b.into_dyn());
    if a.ndim() == 0 {
        f(a, b);
        return;
    }
    for (ai, bi) in a.axis_iter_mut(Axis(0)).zip(b.axis_iter(Axis(0))) {
        f(ai, bi);
    }
}
