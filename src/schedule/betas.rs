//! Beta-schedule formulas shared by the constructors.

/// numpy / torch `linspace(start, end, n)`: `start + i * (end - start) / (n - 1)`, with the last
/// value exactly `end` (and `[start]` for `n = 1`).
pub(crate) fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = end;
    v
}

/// Nichol & Dhariwal's `abar(t) = cos^2((t + 0.008) / 1.008 * pi / 2)`.
pub(crate) fn cosine_alpha_bar(t: f64) -> f64 {
    let c = ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos();
    c * c
}

/// diffusers' Laplace `abar(t)`.
pub(crate) fn laplace_alpha_bar(t: f64) -> f64 {
    let lmb = -0.5 * (0.5 - t).signum() * (1.0 - 2.0 * (0.5 - t).abs() + 1e-6).ln();
    let snr = lmb.exp();
    (snr / (1.0 + snr)).sqrt()
}
