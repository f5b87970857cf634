//! `noise::TorchBrownianTree` against k-diffusion 0.1.1.post1's `BrownianTreeNoiseSampler` on
//! torchsde 0.2.6 (tests/fixtures/gen_torchsde.py): increments bit for bit, float32 and float64,
//! single seeds (one tree over the whole shape, as ComfyUI and k-diffusion's samplers use it) and
//! lists of seeds (one tree per batch element), for descending, repeated, reversed, sub-step and
//! out-of-range queries over Stable Diffusion's sigma range; normalised noise within one ulp of
//! the divisor (torch takes that square root from MKL, one ulp off on some CPUs).

mod common;

use common::{f64s, fixture, str_of};
use diffusion_samplers::noise::TorchBrownianTree;
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

fn checksum(bits: impl Iterator<Item = u64>) -> u64 {
    bits.enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_add(b.wrapping_mul(2 * i as u64 + 1))
    })
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Runs one case's queries in dtype `F`, returning (increment bits, increment, noise) per query.
fn run<F: diffusion_samplers::Float>(
    tree: &mut TorchBrownianTree,
    shape: &[usize],
    q: &Value,
    to_bits: fn(F) -> u64,
) -> (Vec<u64>, Vec<f64>, Vec<f64>) {
    let (a, b) = (q["sigma"].as_f64().unwrap(), q["sigma_next"].as_f64().unwrap());
    let mut w = ArrayD::<F>::zeros(IxDyn(shape));
    tree.increment(a, b, w.view_mut()).unwrap();
    let mut z = ArrayD::<F>::zeros(IxDyn(shape));
    tree.normalized(a, b, z.view_mut()).unwrap();
    (
        w.iter().map(|&v| to_bits(v)).collect(),
        w.iter().map(|v| v.as_f64()).collect(),
        z.iter().map(|v| v.as_f64()).collect(),
    )
}

#[test]
fn increments_match_torchsde_bit_for_bit() {
    let fx = fixture("torchsde_tree.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 110);
    let mut queries = 0;
    for case in cases {
        let seeds: Vec<u64> = case["seed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let shape = usizes(&case["shape"]);
        let dtype = str_of(case, "dtype");
        let per_tree: Vec<usize> = if case["batched"].as_bool().unwrap() {
            shape[1..].to_vec()
        } else {
            shape.clone()
        };
        let (smin, smax) = (
            case["sigma_min"].as_f64().unwrap(),
            case["sigma_max"].as_f64().unwrap(),
        );
        // A small cache for the repeated queries, so that evicted nodes are recomputed too.
        let nodes = if str_of(case, "queries_name") == "repeated" {
            8
        } else {
            96
        };
        let mut tree = TorchBrownianTree::new(&seeds, smin, smax, &per_tree)
            .unwrap()
            .with_cache_nodes(nodes);
        for (k, q) in case["queries"].as_array().unwrap().iter().enumerate() {
            let label = format!(
                "{dtype} seeds {seeds:?} {shape:?} {} query {k}",
                str_of(case, "queries_name")
            );
            let (bits, w, z) = if dtype == "f32" {
                run::<f32>(&mut tree, &shape, q, |v| u64::from(v.to_bits()))
            } else {
                run::<f64>(&mut tree, &shape, q, f64::to_bits)
            };
            let want: u64 = str_of(q, "w_checksum").parse().unwrap();
            if let Some(theirs) = q.get("w") {
                for (i, (a, b)) in w.iter().zip(f64s(theirs)).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits(),
                        "{label}: increment element {i}: {a:e} vs {b:e}"
                    );
                }
            }
            assert_eq!(checksum(bits.into_iter()), want, "{label}: increment checksum");
            // The normalised noise: the same increment over a divisor within one ulp of torch's
            // (then rounded once more: within 2.5 ulp of the value; a wrong time is far off).
            let ulp = if dtype == "f32" {
                f64::from(f32::EPSILON)
            } else {
                f64::EPSILON
            };
            let theirs = f64s(q.get("z").unwrap_or(&q["z_first"]));
            for (i, (a, b)) in z.iter().zip(&theirs).enumerate() {
                assert!(
                    (a - b).abs() <= 2.5 * ulp * b.abs(),
                    "{label}: noise element {i}: {a:e} vs {b:e}"
                );
            }
            queries += 1;
        }
    }
    assert_eq!(queries, 1892);
}

/// torchsde quantises times with Python's `round(t, 6)`; the crate's rounding agrees on 2000
/// values, exact decimal ties among them. (Through a tree: two times that round to the same value
/// give the same increments.)
#[test]
fn time_quantisation_is_pythons_round() {
    let fx = fixture("torchsde_tree.json");
    let mut tree = TorchBrownianTree::new(&[5], 0.0, 20.0, &[3]).unwrap();
    let mut a = ndarray::Array1::<f64>::zeros(3);
    let mut b = ndarray::Array1::<f64>::zeros(3);
    let mut checked = 0;
    for pair in fx["round6"].as_array().unwrap() {
        let (x, r) = (pair[0].as_f64().unwrap(), pair[1].as_f64().unwrap());
        if !(0.001..19.0).contains(&x) || r == x {
            continue;
        }
        tree.increment(0.0, x, a.view_mut()).unwrap();
        tree.increment(0.0, r, b.view_mut()).unwrap();
        assert_eq!(a, b, "round({x}, 6) = {r}");
        checked += 1;
    }
    assert!(checked > 500, "{checked}");
}
