//! torch's CPU generator: `torch.Generator("cpu").manual_seed(seed)` and its `randn` / `rand`.

mod kernel;
mod mt;

use ndarray::{ArrayViewMut, Dimension};

use super::NoiseSource;
use crate::float::{Float, FloatSliceMut};
use mt::Mt19937;

/// Which of torch's CPU kernels float32 draws of 16 elements or more reproduce (see
/// [`TorchGenerator`]); `torch.backends.cpu.get_cpu_capability()` tells which one a torch
/// installation uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TorchCpuKernel {
    /// Capability `AVX2` or `AVX512` — every x86-64 CPU since about 2013, torch's default there:
    /// avx_mathfun's single-precision `log` / `sincos` polynomials as GCC compiles them (with
    /// fused multiply-adds). Bit for bit on every machine (slower without hardware FMA).
    #[default]
    Avx2,
    /// Capability `DEFAULT` (`ATEN_CPU_CAPABILITY=default`, x86 CPUs without AVX2, and the
    /// architectures without an x86 kernel): the C library's `logf`, `cosf`, `sinf`. Bit for bit
    /// when this crate runs on the same C library as torch (checked against torch on glibc).
    Scalar,
}

/// The stream of torch's CPU generator, `torch.Generator("cpu").manual_seed(seed)`, in pure
/// Rust: consecutive [`randn_f64`](Self::randn_f64) / [`randn_f32`](Self::randn_f32) /
/// [`rand_f64`](Self::rand_f64) / [`rand_f32`](Self::rand_f32) calls continue the stream as
/// consecutive `torch.randn(n, generator=g, dtype=...)` / `torch.rand(...)` calls do.
///
/// Everything is bit for bit against torch 2.15 CPU (tests/torch_noise.rs: seeds 0, 1, 42,
/// 2^32 − 1, 2^63; 1 to 2^20 elements; streams of consecutive calls; both kernels):
///
/// * **`float64`**: torch's two paths. Below 16 elements the scalar
///   `normal_distribution<double>` (Box–Muller on two 53-bit uniforms, the second value kept for
///   the next scalar draw — across calls too); from 16 elements the block kernel (53-bit uniforms
///   for every element, then Box–Muller over blocks of 16 — element `j` and `j + 8` — and, when
///   the size is not a multiple of 16, the last 16 elements redrawn and recomputed), with the C
///   library's `log`, `cos`, `sin` (glibc's are correctly rounded in practice; another C
///   library may differ in the last bit).
/// * **`float32` below 16 elements**: the double path, rounded.
/// * **`float32` from 16 elements**: 24-bit uniforms in the same blocks, turned into normals by
///   the kernel torch dispatches to ([`TorchCpuKernel`]): by default the AVX2 kernel, which
///   torch uses on CPU capability AVX2 *and* AVX512 (checked: `ATEN_CPU_CAPABILITY=avx2` and
///   `avx512` give the same bits); [`with_kernel`](Self::with_kernel)`(TorchCpuKernel::Scalar)`
///   for capability DEFAULT. The two differ in about 40% of the values by up to 2e-6.
/// * `rand`: the uniforms themselves (24-bit for `float32`, 53-bit for `float64`).
///
/// Only the seed's low 32 bits matter, as in torch. As a [`NoiseSource`] it ignores the step
/// key: every fill continues the stream, in the array's logical (row-major) order — torch's
/// order for a contiguous tensor of that shape — so a sampler's draws equal a Python loop
/// calling `torch.randn(x.shape, generator=g)` once per noise draw. Not reproduced: CUDA
/// generators (Philox), non-contiguous torch tensors (torch draws those element by element on
/// the scalar path).
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
    kernel: TorchCpuKernel,
    /// The scalar normal path's second Box–Muller value.
    next_normal: Option<f64>,
    /// A contiguous buffer for filling arrays of another layout (kept between calls).
    scratch32: Vec<f32>,
    scratch64: Vec<f64>,
}

impl std::fmt::Debug for TorchGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchGenerator")
            .field("seed", &self.seed)
            .field("kernel", &self.kernel)
            .finish_non_exhaustive()
    }
}

impl TorchGenerator {
    /// `torch.Generator("cpu").manual_seed(seed)`.
    pub fn new(seed: u64) -> Self {
        TorchGenerator {
            mt: Mt19937::new(seed),
            seed,
            kernel: TorchCpuKernel::default(),
            next_normal: None,
            scratch32: Vec::new(),
            scratch64: Vec::new(),
        }
    }

    /// Reproduces `kernel` for float32 draws of 16 elements or more (default
    /// [`TorchCpuKernel::Avx2`]).
    ///
    /// ```
    /// use diffusion_samplers::noise::{TorchCpuKernel, TorchGenerator};
    /// let (mut a, mut b) = ([0.0f32; 64], [0.0f32; 64]);
    /// TorchGenerator::new(3).randn_f32(&mut a);
    /// TorchGenerator::new(3).with_kernel(TorchCpuKernel::Scalar).randn_f32(&mut b);
    /// assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5)); // the same draws, other rounding
    /// ```
    pub fn with_kernel(mut self, kernel: TorchCpuKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The float32 kernel it reproduces.
    pub fn kernel(&self) -> TorchCpuKernel {
        self.kernel
    }

    /// The seed it was made with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// `manual_seed(seed)` again, in place: the state of a new generator, without allocating.
    pub fn manual_seed(&mut self, seed: u64) {
        self.mt.reseed(seed);
        self.seed = seed;
        self.next_normal = None;
    }

    fn random64(&mut self) -> u64 {
        let hi = u64::from(self.mt.next_u32());
        let lo = u64::from(self.mt.next_u32());
        (hi << 32) | lo
    }

    fn uniform_f64(&mut self) -> f64 {
        (self.random64() & ((1 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
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

    /// `torch.randn(out.len(), generator=g, dtype=torch.float32)`, bit for bit (with the kernel
    /// of [`with_kernel`](Self::with_kernel) from 16 elements on).
    pub fn randn_f32(&mut self, out: &mut [f32]) {
        if out.len() < 16 {
            for v in out.iter_mut() {
                *v = self.normal_scalar() as f32;
            }
            return;
        }
        kernel::fill_f32(&mut self.mt, out, self.kernel);
    }

    /// `torch.rand(out.len(), generator=g, dtype=torch.float64)`.
    pub fn rand_f64(&mut self, out: &mut [f64]) {
        for v in out.iter_mut() {
            *v = self.uniform_f64();
        }
    }

    /// `torch.rand(out.len(), generator=g, dtype=torch.float32)`.
    pub fn rand_f32(&mut self, out: &mut [f32]) {
        self.mt.fill_with(out, kernel::uniform24);
    }

    /// `torch.randint(low, high, out.shape, generator=g)` (int64): each draw is `low + r % (high -
    /// low)` with `r` one 64-bit draw (two words) when the range is at least 2^32, one 32-bit
    /// draw otherwise — how k-diffusion picks a Brownian tree's seed
    /// (`torch.randint(0, 2**63 - 1, [])`).
    ///
    /// ```
    /// use diffusion_samplers::noise::TorchGenerator;
    /// let mut g = TorchGenerator::new(0);
    /// let mut v = [0i64; 2];
    /// g.randint(0, 10, &mut v)?;
    /// assert!(v.iter().all(|x| (0..10).contains(x)));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidParameter`](crate::Error::InvalidParameter) unless `low < high` (torch
    /// raises too); nothing is drawn then.
    pub fn randint(&mut self, low: i64, high: i64, out: &mut [i64]) -> crate::Result<()> {
        if low >= high {
            return Err(crate::Error::InvalidParameter {
                name: "high",
                value: high as f64,
                reason: "randint needs low < high",
            });
        }
        let range = high.wrapping_sub(low) as u64;
        for v in out.iter_mut() {
            let r = if range >= 1 << 32 {
                self.random64()
            } else {
                u64::from(self.mt.next_u32())
            };
            *v = (r % range).wrapping_add(low as u64) as i64;
        }
        Ok(())
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
        // Another layout: draw in logical order into the kept contiguous buffer.
        match F::slice_mut(&mut []) {
            FloatSliceMut::F32(_) => {
                let mut tmp = std::mem::take(&mut self.scratch32);
                tmp.resize(out.len(), 0.0);
                self.randn_f32(&mut tmp);
                for (o, &v) in out.iter_mut().zip(&tmp) {
                    *o = F::cast(f64::from(v));
                }
                self.scratch32 = tmp;
            }
            FloatSliceMut::F64(_) => {
                let mut tmp = std::mem::take(&mut self.scratch64);
                tmp.resize(out.len(), 0.0);
                self.randn_f64(&mut tmp);
                for (o, &v) in out.iter_mut().zip(&tmp) {
                    *o = F::cast(v);
                }
                self.scratch64 = tmp;
            }
        }
    }
}
