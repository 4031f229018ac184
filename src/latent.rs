//! Operations in CLIP's latent space (DALL·E 2 §3): spherical interpolation of embeddings.

use ndarray::{Array1, ArrayView1};

use crate::{Error, Result};

/// `slerp(a, b, θ)` on embedding *directions*, with the norm interpolated linearly (DESIGN §6):
/// `‖·‖ = (1−θ)‖a‖ + θ‖b‖`, direction = `sin((1−θ)Ω)/sin Ω · â + sin(θΩ)/sin Ω · b̂`, Ω the
/// angle between â and b̂. Falls back to normalized lerp when the directions (anti)coincide
/// within 1e-6, where the slerp formula divides by sin Ω ≈ 0. θ outside [0, 1] extrapolates.
pub fn slerp(a: ArrayView1<'_, f32>, b: ArrayView1<'_, f32>, theta: f32) -> Result<Array1<f32>> {
    if a.len() != b.len() || a.is_empty() {
        return Err(Error::Shape {
            what: "slerp endpoints".into(),
            expected: format!("two non-empty vectors of equal length ({})", a.len()),
            found: vec![b.len()],
        });
    }
    if !theta.is_finite() || a.iter().chain(b.iter()).any(|x| !x.is_finite()) {
        return Err(Error::NonFinite {
            what: "slerp input".into(),
        });
    }
    let (na, nb) = (a.dot(&a).sqrt() as f64, b.dot(&b).sqrt() as f64);
    if na == 0.0 || nb == 0.0 {
        return Err(Error::invalid(
            "slerp endpoints",
            "an embedding has zero norm",
        ));
    }
    let t = theta as f64;
    let ua: Vec<f64> = a.iter().map(|x| *x as f64 / na).collect();
    let ub: Vec<f64> = b.iter().map(|x| *x as f64 / nb).collect();
    let cos = ua
        .iter()
        .zip(&ub)
        .map(|(x, y)| x * y)
        .sum::<f64>()
        .clamp(-1.0, 1.0);
    let omega = cos.acos();
    let (wa, wb) = if omega.sin().abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        (
            ((1.0 - t) * omega).sin() / omega.sin(),
            (t * omega).sin() / omega.sin(),
        )
    };
    let mut direction: Vec<f64> = ua.iter().zip(&ub).map(|(x, y)| wa * x + wb * y).collect();
    let norm = direction.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        direction.iter_mut().for_each(|x| *x /= norm);
    }
    let length = (1.0 - t) * na + t * nb;
    Ok(direction.into_iter().map(|x| (x * length) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn endpoints_midpoint_and_norm() {
        let a = array![3.0f32, 0.0];
        let b = array![0.0f32, 1.0];
        let at0 = slerp(a.view(), b.view(), 0.0).unwrap();
        let at1 = slerp(a.view(), b.view(), 1.0).unwrap();
        assert!((&at0 - &a).iter().all(|d| d.abs() < 1e-6));
        assert!((&at1 - &b).iter().all(|d| d.abs() < 1e-6));
        let mid = slerp(a.view(), b.view(), 0.5).unwrap();
        // Direction halfway (45°), norm halfway (2).
        assert!((mid[0] - mid[1]).abs() < 1e-6);
        assert!((mid.dot(&mid).sqrt() - 2.0).abs() < 1e-5);
    }

    #[test]
    fn parallel_vectors_and_bad_input() {
        let a = array![1.0f32, 1.0];
        let b = array![2.0f32, 2.0];
        let mid = slerp(a.view(), b.view(), 0.5).unwrap();
        assert!((mid[0] - 1.5).abs() < 1e-6);
        assert!(slerp(a.view(), array![1.0f32].view(), 0.5).is_err());
        assert!(slerp(a.view(), array![0.0f32, 0.0].view(), 0.5).is_err());
        assert!(slerp(a.view(), b.view(), f32::NAN).is_err());
    }
}
