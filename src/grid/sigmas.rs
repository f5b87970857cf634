//! Sigma lists: Karras, exponential and Beta spacings, and the checks of user-given lists.

use crate::error::{Error, MAX_STEPS, Result};

/// Karras et al. 2022 sigmas: `(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho`,
/// `i = 0..n` (k-diffusion's `get_sigmas_karras` without the appended zero).
///
/// ```
/// let s = diffusion_samplers::karras_sigmas(3, 0.002, 80.0, 7.0)?;
/// assert!((s[0] - 80.0).abs() < 1e-12 && (s[2] - 0.002).abs() < 1e-15);
/// assert!(diffusion_samplers::karras_sigmas(0, 0.002, 80.0, 7.0).is_err());
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidSteps`] unless `1 <= n <= MAX_STEPS`; [`Error::InvalidParameter`] unless
/// `0 < sigma_min <= sigma_max < inf` (strictly below for `n > 1`) and `rho` is positive and
/// finite, or when `rho` is so extreme that the sigmas underflow, overflow or repeat.
pub fn karras_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    check_range(n, sigma_min, sigma_max)?;
    if !(rho > 0.0 && rho.is_finite()) {
        return Err(Error::InvalidParameter {
            name: "rho",
            value: rho,
            reason: "must be positive and finite",
        });
    }
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    let s = ramp(n)
        .into_iter()
        .map(|r| (hi + r * (lo - hi)).powf(rho))
        .collect();
    checked_output(s, "rho", rho)
}

/// Sigmas evenly spaced in log-sigma from `sigma_max` down to `sigma_min` (k-diffusion's
/// `get_sigmas_exponential` without the appended zero).
///
/// ```
/// let s = diffusion_samplers::exponential_sigmas(3, 0.1, 10.0)?;
/// assert!((s[1] - 1.0).abs() < 1e-12);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`karras_sigmas`] (without `rho`).
pub fn exponential_sigmas(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f64>> {
    check_range(n, sigma_min, sigma_max)?;
    let (lo, hi) = (sigma_min.ln(), sigma_max.ln());
    let s = crate::schedule::linspace(hi, lo, n)
        .into_iter()
        .map(f64::exp)
        .collect();
    checked_output(s, "sigma_min", sigma_min)
}

/// Sigmas at the quantiles of Beta(alpha, beta) between `sigma_max` and `sigma_min`
/// (diffusers' `use_beta_sigmas`: `smin + ppf(1 - i/(n-1)) (smax - smin)`).
///
/// ```
/// let s = diffusion_samplers::grid::beta_sigmas(5, 0.03, 14.6, 0.6, 0.6)?;
/// assert!((s[0] - 14.6).abs() < 1e-9 && (s[4] - 0.03).abs() < 1e-12);
/// assert!((s[2] - (0.03 + 14.6) / 2.0).abs() < 1e-9); // the median of a symmetric Beta
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`karras_sigmas`]; [`Error::InvalidParameter`] for shape parameters that are not
/// positive and finite.
pub fn beta_sigmas(n: usize, sigma_min: f64, sigma_max: f64, alpha: f64, beta: f64) -> Result<Vec<f64>> {
    check_range(n, sigma_min, sigma_max)?;
    check_beta_shape(alpha, beta)?;
    let s = ramp(n)
        .into_iter()
        .map(|r| sigma_min + crate::special::beta_ppf(1.0 - r, alpha, beta) * (sigma_max - sigma_min))
        .collect();
    checked_output(s, "alpha", alpha)
}

fn check_range(n: usize, sigma_min: f64, sigma_max: f64) -> Result<()> {
    if n == 0 || n > MAX_STEPS {
        return Err(Error::InvalidSteps {
            steps: n,
            max: MAX_STEPS,
        });
    }
    if !(sigma_min > 0.0 && sigma_min.is_finite()) {
        return Err(Error::InvalidParameter {
            name: "sigma_min",
            value: sigma_min,
            reason: "must be positive and finite",
        });
    }
    let ok = if n == 1 {
        sigma_max >= sigma_min
    } else {
        sigma_max > sigma_min
    };
    if !(ok && sigma_max.is_finite()) {
        return Err(Error::InvalidParameter {
            name: "sigma_max",
            value: sigma_max,
            reason: "must be finite and above sigma_min",
        });
    }
    Ok(())
}

/// The computed sigmas, if every one is positive and finite and they decrease strictly;
/// otherwise an error naming the parameter that pushed the formula out of range.
fn checked_output(s: Vec<f64>, name: &'static str, value: f64) -> Result<Vec<f64>> {
    let ok = s.iter().all(|v| *v > 0.0 && v.is_finite()) && s.windows(2).all(|w| w[1] < w[0]);
    if ok {
        Ok(s)
    } else {
        Err(Error::InvalidParameter {
            name,
            value,
            reason: "the spacing formula produces sigmas that underflow, overflow or repeat",
        })
    }
}

pub(crate) fn check_beta_shape(alpha: f64, beta: f64) -> Result<()> {
    for (name, v) in [("alpha", alpha), ("beta", beta)] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(Error::InvalidParameter {
                name,
                value: v,
                reason: "Beta shape parameters must be positive and finite",
            });
        }
    }
    Ok(())
}

/// Validates a list of sigmas (strictly decreasing, positive; the first may be `+inf` when
/// `allow_inf` holds; an optional trailing 0) and returns it without the trailing 0.
pub(crate) fn check_sigma_list(sigmas: &[f64], allow_inf: bool) -> Result<&[f64]> {
    let body = match sigmas.split_last() {
        Some((&0.0, rest)) => rest,
        _ => sigmas,
    };
    if body.is_empty() || body.len() > MAX_STEPS {
        return Err(Error::InvalidSteps {
            steps: body.len(),
            max: MAX_STEPS,
        });
    }
    let bad = |index, value, reason| Error::InvalidValue {
        what: "sigmas",
        index,
        value,
        reason,
    };
    for (i, &s) in body.iter().enumerate() {
        if s.is_nan() || s <= 0.0 || (s.is_infinite() && (i > 0 || !allow_inf)) {
            return Err(bad(
                i,
                s,
                "sigmas must be positive and finite (the first may be +inf where pure noise exists)",
            ));
        }
        if i > 0 && s >= body[i - 1] {
            return Err(bad(i, s, "sigmas must decrease strictly"));
        }
    }
    Ok(body)
}

/// `linspace(0, 1, n)`.
fn ramp(n: usize) -> Vec<f64> {
    crate::schedule::linspace(0.0, 1.0, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: `karras_sigmas(0, ..)` (and the exponential and Beta lists) overflowed a
    /// subtraction (debug) or indexed out of bounds (release).
    #[test]
    fn zero_length_sigma_lists_are_errors() {
        assert!(matches!(
            karras_sigmas(0, 0.1, 10.0, 7.0),
            Err(Error::InvalidSteps { steps: 0, .. })
        ));
        assert!(matches!(
            exponential_sigmas(0, 0.1, 10.0),
            Err(Error::InvalidSteps { steps: 0, .. })
        ));
        assert!(matches!(
            beta_sigmas(0, 0.1, 10.0, 0.6, 0.6),
            Err(Error::InvalidSteps { steps: 0, .. })
        ));
        let one = karras_sigmas(1, 0.1, 10.0, 7.0).unwrap();
        assert!(one.len() == 1 && (one[0] - 10.0).abs() < 1e-12);
    }

    #[test]
    fn bad_ranges_are_errors() {
        assert!(karras_sigmas(5, 0.0, 10.0, 7.0).is_err());
        assert!(karras_sigmas(5, 1.0, f64::INFINITY, 7.0).is_err());
        assert!(karras_sigmas(5, 1.0, 1.0, 7.0).is_err());
        assert!(karras_sigmas(5, 0.1, 10.0, f64::NAN).is_err());
        assert!(exponential_sigmas(5, f64::NAN, 10.0).is_err());
        assert!(beta_sigmas(5, 0.1, 10.0, 0.0, 0.6).is_err());
        assert!(matches!(
            karras_sigmas(5, 1e-300, 1e300, 1e-300),
            Err(Error::InvalidParameter { name: "rho", .. })
        ));
    }
}
