//! What a config builds on the sampler side.

use super::classes::C;
use super::{DiffusersConfig, config_err};
use crate::error::Result;
use crate::grid::Grid;
use crate::sampler::{
    AnySampler, Ddim, Ddpm, DdpmVariance, Deis, Dpm2, Dpm2Ancestral, DpmPpSde, DpmSolver,
    DpmSolverSinglestep, Euler, EulerAncestral, Expecting, Heun, Lcm, Lms, Pndm, SaSolver, Sampler,
    SolverType, Tcd, Thresholding, UniPc, UniPcVariant,
};
use crate::text::{ECHO, short};

/// Why `sampler()` refuses a learned variance, and what reads it.
const LEARNED_VARIANCE: &str = "a learned variance needs the model's variance output: sample with \
                                learned::DdpmLearned (DiffusersConfig::ddpm_learned_from_json builds it)";

impl DiffusersConfig {
    fn thresholding(&self) -> Result<Option<Thresholding>> {
        if !self.class.keys().contains(&"thresholding") || !self.bool_or("thresholding", false)? {
            return Ok(None);
        }
        Ok(Some(Thresholding {
            ratio: self.f64_or("dynamic_thresholding_ratio", 0.995)?,
            max: self.f64_or("sample_max_value", 1.0)?,
        }))
    }

    fn clip(&self, default: bool) -> Result<Option<f64>> {
        if self.bool_or("clip_sample", default)? {
            Ok(Some(self.f64_or("clip_sample_range", 1.0)?))
        } else {
            Ok(None)
        }
    }

    fn solver_type(&self) -> Result<SolverType> {
        match self.str_or("solver_type", "midpoint")? {
            "midpoint" => Ok(SolverType::Midpoint),
            "heun" => Ok(SolverType::Heun),
            other => Err(config_err(
                "solver_type",
                format!("unknown value `{}`", short(other, ECHO)),
            )),
        }
    }

    /// The sampler with the config's options (diffusers' `step` defaults for everything the
    /// pipeline passes at call time: DDIM `eta = 0`, no churn), set up for the config's
    /// `prediction_type`: sampling a model of another type is an
    /// [`Error::PredictionMismatch`](crate::Error::PredictionMismatch). It derefs to the
    /// [`AnySampler`]; [`Expecting::into_inner`] drops the check.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an option value this crate does not reproduce.
    pub fn sampler(&self) -> Result<Expecting<AnySampler>> {
        Ok(self.any_sampler()?.expecting(self.prediction()?))
    }

    pub(super) fn any_sampler(&self) -> Result<AnySampler> {
        let thr = self.thresholding()?;
        let order = |d| self.usize_or("solver_order", d);
        Ok(match self.class {
            C::Ddpm => {
                let v = match self.str_or("variance_type", "fixed_small")? {
                    "fixed_small" => DdpmVariance::FixedSmall,
                    "fixed_large" => DdpmVariance::FixedLarge,
                    "learned" | "learned_range" => {
                        return Err(config_err("variance_type", LEARNED_VARIANCE));
                    }
                    other => {
                        return Err(config_err(
                            "variance_type",
                            format!("`{}` is not supported", short(other, ECHO)),
                        ));
                    }
                };
                Ddpm::new()
                    .variance(v)
                    .clip_sample(self.clip(true)?)
                    .thresholding(thr)
                    .into()
            }
            C::Ddim => Ddim::new().clip_sample(self.clip(true)?).thresholding(thr).into(),
            C::UnClip => match self.str_or("variance_type", "fixed_small_log")? {
                // exp(0.5 log(clamp(beta~, 1e-20))): the posterior variance.
                "fixed_small_log" => Ddpm::new().clip_sample(self.clip(true)?).into(),
                "learned_range" => {
                    return Err(config_err("variance_type", LEARNED_VARIANCE));
                }
                other => {
                    return Err(config_err(
                        "variance_type",
                        format!("unknown value `{}`", short(other, ECHO)),
                    ));
                }
            },
            C::Pndm => Pndm::new()
                .skip_prk_steps(self.bool_or("skip_prk_steps", false)?)
                .into(),
            // FlowMatchEuler's stochastic_sampling is FlowMatchLCM's update.
            C::FlowMatchEuler if self.bool_or("stochastic_sampling", false)? => {
                Lcm::new().boundary_condition(None).into()
            }
            C::FlowMatchLcm => {
                if self.get("scale_factors").is_some() {
                    return Err(config_err(
                        "scale_factors",
                        "upscaling the x0 estimate between steps changes the sample's shape; not reproduced",
                    ));
                }
                Lcm::new().boundary_condition(None).into()
            }
            // diffusers' TCD accepts and ignores clipping, thresholding and timestep_scaling.
            C::Tcd => Tcd::new().into(),
            C::ConsistencyDecoder => Lcm::new().boundary_condition(None).into(),
            C::MiniMaxH3 => Euler::new().into(),
            C::DdpmWuerstchen => Ddpm::new().noise_on_last_step(false).into(),
            C::SaSolver => {
                if self.str_or("algorithm_type", "data_prediction")? != "data_prediction" {
                    return Err(config_err(
                        "algorithm_type",
                        "only data_prediction is implemented (noise_prediction has no counterpart here)",
                    ));
                }
                if self.get("tau_func").is_some() {
                    return Err(config_err(
                        "tau_func",
                        "a Python callable cannot be read; the default (tau 1 for timesteps 200 to 800) is built without it",
                    ));
                }
                if thr.is_some() {
                    return Err(config_err("thresholding", "not implemented for SA-Solver"));
                }
                let p = self.usize_or("predictor_order", 2)?;
                if p > 3 {
                    return Err(config_err(
                        "predictor_order",
                        format!("{p}: orders 1 to 3 are implemented"),
                    ));
                }
                SaSolver::new()
                    .predictor_order(p)
                    .corrector_order(self.usize_or("corrector_order", 2)?)
                    .simple_order_2(true)
                    .tau(1.0)
                    .tau_timestep_range(200.0, 800.0)
                    .lower_order_final(self.bool_or("lower_order_final", true)?)
                    .into()
            }
            C::Scm => Lcm::new().boundary_condition(None).into(),
            C::CmStochasticIterative => {
                let (lo, hi) = self.edm_sigma_range()?;
                Lcm::new()
                    .boundary_condition(None)
                    .clip_sample(self.bool_or("clip_denoised", true)?.then_some(1.0))
                    .consistency_renoise(Some((lo, hi, self.f64_or("s_noise", 1.0)?)))
                    .into()
            }
            C::LtxEulerAncestralRf => {
                let (eta, s_noise) = (self.f64_or("eta", 1.0)?, self.f64_or("s_noise", 1.0)?);
                if eta > 1.0 {
                    return Err(config_err(
                        "eta",
                        format!(
                            "{eta} > 1: diffusers then steps past the next level (a negative down-step); not reproduced"
                        ),
                    ));
                }
                if s_noise == 0.0 && eta > 0.0 {
                    return Err(config_err(
                        "s_noise",
                        "0 with eta > 0: diffusers then also skips the rescale to the next level; not reproduced",
                    ));
                }
                EulerAncestral::new().eta(eta).s_noise(s_noise).into()
            }
            C::Euler | C::FlowMatchEuler => Euler::new().into(),
            C::EulerAncestral => EulerAncestral::new().into(),
            C::Heun => Heun::new().clip_sample(self.clip(false)?).into(),
            C::FlowMatchHeun => Heun::new().into(),
            C::Kdpm2 => Dpm2::new().into(),
            C::DpmSde => {
                if self.prediction()? == crate::denoiser::Prediction::Sample {
                    return Err(config_err(
                        "prediction_type",
                        "`sample` is not implemented by diffusers' DPMSolverSDEScheduler",
                    ));
                }
                DpmPpSde::new().into()
            }
            C::Kdpm2Ancestral => Dpm2Ancestral::new().into(),
            C::Lms => Lms::new().into(),
            C::EdmEuler => Euler::new().into(),
            C::EdmDpm | C::CosineDpm => {
                let sde = self.class == C::CosineDpm
                    || match self.str_or("algorithm_type", "dpmsolver++")? {
                        "dpmsolver++" | "deis" => false,
                        "sde-dpmsolver++" => true,
                        other => {
                            return Err(config_err(
                                "algorithm_type",
                                format!("unknown value `{}`", short(other, ECHO)),
                            ));
                        }
                    };
                let order = order(2)?;
                if sde && order == 3 {
                    return Err(config_err(
                        "solver_order",
                        "3 with the SDE update: diffusers has no third-order SDE step here (it fails at the third step)",
                    ));
                }
                let solver = match self.str_or("solver_type", "midpoint")? {
                    // diffusers rewrites the other solvers' names to midpoint.
                    "midpoint" | "logrho" | "bh1" | "bh2" => SolverType::Midpoint,
                    "heun" => SolverType::Heun,
                    other => {
                        return Err(config_err(
                            "solver_type",
                            format!("unknown value `{}`", short(other, ECHO)),
                        ));
                    }
                };
                DpmSolver::new()
                    .order(order)
                    .solver_type(solver)
                    .sde(sde)
                    .lower_order_final(self.bool_or("lower_order_final", true)?)
                    .euler_at_final(self.bool_or("euler_at_final", false)?)
                    .thresholding(thr)
                    .into()
            }
            C::DpmMultistep => {
                let sde = match self.str_or("algorithm_type", "dpmsolver++")? {
                    "dpmsolver++" => false,
                    "sde-dpmsolver++" => true,
                    other => {
                        return Err(config_err(
                            "algorithm_type",
                            format!(
                                "`{}` (noise-prediction DPM-Solver) is not implemented; use dpmsolver++",
                                short(other, ECHO)
                            ),
                        ));
                    }
                };
                DpmSolver::new()
                    .order(order(2)?)
                    .solver_type(self.solver_type()?)
                    .sde(sde)
                    .lower_order_final(self.bool_or("lower_order_final", true)?)
                    .euler_at_final(self.bool_or("euler_at_final", false)?)
                    .thresholding(thr)
                    .into()
            }
            C::DpmSinglestep => {
                if self.str_or("algorithm_type", "dpmsolver++")? != "dpmsolver++" {
                    return Err(config_err("algorithm_type", "only dpmsolver++ is implemented"));
                }
                DpmSolverSinglestep::new()
                    .order(order(2)?)
                    .solver_type(self.solver_type()?)
                    .lower_order_final(self.bool_or("lower_order_final", false)?)
                    .thresholding(thr)
                    .into()
            }
            C::UniPc => {
                let variant = match self.str_or("solver_type", "bh2")? {
                    "bh1" => UniPcVariant::Bh1,
                    "bh2" => UniPcVariant::Bh2,
                    other => {
                        return Err(config_err(
                            "solver_type",
                            format!("unknown value `{}`", short(other, ECHO)),
                        ));
                    }
                };
                let disabled: Vec<usize> = match self.get("disable_corrector") {
                    None => Vec::new(),
                    Some(v) => v
                        .as_array()
                        .and_then(|a| a.iter().map(|x| x.as_u64().map(|u| u as usize)).collect())
                        .ok_or_else(|| config_err("disable_corrector", "expected a list of step indices"))?,
                };
                let predict_x0 = self.bool_or("predict_x0", true)?;
                if !predict_x0 && thr.is_some() {
                    return Err(config_err(
                        "thresholding",
                        "diffusers ignores thresholding with predict_x0 = false (noise prediction); \
                         remove one of them",
                    ));
                }
                UniPc::new()
                    .order(order(2)?)
                    .predict_x0(predict_x0)
                    .variant(variant)
                    .disable_corrector(&disabled)
                    .lower_order_final(self.bool_or("lower_order_final", true)?)
                    .thresholding(thr)
                    .into()
            }
            C::Deis => {
                if self.str_or("algorithm_type", "deis")? != "deis" {
                    return Err(config_err("algorithm_type", "only deis is implemented"));
                }
                if self.str_or("solver_type", "logrho")? != "logrho" {
                    return Err(config_err("solver_type", "only logrho is implemented"));
                }
                Deis::new()
                    .order(order(2)?)
                    .lower_order_final(self.bool_or("lower_order_final", true)?)
                    .thresholding(thr)
                    .into()
            }
            // diffusers' CogVideoX steps accept and ignore eta, clip_sample and thresholding.
            C::CogVideoXDdim => Ddim::new().into(),
            // First order only on the first step and into the clean level, as diffusers.
            C::CogVideoXDpm => DpmSolver::new()
                .order(2)
                .sde(true)
                .lower_order_final(false)
                .into(),
            C::Lcm => Lcm::new()
                .boundary_condition(Some(self.f64_or("timestep_scaling", 10.0)?))
                .clip_sample(self.clip(false)?)
                .thresholding(thr)
                .into(),
        })
    }

    /// The factor by which a pipeline scales unit Gaussian noise into its first latent, in
    /// the model's scaling (this crate's convention for `x`): diffusers multiplies by
    /// `init_noise_sigma`, which for the Euler family with `linspace` or `trailing` spacing is
    /// `sigma_max` (not `sqrt(1 + sigma_max^2)`), i.e. `grid.levels()[0].sigma` here; 1 for
    /// every other scheduler.
    pub fn initial_noise_scale(&self, grid: &Grid) -> f64 {
        let ve = matches!(
            self.class,
            C::Euler | C::EulerAncestral | C::Heun | C::Kdpm2 | C::Kdpm2Ancestral | C::Lms | C::DpmSde
        );
        let spacing_scaled = matches!(
            self.str_or("timestep_spacing", "linspace"),
            Ok("linspace" | "trailing")
        );
        if self.class == C::CmStochasticIterative {
            return self.edm_sigma_range().map_or(f64::NAN, |r| r.1);
        }
        if self.class == C::ConsistencyDecoder {
            // init_noise_sigma = sqrt(1 - abar) at the first timestep.
            return grid.levels().first().map_or(1.0, |l| l.sigma);
        }
        if self.class.is_edm() {
            // diffusers' init_noise_sigma = sqrt(sigma_max^2 + 1), from the config's sigma_max.
            let smax = self.edm_sigma_range().map_or(f64::NAN, |r| r.1);
            return (smax * smax + 1.0).sqrt();
        }
        match grid.levels().first() {
            Some(l) if ve && spacing_scaled => l.sigma,
            _ => 1.0,
        }
    }

    /// Reads a `DDPMScheduler` config with `variance_type` `"learned"` or `"learned_range"`
    /// (which [`from_json`](Self::from_json) refuses: [`sampler`](Self::sampler) cannot serve
    /// a model with a variance output) and builds the
    /// [`DdpmLearned`](crate::learned::DdpmLearned) sampler with the file's clipping, for a
    /// model implementing [`VarianceDenoiser`](crate::learned::VarianceDenoiser) (a 2C-channel
    /// network through [`SplitChannels`](crate::learned::SplitChannels)), and the grid of
    /// `set_timesteps(steps)`.
    ///
    /// ```
    /// use diffusion_samplers::config::DiffusersConfig;
    /// let text = r#"{"_class_name": "DDPMScheduler", "variance_type": "learned_range"}"#;
    /// assert!(DiffusersConfig::from_json(text).is_err());
    /// let (s, grid) = DiffusersConfig::ddpm_learned_from_json(text, 50)?;
    /// assert_eq!(grid.steps(), 50);
    /// # let _ = s;
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`from_json`](Self::from_json) for the file without its `variance_type`, and
    /// [`Error::Config`](crate::Error::Config) when the file is not a learned-variance DDPM
    /// config.
    pub fn ddpm_learned_from_json(text: &str, steps: usize) -> Result<(crate::learned::DdpmLearned, Grid)> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| config_err("(file)", e.to_string()))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(config_err("(file)", "not a JSON object"));
        };
        let kind = match fields.get("variance_type").and_then(serde_json::Value::as_str) {
            Some("learned") => crate::learned::LearnedVariance::Learned,
            Some("learned_range") => crate::learned::LearnedVariance::LearnedRange,
            _ => return Err(config_err("variance_type", "not learned or learned_range")),
        };
        fields.remove("variance_type");
        let cfg = Self::from_fields(fields)?;
        if cfg.thresholding()?.is_some() {
            return Err(config_err(
                "thresholding",
                "not implemented for learned variances (DdpmLearned clips only)",
            ));
        }
        if cfg.class == C::UnClip && kind == crate::learned::LearnedVariance::Learned {
            return Err(config_err(
                "variance_type",
                "UnCLIPScheduler has fixed_small_log and learned_range, not learned",
            ));
        }
        if !matches!(cfg.class, C::Ddpm | C::UnClip) {
            return Err(config_err(
                "_class_name",
                "a learned variance is read for DDPMScheduler and UnCLIPScheduler only",
            ));
        }
        Ok((
            crate::learned::DdpmLearned::new(kind).clip_sample(cfg.clip(true)?),
            cfg.grid(steps)?,
        ))
    }

    /// `DPMSolverSDEScheduler`'s `noise_sampler_seed`: the seed of the Brownian tree its noise
    /// comes from — `TorchBrownianTree::new(&[seed], sigma_min, sigma_max, shape)` over the
    /// grid's smallest and largest nonzero k-diffusion sigmas (in float32) reproduces it.
    /// `None` when the file sets none (diffusers then seeds from torch's global generator) or
    /// for other classes.
    ///
    /// diffusers queries its tree at times rounded through float32 `ln` / `exp`; the crate
    /// queries at the float64 levels, which fall on another side of torchsde's 6-decimal
    /// rounding for about one query in ten (measured on Stable Diffusion grids of 10–50
    /// steps), moving that step's noise by ~1e-3: seeded runs agree to that level, not bit for
    /// bit.
    ///
    /// ```
    /// use diffusion_samplers::config::DiffusersConfig;
    /// let cfg = DiffusersConfig::from_json(r#"{"_class_name": "DPMSolverSDEScheduler", "noise_sampler_seed": 7}"#)?;
    /// assert_eq!(cfg.noise_sampler_seed()?, Some(7));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a value that is not a non-negative integer.
    pub fn noise_sampler_seed(&self) -> Result<Option<u64>> {
        if self.class != C::DpmSde {
            return Ok(None);
        }
        match self.get("noise_sampler_seed") {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| config_err("noise_sampler_seed", "expected a non-negative integer")),
        }
    }

    /// The sampler and the grid of `set_timesteps(steps)`: everything needed to sample as the
    /// diffusers pipeline would with this config. The sampler refuses models of another
    /// prediction type than the config's ([`sampler`](Self::sampler)); the grid's
    /// [`initial_sample`](Grid::initial_sample) draws the pipeline's first latent
    /// ([`initial_noise_scale`](Self::initial_noise_scale)).
    ///
    /// ```
    /// use diffusion_samplers::config::DiffusersConfig;
    /// use diffusion_samplers::prelude::*;
    /// let cfg = DiffusersConfig::from_json(r#"{"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}"#)?;
    /// let (sampler, grid) = cfg.build(10)?;
    /// let mut eps_model = GaussianMixture::gaussian(vec![0.0], vec![1.0])?; // predicts epsilon
    /// let x = grid.initial_sample::<f64, _, _, _>((1, 1), &mut SeededNoise::new(0))?;
    /// let r = sampler.sample(&mut eps_model, x, &grid, &mut SeededNoise::new(1));
    /// assert!(matches!(r, Err(Error::PredictionMismatch { expected: Prediction::Velocity, got: Prediction::Epsilon })));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`sampler`](Self::sampler) and [`grid`](Self::grid).
    pub fn build(&self, steps: usize) -> Result<(Expecting<AnySampler>, Grid)> {
        Ok((self.sampler()?, self.grid(steps)?))
    }
}
