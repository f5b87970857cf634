//! Classifier-free guidance (Ho & Salimans 2022) as a [`Denoiser`] wrapper, with guidance
//! rescale (Lin et al. 2023, §3.4): from two models ([`Guidance`]), one model called once per
//! branch ([`SharedGuidance`]), or one batched call ([`BatchedGuidance`]).

use ndarray::{Array, ArrayView, Axis, Dimension, Zip, concatenate};

use crate::denoiser::{Call, Denoiser, FnDenoiser, Guided, Prediction};
use crate::error::{BoxError, Error};
use crate::float::Float;
use crate::level::NoiseLevel;

/// Combines an unconditional and a conditional output: `u + scale (c - u)`, then, with
/// `rescale = phi > 0`, `phi * out * std(c) / std(out) + (1 - phi) * out`, the standard deviations
/// taken per batch element (axis 0) over all other axes, unbiased (diffusers'
/// `rescale_noise_cfg`). `c` holds the result.
fn combine<F: Float, D: Dimension>(
    mut c: Array<F, D>,
    u: &Array<F, D>,
    scale: f64,
    rescale: f64,
) -> Array<F, D> {
    let s = F::cast(scale);
    if rescale == 0.0 || c.ndim() == 0 {
        Zip::from(&mut c).and(u).for_each(|c, &u| *c = u + s * (*c - u));
        return c;
    }
    let mut cd = c.view_mut().into_dyn();
    let ud = u.view().into_dyn();
    for (mut cb, ub) in cd.axis_iter_mut(Axis(0)).zip(ud.axis_iter(Axis(0))) {
        let std_c = unbiased_std(cb.iter().copied());
        Zip::from(&mut cb)
            .and(&ub)
            .for_each(|c, &u| *c = u + s * (*c - u));
        let std_cfg = unbiased_std(cb.iter().copied());
        let k = if std_cfg > 0.0 {
            rescale * std_c / std_cfg + (1.0 - rescale)
        } else {
            1.0
        };
        let k = F::cast(k);
        cb.mapv_inplace(|v| v * k);
    }
    c
}

fn unbiased_std<F: Float>(it: impl Iterator<Item = F> + Clone) -> f64 {
    let n = it.clone().count();
    if n < 2 {
        return 0.0;
    }
    let mean = it.clone().map(|v| v.as_f64()).sum::<f64>() / n as f64;
    let var = it.map(|v| (v.as_f64() - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    var.sqrt()
}

fn check_guidance(scale: f64, rescale: f64) -> Result<(), BoxError> {
    if !scale.is_finite() {
        return Err(Box::new(Error::InvalidParameter {
            name: "scale",
            value: scale,
            reason: "must be finite",
        }));
    }
    if !(0.0..=1.0).contains(&rescale) {
        return Err(Box::new(Error::InvalidParameter {
            name: "rescale",
            value: rescale,
            reason: "guidance rescale must be in [0, 1]",
        }));
    }
    Ok(())
}

/// Classifier-free guidance from two models (or one model with two conditionings, as two
/// [`Denoiser`]s): `out = u + scale (c - u)`, optionally rescaled (see
/// [`rescale`](Self::rescale)). The guided output has the models' prediction type, which must
/// agree.
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Guidance;
/// use ndarray::Array2;
/// use rand::{rngs::StdRng, SeedableRng};
/// let cond = GaussianMixture::gaussian(vec![2.0], vec![0.1])?;
/// let uncond = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
/// let mut guided = Guidance::new(cond, uncond, 3.0).rescale(0.7);
/// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let out = Ddim::new()
///     .sample(&mut guided, Array2::<f64>::zeros((4, 1)), &s.grid(20, Spacing::Trailing)?, &mut StdRng::seed_from_u64(0))?;
/// assert!(out.iter().all(|v| v.is_finite()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Guidance<C, U> {
    cond: C,
    uncond: U,
    scale: f64,
    rescale: f64,
}

impl<C, U> Guidance<C, U> {
    /// Guidance of `cond` against `uncond` with the given scale (7.5 is Stable Diffusion's usual
    /// value; 1 means the conditional model alone).
    pub fn new(cond: C, uncond: U, scale: f64) -> Self {
        Guidance {
            cond,
            uncond,
            scale,
            rescale: 0.0,
        }
    }

    /// Guidance rescale `phi` in [0, 1] (Lin et al. 2023 suggest 0.7 with zero-terminal-SNR
    /// models): rescales the guided output to the conditional output's standard deviation.
    pub fn rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    /// The wrapped models.
    pub fn into_inner(self) -> (C, U) {
        (self.cond, self.uncond)
    }
}

impl<F: Float, D: Dimension, C: Denoiser<F, D>, U: Denoiser<F, D>> Denoiser<F, D> for Guidance<C, U> {
    fn prediction(&self) -> Prediction {
        self.cond.prediction()
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        Ok(self.branches(x, level)?.output)
    }

    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        self.branches(x, &call.level)
    }
}

impl<C, U> Guidance<C, U> {
    fn branches<F: Float, D: Dimension>(
        &mut self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<Guided<F, D>, BoxError>
    where
        C: Denoiser<F, D>,
        U: Denoiser<F, D>,
    {
        check_guidance(self.scale, self.rescale)?;
        if self.cond.prediction() != self.uncond.prediction() {
            return Err("the conditional and unconditional models predict different things".into());
        }
        let c = self.cond.denoise(x.view(), level)?;
        let u = self.uncond.denoise(x, level)?;
        check_branches(&c, &u)?;
        Ok(guided(c, u, self.scale, self.rescale))
    }
}

/// The guided output with both branches kept.
fn guided<F: Float, D: Dimension>(c: Array<F, D>, u: Array<F, D>, scale: f64, rescale: f64) -> Guided<F, D> {
    let output = combine(c.clone(), &u, scale, rescale);
    Guided {
        output,
        cond: Some(c),
        uncond: Some(u),
    }
}

/// Which branch of classifier-free guidance a model call is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Branch {
    /// Conditioned on the prompt (or class, or image).
    Conditional,
    /// The unconditional (empty-prompt, negative-prompt) branch.
    Unconditional,
}

/// One network that is told which guidance branch it evaluates — the usual shape of a text-to-
/// image model, whose conditioning is an input. [`SharedGuidance`] calls it twice per step.
/// Closures `(x, level, branch) -> Result<output, BoxError>` get it through [`FnDenoiser`].
pub trait BranchDenoiser<F, D: Dimension> {
    /// What [`denoise_branch`](Self::denoise_branch) returns (the same for both branches).
    fn prediction(&self) -> Prediction;

    /// Evaluates the model on `x` at `level` for `branch`.
    ///
    /// # Errors
    /// Any error of the model.
    fn denoise_branch(
        &mut self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
        branch: Branch,
    ) -> Result<Array<F, D>, BoxError>;
}

impl<F, D, Fun> BranchDenoiser<F, D> for FnDenoiser<Fun>
where
    D: Dimension,
    Fun: FnMut(ArrayView<'_, F, D>, &NoiseLevel, Branch) -> Result<Array<F, D>, BoxError>,
{
    fn prediction(&self) -> Prediction {
        self.prediction
    }
    fn denoise_branch(
        &mut self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
        branch: Branch,
    ) -> Result<Array<F, D>, BoxError> {
        (self.f)(x, level, branch)
    }
}

impl<F, D: Dimension, M: BranchDenoiser<F, D> + ?Sized> BranchDenoiser<F, D> for &mut M {
    fn prediction(&self) -> Prediction {
        (**self).prediction()
    }
    fn denoise_branch(
        &mut self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
        branch: Branch,
    ) -> Result<Array<F, D>, BoxError> {
        (**self).denoise_branch(x, level, branch)
    }
}

/// Classifier-free guidance from one network called twice per step, once per [`Branch`]: no
/// `Rc<RefCell<..>>` around a model that two [`Denoiser`]s would have to share.
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::guidance::{Branch, BranchDenoiser, SharedGuidance};
/// use ndarray::{Array2, ArrayView2};
///
/// /// A "text-conditioned" network: one set of weights, the prompt embedding an input.
/// struct Net { prompt: f64, empty: f64 }
/// impl BranchDenoiser<f64, ndarray::Ix2> for Net {
///     fn prediction(&self) -> Prediction { Prediction::Sample }
///     fn denoise_branch(&mut self, x: ArrayView2<'_, f64>, _: &NoiseLevel, b: Branch)
///         -> Result<Array2<f64>, BoxError> {
///         let c = match b { Branch::Conditional => self.prompt, Branch::Unconditional => self.empty };
///         Ok(Array2::from_elem(x.raw_dim(), c)) // "x0 = the embedding"
///     }
/// }
/// let mut guided = SharedGuidance::new(Net { prompt: 1.0, empty: 0.0 }, 3.0);
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::Trailing)?;
/// let x = grid.initial_sample((2, 1), &mut SeededNoise::new(0))?;
/// let out = Ddim::new().sample(&mut guided, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.iter().all(|v| (v - 3.0).abs() < 1e-9)); // u + 3 (c - u)
///
/// // The same with a closure around a model you already have.
/// let mut net = Net { prompt: 1.0, empty: 0.0 };
/// let mut guided = SharedGuidance::new(
///     FnDenoiser::new(Prediction::Sample, |x: ArrayView2<'_, f64>, l: &NoiseLevel, b: Branch| net.denoise_branch(x, l, b)),
///     3.0,
/// );
/// let out = Ddim::new().sample(&mut guided, Array2::zeros((2, 1)), &grid, &mut SeededNoise::new(1))?;
/// assert!((out[[0, 0]] - 3.0).abs() < 1e-9);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SharedGuidance<M> {
    model: M,
    scale: f64,
    rescale: f64,
}

impl<M> SharedGuidance<M> {
    /// Guidance through `model`'s two branches with the given scale.
    pub fn new(model: M, scale: f64) -> Self {
        SharedGuidance {
            model,
            scale,
            rescale: 0.0,
        }
    }

    /// Guidance rescale `phi` in [0, 1] (see [`Guidance::rescale`]).
    pub fn rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    /// The wrapped model.
    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<F: Float, D: Dimension, M: BranchDenoiser<F, D>> Denoiser<F, D> for SharedGuidance<M> {
    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        Ok(self.denoise_call(x, &Call::new(0, 0, 0, *level))?.output)
    }

    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        check_guidance(self.scale, self.rescale)?;
        let c = self
            .model
            .denoise_branch(x.view(), &call.level, Branch::Conditional)?;
        let u = self.model.denoise_branch(x, &call.level, Branch::Unconditional)?;
        check_branches(&c, &u)?;
        Ok(guided(c, u, self.scale, self.rescale))
    }
}

/// The two branches' outputs must agree in shape.
fn check_branches<F, D: Dimension>(c: &Array<F, D>, u: &Array<F, D>) -> Result<(), BoxError> {
    if c.shape() == u.shape() {
        Ok(())
    } else {
        Err(Box::new(Error::Shape {
            what: "conditional vs unconditional output",
            expected: c.shape().to_vec(),
            got: u.shape().to_vec(),
        }))
    }
}

/// Classifier-free guidance with one batched model call, as diffusers pipelines do: the model
/// receives `[x; x]` (the batch doubled along axis 0) and returns `[uncond; cond]`, the
/// unconditional half first (the model knows which half gets the empty prompt).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::BatchedGuidance;
/// use ndarray::{Array2, ArrayView2};
/// // A toy "conditional" model: first half of the batch unconditional (x0 = 0), second half
/// // conditioned on x0 = 1.
/// let model = FnDenoiser::new(Prediction::Sample, |x: ArrayView2<'_, f64>, _: &NoiseLevel| {
///     let n = x.nrows() / 2;
///     let mut out = Array2::zeros(x.raw_dim());
///     out.slice_mut(ndarray::s![n.., ..]).fill(1.0);
///     Ok::<_, BoxError>(out)
/// });
/// let mut guided = BatchedGuidance::new(model, 2.0);
/// let out = guided.denoise(Array2::zeros((3, 1)).view(), &NoiseLevel::from_alpha_bar(0.0, 0.5))?;
/// assert_eq!(out.shape(), &[3, 1]);
/// assert!((out[[0, 0]] - 2.0f64).abs() < 1e-12);
/// # Ok::<(), BoxError>(())
/// ```
#[derive(Clone, Debug)]
pub struct BatchedGuidance<M> {
    model: M,
    scale: f64,
    rescale: f64,
}

impl<M> BatchedGuidance<M> {
    /// Guidance through one doubled-batch call of `model`.
    pub fn new(model: M, scale: f64) -> Self {
        BatchedGuidance {
            model,
            scale,
            rescale: 0.0,
        }
    }

    /// Guidance rescale `phi` in [0, 1].
    pub fn rescale(mut self, phi: f64) -> Self {
        self.rescale = phi;
        self
    }

    /// The wrapped model.
    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<F: Float, D: Dimension, M: Denoiser<F, D>> Denoiser<F, D> for BatchedGuidance<M> {
    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        Ok(self.denoise_call(x, &Call::new(0, 0, 0, *level))?.output)
    }

    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        let level = &call.level;
        check_guidance(self.scale, self.rescale)?;
        if x.ndim() == 0 {
            return Err("batched guidance needs a batch axis (axis 0)".into());
        }
        let xd = x.view().into_dyn();
        let doubled = concatenate(Axis(0), &[xd.view(), xd.view()])?;
        let doubled = doubled.into_dimensionality::<D>()?;
        let out = self.model.denoise(doubled.view(), level)?;
        if out.shape() != doubled.shape() {
            return Err(Box::new(Error::Shape {
                what: "batched guidance output (doubled batch)",
                expected: doubled.shape().to_vec(),
                got: out.shape().to_vec(),
            }));
        }
        let n = x.shape()[0];
        let od = out.into_dyn();
        let u = od
            .slice_axis(Axis(0), (0..n).into())
            .to_owned()
            .into_dimensionality::<D>()?;
        let c = od
            .slice_axis(Axis(0), (n..2 * n).into())
            .to_owned()
            .into_dimensionality::<D>()?;
        Ok(guided(c, u, self.scale, self.rescale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn rescale_matches_diffusers_formula() {
        let c = array![[1.0f64, 2.0, 4.0], [0.0, 0.5, -0.5]];
        let u = array![[0.0f64, 1.0, 1.0], [0.1, 0.1, 0.1]];
        let out = combine(c.clone(), &u, 5.0, 0.7);
        for b in 0..2 {
            let cfg: Vec<f64> = (0..3)
                .map(|j| u[[b, j]] + 5.0 * (c[[b, j]] - u[[b, j]]))
                .collect();
            let sc = unbiased_std(c.row(b).iter().copied());
            let sg = unbiased_std(cfg.iter().copied());
            for j in 0..3 {
                let want = 0.7 * cfg[j] * sc / sg + 0.3 * cfg[j];
                assert!((out[[b, j]] - want).abs() < 1e-12);
            }
        }
        // scale 1 without rescale: the conditional output.
        assert_eq!(combine(c.clone(), &u, 1.0, 0.0), c);
    }
}
