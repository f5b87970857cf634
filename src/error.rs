//! Errors: one typed enum for everything that can go wrong, with the user's own model error kept
//! as the source (a leaf module: it imports only [`NoiseLevel`] and [`Prediction`]).
//!
//! Messages say what was wrong in terms of the call the user made, echo at most
//! [`ECHO`](crate::text::ECHO) characters of any input, and print numbers readably (`1e-320`,
//! not 320 zeros).

use crate::level::NoiseLevel;
use crate::prediction::Prediction;
use crate::text::{ECHO, Num, short};

/// The error type of a user's model ([`Denoiser::denoise`](crate::Denoiser::denoise)), kept as
/// the [`source`](std::error::Error::source) of [`Error::Model`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The largest number of training timesteps a schedule may have, and of steps a sampling grid
/// may have: ten million (a schedule of that size takes 240 MB; a bound keeps a mistyped
/// `num_train_timesteps` from aborting the process on allocation failure).
pub const MAX_STEPS: usize = 10_000_000;

/// Everything that can go wrong in this crate.
///
/// Construction-time problems (bad schedule, bad grid, bad sampler parameter) are reported by
/// the constructor; problems during a sampling run name the step (0 = first step) and the
/// [`NoiseLevel`] the sampler was at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A step count outside `1..=max`.
    #[error("invalid number of steps: {steps} (must be between 1 and {max})")]
    InvalidSteps {
        /// The requested number of steps.
        steps: usize,
        /// The largest number allowed here (the number of training timesteps for grids of a
        /// discrete schedule, [`MAX_STEPS`] otherwise).
        max: usize,
    },

    /// A beta outside (0, 1), or not finite. The last beta may be exactly 1 (zero terminal SNR).
    #[error(
        "beta at index {index} is {}; betas must be finite and in (0, 1) (the last one may be 1)",
        Num(*.value)
    )]
    InvalidBeta {
        /// Position in the beta sequence.
        index: usize,
        /// The offending value.
        value: f64,
    },

    /// A scalar parameter (of a schedule, grid or sampler) that is out of its range.
    #[error("invalid `{name}` = {}: {reason}", Num(*.value))]
    InvalidParameter {
        /// The parameter's name, as the builder method that sets it.
        name: &'static str,
        /// The offending value.
        value: f64,
        /// What the range is.
        reason: &'static str,
    },

    /// An entry of a user-supplied list (custom timesteps, sigmas, grid levels) that is
    /// non-finite, out of range or out of order.
    #[error("{what}[{index}] = {}: {reason}", Num(*.value))]
    InvalidValue {
        /// What the list is (`"timesteps"`, `"sigmas"`, `"levels"`, ...).
        what: &'static str,
        /// Position in the list.
        index: usize,
        /// The offending value.
        value: f64,
        /// Why it is rejected.
        reason: &'static str,
    },

    /// Two arrays whose shapes must agree do not (outside a sampling run).
    #[error("shape mismatch in {what}: expected {expected:?}, got {got:?}")]
    Shape {
        /// What was being combined.
        what: &'static str,
        /// The shape that was required.
        expected: Vec<usize>,
        /// The shape that was given.
        got: Vec<usize>,
    },

    /// The model returned an array whose shape differs from the sample's.
    #[error(
        "model output shape {got:?} does not match the sample shape {expected:?} at step {step} ({level})"
    )]
    ShapeMismatch {
        /// Sampler step (0 = first).
        step: usize,
        /// The level the model was evaluated at.
        level: NoiseLevel,
        /// The sample's shape.
        expected: Vec<usize>,
        /// The model output's shape.
        got: Vec<usize>,
    },

    /// A noise source was asked to fill an array of another size than it was made for (a
    /// Brownian tree holds one motion per element of the shape it was built with).
    #[error("a noise source made for {expected} elements was asked to fill {got}")]
    NoiseSize {
        /// The number of elements the source was made for.
        expected: usize,
        /// The number of elements asked for.
        got: usize,
    },

    /// A NaN or infinity appeared: in the model output, the noise, the sample after an update,
    /// or an input the caller passed in.
    #[error("non-finite {what} at step {step} ({level})")]
    NonFinite {
        /// Sampler step (0 = first).
        step: usize,
        /// The level of the step.
        level: NoiseLevel,
        /// `"model output"`, `"sample"`, `"noise"` or the input that held it.
        what: &'static str,
    },

    /// The model itself returned an error (its message is part of this one's, and the error is
    /// kept as the [`source`](std::error::Error::source)).
    #[error("the model failed at step {step} ({level}): {}", short(&.source.to_string(), 4 * ECHO))]
    Model {
        /// Sampler step (0 = first).
        step: usize,
        /// The level the model was evaluated at.
        level: NoiseLevel,
        /// The model's own error.
        #[source]
        source: BoxError,
    },

    /// The model's prediction type cannot give an estimate at this level, e.g. an epsilon
    /// prediction at a level with `alpha = 0` (zero terminal SNR), where `x0 = (x - sigma eps) /
    /// alpha` is undefined. Use velocity or sample prediction, or a grid that starts below the
    /// terminal level.
    #[error("{prediction:?} prediction cannot determine {what} at step {step} ({level})")]
    Undetermined {
        /// Sampler step (0 = first).
        step: usize,
        /// The level of the step.
        level: NoiseLevel,
        /// The model's prediction type.
        prediction: Prediction,
        /// `"x0"` or `"eps"`.
        what: &'static str,
    },

    /// A sampler set up for one prediction type (by a diffusers config's `prediction_type`, or
    /// [`Sampler::expecting`](crate::Sampler::expecting)) was given a model of another.
    #[error(
        "the sampler was set up for {expected:?} (`{}`) models, but the model predicts {got:?} (`{}`)",
        .expected.name(),
        .got.name()
    )]
    PredictionMismatch {
        /// The prediction type the sampler was set up for.
        expected: Prediction,
        /// The model's prediction type.
        got: Prediction,
    },

    /// A step-by-step run was asked for something it cannot do in its current state (answered
    /// after it finished).
    #[error("the sampling run has finished; there is no pending model evaluation")]
    Finished,

    /// A name (sampler preset, scheduler class, option value) this crate does not know.
    #[error("unknown {what} `{}`; known: {known}", short(.name, ECHO))]
    UnknownName {
        /// What kind of name (`"sampler preset"`, `"scheduler class"`, `"beta_schedule"`...).
        what: &'static str,
        /// The name given.
        name: String,
        /// The names that are known.
        known: String,
    },

    /// A scheduler configuration this crate cannot reproduce (a diffusers option value it does
    /// not implement, an out-of-range value, or a malformed file).
    #[error("scheduler config: `{}`: {}", short(.key, ECHO), short(.reason, 4 * ECHO))]
    Config {
        /// The offending key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}
