//! Exponential integrators in log-SNR (data prediction): DPM-Solver++ multistep and
//! singlestep, UniPC.

mod dpmpp;
mod singlestep;
mod unipc;

pub use dpmpp::{DpmSolver, SolverType, ThirdOrder};
pub use singlestep::DpmSolverSinglestep;
pub use unipc::{UniPc, UniPcVariant};
