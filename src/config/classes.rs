//! The diffusers scheduler classes this crate reproduces, and the `__init__` keys of each.

/// The diffusers scheduler classes this crate reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchedulerClass {
    /// `DDPMScheduler` → [`Ddpm`](crate::Ddpm).
    Ddpm,
    /// `DDIMScheduler` → [`Ddim`](crate::Ddim).
    Ddim,
    /// `PNDMScheduler` → [`Pndm`](crate::Pndm).
    Pndm,
    /// `EulerDiscreteScheduler` → [`Euler`](crate::Euler).
    Euler,
    /// `EulerAncestralDiscreteScheduler` → [`EulerAncestral`](crate::EulerAncestral).
    EulerAncestral,
    /// `HeunDiscreteScheduler` → [`Heun`](crate::Heun).
    Heun,
    /// `KDPM2DiscreteScheduler` → [`Dpm2`](crate::Dpm2).
    Kdpm2,
    /// `KDPM2AncestralDiscreteScheduler` → [`Dpm2Ancestral`](crate::Dpm2Ancestral).
    Kdpm2Ancestral,
    /// `LMSDiscreteScheduler` → [`Lms`](crate::Lms).
    Lms,
    /// `DPMSolverMultistepScheduler` → [`DpmSolver`](crate::DpmSolver).
    DpmMultistep,
    /// `DPMSolverSinglestepScheduler` → [`DpmSolverSinglestep`](crate::DpmSolverSinglestep).
    DpmSinglestep,
    /// `UniPCMultistepScheduler` → [`UniPc`](crate::UniPc).
    UniPc,
    /// `DEISMultistepScheduler` → [`Deis`](crate::Deis).
    Deis,
    /// `LCMScheduler` → [`Lcm`](crate::Lcm).
    Lcm,
    /// `FlowMatchEulerDiscreteScheduler` → [`Euler`](crate::Euler) on a [`FlowSchedule`](crate::FlowSchedule).
    FlowMatchEuler,
    /// `FlowMatchHeunDiscreteScheduler` → [`Heun`](crate::Heun) on a [`FlowSchedule`](crate::FlowSchedule).
    FlowMatchHeun,
    /// `CogVideoXDDIMScheduler` → [`Ddim`](crate::Ddim) (no clipping) on the SNR-shifted schedule
    /// ([`NoiseSchedule::with_snr_shift`](crate::NoiseSchedule::with_snr_shift)).
    CogVideoXDdim,
    /// `CogVideoXDPMScheduler` → second-order SDE [`DpmSolver`](crate::DpmSolver) on the
    /// SNR-shifted schedule.
    CogVideoXDpm,
    /// `EDMEulerScheduler` → [`Euler`](crate::Euler) on EDM's variance-exploding sigmas, for a
    /// network wrapped in [`Preconditioned`](crate::precond::Preconditioned).
    EdmEuler,
    /// `EDMDPMSolverMultistepScheduler` → [`DpmSolver`](crate::DpmSolver) on EDM's sigmas, for a
    /// [`Preconditioned`](crate::precond::Preconditioned) network.
    EdmDpm,
    /// `CosineDPMSolverMultistepScheduler` (Stable Audio) → SDE [`DpmSolver`](crate::DpmSolver)
    /// on its sigmas, for a [`Preconditioned`](crate::precond::Preconditioned) network
    /// (`c_noise = atan(sigma) 2 / pi`); diffusers draws its noise from a Brownian tree
    /// ([`TorchBrownianTree`](crate::noise::TorchBrownianTree) over `[0.3, 500]` seeded with the
    /// generator's seed reproduces it: a seeded run agrees with diffusers to ~1e-6 on diffusers'
    /// float32 sigma list and to ~1e-3 on this loader's float64 one, whose times can fall on
    /// the other side of torchsde's 6-decimal rounding; tests/seed_edm.rs).
    CosineDpm,
    /// `TCDScheduler` → [`Tcd`](crate::Tcd) on the LCM grid ending at training timestep 0.
    Tcd,
    /// `CMStochasticIterativeScheduler` → [`Lcm`](crate::Lcm) with consistency models'
    /// renoising, for a network wrapped in [`Preconditioned`](crate::precond::Preconditioned)
    /// with [`EdmPrecond::consistency`](crate::precond::EdmPrecond::consistency).
    CmStochasticIterative,
    /// `FlowMatchLCMScheduler` → [`Lcm`](crate::Lcm) without boundary condition on the
    /// `FlowMatchEulerDiscreteScheduler` grid.
    FlowMatchLcm,
    /// `DPMSolverSDEScheduler` → [`DpmPpSde`](crate::DpmPpSde) (k-diffusion's `dpmpp_sde`); its
    /// Brownian-tree noise is [`TorchBrownianTree`](crate::noise::TorchBrownianTree) seeded with
    /// `noise_sampler_seed` (see [`DiffusersConfig::noise_sampler_seed`](super::DiffusersConfig::noise_sampler_seed)).
    DpmSde,
    /// `LTXEulerAncestralRFScheduler` (LTX-Video) → [`EulerAncestral`](crate::EulerAncestral)
    /// with the rectified-flow noise split on the `FlowMatchEulerDiscreteScheduler` grid of the
    /// same file.
    LtxEulerAncestralRf,
    /// `SCMScheduler` (sCM, Sana-Sprint) → [`Lcm`](crate::Lcm) without boundary condition on
    /// its TrigFlow times, in the rectified-flow form Sana-Sprint's pipeline evaluates the
    /// transformer in (see [`DiffusersConfig::grid`](super::DiffusersConfig::grid)).
    Scm,
    /// `SASolverScheduler` → [`SaSolver`](crate::SaSolver) with diffusers' `tau` rule and order
    /// ramp, on the DPM-Solver grid ending at the first training timestep.
    SaSolver,
    /// `DDPMWuerstchenScheduler` (Würstchen, Stable Cascade) → [`Ddpm`](crate::Ddpm) on its
    /// continuous cosine schedule, no noise on the last step.
    DdpmWuerstchen,
    /// `UnCLIPScheduler` (Karlo / Kandinsky 2.1 decoders) → [`Ddpm`](crate::Ddpm) on the cosine
    /// schedule with rounded linspace steps (`fixed_small_log`; `learned_range` through
    /// [`DiffusersConfig::ddpm_learned_from_json`](super::DiffusersConfig::ddpm_learned_from_json)).
    UnClip,
    /// `ConsistencyDecoderScheduler` (OpenAI's consistency decoder, `ConsistencyDecoderVAE`) →
    /// [`Lcm`](crate::Lcm) without boundary condition at timesteps 1008 and 512 of the cosine
    /// schedule, for a network wrapped in [`Preconditioned`](crate::precond::Preconditioned).
    ConsistencyDecoder,
    /// `MiniMaxH3Scheduler` → [`Euler`](crate::Euler) on its shifted flow sigmas; its model's
    /// data-ward velocity is the negated flow output (see
    /// [`DiffusersConfig::prediction`](super::DiffusersConfig::prediction)).
    MiniMaxH3,
}

pub(super) use SchedulerClass as C;

pub(super) const CLASSES: [(&str, SchedulerClass); 34] = [
    ("DDPMScheduler", C::Ddpm),
    ("DDIMScheduler", C::Ddim),
    ("PNDMScheduler", C::Pndm),
    ("EulerDiscreteScheduler", C::Euler),
    ("EulerAncestralDiscreteScheduler", C::EulerAncestral),
    ("HeunDiscreteScheduler", C::Heun),
    ("KDPM2DiscreteScheduler", C::Kdpm2),
    ("KDPM2AncestralDiscreteScheduler", C::Kdpm2Ancestral),
    ("LMSDiscreteScheduler", C::Lms),
    ("DPMSolverMultistepScheduler", C::DpmMultistep),
    ("DPMSolverSinglestepScheduler", C::DpmSinglestep),
    ("UniPCMultistepScheduler", C::UniPc),
    ("DEISMultistepScheduler", C::Deis),
    ("LCMScheduler", C::Lcm),
    ("FlowMatchEulerDiscreteScheduler", C::FlowMatchEuler),
    ("FlowMatchHeunDiscreteScheduler", C::FlowMatchHeun),
    ("CogVideoXDDIMScheduler", C::CogVideoXDdim),
    ("CogVideoXDPMScheduler", C::CogVideoXDpm),
    ("EDMEulerScheduler", C::EdmEuler),
    ("EDMDPMSolverMultistepScheduler", C::EdmDpm),
    ("CosineDPMSolverMultistepScheduler", C::CosineDpm),
    ("TCDScheduler", C::Tcd),
    ("CMStochasticIterativeScheduler", C::CmStochasticIterative),
    ("FlowMatchLCMScheduler", C::FlowMatchLcm),
    ("DPMSolverSDEScheduler", C::DpmSde),
    ("LTXEulerAncestralRFScheduler", C::LtxEulerAncestralRf),
    ("SCMScheduler", C::Scm),
    ("SASolverScheduler", C::SaSolver),
    ("DDPMWuerstchenScheduler", C::DdpmWuerstchen),
    ("UnCLIPScheduler", C::UnClip),
    ("ConsistencyDecoderScheduler", C::ConsistencyDecoder),
    ("MiniMaxH3Scheduler", C::MiniMaxH3),
    // ParaDiGMS' copies of DDPM / DDIM: the same steps (sample them with parallel::Parallel).
    ("DDPMParallelScheduler", C::Ddpm),
    ("DDIMParallelScheduler", C::Ddim),
];

const DISCRETE: &str = "discrete (token) diffusion: the state is a sequence of token ids and the model outputs \
                        logits; this crate samples Gaussian diffusion and flows of real arrays";

/// The other scheduler classes of diffusers 0.42.1 (`diffusers.schedulers`): recognised, not
/// built from a config, and why. Every class diffusers exports is either here or in
/// [`CLASSES`].
pub(super) const NOT_BUILT: &[(&str, &str)] = &[
    ("AmusedScheduler", DISCRETE),
    ("VQDiffusionScheduler", DISCRETE),
    ("BlockRefinementScheduler", DISCRETE),
    ("DiscreteDDIMScheduler", DISCRETE),
    ("EntropyBoundScheduler", DISCRETE),
    (
        "PiflowScheduler",
        "out of scope: one pi-Flow model call returns a policy (several x0 predictions and their \
         weights) that the scheduler integrates between calls, not one output per call",
    ),
    (
        "RFD4ProteinaScheduler",
        "out of scope: protein-structure diffusion of residue frames (rotations and \
         translations), not a Gaussian diffusion of an array",
    ),
    (
        "DDIMInverseScheduler",
        "an inversion, not a sampler: use edit::DdimInversion (with clip_sample(Some(1.0)) for \
         diffusers' default) on the forward DDIM grid",
    ),
    (
        "DPMSolverMultistepInverseScheduler",
        "an inversion, not a sampler: use edit::DpmSolverInversion on the forward grid",
    ),
    (
        "ScoreSdeVeScheduler",
        "a predictor-corrector sampler, not a Sampler: score_sde::PredictorCorrector with \
         PredictorCorrector::diffusers_grid(steps, sigma_min, sigma_max, sampling_eps) reproduces it",
    ),
    (
        "RePaintScheduler",
        "an inpainting workflow, not a Sampler: edit::RePaint (with clip_sample(Some(1.0)) and \
         diffusers_undo(true) for diffusers' behaviour) on the file's beta schedule",
    ),
    (
        "IPNDMScheduler",
        "not built from a config yet: Ipndm on its sine schedule reproduces the update except \
         diffusers' first step from alpha = 0, which puts x_T itself into the history",
    ),
    (
        "KarrasVeScheduler",
        "out of scope: deprecated in diffusers; its update is EDM's stochastic Heun (Heun with \
         s_churn on a VE grid) behind a pipeline-specific model wrapper on a squared sigma grid",
    ),
    (
        "ScoreSdeVpScheduler",
        "out of scope: deprecated in diffusers and used by no pipeline (one Euler-Maruyama step \
         of the VP SDE)",
    ),
    (
        "FlowMapEulerDiscreteScheduler",
        "out of scope: a flow-map model u(x, t, r) takes the target time as a second input, \
         which a Denoiser does not receive",
    ),
    (
        "HeliosScheduler",
        "out of scope: a multi-stage pyramid — the sample is upsampled and renoised with \
         block-correlated noise between stages (pipeline logic); within a stage it is UniPc or \
         Euler on flow levels",
    ),
    (
        "HeliosDMDScheduler",
        "out of scope: Helios' multi-stage pyramid (see HeliosScheduler); within a stage it is \
         Lcm on flow levels with the stage's start latent as the noise",
    ),
];

const BETAS: [&str; 5] = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
];
const THRESH: [&str; 4] = [
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "prediction_type",
];
pub(super) const SIGMAS: [&str; 3] = ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"];
const EDM: [&str; 8] = [
    "sigma_min",
    "sigma_max",
    "sigma_data",
    "sigma_schedule",
    "num_train_timesteps",
    "prediction_type",
    "rho",
    "final_sigmas_type",
];
const DPM_OPTS: [&str; 4] = [
    "solver_order",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
];
const FLOW_DYN: [&str; 8] = [
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "shift_terminal",
    "time_shift_type",
];

impl SchedulerClass {
    /// diffusers' class name (`DDPMParallelScheduler` and `DDIMParallelScheduler` read as
    /// [`Ddpm`](Self::Ddpm) and [`Ddim`](Self::Ddim), whose steps they copy).
    pub fn name(self) -> &'static str {
        CLASSES.iter().find(|(_, c)| *c == self).map_or("?", |(n, _)| n)
    }

    pub(super) fn is_flow(self) -> bool {
        matches!(
            self,
            C::FlowMatchEuler | C::FlowMatchHeun | C::FlowMatchLcm | C::LtxEulerAncestralRf
        )
    }

    /// The EDM-style classes: variance-exploding sigmas, a preconditioned network.
    pub(super) fn is_edm(self) -> bool {
        matches!(
            self,
            C::EdmEuler | C::EdmDpm | C::CosineDpm | C::CmStochasticIterative
        )
    }

    /// The `__init__` parameters of the class in diffusers 0.42.
    pub(super) fn keys(self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = Vec::new();
        if self == C::DdpmWuerstchen {
            k.extend(["scaler", "s"]);
        } else if self == C::MiniMaxH3 {
            k.push("shift");
        } else if self == C::ConsistencyDecoder {
            k.extend(["num_train_timesteps", "sigma_data"]);
        } else if self == C::UnClip {
            k.extend([
                "num_train_timesteps",
                "variance_type",
                "clip_sample",
                "clip_sample_range",
                "prediction_type",
                "beta_schedule",
            ]);
        } else if self == C::Scm {
            k.extend(["num_train_timesteps", "prediction_type", "sigma_data"]);
        } else if self == C::CmStochasticIterative {
            k.extend([
                "num_train_timesteps",
                "sigma_min",
                "sigma_max",
                "sigma_data",
                "s_noise",
                "rho",
                "clip_denoised",
            ]);
        } else if self.is_edm() {
            k.extend(EDM);
        } else if !self.is_flow() {
            k.extend(BETAS);
            k.extend(["prediction_type", "steps_offset"]);
        }
        match self {
            C::Ddpm => k.extend(THRESH.iter().chain(&[
                "variance_type",
                "clip_sample",
                "clip_sample_range",
                "timestep_spacing",
                "rescale_betas_zero_snr",
            ])),
            C::UnClip | C::ConsistencyDecoder | C::MiniMaxH3 => {}
            C::Ddim => k.extend(THRESH.iter().chain(&[
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "timestep_spacing",
                "rescale_betas_zero_snr",
            ])),
            C::Pndm => k.extend(["skip_prk_steps", "set_alpha_to_one", "timestep_spacing"]),
            C::Euler => k.extend(SIGMAS.iter().chain(&[
                "interpolation_type",
                "sigma_min",
                "sigma_max",
                "timestep_spacing",
                "timestep_type",
                "rescale_betas_zero_snr",
                "final_sigmas_type",
            ])),
            C::EulerAncestral => k.extend(["timestep_spacing", "rescale_betas_zero_snr"]),
            C::Heun => {
                k.extend(
                    SIGMAS
                        .iter()
                        .chain(&["clip_sample", "clip_sample_range", "timestep_spacing"]),
                )
            }
            C::Kdpm2 | C::Kdpm2Ancestral | C::Lms => k.extend(SIGMAS.iter().chain(&["timestep_spacing"])),
            C::DpmSde => k.extend(SIGMAS.iter().chain(&["timestep_spacing", "noise_sampler_seed"])),
            C::SaSolver => k.extend(THRESH.iter().chain(&SIGMAS).chain(&[
                "predictor_order",
                "corrector_order",
                "tau_func",
                "algorithm_type",
                "lower_order_final",
                "use_flow_sigmas",
                "flow_shift",
                "lambda_min_clipped",
                "variance_type",
                "timestep_spacing",
            ])),
            C::DpmMultistep | C::DpmSinglestep | C::UniPc | C::Deis => {
                k.extend(THRESH.iter().chain(&SIGMAS).chain(&[
                    "solver_order",
                    "solver_type",
                    "lower_order_final",
                    "use_flow_sigmas",
                    "flow_shift",
                    "use_dynamic_shifting",
                    "time_shift_type",
                ]));
                match self {
                    C::DpmMultistep => k.extend([
                        "algorithm_type",
                        "euler_at_final",
                        "use_lu_lambdas",
                        "final_sigmas_type",
                        "lambda_min_clipped",
                        "variance_type",
                        "timestep_spacing",
                        "rescale_betas_zero_snr",
                    ]),
                    C::DpmSinglestep => k.extend([
                        "algorithm_type",
                        "final_sigmas_type",
                        "lambda_min_clipped",
                        "variance_type",
                    ]),
                    C::UniPc => k.extend([
                        "predict_x0",
                        "disable_corrector",
                        "solver_p",
                        "timestep_spacing",
                        "final_sigmas_type",
                        "rescale_betas_zero_snr",
                        "sigma_min",
                        "sigma_max",
                        "shift_terminal",
                    ]),
                    _ => k.extend(["algorithm_type", "timestep_spacing"]),
                }
            }
            C::Lcm | C::Tcd => k.extend(THRESH.iter().chain(&[
                "original_inference_steps",
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "timestep_spacing",
                "timestep_scaling",
                "rescale_betas_zero_snr",
            ])),
            C::FlowMatchEuler => k.extend(FLOW_DYN.iter().chain(&SIGMAS).chain(&[
                "num_train_timesteps",
                "invert_sigmas",
                "stochastic_sampling",
            ])),
            // Built from FlowMatchEulerDiscreteScheduler's config, whose keys it carries.
            C::LtxEulerAncestralRf => k.extend(FLOW_DYN.iter().chain(&SIGMAS).chain(&[
                "num_train_timesteps",
                "invert_sigmas",
                "eta",
                "s_noise",
            ])),
            C::FlowMatchHeun => k.extend(["num_train_timesteps", "shift"]),
            C::EdmEuler | C::CmStochasticIterative | C::Scm | C::DdpmWuerstchen => {}
            C::FlowMatchLcm => k.extend(FLOW_DYN.iter().chain(&SIGMAS).chain(&[
                "num_train_timesteps",
                "invert_sigmas",
                "scale_factors",
                "upscale_mode",
            ])),
            C::EdmDpm => k.extend(DPM_OPTS.iter().chain(&THRESH[..3]).chain(&["algorithm_type"])),
            C::CosineDpm => k.extend(DPM_OPTS),
            C::CogVideoXDdim | C::CogVideoXDpm => k.extend(["sample_max_value"].iter().chain(&[
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "timestep_spacing",
                "rescale_betas_zero_snr",
                "snr_shift_scale",
            ])),
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_class_is_both_built_and_refused() {
        for (n, _) in NOT_BUILT {
            assert!(CLASSES.iter().all(|(c, _)| c != n), "{n}");
        }
    }
}
