//! A bounded history of past estimates for multistep samplers (newest first), recycling the
//! buffers it evicts.

use std::collections::VecDeque;

use ndarray::{Array, Dimension};

use crate::schedule::NoiseLevel;

#[derive(Clone, Debug)]
pub(crate) struct History<F, D: Dimension> {
    items: VecDeque<(Array<F, D>, NoiseLevel)>,
    cap: usize,
}

impl<F, D: Dimension> History<F, D> {
    pub(crate) fn new(cap: usize) -> Self {
        History {
            items: VecDeque::with_capacity(cap + 1),
            cap,
        }
    }

    /// Adds the newest entry; returns the evicted oldest buffer, if any, for reuse.
    pub(crate) fn push(&mut self, a: Array<F, D>, level: NoiseLevel) -> Option<Array<F, D>> {
        self.items.push_front((a, level));
        if self.items.len() > self.cap {
            self.items.pop_back().map(|(a, _)| a)
        } else {
            None
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Entry `i` (0 = newest).
    pub(crate) fn array(&self, i: usize) -> &Array<F, D> {
        &self.items[i].0
    }

    pub(crate) fn level(&self, i: usize) -> NoiseLevel {
        self.items[i].1
    }
}
