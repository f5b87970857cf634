//! Named presets: the sampler names of the popular UIs (AUTOMATIC1111, ComfyUI) mapped to a
//! sampler and a grid spacing.

use crate::error::{Error, Result};
use crate::grid::{Grid, Spacing};
use crate::sampler::{
    AnySampler, Ddim, Ddpm, Deis, Dpm2, Dpm2Ancestral, DpmPp2sAncestral, DpmSolver, Euler, EulerAncestral,
    Heun, Ipndm, Lcm, Lms, UniPc, UniPcVariant,
};
use crate::schedule::NoiseSchedule;

/// A sampler and the grid spacing to run it on, by the names users know: ComfyUI's
/// (`"dpmpp_2m"`, `"euler_ancestral"`, with `"_karras"` / `"_exponential"` for the grid) or
/// AUTOMATIC1111's (`"DPM++ 2M Karras"`, `"Euler a"`).
///
/// Without a grid suffix the spacing is ComfyUI's `normal` scheduler — timesteps evenly spaced
/// from the last training timestep to 0, [`Spacing::Linspace`] — except for `ddim`, `ddpm`
/// and `lcm`, which use the spacing of their diffusers schedulers (see the table in
/// docs/guide-from-diffusers.md).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Preset;
/// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let (sampler, grid) = Preset::get("DPM++ 2M Karras")?.build(&schedule, 20)?;
/// assert_eq!(sampler.kind(), "DpmSolver");
/// assert_eq!(grid.steps(), 20);
/// let mut model = GaussianMixture::gaussian(vec![0.0, 0.0], vec![1.0, 1.0])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((4, 2), &mut SeededNoise::new(0))?;
/// let out = sampler.sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.iter().all(|v| v.is_finite()));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// The canonical (ComfyUI-style) name, e.g. `"dpmpp_2m_karras"`.
    pub name: String,
    /// The sampler.
    pub sampler: AnySampler,
    /// The grid spacing.
    pub spacing: Spacing,
}

/// The base names (ComfyUI's), each also available with `_karras` and `_exponential`.
pub const PRESETS: [&str; 17] = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddim",
    "ddpm",
    "uni_pc",
    "uni_pc_bh2",
    "deis",
    "ipndm",
    "lcm",
];

/// AUTOMATIC1111's sampler names (lower-cased) and the ComfyUI base names they mean.
const A1111: [(&str, &str); 14] = [
    ("euler a", "euler_ancestral"),
    ("euler", "euler"),
    ("heun", "heun"),
    ("lms", "lms"),
    ("dpm2", "dpm_2"),
    ("dpm2 a", "dpm_2_ancestral"),
    ("dpm++ 2s a", "dpmpp_2s_ancestral"),
    ("dpm++ 2m", "dpmpp_2m"),
    ("dpm++ 2m sde", "dpmpp_2m_sde"),
    ("dpm++ 3m sde", "dpmpp_3m_sde"),
    ("ddim", "ddim"),
    ("unipc", "uni_pc"),
    ("lcm", "lcm"),
    ("ddpm", "ddpm"),
];

impl Preset {
    /// The preset named `name` (ComfyUI or AUTOMATIC1111 spelling, case-insensitive).
    ///
    /// # Errors
    /// [`Error::UnknownName`] listing the known names.
    pub fn get(name: &str) -> Result<Preset> {
        let lower = name.trim().to_lowercase();
        // Grid suffix: "_karras" / " karras", "_exponential" / " exponential".
        let (base, spacing) = [
            ("karras", Some(Spacing::KARRAS)),
            ("exponential", Some(Spacing::Exponential)),
        ]
        .iter()
        .find_map(|(suffix, sp)| {
            lower
                .strip_suffix(suffix)
                .and_then(|b| b.strip_suffix('_').or_else(|| b.strip_suffix(' ')))
                .map(|b| (b.to_string(), *sp))
        })
        .unwrap_or((lower.clone(), None));
        let base = A1111
            .iter()
            .find(|(a, _)| *a == base)
            .map_or(base.as_str(), |(_, c)| *c)
            .to_string();
        let unknown = || Error::UnknownName {
            what: "sampler preset",
            name: name.to_string(),
            known: PRESETS.join(", ") + " (each also with _karras or _exponential; AUTOMATIC1111 names too)",
        };
        let sampler: AnySampler = match base.as_str() {
            "euler" => Euler::new().into(),
            "euler_ancestral" => EulerAncestral::new().into(),
            "heun" => Heun::new().into(),
            "dpm_2" => Dpm2::new().into(),
            "dpm_2_ancestral" => Dpm2Ancestral::new().into(),
            "lms" => Lms::new().into(),
            "dpmpp_2s_ancestral" => DpmPp2sAncestral::new().into(),
            "dpmpp_2m" => DpmSolver::new().into(),
            "dpmpp_2m_sde" => DpmSolver::new().sde(true).into(),
            "dpmpp_3m_sde" => DpmSolver::new().order(3).sde(true).into(),
            "ddim" => Ddim::new().into(),
            "ddpm" => Ddpm::new().into(),
            "uni_pc" => UniPc::new().order(3).variant(UniPcVariant::Bh1).into(),
            "uni_pc_bh2" => UniPc::new().order(3).into(),
            "deis" => Deis::new().order(3).into(),
            "ipndm" => Ipndm::new().into(),
            "lcm" => Lcm::new().into(),
            _ => return Err(unknown()),
        };
        let default_spacing = match base.as_str() {
            "ddim" | "ddpm" => Spacing::Leading { offset: 1 },
            "lcm" => Spacing::Lcm { original_steps: 50 },
            _ => Spacing::Linspace,
        };
        let suffix = match spacing {
            Some(Spacing::Exponential) => "_exponential",
            Some(_) => "_karras",
            None => "",
        };
        Ok(Preset {
            name: format!("{base}{suffix}"),
            sampler,
            spacing: spacing.unwrap_or(default_spacing),
        })
    }

    /// The sampler and its `steps`-step grid on `schedule`.
    ///
    /// # Errors
    /// As [`NoiseSchedule::grid`].
    pub fn build(self, schedule: &NoiseSchedule, steps: usize) -> Result<(AnySampler, Grid)> {
        let grid = schedule.grid(steps, self.spacing)?;
        Ok((self.sampler, grid))
    }
}
