//! The one float bound of the crate (a leaf module: it imports nothing from the crate).

use ndarray::NdFloat;
use num_traits::FromPrimitive;
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// A slice of one of the two float types, for code that must treat `f32` and `f64` differently
/// (the fast noise generator draws each type its own way).
#[doc(hidden)]
#[derive(Debug)]
pub enum FloatSliceMut<'a> {
    /// An `f32` slice.
    F32(&'a mut [f32]),
    /// An `f64` slice.
    F64(&'a mut [f64]),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element type of samples: `f32` or `f64`.
///
/// Schedules, grids and step coefficients are always computed in `f64`; arrays may be either.
/// The trait bundles what the crate needs (ndarray's [`NdFloat`], conversions, a standard normal
/// draw) so that no public signature lists num-traits bounds. It is sealed: only `f32` and `f64`
/// implement it.
///
/// ```
/// use diffusion_samplers::Float;
/// fn half<F: Float>() -> F { F::cast(0.5) }
/// assert_eq!(half::<f32>(), 0.5f32);
/// ```
pub trait Float: NdFloat + FromPrimitive + Default + sealed::Sealed {
    /// Converts an `f64` (a literal or a coefficient) to `Self`, rounding to nearest.
    fn cast(v: f64) -> Self;
    /// Converts `self` to `f64` exactly.
    fn as_f64(self) -> f64;
    /// One draw from N(0, 1).
    fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> Self;

    /// The slice as its concrete float type.
    #[doc(hidden)]
    fn slice_mut(s: &mut [Self]) -> FloatSliceMut<'_>;

    /// The bits of `self - self`: zero for finite values, a NaN's (nonzero) otherwise. OR-ing
    /// them over an array checks it for non-finite values in two vectorisable operations.
    #[doc(hidden)]
    type Bits: Copy + Default + PartialEq + core::ops::BitOr<Output = Self::Bits> + Send + Sync;
    #[doc(hidden)]
    fn nonfinite_bits(self) -> Self::Bits;
}

impl Float for f32 {
    #[inline(always)]
    fn cast(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        f64::from(self)
    }
    #[inline(always)]
    fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> Self {
        StandardNormal.sample(rng)
    }
    fn slice_mut(s: &mut [Self]) -> FloatSliceMut<'_> {
        FloatSliceMut::F32(s)
    }
    type Bits = u32;
    #[inline(always)]
    #[expect(clippy::eq_op, reason = "x - x is 0 exactly when x is finite")]
    fn nonfinite_bits(self) -> u32 {
        (self - self).to_bits()
    }
}

impl Float for f64 {
    #[inline(always)]
    fn cast(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn as_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> Self {
        StandardNormal.sample(rng)
    }
    fn slice_mut(s: &mut [Self]) -> FloatSliceMut<'_> {
        FloatSliceMut::F64(s)
    }
    type Bits = u64;
    #[inline(always)]
    #[expect(clippy::eq_op, reason = "x - x is 0 exactly when x is finite")]
    fn nonfinite_bits(self) -> u64 {
        (self - self).to_bits()
    }
}
