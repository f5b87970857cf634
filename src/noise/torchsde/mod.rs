//! torchsde's Brownian tree, as k-diffusion's and ComfyUI's `BrownianTreeNoiseSampler` use it.

mod seed_sequence;

use std::io::Write;

use ndarray::{ArrayViewMut, Dimension};

use super::{NoiseSource, TorchCpuKernel, TorchGenerator};
use crate::error::{Error, Result};
use crate::float::{Float, FloatSliceMut};
use crate::grid::ScheduleFamily;
use crate::level::NoiseLevel;
use seed_sequence::SeedSequence;

/// torchsde's `pool_size` for the nodes' `SeedSequence`s.
const POOL_SIZE: usize = 24;
/// The deepest node a query may need (keys are `u64` paths); torchsde itself recurses without
/// bound on the queries that would need more (see [`TorchBrownianTree`]).
const MAX_DEPTH: u32 = 63;

/// CPython's `round(x, 6)`: the exact decimal value rounded half to even at six decimals, then
/// the nearest double (the sign of a zero kept) — torchsde's `tol = 1e-6` quantisation.
fn round6(x: f64) -> f64 {
    // From 2^52 on every double is an integer: nothing to round (and the text would not fit).
    if !x.is_finite() || x.abs() >= 4_503_599_627_370_496.0 {
        return x;
    }
    let mut buf = [0u8; 48];
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    // At most 16 integer digits, a sign, a point and 6 decimals: always fits.
    if write!(cur, "{x:.6}").is_err() {
        return x;
    }
    let n = cur.position() as usize;
    let r = std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(x);
    if r == 0.0 { 0.0f64.copysign(x) } else { r }
}

/// The float types a tree computes in (its tensors' dtype): each keeps its own node cache.
trait TreeFloat: Float {
    fn cache(tree: &mut Tree) -> &mut NodeCache<Self>;
    fn noise(tree: &mut TorchBrownianTree) -> &mut Vec<Self>;
    fn randn(g: &mut TorchGenerator, out: &mut [Self]);
}

impl TreeFloat for f32 {
    fn cache(tree: &mut Tree) -> &mut NodeCache<f32> {
        &mut tree.cache32
    }
    fn noise(tree: &mut TorchBrownianTree) -> &mut Vec<f32> {
        &mut tree.noise32
    }
    fn randn(g: &mut TorchGenerator, out: &mut [f32]) {
        g.randn_f32(out);
    }
}

impl TreeFloat for f64 {
    fn cache(tree: &mut Tree) -> &mut NodeCache<f64> {
        &mut tree.cache64
    }
    fn noise(tree: &mut TorchBrownianTree) -> &mut Vec<f64> {
        &mut tree.noise64
    }
    fn randn(g: &mut TorchGenerator, out: &mut [f64]) {
        g.randn_f64(out);
    }
}

/// A node's increment `W(end) - W(start)`, kept while it is among the most recently used.
#[derive(Clone, Debug)]
struct Slot<T> {
    key: u64,
    depth: u32,
    used: u64,
    w: Vec<T>,
}

/// The increments of recently used nodes (least recently used evicted; buffers reused).
#[derive(Clone, Debug)]
struct NodeCache<T> {
    slots: Vec<Slot<T>>,
    clock: u64,
}

impl<T> NodeCache<T> {
    const fn new() -> Self {
        NodeCache {
            slots: Vec::new(),
            clock: 0,
        }
    }

    fn find(&mut self, key: u64, depth: u32) -> Option<usize> {
        let i = self.slots.iter().position(|s| s.key == key && s.depth == depth)?;
        self.clock += 1;
        self.slots[i].used = self.clock;
        Some(i)
    }
}

/// One torchsde `BrownianTree` (one seed): its entropy and its node caches.
#[derive(Clone, Debug)]
struct Tree {
    entropy: u64,
    cache32: NodeCache<f32>,
    cache64: NodeCache<f64>,
}

/// torchsde's Brownian tree (`torchsde.BrownianTree`, a `BrownianInterval` with `tol = 1e-6`,
/// `pool_size = 24`, halfway splits and no Lévy area) as k-diffusion's
/// `BrownianTreeNoiseSampler` / `BatchedBrownianTree` and ComfyUI's use it: one tree per seed,
/// each over `shape`, queried for the normalised increment
///
/// ```text
/// normalized(sigma, sigma_next) = (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)
/// ```
///
/// (`W(b) - W(a)` for `a > b` is minus the increment over `[b, a]`, as k-diffusion's sign
/// handling gives). Its values are those of torchsde 0.2.6 on the CPU, computed the same way:
///
/// * each node's seed comes from numpy's `SeedSequence(entropy=seed, spawn_key=(key, depth),
///   pool_size=24)` (the root's from `SeedSequence(seed, pool_size=24)`), its noise from
///   `torch.Generator("cpu").manual_seed(node_seed)` and `torch.randn(shape)` in the tree's
///   dtype ([`TorchGenerator`], bit for bit, with its [`TorchCpuKernel`]);
/// * the root increment is `randn * sqrt(t1 - t0)`; a node splits at its midpoint rounded to 6
///   decimals (Python's `round(x, 6)`), the left child's increment being the Brownian bridge
///   `left_diff * W * h_recip + sqrt(left_diff * right_diff * h_recip) * noise` and the right
///   child's the rest, in the same order of floating-point operations as torchsde;
/// * query times are clamped to the range and rounded to 6 decimals; an interval's increment is
///   the sum, left to right, of the increments of the largest nodes that tile it.
///
/// So the increments agree with torchsde's bit for bit (tests/torchsde_tree.rs, float32 and
/// float64, several seeds, batches of seeds, repeated, reversed and out-of-range queries). The
/// normalisation divides by `sqrt(|sigma_next - sigma|)` computed in the array's float type
/// with an IEEE square root; torch computes that root with Intel MKL, whose square root is
/// correctly rounded on some CPUs and one ulp off for a sixth of float32 inputs on others (the
/// AMD EPYC machines the fixtures were made on), so normalised values agree to within one ulp
/// of that factor.
///
/// Values depend only on the seeds and the rounded query times, never on which queries came
/// before (as in torchsde); recently used nodes are cached
/// ([`with_cache_nodes`](Self::with_cache_nodes)), so consecutive sampler steps compute about
/// 25 new nodes each. One exception, documented rather than reproduced: a query whose ends
/// differ but round to the same 6-decimal time gives zeros here, where torchsde recurses until
/// Python's recursion limit (or, after other queries, returns a value that depends on them).
///
/// As a [`NoiseSource`] it answers samplers' interval requests (`fill_interval`) with the
/// normalised increment between the levels' sigma-space sigmas (k-diffusion's `sigma / alpha`,
/// or the flow sigma on flow grids, as ComfyUI does); draws without an interval (a starting
/// sample) come from a [`TorchGenerator`] seeded with the first seed — which is ComfyUI's
/// starting noise for that seed.
///
/// ```
/// use diffusion_samplers::noise::TorchBrownianTree;
/// use ndarray::Array2;
/// // k-diffusion: BrownianTreeNoiseSampler(x, 0.0292, 14.6146, seed=[3, 4]) for x of shape (2, 8)
/// let mut tree = TorchBrownianTree::new(&[3, 4], 0.0292, 14.6146, &[8])?;
/// let mut z = Array2::<f32>::zeros((2, 8));
/// tree.normalized(14.6146, 7.0, z.view_mut())?;
/// let mut w = Array2::<f32>::zeros((2, 8));
/// tree.normalized(14.6146, 10.0, w.view_mut())?;
/// let mut v = Array2::<f32>::zeros((2, 8));
/// tree.normalized(10.0, 7.0, v.view_mut())?;
/// // The noise of an interval is made of the noise of its parts.
/// let parts = (&w * 4.6146f32.sqrt() + &v * 3f32.sqrt()) / 7.6146f32.sqrt();
/// assert!(z.iter().zip(&parts).all(|(a, b)| (a - b).abs() < 1e-5));
/// # Ok::<(), diffusion_samplers::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct TorchBrownianTree {
    trees: Vec<Tree>,
    /// Elements of one tree's tensor.
    per_tree: usize,
    /// The range as given (the root increment's width uses these).
    t0: f64,
    t1: f64,
    /// The range rounded to 6 decimals (the root node's bounds).
    start: f64,
    end: f64,
    /// -1 when the range was given as (max, min), as k-diffusion's sign handling gives.
    sign: f64,
    family: ScheduleFamily,
    capacity: usize,
    /// The generator seeded for each node's noise.
    generator: TorchGenerator,
    /// The nodes tiling the current query, left to right: (key, depth).
    tiling: Vec<(u64, u32)>,
    /// A node's noise (one tree's tensor).
    noise32: Vec<f32>,
    noise64: Vec<f64>,
    /// A contiguous buffer for outputs of another layout.
    out32: Vec<f32>,
    out64: Vec<f64>,
}

impl PartialEq for TorchBrownianTree {
    fn eq(&self, other: &Self) -> bool {
        let seeds = |t: &Self| t.trees.iter().map(|t| t.entropy).collect::<Vec<_>>();
        seeds(self) == seeds(other)
            && (
                self.per_tree,
                self.t0,
                self.t1,
                self.family,
                self.generator.kernel(),
            ) == (
                other.per_tree,
                other.t0,
                other.t1,
                other.family,
                other.generator.kernel(),
            )
    }
}

impl TorchBrownianTree {
    /// Nodes kept per tree and float type by default.
    pub const CACHE_NODES: usize = 96;

    /// k-diffusion's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed)`: one tree per
    /// seed, each over `shape`. For `seed=[s_0, …, s_{B-1}]` (k-diffusion's batched trees) pass
    /// the seeds and the shape of one batch element; for a single integer `seed=s` — what
    /// ComfyUI and k-diffusion's samplers pass — pass `&[s]` and the whole shape of `x` (one
    /// tree over the whole batch, as there). `sigma_min > sigma_max` is allowed and flips the
    /// sign, as in k-diffusion.
    ///
    /// # Errors
    /// [`Error::InvalidParameter`] for no seeds, an empty shape of zero elements, or a range
    /// that is not finite, non-negative and of positive length after rounding to 6 decimals.
    pub fn new(seeds: &[u64], sigma_min: f64, sigma_max: f64, shape: &[usize]) -> Result<Self> {
        super::check_motion(seeds.len(), [("sigma_min", sigma_min), ("sigma_max", sigma_max)])?;
        let per_tree = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let per_tree = match per_tree {
            Some(n) if n > 0 => n,
            _ => {
                return Err(Error::InvalidParameter {
                    name: "shape",
                    value: 0.0,
                    reason: "a tree needs at least one element (and fewer than usize::MAX)",
                });
            }
        };
        let (t0, t1, sign) = if sigma_min < sigma_max {
            (sigma_min, sigma_max, 1.0)
        } else {
            (sigma_max, sigma_min, -1.0)
        };
        let (start, end) = (round6(t0), round6(t1));
        if start >= end {
            return Err(Error::InvalidParameter {
                name: "sigma_max",
                value: sigma_max,
                reason: "the range must be longer than torchsde's tolerance 1e-6",
            });
        }
        Ok(TorchBrownianTree {
            trees: seeds
                .iter()
                .map(|&entropy| Tree {
                    entropy,
                    cache32: NodeCache::new(),
                    cache64: NodeCache::new(),
                })
                .collect(),
            per_tree,
            t0,
            t1,
            start,
            end,
            sign,
            family: ScheduleFamily::Vp,
            capacity: Self::CACHE_NODES,
            generator: TorchGenerator::new(0),
            tiling: Vec::new(),
            noise32: Vec::new(),
            noise64: Vec::new(),
            out32: Vec::new(),
            out64: Vec::new(),
        })
    }

    /// Which sigma-space sigma the [`NoiseSource`] methods query for a level (default
    /// [`ScheduleFamily::Vp`]: `sigma / alpha`, also right for VE levels; `Flow`: the flow sigma).
    pub fn with_family(mut self, family: ScheduleFamily) -> Self {
        self.family = family;
        self
    }

    /// The torch float32 kernel of the nodes' noise (see [`TorchGenerator::with_kernel`]).
    pub fn with_kernel(mut self, kernel: TorchCpuKernel) -> Self {
        self.generator = TorchGenerator::new(0).with_kernel(kernel);
        self
    }

    /// Keeps the increments of up to `nodes` recently used nodes per tree and float type (at
    /// least 2; default [`CACHE_NODES`](Self::CACHE_NODES)): memory against recomputation.
    pub fn with_cache_nodes(mut self, nodes: usize) -> Self {
        self.capacity = nodes.max(2);
        for t in &mut self.trees {
            t.cache32.slots.truncate(self.capacity);
            t.cache64.slots.truncate(self.capacity);
        }
        self
    }

    /// The seeds, one per tree.
    pub fn seeds(&self) -> Vec<u64> {
        self.trees.iter().map(|t| t.entropy).collect()
    }

    /// The number of elements it fills: trees times the elements of one tree's shape.
    pub fn len(&self) -> usize {
        self.trees.len() * self.per_tree
    }

    /// Always `false`: a tree has at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// k-diffusion's `noise_sampler(sigma, sigma_next)`: fills `out` (all trees' elements, in
    /// logical order) with `(W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|)`, computed in
    /// `out`'s float type. Times outside the range are clamped to it (torchsde warns).
    ///
    /// # Errors
    /// [`Error::NoiseSize`] if `out` does not have [`len`](Self::len) elements;
    /// [`Error::InvalidParameter`] for a non-finite time, `sigma == sigma_next` (where
    /// k-diffusion divides zero by zero), or noise beyond `F`'s range (a range of sigmas too
    /// wide for `f32`; `out` then holds NaN).
    pub fn normalized<F: Float, D: Dimension>(
        &mut self,
        sigma: f64,
        sigma_next: f64,
        out: ArrayViewMut<'_, F, D>,
    ) -> Result<()> {
        self.check_query(sigma, sigma_next, out.len())?;
        if F::cast(sigma) == F::cast(sigma_next) {
            return Err(Error::InvalidParameter {
                name: "sigma_next",
                value: sigma_next,
                reason: "equals sigma: a zero-length interval has no normalised increment",
            });
        }
        self.fill_checked(sigma, sigma_next, true, out)
    }

    /// The increment itself, `W(sigma_next) - W(sigma)` (k-diffusion's `tree(t0, t1)` with its
    /// sign handling), without the normalisation; zeros for equal times.
    ///
    /// # Errors
    /// As [`normalized`](Self::normalized), except that equal times are allowed.
    pub fn increment<F: Float, D: Dimension>(
        &mut self,
        sigma: f64,
        sigma_next: f64,
        out: ArrayViewMut<'_, F, D>,
    ) -> Result<()> {
        self.check_query(sigma, sigma_next, out.len())?;
        self.fill_checked(sigma, sigma_next, false, out)
    }

    /// [`fill_out`](Self::fill_out), then an error (and NaN) if the values overflow `F`.
    fn fill_checked<F: Float, D: Dimension>(
        &mut self,
        sigma: f64,
        sigma_next: f64,
        normalize: bool,
        mut out: ArrayViewMut<'_, F, D>,
    ) -> Result<()> {
        self.fill_out(sigma, sigma_next, normalize, out.view_mut());
        if out.iter().all(|v| v.is_finite()) {
            return Ok(());
        }
        out.fill(F::nan());
        Err(Error::InvalidParameter {
            name: "sigma_max",
            value: self.t1,
            reason: "the noise overflows the array's float type (a range or time beyond its reach)",
        })
    }

    /// A query's length and times.
    fn check_query(&self, sigma: f64, sigma_next: f64, len: usize) -> Result<()> {
        if len != self.len() {
            return Err(Error::NoiseSize {
                expected: self.len(),
                got: len,
            });
        }
        for (name, v) in [("sigma", sigma), ("sigma_next", sigma_next)] {
            if !v.is_finite() {
                return Err(Error::InvalidParameter {
                    name,
                    value: v,
                    reason: "a Brownian tree's query time must be finite",
                });
            }
        }
        Ok(())
    }

    /// Fills `out` (of the right length, finite times) with the increment, normalised or not.
    fn fill_out<F: Float, D: Dimension>(
        &mut self,
        sigma: f64,
        sigma_next: f64,
        normalize: bool,
        mut out: ArrayViewMut<'_, F, D>,
    ) {
        if let Some(s) = out.as_slice_mut() {
            match F::slice_mut(s) {
                FloatSliceMut::F32(s) => self.fill_typed(sigma, sigma_next, normalize, s),
                FloatSliceMut::F64(s) => self.fill_typed(sigma, sigma_next, normalize, s),
            }
            return;
        }
        // Another layout: through a kept contiguous buffer, in logical order.
        match F::slice_mut(&mut []) {
            FloatSliceMut::F32(_) => {
                let mut buf = std::mem::take(&mut self.out32);
                buf.resize(out.len(), 0.0);
                self.fill_typed(sigma, sigma_next, normalize, &mut buf);
                for (o, &v) in out.iter_mut().zip(&buf) {
                    *o = F::cast(f64::from(v));
                }
                self.out32 = buf;
            }
            FloatSliceMut::F64(_) => {
                let mut buf = std::mem::take(&mut self.out64);
                buf.resize(out.len(), 0.0);
                self.fill_typed(sigma, sigma_next, normalize, &mut buf);
                for (o, &v) in out.iter_mut().zip(&buf) {
                    *o = F::cast(v);
                }
                self.out64 = buf;
            }
        }
    }

    /// k-diffusion's `BatchedBrownianTree.__call__` (then the normalisation) in the dtype `T`.
    fn fill_typed<T: TreeFloat>(&mut self, sigma: f64, sigma_next: f64, normalize: bool, out: &mut [T]) {
        // Times are tensors of the array's dtype.
        let (a, b) = (T::cast(sigma).as_f64(), T::cast(sigma_next).as_f64());
        let (lo, hi, sign) = if a < b { (a, b, 1.0) } else { (b, a, -1.0) };
        let s = T::cast(self.sign * sign);
        for k in 0..self.trees.len() {
            let part = &mut out[k * self.per_tree..(k + 1) * self.per_tree];
            self.tree_increment(k, lo, hi, part);
            for v in part.iter_mut() {
                *v *= s;
            }
        }
        if normalize {
            let d = (T::cast(b) - T::cast(a)).abs().sqrt();
            for v in out.iter_mut() {
                *v /= d;
            }
        }
    }

    /// One torchsde tree's `tree(ta, tb)` for `ta <= tb` into `out`.
    fn tree_increment<T: TreeFloat>(&mut self, k: usize, ta: f64, tb: f64, out: &mut [T]) {
        // Clamping compares the unrounded times with the rounded range.
        let clamp = |t: f64| t.max(self.start).min(self.end);
        let (ta, tb) = (clamp(ta), clamp(tb));
        #[allow(clippy::float_cmp, reason = "torchsde's exact test")]
        let same = ta == tb;
        let (ra, rb) = (round6(ta), round6(tb));
        if same || ra >= rb {
            // Equal times: zeros (as torchsde). Distinct times that round together: zeros (torchsde
            // recurses without end; see the type's docs).
            out.fill(T::zero());
            return;
        }
        let mut tiling = std::mem::take(&mut self.tiling);
        tiling.clear();
        let ok = self.tile(ra, rb, &mut tiling);
        if !ok {
            out.fill(T::zero());
            self.tiling = tiling;
            return;
        }
        for (i, &(key, depth)) in tiling.iter().enumerate() {
            let slot = self.node::<T>(k, key, depth);
            let w = &T::cache(&mut self.trees[k]).slots[slot].w;
            if i == 0 {
                out.copy_from_slice(w);
            } else {
                for (o, &v) in out.iter_mut().zip(w) {
                    *o += v;
                }
            }
        }
        self.tiling = tiling;
    }

    /// The largest nodes tiling `[ra, rb]` (rounded, `ra < rb`, within the range), left to right;
    /// `false` if a node would be deeper than [`MAX_DEPTH`] or fail to split.
    fn tile(&self, ra: f64, rb: f64, out: &mut Vec<(u64, u32)>) -> bool {
        // Depth-first, left before right: (key, depth, start, end, query a, query b).
        let mut stack: [(u64, u32, f64, f64, f64, f64); 2 * MAX_DEPTH as usize + 2] =
            [(0, 0, 0.0, 0.0, 0.0, 0.0); 2 * MAX_DEPTH as usize + 2];
        let mut top = 1;
        stack[0] = (0, 0, self.start, self.end, ra, rb);
        while top > 0 {
            top -= 1;
            let (mut key, mut depth, mut s, mut e, a, mut b) = stack[top];
            loop {
                #[allow(clippy::float_cmp, reason = "node bounds are rounded exactly")]
                if a == s && b == e {
                    out.push((key, depth));
                    break;
                }
                let m = round6(0.5 * (e + s));
                if !(s < m && m < e) || depth >= MAX_DEPTH {
                    return false;
                }
                depth += 1;
                if b <= m {
                    (key, e) = (2 * key, m);
                } else if a >= m {
                    (key, s) = (2 * key + 1, m);
                } else {
                    // Left part now, right part after it.
                    if top >= stack.len() {
                        return false;
                    }
                    stack[top] = (2 * key + 1, depth, m, e, m, b);
                    top += 1;
                    (key, e, b) = (2 * key, m, m);
                }
            }
        }
        true
    }

    /// The cache slot of node `(key, depth)` of tree `k`, computed down from the root.
    fn node<T: TreeFloat>(&mut self, k: usize, key: u64, depth: u32) -> usize {
        if let Some(i) = T::cache(&mut self.trees[k]).find(key, depth) {
            return i;
        }
        let mut slot = self.root::<T>(k);
        let (mut s, mut e) = (self.start, self.end);
        for level in 0..depth {
            let shift = depth - 1 - level;
            let (parent_key, child_key) = (key >> (shift + 1), key >> shift);
            let m = round6(0.5 * (e + s));
            let child = if let Some(i) = T::cache(&mut self.trees[k]).find(child_key, level + 1) {
                i
            } else {
                self.split::<T>(k, slot, parent_key, level, (s, m, e), child_key & 1 == 1)
            };
            if child_key & 1 == 1 {
                s = m;
            } else {
                e = m;
            }
            slot = child;
        }
        slot
    }

    /// The root node's slot: `randn(W_seed) * sqrt(t1 - t0)`.
    fn root<T: TreeFloat>(&mut self, k: usize) -> usize {
        if let Some(i) = T::cache(&mut self.trees[k]).find(0, 0) {
            return i;
        }
        let seed = SeedSequence::new(self.trees[k].entropy, &[], POOL_SIZE).first_word();
        let scale = T::cast((self.t1 - self.t0).sqrt());
        let (slot, mut w) = self.take_slot::<T>(k, None);
        w.resize(self.per_tree, T::zero());
        self.generator.manual_seed(u64::from(seed));
        T::randn(&mut self.generator, &mut w);
        for v in w.iter_mut() {
            *v *= scale;
        }
        self.put_slot(k, slot, 0, 0, w);
        slot
    }

    /// Splits the node in `parent` (`(key, depth)`, bounds `(s, m, e)`) and stores the child on
    /// side `right`: torchsde's Brownian bridge.
    fn split<T: TreeFloat>(
        &mut self,
        k: usize,
        parent: usize,
        key: u64,
        depth: u32,
        (s, m, e): (f64, f64, f64),
        right: bool,
    ) -> usize {
        let seed = SeedSequence::new(self.trees[k].entropy, &[key, u64::from(depth)], POOL_SIZE).first_word();
        let h_reciprocal = 1.0 / (e - s);
        let (left_diff, right_diff) = (m - s, e - m);
        let var = left_diff * right_diff * h_reciprocal;
        let (a, c, sd) = (T::cast(left_diff), T::cast(h_reciprocal), T::cast(var.sqrt()));
        let mut noise = std::mem::take(T::noise(self));
        noise.resize(self.per_tree, T::zero());
        self.generator.manual_seed(u64::from(seed));
        T::randn(&mut self.generator, &mut noise);
        let (slot, mut w) = self.take_slot::<T>(k, Some(parent));
        w.resize(self.per_tree, T::zero());
        let pw = &T::cache(&mut self.trees[k]).slots[parent].w;
        for ((o, &p), &z) in w.iter_mut().zip(pw).zip(&noise) {
            let left = a * p * c + sd * z;
            *o = if right { p - left } else { left };
        }
        *T::noise(self) = noise;
        self.put_slot(k, slot, 2 * key + u64::from(right), depth + 1, w);
        slot
    }

    /// A slot to fill (a new one while below capacity, else the least recently used other than
    /// `keep`) and its buffer, taken out.
    fn take_slot<T: TreeFloat>(&mut self, k: usize, keep: Option<usize>) -> (usize, Vec<T>) {
        let capacity = self.capacity;
        let cache = T::cache(&mut self.trees[k]);
        if cache.slots.len() < capacity {
            cache.slots.push(Slot {
                key: u64::MAX,
                depth: u32::MAX,
                used: 0,
                w: Vec::new(),
            });
            return (cache.slots.len() - 1, Vec::new());
        }
        let victim = cache
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != keep)
            .min_by_key(|(_, s)| s.used)
            .map_or(0, |(i, _)| i);
        let s = &mut cache.slots[victim];
        (s.key, s.depth) = (u64::MAX, u32::MAX);
        (victim, std::mem::take(&mut s.w))
    }

    fn put_slot<T: TreeFloat>(&mut self, k: usize, slot: usize, key: u64, depth: u32, w: Vec<T>) {
        let cache = T::cache(&mut self.trees[k]);
        cache.clock += 1;
        cache.slots[slot] = Slot {
            key,
            depth,
            used: cache.clock,
            w,
        };
    }

    /// The motion's time of a level: its sigma-space sigma.
    fn time(&self, level: &NoiseLevel) -> f64 {
        let c = level.alpha + self.family.kappa() * level.sigma;
        if c == 0.0 { f64::INFINITY } else { level.sigma / c }
    }
}

impl<F: Float> NoiseSource<F> for TorchBrownianTree {
    fn fill<D: Dimension>(&mut self, _step: usize, out: ArrayViewMut<'_, F, D>) {
        TorchGenerator::new(self.trees[0].entropy)
            .with_kernel(self.generator.kernel())
            .fill(0, out);
    }

    fn fill_interval<D: Dimension>(
        &mut self,
        _step: usize,
        from: &NoiseLevel,
        to: &NoiseLevel,
        mut out: ArrayViewMut<'_, F, D>,
    ) {
        let (a, b) = (self.time(from), self.time(to));
        if out.len() != self.len() || !a.is_finite() || !b.is_finite() {
            // Reported by the sampler as non-finite noise at this step.
            out.fill(F::nan());
            return;
        }
        if F::cast(a) == F::cast(b) {
            out.fill(F::zero());
            return;
        }
        // Overflow: NaN, which the sampler reports as non-finite noise at this step.
        let _ = self.fill_checked(a, b, true, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round6_is_pythons_round() {
        // Python: round(x, 6) for these (ties at the exact decimal value go to even).
        let cases = [
            (0.0078125, 0.007812),
            (0.0234375, 0.023438),
            (1.0078125, 1.007812),
            (2.5e-7, 0.0),
            (-2.5e-7, -0.0),
            (14.6146, 14.6146),
            (0.029_200_000_688_433_647, 0.0292),
            (7.3219, 7.3219),
            (123_456_789.123_456_5, 123_456_789.123_456),
        ];
        for (x, want) in cases {
            let got = round6(x);
            assert!(
                got.to_bits() == f64::to_bits(want),
                "round({x}, 6) = {got}, want {want}"
            );
        }
        assert!(round6(-1e-9).is_sign_negative());
    }

    #[test]
    fn tiling_covers_the_interval() {
        let t = TorchBrownianTree::new(&[1], 0.0292, 14.6146, &[3]).unwrap();
        let mut v = Vec::new();
        assert!(t.tile(0.5, 3.25, &mut v));
        assert!(!v.is_empty());
        // The first node starts at 0.5, the last ends at 3.25, and each is a dyadic node.
        assert!(v.iter().all(|&(k, d)| d >= 1 && k < (1 << d)));
        v.clear();
        assert!(t.tile(t.start, t.end, &mut v));
        assert_eq!(v, [(0, 0)]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(TorchBrownianTree::new(&[], 0.1, 1.0, &[2]).is_err());
        assert!(TorchBrownianTree::new(&[1], 0.1, 1.0, &[0]).is_err());
        assert!(TorchBrownianTree::new(&[1], 0.1, 0.1000001, &[2]).is_err());
        assert!(TorchBrownianTree::new(&[1], f64::NAN, 1.0, &[2]).is_err());
        let mut t = TorchBrownianTree::new(&[1], 0.1, 1.0, &[2]).unwrap();
        let mut z = ndarray::Array1::<f32>::zeros(3);
        assert!(matches!(
            t.normalized(1.0, 0.5, z.view_mut()),
            Err(Error::NoiseSize { expected: 2, got: 3 })
        ));
        let mut z = ndarray::Array1::<f32>::zeros(2);
        assert!(t.normalized(0.5, 0.5, z.view_mut()).is_err());
        assert!(t.normalized(f64::INFINITY, 0.5, z.view_mut()).is_err());
    }
}
