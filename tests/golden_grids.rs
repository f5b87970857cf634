//! Timestep and sigma grids against diffusers 0.42.1 (tests/fixtures/grids.json).

mod common;
use common::*;
use diffusion_samplers::{Error, NoiseSchedule, Spacing};

fn spacing(name: &str, offset: usize, sigmas: Option<&str>) -> Spacing {
    match (sigmas, name) {
        (Some("karras"), _) => Spacing::Karras { rho: 7.0 },
        (Some("exponential"), _) => Spacing::Exponential,
        (_, "leading") => Spacing::Leading { offset },
        (_, "trailing") => Spacing::Trailing,
        (_, "linspace") => Spacing::Linspace,
        other => panic!("unknown spacing {other:?}"),
    }
}

/// DDIM / DDPM integer timesteps: exact equality, except where diffusers is wrong (documented in
/// the guide): numpy's float arange gives `trailing` one extra timestep, -1, for some step
/// counts (61, 103, ...), and `linspace` with one step starts at t = 0.
#[test]
fn ddim_timesteps_match_diffusers() {
    let fx = fixture("grids.json");
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let mut checked = 0;
    for case in fx["ddim"].as_array().unwrap() {
        let sp = str_of(case, "spacing");
        let offset = case["offset"].as_u64().unwrap() as usize;
        let n = case["steps"].as_u64().unwrap() as usize;
        let want = f64s(&case["timesteps"]);
        let sp = if sp == "linspace" {
            Spacing::LinspaceRounded
        } else {
            spacing(sp, offset, None)
        };
        let got = s.grid(n, sp).unwrap().timesteps();
        if matches!(sp, Spacing::Trailing) && want.len() == n + 1 {
            assert_eq!(want[n], -1.0, "diffusers' extra trailing timestep is -1");
            assert_eq!(got[..], want[..n], "trailing, {n} steps");
        } else if matches!(sp, Spacing::LinspaceRounded) && n == 1 {
            assert_eq!(want, vec![0.0]);
            assert_eq!(got, vec![999.0]);
        } else {
            assert_eq!(got, want, "{sp:?}, {n} steps");
        }
        checked += 1;
    }
    assert!(checked >= 55);
}

/// Euler-family grids (timesteps and sigmas, float32 in diffusers).
///
/// Sigmas: the reference is f32; see [`f32_sigma_tol`] for the tolerance and why it rejects an
/// off-by-one timestep.
/// Timesteps from sigma spacings come from diffusers' `_sigma_to_t` on f32 log-sigmas: the sigma
/// tolerance divided by the local slope of ln sigma(t), plus 2e-3 — checked to stay below 0.5
/// (an off-by-one is 1.0).
#[test]
fn euler_grids_match_diffusers() {
    let fx = fixture("grids.json");
    let mut checked = 0;
    for case in fx["euler"].as_array().unwrap() {
        let sched = schedule(str_of(case, "schedule"));
        let offset = case["offset"].as_u64().unwrap() as usize;
        let sp = spacing(str_of(case, "spacing"), offset, case["sigmas_kind"].as_str());
        let n = case["steps"].as_u64().unwrap() as usize;
        let g = sched.grid(n, sp).unwrap();
        let (want_t, want_s) = (f64s(&case["timesteps"]), f64s(&case["sigmas"]));
        let ctx = format!("{} {sp:?} {n} steps", str_of(case, "schedule"));
        if n == 1 && str_of(case, "spacing") == "linspace" {
            // numpy's linspace(0, T - 1, 1) is [0]: diffusers' one-step linspace grids (and the
            // Karras / exponential grids built on them) sample from the least noisy level. Ours
            // start at the noisiest level, like every other spacing (a deliberate difference).
            assert!(want_s[0] < 0.03, "{ctx}");
            assert!(
                g.levels()[0].sigma_ve() > 14.0 || g.levels()[0].sigma_ve() > 150.0,
                "{ctx}"
            );
            continue;
        }
        let (want_t, want_s) = if matches!(sp, Spacing::Trailing) && want_t.len() == n + 1 {
            // diffusers' extra trailing timestep (-1, clamped by np.interp to sigma(0)): we
            // take exactly n steps and compare those.
            assert_eq!(want_t[n], -1.0, "{ctx}");
            let mut s = want_s[..n].to_vec();
            s.push(0.0);
            (want_t[..n].to_vec(), s)
        } else {
            (want_t, want_s)
        };
        assert_eq!(want_s.len(), n + 1, "{ctx}");
        assert_eq!(*want_s.last().unwrap(), 0.0);
        assert!(g.levels()[n].is_clean());
        let got_s = g.sigmas_ve();
        // Karras / exponential sigmas interpolate between sigma_min and sigma_max, so they
        // inherit the f32 error of diffusers' sigma_min (relative ~1e-4 on the SD schedule):
        // every sigma gets that relative tolerance on top. Adjacent sigmas of these grids
        // differ by > 5% for n <= 61.
        let smin = sched.sigmas_ve()[0];
        let inherited = if case["sigmas_kind"].is_null() {
            0.0
        } else {
            f32_sigma_tol(smin) / smin
        };
        let (rs, is) = tol_ratio_by(&got_s[..n], &want_s[..n], |s| f32_sigma_tol(s) + inherited * s);
        assert!(rs <= 1.0, "{ctx}: sigma[{is}] = {} vs {}", got_s[is], want_s[is]);
        // The timestep of a given sigma moves by (relative sigma error) / (d ln sigma / dt).
        let sig = sched.sigmas_ve();
        let t_tol: Vec<f64> = g.timesteps()[..n]
            .iter()
            .zip(&got_s)
            .map(|(&t, &s)| {
                let i = (t.floor() as usize).min(998);
                let slope = (sig[i + 1] / sig[i]).ln();
                let rel = (f32_sigma_tol(s) + inherited * s) / s;
                2e-3 + rel / slope
            })
            .collect();
        // On the cosine schedule diffusers' f32 sigma_min is off by ~4e-4 relative, which makes
        // the timesteps of its Karras / exponential grids near t = 250 uncertain by up to 0.8
        // of a step; everywhere else (and on every other schedule) the tolerance is far below
        // one step.
        if str_of(case, "schedule") != "squaredcos_cap_v2" {
            assert!(
                t_tol.iter().all(|&t| t < 0.5),
                "{ctx}: timestep tolerance too loose: {t_tol:?}"
            );
        }
        let got_t = g.timesteps();
        let (rt, it) = (0..n)
            .map(|i| ((got_t[i] - want_t[i]).abs() / t_tol[i], i))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(
            rt <= 1.0,
            "{ctx}: t[{it}] = {} vs {}",
            g.timesteps()[it],
            want_t[it]
        );
        checked += 1;
    }
    assert_eq!(checked, 3 * 5 * 7 - 3 * 3); // all but the one-step linspace-based grids
}

#[test]
fn a_shifted_grid_fails_the_sigma_tolerance() {
    let s = schedule("scaled_linear");
    let a = s.grid_from_timesteps(&[999.0, 500.0, 1.0]).unwrap().sigmas_ve();
    let b = s.grid_from_timesteps(&[998.0, 499.0, 0.0]).unwrap().sigmas_ve();
    let (r, _) = tol_ratio_by(&b[..3], &a[..3], f32_sigma_tol);
    assert!(r > 1.0);
}

#[test]
fn steps_beyond_training_are_errors() {
    let s = schedule("linear");
    for sp in [Spacing::Trailing, Spacing::Linspace, Spacing::Karras { rho: 7.0 }] {
        assert!(matches!(
            s.grid(1001, sp),
            Err(Error::InvalidSteps {
                steps: 1001,
                max: 1000
            })
        ));
        assert!(matches!(s.grid(0, sp), Err(Error::InvalidSteps { steps: 0, .. })));
    }
}
