//! [`Prediction`]: what a model's output means, and the linear maps between prediction types
//! (a leaf module: it imports only [`NoiseLevel`]).

use crate::level::NoiseLevel;

/// What a model's output means, at level `x = alpha x0 + sigma eps`.
///
/// | variant | output | diffusers |
/// |---|---|---|
/// | `Epsilon` | the noise `eps` | `"epsilon"` |
/// | `Sample` | the clean sample `x0` | `"sample"` |
/// | `Velocity` | `v = alpha eps - sigma x0` (Salimans & Ho 2022) | `"v_prediction"` |
/// | `Flow` | the flow velocity `eps - x0` (rectified flow, `dx/dsigma` for `alpha = 1 - sigma`) | `"flow_prediction"` |
///
/// Every conversion is linear in `(x, output)`; [`to_x0`](Self::to_x0) and
/// [`to_eps`](Self::to_eps) give the coefficients for any `(alpha, sigma)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Prediction {
    /// The model predicts the noise `eps`.
    Epsilon,
    /// The model predicts the clean sample `x0`.
    Sample,
    /// The model predicts `v = alpha eps - sigma x0`.
    Velocity,
    /// The model predicts the rectified-flow velocity `eps - x0`.
    Flow,
}

/// Coefficients of an estimate that is linear in the sample and the model output:
/// `estimate = x * sample + out * output`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linear {
    /// Coefficient of the sample `x`.
    pub x: f64,
    /// Coefficient of the model output.
    pub out: f64,
}

impl Linear {
    fn finite(self) -> Option<Self> {
        (self.x.is_finite() && self.out.is_finite()).then_some(self)
    }
}

impl Prediction {
    /// diffusers' name of the prediction type (`prediction_type`): `"epsilon"`, `"sample"`,
    /// `"v_prediction"`, `"flow_prediction"`.
    ///
    /// ```
    /// assert_eq!(diffusion_samplers::Prediction::Velocity.name(), "v_prediction");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::Sample => "sample",
            Prediction::Velocity => "v_prediction",
            Prediction::Flow => "flow_prediction",
        }
    }

    /// Coefficients of `x0` from `(x, output)` at `level`, or `None` where this prediction type
    /// does not determine `x0` (an `Epsilon` output at `alpha = 0`).
    ///
    /// ```
    /// use diffusion_samplers::{NoiseLevel, Prediction};
    /// let l = NoiseLevel::from_alpha_bar(0.0, 0.36); // alpha 0.6, sigma 0.8
    /// let c = Prediction::Epsilon.to_x0(&l).unwrap();
    /// assert!((c.x - 1.0 / 0.6).abs() < 1e-12 && (c.out + 0.8 / 0.6).abs() < 1e-12);
    /// assert!(Prediction::Epsilon.to_x0(&NoiseLevel::new(999.0, 0.0, 1.0)).is_none());
    /// ```
    pub fn to_x0(self, level: &NoiseLevel) -> Option<Linear> {
        let (a, s) = (level.alpha, level.sigma);
        match self {
            Prediction::Epsilon => Linear {
                x: 1.0 / a,
                out: -s / a,
            }
            .finite(),
            Prediction::Sample => Some(Linear { x: 0.0, out: 1.0 }),
            Prediction::Velocity => {
                let n = a * a + s * s;
                Linear {
                    x: a / n,
                    out: -s / n,
                }
                .finite()
            }
            Prediction::Flow => {
                let n = a + s;
                Linear {
                    x: 1.0 / n,
                    out: -s / n,
                }
                .finite()
            }
        }
    }

    /// Coefficients of `eps` from `(x, output)` at `level`, or `None` where this prediction type
    /// does not determine `eps` (a `Sample` output at `sigma = 0`).
    pub fn to_eps(self, level: &NoiseLevel) -> Option<Linear> {
        let (a, s) = (level.alpha, level.sigma);
        match self {
            Prediction::Epsilon => Some(Linear { x: 0.0, out: 1.0 }),
            Prediction::Sample => Linear {
                x: 1.0 / s,
                out: -a / s,
            }
            .finite(),
            Prediction::Velocity => {
                let n = a * a + s * s;
                Linear { x: s / n, out: a / n }.finite()
            }
            Prediction::Flow => {
                let n = a + s;
                Linear {
                    x: 1.0 / n,
                    out: a / n,
                }
                .finite()
            }
        }
    }

    /// Coefficients `(c_x0, c_eps)` of this prediction's target from the clean sample and the
    /// noise: `target = c_x0 x0 + c_eps eps` (the training target).
    pub fn target_coefficients(self, level: &NoiseLevel) -> (f64, f64) {
        match self {
            Prediction::Epsilon => (0.0, 1.0),
            Prediction::Sample => (1.0, 0.0),
            Prediction::Velocity => (-level.sigma, level.alpha),
            Prediction::Flow => (-1.0, 1.0),
        }
    }
}
