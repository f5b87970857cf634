//! Guidance: how the branches of a conditional model become one guided output.
//!
//! Three wrappers turn a model into a guided [`Denoiser`] — [`Guidance`] (two models, or one
//! model with two conditionings as two denoisers), [`SharedGuidance`] (one network called once
//! per [`Branch`]) and [`BatchedGuidance`] (one doubled-batch call, as diffusers pipelines do)
//! — each with a [`GuidanceRule`] for the combination: classifier-free guidance ([`Cfg`], the
//! default, with rescale) and its variants. The wrappers return every branch
//! ([`Guided`]), so the CFG++ samplers can renoise with the unconditional one and progress
//! callbacks can show each; rules that depend on the step (guidance intervals) or keep state
//! (momentum) get the sampler's [`Call`].
//!
//! Out of scope (they need the model's internals, not only its outputs): perturbed-attention
//! guidance (PAG), self-attention guidance (SAG), skip-layer guidance (SLG), smoothed-energy
//! guidance and autoguidance (a second, weaker model is a plain [`Guidance`] of two models).

mod apg;
mod cfg;
mod freq;
mod interval;
mod post;
mod rule;
mod tangential;
mod triple;
mod zero_star;

pub use apg::{Apg, ApgMix};
pub use cfg::Cfg;
pub use freq::{FreSca, FrequencyDecoupled};
pub use interval::Interval;
pub use post::{CfgNorm, EpsScaling, Mahiro};
pub use rule::{Context, GuidanceRule, Space};
pub use tangential::{MagnitudeAware, Tangential};
pub use triple::{DualCfg, PerpNeg, TripleGuidance, TripleRule};
pub use zero_star::CfgZeroStar;

use ndarray::{Array, ArrayView, Axis, Dimension, concatenate};

use crate::denoiser::{Call, Denoiser, FnDenoiser, Guided, Prediction};
use crate::error::{BoxError, Error};
use crate::float::Float;
use crate::level::NoiseLevel;

/// Combines the branches with `rule` and keeps them: the guided output, the conditional
/// branch's output and (if the rule used it) the unconditional one.
fn apply<F: Float, D: Dimension, R: GuidanceRule>(
    rule: &mut R,
    x: ArrayView<'_, F, D>,
    call: &Call,
    prediction: Prediction,
    c: Array<F, D>,
    mut u: Option<Array<F, D>>,
) -> Result<Guided<F, D>, BoxError> {
    if let Some(u) = &u {
        check_branches(&c, u)?;
    }
    let mut output = c.clone();
    rule.combine(
        &Context::new(x, *call, prediction),
        output.view_mut(),
        u.as_mut().map(|u| u.view_mut()),
    )?;
    Ok(Guided {
        output,
        cond: Some(c),
        uncond: u,
    })
}

/// The two branches' outputs must agree in shape.
pub(crate) fn check_branches<F, D: Dimension>(c: &Array<F, D>, u: &Array<F, D>) -> Result<(), BoxError> {
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

/// The call a wrapper's plain [`Denoiser::denoise`] stands for: a lone call at `level`
/// (stateful rules see the first call of a run each time).
fn lone_call(level: &NoiseLevel) -> Call {
    Call::new(0, 0, 0, *level)
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
pub struct Guidance<C, U, R = Cfg> {
    cond: C,
    uncond: U,
    rule: R,
}

impl<C, U> Guidance<C, U> {
    /// Classifier-free guidance of `cond` against `uncond` with the given scale (7.5 is Stable
    /// Diffusion's usual value; 1 means the conditional model alone, and the unconditional one
    /// is then not called).
    pub fn new(cond: C, uncond: U, scale: f64) -> Self {
        Guidance {
            cond,
            uncond,
            rule: Cfg::new(scale),
        }
    }

    /// Guidance rescale `phi` in [0, 1] (Lin et al. 2023 suggest 0.7 with zero-terminal-SNR
    /// models): rescales the guided output to the conditional output's standard deviation.
    pub fn rescale(mut self, phi: f64) -> Self {
        self.rule = self.rule.rescale(phi);
        self
    }
}

impl<C, U, R> Guidance<C, U, R> {
    /// Guidance of `cond` against `uncond` combined by `rule`.
    pub fn with_rule(cond: C, uncond: U, rule: R) -> Self {
        Guidance { cond, uncond, rule }
    }

    /// The same models with another rule.
    pub fn rule<R2>(self, rule: R2) -> Guidance<C, U, R2> {
        Guidance {
            cond: self.cond,
            uncond: self.uncond,
            rule,
        }
    }

    /// The rule (and its state).
    pub fn rule_ref(&self) -> &R {
        &self.rule
    }

    /// The wrapped models.
    pub fn into_inner(self) -> (C, U) {
        (self.cond, self.uncond)
    }
}

impl<F, D, C, U, R> Denoiser<F, D> for Guidance<C, U, R>
where
    F: Float,
    D: Dimension,
    C: Denoiser<F, D>,
    U: Denoiser<F, D>,
    R: GuidanceRule,
{
    fn prediction(&self) -> Prediction {
        self.cond.prediction()
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        Ok(self.denoise_call(x, &lone_call(level))?.output)
    }

    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        self.rule.check()?;
        if self.cond.prediction() != self.uncond.prediction() {
            return Err("the conditional and unconditional models predict different things".into());
        }
        let c = self.cond.denoise(x.view(), &call.level)?;
        let u = if self.rule.needs_uncond(call) {
            Some(self.uncond.denoise(x.view(), &call.level)?)
        } else {
            None
        };
        apply(&mut self.rule, x, call, self.cond.prediction(), c, u)
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
pub struct SharedGuidance<M, R = Cfg> {
    model: M,
    rule: R,
}

impl<M> SharedGuidance<M> {
    /// Classifier-free guidance through `model`'s two branches with the given scale.
    pub fn new(model: M, scale: f64) -> Self {
        SharedGuidance {
            model,
            rule: Cfg::new(scale),
        }
    }

    /// Guidance rescale `phi` in [0, 1] (see [`Guidance::rescale`]).
    pub fn rescale(mut self, phi: f64) -> Self {
        self.rule = self.rule.rescale(phi);
        self
    }
}

impl<M, R> SharedGuidance<M, R> {
    /// Guidance through `model`'s two branches combined by `rule`.
    pub fn with_rule(model: M, rule: R) -> Self {
        SharedGuidance { model, rule }
    }

    /// The same model with another rule.
    pub fn rule<R2>(self, rule: R2) -> SharedGuidance<M, R2> {
        SharedGuidance {
            model: self.model,
            rule,
        }
    }

    /// The rule (and its state).
    pub fn rule_ref(&self) -> &R {
        &self.rule
    }

    /// The wrapped model.
    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<F: Float, D: Dimension, M: BranchDenoiser<F, D>, R: GuidanceRule> Denoiser<F, D>
    for SharedGuidance<M, R>
{
    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        Ok(self.denoise_call(x, &lone_call(level))?.output)
    }

    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        self.rule.check()?;
        let c = self
            .model
            .denoise_branch(x.view(), &call.level, Branch::Conditional)?;
        let u = if self.rule.needs_uncond(call) {
            Some(
                self.model
                    .denoise_branch(x.view(), &call.level, Branch::Unconditional)?,
            )
        } else {
            None
        };
        apply(&mut self.rule, x, call, self.model.prediction(), c, u)
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
pub struct BatchedGuidance<M, R = Cfg> {
    model: M,
    rule: R,
}

impl<M> BatchedGuidance<M> {
    /// Classifier-free guidance through one doubled-batch call of `model`.
    pub fn new(model: M, scale: f64) -> Self {
        BatchedGuidance {
            model,
            rule: Cfg::new(scale),
        }
    }

    /// Guidance rescale `phi` in [0, 1].
    pub fn rescale(mut self, phi: f64) -> Self {
        self.rule = self.rule.rescale(phi);
        self
    }
}

impl<M, R> BatchedGuidance<M, R> {
    /// Guidance through one doubled-batch call of `model`, combined by `rule`.
    pub fn with_rule(model: M, rule: R) -> Self {
        BatchedGuidance { model, rule }
    }

    /// The same model with another rule.
    pub fn rule<R2>(self, rule: R2) -> BatchedGuidance<M, R2> {
        BatchedGuidance {
            model: self.model,
            rule,
        }
    }

    /// The rule (and its state).
    pub fn rule_ref(&self) -> &R {
        &self.rule
    }

    /// The wrapped model.
    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<F: Float, D: Dimension, M: Denoiser<F, D>, R: GuidanceRule> Denoiser<F, D> for BatchedGuidance<M, R> {
    fn prediction(&self) -> Prediction {
        self.model.prediction()
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        Ok(self.denoise_call(x, &lone_call(level))?.output)
    }

    /// One call on `[x; x]` (the model's convention places the unconditional half first); the
    /// unconditional half is used only where the rule needs it.
    fn denoise_call(&mut self, x: ArrayView<'_, F, D>, call: &Call) -> Result<Guided<F, D>, BoxError> {
        self.rule.check()?;
        if x.ndim() == 0 {
            return Err("batched guidance needs a batch axis (axis 0)".into());
        }
        let xd = x.view().into_dyn();
        let doubled = concatenate(Axis(0), &[xd.view(), xd.view()])?;
        let doubled = doubled.into_dimensionality::<D>()?;
        let out = self.model.denoise(doubled.view(), &call.level)?;
        if out.shape() != doubled.shape() {
            return Err(Box::new(Error::Shape {
                what: "batched guidance output (doubled batch)",
                expected: doubled.shape().to_vec(),
                got: out.shape().to_vec(),
            }));
        }
        let n = x.shape()[0];
        let od = out.into_dyn();
        let half = |r: std::ops::Range<usize>| {
            od.slice_axis(Axis(0), r.into())
                .to_owned()
                .into_dimensionality::<D>()
        };
        let c = half(n..2 * n)?;
        let u = if self.rule.needs_uncond(call) {
            Some(half(0..n)?)
        } else {
            None
        };
        apply(&mut self.rule, x, call, self.model.prediction(), c, u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn combine(
        c: ndarray::Array2<f64>,
        u: &ndarray::Array2<f64>,
        scale: f64,
        rescale: f64,
    ) -> ndarray::Array2<f64> {
        let mut out = c;
        let mut u = u.clone();
        let x = ndarray::Array2::<f64>::zeros(out.raw_dim());
        let ctx = Context::new(
            x.view(),
            lone_call(&NoiseLevel::from_alpha_bar(1.0, 0.5)),
            Prediction::Epsilon,
        );
        Cfg::new(scale)
            .rescale(rescale)
            .combine(&ctx, out.view_mut(), Some(u.view_mut()))
            .unwrap();
        out
    }

    #[test]
    fn rescale_matches_diffusers_formula() {
        use super::cfg::unbiased_std;
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
