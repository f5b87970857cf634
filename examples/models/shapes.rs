//! Procedurally generated grayscale shapes (discs, squares, bars, crosses) and statistics to
//! compare generated images with real ones.

use ndarray::{Array4, ArrayView2, ArrayView4, s};
use rand::Rng;

/// `n` images `[n, 1, side, side]` with values -1 (background) and 1 (shape), one shape each
/// at a random position and size.
pub fn shapes<R: Rng + ?Sized>(n: usize, side: usize, rng: &mut R) -> Array4<f32> {
    let mut out = Array4::from_elem((n, 1, side, side), -1.0f32);
    let sf = side as f64;
    for i in 0..n {
        let kind = rng.random_range(0..4);
        let r = rng.random_range(0.18..0.32) * sf; // half-size
        let cx = rng.random_range(r + 0.5..sf - r - 0.5);
        let cy = rng.random_range(r + 0.5..sf - r - 0.5);
        let thick = (r * 0.45).max(1.2);
        let vertical = rng.random_bool(0.5);
        let mut img = out.slice_mut(s![i, 0, .., ..]);
        for y in 0..side {
            for x in 0..side {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                let inside = match kind {
                    0 => dx * dx + dy * dy <= r * r,
                    1 => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
                    2 => {
                        let (a, b) = if vertical { (dx, dy) } else { (dy, dx) };
                        a.abs() <= thick * 0.6 && b.abs() <= r * 1.1
                    }
                    _ => {
                        (dx.abs() <= thick * 0.5 && dy.abs() <= r)
                            || (dy.abs() <= thick * 0.5 && dx.abs() <= r)
                    }
                };
                if inside {
                    img[[y, x]] = 1.0;
                }
            }
        }
    }
    out
}

/// Sizes of the 4-connected components of the pixels above 0.
pub fn components(img: ArrayView2<'_, f32>) -> Vec<usize> {
    let (h, w) = img.dim();
    let mut seen = vec![false; h * w];
    let mut sizes = Vec::new();
    for start in 0..h * w {
        if seen[start] || img[[start / w, start % w]] <= 0.0 {
            continue;
        }
        let mut stack = vec![start];
        seen[start] = true;
        let mut size = 0;
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = (p / w, p % w);
            let mut push = |yy: usize, xx: usize| {
                let q = yy * w + xx;
                if !seen[q] && img[[yy, xx]] > 0.0 {
                    seen[q] = true;
                    stack.push(q);
                }
            };
            if y > 0 {
                push(y - 1, x);
            }
            if y + 1 < h {
                push(y + 1, x);
            }
            if x > 0 {
                push(y, x - 1);
            }
            if x + 1 < w {
                push(y, x + 1);
            }
        }
        sizes.push(size);
    }
    sizes
}

/// Statistics of a set of images: mean fraction of foreground pixels, distribution of the
/// number of connected components (0, 1, 2, 3+), and a histogram of component sizes.
#[derive(Clone, Debug)]
pub struct Stats {
    pub foreground: f64,
    pub n_components: [f64; 4],
    pub sizes: Vec<(usize, f64)>,
}

pub const SIZE_BINS: [usize; 6] = [4, 16, 32, 64, 128, usize::MAX];

pub fn stats(images: ArrayView4<'_, f32>) -> Stats {
    let n = images.dim().0;
    let mut fg = 0.0;
    let mut nc = [0.0; 4];
    let mut bins = vec![0usize; SIZE_BINS.len()];
    let mut total = 0usize;
    for i in 0..n {
        let img = images.slice(s![i, 0, .., ..]);
        fg += img.iter().filter(|&&v| v > 0.0).count() as f64 / img.len() as f64;
        let comps = components(img);
        nc[comps.len().min(3)] += 1.0;
        for c in comps {
            let b = SIZE_BINS
                .iter()
                .position(|&hi| c <= hi)
                .unwrap_or(SIZE_BINS.len() - 1);
            bins[b] += 1;
            total += 1;
        }
    }
    Stats {
        foreground: fg / n as f64,
        n_components: nc.map(|v| v / n as f64),
        sizes: SIZE_BINS
            .iter()
            .zip(bins)
            .map(|(&hi, c)| (hi, c as f64 / total.max(1) as f64))
            .collect(),
    }
}
