//! Named presets: the sampler and scheduler names of ComfyUI and AUTOMATIC1111, each meaning
//! what that tool runs.
//!
//! A ComfyUI name means ComfyUI's behaviour: its sampler (from its fork of k-diffusion and its
//! own solvers), its scheduler's sigmas computed from the model's sampling table
//! ([`ModelSampling`]), the model timesteps it conditions on (the nearest training timestep of
//! each sigma), its starting-noise scale and the conventions of its `KSampler` (`denoise`, the
//! samplers that drop the penultimate sigma, UniPC ending at sigma 0.001, the flow offset of the
//! first sigma). `tests/golden_comfyui.rs` checks the runs against ComfyUI's own. The
//! diffusers / k-diffusion variants stay available through the samplers' own builders; the
//! table in docs/guide-from-diffusers.md lists every name, what it runs here and each place it
//! differs.

mod comfy;
mod names;

pub use comfy::PRESETS;

use crate::error::{Error, Result};
use crate::grid::{AysModel, ComfyScheduler, Grid, ModelSampling, ScheduleFamily, ays_sigmas, gits_sigmas};
use crate::noise::{ComfyUiNoise, TorchBrownianTree, TorchGenerator};
use crate::sampler::AnySampler;
use crate::schedule::{FlowSchedule, NoiseSchedule};

/// A schedule a [`Preset`] can build on: anything with a ComfyUI [`ModelSampling`].
///
/// [`NoiseSchedule`] is ComfyUI's `ModelSamplingDiscrete` (SD 1.x / 2.x / XL), [`FlowSchedule`]
/// its `ModelSamplingDiscreteFlow` (SD3, Wan, ...); for Flux's 10 000-entry table pass
/// [`ModelSampling::flux`] itself.
pub trait PresetSchedule {
    /// ComfyUI's model sampling for this schedule.
    ///
    /// # Errors
    /// As [`ModelSampling::discrete`] / [`ModelSampling::flow`].
    fn model_sampling(&self) -> Result<ModelSampling>;
}

impl PresetSchedule for NoiseSchedule {
    fn model_sampling(&self) -> Result<ModelSampling> {
        ModelSampling::discrete(self)
    }
}

impl PresetSchedule for FlowSchedule {
    fn model_sampling(&self) -> Result<ModelSampling> {
        ModelSampling::flow(self)
    }
}

impl PresetSchedule for ModelSampling {
    fn model_sampling(&self) -> Result<ModelSampling> {
        Ok(self.clone())
    }
}

/// A sampler and a scheduler by the names users know: ComfyUI's (`"dpmpp_2m"` with its
/// `normal` scheduler, `"dpmpp_2m_karras"`, `"dpmpp_2m_sde_gpu_kl_optimal"`: any of
/// [`PRESETS`] alone or followed by `_` and one of the nine [`ComfyScheduler`] names) or
/// AUTOMATIC1111's (`"DPM++ 2M Karras"`, `"Euler a"`, `"DPM++ SDE Karras"`, `"DPM fast"`,
/// `"DPM adaptive"`, optionally followed by a scheduler word: `Karras`, `Exponential`,
/// `SGM Uniform`, `KL Optimal`, `Simple`, `Normal`, `Beta`, `DDIM`, `Uniform`, `Automatic`).
/// Names are case-insensitive.
///
/// AUTOMATIC1111 runs k-diffusion's functions for its k-samplers, which ComfyUI's fork keeps;
/// its names resolve to the same ComfyUI samplers (one difference: ComfyUI's `lms` ends with
/// the denoised estimate, k-diffusion's with the multistep integral, about 1e-3 apart).
///
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::Preset;
/// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
/// let preset = Preset::get("DPM++ 2M Karras")?;
/// assert_eq!((preset.name(), preset.sampler_name()), ("dpmpp_2m_karras", "dpmpp_2m"));
/// let (sampler, grid) = preset.build(&schedule, 20)?;
/// assert_eq!(sampler.kind(), "DpmSolver");
/// assert_eq!(grid.steps(), 20);
/// let mut model = GaussianMixture::gaussian(vec![0.0, 0.0], vec![1.0, 1.0])?;
/// let x: ndarray::Array2<f64> = grid.initial_sample((4, 2), &mut SeededNoise::new(0))?;
/// let out = sampler.sample(&mut model, x, &grid, &mut SeededNoise::new(1))?;
/// assert!(out.iter().all(|v| v.is_finite()));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preset {
    name: String,
    sampler: &'static str,
    sigmas: PresetSigmas,
}

/// Where a [`Preset`]'s sigmas come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PresetSigmas {
    /// One of ComfyUI's nine schedulers, through its `KSampler` (name suffix: the scheduler's).
    Scheduler(ComfyScheduler),
    /// The Align Your Steps table ([`ays_sigmas`]; suffixes `_ays` for SD 1.x, `_ays_sdxl`), as
    /// ComfyUI's `AlignYourStepsScheduler` node feeds a `SamplerCustom`. Only for a model
    /// sampling with SD 1.x / XL's sigma range.
    Ays(AysModel),
    /// The GITS table for coefficient 1.20 ([`gits_sigmas`], ComfyUI's default; suffix
    /// `_gits`), as the `GITSScheduler` node. Only for SD 1.x / XL's sigma range.
    Gits,
}

impl PresetSigmas {
    /// The name suffix (`"karras"`, `"ays"`, `"ays_sdxl"`, `"gits"`).
    pub fn name(self) -> &'static str {
        match self {
            PresetSigmas::Scheduler(s) => s.name(),
            PresetSigmas::Ays(AysModel::Sdxl) => "ays_sdxl",
            PresetSigmas::Ays(AysModel::Svd) => "ays_svd",
            PresetSigmas::Ays(AysModel::Sd1) => "ays",
            PresetSigmas::Gits => "gits",
        }
    }

    /// Every suffix [`Preset::get`] knows: the nine schedulers, `ays`, `ays_sdxl`, `gits`.
    pub const ALL: [PresetSigmas; 12] = [
        PresetSigmas::Scheduler(ComfyScheduler::Simple),
        PresetSigmas::Scheduler(ComfyScheduler::SgmUniform),
        PresetSigmas::Scheduler(ComfyScheduler::Karras),
        PresetSigmas::Scheduler(ComfyScheduler::Exponential),
        PresetSigmas::Scheduler(ComfyScheduler::DdimUniform),
        PresetSigmas::Scheduler(ComfyScheduler::Beta),
        PresetSigmas::Scheduler(ComfyScheduler::Normal),
        PresetSigmas::Scheduler(ComfyScheduler::LinearQuadratic),
        PresetSigmas::Scheduler(ComfyScheduler::KlOptimal),
        PresetSigmas::Ays(AysModel::Sd1),
        PresetSigmas::Ays(AysModel::Sdxl),
        PresetSigmas::Gits,
    ];
}

/// SD 1.x / XL's sigma range, for which the AYS and GITS tables were made.
fn check_table_range(ms: &ModelSampling) -> Result<()> {
    let (lo, hi) = (0.029_167_158_2, 14.614_641_229_3);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-3 * b;
    if ms.is_flow() || !close(ms.sigma_max(), hi) || !close(ms.sigma_min(), lo) {
        return Err(Error::InvalidParameter {
            name: "sigma_max",
            value: ms.sigma_max(),
            reason: "the AYS and GITS tables are for SD 1.x / XL's sigmas (14.61 to 0.029)",
        });
    }
    Ok(())
}

impl Preset {
    /// The preset named `name` (see [`Preset`] for the spellings).
    ///
    /// # Errors
    /// [`Error::UnknownName`] with the closest known names first.
    pub fn get(name: &str) -> Result<Preset> {
        let lower = name.trim().to_lowercase();
        Self::parse_comfy(&lower)
            .or_else(|| Self::parse_a1111(&lower))
            .ok_or_else(|| unknown(name, &lower))
    }

    fn new(sampler: &'static str, sigmas: PresetSigmas) -> Preset {
        let name = match sigmas {
            PresetSigmas::Scheduler(ComfyScheduler::Normal) => sampler.to_string(),
            s => format!("{sampler}_{}", s.name()),
        };
        Preset {
            name,
            sampler,
            sigmas,
        }
    }

    fn parse_comfy(lower: &str) -> Option<Preset> {
        let sampler = |s: &str| PRESETS.iter().copied().find(|p| *p == s);
        if let Some(s) = sampler(lower) {
            return Some(Self::new(s, NORMAL));
        }
        PresetSigmas::ALL.into_iter().find_map(|sch| {
            let base = lower.strip_suffix(sch.name())?.strip_suffix('_')?;
            Some(Self::new(sampler(base)?, sch))
        })
    }

    fn parse_a1111(lower: &str) -> Option<Preset> {
        let words = lower.split_whitespace().collect::<Vec<_>>().join(" ");
        let base = |b: &str| names::A1111.iter().find(|(a, _)| *a == b).map(|(_, c)| *c);
        if let Some(c) = base(&words) {
            return Some(Self::new(c, NORMAL));
        }
        names::A1111_SCHEDULERS.iter().find_map(|(word, sch)| {
            let b = words.strip_suffix(word)?.strip_suffix(' ')?;
            Some(Self::new(base(b)?, *sch))
        })
    }

    /// The canonical (ComfyUI) name: `"{sampler}"` for the `normal` scheduler, else
    /// `"{sampler}_{scheduler}"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// ComfyUI's sampler name (one of [`PRESETS`]).
    pub fn sampler_name(&self) -> &'static str {
        self.sampler
    }

    /// Whether ComfyUI draws this sampler's noise from a Brownian tree (`dpmpp_sde`,
    /// `dpmpp_2m_sde`, `dpmpp_2m_sde_heun`, `dpmpp_3m_sde` and their `_gpu` names):
    /// [`comfyui_noise`](Self::comfyui_noise) gives ComfyUI's own tree for a seed, a
    /// [`BrownianNoise`](crate::noise::BrownianNoise) the same property (refining the grid
    /// refines the same noise) faster. Any [`NoiseSource`](crate::NoiseSource) works.
    pub fn uses_brownian_noise(&self) -> bool {
        self.sampler.starts_with("dpmpp_") && self.sampler.contains("sde")
    }

    /// Where the sigmas come from: ComfyUI's scheduler, or a table.
    pub fn scheduler(&self) -> PresetSigmas {
        self.sigmas
    }

    /// The sampler ComfyUI runs for this name on `schedule` (only `sa_solver` depends on the
    /// schedule: its stochastic interval is set by the model's `percent_to_sigma`).
    ///
    /// # Errors
    /// As [`PresetSchedule::model_sampling`].
    pub fn sampler<S: PresetSchedule + ?Sized>(&self, schedule: &S) -> Result<AnySampler> {
        let ms = schedule.model_sampling()?;
        Ok(self.sampler_on(&ms))
    }

    fn sampler_on(&self, ms: &ModelSampling) -> AnySampler {
        comfy::sampler(self.sampler, ms).expect("a preset holds one of PRESETS")
    }

    /// The sigmas ComfyUI's `KSampler` computes for `steps` steps at `denoise` (1 for
    /// text-to-image), before the sampler's own adjustments (see [`on_sigmas`](Self::on_sigmas));
    /// for the tables, the table node's sigmas (its own `denoise`: the last
    /// `round(steps × denoise)` steps).
    ///
    /// # Errors
    /// As [`ModelSampling::ksampler_sigmas`], [`ays_sigmas`], [`gits_sigmas`];
    /// [`Error::InvalidParameter`] for a table on a model sampling of another sigma range.
    pub fn sigmas<S: PresetSchedule + ?Sized>(
        &self,
        schedule: &S,
        steps: usize,
        denoise: f64,
    ) -> Result<Vec<f64>> {
        self.sigmas_on(&schedule.model_sampling()?, steps, denoise)
    }

    fn sigmas_on(&self, ms: &ModelSampling, steps: usize, denoise: f64) -> Result<Vec<f64>> {
        match self.sigmas {
            PresetSigmas::Scheduler(s) => {
                ms.ksampler_sigmas(s, steps, denoise, comfy::discards_penultimate(self.sampler))
            }
            PresetSigmas::Ays(m) => {
                check_table_range(ms)?;
                ays_sigmas(m, steps, denoise)
            }
            PresetSigmas::Gits => {
                check_table_range(ms)?;
                gits_sigmas(1.2, steps, denoise)
            }
        }
    }

    /// The sampler and its `steps`-step grid on `schedule`, as ComfyUI's `KSampler` runs them
    /// (text-to-image: `denoise` 1).
    ///
    /// The grid's first level can be other than the scheduler's first sigma and the last other
    /// than clean: see [`on_sigmas`](Self::on_sigmas). `ddim_uniform` and `beta` may give a
    /// different number of steps than asked, as in ComfyUI.
    ///
    /// # Errors
    /// As [`sigmas`](Self::sigmas) and [`ModelSampling::grid`] (a scheduler whose sigmas repeat,
    /// as ComfyUI's `simple` does on short tables, is an [`Error::InvalidValue`]).
    pub fn build<S: PresetSchedule + ?Sized>(
        &self,
        schedule: &S,
        steps: usize,
    ) -> Result<(AnySampler, Grid)> {
        self.build_denoise(schedule, steps, 1.0)
    }

    /// As [`build`](Self::build) with ComfyUI's `denoise` (img2img: the last `steps + 1` of
    /// `int(steps / denoise)` sigmas; start from the noised input image at the grid's first
    /// level).
    ///
    /// # Errors
    /// As [`build`](Self::build); [`Error::InvalidParameter`] for `denoise` outside `(0, 1]`.
    pub fn build_denoise<S: PresetSchedule + ?Sized>(
        &self,
        schedule: &S,
        steps: usize,
        denoise: f64,
    ) -> Result<(AnySampler, Grid)> {
        let ms = schedule.model_sampling()?;
        let sigmas = self.sigmas_on(&ms, steps, denoise)?;
        self.on_sigmas(&ms, &sigmas)
    }

    /// The sampler and the grid it runs on for a given sigma list (ComfyUI's
    /// `SamplerCustom`: sigmas from any scheduler node, ending with 0 or not), with this
    /// sampler's adjustments of ComfyUI:
    ///
    /// * `uni_pc`, `uni_pc_bh2` end at sigma 0.001 where the list ends at 0 (the result is the
    ///   sample at that level, not the clean one);
    /// * on flow models, the half-log-SNR samplers (`dpmpp_sde`, `dpmpp_2m_sde*`,
    ///   `dpmpp_3m_sde`, `er_sde`, `seeds_*`, `sa_solver*`, `exp_heun_2_x0*`) start at
    ///   `percent_to_sigma(1e-4)` (about 0.99997) instead of sigma 1, from the same pure noise;
    /// * `dpm_fast`, `dpm_adaptive` integrate from the first sigma to the last nonzero one on
    ///   their own internal steps.
    ///
    /// The scheduler of this preset is not used.
    ///
    /// # Errors
    /// As [`ModelSampling::grid`].
    pub fn on_sigmas(&self, ms: &ModelSampling, sigmas: &[f64]) -> Result<(AnySampler, Grid)> {
        let mut s = sigmas.to_vec();
        if let (Some(end), Some(last)) = (comfy::ends_above_zero(self.sampler), s.last_mut())
            && *last == 0.0
        {
            *last = end;
        }
        let offset = ms.is_flow() && comfy::offsets_first_sigma(self.sampler) && s.len() > 1 && s[0] >= 1.0;
        if offset {
            s[0] = ms.percent_to_sigma(1e-4);
        }
        let mut grid = ms.grid(&s)?;
        if offset {
            grid = grid.with_initial_scale(1.0)?;
        }
        Ok((self.sampler_on(ms), grid))
    }

    /// The noise ComfyUI's `KSampler` gives this sampler during a run of `steps` steps at
    /// `denoise` on `schedule` with `seed` and samples of `shape` (ComfyUI on the CPU; the
    /// Brownian samplers without `_gpu` on any device):
    ///
    /// * `dpmpp_sde`, `dpmpp_2m_sde`, `dpmpp_2m_sde_heun`, `dpmpp_3m_sde` (and `_gpu` run on the
    ///   CPU): torchsde's Brownian tree, `BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(),
    ///   sigmas.max(), seed, cpu=True)` — one tree over the whole shape, over the `float32` sigmas
    ///   of [`sigmas`](Self::sigmas) (before the flow first-sigma offset), in the sigma-space
    ///   sigma of the model sampling (the flow sigma on flow models);
    /// * every other sampler: `default_noise_sampler(x, seed)`, a generator of its own seeded with
    ///   `seed` (so its first draw repeats the starting noise, as in ComfyUI).
    ///
    /// The starting sample is `grid.initial_sample(shape, &mut TorchGenerator::new(seed))`
    /// (ComfyUI's `prepare_noise`, scaled as its KSampler scales it; see
    /// [`comfyui_prepare_noise`](crate::noise::comfyui_prepare_noise) for `batch_index`).
    ///
    /// ```
    /// use diffusion_samplers::prelude::*;
    /// use diffusion_samplers::noise::TorchGenerator;
    /// let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?;
    /// let preset = Preset::get("dpmpp_2m_sde_karras")?;
    /// let (sampler, grid) = preset.build(&schedule, 20)?;
    /// let mut model = GaussianMixture::gaussian(vec![0.0; 4], vec![1.0; 4])?;
    /// let x: ndarray::Array4<f32> = grid.initial_sample((1, 4, 4, 4), &mut TorchGenerator::new(42))?;
    /// let mut noise = preset.comfyui_noise(&schedule, 20, 1.0, 42, &[1, 4, 4, 4])?;
    /// let image = sampler.sample(&mut model, x, &grid, &mut noise)?; // ComfyUI's result for seed 42
    /// # Ok::<(), diffusion_samplers::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`sigmas`](Self::sigmas) and [`TorchBrownianTree::new`](crate::noise::TorchBrownianTree::new).
    pub fn comfyui_noise<S: PresetSchedule + ?Sized>(
        &self,
        schedule: &S,
        steps: usize,
        denoise: f64,
        seed: u64,
        shape: &[usize],
    ) -> Result<ComfyUiNoise> {
        let ms = schedule.model_sampling()?;
        let sigmas = self.sigmas_on(&ms, steps, denoise)?;
        self.comfyui_noise_on_sigmas(&ms, &sigmas, seed, shape)
    }

    /// As [`comfyui_noise`](Self::comfyui_noise) for a sigma list of one's own (ComfyUI's
    /// `SamplerCustom`; the list as given to the sampler node).
    ///
    /// # Errors
    /// As [`TorchBrownianTree::new`](crate::noise::TorchBrownianTree::new).
    pub fn comfyui_noise_on_sigmas(
        &self,
        ms: &ModelSampling,
        sigmas: &[f64],
        seed: u64,
        shape: &[usize],
    ) -> Result<ComfyUiNoise> {
        if !self.uses_brownian_noise() {
            return Ok(ComfyUiNoise::Generator(TorchGenerator::new(seed)));
        }
        let as_f32 = |v: f64| f64::from(v as f32);
        let lo = sigmas
            .iter()
            .copied()
            .filter(|&s| s > 0.0)
            .fold(f64::INFINITY, f64::min);
        let hi = sigmas.iter().copied().fold(0.0, f64::max);
        let family = if ms.is_flow() {
            ScheduleFamily::Flow
        } else {
            ScheduleFamily::Vp
        };
        let tree = TorchBrownianTree::new(&[seed], as_f32(lo), as_f32(hi), shape)?.with_family(family);
        Ok(ComfyUiNoise::BrownianTree(Box::new(tree)))
    }

    /// Every name [`get`](Self::get) resolves in ComfyUI's spelling: each of [`PRESETS`] alone
    /// and with each suffix of [`PresetSigmas::ALL`] (`45 × 13`).
    pub fn all_names() -> impl Iterator<Item = String> {
        PRESETS.into_iter().flat_map(|p| {
            std::iter::once(p.to_string()).chain(PresetSigmas::ALL.map(|s| format!("{p}_{}", s.name())))
        })
    }
}

const NORMAL: PresetSigmas = PresetSigmas::Scheduler(ComfyScheduler::Normal);

fn unknown(name: &str, lower: &str) -> Error {
    // Suggest within the same scheduler when the name ends with one.
    let (stem, suffix) = PresetSigmas::ALL
        .into_iter()
        .find_map(|s| {
            lower
                .strip_suffix(s.name())
                .and_then(|b| b.strip_suffix('_'))
                .map(|b| (b, format!("_{}", s.name())))
        })
        .unwrap_or((lower, String::new()));
    let candidates = PRESETS
        .iter()
        .copied()
        .chain(names::A1111.iter().map(|(a, _)| *a));
    let close: Vec<String> = names::close_names(stem, candidates)
        .into_iter()
        .map(|c| {
            if PRESETS.contains(&c) {
                format!("{c}{suffix}")
            } else {
                c.to_string()
            }
        })
        .collect();
    let lead = if close.is_empty() {
        String::new()
    } else {
        format!("closest: {}; ", close.join(", "))
    };
    Error::UnknownName {
        what: "sampler preset",
        name: name.to_string(),
        known: format!(
            "{lead}ComfyUI samplers {}, each alone (scheduler normal) or followed by _ and a scheduler or \
             table: {}; AUTOMATIC1111 names {}",
            PRESETS.join(", "),
            PresetSigmas::ALL.map(PresetSigmas::name).join(", "),
            names::A1111.map(|(a, _)| a).join(", "),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every AUTOMATIC1111 name means one of PRESETS (a preset's sampler is built from it).
    #[test]
    fn a1111_names_mean_comfyui_samplers() {
        for (a, c) in names::A1111 {
            assert!(PRESETS.contains(&c), "{a} -> {c}");
            assert_eq!(Preset::get(a).unwrap().sampler_name(), c);
        }
    }

    #[test]
    fn names_parse() {
        let p = Preset::get("dpmpp_2m_sde_gpu_kl_optimal").unwrap();
        assert_eq!(
            (p.sampler_name(), p.scheduler()),
            (
                "dpmpp_2m_sde_gpu",
                PresetSigmas::Scheduler(ComfyScheduler::KlOptimal)
            )
        );
        assert_eq!(
            Preset::get("euler_ays").unwrap().scheduler(),
            PresetSigmas::Ays(AysModel::Sd1)
        );
        assert_eq!(
            Preset::get("DPM++ 2M Align Your Steps GITS").unwrap().name(),
            "dpmpp_2m_gits"
        );
        let sd15 = crate::NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        let (_, grid) = Preset::get("dpmpp_2m_ays").unwrap().build(&sd15, 10).unwrap();
        assert_eq!(grid.steps(), 10);
        let flow = crate::FlowSchedule::new(1000).unwrap();
        assert!(matches!(
            Preset::get("euler_gits").unwrap().build(&flow, 10),
            Err(Error::InvalidParameter {
                name: "sigma_max",
                ..
            })
        ));
        let p = Preset::get("DPM++  2M SDE Heun Exponential").unwrap();
        assert_eq!(p.name(), "dpmpp_2m_sde_heun_exponential");
        let p = Preset::get("ddim_ddim_uniform").unwrap();
        assert_eq!(p.name(), "ddim_ddim_uniform");
        assert_eq!(Preset::get("euler_normal").unwrap().name(), "euler");
        assert_eq!(Preset::all_names().count(), PRESETS.len() * 13);
        for n in Preset::all_names() {
            assert!(Preset::get(&n).unwrap().name().len() <= n.len(), "{n}");
        }
        match Preset::get("dpmpp_2m_sd_karras") {
            Err(Error::UnknownName { known, .. }) => {
                assert!(known.starts_with("closest: dpmpp_2m_sde_karras, "), "{known}");
            }
            other => panic!("{other:?}"),
        }
    }
}
