//! The seed conventions of the Python tools: how diffusers, ComfyUI and k-diffusion turn one
//! integer seed into a run's noise, as constructors over [`TorchGenerator`] and
//! [`TorchBrownianTree`].

use ndarray::{Array, Axis, Dimension, ShapeBuilder, Slice};

use super::{NoiseSource, PerElement, TorchBrownianTree, TorchGenerator};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::level::NoiseLevel;

impl TorchGenerator {
    /// diffusers' list of generators, `generator=[torch.Generator("cpu").manual_seed(s) for s in
    /// seeds]`: `randn_tensor` draws batch element `b` (shape `(1, …)`) from generator `b`, and a
    /// pipeline's later draws (each step's noise) go the same way, so element `b` of a batch
    /// equals a batch-1 run with `seeds[b]`. Pass the same source to
    /// [`Grid::initial_sample`](crate::Grid::initial_sample) and to the sampler.
    ///
    /// ```
    /// use diffusion_samplers::NoiseSource;
    /// use diffusion_samplers::noise::TorchGenerator;
    /// use ndarray::{s, Array2};
    /// let mut two = TorchGenerator::per_element([5, 6]);
    /// let mut x = Array2::<f32>::zeros((2, 64));
    /// two.fill(0, x.view_mut());
    /// let mut alone = Array2::<f32>::zeros((1, 64));
    /// TorchGenerator::new(6).fill(0, alone.view_mut());
    /// assert_eq!(x.slice(s![1..2, ..]), alone);
    /// ```
    pub fn per_element(seeds: impl IntoIterator<Item = u64>) -> PerElement<TorchGenerator> {
        PerElement::new(seeds.into_iter().map(TorchGenerator::new).collect())
    }
}

impl TorchBrownianTree {
    /// k-diffusion's default noise for its SDE samplers (`sample_dpmpp_sde`,
    /// `sample_dpmpp_2m_sde`, `sample_dpmpp_3m_sde` without a `noise_sampler`):
    /// `BrownianTreeNoiseSampler(x, sigma_min, sigma_max)` with no seed, which draws its seed
    /// as `torch.randint(0, 2**63 - 1, [])` from the global generator — here `generator`, the one
    /// that drew the starting noise after `torch.manual_seed(seed)`. One tree over `shape` (the
    /// whole `x`).
    ///
    /// ```
    /// use diffusion_samplers::noise::{TorchBrownianTree, TorchGenerator};
    /// let mut g = TorchGenerator::new(42);            // torch.manual_seed(42)
    /// let mut x = [0.0f32; 8];
    /// g.randn_f32(&mut x);                            // x = torch.randn(2, 4) (times sigma_max)
    /// let tree = TorchBrownianTree::from_generator(&mut g, 0.0292, 14.6146, &[2, 4])?;
    /// assert_eq!(tree.len(), 8);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_generator(
        generator: &mut TorchGenerator,
        sigma_min: f64,
        sigma_max: f64,
        shape: &[usize],
    ) -> Result<Self> {
        let mut seed = [0i64; 1];
        generator.randint(0, i64::MAX, &mut seed)?;
        Self::new(&[seed[0] as u64], sigma_min, sigma_max, shape)
    }
}

/// ComfyUI's starting noise, `comfy.sample.prepare_noise(latent, seed, batch_inds)`: after
/// `torch.manual_seed(seed)`, one `torch.randn(latent.shape)` on the CPU — or, with
/// `batch_index` (the latent's `batch_index`), one `(1, …)` draw for each index `0..=max`, each
/// element taking the draw of its index. Unscaled: ComfyUI's KSampler then multiplies by
/// `sqrt(1 + sigma^2)` at full denoise, which
/// [`Grid::initial_scale`](crate::Grid::initial_scale) of a
/// [`ModelSampling`](crate::grid::ModelSampling) grid holds (so
/// `grid.initial_sample(shape, &mut TorchGenerator::new(seed))` is the same starting sample for
/// text-to-image).
///
/// ```
/// use diffusion_samplers::noise::{comfyui_prepare_noise, TorchGenerator};
/// use ndarray::{s, Array4};
/// let all: Array4<f32> = comfyui_prepare_noise((4, 4, 8, 8), 7, None)?;
/// let picked: Array4<f32> = comfyui_prepare_noise((2, 4, 8, 8), 7, Some(&[3, 1]))?;
/// assert_eq!(picked.slice(s![0, .., .., ..]), all.slice(s![3, .., .., ..])); // 256 per element: a multiple of 16
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] if `batch_index` is given for a 0-dimensional shape or does not
/// have one index per batch element.
pub fn comfyui_prepare_noise<F, Sh, D>(
    shape: Sh,
    seed: u64,
    batch_index: Option<&[usize]>,
) -> Result<Array<F, D>>
where
    F: Float,
    Sh: ShapeBuilder<Dim = D>,
    D: Dimension,
{
    let mut out = Array::<F, D>::zeros(shape);
    let mut g = TorchGenerator::new(seed);
    let Some(index) = batch_index else {
        g.fill(0, out.view_mut());
        return Ok(out);
    };
    if out.ndim() == 0 || index.len() != out.len_of(Axis(0)) {
        return Err(Error::InvalidParameter {
            name: "batch_index",
            value: index.len() as f64,
            reason: "needs one index per batch element (the first axis)",
        });
    }
    let per: usize = out.shape()[1..].iter().product();
    let max = index.iter().copied().max().unwrap_or(0);
    let mut draw = vec![F::zero(); per];
    let mut flat = ndarray::ArrayViewMut1::from(&mut draw[..]);
    for i in 0..=max {
        g.fill(0, flat.view_mut());
        for (b, _) in index.iter().enumerate().filter(|&(_, &k)| k == i) {
            let mut dst = out.slice_axis_mut(Axis(0), Slice::from(b..=b));
            for (d, &v) in dst.iter_mut().zip(flat.iter()) {
                *d = v;
            }
        }
    }
    Ok(out)
}

/// The noise ComfyUI's samplers draw during a run for one seed (ComfyUI on the CPU, or the
/// Brownian samplers without `_gpu` on any device): a fresh `torch.Generator("cpu")
/// .manual_seed(seed)` (`default_noise_sampler`; its first draw is the starting noise again, as
/// in ComfyUI), or the torchsde Brownian tree of `dpmpp_sde`, `dpmpp_2m_sde`,
/// `dpmpp_2m_sde_heun`, `dpmpp_3m_sde`. Made by
/// [`Preset::comfyui_noise`](crate::Preset::comfyui_noise).
#[derive(Clone, Debug)]
pub enum ComfyUiNoise {
    /// `default_noise_sampler(x, seed)`: a generator of its own, seeded with the seed.
    Generator(TorchGenerator),
    /// `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)`.
    BrownianTree(Box<TorchBrownianTree>),
}

impl<F: Float> NoiseSource<F> for ComfyUiNoise {
    fn fill<D: Dimension>(&mut self, step: usize, out: ndarray::ArrayViewMut<'_, F, D>) {
        match self {
            ComfyUiNoise::Generator(g) => g.fill(step, out),
            ComfyUiNoise::BrownianTree(t) => t.fill(step, out),
        }
    }

    fn fill_interval<D: Dimension>(
        &mut self,
        step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        out: ndarray::ArrayViewMut<'_, F, D>,
    ) {
        match self {
            ComfyUiNoise::Generator(g) => g.fill(step, out),
            ComfyUiNoise::BrownianTree(t) => t.fill_interval(step, from, to, out),
        }
    }
}
