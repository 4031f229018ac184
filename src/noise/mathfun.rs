//! Single-precision `log` and `sincos` exactly as PyTorch's AVX2 `randn` computes them:
//! the Cephes-style polynomials of `aten/src/ATen/native/cpu/avx_mathfun.h` (`log256_ps`,
//! `sincos256_ps`), with the fused multiply-adds GCC's contraction put into PyTorch's build
//! (docs/architecture.md, "The torch-compatible RNG"). `f32::mul_add` is one IEEE rounding on every platform, so these
//! give the same bits everywhere — which also makes them the math of the fast generator.
//! Constants are written exactly as in avx_mathfun.h (their f32 rounding is part of the spec).
#![allow(clippy::excessive_precision)]

/// `log(x)` for x in (0, 1] (log256_ps).
#[inline]
pub fn log(x: f32) -> f32 {
    const P: [f32; 9] = [
        7.0376836292e-2,
        -1.1514610310e-1,
        1.1676998740e-1,
        -1.2420140846e-1,
        1.4249322787e-1,
        -1.6668057665e-1,
        2.0000714765e-1,
        -2.4999993993e-1,
        3.3333331174e-1,
    ];
    const Q1: f32 = -2.12194440e-4;
    const Q2: f32 = 0.693359375;
    let x = x.max(f32::MIN_POSITIVE);
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32;
    e += 1.0;
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    // SQRTHF = 0.707106781186547524 in avx_mathfun.h, the same f32.
    if x < std::f32::consts::FRAC_1_SQRT_2 {
        x = (x - 1.0) + x;
        e -= 1.0;
    } else {
        x -= 1.0;
    }
    let z = x * x;
    let mut y = P[0];
    for p in &P[1..] {
        y = y.mul_add(x, *p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y -= z * 0.5;
    e.mul_add(Q2, x + y)
}

/// `(sin θ, cos θ)` for θ ≥ 0 (sincos256_ps).
#[inline]
pub fn sincos(theta: f32) -> (f32, f32) {
    const FOPI: f32 = 1.27323954473516; // 4/π
    const DP1: f32 = -0.78515625;
    const DP2: f32 = -2.4187564849853515625e-4;
    const DP3: f32 = -3.77489497744594108e-8;
    let mut j = (theta * FOPI) as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let flip_sin = j & 4 != 0;
    let swap = j & 2 != 0;
    let flip_cos = (!(j - 2)) & 4 != 0;
    let mut x = y.mul_add(DP1, theta);
    x = y.mul_add(DP2, x);
    x = y.mul_add(DP3, x);
    let z = x * x;
    let mut c = 2.443315711809948e-5f32;
    c = c.mul_add(z, -1.388731625493765e-3);
    c = c.mul_add(z, 4.166664568298827e-2);
    c *= z;
    c = c.mul_add(z, -(z * 0.5));
    c += 1.0;
    let mut s = -1.9515295891e-4f32;
    s = s.mul_add(z, 8.3321608736e-3);
    s = s.mul_add(z, -1.6666654611e-1);
    s *= z;
    s = s.mul_add(x, x);
    let (mut sin, mut cos) = if swap { (c, s) } else { (s, c) };
    if flip_sin {
        sin = -sin;
    }
    if flip_cos {
        cos = -cos;
    }
    (sin, cos)
}

/// Box–Muller on one pair of uniforms in [0, 1): `(r·cos θ, r·sin θ)` with
/// `r = √(−2·log(1 − u1))`, `θ = 2π·u2` (`normal_fill_16_AVX2`).
#[inline]
pub fn box_muller(u1: f32, u2: f32) -> (f32, f32) {
    const TWO_PI: f32 = std::f32::consts::TAU;
    let radius = (-2.0f32 * log(1.0 - u1)).sqrt();
    let (sin, cos) = sincos(TWO_PI * u2);
    (radius * cos, radius * sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_to_libm() {
        for i in 1..10_000 {
            let x = i as f32 / 10_000.0;
            assert!(
                (log(x) - x.ln()).abs() <= 2e-7 * x.ln().abs().max(1.0),
                "log {x}"
            );
            let t = x * std::f32::consts::TAU;
            let (s, c) = sincos(t);
            assert!(
                (s - t.sin()).abs() < 3e-7 && (c - t.cos()).abs() < 3e-7,
                "sincos {t}"
            );
        }
    }
}
