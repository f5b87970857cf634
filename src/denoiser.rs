//! The model interface: [`Denoiser`], its [`Prediction`] type, and conversions between
//! prediction types.

use ndarray::{Array, ArrayView, Dimension, Zip};

use crate::error::{BoxError, Error, Result};
use crate::float::Float;
use crate::level::NoiseLevel;
pub use crate::prediction::{Linear, Prediction};

impl Prediction {
    /// Converts a model output of this prediction type at `level` into prediction type `to`.
    ///
    /// ```
    /// use diffusion_samplers::{NoiseLevel, Prediction};
    /// use ndarray::array;
    /// let l = NoiseLevel::from_alpha_bar(0.0, 0.36);
    /// let (x0, eps) = (array![0.5, -1.0], array![1.0, 2.0]);
    /// let x = &x0 * l.alpha + &eps * l.sigma;
    /// let v = &eps * l.alpha - &x0 * l.sigma;
    /// let back = Prediction::Velocity.convert(Prediction::Sample, v.view(), x.view(), &l)?;
    /// assert!((back[0] - 0.5f64).abs() < 1e-12 && (back[1] + 1.0f64).abs() < 1e-12);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] if `out` and `x` differ in shape; [`Error::Undetermined`] (with step 0)
    /// where the conversion is undefined (see [`to_x0`](Self::to_x0), [`to_eps`](Self::to_eps));
    /// [`Error::NonFinite`] if the result is not finite (non-finite input, or overflow).
    pub fn convert<F: Float, D: Dimension>(
        self,
        to: Prediction,
        out: ArrayView<'_, F, D>,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<Array<F, D>> {
        if out.shape() != x.shape() {
            return Err(Error::Shape {
                what: "Prediction::convert (output vs sample)",
                expected: x.shape().to_vec(),
                got: out.shape().to_vec(),
            });
        }
        let undetermined = |what| Error::Undetermined {
            step: 0,
            level: *level,
            prediction: self,
            what,
        };
        let (tx0, teps) = to.target_coefficients(level);
        let mut cx = 0.0;
        let mut co = 0.0;
        if tx0 != 0.0 {
            let c = self.to_x0(level).ok_or_else(|| undetermined("x0"))?;
            cx += tx0 * c.x;
            co += tx0 * c.out;
        }
        if teps != 0.0 {
            let c = self.to_eps(level).ok_or_else(|| undetermined("eps"))?;
            cx += teps * c.x;
            co += teps * c.out;
        }
        let (cx, co) = (F::cast(cx), F::cast(co));
        let r = Zip::from(&out).and(&x).map_collect(|&o, &x| cx * x + co * o);
        if r.iter().all(|v| v.is_finite()) {
            Ok(r)
        } else {
            Err(Error::NonFinite {
                step: 0,
                level: *level,
                what: "converted output (a non-finite input, or an overflow)",
            })
        }
    }
}

/// A diffusion model: maps a noisy sample at a level to its prediction.
///
/// `x` is exactly what the model was trained on (`alpha x0 + sigma eps` in its native scaling; no
/// `scale_model_input` to remember), and `level.t` is its timestep input. Return an array of the
/// same shape, interpreted according to [`prediction`](Self::prediction).
///
/// Implement it for your framework's model (candle, tch, burn, ONNX Runtime, ...), or wrap a
/// closure with [`FnDenoiser`].
///
/// ```
/// use diffusion_samplers::{BoxError, Denoiser, NoiseLevel, Prediction};
/// use ndarray::{Array, ArrayView, IxDyn};
///
/// /// Predicts x0 = 0 whatever the input.
/// struct Zero;
/// impl Denoiser<f32, IxDyn> for Zero {
///     fn prediction(&self) -> Prediction { Prediction::Sample }
///     fn denoise(&mut self, x: ArrayView<'_, f32, IxDyn>, _: &NoiseLevel)
///         -> Result<Array<f32, IxDyn>, BoxError> {
///         Ok(Array::zeros(x.raw_dim()))
///     }
/// }
/// ```
pub trait Denoiser<F, D: Dimension> {
    /// What [`denoise`](Self::denoise) returns.
    fn prediction(&self) -> Prediction;

    /// Evaluates the model on `x` at `level`.
    ///
    /// # Errors
    /// Any error of the model; samplers wrap it in [`Error::Model`] with the step and level.
    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError>;

    /// Evaluates the model for the sampler's call `call` and returns its output with the
    /// branches it was made of: what the samplers call. Plain models need not implement it (the
    /// default calls [`denoise`](Self::denoise) and has no branches); guidance implements it, so
    /// that CFG++ samplers renoise with the unconditional branch, progress callbacks can show
    /// every branch, and guiders that depend on the step (intervals) or keep state across
    /// calls (momentum, reset at `call.index == 0`) know where the run is.
    ///
    /// # Errors
    /// As [`denoise`](Self::denoise).
    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        Ok(Guided::plain(self.denoise(x, &call.level)?))
    }

    /// Evaluates the model on several inputs, each at its own level, in one call — what the
    /// parallel sampler ([`crate::parallel`]) asks for once per Picard iteration. The default
    /// calls [`denoise`](Self::denoise) for each; a model that can batch (a GPU network: stack
    /// the inputs along the batch axis and pass one timestep per row) implements it, and that
    /// is where parallel sampling gains its speed.
    ///
    /// # Errors
    /// As [`denoise`](Self::denoise).
    fn denoise_many(
        &mut self,
        xs: &[ArrayView<'_, F, D>],
        levels: &[NoiseLevel],
    ) -> Result<Vec<Array<F, D>>, BoxError> {
        xs.iter()
            .zip(levels)
            .map(|(x, l)| self.denoise(x.view(), l))
            .collect()
    }
}

/// Where a model call sits in a sampling run (see [`Denoiser::denoise_call`]).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Call {
    /// Model calls made before this one in the run: 0 for the run's first call (guiders reset
    /// their state there).
    pub index: usize,
    /// The sampler step (0 = first; multi-stage samplers make several calls per step).
    pub step: usize,
    /// The run's number of steps (grid steps; 0 when the sampler chooses its own, as the
    /// adaptive solver does).
    pub steps: usize,
    /// The level of this evaluation.
    pub level: NoiseLevel,
}

impl Call {
    /// A call description (for driving guiders and models by hand).
    pub fn new(index: usize, step: usize, steps: usize, level: NoiseLevel) -> Self {
        Call {
            index,
            step,
            steps,
            level,
        }
    }
}

/// A model output together with the branches guidance made it from.
#[derive(Clone, Debug, PartialEq)]
pub struct Guided<F, D: Dimension> {
    /// The output the sampler uses (the guided prediction).
    pub output: Array<F, D>,
    /// The conditional branch's output, when the model has branches (for previews).
    pub cond: Option<Array<F, D>>,
    /// The unconditional branch's output, when the model has one: the CFG++ samplers renoise
    /// with it (without it they use `output`, i.e. run as their plain counterparts).
    pub uncond: Option<Array<F, D>>,
}

impl<F, D: Dimension> Guided<F, D> {
    /// An output without branches.
    pub fn plain(output: Array<F, D>) -> Self {
        Guided {
            output,
            cond: None,
            uncond: None,
        }
    }
}

impl<F, D: Dimension, M: Denoiser<F, D> + ?Sized> Denoiser<F, D> for &mut M {
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        (**self).denoise(x, level)
    }
    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        (**self).denoise_call(x, call)
    }
    fn denoise_many(
        &mut self,
        xs: &[ArrayView<'_, F, D>],
        levels: &[NoiseLevel],
    ) -> Result<Vec<Array<F, D>>, BoxError> {
        (**self).denoise_many(xs, levels)
    }
}

impl<F, D: Dimension, M: Denoiser<F, D> + ?Sized> Denoiser<F, D> for Box<M> {
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        (**self).denoise(x, level)
    }
    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        (**self).denoise_call(x, call)
    }
    fn denoise_many(
        &mut self,
        xs: &[ArrayView<'_, F, D>],
        levels: &[NoiseLevel],
    ) -> Result<Vec<Array<F, D>>, BoxError> {
        (**self).denoise_many(xs, levels)
    }
}

/// One model call outside the sampler machinery (inversions, RePaint, the predictor–corrector
/// sampler): the model's output for `call`, with the run's error attribution (a model error or
/// a wrongly shaped output names the call's step and level).
pub(crate) fn call_model<F, D, M>(model: &mut M, x: ArrayView<'_, F, D>, call: &Call) -> Result<Array<F, D>>
where
    D: Dimension,
    M: Denoiser<F, D> + ?Sized,
{
    let (step, level) = (call.step, call.level);
    let shape = x.shape().to_vec();
    let out = model
        .denoise_call(x, call)
        .map_err(|source| Error::Model { step, level, source })?
        .output;
    if out.shape() != shape {
        return Err(Error::ShapeMismatch {
            step,
            level,
            expected: shape,
            got: out.shape().to_vec(),
        });
    }
    Ok(out)
}

/// A [`Denoiser`] from a closure `(x, level) -> Result<output, BoxError>` and its prediction type.
///
/// ```
/// use diffusion_samplers::{BoxError, FnDenoiser, Prediction, NoiseLevel};
/// use ndarray::{Array1, ArrayView1};
/// // The exact epsilon-predictor for data that is always 0: x = sigma eps.
/// let model = FnDenoiser::new(Prediction::Epsilon, |x: ArrayView1<'_, f64>, l: &NoiseLevel| {
///     Ok::<Array1<f64>, BoxError>(x.mapv(|v| v / l.sigma))
/// });
/// # let _ = model;
/// ```
#[derive(Clone, Debug)]
pub struct FnDenoiser<Fun> {
    pub(crate) prediction: Prediction,
    pub(crate) f: Fun,
}

impl<Fun> FnDenoiser<Fun> {
    /// Wraps `f`, whose outputs are of type `prediction`.
    pub fn new(prediction: Prediction, f: Fun) -> Self {
        FnDenoiser { prediction, f }
    }
}

impl<F, D, Fun> Denoiser<F, D> for FnDenoiser<Fun>
where
    D: Dimension,
    Fun: FnMut(ArrayView<'_, F, D>, &NoiseLevel) -> Result<Array<F, D>, BoxError>,
{
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        (self.f)(x, level)
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn conversions_round_trip_for_every_pair() {
        let preds = [
            Prediction::Epsilon,
            Prediction::Sample,
            Prediction::Velocity,
            Prediction::Flow,
        ];
        let levels = [
            NoiseLevel::from_alpha_bar(3.0, 0.7),
            NoiseLevel::new(0.4, 0.6, 0.4), // a flow level: alpha + sigma = 1
            NoiseLevel::new(1.0, 2.0, 3.0), // arbitrary scaling
        ];
        let x0 = array![0.3, -1.2, 2.0];
        let eps = array![-0.7, 0.1, 1.5];
        for l in &levels {
            let x = &x0 * l.alpha + &eps * l.sigma;
            for &from in &preds {
                let (a, b) = from.target_coefficients(l);
                let out = &x0 * a + &eps * b;
                for &to in &preds {
                    let (c, d) = to.target_coefficients(l);
                    let want = &x0 * c + &eps * d;
                    let got = from.convert(to, out.view(), x.view(), l).unwrap();
                    assert_abs_diff_eq!(got, want, epsilon = 1e-12);
                }
            }
        }
    }

    #[test]
    fn undetermined_conversions_are_errors() {
        let terminal = NoiseLevel::new(999.0, 0.0, 1.0);
        let x = array![1.0f32];
        let r = Prediction::Epsilon.convert(Prediction::Sample, x.view(), x.view(), &terminal);
        assert!(matches!(r, Err(Error::Undetermined { what: "x0", .. })));
        // Velocity still determines x0 there: x0 = -v.
        let r = Prediction::Velocity
            .convert(Prediction::Sample, x.view(), x.view(), &terminal)
            .unwrap();
        assert_abs_diff_eq!(r[0], -1.0);
        let r = Prediction::Sample.convert(Prediction::Epsilon, x.view(), x.view(), &NoiseLevel::CLEAN);
        assert!(matches!(r, Err(Error::Undetermined { what: "eps", .. })));
        let y = array![1.0f32, 2.0];
        assert!(matches!(
            Prediction::Sample.convert(Prediction::Sample, y.view(), x.view(), &terminal),
            Err(Error::Shape { .. })
        ));
    }
}
