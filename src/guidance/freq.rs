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
    keep: &[bool],
    tw: &[(f64, f64)],
) {
    let n = if rows { w } else { h };
    let lines = if rows { h } else { w };
    let at = |line: usize, k: usize| if rows { line * w + k } else { k * w + line };
    let mut fr = vec![0.0; n];
    let mut fi = vec![0.0; n];
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

/// `(cos, sin)` of `2 pi k / n`.
fn twiddles(n: usize) -> Vec<(f64, f64)> {
    (0..n)
        .map(|k| {
            let a = 2.0 * PI * k as f64 / n as f64;
            (a.cos(), a.sin())
        })
        .collect()
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
        let shape = cond.shape().to_vec();
        let Some((h, w, images)) = image_axes(&shape) else {
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
        // The box per axis, in unshifted DFT indices: shifted index (k + n/2) mod n in
        // [n/2 - f, n/2 + f).
        let boxed = |n: usize, k: usize| {
            let cc = n / 2;
            let f = self.cutoff.min(cc);
            let j = (k + cc) % n;
            j + f >= cc && j < cc + f
        };
        let (keep_h, keep_w): (Vec<bool>, Vec<bool>) = (
            (0..h).map(|k| boxed(h, k)).collect(),
            (0..w).map(|k| boxed(w, k)).collect(),
        );
        let (tw_h, tw_w) = (twiddles(h), twiddles(w));
        // The frame-axis part of the box (axes 2 .. n-2), per image.
        let lead = &shape[..shape.len() - 2];
        let mut re = vec![0.0; h * w];
        let mut im = vec![0.0; h * w];
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
            project_axis(&mut re, &mut im, h, w, true, &keep_w, &tw_w);
            project_axis(&mut re, &mut im, h, w, false, &keep_h, &tw_h);
            for (v, &p) in slice.iter_mut().zip(&re) {
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

/// Blur, then halve by bilinear resampling (align_corners false: the mean of 2 × 2 blocks).
fn pyr_down(img: &[f64], h: usize, w: usize) -> Vec<f64> {
    let (mut b, mut t) = (vec![0.0; h * w], vec![0.0; h * w]);
    blur(img, h, w, &mut b, &mut t);
    let (h2, w2) = (h / 2, w / 2);
    let mut out = vec![0.0; h2 * w2];
    for r in 0..h2 {
        for c in 0..w2 {
            let at = |i: usize, j: usize| b[(2 * r + i) * w + 2 * c + j];
            out[r * w2 + c] = 0.25 * (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1));
        }
    }
    out
}

/// Double by bilinear resampling (align_corners false), then blur.
fn pyr_up(img: &[f64], h: usize, w: usize) -> Vec<f64> {
    let (h2, w2) = (2 * h, 2 * w);
    // Source coordinate (i + 0.5) / 2 - 0.5, clamped at 0: weights 0.75 / 0.25.
    let src = |i: usize, n: usize| -> (usize, usize, f64) {
        let s = ((i as f64 + 0.5) / 2.0 - 0.5).max(0.0);
        let i0 = s.floor() as usize;
        let i1 = (i0 + 1).min(n - 1);
        (i0.min(n - 1), i1, s - i0 as f64)
    };
    let mut up = vec![0.0; h2 * w2];
    for r in 0..h2 {
        let (r0, r1, fr) = src(r, h);
        for c in 0..w2 {
            let (c0, c1, fc) = src(c, w);
            let top = (1.0 - fc) * img[r0 * w + c0] + fc * img[r0 * w + c1];
            let bot = (1.0 - fc) * img[r1 * w + c0] + fc * img[r1 * w + c1];
            up[r * w2 + c] = (1.0 - fr) * top + fr * bot;
        }
    }
    let (mut out, mut t) = (vec![0.0; h2 * w2], vec![0.0; h2 * w2]);
    blur(&up, h2, w2, &mut out, &mut t);
    out
}

/// The Laplacian pyramid of an image: band-pass levels, finest first, the last the low-pass
/// residual.
fn laplacian(img: &[f64], h: usize, w: usize, levels: usize) -> Vec<(Vec<f64>, usize, usize)> {
    let mut gauss = vec![(img.to_vec(), h, w)];
    for _ in 1..levels {
        let (g, gh, gw) = gauss.last().unwrap();
        let d = pyr_down(g, *gh, *gw);
        gauss.push((d, gh / 2, gw / 2));
    }
    let mut out = Vec::with_capacity(levels);
    for k in 0..levels - 1 {
        let (g, gh, gw) = &gauss[k];
        let (n, nh, nw) = &gauss[k + 1];
        let up = pyr_up(n, *nh, *nw);
        out.push((g.iter().zip(&up).map(|(a, b)| a - b).collect(), *gh, *gw));
    }
    out.push(gauss.pop().unwrap());
    out
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
        let shape = cond.shape().to_vec();
        let levels = self.scales.len();
        let div = 1usize << (levels - 1);
        let (h, w, images) = match image_axes(&shape) {
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
        let mut result = vec![0.0; self.work.c.len()];
        // Per batch element: the projections run over all of its images together.
        for b in 0..batch {
            let range = b * per_batch..(b + 1) * per_batch;
            let pyr = |v: &[f64]| -> Vec<Vec<(Vec<f64>, usize, usize)>> {
                range
                    .clone()
                    .map(|i| laplacian(&v[i * h * w..(i + 1) * h * w], h, w, levels))
                    .collect()
            };
            let (pc, pu) = (pyr(&self.work.c), pyr(&self.work.u));
            let mut guided: Vec<Vec<Vec<f64>>> = vec![Vec::with_capacity(levels); per_batch];
            for k in 0..levels {
                let (g, wk) = (self.scales[k], self.weights[k]);
                let off = self.level_off(k);
                // The parallel part's coefficient over all images of this element.
                let proj = if off || (wk - 1.0).abs() <= 1e-9 {
                    None
                } else {
                    let (mut sd, mut cc) = (0.0, 0.0);
                    for i in 0..per_batch {
                        let (c, u) = (&pc[i][k].0, &pu[i][k].0);
                        sd += c.iter().zip(u).map(|(c, u)| (c - u) * c).sum::<f64>();
                        cc += dot(c, c);
                    }
                    Some(sd / cc.max(1e-24))
                };
                for i in 0..per_batch {
                    let (c, u) = (&pc[i][k].0, &pu[i][k].0);
                    let lvl = if off {
                        c.clone()
                    } else {
                        c.iter()
                            .zip(u)
                            .map(|(&c, &u)| {
                                let shift = c - u;
                                let shift = match proj {
                                    Some(p) => wk * p * c + (shift - p * c),
                                    None => shift,
                                };
                                (if self.original { c } else { u }) + g * shift
                            })
                            .collect()
                    };
                    guided[i].push(lvl);
                }
            }
            for (i, img) in range.clone().enumerate() {
                // Collapse: up(coarser) + level, from the coarsest.
                let mut acc = guided[i][levels - 1].clone();
                for k in (0..levels - 1).rev() {
                    let (_, lh, lw) = pc[i][k + 1];
                    let up = pyr_up(&acc, lh, lw);
                    acc = up.iter().zip(&guided[i][k]).map(|(a, b)| a + b).collect();
                }
                result[img * h * w..(img + 1) * h * w].copy_from_slice(&acc);
            }
        }
        if self.rescale > 0.0 {
            rescale_slices(&mut result, &self.work.c, batch, self.rescale);
        }
        self.work.store(ctx, &result, &mut cond)
    }
}
