//! Frequency-dependent guidance over the last two axes (the image axes): FreSca (ComfyUI) and
//! frequency-decoupled guidance (diffusers).

use std::f64::consts::PI;

use ndarray::{ArrayViewMut, Dimension};

use super::cfg::{Cfg, rescale_slices};
use super::rule::{Context, GuidanceRule, Space, Work, dot};
use crate::denoiser::Call;
use crate::error::{Error, Result};
use crate::float::Float;

/// The image axes' sizes `(h, w)` and the number of images (all other axes) of `shape`.
fn image_axes(shape: &[usize]) -> Option<(usize, usize, usize)> {
    let n = shape.len();
    if n < 2 {
        return None;
    }
    let (h, w) = (shape[n - 2], shape[n - 1]);
    Some((h, w, shape[..n - 2].iter().product()))
}

/// `z <- P z` along one axis of a complex `h × w` image (`rows`: along each row, else along each
/// column), where `P` keeps the DFT coefficients at indices `k` with `keep(k)`.
fn project_axis(
    re: &mut [f64],
    im: &mut [f64],
    h: usize,
    w: usize,
    rows: bool,
    (keep, tw): (&[bool], &[(f64, f64)]),
    (fr, fi): (&mut [f64], &mut [f64]),
) {
    let n = if rows { w } else { h };
    let lines = if rows { h } else { w };
    let at = |line: usize, k: usize| if rows { line * w + k } else { k * w + line };
    for line in 0..lines {
        // Forward DFT, the kept coefficients only.
        for k in 0..n {
            fr[k] = 0.0;
            fi[k] = 0.0;
            if !keep[k] {
                continue;
            }
            for j in 0..n {
                let (c, s) = tw[(k * j) % n];
                let (a, b) = (re[at(line, j)], im[at(line, j)]);
                // (a + ib)(c - is)
                fr[k] += a * c + b * s;
                fi[k] += b * c - a * s;
            }
        }
        // Inverse DFT.
        for j in 0..n {
            let (mut a, mut b) = (0.0, 0.0);
            for k in (0..n).filter(|&k| keep[k]) {
                let (c, s) = tw[(k * j) % n];
                a += fr[k] * c - fi[k] * s;
                b += fr[k] * s + fi[k] * c;
            }
            re[at(line, j)] = a / n as f64;
            im[at(line, j)] = b / n as f64;
        }
    }
}

/// `(cos, sin)` of `2 pi k / n`, into `out`.
fn twiddles(n: usize, out: &mut Vec<(f64, f64)>) {
    out.clear();
    out.extend((0..n).map(|k| {
        let a = 2.0 * PI * k as f64 / n as f64;
        (a.cos(), a.sin())
    }));
}

/// FreSca's per-size tables and buffers, rebuilt only when the image size or cutoff changes.
#[derive(Clone, Debug, Default, PartialEq)]
struct Spectral {
    key: Option<(usize, usize, usize)>,
    keep_h: Vec<bool>,
    keep_w: Vec<bool>,
    tw_h: Vec<(f64, f64)>,
    tw_w: Vec<(f64, f64)>,
    re: Vec<f64>,
    im: Vec<f64>,
    fr: Vec<f64>,
    fi: Vec<f64>,
}

impl Spectral {
    fn prepare(&mut self, h: usize, w: usize, cutoff: usize) {
        if self.key == Some((h, w, cutoff)) {
            return;
        }
        self.key = Some((h, w, cutoff));
        // The box per axis, in unshifted DFT indices: shifted index (k + n/2) mod n in
        // [n/2 - f, n/2 + f).
        let boxed = |n: usize, k: usize| {
            let cc = n / 2;
            let f = cutoff.min(cc);
            let j = (k + cc) % n;
            j + f >= cc && j < cc + f
        };
        self.keep_h.clear();
        self.keep_h.extend((0..h).map(|k| boxed(h, k)));
        self.keep_w.clear();
        self.keep_w.extend((0..w).map(|k| boxed(w, k)));
        twiddles(h, &mut self.tw_h);
        twiddles(w, &mut self.tw_w);
        self.re.resize(h * w, 0.0);
        self.im.resize(h * w, 0.0);
        self.fr.resize(h.max(w), 0.0);
        self.fi.resize(h.max(w), 0.0);
    }
}

/// FreSca[^fresca] (ComfyUI's `FreSca` node): the guidance direction `x0_c - x0_u` rescaled per
/// frequency over the last two axes — `scale_low` inside a centred box of half-width
/// `freq_cutoff` of the shifted 2-D spectrum, `scale_high` outside — then CFG in x0 space:
///
/// ```text
/// out = x0_u + scale ifft2(mask . fft2(x0_c - x0_u))
/// ```
///
/// ComfyUI's box spans the shifted indices `[n/2 - f, n/2 + f)` with `f = min(cutoff, n/2)` on
/// every axis from the third on (for 5-D latents the frame axis too, although the transform is
/// over the last two only; with one frame there is no box at all). Defaults as ComfyUI's node:
/// `scale_low = 1`, `scale_high = 1.25`, `freq_cutoff = 20`.
///
/// ```
/// use diffusion_samplers::guidance::{Cfg, Context, FreSca, GuidanceRule};
/// use diffusion_samplers::{Call, NoiseLevel, Prediction};
/// use ndarray::Array4;
/// let l = NoiseLevel::from_alpha_bar(500.0, 0.5);
/// let x = Array4::<f64>::from_shape_fn((1, 2, 8, 8), |(_, c, h, w)| ((c + h * w) as f64).sin());
/// let ctx = Context::new(x.view(), Call::new(0, 0, 10, l), Prediction::Sample);
/// let mut u = x.mapv(|v| 0.5 * v);
/// // Both scales 1: plain CFG.
/// let (mut a, mut b) = (x.clone(), x.clone());
/// FreSca::new(3.0).scale_high(1.0).combine(&ctx, a.view_mut(), Some(u.view_mut()))?;
/// Cfg::new(3.0).combine(&ctx, b.view_mut(), Some(u.view_mut()))?;
/// assert!((&a - &b).iter().all(|d| d.abs() < 1e-12));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// [^fresca]: C. Huang et al., *FreSca: Scaling in Frequency Space Enhances Diffusion Models*,
///     arXiv:2504.02154.
#[derive(Clone, Debug, PartialEq)]
pub struct FreSca {
    cfg: Cfg,
    low: f64,
    high: f64,
    cutoff: usize,
    work: Work,
    g: Vec<f64>,
    spectral: Spectral,
}

impl FreSca {
    /// FreSca with the sampler's `cfg` and ComfyUI's defaults.
    pub fn new(scale: f64) -> Self {
        FreSca {
            cfg: Cfg::new(scale),
            low: 1.0,
            high: 1.25,
            cutoff: 20,
            work: Work::default(),
            g: Vec::new(),
            spectral: Spectral::default(),
        }
    }

    /// The scale of the low frequencies (inside the box).
    pub fn scale_low(mut self, s: f64) -> Self {
        self.low = s;
        self
    }

    /// The scale of the high frequencies.
    pub fn scale_high(mut self, s: f64) -> Self {
        self.high = s;
        self
    }

    /// The box's half-width in frequency bins.
    pub fn freq_cutoff(mut self, f: usize) -> Self {
        self.cutoff = f;
        self
    }
}

impl GuidanceRule for FreSca {
    fn check(&self) -> Result<()> {
        for (name, v) in [("scale_low", self.low), ("scale_high", self.high)] {
            if !v.is_finite() {
                return Err(Error::InvalidParameter {
                    name,
                    value: v,
                    reason: "must be finite",
                });
            }
        }
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
        let dim = cond.raw_dim();
        let shape = dim.slice();
        let Some((h, w, images)) = image_axes(shape) else {
            return Err(Error::InvalidParameter {
                name: "dimensions",
                value: shape.len() as f64,
                reason: "FreSca needs two image axes (the last two)",
            });
        };
        self.work.load(ctx, Space::X0, &cond, Some(&uncond))?;
        let Work { c, u, .. } = &self.work;
        let s = self.cfg.scale();
        let g = &mut self.g;
        g.clear();
        g.extend(c.iter().zip(u).map(|(c, u)| c - u));
        self.spectral.prepare(h, w, self.cutoff);
        let Spectral {
            keep_h,
            keep_w,
            tw_h,
            tw_w,
            re,
            im,
            fr,
            fi,
            ..
        } = &mut self.spectral;
        // The frame-axis part of the box (axes 2 .. n-2), per image.
        let lead = &shape[..shape.len() - 2];
        for img in 0..images {
            let slice = &mut g[img * h * w..(img + 1) * h * w];
            // Is this image inside the box along the leading axes from the third on?
            let mut rem = img;
            let mut inside = true;
            for (d, &n) in lead.iter().enumerate().rev() {
                let idx = rem % n;
                rem /= n;
                if d >= 2 {
                    let cc = n / 2;
                    let f = self.cutoff.min(cc);
                    inside &= idx + f >= cc && idx < cc + f;
                }
            }
            if !inside || self.low.to_bits() == self.high.to_bits() {
                slice.iter_mut().for_each(|v| *v *= self.high);
                continue;
            }
            // high g + (low - high) Re(P_h P_w g).
            re.copy_from_slice(slice);
            im.iter_mut().for_each(|v| *v = 0.0);
            project_axis(re, im, h, w, true, (keep_w, tw_w), (fr, fi));
            project_axis(re, im, h, w, false, (keep_h, tw_h), (fr, fi));
            for (v, &p) in slice.iter_mut().zip(re.iter()) {
                *v = self.high * *v + (self.low - self.high) * p;
            }
        }
        for (gv, &uv) in g.iter_mut().zip(u) {
            *gv = uv + s * *gv;
        }
        let g = std::mem::take(&mut self.g);
        let r = self.work.store(ctx, &g, &mut cond);
        self.g = g;
        r
    }
}

/// Frequency-decoupled guidance[^fdg] (diffusers' `FrequencyDecoupledGuidance`): both branches
/// split into Laplacian pyramids over the last two axes (kornia's: a 5 × 5 binomial blur with
/// reflected borders, halving by bilinear resampling), CFG with its own scale on each level
/// (`scales[0]` the finest), optionally with the part parallel to the conditional level weighted
/// (`parallel_weights`), and the pyramid collapsed again. Equal scales on every level give CFG.
/// Defaults as diffusers': scales `[10, 5]`, parallel weights 1, on the model's output.
///
/// Each image axis must be divisible by `2^(levels - 1)` (diffusers pads other sizes to a power
/// of two and returns the padded size — a bug not reproduced).
///
/// ```
/// use diffusion_samplers::guidance::{FrequencyDecoupled, GuidanceRule};
/// assert!(FrequencyDecoupled::new(vec![10.0, 5.0]).check().is_ok());
/// ```
///
/// [^fdg]: *Guidance in the Frequency Domain Enables High-Fidelity Sampling at Low CFG Scales*,
///     arXiv:2506.19713.
#[derive(Clone, Debug, PartialEq)]
pub struct FrequencyDecoupled {
    scales: Vec<f64>,
    weights: Vec<f64>,
    original: bool,
    rescale: f64,
    work: Work,
    pyramids: Pyramids,
}

impl FrequencyDecoupled {
    /// One scale per pyramid level, the finest first (diffusers' `guidance_scales`).
    pub fn new(scales: Vec<f64>) -> Self {
        let n = scales.len();
        FrequencyDecoupled {
            scales,
            weights: vec![1.0; n],
            original: false,
            rescale: 0.0,
            work: Work::default(),
            pyramids: Pyramids::default(),
        }
    }

    /// The weight of the guidance part parallel to the conditional level, per level.
    pub fn parallel_weights(mut self, w: Vec<f64>) -> Self {
        self.weights = w;
        self
    }

    /// The original formulation.
    pub fn original_formulation(mut self, yes: bool) -> Self {
        self.original = yes;
        self
    }

    /// diffusers' `guidance_rescale` on the collapsed result (data space).
    pub fn with_rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    fn level_off(&self, k: usize) -> bool {
        Cfg::new(self.scales[k]).original_formulation(self.original).off()
    }
}

/// kornia's pyramid blur: `[1, 4, 6, 4, 1] / 16` along both axes with reflected borders (torch's
/// `reflect`, which does not repeat the edge), on an `h × w` image.
fn blur(img: &[f64], h: usize, w: usize, out: &mut [f64], tmp: &mut [f64]) {
    const K: [f64; 5] = [1.0 / 16.0, 4.0 / 16.0, 6.0 / 16.0, 4.0 / 16.0, 1.0 / 16.0];
    let refl = |i: isize, n: usize| -> usize {
        let n = n as isize;
        let mut i = i;
        if n == 1 {
            return 0;
        }
        while i < 0 || i >= n {
            if i < 0 {
                i = -i;
            }
            if i >= n {
                i = 2 * (n - 1) - i;
            }
        }
        i as usize
    };
    for r in 0..h {
        for c in 0..w {
            tmp[r * w + c] = (0..5)
                .map(|k| K[k] * img[r * w + refl(c as isize + k as isize - 2, w)])
                .sum();
        }
    }
    for r in 0..h {
        for c in 0..w {
            out[r * w + c] = (0..5)
                .map(|k| K[k] * tmp[refl(r as isize + k as isize - 2, h) * w + c])
                .sum();
        }
    }
}

/// Blur, then halve by bilinear resampling (align_corners false: the mean of 2 × 2 blocks), into
/// `out` (`h/2 × w/2`); `b`, `t` hold at least `h w` values.
fn pyr_down(img: &[f64], h: usize, w: usize, out: &mut [f64], (b, t): (&mut [f64], &mut [f64])) {
    let (b, t) = (&mut b[..h * w], &mut t[..h * w]);
    blur(img, h, w, b, t);
    let (h2, w2) = (h / 2, w / 2);
    for r in 0..h2 {
        for c in 0..w2 {
            let at = |i: usize, j: usize| b[(2 * r + i) * w + 2 * c + j];
            out[r * w2 + c] = 0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1));
        }
    }
}

/// Double by bilinear resampling (align_corners false), then blur, adding `sign` times the
/// result to `out` (`2h × 2w`); `up`, `b`, `t` hold at least `4 h w` values.
fn pyr_up_add(img: &[f64], h: usize, w: usize, out: &mut [f64], sign: f64, (up, b, t): Bufs<'_>) {
    let (h2, w2) = (2 * h, 2 * w);
    let n = h2 * w2;
    let (up, b, t) = (&mut up[..n], &mut b[..n], &mut t[..n]);
    // Source coordinate (i + 0.5) / 2 - 0.5, clamped at 0: weights 0.75 / 0.25.
    let src = |i: usize, n: usize| -> (usize, usize, f64) {
        let s = ((i as f64 + 0.5) / 2.0 - 0.5).max(0.0);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(n - 1);
        (i0.min(n - 1), i1, s - i0 as f64)
    };
    for r in 0..h2 {
        let (r0, r1, fr) = src(r, h);
        for c in 0..w2 {
            let (c0, c1, fc) = src(c, w);
            let top = (1.0 - fc) * img[r0 * w + c0] + fc * img[r0 * w + c1];
            let bot = (1.0 - fc) * img[r1 * w + c0] + fc * img[r1 * w + c1];
            up[r * w2 + c] = (1.0 - fr) * top + fr * bot;
        }
    }
    blur(up, h2, w2, b, t);
    for (o, v) in out.iter_mut().zip(b.iter()) {
        *o += sign * v;
    }
}

type Bufs<'a> = (&'a mut [f64], &'a mut [f64], &'a mut [f64]);

/// The Laplacian pyramids of all images of an array, one flat buffer per level (finest first,
/// the last the low-pass residual; image `i` of level `k` at `i hk wk`), with the scratch the
/// resampling needs — sized once per image size.
#[derive(Clone, Debug, Default, PartialEq)]
struct Pyramids {
    key: Option<(usize, usize, usize, usize)>,
    c: Vec<Vec<f64>>,
    u: Vec<Vec<f64>>,
    up: Vec<f64>,
    b: Vec<f64>,
    t: Vec<f64>,
}

impl Pyramids {
    fn prepare(&mut self, h: usize, w: usize, levels: usize, images: usize) {
        if self.key == Some((h, w, levels, images)) {
            return;
        }
        self.key = Some((h, w, levels, images));
        for p in [&mut self.c, &mut self.u] {
            p.resize_with(levels, Vec::new);
            for (k, lv) in p.iter_mut().enumerate() {
                lv.resize(images * (h >> k) * (w >> k), 0.0);
            }
        }
        for v in [&mut self.up, &mut self.b, &mut self.t] {
            v.resize(h * w, 0.0);
        }
    }

    /// Decomposes `v` (all images) into the pyramid `which` (false: `c`, true: `u`).
    fn decompose(&mut self, v: &[f64], which: bool, h: usize, w: usize) {
        let Pyramids { c, u, up, b, t, .. } = self;
        let p = if which { u } else { c };
        let levels = p.len();
        let images = v.len() / (h * w).max(1);
        p[0].copy_from_slice(v);
        // Gaussian levels downward, then each band minus the next level up-sampled.
        for k in 1..levels {
            let (fine, coarse) = p.split_at_mut(k);
            let (fh, fw) = (h >> (k - 1), w >> (k - 1));
            for i in 0..images {
                let src = &fine[k - 1][i * fh * fw..(i + 1) * fh * fw];
                let dst = &mut coarse[0][i * (fh / 2) * (fw / 2)..(i + 1) * (fh / 2) * (fw / 2)];
                pyr_down(src, fh, fw, dst, (b, t));
            }
        }
        for k in 0..levels.saturating_sub(1) {
            let (fine, coarse) = p.split_at_mut(k + 1);
            let (fh, fw) = (h >> k, w >> k);
            let (ch, cw) = (fh / 2, fw / 2);
            for i in 0..images {
                let src = &coarse[0][i * ch * cw..(i + 1) * ch * cw];
                let dst = &mut fine[k][i * fh * fw..(i + 1) * fh * fw];
                pyr_up_add(src, ch, cw, dst, -1.0, (up, b, t));
            }
        }
    }

    /// Collapses the pyramid `c` in place (level 0 ends up holding the images).
    fn collapse(&mut self, h: usize, w: usize) {
        let Pyramids { c, up, b, t, .. } = self;
        let levels = c.len();
        let images = c[0].len() / (h * w).max(1);
        for k in (0..levels.saturating_sub(1)).rev() {
            let (fine, coarse) = c.split_at_mut(k + 1);
            let (fh, fw) = (h >> k, w >> k);
            let (ch, cw) = (fh / 2, fw / 2);
            for i in 0..images {
                let src = &coarse[0][i * ch * cw..(i + 1) * ch * cw];
                let dst = &mut fine[k][i * fh * fw..(i + 1) * fh * fw];
                pyr_up_add(src, ch, cw, dst, 1.0, (up, b, t));
            }
        }
    }
}

impl GuidanceRule for FrequencyDecoupled {
    fn check(&self) -> Result<()> {
        if self.scales.is_empty() {
            return Err(Error::InvalidParameter {
                name: "scales",
                value: 0.0,
                reason: "at least one level is needed",
            });
        }
        if self.weights.len() != self.scales.len() {
            return Err(Error::InvalidParameter {
                name: "parallel_weights",
                value: self.weights.len() as f64,
                reason: "needs one weight per level",
            });
        }
        for &v in self.scales.iter().chain(&self.weights) {
            if !v.is_finite() {
                return Err(Error::InvalidParameter {
                    name: "scales",
                    value: v,
                    reason: "scales and weights must be finite",
                });
            }
        }
        Cfg::check_values(1.0, self.rescale)
    }

    fn needs_uncond(&self, _call: &Call) -> bool {
        (0..self.scales.len()).any(|k| !self.level_off(k))
    }

    fn combine<F: Float, D: Dimension>(
        &mut self,
        ctx: &Context<'_, F, D>,
        mut cond: ArrayViewMut<'_, F, D>,
        uncond: Option<ArrayViewMut<'_, F, D>>,
    ) -> Result<()> {
        self.check()?;
        let Some(uncond) = uncond.filter(|_| self.needs_uncond(&ctx.call)) else {
            return Ok(());
        };
        let dim = cond.raw_dim();
        let shape = dim.slice();
        let levels = self.scales.len();
        let div = 1usize << (levels - 1);
        let (h, w, images) = match image_axes(shape) {
            Some((h, w, n)) if h % div == 0 && w % div == 0 && h > 0 && w > 0 => (h, w, n),
            _ => {
                return Err(Error::InvalidParameter {
                    name: "scales",
                    value: levels as f64,
                    reason: "frequency-decoupled guidance needs two image axes divisible by 2^(levels - 1)",
                });
            }
        };
        self.work.load(ctx, Space::Output, &cond, Some(&uncond))?;
        let batch = self.work.batch;
        let per_batch = images / batch.max(1);
        let per_elem = |k: usize| per_batch * (h >> k) * (w >> k);
        self.pyramids.prepare(h, w, levels, images);
        self.pyramids.decompose(&self.work.c, false, h, w);
        self.pyramids.decompose(&self.work.u, true, h, w);
        // Per level and batch element (the projection runs over all of its images), the
        // guided level replaces the conditional one.
        for k in 0..levels {
            let (g, wk) = (self.scales[k], self.weights[k]);
            if self.level_off(k) {
                continue;
            }
            let n = per_elem(k);
            let (pc, pu) = (&mut self.pyramids.c[k], &self.pyramids.u[k]);
            for (c, u) in pc.chunks_mut(n.max(1)).zip(pu.chunks(n.max(1))) {
                // The parallel part's coefficient over all images of this element.
                let proj = if (wk - 1.0).abs() <= 1e-9 {
                    None
                } else {
                    let sd: f64 = c.iter().zip(u).map(|(c, u)| (c - u) * c).sum();
                    Some(sd / dot(c, c).max(1e-24))
                };
                for (c, &u) in c.iter_mut().zip(u) {
                    let shift = *c - u;
                    let shift = match proj {
                        Some(p) => wk * p * *c + (shift - p * *c),
                        None => shift,
                    };
                    *c = (if self.original { *c } else { u }) + g * shift;
                }
            }
        }
        self.pyramids.collapse(h, w);
        let result = &mut self.pyramids.c[0];
        if self.rescale > 0.0 {
            rescale_slices(result, &self.work.c, batch, self.rescale);
        }
        self.work.store(ctx, result, &mut cond)
    }
}
