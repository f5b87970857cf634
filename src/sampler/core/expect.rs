//! [`Expecting`]: a sampler that refuses models of the wrong prediction type.

use ndarray::{Array, Dimension};

use super::Sampler;
use crate::denoiser::Prediction;
use crate::error::Result;
use crate::float::Float;
use crate::grid::Grid;
use crate::noise::NoiseSource;

/// A sampler set up for models of one [`Prediction`] type ([`Sampler::expecting`]; what the
/// diffusers config reader returns, from the file's `prediction_type`). Starting a run for a
/// model of another type is an [`Error::PredictionMismatch`](crate::Error::PredictionMismatch)
/// naming both. Everything else is the wrapped sampler's (it derefs to it).
#[derive(Clone, Debug, PartialEq)]
pub struct Expecting<S> {
    sampler: S,
    prediction: Prediction,
}

impl<S> Expecting<S> {
    /// `sampler`, for models predicting `prediction`.
    pub fn new(sampler: S, prediction: Prediction) -> Self {
        Expecting { sampler, prediction }
    }

    /// The prediction type models must have.
    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    /// The wrapped sampler (without the check).
    pub fn into_inner(self) -> S {
        self.sampler
    }
}

impl<S> std::ops::Deref for Expecting<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.sampler
    }
}

impl<S: Sampler> Sampler for Expecting<S> {
    type State<F: Float, D: Dimension> = S::State<F, D>;

    fn validate(&self) -> Result<()> {
        self.sampler.validate()
    }

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        noise: &mut N,
    ) -> Result<Self::State<F, D>> {
        self.sampler.init(x, grid, noise)
    }

    fn model_calls(&self, grid: &Grid) -> usize {
        self.sampler.model_calls(grid)
    }

    fn exact_model_calls(&self, grid: &Grid) -> Option<usize> {
        self.sampler.exact_model_calls(grid)
    }

    fn expected_prediction(&self) -> Option<Prediction> {
        Some(self.prediction)
    }
}
