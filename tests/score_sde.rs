//! The score-SDE predictor–corrector sampler against diffusers' ScoreSdeVeScheduler as its
//! pipeline drives it (tests/fixtures/score_sde.json from gen_score_sde.py), and its grid.

mod common;
use common::*;
use diffusion_samplers::noise::NoiseSource;
use diffusion_samplers::prelude::*;
use diffusion_samplers::score_sde::PredictorCorrector;
use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, IxDyn};

/// Replays recorded draws in the order they are asked for.
struct InOrder(Vec<Vec<f64>>, usize);

impl NoiseSource<f64> for InOrder {
    fn fill<D: Dimension>(&mut self, _step: usize, mut out: ArrayViewMut<'_, f64, D>) {
        let block = self.0.get(self.1).cloned().unwrap_or_default();
        self.1 += 1;
        for (o, v) in out
            .iter_mut()
            .zip(block.iter().chain(std::iter::repeat(&f64::NAN)))
        {
            *o = *v;
        }
    }
}

#[test]
fn predictor_corrector_matches_diffusers() {
    let fx = fixture("score_sde.json");
    let meta = &fx["meta"];
    let sh = shape(meta);
    for run in fx["runs"].as_array().unwrap() {
        let name = str_of(run, "name");
        let steps = run["steps"].as_u64().unwrap() as usize;
        let (smin, smax) = (
            run["sigma_min"].as_f64().unwrap(),
            run["sigma_max"].as_f64().unwrap(),
        );
        let grid = PredictorCorrector::diffusers_grid(steps, smin, smax, 1e-5).unwrap();
        // The grid: model sigmas as t, the predictor's discrete sigmas as sigma (f32 in diffusers).
        let (ms, ds) = (f64s(&run["model_sigmas"]), f64s(&run["discrete_sigmas"]));
        for (i, l) in grid.levels()[..steps].iter().enumerate() {
            assert!((l.t / ms[i] - 1.0).abs() < 1e-6, "{name}: model sigma {i}");
            assert!(
                (l.sigma / ds[steps - 1 - i] - 1.0).abs() < 1e-6,
                "{name}: sigma {i}"
            );
        }
        assert_eq!(grid.initial_scale(), smax);
        // The exact score at the pipeline's sigma (level.t), as an epsilon model at level.sigma.
        let mut inner = gmm(meta).with_prediction(Prediction::Sample);
        let model = FnDenoiser::new(
            Prediction::Epsilon,
            move |x: ArrayView<'_, f64, IxDyn>, l: &NoiseLevel| {
                let s = l.t;
                let x0 = inner.denoise(x.view(), &NoiseLevel::new(s, 1.0, s))?;
                let score = (x0 - &x) / (s * s);
                Ok::<_, BoxError>(score * -l.sigma)
            },
        );
        let x = Array::from_shape_vec(IxDyn(&sh), f64s(&run["x_init"])).unwrap();
        let noise: Vec<Vec<f64>> = run["noise"].as_array().unwrap().iter().map(f64s).collect();
        let pc = PredictorCorrector::new()
            .snr(run["snr"].as_f64().unwrap())
            .correct_steps(run["correct_steps"].as_u64().unwrap() as usize);
        let mut model = model;
        let out = pc.sample(&mut model, x, &grid, &mut InOrder(noise, 0)).unwrap();
        let want = f64s(&run["final"]);
        // f32 sigmas in diffusers (~1e-7 relative) on samples that start at sigma_max ~ 50.
        let err = max_abs_diff(out.as_slice().unwrap(), &want);
        println!("{name:26} err {err:.1e}");
        assert!(err < 1e-4, "{name}: {err:e}");
        assert_eq!(
            pc.model_calls(&grid),
            steps * (run["correct_steps"].as_u64().unwrap() as usize + 1)
        );
    }
}

#[test]
fn bad_settings_are_errors() {
    let grid = PredictorCorrector::diffusers_grid(5, 0.01, 50.0, 1e-5).unwrap();
    let x: ndarray::Array2<f64> = ndarray::Array2::zeros((2, 1));
    let mut m = GaussianMixture::gaussian(vec![0.0], vec![1.0]).unwrap();
    assert!(matches!(
        PredictorCorrector::new()
            .snr(f64::NAN)
            .sample(&mut m, x, &grid, &mut SeededNoise::new(0)),
        Err(Error::InvalidParameter { name: "snr", .. })
    ));
    assert!(PredictorCorrector::diffusers_grid(1, 0.01, 50.0, 1e-5).is_err());
    assert!(PredictorCorrector::diffusers_grid(5, 1.0, 0.5, 1e-5).is_err());
}
