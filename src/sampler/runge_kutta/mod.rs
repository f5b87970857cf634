//! Two-stage (Runge–Kutta) samplers: a predictor call and a corrector call per step — Heun,
//! DPM-Solver-2 and its ancestral variant, DPM-Solver++(2S) ancestral; Restart (Heun walks with
//! noise injected between them).

mod dpm2;
mod dpmpp_2s;
mod heun;
mod heunpp;
mod restart;

pub use dpm2::{Dpm2, Dpm2Ancestral};
pub use dpmpp_2s::DpmPp2sAncestral;
pub use heun::Heun;
pub(crate) use heun::two_stage_calls;
pub use heunpp::HeunPp2;
pub use restart::{Restart, RestartInterval, RestartState};
