//! Exponential integrators in log-SNR (data prediction): DPM-Solver++ multistep and
//! singlestep, UniPC.

mod dpm_adaptive;
mod dpm_fast;
mod dpmpp;
mod er_sde;
mod fitted;
mod res_multistep;
mod sa_solver;
mod seeds;
mod singlestep;
mod unipc;

pub use dpm_adaptive::{AdaptiveInfo, DpmAdaptive, DpmAdaptiveState};
pub use dpm_fast::{DpmFast, FastVars};
pub(crate) use dpmpp::dpmpp_coefs;
pub use dpmpp::{DpmSolver, SolverType, ThirdOrder};
pub use er_sde::{ErSde, ErSdeScaler};
pub use fitted::FittedMultistep;
pub use res_multistep::ResMultistep;
pub use sa_solver::{SaSolver, SaVars};
pub use seeds::{DpmPpSde, Seeds2, Seeds3, SeedsSolver};
pub use singlestep::DpmSolverSinglestep;
pub use unipc::{UniPc, UniPcVariant};
