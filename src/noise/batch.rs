//! One noise source per batch element.

use ndarray::{ArrayViewMut, Axis, Dimension, Slice};

use super::{NoiseSource, SeededNoise};
use crate::float::Float;
use crate::level::NoiseLevel;

/// One noise source per batch element (index along the first axis): element `b` of every fill
/// comes from `sources[b]` alone, drawing that element's shape.
///
/// An element's noise then depends neither on the batch size nor on the other elements: the
/// image of seed `s` is the same alone or at any position of any batch (with the source given
/// for it). It is also diffusers' convention for a *list* of generators — `randn_tensor(shape,
/// generator=[g0, g1, …])` draws element `b` with `g_b` — so a list of
/// [`TorchGenerator`](super::TorchGenerator)s here reproduces it
/// ([`TorchGenerator::per_element`](super::TorchGenerator::per_element)).
///
/// A fill whose first axis is not as long as the list of sources fills NaN, which a sampler
/// reports as [`Error::NonFinite`](crate::Error::NonFinite) noise at that step (never silently
/// reused or missing noise); a 0-dimensional array is one element.
///
/// ```
/// use diffusion_samplers::{NoiseSource, SeededNoise};
/// use ndarray::{s, Array2};
/// let mut four = SeededNoise::per_element([10, 11, 12, 13]);
/// let mut alone = SeededNoise::per_element([12]);
/// let (mut a, mut b) = (Array2::<f32>::zeros((4, 100)), Array2::<f32>::zeros((1, 100)));
/// four.fill(5, a.view_mut());
/// alone.fill(5, b.view_mut());
/// assert_eq!(a.slice(s![2..3, ..]), b); // seed 12's noise, wherever it sits
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PerElement<N> {
    sources: Vec<N>,
}

impl<N> PerElement<N> {
    /// `sources[b]` draws batch element `b`.
    pub fn new(sources: Vec<N>) -> Self {
        PerElement { sources }
    }

    /// The sources, one per batch element.
    pub fn sources(&self) -> &[N] {
        &self.sources
    }

    /// The sources, mutably (e.g. to inspect a generator's state between steps).
    pub fn sources_mut(&mut self) -> &mut [N] {
        &mut self.sources
    }

    /// Back to the list of sources.
    pub fn into_inner(self) -> Vec<N> {
        self.sources
    }

    /// Runs `f` on each batch element (a view of length 1 along the first axis) with its
    /// source, or fills NaN if the counts differ.
    fn each<F: Float, D: Dimension>(
        &mut self,
        mut out: ArrayViewMut<'_, F, D>,
        mut f: impl FnMut(&mut N, ArrayViewMut<'_, F, D>),
    ) {
        if out.ndim() == 0 {
            match self.sources.as_mut_slice() {
                [one] => f(one, out),
                _ => out.fill(F::nan()),
            }
            return;
        }
        if out.len_of(Axis(0)) != self.sources.len() {
            out.fill(F::nan());
            return;
        }
        for (b, src) in self.sources.iter_mut().enumerate() {
            f(src, out.slice_axis_mut(Axis(0), Slice::from(b..=b)));
        }
    }
}

impl<F: Float, N: NoiseSource<F>> NoiseSource<F> for PerElement<N> {
    fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, F, D>) {
        self.each(out, |n, e| n.fill(step, e));
    }

    fn fill_interval<D: Dimension>(
        &mut self,
        step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        out: ArrayViewMut<'_, F, D>,
    ) {
        self.each(out, |n, e| n.fill_interval(step, from, to, e));
    }
}

impl<F: Float, N: NoiseSource<F>> NoiseSource<F> for &mut PerElement<N> {
    fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, F, D>) {
        (**self).fill(step, out);
    }

    fn fill_interval<D: Dimension>(
        &mut self,
        step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        out: ArrayViewMut<'_, F, D>,
    ) {
        (**self).fill_interval(step, from, to, out);
    }
}

impl SeededNoise {
    /// Batch-invariant noise: batch element `b` drawn by `SeededNoise::new(seeds[b])`, so an
    /// element's noise depends on its seed alone — not on the batch size or its position.
    pub fn per_element(seeds: impl IntoIterator<Item = u64>) -> PerElement<SeededNoise> {
        PerElement::new(seeds.into_iter().map(SeededNoise::new).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array0, Array3, s};

    #[test]
    fn wrong_batch_size_is_nan_and_scalars_are_one_element() {
        let mut n = SeededNoise::per_element([1, 2]);
        let mut a = Array3::<f64>::zeros((3, 2, 2));
        n.fill(0, a.view_mut());
        assert!(a.iter().all(|v| v.is_nan()));
        let mut z = Array0::<f64>::zeros(());
        n.fill(0, z.view_mut());
        assert!(z[()].is_nan());
        let mut one = SeededNoise::per_element([2]);
        one.fill(0, z.view_mut());
        assert!(z[()].is_finite());
        let mut b = Array3::<f64>::zeros((2, 2, 2));
        n.fill(0, b.view_mut());
        let mut c = Array3::<f64>::zeros((1, 2, 2));
        SeededNoise::per_element([2]).fill(0, c.view_mut());
        assert_eq!(b.slice(s![1..2, .., ..]), c);
    }
}
