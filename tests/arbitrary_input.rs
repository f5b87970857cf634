//! Arbitrary input at every public entry point: constructors, grids, samplers (with arbitrary
//! options, on arbitrary grids, with models that return garbage), guidance and editing
//! wrappers, the config reader and the presets. Nothing panics, and nothing returns `Ok`
//! holding a NaN or an infinity: bad input is a typed error.

use diffusion_samplers::config::DiffusersConfig;
use diffusion_samplers::edit::{self, DdimInversion, Inpaint};
use diffusion_samplers::forward::LossWeighting;
use diffusion_samplers::prelude::*;
use diffusion_samplers::{
    AncestralSplit, CfgPpUd10Ab, DpmAdaptive, DpmFast, DpmPp2mCfgPp, DpmPp2sAncestralCfgPp, DpmPpSde,
    EdmDeis, EdmIpndm, ErSde, ErSdeScaler, EulerCfgPp, Expecting, FittedMultistep, GradientEstimation,
    HeunPp2, NoiseLevel, ResMultistep, Restart, RestartInterval, SaSolver, Seeds2, Seeds3, SeedsSolver,
    SolverType, ThirdOrder, UniPcVariant,
};
use ndarray::{Array2, ArrayView2};
use proptest::prelude::*;
use rand::{SeedableRng, rngs::StdRng};
use serde_json::{Map, Value};

/// Any float, weighted towards the values that break code: specials, extremes, zero, the
/// ordinary range.
fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -2.0..2.0f64,
        2 => 0.0..1.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(1.0),
        1 => Just(f64::MAX),
        1 => Just(f64::MIN_POSITIVE),
        1 => Just(1e-320),
        1 => (-300.0..300.0f64).prop_map(|e| 10f64.powf(e)),
        1 => any::<f64>(),
    ]
}

/// Mostly a value from `typical`, sometimes [`wild`].
fn mostly(typical: std::ops::Range<f64>) -> impl Strategy<Value = f64> {
    prop_oneof![5 => typical, 1 => wild()]
}

/// A count, mostly small, sometimes zero or absurd.
fn count() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..40,
        1 => 40usize..1200,
        1 => Just(usize::MAX),
        1 => Just(usize::MAX - 332),
        1 => any::<usize>(),
    ]
}

fn spacing() -> impl Strategy<Value = Spacing> {
    prop_oneof![
        count().prop_map(|offset| Spacing::Leading { offset }),
        count().prop_map(|offset| Spacing::DpmLeading { offset }),
        Just(Spacing::Trailing),
        Just(Spacing::Linspace),
        Just(Spacing::LinspaceRounded),
        Just(Spacing::DpmLinspace),
        wild().prop_map(|rho| Spacing::Karras { rho }),
        Just(Spacing::KARRAS),
        Just(Spacing::Exponential),
        (wild(), wild()).prop_map(|(alpha, beta)| Spacing::Beta { alpha, beta }),
        Just(Spacing::BETA),
        count().prop_map(|original_steps| Spacing::Lcm { original_steps }),
    ]
}

/// Every way there is to make a schedule.
fn schedule() -> impl Strategy<Value = Option<NoiseSchedule>> {
    (
        0usize..9,
        count(),
        wild(),
        wild(),
        prop::collection::vec(wild(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(which, n, a, b, betas, zero)| {
            let n = if n > 3000 { n } else { n.min(1200) };
            let s = match which {
                0 => NoiseSchedule::linear(n, a, b),
                1 => NoiseSchedule::scaled_linear(n, a, b),
                2 => NoiseSchedule::sigmoid(n, a, b),
                3 => NoiseSchedule::cosine(n),
                4 => NoiseSchedule::laplace(n),
                5 => NoiseSchedule::exp(n),
                6 => NoiseSchedule::from_betas(&betas),
                7 => NoiseSchedule::from_alpha_bar_fn(n, a, move |t| (1.0 - t) * b),
                _ => NoiseSchedule::scaled_linear(1000, 0.00085, 0.012),
            }
            .ok()?;
            if zero {
                s.with_zero_terminal_snr().ok()
            } else {
                Some(s)
            }
        })
}

fn flow_shift() -> impl Strategy<Value = FlowShift> {
    prop_oneof![
        wild().prop_map(FlowShift::Static),
        wild().prop_map(|mu| FlowShift::Exponential { mu }),
        wild().prop_map(|mu| FlowShift::Linear { mu }),
    ]
}

/// Every way there is to make a grid (some give errors), weighted towards the valid ones.
fn grid() -> impl Strategy<Value = Result<Grid, Error>> {
    prop_oneof![3 => sane_grid(), 2 => wild_grid()]
}

/// Grids users build: a common schedule and spacing, 1–25 steps, sometimes the first timestep
/// as the final level, zero terminal SNR, flow or EDM.
fn sane_grid() -> impl Strategy<Value = Result<Grid, Error>> {
    (0usize..5, 1usize..25, 0usize..6, any::<bool>(), 0.5..6.0f64).prop_map(|(which, n, sp, first, shift)| {
        let sp = [
            Spacing::Leading { offset: 1 },
            Spacing::Trailing,
            Spacing::Linspace,
            Spacing::DpmLinspace,
            Spacing::KARRAS,
            Spacing::Exponential,
        ][sp];
        let sd = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012).unwrap();
        let g = match which {
            0 => sd.grid(n, sp),
            1 => sd.with_zero_terminal_snr().unwrap().grid(n, Spacing::Trailing),
            2 => FlowSchedule::new(1000)
                .unwrap()
                .with_shift(FlowShift::Static(shift))
                .unwrap()
                .grid(
                    n,
                    if sp == Spacing::Trailing {
                        Spacing::Linspace
                    } else {
                        sp
                    },
                ),
            3 => Grid::ve(&diffusion_samplers::karras_sigmas(n, 0.002, 80.0, 7.0).unwrap()),
            _ => NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap().grid(n, sp),
        }?;
        Ok(if first {
            g.with_final(FinalLevel::FirstTimestep)
        } else {
            g
        })
    })
}

/// Grids from arbitrary input (most are errors).
fn wild_grid() -> impl Strategy<Value = Result<Grid, Error>> {
    let levels = prop::collection::vec((wild(), wild(), wild()), 0..6);
    (
        0usize..6,
        schedule(),
        count(),
        spacing(),
        prop::collection::vec(wild(), 0..8),
        levels,
        (count(), flow_shift(), wild()),
        (any::<bool>(), count(), any::<bool>()),
    )
        .prop_map(
            |(which, sched, steps, sp, list, lv, (t, shift, term), (first, skip, round))| {
                let steps = steps.min(if steps > 100 { steps } else { 30 });
                let s = sched.unwrap_or_else(|| NoiseSchedule::linear(1000, 1e-4, 0.02).unwrap());
                let mut g = match which {
                    0 => s.grid(steps, sp),
                    1 => s.grid_from_timesteps(&list),
                    2 => s.grid_from_sigmas(&list),
                    3 => Grid::ve(&list),
                    4 => {
                        Grid::from_levels(lv.into_iter().map(|(t, a, s)| NoiseLevel::new(t, a, s)).collect())
                    }
                    _ => FlowSchedule::new(t.min(5000))
                        .and_then(|f| f.with_shift(shift))
                        .and_then(|f| {
                            if term.is_finite() {
                                f.with_shift_terminal(term)
                            } else {
                                Ok(f)
                            }
                        })
                        .and_then(|f| {
                            if list.is_empty() {
                                f.grid(steps, sp)
                            } else {
                                f.grid_from_sigmas(&list)
                            }
                        }),
                }?;
                if first {
                    g = g.with_final(FinalLevel::FirstTimestep);
                }
                if round {
                    g = g.round_timesteps();
                }
                if skip % 3 == 0 {
                    g = g.skip(skip % 5)?;
                }
                Ok(g)
            },
        )
}

/// A grid must satisfy its invariants.
fn check_grid(g: &Grid) -> Result<(), TestCaseError> {
    prop_assert!(g.steps() >= 1);
    prop_assert_eq!(g.levels().len(), g.steps() + 1);
    for l in g.levels() {
        prop_assert!(l.is_valid(), "{:?}", l);
    }
    let s = g.sigmas_ve();
    for (i, w) in s.windows(2).enumerate() {
        prop_assert!(w[1] < w[0] || (i + 2 == s.len() && w[1] == w[0]), "{:?}", s);
    }
    prop_assert!(g.initial_scale().is_finite() && g.initial_scale() > 0.0);
    Ok(())
}

fn sampler() -> impl Strategy<Value = AnySampler> {
    let clip = prop_oneof![3 => Just(None), 1 => mostly(0.5..3.0).prop_map(Some)];
    let thr = prop_oneof![
        3 => Just(None),
        1 => (mostly(0.5..1.0), mostly(1.0..3.0)).prop_map(|(ratio, max)| Some(Thresholding { ratio, max })),
    ];
    (
        0usize..39,
        (mostly(0.0..1.5), mostly(0.5..1.5)),
        (
            mostly(0.0..20.0),
            mostly(0.0..1.0),
            mostly(1.0..100.0),
            mostly(0.9..1.1),
        ),
        (clip, thr),
        prop_oneof![5 => 1usize..4, 1 => 0usize..6],
        (any::<bool>(), any::<bool>(), any::<bool>()),
        prop::collection::vec(0usize..8, 0..3),
    )
        .prop_map(
            |(which, (eta, s_noise), (sc, tmin, tmax, sn), (clip, thr), order, (b1, b2, b3), dis)| match which
            {
                0 => Ddpm::new()
                    .variance(if b1 {
                        DdpmVariance::FixedLarge
                    } else {
                        DdpmVariance::FixedSmall
                    })
                    .clip_sample(clip)
                    .thresholding(thr)
                    .into(),
                1 => Ddim::new()
                    .eta(eta)
                    .s_noise(s_noise)
                    .use_clipped_model_output(b1)
                    .clip_sample(clip)
                    .thresholding(thr)
                    .into(),
                2 => Euler::new()
                    .s_churn(sc)
                    .s_tmin(tmin)
                    .s_tmax(tmax)
                    .s_noise(sn)
                    .clip_sample(clip)
                    .into(),
                3 => EulerAncestral::new()
                    .eta(eta)
                    .s_noise(s_noise)
                    .thresholding(thr)
                    .into(),
                4 => Heun::new()
                    .s_churn(sc)
                    .s_tmin(tmin)
                    .s_tmax(tmax)
                    .s_noise(sn)
                    .clip_sample(clip)
                    .into(),
                5 => Dpm2::new()
                    .s_churn(sc)
                    .s_tmin(tmin)
                    .s_tmax(tmax)
                    .clip_sample(clip)
                    .into(),
                6 => Dpm2Ancestral::new()
                    .eta(eta)
                    .s_noise(s_noise)
                    .clip_sample(clip)
                    .into(),
                7 => DpmSolver::new()
                    .order(order)
                    .solver_type(if b1 {
                        SolverType::Heun
                    } else {
                        SolverType::Midpoint
                    })
                    .eta(eta)
                    .s_noise(s_noise)
                    .lower_order_final(b2)
                    .euler_at_final(b3)
                    .third_order(if b2 {
                        ThirdOrder::Corrected
                    } else {
                        ThirdOrder::Reference
                    })
                    .clip_sample(clip)
                    .thresholding(thr)
                    .into(),
                8 => DpmPp2sAncestral::new()
                    .eta(eta)
                    .s_noise(s_noise)
                    .clip_sample(clip)
                    .into(),
                9 => DpmSolverSinglestep::new()
                    .order(order)
                    .solver_type(if b1 {
                        SolverType::Heun
                    } else {
                        SolverType::Midpoint
                    })
                    .lower_order_final(b2)
                    .clip_sample(clip)
                    .thresholding(thr)
                    .into(),
                10 => UniPc::new()
                    .order(order)
                    .variant(if b1 { UniPcVariant::Bh1 } else { UniPcVariant::Bh2 })
                    .corrector(b2)
                    .disable_corrector(&dis)
                    .lower_order_final(b3)
                    .clip_sample(clip)
                    .thresholding(thr)
                    .into(),
                11 => Lms::new().order(order).clip_sample(clip).into(),
                12 => Deis::new()
                    .order(order)
                    .lower_order_final(b1)
                    .thresholding(thr)
                    .into(),
                13 => Pndm::new().skip_prk_steps(b1).into(),
                14 => Ipndm::new().order(order).into(),
                15 => Lcm::new()
                    .boundary_condition(if b1 { None } else { Some(eta) })
                    .clip_sample(clip)
                    .into(),
                // The ComfyUI / k-diffusion samplers.
                16 => EdmIpndm::new().order(order).variable_step(b1).into(),
                17 => EdmDeis::new()
                    .order(order)
                    .points(if b1 { 64 } else { order.saturating_sub(1) })
                    .into(),
                18 => GradientEstimation::new().gamma(sc / 5.0).cfg_pp(b2).into(),
                19 => HeunPp2::new()
                    .s_churn(sc)
                    .s_tmin(tmin)
                    .s_tmax(tmax)
                    .s_noise(sn)
                    .into(),
                20 => if b1 {
                    ResMultistep::ancestral()
                } else {
                    ResMultistep::new()
                }
                .eta(eta)
                .s_noise(s_noise)
                .cfg_pp(b2)
                .into(),
                21 => DpmPpSde::new().r(tmin).eta(eta).s_noise(s_noise).into(),
                22 => Seeds2::new()
                    .r(tmin)
                    .solver(if b1 { SeedsSolver::Phi2 } else { SeedsSolver::Phi1 })
                    .eta(eta)
                    .s_noise(s_noise)
                    .into(),
                23 => Seeds3::new()
                    .r1(tmin * 0.5)
                    .r2(tmin)
                    .eta(eta)
                    .s_noise(s_noise)
                    .into(),
                24 => ErSde::new()
                    .max_stage(order)
                    .scaler(match (b1, b2) {
                        (true, _) => ErSdeScaler::ReverseTime { eta },
                        (false, true) => ErSdeScaler::Ode,
                        _ => ErSdeScaler::ErSde,
                    })
                    .s_noise(s_noise)
                    .into(),
                25 => SaSolver::new()
                    .predictor_order(order)
                    .corrector_order(order + usize::from(b1))
                    .pece(b2)
                    .tau(eta)
                    .s_noise(s_noise)
                    .lower_order_final(b3)
                    .tau_timestep_range(tmin, sc)
                    .into(),
                26 => DpmFast::new().eta(eta).s_noise(s_noise).into(),
                27 => DpmAdaptive::new()
                    .order(order)
                    .rtol(tmin)
                    .atol((sn * 0.01).max(1e-3))
                    .h_init(tmin)
                    .eta(if b1 { eta } else { 0.0 })
                    .reverse(b2 && !b1)
                    .into(),
                30 => EulerCfgPp::new().eta(eta).s_noise(s_noise).into(),
                31 => DpmPp2sAncestralCfgPp::new().eta(eta).s_noise(s_noise).into(),
                32 => DpmPp2mCfgPp::new().into(),
                33 => CfgPpUd10Ab::new().into(),
                34 => Restart::new().s_noise(s_noise).into(),
                36 => FittedMultistep::new(vec![[eta, s_noise]; order + dis.len()]).into(),
                37 => Tcd::new().gamma(eta).clip_sample(clip).thresholding(thr).into(),
                38 => Lcm::new()
                    .boundary_condition(None)
                    .consistency_renoise(Some((tmin, sc, sn)))
                    .clip_sample(clip)
                    .into(),
                35 => Restart::new()
                    .s_noise(s_noise)
                    .intervals(vec![RestartInterval {
                        min_sigma: tmin,
                        steps: order + dis.len(),
                        times: dis.len(),
                        max_sigma: sc,
                    }])
                    .into(),
                28 => EulerAncestral::new()
                    .split(if b1 {
                        AncestralSplit::RectifiedFlow
                    } else {
                        AncestralSplit::SigmaSpace
                    })
                    .eta(eta)
                    .into(),
                _ => Dpm2Ancestral::new()
                    .split(if b1 {
                        AncestralSplit::RectifiedFlow
                    } else {
                        AncestralSplit::KDiffusion
                    })
                    .eta(eta)
                    .into(),
            },
        )
}

/// A model that behaves (the exact mixture denoiser) or misbehaves in one of many ways.
#[derive(Clone, Debug)]
enum Behaviour {
    Exact,
    Scaled(f64),
    Poison { call: usize, value: f64 },
    WrongShape,
    Fails { call: usize },
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        4 => Just(Behaviour::Exact),
        1 => wild().prop_map(Behaviour::Scaled),
        2 => (0usize..20, wild()).prop_map(|(call, value)| Behaviour::Poison { call, value }),
        1 => Just(Behaviour::WrongShape),
        1 => (0usize..20).prop_map(|call| Behaviour::Fails { call }),
    ]
}

fn gmm() -> GaussianMixture {
    GaussianMixture::new(
        vec![0.4, 0.6],
        vec![vec![-1.0, 0.5, 0.0], vec![1.0, -0.5, 0.3]],
        vec![vec![0.05, 0.1, 0.2], vec![0.1, 0.02, 0.3]],
    )
    .unwrap()
}

/// A model with `behaviour`, counting its calls.
fn model(behaviour: Behaviour, pred: Prediction, calls: &mut usize) -> impl Denoiser<f64, ndarray::Ix2> + '_ {
    let mut exact = gmm().with_prediction(pred);
    FnDenoiser::new(pred, move |x: ArrayView2<'_, f64>, l: &NoiseLevel| {
        let call = *calls;
        *calls += 1;
        let mut out = exact.denoise(x, l)?;
        match behaviour {
            Behaviour::Exact => {}
            Behaviour::Scaled(k) => out.mapv_inplace(|v| v * k),
            Behaviour::Poison { call: c, value } if c == call => out[[0, 0]] = value,
            Behaviour::Poison { .. } => {}
            Behaviour::WrongShape => return Ok(Array2::zeros((1, 1))),
            Behaviour::Fails { call: c } if c == call => return Err("the model failed".into()),
            Behaviour::Fails { .. } => {}
        }
        Ok::<_, BoxError>(out)
    })
}

fn prediction() -> impl Strategy<Value = Prediction> {
    prop_oneof![
        Just(Prediction::Epsilon),
        Just(Prediction::Sample),
        Just(Prediction::Velocity),
        Just(Prediction::Flow),
    ]
}

fn array(rows: usize) -> impl Strategy<Value = Array2<f64>> {
    prop::collection::vec(prop_oneof![8 => -3.0..3.0f64, 1 => wild()], rows * 3)
        .prop_map(move |v| Array2::from_shape_vec((rows, 3), v).unwrap())
}

fn finite(a: &Array2<f64>) -> bool {
    a.iter().all(|v| v.is_finite())
}

/// A JSON value of any type, often one a config key accepts.
fn json_value() -> impl Strategy<Value = Value> {
    let strings = prop::sample::select(vec![
        "linear",
        "scaled_linear",
        "squaredcos_cap_v2",
        "sigmoid",
        "epsilon",
        "v_prediction",
        "sample",
        "flow_prediction",
        "leading",
        "trailing",
        "linspace",
        "midpoint",
        "heun",
        "bh1",
        "bh2",
        "dpmsolver++",
        "sde-dpmsolver++",
        "dpmsolver",
        "fixed_small",
        "fixed_large",
        "learned_range",
        "zero",
        "sigma_min",
        "exponential",
        "discrete",
        "logrho",
        "deis",
        "",
        "???",
    ]);
    prop_oneof![
        wild().prop_map(Value::from),
        count().prop_map(|n| Value::from(n as u64)),
        (-5i64..5).prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        strings.prop_map(Value::from),
        Just(Value::Null),
        prop::collection::vec(wild(), 0..5).prop_map(Value::from),
        prop::collection::vec(0u64..30, 0..4).prop_map(Value::from),
    ]
}

const CLASSES: [&str; 18] = [
    "DDPMScheduler",
    "DDIMScheduler",
    "PNDMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "LCMScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "EDMEulerScheduler",
    "NotAScheduler",
];

const KEYS: [&str; 48] = [
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "steps_offset",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "variance_type",
    "clip_sample",
    "clip_sample_range",
    "timestep_spacing",
    "rescale_betas_zero_snr",
    "set_alpha_to_one",
    "skip_prk_steps",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "interpolation_type",
    "sigma_min",
    "sigma_max",
    "timestep_type",
    "final_sigmas_type",
    "solver_order",
    "solver_type",
    "lower_order_final",
    "use_flow_sigmas",
    "flow_shift",
    "use_dynamic_shifting",
    "time_shift_type",
    "algorithm_type",
    "euler_at_final",
    "use_lu_lambdas",
    "lambda_min_clipped",
    "predict_x0",
    "disable_corrector",
    "solver_p",
    "original_inference_steps",
    "timestep_scaling",
    "shift",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "shift_terminal",
    "invert_sigmas",
];

fn config() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![9 => prop::sample::select(CLASSES.to_vec()).prop_map(Value::from), 1 => json_value()],
        prop::collection::vec((prop::sample::select(KEYS.to_vec()), json_value()), 0..6),
    )
        .prop_map(|(class, kv)| {
            let mut m = Map::new();
            m.insert("_class_name".into(), class);
            for (k, v) in kv {
                m.insert(k.to_string(), v);
            }
            m
        })
}

/// Cases per property: 400 in the suite; set `ARBITRARY_CASES` for a deeper search.
/// A guided run with `rule` on a CFG++ sampler (which renoises with the branch a rule may
/// rewrite), a multistep one or an ancestral one.
fn guided_run<R: diffusion_samplers::guidance::GuidanceRule>(
    rule: R,
    sampler: usize,
    g: &Grid,
    x: Array2<f64>,
    pred: Prediction,
) -> Result<Array2<f64>, Error> {
    let cond = gmm().with_prediction(pred);
    let uncond = GaussianMixture::gaussian(vec![0.0, 0.0, 0.0], vec![1.0, 1.0, 1.0])
        .unwrap()
        .with_prediction(pred);
    let mut m = Guidance::with_rule(cond, uncond, rule);
    let mut noise = SeededNoise::new(0);
    match sampler {
        0 => DpmPp2mCfgPp::new().sample(&mut m, x, g, &mut noise),
        1 => EulerCfgPp::ancestral().sample(&mut m, x, g, &mut noise),
        _ => DpmSolver::new().sample(&mut m, x, g, &mut noise),
    }
}

fn cases() -> u32 {
    std::env::var("ARBITRARY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// Schedules from any input are well-formed, and their queries never panic.
    #[test]
    fn schedules_and_their_queries(s in schedule(), t in wild(), i in count(), sig in wild()) {
        let Some(s) = s else { return Ok(()) };
        prop_assert!(s.betas().iter().all(|b| b.is_finite() && *b > 0.0 && *b <= 1.0));
        let l = s.level(t);
        prop_assert!(t.is_nan() || (l.is_valid() && l.t >= 0.0 && l.t <= (s.len() - 1) as f64), "{:?}", l);
        if let Ok(l) = s.level_at(i) { prop_assert!(l.is_valid()); }
        if let Ok(v) = s.posterior_variance(i) { prop_assert!(v.is_finite()); }
        if let Ok((a, b)) = s.posterior_mean_coefs(i) { prop_assert!(a.is_finite() && b.is_finite()); }
        if let Ok(t) = s.sigma_to_t(sig) { prop_assert!(t.is_finite()); }
        if let Ok(l) = s.level_from_sigma_ve(sig) { prop_assert!(l.t.is_finite()); }
    }

    /// Sigma lists from any input are positive, finite and decreasing, or an error.
    #[test]
    fn sigma_lists(n in count(), lo in wild(), hi in wild(), rho in wild(), a in wild(), b in wild()) {
        let n = if n > 1000 { n } else { n.min(200) };
        for s in [
            diffusion_samplers::karras_sigmas(n, lo, hi, rho),
            diffusion_samplers::exponential_sigmas(n, lo, hi),
            diffusion_samplers::grid::beta_sigmas(n, lo, hi, a, b),
        ].into_iter().flatten() {
            prop_assert_eq!(s.len(), n);
            prop_assert!(s.iter().all(|v| v.is_finite() && *v > 0.0));
            prop_assert!(s.windows(2).all(|w| w[1] < w[0]));
        }
    }

    /// Grids from any input satisfy their invariants, and their queries never panic.
    #[test]
    fn grids(g in grid(), sig in wild(), t in wild(), scale in wild(), strength in wild()) {
        let Ok(g) = g else { return Ok(()) };
        check_grid(&g)?;
        if let Ok(l) = g.level_at_sigma_ve(sig) { prop_assert!(l.t.is_finite() && l.alpha.is_finite()); }
        if let Ok(l) = g.level_at_t(t) { prop_assert!(l.t.is_finite() || t.is_infinite()); }
        if let Ok(g2) = g.clone().with_initial_scale(scale) { check_grid(&g2)?; }
        if let Ok(tail) = edit::for_strength(&g, strength) { check_grid(&tail)?; }
        if let Ok(x) = g.initial_sample::<f32, _, _, _>((3, 2), &mut SeededNoise::new(1)) {
            prop_assert!(x.iter().all(|v| v.is_finite()));
        }
    }

    /// Every sampler, with any options, on any grid, with a model that may misbehave: no
    /// panic; `Ok` means a finite sample after exactly `model_calls` calls (where they are
    /// known in advance).
    #[test]
    fn samplers(s in sampler(), g in grid(), b in behaviour(), pred in prediction(), x in array(2), seed in any::<u64>()) {
        let Ok(g) = g else { return Ok(()) };
        let mut calls = 0;
        let r = {
            let mut m = model(b.clone(), pred, &mut calls);
            s.sample(&mut m, x.clone(), &g, &mut SeededNoise::new(seed))
        };
        if let Ok(out) = r {
            prop_assert!(finite(&out), "{}: {:?}", s.kind(), out);
            prop_assert!(finite(&x));
            // Adaptive samplers only estimate their calls.
            if let Some(n) = s.exact_model_calls(&g) {
                prop_assert_eq!(calls, n, "{}", s.kind());
            }
        } else if s.validate().is_ok() && finite(&x) && matches!(b, Behaviour::Exact) {
            // A valid sampler with a finite start and an exact model fails only where the
            // prediction type cannot give an estimate (or a bad level overflows).
            let e = r.unwrap_err();
            // DPM-Solver-fast / adaptive also refuse grids without two finite noisy levels.
            let grid_refused = matches!(s.kind(), "DpmFast" | "DpmAdaptive") && matches!(e, Error::InvalidParameter { name: "grid", .. })
                // A fitted solver's coefficients belong to a grid of their number of steps.
                || s.kind() == "FittedMultistep" && matches!(e, Error::InvalidParameter { name: "coefficients", .. });
            prop_assert!(grid_refused || matches!(e, Error::Undetermined { .. } | Error::NonFinite { .. } | Error::Model { .. }), "{}: {e}", s.kind());
        }
        // The step-by-step form, answering in place, agrees.
        if let Ok(mut run) = s.start(x.clone(), &g, pred, SeededNoise::new(seed)) {
            let mut exact = gmm().with_prediction(pred);
            let mut ok = true;
            while let Some((req, mut out)) = run.request_with_output() {
                match exact.denoise(req.x, &req.level) {
                    Ok(o) if o.shape() == out.shape() => out.assign(&o),
                    _ => { ok = false; break; }
                }
                if run.respond_in_place().is_err() { ok = false; break; }
            }
            if ok { prop_assert!(run.sample().iter().all(|v| v.is_finite())); }
        }
    }

    /// Guidance wrappers with any scale and rescale.
    #[test]
    fn guidance(scale in wild(), rescale in wild(), g in grid(), x in array(2), which in 0usize..3) {
        let Ok(g) = g else { return Ok(()) };
        let cond = gmm();
        let uncond = GaussianMixture::gaussian(vec![0.0, 0.0, 0.0], vec![1.0, 1.0, 1.0]).unwrap();
        let r = match which {
            0 => Ddim::new().sample(&mut Guidance::new(cond, uncond, scale).rescale(rescale), x, &g, &mut SeededNoise::new(0)),
            1 => {
                let mut one = FnDenoiser::new(Prediction::Epsilon, move |x: ArrayView2<'_, f64>, l: &NoiseLevel, b: Branch| {
                    match b { Branch::Conditional => cond.clone().denoise(x, l), Branch::Unconditional => uncond.clone().denoise(x, l) }
                });
                Ddim::new().sample(&mut SharedGuidance::new(&mut one, scale).rescale(rescale), x, &g, &mut SeededNoise::new(0))
            }
            _ => {
                let batched = FnDenoiser::new(Prediction::Epsilon, move |x: ArrayView2<'_, f64>, l: &NoiseLevel| cond.clone().denoise(x, l));
                DpmSolver::new().sample(&mut BatchedGuidance::new(batched, scale).rescale(rescale), x, &g, &mut SeededNoise::new(0))
            }
        };
        if let Ok(out) = r { prop_assert!(finite(&out)); }
    }

    /// Every guidance rule with any parameters, on any grid and input, through three samplers.
    #[test]
    fn guidance_rules(which in 0usize..16, a in wild(), b in wild(), k in count(), levels in 1usize..4, g in grid(), x in array(4), pred in prediction(), sampler in 0usize..3) {
        use diffusion_samplers::guidance::*;
        let Ok(g) = g else { return Ok(()) };
        let k = k % 64;
        let r = match which {
            0 => guided_run(Cfg::new(a).rescale(b).rescale_space(Space::Residual), sampler, &g, x, pred),
            1 => guided_run(Apg::new(a).eta(b).momentum(Some(b)).norm_threshold(k as f64), sampler, &g, x, pred),
            2 => guided_run(Apg::comfyui(a).eta(b).space(Space::Flow), sampler, &g, x, pred),
            3 => guided_run(ApgMix::new().scale(a).apg(Apg::new(b)).start_step(k), sampler, &g, x, pred),
            4 => guided_run(CfgZeroStar::new(a).zero_init_steps(k).with_rescale(b), sampler, &g, x, pred),
            5 => guided_run(CfgZeroStar::comfyui(a), sampler, &g, x, pred),
            6 => guided_run(Tangential::comfyui(a).with_rescale(b), sampler, &g, x, pred),
            7 => guided_run(MagnitudeAware::new(a).alpha(b), sampler, &g, x, pred),
            8 => guided_run(FreSca::new(a).scale_low(b).freq_cutoff(k), sampler, &g, x, pred),
            9 => guided_run(FrequencyDecoupled::new(vec![a; levels]).parallel_weights(vec![b; levels]), sampler, &g, x, pred),
            10 => guided_run(CfgNorm::new(Cfg::new(a)).strength(b), sampler, &g, x, pred),
            11 => guided_run(EpsScaling::new(Cfg::new(a)).factor(b), sampler, &g, x, pred),
            12 => guided_run(Mahiro::new(a), sampler, &g, x, pred),
            13 => match Interval::steps(Apg::new(a), b, k as f64 / 10.0) {
                Ok(rule) => guided_run(rule, sampler, &g, x, pred),
                Err(e) => Err(e),
            },
            14 => match Interval::sigmas(Cfg::new(a), b, k as f64) {
                Ok(rule) => guided_run(rule, sampler, &g, x, pred),
                Err(e) => Err(e),
            },
            _ => guided_run(Cfg::new(a).original_formulation(true).uncond_at_one(true), sampler, &g, x, pred),
        };
        if let Ok(out) = r { prop_assert!(finite(&out)); }
    }

    /// img2img, inpainting and inversion with any input.
    #[test]
    fn editing(s in sampler(), g in grid(), x0 in array(2), keep in array(2), strength in wild(), clip in prop::option::of(wild()), pred in prediction()) {
        let Ok(g) = g else { return Ok(()) };
        let mut m = gmm().with_prediction(pred);
        if let Ok(out) = edit::img2img(&s, &mut m, x0.view(), &g, strength, &mut SeededNoise::new(1)) {
            prop_assert!(finite(&out));
        }
        if let Ok(out) = edit::noise_to(x0.view(), keep.view(), &g.levels()[0]) {
            prop_assert!(finite(&out) || !finite(&x0) || !finite(&keep));
        }
        if let Ok(inpaint) = Inpaint::new(x0.view(), keep.view())
            && let Ok(out) = inpaint.sample(&s, &mut m, x0.clone(), &g, &mut SeededNoise::new(2))
        {
            prop_assert!(finite(&out));
        }
        if let Ok(z) = DdimInversion::new().clip_sample(clip).invert(&mut m, x0.clone(), &g) {
            prop_assert!(finite(&z));
        }
    }

    /// Any config object: reading never panics; whatever reads builds grids that satisfy their
    /// invariants and samplers that validate and sample (a model of the config's prediction
    /// type) to finite values or a typed error.
    #[test]
    fn configs(fields in config(), steps in count(), mu in wild(), seq in count()) {
        let Ok(cfg) = DiffusersConfig::from_fields(fields) else { return Ok(()) };
        let steps = steps.min(40);
        let _ = cfg.to_json();
        prop_assert!(DiffusersConfig::from_json(&cfg.to_json()).is_ok());
        if let Ok(mu) = cfg.mu_for_image_seq_len(seq) { prop_assert!(mu.is_finite()); }
        if let Ok(g) = cfg.grid_with_mu(steps, mu) { check_grid(&g)?; }
        let sampler: Expecting<AnySampler> = cfg.sampler().expect("a config that reads has a sampler");
        prop_assert!(sampler.validate().is_ok());
        let pred = cfg.prediction().expect("a config that reads has a prediction type");
        if let Ok((sampler, g)) = cfg.build(steps) {
            check_grid(&g)?;
            prop_assert!(cfg.initial_noise_scale(&g).is_finite());
            let mut calls = 0;
            let mut m = model(Behaviour::Exact, pred, &mut calls);
            if let Ok(x) = g.initial_sample::<f64, _, _, _>((2, 3), &mut SeededNoise::new(3))
                && let Ok(out) = sampler.sample(&mut m, x, &g, &mut SeededNoise::new(4))
            {
                prop_assert!(finite(&out));
            }
        }
    }

    /// Preset names of any spelling; presets build on any schedule.
    #[test]
    fn presets(name in "[a-zA-Z_+ 0-9]{0,24}", known in prop::sample::select(diffusion_samplers::PRESETS.to_vec()), suffix in prop::sample::select(vec!["", "_karras", "_exponential", " Karras", "_bogus"]), s in schedule(), steps in count()) {
        let _ = Preset::get(&name);
        let Some(s) = s else { return Ok(()) };
        if let Ok(p) = Preset::get(&format!("{known}{suffix}"))
            && let Ok((sampler, g)) = p.build(&s, steps.min(40))
        {
            check_grid(&g)?;
            prop_assert!(sampler.validate().is_ok());
        }
    }

    /// Flow schedules with any shift.
    #[test]
    fn flow_schedules(t in count(), shift in flow_shift(), term in wild(), steps in count(), sp in spacing(), base in count(), max in count(), b0 in wild(), b1 in wild()) {
        if let Ok(mu) = FlowSchedule::mu_for_seq_len(1024, base, max, b0, b1) { prop_assert!(mu.is_finite() || (base as f64 - max as f64).abs() < 1.0); }
        let Ok(f) = FlowSchedule::new(t.min(1 << 20)).and_then(|f| f.with_shift(shift)) else { return Ok(()) };
        let f = f.clone().with_shift_terminal(term).unwrap_or(f);
        if let Ok(g) = f.grid(steps.min(60), sp) {
            check_grid(&g)?;
            prop_assert_eq!(g.steps(), steps.min(60));
        }
    }

    /// The analytic mixture from any parameters, evaluated at any level.
    #[test]
    fn gaussian_mixtures(w in prop::collection::vec(wild(), 0..3), mu in wild(), v in wild(), x in array(1), abar in 0.0..=1.0f64, t in wild(), a in wild(), s in wild()) {
        let k = w.len();
        let Ok(g) = GaussianMixture::new(w, vec![vec![mu, 0.0, 1.0]; k], vec![vec![v, 0.5, 0.5]; k]) else { return Ok(()) };
        for pred in [Prediction::Epsilon, Prediction::Sample, Prediction::Velocity, Prediction::Flow] {
            let mut m = g.clone().with_prediction(pred);
            let l = NoiseLevel::from_alpha_bar(1.0, abar);
            if finite(&x) && abar > 1e-12 && abar < 1.0 && v > 1e-6 && v < 1e6 && mu.abs() < 1e6
                && let Ok(out) = m.denoise(x.view(), &l)
            {
                prop_assert!(finite(&out), "{:?} {:?}", l, out);
            }
            let _ = m.denoise(x.view(), &NoiseLevel::new(t, a, s));
        }
    }

    /// The forward process with any timesteps and arrays.
    #[test]
    fn forward_process(s in schedule(), x in array(3), e in array(3), ts in prop::collection::vec(count(), 0..4), gamma in wild(), pred in prediction(), seed in any::<u64>()) {
        let Some(s) = s else { return Ok(()) };
        let fp = ForwardProcess::new(s);
        let w = LossWeighting::MinSnr { gamma };
        if let Ok(a) = fp.add_noise(x.view(), e.view(), &ts) { prop_assert!(finite(&a) || !finite(&x) || !finite(&e)); }
        if let Ok((m, v)) = fp.posterior(x.view(), e.view(), &ts) {
            prop_assert!(v.iter().all(|v| v.is_finite()));
            prop_assert!(finite(&m) || !finite(&x) || !finite(&e));
        }
        let _ = fp.target(pred, x.view(), e.view(), &ts);
        let _ = fp.step(x.view(), &ts, &mut StdRng::seed_from_u64(seed));
        for &t in &ts {
            if let Ok(v) = fp.loss_weight(w, pred, t) { prop_assert!(v.is_finite() && v >= 0.0); }
        }
        if let Ok(ex) = fp.training_example(x.view(), pred, w, &mut StdRng::seed_from_u64(seed)) {
            prop_assert!(ex.weights.iter().all(|v| v.is_finite() && *v >= 0.0));
        }
    }

    /// torch's generator, torchsde's tree and the seed conventions with any input: errors, or
    /// finite noise of the right size.
    #[test]
    fn torch_noise_sources(seeds in prop::collection::vec(any::<u64>(), 0..3), lo in wild(), hi in wild(), dims in prop::collection::vec(0usize..4, 0..3), a in wild(), b in wild(), n in 0usize..40, low in any::<i64>(), high in any::<i64>(), index in prop::option::of(prop::collection::vec(0usize..70_000, 0..4))) {
        use diffusion_samplers::NoiseSource;
        use diffusion_samplers::noise::{TorchBrownianTree, TorchGenerator, comfyui_prepare_noise};
        let mut g = TorchGenerator::new(seeds.first().copied().unwrap_or(0));
        let mut ints = vec![0i64; n.min(4)];
        match g.randint(low, high, &mut ints) {
            Ok(()) => prop_assert!(ints.iter().all(|v| (low..high).contains(v))),
            Err(_) => prop_assert!(low >= high),
        }
        let mut z = ndarray::Array1::<f32>::zeros(n);
        g.fill(0, z.view_mut());
        prop_assert!(z.iter().all(|v| v.is_finite()));
        if let Ok(mut t) = TorchBrownianTree::new(&seeds, lo, hi, &dims) {
            prop_assert!(!seeds.is_empty() && lo.is_finite() && hi.is_finite());
            let mut out = ndarray::Array1::<f64>::zeros(n);
            match t.normalized(a, b, out.view_mut()) {
                Ok(()) => prop_assert!(out.iter().all(|v| v.is_finite()), "{:?}", out),
                Err(e) => prop_assert!(n != t.len() || !a.is_finite() || !b.is_finite() || a == b, "{}", e),
            }
            if t.increment(a, b, out.view_mut()).is_ok() {
                prop_assert!(out.iter().all(|v| v.is_finite()));
            }
            let from = NoiseLevel::new(0.0, 1.0, a.abs());
            let to = NoiseLevel::new(0.0, 1.0, b.abs());
            let mut out = ndarray::Array1::<f32>::zeros(t.len());
            t.fill_interval(0, &from, &to, out.view_mut());
            // Finite noise, or NaN that the sampler reports (times or range beyond f32).
            prop_assert!(out.iter().all(|v| v.is_finite()) || out.iter().all(|v| v.is_nan()));
        }
        let shape = (index.as_ref().map_or(2, |i| i.len()), 3);
        if let Ok(x) = comfyui_prepare_noise::<f32, _, _>(shape, seeds.first().copied().unwrap_or(1), index.as_deref()) {
            prop_assert!(x.iter().all(|v| v.is_finite()));
        }
    }

    /// Training densities, processes and batches with any parameters: typed errors, or finite
    /// draws inside the support, finite non-negative weights and finite batches for finite data.
    #[test]
    fn training_densities_and_batches(which in 0usize..10, a in wild(), b in wild(), c in wild(), d in wild(), n in 0usize..40, group in 0usize..4, groups in 0usize..4, x in array(3), e in array(3), pw in 0usize..7, pp in 0usize..6, pred in prediction(), seed in any::<u64>()) {
        use diffusion_samplers::forward::{Density, Draw, Process, Training};
        use diffusion_samplers::noise::TorchGenerator;
        let density = match which {
            0 => Density::Uniform,
            1 => Density::LogitNormal { mean: a, std: b },
            2 => Density::Mode { scale: a },
            3 => Density::CosMap,
            4 => Density::LogNormal { mean: a, std: b },
            5 => Density::LogLogistic { loc: a, scale: b, min: c, max: d },
            6 => Density::LogUniform { min: a, max: b },
            7 => Density::VDiffusion { sigma_data: a, min: c, max: d },
            8 => Density::CosineInterpolated { image_d: 64.0, noise_d_low: a.abs() * 64.0, noise_d_high: 64.0, sigma_data: b, min: c, max: d },
            _ => Density::SplitLogNormal { loc: a, scale_1: b, scale_2: c },
        };
        let draw = if groups == 0 && group == 0 { Draw::Independent } else { Draw::Stratified { group, groups } };
        let (lo, hi) = density.support();
        let drawn = [
            density.sample(n, draw, &mut StdRng::seed_from_u64(seed)),
            density.sample_torch(n, draw, &mut TorchGenerator::new(seed)),
        ];
        for v in drawn.into_iter().flatten() {
            prop_assert_eq!(v.len(), n);
            prop_assert!(v.iter().all(|&v| v.is_finite() && v >= lo && v <= hi), "{:?} {:?}", density, v);
            for &v in &v {
                let (p, f) = (density.pdf(v), density.cdf(v));
                prop_assert!(p >= 0.0 && (0.0..=1.0).contains(&f), "{:?} {} {} {}", density, v, p, f);
            }
        }
        let weighting = match pw {
            0 => LossWeighting::Uniform,
            1 => LossWeighting::MinSnr { gamma: a },
            2 => LossWeighting::SoftMinSnr { gamma: b },
            3 => LossWeighting::Snr,
            4 => LossWeighting::Edm { sigma_data: c },
            5 => LossWeighting::SigmaSqrt,
            _ => LossWeighting::Cosmap,
        };
        let process = match pp {
            0 => Process::Vp { beta_min: a, beta_max: b },
            1 => Process::VpCosine { s: c },
            2 => Process::Ve { sigma_min: c, sigma_max: d },
            3 => Process::Sigma,
            4 => Process::flow(),
            _ => match NoiseSchedule::linear(1000, 1e-4, 0.02) { Ok(s) => Process::Discrete(s), Err(_) => Process::Sigma },
        };
        let t = Training::new(process, pred).density(density).draw(draw).weighting(weighting);
        if let Ok(batch) = t.batch(x.view(), &mut StdRng::seed_from_u64(seed)) {
            prop_assert!(batch.weights.iter().all(|w| w.is_finite() && *w >= 0.0), "{:?}", batch.weights);
            prop_assert!(batch.levels.iter().all(|l| l.is_valid()), "{:?}", batch.levels);
            if finite(&x) {
                prop_assert!(finite(&batch.noisy), "{:?} {:?}", batch.levels, batch.noisy);
            }
        }
        let draws = [a, b, c];
        let _ = t.batch_with(x.view(), &draws, e.clone());
        let p = diffusion_samplers::precond::EdmPrecond::edm(d);
        if let Ok(batch) = p.training_batch(x.view(), &[a.abs(), b.abs(), c.abs()], e.clone(), weighting) {
            prop_assert!(batch.weights.iter().all(|w| w.is_finite() && *w >= 0.0), "{:?}", batch.weights);
            if finite(&x) && finite(&e) {
                prop_assert!(finite(&batch.target) && finite(&batch.noisy), "{:?}", batch);
            }
        }
    }

    /// Likelihood with any grid, data, options and misbehaving models: typed errors or finite
    /// figures.
    #[test]
    fn likelihood(g in grid(), b in behaviour(), pred in prediction(), x in array(2), rtol in wild(), smin in prop::option::of(wild()), smax in prop::option::of(wild()), probes in 0usize..3, deq in prop::option::of(0u32..300), ts in prop::option::of(prop::collection::vec(count(), 0..5)), which in 0usize..3, clip in any::<bool>()) {
        use diffusion_samplers::likelihood::{Decoder, OdeNll, Probe, ReverseVariance, Trace, Vlb};
        let Ok(g) = g else { return Ok(()) };
        let mut calls = 0;
        let mut m = model(b.clone(), pred, &mut calls);
        let mut o = OdeNll::new().tolerances(rtol.abs().max(1e-3), 1e-3).max_evaluations(60).trace(match which {
            0 => Trace::Exact,
            1 => Trace::Hutchinson { probe: Probe::Gaussian, probes },
            _ => Trace::default(),
        });
        if let Some(v) = smin { o = o.sigma_min(v); }
        if let Some(v) = smax { o = o.sigma_max(v); }
        if let Some(l) = deq { o = o.dequantize(l); }
        if let Ok(r) = o.bits_per_dim(&mut m, &g, x.view(), &mut SeededNoise::new(1)) {
            prop_assert!(r.bits_per_dim.iter().all(|v| v.is_finite()), "{:?}", r);
        }
        let schedule = NoiseSchedule::linear(50, 1e-4, 0.02).unwrap();
        let mut v = Vlb::new().clip(clip).variance(if which == 0 { ReverseVariance::FixedSmall } else { ReverseVariance::FixedLarge });
        if let Some(l) = deq { v = v.decoder(Decoder::Discretized { levels: l }); } else { v = v.decoder(Decoder::Gaussian); }
        if let Some(ts) = ts { v = v.timesteps(ts); }
        let mut calls = 0;
        let mut m = model(b, pred, &mut calls);
        if let Ok(r) = v.bits_per_dim(&mut m, &schedule, x.view(), &mut SeededNoise::new(2)) {
            prop_assert!(r.bits_per_dim.iter().all(|v| v.is_finite()), "{:?}", r);
        }
    }
}
