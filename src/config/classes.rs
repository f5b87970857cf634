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
}

pub(super) use SchedulerClass as C;

pub(super) const CLASSES: [(&str, SchedulerClass); 16] = [
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
    /// diffusers' class name.
    pub fn name(self) -> &'static str {
        CLASSES.iter().find(|(_, c)| *c == self).map_or("?", |(n, _)| n)
    }

    pub(super) fn is_flow(self) -> bool {
        matches!(self, C::FlowMatchEuler | C::FlowMatchHeun)
    }

    /// The `__init__` parameters of the class in diffusers 0.42.
    pub(super) fn keys(self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = Vec::new();
        if !self.is_flow() {
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
            C::Lcm => k.extend(THRESH.iter().chain(&[
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
            C::FlowMatchHeun => k.extend(["num_train_timesteps", "shift"]),
        }
        k
    }
}
