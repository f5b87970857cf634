//! 2-D toy distributions, generated in-process, and distances between point clouds.

use ndarray::{Array2, ArrayView2};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// The toy data sets, each scaled to roughly unit standard deviation per coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toy {
    EightGaussians,
    TwoMoons,
    SwissRoll,
    Checkerboard,
}

impl Toy {
    pub const ALL: [Toy; 4] = [
        Toy::EightGaussians,
        Toy::TwoMoons,
        Toy::SwissRoll,
        Toy::Checkerboard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Toy::EightGaussians => "eight_gaussians",
            Toy::TwoMoons => "two_moons",
            Toy::SwissRoll => "swiss_roll",
            Toy::Checkerboard => "checkerboard",
        }
    }

    pub fn parse(s: &str) -> Option<Toy> {
        Toy::ALL.into_iter().find(|t| t.name() == s)
    }

    /// `n` samples as rows.
    pub fn sample<R: Rng + ?Sized>(self, n: usize, rng: &mut R) -> Array2<f32> {
        fn gauss<R: Rng + ?Sized>(rng: &mut R) -> f64 {
            StandardNormal.sample(rng)
        }
        let mut out = Array2::zeros((n, 2));
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let k = rng.random_range(0..8);
            let mut g = || gauss(rng);
            rows.push(match self {
                Toy::EightGaussians => {
                    let (cx, cy) = eight_centers()[k];
                    (cx + 0.1 * g(), cy + 0.1 * g())
                }
                Toy::TwoMoons => {
                    let u = g();
                    let a = std::f64::consts::PI * (0.5 + 0.5 * (u / 1.5).tanh());
                    let upper = g() > 0.0;
                    let (x, y) = if upper {
                        (a.cos(), a.sin())
                    } else {
                        (1.0 - a.cos(), 0.5 - a.sin())
                    };
                    ((x - 0.5) * 1.2 + 0.05 * g(), (y - 0.25) * 1.8 + 0.05 * g())
                }
                Toy::SwissRoll => {
                    let u = 0.5 + 0.5 * (g() / 2.0).tanh();
                    let t = 1.5 * std::f64::consts::PI * (1.0 + 2.0 * u);
                    (t * t.cos() / 7.0 + 0.04 * g(), t * t.sin() / 7.0 + 0.04 * g())
                }
                Toy::Checkerboard => loop {
                    // Uniform on the black squares of a 4 x 4 board on [-2, 2]^2.
                    let x = 4.0 * (0.5 + 0.5 * erf_like(g())) - 2.0;
                    let y = 4.0 * (0.5 + 0.5 * erf_like(g())) - 2.0;
                    if ((x + 2.0).floor() as i64 + (y + 2.0).floor() as i64) % 2 == 0 {
                        break (x / 1.15, y / 1.15);
                    }
                },
            });
        }
        for (i, (x, y)) in rows.into_iter().enumerate() {
            out[[i, 0]] = x as f32;
            out[[i, 1]] = y as f32;
        }
        out
    }
}

/// A uniform in (-1, 1) from a standard normal (through its CDF).
fn erf_like(z: f64) -> f64 {
    2.0 * phi(z) - 1.0
}

/// The standard normal CDF (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7).
fn phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-z * z).exp();
    if x >= 0.0 {
        0.5 * (1.0 + y)
    } else {
        0.5 * (1.0 - y)
    }
}

/// The eight Gaussians' centres: on a circle of radius 1.4.
pub fn eight_centers() -> [(f64, f64); 8] {
    std::array::from_fn(|k| {
        let a = std::f64::consts::TAU * k as f64 / 8.0;
        (1.4 * a.cos(), 1.4 * a.sin())
    })
}

/// How many rows of `x` are nearest to each of the eight centres.
pub fn mode_counts(x: ArrayView2<'_, f32>) -> [usize; 8] {
    let c = eight_centers();
    let mut counts = [0; 8];
    for r in x.rows() {
        let (px, py) = (f64::from(r[0]), f64::from(r[1]));
        let k = (0..8)
            .min_by(|&a, &b| {
                let da = (px - c[a].0).powi(2) + (py - c[a].1).powi(2);
                let db = (px - c[b].0).powi(2) + (py - c[b].1).powi(2);
                da.total_cmp(&db)
            })
            .expect("eight modes");
        counts[k] += 1;
    }
    counts
}

/// Sliced Wasserstein-2 distance between two equally sized point clouds: the root mean, over
/// `projections` random directions, of the squared W2 distance of the 1-D projections (sorted
/// matching).
pub fn sliced_w2<R: Rng + ?Sized>(
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    projections: usize,
    rng: &mut R,
) -> f64 {
    let n = a.nrows().min(b.nrows());
    let mut total = 0.0;
    for _ in 0..projections {
        let th: f64 = rng.random_range(0.0..std::f64::consts::PI);
        let (c, s) = (th.cos(), th.sin());
        let proj = |m: ArrayView2<'_, f32>| {
            let mut v: Vec<f64> = m
                .rows()
                .into_iter()
                .take(n)
                .map(|r| c * f64::from(r[0]) + s * f64::from(r[1]))
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (pa, pb) = (proj(a), proj(b));
        total += pa.iter().zip(&pb).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / n as f64;
    }
    (total / projections as f64).sqrt()
}

/// Squared maximum mean discrepancy with a sum of RBF kernels (bandwidths 0.1, 0.3, 1), the
/// unbiased estimator.
pub fn mmd_rbf(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> f64 {
    let bw = [0.1f64, 0.3, 1.0];
    let k = |p: ndarray::ArrayView1<'_, f32>, q: ndarray::ArrayView1<'_, f32>| {
        let d2 = (f64::from(p[0]) - f64::from(q[0])).powi(2) + (f64::from(p[1]) - f64::from(q[1])).powi(2);
        bw.iter().map(|h| (-d2 / (2.0 * h * h)).exp()).sum::<f64>()
    };
    let (n, m) = (a.nrows(), b.nrows());
    let mut kaa = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i != j {
                kaa += k(a.row(i), a.row(j));
            }
        }
    }
    let mut kbb = 0.0;
    for i in 0..m {
        for j in 0..m {
            if i != j {
                kbb += k(b.row(i), b.row(j));
            }
        }
    }
    let mut kab = 0.0;
    for i in 0..n {
        for j in 0..m {
            kab += k(a.row(i), b.row(j));
        }
    }
    kaa / (n * (n - 1)) as f64 + kbb / (m * (m - 1)) as f64 - 2.0 * kab / (n * m) as f64
}
