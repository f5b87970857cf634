//! Batch-invariant seeds: element `k` of a batch of 4 is the image its seed gives at batch size
//! 1, for `SeededNoise::per_element`, for a list of `TorchGenerator`s (diffusers' list of
//! generators) and for `TorchBrownianTree` with one seed per element (k-diffusion's batched
//! trees) — through whole stochastic runs, bit for bit. The shared-seed sources are the
//! counter-example: their element 1 depends on the batch.

use diffusion_samplers::noise::{PerElement, TorchBrownianTree, TorchGenerator};
use diffusion_samplers::prelude::*;
use diffusion_samplers::{AnySampler, DpmPpSde, NoiseSource};
use ndarray::{Array3, s};

const SEEDS: [u64; 4] = [11, 12, 13, 14];

fn model() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.3, 0.7],
        vec![vec![-1.0, 0.5, 0.0, 0.8], vec![0.7, -0.4, 0.3, -0.9]],
        vec![vec![0.05, 0.1, 0.02, 0.08], vec![0.1, 0.03, 0.06, 0.02]],
    )
    .unwrap()
}

fn grid() -> Grid {
    NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)
        .unwrap()
        .grid(12, Spacing::KARRAS)
        .unwrap()
}

/// A whole run (starting sample and steps) with `noise`, for `batch` elements of shape (3, 4).
fn run<N: NoiseSource<f32>>(sampler: &AnySampler, batch: usize, mut noise: N) -> Array3<f32> {
    let g = grid();
    let x: Array3<f32> = g.initial_sample((batch, 3, 4), &mut noise).unwrap();
    sampler.sample(&mut model(), x, &g, &mut noise).unwrap()
}

fn samplers() -> Vec<AnySampler> {
    vec![
        EulerAncestral::new().into(),
        DpmSolver::new().sde(true).into(),
        DpmPpSde::new().into(),
    ]
}

fn assert_invariant<N: NoiseSource<f32>>(what: &str, make: impl Fn(&[u64]) -> N) {
    for sampler in samplers() {
        let four = run(&sampler, 4, make(&SEEDS));
        for (k, &seed) in SEEDS.iter().enumerate() {
            let one = run(&sampler, 1, make(&[seed]));
            assert_eq!(
                four.slice(s![k..=k, .., ..]),
                one,
                "{what}, {sampler:?}: element {k}"
            );
        }
    }
}

#[test]
fn seeded_noise_per_element_is_batch_invariant() {
    assert_invariant("SeededNoise::per_element", |seeds| {
        SeededNoise::per_element(seeds.iter().copied())
    });
}

#[test]
fn torch_generators_per_element_are_batch_invariant() {
    assert_invariant("TorchGenerator::per_element", |seeds| {
        TorchGenerator::per_element(seeds.iter().copied())
    });
}

/// One tree per element; its interval-free draws (the starting sample) come from a generator
/// per element too.
#[test]
fn torch_brownian_trees_per_element_are_batch_invariant() {
    let g = grid();
    let (lo, hi) = (g.last_noisy().sigma_ve(), g.levels()[0].sigma_ve());
    assert_invariant("TorchBrownianTree per element", |seeds| {
        PerElement::new(
            seeds
                .iter()
                .map(|&s| TorchBrownianTree::new(&[s], lo, hi, &[1, 3, 4]).unwrap())
                .collect(),
        )
    });
    // k-diffusion's batched tree (one TorchBrownianTree over a list of seeds) gives the same.
    let sampler: AnySampler = DpmSolver::new().sde(true).into();
    let mut batched = TorchBrownianTree::new(&SEEDS, lo, hi, &[3, 4]).unwrap();
    let mut starting = TorchGenerator::per_element(SEEDS);
    let x: Array3<f32> = g.initial_sample((4, 3, 4), &mut starting).unwrap();
    let a = sampler.sample(&mut model(), x, &g, &mut batched).unwrap();
    let b = run(
        &sampler,
        4,
        PerElement::new(
            SEEDS
                .iter()
                .map(|&s| TorchBrownianTree::new(&[s], lo, hi, &[1, 3, 4]).unwrap())
                .collect(),
        ),
    );
    assert_eq!(a, b);
}

/// Shared-seed sources are not batch-invariant (why the per-element forms exist): element 1 of
/// a batch drawn from one generator is not any batch-1 image.
#[test]
fn one_shared_seed_is_not_batch_invariant() {
    let sampler: AnySampler = EulerAncestral::new().into();
    let four = run(&sampler, 4, TorchGenerator::new(SEEDS[0]));
    let one = run(&sampler, 1, TorchGenerator::new(SEEDS[0]));
    assert_ne!(four.slice(s![1..=1, .., ..]), one);
    let four = run(&sampler, 4, SeededNoise::new(SEEDS[0]));
    let one = run(&sampler, 1, SeededNoise::new(SEEDS[0]));
    assert_ne!(four.slice(s![1..=1, .., ..]), one);
}
