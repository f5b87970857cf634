//! Bad input gets a typed error naming what was wrong (and the step and level inside a run);
//! never a panic, never silently wrong output.

use diffusion_samplers::prelude::*;
use diffusion_samplers::{Run, SamplerState};
use ndarray::{Array1, Array2, ArrayView2, array};
use rand::{SeedableRng, rngs::StdRng};

fn grid() -> (NoiseSchedule, Grid) {
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let g = s.grid(10, Spacing::Leading { offset: 0 }).unwrap();
    (s, g)
}

#[derive(Debug)]
struct Boom;
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "boom")
    }
}
impl std::error::Error for Boom {}

#[test]
fn model_error_is_kept_as_source_with_step_and_level() {
    let (_, g) = grid();
    let mut calls = 0;
    let mut model = FnDenoiser::new(Prediction::Epsilon, |x: ArrayView2<'_, f64>, _: &NoiseLevel| {
        calls += 1;
        if calls == 4 {
            Err(Box::new(Boom) as BoxError)
        } else {
            Ok(x.to_owned())
        }
    });
    let err = Ddim::new()
        .sample(
            &mut model,
            Array2::zeros((1, 2)),
            &g,
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap_err();
    match &err {
        Error::Model { step, level, source } => {
            assert_eq!(*step, 3);
            assert_eq!(level.t, g.levels()[3].t);
            assert_eq!(source.to_string(), "boom");
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(std::error::Error::source(&err).is_some());
    assert!(err.to_string().contains("step 3"));
}

#[test]
fn shape_mismatch_names_step_and_shapes() {
    let (_, g) = grid();
    let mut model = FnDenoiser::new(Prediction::Epsilon, |_: ArrayView2<'_, f64>, _: &NoiseLevel| {
        Ok::<_, BoxError>(Array2::zeros((1, 3)))
    });
    let err = Ddpm::new()
        .sample(
            &mut model,
            Array2::zeros((1, 2)),
            &g,
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap_err();
    match err {
        Error::ShapeMismatch {
            step, expected, got, ..
        } => {
            assert_eq!(step, 0);
            assert_eq!(expected, vec![1, 2]);
            assert_eq!(got, vec![1, 3]);
        }
        e => panic!("unexpected {e:?}"),
    }
}

#[test]
fn non_finite_model_output_is_reported_at_its_step() {
    let (_, g) = grid();
    for sampler_eta in [0.0, 1.0] {
        let mut calls = 0;
        let mut model = FnDenoiser::new(Prediction::Epsilon, |x: ArrayView2<'_, f32>, _: &NoiseLevel| {
            calls += 1;
            let v = if calls == 6 { f32::NAN } else { 0.1 };
            Ok::<_, BoxError>(Array2::from_elem(x.raw_dim(), v))
        });
        let err = Ddim::new()
            .eta(sampler_eta)
            .sample(
                &mut model,
                Array2::zeros((2, 2)),
                &g,
                &mut StdRng::seed_from_u64(0),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NonFinite {
                    step: 5,
                    what: "model output",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn missing_replay_noise_is_reported_not_used() {
    let (_, g) = grid();
    let mut model = GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap();
    // Noise for only 3 of the 10 steps.
    let mut noise = ReplayNoise::new(vec![vec![0.1]; 3]);
    let err = Ddpm::new()
        .sample(&mut model, array![[0.5f64]], &g, &mut noise)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFinite {
                step: 3,
                what: "noise",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn ddpm_draws_no_noise_for_the_step_to_the_clean_level() {
    // diffusers adds fixed_large noise whenever t > 0, also on the final step of a grid that
    // stops at t = 1 (leading, steps_offset = 1); we do not (see the guide). Noise for every step
    // but the last is enough: asking for more would fill NaN and fail.
    let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let g = s.grid(10, Spacing::Leading { offset: 1 }).unwrap();
    assert_eq!(g.timesteps()[9], 1.0);
    let mut model = GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap();
    for v in [DdpmVariance::FixedSmall, DdpmVariance::FixedLarge] {
        let mut noise = ReplayNoise::new(vec![vec![0.3]; 9]);
        let out = Ddpm::new()
            .variance(v)
            .sample(&mut model, array![[0.5f64]], &g, &mut noise);
        assert!(out.is_ok(), "{v:?}: {out:?}");
    }
}

#[test]
fn epsilon_prediction_at_zero_snr_is_undetermined() {
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)
        .unwrap()
        .with_zero_terminal_snr()
        .unwrap();
    let g = s.grid(10, Spacing::Trailing).unwrap();
    assert_eq!(g.levels()[0].alpha, 0.0);
    let mut eps_model = GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap();
    let err = Ddim::new()
        .sample(
            &mut eps_model,
            array![[0.5f64]],
            &g,
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Undetermined {
                step: 0,
                prediction: Prediction::Epsilon,
                what: "x0",
                ..
            }
        ),
        "{err:?}"
    );
    // v-prediction copes with the terminal level.
    let mut v_model = eps_model.with_prediction(Prediction::Velocity);
    let out = Ddim::new()
        .sample(&mut v_model, array![[0.5f64]], &g, &mut StdRng::seed_from_u64(0))
        .unwrap();
    assert!(out[[0, 0]].is_finite());
}

#[test]
fn bad_sampler_parameters_are_rejected_before_running() {
    let (_, g) = grid();
    let x = Array1::<f64>::zeros(3);
    for eta in [-0.5, f64::NAN, f64::INFINITY] {
        let err = Ddim::new()
            .eta(eta)
            .start(x.clone(), &g, Prediction::Epsilon, &mut StdRng::seed_from_u64(0))
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name: "eta", .. }),
            "{err:?}"
        );
    }
    for clip in [0.0, -1.0, f64::NAN] {
        assert!(matches!(
            Ddpm::new().clip_sample(Some(clip)).start(
                x.clone(),
                &g,
                Prediction::Epsilon,
                &mut StdRng::seed_from_u64(0)
            ),
            Err(Error::InvalidParameter {
                name: "clip_sample",
                ..
            })
        ));
    }
    let t = Thresholding { ratio: 1.5, max: 2.0 };
    assert!(
        Ddim::new()
            .thresholding(Some(t))
            .start(x, &g, Prediction::Epsilon, &mut StdRng::seed_from_u64(0))
            .is_err()
    );
}

#[test]
fn a_finished_run_refuses_more_answers() {
    let (_, g) = grid();
    let mut model = GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let mut run: Run<f64, _, _, _> = Ddim::new()
        .start(array![[0.5f64]], &g, Prediction::Epsilon, &mut rng)
        .unwrap();
    let mut steps = 0;
    while let Some(req) = run.request() {
        assert_eq!(req.step, steps);
        let out = model.denoise(req.x, &req.level).unwrap();
        run.respond(out).unwrap();
        steps += 1;
    }
    assert_eq!(steps, 10);
    assert!(run.is_finished());
    assert!(matches!(run.respond(array![[0.0]]), Err(Error::Finished)));
    assert_eq!(run.state().sample().len(), 1);
}

#[test]
fn shape_errors_leave_the_run_usable() {
    let (_, g) = grid();
    let mut model = GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let mut run = Ddim::new()
        .start(array![[0.5f64]], &g, Prediction::Epsilon, &mut rng)
        .unwrap();
    assert!(run.respond(array![[0.0, 1.0]]).is_err());
    let req = run.request().unwrap();
    assert_eq!(req.step, 0);
    let out = model.denoise(req.x, &req.level).unwrap();
    run.respond(out).unwrap();
}

#[test]
fn public_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<NoiseSchedule>();
    check::<Grid>();
    check::<NoiseLevel>();
    check::<Ddim>();
    check::<Ddpm>();
    check::<ForwardProcess>();
    check::<GaussianMixture>();
    check::<ReplayNoise<f32>>();
    check::<Error>();
    check::<diffusion_samplers::DdimState<f32, ndarray::IxDyn>>();
}
