//! What a config builds on the schedule side: prediction type, training schedule, grid.

use serde_json::Value;

use super::classes::C;
use super::{DiffusersConfig, config_err};
use crate::denoiser::Prediction;
use crate::error::{Error, MAX_STEPS, Result};
use crate::grid::{FinalLevel, Grid, Spacing};
use crate::level::NoiseLevel;
use crate::precond::{EdmNoise, EdmOutput, EdmPrecond};
use crate::schedule::{FlowSchedule, FlowShift, NoiseSchedule};
use crate::text::{ECHO, short};

impl DiffusersConfig {
    // -- what diffusers builds ---------------------------------------------------------------

    /// The prediction type the model was trained with (`prediction_type`; flow classes predict
    /// the flow velocity — MiniMax-H3's model predicts its negation, which its wrapper returns;
    /// the EDM-style classes' [`Preconditioned`](crate::precond::Preconditioned) network
    /// predicts the clean sample).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown `prediction_type`.
    pub fn prediction(&self) -> Result<Prediction> {
        if self.class.is_flow() {
            return Ok(Prediction::Flow);
        }
        if self.class.is_edm() || self.class == C::ConsistencyDecoder {
            // The sampler sees the preconditioned network (see `edm_precond`).
            self.edm_precond()?;
            return Ok(Prediction::Sample);
        }
        if self.class == C::MiniMaxH3 {
            // Its model predicts the data-ward velocity v (x0 = x + sigma v): the flow output
            // eps - x0 is -v, so a MiniMax-H3 model is wrapped to return -v.
            return Ok(Prediction::Flow);
        }
        if self.class == C::Scm {
            return match self.str_or("prediction_type", "trigflow")? {
                "trigflow" => Ok(Prediction::Flow),
                other => Err(config_err(
                    "prediction_type",
                    format!("`{}`: SCMScheduler only has trigflow", short(other, ECHO)),
                )),
            };
        }
        match self.str_or("prediction_type", "epsilon")? {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::Velocity),
            "sample" => Ok(Prediction::Sample),
            "flow_prediction" => Ok(Prediction::Flow),
            other => Err(config_err(
                "prediction_type",
                format!("unknown value `{}`", short(other, ECHO)),
            )),
        }
    }

    /// The EDM preconditioning of the EDM-style classes (`EDMEulerScheduler`,
    /// `EDMDPMSolverMultistepScheduler`, `CosineDPMSolverMultistepScheduler`), `None` for the
    /// others: wrap the raw network in
    /// [`Preconditioned::new(net, precond)`](crate::precond::Preconditioned) — it then predicts
    /// the clean sample, which is what [`prediction`](Self::prediction) reports for these
    /// classes. `prediction_type` `"epsilon"` is EDM's own output, `"v_prediction"` its negative.
    ///
    /// ```
    /// use diffusion_samplers::config::DiffusersConfig;
    /// use diffusion_samplers::precond::{EdmNoise, EdmOutput};
    /// let cfg = DiffusersConfig::from_json(r#"{"_class_name": "CosineDPMSolverMultistepScheduler"}"#)?;
    /// let p = cfg.edm_precond()?.unwrap();
    /// assert_eq!((p.sigma_data, p.output, p.noise), (1.0, EdmOutput::Velocity, EdmNoise::Atan));
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] for a bad `sigma_data` or a `prediction_type` other than `"epsilon"`
    /// and `"v_prediction"`.
    pub fn edm_precond(&self) -> Result<Option<EdmPrecond>> {
        if self.class == C::ConsistencyDecoder {
            let sd = self.f64_or("sigma_data", 0.5)?;
            let p = EdmPrecond::edm(sd).noise(EdmNoise::Timestep);
            p.validate()
                .map_err(|e| config_err("sigma_data", e.to_string()))?;
            return Ok(Some(p));
        }
        if !self.class.is_edm() {
            return Ok(None);
        }
        let cosine = self.class == C::CosineDpm;
        let sd = self.f64_or("sigma_data", if cosine { 1.0 } else { 0.5 })?;
        if self.class == C::CmStochasticIterative {
            let p = EdmPrecond::consistency(sd, self.edm_sigma_range()?.0);
            p.validate()
                .map_err(|e| config_err("sigma_data", e.to_string()))?;
            return Ok(Some(p));
        }
        let output = match self.str_or("prediction_type", if cosine { "v_prediction" } else { "epsilon" })? {
            "epsilon" => EdmOutput::Edm,
            "v_prediction" => EdmOutput::Velocity,
            other => {
                return Err(config_err(
                    "prediction_type",
                    format!(
                        "`{}` is not an output of diffusers' EDM preconditioning (epsilon or v_prediction)",
                        short(other, ECHO)
                    ),
                ));
            }
        };
        let p = EdmPrecond::edm(sd).output(output).noise(if cosine {
            EdmNoise::Atan
        } else {
            EdmNoise::QuarterLog
        });
        p.validate()
            .map_err(|e| config_err("sigma_data", e.to_string()))?;
        Ok(Some(p))
    }

    /// `(sigma_min, sigma_max)` of an EDM-style class.
    pub(super) fn edm_sigma_range(&self) -> Result<(f64, f64)> {
        let cosine = self.class == C::CosineDpm;
        let lo = self.f64_or("sigma_min", if cosine { 0.3 } else { 0.002 })?;
        let hi = self.f64_or("sigma_max", if cosine { 500.0 } else { 80.0 })?;
        if !(lo.is_finite() && lo > 0.0) {
            return Err(config_err("sigma_min", format!("{lo} is not a positive number")));
        }
        if !(hi.is_finite() && hi > lo) {
            return Err(config_err(
                "sigma_max",
                format!("{hi} is not a number above sigma_min"),
            ));
        }
        Ok((lo, hi))
    }

    /// The EDM classes' `set_timesteps` grid: Karras or exponential sigmas between the config's
    /// ends (computed in f64: diffusers' lists are float32, within 1e-7 relative), ending at 0
    /// or with a zero-length step at `sigma_min`.
    pub(super) fn edm_grid(&self, steps: usize) -> Result<Grid> {
        let (lo, hi) = self.edm_sigma_range()?;
        if self.class == C::CmStochasticIterative {
            // Karras sigmas at the ramp of the training discretisation N: timesteps
            // (0..n) * (N / n), reversed into the ramp, as diffusers' set_timesteps.
            let big_n = self.usize_or("num_train_timesteps", 40)?;
            if big_n < 2 {
                return Err(config_err("num_train_timesteps", "needs at least 2"));
            }
            if steps == 0 || steps > big_n {
                return Err(Error::InvalidSteps { steps, max: big_n });
            }
            let rho = self.f64_or("rho", 7.0)?;
            if !(rho > 0.0 && rho.is_finite()) {
                return Err(config_err("rho", format!("{rho} is not a positive number")));
            }
            let ratio = big_n / steps;
            let (a, b) = (hi.powf(1.0 / rho), lo.powf(1.0 / rho));
            let sigmas: Vec<f64> = (0..steps)
                .map(|i| {
                    let ramp = (i * ratio) as f64 / (big_n - 1) as f64;
                    (a + ramp * (b - a)).powf(rho)
                })
                .collect();
            let grid = Grid::ve(&sigmas)?;
            let scale = self.initial_noise_scale(&grid);
            return grid.with_initial_scale(scale);
        }
        let cosine = self.class == C::CosineDpm;
        let sigmas = match self.str_or("sigma_schedule", if cosine { "exponential" } else { "karras" })? {
            "karras" => {
                let rho = self.f64_or("rho", 7.0)?;
                crate::grid::karras_sigmas(steps, lo, hi, rho).map_err(|e| match e {
                    Error::InvalidParameter { name: "rho", .. } => config_err("rho", e.to_string()),
                    e => e,
                })?
            }
            "exponential" => crate::grid::exponential_sigmas(steps, lo, hi)?,
            other => {
                return Err(config_err(
                    "sigma_schedule",
                    format!("unknown value `{}`", short(other, ECHO)),
                ));
            }
        };
        let grid = match self.str_or("final_sigmas_type", "zero")? {
            "zero" => Grid::ve(&sigmas)?,
            "sigma_min" if cosine => {
                return Err(config_err(
                    "final_sigmas_type",
                    "`sigma_min` fails in diffusers' CosineDPMSolverMultistepScheduler (its Brownian tree is queried at two equal times)",
                ));
            }
            "sigma_min" => {
                // diffusers repeats the last sigma: a zero-length final step.
                let mut levels: Vec<NoiseLevel> =
                    sigmas.iter().map(|&s| NoiseLevel::new(s, 1.0, s)).collect();
                levels.push(*levels.last().unwrap_or(&NoiseLevel::CLEAN));
                Grid::from_levels(levels)?
            }
            other => {
                return Err(config_err(
                    "final_sigmas_type",
                    format!("unknown value `{}`", short(other, ECHO)),
                ));
            }
        };
        let scale = self.initial_noise_scale(&grid);
        grid.with_initial_scale(scale)
    }

    /// The training noise schedule (`beta_schedule`, `beta_start`, `beta_end`,
    /// `trained_betas`, `rescale_betas_zero_snr`).
    ///
    /// # Errors
    /// [`Error::Config`] for a flow-matching class or an unknown `beta_schedule`; schedule
    /// errors as the [`NoiseSchedule`] constructors.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        if self.class.is_flow()
            || self.class.is_edm()
            || matches!(self.class, C::Scm | C::DdpmWuerstchen | C::MiniMaxH3)
        {
            return Err(config_err(
                "_class_name",
                match self.class {
                    C::Scm => "SCMScheduler walks TrigFlow times, not a beta schedule",
                    C::DdpmWuerstchen => "DDPMWuerstchenScheduler has a continuous cosine abar(t), not betas",
                    C::MiniMaxH3 => "MiniMaxH3Scheduler walks shifted flow sigmas, not a beta schedule",
                    _ if self.class.is_flow() => "a flow-matching scheduler has no beta schedule",
                    _ => "an EDM scheduler has no beta schedule (it walks sigmas directly)",
                },
            ));
        }
        let default_t = if self.class == C::ConsistencyDecoder {
            1024
        } else {
            1000
        };
        let t = self.usize_or("num_train_timesteps", default_t)?;
        let blame = |e: Error, key: &str| match e {
            Error::Config { .. } | Error::UnknownName { .. } => e,
            other => config_err(key, other.to_string()),
        };
        let (d_start, d_end, d_sched) = match self.class {
            C::Heun | C::Kdpm2 | C::Kdpm2Ancestral | C::DpmSde => (0.00085, 0.012, "linear"),
            C::Lcm | C::Tcd | C::CogVideoXDdim | C::CogVideoXDpm => (0.00085, 0.012, "scaled_linear"),
            _ => (0.0001, 0.02, "linear"),
        };
        if self.class == C::ConsistencyDecoder {
            return NoiseSchedule::cosine(t).map_err(|e| blame(e, "num_train_timesteps"));
        }
        if self.class == C::UnClip {
            let sched = self.str_or("beta_schedule", "squaredcos_cap_v2")?;
            if sched != "squaredcos_cap_v2" {
                return Err(config_err(
                    "beta_schedule",
                    format!(
                        "`{}`: UnCLIPScheduler only has squaredcos_cap_v2",
                        short(sched, ECHO)
                    ),
                ));
            }
            return NoiseSchedule::cosine(t).map_err(|e| blame(e, "num_train_timesteps"));
        }
        let s = if let Some(b) = self.get("trained_betas") {
            let betas: Vec<f64> = b
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .ok_or_else(|| config_err("trained_betas", "expected a list of numbers"))?;
            if betas.len() != t {
                return Err(config_err(
                    "trained_betas",
                    format!(
                        "{} betas, but num_train_timesteps is {t}{}: diffusers would space its timesteps over {t} steps of a {}-step schedule",
                        betas.len(),
                        if self.get("num_train_timesteps").is_some() {
                            ""
                        } else {
                            " (the default)"
                        },
                        betas.len()
                    ),
                ));
            }
            NoiseSchedule::from_betas(&betas).map_err(|e| blame(e, "trained_betas"))?
        } else {
            let (b0, b1) = (
                self.f64_or("beta_start", d_start)?,
                self.f64_or("beta_end", d_end)?,
            );
            let built = match self.str_or("beta_schedule", d_sched)? {
                "linear" => NoiseSchedule::linear(t, b0, b1),
                "scaled_linear" => NoiseSchedule::scaled_linear(t, b0, b1),
                "squaredcos_cap_v2" => NoiseSchedule::cosine(t),
                "sigmoid" => NoiseSchedule::sigmoid(t, b0, b1),
                other => {
                    return Err(Error::UnknownName {
                        what: "beta_schedule",
                        name: other.to_string(),
                        known: "linear, scaled_linear, squaredcos_cap_v2, sigmoid".to_string(),
                    });
                }
            };
            built.map_err(|e| match e {
                Error::InvalidSteps { .. } => blame(e, "num_train_timesteps"),
                Error::InvalidParameter { name: "beta_end", .. } => blame(e, "beta_end"),
                Error::InvalidParameter {
                    name: "beta_start", ..
                } => blame(e, "beta_start"),
                e => blame(e, "beta_schedule"),
            })?
        };
        let s = if matches!(self.class, C::CogVideoXDdim | C::CogVideoXDpm) {
            let scale = self.f64_or("snr_shift_scale", 3.0)?;
            s.with_snr_shift(scale).map_err(|e| blame(e, "snr_shift_scale"))?
        } else {
            s
        };
        if self.class.keys().contains(&"rescale_betas_zero_snr")
            && self.bool_or("rescale_betas_zero_snr", false)?
        {
            s.with_zero_terminal_snr()
        } else {
            Ok(s)
        }
    }

    /// The flow-matching schedule; `mu` is required with `use_dynamic_shifting` (see
    /// [`FlowSchedule::mu_for_seq_len`] and [`mu_for_image_seq_len`](Self::mu_for_image_seq_len)).
    ///
    /// # Errors
    /// [`Error::Config`] for a VP class, or dynamic shifting without `mu`.
    pub fn flow_schedule(&self, mu: Option<f64>) -> Result<FlowSchedule> {
        if !self.class.is_flow() {
            return Err(config_err("_class_name", "not a flow-matching scheduler"));
        }
        let blame = |key: &'static str| move |e: Error| config_err(key, e.to_string());
        let mut s = FlowSchedule::new(self.usize_or("num_train_timesteps", 1000)?)
            .map_err(blame("num_train_timesteps"))?;
        if self.bool_or("use_dynamic_shifting", false)? {
            let shift = match (mu, self.str_or("time_shift_type", "exponential")?) {
                (None, _) => FlowShift::Exponential { mu: f64::NAN },
                (Some(mu), "exponential") => FlowShift::Exponential { mu },
                (Some(mu), "linear") => FlowShift::Linear { mu },
                (_, other) => {
                    return Err(config_err(
                        "time_shift_type",
                        format!("unknown value `{}`", short(other, ECHO)),
                    ));
                }
            };
            if mu.is_some() {
                s = s.with_shift(shift)?;
            }
        } else {
            s = s
                .with_shift(FlowShift::Static(self.f64_or("shift", 1.0)?))
                .map_err(blame("shift"))?;
        }
        if let Some(term) = self.get("shift_terminal") {
            let term = term
                .as_f64()
                .ok_or_else(|| config_err("shift_terminal", "expected a number"))?;
            s = s.with_shift_terminal(term).map_err(blame("shift_terminal"))?;
        }
        Ok(s)
    }

    /// `mu` for an image of `seq_len` latent tokens, from the config's dynamic-shifting fields
    /// (the Flux / SD3 pipelines' `calculate_shift`).
    ///
    /// # Errors
    /// [`Error::Config`] for a wrongly typed field, or `max_image_seq_len` equal to
    /// `base_image_seq_len`.
    pub fn mu_for_image_seq_len(&self, seq_len: usize) -> Result<f64> {
        FlowSchedule::mu_for_seq_len(
            seq_len,
            self.usize_or("base_image_seq_len", 256)?,
            self.usize_or("max_image_seq_len", 4096)?,
            self.f64_or("base_shift", 0.5)?,
            self.f64_or("max_shift", 1.15)?,
        )
        .map_err(|e| {
            let key = match &e {
                Error::InvalidParameter {
                    name: "base_shift", ..
                } => "base_shift",
                Error::InvalidParameter {
                    name: "max_shift", ..
                } => "max_shift",
                _ => "max_image_seq_len",
            };
            config_err(key, e.to_string())
        })
    }

    /// Whether the grid needs `mu` ([`grid_with_mu`](Self::grid_with_mu)).
    pub fn needs_mu(&self) -> bool {
        self.class.is_flow() && self.bool_or("use_dynamic_shifting", false).unwrap_or(false)
    }

    pub(super) fn dpm_family(&self) -> bool {
        matches!(
            self.class,
            C::DpmMultistep | C::DpmSinglestep | C::UniPc | C::Deis | C::SaSolver
        )
    }

    /// The grid spacing and final level of `set_timesteps`, and whether timesteps are rounded.
    pub(super) fn spacing(&self) -> Result<(Spacing, FinalLevel, bool)> {
        let offset = self.usize_or("steps_offset", 0)?;
        let karras =
            self.class.keys().contains(&"use_karras_sigmas") && self.bool_or("use_karras_sigmas", false)?;
        let expo = self.class.keys().contains(&"use_exponential_sigmas")
            && self.bool_or("use_exponential_sigmas", false)?;
        let beta =
            self.class.keys().contains(&"use_beta_sigmas") && self.bool_or("use_beta_sigmas", false)?;
        if [karras, expo, beta].iter().filter(|b| **b).count() > 1 {
            return Err(config_err(
                "use_karras_sigmas",
                "at most one of karras / exponential / beta sigmas",
            ));
        }
        let default_spacing = match self.class {
            C::Ddpm | C::Ddim | C::Pndm | C::Lcm | C::Tcd | C::CogVideoXDdim | C::CogVideoXDpm => "leading",
            _ => "linspace",
        };
        let ts = self.str_or("timestep_spacing", default_spacing)?;
        let bad_ts = || config_err("timestep_spacing", format!("unknown value `{}`", short(ts, ECHO)));
        let final_min = match self.str_or("final_sigmas_type", "zero")? {
            "zero" => false,
            "sigma_min" => true,
            other => {
                return Err(config_err(
                    "final_sigmas_type",
                    format!("unknown value `{}`", short(other, ECHO)),
                ));
            }
        };
        let clean_or_first = |to_one: bool| {
            if to_one {
                FinalLevel::Clean
            } else {
                FinalLevel::FirstTimestep
            }
        };
        Ok(match self.class {
            // UnCLIP: round((T - 1) / (n - 1) * i), reversed — the rounded linspace.
            C::UnClip => (Spacing::LinspaceRounded, FinalLevel::Clean, false),
            C::Ddim | C::Ddpm | C::Pndm | C::CogVideoXDdim | C::CogVideoXDpm => {
                let sp = match ts {
                    "leading" => Spacing::Leading { offset },
                    "trailing" => Spacing::Trailing,
                    "linspace" => Spacing::LinspaceRounded,
                    _ => return Err(bad_ts()),
                };
                let fin = match self.class {
                    C::Ddpm => FinalLevel::Clean,
                    C::Ddim | C::CogVideoXDdim | C::CogVideoXDpm => {
                        clean_or_first(self.bool_or("set_alpha_to_one", true)?)
                    }
                    _ => clean_or_first(self.bool_or("set_alpha_to_one", false)?),
                };
                (sp, fin, false)
            }
            C::Tcd => {
                // TCD ignores timestep_spacing and ends at training timestep 0.
                let steps = self.usize_or("original_inference_steps", 50)?;
                (
                    Spacing::Lcm {
                        original_steps: steps,
                    },
                    FinalLevel::FirstTimestep,
                    false,
                )
            }
            C::Lcm => {
                if ts != "leading" {
                    return Err(config_err(
                        "timestep_spacing",
                        "LCM spaces its own timesteps (leading)",
                    ));
                }
                let steps = self.usize_or("original_inference_steps", 50)?;
                (
                    Spacing::Lcm {
                        original_steps: steps,
                    },
                    FinalLevel::Clean,
                    false,
                )
            }
            _ if self.dpm_family() => {
                if expo || beta {
                    return Err(config_err(
                        if expo {
                            "use_exponential_sigmas"
                        } else {
                            "use_beta_sigmas"
                        },
                        "diffusers truncates these timesteps to integers in the DPM family; not reproduced",
                    ));
                }
                let sp = if karras {
                    Spacing::KARRAS
                } else {
                    match (self.class, ts) {
                        (C::DpmSinglestep, _) | (_, "linspace") => Spacing::DpmLinspace,
                        (_, "leading") => Spacing::DpmLeading { offset },
                        (_, "trailing") => Spacing::Trailing,
                        _ => return Err(bad_ts()),
                    }
                };
                if self.class == C::SaSolver && karras {
                    return Err(config_err(
                        "use_karras_sigmas",
                        "SA-Solver's Karras grid ends on a zero-length step that diffusers still corrects; not reproduced",
                    ));
                }
                // DEIS and SA-Solver have no final_sigmas_type: they end at the first training
                // timestep.
                let fin = if matches!(self.class, C::Deis | C::SaSolver) || final_min {
                    FinalLevel::FirstTimestep
                } else {
                    FinalLevel::Clean
                };
                if self.class == C::Deis && karras {
                    return Err(config_err(
                        "use_karras_sigmas",
                        "DEIS's Karras grid ends on a zero-length step; not reproduced",
                    ));
                }
                (sp, fin, karras)
            }
            _ => {
                let sp = if karras {
                    Spacing::KARRAS
                } else if expo {
                    Spacing::Exponential
                } else if beta {
                    Spacing::BETA
                } else {
                    match ts {
                        "linspace" => Spacing::Linspace,
                        "leading" => Spacing::Leading { offset },
                        "trailing" => Spacing::Trailing,
                        _ => return Err(bad_ts()),
                    }
                };
                let fin = if final_min {
                    FinalLevel::FirstTimestep
                } else {
                    FinalLevel::Clean
                };
                (sp, fin, false)
            }
        })
    }

    /// For the Euler family with Karras / exponential / beta sigmas and a `timestep_spacing`
    /// other than `linspace`: the spacing whose end sigmas bound the sigma spacing.
    fn sigma_range_from_spacing(&self, spacing: Spacing) -> Result<Option<Spacing>> {
        let sigma_spacing = matches!(
            spacing,
            Spacing::Karras { .. } | Spacing::Exponential | Spacing::Beta { .. }
        );
        if !sigma_spacing || self.dpm_family() || self.class.is_flow() {
            return Ok(None);
        }
        Ok(match self.str_or("timestep_spacing", "linspace")? {
            "leading" => Some(Spacing::Leading {
                offset: self.usize_or("steps_offset", 0)?,
            }),
            "trailing" => Some(Spacing::Trailing),
            _ => None,
        })
    }

    /// The grid of diffusers' `set_timesteps(steps)` — exactly, quirks included: a statically
    /// shifted flow-matching grid shifts its smallest sigma twice, as diffusers does (where
    /// [`FlowSchedule::grid`] shifts once). The grid has `steps` steps except where diffusers'
    /// own count differs: `MiniMaxH3Scheduler` counts grid points (`steps - 1` steps, fewer
    /// where float32 sigmas collide), `DDPMWuerstchenScheduler` drops leading steps between
    /// levels its clamp makes equal (which diffusers spends calls on without changing the
    /// sample), `ConsistencyDecoderScheduler` has exactly 2.
    ///
    /// # Errors
    /// [`Error::Config`] if the config needs `mu` ([`needs_mu`](Self::needs_mu)); grid errors
    /// as [`NoiseSchedule::grid`].
    pub fn grid(&self, steps: usize) -> Result<Grid> {
        if self.needs_mu() {
            return Err(config_err(
                "use_dynamic_shifting",
                "the grid depends on the image size: use grid_with_mu (mu_for_image_seq_len)",
            ));
        }
        self.grid_inner(steps, None)
    }

    /// The grid of `set_timesteps(steps, mu = mu)` for dynamically shifted flow schedules.
    ///
    /// # Errors
    /// As [`grid`](Self::grid).
    pub fn grid_with_mu(&self, steps: usize, mu: f64) -> Result<Grid> {
        self.grid_inner(steps, Some(mu))
    }

    /// `SCMScheduler`'s grid in the rectified-flow form Sana-Sprint's pipeline uses: TrigFlow
    /// times `t_i` (float32 `linspace(1.5708, 0, n + 1)`, or `[1.5708, 1.3, 0]` for two steps:
    /// `set_timesteps`' defaults), each the flow level `r = sin t / (sin t + cos t)` (the
    /// transformer's timestep input), ending clean. The sampler's `x` is the pipeline's
    /// `x_fm = latents / sigma_data * sqrt(r^2 + (1 - r)^2)` and its result the latents over
    /// `sigma_data`. diffusers' first time 1.5708 lies past pi/2 (`r_0 = 1.0000037`); the
    /// grid starts at `r = 1` (a 4e-6 difference on the first step).
    fn scm_grid(&self, steps: usize) -> Result<Grid> {
        if steps == 0 || steps > MAX_STEPS {
            return Err(Error::InvalidSteps {
                steps,
                max: MAX_STEPS,
            });
        }
        let f32r = |v: f64| f64::from(v as f32);
        #[allow(
            clippy::approx_constant,
            reason = "diffusers' max_timesteps, 1.5708, not pi / 2"
        )]
        let t_max = f32r(1.5708);
        let times: Vec<f64> = if steps == 2 {
            vec![t_max, f32r(1.3)]
        } else {
            // torch's float32 linspace: one rounding of start + step * i (and from the end
            // for the second half).
            let n = steps + 1;
            let step = f32r((0.0 - t_max) / steps as f64);
            (0..steps)
                .map(|i| {
                    if i < n / 2 {
                        f32r(t_max + step * i as f64)
                    } else {
                        f32r(-step * (n - 1 - i) as f64)
                    }
                })
                .collect()
        };
        let mut levels: Vec<NoiseLevel> = times
            .iter()
            .map(|&t| {
                let r = (t.sin() / (t.sin() + t.cos())).min(1.0);
                NoiseLevel::new(r, 1.0 - r, r)
            })
            .collect();
        levels.push(NoiseLevel::CLEAN);
        Grid::from_levels(levels)
    }

    /// `DDPMWuerstchenScheduler`'s grid: `t = linspace(1, 0, n + 1)` (the model's ratio input
    /// `r`), `abar(t) = clamp(cos^2((t' + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2), 1e-4, 0.9999)`
    /// with `t' = 1 - (1 - t)^scaler` (scaler > 1) or `t^scaler` (< 1); it ends at `abar =
    /// 0.9999`, not at the clean level. Leading steps between levels that the clamp makes equal
    /// are dropped (diffusers spends a model call on each and leaves the sample unchanged).
    /// Pipelines that pass their own timesteps (Stable Cascade's prior) build the same levels
    /// with `NoiseLevel::from_alpha_bar`.
    fn wuerstchen_grid(&self, steps: usize) -> Result<Grid> {
        if steps == 0 || steps > MAX_STEPS {
            return Err(Error::InvalidSteps {
                steps,
                max: MAX_STEPS,
            });
        }
        let scaler = self.f64_or("scaler", 1.0)?;
        let s = self.f64_or("s", 0.008)?;
        if !(scaler.is_finite() && scaler > 0.0) {
            return Err(config_err("scaler", format!("{scaler} is not a positive number")));
        }
        if !(s.is_finite() && s >= 0.0) {
            return Err(config_err("s", format!("{s} is not a non-negative number")));
        }
        let half_pi = std::f64::consts::FRAC_PI_2;
        let init = ((s / (1.0 + s)) * half_pi).cos().powi(2);
        let abar = |t: f64| {
            let t = if scaler > 1.0 {
                1.0 - (1.0 - t).powf(scaler)
            } else if scaler < 1.0 {
                t.powf(scaler)
            } else {
                t
            };
            (((t + s) / (1.0 + s) * half_pi).cos().powi(2) / init).clamp(1e-4, 0.9999)
        };
        let mut levels: Vec<NoiseLevel> = (0..=steps)
            .map(|i| {
                let t = 1.0 - i as f64 / steps as f64;
                NoiseLevel::from_alpha_bar(t, abar(t))
            })
            .collect();
        // Near t = 1 the clamp at 1e-4 repeats a level: diffusers' steps between equal levels
        // leave the sample as it is (a model call each); the grid starts at the last of them.
        #[allow(clippy::float_cmp, reason = "the clamp gives bit-equal values")]
        let first = levels.iter().take_while(|l| l.alpha == levels[0].alpha).count();
        if first > 1 && first < levels.len() - 1 {
            levels.drain(..first - 1);
        }
        Grid::from_levels(levels)?.with_initial_scale(1.0)
    }

    /// `MiniMaxH3Scheduler`'s grid of `set_timesteps(points)`: `points` sigmas
    /// `shift b / (1 + (shift - 1) b)` at `b = linspace(1, 0, points)` (float32 in diffusers), the
    /// terminal 0 among them — `points - 1` model calls, each at the flow level of its sigma with
    /// the model's time `t = 1 - sigma` (1 is clean).
    fn minimax_grid(&self, points: usize) -> Result<Grid> {
        if !(2..=MAX_STEPS + 1).contains(&points) {
            return Err(Error::InvalidSteps {
                steps: points.saturating_sub(1),
                max: MAX_STEPS,
            });
        }
        let shift = self.f64_or("shift", 12.0)?;
        if !(shift.is_finite() && shift > 0.0) {
            return Err(config_err("shift", format!("{shift} is not a positive number")));
        }
        let mut levels: Vec<NoiseLevel> = Vec::with_capacity(points);
        for i in 0..points {
            let b = 1.0 - i as f64 / (points - 1) as f64;
            let s = shift * b / (1.0 + (shift - 1.0) * b);
            // diffusers collapses equal neighbours (float32 collisions near sigma = 1).
            if levels.last().is_some_and(|l: &NoiseLevel| l.sigma <= s) {
                continue;
            }
            levels.push(if s == 0.0 {
                NoiseLevel::CLEAN
            } else {
                NoiseLevel::new(1.0 - s, 1.0 - s, s)
            });
        }
        Grid::from_levels(levels)
    }

    fn grid_inner(&self, steps: usize, mu: Option<f64>) -> Result<Grid> {
        if self.class == C::Scm {
            return self.scm_grid(steps);
        }
        if self.class == C::DdpmWuerstchen {
            return self.wuerstchen_grid(steps);
        }
        if self.class == C::MiniMaxH3 {
            return self.minimax_grid(steps);
        }
        if self.class == C::ConsistencyDecoder {
            // diffusers supports exactly 2 steps, at timesteps 1008 and 512.
            if steps != 2 {
                return Err(Error::InvalidSteps { steps, max: 2 });
            }
            return self.noise_schedule()?.grid_from_timesteps(&[1008.0, 512.0]);
        }
        if self.class.is_edm() {
            return self.edm_grid(steps);
        }
        if self.class.is_flow() {
            let flow = self.flow_schedule(mu)?;
            if mu.is_some() {
                return flow.grid(steps, Spacing::Linspace);
            }
            // A static shift: diffusers' constructor stores shifted sigmas and set_timesteps
            // spaces between them and shifts again, so the low end is shifted twice (see
            // FlowSchedule::grid). Reproduced here: this reads the file as diffusers does.
            let max = if flow.train_steps() == 1 { 1 } else { MAX_STEPS };
            if steps == 0 || steps > max {
                return Err(Error::InvalidSteps { steps, max });
            }
            let t = flow.train_steps() as f64;
            let lo = flow.shift().apply(1.0 / t);
            let sigmas: Vec<f64> = (0..steps)
                .map(|i| {
                    if steps == 1 {
                        1.0
                    } else {
                        1.0 + (lo - 1.0) * i as f64 / (steps - 1) as f64
                    }
                })
                .collect();
            return flow.grid_from_sigmas(&sigmas);
        }
        let (spacing, fin, round) = self.spacing()?;
        let schedule = self.noise_schedule()?;
        let mut g = match self.sigma_range_from_spacing(spacing)? {
            // The Euler family spaces Karras / exponential / beta sigmas between the ends of
            // the `timestep_spacing` grid (the DPM family between the training sigmas).
            Some(base) if steps > 1 => {
                let b = schedule.grid(steps, base)?;
                let (hi, lo) = (b.levels()[0].sigma_ve(), b.levels()[steps - 1].sigma_ve());
                let sig = match spacing {
                    Spacing::Karras { rho } => crate::grid::karras_sigmas(steps, lo, hi, rho)?,
                    Spacing::Exponential => crate::grid::exponential_sigmas(steps, lo, hi)?,
                    Spacing::Beta { alpha, beta } => crate::grid::beta_sigmas(steps, lo, hi, alpha, beta)?,
                    _ => unreachable!("only sigma spacings have a base"),
                };
                schedule.grid_from_sigmas(&sig)?
            }
            _ => schedule.grid(steps, spacing)?,
        };
        if round {
            g = g.round_timesteps();
        }
        if fin != FinalLevel::Clean {
            g = g.with_final(fin);
        }
        let scale = self.initial_noise_scale(&g);
        g.with_initial_scale(scale)
    }
}
