//! Beta schedules against diffusers 0.42.1 (tests/fixtures/schedules.json).

mod common;
use common::*;

/// Betas: diffusers stores them in float32 (relative rounding 2^-24 = 6e-8, plus a few ulps from
/// torch's f32 linspace / sigmoid: measured <= 2.2e-7 relative). An off-by-one timestep moves a
/// beta by >= 1e-3 relative, far outside.
const BETA_TOL: (f64, f64) = (1e-6, 0.0);

/// Zero-terminal-SNR betas are re-derived as `1 - abar_t / abar_{t-1}` in f32, which cancels:
/// absolute error up to a few f32 ulps of 1 (3e-7) where beta is small. Near the end `abar` is tiny there (1e-6 .. 1e-9) and carries the
/// f32 error of `sqrt(abar) - sqrt(abar_T)` (~6e-8 absolute in `sqrt(abar)`), so the ratio
/// `abar_t / abar_{t-1}` has a relative error of ~1e-4 (measured 7e-6 absolute on beta = 0.56).
/// Adjacent betas there differ by >= 10%, so a 1e-4 relative tolerance still rejects a shift.
const ZERO_SNR_BETA_TOL: (f64, f64) = (1e-4, 3e-7);

/// alphas_cumprod: the reference product runs in float32 over up to 1000 factors (measured
/// <= 9.3e-7 relative); the zero-SNR rescale subtracts `sqrt(abar_T)` in f32 (measured 4.2e-7
/// absolute). One timestep moves alphas_cumprod by a relative `beta_t >= 1e-4` (>= 1e-4
/// absolute where it is large), so this rejects an off-by-one.
const ABAR_TOL: (f64, f64) = (2e-6, 1e-6);

const NAMES: [&str; 6] = [
    "linear",
    "scaled_linear",
    "squaredcos_cap_v2",
    "sigmoid",
    "scaled_linear_zero_snr",
    "linear_zero_snr",
];

#[test]
fn schedules_match_diffusers() {
    let fx = fixture("schedules.json");
    for name in NAMES {
        let want_b = f64s(&fx[name]["betas"]);
        let want_a = f64s(&fx[name]["alphas_cumprod"]);
        let s = schedule(name);
        let bt = if name.ends_with("zero_snr") {
            ZERO_SNR_BETA_TOL
        } else {
            BETA_TOL
        };
        let (rb, ib) = tol_ratio(s.betas(), &want_b, bt.0, bt.1);
        let (ra, ia) = tol_ratio(s.alphas_cumprod(), &want_a, ABAR_TOL.0, ABAR_TOL.1);
        println!("{name}: betas at {rb:.3} of tolerance (t = {ib}), alphas_cumprod at {ra:.3} (t = {ia})");
        assert!(
            rb <= 1.0,
            "{name}: beta[{ib}] = {} vs diffusers {}",
            s.betas()[ib],
            want_b[ib]
        );
        assert!(
            ra <= 1.0,
            "{name}: abar[{ia}] = {} vs diffusers {}",
            s.alphas_cumprod()[ia],
            want_a[ia]
        );

        // Negative control: the same tolerances reject an off-by-one timestep.
        let (sb, _) = tol_ratio(&s.betas()[1..], &want_b[..999], bt.0, bt.1);
        let (sa, _) = tol_ratio(&s.alphas_cumprod()[1..], &want_a[..999], ABAR_TOL.0, ABAR_TOL.1);
        assert!(
            sb > 1.0 && sa > 1.0,
            "{name}: tolerance would accept a shifted schedule"
        );
    }
}

#[test]
fn zero_terminal_snr_ends_at_pure_noise() {
    let fx = fixture("schedules.json");
    for name in ["scaled_linear_zero_snr", "linear_zero_snr"] {
        let s = schedule(name);
        assert_eq!(s.alphas_cumprod()[999], 0.0);
        assert_eq!(f64s(&fx[name]["alphas_cumprod"])[999], 0.0);
        assert!(s.level(999.0).sigma_ve().is_infinite());
    }
}
