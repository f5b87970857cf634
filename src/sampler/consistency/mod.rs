//! Consistency-model sampling: take the model's answer at each level, renoise to the next.

mod lcm;
mod tcd;

pub use lcm::Lcm;
pub use tcd::Tcd;
