//! CFG-Zero* (Fan et al. 2025): an optimised scale on the unconditional branch, and zero
//! initialisation.

use ndarray::{ArrayViewMut, Dimension};

use super::cfg::{Cfg, rescale_slices};
use super::rule::{Context, GuidanceRule, Space, Work, dot};
use crate::denoiser::Call;
use crate::error::Result;
use crate::float::Float;

/// CFG-Zero*[^zero] (diffusers' `ClassifierFreeZeroStarGuidance`, ComfyUI's `CFGZeroStar`): the
/// unconditional prediction scaled by the per-sample least-squares factor `a = <c, u> / (|u|^2 +
/// 1e-8)` before guidance,
///
/// ```text
/// out = a u + scale (c - a u)          (original formulation: c + scale (c - a u))
/// ```
///
/// and, for the first `zero_init_steps` steps, a zero output (in flow models: the latent stays
/// where it is). [`new`](Self::new) is diffusers' guider (on the model's raw output — the flow
/// velocity it is meant for —, one zero-init step, which applies even at a scale of 1, as
/// there). [`comfyui`](Self::comfyui) is ComfyUI's node: `a` from `x - x0` of each branch, the
/// correction applied to the x0 estimates, `out_x0 = a x0_u + scale (x0_c - a x0_u)`, no zero
/// initialisation — which differs from the velocity-space form by `(a - 1)(1 - scale) x`.
///
/// With zero-init 0 and the scale `a` forced to 1 it is CFG.
///
/// ```
/// use diffusion_samplers::guidance::{CfgZeroStar, GuidanceRule};
/// assert!(CfgZeroStar::new(4.0).zero_init_steps(0).check().is_ok());
/// ```
///
/// [^zero]: W. Fan, A. Y. Zheng, R. A. Yeh, Z. Liu, *CFG-Zero*: Improved Classifier-Free
///     Guidance for Flow Matching Models*, arXiv:2503.18886.
#[derive(Clone, Debug, PartialEq)]
pub struct CfgZeroStar {
    cfg: Cfg,
    zero_init: usize,
    optimized: bool,
    comfy: bool,
    rescale: f64,
    work: Work,
    out: Vec<f64>,
}

impl CfgZeroStar {
    /// diffusers' guider with `scale` (one zero-init step).
    pub fn new(scale: f64) -> Self {
        CfgZeroStar {
            cfg: Cfg::new(scale),
            zero_init: 1,
            optimized: true,
            comfy: false,
            rescale: 0.0,
            work: Work::default(),
            out: Vec::new(),
        }
    }

    /// ComfyUI's `CFGZeroStar` node with the sampler's `cfg` (no zero initialisation).
    pub fn comfyui(cfg: f64) -> Self {
        CfgZeroStar {
            zero_init: 0,
            comfy: true,
            ..Self::new(cfg)
        }
    }

    /// Steps with a zero output at the start (diffusers' `zero_init_steps`).
    pub fn zero_init_steps(mut self, n: usize) -> Self {
        self.zero_init = n;
        self
    }

    /// Whether the unconditional branch is scaled by the optimised factor (default `true`; off, the
    /// rule is CFG with zero initialisation).
    pub fn optimized_scale(mut self, yes: bool) -> Self {
        self.optimized = yes;
        self
    }

    /// The original formulation `c + scale (c - a u)`.
    pub fn original_formulation(mut self, yes: bool) -> Self {
        self.cfg = self.cfg.original_formulation(yes);
        self
    }

    /// diffusers' `guidance_rescale` on the result.
    pub fn with_rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    fn zero(&self, call: &Call) -> bool {
        call.step < self.zero_init
    }
}

impl GuidanceRule for CfgZeroStar {
    fn check(&self) -> Result<()> {
        self.cfg.check()?;
        Cfg::check_values(1.0, self.rescale)
    }

    fn needs_uncond(&self, call: &Call) -> bool {
        !self.zero(call) && !self.cfg.off()
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        mut cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        if self.zero(&ctx.call) {
            cond.fill(F::zero());
            return Ok(());
        }
        let Some(uncond) = uncond.filter(|_| !self.cfg.off()) else {
            return Ok(());
        };
        // `a` from the raw outputs (diffusers) or from x - x0 (ComfyUI), per batch element.
        let space = if self.comfy {
            Space::Residual
        } else {
            Space::Output
        };
        self.work.load(ctx, space, &cond, Some(&uncond))?;
        let per = self.work.per();
        let mut alphas = [0.0f64; 64];
        let mut many = Vec::new();
        let batch = self.work.batch;
        let alpha_of = |c: &[f64], u: &[f64]| dot(c, u) / (dot(u, u) + 1e-8);
        let pairs = self.work.c.chunks(per.max(1)).zip(self.work.u.chunks(per.max(1)));
        let a: &[f64] = if batch <= alphas.len() {
            for (k, (c, u)) in pairs.enumerate() {
                alphas[k] = if self.optimized { alpha_of(c, u) } else { 1.0 };
            }
            &alphas[..batch]
        } else {
            many.extend(pairs.map(|(c, u)| if self.optimized { alpha_of(c, u) } else { 1.0 }));
            &many
        };
        if self.comfy {
            // In x0: out = a x0_u + s (x0_c - a x0_u).
            self.work.load(ctx, Space::X0, &cond, Some(&uncond))?;
        }
        let (s, original) = (self.cfg.scale(), self.cfg_original());
        let out = &mut self.out;
        out.clear();
        for (k, (c, u)) in self
            .work
            .c
            .chunks(per.max(1))
            .zip(self.work.u.chunks(per.max(1)))
            .enumerate()
        {
            let ak = a[k];
            out.extend(c.iter().zip(u).map(|(&c, &u)| {
                let au = ak * u;
                (if original { c } else { au }) + s * (c - au)
            }));
        }
        if self.rescale > 0.0 {
            rescale_slices(out, &self.work.c, batch, self.rescale);
        }
        let g = std::mem::take(&mut self.out);
        let r = self.work.store(ctx, &g, &mut cond);
        self.out = g;
        r
    }
}

impl CfgZeroStar {
    fn cfg_original(&self) -> bool {
        self.cfg.off_target() == 0.0
    }
}
