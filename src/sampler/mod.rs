//! Samplers: the [`Sampler`] trait, the step-by-step [`Run`], and one module per algorithm,
//! grouped by family.
//!
//! Every sampler is written once in `(alpha, sigma)` form around the model's estimate of `x0`,
//! so any sampler works with any schedule, grid and [`Prediction`](crate::Prediction) type. Two
//! ways to drive one:
//!
//! * [`Sampler::sample`] with a [`Denoiser`](crate::Denoiser): one call, noise to data;
//! * [`Sampler::start`] and a [`Run`]: the sampler asks for a level, the caller answers with the
//!   model output — for models that cannot sit behind a trait (async, GPU queues), progress
//!   bars, previews, cancellation. A run owns its noise source and can be stored and moved.
//!
//! ```
//! use diffusion_samplers::prelude::*;
//! use ndarray::Array2;
//!
//! let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
//! let grid = schedule.grid(20, Spacing::Leading { offset: 0 })?;
//! let mut model = GaussianMixture::gaussian(vec![1.0, -1.0], vec![0.1, 0.1])?;
//! let mut noise = SeededNoise::new(0);
//! let x: Array2<f32> = grid.initial_sample((4, 2), &mut noise)?;
//! // Step by step: the caller runs the model.
//! let mut run = Ddim::new().start(x, &grid, Prediction::Epsilon, noise)?;
//! while let Some(req) = run.request() {
//!     let out = model.denoise(req.x, &req.level).unwrap();
//!     run.respond(out)?;
//! }
//! let sample = run.into_sample();
//! assert!((sample[[0, 0]] - 1.0).abs() < 1.5);
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```
//!
//! Layout: `core/` holds the machinery every sampler shares (the trait, [`Run`], the generic
//! [`State`], walking the grid, history, fused kernels, x0 policy, churn, noise); each family
//! directory holds one file per method — its options and its update:
//!
//! | family | samplers |
//! |---|---|
//! | `ancestral` (first order, with or without noise) | [`Ddpm`], [`Ddim`], [`Euler`], [`EulerAncestral`] |
//! | `runge_kutta` (two model calls per step) | [`Heun`], [`Dpm2`], [`Dpm2Ancestral`], [`DpmPp2sAncestral`], [`Restart`] |
//! | `exponential` (exponential integrators in log-SNR) | [`DpmSolver`], [`DpmSolverSinglestep`], [`UniPc`], [`FittedMultistep`] |
//! | `linear_multistep` (Adams methods) | [`Lms`], [`Deis`], [`Pndm`], [`Ipndm`], [`EdmIpndm`], [`EdmDeis`], [`GradientEstimation`] |
//! | `consistency` | [`Lcm`], [`Tcd`] |
//! | `cfg_pp` (CFG++: the unconditional branch renoises) | [`EulerCfgPp`], [`DpmPp2sAncestralCfgPp`], [`DpmPp2mCfgPp`], [`CfgPpUd10Ab`] (and [`ResMultistep::cfg_pp`], [`GradientEstimation::cfg_pp`]) |

#[macro_use]
mod fused;

mod ancestral;
mod any;
mod cfg_pp;
mod consistency;
pub(crate) mod core;
mod exponential;
mod linear_multistep;
mod runge_kutta;

pub use self::core::coefs::AncestralSplit;
pub use self::core::x0::Thresholding;
#[doc(hidden)]
pub use self::core::{Core, Input, Method, Outcome, Step};
pub use self::core::{Estimate, Expecting, Progress, Request, Run, Sampler, SamplerState, Spares, State};
pub use ancestral::{Ddim, Ddpm, DdpmVariance, Euler, EulerAncestral};
pub use any::{AnySampler, AnyState};
pub use cfg_pp::{CfgPpUd10Ab, DpmPp2mCfgPp, DpmPp2sAncestralCfgPp, EulerCfgPp};
pub use consistency::{Lcm, Tcd};
pub(crate) use exponential::dpmpp_coefs;
pub use exponential::{
    AdaptiveInfo, DpmAdaptive, DpmAdaptiveState, DpmFast, DpmPpSde, DpmSolver, DpmSolverSinglestep, ErSde,
    ErSdeScaler, FastVars, FittedMultistep, ResMultistep, SaSolver, SaVars, Seeds2, Seeds3, SeedsSolver,
    SolverType, ThirdOrder, UniPc, UniPcVariant,
};
pub use linear_multistep::{Deis, DeisVars, EdmDeis, EdmIpndm, GradientEstimation, Ipndm, Lms, Pndm};
pub use runge_kutta::{
    Dpm2, Dpm2Ancestral, DpmPp2sAncestral, Heun, HeunPp2, Restart, RestartInterval, RestartState,
};

use self::core::state::impl_sampler;

impl_sampler!(
    Ddpm,
    Ddim,
    Euler,
    EulerAncestral,
    Heun,
    Dpm2,
    Dpm2Ancestral,
    DpmPp2sAncestral,
    DpmSolver,
    DpmSolverSinglestep,
    UniPc,
    Lms,
    Deis,
    Pndm,
    Ipndm,
    Lcm,
    Tcd,
    EdmIpndm,
    EdmDeis,
    GradientEstimation,
    HeunPp2,
    ResMultistep,
    DpmPpSde,
    Seeds2,
    Seeds3,
    ErSde,
    SaSolver,
    EulerCfgPp,
    DpmPp2sAncestralCfgPp,
    DpmPp2mCfgPp,
    CfgPpUd10Ab,
    FittedMultistep,
);

/// The state of a run of each sampler (the generic [`State`] of its method).
macro_rules! state_aliases {
    ($($alias:ident = $ty:ty),* $(,)?) => {$(
        #[doc = concat!("The state of a [`", stringify!($ty), "`] run.")]
        pub type $alias<F, D> = State<F, D, $ty>;
    )*};
}

state_aliases!(
    DdpmState = Ddpm,
    DdimState = Ddim,
    EulerState = Euler,
    EulerAncestralState = EulerAncestral,
    HeunState = Heun,
    Dpm2State = Dpm2,
    Dpm2AncestralState = Dpm2Ancestral,
    DpmPp2sAncestralState = DpmPp2sAncestral,
    DpmSolverState = DpmSolver,
    SinglestepState = DpmSolverSinglestep,
    UniPcState = UniPc,
    LmsState = Lms,
    DeisState = Deis,
    PndmState = Pndm,
    IpndmState = Ipndm,
    LcmState = Lcm,
    TcdState = Tcd,
    EdmIpndmState = EdmIpndm,
    EdmDeisState = EdmDeis,
    GradientEstimationState = GradientEstimation,
    HeunPp2State = HeunPp2,
    ResMultistepState = ResMultistep,
    DpmPpSdeState = DpmPpSde,
    Seeds2State = Seeds2,
    Seeds3State = Seeds3,
    ErSdeState = ErSde,
    SaSolverState = SaSolver,
    DpmFastState = DpmFast,
    EulerCfgPpState = EulerCfgPp,
    DpmPp2sAncestralCfgPpState = DpmPp2sAncestralCfgPp,
    DpmPp2mCfgPpState = DpmPp2mCfgPp,
    CfgPpUd10AbState = CfgPpUd10Ab,
    FittedMultistepState = FittedMultistep,
);
