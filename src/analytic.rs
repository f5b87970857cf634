//! Exact denoisers for Gaussian and Gaussian-mixture data, for tests, examples and for checking a
//! setup without a trained network.
//!
//! For data `x0 ~ sum_k w_k N(mu_k, diag(v_k))` and `x = alpha x0 + sigma eps`, the posterior
//! mean `E[x0 | x]` is closed-form:
//! `sum_k pi_k(x) [mu_k + alpha v_k / (alpha^2 v_k + sigma^2) (x - alpha mu_k)]`, with
//! responsibilities `pi_k(x)` proportional to `w_k N(x; alpha mu_k, alpha^2 v_k + sigma^2)`
//! (computed with log-sum-exp). That is the ideal denoiser, so samplers driven by it sample the
//! mixture exactly in the limit of small steps. For a single Gaussian the probability-flow ODE
//! has an exact solution ([`GaussianMixture::ode_solution`]), so convergence orders can be
//! measured.

use ndarray::{Array, Array1, Array2, ArrayView, Axis, Dimension, Zip};
use rand::Rng;

use crate::denoiser::{Denoiser, Prediction};
use crate::error::{BoxError, Error, Result};
use crate::float::Float;
use crate::schedule::NoiseLevel;

/// A mixture of Gaussians with diagonal covariances in `dim` dimensions, usable as an exact
/// [`Denoiser`] with any [`Prediction`] type.
///
/// Samples are arrays whose last axis has length `dim`; all other axes are batch axes.
///
/// ```
/// use diffusion_samplers::{analytic::GaussianMixture, Denoiser, NoiseLevel, Prediction};
/// use ndarray::array;
/// let mut gm = GaussianMixture::new(
///     vec![0.5, 0.5],
///     vec![vec![-2.0], vec![2.0]],
///     vec![vec![0.1], vec![0.1]],
/// )?.with_prediction(Prediction::Sample);
/// // Far out on the right, the posterior mean is near the right mode.
/// let x0 = gm.denoise(array![[1.9f64]].view().into_dyn(), &NoiseLevel::from_alpha_bar(0.0, 0.9))?;
/// assert!((x0[[0, 0]] - 2.0).abs() < 0.1);
/// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianMixture {
    weights: Vec<f64>,
    means: Vec<Vec<f64>>,
    variances: Vec<Vec<f64>>,
    prediction: Prediction,
}

impl GaussianMixture {
    /// A mixture with weights `w_k` (normalised here), means `mu_k` and diagonal variances `v_k`
    /// (each of length `dim`). Its [`Denoiser`] output defaults to epsilon prediction.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for no components, unequal lengths, non-positive or non-finite
    /// weights (or weights whose sum overflows), negative or non-finite variances, or non-finite
    /// means.
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, variances: Vec<Vec<f64>>) -> Result<Self> {
        let bad = |name, value, reason| Err(Error::InvalidParameter { name, value, reason });
        if weights.is_empty() || means.len() != weights.len() || variances.len() != weights.len() {
            return bad(
                "weights",
                weights.len() as f64,
                "need one weight, mean and variance per component, at least one",
            );
        }
        let dim = means[0].len();
        if dim == 0 || means.iter().chain(&variances).any(|v| v.len() != dim) {
            return bad(
                "means",
                dim as f64,
                "every mean and variance needs the same, non-zero dimension",
            );
        }
        if let Some(&w) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
            return bad("weights", w, "must be positive and finite");
        }
        if let Some(&m) = means.iter().flatten().find(|m| !m.is_finite()) {
            return bad("means", m, "must be finite");
        }
        if let Some(&v) = variances
            .iter()
            .flatten()
            .find(|v| !(v.is_finite() && **v >= 0.0))
        {
            return bad("variances", v, "must be non-negative and finite");
        }
        let total: f64 = weights.iter().sum();
        if !total.is_finite() {
            return bad("weights", total, "must sum to a finite number");
        }
        Ok(GaussianMixture {
            weights: weights.iter().map(|w| w / total).collect(),
            means,
            variances,
            prediction: Prediction::Epsilon,
        })
    }

    /// A single Gaussian `N(mean, diag(variance))`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn gaussian(mean: Vec<f64>, variance: Vec<f64>) -> Result<Self> {
        Self::new(vec![1.0], vec![mean], vec![variance])
    }

    /// The prediction type the [`Denoiser`] impl outputs.
    pub fn with_prediction(mut self, prediction: Prediction) -> Self {
        self.prediction = prediction;
        self
    }

    /// Data dimension (length of the last axis of samples).
    pub fn dim(&self) -> usize {
        self.means[0].len()
    }

    /// Normalised component weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Component means.
    pub fn means(&self) -> &[Vec<f64>] {
        &self.means
    }

    /// Component (diagonal) variances.
    pub fn variances(&self) -> &[Vec<f64>] {
        &self.variances
    }

    /// The mixture's mean.
    pub fn mean(&self) -> Array1<f64> {
        let mut m = Array1::zeros(self.dim());
        for (w, mu) in self.weights.iter().zip(&self.means) {
            m.scaled_add(*w, &Array1::from(mu.clone()));
        }
        m
    }

    /// The mixture's (full) covariance matrix.
    pub fn covariance(&self) -> Array2<f64> {
        let d = self.dim();
        let m = self.mean();
        let mut c = Array2::zeros((d, d));
        for k in 0..self.weights.len() {
            let w = self.weights[k];
            for i in 0..d {
                c[[i, i]] += w * self.variances[k][i];
                for j in 0..d {
                    c[[i, j]] += w * (self.means[k][i] - m[i]) * (self.means[k][j] - m[j]);
                }
            }
        }
        c
    }

    /// `n` draws from the mixture, as an `n x dim` array.
    pub fn sample<F: Float, R: Rng + ?Sized>(&self, n: usize, rng: &mut R) -> Array2<F> {
        let d = self.dim();
        let mut out = Array2::zeros((n, d));
        for mut row in out.rows_mut() {
            let u: f64 = rng.random();
            let mut k = 0;
            let mut acc = self.weights[0];
            while u > acc && k + 1 < self.weights.len() {
                k += 1;
                acc += self.weights[k];
            }
            for (j, v) in row.iter_mut().enumerate() {
                let z: f64 = f64::standard_normal(rng);
                *v = F::cast(self.means[k][j] + self.variances[k][j].sqrt() * z);
            }
        }
        out
    }

    /// The most probable component of a clean point (its mode), e.g. to count how many samples
    /// land in each mode.
    pub fn component_of(&self, x: &[f64]) -> usize {
        let mut logp = vec![0.0; self.weights.len()];
        self.log_responsibilities(x, 1.0, 0.0, &mut logp);
        (0..logp.len())
            .max_by(|&a, &b| logp[a].total_cmp(&logp[b]))
            .unwrap_or(0)
    }

    /// Unnormalised log responsibilities of each component for `x` at `(alpha, sigma)`.
    fn log_responsibilities(&self, x: &[f64], alpha: f64, sigma: f64, out: &mut [f64]) {
        for (k, o) in out.iter_mut().enumerate() {
            let mut lp = self.weights[k].ln();
            for (j, &xj) in x.iter().enumerate() {
                let var = alpha * alpha * self.variances[k][j] + sigma * sigma;
                let diff = xj - alpha * self.means[k][j];
                lp -= 0.5 * (diff * diff / var + var.ln());
            }
            *o = lp;
        }
    }

    /// The normalised responsibilities of each component for `x` at `(alpha, sigma)`, written
    /// into `out`; returns the log of their normaliser (log-sum-exp of the unnormalised ones).
    fn responsibilities(&self, x: &[f64], alpha: f64, sigma: f64, out: &mut [f64]) -> f64 {
        self.log_responsibilities(x, alpha, sigma, out);
        let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for lp in out.iter_mut() {
            *lp = (*lp - max).exp();
            total += *lp;
        }
        out.iter_mut().for_each(|p| *p /= total);
        max + total.ln()
    }

    /// The posterior mean `E[x0 | x]` of one point at `(alpha, sigma)`, written into `out`.
    fn posterior_mean(&self, x: &[f64], level: &NoiseLevel, r: &mut [f64], out: &mut [f64]) {
        let (a, s) = (level.alpha, level.sigma);
        self.responsibilities(x, a, s, r);
        out.iter_mut().for_each(|o| *o = 0.0);
        for (k, &r) in r.iter().enumerate() {
            for j in 0..x.len() {
                let v = self.variances[k][j];
                let mu = self.means[k][j];
                let gain = a * v / (a * a * v + s * s);
                out[j] += r * (mu + gain * (x[j] - a * mu));
            }
        }
    }

    /// The exact probability-flow ODE solution for a single Gaussian: the sample at level `to`
    /// reached from `x` at level `from` (any levels, noisier or cleaner; `from` may be the
    /// terminal level `alpha = 0`). Per dimension, in k-diffusion coordinates `x / alpha`:
    /// `mu + sqrt((v + s_to^2) / (v + s_from^2)) (x / alpha_from - mu)`, then scaled by `alpha_to`.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for a mixture of more than one component (no closed form), and
    /// [`Error::Shape`] if the last axis of `x` is not `dim` long.
    pub fn ode_solution<F: Float, D: Dimension>(
        &self,
        x: ArrayView<'_, F, D>,
        from: &NoiseLevel,
        to: &NoiseLevel,
    ) -> Result<Array<F, D>> {
        if self.weights.len() != 1 {
            return Err(Error::InvalidParameter {
                name: "components",
                value: self.weights.len() as f64,
                reason: "the exact ODE solution needs a single Gaussian",
            });
        }
        self.check_dim(&x)?;
        let (mu, var) = (&self.means[0], &self.variances[0]);
        let mut out = x.to_owned();
        let last = Axis(out.ndim() - 1);
        for mut lane in out.lanes_mut(last) {
            for (j, v) in lane.iter_mut().enumerate() {
                let xf = v.as_f64();
                // sqrt(v + s_to^2) / sqrt(alpha_f^2 v + sigma_f^2) * (x - alpha_f mu), in VE coordinates.
                let num = (var[j] * to.alpha * to.alpha + to.sigma * to.sigma).sqrt();
                let den = (from.alpha * from.alpha * var[j] + from.sigma * from.sigma).sqrt();
                let ve = num / den * (xf - from.alpha * mu[j]);
                // x_to = alpha_to mu + alpha_to * (VE deviation at s_to) = alpha_to mu + ve-term
                *v = F::cast(to.alpha * mu[j] + ve);
            }
        }
        Ok(out)
    }

    fn check_dim<F, D: Dimension>(&self, x: &ArrayView<'_, F, D>) -> Result<()> {
        if x.ndim() == 0 || x.shape()[x.ndim() - 1] != self.dim() {
            return Err(Error::Shape {
                what: "sample (last axis = data dimension)",
                expected: vec![self.dim()],
                got: x.shape().to_vec(),
            });
        }
        Ok(())
    }

    /// The posterior mean `E[x0 | x]` at `level` for every point of `x` (last axis = data).
    ///
    /// # Errors
    /// [`Error::Shape`] if the last axis of `x` is not `dim` long.
    pub fn x0<F: Float, D: Dimension>(
        &self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<Array<F, D>> {
        self.check_dim(&x)?;
        let d = self.dim();
        let mut out = Array::zeros(x.raw_dim());
        let last = Axis(x.ndim() - 1);
        let mut xin = vec![0.0; d];
        let mut x0 = vec![0.0; d];
        let mut logp = vec![0.0; self.weights.len()];
        Zip::from(out.lanes_mut(last))
            .and(x.lanes(last))
            .for_each(|mut o, xi| {
                for (dst, &src) in xin.iter_mut().zip(xi.iter()) {
                    *dst = src.as_f64();
                }
                self.posterior_mean(&xin, level, &mut logp, &mut x0);
                for (dst, &src) in o.iter_mut().zip(&x0) {
                    *dst = F::cast(src);
                }
            });
        if out.iter().all(|v| v.is_finite()) {
            Ok(out)
        } else {
            Err(Error::NonFinite {
                step: 0,
                level: *level,
                what: "exact posterior mean (a non-finite input or level, or an overflow)",
            })
        }
    }
}

impl GaussianMixture {
    /// The log density of every point of `x` (last axis = data) under the noisy data
    /// distribution at `level`: the mixture of `N(alpha mu_k, alpha^2 v_k + sigma^2)` (at the
    /// clean level, the data density itself). Points in row-major order of the other axes.
    ///
    /// ```
    /// use diffusion_samplers::{analytic::GaussianMixture, NoiseLevel};
    /// use ndarray::array;
    /// let g = GaussianMixture::gaussian(vec![0.0], vec![1.0])?;
    /// let lp = g.log_density(array![[0.0f64]].view(), &NoiseLevel::CLEAN)?;
    /// assert!((lp[0] + 0.5 * (2.0 * std::f64::consts::PI).ln()).abs() < 1e-15);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] if the last axis of `x` is not `dim` long.
    pub fn log_density<F: Float, D: Dimension>(
        &self,
        x: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<Vec<f64>> {
        self.check_dim(&x)?;
        let d = self.dim() as f64;
        let mut logp = vec![0.0; self.weights.len()];
        let mut xin = vec![0.0; self.dim()];
        Ok(x.lanes(Axis(x.ndim() - 1))
            .into_iter()
            .map(|lane| {
                for (dst, &src) in xin.iter_mut().zip(lane.iter()) {
                    *dst = src.as_f64();
                }
                self.responsibilities(&xin, level.alpha, level.sigma, &mut logp)
                    - 0.5 * d * (2.0 * std::f64::consts::PI).ln()
            })
            .collect())
    }

    /// The Jacobian-vector product of the posterior mean: `d E[x0 | x] / dx . v` at `level`
    /// for every point of `x` (last axis = data), exactly:
    /// `sum_k r_k (g_k v + m_k (a_k . v - sum_j r_j a_j . v))` with responsibilities `r_k`,
    /// gains `g_k = alpha v_k / (alpha^2 v_k + sigma^2)`, component means `m_k` and scores
    /// `a_k = -(x - alpha mu_k) / (alpha^2 v_k + sigma^2)`.
    ///
    /// ```
    /// use diffusion_samplers::{analytic::GaussianMixture, NoiseLevel};
    /// use ndarray::array;
    /// let g = GaussianMixture::new(vec![0.5, 0.5], vec![vec![-1.0], vec![1.0]], vec![vec![0.1], vec![0.1]])?;
    /// let (x, v, l) = (array![[0.2f64]], array![[1.0f64]], NoiseLevel::from_alpha_bar(0.0, 0.5));
    /// let j = g.x0_jvp(x.view(), v.view(), &l)?;
    /// let h = 1e-6;
    /// let d = (g.x0((&x + h).view(), &l)? - g.x0((&x - h).view(), &l)?) / (2.0 * h);
    /// assert!((j[[0, 0]] - d[[0, 0]]).abs() < 1e-7);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] if `x` and `v` differ in shape or the last axis is not `dim` long.
    pub fn x0_jvp<F: Float, D: Dimension>(
        &self,
        x: ArrayView<'_, F, D>,
        v: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<Array<F, D>> {
        self.check_dim(&x)?;
        if x.shape() != v.shape() {
            return Err(Error::Shape {
                what: "tangent vs sample",
                expected: x.shape().to_vec(),
                got: v.shape().to_vec(),
            });
        }
        let (a, s) = (level.alpha, level.sigma);
        let (d, k) = (self.dim(), self.weights.len());
        let mut out = Array::zeros(x.raw_dim());
        let last = Axis(x.ndim() - 1);
        let (mut xin, mut vin) = (vec![0.0; d], vec![0.0; d]);
        let mut r = vec![0.0; k];
        let mut sk = vec![0.0; k];
        Zip::from(out.lanes_mut(last))
            .and(x.lanes(last))
            .and(v.lanes(last))
            .for_each(|mut o, xi, vi| {
                for j in 0..d {
                    xin[j] = xi[j].as_f64();
                    vin[j] = vi[j].as_f64();
                }
                self.responsibilities(&xin, a, s, &mut r);
                for (c, sc) in sk.iter_mut().enumerate() {
                    *sc = (0..d)
                        .map(|j| {
                            let var = a * a * self.variances[c][j] + s * s;
                            -(xin[j] - a * self.means[c][j]) / var * vin[j]
                        })
                        .sum();
                }
                let sbar: f64 = r.iter().zip(&sk).map(|(r, s)| r * s).sum();
                for j in 0..d {
                    let mut acc = 0.0;
                    for c in 0..k {
                        let var = a * a * self.variances[c][j] + s * s;
                        let gain = a * self.variances[c][j] / var;
                        let m = self.means[c][j] + gain * (xin[j] - a * self.means[c][j]);
                        acc += r[c] * (gain * vin[j] + m * (sk[c] - sbar));
                    }
                    o[j] = F::cast(acc);
                }
            });
        Ok(out)
    }
}

impl<F: Float, D: Dimension> crate::likelihood::DenoiserJvp<F, D> for GaussianMixture {
    fn denoise_jvp(
        &mut self,
        x: ArrayView<'_, F, D>,
        v: ArrayView<'_, F, D>,
        level: &NoiseLevel,
    ) -> Result<crate::likelihood::OutputAndJvp<F, D>, BoxError> {
        let out = Denoiser::denoise(self, x.view(), level)?;
        let jx0 = self.x0_jvp(x, v.view(), level)?;
        // The output is linear in (x0, x): its derivative along v is the same map of (dx0, v).
        let j = Prediction::Sample.convert(self.prediction, jx0.view(), v, level)?;
        Ok((out, j))
    }
}

impl<F: Float, D: Dimension> Denoiser<F, D> for GaussianMixture {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn denoise(&mut self, x: ArrayView<'_, F, D>, level: &NoiseLevel) -> Result<Array<F, D>, BoxError> {
        let x0 = self.x0(x.view(), level)?;
        Ok(Prediction::Sample.convert(self.prediction, x0.view(), x, level)?)
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::array;
    use rand::{SeedableRng, rngs::StdRng};

    /// Regression: weights summing to infinity were accepted (all normalised to 0).
    #[test]
    fn weights_summing_to_infinity_are_an_error() {
        let r = GaussianMixture::new(
            vec![1e308, 1e308],
            vec![vec![0.0], vec![1.0]],
            vec![vec![1.0], vec![1.0]],
        );
        assert!(matches!(r, Err(Error::InvalidParameter { name: "weights", .. })));
    }

    #[test]
    fn single_gaussian_posterior_is_linear() {
        let g = GaussianMixture::gaussian(vec![0.3], vec![0.25]).unwrap();
        let l = NoiseLevel::from_alpha_bar(0.0, 0.5);
        let x = array![[1.0f64]];
        let got = g.x0(x.view(), &l).unwrap()[[0, 0]];
        let (a, s) = (l.alpha, l.sigma);
        let want = 0.3 + a * 0.25 / (a * a * 0.25 + s * s) * (1.0 - a * 0.3);
        assert_relative_eq!(got, want, max_relative = 1e-14);
    }

    #[test]
    fn terminal_level_gives_the_mean() {
        let g = GaussianMixture::new(
            vec![1.0, 3.0],
            vec![vec![-1.0], vec![1.0]],
            vec![vec![0.1], vec![0.2]],
        )
        .unwrap();
        let x = array![[5.0f64], [-7.0]];
        let x0 = g.x0(x.view(), &NoiseLevel::new(999.0, 0.0, 1.0)).unwrap();
        assert_relative_eq!(x0[[0, 0]], 0.5, max_relative = 1e-12);
        assert_relative_eq!(x0[[1, 0]], 0.5, max_relative = 1e-12);
        assert_relative_eq!(g.mean()[0], 0.5, max_relative = 1e-12);
        // variance = E[var] + var of means = 0.175 + 0.75
        assert_relative_eq!(g.covariance()[[0, 0]], 0.925, max_relative = 1e-12);
    }

    #[test]
    fn ode_solution_composes() {
        let g = GaussianMixture::gaussian(vec![0.3, -1.0], vec![0.25, 2.0]).unwrap();
        let a = NoiseLevel::from_sigma_ve(0.0, 80.0);
        let b = NoiseLevel::from_sigma_ve(0.0, 3.0);
        let c = NoiseLevel::from_sigma_ve(0.0, 0.01);
        let x = array![[10.0f64, -20.0]];
        let direct = g.ode_solution(x.view(), &a, &c).unwrap();
        let two = g
            .ode_solution(g.ode_solution(x.view(), &a, &b).unwrap().view(), &b, &c)
            .unwrap();
        assert_relative_eq!(direct, two, max_relative = 1e-12);
        let back = g.ode_solution(direct.view(), &c, &a).unwrap();
        assert_relative_eq!(back, x, max_relative = 1e-10);
    }

    #[test]
    fn sampling_matches_moments_and_modes() {
        let g = GaussianMixture::new(
            vec![0.25, 0.75],
            vec![vec![-3.0, 0.0], vec![3.0, 1.0]],
            vec![vec![0.2, 0.2], vec![0.5, 0.1]],
        )
        .unwrap();
        let xs: Array2<f64> = g.sample(20000, &mut StdRng::seed_from_u64(3));
        let m = xs.mean_axis(Axis(0)).unwrap();
        assert!((m[0] - g.mean()[0]).abs() < 0.05 && (m[1] - g.mean()[1]).abs() < 0.02);
        let left = xs
            .rows()
            .into_iter()
            .filter(|r| g.component_of(r.as_slice().unwrap()) == 0)
            .count();
        assert!((left as f64 / 20000.0 - 0.25).abs() < 0.02);
    }

    #[test]
    fn bad_parameters_and_shapes() {
        assert!(GaussianMixture::new(vec![], vec![], vec![]).is_err());
        assert!(GaussianMixture::new(vec![1.0], vec![vec![0.0]], vec![vec![-1.0]]).is_err());
        assert!(GaussianMixture::new(vec![0.0], vec![vec![0.0]], vec![vec![1.0]]).is_err());
        assert!(
            GaussianMixture::new(
                vec![1.0, 1.0],
                vec![vec![0.0], vec![0.0, 1.0]],
                vec![vec![1.0], vec![1.0]]
            )
            .is_err()
        );
        let g = GaussianMixture::gaussian(vec![0.0, 0.0], vec![1.0, 1.0]).unwrap();
        let x = array![[1.0f64, 2.0, 3.0]];
        assert!(matches!(
            g.x0(x.view(), &NoiseLevel::CLEAN),
            Err(Error::Shape { .. })
        ));
        let two = GaussianMixture::new(
            vec![1.0, 1.0],
            vec![vec![0.0], vec![1.0]],
            vec![vec![1.0], vec![1.0]],
        )
        .unwrap();
        let l = NoiseLevel::from_alpha_bar(0.0, 0.5);
        assert!(two.ode_solution(array![[0.0f64]].view(), &l, &l).is_err());
    }
}
