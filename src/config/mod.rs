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
//! assert_eq!(sampler.prediction(), Prediction::Velocity); // refuses other models
//! # Ok::<(), diffusion_samplers::Error>(())
//! ```

mod classes;
mod sampler;
mod schedule;

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::sampler::Sampler;
use crate::text::{ECHO, Num, short};
pub use classes::SchedulerClass;
use classes::{C, CLASSES, NOT_BUILT, SIGMAS};

/// A diffusers `scheduler_config.json`, read and checked: every value this crate uses is
/// checked when the file is read (its type, its range, and that this crate reproduces it), and
/// errors name the file's key.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusersConfig {
    class: SchedulerClass,
    fields: Map<String, Value>,
    unused: Vec<String>,
}

fn config_err(key: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        key: short(key, ECHO),
        reason: reason.into(),
    }
}

/// A JSON value as an error message quotes it: at most [`ECHO`] characters.
fn echo(v: &Value) -> String {
    short(&v.to_string(), ECHO)
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
        let name = match fields.get("_class_name") {
            None | Some(Value::Null) => return Err(config_err("_class_name", "missing")),
            Some(Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(config_err(
                    "_class_name",
                    format!("expected a string (the scheduler class), got {}", echo(v)),
                ));
            }
        };
        if let Some((n, why)) = NOT_BUILT.iter().find(|(n, _)| *n == name) {
            return Err(config_err("_class_name", format!("{n}: {why}")));
        }
        let class = CLASSES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| *c)
            .ok_or_else(|| Error::UnknownName {
                what: "scheduler class",
                name: short(name, ECHO),
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
                .ok_or_else(|| config_err(key, format!("expected a number, got {}", echo(v)))),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .map(|u| u as usize)
                .ok_or_else(|| config_err(key, format!("expected a non-negative integer, got {}", echo(v)))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| config_err(key, format!("expected true or false, got {}", echo(v)))),
        }
    }

    fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| config_err(key, format!("expected a string, got {}", echo(v)))),
        }
    }

    /// Requires `key` to be absent, null or `expected` (a default this crate implements).
    fn only(&self, key: &str, expected: &Value, why: &str) -> Result<()> {
        match self.get(key) {
            Some(v) if v != expected && self.class.keys().contains(&key) => {
                Err(config_err(key, format!("{} is not supported ({why})", echo(v))))
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
        self.only("invert_sigmas", &Value::from(false), "not implemented")?;
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
                && !self.class.is_edm()
                && self.get(key).is_some()
                && !(matches!(self.class, C::Ddpm | C::UnClip) && key == "variance_type")
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
        } else if self.class.is_edm() {
            self.edm_precond()?;
            self.edm_grid(2)?;
        } else if self.class == C::DdpmWuerstchen {
            self.grid(1)?;
        } else if self.class == C::ConsistencyDecoder {
            self.edm_precond()?;
            self.grid(2)?;
        } else if self.class == C::MiniMaxH3 {
            self.grid(2)?;
        } else if self.class == C::Scm {
            let sd = self.f64_or("sigma_data", 0.5)?;
            if !(sd.is_finite() && sd > 0.0) {
                return Err(config_err("sigma_data", format!("{sd} is not a positive number")));
            }
        } else {
            let schedule = self.noise_schedule()?;
            self.spacing()?;
            let offset = self.usize_or("steps_offset", 0)?;
            if offset >= schedule.len() {
                return Err(config_err(
                    "steps_offset",
                    format!(
                        "{offset} is not below num_train_timesteps = {}: every shifted timestep would be past the schedule",
                        schedule.len()
                    ),
                ));
            }
            if self.bool_or("use_flow_sigmas", false)? {
                return Err(config_err(
                    "use_flow_sigmas",
                    "flow sigmas in VP schedulers are not read from configs yet",
                ));
            }
        }
        self.prediction()?;
        self.noise_sampler_seed()?;
        let sampler = self.any_sampler()?;
        sampler.validate().map_err(|e| match e {
            Error::InvalidParameter { name, value, reason } => {
                let key = match name {
                    "order" => "solver_order",
                    "clip_sample" => "clip_sample_range",
                    "thresholding.ratio" => "dynamic_thresholding_ratio",
                    "thresholding.max" => "sample_max_value",
                    other => other,
                };
                config_err(key, format!("{}: {reason}", Num(value)))
            }
            other => other,
        })?;
        Ok(())
    }
}
