//! A small neural-network toolkit on `ndarray`: layers with hand-written backward passes and
//! Adam. Every layer caches what its backward pass needs during `forward`; `backward` takes
//! the gradient of the loss with respect to the layer's output, accumulates the gradients of
//! its parameters and returns the gradient with respect to its input. `tests/gradients.rs`
//! checks each one against central finite differences in `f64`.

use diffusion_samplers::Float;
use ndarray::{Array, Array1, Array2, Array4, ArrayD, ArrayView2, ArrayView4, Axis, Ix2, IxDyn, Zip, s};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// A trainable tensor with its gradient and Adam's moment estimates.
#[derive(Clone, Debug)]
pub struct Param<T> {
    pub value: ArrayD<T>,
    pub grad: ArrayD<T>,
    m: ArrayD<T>,
    v: ArrayD<T>,
}

impl<T: Float> Param<T> {
    pub fn new(value: ArrayD<T>) -> Self {
        let z = Array::zeros(value.raw_dim());
        Param {
            grad: z.clone(),
            m: z.clone(),
            v: z,
            value,
        }
    }

    /// Normal(0, std^2) entries.
    pub fn normal<R: Rng + ?Sized>(shape: &[usize], std: f64, rng: &mut R) -> Self {
        let d = Normal::new(0.0, std).expect("std is finite and positive");
        Param::new(ArrayD::from_shape_fn(IxDyn(shape), |_| T::cast(d.sample(rng))))
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Param::new(ArrayD::zeros(IxDyn(shape)))
    }

    pub fn filled(shape: &[usize], v: f64) -> Self {
        Param::new(ArrayD::from_elem(IxDyn(shape), T::cast(v)))
    }

    pub fn mat(&self) -> ArrayView2<'_, T> {
        self.value
            .view()
            .into_dimensionality::<Ix2>()
            .expect("a 2-D parameter")
    }

    pub fn len(&self) -> usize {
        self.value.len()
    }
}

/// Anything with parameters: models list them (in a fixed order) for the optimiser and for
/// saving.
pub trait Module<T> {
    /// Calls `f` with each parameter and a stable name.
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>));

    fn zero_grad(&mut self)
    where
        T: Float,
    {
        self.visit("", &mut |_, p| p.grad.fill(T::zero()));
    }

    fn num_params(&mut self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, p| n += p.value.len());
        n
    }
}

/// Adam (Kingma & Ba 2015) with optional global gradient-norm clipping.
#[derive(Clone, Debug)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub clip_norm: Option<f64>,
    t: i32,
}

impl Adam {
    pub fn new(lr: f64) -> Self {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            clip_norm: Some(1.0),
            t: 0,
        }
    }

    /// One update of every parameter of `model` from its accumulated gradients.
    pub fn step<T: Float, M: Module<T> + ?Sized>(&mut self, model: &mut M) {
        self.t += 1;
        let mut sq = 0.0;
        model.visit("", &mut |_, p| {
            sq += p.grad.iter().map(|g| g.as_f64().powi(2)).sum::<f64>()
        });
        let scale = match self.clip_norm {
            Some(c) if sq.sqrt() > c => c / sq.sqrt(),
            _ => 1.0,
        };
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t);
        let c2 = 1.0 - b2.powi(self.t);
        let (lr, eps) = (self.lr, self.eps);
        let f = T::cast;
        model.visit("", &mut |_, p| {
            Zip::from(&mut p.value)
                .and(&p.grad)
                .and(&mut p.m)
                .and(&mut p.v)
                .for_each(|w, &g, m, v| {
                    let g = g * f(scale);
                    *m = f(b1) * *m + f(1.0 - b1) * g;
                    *v = f(b2) * *v + f(1.0 - b2) * g * g;
                    let mh = *m / f(c1);
                    let vh = *v / f(c2);
                    *w -= f(lr) * mh / (vh.sqrt() + f(eps));
                });
        });
    }
}

/// `y = x W^T + b` on rows: `x` is `[n, in]`, `W` is `[out, in]` (PyTorch's layout, so that
/// saved weights load into `torch.nn.Linear` / `candle_nn::Linear` as they are).
#[derive(Clone, Debug)]
pub struct Linear<T> {
    pub w: Param<T>,
    pub b: Param<T>,
    x: Option<Array2<T>>,
}

impl<T: Float> Linear<T> {
    /// He-style initialisation (`std = gain / sqrt(in)`), zero bias.
    pub fn new<R: Rng + ?Sized>(inp: usize, out: usize, gain: f64, rng: &mut R) -> Self {
        Linear {
            w: Param::normal(&[out, inp], gain / (inp as f64).sqrt(), rng),
            b: Param::zeros(&[out]),
            x: None,
        }
    }

    pub fn forward(&mut self, x: ArrayView2<'_, T>) -> Array2<T> {
        // A contiguous copy of W^T (small) keeps the product on matrixmultiply's fast path.
        let wt = self.w.mat().t().as_standard_layout().into_owned();
        let mut y = x.dot(&wt);
        let b = self
            .b
            .value
            .view()
            .into_dimensionality::<ndarray::Ix1>()
            .expect("1-D bias");
        y += &b;
        self.x = Some(x.to_owned());
        y
    }

    pub fn backward(&mut self, g: ArrayView2<'_, T>) -> Array2<T> {
        let x = self.x.as_ref().expect("forward before backward");
        let gw = g.t().dot(x);
        self.w.grad += &gw.into_dyn();
        self.b.grad += &g.sum_axis(Axis(0)).into_dyn();
        g.dot(&self.w.mat())
    }
}

impl<T: Float> Module<T> for Linear<T> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&format!("{prefix}weight"), &mut self.w);
        f(&format!("{prefix}bias"), &mut self.b);
    }
}

/// SiLU `x sigmoid(x)`, element-wise on any shape.
#[derive(Clone, Debug, Default)]
pub struct Silu<T> {
    x: Option<ArrayD<T>>,
}

fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

impl<T: Float> Silu<T> {
    pub fn new() -> Self {
        Silu { x: None }
    }

    pub fn forward<D: ndarray::Dimension>(&mut self, x: &Array<T, D>) -> Array<T, D> {
        self.x = Some(x.clone().into_dyn());
        x.mapv(|v| v * sigmoid(v))
    }

    pub fn backward<D: ndarray::Dimension>(&mut self, g: &Array<T, D>) -> Array<T, D> {
        let x = self.x.as_ref().expect("forward before backward");
        let mut out = g.clone();
        Zip::from(out.view_mut().into_dyn()).and(x).for_each(|o, &x| {
            let s = sigmoid(x);
            *o = *o * s * (T::one() + x * (T::one() - s));
        });
        out
    }
}

/// Sinusoidal embedding of a scalar per row (Vaswani et al.; DDPM's timestep embedding):
/// `[sin(t w_k), cos(t w_k)]` with `w_k = 10000^(-k / (dim/2))`.
pub fn sinusoidal<T: Float>(t: &[f64], dim: usize) -> Array2<T> {
    let half = dim / 2;
    Array2::from_shape_fn((t.len(), dim), |(i, j)| {
        let k = j % half;
        let w = (-(10000f64.ln()) * k as f64 / half as f64).exp();
        T::cast(if j < half {
            (t[i] * w).sin()
        } else {
            (t[i] * w).cos()
        })
    })
}

/// 2-D convolution, stride 1, "same" zero padding, odd kernel size; NCHW. Lowered to one
/// matrix product through an im2col matrix laid out `[cin k k, n h w]` (rows copied as slices).
#[derive(Clone, Debug)]
pub struct Conv2d<T> {
    pub w: Param<T>,
    pub b: Param<T>,
    k: usize,
    cols: Option<Array2<T>>,
    shape: (usize, usize, usize, usize),
}

impl<T: Float> Conv2d<T> {
    pub fn new<R: Rng + ?Sized>(cin: usize, cout: usize, k: usize, gain: f64, rng: &mut R) -> Self {
        assert!(k % 2 == 1, "odd kernel");
        Conv2d {
            w: Param::normal(&[cout, cin, k, k], gain / ((cin * k * k) as f64).sqrt(), rng),
            b: Param::zeros(&[cout]),
            k,
            cols: None,
            shape: (0, 0, 0, 0),
        }
    }

    /// `[cout, cin k k]` view of the weights.
    fn wmat(&self) -> ArrayView2<'_, T> {
        let cout = self.w.value.shape()[0];
        self.w
            .value
            .view()
            .into_shape_with_order((cout, self.w.len() / cout))
            .expect("contiguous weights")
    }

    /// For each kernel offset `d` in `0..k`: the output range whose input `o + d - p` is inside
    /// `0..n`.
    fn valid(d: usize, p: usize, n: usize) -> (usize, usize) {
        let lo = p.saturating_sub(d);
        let hi = (n + p).saturating_sub(d).min(n);
        (lo, hi.max(lo))
    }

    fn im2col(&self, x: &ArrayView4<'_, T>) -> Array2<T> {
        let (n, c, h, w) = x.dim();
        let (k, p) = (self.k, self.k / 2);
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let mut cols = Array2::zeros((c * k * k, n * h * w));
        for ci in 0..c {
            for dy in 0..k {
                let (ylo, yhi) = Self::valid(dy, p, h);
                for dx in 0..k {
                    let (xlo, xhi) = Self::valid(dx, p, w);
                    let mut row = cols.row_mut(ci * k * k + dy * k + dx);
                    let dst = row.as_slice_mut().expect("row-major");
                    for b in 0..n {
                        for y in ylo..yhi {
                            let sy = y + dy - p;
                            let src = ((b * c + ci) * h + sy) * w;
                            let d0 = (b * h + y) * w;
                            dst[d0 + xlo..d0 + xhi]
                                .copy_from_slice(&xs[src + xlo + dx - p..src + xhi + dx - p]);
                        }
                    }
                }
            }
        }
        cols
    }

    fn col2im(&self, cols: &Array2<T>) -> Array4<T> {
        let (n, c, h, w) = self.shape;
        let (k, p) = (self.k, self.k / 2);
        let mut x = Array4::zeros((n, c, h, w));
        let xs = x.as_slice_mut().expect("standard layout");
        for ci in 0..c {
            for dy in 0..k {
                let (ylo, yhi) = Self::valid(dy, p, h);
                for dx in 0..k {
                    let (xlo, xhi) = Self::valid(dx, p, w);
                    let row = cols.row(ci * k * k + dy * k + dx);
                    let srcr = row.as_slice().expect("row-major");
                    for b in 0..n {
                        for y in ylo..yhi {
                            let sy = y + dy - p;
                            let dst = ((b * c + ci) * h + sy) * w;
                            let s0 = (b * h + y) * w;
                            for (o, &v) in xs[dst + xlo + dx - p..dst + xhi + dx - p]
                                .iter_mut()
                                .zip(&srcr[s0 + xlo..s0 + xhi])
                            {
                                *o += v;
                            }
                        }
                    }
                }
            }
        }
        x
    }

    pub fn forward(&mut self, x: ArrayView4<'_, T>) -> Array4<T> {
        let (n, _, h, w) = x.dim();
        self.shape = x.dim();
        let cols = self.im2col(&x);
        let mut y = self.wmat().dot(&cols); // [cout, n h w]
        let b = self
            .b
            .value
            .view()
            .into_dimensionality::<ndarray::Ix1>()
            .expect("1-D bias");
        y += &b.insert_axis(Axis(1));
        self.cols = Some(cols);
        let cout = y.nrows();
        y.into_shape_with_order((cout, n, h, w))
            .expect("contiguous")
            .permuted_axes([1, 0, 2, 3])
            .as_standard_layout()
            .into_owned()
    }

    pub fn backward(&mut self, g: ArrayView4<'_, T>) -> Array4<T> {
        let (n, cout, h, w) = g.dim();
        let g2 = g
            .permuted_axes([1, 0, 2, 3])
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((cout, n * h * w))
            .expect("contiguous");
        let cols = self.cols.as_ref().expect("forward before backward");
        let gw = g2.dot(&cols.t()); // [cout, cin k k]
        self.w.grad += &gw.into_shape_with_order(self.w.value.raw_dim()).expect("shape");
        self.b.grad += &g2.sum_axis(Axis(1)).into_dyn();
        let gcols = self.wmat().t().dot(&g2);
        self.col2im(&gcols)
    }
}

impl<T: Float> Module<T> for Conv2d<T> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&format!("{prefix}weight"), &mut self.w);
        f(&format!("{prefix}bias"), &mut self.b);
    }
}

/// Group normalisation (Wu & He 2018) over `(channels in group, H, W)` per sample, with a
/// per-channel affine; NCHW.
#[derive(Clone, Debug)]
pub struct GroupNorm<T> {
    pub gamma: Param<T>,
    pub beta: Param<T>,
    groups: usize,
    eps: f64,
    xhat: Option<Array4<T>>,
    inv_std: Option<Array2<T>>,
}

impl<T: Float> GroupNorm<T> {
    pub fn new(groups: usize, channels: usize) -> Self {
        assert!(channels.is_multiple_of(groups), "channels divisible by groups");
        GroupNorm {
            gamma: Param::filled(&[channels], 1.0),
            beta: Param::zeros(&[channels]),
            groups,
            eps: 1e-5,
            xhat: None,
            inv_std: None,
        }
    }

    pub fn forward(&mut self, x: ArrayView4<'_, T>) -> Array4<T> {
        let (n, c, h, w) = x.dim();
        let cg = c / self.groups;
        let m = T::cast((cg * h * w) as f64);
        let mut xhat = Array4::zeros(x.raw_dim());
        let mut inv = Array2::zeros((n, self.groups));
        for b in 0..n {
            for g in 0..self.groups {
                let xs = x.slice(s![b, g * cg..(g + 1) * cg, .., ..]);
                let mean = xs.sum() / m;
                let var = xs.fold(T::zero(), |a, &v| a + (v - mean) * (v - mean)) / m;
                let is = T::one() / (var + T::cast(self.eps)).sqrt();
                inv[[b, g]] = is;
                Zip::from(xhat.slice_mut(s![b, g * cg..(g + 1) * cg, .., ..]))
                    .and(&xs)
                    .for_each(|o, &v| *o = (v - mean) * is);
            }
        }
        let mut y = xhat.clone();
        for ci in 0..c {
            let (ga, be) = (self.gamma.value[[ci]], self.beta.value[[ci]]);
            y.slice_mut(s![.., ci, .., ..]).mapv_inplace(|v| v * ga + be);
        }
        self.xhat = Some(xhat);
        self.inv_std = Some(inv);
        y
    }

    pub fn backward(&mut self, g: ArrayView4<'_, T>) -> Array4<T> {
        let xhat = self.xhat.as_ref().expect("forward before backward");
        let inv = self.inv_std.as_ref().expect("forward before backward");
        let (n, c, h, w) = g.dim();
        let cg = c / self.groups;
        let m = T::cast((cg * h * w) as f64);
        for ci in 0..c {
            let gs = g.slice(s![.., ci, .., ..]);
            let xs = xhat.slice(s![.., ci, .., ..]);
            self.gamma.grad[[ci]] += Zip::from(&gs).and(&xs).fold(T::zero(), |a, &g, &x| a + g * x);
            self.beta.grad[[ci]] += gs.sum();
        }
        // dxhat = g gamma; dx = inv / m (m dxhat - sum dxhat - xhat sum(dxhat xhat)).
        let mut dxhat = g.to_owned();
        for ci in 0..c {
            let ga = self.gamma.value[[ci]];
            dxhat.slice_mut(s![.., ci, .., ..]).mapv_inplace(|v| v * ga);
        }
        let mut dx = Array4::zeros((n, c, h, w));
        for b in 0..n {
            for gi in 0..self.groups {
                let r = s![b, gi * cg..(gi + 1) * cg, .., ..];
                let d = dxhat.slice(r);
                let xh = xhat.slice(r);
                let sd = d.sum();
                let sdx = Zip::from(&d).and(&xh).fold(T::zero(), |a, &d, &x| a + d * x);
                let is = inv[[b, gi]];
                Zip::from(dx.slice_mut(r))
                    .and(&d)
                    .and(&xh)
                    .for_each(|o, &d, &x| *o = is / m * (m * d - sd - x * sdx));
            }
        }
        dx
    }
}

impl<T: Float> Module<T> for GroupNorm<T> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        f(&format!("{prefix}weight"), &mut self.gamma);
        f(&format!("{prefix}bias"), &mut self.beta);
    }
}

/// 2x2 average pooling (halves H and W, which must be even).
pub fn avg_pool2<T: Float>(x: ArrayView4<'_, T>) -> Array4<T> {
    let (n, c, h, w) = x.dim();
    let q = T::cast(0.25);
    Array4::from_shape_fn((n, c, h / 2, w / 2), |(b, ci, y, xx)| {
        (x[[b, ci, 2 * y, 2 * xx]]
            + x[[b, ci, 2 * y + 1, 2 * xx]]
            + x[[b, ci, 2 * y, 2 * xx + 1]]
            + x[[b, ci, 2 * y + 1, 2 * xx + 1]])
            * q
    })
}

/// The backward pass of [`avg_pool2`].
pub fn avg_pool2_backward<T: Float>(g: ArrayView4<'_, T>) -> Array4<T> {
    let (n, c, h, w) = g.dim();
    let q = T::cast(0.25);
    Array4::from_shape_fn((n, c, 2 * h, 2 * w), |(b, ci, y, xx)| {
        g[[b, ci, y / 2, xx / 2]] * q
    })
}

/// Nearest-neighbour 2x upsampling.
pub fn upsample2<T: Float>(x: ArrayView4<'_, T>) -> Array4<T> {
    let (n, c, h, w) = x.dim();
    Array4::from_shape_fn((n, c, 2 * h, 2 * w), |(b, ci, y, xx)| x[[b, ci, y / 2, xx / 2]])
}

/// The backward pass of [`upsample2`].
pub fn upsample2_backward<T: Float>(g: ArrayView4<'_, T>) -> Array4<T> {
    let (n, c, h, w) = g.dim();
    Array4::from_shape_fn((n, c, h / 2, w / 2), |(b, ci, y, xx)| {
        g[[b, ci, 2 * y, 2 * xx]]
            + g[[b, ci, 2 * y + 1, 2 * xx]]
            + g[[b, ci, 2 * y, 2 * xx + 1]]
            + g[[b, ci, 2 * y + 1, 2 * xx + 1]]
    })
}

/// Concatenation along channels, and its backward split.
pub fn concat_channels<T: Float>(a: ArrayView4<'_, T>, b: ArrayView4<'_, T>) -> Array4<T> {
    ndarray::concatenate(Axis(1), &[a, b]).expect("same N, H, W")
}

pub fn split_channels<T: Float>(g: ArrayView4<'_, T>, ca: usize) -> (Array4<T>, Array4<T>) {
    (
        g.slice(s![.., ..ca, .., ..]).to_owned(),
        g.slice(s![.., ca.., .., ..]).to_owned(),
    )
}

/// Per-channel bias `e[n, c]` broadcast over H and W.
pub fn add_channel_bias<T: Float>(x: &mut Array4<T>, e: ArrayView2<'_, T>) {
    let (n, c, _, _) = x.dim();
    for b in 0..n {
        for ci in 0..c {
            let v = e[[b, ci]];
            x.slice_mut(s![b, ci, .., ..]).mapv_inplace(|u| u + v);
        }
    }
}

/// The gradient of [`add_channel_bias`] with respect to `e`.
pub fn channel_bias_grad<T: Float>(g: ArrayView4<'_, T>) -> Array2<T> {
    g.sum_axis(Axis(3)).sum_axis(Axis(2))
}

/// Mean of `w_i * mean_j (pred - target)^2` over the batch (axis 0), and its gradient.
pub fn weighted_mse<T: Float, D: ndarray::Dimension + ndarray::RemoveAxis>(
    pred: &Array<T, D>,
    target: &Array<T, D>,
    weights: &[f64],
) -> (f64, Array<T, D>) {
    let n = pred.shape()[0];
    let per = pred.len() / n;
    let mut grad = pred - target;
    let mut loss = 0.0;
    for (b, mut g) in grad.axis_iter_mut(Axis(0)).enumerate() {
        let w = weights[b];
        loss += w * g.iter().map(|v| v.as_f64().powi(2)).sum::<f64>() / per as f64;
        let k = T::cast(2.0 * w / (per * n) as f64);
        g.mapv_inplace(|v| v * k);
    }
    (loss / n as f64, grad)
}

/// A vector of the parameters' values, in visiting order (for gradient checks).
pub fn flat_params<T: Float, M: Module<T> + ?Sized>(m: &mut M) -> Array1<T> {
    let mut v = Vec::new();
    m.visit("", &mut |_, p| v.extend(p.value.iter().copied()));
    Array1::from(v)
}
