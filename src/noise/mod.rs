//! Where stochastic samplers get their Gaussian noise.
//!
//! Any seeded `rand` generator is a [`NoiseSource`] (`sampler.sample(&mut model, x, &grid, &mut
//! rng)`); [`SeededNoise`] is a fast keyed source; [`ReplayNoise`] feeds back stored noise, e.g.
//! the exact draws a Python reference used; [`BrownianNoise`] gives increments of a Brownian
//! motion over the noise level, so that refining a grid refines the same noise; [`PerElement`]
//! gives each batch element a source of its own (batch-invariant seeds).
//!
//! The Python tools' own noise, in pure Rust: [`TorchGenerator`] is torch's CPU generator
//! (`randn` / `rand` / `randint`, bit for bit), [`TorchBrownianTree`] torchsde's Brownian tree as
//! k-diffusion's and ComfyUI's `BrownianTreeNoiseSampler` builds it, and the seed conventions
//! of diffusers ([`TorchGenerator::per_element`]), ComfyUI ([`comfyui_prepare_noise`],
//! [`ComfyUiNoise`] from [`Preset::comfyui_noise`](crate::Preset::comfyui_noise)) and
//! k-diffusion ([`TorchBrownianTree::from_generator`]) are constructors over them;
//! [`CudaPhilox`] is AUTOMATIC1111's imitation of CUDA's `randn`. See the guide's "Reproducing a
//! seeded Python run" for what is identical and what is not.
//!
//! A [`Run`](crate::Run) owns its source: pass it by value, or `&mut source` (every source here,
//! and every `rand` generator, is a source through a mutable reference too; [`ByRef`] does the
//! same for a generic `N`).

mod batch;
mod brownian;
mod conventions;
mod philox;
mod torch;
mod torchsde;
mod ziggurat;

pub use batch::PerElement;
pub use brownian::BrownianNoise;
pub use conventions::{ComfyUiNoise, comfyui_prepare_noise};
pub use philox::CudaPhilox;
pub use torch::{TorchCpuKernel, TorchGenerator};
pub use torchsde::TorchBrownianTree;

use ndarray::{Array, ArrayViewMut, Dimension, ShapeBuilder};
use rand::RngCore;

use crate::float::{Float, FloatSliceMut};
use crate::level::NoiseLevel;
use ziggurat::{Xoshiro256pp, fill_f32, fill_f64, splitmix64};

/// The crate's fast generator (two xoshiro256++ streams), used by [`SeededNoise`].
type FastRng = [Xoshiro256pp; 2];

/// A source of standard normal noise for stochastic samplers.
///
/// Samplers call [`fill`](Self::fill) once per step that needs noise, with the step index, and
/// deterministic samplers never call it.
pub trait NoiseSource<F> {
    /// Fill `out` with independent N(0,1) draws for sampler step `step` (0 = first step;
    /// [`INITIAL_STEP`] for a run's starting sample).
    ///
    /// Elements are filled in the array's logical (row-major) order, so the same draws land in
    /// the same places whatever the memory layout.
    fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, F, D>);

    /// Fill `out` with the noise step `step` adds over the interval `from -> to` of noise
    /// levels. Samplers call this; the default ignores the interval and calls
    /// [`fill`](Self::fill). A source whose draws depend on the interval — a Brownian motion
    /// over sigma, whose increments do not depend on how an interval is cut — overrides it.
    fn fill_interval<D: Dimension>(
        &mut self,
        step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        out: ArrayViewMut<'_, F, D>,
    ) {
        let _ = (from, to);
        self.fill(step, out);
    }
}

/// The checks of a seeded motion's construction: at least one seed, a finite non-negative range
/// (named as the caller's parameters).
pub(crate) fn check_motion(seeds: usize, ends: [(&'static str, f64); 2]) -> crate::Result<()> {
    if seeds == 0 {
        return Err(crate::Error::InvalidParameter {
            name: "seeds",
            value: 0.0,
            reason: "at least one seed is needed",
        });
    }
    for (name, v) in ends {
        if !(v.is_finite() && v >= 0.0) {
            return Err(crate::Error::InvalidParameter {
                name,
                value: v,
                reason: "must be finite and non-negative",
            });
        }
    }
    Ok(())
}

/// The step key of a run's starting sample ([`Grid::initial_sample`](crate::Grid::initial_sample)):
/// keyed sources such as [`SeededNoise`] then draw it independently of step 0's noise.
pub const INITIAL_STEP: usize = usize::MAX;

/// The key of draw `k` of sampler step `step`: `step` itself for the first (so one-draw samplers
/// see step keys), a key apart from every step's, [`INITIAL_STEP`]'s and the editing wrappers'
/// for the later draws of multi-stage stochastic samplers (SEEDS, DPM++ SDE), so that keyed
/// sources give them independent noise.
pub fn draw_key(step: usize, k: usize) -> usize {
    if k == 0 {
        step
    } else {
        (INITIAL_STEP / 2).wrapping_sub(step.wrapping_mul(16).wrapping_add(k))
    }
}

/// The step key of the noise an editing wrapper draws after step `step` (inpainting's renoised
/// known region), distinct from every sampler step's key and from [`INITIAL_STEP`].
pub(crate) fn aux_step(step: usize) -> usize {
    INITIAL_STEP - 1 - step
}

/// A noise source through a mutable reference: lends `N` to a [`Run`](crate::Run) (which owns
/// its source) from generic code. Concrete sources need no wrapper: `&mut rng`, `&mut
/// SeededNoise`, `&mut ReplayNoise` are sources themselves.
#[derive(Debug)]
pub struct ByRef<'a, N: ?Sized>(pub &'a mut N);

impl<F, N: NoiseSource<F> + ?Sized> NoiseSource<F> for ByRef<'_, N> {
    fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, F, D>) {
        self.0.fill(step, out);
    }

    fn fill_interval<D: Dimension>(
        &mut self,
        step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        out: ArrayViewMut<'_, F, D>,
    ) {
        self.0.fill_interval(step, from, to, out);
    }
}

/// `&mut S` is a source wherever `S` is (for the crate's own sources; `rand` generators get
/// this from `rand`'s own `impl RngCore for &mut R`).
macro_rules! by_mut_ref {
    ($($ty:ty),*) => {$(
        impl<F: Float> NoiseSource<F> for &mut $ty {
            fn fill<D: Dimension>(&mut self, step: usize, out: ArrayViewMut<'_, F, D>) {
                (**self).fill(step, out);
            }

            fn fill_interval<D: Dimension>(&mut self, step: usize, from: &NoiseLevel, to: &NoiseLevel, out: ArrayViewMut<'_, F, D>) {
                (**self).fill_interval(step, from, to, out);
            }
        }
    )*};
}

by_mut_ref!(
    SeededNoise,
    ReplayNoise<F>,
    TorchGenerator,
    BrownianNoise,
    TorchBrownianTree,
    ComfyUiNoise,
    CudaPhilox
);

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

/// A new array of independent N(0, 1) draws from `noise` (step key 0). For a run's starting
/// sample use [`Grid::initial_sample`](crate::Grid::initial_sample), which scales it for the
/// grid's first level and keys it apart from the run's own step noise.
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

/// Noise keyed by `(seed, step, block)`: a fast, stateless, reproducible source.
///
/// The array is cut into blocks of [`SeededNoise::BLOCK`] elements (logical order); block `b` of
/// step `k` is drawn from its own xoshiro256++ streams seeded from `(seed, k, b)` with a
/// 1024-layer ziggurat (about 1.4 ns per `f32` and 1.9 ns per `f64` draw on one core). The noise of a step therefore does not
/// depend on earlier draws, on the memory layout, or — with the `rayon` feature, which fills
/// blocks in parallel — on the number of threads: results are bit-identical.
///
/// ```
/// use diffusion_samplers::{NoiseSource, SeededNoise};
/// use ndarray::Array1;
/// let mut a = Array1::<f32>::zeros(10_000);
/// let mut b = Array1::<f32>::zeros(10_000);
/// SeededNoise::new(42).fill(3, a.view_mut());
/// SeededNoise::new(42).fill(3, b.view_mut());
/// assert_eq!(a, b);
/// SeededNoise::new(42).fill(4, b.view_mut());
/// assert_ne!(a, b);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeededNoise {
    seed: u64,
}

impl SeededNoise {
    /// Elements per independently seeded block.
    pub const BLOCK: usize = 16_384;

    /// Noise from `seed`.
    pub fn new(seed: u64) -> Self {
        SeededNoise { seed }
    }

    /// The generators of block `block` of step `step`.
    fn rng(&self, step: usize, block: usize) -> FastRng {
        let mut s = self.seed;
        let a = splitmix64(&mut s);
        let mut t = a ^ (step as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = splitmix64(&mut t);
        let mut u = b ^ (block as u64).wrapping_mul(0x8CB9_2BA7_2F3D_8DD7);
        let k = splitmix64(&mut u);
        [
            Xoshiro256pp::from_seed(k),
            Xoshiro256pp::from_seed(k ^ 0x6A09_E667_F3BC_C909),
        ]
    }

    fn fill_block<F: Float>(&self, step: usize, block: usize, out: &mut [F]) {
        let mut rng = self.rng(step, block);
        match F::slice_mut(out) {
            FloatSliceMut::F32(s) => fill_f32(&mut rng, s),
            FloatSliceMut::F64(s) => fill_f64(&mut rng, s),
        }
    }

    /// Fills a contiguous slice (logical order = memory order).
    fn fill_slice<F: Float>(&self, step: usize, out: &mut [F]) {
        #[cfg(feature = "rayon")]
        if out.len() >= crate::par::PAR_MIN {
            use rayon::prelude::*;
            out.par_chunks_mut(Self::BLOCK)
                .enumerate()
                .for_each(|(b, chunk)| self.fill_block(step, b, chunk));
            return;
        }
        for (b, chunk) in out.chunks_mut(Self::BLOCK).enumerate() {
            self.fill_block(step, b, chunk);
        }
    }
}

impl<F: Float> NoiseSource<F> for SeededNoise {
    fn fill<D: Dimension>(&mut self, step: usize, mut out: ArrayViewMut<'_, F, D>) {
        if let Some(s) = out.as_slice_mut() {
            self.fill_slice(step, s);
            return;
        }
        // Non-standard layout: draw block by block into a scratch block, scatter in logical order.
        #[expect(clippy::useless_vec, reason = "up to 128 KiB: kept off the stack")]
        let mut buf = vec![F::zero(); Self::BLOCK];
        let n = out.len();
        let mut it = out.iter_mut();
        for b in 0..n.div_ceil(Self::BLOCK) {
            let len = Self::BLOCK.min(n - b * Self::BLOCK);
            self.fill_block(step, b, &mut buf[..len]);
            for (dst, &v) in (&mut it).take(len).zip(&buf[..len]) {
                *dst = v;
            }
        }
    }
}

/// Replays stored noise: step `k` receives the `k`-th stored block, in logical order (and the
/// starting sample, key [`INITIAL_STEP`], the block given to
/// [`with_initial`](Self::with_initial)).
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
    initial: Option<Vec<F>>,
}

impl<F: Float> ReplayNoise<F> {
    /// Noise for steps `0, 1, ...`, one flat block (logical order) per step.
    pub fn new(steps: Vec<Vec<F>>) -> Self {
        ReplayNoise { steps, initial: None }
    }

    /// Also replays `block` as the starting sample's draws (key [`INITIAL_STEP`]).
    pub fn with_initial(mut self, block: Vec<F>) -> Self {
        self.initial = Some(block);
        self
    }

    /// Noise for steps `0, 1, ...` from arrays (read in logical order).
    pub fn from_arrays<D: Dimension>(steps: impl IntoIterator<Item = Array<F, D>>) -> Self {
        ReplayNoise {
            steps: steps.into_iter().map(|a| a.iter().copied().collect()).collect(),
            initial: None,
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
        let block = if step == INITIAL_STEP {
            self.initial.as_ref()
        } else {
            self.steps.get(step)
        };
        match block {
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
