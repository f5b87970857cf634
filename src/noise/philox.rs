//! torch's CUDA `randn` as AUTOMATIC1111 and stable-diffusion.cpp imitate it on the CPU.

use ndarray::{ArrayViewMut, Dimension};

use super::NoiseSource;
use crate::float::Float;

const PHILOX_M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
const PHILOX_W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];

/// Philox4x32-10 of `counter` under `key`.
#[inline(always)]
fn philox4x32_10(mut c: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        let v1 = u64::from(c[0]) * u64::from(PHILOX_M[0]);
        let v2 = u64::from(c[2]) * u64::from(PHILOX_M[1]);
        c = [
            (v2 >> 32) as u32 ^ c[1] ^ key[0],
            v2 as u32,
            (v1 >> 32) as u32 ^ c[3] ^ key[1],
            v1 as u32,
        ];
        if round < 9 {
            key = [key[0].wrapping_add(PHILOX_W[0]), key[1].wrapping_add(PHILOX_W[1])];
        }
    }
    c
}

/// torch's `randn` on a CUDA device as AUTOMATIC1111's "NV" random number source
/// (`modules/rng_philox.py`) and stable-diffusion.cpp's CUDA RNG mode compute it on the CPU:
/// element `i` of the `k`-th draw (`k = 0, 1, …` counts the fills) is Box–Muller's sine value of
/// the first two words of Philox4x32-10 with counter `(k, 0, i, 0)` and key `seed` (its low and
/// high halves):
///
/// ```text
/// u = x 2^-32 + 2^-33,   v = y 2π 2^-32 + π 2^-32,   z_i = sqrt(-2 ln u) sin v
/// ```
///
/// evaluated as AUTOMATIC1111 evaluates it (the constants in `float32`, the arithmetic in
/// `float64`, the result rounded to `float32`). What is checked: the values AUTOMATIC1111
/// documents as `torch.randn((3, 4), device="cuda")` after `manual_seed(0)` (within 3e-7: the
/// imitation itself is that far from CUDA's float32 arithmetic), and stable-diffusion.cpp's
/// C++ port compiled on the fixture machine (tests/torch_noise.rs, within 1e-6: it rounds to
/// `float32` earlier). So this is AUTOMATIC1111's "NV" noise and stable-diffusion.cpp's CUDA
/// mode, not torch's CUDA kernel bit for bit — that cannot be checked without a GPU. Like them
/// it assumes one counter step per call and at most 2^32 elements.
///
/// ```
/// use diffusion_samplers::noise::CudaPhilox;
/// let mut z = [0.0f32; 4];
/// CudaPhilox::new(0).randn_f32(&mut z);
/// assert!((z[0] - -0.92466259).abs() < 3e-7); // torch.manual_seed(0); torch.randn(3, 4, device="cuda")[0, 0]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaPhilox {
    seed: u64,
    offset: u32,
}

impl CudaPhilox {
    /// `torch.manual_seed(seed)` on a CUDA device, as AUTOMATIC1111 imitates it.
    pub fn new(seed: u64) -> Self {
        CudaPhilox { seed, offset: 0 }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The number of draws made so far (the counter's first word).
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// One draw of `out.len()` normals (the next counter step).
    pub fn randn_f32(&mut self, out: &mut [f32]) {
        self.draw(out.iter_mut(), |v, z| *v = z);
    }

    /// One draw, widened to `f64` (the values are `float32`'s).
    pub fn randn_f64(&mut self, out: &mut [f64]) {
        self.draw(out.iter_mut(), |v, z| *v = f64::from(z));
    }

    fn draw<'a, T: 'a>(&mut self, out: impl Iterator<Item = &'a mut T>, mut put: impl FnMut(&mut T, f32)) {
        // AUTOMATIC1111's constants: float32 values, used in float64 arithmetic.
        let inv = f64::from(2.328_306_4e-10f32);
        let inv_2pi = f64::from((2.328_306_4e-10 * 6.283_185_5) as f32);
        let half = f64::from(2.328_306_4e-10f32 / 2.0);
        let half_2pi = f64::from((2.328_306_4e-10 * 6.283_185_5) as f32 / 2.0);
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        for (i, v) in out.enumerate() {
            let [x, y, _, _] = philox4x32_10([self.offset, 0, i as u32, 0], key);
            let u = f64::from(x) * inv + half;
            let w = f64::from(y) * inv_2pi + half_2pi;
            let z = (-2.0 * u.ln()).sqrt() * w.sin();
            put(v, z as f32);
        }
        self.offset = self.offset.wrapping_add(1);
    }
}

impl<F: Float> NoiseSource<F> for CudaPhilox {
    fn fill<D: Dimension>(&mut self, _step: usize, mut out: ArrayViewMut<'_, F, D>) {
        self.draw(out.iter_mut(), |v, z| *v = F::cast(f64::from(z)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Philox4x32-10 known-answer vectors of Random123 (`tests/kat_vectors`).
    #[test]
    fn philox_known_answer() {
        let out = philox4x32_10([u32::MAX; 4], [u32::MAX; 2]);
        assert_eq!(out, [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        let out = philox4x32_10([0; 4], [0; 2]);
        assert_eq!(out, [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        let out = philox4x32_10(
            [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
            [0xa409_3822, 0x299f_31d0],
        );
        assert_eq!(out, [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]);
    }

    /// The output AUTOMATIC1111 documents for `Generator(seed=0).randn(shape=(3, 4))`, torch's
    /// CUDA `randn` (8 digits printed): its own imitation — and this one — are within 3e-7 of it
    /// (CUDA evaluates the Box–Muller step in float32 with its own `logf` / `sinf`).
    #[test]
    fn automatic1111_documented_values() {
        let want = [
            -0.924_662_59,
            -0.425_344_15,
            -2.643_845_7,
            0.145_183_88,
            -0.120_866_47,
            -0.579_725_64,
            -0.622_851_22,
            -0.328_387_09,
            -1.074_542_31,
            -0.363_144_07,
            -1.671_050_67,
            2.265_504_97,
        ];
        let mut z = [0.0f64; 12];
        CudaPhilox::new(0).randn_f64(&mut z);
        for (a, b) in z.iter().zip(want) {
            assert!((a - b).abs() < 5e-7, "{a} vs {b}");
        }
    }
}
