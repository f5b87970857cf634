//! The cost of each guidance rule per model call, against the memory floor of plain CFG.
//!
//!     cargo bench --bench guidance
//!
//! Per call: both branches are copied into the buffers a guided run hands out (what a model
//! writing its outputs does), then the rule combines them in place. `floor` is the same two
//! copies plus one fused `u + s (c - u)` pass — the least any rule can cost. The ratio of a rule
//! to `floor` is its overhead; the model call itself (not measured) is what guidance doubles.
//! Shapes: SD 1.5 latents (1 × 4 × 64 × 64) and SD3 / Flux-sized ones (1 × 16 × 128 × 128),
//! f32, an epsilon model at a mid-run level.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use diffusion_samplers::guidance::{
    Apg, ApgMix, Cfg, CfgNorm, CfgZeroStar, Context, EpsScaling, FreSca, FrequencyDecoupled, GuidanceRule,
    Interval, MagnitudeAware, Mahiro, Space, Tangential,
};
use diffusion_samplers::{Call, NoiseLevel, Prediction};
use ndarray::{Array4, Zip};

struct Inputs {
    x: Array4<f32>,
    c: Array4<f32>,
    u: Array4<f32>,
}

fn inputs(shape: (usize, usize, usize, usize)) -> Inputs {
    let f = |k: f32| {
        Array4::from_shape_fn(shape, |(b, ch, h, w)| {
            (k * (1 + b + 3 * ch) as f32 + 0.37 * h as f32 + 0.11 * (w * w) as f32).sin()
        })
    };
    Inputs {
        x: f(1.0),
        c: f(1.3),
        u: f(1.7),
    }
}

fn call(i: u64) -> Call {
    let steps = 30;
    let step = (i % steps as u64) as usize;
    let alpha_bar = 0.05 + 0.9 * step as f64 / steps as f64;
    Call::new(
        step,
        step,
        steps,
        NoiseLevel::from_alpha_bar(999.0 * (1.0 - alpha_bar), alpha_bar),
    )
}

fn time_rule<R: GuidanceRule>(rule: &mut R, inp: &Inputs, iters: u64) -> Duration {
    let (mut c, mut u) = (inp.c.clone(), inp.u.clone());
    let start = Instant::now();
    for i in 0..iters {
        c.assign(&inp.c);
        u.assign(&inp.u);
        let ctx = Context::new(inp.x.view(), call(i), Prediction::Epsilon);
        rule.combine(&ctx, c.view_mut(), Some(u.view_mut())).unwrap();
        black_box(&c);
    }
    start.elapsed()
}

fn time_floor(inp: &Inputs, iters: u64) -> Duration {
    let (mut c, mut u) = (inp.c.clone(), inp.u.clone());
    let s = 7.5f32;
    let start = Instant::now();
    for _ in 0..iters {
        c.assign(&inp.c);
        u.assign(&inp.u);
        Zip::from(&mut c).and(&u).for_each(|c, &u| *c = u + s * (*c - u));
        black_box(&c);
    }
    start.elapsed()
}

fn bench_rules(c: &mut Criterion) {
    for (label, shape) in [("1x4x64x64", (1, 4, 64, 64)), ("1x16x128x128", (1, 16, 128, 128))] {
        let inp = inputs(shape);
        let mut group = c.benchmark_group(format!("guidance/{label}_f32"));
        group.bench_function("floor", |b| b.iter_custom(|n| time_floor(&inp, n)));
        macro_rules! rule {
            ($name:expr, $rule:expr) => {{
                let mut rule = $rule;
                group.bench_function(BenchmarkId::new("rule", $name), |b| {
                    b.iter_custom(|n| time_rule(&mut rule, &inp, n))
                });
            }};
        }
        rule!("cfg", Cfg::new(7.5));
        rule!("cfg_rescale", Cfg::new(7.5).rescale(0.7));
        rule!(
            "comfyui_rescale_cfg",
            Cfg::new(7.5).rescale(0.7).rescale_space(Space::Residual)
        );
        rule!("apg", Apg::new(7.5).momentum(Some(-0.5)));
        rule!("apg_comfyui", Apg::comfyui(7.5).eta(0.0));
        rule!("apg_mix", ApgMix::new().start_step(0));
        rule!("cfg_zero_star", CfgZeroStar::new(7.5));
        rule!("tcfg", Tangential::comfyui(7.5));
        rule!("mambo_g", MagnitudeAware::new(7.5));
        rule!("fresca", FreSca::new(7.5));
        rule!("fdg", FrequencyDecoupled::new(vec![10.0, 5.0]));
        rule!("cfg_norm", CfgNorm::new(Cfg::new(7.5)));
        rule!("eps_scaling", EpsScaling::new(Cfg::new(7.5)).factor(1.005));
        rule!("mahiro", Mahiro::new(7.5));
        rule!("interval_apg", Interval::steps(Apg::new(7.5), 0.2, 0.8).unwrap());
        group.finish();
    }
}

criterion_group!(benches, bench_rules);
criterion_main!(benches);
