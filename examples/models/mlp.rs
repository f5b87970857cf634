//! The toy 2-D denoiser: an MLP on `[x, sinusoidal(t)]` with SiLU hidden layers, and its
//! training loop on `ForwardProcess` batches.

use diffusion_samplers::{BoxError, Denoiser, Float, ForwardProcess, LossWeighting, NoiseLevel, Prediction};
use ndarray::{Array2, ArrayView2, Axis, Ix2, concatenate};
use rand::Rng;

use super::nn::{Adam, Linear, Module, Param, Silu, sinusoidal, weighted_mse};

/// `[x, fourier(x), sinusoidal(t)] -> hidden -> residual SiLU blocks -> 2`.
///
/// The coordinates also enter through sinusoidal features of `25 x` (as in tiny-diffusion):
/// a plain MLP on two raw coordinates learns sharp modes slowly.
#[derive(Clone, Debug)]
pub struct Mlp<T> {
    pub prediction: Prediction,
    emb: usize,
    layers: Vec<Linear<T>>,
    acts: Vec<Silu<T>>,
}

/// Width of the sinusoidal features of each coordinate and of the timestep.
const XEMB: usize = 16;

impl<T: Float> Mlp<T> {
    pub fn new<R: Rng + ?Sized>(prediction: Prediction, hidden: usize, depth: usize, rng: &mut R) -> Self {
        let emb = 32;
        let mut layers = vec![Linear::new(2 + 2 * XEMB + emb, hidden, 2f64.sqrt(), rng)];
        for _ in 1..depth {
            layers.push(Linear::new(hidden, hidden, 1.0, rng));
        }
        layers.push(Linear::new(hidden, 2, 1.0, rng));
        let acts = (0..depth).map(|_| Silu::new()).collect();
        Mlp {
            prediction,
            emb,
            layers,
            acts,
        }
    }

    /// The network's input features: `[x, sin/cos(25 x_0 w), sin/cos(25 x_1 w), sin/cos(t w)]`.
    fn features(&self, x: ArrayView2<'_, T>, t: &[f64]) -> Array2<T> {
        let c0: Vec<f64> = x.column(0).iter().map(|v| 25.0 * v.as_f64()).collect();
        let c1: Vec<f64> = x.column(1).iter().map(|v| 25.0 * v.as_f64()).collect();
        let (f0, f1) = (sinusoidal::<T>(&c0, XEMB), sinusoidal::<T>(&c1, XEMB));
        let e = sinusoidal::<T>(t, self.emb);
        concatenate(Axis(1), &[x, f0.view(), f1.view(), e.view()]).expect("same rows")
    }

    /// The model output for rows `x` at timesteps `t` (one per row).
    pub fn forward(&mut self, x: ArrayView2<'_, T>, t: &[f64]) -> Array2<T> {
        let input = self.features(x, t);
        let last = self.layers.len() - 1;
        let z = self.layers[0].forward(input.view());
        let mut h = self.acts[0].forward(&z);
        for i in 1..last {
            let z = self.layers[i].forward(h.view());
            h = h + self.acts[i].forward(&z);
        }
        self.layers[last].forward(h.view())
    }

    /// Back-propagates `g` (the loss gradient at the output) into the parameters' gradients.
    pub fn backward(&mut self, g: ArrayView2<'_, T>) {
        let last = self.layers.len() - 1;
        let mut gh = self.layers[last].backward(g);
        for i in (1..last).rev() {
            let gz = self.acts[i].backward(&gh);
            gh = gh + self.layers[i].backward(gz.view());
        }
        let gz = self.acts[0].backward(&gh);
        self.layers[0].backward(gz.view());
    }
}

impl<T: Float> Module<T> for Mlp<T> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.visit(&format!("{prefix}layers.{i}."), f);
        }
    }
}

impl<T: Float> Denoiser<T, Ix2> for Mlp<T> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn denoise(&mut self, x: ArrayView2<'_, T>, level: &NoiseLevel) -> Result<Array2<T>, BoxError> {
        let t = vec![level.t; x.nrows()];
        Ok(self.forward(x, &t))
    }
}

/// Training settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub weighting: LossWeighting,
}

/// Trains `model` on batches from `data` (`batch` rows per call); `progress(step, loss)` is
/// called every step. Returns the mean loss of the last 10% of steps.
pub fn train<T: Float, R: Rng + ?Sized>(
    model: &mut Mlp<T>,
    fp: &ForwardProcess,
    cfg: &TrainConfig,
    data: &mut dyn FnMut(usize, &mut R) -> Array2<T>,
    rng: &mut R,
    progress: &mut dyn FnMut(usize, f64),
) -> f64 {
    let mut opt = Adam::new(cfg.lr);
    let tail = (cfg.steps / 10).max(1);
    let mut tail_loss = 0.0;
    for step in 0..cfg.steps {
        // Cosine learning-rate decay to 10%.
        let frac = step as f64 / cfg.steps as f64;
        opt.lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()));
        let x0 = data(cfg.batch, rng);
        let ex = fp
            .training_example(x0.view(), model.prediction, cfg.weighting, rng)
            .expect("a batched array");
        let t: Vec<f64> = ex.timesteps.iter().map(|&t| t as f64).collect();
        model.zero_grad();
        let out = model.forward(ex.noisy.view(), &t);
        let (loss, g) = weighted_mse(&out, &ex.target, &ex.weights);
        model.backward(g.view());
        opt.step(model);
        if step + tail >= cfg.steps {
            tail_loss += loss / tail as f64;
        }
        progress(step, loss);
    }
    tail_loss
}
