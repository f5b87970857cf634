//! k-diffusion's adaptive DPM-Solver: an embedded pair of DPM-Solver steps with a PID step-size
//! controller.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::grid::Grid;
use crate::level::NoiseLevel;
use crate::noise::NoiseSource;
use crate::sampler::core::coefs::{Coords, get_ancestral_step};
use crate::sampler::core::options::{Stochastic, noise_builders, setters};
use crate::sampler::{Estimate, Request, Sampler, SamplerState, Spares};

/// Adaptive DPM-Solver[^dpm] (k-diffusion's `sample_dpm_adaptive`, ComfyUI's `dpm_adaptive`,
/// AUTOMATIC1111's "DPM adaptive"): each attempt takes an embedded pair of DPM-Solver steps in
/// `t = -ln(tau)` — orders 2 and 3 (3 model calls, the default) or 1 and 2 (2 calls) — and a PID
/// controller on the scaled difference of the pair,
///
/// ```text
/// delta = max(atol, rtol max(|y_low|, |y_prev|)),  error = ||(y_low - y_high) / delta||_2 / sqrt(n)
/// factor = 1 + atan(e0^b1 e1^b2 e2^b3 - 1),  e = 1 / (error + 1e-8),  accept if factor >= accept_safety
/// ```
///
/// (`b1 = (pcoeff + icoeff + dcoeff) / order`, `b2 = -(pcoeff + 2 dcoeff) / order`,
/// `b3 = dcoeff / order`, order 1.5 with noise) scales the next step `h`, accepted or not. The
/// result is the higher-order solution. Formulas are k-diffusion's in the sigma-space
/// coordinates `y = x / c`, `tau` of the grid's family (on flow grids applied to the flow
/// sigmas, as ComfyUI does).
///
/// From the grid it takes only the ends, as ComfyUI does: it integrates from the first level to
/// the last level with noise (`sigma_min`: no final denoising step); the levels in between and
/// the number of steps are its own. With `eta > 0` each accepted step is ancestral with fresh
/// noise over the step; [`reverse`](Self::reverse) integrates the other way, from the last level
/// with noise to the first (adaptive inversion: data to noise).
///
/// **The number of model calls is not known in advance**: [`Sampler::model_calls`] is an
/// estimate (`order ×` the grid's steps) and [`Sampler::exact_model_calls`] is `None`; a run's
/// [`DpmAdaptiveState::info`] counts the calls, attempts, accepted and rejected steps.
///
/// # Example
/// ```
/// use diffusion_samplers::prelude::*;
/// use diffusion_samplers::{DpmAdaptive, Sampler};
/// use ndarray::Array2;
/// let grid = NoiseSchedule::scaled_linear(1000, 0.00085, 0.012)?.grid(10, Spacing::KARRAS)?;
/// let mut model = GaussianMixture::gaussian(vec![0.5], vec![0.04])?;
/// let x: Array2<f64> = grid.initial_sample((64, 1), &mut SeededNoise::new(0))?;
/// let sampler = DpmAdaptive::new().rtol(0.01);
/// assert_eq!(sampler.exact_model_calls(&grid), None);
/// let mut run = sampler.start(x, &grid, Prediction::Epsilon, SeededNoise::new(1))?;
/// while let Some(req) = run.request() {
///     let out = model.denoise(req.x.view(), &req.level).unwrap();
///     run.respond(out)?;
/// }
/// let info = run.state().info();
/// assert_eq!(info.nfe, 3 * (info.n_accept + info.n_reject));
/// assert!((run.sample().mean().unwrap() - 0.5).abs() < 0.1);
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidParameter`] for an order other than 2 or 3, a negative or non-finite `rtol`,
/// `atol`, controller coefficient, `eta` or `s_noise`, `rtol = atol = 0`, a non-positive
/// `h_init` or `accept_safety`, and noise in reverse; at the start of a run,
/// [`Error::InvalidParameter`] (`"grid"`) for a grid whose ends coincide or start from pure
/// noise (infinite sigma); during a run, [`Error::NonFinite`]
/// (model output, error estimate, noise, sample) and [`Error::InvalidSteps`] when the
/// controller does not finish within `10^6` attempts.
///
/// [^dpm]: C. Lu, Y. Zhou, F. Bao, J. Chen, C. Li, J. Zhu, *DPM-Solver: A Fast ODE Solver for
///     Diffusion Probabilistic Model Sampling in Around 10 Steps*, NeurIPS 2022,
///     arXiv:2206.00927 (section 4 and appendix: the adaptive step size).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpmAdaptive {
    order: usize,
    rtol: f64,
    atol: f64,
    h_init: f64,
    pcoeff: f64,
    icoeff: f64,
    dcoeff: f64,
    accept_safety: f64,
    reverse: bool,
    noise: Stochastic,
}

impl Default for DpmAdaptive {
    fn default() -> Self {
        DpmAdaptive {
            order: 3,
            rtol: 0.05,
            atol: 0.0078,
            h_init: 0.05,
            pcoeff: 0.0,
            icoeff: 1.0,
            dcoeff: 0.0,
            accept_safety: 0.81,
            reverse: false,
            noise: Stochastic::new(0.0),
        }
    }
}

/// Attempts after which a run gives up.
const MAX_ATTEMPTS: usize = 1_000_000;

impl DpmAdaptive {
    /// k-diffusion's defaults: order 3, `rtol = 0.05`, `atol = 0.0078`, `h_init = 0.05`, an
    /// integral controller (`icoeff = 1`), `accept_safety = 0.81`, deterministic.
    pub fn new() -> Self {
        Self::default()
    }

    setters!(
        /// The order of the higher solution of the pair: 3 (pair 2/3, 3 calls per attempt) or 2
        /// (pair 1/2, 2 calls).
        order: usize,
        /// Relative tolerance (of `max(|y_low|, |y_prev|)`).
        rtol: f64,
        /// Absolute tolerance (in the sigma-space scaling `y = x / c`: k-diffusion's for VP).
        atol: f64,
        /// The first step size in `t = -ln(tau)`.
        h_init: f64,
        /// The controller's proportional coefficient.
        pcoeff: f64,
        /// The controller's integral coefficient.
        icoeff: f64,
        /// The controller's derivative coefficient.
        dcoeff: f64,
        /// A step is accepted when the controller's factor is at least this.
        accept_safety: f64,
        /// Integrate from the grid's last level with noise up to its first level (inversion);
        /// needs `eta = 0`.
        reverse: bool,
    );

    noise_builders!();

    fn check(&self) -> Result<()> {
        let bad = |name: &'static str, value: f64, reason: &'static str| {
            Err(Error::InvalidParameter { name, value, reason })
        };
        if !matches!(self.order, 2 | 3) {
            return bad(
                "order",
                self.order as f64,
                "the adaptive DPM-Solver has orders 2 and 3",
            );
        }
        for (name, v) in [
            ("rtol", self.rtol),
            ("atol", self.atol),
            ("pcoeff", self.pcoeff),
            ("icoeff", self.icoeff),
            ("dcoeff", self.dcoeff),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, v, "must be finite and non-negative");
            }
        }
        if self.rtol == 0.0 && self.atol == 0.0 {
            return bad("atol", 0.0, "rtol and atol cannot both be 0");
        }
        for (name, v) in [("h_init", self.h_init), ("accept_safety", self.accept_safety)] {
            if !(v.is_finite() && v > 0.0) {
                return bad(name, v, "must be positive and finite");
            }
        }
        self.noise.check()?;
        if self.reverse && self.noise.eta > 0.0 {
            return bad("eta", self.noise.eta, "must be 0 for reverse integration");
        }
        Ok(())
    }
}

/// What an adaptive run did so far (k-diffusion's `info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdaptiveInfo {
    /// Attempts (accepted and rejected steps).
    pub steps: usize,
    /// Model calls.
    pub nfe: usize,
    /// Accepted steps.
    pub n_accept: usize,
    /// Rejected steps.
    pub n_reject: usize,
}

/// k-diffusion's `PIDStepSizeController`.
#[derive(Clone, Debug)]
struct Pid {
    h: f64,
    b: [f64; 3],
    accept_safety: f64,
    errs: Option<[f64; 3]>,
}

impl Pid {
    fn propose(&mut self, error: f64) -> bool {
        let inv = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv; 3]);
        errs[0] = inv;
        let factor = errs[0].powf(self.b[0]) * errs[1].powf(self.b[1]) * errs[2].powf(self.b[2]);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= self.accept_safety;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// The state of a [`DpmAdaptive`] run.
#[derive(Clone, Debug)]
pub struct DpmAdaptiveState<F, D: Dimension> {
    opts: DpmAdaptive,
    grid: Grid,
    c: Coords,
    /// The sample (model scaling) at `s`.
    x: Array<F, D>,
    /// The lower solution of the last accepted step (`y` units; the run's input at first).
    y_prev: Array<F, D>,
    y_low: Array<F, D>,
    /// The next stage's input (model scaling), then the higher solution (`y` units).
    input: Array<F, D>,
    eps: [Array<F, D>; 3],
    /// Start, end, current `t`, and the current attempt's target `t`, ancestral target `t_` and
    /// noise `su`.
    t_end: f64,
    s: f64,
    t: f64,
    t_: f64,
    su: f64,
    end: NoiseLevel,
    /// The level at `s`, and the level of the pending call.
    at: NoiseLevel,
    pending: NoiseLevel,
    stage: usize,
    done: bool,
    /// Model calls answered.
    calls: usize,
    pid: Pid,
    info: AdaptiveInfo,
}

impl<F: Float, D: Dimension> DpmAdaptiveState<F, D> {
    /// Attempts, model calls, accepted and rejected steps so far.
    pub fn info(&self) -> AdaptiveInfo {
        self.info
    }

    fn forward(&self) -> bool {
        !self.opts.reverse
    }

    /// The level at `t` (the ends exactly).
    #[allow(clippy::float_cmp, reason = "the last step's end is `t_end` itself")]
    fn level_at(&self, t: f64) -> Result<NoiseLevel> {
        if t == self.t_end {
            return Ok(self.end);
        }
        self.grid.level_at_sigma_ve(self.c.sigma_ve_of_tau((-t).exp()))
    }

    /// Begins the next attempt from `s`, or finishes.
    fn begin(&mut self) -> Result<()> {
        let more = if self.forward() {
            self.s < self.t_end - 1e-5
        } else {
            self.s > self.t_end + 1e-5
        };
        if !more {
            self.done = true;
            return Ok(());
        }
        if self.info.steps >= MAX_ATTEMPTS {
            return Err(Error::InvalidSteps {
                steps: self.info.steps,
                max: MAX_ATTEMPTS,
            });
        }
        let (s, h) = (self.s, self.pid.h);
        self.t = if self.forward() {
            self.t_end.min(s + h)
        } else {
            self.t_end.max(s + h)
        };
        if self.opts.noise.eta > 0.0 {
            let sig = |t: f64| (-t).exp();
            let (down, _) = get_ancestral_step(sig(s), sig(self.t), self.opts.noise.eta);
            self.t_ = self.t_end.min(-down.ln());
            self.su = (sig(self.t).powi(2) - sig(self.t_).powi(2)).max(0.0).sqrt();
        } else {
            (self.t_, self.su) = (self.t, 0.0);
        }
        self.stage = 0;
        self.pending = self.at;
        Ok(())
    }

    fn r1(&self) -> f64 {
        if self.opts.order == 3 { 1.0 / 3.0 } else { 0.5 }
    }

    fn nonfinite(&self, what: &'static str) -> Error {
        Error::NonFinite {
            step: self.info.steps,
            level: self.pending,
            what,
        }
    }

    /// Error of the pair, the controller, and the accepted step.
    fn conclude<N: NoiseSource<F> + ?Sized>(&mut self, noise: &mut N) -> Result<()> {
        let (atol, rtol) = (F::cast(self.opts.atol), F::cast(self.opts.rtol));
        let term = |lo: F, hi: F, pr: F| {
            let delta = atol.max(rtol * lo.abs().max(pr.abs()));
            let e = ((lo - hi) / delta).as_f64();
            e * e
        };
        // Eight partial sums (in f64) let the pass vectorise; other layouts go element by element.
        let slices = (
            self.y_low.as_slice_memory_order(),
            self.input.as_slice_memory_order(),
            self.y_prev.as_slice_memory_order(),
        );
        let same =
            self.y_low.strides() == self.input.strides() && self.y_low.strides() == self.y_prev.strides();
        let sum = match slices {
            (Some(lo), Some(hi), Some(pr)) if same => {
                let mut acc = [0.0f64; 8];
                let (lc, hc, pc) = (lo.chunks_exact(8), hi.chunks_exact(8), pr.chunks_exact(8));
                let tail: f64 = lc
                    .remainder()
                    .iter()
                    .zip(hc.remainder())
                    .zip(pc.remainder())
                    .map(|((&l, &h), &p)| term(l, h, p))
                    .sum();
                for ((l, h), p) in lc.zip(hc).zip(pc) {
                    for k in 0..8 {
                        acc[k] += term(l[k], h[k], p[k]);
                    }
                }
                acc.iter().sum::<f64>() + tail
            }
            _ => {
                let mut sum = 0.0;
                Zip::from(&self.y_low)
                    .and(&self.input)
                    .and(&self.y_prev)
                    .for_each(|&lo, &hi, &pr| sum += term(lo, hi, pr));
                sum
            }
        };
        let error = (sum / self.x.len() as f64).sqrt();
        if !error.is_finite() {
            return Err(self.nonfinite("error estimate"));
        }
        self.info.nfe += self.opts.order;
        self.info.steps += 1;
        if self.pid.propose(error) {
            std::mem::swap(&mut self.y_prev, &mut self.y_low);
            let to = self.level_at(self.t)?;
            let kz = F::cast(self.su * self.opts.noise.s_noise);
            let ct = F::cast(self.c.c(&to));
            if self.su > 0.0 {
                let z = &mut self.eps[1];
                noise.fill_interval(self.info.steps - 1, &self.at, &to, z.view_mut());
                if z.iter().any(|v| !v.is_finite()) {
                    return Err(self.nonfinite("noise"));
                }
            }
            let ok = if self.su > 0.0 {
                let (ctz, z) = (ct * kz, &self.eps[1]);
                fold_finite!(Zip::from(&mut self.x).and(&self.input).and(z), |x, &hi, &z| {
                    *x = ct * hi + ctz * z;
                    *x
                })
            } else {
                fold_finite!(Zip::from(&mut self.x).and(&self.input), |x, &hi| {
                    *x = ct * hi;
                    *x
                })
            };
            if !ok {
                return Err(self.nonfinite("sample"));
            }
            self.s = self.t;
            self.at = to;
            self.info.n_accept += 1;
        } else {
            self.info.n_reject += 1;
        }
        self.begin()
    }
}

impl<F: Float, D: Dimension> SamplerState<F, D> for DpmAdaptiveState<F, D> {
    fn pending(&self) -> Option<Request<'_, F, D>> {
        if self.done {
            return None;
        }
        let x = if self.stage == 0 { &self.x } else { &self.input };
        Some(Request {
            step: self.info.steps,
            level: self.pending,
            x: x.view(),
            index: self.calls,
            steps: 0,
        })
    }

    fn advance<N: NoiseSource<F> + ?Sized>(
        &mut self,
        est: Estimate<F, D>,
        noise: &mut N,
    ) -> Result<Spares<F, D>> {
        if self.done {
            let (out, uncond) = est.into_buffers();
            return Ok([Some(out), uncond]);
        }
        self.calls += 1;
        let (cx, co) = (est.cx, est.co);
        let f = F::cast;
        let sig = |t: f64| (-t).exp();
        let (s, t_) = (self.s, self.t_);
        let h = t_ - s;
        let big_e = h.exp_m1();
        let (cs, tau_s) = (self.c.c(&self.at), self.c.tau(&self.at));
        let ics = f(1.0 / cs);
        let r1 = self.r1();
        let (sn, stage_c, stage_tau) = (sig(t_), self.c.c(&self.pending), self.c.tau(&self.pending));
        match self.stage {
            0 => {
                // eps0 = (y - x0) / tau_s; u1 = y - sig(s1) (e^{r1 h} - 1) eps0 at s1.
                let s1 = s + r1 * h;
                let l1 = self.level_at(s1)?;
                let (k1, c1, itau) = (f(-sig(s1) * (r1 * h).exp_m1()), f(self.c.c(&l1)), f(1.0 / tau_s));
                let ok = fold_finite!(
                    Zip::from(&mut self.eps[0])
                        .and(&mut self.input)
                        .and(&self.x)
                        .and(&est.out),
                    |e, u, &x, &o| {
                        let y = x * ics;
                        *e = (y - (cx * x + co * o)) * itau;
                        *u = c1 * (y + k1 * *e);
                        *e
                    }
                );
                if !ok {
                    return Err(self.nonfinite("model output"));
                }
                self.stage = 1;
                self.pending = l1;
            }
            1 => {
                let (ic1, itau1) = (f(1.0 / stage_c), f(1.0 / stage_tau));
                let a = f(-sn * big_e);
                if self.opts.order == 2 {
                    // low: 1 step; high: y - sn E eps0 - sn / (2 r1) E (eps1 - eps0).
                    let b = f(-sn / (2.0 * r1) * big_e);
                    let ok = fold_finite!(
                        Zip::from(&mut self.y_low)
                            .and(&mut self.input)
                            .and(&self.x)
                            .and(&self.eps[0])
                            .and(&est.out),
                        |lo, u, &x, &e0, &o| {
                            let e1 = (*u * ic1 - (cx * *u + co * o)) * itau1;
                            let y = x * ics;
                            *lo = y + a * e0;
                            *u = *lo + b * (e1 - e0);
                            e1
                        }
                    );
                    if !ok {
                        return Err(self.nonfinite("model output"));
                    }
                    self.conclude(noise)?;
                } else {
                    // low: the 2-step with r1 = 1/3; u2 at s2 = s + 2h/3.
                    let r2 = 2.0 / 3.0;
                    let b = f(-sn / (2.0 * r1) * big_e);
                    let s2 = s + r2 * h;
                    let l2 = self.level_at(s2)?;
                    let e2 = (r2 * h).exp_m1();
                    let k = sig(s2) * (r2 / r1) * (e2 / (r2 * h) - 1.0);
                    let (k0, kd, c2) = (f(-sig(s2) * e2), f(-k), f(self.c.c(&l2)));
                    let (eps0, rest) = self.eps.split_at_mut(1);
                    let ok = fold_finite!(
                        seq;
                        Zip::from(&mut self.y_low)
                            .and(&mut self.input)
                            .and(&mut rest[0])
                            .and(&self.x)
                            .and(&eps0[0])
                            .and(&est.out),
                        |lo, u, e1s, &x, &e0, &o| {
                            let e1 = (*u * ic1 - (cx * *u + co * o)) * itau1;
                            *e1s = e1;
                            let y = x * ics;
                            *lo = y + a * e0 + b * (e1 - e0);
                            *u = c2 * (y + k0 * e0 + kd * (e1 - e0));
                            e1
                        }
                    );
                    if !ok {
                        return Err(self.nonfinite("model output"));
                    }
                    self.stage = 2;
                    self.pending = l2;
                }
            }
            _ => {
                // high: y - sn E eps0 - sn / r2 (E / h - 1) (eps2 - eps0).
                let (ic2, itau2) = (f(1.0 / stage_c), f(1.0 / stage_tau));
                let a = f(-sn * big_e);
                let b = f(-sn / (2.0 / 3.0) * (big_e / h - 1.0));
                let ok = fold_finite!(
                    Zip::from(&mut self.input)
                        .and(&self.x)
                        .and(&self.eps[0])
                        .and(&est.out),
                    |u, &x, &e0, &o| {
                        let e2 = (*u * ic2 - (cx * *u + co * o)) * itau2;
                        *u = x * ics + a * e0 + b * (e2 - e0);
                        e2
                    }
                );
                if !ok {
                    return Err(self.nonfinite("model output"));
                }
                self.conclude(noise)?;
            }
        }
        let (out, uncond) = est.into_buffers();
        Ok([Some(out), uncond])
    }

    fn sample(&self) -> ArrayView<'_, F, D> {
        self.x.view()
    }

    fn sample_mut(&mut self) -> ArrayViewMut<'_, F, D> {
        self.x.view_mut()
    }

    fn level(&self) -> NoiseLevel {
        self.at
    }

    fn into_sample(self) -> Array<F, D> {
        self.x
    }
}

impl Sampler for DpmAdaptive {
    type State<F: Float, D: Dimension> = DpmAdaptiveState<F, D>;

    fn validate(&self) -> Result<()> {
        self.check()
    }

    fn init<F: Float, D: Dimension, N: NoiseSource<F> + ?Sized>(
        &self,
        x: Array<F, D>,
        grid: &Grid,
        _noise: &mut N,
    ) -> Result<Self::State<F, D>> {
        self.check()?;
        let c = Coords::of(grid.family());
        let (mut start, mut end) = (grid.levels()[0], grid.last_noisy());
        if self.reverse {
            std::mem::swap(&mut start, &mut end);
        }
        let t = |l: &NoiseLevel| -c.tau(l).ln();
        let (t_start, t_end) = (t(&start), t(&end));
        if !(t_start.is_finite() && t_end.is_finite()) || (t_start - t_end).abs() <= 1e-5 {
            return Err(Error::InvalidParameter {
                name: "grid",
                value: c.tau(&start),
                reason: "the adaptive DPM-Solver integrates in log-sigma from the first level to the last level \
                         with noise: both need finite, distinct sigmas",
            });
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                step: 0,
                level: start,
                what: "input sample",
            });
        }
        let ics = F::cast(1.0 / c.c(&start));
        let y_prev = x.mapv(|v| v * ics);
        let zeros = || Array::zeros(x.raw_dim());
        let forward = !self.reverse;
        let order = if self.noise.eta > 0.0 {
            1.5
        } else {
            self.order as f64
        };
        let pid = Pid {
            h: self.h_init.abs() * if forward { 1.0 } else { -1.0 },
            b: [
                (self.pcoeff + self.icoeff + self.dcoeff) / order,
                -(self.pcoeff + 2.0 * self.dcoeff) / order,
                self.dcoeff / order,
            ],
            accept_safety: self.accept_safety,
            errs: None,
        };
        let mut st = DpmAdaptiveState {
            opts: *self,
            grid: grid.clone(),
            c,
            y_low: zeros(),
            input: zeros(),
            eps: [zeros(), zeros(), zeros()],
            y_prev,
            x,
            t_end,
            s: t_start,
            t: t_start,
            t_: t_start,
            su: 0.0,
            end,
            at: start,
            pending: start,
            stage: 0,
            done: false,
            calls: 0,
            pid,
            info: AdaptiveInfo::default(),
        };
        st.begin()?;
        Ok(st)
    }

    /// An estimate: `order ×` the grid's steps.
    fn model_calls(&self, grid: &Grid) -> usize {
        self.order * grid.steps()
    }

    fn exact_model_calls(&self, _grid: &Grid) -> Option<usize> {
        None
    }
}
