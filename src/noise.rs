//! Where stochastic samplers get their Gaussian noise.
//!
//! Any seeded `rand` generator is a [`NoiseSource`] (`sampler.sample(&mut model, x, &grid, &mut
//! rng)`); [`ReplayNoise`] feeds back stored noise, e.g. the exact draws a Python reference used.

use ndarray::{Array, ArrayViewMut, Dimension, ShapeBuilder};
use rand::RngCore;

use crate::float::Float;

/// A source of standard normal noise for stochastic samplers.
///
/// Samplers call [`fill`](Self::fill) once per step that needs noise, with the step index, and
/// deterministic samplers never call it.
pub trait NoiseSource<F> {
    /// Fill `out` with independent N(0,1) draws for sampler step `step` (0 = first step).
    ///
    /// Elements are filled in the array's logical (row-major) order, so the same draws land in
    /// the same places whatever the memory layout.
    fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, F, D>);
}

/// Every `rand` generator is a noise source: draws come from its stream in order (the step index
/// is ignored), through `rand_distr`'s ziggurat `StandardNormal`.
///
/// ```
/// use diffusion_samplers::NoiseSource;
/// use ndarray::Array1;
/// use rand::{rngs::StdRng, SeedableRng};
/// let mut rng = StdRng::seed_from_u64(7);
/// let mut z = Array1::<f32>::zeros(4);
/// NoiseSource::fill(&mut rng, 0, z.view_mut());
/// assert!(z.iter().all(|v| v.is_finite()) && z.iter().any(|&v| v != 0.0));
/// ```
impl<F: Float, R: RngCore + ?Sized> NoiseSource<F> for R {
    fn fill<D: Dimension>(&mut self, _step: usize, mut out: ArrayViewMut<'_, F, D>) {
        if let Some(s) = out.as_slice_mut() {
            for v in s {
                *v = F::standard_normal(self);
            }
        } else {
            for v in out.iter_mut() {
                *v = F::standard_normal(self);
            }
        }
    }
}

/// A new array of independent N(0, 1) draws from `noise`, e.g. the starting sample of a run
/// (multiply by the first level's `sigma` if that is not 1).
///
/// ```
/// use diffusion_samplers::noise::standard_normal;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let x: Array2<f32> = standard_normal((16, 2), &mut StdRng::seed_from_u64(0));
/// assert_eq!(x.shape(), &[16, 2]);
/// ```
pub fn standard_normal<F, Sh, D, N>(shape: Sh, noise: &mut N) -> Array<F, D>
where
    F: Float,
    Sh: ShapeBuilder<Dim = D>,
    D: Dimension,
    N: NoiseSource<F> + ?Sized,
{
    let mut a = Array::zeros(shape);
    noise.fill(0, a.view_mut());
    a
}

/// Replays stored noise: step `k` receives the `k`-th stored block, in logical order.
///
/// Used to inject exactly the noise a reference implementation drew. A missing step, or a block
/// whose length differs from the array being filled, fills NaN, which the sampler then reports
/// as [`Error::NonFinite`](crate::Error::NonFinite) noise at that step — never silently wrong
/// output.
///
/// ```
/// use diffusion_samplers::{NoiseSource, ReplayNoise};
/// use ndarray::Array1;
/// let mut noise = ReplayNoise::new(vec![vec![0.5f64, -1.0]]);
/// let mut z = Array1::zeros(2);
/// noise.fill(0, z.view_mut());
/// assert_eq!(z.to_vec(), vec![0.5, -1.0]);
/// noise.fill(1, z.view_mut()); // no block for step 1
/// assert!(z.iter().all(|v| v.is_nan()));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayNoise<F> {
    steps: Vec<Vec<F>>,
}

impl<F: Float> ReplayNoise<F> {
    /// Noise for steps `0, 1, ...`, one flat block (logical order) per step.
    pub fn new(steps: Vec<Vec<F>>) -> Self {
        ReplayNoise { steps }
    }

    /// Noise for steps `0, 1, ...` from arrays (read in logical order).
    pub fn from_arrays<D: Dimension>(steps: impl IntoIterator<Item = Array<F, D>>) -> Self {
        ReplayNoise {
            steps: steps.into_iter().map(|a| a.iter().copied().collect()).collect(),
        }
    }

    /// Number of stored steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// `true` if no step is stored.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

impl<F: Float> NoiseSource<F> for ReplayNoise<F> {
    fn fill<D: Dimension>(&mut self, step: usize, mut out: ArrayViewMut<'_, F, D>) {
        match self.steps.get(step) {
            Some(block) if block.len() == out.len() => {
                for (o, &v) in out.iter_mut().zip(block) {
                    *o = v;
                }
            }
            _ => out.fill(F::nan()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn rng_fill_is_layout_independent() {
        let mut a = Array2::<f64>::zeros((3, 4));
        let mut b = Array2::<f64>::zeros((3, 4).f());
        NoiseSource::fill(&mut StdRng::seed_from_u64(1), 0, a.view_mut());
        NoiseSource::fill(&mut StdRng::seed_from_u64(1), 0, b.view_mut());
        assert_eq!(a, b);
    }

    #[test]
    fn replay_wrong_length_is_nan() {
        let mut r = ReplayNoise::new(vec![vec![1.0f32, 2.0, 3.0]]);
        let mut z = Array2::<f32>::zeros((2, 2));
        r.fill(0, z.view_mut());
        assert!(z.iter().all(|v| v.is_nan()));
        assert_eq!(r.len(), 1);
        assert!(!r.is_empty());
    }
}
