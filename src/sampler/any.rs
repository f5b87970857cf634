//! [`AnySampler`]: one type for every sampler, chosen at run time (by a preset name or a
//! diffusers config).

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use super::*;
use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;

macro_rules! any_sampler {
    ($($variant:ident($ty:ty) => $state:ident),* $(,)?) => {
        /// Any of the crate's samplers, chosen at run time — what [`Preset`](crate::Preset)
        /// and the diffusers config reader return. It is a [`Sampler`] itself; each sampler
        /// converts into it with `From`.
        ///
        /// ```
        /// use diffusion_samplers::prelude::*;
        /// use diffusion_samplers::AnySampler;
        /// let s: AnySampler = DpmSolver::new().order(3).into();
        /// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
        /// assert_eq!(s.model_calls(&grid), 10);
        /// # Ok::<(), diffusion_samplers::Error>(())
        /// ```
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum AnySampler {
            $(
                #[doc = concat!("[`", stringify!($variant), "`]")]
                $variant($ty),
            )*
        }

        /// The state of an [`AnySampler`] run.
        #[derive(Clone, Debug)]
        #[non_exhaustive]
        pub enum AnyState<F: Float, D: Dimension> {
            $(
                #[doc = concat!("A [`", stringify!($variant), "`] run.")]
                $variant($state<F, D>),
            )*
        }

        $(
            impl From<$ty> for AnySampler {
                fn from(s: $ty) -> Self {
                    AnySampler::$variant(s)
                }
            }
        )*

        impl AnySampler {
            /// The sampler's type name (`"DpmSolver"`, `"EulerAncestral"`, ...).
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AnySampler::$variant(_) => stringify!($variant),)*
                }
            }
        }

        impl Sampler for AnySampler {
            type State<F: Float, D: Dimension> = AnyState<F, D>;

            fn validate(&self) -> Result<()> {
                match self {
                    $(AnySampler::$variant(s) => s.validate(),)*
                }
            }

            fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
                &self,
                x: Array<F, D>,
                grid: &Grid,
                noise: &mut N,
            ) -> Result<AnyState<F, D>> {
                match self {
                    $(AnySampler::$variant(s) => s.init(x, grid, noise).map(AnyState::$variant),)*
                }
            }

            fn model_calls(&self, grid: &Grid) -> usize {
                match self {
                    $(AnySampler::$variant(s) => s.model_calls(grid),)*
                }
            }

            fn exact_model_calls(&self, grid: &Grid) -> Option<usize> {
                match self {
                    $(AnySampler::$variant(s) => s.exact_model_calls(grid),)*
                }
            }
        }

        impl<F: Float, D: Dimension> SamplerState<F, D> for AnyState<F, D> {
            fn pending(&self) -> Option<Request<'_, F, D>> {
                match self {
                    $(AnyState::$variant(s) => s.pending(),)*
                }
            }

            fn advance<N: NoiseSource<F> + ?Sized>(
                &mut self,
                est: Estimate<F, D>,
                noise: &mut N,
            ) -> Result<Spares<F, D>> {
                match self {
                    $(AnyState::$variant(s) => s.advance(est, noise),)*
                }
            }

            fn sample(&self) -> ArrayView<'_, F, D> {
                match self {
                    $(AnyState::$variant(s) => s.sample(),)*
                }
            }

            fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
                match self {
                    $(AnyState::$variant(s) => s.sample_mut(),)*
                }
            }

            fn level(&self) -> NoiseLevel {
                match self {
                    $(AnyState::$variant(s) => s.level(),)*
                }
            }

            fn into_sample(self) -> Array<F, D> {
                match self {
                    $(AnyState::$variant(s) => s.into_sample(),)*
                }
            }

            fn buffers_held(&self) -> usize {
                match self {
                    $(AnyState::$variant(s) => s.buffers_held(),)*
                }
            }
        }
    };
}

any_sampler! {
    Ddpm(Ddpm) => DdpmState,
    Ddim(Ddim) => DdimState,
    Euler(Euler) => EulerState,
    EulerAncestral(EulerAncestral) => EulerAncestralState,
    Heun(Heun) => HeunState,
    Dpm2(Dpm2) => Dpm2State,
    Dpm2Ancestral(Dpm2Ancestral) => Dpm2AncestralState,
    DpmSolver(DpmSolver) => DpmSolverState,
    DpmPp2sAncestral(DpmPp2sAncestral) => DpmPp2sAncestralState,
    DpmSolverSinglestep(DpmSolverSinglestep) => SinglestepState,
    UniPc(UniPc) => UniPcState,
    Deis(Deis) => DeisState,
    Lms(Lms) => LmsState,
    Pndm(Pndm) => PndmState,
    Ipndm(Ipndm) => IpndmState,
    Lcm(Lcm) => LcmState,
    Tcd(Tcd) => TcdState,
    EdmIpndm(EdmIpndm) => EdmIpndmState,
    EdmDeis(EdmDeis) => EdmDeisState,
    GradientEstimation(GradientEstimation) => GradientEstimationState,
    HeunPp2(HeunPp2) => HeunPp2State,
    ResMultistep(ResMultistep) => ResMultistepState,
    DpmPpSde(DpmPpSde) => DpmPpSdeState,
    Seeds2(Seeds2) => Seeds2State,
    Seeds3(Seeds3) => Seeds3State,
    ErSde(ErSde) => ErSdeState,
    SaSolver(SaSolver) => SaSolverState,
    DpmFast(DpmFast) => DpmFastState,
    DpmAdaptive(DpmAdaptive) => DpmAdaptiveState,
    EulerCfgPp(EulerCfgPp) => EulerCfgPpState,
    DpmPp2sAncestralCfgPp(DpmPp2sAncestralCfgPp) => DpmPp2sAncestralCfgPpState,
    DpmPp2mCfgPp(DpmPp2mCfgPp) => DpmPp2mCfgPpState,
    CfgPpUd10Ab(CfgPpUd10Ab) => CfgPpUd10AbState,
    Restart(Restart) => RestartState,
    FittedMultistep(FittedMultistep) => FittedMultistepState,
}
