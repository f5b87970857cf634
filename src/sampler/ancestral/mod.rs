//! First-order samplers: one model call per step, `x' = alpha' x0 + ce eps + std z` — DDPM's
//! posterior, DDIM with any `eta`, Euler (with EDM churn) and Euler ancestral.

mod ddim;
mod ddpm;
mod euler;

pub use ddim::Ddim;
pub use ddpm::{Ddpm, DdpmVariance};
pub use euler::{Euler, EulerAncestral};
