//! The threshold for parallel blocks (feature `rayon`); a leaf module.

/// Arrays at least this long are updated in parallel blocks with the `rayon` feature (below
/// about a million elements a step is too short for the threads' wake-up and the traffic
/// between the cores' caches to pay off; benches/steps.rs `scaling`).
#[cfg(feature = "rayon")]
pub(crate) const PAR_MIN: usize = 1 << 20;
