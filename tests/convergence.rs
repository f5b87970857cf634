//! Convergence orders measured on the exact probability-flow ODE of a Gaussian.
//!
//! Data x0 ~ N(mu, diag(v)) in 4 dimensions (variances 0.01 .. 4), the exact denoiser, the
//! Karras grid of EDM (sigma 80 -> 0.002, rho = 7) in variance-exploding form. Every sampler
//! runs n = 40, 80, 160, 320 steps and ends at the grid's last nonzero level sigma_min = 0.002,
//! where the exact ODE solution is known in closed form; the final jump to sigma = 0 is left
//! out because it is one fixed first-order step whose error does not shrink with n (it would
//! floor every method's error). The order is the least-squares slope of ln(error) against
//! ln(n); `cargo test --test convergence -- --nocapture` prints the table.

use diffusion_samplers::prelude::*;
use diffusion_samplers::{
    Deis, Dpm2, DpmPp2sAncestral, DpmSolverSinglestep, Heun, Ipndm, Lms, Pndm, SolverType, ThirdOrder, UniPc,
    UniPcVariant, karras_sigmas,
};
use ndarray::{Array2, array};
use rand::{SeedableRng, rngs::StdRng};

const NS: [usize; 4] = [40, 80, 160, 320];

fn gaussian() -> GaussianMixture {
    GaussianMixture::gaussian(vec![0.3, -0.5, 1.0, 0.0], vec![0.25, 1.0, 0.01, 4.0])
        .unwrap()
        .with_prediction(Prediction::Sample)
}

/// VE grid through n + 1 Karras sigmas, the last (0.002) as the final level.
fn grid(n: usize) -> Grid {
    let s = karras_sigmas(n + 1, 0.002, 80.0, 7.0).unwrap();
    Grid::from_levels(s.iter().map(|&s| NoiseLevel::new(s, 1.0, s)).collect()).unwrap()
}

fn error<S: Sampler>(sampler: &S, n: usize) -> f64 {
    let g = grid(n);
    let mut model = gaussian();
    let z: Array2<f64> = standard_normal((8, 4), &mut StdRng::seed_from_u64(5));
    let x = z * 80.0;
    let first = g.levels()[0];
    let last = g.levels()[n];
    let exact = model.ode_solution(x.view(), &first, &last).unwrap();
    let out = sampler
        .sample(&mut model, x, &g, &mut StdRng::seed_from_u64(0))
        .unwrap();
    (&out - &exact).iter().fold(0.0f64, |m, v| m.max(v.abs()))
}

/// Least-squares slope of ln(error) against ln(n), negated.
fn order<S: Sampler>(name: &str, sampler: &S) -> f64 {
    let errs: Vec<f64> = NS.iter().map(|&n| error(sampler, n)).collect();
    let xs: Vec<f64> = NS.iter().map(|&n| (n as f64).ln()).collect();
    let ys: Vec<f64> = errs.iter().map(|e| e.ln()).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / 4.0, ys.iter().sum::<f64>() / 4.0);
    let slope = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
        / xs.iter().map(|x| (x - mx) * (x - mx)).sum::<f64>();
    println!(
        "{name:34} errors {:.2e} {:.2e} {:.2e} {:.2e}   order {:.2}",
        errs[0], errs[1], errs[2], errs[3], -slope
    );
    -slope
}

fn within(o: f64, target: f64, tol: f64, name: &str) {
    assert!(
        (o - target).abs() <= tol,
        "{name}: measured order {o:.3}, expected {target} +- {tol}"
    );
}

#[test]
fn first_order_methods() {
    within(order("Euler", &Euler::new()), 1.0, 0.1, "Euler");
    within(
        order("DDIM (eta = 0)", &Ddim::new().clip_sample(None)),
        1.0,
        0.1,
        "DDIM",
    );
    within(
        order("DPM-Solver++ 1", &DpmSolver::new().order(1)),
        1.0,
        0.1,
        "DPM++ 1",
    );
    within(
        order(
            "UniPC-1 without corrector",
            &UniPc::new().order(1).corrector(false),
        ),
        1.0,
        0.1,
        "UniP-1",
    );
}

#[test]
fn second_order_methods() {
    within(order("Heun", &Heun::new()), 2.0, 0.15, "Heun");
    within(order("DPM-2", &Dpm2::new()), 2.0, 0.15, "DPM-2");
    within(order("DPM-Solver++ 2M", &DpmSolver::new()), 2.0, 0.15, "DPM++ 2M");
    within(
        order(
            "DPM-Solver++ 2M heun",
            &DpmSolver::new().solver_type(SolverType::Heun),
        ),
        2.0,
        0.15,
        "2M heun",
    );
    within(
        order("DPM-Solver++ 2S (eta = 0)", &DpmPp2sAncestral::new().eta(0.0)),
        2.0,
        0.15,
        "2S",
    );
    within(
        order("DPM-Solver++ 2 singlestep", &DpmSolverSinglestep::new()),
        2.0,
        0.15,
        "singlestep 2",
    );
    within(order("DEIS-2", &Deis::new()), 2.0, 0.15, "DEIS-2");
    within(order("LMS-2", &Lms::new().order(2)), 2.0, 0.15, "LMS-2");
    within(
        order("UniPC-1 (with corrector: 2)", &UniPc::new().order(1)),
        2.0,
        0.15,
        "UniPC-1",
    );
}

#[test]
fn higher_order_methods() {
    // The reference 3M update (diffusers, k-diffusion) halves the second difference: it is a
    // second-order method (see ThirdOrder); doubling D2 makes it third order.
    let reference = order("DPM-Solver++ 3M (reference)", &DpmSolver::new().order(3));
    assert!((1.6..2.3).contains(&reference), "3M reference: {reference}");
    let corrected = order(
        "DPM-Solver++ 3M (corrected)",
        &DpmSolver::new().order(3).third_order(ThirdOrder::Corrected),
    );
    assert!(corrected >= 2.8, "3M corrected: {corrected}");
    // UniPC-p with the corrector is of order p + 1.
    assert!(order("UniPC-2 (bh2, corrector)", &UniPc::new()) >= 2.8);
    assert!(
        order(
            "UniPC-3 (bh1, corrector)",
            &UniPc::new().order(3).variant(UniPcVariant::Bh1)
        ) >= 3.5
    );
    assert!(order("UniPC-3 (bh2, corrector)", &UniPc::new().order(3)) >= 3.5);
    assert!(order("DEIS-3", &Deis::new().order(3)) >= 2.8);
    let ss = DpmSolverSinglestep::new().order(3);
    assert!(order("DPM-Solver++ 3 singlestep (midpoint)", &ss) >= 2.8);
    assert!(
        order(
            "DPM-Solver++ 3 singlestep (heun)",
            &ss.solver_type(SolverType::Heun)
        ) >= 2.8
    );
    assert!(order("LMS-3", &Lms::new().order(3)) >= 2.8);
    assert!(order("LMS-4", &Lms::new()) >= 3.5);
    // Pseudo linear multistep: equal-step Adams-Bashforth weights on a grid whose steps are not
    // equal in sigma, with the DDIM transfer, are second order whatever the nominal order
    // (LMS is the variable-step version of the same idea).
    for (name, o) in [
        ("iPNDM-4", order("iPNDM-4", &Ipndm::new())),
        (
            "PLMS",
            order("PLMS (skip_prk_steps)", &Pndm::new().skip_prk_steps(true)),
        ),
        ("PNDM", order("PNDM (Runge-Kutta warm-up)", &Pndm::new())),
    ] {
        within(o, 2.0, 0.15, name);
    }
}

/// The exact solution itself: a 2-step and a 1-step jump agree (sanity of the reference).
#[test]
fn exact_solution_is_a_flow() {
    let g = gaussian();
    let x = array![[10.0, -3.0, 40.0, 2.0]];
    let (a, b, c) = (
        NoiseLevel::new(0.0, 1.0, 80.0),
        NoiseLevel::new(0.0, 1.0, 2.0),
        NoiseLevel::new(0.0, 1.0, 0.002),
    );
    let direct = g.ode_solution(x.view(), &a, &c).unwrap();
    let two = g
        .ode_solution(g.ode_solution(x.view(), &a, &b).unwrap().view(), &b, &c)
        .unwrap();
    assert!((&direct - &two).iter().all(|v: &f64| v.abs() < 1e-12));
}
