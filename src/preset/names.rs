//! Name parsing: ComfyUI's `{sampler}_{scheduler}`, AUTOMATIC1111's display names, and the
//! suggestions for an unknown name.

use super::PresetSigmas;
use crate::grid::{AysModel, ComfyScheduler};

/// AUTOMATIC1111's sampler names (lower-cased) and the ComfyUI names they run. A1111 runs
/// k-diffusion's functions for all of these, which ComfyUI's fork keeps (ComfyUI's `lms` ends
/// with the x0 estimate, k-diffusion's with the multistep integral: a difference of about 1e-3
/// on the last step).
pub(crate) const A1111: [(&str, &str); 17] = [
    ("euler a", "euler_ancestral"),
    ("euler", "euler"),
    ("lms", "lms"),
    ("heun", "heun"),
    ("dpm2", "dpm_2"),
    ("dpm2 a", "dpm_2_ancestral"),
    ("dpm++ 2s a", "dpmpp_2s_ancestral"),
    ("dpm++ 2m", "dpmpp_2m"),
    ("dpm++ sde", "dpmpp_sde"),
    ("dpm++ 2m sde", "dpmpp_2m_sde"),
    ("dpm++ 2m sde heun", "dpmpp_2m_sde_heun"),
    ("dpm++ 3m sde", "dpmpp_3m_sde"),
    ("dpm fast", "dpm_fast"),
    ("dpm adaptive", "dpm_adaptive"),
    ("lcm", "lcm"),
    ("unipc", "uni_pc"),
    ("ddpm", "ddpm"),
];

/// AUTOMATIC1111's scheduler words (lower-cased) and ComfyUI's scheduler names.
pub(crate) const A1111_SCHEDULERS: [(&str, PresetSigmas); 13] = [
    ("karras", PresetSigmas::Scheduler(ComfyScheduler::Karras)),
    (
        "exponential",
        PresetSigmas::Scheduler(ComfyScheduler::Exponential),
    ),
    ("sgm uniform", PresetSigmas::Scheduler(ComfyScheduler::SgmUniform)),
    ("kl optimal", PresetSigmas::Scheduler(ComfyScheduler::KlOptimal)),
    ("simple", PresetSigmas::Scheduler(ComfyScheduler::Simple)),
    ("normal", PresetSigmas::Scheduler(ComfyScheduler::Normal)),
    ("beta", PresetSigmas::Scheduler(ComfyScheduler::Beta)),
    ("ddim", PresetSigmas::Scheduler(ComfyScheduler::DdimUniform)),
    ("uniform", PresetSigmas::Scheduler(ComfyScheduler::Normal)),
    ("automatic", PresetSigmas::Scheduler(ComfyScheduler::Normal)),
    ("align your steps gits", PresetSigmas::Gits),
    ("align your steps", PresetSigmas::Ays(AysModel::Sd1)),
    ("align your steps sdxl", PresetSigmas::Ays(AysModel::Sdxl)),
];

/// Levenshtein distance (for suggestions).
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known names closest to `name` (at most five, within a distance of a third of the
/// name's length or 3).
pub(crate) fn close_names<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let limit = (name.chars().count() / 3).max(3);
    let mut scored: Vec<(usize, &str)> = known
        .map(|k| (distance(name, k), k))
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(5).map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("karras", "karas"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("dpmpp_2m", "dpmpp_2m"), 0);
        let close = close_names("dpmpp2m", ["dpmpp_2m", "dpmpp_3m_sde", "euler"].into_iter());
        assert_eq!(close[0], "dpmpp_2m");
    }
}
