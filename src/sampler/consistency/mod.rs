//! Consistency-model sampling: take the model's answer at each level, renoise to the next.

mod lcm;

pub use lcm::Lcm;
