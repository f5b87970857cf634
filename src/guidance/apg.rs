//! Adaptive projected guidance (Sadat et al. 2024), and APG-mix.

use ndarray::{ArrayViewMut, Dimension};

use super::cfg::Cfg;
use super::rule::{Context, GuidanceRule, Space, Work, dot};
use crate::denoiser::Call;
use crate::error::{Error, Result};
use crate::float::Float;

/// Over which axes APG's norms and projections run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Axes {
    /// Every axis but the batch axis (diffusers).
    NonBatch,
    /// The last three axes (ComfyUI: channels and image for 4-D latents, frames and image for 5-D).
    LastThree,
}

/// When the momentum resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reset {
    /// At a run's first call (diffusers: at step 0).
    RunStart,
    /// Whenever the noise level rises from one call to the next (ComfyUI).
    SigmaRises,
}

/// Adaptive projected guidance[^apg] (diffusers' `AdaptiveProjectedGuidance`, ComfyUI's `APG`
/// node): the guidance direction `diff = c - u`, optionally averaged with momentum (`running =
/// diff + momentum running`), clipped to the norm threshold `r` (`diff min(1, r / |diff|)`), and
/// split into its parts parallel and orthogonal to the conditional prediction; the parallel
/// part (which oversaturates) is weighted by `eta`:
///
/// ```text
/// out = u + scale (orth + eta par)          (original formulation: c + scale (...))
/// ```
///
/// [`new`](Self::new) is diffusers' guider: the model's raw output, norms over every axis but
/// the batch axis, threshold 15, no momentum, `eta = 1`, momentum reset at a run's start,
/// guidance off at a scale of 1. [`comfyui`](Self::comfyui) is ComfyUI's node (with its
/// defaults threshold 5, no momentum): the x0 estimate, the original formulation with the
/// sampler's cfg as the scale, norms over the last three axes, momentum per model call reset
/// when the noise level rises. With `eta = 1`, no momentum and no threshold, APG is CFG.
/// [`with_rescale`](Self::with_rescale) adds diffusers' guidance rescale.
///
/// ```
/// use diffusion_samplers::guidance::{Apg, Cfg, Context, GuidanceRule};
/// use diffusion_samplers::{Call, NoiseLevel, Prediction};
/// use ndarray::array;
/// let (x, l) = (array![[0.0f64, 0.0]], NoiseLevel::from_alpha_bar(500.0, 0.5));
/// let ctx = Context::new(x.view(), Call::new(0, 0, 10, l), Prediction::Epsilon);
/// let (c, mut u) = (array![[1.0, 2.0]], array![[0.5, -1.0]]);
/// let (mut a, mut b) = (c.clone(), c.clone());
/// Apg::new(4.0).eta(1.0).norm_threshold(0.0).combine(&ctx, a.view_mut(), Some(u.view_mut()))?;
/// Cfg::new(4.0).combine(&ctx, b.view_mut(), Some(u.view_mut()))?;
/// assert!((&a - &b).iter().all(|d| d.abs() < 1e-12)); // eta 1, no threshold: CFG
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// [^apg]: S. Sadat, O. Hilliges, R. M. Weber, *Eliminating Oversaturation and Artifacts of High
///     Guidance Scales in Diffusion Models*, ICLR 2025, arXiv:2410.02416.
#[derive(Clone, Debug, PartialEq)]
pub struct Apg {
    scale: f64,
    eta: f64,
    threshold: f64,
    momentum: Option<f64>,
    original: bool,
    space: Space,
    axes: Axes,
    reset: Reset,
    rescale: f64,
    /// The momentum's running average (per element, in the rule's space), the last call's sigma.
    running: Vec<f64>,
    last_sigma: Option<f64>,
    work: Work,
    scratch: Vec<f64>,
}

impl Apg {
    /// diffusers' `AdaptiveProjectedGuidance(guidance_scale=scale)`: threshold 15, no momentum,
    /// `eta = 1`, on the model's output.
    pub fn new(scale: f64) -> Self {
        Apg {
            scale,
            eta: 1.0,
            threshold: 15.0,
            momentum: None,
            original: false,
            space: Space::Output,
            axes: Axes::NonBatch,
            reset: Reset::RunStart,
            rescale: 0.0,
            running: Vec::new(),
            last_sigma: None,
            work: Work::default(),
            scratch: Vec::new(),
        }
    }

    /// ComfyUI's `APG` node with the sampler's `cfg` (its defaults: `eta = 1`, threshold 5, no
    /// momentum): x0 space, original formulation, last three axes, reset on rising noise.
    pub fn comfyui(cfg: f64) -> Self {
        Apg {
            threshold: 5.0,
            momentum: Some(0.0),
            original: true,
            space: Space::X0,
            axes: Axes::LastThree,
            reset: Reset::SigmaRises,
            ..Self::new(cfg)
        }
    }

    /// The weight of the parallel part (1: none removed; 0: only the orthogonal part).
    pub fn eta(mut self, eta: f64) -> Self {
        self.eta = eta;
        self
    }

    /// The norm threshold `r` (0: no clipping).
    pub fn norm_threshold(mut self, r: f64) -> Self {
        self.threshold = r;
        self
    }

    /// Momentum (diffusers' `adaptive_projected_guidance_momentum`, ComfyUI's `momentum`;
    /// negative values are the paper's choice; `None` or 0: none).
    pub fn momentum(mut self, m: Option<f64>) -> Self {
        self.momentum = m;
        self
    }

    /// The original formulation `c + scale (...)`.
    pub fn original_formulation(mut self, yes: bool) -> Self {
        self.original = yes;
        self
    }

    /// The space the projection works in (default: the model's output for [`new`](Self::new),
    /// x0 for [`comfyui`](Self::comfyui)).
    pub fn space(mut self, space: Space) -> Self {
        self.space = space;
        self
    }

    /// diffusers' `guidance_rescale` on the result.
    pub fn with_rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    fn off(&self) -> bool {
        // The original formulation is off at 0 only in diffusers; ComfyUI's node always runs.
        self.reset == Reset::RunStart && Cfg::new(self.scale).original_formulation(self.original).off()
    }

    /// The values per norm group of one batch element, and the groups per element.
    fn group(&self, shape: &[usize]) -> usize {
        match self.axes {
            Axes::NonBatch => shape.iter().skip(1).product::<usize>().max(1),
            Axes::LastThree => shape.iter().rev().take(3).product::<usize>().max(1),
        }
    }
}

impl GuidanceRule for Apg {
    fn check(&self) -> Result<()> {
        for (name, v) in [
            ("scale", self.scale),
            ("eta", self.eta),
            ("norm_threshold", self.threshold),
        ] {
            if !v.is_finite() {
                return Err(Error::InvalidParameter {
                    name,
                    value: v,
                    reason: "must be finite",
                });
            }
        }
        if self.threshold < 0.0 {
            return Err(Error::InvalidParameter {
                name: "norm_threshold",
                value: self.threshold,
                reason: "must be non-negative",
            });
        }
        if let Some(m) = self.momentum.filter(|m| !m.is_finite()) {
            return Err(Error::InvalidParameter {
                name: "momentum",
                value: m,
                reason: "must be finite",
            });
        }
        if !(0.0..=1.0).contains(&self.rescale) {
            return Err(Error::InvalidParameter {
                name: "rescale",
                value: self.rescale,
                reason: "guidance rescale must be in [0, 1]",
            });
        }
        Ok(())
    }

    fn needs_uncond(&self, _call: &Call) -> bool {
        !self.off()
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        mut cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        let Some(uncond) = uncond.filter(|_| !self.off()) else {
            return Ok(());
        };
        let sigma = ctx.call.level.sigma_ve();
        let reset = match self.reset {
            Reset::RunStart => ctx.call.index == 0,
            Reset::SigmaRises => self.last_sigma.is_some_and(|s| sigma > s),
        };
        self.last_sigma = Some(sigma);
        let group = self.group(cond.shape());
        self.work.load(ctx, self.space, &cond, Some(&uncond))?;
        let Work { c, u, .. } = &self.work;
        // diff = c - u, with momentum.
        let diff = &mut self.scratch;
        diff.clear();
        diff.extend(c.iter().zip(u).map(|(c, u)| c - u));
        if let Some(m) = self.momentum.filter(|&m| m != 0.0) {
            if reset || self.running.len() != diff.len() {
                self.running.clear();
                self.running.resize(diff.len(), 0.0);
            }
            for (r, d) in self.running.iter_mut().zip(diff.iter_mut()) {
                *r = *d + m * *r;
                *d = *r;
            }
        }
        let (s, eta, thr) = (self.scale, self.eta, self.threshold);
        for ((d, c), u) in diff.chunks_mut(group).zip(c.chunks(group)).zip(u.chunks(group)) {
            if thr > 0.0 {
                let n = dot(d, d).sqrt();
                let k = (thr / n).min(1.0);
                d.iter_mut().for_each(|v| *v *= k);
            }
            // The projection on the normalised conditional prediction (F.normalize: eps 1e-12).
            let nc = dot(c, c).sqrt().max(1e-12);
            let p = dot(d, c) / (nc * nc);
            for ((d, &cv), &uv) in d.iter_mut().zip(c).zip(u) {
                let par = p * cv;
                let update = (*d - par) + eta * par;
                let base = if self.original { cv } else { uv };
                *d = base + s * update;
            }
        }
        if self.rescale > 0.0 {
            super::cfg::rescale_slices(diff, c, self.work.batch, self.rescale);
        }
        let g = std::mem::take(&mut self.scratch);
        let r = self.work.store(ctx, &g, &mut cond);
        self.scratch = g;
        r
    }
}

/// APG-mix (diffusers' `AdaptiveProjectedMixGuidance`, HunyuanImage 2.1): plain CFG with
/// `scale` up to step `apg_start_step` (inclusive), then APG with `apg_scale`; the momentum
/// follows `c - u` throughout. Defaults as diffusers': scale 3.5, APG scale 10, momentum -0.5,
/// threshold 10, `eta = 0`, start step 5.
///
/// ```
/// use diffusion_samplers::guidance::{ApgMix, GuidanceRule};
/// assert!(ApgMix::new().check().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ApgMix {
    cfg: Cfg,
    apg: Apg,
    start_step: usize,
}

impl Default for ApgMix {
    fn default() -> Self {
        ApgMix {
            cfg: Cfg::new(3.5),
            apg: Apg::new(10.0).momentum(Some(-0.5)).norm_threshold(10.0).eta(0.0),
            start_step: 5,
        }
    }
}

impl ApgMix {
    /// diffusers' defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The CFG scale of the early steps (`guidance_scale`).
    pub fn scale(mut self, s: f64) -> Self {
        self.cfg = Cfg::new(s);
        self
    }

    /// The APG rule of the later steps (its scale, momentum, threshold, `eta`).
    pub fn apg(mut self, apg: Apg) -> Self {
        self.apg = apg;
        self
    }

    /// The last step of plain CFG (`adaptive_projected_guidance_start_step`).
    pub fn start_step(mut self, k: usize) -> Self {
        self.start_step = k;
        self
    }
}

impl GuidanceRule for ApgMix {
    fn check(&self) -> Result<()> {
        self.cfg.check()?;
        self.apg.check()
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
        let Some(uncond) = uncond.filter(|_| !self.cfg.off()) else {
            return Ok(());
        };
        if ctx.call.step > self.start_step && !self.apg.off() {
            return self.apg.combine(ctx, cond, Some(uncond));
        }
        // Plain CFG, the momentum still following c - u.
        if let Some(m) = self.apg.momentum.filter(|&m| m != 0.0) {
            let n = cond.len();
            if ctx.call.index == 0 || self.apg.running.len() != n {
                self.apg.running.clear();
                self.apg.running.resize(n, 0.0);
            }
            for ((r, c), u) in self.apg.running.iter_mut().zip(cond.iter()).zip(uncond.iter()) {
                *r = (c.as_f64() - u.as_f64()) + m * *r;
            }
        }
        self.cfg.combine(ctx, cond.view_mut(), Some(uncond))
    }
}
