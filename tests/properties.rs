//! Property tests: constructors never panic, schedules are well-formed, the forward process
//! composes, DDIM(eta = 0) is deterministic, f32 and f64 agree.

use diffusion_samplers::forward::transition;
use diffusion_samplers::prelude::*;
use ndarray::{Array2, array};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1.0..2.0f64,
        2 => 0.0..0.05f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(0.0),
        1 => Just(1.0),
        1 => any::<f64>(),
    ]
}

fn check_schedule(s: &NoiseSchedule) {
    let a = s.alphas_cumprod();
    assert!(a[0] <= 1.0 && a[0] > 0.0 || a.len() == 1 && a[0] >= 0.0);
    for w in a.windows(2) {
        assert!(w[1] < w[0], "alphas_cumprod must decrease strictly");
    }
    assert!(a.iter().all(|&v| (0.0..=1.0).contains(&v)));
    assert!(
        a[..a.len() - 1].iter().all(|&v| v > 0.0),
        "only the last level may be pure noise"
    );
    for t in 0..s.len() {
        assert!(s.level_at(t).unwrap().is_valid());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn schedule_constructors_never_panic(steps in 0usize..1200, b0 in any_f64(), b1 in any_f64()) {
        for s in [
            NoiseSchedule::linear(steps, b0, b1),
            NoiseSchedule::scaled_linear(steps, b0, b1),
            NoiseSchedule::sigmoid(steps, b0, b1),
            NoiseSchedule::cosine(steps),
            NoiseSchedule::laplace(steps),
            NoiseSchedule::exp(steps),
        ].into_iter().flatten() {
            check_schedule(&s);
            if let Ok(z) = s.with_zero_terminal_snr() {
                check_schedule(&z);
                prop_assert_eq!(z.alphas_cumprod()[z.len() - 1], 0.0);
            }
        }
    }

    #[test]
    fn from_betas_never_panics(betas in prop::collection::vec(any_f64(), 0..50)) {
        if let Ok(s) = NoiseSchedule::from_betas(&betas) {
            check_schedule(&s);
        }
    }

    #[test]
    fn grids_never_panic_and_are_well_formed(
        steps in 0usize..1100,
        offset in 0usize..5,
        rho in any_f64(),
        which in 0usize..6,
        zero_snr in any::<bool>(),
    ) {
        let mut s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        if zero_snr {
            s = s.with_zero_terminal_snr().unwrap();
        }
        let sp = [
            Spacing::Leading { offset },
            Spacing::Trailing,
            Spacing::Linspace,
            Spacing::LinspaceRounded,
            Spacing::Karras { rho },
            Spacing::Exponential,
        ][which];
        if let Ok(g) = s.grid(steps, sp) {
            prop_assert_eq!(g.steps(), steps);
            let sig = g.sigmas_ve();
            for w in sig.windows(2) {
                prop_assert!(w[1] < w[0]);
            }
            for l in g.levels() {
                prop_assert!(l.is_valid());
            }
            let g2 = g.with_final(FinalLevel::FirstTimestep);
            prop_assert_eq!(g2.steps(), steps);
        }
    }

    #[test]
    fn custom_grids_never_panic(ts in prop::collection::vec(any_f64(), 0..12), scale in 1.0..1000.0f64) {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let scaled: Vec<f64> = ts.iter().map(|t| t * scale).collect();
        let _ = s.grid_from_timesteps(&scaled);
        let _ = s.grid_from_sigmas(&scaled);
        let levels: Vec<NoiseLevel> = ts.chunks(3).filter(|c| c.len() == 3).map(|c| NoiseLevel::new(c[0], c[1], c[2])).collect();
        let _ = Grid::from_levels(levels);
    }

    /// q(x_t | x_0) composed of forward steps q(x_t | x_{t-1}) has the closed-form mean scale
    /// alpha_t and variance sigma_t^2.
    #[test]
    fn forward_steps_compose_to_the_closed_form(b0 in 1e-5..0.01f64, b1 in 0.01..0.5f64, steps in 2usize..400, zero_snr in any::<bool>()) {
        let mut s = NoiseSchedule::linear(steps, b0, b1).unwrap();
        if zero_snr {
            s = s.with_zero_terminal_snr().unwrap();
        }
        let (mut scale, mut var) = (1.0f64, 0.0f64);
        let mut prev = NoiseLevel::CLEAN;
        for t in 0..s.len() {
            let l = s.level_at(t).unwrap();
            let tr = transition(&prev, &l);
            scale *= tr.scale;
            var = tr.scale * tr.scale * var + tr.variance;
            prop_assert!((scale - l.alpha).abs() <= 1e-12 + 1e-9 * l.alpha);
            prop_assert!((var - l.sigma * l.sigma).abs() <= 1e-9);
            prev = l;
        }
    }

    /// Deterministic DDIM never touches the noise: two different RNGs give identical bits.
    #[test]
    fn ddim_eta0_is_deterministic(seed in any::<u64>(), steps in 1usize..60, x0 in -3.0..3.0f64) {
        let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        let g = s.grid(steps, Spacing::Trailing).unwrap();
        let mut model = GaussianMixture::new(vec![1.0, 2.0], vec![vec![-1.0], vec![1.0]], vec![vec![0.1], vec![0.2]]).unwrap();
        let x = array![[x0], [-x0]];
        let a = Ddim::new().clip_sample(None).sample(&mut model, x.clone(), &g, &mut StdRng::seed_from_u64(seed)).unwrap();
        let b = Ddim::new().clip_sample(None).sample(&mut model, x, &g, &mut StdRng::seed_from_u64(seed ^ 0xdead)).unwrap();
        prop_assert_eq!(a, b);
    }

    /// f32 and f64 runs of the same sampler agree to f32 precision.
    #[test]
    fn f32_and_f64_agree(seed in any::<u64>(), steps in 5usize..50, eta in 0.0..1.0f64, which in 0usize..3) {
        let s = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
        let g = s.grid(steps, Spacing::Leading { offset: 1 }).unwrap();
        let pred = [Prediction::Epsilon, Prediction::Velocity, Prediction::Sample][which];
        let mut model = GaussianMixture::new(vec![1.0, 1.0], vec![vec![-1.0, 0.5], vec![1.0, 0.0]], vec![vec![0.1, 0.1], vec![0.2, 0.05]]).unwrap().with_prediction(pred);
        let x64: Array2<f64> = standard_normal((4, 2), &mut StdRng::seed_from_u64(seed));
        let x32 = x64.mapv(|v| v as f32);
        let noise: Vec<Vec<f64>> = (0..steps).map(|k| standard_normal::<f64, _, _, _>(8, &mut StdRng::seed_from_u64(seed + k as u64 + 1)).to_vec()).collect();
        let mut n64 = ReplayNoise::new(noise.clone());
        let mut n32 = ReplayNoise::new(noise.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect());
        let ddim = Ddim::new().eta(eta).clip_sample(Some(1.5));
        let a = ddim.sample(&mut model, x64.clone(), &g, &mut n64).unwrap();
        let b = ddim.sample(&mut model, x32, &g, &mut n32).unwrap();
        for (p, q) in a.iter().zip(b.iter()) {
            prop_assert!((p - f64::from(*q)).abs() < 2e-3, "{} vs {}", p, q);
        }
        let mut n64 = ReplayNoise::new(noise.clone());
        let mut n32 = ReplayNoise::new(noise.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect());
        let a = Ddpm::new().clip_sample(None).sample(&mut model, x64.clone(), &g, &mut n64).unwrap();
        let b = Ddpm::new().clip_sample(None).sample(&mut model, x64.mapv(|v| v as f32), &g, &mut n32).unwrap();
        for (p, q) in a.iter().zip(b.iter()) {
            prop_assert!((p - f64::from(*q)).abs() < 2e-3, "{} vs {}", p, q);
        }
    }

    /// Prediction conversions are exact inverses at any valid level.
    #[test]
    fn conversions_round_trip(alpha in 0.0..2.0f64, sigma in 0.01..2.0f64, o in -5.0..5.0f64, x in -5.0..5.0f64) {
        let l = NoiseLevel::new(1.0, alpha, sigma);
        let preds = [Prediction::Velocity, Prediction::Sample, Prediction::Flow, Prediction::Epsilon];
        for from in preds {
            for to in preds {
                let there = from.convert(to, array![o].view(), array![x].view(), &l);
                if let Ok(there) = there
                    && let Ok(back) = to.convert(from, there.view(), array![x].view(), &l)
                {
                    prop_assert!(
                        (back[0] - o).abs() <= 1e-8 * (1.0 + o.abs()) / alpha.max(1e-3),
                        "{:?}->{:?}: {} vs {}", from, to, back[0], o
                    );
                }
            }
        }
    }
}
