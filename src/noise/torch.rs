//! torch's CPU generator: `torch.Generator("cpu").manual_seed(seed)` and its `randn` / `rand`.

use ndarray::{ArrayViewMut, Dimension};

use super::NoiseSource;
use crate::float::{Float, FloatSliceMut};

/// The 32-bit Mersenne Twister (MT19937), seeded as torch seeds it (`init_genrand` with the
/// seed's low 32 bits).
#[derive(Clone)]
struct Mt19937 {
    state: Box<[u32; 624]>,
    index: usize,
}

impl Mt19937 {
    fn new(seed: u64) -> Self {
        let mut state = Box::new([0u32; 624]);
        state[0] = seed as u32;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn twist(&mut self) {
        let s = &mut self.state;
        for i in 0..624 {
            let y = (s[i] & 0x8000_0000) | (s[(i + 1) % 624] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            s[i] = s[(i + 397) % 624] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// The stream of torch's CPU generator, `torch.Generator("cpu").manual_seed(seed)`, in pure
/// Rust: consecutive [`randn_f64`](Self::randn_f64) / [`randn_f32`](Self::randn_f32) /
/// [`rand_f64`](Self::rand_f64) / [`rand_f32`](Self::rand_f32) calls continue the stream as
/// consecutive `torch.randn(n, generator=g, dtype=...)` / `torch.rand(...)` calls do.
///
/// What is reproduced (tests/torch_noise.rs against torch 2.15 CPU, seeds 0, 1, 42, 2^32 − 1,
/// 2^63; 1 to 16 384 elements; streams of consecutive calls):
///
/// * **`float64`: bit for bit.** torch's two paths: below 16 elements the scalar
///   `normal_distribution<double>` (Box–Muller on two 53-bit uniforms, the second value kept for
///   the next scalar draw — across calls too); from 16 elements the block kernel (53-bit uniforms
///   for every element, then Box–Muller over blocks of 16 — element `j` and `j + 8` — and, when
///   the size is not a multiple of 16, the last 16 elements redrawn and recomputed).
/// * **`float32` below 16 elements: bit for bit** (the double path, rounded).
/// * **`float32` from 16 elements: the same 24-bit uniforms and blocks, within 2e-6 absolute**
///   (about a third of the values bit-identical): torch evaluates `log`, `sin`, `cos` of the block with
///   its vectorised single-precision kernels (which differ between CPU capabilities: AVX2,
///   AVX-512); we evaluate them in `f64` and round.
/// * `rand`: the uniforms themselves (24-bit for `float32`, 53-bit for `float64`), bit for bit.
///
/// Only the seed's low 32 bits matter, as in torch. As a [`NoiseSource`] it ignores the step
/// key: every fill continues the stream, in the array's logical (row-major) order — torch's
/// order for a contiguous tensor of that shape — so a sampler's draws equal a Python loop
/// calling `torch.randn(x.shape, generator=g)` once per noise draw. Not reproduced: CUDA
/// generators (Philox), non-contiguous torch tensors.
///
/// ```
/// use diffusion_samplers::noise::TorchGenerator;
/// let mut g = TorchGenerator::new(0);
/// let mut z = [0.0f64; 3];
/// g.randn_f64(&mut z);
/// assert_eq!(z[0], 1.5409961082440433); // torch.randn(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
/// ```
#[derive(Clone)]
pub struct TorchGenerator {
    mt: Mt19937,
    seed: u64,
    /// The scalar normal path's second Box–Muller value.
    next_normal: Option<f64>,
    scratch: Vec<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        TorchGenerator {
            mt: Mt19937::new(seed),
            seed,
            next_normal: None,
            scratch: Vec::new(),
        }
    }

    /// The seed it was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn random64(&mut self) -> u64 {
        let hi = u64::from(self.mt.next_u32());
        let lo = u64::from(self.mt.next_u32());
        (hi << 32) | lo
    }

    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    fn uniform_f32(&mut self) -> f32 {
        (self.mt.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / 16_777_216.0)
    }

    /// torch's scalar `normal_distribution<double>`.
    fn normal_scalar(&mut self) -> f64 {
        if let Some(v) = self.next_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.next_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(out.len(), generator=g, dtype=torch.float64)`, bit for bit.
    pub fn randn_f64(&mut self, out: &mut [f64]) {
        let n = out.len();
        if n < 16 {
            for v in out.iter_mut() {
                *v = self.normal_scalar();
            }
            return;
        }
        for v in out.iter_mut() {
            *v = self.uniform_f64();
        }
        for block in out.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f64();
            }
            box_muller_16(tail);
        }
    }

    /// `torch.randn(out.len(), generator=g, dtype=torch.float32)`: bit for bit below 16
    /// elements, within 2e-6 from 16 on (see [`TorchGenerator`]).
    pub fn randn_f32(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < 16 {
            for v in out.iter_mut() {
                *v = self.normal_scalar() as f32;
            }
            return;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.extend((0..n).map(|_| f64::from(self.uniform_f32())));
        for block in scratch.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut scratch[n - 16..];
            for v in tail.iter_mut() {
                *v = f64::from(self.uniform_f32());
            }
            box_muller_16(tail);
        }
        for (o, &v) in out.iter_mut().zip(&scratch) {
            *o = v as f32;
        }
        self.scratch = scratch;
    }

    /// `torch.rand(out.len(), generator=g, dtype=torch.float64)`.
    pub fn rand_f64(&mut self, out: &mut [f64]) {
        for v in out.iter_mut() {
            *v = self.uniform_f64();
        }
    }

    /// `torch.rand(out.len(), generator=g, dtype=torch.float32)`.
    pub fn rand_f32(&mut self, out: &mut [f32]) {
        for v in out.iter_mut() {
            *v = self.uniform_f32();
        }
    }

    /// Fills a slice of either float type.
    fn randn_slice<F: Float>(&mut self, out: &mut [F]) {
        match F::slice_mut(out) {
            FloatSliceMut::F32(s) => self.randn_f32(s),
            FloatSliceMut::F64(s) => self.randn_f64(s),
        }
    }
}

/// torch's `normal_fill_16` on uniforms: elements `j` and `j + 8` from `1 - u_j` and `u_{j+8}`.
fn box_muller_16(d: &mut [f64]) {
    for j in 0..8 {
        let u1 = 1.0 - d[j];
        let u2 = d[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        d[j] = radius * theta.cos();
        d[j + 8] = radius * theta.sin();
    }
}

impl<F: Float> NoiseSource<F> for TorchGenerator {
    fn fill<D: Dimension>(&mut self, _step: usize, mut out: ArrayViewMut<'_, F, D>) {
        if let Some(s) = out.as_slice_mut() {
            self.randn_slice(s);
            return;
        }
        // Another layout: draw in logical order into a contiguous buffer.
        let mut tmp: Vec<F> = vec![F::zero(); out.len()];
        self.randn_slice(&mut tmp);
        for (o, v) in out.iter_mut().zip(tmp) {
            *o = v;
        }
    }
}
