//! Tangential damping CFG and magnitude-aware guidance (MAMBO-G).

use ndarray::{ArrayViewMut, Dimension};

use super::cfg::{Cfg, rescale_slices};
use super::rule::{Context, GuidanceRule, Space, Work, dot};
use crate::denoiser::Call;
use crate::error::{Error, Result};
use crate::float::Float;

/// Tangential damping CFG[^tcfg] (diffusers' `TangentialClassifierFreeGuidance`, ComfyUI's
/// `TCFG`): per batch element, the unconditional prediction is replaced by its projection on
/// the top right-singular vector `v1` of the 2 × N matrix `[c; u]`, dropping its component
/// normal to the data manifold's tangent, then CFG:
///
/// ```text
/// u_t = (u . v1) v1,   out = u_t + scale (c - u_t)      (original formulation: c + scale (c - u_t))
/// ```
///
/// [`new`](Self::new) works on the model's raw output (diffusers), [`comfyui`](Self::comfyui) on
/// `x - x0` (ComfyUI: the noise, or the flow velocity). The damped `u_t` is written back into
/// the unconditional branch (as ComfyUI's pre-CFG hook does), so CFG++ samplers renoise with it.
/// The projection is computed in `f64` (ComfyUI's node computes it in `f32` even in a `float64`
/// run: the two agree to ~1e-7).
///
/// ```
/// use diffusion_samplers::guidance::{Context, GuidanceRule, Tangential};
/// use diffusion_samplers::{Call, NoiseLevel, Prediction};
/// use ndarray::array;
/// let (x, l) = (array![[0.0f64, 0.0, 0.0]], NoiseLevel::from_alpha_bar(500.0, 0.5));
/// let ctx = Context::new(x.view(), Call::new(0, 0, 10, l), Prediction::Epsilon);
/// // u parallel to c: nothing to damp, plain CFG.
/// let (mut c, mut u) = (array![[1.0, 2.0, 2.0]], array![[0.5, 1.0, 1.0]]);
/// Tangential::new(3.0).combine(&ctx, c.view_mut(), Some(u.view_mut()))?;
/// assert!((&c - &array![[2.0, 4.0, 4.0]]).iter().all(|d| d.abs() < 1e-12));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// [^tcfg]: *TCFG: Tangential Damping Classifier-free Guidance*,
///     arXiv:2503.18137.
#[derive(Clone, Debug, PartialEq)]
pub struct Tangential {
    cfg: Cfg,
    space: Space,
    rescale: f64,
    work: Work,
    ut: Vec<f64>,
    out: Vec<f64>,
}

impl Tangential {
    /// diffusers' guider with `scale`, on the model's output.
    pub fn new(scale: f64) -> Self {
        Tangential {
            cfg: Cfg::new(scale),
            space: Space::Output,
            rescale: 0.0,
            work: Work::default(),
            ut: Vec::new(),
            out: Vec::new(),
        }
    }

    /// ComfyUI's `TCFG` node with the sampler's `cfg`.
    pub fn comfyui(cfg: f64) -> Self {
        Tangential {
            space: Space::Residual,
            ..Self::new(cfg)
        }
    }

    /// The original formulation.
    pub fn original_formulation(mut self, yes: bool) -> Self {
        self.cfg = self.cfg.original_formulation(yes);
        self
    }

    /// diffusers' `guidance_rescale` on the result.
    pub fn with_rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }
}

/// The projection of `u` on the top right-singular vector of `[c; u]` (through the 2 × 2 Gram
/// matrix), written into `out`.
fn tangential_part(c: &[f64], u: &[f64], out: &mut Vec<f64>) {
    let (a, b, d) = (dot(c, c), dot(c, u), dot(u, u));
    let half = 0.5 * (a - d);
    let l1 = 0.5 * (a + d) + (half * half + b * b).sqrt();
    let (w1, w2) = if b != 0.0 {
        (l1 - d, b)
    } else if a >= d {
        (1.0, 0.0)
    } else {
        (0.0, 1.0)
    };
    let n2 = w1 * w1 + w2 * w2;
    // v1 = (w1 c + w2 u) / sqrt(n2 l1); u_t = (u . v1) v1.
    let k = if l1 > 0.0 && n2 > 0.0 {
        (w1 * b + w2 * d) / (n2 * l1)
    } else {
        0.0
    };
    out.extend(c.iter().zip(u).map(|(&c, &u)| k * (w1 * c + w2 * u)));
}

impl GuidanceRule for Tangential {
    fn check(&self) -> Result<()> {
        self.cfg.check()?;
        Cfg::check_values(1.0, self.rescale)
    }

    fn needs_uncond(&self, _call: &Call) -> bool {
        !self.cfg.off()
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        mut cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        let Some(uncond) = uncond.filter(|_| !self.cfg.off()) else {
            return Ok(());
        };
        self.work.load(ctx, self.space, &cond, Some(&uncond))?;
        let per = self.work.per().max(1);
        let (s, original) = (self.cfg.scale(), self.cfg.off_target() == 0.0);
        let (ut, out) = (&mut self.ut, &mut self.out);
        ut.clear();
        for (c, u) in self.work.c.chunks(per).zip(self.work.u.chunks(per)) {
            tangential_part(c, u, ut);
        }
        out.clear();
        out.extend(
            self.work
                .c
                .iter()
                .zip(ut.iter())
                .map(|(&cv, &ut)| (if original { cv } else { ut }) + s * (cv - ut)),
        );
        if self.rescale > 0.0 {
            rescale_slices(out, &self.work.c, self.work.batch, self.rescale);
        }
        // The damped unconditional estimate replaces the branch (ComfyUI's pre-CFG step: what
        // CFG++ samplers renoise with).
        let mut uncond = uncond;
        self.work.store(ctx, &self.ut, &mut uncond)?;
        self.work.store(ctx, &self.out, &mut cond)
    }
}

/// MAMBO-G[^mambo] (diffusers' `MagnitudeAwareGuidance`): the scale damped where the guidance
/// direction is large against the unconditional prediction, per batch element,
///
/// ```text
/// ratio = |c - u| / |u|,   s_eff = 1 + (scale - 1) exp(-alpha ratio),   out = u + s_eff (c - u)
/// ```
///
/// (original formulation: `s_eff = scale exp(-alpha ratio)`, `out = c + s_eff (c - u)`), on the
/// model's output; default `alpha = 8`. (diffusers' own code takes a matrix norm that fails on 4-
/// and 5-dimensional latents; this is the per-sample L2 norm it computes on packed ones.)
///
/// ```
/// use diffusion_samplers::guidance::{GuidanceRule, MagnitudeAware};
/// assert!(MagnitudeAware::new(10.0).alpha(8.0).check().is_ok());
/// ```
///
/// [^mambo]: *MAMBO-G: Magnitude-Aware Mitigation for Boosted Guidance*, arXiv:2508.03442.
#[derive(Clone, Debug, PartialEq)]
pub struct MagnitudeAware {
    cfg: Cfg,
    alpha: f64,
    rescale: f64,
    work: Work,
    out: Vec<f64>,
}

impl MagnitudeAware {
    /// diffusers' guider with `scale` and `alpha = 8`.
    pub fn new(scale: f64) -> Self {
        MagnitudeAware {
            cfg: Cfg::new(scale),
            alpha: 8.0,
            rescale: 0.0,
            work: Work::default(),
            out: Vec::new(),
        }
    }

    /// The damping rate `alpha`.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// The original formulation.
    pub fn original_formulation(mut self, yes: bool) -> Self {
        self.cfg = self.cfg.original_formulation(yes);
        self
    }

    /// diffusers' `guidance_rescale` on the result.
    pub fn with_rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }
}

impl GuidanceRule for MagnitudeAware {
    fn check(&self) -> Result<()> {
        self.cfg.check()?;
        if !self.alpha.is_finite() {
            return Err(Error::InvalidParameter {
                name: "alpha",
                value: self.alpha,
                reason: "must be finite",
            });
        }
        Cfg::check_values(1.0, self.rescale)
    }

    fn needs_uncond(&self, _call: &Call) -> bool {
        !self.cfg.off()
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        mut cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        let Some(uncond) = uncond.filter(|_| !self.cfg.off()) else {
            return Ok(());
        };
        self.work.load(ctx, Space::Output, &cond, Some(&uncond))?;
        let per = self.work.per().max(1);
        let (s, original, alpha) = (self.cfg.scale(), self.cfg.off_target() == 0.0, self.alpha);
        let out = &mut self.out;
        out.clear();
        for (c, u) in self.work.c.chunks(per).zip(self.work.u.chunks(per)) {
            let dn = c
                .iter()
                .zip(u)
                .map(|(c, u)| (c - u) * (c - u))
                .sum::<f64>()
                .sqrt();
            let ratio = dn / dot(u, u).sqrt();
            let damp = if ratio.is_nan() {
                1.0
            } else {
                (-alpha * ratio).exp()
            };
            let s_eff = if original {
                s * damp
            } else {
                1.0 + (s - 1.0) * damp
            };
            out.extend(
                c.iter()
                    .zip(u)
                    .map(|(&c, &u)| (if original { c } else { u }) + s_eff * (c - u)),
            );
        }
        if self.rescale > 0.0 {
            rescale_slices(out, &self.work.c, self.work.batch, self.rescale);
        }
        let g = std::mem::take(&mut self.out);
        let r = self.work.store(ctx, &g, &mut cond);
        self.out = g;
        r
    }
}
