//! Position along a grid, shared by every sampler state.

use crate::grid::{Grid, ScheduleFamily};
use crate::level::NoiseLevel;

/// Where a run is on its grid. A zero-length final step (final level equal to the one before)
/// is skipped: it would be the identity.
#[derive(Clone, Debug)]
pub(crate) struct Walk {
    grid: Grid,
    step: usize,
    end: usize,
}

impl Walk {
    #[allow(
        clippy::float_cmp,
        reason = "a zero-length final step is an exact repeat of the level"
    )]
    pub(crate) fn new(grid: &Grid) -> Self {
        let levels = grid.levels();
        let n = levels.len() - 1;
        let end = if levels[n].sigma_ve() == levels[n - 1].sigma_ve() {
            n - 1
        } else {
            n
        };
        Walk {
            grid: grid.clone(),
            step: 0,
            end,
        }
    }

    /// Number of steps that will actually be taken.
    pub(crate) fn effective_steps(grid: &Grid) -> usize {
        Walk::new(grid).end
    }

    /// Number of steps of the grid (for EDM's `s_churn / N`).
    pub(crate) fn grid_steps(&self) -> usize {
        self.grid.steps()
    }

    pub(crate) fn done(&self) -> bool {
        self.step >= self.end
    }

    /// `true` on the last step that will be taken.
    pub(crate) fn is_last(&self) -> bool {
        self.step + 1 == self.end
    }

    /// Steps left, this one included.
    pub(crate) fn remaining(&self) -> usize {
        self.end.saturating_sub(self.step)
    }

    pub(crate) fn step(&self) -> usize {
        self.step
    }

    /// The grid's final level.
    pub(crate) fn final_level(&self) -> NoiseLevel {
        let l = self.grid.levels();
        l[l.len() - 1]
    }

    pub(crate) fn from(&self) -> NoiseLevel {
        self.grid.levels()[self.step]
    }

    pub(crate) fn to(&self) -> NoiseLevel {
        self.grid.levels()[self.step + 1]
    }

    /// Level `step + k` of the grid, if it exists (look-ahead for methods whose stages visit
    /// the next grid levels).
    pub(crate) fn ahead(&self, k: usize) -> Option<NoiseLevel> {
        self.grid.levels().get(self.step + k).copied()
    }

    /// Level `i` of the grid (`i <= steps`).
    pub(crate) fn level(&self, i: usize) -> NoiseLevel {
        self.grid.levels()[i]
    }

    /// The level the sample is at now: the start of the next step, or the final level.
    pub(crate) fn current(&self) -> NoiseLevel {
        let levels = self.grid.levels();
        if self.done() {
            levels[levels.len() - 1]
        } else {
            levels[self.step]
        }
    }

    pub(crate) fn next(&mut self) {
        self.step += 1;
    }

    pub(crate) fn family(&self) -> ScheduleFamily {
        self.grid.family()
    }

    pub(crate) fn level_at_sigma_ve(&self, s: f64) -> NoiseLevel {
        self.grid.level_of_sigma_ve(s)
    }

    pub(crate) fn level_at_t(&self, t: f64) -> NoiseLevel {
        self.grid.level_of_t(t)
    }
}
