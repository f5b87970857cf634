//! Brownian noise: refining the grid refines the same noise, so a stochastic sampler's result
//! converges as the steps are halved (the property ComfyUI's Brownian-tree samplers have), while
//! independent noise per step gives a new sample every time.

use diffusion_samplers::noise::BrownianNoise;
use diffusion_samplers::prelude::*;
use diffusion_samplers::{AnySampler, DpmPpSde, Sampler};
use ndarray::Array2;

fn rms(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).mapv(|v| v * v).mean().unwrap().sqrt()
}

#[test]
fn halving_the_step_keeps_the_sample_close() {
    let schedule = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let samplers: [(&str, AnySampler); 4] = [
        ("DPM++ 2M SDE", DpmSolver::new().sde(true).into()),
        ("DPM++ SDE", DpmPpSde::new().into()),
        ("Euler a", EulerAncestral::new().into()),
        ("DPM++ 3M SDE", DpmSolver::new().order(3).sde(true).into()),
    ];
    let grids: Vec<Grid> = [10, 20, 40, 80]
        .iter()
        .map(|&n| schedule.grid(n, Spacing::KARRAS).unwrap())
        .collect();
    let x: Array2<f64> = grids[0]
        .initial_sample((512, 2), &mut SeededNoise::new(0))
        .unwrap();
    for (name, sampler) in samplers {
        let mut model = GaussianMixture::new(
            vec![0.5, 0.5],
            vec![vec![-1.0, 0.0], vec![1.0, 0.5]],
            vec![vec![0.05, 0.1], vec![0.1, 0.05]],
        )
        .unwrap();
        let mut run = |grid: &Grid, brownian: bool, seed: u64| {
            if brownian {
                let mut noise = BrownianNoise::new(seed, &grids[0]).unwrap();
                sampler.sample(&mut model, x.clone(), grid, &mut noise).unwrap()
            } else {
                sampler
                    .sample(&mut model, x.clone(), grid, &mut SeededNoise::new(seed))
                    .unwrap()
            }
        };
        let b: Vec<Array2<f64>> = grids.iter().map(|g| run(g, true, 1)).collect();
        let d: Vec<f64> = b.windows(2).map(|w| rms(&w[0], &w[1])).collect();
        let independent = rms(&run(&grids[3], false, 1), &run(&grids[2], false, 2));
        println!("{name}: rms change 10->20->40->80 steps {d:?}; independent noise {independent:.3}");
        // Each halving moves the result less, and far less than a new draw of the noise
        // (which moves it by the data's spread, about 1.2 here).
        assert!(d[1] < d[0] && d[2] < d[1], "{name}: {d:?}");
        assert!(d[2] < 0.2 * independent, "{name}: {d:?} vs {independent}");
    }
}

/// A Brownian source over a flow grid (time = the flow sigma) drives a flow SDE sampler to the
/// right distribution.
#[test]
fn brownian_noise_samples_the_right_distribution_on_flow() {
    let flow = FlowSchedule::new(1000)
        .unwrap()
        .with_shift(FlowShift::Static(3.0))
        .unwrap();
    let grid = flow.grid(30, Spacing::Linspace).unwrap();
    let mut model = GaussianMixture::gaussian(vec![1.0], vec![0.25])
        .unwrap()
        .with_prediction(Prediction::Flow);
    let x: Array2<f64> = grid.initial_sample((4000, 1), &mut SeededNoise::new(3)).unwrap();
    let mut noise = BrownianNoise::new(5, &grid).unwrap();
    let out = DpmPpSde::new().sample(&mut model, x, &grid, &mut noise).unwrap();
    let mean = out.mean().unwrap();
    let var = out.var(1.0);
    // Sampling errors 0.008 (mean) and 0.006 (variance); 30 steps add about 0.01.
    assert!(
        (mean - 1.0).abs() < 0.04 && (var - 0.25).abs() < 0.04,
        "{mean} {var}"
    );
}
