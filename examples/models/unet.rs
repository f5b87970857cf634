//! A small convolutional U-Net denoiser (Ronneberger et al. 2015, in the DDPM arrangement of Ho
//! et al. 2020): residual blocks of GroupNorm, SiLU and 3x3 convolutions with the timestep
//! embedding added in each block, average-pool down / nearest up sampling, skip connections
//! by concatenation. Weights are saved and loaded as `safetensors`.

use std::collections::HashMap;
use std::path::Path;

use diffusion_samplers::{BoxError, Denoiser, Float, ForwardProcess, LossWeighting, NoiseLevel, Prediction};
use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Ix4};
use rand::Rng;

use super::nn::{
    Adam, Conv2d, GroupNorm, Linear, Module, Param, Silu, add_channel_bias, avg_pool2, avg_pool2_backward,
    channel_bias_grad, concat_channels, sinusoidal, split_channels, upsample2, upsample2_backward,
    weighted_mse,
};

/// The largest group count <= 8 with at least 4 channels per group. (With one channel per
/// group, normalisation would cancel the per-channel timestep embedding added before it.)
fn groups(c: usize) -> usize {
    (1..=8)
        .rev()
        .find(|&g| c.is_multiple_of(g) && c / g >= 4)
        .unwrap_or(1)
}

/// `x + conv2(silu(gn2(conv1(silu(gn1(x))) + proj(silu(emb)))))`, with a 1x1 convolution on
/// the skip path when the channel count changes.
#[derive(Clone, Debug)]
pub struct ResBlock<T> {
    gn1: GroupNorm<T>,
    act1: Silu<T>,
    conv1: Conv2d<T>,
    emb_act: Silu<T>,
    emb_proj: Linear<T>,
    gn2: GroupNorm<T>,
    act2: Silu<T>,
    conv2: Conv2d<T>,
    skip: Option<Conv2d<T>>,
}

impl<T: Float> ResBlock<T> {
    pub fn new<R: Rng + ?Sized>(cin: usize, cout: usize, emb: usize, rng: &mut R) -> Self {
        ResBlock {
            gn1: GroupNorm::new(groups(cin), cin),
            act1: Silu::new(),
            conv1: Conv2d::new(cin, cout, 3, 2f64.sqrt(), rng),
            emb_act: Silu::new(),
            emb_proj: Linear::new(emb, cout, 1.0, rng),
            gn2: GroupNorm::new(groups(cout), cout),
            act2: Silu::new(),
            // A small last convolution: each block starts close to the identity.
            conv2: Conv2d::new(cout, cout, 3, 0.2, rng),
            skip: (cin != cout).then(|| Conv2d::new(cin, cout, 1, 1.0, rng)),
        }
    }

    pub fn forward(&mut self, x: ArrayView4<'_, T>, emb: ArrayView2<'_, T>) -> Array4<T> {
        let h = self.gn1.forward(x);
        let h = self.act1.forward(&h);
        let mut h = self.conv1.forward(h.view());
        let e = self.emb_act.forward(&emb.to_owned());
        let e = self.emb_proj.forward(e.view());
        add_channel_bias(&mut h, e.view());
        let h = self.gn2.forward(h.view());
        let h = self.act2.forward(&h);
        let h = self.conv2.forward(h.view());
        match &mut self.skip {
            Some(s) => h + s.forward(x),
            None => h + x,
        }
    }

    /// Returns the gradients at the input and at the embedding.
    pub fn backward(&mut self, g: ArrayView4<'_, T>) -> (Array4<T>, Array2<T>) {
        let dh = self.conv2.backward(g);
        let dh = self.act2.backward(&dh);
        let dh = self.gn2.backward(dh.view());
        let de = self.emb_proj.backward(channel_bias_grad(dh.view()).view());
        let demb = self.emb_act.backward(&de);
        let dh = self.conv1.backward(dh.view());
        let dh = self.act1.backward(&dh);
        let dx = self.gn1.backward(dh.view());
        let dskip = match &mut self.skip {
            Some(s) => s.backward(g),
            None => g.to_owned(),
        };
        (dx + dskip, demb)
    }
}

impl<T: Float> Module<T> for ResBlock<T> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        self.gn1.visit(&format!("{prefix}norm1."), f);
        self.conv1.visit(&format!("{prefix}conv1."), f);
        self.emb_proj.visit(&format!("{prefix}time_emb_proj."), f);
        self.gn2.visit(&format!("{prefix}norm2."), f);
        self.conv2.visit(&format!("{prefix}conv2."), f);
        if let Some(s) = &mut self.skip {
            s.visit(&format!("{prefix}conv_shortcut."), f);
        }
    }
}

/// One-channel images of side divisible by 4; base width `c` (c, 2c, 2c channels at full, half
/// and quarter resolution).
#[derive(Clone, Debug)]
pub struct UNet<T> {
    pub prediction: Prediction,
    temb1: Linear<T>,
    temb_act: Silu<T>,
    temb2: Linear<T>,
    conv_in: Conv2d<T>,
    down0: ResBlock<T>,
    down1: ResBlock<T>,
    mid: ResBlock<T>,
    up1: ResBlock<T>,
    up0: ResBlock<T>,
    norm_out: GroupNorm<T>,
    act_out: Silu<T>,
    conv_out: Conv2d<T>,
    c: usize,
}

/// Width of the sinusoidal timestep features.
const TEMB: usize = 32;

impl<T: Float> UNet<T> {
    pub fn new<R: Rng + ?Sized>(prediction: Prediction, c: usize, rng: &mut R) -> Self {
        let e = 4 * c;
        UNet {
            prediction,
            temb1: Linear::new(TEMB, e, 2f64.sqrt(), rng),
            temb_act: Silu::new(),
            temb2: Linear::new(e, e, 1.0, rng),
            conv_in: Conv2d::new(1, c, 3, 1.0, rng),
            down0: ResBlock::new(c, c, e, rng),
            down1: ResBlock::new(c, 2 * c, e, rng),
            mid: ResBlock::new(2 * c, 2 * c, e, rng),
            up1: ResBlock::new(4 * c, 2 * c, e, rng),
            up0: ResBlock::new(3 * c, c, e, rng),
            norm_out: GroupNorm::new(groups(c), c),
            act_out: Silu::new(),
            conv_out: Conv2d::new(c, 1, 3, 0.1, rng),
            c,
        }
    }

    /// The model output for images `x` (`[n, 1, h, w]`) at timesteps `t` (one per image).
    pub fn forward(&mut self, x: ArrayView4<'_, T>, t: &[f64]) -> Array4<T> {
        let e = sinusoidal::<T>(t, TEMB);
        let e = self.temb1.forward(e.view());
        let e = self.temb_act.forward(&e);
        let e = self.temb2.forward(e.view());
        let h = self.conv_in.forward(x);
        let s0 = self.down0.forward(h.view(), e.view());
        let s1 = self.down1.forward(avg_pool2(s0.view()).view(), e.view());
        let m = self.mid.forward(avg_pool2(s1.view()).view(), e.view());
        let u1 = self.up1.forward(
            concat_channels(upsample2(m.view()).view(), s1.view()).view(),
            e.view(),
        );
        let u0 = self.up0.forward(
            concat_channels(upsample2(u1.view()).view(), s0.view()).view(),
            e.view(),
        );
        let h = self.norm_out.forward(u0.view());
        let h = self.act_out.forward(&h);
        self.conv_out.forward(h.view())
    }

    /// Back-propagates `g` (the loss gradient at the output) into the parameters' gradients.
    pub fn backward(&mut self, g: ArrayView4<'_, T>) {
        let c = self.c;
        let dh = self.conv_out.backward(g);
        let dh = self.act_out.backward(&dh);
        let dh = self.norm_out.backward(dh.view());
        let (dcat0, de_up0) = self.up0.backward(dh.view());
        let (du1, ds0) = split_channels(dcat0.view(), 2 * c);
        let (dcat1, de_up1) = self.up1.backward(upsample2_backward(du1.view()).view());
        let (dm, ds1) = split_channels(dcat1.view(), 2 * c);
        let (dmid_in, de_mid) = self.mid.backward(upsample2_backward(dm.view()).view());
        let ds1 = ds1 + avg_pool2_backward(dmid_in.view());
        let (dd1_in, de_d1) = self.down1.backward(ds1.view());
        let ds0 = ds0 + avg_pool2_backward(dd1_in.view());
        let (dh, de_d0) = self.down0.backward(ds0.view());
        self.conv_in.backward(dh.view());
        let de = de_up0 + de_up1 + de_mid + de_d1 + de_d0;
        let de = self.temb2.backward(de.view());
        let de = self.temb_act.backward(&de);
        self.temb1.backward(de.view());
    }

    /// Writes the weights as `safetensors` (f32 or f64, as `T`), names in diffusers' style.
    pub fn save(&mut self, path: &Path) -> Result<(), BoxError> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let wide = std::mem::size_of::<T>() == 8;
        self.visit("", &mut |name, p| {
            let mut bytes = Vec::with_capacity(p.value.len() * if wide { 8 } else { 4 });
            for v in p.value.iter() {
                if wide {
                    bytes.extend_from_slice(&v.as_f64().to_le_bytes());
                } else {
                    bytes.extend_from_slice(&(v.as_f64() as f32).to_le_bytes());
                }
            }
            tensors.push((name.to_string(), p.value.shape().to_vec(), bytes));
        });
        let dtype = if wide {
            safetensors::Dtype::F64
        } else {
            safetensors::Dtype::F32
        };
        let views = tensors
            .iter()
            .map(|(n, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(dtype, s.clone(), b)?,
                ))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let meta = HashMap::from([
            ("prediction".to_string(), format!("{:?}", self.prediction)),
            ("base_channels".to_string(), self.c.to_string()),
        ]);
        let bytes = safetensors::serialize(views, Some(meta))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, bytes)?;
        Ok(())
    }

    /// Reads weights written by [`save`](Self::save) (any float width) into this model, which
    /// must have the same architecture.
    pub fn load(&mut self, path: &Path) -> Result<(), BoxError> {
        let bytes = std::fs::read(path)?;
        let st = safetensors::SafeTensors::deserialize(&bytes)?;
        let mut err: Option<String> = None;
        self.visit("", &mut |name, p| {
            if err.is_some() {
                return;
            }
            let t = match st.tensor(name) {
                Ok(t) => t,
                Err(e) => {
                    err = Some(format!("{name}: {e}"));
                    return;
                }
            };
            if t.shape() != p.value.shape() {
                err = Some(format!(
                    "{name}: shape {:?}, expected {:?}",
                    t.shape(),
                    p.value.shape()
                ));
                return;
            }
            let vals: Vec<f64> = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
                safetensors::Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
                d => {
                    err = Some(format!("{name}: dtype {d:?}"));
                    return;
                }
            };
            for (w, v) in p.value.iter_mut().zip(vals) {
                *w = T::cast(v);
            }
        });
        match err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

impl<T: Float> Module<T> for UNet<T> {
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param<T>)) {
        self.temb1.visit(&format!("{prefix}time_embedding.linear_1."), f);
        self.temb2.visit(&format!("{prefix}time_embedding.linear_2."), f);
        self.conv_in.visit(&format!("{prefix}conv_in."), f);
        self.down0.visit(&format!("{prefix}down.0."), f);
        self.down1.visit(&format!("{prefix}down.1."), f);
        self.mid.visit(&format!("{prefix}mid."), f);
        self.up1.visit(&format!("{prefix}up.1."), f);
        self.up0.visit(&format!("{prefix}up.0."), f);
        self.norm_out.visit(&format!("{prefix}conv_norm_out."), f);
        self.conv_out.visit(&format!("{prefix}conv_out."), f);
    }
}

impl<T: Float> Denoiser<T, Ix4> for UNet<T> {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn denoise(&mut self, x: ArrayView4<'_, T>, level: &NoiseLevel) -> Result<Array4<T>, BoxError> {
        let t = vec![level.t; x.dim().0];
        Ok(self.forward(x, &t))
    }
}

/// One data-parallel training step: the batch is split across `replicas` (one per thread),
/// each computes its part's gradients with `rayon`, and their batch-weighted sum updates
/// `model`. Returns the loss.
pub fn train_step_parallel<T: Float, R: Rng + ?Sized>(
    model: &mut UNet<T>,
    replicas: &mut [UNet<T>],
    opt: &mut Adam,
    fp: &ForwardProcess,
    x0: ArrayView4<'_, T>,
    weighting: LossWeighting,
    rng: &mut R,
) -> f64 {
    use rayon::prelude::*;
    let ex = fp
        .training_example(x0, model.prediction, weighting, rng)
        .expect("a batched array");
    let n = x0.dim().0;
    let k = replicas.len().min(n);
    let per = n.div_ceil(k);
    let mut values = Vec::new();
    model.visit("", &mut |_, p| values.push(p.value.clone()));
    let results: Vec<(f64, usize)> = replicas[..k]
        .par_iter_mut()
        .enumerate()
        .map(|(i, r)| {
            let mut j = 0;
            r.visit("", &mut |_, p| {
                p.value.assign(&values[j]);
                j += 1;
            });
            let rows = i * per..((i + 1) * per).min(n);
            let t: Vec<f64> = ex.timesteps[rows.clone()].iter().map(|&t| t as f64).collect();
            r.zero_grad();
            let out = r.forward(ex.noisy.slice(ndarray::s![rows.clone(), .., .., ..]), &t);
            let target = ex.target.slice(ndarray::s![rows.clone(), .., .., ..]).to_owned();
            let (loss, g) = weighted_mse(&out, &target, &ex.weights[rows.clone()]);
            r.backward(g.view());
            (loss, rows.len())
        })
        .collect();
    model.zero_grad();
    let mut grads: Vec<_> = Vec::new();
    model.visit("", &mut |_, p| grads.push(p.grad.clone()));
    for (r, &(_, m)) in replicas[..k].iter_mut().zip(&results) {
        let w = T::cast(m as f64 / n as f64);
        let mut j = 0;
        r.visit("", &mut |_, p| {
            grads[j].scaled_add(w, &p.grad);
            j += 1;
        });
    }
    let mut j = 0;
    model.visit("", &mut |_, p| {
        p.grad.assign(&grads[j]);
        j += 1;
    });
    opt.step(model);
    results.iter().map(|&(l, m)| l * m as f64).sum::<f64>() / n as f64
}

/// One training step on a batch `x0`: returns the loss.
pub fn train_step<T: Float, R: Rng + ?Sized>(
    model: &mut UNet<T>,
    opt: &mut Adam,
    fp: &ForwardProcess,
    x0: ArrayView4<'_, T>,
    weighting: LossWeighting,
    rng: &mut R,
) -> f64 {
    let ex = fp
        .training_example(x0, model.prediction, weighting, rng)
        .expect("a batched array");
    let t: Vec<f64> = ex.timesteps.iter().map(|&t| t as f64).collect();
    model.zero_grad();
    let out = model.forward(ex.noisy.view(), &t);
    let (loss, g) = weighted_mse(&out, &ex.target, &ex.weights);
    model.backward(g.view());
    opt.step(model);
    loss
}
