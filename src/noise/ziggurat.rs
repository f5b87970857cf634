//! A fast standard-normal generator: the ziggurat method (Marsaglia & Tsang 2000) with 1024
//! layers, on xoshiro256++ (Blackman & Vigna 2018). Each `f32` draw takes 32 random bits (10 for
//! the layer, 1 for the sign, 21 for the position — independent bits, as Doornik 2005
//! recommends), each `f64` draw 64 bits; 99.6% of draws are accepted by one integer comparison.
//! Fills run two independent streams interleaved, so that the generator's latency chain does not
//! bound the throughput, and the sign lives in the scale tables (indexed by sign and layer).

/// xoshiro256++: small, fast, passes BigCrush; seeded through splitmix64.
#[derive(Clone, Debug)]
pub(crate) struct Xoshiro256pp {
    s: [u64; 4],
}

pub(crate) fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Xoshiro256pp {
    pub(crate) fn from_seed(mut seed: u64) -> Self {
        let s = [
            splitmix64(&mut seed),
            splitmix64(&mut seed),
            splitmix64(&mut seed),
            splitmix64(&mut seed),
        ];
        Xoshiro256pp { s }
    }

    #[inline(always)]
    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform in (0, 1].
    #[inline(always)]
    fn open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / 9_007_199_254_740_992.0)
    }
}

/// Number of layers.
const N: usize = 1024;
/// The base layer's right edge: the root of the 1024-layer closure condition (bisection; the
/// same procedure gives Marsaglia & Tsang's 3.442619855899 for 128 and 3.6541528853610088 for
/// 256 layers).
const R: f64 = 4.038_849_846_109_504;
/// The common layer area `R f(R) + integral_R^inf f`, `f(x) = exp(-x^2 / 2)`.
const V: f64 = 0.001_226_324_646_353_089_3;

struct Tables {
    /// Layer edges `x[0] = V / f(R) > x[1] = R > ... > x[N] = 0`.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "the sampling tables are derived from it; tests check it")
    )]
    x: Vec<f64>,
    /// `f(x[i])`.
    f: Vec<f64>,
    /// f32 draws, indexed by 11 bits `j` (sign `j >> 10`, layer `j & 1023`): accept position
    /// `u < k21[j]` (21-bit); value `u * s21[j]`, the scale carrying the sign.
    /// Fixed-size arrays: an 11-bit index needs no bounds check.
    k21: Box<[u32; 2 * N]>,
    s21: Box<[f32; 2 * N]>,
    /// f64 draws, the same with a 53-bit position.
    k53: Box<[u64; 2 * N]>,
    s53: Box<[f64; 2 * N]>,
}

fn tables() -> &'static Tables {
    static T: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let pdf = |x: f64| (-0.5 * x * x).exp();
        let mut x = vec![0.0f64; N + 1];
        x[0] = V / pdf(R);
        x[1] = R;
        for i in 1..N {
            let fi = pdf(x[i]) + V / x[i];
            x[i + 1] = if fi >= 1.0 { 0.0 } else { (-2.0 * fi.ln()).sqrt() };
        }
        x[N] = 0.0;
        let f: Vec<f64> = x.iter().map(|&v| pdf(v)).collect();
        let (two21, two53) = ((1u64 << 21) as f64, (1u64 << 53) as f64);
        let k21 = Box::new(std::array::from_fn(|j| (x[j % N + 1] / x[j % N] * two21) as u32));
        let s21 = Box::new(std::array::from_fn(|j| {
            let s = (x[j % N] / two21) as f32;
            if j < N { s } else { -s }
        }));
        let k53 = Box::new(std::array::from_fn(|j| (x[j % N + 1] / x[j % N] * two53) as u64));
        let s53 = Box::new(std::array::from_fn(|j| {
            if j < N { x[j] / two53 } else { -x[j - N] / two53 }
        }));
        Tables {
            x,
            f,
            k21,
            s21,
            k53,
            s53,
        }
    })
}

/// The slow path of a rejected candidate `x` in layer `i`: the tail beyond `R` for the base
/// layer (Marsaglia 1964), the wedge test against the density otherwise; `None` means redraw.
#[cold]
fn slow(t: &Tables, rng: &mut Xoshiro256pp, i: usize, x: f64) -> Option<f64> {
    if i == 0 {
        loop {
            let a = -rng.open_unit().ln() / R;
            let b = -rng.open_unit().ln();
            if 2.0 * b >= a * a {
                return Some((R + a).copysign(x));
            }
        }
    }
    let y = t.f[i + 1] + (t.f[i] - t.f[i + 1]) * rng.open_unit();
    (y < (-0.5 * x * x).exp()).then_some(x)
}

/// The candidate of 32 random bits `b`: sign and layer from the top 11 bits, position from
/// the low 21 (bit-exact: a 21-bit integer converts to `f32` exactly).
#[inline(always)]
fn candidate32(t: &Tables, b: u32) -> f32 {
    ((b & 0x1F_FFFF) as f32) * t.s21[(b >> 21) as usize]
}

#[inline(always)]
fn rejected32(t: &Tables, b: u32) -> bool {
    (b & 0x1F_FFFF) >= t.k21[(b >> 21) as usize]
}

/// Redraws one `f32` sample whose candidate (from bits `b`) was rejected.
#[cold]
#[inline(never)]
fn redraw32(t: &Tables, rng: &mut Xoshiro256pp, mut b: u32) -> f32 {
    loop {
        let x = candidate32(t, b);
        if !rejected32(t, b) {
            return x;
        }
        if let Some(v) = slow(t, rng, (b >> 21) as usize % N, f64::from(x)) {
            return v as f32;
        }
        b = rng.next_u64() as u32;
    }
}

/// Fills `out` with `f32` standard normals from two interleaved streams.
pub(crate) fn fill_f32(rngs: &mut [Xoshiro256pp; 2], out: &mut [f32]) {
    let t = tables();
    let (s21, k21): (&[f32; 2 * N], &[u32; 2 * N]) = (&t.s21, &t.k21);
    let (mut a, mut b) = (rngs[0].clone(), rngs[1].clone());
    let mut quads = out.chunks_exact_mut(4);
    for q in &mut quads {
        let (ba, bb) = (a.next_u64(), b.next_u64());
        let w = [ba as u32, (ba >> 32) as u32, bb as u32, (bb >> 32) as u32];
        let cand = |b: u32| ((b & 0x1F_FFFF) as f32) * s21[(b >> 21) as usize];
        let rej = |b: u32| (b & 0x1F_FFFF) >= k21[(b >> 21) as usize];
        for k in 0..4 {
            q[k] = cand(w[k]);
        }
        if rej(w[0]) | rej(w[1]) | rej(w[2]) | rej(w[3]) {
            for k in 0..4 {
                if rejected32(t, w[k]) {
                    q[k] = redraw32(t, &mut a, w[k]);
                }
            }
        }
    }
    for v in quads.into_remainder() {
        let w = a.next_u64() as u32;
        *v = redraw32(t, &mut a, w);
    }
    rngs[0] = a;
    rngs[1] = b;
}

#[inline(always)]
fn candidate64(t: &Tables, b: u64) -> f64 {
    ((b & 0x1F_FFFF_FFFF_FFFF) as f64) * t.s53[(b >> 53) as usize]
}

#[inline(always)]
fn rejected64(t: &Tables, b: u64) -> bool {
    (b & 0x1F_FFFF_FFFF_FFFF) >= t.k53[(b >> 53) as usize]
}

/// Redraws one `f64` sample whose candidate (from bits `b`) was rejected.
#[cold]
#[inline(never)]
fn redraw64(t: &Tables, rng: &mut Xoshiro256pp, mut b: u64) -> f64 {
    loop {
        let x = candidate64(t, b);
        if !rejected64(t, b) {
            return x;
        }
        if let Some(v) = slow(t, rng, (b >> 53) as usize % N, x) {
            return v;
        }
        b = rng.next_u64();
    }
}

/// A standard normal from a 64-bit key, counter-based (the same key gives the same value): one
/// splitmix64 output through the ziggurat's fast path, a generator seeded from the key on the
/// rare rejection.
pub(crate) fn normal_from_key(key: u64) -> f64 {
    let t = tables();
    let mut s = key;
    let b = splitmix64(&mut s);
    if !rejected64(t, b) {
        return candidate64(t, b);
    }
    let mut rng = Xoshiro256pp::from_seed(s);
    redraw64(t, &mut rng, b)
}

/// Fills `out` with `f64` standard normals from two interleaved streams.
pub(crate) fn fill_f64(rngs: &mut [Xoshiro256pp; 2], out: &mut [f64]) {
    let t = tables();
    let (mut a, mut b) = (rngs[0].clone(), rngs[1].clone());
    let mut pairs = out.chunks_exact_mut(2);
    for p in &mut pairs {
        let w = [a.next_u64(), b.next_u64()];
        p[0] = candidate64(t, w[0]);
        p[1] = candidate64(t, w[1]);
        if rejected64(t, w[0]) | rejected64(t, w[1]) {
            for k in 0..2 {
                if rejected64(t, w[k]) {
                    p[k] = redraw64(t, &mut a, w[k]);
                }
            }
        }
    }
    for v in pairs.into_remainder() {
        let w = a.next_u64();
        *v = redraw64(t, &mut a, w);
    }
    rngs[0] = a;
    rngs[1] = b;
}

#[cfg(test)]
#[allow(clippy::float_cmp, reason = "exact values by construction")]
mod tests {
    use super::*;

    #[test]
    fn tables_close_the_ziggurat() {
        let t = tables();
        // Every layer has the area V; the top one closes at x = 0.
        for i in 1..N {
            let area = t.x[i] * (t.f[i + 1] - t.f[i]);
            assert!((area - V).abs() < 1e-12, "layer {i}: {area}");
        }
        assert!(t.x[N - 1] > 0.0 && t.x[N] == 0.0);
        // The base layer: R f(R) plus the tail beyond R (numerically integrated).
        let h = 1e-4;
        let tail: f64 = (0..200_000)
            .map(|k| {
                let a = R + k as f64 * h;
                h / 6.0
                    * ((-0.5 * a * a).exp()
                        + 4.0 * (-0.5 * (a + h / 2.0).powi(2)).exp()
                        + (-0.5 * (a + h).powi(2)).exp())
            })
            .sum();
        assert!((R * (-0.5 * R * R).exp() + tail - V).abs() < 1e-13);
    }

    #[test]
    fn fast_path_accepts_over_99_5_percent() {
        // Layers are equally likely, and layer i accepts x[i+1] / x[i] of its positions.
        let t = tables();
        let accept = (0..N).map(|i| t.x[i + 1] / t.x[i]).sum::<f64>() / N as f64;
        assert!(accept > 0.995 && accept < 0.997, "{accept}");
        // The integer thresholds agree with it, for both signs and both widths.
        let k21 = t.k21.iter().map(|&k| f64::from(k)).sum::<f64>() / (2 * N) as f64 / (1u64 << 21) as f64;
        let k53 = t.k53.iter().map(|&k| k as f64).sum::<f64>() / (2 * N) as f64 / (1u64 << 53) as f64;
        assert!(
            (k21 - accept).abs() < 1e-6 && (k53 - accept).abs() < 1e-12,
            "{k21} {k53}"
        );
        assert!(
            t.s21[..N]
                .iter()
                .zip(&t.s21[N..])
                .all(|(p, m)| *p > 0.0 && *m == -*p)
        );
    }

    #[test]
    fn xoshiro_reference_output() {
        // xoshiro256++ from state [1, 2, 3, 4] (reference implementation).
        let mut r = Xoshiro256pp { s: [1, 2, 3, 4] };
        assert_eq!(r.next_u64(), 41_943_041);
        assert_eq!(r.next_u64(), 58_720_359);
        assert_eq!(r.next_u64(), 3_588_806_011_781_223);
    }
}
