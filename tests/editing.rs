//! Guidance, img2img, inpainting and DDIM inversion.

mod common;
use common::*;
use diffusion_samplers::edit::{self, DdimInversion, Inpaint};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{BatchedGuidance, Guidance, Heun, UniPc};
use ndarray::{Array, Array2, ArrayView2, Axis, IxDyn, concatenate, s};
use rand::{SeedableRng, rngs::StdRng};

/// DDIM inversion against diffusers' DDIMInverseScheduler (f32 schedule: tolerance as in
/// tests/golden_ddim_ddpm.rs).
#[test]
fn ddim_inversion_matches_diffusers() {
    let fx = fixture("samplers.json");
    let meta = &fx["meta"];
    for case in fx["ddim_inverse"].as_array().unwrap() {
        let name = str_of(case, "name");
        let sched = schedule(str_of(case, "schedule"));
        let n = case["steps"].as_u64().unwrap() as usize;
        let grid = sched.grid(n, Spacing::Leading { offset: 0 }).unwrap();
        let mut ts = grid.timesteps();
        ts.reverse();
        assert_eq!(ts, f64s(&case["timesteps"]));
        let mut model = gmm(meta).with_prediction(prediction(str_of(case, "prediction")));
        let x = Array::from_shape_vec(IxDyn(&shape(meta)), f64s(&case["x_init"])).unwrap();
        let clip = case["clip_sample"].as_bool().unwrap().then_some(1.0);
        let got = DdimInversion::new()
            .clip_sample(clip)
            .invert(&mut model, x, &grid)
            .unwrap();
        let want = f64s(case["trajectory"].as_array().unwrap().last().unwrap());
        let err = max_abs_diff(&got.iter().copied().collect::<Vec<_>>(), &want);
        println!("{name:40} err {err:.2e}");
        assert!(err < 2e-4, "{name}: {err:e}");
    }
}

fn two_models() -> (GaussianMixture, GaussianMixture) {
    (
        GaussianMixture::gaussian(vec![1.5, -0.5], vec![0.1, 0.2]).unwrap(),
        GaussianMixture::new(
            vec![0.5, 0.5],
            vec![vec![-1.0, 0.0], vec![1.0, 0.0]],
            vec![vec![0.3, 0.3], vec![0.3, 0.3]],
        )
        .unwrap(),
    )
}

/// One batched call on `[x; x]` returning `[uncond; cond]` gives the same guidance as two
/// models; scale 1 is the conditional model; rescale keeps the conditional output's spread.
#[test]
fn guidance_forms_agree() {
    let (cond, uncond) = two_models();
    let level = NoiseLevel::from_alpha_bar(500.0, 0.3);
    let x: Array2<f64> = standard_normal((5, 2), &mut StdRng::seed_from_u64(1));
    for rescale in [0.0, 0.7] {
        let mut two = Guidance::new(cond.clone(), uncond.clone(), 7.5).rescale(rescale);
        let (mut c, mut u) = (cond.clone(), uncond.clone());
        let batched_model = FnDenoiser::new(
            Prediction::Epsilon,
            move |xx: ArrayView2<'_, f64>, l: &NoiseLevel| {
                let n = xx.nrows() / 2;
                let uo = u.denoise(xx.slice(s![..n, ..]), l)?;
                let co = c.denoise(xx.slice(s![n.., ..]), l)?;
                Ok::<_, BoxError>(concatenate(Axis(0), &[uo.view(), co.view()])?)
            },
        );
        let mut one = BatchedGuidance::new(batched_model, 7.5).rescale(rescale);
        let a = two.denoise(x.view(), &level).unwrap();
        let b = one.denoise(x.view(), &level).unwrap();
        assert!((&a - &b).iter().all(|v| v.abs() < 1e-12));
    }
    let mut unit = Guidance::new(cond.clone(), uncond.clone(), 1.0);
    let a = unit.denoise(x.view(), &level).unwrap();
    let b = cond.clone().denoise(x.view(), &level).unwrap();
    assert!((&a - &b).iter().all(|v| v.abs() < 1e-12));
    // Guided sampling runs with any sampler, and stronger guidance pulls harder towards the
    // conditional mode.
    let sched = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = sched.grid(20, Spacing::KARRAS).unwrap();
    let x0: Array2<f64> = standard_normal((256, 2), &mut StdRng::seed_from_u64(2));
    let mean0 = |scale: f64| {
        let mut g = Guidance::new(cond.clone(), uncond.clone(), scale);
        let out = UniPc::new()
            .sample(&mut g, x0.clone(), &grid, &mut StdRng::seed_from_u64(0))
            .unwrap();
        out.column(0).mean().unwrap()
    };
    let (m1, m3) = (mean0(1.0), mean0(3.0));
    assert!((m1 - 1.5).abs() < 0.1 && m3 > m1, "{m1} {m3}");
    // Bad settings are the model's error, reported with the step.
    let mut bad = Guidance::new(cond, uncond, 2.0).rescale(1.5);
    let err = Heun::new()
        .sample(&mut bad, x0, &grid, &mut StdRng::seed_from_u64(0))
        .unwrap_err();
    assert!(matches!(err, Error::Model { step: 0, .. }));
}

/// img2img keeps diffusers' strength semantics and noises the input to the first kept level.
#[test]
fn img2img_strength() {
    let sched = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = sched.grid(50, Spacing::Leading { offset: 1 }).unwrap();
    for (strength, steps) in [(1.0, 50), (0.8, 40), (0.75, 37), (0.3, 15), (0.02, 1)] {
        let g = edit::for_strength(&grid, strength).unwrap();
        assert_eq!(g.steps(), steps, "strength {strength}");
        assert_eq!(g.levels()[0], grid.levels()[50 - steps]);
    }
    assert!(edit::for_strength(&grid, 0.01).is_err());
    assert!(edit::for_strength(&grid, 0.0).is_err());
    assert!(edit::for_strength(&grid, 1.5).is_err());
    let x0 = Array2::from_elem((2, 3), 0.5);
    let eps = Array2::from_elem((2, 3), 1.0);
    let l = grid.levels()[10];
    let noised = edit::noise_to(x0.view(), eps.view(), &l).unwrap();
    assert!((noised[[1, 2]] - (0.5 * l.alpha + l.sigma)).abs() < 1e-15);
}

/// Inpainting keeps the known pixels exactly and samples the others conditionally: with a
/// correlated Gaussian replaced by independent coordinates, the generated coordinate follows
/// the mixture's mode selected by the known one.
#[test]
fn inpainting_keeps_known_pixels() {
    let sched = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = sched.grid(40, Spacing::Trailing).unwrap();
    // Two modes: (-2, -2) and (2, 2): knowing the first coordinate decides the second.
    let mut model = GaussianMixture::new(
        vec![0.5, 0.5],
        vec![vec![-2.0, -2.0], vec![2.0, 2.0]],
        vec![vec![0.05, 0.05], vec![0.05, 0.05]],
    )
    .unwrap();
    let n = 64;
    let mut known = Array2::zeros((n, 2));
    known.column_mut(0).fill(2.0);
    let mut keep = Array2::zeros((n, 2));
    keep.column_mut(0).fill(1.0);
    let inpaint = Inpaint::new(known.view(), keep.view()).unwrap();
    for sampler_is_ancestral in [false, true] {
        let x: Array2<f64> = standard_normal((n, 2), &mut StdRng::seed_from_u64(3));
        let out = if sampler_is_ancestral {
            inpaint
                .sample(
                    &EulerAncestral::new(),
                    &mut model,
                    x,
                    &grid,
                    &mut StdRng::seed_from_u64(4),
                )
                .unwrap()
        } else {
            inpaint
                .sample(&Heun::new(), &mut model, x, &grid, &mut StdRng::seed_from_u64(4))
                .unwrap()
        };
        assert!(out.column(0).iter().all(|&v| v == 2.0));
        let right = out.column(1).iter().filter(|&&v| v > 0.0).count();
        assert!(
            right >= n * 9 / 10,
            "only {right} of {n} followed the known coordinate"
        );
    }
    let bad = Array2::from_elem((n, 2), 2.0);
    assert!(Inpaint::new(known.view(), bad.view()).is_err());
    assert!(Inpaint::new(known.view(), Array2::zeros((1, 2)).view()).is_err());
}

/// Inversion followed by deterministic sampling reconstructs the input (exact denoiser,
/// many steps), for epsilon and velocity models.
#[test]
fn inversion_round_trip() {
    let sched = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    for pred in [Prediction::Epsilon, Prediction::Velocity] {
        let mut model = GaussianMixture::gaussian(vec![0.3, -0.2], vec![0.25, 0.5])
            .unwrap()
            .with_prediction(pred);
        let x0: Array2<f64> = standard_normal((16, 2), &mut StdRng::seed_from_u64(9));
        let err = |steps: usize| {
            let grid = sched.grid(steps, Spacing::Leading { offset: 0 }).unwrap();
            let mut m = model.clone();
            let z = DdimInversion::new().invert(&mut m, x0.clone(), &grid).unwrap();
            let back = Ddim::new()
                .clip_sample(None)
                .sample(&mut m, z, &grid, &mut StdRng::seed_from_u64(0))
                .unwrap();
            (&back - &x0).iter().fold(0.0f64, |m, v| m.max(v.abs()))
        };
        // The inversion evaluates the model one level off: a first-order error in the step.
        let (e1, e2) = (err(125), err(250));
        assert!(e2 < 0.04 && e2 < 0.6 * e1, "{pred:?}: {e1} -> {e2}");
        let _ = &mut model;
    }
    let mut x0_model = GaussianMixture::gaussian(vec![0.0], vec![1.0])
        .unwrap()
        .with_prediction(Prediction::Sample);
    let grid = sched.grid(10, Spacing::Leading { offset: 0 }).unwrap();
    let r = DdimInversion::new().invert(&mut x0_model, Array2::<f64>::zeros((1, 1)), &grid);
    assert!(matches!(r, Err(Error::Undetermined { what: "eps", .. })));
}
