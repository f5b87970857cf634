//! Every hand-written backward pass of the example models (`examples/models`) against central
//! finite differences, in f64.
//!
//! For a layer `y = f(x; p)` and a fixed random `G`, the loss `L = sum(G * y)` has gradients
//! `dL/dx = backward(G)` and `dL/dp` accumulated in the parameters; each is compared entry by
//! entry with `(L(v + h) - L(v - h)) / 2h`, `h = 1e-5`. The central difference is exact to
//! `O(h^2)` (about 1e-10 here, relative), so a tolerance of 1e-6 relative to the gradient's
//! scale rejects any wrong term (a dropped factor, a transposed weight, an off-by-one window).

#[allow(dead_code, reason = "the examples' model code; each test uses part of it")]
#[path = "../examples/models/mod.rs"]
mod models;

use models::mlp::Mlp;
use models::nn::{
    Conv2d, GroupNorm, Linear, Module, Param, Silu, add_channel_bias, avg_pool2, avg_pool2_backward,
    channel_bias_grad, concat_channels, split_channels, upsample2, upsample2_backward, weighted_mse,
};
use models::unet::{ResBlock, UNet};
use ndarray::{Array, Array2, Array4, ArrayD, Dimension, IxDyn, ShapeBuilder};
use rand::{Rng, SeedableRng, rngs::StdRng};

const H: f64 = 1e-5;
const TOL: f64 = 1e-6;

fn rand_array<Sh: ShapeBuilder<Dim = D>, D: Dimension>(shape: Sh, rng: &mut StdRng) -> Array<f64, D> {
    Array::from_shape_fn(shape, |_| rng.random_range(-1.0..1.0))
}

fn sum_prod<D: Dimension>(a: &Array<f64, D>, b: &Array<f64, D>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compares `analytic` with central differences of `loss` over up to `max` entries of `v`.
fn check_entries(
    what: &str,
    v: &mut ArrayD<f64>,
    analytic: &ArrayD<f64>,
    max: usize,
    loss: &mut dyn FnMut(&ArrayD<f64>) -> f64,
) {
    let n = v.len();
    let scale = analytic.iter().fold(1e-3f64, |m, g| m.max(g.abs()));
    let stride = (n / max).max(1);
    let mut worst = 0.0f64;
    for i in (0..n).step_by(stride) {
        let orig = v.as_slice().expect("standard layout")[i];
        v.as_slice_mut().expect("standard layout")[i] = orig + H;
        let lp = loss(v);
        v.as_slice_mut().expect("standard layout")[i] = orig - H;
        let lm = loss(v);
        v.as_slice_mut().expect("standard layout")[i] = orig;
        let numeric = (lp - lm) / (2.0 * H);
        let a = analytic.as_slice().expect("standard layout")[i];
        let err = (numeric - a).abs() / scale;
        worst = worst.max(err);
        assert!(
            err < TOL,
            "{what}[{i}]: analytic {a}, numeric {numeric} (scale {scale})"
        );
    }
    assert!(worst.is_finite(), "{what}");
}

/// Checks the parameters of a module: `run` computes the loss from the module's current values
/// (forward only); `grads` must hold the analytic gradients already.
fn check_params<M: Module<f64>>(what: &str, m: &mut M, max: usize, run: &mut dyn FnMut(&mut M) -> f64) {
    let mut names = Vec::new();
    let mut grads = Vec::new();
    m.visit("", &mut |name, p: &mut Param<f64>| {
        names.push(name.to_string());
        grads.push(p.grad.clone());
    });
    for (k, (name, grad)) in names.iter().zip(&grads).enumerate() {
        let mut value = {
            let mut v = None;
            let mut i = 0;
            m.visit("", &mut |_, p| {
                if i == k {
                    v = Some(p.value.clone());
                }
                i += 1;
            });
            v.expect("parameter")
        };
        let mut loss = |val: &ArrayD<f64>| {
            let mut i = 0;
            m.visit("", &mut |_, p| {
                if i == k {
                    p.value.assign(val);
                }
                i += 1;
            });
            run(m)
        };
        check_entries(&format!("{what}.{name}"), &mut value, grad, max, &mut loss);
        let mut i = 0;
        m.visit("", &mut |_, p| {
            if i == k {
                p.value.assign(&value);
            }
            i += 1;
        });
    }
}

#[test]
fn linear() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut l = Linear::<f64>::new(5, 3, 1.0, &mut rng);
    l.b = Param::new(rand_array(IxDyn(&[3]), &mut rng));
    let x = rand_array((4, 5), &mut rng);
    let g = rand_array((4, 3), &mut rng);
    l.zero_grad();
    l.forward(x.view());
    let dx = l.backward(g.view());
    let mut xd = x.clone().into_dyn();
    let mut l2 = l.clone();
    check_entries("linear.x", &mut xd, &dx.into_dyn(), 100, &mut |v| {
        let v = v.view().into_dimensionality().unwrap();
        sum_prod(&l2.forward(v), &g)
    });
    check_params("linear", &mut l, 100, &mut |l| sum_prod(&l.forward(x.view()), &g));
}

#[test]
fn silu() {
    let mut rng = StdRng::seed_from_u64(2);
    let x = rand_array(IxDyn(&[3, 7]), &mut rng) * 4.0;
    let g = rand_array(IxDyn(&[3, 7]), &mut rng);
    let mut s = Silu::<f64>::new();
    s.forward(&x);
    let dx = s.backward(&g);
    let mut xd = x.clone();
    check_entries("silu.x", &mut xd, &dx, 100, &mut |v| {
        sum_prod(&Silu::new().forward(v), &g)
    });
}

#[test]
fn conv2d() {
    for (k, cin, cout, h, w) in [(3, 2, 3, 5, 6), (1, 3, 2, 4, 4), (3, 1, 4, 3, 3)] {
        let mut rng = StdRng::seed_from_u64(3 + k as u64);
        let mut c = Conv2d::<f64>::new(cin, cout, k, 1.0, &mut rng);
        c.b = Param::new(rand_array(IxDyn(&[cout]), &mut rng));
        let x = rand_array((2, cin, h, w), &mut rng);
        let g = rand_array((2, cout, h, w), &mut rng);
        c.zero_grad();
        c.forward(x.view());
        let dx = c.backward(g.view());
        let mut xd = x.clone().into_dyn();
        let mut c2 = c.clone();
        check_entries(&format!("conv{k}.x"), &mut xd, &dx.into_dyn(), 200, &mut |v| {
            sum_prod(&c2.forward(v.view().into_dimensionality().unwrap()), &g)
        });
        check_params(&format!("conv{k}"), &mut c, 200, &mut |c| {
            sum_prod(&c.forward(x.view()), &g)
        });
    }
}

#[test]
fn group_norm() {
    let mut rng = StdRng::seed_from_u64(4);
    let mut n = GroupNorm::<f64>::new(2, 4);
    n.gamma = Param::new(rand_array(IxDyn(&[4]), &mut rng) + 1.0);
    n.beta = Param::new(rand_array(IxDyn(&[4]), &mut rng));
    let x = rand_array((3, 4, 3, 2), &mut rng) * 2.0 + 0.5;
    let g = rand_array((3, 4, 3, 2), &mut rng);
    n.zero_grad();
    n.forward(x.view());
    let dx = n.backward(g.view());
    let mut xd = x.clone().into_dyn();
    let mut n2 = n.clone();
    check_entries("groupnorm.x", &mut xd, &dx.into_dyn(), 200, &mut |v| {
        sum_prod(&n2.forward(v.view().into_dimensionality().unwrap()), &g)
    });
    check_params("groupnorm", &mut n, 100, &mut |n| {
        sum_prod(&n.forward(x.view()), &g)
    });
}

#[test]
fn pooling_upsampling_concat_and_channel_bias() {
    let mut rng = StdRng::seed_from_u64(5);
    let x = rand_array((2, 3, 4, 6), &mut rng);
    // avg_pool2
    let g = rand_array((2, 3, 2, 3), &mut rng);
    let dx = avg_pool2_backward(g.view());
    check_entries(
        "avg_pool2.x",
        &mut x.clone().into_dyn(),
        &dx.into_dyn(),
        200,
        &mut |v| sum_prod(&avg_pool2(v.view().into_dimensionality().unwrap()), &g),
    );
    // upsample2
    let g = rand_array((2, 3, 8, 12), &mut rng);
    let dx = upsample2_backward(g.view());
    check_entries(
        "upsample2.x",
        &mut x.clone().into_dyn(),
        &dx.into_dyn(),
        200,
        &mut |v| sum_prod(&upsample2(v.view().into_dimensionality().unwrap()), &g),
    );
    // concat / split
    let b = rand_array((2, 2, 4, 6), &mut rng);
    let g = rand_array((2, 5, 4, 6), &mut rng);
    let (ga, gb) = split_channels(g.view(), 3);
    check_entries(
        "concat.a",
        &mut x.clone().into_dyn(),
        &ga.into_dyn(),
        200,
        &mut |v| {
            sum_prod(
                &concat_channels(v.view().into_dimensionality().unwrap(), b.view()),
                &g,
            )
        },
    );
    check_entries(
        "concat.b",
        &mut b.clone().into_dyn(),
        &gb.into_dyn(),
        200,
        &mut |v| {
            sum_prod(
                &concat_channels(x.view(), v.view().into_dimensionality().unwrap()),
                &g,
            )
        },
    );
    // channel bias
    let e = rand_array((2, 3), &mut rng);
    let g = rand_array((2, 3, 4, 6), &mut rng);
    let de = channel_bias_grad(g.view());
    check_entries(
        "channel_bias.e",
        &mut e.into_dyn(),
        &de.into_dyn(),
        100,
        &mut |v| {
            let mut y = x.clone();
            add_channel_bias(&mut y, v.view().into_dimensionality().unwrap());
            sum_prod(&y, &g)
        },
    );
}

#[test]
fn weighted_mse_gradient() {
    let mut rng = StdRng::seed_from_u64(6);
    let p = rand_array((4, 3), &mut rng);
    let t = rand_array((4, 3), &mut rng);
    let w = [0.5, 1.0, 2.0, 0.1];
    let (_, g) = weighted_mse(&p, &t, &w);
    check_entries("mse.pred", &mut p.into_dyn(), &g.into_dyn(), 100, &mut |v| {
        let v: Array2<f64> = v.clone().into_dimensionality().unwrap();
        weighted_mse(&v, &t, &w).0
    });
}

#[test]
fn mlp_parameters() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut m = Mlp::<f64>::new(diffusion_samplers::Prediction::Velocity, 8, 3, &mut rng);
    let x = rand_array((5, 2), &mut rng);
    let t: Vec<f64> = (0..5).map(|_| rng.random_range(0.0..999.0)).collect();
    let g = rand_array((5, 2), &mut rng);
    m.zero_grad();
    m.forward(x.view(), &t);
    m.backward(g.view());
    check_params("mlp", &mut m, 60, &mut |m| sum_prod(&m.forward(x.view(), &t), &g));
}

#[test]
fn resblock() {
    let mut rng = StdRng::seed_from_u64(8);
    for (cin, cout) in [(4, 4), (4, 8)] {
        let mut b = ResBlock::<f64>::new(cin, cout, 6, &mut rng);
        // Non-trivial affine parameters everywhere.
        b.visit("", &mut |_, p| {
            let r: Array<f64, _> = p.value.mapv(|v| v + 0.3);
            p.value = r;
        });
        let x = rand_array((2, cin, 4, 4), &mut rng);
        let e = rand_array((2, 6), &mut rng);
        let g = rand_array((2, cout, 4, 4), &mut rng);
        b.zero_grad();
        b.forward(x.view(), e.view());
        let (dx, de) = b.backward(g.view());
        let mut b2 = b.clone();
        check_entries(
            "resblock.x",
            &mut x.clone().into_dyn(),
            &dx.into_dyn(),
            100,
            &mut |v| sum_prod(&b2.forward(v.view().into_dimensionality().unwrap(), e.view()), &g),
        );
        let mut b3 = b.clone();
        check_entries(
            "resblock.emb",
            &mut e.clone().into_dyn(),
            &de.into_dyn(),
            100,
            &mut |v| sum_prod(&b3.forward(x.view(), v.view().into_dimensionality().unwrap()), &g),
        );
        check_params("resblock", &mut b, 40, &mut |b| {
            sum_prod(&b.forward(x.view(), e.view()), &g)
        });
    }
}

#[test]
fn unet_parameters() {
    let mut rng = StdRng::seed_from_u64(9);
    let mut u = UNet::<f64>::new(diffusion_samplers::Prediction::Velocity, 4, &mut rng);
    let x = rand_array((2, 1, 8, 8), &mut rng);
    let t = [100.0, 700.0];
    let g: Array4<f64> = rand_array((2, 1, 8, 8), &mut rng);
    u.zero_grad();
    u.forward(x.view(), &t);
    u.backward(g.view());
    check_params("unet", &mut u, 12, &mut |u| {
        sum_prod(&u.forward(x.view(), &t), &g)
    });
}

#[test]
fn data_parallel_step_equals_the_sequential_step() {
    use diffusion_samplers::{ForwardProcess, LossWeighting, NoiseSchedule};
    use models::nn::Adam;
    use models::unet::{train_step, train_step_parallel};
    let fp = ForwardProcess::new(NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap());
    let mut rng = StdRng::seed_from_u64(10);
    let x0: Array4<f64> = rand_array((5, 1, 8, 8), &mut rng);
    let base = UNet::<f64>::new(diffusion_samplers::Prediction::Velocity, 4, &mut rng);
    let (mut a, mut b) = (base.clone(), base.clone());
    let (mut oa, mut ob) = (Adam::new(1e-3), Adam::new(1e-3));
    let la = train_step(
        &mut a,
        &mut oa,
        &fp,
        x0.view(),
        LossWeighting::min_snr(),
        &mut StdRng::seed_from_u64(3),
    );
    let mut replicas = vec![base.clone(); 2];
    let lb = train_step_parallel(
        &mut b,
        &mut replicas,
        &mut ob,
        &fp,
        x0.view(),
        LossWeighting::min_snr(),
        &mut StdRng::seed_from_u64(3),
    );
    assert!((la - lb).abs() < 1e-12 * la.abs().max(1.0), "loss {la} vs {lb}");
    let (pa, pb) = (models::nn::flat_params(&mut a), models::nn::flat_params(&mut b));
    let d = (&pa - &pb).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(d < 1e-12, "parameters differ by {d}");
    assert!(
        (&pa - &models::nn::flat_params(&mut base.clone()))
            .iter()
            .any(|v| v.abs() > 1e-6)
    );
}

#[test]
fn unet_weights_round_trip_through_safetensors() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut a = UNet::<f32>::new(diffusion_samplers::Prediction::Epsilon, 4, &mut rng);
    let mut b = UNet::<f32>::new(diffusion_samplers::Prediction::Epsilon, 4, &mut rng);
    let dir = std::env::temp_dir().join(format!("ds-unet-{}", std::process::id()));
    let path = dir.join("w.safetensors");
    a.save(&path).unwrap();
    assert_ne!(models::nn::flat_params(&mut a), models::nn::flat_params(&mut b));
    b.load(&path).unwrap();
    assert_eq!(models::nn::flat_params(&mut a), models::nn::flat_params(&mut b));
    // A different architecture is an error naming the tensor, not a panic.
    let mut c = UNet::<f32>::new(diffusion_samplers::Prediction::Epsilon, 8, &mut rng);
    let err = c.load(&path).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}
