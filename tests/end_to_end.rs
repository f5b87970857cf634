//! End to end: train the example MLP (`examples/models`) on eight Gaussians from scratch, then
//! sample with DDIM (50 steps) and DPM-Solver++(2M) (20 steps). Every mode must get between half
//! and twice its share of the samples, and the sliced Wasserstein-2 distance to fresh data must
//! be below a bound that the untrained model fails.

#[allow(dead_code, reason = "the examples' model code; this test uses the MLP part")]
#[path = "../examples/models/mod.rs"]
mod models;

use diffusion_samplers::prelude::*;
use models::data2d::{Toy, mode_counts, sliced_w2};
use models::mlp::{Mlp, TrainConfig, train};
use ndarray::Array2;
use rand::{SeedableRng, rngs::StdRng};

const N: usize = 2000;
/// The trained model reaches 0.06-0.07 (two fresh data sets: about 0.08); the untrained one
/// 2.2-2.5.
const SW2_BOUND: f64 = 0.25;

fn sample(model: &mut Mlp<f32>, schedule: &NoiseSchedule) -> [Array2<f32>; 2] {
    let x = standard_normal((N, 2), &mut SeededNoise::new(3));
    let ddim = schedule.grid(50, Spacing::Trailing).unwrap();
    let dpm = schedule.grid(20, Spacing::KARRAS).unwrap();
    let a = Ddim::new()
        .clip_sample(None)
        .sample(
            &mut *model,
            x.clone() * ddim.levels()[0].sigma as f32,
            &ddim,
            &mut SeededNoise::new(0),
        )
        .unwrap();
    let b = DpmSolver::new()
        .sample(
            &mut *model,
            x * dpm.levels()[0].sigma as f32,
            &dpm,
            &mut SeededNoise::new(0),
        )
        .unwrap();
    [a, b]
}

#[test]
fn mlp_learns_eight_gaussians_and_every_sampler_covers_the_modes() {
    let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap();
    let fp = ForwardProcess::new(schedule.clone());
    let mut rng = StdRng::seed_from_u64(0);
    let mut model = Mlp::<f32>::new(Prediction::Velocity, 64, 3, &mut rng);
    let fresh = Toy::EightGaussians.sample(N, &mut StdRng::seed_from_u64(100));

    let untrained = sample(&mut model.clone(), &schedule);
    for out in &untrained {
        let d = sliced_w2(out.view(), fresh.view(), 64, &mut StdRng::seed_from_u64(1));
        println!("untrained: SW2 {d:.4}");
        assert!(d > SW2_BOUND, "the untrained model already passes: SW2 {d}");
    }

    let cfg = TrainConfig {
        steps: 2500,
        batch: 256,
        lr: 3e-3,
        weighting: LossWeighting::Uniform,
    };
    let loss = train(
        &mut model,
        &fp,
        &cfg,
        &mut |n, rng: &mut StdRng| Toy::EightGaussians.sample(n, rng),
        &mut rng,
        &mut |_, _| {},
    );
    assert!(loss.is_finite() && loss < 1.5, "final loss {loss}");

    for (name, out) in ["DDIM 50", "DPM++ 2M 20"]
        .iter()
        .zip(sample(&mut model, &schedule))
    {
        let counts = mode_counts(out.view());
        let d = sliced_w2(out.view(), fresh.view(), 64, &mut StdRng::seed_from_u64(1));
        println!("{name}: modes {counts:?}, SW2 {d:.4}");
        let share = N / 8;
        for (k, &c) in counts.iter().enumerate() {
            assert!(
                c >= share / 2 && c <= 2 * share,
                "{name}: mode {k} got {c} of {N}"
            );
        }
        assert!(d < SW2_BOUND, "{name}: SW2 {d}");
    }
}
