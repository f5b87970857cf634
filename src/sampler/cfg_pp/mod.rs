//! CFG++ samplers (Chung et al. 2024): the guided x0 estimate for the denoising direction, the
//! unconditional branch's noise estimate for the renoising one — ComfyUI's `euler_cfg_pp`,
//! `euler_ancestral_cfg_pp`, `dpmpp_2s_ancestral_cfg_pp`, `dpmpp_2m_cfg_pp` and `cfgpp_ud10_ab`
//! (`res_multistep_cfg_pp`, `res_multistep_ancestral_cfg_pp` and `gradient_estimation_cfg_pp`
//! are [`ResMultistep::cfg_pp`](crate::ResMultistep::cfg_pp) and
//! [`GradientEstimation::cfg_pp`](crate::GradientEstimation::cfg_pp)).
//!
//! They read the unconditional branch from the model's [`Guided`](crate::Guided) output (the
//! crate's guidance wrappers provide it; in a step-by-step run,
//! [`Run::respond_guided`](crate::Run::respond_guided)). A model without branches gives its one
//! output to both roles: the samplers then run as their plain counterparts (up to rounding;
//! `DpmPp2sAncestralCfgPp` differs, as ComfyUI's does, see there).
//!
//! Like ComfyUI's, the formulas are written in k-diffusion's sigma-space coordinates (`x /
//! alpha`, `sigma / alpha` on VP and VE grids; `x`, the flow sigma on flow grids); only the
//! Euler pair and `cfgpp_ud10_ab` use the model's `alpha` on flow grids, as ComfyUI's do.
//!
//! [^cfgpp]: H. Chung, J. Kim, G. Y. Park, H. Nam, J. C. Ye, *CFG++: Manifold-constrained
//!     Classifier Free Guidance for Diffusion Models*, arXiv:2406.08070.

mod dpmpp;
mod euler;
mod ud10;

pub use dpmpp::{DpmPp2mCfgPp, DpmPp2sAncestralCfgPp};
pub use euler::EulerCfgPp;
pub use ud10::CfgPpUd10Ab;
