//! ComfyUI's sampler names: what each runs, and the conventions ComfyUI applies to its sigmas.

use crate::grid::ModelSampling;
use crate::sampler::{
    AncestralSplit, AnySampler, CfgPpUd10Ab, Dpm2, Dpm2Ancestral, DpmAdaptive, DpmFast, DpmPp2mCfgPp,
    DpmPp2sAncestral, DpmPp2sAncestralCfgPp, DpmPpSde, DpmSolver, EdmDeis, EdmIpndm, ErSde, Euler,
    EulerAncestral, EulerCfgPp, GradientEstimation, Heun, HeunPp2, Lcm, Lms, ResMultistep, SaSolver, Seeds2,
    Seeds3, SolverType, UniPc, UniPcVariant,
};

/// ComfyUI's sampler names (`comfy/samplers.py`'s `SAMPLER_NAMES`, with the newer
/// `cfgpp_ud10_ab`), in ComfyUI's order. The CFG++ ones (`*_cfg_pp`, `cfgpp_ud10_ab`) renoise
/// with the unconditional branch of a guided model (the crate's guidance wrappers, or
/// [`Run::respond_guided`](crate::Run::respond_guided)).
pub const PRESETS: [&str; 45] = [
    "euler",
    "euler_cfg_pp",
    "euler_ancestral",
    "euler_ancestral_cfg_pp",
    "heun",
    "heunpp2",
    "exp_heun_2_x0",
    "exp_heun_2_x0_sde",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpm_fast",
    "dpm_adaptive",
    "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde",
    "dpmpp_sde_gpu",
    "dpmpp_2m",
    "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun",
    "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu",
    "ddpm",
    "lcm",
    "ipndm",
    "ipndm_v",
    "deis",
    "cfgpp_ud10_ab",
    "res_multistep",
    "res_multistep_cfg_pp",
    "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp",
    "gradient_estimation",
    "gradient_estimation_cfg_pp",
    "er_sde",
    "seeds_2",
    "seeds_3",
    "sa_solver",
    "sa_solver_pece",
    "ddim",
    "uni_pc",
    "uni_pc_bh2",
];

/// The sampler ComfyUI runs for `name` on `ms` (see the table in docs/guide-from-diffusers.md).
pub(crate) fn sampler(name: &str, ms: &ModelSampling) -> Option<AnySampler> {
    let s: AnySampler = match name {
        "euler" | "ddim" => Euler::new().into(),
        "euler_ancestral" => EulerAncestral::new().into(),
        "euler_cfg_pp" => EulerCfgPp::new().into(),
        "euler_ancestral_cfg_pp" => EulerCfgPp::ancestral().into(),
        "dpmpp_2s_ancestral_cfg_pp" => DpmPp2sAncestralCfgPp::new().into(),
        "dpmpp_2m_cfg_pp" => DpmPp2mCfgPp::new().into(),
        "cfgpp_ud10_ab" => CfgPpUd10Ab::new().into(),
        "res_multistep_cfg_pp" => ResMultistep::new().cfg_pp(true).into(),
        "res_multistep_ancestral_cfg_pp" => ResMultistep::ancestral().cfg_pp(true).into(),
        "gradient_estimation_cfg_pp" => GradientEstimation::new().cfg_pp(true).into(),
        "heun" => Heun::new().into(),
        "heunpp2" => HeunPp2::new().into(),
        "exp_heun_2_x0" => Seeds2::exp_heun().into(),
        "exp_heun_2_x0_sde" => Seeds2::exp_heun().eta(1.0).into(),
        "dpm_2" => Dpm2::new().into(),
        "dpm_2_ancestral" => Dpm2Ancestral::new().into(),
        "lms" => Lms::new().x0_at_clean(true).into(),
        "dpm_fast" => DpmFast::new().into(),
        "dpm_adaptive" => DpmAdaptive::new().into(),
        "dpmpp_2s_ancestral" => DpmPp2sAncestral::new().into(),
        "dpmpp_sde" | "dpmpp_sde_gpu" => DpmPpSde::new().into(),
        "dpmpp_2m" => DpmSolver::new().sigma_space(true).into(),
        "dpmpp_2m_sde" | "dpmpp_2m_sde_gpu" => DpmSolver::new().sde(true).into(),
        "dpmpp_2m_sde_heun" | "dpmpp_2m_sde_heun_gpu" => {
            DpmSolver::new().sde(true).solver_type(SolverType::Heun).into()
        }
        "dpmpp_3m_sde" | "dpmpp_3m_sde_gpu" => DpmSolver::new()
            .order(3)
            .sde(true)
            .solver_type(SolverType::Heun)
            .lower_order_final(false)
            .into(),
        "ddpm" => EulerAncestral::new().split(AncestralSplit::SigmaSpace).into(),
        "lcm" => Lcm::new().boundary_condition(None).into(),
        "ipndm" => EdmIpndm::new().into(),
        "ipndm_v" => EdmIpndm::new().variable_step(true).into(),
        "deis" => EdmDeis::new().into(),
        "res_multistep" => ResMultistep::new().into(),
        "res_multistep_ancestral" => ResMultistep::ancestral().into(),
        "gradient_estimation" => GradientEstimation::new().into(),
        "er_sde" => ErSde::new().into(),
        "seeds_2" => Seeds2::new().into(),
        "seeds_3" => Seeds3::new().into(),
        "sa_solver" | "sa_solver_pece" => SaSolver::new()
            .tau_interval(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8))
            .pece(name == "sa_solver_pece")
            .into(),
        "uni_pc" => UniPc::new()
            .order(3)
            .variant(UniPcVariant::Bh1)
            .sigma_space(true)
            .into(),
        "uni_pc_bh2" => UniPc::new()
            .order(3)
            .variant(UniPcVariant::Bh2)
            .sigma_space(true)
            .into(),
        _ => return None,
    };
    Some(s)
}

/// ComfyUI computes one sigma more for these and drops the penultimate.
pub(crate) fn discards_penultimate(name: &str) -> bool {
    matches!(name, "dpm_2" | "dpm_2_ancestral" | "uni_pc" | "uni_pc_bh2")
}

/// The samplers that, on flow models, replace a first sigma of 1 by `percent_to_sigma(1e-4)`
/// (ComfyUI's `offset_first_sigma_for_snr`, for the half-log-SNR samplers).
pub(crate) fn offsets_first_sigma(name: &str) -> bool {
    matches!(
        name,
        "dpmpp_sde"
            | "dpmpp_sde_gpu"
            | "dpmpp_2m_sde"
            | "dpmpp_2m_sde_gpu"
            | "dpmpp_2m_sde_heun"
            | "dpmpp_2m_sde_heun_gpu"
            | "dpmpp_3m_sde"
            | "dpmpp_3m_sde_gpu"
            | "er_sde"
            | "seeds_2"
            | "seeds_3"
            | "sa_solver"
            | "sa_solver_pece"
            | "exp_heun_2_x0"
            | "exp_heun_2_x0_sde"
    )
}

/// ComfyUI's UniPC ends at sigma 0.001 instead of 0.
pub(crate) fn ends_above_zero(name: &str) -> Option<f64> {
    matches!(name, "uni_pc" | "uni_pc_bh2").then_some(0.001)
}
