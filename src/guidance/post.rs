//! Rules that post-process another rule's result, and Mahiro (ComfyUI's post-CFG nodes).

use ndarray::{ArrayViewMut, Dimension};

use super::cfg::Cfg;
use super::rule::{Context, GuidanceRule, Space, Work};
use crate::denoiser::Call;
use crate::error::{Error, Result};
use crate::float::Float;

/// For arrays of shape `(B, C, rest…)` in logical order: calls `f` with the flat indices of
/// each `(b, rest)` position's `C` values (stride `rest`).
fn per_pixel(shape: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let (b, c) = (
        shape.first().copied().unwrap_or(1),
        shape.get(1).copied().unwrap_or(1),
    );
    let rest: usize = shape.iter().skip(2).product();
    for bi in 0..b {
        for r in 0..rest.max(1) {
            f(bi * c * rest + r, rest.max(1), c);
        }
    }
}

/// ComfyUI's `CFGNorm` node: after `inner` (CFG by default), the guided x0 estimate is scaled per
/// pixel so that its norm over the channel axis (axis 1) does not exceed the conditional
/// estimate's, `out = g min(1, |x0_c| / (|g| + 1e-8)) strength`.
///
/// ```
/// use diffusion_samplers::guidance::{Cfg, CfgNorm, GuidanceRule};
/// assert!(CfgNorm::new(Cfg::new(4.0)).strength(1.0).check().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CfgNorm<R = Cfg> {
    inner: R,
    strength: f64,
    work: Work,
    g: Vec<f64>,
}

impl<R> CfgNorm<R> {
    /// `inner`, then the norm cap with strength 1.
    pub fn new(inner: R) -> Self {
        CfgNorm {
            inner,
            strength: 1.0,
            work: Work::default(),
            g: Vec::new(),
        }
    }

    /// The factor applied after the cap (ComfyUI's `strength`, default 1).
    pub fn strength(mut self, s: f64) -> Self {
        self.strength = s;
        self
    }
}

impl<R: GuidanceRule> GuidanceRule for CfgNorm<R> {
    fn check(&self) -> Result<()> {
        if !self.strength.is_finite() {
            return Err(Error::InvalidParameter {
                name: "strength",
                value: self.strength,
                reason: "must be finite",
            });
        }
        self.inner.check()
    }

    fn needs_uncond(&self, call: &Call) -> bool {
        self.inner.needs_uncond(call)
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        mut cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        // x0_c, before the inner rule overwrites the conditional output.
        self.work.load(ctx, Space::X0, &cond, None)?;
        self.inner.combine(ctx, cond.view_mut(), uncond)?;
        let (ka, kb) = (self.work.ka, self.work.kb);
        self.g.clear();
        self.g.extend(
            cond.iter()
                .zip(&self.work.x)
                .map(|(o, x)| ka * x + kb * o.as_f64()),
        );
        let (c, g, strength) = (&self.work.c, &mut self.g, self.strength);
        per_pixel(cond.shape(), |start, stride, n| {
            let idx = (0..n).map(|k| start + k * stride);
            let nc = idx.clone().map(|i| c[i] * c[i]).sum::<f64>().sqrt();
            let ng = idx.clone().map(|i| g[i] * g[i]).sum::<f64>().sqrt();
            let k = (nc / (ng + 1e-8)).clamp(0.0, 1.0) * strength;
            for i in idx {
                g[i] *= k;
            }
        });
        let g = std::mem::take(&mut self.g);
        let r = self.work.store(ctx, &g, &mut cond);
        self.g = g;
        r
    }
}

/// Epsilon scaling[^eps] (ComfyUI's `Epsilon Scaling` node): after `inner`, the guided noise
/// prediction divided by `factor` (default 1.005) at every call, the x0 estimate following from
/// the unchanged sample: `x0' = x - (x - x0) / factor` in ComfyUI's coordinates (for flow models
/// the flow velocity is scaled).
///
/// ```
/// use diffusion_samplers::guidance::{Cfg, EpsScaling, GuidanceRule};
/// assert!(EpsScaling::new(Cfg::new(4.0)).factor(1.005).check().is_ok());
/// ```
///
/// [^eps]: M. Ning, M. Li, J. Su, A. A. Salah, I. O. Ertugrul, *Elucidating the Exposure Bias in
///     Diffusion Models*, ICLR 2024, arXiv:2308.15321.
#[derive(Clone, Debug, PartialEq)]
pub struct EpsScaling<R = Cfg> {
    inner: R,
    factor: f64,
}

impl<R> EpsScaling<R> {
    /// `inner`, then epsilon scaling with factor 1.005.
    pub fn new(inner: R) -> Self {
        EpsScaling { inner, factor: 1.005 }
    }

    /// The scaling factor `lambda` (ComfyUI's `scaling_factor`).
    pub fn factor(mut self, lambda: f64) -> Self {
        self.factor = lambda;
        self
    }
}

impl<R: GuidanceRule> GuidanceRule for EpsScaling<R> {
    fn check(&self) -> Result<()> {
        if !(self.factor.is_finite() && self.factor > 0.0) {
            return Err(Error::InvalidParameter {
                name: "factor",
                value: self.factor,
                reason: "must be positive and finite",
            });
        }
        self.inner.check()
    }

    fn needs_uncond(&self, call: &Call) -> bool {
        self.inner.needs_uncond(call)
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        mut cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        self.inner.combine(ctx, cond.view_mut(), uncond)?;
        ctx.convert_into(Space::Residual, cond.view_mut())?;
        let k = F::cast(1.0 / self.factor);
        cond.mapv_inplace(|v| v * k);
        ctx.convert_from(Space::Residual, cond)
    }
}

/// ComfyUI's `Mahiro` node: CFG with `scale`, then the result moved towards the scaled
/// conditional estimate `s x0_c` by how similar the signed square roots of `s x0_u` and of
/// `(s x0_c + cfg) / 2` are (their cosine over the channel axis, averaged over the batch and
/// every position into one number `sim`): `out = ((2 + 2 sim) cfg + (2 - 2 sim) s x0_c) / 4`, in
/// x0 space.
///
/// ```
/// use diffusion_samplers::guidance::{GuidanceRule, Mahiro};
/// assert!(Mahiro::new(4.0).check().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Mahiro {
    cfg: Cfg,
    work: Work,
    g: Vec<f64>,
}

impl Mahiro {
    /// Mahiro's guidance with the sampler's `cfg`.
    pub fn new(scale: f64) -> Self {
        Mahiro {
            cfg: Cfg::new(scale),
            work: Work::default(),
            g: Vec::new(),
        }
    }
}

impl GuidanceRule for Mahiro {
    fn check(&self) -> Result<()> {
        self.cfg.check()
    }

    fn needs_uncond(&self, call: &Call) -> bool {
        self.cfg.needs_uncond(call)
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
        self.work.load(ctx, Space::X0, &cond, Some(&uncond))?;
        let s = self.cfg.scale();
        let Work { c, u, .. } = &self.work;
        let g = &mut self.g;
        g.clear();
        g.extend(c.iter().zip(u).map(|(c, u)| u + s * (c - u)));
        let sq = |v: f64| v.signum() * v.abs().sqrt();
        let (mut total, mut count) = (0.0, 0usize);
        per_pixel(cond.shape(), |start, stride, n| {
            let (mut dot, mut nu, mut nm) = (0.0, 0.0, 0.0);
            for k in 0..n {
                let i = start + k * stride;
                let a = sq(s * u[i]);
                let b = sq((s * c[i] + g[i]) / 2.0);
                dot += a * b;
                nu += a * a;
                nm += b * b;
            }
            total += dot / (nu.sqrt().max(1e-8) * nm.sqrt().max(1e-8));
            count += 1;
        });
        let sim = total / count.max(1) as f64;
        let simsc = 2.0 * (sim + 1.0);
        for (gv, &cv) in g.iter_mut().zip(c) {
            *gv = (simsc * *gv + (4.0 - simsc) * s * cv) / 4.0;
        }
        let g = std::mem::take(&mut self.g);
        let r = self.work.store(ctx, &g, &mut cond);
        self.g = g;
        r
    }
}
