//! The fast noise generator is a correct N(0, 1): moments, tails, Kolmogorov–Smirnov,
//! independence; reproducible and layout- and thread-count-independent.

use diffusion_samplers::{NoiseSource, SeededNoise};
use ndarray::{Array1, Array2, ShapeBuilder};

/// Normal CDF through the complementary error function (Numerical Recipes' Chebyshev fit,
/// relative error below 1.2e-7 — far below the KS thresholds used here).
fn phi(x: f64) -> f64 {
    let z = (x / std::f64::consts::SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 { 1.0 - 0.5 * erfc } else { 0.5 * erfc }
}

fn check(samples: &[f64], what: &str) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = samples.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(mean.abs() < 4.0 / n.sqrt(), "{what}: mean {mean}");
    assert!(
        (var - 1.0).abs() < 4.0 * (2.0 / n).sqrt(),
        "{what}: variance {var}"
    );
    // Tails: P(|z| > k) = 2 (1 - Phi(k)), binomial standard error.
    for k in [1.0, 2.0, 3.0, 4.0] {
        let p = 2.0 * (1.0 - phi(k));
        let got = samples.iter().filter(|v| v.abs() > k).count() as f64 / n;
        let se = (p * (1.0 - p) / n).sqrt();
        assert!(
            (got - p).abs() < 5.0 * se,
            "{what}: P(|z| > {k}) = {got}, expected {p}"
        );
    }
    // Kolmogorov–Smirnov: sup |F_n - Phi| below the 0.1% critical value 1.95 / sqrt(n).
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let d = sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let c = phi(x);
            (c - i as f64 / n).abs().max(((i + 1) as f64 / n - c).abs())
        })
        .fold(0.0, f64::max);
    assert!(d < 1.95 / n.sqrt(), "{what}: KS statistic {d}");
    // Lag-1 correlation.
    let r = samples
        .windows(2)
        .map(|w| (w[0] - mean) * (w[1] - mean))
        .sum::<f64>()
        / ((n - 1.0) * var);
    assert!(r.abs() < 4.0 / n.sqrt(), "{what}: lag-1 correlation {r}");
    println!(
        "{what}: mean {mean:+.5} var {var:.5} KS {d:.2e} (limit {:.2e}) lag-1 r {r:+.5}",
        1.95 / n.sqrt()
    );
}

#[test]
fn seeded_noise_is_standard_normal() {
    let n = 2_000_000;
    let mut a32 = Array1::<f32>::zeros(n);
    SeededNoise::new(7).fill(0, a32.view_mut());
    check(&a32.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), "f32");
    let mut a64 = Array1::<f64>::zeros(n);
    SeededNoise::new(7).fill(1, a64.view_mut());
    check(a64.as_slice().unwrap(), "f64");
    // Two steps are independent: correlation of step 0 and step 1 draws.
    let mut b32 = Array1::<f32>::zeros(n);
    SeededNoise::new(7).fill(1, b32.view_mut());
    let r = a32
        .iter()
        .zip(b32.iter())
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum::<f64>()
        / n as f64;
    assert!(r.abs() < 4.0 / (n as f64).sqrt(), "steps correlated: {r}");
}

#[test]
fn seeded_noise_is_layout_independent_and_reproducible() {
    let mut c = Array2::<f32>::zeros((300, 200));
    let mut f = Array2::<f32>::zeros((300, 200).f());
    SeededNoise::new(11).fill(5, c.view_mut());
    SeededNoise::new(11).fill(5, f.view_mut());
    assert_eq!(c, f);
    let mut g = Array2::<f32>::zeros((300, 200));
    SeededNoise::new(12).fill(5, g.view_mut());
    assert_ne!(c, g);
}

#[cfg(feature = "rayon")]
#[test]
fn parallel_noise_is_bit_identical_for_any_thread_count() {
    let fill = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut a = Array1::<f32>::zeros(3_000_017);
            SeededNoise::new(3).fill(9, a.view_mut());
            a
        })
    };
    let (one, two) = (fill(1), fill(2));
    assert!(
        one.iter()
            .zip(two.iter())
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );
}

#[cfg(feature = "rayon")]
#[test]
fn parallel_sampling_is_bit_identical_for_any_thread_count() {
    use diffusion_samplers::UniPc;
    use diffusion_samplers::prelude::*;
    use ndarray::{Array4, ArrayView4};
    let s = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
    let grid = s.grid(6, Spacing::KARRAS).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut model = FnDenoiser::new(Prediction::Epsilon, |x: ArrayView4<'_, f32>, l: &NoiseLevel| {
                Ok::<_, BoxError>(x.mapv(|v| v * l.sigma as f32))
            });
            let mut outs = Vec::new();
            for which in 0..3 {
                let mut x = Array4::<f32>::zeros((1, 4, 512, 512));
                SeededNoise::new(1).fill(0, x.view_mut());
                let mut noise = SeededNoise::new(2);
                let out = match which {
                    0 => Ddim::new()
                        .eta(1.0)
                        .clip_sample(None)
                        .sample(&mut model, x, &grid, &mut noise),
                    1 => DpmSolver::new()
                        .sde(true)
                        .sample(&mut model, x, &grid, &mut noise),
                    _ => UniPc::new().order(3).sample(&mut model, x, &grid, &mut noise),
                }
                .unwrap();
                outs.push(out);
            }
            outs
        })
    };
    let (one, two) = (run(1), run(2));
    for (a, b) in one.iter().zip(&two) {
        assert!(a.iter().zip(b.iter()).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}
