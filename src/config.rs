//! Reading diffusers' `scheduler_config.json` (feature `serde`).
//!
//! A model trained in Python ships a scheduler config next to its weights. [`DiffusersConfig`]
//! reads it and builds what diffusers would build from it — the noise schedule, the grid of
//! `set_timesteps(n)` and the sampler with the file's options — so that the Rust side samples
//! exactly as the Python pipeline does. Keys the class does not use are reported by
//! [`DiffusersConfig::unused_keys`] (diffusers ignores them too); option values this crate does
//! not reproduce are an [`Error::Config`] naming the key, never silently dropped.
//!
//! ```
//! use diffusion_samplers::config::DiffusersConfig;
//! use diffusion_samplers::prelude::*;
//! let json = r#"{
//!   "_class_name": "DPMSolverMultistepScheduler",
//!   "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
//!   "num_train_timesteps": 1000, "prediction_type": "v_prediction",
//!   "use_karras_sigmas": true, "skip_prk_steps": true
//! }"#;
//! let cfg = DiffusersConfig::from_json(json)?;
//! assert_eq!(cfg.unused_keys(), ["skip_prk_steps"]);
//! let (sampler, grid) = cfg.build(20)?;
//! assert_eq!((sampler.kind(), grid.steps()), ("DpmSolver", 20));
//! assert_eq!(cfg.prediction()?, Prediction::Velocity);
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

use std::path::Path;

use serde_json::{Map, Value};

use crate::denoiser::Prediction;
use crate::error::{Error, Result};
use crate::grid::{FinalLevel, Grid, Spacing};
use crate::sampler::{
    AnySampler, Ddim, Ddpm, DdpmVariance, Deis, Dpm2, Dpm2Ancestral, DpmSolver, DpmSolverSinglestep, Euler,
    EulerAncestral, Heun, Lcm, Lms, Pndm, SolverType, Thresholding, UniPc, UniPcVariant,
};
use crate::schedule::{FlowSchedule, FlowShift, NoiseSchedule};

/// The diffusers scheduler classes this crate reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchedulerClass {
    /// `DDPMScheduler` → [`Ddpm`].
    Ddpm,
    /// `DDIMScheduler` → [`Ddim`].
    Ddim,
    /// `PNDMScheduler` → [`Pndm`].
    Pndm,
    /// `EulerDiscreteScheduler` → [`Euler`].
    Euler,
    /// `EulerAncestralDiscreteScheduler` → [`EulerAncestral`].
    EulerAncestral,
    /// `HeunDiscreteScheduler` → [`Heun`].
    Heun,
    /// `KDPM2DiscreteScheduler` → [`Dpm2`].
    Kdpm2,
    /// `KDPM2AncestralDiscreteScheduler` → [`Dpm2Ancestral`].
    Kdpm2Ancestral,
    /// `LMSDiscreteScheduler` → [`Lms`].
    Lms,
    /// `DPMSolverMultistepScheduler` → [`DpmSolver`].
    DpmMultistep,
    /// `DPMSolverSinglestepScheduler` → [`DpmSolverSinglestep`].
    DpmSinglestep,
    /// `UniPCMultistepScheduler` → [`UniPc`].
    UniPc,
    /// `DEISMultistepScheduler` → [`Deis`].
    Deis,
    /// `LCMScheduler` → [`Lcm`].
    Lcm,
    /// `FlowMatchEulerDiscreteScheduler` → [`Euler`] on a [`FlowSchedule`].
    FlowMatchEuler,
    /// `FlowMatchHeunDiscreteScheduler` → [`Heun`] on a [`FlowSchedule`].
    FlowMatchHeun,
}

use SchedulerClass as C;

const CLASSES: [(&str, SchedulerClass); 16] = [
    ("DDPMScheduler", C::Ddpm),
    ("DDIMScheduler", C::Ddim),
    ("PNDMScheduler", C::Pndm),
    ("EulerDiscreteScheduler", C::Euler),
    ("EulerAncestralDiscreteScheduler", C::EulerAncestral),
    ("HeunDiscreteScheduler", C::Heun),
    ("KDPM2DiscreteScheduler", C::Kdpm2),
    ("KDPM2AncestralDiscreteScheduler", C::Kdpm2Ancestral),
    ("LMSDiscreteScheduler", C::Lms),
    ("DPMSolverMultistepScheduler", C::DpmMultistep),
    ("DPMSolverSinglestepScheduler", C::DpmSinglestep),
    ("UniPCMultistepScheduler", C::UniPc),
    ("DEISMultistepScheduler", C::Deis),
    ("LCMScheduler", C::Lcm),
    ("FlowMatchEulerDiscreteScheduler", C::FlowMatchEuler),
    ("FlowMatchHeunDiscreteScheduler", C::FlowMatchHeun),
];

const BETAS: [&str; 5] = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
];
const THRESH: [&str; 4] = [
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "prediction_type",
];
const SIGMAS: [&str; 3] = ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"];
const FLOW_DYN: [&str; 8] = [
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "shift_terminal",
    "time_shift_type",
];

impl SchedulerClass {
    /// diffusers' class name.
    pub fn name(self) -> &'static str {
        CLASSES.iter().find(|(_, c)| *c == self).map_or("?", |(n, _)| n)
    }

    fn is_flow(self) -> bool {
        matches!(self, C::FlowMatchEuler | C::FlowMatchHeun)
    }

    /// The `__init__` parameters of the class in diffusers 0.42.
    fn keys(self) -> Vec<&'static str> {
        let mut k: Vec<&'static str> = Vec::new();
        if !self.is_flow() {
            k.extend(BETAS);
            k.extend(["prediction_type", "steps_offset"]);
        }
        match self {
            C::Ddpm => k.extend(THRESH.iter().chain(&[
                "variance_type",
                "clip_sample",
                "clip_sample_range",
                "timestep_spacing",
                "rescale_betas_zero_snr",
            ])),
            C::Ddim => k.extend(THRESH.iter().chain(&[
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "timestep_spacing",
                "rescale_betas_zero_snr",
            ])),
            C::Pndm => k.extend(["skip_prk_steps", "set_alpha_to_one", "timestep_spacing"]),
            C::Euler => k.extend(SIGMAS.iter().chain(&[
                "interpolation_type",
                "sigma_min",
                "sigma_max",
                "timestep_spacing",
                "timestep_type",
                "rescale_betas_zero_snr",
                "final_sigmas_type",
            ])),
            C::EulerAncestral => k.extend(["timestep_spacing", "rescale_betas_zero_snr"]),
            C::Heun => {
                k.extend(
                    SIGMAS
                        .iter()
                        .chain(&["clip_sample", "clip_sample_range", "timestep_spacing"]),
                )
            }
            C::Kdpm2 | C::Kdpm2Ancestral | C::Lms => k.extend(SIGMAS.iter().chain(&["timestep_spacing"])),
            C::DpmMultistep | C::DpmSinglestep | C::UniPc | C::Deis => {
                k.extend(THRESH.iter().chain(&SIGMAS).chain(&[
                    "solver_order",
                    "solver_type",
                    "lower_order_final",
                    "use_flow_sigmas",
                    "flow_shift",
                    "use_dynamic_shifting",
                    "time_shift_type",
                ]));
                match self {
                    C::DpmMultistep => k.extend([
                        "algorithm_type",
                        "euler_at_final",
                        "use_lu_lambdas",
                        "final_sigmas_type",
                        "lambda_min_clipped",
                        "variance_type",
                        "timestep_spacing",
                        "rescale_betas_zero_snr",
                    ]),
                    C::DpmSinglestep => k.extend([
                        "algorithm_type",
                        "final_sigmas_type",
                        "lambda_min_clipped",
                        "variance_type",
                    ]),
                    C::UniPc => k.extend([
                        "predict_x0",
                        "disable_corrector",
                        "solver_p",
                        "timestep_spacing",
                        "final_sigmas_type",
                        "rescale_betas_zero_snr",
                        "sigma_min",
                        "sigma_max",
                        "shift_terminal",
                    ]),
                    _ => k.extend(["algorithm_type", "timestep_spacing"]),
                }
            }
            C::Lcm => k.extend(THRESH.iter().chain(&[
                "original_inference_steps",
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "timestep_spacing",
                "timestep_scaling",
                "rescale_betas_zero_snr",
            ])),
            C::FlowMatchEuler => k.extend(FLOW_DYN.iter().chain(&SIGMAS).chain(&[
                "num_train_timesteps",
                "invert_sigmas",
                "stochastic_sampling",
            ])),
            C::FlowMatchHeun => k.extend(["num_train_timesteps", "shift"]),
        }
        k
    }
}

/// A diffusers `scheduler_config.json`, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusersConfig {
    class: SchedulerClass,
    fields: Map<String, Value>,
    unused: Vec<String>,
}

fn config_err(key: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        key: key.to_string(),
        reason: reason.into(),
    }
}

impl DiffusersConfig {
    /// Parses the JSON text of a `scheduler_config.json`.
    ///
    /// # Errors
    /// [`Error::Config`] for malformed JSON, a missing `_class_name`, a value of the wrong type,
    /// or an option value this crate does not reproduce; [`Error::UnknownName`] for a scheduler
    /// class it does not know.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text).map_err(|e| config_err("(file)", e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(config_err("(file)", "not a JSON object"));
        };
        Self::from_fields(fields)
    }

    /// Reads a `scheduler_config.json` file.
    ///
    /// # Errors
    /// [`Error::Config`] if the file cannot be read; otherwise as [`from_json`](Self::from_json).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_err("(file)", format!("{}: {e}", path.display())))?;
        Self::from_json(&text)
    }

    /// Builds from already-parsed fields.
    ///
    /// # Errors
    /// As [`from_json`](Self::from_json).
    pub fn from_fields(fields: Map<String, Value>) -> Result<Self> {
        let name = fields
            .get("_class_name")
            .and_then(Value::as_str)
            .ok_or_else(|| config_err("_class_name", "missing"))?;
        let class = CLASSES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| Error::UnknownName {
                what: "scheduler class",
                name: name.to_string(),
                known: CLASSES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            })?;
        let keys = class.keys();
        let unused = fields
            .keys()
            .filter(|k| !k.starts_with('_') && !keys.contains(&k.as_str()))
            .cloned()
            .collect();
        let cfg = DiffusersConfig {
            class,
            fields,
            unused,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The scheduler class.
    pub fn class(&self) -> SchedulerClass {
        self.class
    }

    /// Keys present in the file that the class does not use (diffusers ignores them too, with
    /// a warning) — e.g. `skip_prk_steps` in a DDIM config. Keys starting with `_` (metadata)
    /// are not listed.
    pub fn unused_keys(&self) -> &[String] {
        &self.unused
    }

    /// The fields as read (for writing back, or for keys this crate does not interpret).
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// Sets a field (e.g. `"use_karras_sigmas"` to `true`) and re-checks the config.
    ///
    /// # Errors
    /// As [`from_json`](Self::from_json), for the changed config (which is then not applied).
    pub fn set(&mut self, key: &str, value: Value) -> Result<()> {
        let mut fields = self.fields.clone();
        fields.insert(key.to_string(), value);
        *self = Self::from_fields(fields)?;
        Ok(())
    }

    /// The config as pretty-printed JSON, as diffusers' `save_config` writes it (keys sorted).
    pub fn to_json(&self) -> String {
        let sorted: std::collections::BTreeMap<&String, &Value> = self.fields.iter().collect();
        serde_json::to_string_pretty(&sorted).unwrap_or_else(|_| "{}".to_string())
    }

    // -- typed access with diffusers' defaults ---------------------------------------------

    fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key).filter(|v| !v.is_null())
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| config_err(key, format!("expected a number, got {v}"))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| config_err(key, format!("expected a non-negative integer, got {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| config_err(key, format!("expected true or false, got {v}"))),
        }
    }

    fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| config_err(key, format!("expected a string, got {v}"))),
        }
    }

    /// Requires `key` to be absent, null or `expected` (a default this crate implements).
    fn only(&self, key: &str, expected: &Value, why: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if v != expected && self.class.keys().contains(&key) => {
                Err(config_err(key, format!("{v} is not supported ({why})")))
            }
            _ => Ok(()),
        }
    }

    fn validate(&self) -> Result<()> {
        // Every option is read once here, so that errors surface at load time.
        self.only(
            "interpolation_type",
            &Value::from("linear"),
            "only linear sigma interpolation",
        )?;
        self.only(
            "timestep_type",
            &Value::from("discrete"),
            "only discrete timesteps",
        )?;
        self.only(
            "use_lu_lambdas",
            &Value::from(false),
            "lambda-uniform steps are not implemented",
        )?;
        self.only(
            "predict_x0",
            &Value::from(true),
            "UniPC with noise prediction is not implemented",
        )?;
        self.only("invert_sigmas", &Value::from(false), "not implemented")?;
        self.only("stochastic_sampling", &Value::from(false), "not implemented")?;
        if self
            .get("lambda_min_clipped")
            .is_some_and(|v| v.as_f64().is_some_and(f64::is_finite))
        {
            return Err(config_err(
                "lambda_min_clipped",
                "clipping lambda is not implemented",
            ));
        }
        for key in ["variance_type", "solver_p", "sigma_min", "sigma_max"] {
            if self.class.keys().contains(&key)
                && self.get(key).is_some()
                && !(self.class == C::Ddpm && key == "variance_type")
            {
                return Err(config_err(key, "a non-null value is not supported"));
            }
        }
        if self.class.is_flow() {
            for k in SIGMAS {
                if self.bool_or(k, false)? {
                    return Err(config_err(k, "not supported on flow schedules"));
                }
            }
            self.flow_schedule(None)?;
        } else {
            self.noise_schedule()?;
            self.spacing()?;
            if self.bool_or("use_flow_sigmas", false)? {
                return Err(config_err(
                    "use_flow_sigmas",
                    "flow sigmas in VP schedulers are not read from configs yet",
                ));
            }
        }
        self.prediction()?;
        self.sampler()?;
        Ok(())
    }

    // -- what diffusers builds ---------------------------------------------------------------

    /// The prediction type the model was trained with (`prediction_type`; flow classes predict
    /// the flow velocity).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown `prediction_type`.
    pub fn prediction(&self) -> Result<Prediction> {
        if self.class.is_flow() {
            return Ok(Prediction::Flow);
        }
        match self.str_or("prediction_type", "epsilon")? {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::Velocity),
            "sample" => Ok(Prediction::Sample),
            "flow_prediction" => Ok(Prediction::Flow),
            other => Err(config_err("prediction_type", format!("unknown value `{other}`"))),
        }
    }

    /// The training noise schedule (`beta_schedule`, `beta_start`, `beta_end`,
    /// `trained_betas`, `rescale_betas_zero_snr`).
    ///
    /// # Errors
    /// [`Error::Config`] for a flow-matching class or an unknown `beta_schedule`; schedule
    /// errors as the [`NoiseSchedule`] constructors.
    pub fn noise_schedule(&self) -> Result<NoiseSchedule> {
        if self.class.is_flow() {
            return Err(config_err(
                "_class_name",
                "a flow-matching scheduler has no beta schedule",
            ));
        }
        let t = self.usize_or("num_train_timesteps", 1000)?;
        let (d_start, d_end, d_sched) = match self.class {
            C::Heun | C::Kdpm2 | C::Kdpm2Ancestral => (0.00085, 0.012, "linear"),
            C::Lcm => (0.00085, 0.012, "scaled_linear"),
            _ => (0.0001, 0.02, "linear"),
        };
        let s = if let Some(b) = self.get("trained_betas") {
            let betas: Vec<f64> = b
                .as_array()
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .ok_or_else(|| config_err("trained_betas", "expected a list of numbers"))?;
            NoiseSchedule::from_betas(&betas)?
        } else {
            let (b0, b1) = (
                self.f64_or("beta_start", d_start)?,
                self.f64_or("beta_end", d_end)?,
            );
            match self.str_or("beta_schedule", d_sched)? {
                "linear" => NoiseSchedule::linear(t, b0, b1)?,
                "scaled_linear" => NoiseSchedule::scaled_linear(t, b0, b1)?,
                "squaredcos_cap_v2" => NoiseSchedule::cosine(t)?,
                "sigmoid" => NoiseSchedule::sigmoid(t, b0, b1)?,
                other => {
                    return Err(Error::UnknownName {
                        what: "beta_schedule",
                        name: other.to_string(),
                        known: "linear, scaled_linear, squaredcos_cap_v2, sigmoid".to_string(),
                    });
                }
            }
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
        let mut s = FlowSchedule::new(self.usize_or("num_train_timesteps", 1000)?)?;
        if self.bool_or("use_dynamic_shifting", false)? {
            let shift = match (mu, self.str_or("time_shift_type", "exponential")?) {
                (None, _) => FlowShift::Exponential { mu: f64::NAN },
                (Some(mu), "exponential") => FlowShift::Exponential { mu },
                (Some(mu), "linear") => FlowShift::Linear { mu },
                (_, other) => return Err(config_err("time_shift_type", format!("unknown value `{other}`"))),
            };
            if mu.is_some() {
                s = s.with_shift(shift)?;
            }
        } else {
            s = s.with_shift(FlowShift::Static(self.f64_or("shift", 1.0)?))?;
        }
        if let Some(term) = self.get("shift_terminal") {
            let term = term
                .as_f64()
                .ok_or_else(|| config_err("shift_terminal", "expected a number"))?;
            s = s.with_shift_terminal(term)?;
        }
        Ok(s)
    }

    /// `mu` for an image of `seq_len` latent tokens, from the config's dynamic-shifting fields
    /// (the Flux / SD3 pipelines' `calculate_shift`).
    ///
    /// # Errors
    /// [`Error::Config`] for a wrongly typed field.
    pub fn mu_for_image_seq_len(&self, seq_len: usize) -> Result<f64> {
        Ok(FlowSchedule::mu_for_seq_len(
            seq_len,
            self.usize_or("base_image_seq_len", 256)?,
            self.usize_or("max_image_seq_len", 4096)?,
            self.f64_or("base_shift", 0.5)?,
            self.f64_or("max_shift", 1.15)?,
        ))
    }

    /// Whether the grid needs `mu` ([`grid_with_mu`](Self::grid_with_mu)).
    pub fn needs_mu(&self) -> bool {
        self.class.is_flow() && self.bool_or("use_dynamic_shifting", false).unwrap_or(false)
    }

    fn dpm_family(&self) -> bool {
        matches!(
            self.class,
            C::DpmMultistep | C::DpmSinglestep | C::UniPc | C::Deis
        )
    }

    /// The grid spacing and final level of `set_timesteps`, and whether timesteps are rounded.
    fn spacing(&self) -> Result<(Spacing, FinalLevel, bool)> {
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
            C::Ddpm | C::Ddim | C::Pndm | C::Lcm => "leading",
            _ => "linspace",
        };
        let ts = self.str_or("timestep_spacing", default_spacing)?;
        let bad_ts = || config_err("timestep_spacing", format!("unknown value `{ts}`"));
        let final_min = match self.str_or("final_sigmas_type", "zero")? {
            "zero" => false,
            "sigma_min" => true,
            other => {
                return Err(config_err(
                    "final_sigmas_type",
                    format!("unknown value `{other}`"),
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
            C::Ddim | C::Ddpm | C::Pndm => {
                let sp = match ts {
                    "leading" => Spacing::Leading { offset },
                    "trailing" => Spacing::Trailing,
                    "linspace" => Spacing::LinspaceRounded,
                    _ => return Err(bad_ts()),
                };
                let fin = match self.class {
                    C::Ddpm => FinalLevel::Clean,
                    C::Ddim => clean_or_first(self.bool_or("set_alpha_to_one", true)?),
                    _ => clean_or_first(self.bool_or("set_alpha_to_one", false)?),
                };
                (sp, fin, false)
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
                // DEIS has no final_sigmas_type: it ends at the first training timestep.
                let fin = if self.class == C::Deis || final_min {
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
    /// [`FlowSchedule::grid`] shifts once).
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

    fn grid_inner(&self, steps: usize, mu: Option<f64>) -> Result<Grid> {
        if self.class.is_flow() {
            let flow = self.flow_schedule(mu)?;
            if mu.is_some() {
                return flow.grid(steps, Spacing::Linspace);
            }
            // A static shift: diffusers' constructor stores shifted sigmas and set_timesteps
            // spaces between them and shifts again, so the low end is shifted twice (see
            // FlowSchedule::grid). Reproduced here: this reads the file as diffusers does.
            if steps == 0 {
                return Err(Error::InvalidSteps {
                    steps,
                    max: usize::MAX,
                });
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
                    Spacing::Karras { rho } => crate::grid::karras_sigmas(steps, lo, hi, rho),
                    Spacing::Exponential => crate::grid::exponential_sigmas(steps, lo, hi),
                    Spacing::Beta { alpha, beta } => crate::grid::beta_sigmas(steps, lo, hi, alpha, beta),
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
        Ok(g)
    }

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
            other => Err(config_err("solver_type", format!("unknown value `{other}`"))),
        }
    }

    /// The sampler with the config's options (diffusers' `step` defaults for everything the
    /// pipeline passes at call time: DDIM `eta = 0`, no churn).
    ///
    /// # Errors
    /// [`Error::Config`] for an option value this crate does not reproduce.
    pub fn sampler(&self) -> Result<AnySampler> {
        let thr = self.thresholding()?;
        let order = |d| self.usize_or("solver_order", d);
        Ok(match self.class {
            C::Ddpm => {
                let v = match self.str_or("variance_type", "fixed_small")? {
                    "fixed_small" => DdpmVariance::FixedSmall,
                    "fixed_large" => DdpmVariance::FixedLarge,
                    other => return Err(config_err("variance_type", format!("`{other}` is not supported"))),
                };
                Ddpm::new()
                    .variance(v)
                    .clip_sample(self.clip(true)?)
                    .thresholding(thr)
                    .into()
            }
            C::Ddim => Ddim::new().clip_sample(self.clip(true)?).thresholding(thr).into(),
            C::Pndm => Pndm::new()
                .skip_prk_steps(self.bool_or("skip_prk_steps", false)?)
                .into(),
            C::Euler | C::FlowMatchEuler => Euler::new().into(),
            C::EulerAncestral => EulerAncestral::new().into(),
            C::Heun => Heun::new().clip_sample(self.clip(false)?).into(),
            C::FlowMatchHeun => Heun::new().into(),
            C::Kdpm2 => Dpm2::new().into(),
            C::Kdpm2Ancestral => Dpm2Ancestral::new().into(),
            C::Lms => Lms::new().into(),
            C::DpmMultistep => {
                let sde = match self.str_or("algorithm_type", "dpmsolver++")? {
                    "dpmsolver++" => false,
                    "sde-dpmsolver++" => true,
                    other => {
                        return Err(config_err(
                            "algorithm_type",
                            format!(
                                "`{other}` (noise-prediction DPM-Solver) is not implemented; use dpmsolver++"
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
                    other => return Err(config_err("solver_type", format!("unknown value `{other}`"))),
                };
                let disabled: Vec<usize> = match self.get("disable_corrector") {
                    None => Vec::new(),
                    Some(v) => v
                        .as_array()
                        .and_then(|a| a.iter().map(|x| x.as_u64().map(|u| u as usize)).collect())
                        .ok_or_else(|| config_err("disable_corrector", "expected a list of step indices"))?,
                };
                UniPc::new()
                    .order(order(2)?)
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
            C::Euler | C::EulerAncestral | C::Heun | C::Kdpm2 | C::Kdpm2Ancestral | C::Lms
        );
        let spacing_scaled = matches!(
            self.str_or("timestep_spacing", "linspace"),
            Ok("linspace" | "trailing")
        );
        match grid.levels().first() {
            Some(l) if ve && spacing_scaled => l.sigma,
            _ => 1.0,
        }
    }

    /// The sampler and the grid of `set_timesteps(steps)`: everything needed to sample as the
    /// diffusers pipeline would with this config.
    ///
    /// # Errors
    /// As [`sampler`](Self::sampler) and [`grid`](Self::grid).
    pub fn build(&self, steps: usize) -> Result<(AnySampler, Grid)> {
        Ok((self.sampler()?, self.grid(steps)?))
    }
}
