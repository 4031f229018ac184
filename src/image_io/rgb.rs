//! Tensors ↔ 8-bit RGB images, with diffusers' rounding.

use image::RgbImage;
use ndarray::{Array3, ArrayView4};

/// Converts a batch of NCHW images in [−1, 1] to 8-bit RGB images as diffusers does:
/// `x * 0.5 + 0.5`, clamp to [0, 1] (`UnCLIPPipeline.__call__`), then `(x * 255).round()` with
/// numpy's round-half-to-even and a cast to `uint8` (`numpy_to_pil`), every step in float32.
///
/// Values outside [−1, 1] saturate; NaN becomes 0 (what numpy's cast gives on x86-64).
///
/// # Panics
/// If `images` does not have 3 channels, or a side exceeds `u32::MAX` — the pipeline's images
/// always have 3 channels and at most 1024 pixels a side.
pub fn to_rgb8(images: ArrayView4<f32>) -> Vec<RgbImage> {
    let (batch, channels, height, width) = images.dim();
    assert_eq!(
        channels,
        3,
        "to_rgb8 takes (batch, 3, height, width) images, got {:?}",
        images.shape()
    );
    let side = |n: usize| u32::try_from(n).expect("image side exceeds u32::MAX");
    let images = images.as_standard_layout();
    let values = images
        .as_slice()
        .expect("as_standard_layout gives a contiguous array");
    let pixels = height * width;
    if pixels == 0 {
        return (0..batch)
            .map(|_| RgbImage::new(side(width), side(height)))
            .collect();
    }
    values
        .chunks_exact(3 * pixels)
        .map(|image| {
            let (red, rest) = image.split_at(pixels);
            let (green, blue) = rest.split_at(pixels);
            let mut rgb = vec![0u8; 3 * pixels];
            for (((pixel, r), g), b) in rgb.chunks_exact_mut(3).zip(red).zip(green).zip(blue) {
                pixel.copy_from_slice(&[unit_to_u8(*r), unit_to_u8(*g), unit_to_u8(*b)]);
            }
            RgbImage::from_raw(side(width), side(height), rgb).expect("3·width·height bytes")
        })
        .collect()
}

/// One value of [`to_rgb8`]: float32 steps, no fused multiply-add (torch runs `* 0.5` and `+ 0.5`
/// as separate kernels).
fn unit_to_u8(x: f32) -> u8 {
    /// 2²³: adding and subtracting it rounds any f32 in [0, 2²³) to an integer, half to even (the
    /// default IEEE rounding) — `f32::round_ties_even` in two additions instead of a libm call on
    /// x86-64 CPUs without SSE4.1 `roundss`.
    const ROUND_HALF_EVEN: f32 = 8_388_608.0;
    let unit = (x * 0.5 + 0.5).clamp(0.0, 1.0);
    ((unit * 255.0 + ROUND_HALF_EVEN) - ROUND_HALF_EVEN) as u8
}

/// Converts an 8-bit RGB image to a CHW tensor in [−1, 1]: `v / 127.5 − 1` in float32.
///
/// For every `v` in 0..=255 this equals the `2 · (v / 255) − 1` of diffusers' image processors,
/// and [`to_rgb8`] maps it back to `v` exactly.
pub fn from_rgb8(img: &RgbImage) -> Array3<f32> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    Array3::from_shape_fn((3, height, width), |(c, y, x)| {
        f32::from(img.get_pixel(x as u32, y as u32)[c]) / 127.5 - 1.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn to_rgb8_rounds_half_to_even_and_handles_empty_images() {
        // x·0.5 + 0.5 = k/255 + 0.5/255 exactly representable cases are covered by the fixture;
        // here the endpoints, saturation and NaN.
        assert_eq!(
            [-1.0, 1.0, -7.0, 7.0, f32::NAN].map(unit_to_u8),
            [0, 255, 0, 255, 0]
        );
        let empty = Array4::<f32>::zeros((2, 3, 0, 4));
        let images = to_rgb8(empty.view());
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].dimensions(), (4, 0));
    }
}
