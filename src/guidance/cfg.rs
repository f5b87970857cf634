//! Classifier-free guidance, with guidance rescale and the original formulation.

use ndarray::{ArrayView, ArrayViewMut, Dimension, Zip};

use super::rule::{Context, GuidanceRule, Space, Work, per_element};
use crate::denoiser::Call;
use crate::error::{Error, Result};
use crate::float::Float;

/// Classifier-free guidance[^cfg] (diffusers' `ClassifierFreeGuidance`, ComfyUI's CFG):
///
/// ```text
/// out = u + scale (c - u)            (original formulation: c + scale (c - u))
/// ```
///
/// then, with `rescale = phi > 0` (Lin et al. 2023, §3.4; diffusers' `guidance_rescale`), `out <-
/// phi out std(c) / std(out) + (1 - phi) out`, the standard deviations per batch element
/// (axis 0) over the other axes, unbiased. CFG is the same in every space (it is linear); the
/// rescale works on the model's output, as diffusers' does.
///
/// At a scale of 1 (0 for the original formulation) guidance is off and the unconditional
/// branch is not evaluated, as in diffusers and ComfyUI (whose CFG++ samplers other than
/// `cfgpp_ud10_ab` evaluate it anyway: [`uncond_at_one`](Self::uncond_at_one)).
///
/// ```
/// use diffusion_samplers::guidance::{Cfg, Context, GuidanceRule};
/// use diffusion_samplers::{Call, NoiseLevel, Prediction};
/// use ndarray::array;
/// let (x, l) = (array![0.0f64, 0.0], NoiseLevel::from_alpha_bar(500.0, 0.5));
/// let ctx = Context::new(x.view(), Call::new(0, 0, 10, l), Prediction::Epsilon);
/// let mut c = array![1.0, 2.0];
/// Cfg::new(3.0).combine(&ctx, c.view_mut(), Some(array![0.0, 1.0].view_mut()))?;
/// assert_eq!(c, array![3.0, 4.0]);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// [^cfg]: J. Ho, T. Salimans, *Classifier-Free Diffusion Guidance*, arXiv:2207.12598; S. Lin,
///     B. Liu, J. Li, X. Yang, *Common Diffusion Noise Schedules and Sample Steps are Flawed*,
///     arXiv:2305.08891.
#[derive(Clone, Debug, PartialEq)]
pub struct Cfg {
    scale: f64,
    rescale: f64,
    rescale_space: Space,
    original: bool,
    uncond_at_one: bool,
    work: Work,
    g: Vec<f64>,
}

impl Cfg {
    /// Guidance with `scale` (7.5 is Stable Diffusion's usual value; 1 is the conditional model).
    pub fn new(scale: f64) -> Self {
        Cfg {
            scale,
            rescale: 0.0,
            rescale_space: Space::Output,
            original: false,
            uncond_at_one: false,
            work: Work::default(),
            g: Vec::new(),
        }
    }

    /// The scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Guidance rescale `phi` in [0, 1] (0.7 with zero-terminal-SNR models, Lin et al.).
    pub fn rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    /// The space the rescale works in: the model's output (diffusers' `guidance_rescale`, the
    /// default), or [`Space::Velocity`] — ComfyUI's `RescaleCFG` node, which always rescales in
    /// v-prediction space (on VP models the same as diffusers' for v-prediction models; on flow
    /// models ComfyUI's node uses VP formulas with the flow sigma, which this does not).
    pub fn rescale_space(mut self, space: Space) -> Self {
        self.rescale_space = space;
        self
    }

    /// The original formulation `c + scale (c - u)` (diffusers' `use_original_formulation`).
    pub fn original_formulation(mut self, yes: bool) -> Self {
        self.original = yes;
        self
    }

    /// Evaluates the unconditional branch even where guidance is off (scale 1): ComfyUI's CFG++
    /// samplers (all but `cfgpp_ud10_ab`) do, renoising with it.
    pub fn uncond_at_one(mut self, yes: bool) -> Self {
        self.uncond_at_one = yes;
        self
    }

    /// Checks a scale and a rescale factor.
    pub(crate) fn check_values(scale: f64, rescale: f64) -> Result<()> {
        if !scale.is_finite() {
            return Err(Error::InvalidParameter {
                name: "scale",
                value: scale,
                reason: "must be finite",
            });
        }
        if !(0.0..=1.0).contains(&rescale) {
            return Err(Error::InvalidParameter {
                name: "rescale",
                value: rescale,
                reason: "guidance rescale must be in [0, 1]",
            });
        }
        Ok(())
    }

    /// The scale at which guidance is off: 1, or 0 in the original formulation.
    pub(crate) fn off_target(&self) -> f64 {
        if self.original { 0.0 } else { 1.0 }
    }

    /// Whether guidance is off at this scale (`math.isclose(scale, 1)` or, in the original
    /// formulation, 0, as diffusers decides).
    pub(crate) fn off(&self) -> bool {
        let target = self.off_target();
        (self.scale - target).abs() <= 1e-9 * self.scale.abs().max(target.abs())
    }
}

impl GuidanceRule for Cfg {
    fn check(&self) -> Result<()> {
        Cfg::check_values(self.scale, self.rescale)
    }

    fn needs_uncond(&self, _call: &Call) -> bool {
        self.uncond_at_one || !self.off()
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        _ctx: &Context<'_, F, D>,
        cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        let Some(uncond) = uncond.filter(|_| !self.off()) else {
            return Ok(());
        };
        let s = F::cast(self.scale);
        if self.rescale == 0.0 {
            cfg_into(cond, uncond.view(), s, self.original);
            return Ok(());
        }
        if self.rescale_space != Space::Output {
            let mut cond = cond;
            self.work.load(_ctx, self.rescale_space, &cond, Some(&uncond))?;
            let (sc, original) = (self.scale, self.original);
            let Work { c, u, batch, .. } = &self.work;
            self.g.clear();
            self.g.extend(
                c.iter()
                    .zip(u)
                    .map(|(&c, &u)| (if original { c } else { u }) + sc * (c - u)),
            );
            rescale_slices(&mut self.g, c, *batch, self.rescale);
            let g = std::mem::take(&mut self.g);
            let r = self.work.store(_ctx, &g, &mut cond);
            self.g = g;
            return r;
        }
        let phi = self.rescale;
        let original = self.original;
        per_element(cond, uncond.view(), |mut c, u| {
            let std_c = std_of(c.view());
            cfg_into(c.view_mut(), u, s, original);
            let std_g = std_of(c.view());
            let k = if std_g > 0.0 {
                phi * std_c / std_g + (1.0 - phi)
            } else {
                1.0
            };
            let k = F::cast(k);
            c.mapv_inplace(|v| v * k);
        });
        Ok(())
    }
}

/// `c <- u + s (c - u)` (or `c + s (c - u)`).
pub(crate) fn cfg_into<F: Float, D: Dimension>(
    mut c: ArrayViewMut<'_, F, D>,
    u: ArrayView<'_, F, D>,
    s: F,
    original: bool,
) {
    if original {
        Zip::from(&mut c).and(&u).for_each(|c, &u| *c = *c + s * (*c - u));
    } else {
        Zip::from(&mut c).and(&u).for_each(|c, &u| *c = u + s * (*c - u));
    }
}

/// The unbiased standard deviation (0 for fewer than two values).
pub(crate) fn unbiased_std<F: Float>(it: impl Iterator<Item = F> + Clone) -> f64 {
    let n = it.clone().count();
    if n < 2 {
        return 0.0;
    }
    let mean = lane_sum(it.clone().map(|v| v.as_f64())) / n as f64;
    let var = lane_sum(it.map(|v| (v.as_f64() - mean).powi(2))) / (n - 1) as f64;
    var.sqrt()
}

/// [`unbiased_std`] of an array (contiguous ones as a slice, the fast loop).
fn std_of<F: Float, D: Dimension>(a: ArrayView<'_, F, D>) -> f64 {
    let Some(s) = a.as_slice() else {
        return unbiased_std(a.iter().copied());
    };
    let n = s.len();
    if n < 2 {
        return 0.0;
    }
    // Eight interleaved partial sums over chunks: loops the compiler vectorises.
    let lanes = |f: &dyn Fn(F) -> f64| -> f64 {
        let mut acc = [0.0f64; 8];
        let chunks = s.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for ch in chunks {
            for k in 0..8 {
                acc[k] += f(ch[k]);
            }
        }
        acc.iter().sum::<f64>() + tail
    };
    let mean = lanes(&|v| v.as_f64()) / n as f64;
    (lanes(&|v| (v.as_f64() - mean).powi(2)) / (n - 1) as f64).sqrt()
}

/// A sum in four rotating partial sums (each addition waits on the one four values back, not on
/// the last: a sum bound by throughput, not by the addition's latency).
fn lane_sum(it: impl Iterator<Item = f64>) -> f64 {
    let (a, b, c, d) = it.fold((0.0, 0.0, 0.0, 0.0), |(a, b, c, d), v| (b, c, d, a + v));
    (a + b) + (c + d)
}

/// diffusers' `rescale_noise_cfg` on flat slices of `batch` elements: `pred <- phi pred std(c) /
/// std(pred) + (1 - phi) pred` per element, unbiased standard deviations.
pub(crate) fn rescale_slices(pred: &mut [f64], c: &[f64], batch: usize, phi: f64) {
    let per = pred.len() / batch.max(1);
    if per == 0 {
        return;
    }
    for (p, c) in pred.chunks_mut(per).zip(c.chunks(per)) {
        let (sc, sp) = (unbiased_std(c.iter().copied()), unbiased_std(p.iter().copied()));
        let k = if sp > 0.0 {
            phi * sc / sp + (1.0 - phi)
        } else {
            1.0
        };
        p.iter_mut().for_each(|v| *v *= k);
    }
}
