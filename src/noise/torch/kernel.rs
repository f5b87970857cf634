//! torch's float32 Box–Muller kernels for tensors of 16 elements or more.
//!
//! torch 2.15 fills the tensor with 24-bit uniforms, then turns each block of 16 into normals:
//! elements `j` and `j + 8` from `u1 = 1 - u_j` and `u2 = u_{j+8}`. Which functions evaluate
//! `log`, `sin` and `cos` depends on the kernel the build dispatches to:
//!
//! * CPU capability AVX2 or AVX512 (`normal_fill_16_AVX2`): the `log256_ps` / `sincos256_ps`
//!   polynomials of avx_mathfun (Pommier's cephes-based single-precision functions), compiled
//!   by GCC with FMA contraction: each multiply whose only use is an add becomes a fused
//!   multiply-add. Reproduced here operation by operation, with `mul_add` exactly where GCC
//!   fused (found by comparing 2^20 draws bit for bit; any other choice of fusions misses some).
//! * CPU capability DEFAULT (`normal_fill_16`): the C library's `logf`, `cosf`, `sinf`, with
//!   the angle computed in double precision and rounded.

use super::TorchCpuKernel;

/// `2π` as torch's kernels hold it: `2.0f * c10::pi<double>` rounded to `float`.
const TWO_PI_F32: f32 = (2.0 * std::f64::consts::PI) as f32;

/// avx_mathfun's `log256_ps` on one lane (arguments in `(0, 1]`: never zero, negative or NaN).
///
/// The constants are written as avx_mathfun (after cephes) writes them.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn log_ps(x: f32) -> f32 {
    const MIN_NORM: f32 = f32::MIN_POSITIVE;
    const SQRTHF: f32 = std::f32::consts::FRAC_1_SQRT_2; // cephes_SQRTHF
    const P: [f32; 9] = [
        7.037_683_629_2E-2,
        -1.151_461_031_0E-1,
        1.167_699_874_0E-1,
        -1.242_014_084_6E-1,
        1.424_932_278_7E-1,
        -1.666_805_766_5E-1,
        2.000_071_476_5E-1,
        -2.499_999_399_3E-1,
        3.333_333_117_4E-1,
    ];
    const Q1: f32 = -2.121_944_40e-4;
    const Q2: f32 = 0.693_359_375;
    let x = if x < MIN_NORM { MIN_NORM } else { x };
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32;
    e += 1.0;
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let below = x < SQRTHF;
    let tmp = if below { x } else { 0.0 };
    x -= 1.0;
    e -= if below { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(Q2, x)
}

/// avx_mathfun's `sincos256_ps` on one lane: `(sin x, cos x)`.
#[inline(always)]
#[allow(clippy::excessive_precision)]
fn sincos_ps(x: f32) -> (f32, f32) {
    const FOPI: f32 = 1.273_239_544_735_16;
    const DP: [f32; 3] = [
        0.785_156_25,
        2.418_756_484_985_351_562_5e-4,
        3.774_894_977_445_941_08e-8,
    ];
    const SIN: [f32; 3] = [-1.951_529_589_1E-4, 8.332_160_873_6E-3, -1.666_665_461_1E-1];
    const COS: [f32; 3] = [
        2.443_315_711_809_948E-5,
        -1.388_731_625_493_765E-3,
        4.166_664_568_298_827E-2,
    ];
    const SIGN: u32 = 0x8000_0000;
    let mut sign_sin = x.to_bits() & SIGN;
    let mut x = f32::from_bits(x.to_bits() & !SIGN);
    let mut j = (x * FOPI) as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let swap_sin = ((j & 4) as u32) << 29;
    let sin_poly = j & 2 == 0;
    for d in DP {
        x = y.mul_add(-d, x);
    }
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    sign_sin ^= swap_sin;
    let z = x * x;
    let mut yc = COS[0].mul_add(z, COS[1]);
    yc = yc.mul_add(z, COS[2]);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    let mut ys = SIN[0].mul_add(z, SIN[1]);
    ys = ys.mul_add(z, SIN[2]);
    ys *= z;
    ys = ys.mul_add(x, x);
    // The masked selection, with its additions of +0.
    let (s2, s1) = if sin_poly { (ys, 0.0) } else { (0.0, yc) };
    let sin = s1 + s2;
    let cos = (yc - s1) + (ys - s2);
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

/// One block of 16 uniforms turned into normals by the AVX2 kernel.
#[inline(always)]
fn block_avx2(d: &mut [f32]) {
    let (lo, hi) = d.split_at_mut(8);
    for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
        let u1 = 1.0 - *a;
        let radius = (-2.0 * log_ps(u1)).sqrt();
        let (sin, cos) = sincos_ps(TWO_PI_F32 * *b);
        // `_mm256_fmadd_ps(n, std, mean)` with std 1 and mean 0: n + 0 exactly.
        *a = radius * cos + 0.0;
        *b = radius * sin + 0.0;
    }
}

/// One block of 16 uniforms turned into normals by the DEFAULT kernel.
#[inline(always)]
fn block_scalar(d: &mut [f32]) {
    let (lo, hi) = d.split_at_mut(8);
    for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
        let u1 = 1.0 - *a;
        let radius = (-2.0 * u1.ln()).sqrt();
        let theta = (2.0 * std::f64::consts::PI * f64::from(*b)) as f32;
        *a = radius * theta.cos() + 0.0;
        *b = radius * theta.sin() + 0.0;
    }
}

/// The 24-bit uniform of a 32-bit draw, as `at::uniform_real_distribution<float>` forms it.
#[inline(always)]
pub(super) fn uniform24(u: u32) -> f32 {
    (u & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
}

/// `torch.randn(out.len())` in float32 for `out.len() >= 16`: uniforms from `mt`, blocks of 16
/// (the AVX2 or the scalar kernel), the last block redrawn and recomputed when the length is not
/// a multiple of 16.
#[inline(always)]
fn fill_blocks<const AVX2: bool>(mt: &mut super::mt::Mt19937, out: &mut [f32]) {
    let block = |b: &mut [f32]| {
        if AVX2 {
            block_avx2(b);
        } else {
            block_scalar(b);
        }
    };
    let n = out.len();
    debug_assert!(n >= 16);
    mt.fill_with(out, uniform24);
    for b in out.chunks_exact_mut(16) {
        block(b);
    }
    if !n.is_multiple_of(16) {
        let tail = &mut out[n - 16..];
        mt.fill_with(tail, uniform24);
        block(tail);
    }
}

/// The AVX2 kernel compiled for CPUs with AVX2 and FMA: the lanes vectorise and `mul_add` is one
/// instruction.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn fill_avx2_fma(mt: &mut super::mt::Mt19937, out: &mut [f32]) {
    fill_blocks::<true>(mt, out);
}

/// Fills `out` (16 elements or more) as `kernel` does.
pub(super) fn fill_f32(mt: &mut super::mt::Mt19937, out: &mut [f32], kernel: TorchCpuKernel) {
    match kernel {
        TorchCpuKernel::Avx2 => {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA, the features `fill_avx2_fma` is compiled
                // for (checked just above).
                #[allow(unsafe_code)]
                unsafe {
                    fill_avx2_fma(mt, out);
                }
                return;
            }
            // Elsewhere `mul_add` is the same correctly rounded operation (a library call on x86
            // without FMA): the same bits, more slowly.
            fill_blocks::<true>(mt, out);
        }
        TorchCpuKernel::Scalar => fill_blocks::<false>(mt, out),
    }
}

#[cfg(test)]
mod tests {
    use super::super::mt::Mt19937;
    use super::*;

    /// The dispatched kernel (AVX2 + FMA instructions where the CPU has them) and the portable
    /// one (`mul_add` as a library call on x86 without `-C target-feature=+fma`) give the same
    /// bits: every operation is a correctly rounded IEEE operation in both.
    #[test]
    fn dispatched_and_portable_kernels_agree() {
        let n = 4099;
        let (mut a, mut b) = (vec![0.0f32; n], vec![0.0f32; n]);
        fill_f32(&mut Mt19937::new(11), &mut a, TorchCpuKernel::Avx2);
        fill_blocks::<true>(&mut Mt19937::new(11), &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(a.iter().all(|v| v.is_finite()));
    }

    /// avx_mathfun's polynomials are within a few ulp of the true functions on the kernel's
    /// arguments (a wrong constant or a dropped term is far outside).
    #[test]
    fn polynomials_approximate_log_sin_cos() {
        for k in 1..=1000 {
            let u = k as f32 / 1000.0;
            let l = log_ps(u);
            assert!(
                (f64::from(l) - f64::from(u).ln()).abs() < 4e-7 * (1.0 + f64::from(u).ln().abs()),
                "log {u}"
            );
            let t = TWO_PI_F32 * u;
            let (s, c) = sincos_ps(t);
            assert!((f64::from(s) - f64::from(t).sin()).abs() < 4e-7, "sin {t}");
            assert!((f64::from(c) - f64::from(t).cos()).abs() < 4e-7, "cos {t}");
        }
    }
}
