//! Quick start: sample a 2-D Gaussian mixture with DDPM and DDIM.
//!
//! The "model" is the exact denoiser of the mixture, implemented here through the `Denoiser`
//! trait exactly as you would wrap a trained network: it receives `x` in the model's native
//! scaling plus the noise level, and returns its epsilon prediction. The samples' mean,
//! covariance and per-mode weights are printed next to the true ones.
//!
//!     cargo run --release --example quickstart

use std::time::Instant;

use diffusion_samplers::prelude::*;
use ndarray::{Array, Array1, Array2, ArrayView, Axis, Ix2};
use rand::{SeedableRng, rngs::StdRng};

/// A mixture of isotropic 2-D Gaussians: weights, centres, standard deviation.
struct Mixture {
    weights: Vec<f64>,
    centres: Vec<[f64; 2]>,
    std: f64,
}

impl Mixture {
    /// Posterior mean E[x0 | x] at (alpha, sigma): a responsibility-weighted sum of each
    /// component's linear posterior mean.
    fn x0(&self, x: [f64; 2], l: &NoiseLevel) -> [f64; 2] {
        let v = self.std * self.std;
        let var = l.alpha * l.alpha * v + l.sigma * l.sigma;
        let logp: Vec<f64> = self
            .centres
            .iter()
            .zip(&self.weights)
            .map(|(c, w)| {
                let d2 = (x[0] - l.alpha * c[0]).powi(2) + (x[1] - l.alpha * c[1]).powi(2);
                w.ln() - 0.5 * d2 / var
            })
            .collect();
        let max = logp.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let r: Vec<f64> = logp.iter().map(|lp| (lp - max).exp()).collect();
        let total: f64 = r.iter().sum();
        let gain = l.alpha * v / var;
        let mut out = [0.0; 2];
        for (c, rk) in self.centres.iter().zip(&r) {
            for j in 0..2 {
                out[j] += rk / total * (c[j] + gain * (x[j] - l.alpha * c[j]));
            }
        }
        out
    }

    fn mode_of(&self, x: [f64; 2]) -> usize {
        let d = |c: &[f64; 2]| (x[0] - c[0]).powi(2) + (x[1] - c[1]).powi(2);
        (0..self.centres.len())
            .min_by(|&a, &b| d(&self.centres[a]).total_cmp(&d(&self.centres[b])))
            .unwrap()
    }
}

/// The model interface: this is all a user implements for their own network.
impl Denoiser<f32, Ix2> for Mixture {
    fn prediction(&self) -> Prediction {
        Prediction::Epsilon
    }

    fn denoise(&mut self, x: ArrayView<'_, f32, Ix2>, level: &NoiseLevel) -> Result<Array2<f32>, BoxError> {
        let mut eps = Array2::zeros(x.raw_dim());
        for (row, mut out) in x.rows().into_iter().zip(eps.rows_mut()) {
            let xi = [f64::from(row[0]), f64::from(row[1])];
            let x0 = self.x0(xi, level);
            for j in 0..2 {
                out[j] = ((xi[j] - level.alpha * x0[j]) / level.sigma) as f32;
            }
        }
        Ok(eps)
    }
}

fn stats(x: &Array2<f32>) -> (Array1<f64>, Array2<f64>) {
    let x = x.mapv(f64::from);
    let mean = x.mean_axis(Axis(0)).unwrap();
    let centred = &x - &mean;
    let cov = centred.t().dot(&centred) / (x.nrows() as f64 - 1.0);
    (mean, cov)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut model = Mixture {
        weights: vec![0.5, 0.3, 0.2],
        centres: vec![[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]],
        std: 0.3,
    };
    // True moments of the mixture.
    let w = model.weights.clone();
    let mut true_mean = Array1::<f64>::zeros(2);
    for (wk, c) in w.iter().zip(&model.centres) {
        true_mean += &(Array::from(c.to_vec()) * *wk);
    }
    let mut true_cov = Array2::<f64>::eye(2) * model.std.powi(2);
    for (wk, c) in w.iter().zip(&model.centres) {
        let d = Array::from(c.to_vec()) - &true_mean;
        for i in 0..2 {
            for j in 0..2 {
                true_cov[[i, j]] += wk * d[i] * d[j];
            }
        }
    }

    // The training schedule of the model (DDPM's linear betas), and an RNG for the noise.
    let schedule = NoiseSchedule::linear(1000, 1e-4, 0.02)?;
    let n = 4000;
    let mut noise = StdRng::seed_from_u64(2026);

    println!("{n} samples of a 3-mode 2-D Gaussian mixture\n");
    println!(
        "{:<28} {:>5} {:>7}  {:>15}  {:>24}  {:>20}",
        "sampler", "NFE", "time", "mean", "covariance [xx xy yy]", "mode weights"
    );
    let row = |name: &str, nfe: usize, secs: Option<f64>, m: &Array1<f64>, c: &Array2<f64>, wts: &[f64]| {
        let t = secs.map_or("-".to_string(), |s| format!("{:.0} ms", s * 1e3));
        let wts: Vec<String> = wts.iter().map(|v| format!("{v:.3}")).collect();
        println!(
            "{name:<28} {nfe:>5} {t:>7}  [{:>6.3} {:>6.3}]  [{:>6.3} {:>6.3} {:>6.3}]  [{}]",
            m[0],
            m[1],
            c[[0, 0]],
            c[[0, 1]],
            c[[1, 1]],
            wts.join(" ")
        );
    };
    row("true", 0, None, &true_mean, &true_cov, &w);

    // (name, grid, eta): eta = None means DDPM, Some(eta) DDIM with that eta.
    let runs = [
        (
            "DDPM, 1000 steps",
            schedule.grid(1000, Spacing::Leading { offset: 0 })?,
            None,
        ),
        ("DDPM, 100 steps", schedule.grid(100, Spacing::Trailing)?, None),
        (
            "DDIM eta=0, 50 steps",
            schedule.grid(50, Spacing::Trailing)?,
            Some(0.0),
        ),
        (
            "DDIM eta=0, 10 steps",
            schedule.grid(10, Spacing::Trailing)?,
            Some(0.0),
        ),
        (
            "DDIM eta=1, 50 steps",
            schedule.grid(50, Spacing::Trailing)?,
            Some(1.0),
        ),
    ];
    for (name, grid, eta) in runs {
        // Start from noise at the grid's first level, in the model's own scaling.
        let x: Array2<f32> = grid.initial_sample((n, 2), &mut noise)?;
        let start = Instant::now();
        let out = match eta {
            None => Ddpm::new().sample(&mut model, x, &grid, &mut noise)?,
            Some(eta) => Ddim::new().eta(eta).sample(&mut model, x, &grid, &mut noise)?,
        };
        let secs = start.elapsed().as_secs_f64();
        let (m, c) = stats(&out);
        let mut counts = vec![0.0; w.len()];
        for r in out.rows() {
            counts[model.mode_of([f64::from(r[0]), f64::from(r[1])])] += 1.0 / n as f64;
        }
        row(name, Ddim::new().model_calls(&grid), Some(secs), &m, &c, &counts);
    }
    println!(
        "\nSampling error of the mean with {n} samples: about {:.3}.",
        (true_cov[[0, 0]] / n as f64).sqrt()
    );
    Ok(())
}
