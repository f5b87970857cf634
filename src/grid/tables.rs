//! Published sigma tables and ComfyUI's sigma-list nodes: Align Your Steps, GITS, OptimalSteps
//! (with ComfyUI's log-linear interpolation to other step counts), and the polyexponential, VP,
//! Laplace, SD-Turbo and Beta-sampling schedulers of `comfy_extras/nodes_custom_sampler.py`.
//!
//! Each returns a sigma list for [`ModelSampling::grid`] (or [`Grid::ve`](super::Grid::ve)),
//! ending with 0 except [`laplace_sigmas`] (as ComfyUI's node). `tests/golden_comfyui.rs`
//! checks every one against ComfyUI's nodes.

#[rustfmt::skip]
mod data {
    include!("tables_data.rs");
}

use super::ModelSampling;
use super::comfy::torch_linspace;
use crate::error::{Error, MAX_STEPS, Result};
use crate::schedule::check_steps;

/// The models Align Your Steps[^ays] published 10-step sigma tables for.
///
/// [^ays]: A. Sabour, S. Fidler, K. Kreis, *Align Your Steps: Optimizing Sampling Schedules in
///     Diffusion Models*, ICML 2024, arXiv:2404.14507.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AysModel {
    /// Stable Diffusion 1.x (its k-diffusion sigmas, 14.61 to 0.029).
    Sd1,
    /// Stable Diffusion XL (the same sigma range, another table).
    Sdxl,
    /// Stable Video Diffusion (EDM sigmas, 700 to 0.002).
    Svd,
}

/// The models OptimalSteps[^os] published flow-sigma tables for.
///
/// [^os]: B. Pei et al., *Optimal Stepsize for Diffusion Sampling*, arXiv:2503.21774.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptimalStepsModel {
    /// FLUX (10 steps).
    Flux,
    /// Wan (20 steps).
    Wan,
    /// Chroma (40 steps).
    Chroma,
}

/// ComfyUI's (and the AYS how-to's) `loglinear_interp`: `t` (decreasing) resampled to `n`
/// values, linearly in `ln t` over a uniform index.
///
/// # Example
/// ```
/// use diffusion_samplers::grid::*;
/// let s = loglinear_interp(&[10.0, 1.0, 0.1], 5)?;
/// assert!((s[1] - 10f64.sqrt()).abs() < 1e-12 && (s[4] - 0.1).abs() < 1e-15);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidValue`] for a table with a non-positive or non-finite value;
/// [`Error::InvalidSteps`] for `n < 2` or a table of fewer than two values.
pub fn loglinear_interp(t: &[f64], n: usize) -> Result<Vec<f64>> {
    if !(2..=MAX_STEPS + 1).contains(&n) || t.len() < 2 {
        return Err(Error::InvalidSteps {
            steps: n.saturating_sub(1),
            max: MAX_STEPS,
        });
    }
    if let Some((index, &value)) = t.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v > 0.0)) {
        return Err(Error::InvalidValue {
            what: "sigma table",
            index,
            value,
            reason: "table values must be positive and finite",
        });
    }
    let ys: Vec<f64> = t.iter().rev().map(|v| v.ln()).collect();
    let m = ys.len() - 1;
    let mut out: Vec<f64> = (0..n)
        .map(|i| {
            // np.interp of new_xs = linspace(0, 1, n) on xs = linspace(0, 1, len(t)).
            let x = if i + 1 == n {
                1.0
            } else {
                i as f64 / (n - 1) as f64
            };
            let pos = x * m as f64;
            let k = (pos.floor() as usize).min(m - 1);
            let (x0, x1) = (k as f64 / m as f64, (k + 1) as f64 / m as f64);
            let y = ys[k] + (x - x0) * (ys[k + 1] - ys[k]) / (x1 - x0);
            y.exp()
        })
        .collect();
    out.reverse();
    Ok(out)
}

/// The last `round(steps × denoise) + 1` entries of a table resampled to `steps + 1`, the last
/// set to 0 (the three table nodes' convention; `round` is Python's, half to even).
fn table_sigmas(table: &[f64], steps: usize, denoise: f64, keep_table: bool) -> Result<Vec<f64>> {
    check_denoise(denoise)?;
    check_steps(steps)?;
    let total = if denoise < 1.0 {
        (steps as f64 * denoise).round_ties_even() as usize
    } else {
        steps
    };
    if total == 0 {
        return Err(Error::InvalidSteps {
            steps: 0,
            max: MAX_STEPS,
        });
    }
    let mut s = if keep_table || steps + 1 == table.len() {
        table.to_vec()
    } else {
        loglinear_interp(table, steps + 1)?
    };
    let keep = (total + 1).min(s.len());
    s.drain(..s.len() - keep);
    if let Some(last) = s.last_mut() {
        *last = 0.0;
    }
    Ok(s)
}

fn check_denoise(denoise: f64) -> Result<()> {
    if denoise > 0.0 && denoise <= 1.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name: "denoise",
            value: denoise,
            reason: "must be in (0, 1]",
        })
    }
}

/// ComfyUI's `AlignYourStepsScheduler`: the model's 10-step table, log-linearly interpolated
/// to `steps`, the last `round(steps × denoise)` steps of it, ending with 0.
///
/// ```
/// use diffusion_samplers::grid::{ays_sigmas, AysModel};
/// let s = ays_sigmas(AysModel::Sd1, 10, 1.0)?;
/// assert_eq!((s.len(), s[0], s[10]), (11, 14.6146412293, 0.0));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidSteps`] for 0 steps or a `denoise` that leaves none;
/// [`Error::InvalidParameter`] for `denoise` outside `(0, 1]`.
pub fn ays_sigmas(model: AysModel, steps: usize, denoise: f64) -> Result<Vec<f64>> {
    let t = data::AYS[model as usize];
    table_sigmas(t, steps, denoise, false)
}

/// diffusers' `AysSchedules` timesteps (10 steps, for
/// [`NoiseSchedule::grid_from_timesteps`](crate::NoiseSchedule::grid_from_timesteps)): SD 1.x
/// `[999, 850, ..., 24]`, SDXL `[999, 845, ..., 13]`; `None` for SVD, which diffusers gives as
/// sigmas only.
///
/// # Example
/// ```
/// use diffusion_samplers::grid::*;
/// use diffusion_samplers::NoiseSchedule;
/// let t = diffusers_ays_timesteps(AysModel::Sd1).unwrap();
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid_from_timesteps(t)?;
/// assert_eq!(grid.steps(), 10);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
pub fn diffusers_ays_timesteps(model: AysModel) -> Option<&'static [f64]> {
    match model {
        AysModel::Sd1 => Some(data::DIFFUSERS_AYS_TIMESTEPS[0]),
        AysModel::Sdxl => Some(data::DIFFUSERS_AYS_TIMESTEPS[1]),
        AysModel::Svd => None,
    }
}

/// diffusers' `AysSchedules` sigmas, ending with 0 (for [`Grid::ve`](super::Grid::ve) or
/// `ModelSampling::grid`): three decimals, and up to 0.0035 away from the published tables of
/// [`ays_sigmas`] (1.4% at SDXL's ninth sigma; SVD's are the same).
pub fn diffusers_ays_sigmas(model: AysModel) -> &'static [f64] {
    data::DIFFUSERS_AYS_SIGMAS[model as usize]
}

/// ComfyUI's `OptimalStepsScheduler` (flow sigmas; as [`ays_sigmas`]).
///
/// # Example
/// ```
/// use diffusion_samplers::grid::*;
/// let s = optimal_steps_sigmas(OptimalStepsModel::Flux, 10, 1.0)?;
/// assert_eq!((s.len(), s[0], s[10]), (11, 0.9968, 0.0));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// As [`ays_sigmas`].
pub fn optimal_steps_sigmas(model: OptimalStepsModel, steps: usize, denoise: f64) -> Result<Vec<f64>> {
    let t = data::OPTIMAL_STEPS[model as usize];
    table_sigmas(t, steps, denoise, false)
}

/// ComfyUI's `GITSScheduler`[^gits] (SD 1.5 sigmas): the published table for `coeff` (0.80 to
/// 1.50 in steps of 0.05) and 2 to 20 steps; more steps interpolate the 20-step table
/// log-linearly; then the last `round(steps × denoise)` steps, ending with 0.
///
/// # Example
/// ```
/// use diffusion_samplers::grid::*;
/// let s = gits_sigmas(1.2, 10, 1.0)?;
/// assert_eq!((s.len(), s[10]), (11, 0.0));
/// assert!(s.windows(2).all(|w| w[0] > w[1]));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for another `coeff` or `denoise` outside `(0, 1]`;
/// [`Error::InvalidSteps`] for fewer than 2 steps.
///
/// [^gits]: D. Chen et al., *On the Trajectory Regularity of ODE-based Diffusion Sampling*
///     (GITS), ICML 2024, arXiv:2405.11326.
pub fn gits_sigmas(coeff: f64, steps: usize, denoise: f64) -> Result<Vec<f64>> {
    let k = ((coeff - 0.80) / 0.05).round();
    if !(coeff.is_finite() && (0.0..=14.0).contains(&k) && (coeff - (0.80 + 0.05 * k)).abs() < 1e-6) {
        return Err(Error::InvalidParameter {
            name: "coeff",
            value: coeff,
            reason: "GITS tables exist for 0.80 to 1.50 in steps of 0.05",
        });
    }
    if steps < 2 {
        return Err(Error::InvalidSteps {
            steps,
            max: MAX_STEPS,
        });
    }
    let tables = &data::GITS[k as usize];
    if steps <= 20 {
        table_sigmas(tables[steps - 2], steps, denoise, true)
    } else {
        table_sigmas(tables[18], steps, denoise, false)
    }
}

fn check_range(n: usize, lo: f64, hi: f64) -> Result<()> {
    check_steps(n)?;
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return Err(Error::InvalidParameter {
            name: "sigma_min",
            value: lo,
            reason: "need 0 < sigma_min < sigma_max < inf",
        });
    }
    Ok(())
}

fn check_finite_param(name: &'static str, value: f64, positive: bool) -> Result<()> {
    if value.is_finite() && (!positive || value > 0.0) {
        Ok(())
    } else {
        Err(Error::InvalidParameter {
            name,
            value,
            reason: if positive {
                "must be positive and finite"
            } else {
                "must be finite"
            },
        })
    }
}

/// k-diffusion's `get_sigmas_polyexponential` (ComfyUI's `PolyexponentialScheduler`): `n`
/// sigmas `exp(ramp^rho (ln max - ln min) + ln min)`, `ramp` from 1 to 0, then 0.
///
/// # Example
/// ```
/// use diffusion_samplers::grid::*;
/// let s = polyexponential_sigmas(4, 0.002, 80.0, 1.0)?;
/// assert_eq!(s.len(), 5);
/// assert!((s[0] - 80.0).abs() < 1e-12 && (s[3] - 0.002).abs() < 1e-15 && s[4] == 0.0);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidSteps`] for `n = 0`; [`Error::InvalidParameter`] for a bad range or `rho`.
pub fn polyexponential_sigmas(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    check_range(n, sigma_min, sigma_max)?;
    check_finite_param("rho", rho, true)?;
    let (lo, hi) = (sigma_min.ln(), sigma_max.ln());
    let mut s: Vec<f64> = torch_linspace(1.0, 0.0, n)
        .into_iter()
        .map(|r| (r.powf(rho) * (hi - lo) + lo).exp())
        .collect();
    s.push(0.0);
    Ok(s)
}

/// k-diffusion's `get_sigmas_vp` (ComfyUI's `VPScheduler`): the continuous VP schedule
/// `sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)` at `n` times from 1 to `eps_s`,
/// then 0.
///
/// # Example
/// ```
/// use diffusion_samplers::grid::*;
/// let s = vp_sigmas(10, 19.9, 0.1, 1e-3)?;
/// assert!((s[0] - 152.1670).abs() < 1e-3 && s[10] == 0.0);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidSteps`] for `n = 0`; [`Error::InvalidParameter`] for a non-positive or
/// non-finite parameter or `eps_s >= 1`.
pub fn vp_sigmas(n: usize, beta_d: f64, beta_min: f64, eps_s: f64) -> Result<Vec<f64>> {
    check_steps(n)?;
    check_finite_param("beta_d", beta_d, true)?;
    check_finite_param("beta_min", beta_min, true)?;
    check_finite_param("eps_s", eps_s, true)?;
    if eps_s >= 1.0 {
        return Err(Error::InvalidParameter {
            name: "eps_s",
            value: eps_s,
            reason: "must be below 1",
        });
    }
    let mut s: Vec<f64> = torch_linspace(1.0, eps_s, n)
        .into_iter()
        .map(|t| (beta_d * t * t / 2.0 + beta_min * t).exp_m1().sqrt())
        .collect();
    s.push(0.0);
    Ok(s)
}

/// k-diffusion's `get_sigmas_laplace` (ComfyUI's `LaplaceScheduler`; Tiankai et al. 2024): `n`
/// sigmas `exp(mu - beta sign(1/2 - x) ln(1 - 2|1/2 - x| + 1e-5))`, `x` from 0 to 1, clamped
/// to `[sigma_min, sigma_max]` — **without** a trailing 0, as ComfyUI's node.
///
/// # Example
/// ```
/// use diffusion_samplers::grid::*;
/// let s = laplace_sigmas(5, 0.0291675, 14.614642, 0.0, 0.5)?;
/// assert_eq!(s.len(), 5); // no trailing 0
/// assert!((s[2] - 1.0).abs() < 1e-12);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidSteps`] for `n = 0`; [`Error::InvalidParameter`] for a bad range, `mu` or
/// `beta`.
pub fn laplace_sigmas(n: usize, sigma_min: f64, sigma_max: f64, mu: f64, beta: f64) -> Result<Vec<f64>> {
    check_range(n, sigma_min, sigma_max)?;
    check_finite_param("mu", mu, false)?;
    check_finite_param("beta", beta, true)?;
    Ok(torch_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| {
            let d = 0.5 - x;
            let sign = if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else {
                0.0
            };
            let lmb = mu - beta * sign * (1.0 - 2.0 * d.abs() + 1e-5).ln();
            lmb.exp().clamp(sigma_min, sigma_max)
        })
        .collect())
}

impl ModelSampling {
    /// ComfyUI's `SDTurboScheduler`: the model's sigmas at timesteps `999, 899, ..., 99`, from
    /// index `10 - int(10 denoise)`, `steps` of them (fewer if the list ends), then 0.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for 0 or more than 10 steps, or none left after the offset;
    /// [`Error::InvalidParameter`] for `denoise` outside `(0, 1]`.
    pub fn sd_turbo_sigmas(&self, steps: usize, denoise: f64) -> Result<Vec<f64>> {
        check_denoise(denoise)?;
        let start = 10 - ((10.0 * denoise) as usize).min(10);
        if steps == 0 || steps > 10 || start >= 10 {
            return Err(Error::InvalidSteps { steps, max: 10 });
        }
        let mut s: Vec<f64> = (start..(start + steps).min(10))
            .map(|i| self.sigma((999 - 100 * i) as f64))
            .collect();
        s.push(0.0);
        Ok(s)
    }

    /// ComfyUI's `BetaSamplingScheduler` (and, with `alpha = beta = 0.6`, its `beta`
    /// scheduler[^beta]): the table entries at `rint(ppf_{Beta(alpha, beta)}(1 - i / steps) (T -
    /// 1))`, `i = 0..steps`, repeats dropped (so possibly fewer steps), then 0.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for 0 steps; [`Error::InvalidParameter`] for a non-positive or
    /// non-finite `alpha` or `beta`.
    ///
    /// [^beta]: D. Lee et al., *Beta Sampling is All You Need*, arXiv:2407.12173.
    pub fn beta_sigmas(&self, steps: usize, alpha: f64, beta: f64) -> Result<Vec<f64>> {
        check_steps(steps)?;
        check_finite_param("alpha", alpha, true)?;
        check_finite_param("beta", beta, true)?;
        let table = self.sigmas();
        let total = (table.len() - 1) as f64;
        let mut out = Vec::with_capacity(steps + 1);
        let mut last = f64::NAN;
        for i in 0..steps {
            // numpy's linspace(0, 1, steps, endpoint=False): i * (1 / steps).
            let q = 1.0 - i as f64 * (1.0 / steps as f64);
            let t = (crate::special::beta_ppf(q, alpha, beta) * total).round_ties_even();
            #[allow(clippy::float_cmp, reason = "integer-valued timesteps")]
            if t != last {
                out.push(table[t as usize]);
            }
            last = t;
        }
        out.push(0.0);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers' AYS sigmas and the published tables ComfyUI ships are two transcriptions of
    /// NVIDIA's numbers: within 0.0035 of each other (1.4% at SDXL's 0.113), SVD identical.
    #[test]
    fn diffusers_ays_sigmas_round_the_published_tables() {
        for m in [AysModel::Sd1, AysModel::Sdxl, AysModel::Svd] {
            let ours = ays_sigmas(m, 10, 1.0).unwrap();
            let theirs = diffusers_ays_sigmas(m);
            assert_eq!(ours.len(), theirs.len());
            for (a, b) in ours.iter().zip(theirs) {
                assert!((a - b).abs() <= 0.0035, "{m:?}: {a} vs {b}");
            }
        }
        let sd = crate::NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        for m in [AysModel::Sd1, AysModel::Sdxl] {
            let t = diffusers_ays_timesteps(m).unwrap();
            assert_eq!(sd.grid_from_timesteps(t).unwrap().steps(), 10);
        }
        assert!(diffusers_ays_timesteps(AysModel::Svd).is_none());
    }

    #[test]
    fn interpolation_keeps_the_ends_and_a_same_length_table() {
        let t = [10.0, 1.0, 0.1];
        let s = loglinear_interp(&t, 3).unwrap();
        for (a, b) in s.iter().zip(t) {
            assert!((a - b).abs() < 1e-12);
        }
        let s = loglinear_interp(&t, 5).unwrap();
        assert!((s[1] - 10f64.sqrt() * 1.0).abs() < 1e-12 && (s[4] - 0.1).abs() < 1e-15);
        assert!(loglinear_interp(&[1.0, 0.0], 4).is_err());
        assert!(gits_sigmas(0.82, 10, 1.0).is_err());
        assert!(gits_sigmas(1.2, 1, 1.0).is_err());
        assert!(ays_sigmas(AysModel::Sd1, 10, 0.0).is_err());
        assert!(ays_sigmas(AysModel::Sd1, 1, 0.4).is_err());
    }
}
