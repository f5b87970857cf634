//! # diffusion-samplers
//!
//! Noise schedules, the forward (noising) process and samplers for denoising diffusion models,
//! generic over [`ndarray`] arrays (`f32` or `f64`, any dimension) and tied to no ML framework.
//! Implement one trait, [`Denoiser`], for your model and every sampler works with it,
//! numerically matching the Python references (diffusers, k-diffusion) where those are right.
//!
//! ## One idea
//!
//! Every schedule is a path of noise levels [`NoiseLevel`] `(t, alpha, sigma)` with
//! `x_t = alpha x_0 + sigma eps`. A [`Grid`] is the list of levels a sampler walks, noisiest
//! first. The denoiser always sees `x` exactly as its model was trained (no `scale_model_input`
//! to forget) plus the level; samplers are written once in `(alpha, sigma)` form around the
//! model's x0 estimate, so any sampler works with any schedule, prediction type and grid.
//!
//! ## Quick start
//!
//! ```
//! use diffusion_samplers::prelude::*;
//! use ndarray::Array2;
//!
//! // The model: here the exact denoiser of a two-mode Gaussian mixture in 2-D, predicting
//! // epsilon like most trained models. Your model implements `Denoiser` the same way.
//! let mut model = GaussianMixture::new(
//!     vec![0.5, 0.5],
//!     vec![vec![-2.0, 0.0], vec![2.0, 0.0]],
//!     vec![vec![0.1, 0.1], vec![0.1, 0.1]],
//! )?;
//!
//! // The schedule it was trained with, and a 50-step grid over it.
//! let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
//! let grid = schedule.grid(50, Spacing::Leading { offset: 0 })?;
//!
//! // Start from noise at the grid's first level (in the model's own scaling) and sample.
//! let mut noise = SeededNoise::new(0);
//! let x: Array2<f32> = grid.initial_sample((256, 2), &mut noise)?;
//! let samples = Ddim::new().sample(&mut model, x, &grid, &mut noise)?;
//!
//! let right = samples.column(0).iter().filter(|&&v| v > 0.0).count();
//! assert!((80..=176).contains(&right)); // about half in each mode
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Map of the crate
//!
//! | module | what |
//! |---|---|
//! | [`schedule`] | [`NoiseSchedule`] (linear, scaled-linear, cosine, sigmoid, Laplace, exp, zero terminal SNR, custom betas), [`FlowSchedule`] (rectified flow, shift), [`NoiseLevel`] |
//! | [`grid`] | [`Grid`], [`Spacing`] (leading, trailing, linspace, DPM linspace, Karras, exponential, Beta, LCM), [`FinalLevel`], [`ScheduleFamily`]; ComfyUI's [`ModelSampling`] and [`ComfyScheduler`]s; published tables (Align Your Steps, GITS, OptimalSteps) |
//! | [`forward`] | [`ForwardProcess`]: noising, posteriors, training targets and loss weights; [`Training`](forward::Training) batches for continuous VP / VE, EDM and rectified-flow training; timestep / sigma [`Density`](forward::Density)s (SD3, k-diffusion) with stratified and torch-seeded draws |
//! | [`precond`] | EDM preconditioning: a raw network as a [`Denoiser`] ([`Preconditioned`](precond::Preconditioned)) and its training target and weight |
//! | [`likelihood`] | bits per dimension without autograd: DDPM's variational bound ([`Vlb`](likelihood::Vlb)) and the probability-flow ODE NLL ([`OdeNll`](likelihood::OdeNll), Hutchinson trace through finite-difference or exact JVPs) |
//! | [`denoiser`] | [`Denoiser`], [`Prediction`] and conversions, [`FnDenoiser`] |
//! | [`guidance`] | guidance wrappers — [`Guidance`] (two models), [`SharedGuidance`] (one network, both [`Branch`]es), [`BatchedGuidance`] (one doubled-batch call) — with a [`GuidanceRule`](guidance::GuidanceRule): CFG (rescale), intervals, APG, CFG-Zero*, TCFG, MAMBO-G, FDG, FreSca, CFGNorm, epsilon scaling, Mahiro, Perp-Neg, dual CFG |
//! | [`noise`] | [`NoiseSource`] (any `rand` RNG), [`ReplayNoise`], [`SeededNoise`] (fast, keyed by seed / step / block; [`per_element`](SeededNoise::per_element) for batch-invariant seeds), [`BrownianNoise`](noise::BrownianNoise) (interval increments of a Brownian motion over sigma); the Python tools' own streams: [`TorchGenerator`](noise::TorchGenerator) (`torch.Generator("cpu").manual_seed`, bit for bit), [`TorchBrownianTree`](noise::TorchBrownianTree) (torchsde's tree, as k-diffusion and ComfyUI use it), and the seed conventions of diffusers, ComfyUI and k-diffusion |
//! | [`sampler`] | [`Sampler`], the step-by-step [`Run`] (owns its noise; storable), progress callbacks ([`Sampler::sample_with`], [`Progress`]), [`AnySampler`], [`Expecting`] (a sampler that refuses models of another prediction type), and the samplers below |
//! | [`Preset`] | every ComfyUI sampler × scheduler name (`"dpmpp_2m_sde_gpu_karras"`) and AUTOMATIC1111's (`"Euler a"`) → ComfyUI's sampler + grid |
//! | `config` | (feature `serde`) diffusers' `scheduler_config.json` → schedule, grid and sampler, as diffusers builds them |
//! | [`edit`] | img2img / SDEdit, inpainting, DDIM inversion |
//! | [`analytic`] | exact Gaussian-mixture denoisers for tests and examples |
//! | [`tune`] | grids tuned on the user's own model for a call budget |
//!
//! Samplers (each with diffusers' defaults from `new()`): [`Ddpm`], [`Ddim`], [`Euler`],
//! [`EulerAncestral`], [`Heun`], [`Dpm2`], [`Dpm2Ancestral`], [`Lms`], [`Pndm`], [`Ipndm`],
//! [`Deis`], [`DpmSolver`] (DPM-Solver++ multistep, ODE and SDE), [`DpmSolverSinglestep`],
//! [`DpmPp2sAncestral`], [`UniPc`], [`Lcm`]; from k-diffusion and ComfyUI: [`DpmFast`],
//! [`DpmAdaptive`], [`DpmPpSde`], [`ResMultistep`], [`Seeds2`], [`Seeds3`], [`ErSde`],
//! [`SaSolver`], [`GradientEstimation`], [`HeunPp2`], [`EdmIpndm`], [`EdmDeis`]; from
//! AUTOMATIC1111: [`Restart`]. Measured
//! convergence orders and an error-vs-NFE table are in `docs/samplers.md`.
//!
//! Start a run from [`Grid::initial_sample`]: the starting noise at the grid's first level in
//! the model's own scaling, for every schedule family. On schedules whose last training level is
//! not pure noise (Stable Diffusion's: `alpha_T = 0.068`), deterministic samplers started from
//! pure noise miss the data mean by about `alpha_T` of it (for unit-variance data); schedules
//! with [zero terminal SNR](NoiseSchedule::with_zero_terminal_snr) do not.
//!
//! Errors are one typed enum, [`Error`]; bad input is reported, never a panic (step counts are
//! bounded by [`MAX_STEPS`]), and errors inside a run name the step, the level and the cause.
//!
//! ## Features
//!
//! * `serde`: the `config` module (reads and writes diffusers' scheduler configs).
//! * `rayon`: large arrays (2^20 elements and up) updated, and [`SeededNoise`] drawn, in
//!   parallel blocks; results are bit-identical for any number of threads.
//!
//! ## With a framework model
//!
//! `examples/candle-unet` (its own crate) implements [`Denoiser`] for a `candle` U-Net: convert
//! the `ndarray` input to the framework's tensor, run the model, convert the output back. The
//! same dozen lines work for tch, burn or ONNX Runtime. Models whose call cannot sit behind a
//! trait (async, GPU queues) use the step-by-step [`Run`].

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::float_cmp)]

pub mod analytic;
#[cfg(feature = "serde")]
pub mod config;
pub mod denoiser;
pub mod edit;
mod error;
mod float;
pub mod forward;
pub mod grid;
pub mod guidance;
pub mod learned;
mod level;
pub mod likelihood;
pub mod noise;
mod par;
pub mod parallel;
pub mod precond;
mod prediction;
mod preset;
pub mod sampler;
pub mod schedule;
pub mod score_sde;
mod special;
mod text;
pub mod tune;

// Inlined, so that the crate root lists every struct, enum, trait and function it offers.
#[doc(inline)]
pub use denoiser::{Call, Denoiser, FnDenoiser, Guided, Linear, Prediction};
#[doc(inline)]
pub use error::{BoxError, Error, MAX_STEPS, Result};
#[doc(inline)]
pub use float::Float;
#[doc(inline)]
pub use forward::{ForwardProcess, LossWeighting};
#[doc(inline)]
pub use grid::{
    ComfyScheduler, FinalLevel, Grid, ModelSampling, ScheduleFamily, Spacing, exponential_sigmas,
    karras_sigmas,
};
#[doc(inline)]
pub use guidance::{BatchedGuidance, Branch, BranchDenoiser, Guidance, SharedGuidance};
#[doc(inline)]
pub use level::NoiseLevel;
#[doc(inline)]
pub use noise::{NoiseSource, ReplayNoise, SeededNoise};
#[doc(inline)]
pub use preset::{PRESETS, Preset, PresetSchedule, PresetSigmas};
#[doc(inline)]
pub use sampler::*;
#[doc(inline)]
pub use schedule::{FlowSchedule, FlowShift, NoiseSchedule};

/// Everything a typical user needs, in one `use diffusion_samplers::prelude::*`: the traits,
/// every sampler, schedules and grids, noise sources, guidance, the editing workflows (`edit`)
/// and the error types.
pub mod prelude {
    pub use crate::analytic::GaussianMixture;
    pub use crate::edit;
    pub use crate::noise::standard_normal;
    pub use crate::{
        AnySampler, BatchedGuidance, BoxError, Branch, BranchDenoiser, Ddim, Ddpm, DdpmVariance, Deis,
        Denoiser, Dpm2, Dpm2Ancestral, DpmPp2sAncestral, DpmSolver, DpmSolverSinglestep, Error, Euler,
        EulerAncestral, FinalLevel, Float, FlowSchedule, FlowShift, FnDenoiser, ForwardProcess, Grid,
        Guidance, Heun, Ipndm, Lcm, Lms, LossWeighting, NoiseLevel, NoiseSchedule, NoiseSource, Pndm,
        Prediction, Preset, ReplayNoise, Run, Sampler, ScheduleFamily, SeededNoise, SharedGuidance, Spacing,
        Tcd, Thresholding, UniPc,
    };
}
