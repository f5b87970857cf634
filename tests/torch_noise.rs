//! `noise::TorchGenerator` against torch 2.15 CPU (tests/fixtures/gen_torch_noise.py): bit for
//! bit in both dtypes, on both of torch's paths (scalar below 16 elements, blocks of 16 above),
//! across consecutive calls and dtypes, and for both float32 kernels (CPU capability AVX2 /
//! AVX512 and DEFAULT) over whole latent-sized arrays.

mod common;

use common::{f64s, fixture, str_of};
use diffusion_samplers::NoiseSource;
use diffusion_samplers::noise::{TorchCpuKernel, TorchGenerator};
use ndarray::{Array2, ArrayD, IxDyn, ShapeBuilder};
use serde_json::Value;

fn seed(case: &Value) -> u64 {
    case["seed"].as_u64().unwrap()
}

/// Exact equality of the bit patterns, as f64 (f32 values widen exactly).
fn check(label: &str, ours: &[f64], theirs: &[f64]) {
    assert_eq!(ours.len(), theirs.len(), "{label}");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{label}: element {i}: {a:e} vs torch {b:e}"
        );
    }
}

fn draw(g: &mut TorchGenerator, op: &str, dtype: &str, n: usize) -> Vec<f64> {
    match (op, dtype) {
        ("randn", "f64") => {
            let mut v = vec![0.0f64; n];
            g.randn_f64(&mut v);
            v
        }
        ("randn", _) => {
            let mut v = vec![0.0f32; n];
            g.randn_f32(&mut v);
            v.into_iter().map(f64::from).collect()
        }
        (_, "f64") => {
            let mut v = vec![0.0f64; n];
            g.rand_f64(&mut v);
            v
        }
        _ => {
            let mut v = vec![0.0f32; n];
            g.rand_f32(&mut v);
            v.into_iter().map(f64::from).collect()
        }
    }
}

#[test]
fn randn_matches_torch() {
    let fx = fixture("torch_noise.json");
    let mut checked = 0;
    for case in fx["randn"].as_array().unwrap() {
        let (dtype, n) = (str_of(case, "dtype"), case["n"].as_u64().unwrap() as usize);
        let mut g = TorchGenerator::new(seed(case));
        let label = format!("seed {} {dtype} n {n}", seed(case));
        check(&label, &draw(&mut g, "randn", dtype, n), &f64s(&case["values"]));
        checked += 1;
    }
    assert_eq!(checked, 70);
}

#[test]
fn consecutive_draws_continue_the_stream() {
    let fx = fixture("torch_noise.json");
    let streams = fx["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 20);
    for case in streams {
        let mut g = TorchGenerator::new(seed(case));
        for (k, d) in case["draws"].as_array().unwrap().iter().enumerate() {
            let n = d["n"].as_u64().unwrap() as usize;
            if str_of(d, "op") == "randint" {
                let (low, high) = (d["low"].as_i64().unwrap(), d["high"].as_i64().unwrap());
                let mut ours = vec![0i64; n];
                g.randint(low, high, &mut ours).unwrap();
                let theirs: Vec<i64> = d["ints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().parse().unwrap())
                    .collect();
                assert_eq!(
                    ours,
                    theirs,
                    "seed {} draw {k}: randint({low}, {high})",
                    seed(case)
                );
                continue;
            }
            let (op, dtype) = (str_of(d, "op"), str_of(d, "dtype"));
            let label = format!("seed {} draw {k}: {op} {dtype} {n}", seed(case));
            check(&label, &draw(&mut g, op, dtype, n), &f64s(&d["values"]));
        }
    }
}

/// The fixture's checksum: the bit patterns `b_i` summed as `b_i (2 i + 1)` mod 2^64.
fn checksum(bits: impl Iterator<Item = u64>) -> u64 {
    bits.enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_add(b.wrapping_mul(2 * i as u64 + 1))
    })
}

/// Latent-sized draws through the `NoiseSource` interface, whole arrays bit for bit, for each
/// CPU capability torch was run with: float64 is the same on all, float32 takes the AVX2 kernel
/// on AVX2 and AVX512 and the scalar one on DEFAULT.
#[test]
fn latent_sized_fills_match_torch_on_every_cpu_capability() {
    let fx = fixture("torch_noise.json");
    let mut seen = Vec::new();
    for run in fx["large"].as_array().unwrap() {
        let capability = str_of(run, "capability");
        let kernel = match capability {
            "DEFAULT" => TorchCpuKernel::Scalar,
            "AVX2" | "AVX512" => TorchCpuKernel::Avx2,
            other => panic!("unexpected capability {other}"),
        };
        seen.push(capability.to_string());
        for case in run["cases"].as_array().unwrap() {
            let dtype = str_of(case, "dtype");
            let mut g = TorchGenerator::new(seed(case)).with_kernel(kernel);
            for (k, d) in case["draws"].as_array().unwrap().iter().enumerate() {
                let shape: Vec<usize> = d["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                let (bits, first): (Vec<u64>, Vec<f64>) = if dtype == "f64" {
                    let mut x = ArrayD::<f64>::zeros(IxDyn(&shape));
                    g.fill(k, x.view_mut());
                    (
                        x.iter().map(|v| v.to_bits()).collect(),
                        x.iter().take(8).copied().collect(),
                    )
                } else {
                    let mut x = ArrayD::<f32>::zeros(IxDyn(&shape));
                    g.fill(k, x.view_mut());
                    (
                        x.iter().map(|v| u64::from(v.to_bits())).collect(),
                        x.iter().take(8).map(|&v| f64::from(v)).collect(),
                    )
                };
                let label = format!("{capability} seed {} {dtype} draw {k} {shape:?}", seed(case));
                check(&label, &first, &f64s(&d["first"]));
                let want: u64 = str_of(d, "checksum").parse().unwrap();
                assert_eq!(checksum(bits.into_iter()), want, "{label}: checksum");
            }
        }
    }
    seen.sort();
    assert_eq!(seen, ["AVX2", "AVX512", "DEFAULT"]);
}

/// Logical order whatever the layout: a Fortran-order array gets the values of a C-order one.
#[test]
fn fills_follow_logical_order() {
    for n in [4, 8] {
        let mut c = Array2::<f32>::zeros((4, n));
        let mut f = Array2::<f32>::zeros((4, n).f());
        TorchGenerator::new(7).fill(0, c.view_mut());
        TorchGenerator::new(7).fill(0, f.view_mut());
        assert_eq!(c, f);
    }
}

/// From the seed alone: `torch.manual_seed(seed)`, the starting noise and every step's
/// `torch.randn_like` from the same generator (k-diffusion's default noise sampler), against
/// k-diffusion 0.1.1.post1's ancestral samplers in float64 on a Karras grid
/// (tests/fixtures/gen_seeded_runs.py): one generator passed to `initial_sample` and `sample`
/// reproduces the runs to 1e-12 (float64 noise is bit for bit; the rest is the samplers' own
/// agreement), where a single shifted draw changes the result by O(1).
#[test]
fn k_diffusion_ancestral_runs_from_a_seed_alone() {
    use diffusion_samplers::prelude::*;
    use diffusion_samplers::{AnySampler, Dpm2Ancestral, DpmPp2sAncestral};
    let fx = fixture("seeded_runs.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let sigmas = f64s(&case["sigmas"]);
        let grid = Grid::ve(&sigmas[..sigmas.len() - 1]).unwrap();
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let sampler: AnySampler = match str_of(case, "fn") {
            "sample_euler_ancestral" => EulerAncestral::new().into(),
            "sample_dpm_2_ancestral" => Dpm2Ancestral::new().into(),
            _ => DpmPp2sAncestral::new().into(),
        };
        let mut g = TorchGenerator::new(seed(case));
        let x: Array2<f64> = grid.initial_sample((shape[0], shape[1]), &mut g).unwrap();
        let mut model = common::gmm(&fx["meta"]);
        let out = sampler.sample(&mut model, x, &grid, &mut g).unwrap();
        let theirs = f64s(&case["out"]);
        let worst = out
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-12,
            "{} seed {} {shape:?}: differs by {worst:e}",
            str_of(case, "fn"),
            seed(case)
        );
    }
}

/// `CudaPhilox` (AUTOMATIC1111's imitation of torch's CUDA `randn`) against
/// stable-diffusion.cpp's C++ port of the same imitation, compiled and run by
/// tests/fixtures/gen_philox.py: three consecutive draws per seed, within 1e-6 (the C++ port
/// rounds the Philox words to float32 before the Box–Muller step; a wrong counter, key half or
/// element index is O(1) off).
#[test]
fn cuda_philox_matches_stable_diffusion_cpp() {
    use diffusion_samplers::noise::CudaPhilox;
    let fx = fixture("philox.json");
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let seed: u64 = str_of(case, "seed").parse().unwrap();
        let mut g = CudaPhilox::new(seed);
        for (k, d) in case["draws"].as_array().unwrap().iter().enumerate() {
            let theirs = f64s(d);
            let mut ours = vec![0.0f32; theirs.len()];
            g.randn_f32(&mut ours);
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-6,
                    "seed {seed} draw {k} element {i}: {a} vs {b}"
                );
            }
            checked += 1;
        }
        assert_eq!(g.offset(), 3);
    }
    assert_eq!(checked, 12);
}
