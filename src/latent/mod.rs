//! Operations in CLIP's latent space (DALL·E 2 §3): spherical interpolation of embeddings
//! (§3.2), text diffs (§3.3) and PCA probing ([`pca`], §3.4). Pure math on `ndarray`; the
//! pipeline methods that decode the results live in [`crate::explore`].

pub mod pca;

use ndarray::{Array1, Array2, ArrayView1, Axis};

use crate::{Error, Result};

pub use pca::Pca;

/// Largest number of frames an interpolation or text diff may ask for.
pub const MAX_FRAMES: usize = 256;

/// `frames` evenly spaced values from `start` to `end` inclusive (one frame gives `start`).
pub fn linspace(start: f32, end: f32, frames: usize) -> Result<Vec<f32>> {
    if frames == 0 || frames > MAX_FRAMES {
        return Err(Error::invalid(
            "frames",
            format!("{frames}: give 1 to {MAX_FRAMES} frames"),
        ));
    }
    if frames == 1 {
        return Ok(vec![start]);
    }
    let (start, end) = (start as f64, end as f64);
    Ok((0..frames)
        .map(|i| (start + (end - start) * i as f64 / (frames - 1) as f64) as f32)
        .collect())
}

/// The frames of an interpolation from `a` to `b` (§3.2): row `i` is `slerp(a, b, θ_i)` with
/// `θ_i` evenly spaced over [0, 1]; the first row is `a` and the last `b` (up to rounding).
pub fn interpolate(
    a: ArrayView1<'_, f32>,
    b: ArrayView1<'_, f32>,
    frames: usize,
) -> Result<(Vec<f32>, Array2<f32>)> {
    let thetas = linspace(0.0, 1.0, frames)?;
    let rows = thetas
        .iter()
        .map(|&t| slerp(a, b, t))
        .collect::<Result<Vec<_>>>()?;
    Ok((thetas, stack(&rows)?))
}

/// The text-diff direction of §3.3: `z_d = normalize(z_to − z_from)`, the unit vector from the
/// CLIP text embedding of the old caption to that of the new one.
pub fn text_diff_direction(
    from: ArrayView1<'_, f32>,
    to: ArrayView1<'_, f32>,
) -> Result<Array1<f32>> {
    if from.len() != to.len() {
        return Err(Error::Shape {
            what: "text-diff caption embeddings".into(),
            expected: format!("two vectors of length {}", from.len()),
            found: vec![to.len()],
        });
    }
    let diff = &to - &from;
    let norm = diff.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    if !norm.is_finite() {
        return Err(Error::NonFinite {
            what: "text-diff caption embeddings".into(),
        });
    }
    if norm < 1e-12 {
        return Err(Error::invalid(
            "text diff",
            "the two captions have the same CLIP embedding: choose captions that differ",
        ));
    }
    Ok(diff.mapv(|x| (x as f64 / norm) as f32))
}

/// The frames of a text diff (§3.3): row `i` is `slerp(z_i, ‖z_i‖·z_d, θ_i)` with `θ_i` evenly
/// spaced over `[0, max_theta]`. The paper rotates between the image embedding and the unit
/// diff vector on the sphere; the pipeline feeds unnormalized embeddings to the decoder, so
/// `z_d` is given the image embedding's norm and only the direction rotates (the norm stays
/// `‖z_i‖` in every frame).
pub fn text_diff(
    image: ArrayView1<'_, f32>,
    from: ArrayView1<'_, f32>,
    to: ArrayView1<'_, f32>,
    frames: usize,
    max_theta: f32,
) -> Result<(Vec<f32>, Array2<f32>)> {
    if !max_theta.is_finite() || !(0.0..=1.0).contains(&max_theta) {
        return Err(Error::invalid(
            "max theta",
            format!("{max_theta}: use a value in 0..=1 (the paper uses up to 0.5)"),
        ));
    }
    if image.len() != from.len() {
        return Err(Error::Shape {
            what: "text-diff image embedding".into(),
            expected: format!("a vector of length {} (the text embedding's)", from.len()),
            found: vec![image.len()],
        });
    }
    let direction = text_diff_direction(from, to)?;
    let norm = image
        .iter()
        .map(|&x| (x as f64).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
    let target = direction * norm;
    let thetas = linspace(0.0, max_theta, frames)?;
    let rows = thetas
        .iter()
        .map(|&t| slerp(image, target.view(), t))
        .collect::<Result<Vec<_>>>()?;
    Ok((thetas, stack(&rows)?))
}

/// Stacks equal-length rows into a matrix.
pub(crate) fn stack(rows: &[Array1<f32>]) -> Result<Array2<f32>> {
    let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
    ndarray::stack(Axis(0), &views).map_err(|e| Error::Shape {
        what: format!("embedding rows ({e})"),
        expected: "rows of equal length".into(),
        found: rows.iter().map(|r| r.len()).collect(),
    })
}

/// `slerp(a, b, θ)` on embedding *directions*, with the norm interpolated linearly (DALL·E 2 §3.2):
/// `‖·‖ = (1−θ)‖a‖ + θ‖b‖`, direction = `sin((1−θ)Ω)/sin Ω · â + sin(θΩ)/sin Ω · b̂`, Ω the
/// angle between â and b̂. Falls back to normalized lerp when the directions nearly coincide
/// (sin Ω < 1e-6, where the slerp formula divides by ≈ 0); exactly antipodal directions rotate
/// along a fixed great circle (see the code). θ outside [0, 1] extrapolates.
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
    let norm = |v: ArrayView1<'_, f32>| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return Err(Error::invalid(
            "slerp endpoints",
            "an embedding has zero norm",
        ));
    }
    // Endpoints exactly (the general formula rounds them within an ulp): frame 0 of an
    // interpolation or text diff then decodes the source embedding bit for bit.
    if theta == 0.0 {
        return Ok(a.to_owned());
    }
    if theta == 1.0 {
        return Ok(b.to_owned());
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
    if cos < 0.0 && omega.sin().abs() < 1e-6 {
        // Antipodal: every great circle joins them. Take the one through the basis vector least
        // aligned with â (made orthogonal to it), so the path is defined and never passes 0.
        let j = (0..ua.len())
            .min_by(|&i, &k| ua[i].abs().total_cmp(&ua[k].abs()))
            .unwrap_or(0);
        let mut u: Vec<f64> = ua.iter().map(|x| -x * ua[j]).collect();
        u[j] += 1.0;
        let un = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        if un > 0.0 {
            let angle = t * std::f64::consts::PI;
            let length = (1.0 - t) * na + t * nb;
            return Ok(ua
                .iter()
                .zip(&u)
                .map(|(x, y)| ((angle.cos() * x + angle.sin() * y / un) * length) as f32)
                .collect());
        }
    }
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

    fn norm(v: &Array1<f32>) -> f64 {
        v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt()
    }

    fn angle(a: &Array1<f32>, b: &Array1<f32>) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        (dot / (norm(a) * norm(b))).clamp(-1.0, 1.0).acos()
    }

    /// Deterministic pseudo-random vector (no RNG dependency in unit tests).
    fn vector(seed: u32, len: usize) -> Array1<f32> {
        (0..len)
            .map(|i| ((seed as f32 * 12.9898 + i as f32 * 78.233).sin() * 43758.547).fract())
            .collect()
    }

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
    fn constant_angular_speed_and_linear_norm() {
        let a = vector(1, 64) * 3.0;
        let b = vector(2, 64) - 0.5;
        let (thetas, frames) = interpolate(a.view(), b.view(), 9).unwrap();
        let rows: Vec<Array1<f32>> = frames.outer_iter().map(|r| r.to_owned()).collect();
        let total = angle(&a, &b);
        for (i, row) in rows.iter().enumerate() {
            let t = thetas[i] as f64;
            // Angle from a grows linearly with θ, the norm interpolates linearly.
            assert!((angle(&a, row) - t * total).abs() < 1e-4, "frame {i}");
            let expected = (1.0 - t) * norm(&a) + t * norm(&b);
            assert!((norm(row) - expected).abs() < 1e-4 * expected, "frame {i}");
        }
        for pair in rows.windows(2) {
            assert!((angle(&pair[0], &pair[1]) - total / 8.0).abs() < 1e-4);
        }
        assert_eq!(rows[0], a);
        assert_eq!(rows[8], b);
    }

    #[test]
    fn near_parallel_and_antipodal_inputs_stay_finite() {
        let a = vector(3, 32);
        let mut nearly = a.clone() * 2.0;
        nearly[0] += 1e-7;
        for t in [0.0, 0.3, 0.5, 1.0] {
            let v = slerp(a.view(), nearly.view(), t).unwrap();
            assert!(v.iter().all(|x| x.is_finite()));
            assert!(angle(&a, &v) < 1e-3);
        }
        let opposite = -&a * 0.5;
        let (_, frames) = interpolate(a.view(), opposite.view(), 5).unwrap();
        let rows: Vec<Array1<f32>> = frames.outer_iter().map(|r| r.to_owned()).collect();
        for (i, row) in rows.iter().enumerate() {
            assert!(row.iter().all(|x| x.is_finite()));
            // A great half circle at constant speed: 45° per frame, never through 0.
            let t = i as f64 / 4.0;
            assert!(
                (angle(&a, row) - t * std::f64::consts::PI).abs() < 1e-3,
                "frame {i}"
            );
            assert!((norm(row) - ((1.0 - t) * norm(&a) + t * norm(&opposite))).abs() < 1e-4);
        }
    }

    #[test]
    fn bad_input() {
        let a = array![1.0f32, 1.0];
        let b = array![2.0f32, 2.0];
        let mid = slerp(a.view(), b.view(), 0.5).unwrap();
        assert!((mid[0] - 1.5).abs() < 1e-6);
        assert!(slerp(a.view(), array![1.0f32].view(), 0.5).is_err());
        assert!(slerp(a.view(), array![0.0f32, 0.0].view(), 0.5).is_err());
        assert!(slerp(a.view(), b.view(), f32::NAN).is_err());
        assert!(slerp(a.view(), array![f32::INFINITY, 0.0].view(), 0.5).is_err());
        assert!(interpolate(a.view(), b.view(), 0).is_err());
        assert!(interpolate(a.view(), b.view(), MAX_FRAMES + 1).is_err());
        assert_eq!(linspace(0.0, 0.5, 1).unwrap(), vec![0.0]);
        assert_eq!(linspace(0.0, 0.5, 3).unwrap(), vec![0.0, 0.25, 0.5]);
    }

    #[test]
    fn text_diff_rotates_toward_the_caption_direction() {
        let image = vector(4, 48) * 5.0;
        let from = vector(5, 48);
        let to = vector(6, 48);
        let direction = text_diff_direction(from.view(), to.view()).unwrap();
        assert!((norm(&direction) - 1.0).abs() < 1e-6);
        let (thetas, frames) = text_diff(image.view(), from.view(), to.view(), 6, 0.5).unwrap();
        assert_eq!(thetas.len(), 6);
        assert!((thetas[5] - 0.5).abs() < 1e-7);
        let rows: Vec<Array1<f32>> = frames.outer_iter().map(|r| r.to_owned()).collect();
        assert_eq!(rows[0], image);
        let total = angle(&image, &direction);
        let mut last = f64::INFINITY;
        for (row, &t) in rows.iter().zip(&thetas) {
            // The norm stays the image's; the angle to z_d shrinks as θ·Ω.
            assert!((norm(row) - norm(&image)).abs() < 1e-4 * norm(&image));
            let to_direction = angle(row, &direction);
            assert!((to_direction - (1.0 - t as f64) * total).abs() < 1e-4);
            assert!(to_direction < last);
            last = to_direction;
        }
        // Same captions: no direction, a typed error.
        assert!(matches!(
            text_diff_direction(from.view(), from.view()),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(text_diff(image.view(), from.view(), to.view(), 3, 1.5).is_err());
        assert!(text_diff(image.view(), from.view(), to.view(), 3, f32::NAN).is_err());
    }
}
