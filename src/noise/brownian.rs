//! Brownian noise over the noise level: increments that do not depend on how an interval is cut.

use ndarray::{ArrayViewMut, Dimension};

use super::ziggurat::{normal_from_key, splitmix64};
use super::{NoiseSource, SeededNoise};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::{Grid, ScheduleFamily};
use crate::level::NoiseLevel;

/// A Brownian motion `W` over the sigma-space sigma of the noise levels (k-diffusion's sigma
/// `sigma / alpha` for VP and VE grids, the flow sigma for flow grids: the variable
/// k-diffusion's and ComfyUI's `BrownianTreeNoiseSampler` build their tree over), one
/// independent motion per element, deterministic from a seed. A sampler's request for the
/// noise of an interval `from -> to` gets the normalised increment
///
/// ```text
/// z = (W(t_to) - W(t_from)) / sqrt(|t_to - t_from|)
/// ```
///
/// so the noise of a step is the sum of the noises of its parts: sampling with 20 steps and
/// with 40 gives samples that converge to the same one (the SDE's strong solution) instead of
/// two independent samples. This is the property ComfyUI's `dpmpp_sde`, `dpmpp_2m_sde` and
/// `dpmpp_3m_sde` get from their Brownian tree; it is not the same tree (torchsde's draws
/// differ), so the values differ from ComfyUI's.
///
/// `W` is sampled exactly (Brownian bridges, a counter-based generator keyed by the seed, the
/// element and the node) at `2^depth + 1` dyadic points of `[t_min, t_max]` and linear in
/// between (depth 20 by default: the increment's variance is exact to about `2^-20` of the
/// range relative to the interval), and clamped outside the range. Each batch element (index
/// along the first axis) has its own seed — [`per_element`](Self::per_element), or
/// `seed + b` from [`new`](Self::new) — so an image does not change with the batch it is in.
/// Noise a sampler draws without an interval (the starting sample) comes from
/// [`SeededNoise`] with the first seed. A zero-length interval gives zeros.
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::noise::BrownianNoise;
/// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let (coarse, fine) = (schedule.grid(10, Spacing::KARRAS)?, schedule.grid(20, Spacing::KARRAS)?);
/// let mut noise = BrownianNoise::new(7, &coarse)?;
/// let mut model = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
/// let sde = DpmSolver::new().sde(true);
/// let x: ndarray::Array2<f64> = coarse.initial_sample((256, 1), &mut SeededNoise::new(0))?;
/// let a = sde.sample(&mut model, x.clone(), &coarse, &mut noise)?;
/// let b = sde.sample(&mut model, x, &fine, &mut noise)?; // same motion, finer steps
/// let diff = (&a - &b).mapv(|v| v * v).mean().unwrap().sqrt();
/// assert!(diff < 0.3, "{diff}"); // independent noise would give about 1.4
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BrownianNoise {
    seeds: Vec<u64>,
    lo: f64,
    hi: f64,
    kappa: f64,
    depth: u32,
    /// `W` at the last few times asked for, for every element (consecutive intervals share an
    /// end): `(t, elements per batch element, values)`.
    cache: [Option<(f64, usize, Vec<f64>)>; 3],
    next_slot: usize,
}

impl PartialEq for BrownianNoise {
    fn eq(&self, other: &Self) -> bool {
        (&self.seeds, self.lo, self.hi, self.kappa, self.depth)
            == (&other.seeds, other.lo, other.hi, other.kappa, other.depth)
    }
}

impl BrownianNoise {
    /// Depth of the dyadic sampling of `W` by default.
    pub const DEPTH: u32 = 20;

    /// A motion over the range of `grid` (its first level to its last level with noise, in
    /// the grid family's sigma-space sigma), batch element `b` seeded with `seed + b`.
    ///
    /// # Errors
    /// As [`with_range`](Self::with_range).
    pub fn new(seed: u64, grid: &Grid) -> Result<Self> {
        Self::per_element(vec![seed], grid)
    }

    /// As [`new`](Self::new), batch element `b` seeded with `seeds[b]` (elements beyond the
    /// list with `seeds[0] + b`).
    ///
    /// # Errors
    /// As [`with_range`](Self::with_range); [`Error::InvalidParameter`] for an empty list.
    pub fn per_element(seeds: Vec<u64>, grid: &Grid) -> Result<Self> {
        let family = grid.family();
        let kappa = family.kappa();
        let tau = |l: &NoiseLevel| l.sigma / (l.alpha + kappa * l.sigma);
        let (lo, hi) = (tau(&grid.last_noisy()), tau(&grid.levels()[0]));
        let hi = if hi.is_finite() { hi } else { lo.max(1.0) * 1e4 };
        Self::with_range(seeds, lo.min(hi), hi.max(lo), family)
    }

    /// A motion over `[t_min, t_max]` of the sigma-space sigma of `family`'s levels.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for an empty seed list, or a range that is not finite,
    /// non-negative and of positive length.
    pub fn with_range(seeds: Vec<u64>, t_min: f64, t_max: f64, family: ScheduleFamily) -> Result<Self> {
        super::check_motion(seeds.len(), [("t_min", t_min), ("t_max", t_max)])?;
        if t_max <= t_min {
            return Err(Error::InvalidParameter {
                name: "t_max",
                value: t_max,
                reason: "must exceed t_min",
            });
        }
        Ok(BrownianNoise {
            seeds,
            lo: t_min,
            hi: t_max,
            kappa: family.kappa(),
            depth: Self::DEPTH,
            cache: [None, None, None],
            next_slot: 0,
        })
    }

    /// Sets the depth of the dyadic sampling (1 to 52).
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] outside that range.
    pub fn with_depth(mut self, depth: u32) -> Result<Self> {
        if !(1..=52).contains(&depth) {
            return Err(Error::InvalidParameter {
                name: "depth",
                value: f64::from(depth),
                reason: "must be 1 to 52",
            });
        }
        self.depth = depth;
        Ok(self)
    }

    /// The motion's time of a level: its sigma-space sigma, clamped to the range.
    pub fn time(&self, level: &NoiseLevel) -> f64 {
        let c = level.alpha + self.kappa * level.sigma;
        let t = if c == 0.0 { f64::INFINITY } else { level.sigma / c };
        t.clamp(self.lo, self.hi)
    }

    fn seed(&self, b: usize) -> u64 {
        self.seeds
            .get(b)
            .copied()
            .unwrap_or_else(|| self.seeds[0].wrapping_add(b as u64))
    }

    /// The key of element `j` of batch element `b`.
    fn base(&self, b: usize, j: usize) -> u64 {
        let mut k = self.seed(b) ^ 0x5851_F42D_4C95_7F2D;
        splitmix64(&mut k) ^ (j as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `W(t)` of the motion keyed `base` (`t` in the range): Brownian bridges down the dyadic
    /// tree to depth `depth`, linear in the leaf.
    fn w_at(&self, base: u64, t: f64) -> f64 {
        let node_normal = |node: u64| normal_from_key(base ^ node.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut a, mut b) = (self.lo, self.hi);
        let range = b - a;
        let (mut wa, mut wb) = (0.0, range.sqrt() * node_normal(0));
        // The bridge's standard deviation at the midpoint: sqrt(width) / 2, halving the width.
        let mut sd = 0.5 * range.sqrt();
        let mut node = 1u64;
        for _ in 0..self.depth {
            let m = 0.5 * (a + b);
            let wm = 0.5 * (wa + wb) + sd * node_normal(node);
            if t < m {
                (b, wb, node) = (m, wm, 2 * node);
            } else {
                (a, wa, node) = (m, wm, 2 * node + 1);
            }
            sd *= std::f64::consts::FRAC_1_SQRT_2;
        }
        wa + (t - a) / (b - a) * (wb - wa)
    }

    /// `W(t1) - W(t0)` of element `j` of batch element `b`.
    #[cfg(test)]
    fn increment(&self, b: usize, j: usize, t0: f64, t1: f64) -> f64 {
        let base = self.base(b, j);
        self.w_at(base, t1) - self.w_at(base, t0)
    }

    /// The cache slot holding `W(t)` for `len` elements (`per` per batch element), filled if
    /// needed, never `keep`.
    fn slot(&mut self, t: f64, len: usize, per: usize, keep: Option<usize>) -> usize {
        #[allow(clippy::float_cmp, reason = "the same time asked for again")]
        if let Some(i) = self.cache.iter().position(|c| {
            c.as_ref()
                .is_some_and(|(ct, cp, w)| *ct == t && *cp == per && w.len() == len)
        }) {
            return i;
        }
        let mut i = self.next_slot;
        if Some(i) == keep {
            i = (i + 1) % self.cache.len();
        }
        self.next_slot = (i + 1) % self.cache.len();
        let mut w = self.cache[i].take().map(|(_, _, w)| w).unwrap_or_default();
        w.clear();
        #[cfg(feature = "rayon")]
        if len >= crate::par::PAR_MIN {
            use rayon::prelude::*;
            (0..len)
                .into_par_iter()
                .map(|k| self.w_at(self.base(k / per, k % per), t))
                .collect_into_vec(&mut w);
        }
        if w.len() != len {
            w.extend((0..len).map(|k| self.w_at(self.base(k / per, k % per), t)));
        }
        self.cache[i] = Some((t, per, w));
        i
    }
}

impl<F: Float> NoiseSource<F> for BrownianNoise {
    fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, F, D>) {
        SeededNoise::new(self.seeds[0]).fill(step, out);
    }

    fn fill_interval<D: Dimension>(
        &mut self,
        _step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        mut out: ArrayViewMut<'_, F, D>,
    ) {
        let (t0, t1) = (self.time(from), self.time(to));
        let len = (t1 - t0).abs();
        if len == 0.0 {
            out.fill(F::zero());
            return;
        }
        let inv = 1.0 / len.sqrt();
        // Logical order: batch element `b` = index along the first axis.
        let n = out.len();
        let per = if out.ndim() == 0 {
            1
        } else {
            (n / out.shape()[0].max(1)).max(1)
        };
        let i0 = self.slot(t0, n, per, None);
        let i1 = self.slot(t1, n, per, Some(i0));
        let (Some((_, _, w0)), Some((_, _, w1))) = (&self.cache[i0], &self.cache[i1]) else {
            out.fill(F::nan());
            return;
        };
        for ((v, a), b) in out.iter_mut().zip(w0).zip(w1) {
            *v = F::cast((b - a) * inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn motion() -> BrownianNoise {
        BrownianNoise::with_range(vec![3], 0.03, 14.6, ScheduleFamily::Vp).unwrap()
    }

    /// Increments add up exactly over a cut interval, and are standard normal when normalised.
    #[test]
    fn increments_add_up_and_are_standard_normal() {
        let w = motion();
        for j in 0..50 {
            let (a, b, c) = (12.0, 3.3, 0.04);
            let whole = w.increment(0, j, a, c);
            let parts = w.increment(0, j, a, b) + w.increment(0, j, b, c);
            assert!((whole - parts).abs() < 1e-12, "{whole} vs {parts}");
        }
        let n = 20_000;
        let (t0, t1) = (5.0, 4.2);
        let z: Vec<f64> = (0..n)
            .map(|j| w.increment(0, j, t0, t1) / (t0 - t1).sqrt())
            .collect();
        let mean = z.iter().sum::<f64>() / n as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        // Sampling errors: 0.007 (mean), 0.01 (variance); 4 standard errors.
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.04, "{mean} {var}");
        // Disjoint increments are uncorrelated.
        let y: Vec<f64> = (0..n)
            .map(|j| w.increment(0, j, 4.2, 1.0) / 3.2f64.sqrt())
            .collect();
        let cov = z.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>() / n as f64;
        assert!(cov.abs() < 0.03, "{cov}");
    }

    #[test]
    fn batch_elements_have_their_own_seeds() {
        let w = motion();
        let mut a = ndarray::Array2::<f64>::zeros((3, 4));
        let (from, to) = (NoiseLevel::new(0.0, 1.0, 2.0), NoiseLevel::new(0.0, 1.0, 1.0));
        NoiseSource::<f64>::fill_interval(&mut w.clone(), 0, &from, &to, a.view_mut());
        let mut one = ndarray::Array2::<f64>::zeros((1, 4));
        let w1 = BrownianNoise::with_range(vec![4], 0.03, 14.6, ScheduleFamily::Vp).unwrap();
        NoiseSource::<f64>::fill_interval(&mut w1.clone(), 0, &from, &to, one.view_mut());
        // Element 1 of a batch seeded 3 is element 0 of a batch seeded 4.
        assert_eq!(a.row(1), one.row(0));
        assert_ne!(a.row(0), a.row(1));
        assert!(BrownianNoise::with_range(vec![], 0.0, 1.0, ScheduleFamily::Vp).is_err());
        assert!(BrownianNoise::with_range(vec![1], 1.0, 1.0, ScheduleFamily::Vp).is_err());
        assert!(motion().with_depth(0).is_err());
    }
}
