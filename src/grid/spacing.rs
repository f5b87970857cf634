//! [`Spacing`]: diffusers' timestep and sigma spacings over a discrete [`NoiseSchedule`].

use std::sync::Arc;

use super::sigmas::{beta_sigmas, check_beta_shape, check_sigma_list, exponential_sigmas, karras_sigmas};
use super::{Grid, LevelMap};
use crate::error::{Error, Result};
use crate::level::NoiseLevel;
use crate::schedule::NoiseSchedule;

/// How a grid's timesteps (or sigmas) are spaced over the training schedule.
///
/// `T` is the number of training timesteps, `N` the number of sampling steps. Formulas follow
/// diffusers (`timestep_spacing`, `use_karras_sigmas`, `use_exponential_sigmas`,
/// `use_beta_sigmas`, LCM's `original_inference_steps`), with numpy's round-half-to-even.
///
/// | variant | timesteps (noisiest first) | diffusers |
/// |---|---|---|
/// | `Leading { offset }` | `(arange(N) * (T // N))[::-1] + offset` | `"leading"` + `steps_offset` (DDIM, DDPM, PNDM default) |
/// | `Trailing` | `round(T - i T / N) - 1`, `i = 0..N` | `"trailing"` |
/// | `Linspace` | `linspace(0, T - 1, N)[::-1]`, fractional | `"linspace"` of the Euler family (default there) |
/// | `LinspaceRounded` | `round(linspace(0, T - 1, N))[::-1]` | `"linspace"` of DDIM / DDPM / PNDM |
/// | `DpmLinspace` | `round(linspace(0, T - 1, N + 1))[::-1][:-1]` | `"linspace"` of DPM-Solver, UniPC, DEIS (default there) |
/// | `DpmLeading { offset }` | `(arange(N + 1) * (T // (N + 1)))[::-1][:-1] + offset` | `"leading"` of DPM-Solver, UniPC, DEIS |
/// | `Karras { rho }` | sigmas `(smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho` | `use_karras_sigmas` (rho = 7) |
/// | `Exponential` | sigmas `exp(linspace(ln smax, ln smin, N))` | `use_exponential_sigmas` |
/// | `Beta { alpha, beta }` | sigmas `smin + ppf(1 - i/(N-1)) (smax - smin)`, ppf of Beta(alpha, beta) | `use_beta_sigmas` (0.6, 0.6) |
/// | `Lcm { original_steps }` | every `len / N`-th of `[T/k - 1, 2T/k - 1, ..., T - 1]`, `k = original_steps` | `LCMScheduler` (50) |
///
/// For the sigma spacings `smin`, `smax` are the k-diffusion sigmas of the first and last
/// training timesteps, and each sigma's `t` is found by log-sigma interpolation
/// ([`NoiseSchedule::sigma_to_t`]). For a [`FlowSchedule`](crate::FlowSchedule) see its
/// [`grid`](crate::FlowSchedule::grid).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Spacing {
    /// Multiples of `T // N` plus an offset (Stable Diffusion uses `offset = 1`).
    Leading {
        /// diffusers' `steps_offset`.
        offset: usize,
    },
    /// Counted back from the last training timestep: always starts at `T - 1`.
    Trailing,
    /// Evenly spaced fractional timesteps from `T - 1` to 0 (Euler family).
    Linspace,
    /// Evenly spaced timesteps from `T - 1` to 0, rounded to integers (DDIM / DDPM family).
    LinspaceRounded,
    /// The DPM-Solver family's linspace: `N + 1` rounded points from `T - 1` to 0, the last
    /// (t = 0) dropped.
    DpmLinspace,
    /// The DPM-Solver family's leading spacing: multiples of `T // (N + 1)`, the last dropped.
    DpmLeading {
        /// diffusers' `steps_offset`.
        offset: usize,
    },
    /// Karras et al. 2022 (EDM) sigmas with exponent `rho` (7 in EDM and diffusers).
    Karras {
        /// The EDM exponent.
        rho: f64,
    },
    /// Sigmas evenly spaced in log-sigma.
    Exponential,
    /// Sigmas at the quantiles of a Beta distribution (Lee et al. 2024, *Beta sampling is all
    /// you need*); diffusers uses `alpha = beta = 0.6`.
    Beta {
        /// First shape parameter.
        alpha: f64,
        /// Second shape parameter.
        beta: f64,
    },
    /// Latent Consistency Models' timesteps: a subset of the `original_steps` distillation
    /// timesteps.
    Lcm {
        /// diffusers' `original_inference_steps` (50).
        original_steps: usize,
    },
}

impl Spacing {
    /// diffusers' beta sigmas: `Beta { alpha: 0.6, beta: 0.6 }`.
    pub const BETA: Spacing = Spacing::Beta {
        alpha: 0.6,
        beta: 0.6,
    };
    /// EDM / diffusers' Karras sigmas: `Karras { rho: 7.0 }`.
    pub const KARRAS: Spacing = Spacing::Karras { rho: 7.0 };
}

/// Leading timesteps `base + offset`, checked: an offset that overflows `usize` or pushes a
/// timestep past `T - 1` is an error (never a wrapped, valid-looking grid).
fn leading(base: impl Iterator<Item = usize>, offset: usize, t_train: usize) -> Result<Vec<f64>> {
    base.enumerate()
        .map(|(i, b)| match b.checked_add(offset) {
            Some(t) if t < t_train => Ok(t as f64),
            _ => Err(Error::InvalidValue {
                what: "timesteps",
                index: i,
                value: b as f64 + offset as f64,
                reason: "the leading offset (steps_offset) pushes this timestep past the last training timestep T - 1",
            }),
        })
        .collect()
}

impl NoiseSchedule {
    /// A grid of `steps` steps with the given spacing, ending at the clean level (change that
    /// with [`Grid::with_final`]).
    ///
    /// ```
    /// use diffusion_samplers::{NoiseSchedule, Spacing};
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// assert_eq!(s.grid(4, Spacing::Trailing)?.timesteps(), vec![999.0, 749.0, 499.0, 249.0]);
    /// assert_eq!(s.grid(4, Spacing::LinspaceRounded)?.timesteps(), vec![999.0, 666.0, 333.0, 0.0]);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// Deliberate differences from diffusers (see the guide): `Trailing` always gives exactly
    /// `steps` timesteps (numpy's float `arange` gives one more, ending at `-1`, for 62 step
    /// counts below 1000, e.g. 61); `Linspace` and `LinspaceRounded` with one step start at
    /// `T - 1` rather than at 0.
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] unless `1 <= steps <= T`; [`Error::InvalidValue`] when a
    /// `Leading` offset pushes a timestep past `T - 1`; [`Error::InvalidParameter`] for a
    /// non-positive `rho`, or a sigma spacing on a schedule whose last level is pure noise
    /// (infinite sigma, zero terminal SNR).
    pub fn grid(&self, steps: usize, spacing: Spacing) -> Result<Grid> {
        let t_train = self.len();
        if steps == 0 || steps > t_train {
            return Err(Error::InvalidSteps { steps, max: t_train });
        }
        let tmax = (t_train - 1) as f64;
        let ts: Vec<f64> = match spacing {
            Spacing::Leading { offset } => {
                let ratio = t_train / steps;
                leading((0..steps).rev().map(|i| i * ratio), offset, t_train)?
            }
            Spacing::DpmLeading { offset } => {
                let ratio = t_train / (steps + 1);
                leading((1..=steps).rev().map(|i| i * ratio), offset, t_train)?
            }
            Spacing::Trailing => {
                // numpy: arange(T, 0, -T/N) computes start + i * delta with
                // delta = (start + step) - start.
                let start = t_train as f64;
                let delta = (start - start / steps as f64) - start;
                (0..steps)
                    .map(|i| (start + i as f64 * delta).round_ties_even() - 1.0)
                    .collect()
            }
            Spacing::Linspace | Spacing::LinspaceRounded => {
                let mut ts = if steps == 1 {
                    vec![tmax]
                } else {
                    crate::schedule::linspace(0.0, tmax, steps)
                };
                ts.reverse();
                if spacing == Spacing::LinspaceRounded {
                    ts.iter_mut().for_each(|t| *t = t.round_ties_even());
                }
                ts
            }
            Spacing::DpmLinspace => {
                let mut ts: Vec<f64> = crate::schedule::linspace(0.0, tmax, steps + 1)
                    .into_iter()
                    .map(f64::round_ties_even)
                    .collect();
                ts.reverse();
                ts.pop();
                ts
            }
            Spacing::Lcm { original_steps } => {
                if original_steps == 0 || original_steps > t_train || steps > original_steps {
                    return Err(Error::InvalidParameter {
                        name: "original_steps",
                        value: original_steps as f64,
                        reason: "LCM needs steps <= original_steps <= training timesteps",
                    });
                }
                let k = t_train / original_steps;
                let origin: Vec<usize> = (1..=original_steps).rev().map(|i| i * k - 1).collect();
                (0..steps)
                    // numpy's linspace(0, L, n, endpoint=False) is i * (L / n), step first:
                    // floor(i * L / n) differs for some (L, n), e.g. (1000, 38) at i = 19.
                    .map(|i| {
                        origin[(i as f64 * (origin.len() as f64 / steps as f64)).floor() as usize] as f64
                    })
                    .collect()
            }
            Spacing::Karras { rho } => {
                if !(rho > 0.0 && rho.is_finite()) {
                    return Err(Error::InvalidParameter {
                        name: "rho",
                        value: rho,
                        reason: "must be positive and finite",
                    });
                }
                let (lo, hi) = self.sigma_range()?;
                return self.grid_from_spaced_sigmas(&karras_sigmas(steps, lo, hi, rho)?, "rho", rho);
            }
            Spacing::Exponential => {
                let (lo, hi) = self.sigma_range()?;
                return self.grid_from_spaced_sigmas(
                    &exponential_sigmas(steps, lo, hi)?,
                    "steps",
                    steps as f64,
                );
            }
            Spacing::Beta { alpha, beta } => {
                check_beta_shape(alpha, beta)?;
                let (lo, hi) = self.sigma_range()?;
                return self.grid_from_spaced_sigmas(
                    &beta_sigmas(steps, lo, hi, alpha, beta)?,
                    "alpha",
                    alpha,
                );
            }
        };
        self.grid_from_timesteps(&ts)
    }

    /// Sigmas computed by a spacing formula must all be positive and finite (an extreme `rho`
    /// can underflow or overflow them); a computed 0 is not a final-level marker.
    fn grid_from_spaced_sigmas(&self, sigmas: &[f64], name: &'static str, value: f64) -> Result<Grid> {
        if sigmas.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(Error::InvalidParameter {
                name,
                value,
                reason: "the spacing formula produces sigmas that underflow, overflow or repeat",
            });
        }
        self.grid_from_sigmas(sigmas)
            .map_err(|_| Error::InvalidParameter {
                name,
                value,
                reason: "the spacing formula produces sigmas that underflow, overflow or repeat",
            })
    }

    fn sigma_range(&self) -> Result<(f64, f64)> {
        let s = self.sigmas_ve();
        let hi = s[s.len() - 1];
        if !hi.is_finite() {
            return Err(Error::InvalidParameter {
                name: "sigma_max",
                value: hi,
                reason: "sigma spacings need a finite largest sigma; a zero-terminal-SNR schedule has none (use a timestep spacing, or grid_from_sigmas with your own sigma_max)",
            });
        }
        Ok((s[0], hi))
    }

    /// A grid through the given model timesteps (strictly decreasing, within `[0, T - 1]`,
    /// fractional allowed), ending at the clean level.
    ///
    /// ```
    /// use diffusion_samplers::NoiseSchedule;
    /// let s = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    /// let g = s.grid_from_timesteps(&[999.0, 500.5, 10.0])?;
    /// assert_eq!(g.steps(), 3);
    /// assert!(s.grid_from_timesteps(&[10.0, 500.0]).is_err());
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for an empty list; [`Error::InvalidValue`] for a timestep that
    /// is non-finite, out of range, or not below its predecessor.
    pub fn grid_from_timesteps(&self, timesteps: &[f64]) -> Result<Grid> {
        if timesteps.is_empty() {
            return Err(Error::InvalidSteps {
                steps: 0,
                max: self.len(),
            });
        }
        let tmax = (self.len() - 1) as f64;
        let bad = |index, value, reason| Error::InvalidValue {
            what: "timesteps",
            index,
            value,
            reason,
        };
        for (i, &t) in timesteps.iter().enumerate() {
            if !t.is_finite() {
                return Err(bad(i, t, "must be finite"));
            }
            if t < 0.0 || t > tmax {
                return Err(bad(i, t, "outside the training timesteps [0, T - 1]"));
            }
            if i > 0 && t >= timesteps[i - 1] {
                return Err(bad(i, t, "timesteps must decrease strictly"));
            }
        }
        let mut levels: Vec<NoiseLevel> = timesteps.iter().map(|&t| self.level(t)).collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::checked(
            levels,
            Some(self.level_of(0)),
            LevelMap::Schedule(Arc::new(self.clone())),
        )
    }

    /// A grid through the given k-diffusion sigmas (`sigma / alpha`, strictly decreasing,
    /// positive; the first may be `+inf` for a zero-terminal-SNR start). A trailing 0, as in
    /// k-diffusion's sigma lists, marks the clean final level and is optional. Each level's `t`
    /// comes from [`NoiseSchedule::sigma_to_t`].
    ///
    /// ```
    /// use diffusion_samplers::{karras_sigmas, NoiseSchedule};
    /// let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let g = s.grid_from_sigmas(&karras_sigmas(20, 0.03, 14.6, 7.0)?)?;
    /// assert_eq!(g.steps(), 20);
    /// assert!((g.levels()[0].sigma_ve() - 14.6).abs() < 1e-12);
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidSteps`] for an empty list (or only a 0); [`Error::InvalidValue`] for a
    /// sigma that is NaN, negative, zero before the end, or not below its predecessor.
    pub fn grid_from_sigmas(&self, sigmas: &[f64]) -> Result<Grid> {
        let body = check_sigma_list(sigmas, true)?;
        let mut levels: Vec<NoiseLevel> = body.iter().map(|&s| self.level_of_sigma_ve(s)).collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::checked(
            levels,
            Some(self.level_of(0)),
            LevelMap::Schedule(Arc::new(self.clone())),
        )
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;
    use crate::grid::FinalLevel;

    fn sd() -> NoiseSchedule {
        NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap()
    }

    #[test]
    fn spacings_match_diffusers_examples() {
        let s = sd();
        let ts = |sp| s.grid(10, sp).unwrap().timesteps();
        assert_eq!(ts(Spacing::Leading { offset: 0 })[..3], [900.0, 800.0, 700.0]);
        assert_eq!(
            ts(Spacing::Trailing)[..],
            [
                999.0, 899.0, 799.0, 699.0, 599.0, 499.0, 399.0, 299.0, 199.0, 99.0
            ]
        );
        assert_eq!(
            ts(Spacing::LinspaceRounded)[..],
            [999.0, 888.0, 777.0, 666.0, 555.0, 444.0, 333.0, 222.0, 111.0, 0.0]
        );
        assert_eq!(ts(Spacing::Linspace)[1], 888.0);
    }

    #[test]
    fn trailing_never_gives_extra_steps() {
        let s = sd();
        for n in [61, 103, 121, 998, 999, 1000] {
            let g = s.grid(n, Spacing::Trailing).unwrap();
            assert_eq!(g.steps(), n);
            assert_eq!(g.timesteps()[0], 999.0);
        }
    }

    #[test]
    fn bad_steps_and_offsets_are_errors() {
        let s = sd();
        assert!(matches!(
            s.grid(0, Spacing::Trailing),
            Err(Error::InvalidSteps { steps: 0, max: 1000 })
        ));
        assert!(matches!(
            s.grid(1001, Spacing::Linspace),
            Err(Error::InvalidSteps { .. })
        ));
        // diffusers issue #10003: 1000 leading steps with steps_offset = 1 index t = 1000.
        assert!(matches!(
            s.grid(1000, Spacing::Leading { offset: 1 }),
            Err(Error::InvalidValue {
                what: "timesteps",
                index: 0,
                ..
            })
        ));
        assert!(s.grid(10, Spacing::Karras { rho: 0.0 }).is_err());
        let z = s.with_zero_terminal_snr().unwrap();
        assert!(matches!(
            z.grid(10, Spacing::Karras { rho: 7.0 }),
            Err(Error::InvalidParameter { .. })
        ));
        assert!(z.grid(10, Spacing::Trailing).unwrap().levels()[0].alpha == 0.0);
    }

    #[test]
    fn custom_lists_are_validated() {
        let s = sd();
        assert!(s.grid_from_timesteps(&[]).is_err());
        assert!(s.grid_from_timesteps(&[f64::NAN]).is_err());
        assert!(s.grid_from_timesteps(&[1000.0]).is_err());
        assert!(s.grid_from_timesteps(&[5.0, 5.0]).is_err());
        assert!(s.grid_from_sigmas(&[0.0]).is_err());
        assert!(s.grid_from_sigmas(&[1.0, 2.0]).is_err());
        assert!(s.grid_from_sigmas(&[1.0, -2.0]).is_err());
        assert!(s.grid_from_sigmas(&[1.0, 0.0, 0.0]).is_err());
        let a = s.grid_from_sigmas(&[10.0, 1.0, 0.1]).unwrap();
        let b = s.grid_from_sigmas(&[10.0, 1.0, 0.1, 0.0]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.steps(), 3);
        assert!(s.grid_from_sigmas(&[f64::INFINITY, 1.0]).is_ok());
        assert!(Grid::from_levels(vec![NoiseLevel::CLEAN]).is_err());
        assert!(Grid::from_levels(vec![NoiseLevel::CLEAN, NoiseLevel::CLEAN]).is_err());
    }

    #[test]
    fn final_level_and_skip() {
        let s = sd();
        let g = s
            .grid(10, Spacing::LinspaceRounded)
            .unwrap()
            .with_final(FinalLevel::FirstTimestep);
        // The last step starts at t = 0 and ends there: a zero-length step.
        assert_eq!(g.levels()[9], g.levels()[10]);
        let g2 = g.clone().with_final(FinalLevel::Clean);
        assert!(g2.levels()[10].is_clean());
        let k = g.skip(4).unwrap();
        assert_eq!(k.steps(), 6);
        assert_eq!(k.timesteps()[0], 555.0);
        assert!(g.skip(10).is_err());
        let r = s.grid(5, Spacing::Karras { rho: 7.0 }).unwrap().round_timesteps();
        assert!(r.timesteps().iter().all(|t| t.fract() == 0.0));
    }
}
