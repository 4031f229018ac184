//! Conversion to 8-bit RGB as Pillow does it: for decoded files (`convert("RGB")`, alpha dropped)
//! and for CLIP preprocessing (transformers' `convert_to_rgb`, alpha composited onto white).

use std::borrow::Cow;

use image::{DynamicImage, RgbImage};

/// The image's samples as Pillow holds them after opening it, with the channel count: 16-bit
/// samples keep their high byte (Pillow's PNG reader unpacks 16-bit RGB, RGBA and gray + alpha with
/// rawmodes `RGB;16B`, `RGBA;16B`, `LA;16B`, which take the high byte). `None` for float images.
fn pil_samples(image: &DynamicImage) -> Option<(Cow<'_, [u8]>, usize)> {
    let high = |s: &[u16]| Cow::Owned(s.iter().map(|&v| (v >> 8) as u8).collect());
    Some(match image {
        DynamicImage::ImageLuma8(i) => (Cow::Borrowed(i.as_raw().as_slice()), 1),
        DynamicImage::ImageLumaA8(i) => (Cow::Borrowed(i.as_raw().as_slice()), 2),
        DynamicImage::ImageRgb8(i) => (Cow::Borrowed(i.as_raw().as_slice()), 3),
        DynamicImage::ImageRgba8(i) => (Cow::Borrowed(i.as_raw().as_slice()), 4),
        DynamicImage::ImageLuma16(i) => (high(i.as_raw()), 1),
        DynamicImage::ImageLumaA16(i) => (high(i.as_raw()), 2),
        DynamicImage::ImageRgb16(i) => (high(i.as_raw()), 3),
        DynamicImage::ImageRgba16(i) => (high(i.as_raw()), 4),
        _ => return None,
    })
}

/// The image as 8-bit RGB, as Pillow converts it:
/// - `over_white = false`: PIL `convert("RGB")` — gray replicated, alpha dropped (diffusers'
///   `load_image`);
/// - `over_white = true`: transformers' `convert_to_rgb` (`transformers/image_transforms.py`) —
///   an image with alpha is PIL-`alpha_composite`d onto opaque white, then `convert("RGB")`.
///
/// Over white, Pillow's `ImagingAlphaComposite` (`src/libImaging/AlphaComposite.c`) reduces to
/// `round((c·a + 255·(255 − a)) / 255)` in integers; the shift form below is that rounded quotient
/// for every (c, a) (checked against Pillow 13 on all 65,536 pairs). Float images have no Pillow
/// counterpart: `image`'s clamping conversion to 8 bits comes first.
pub(super) fn pil_rgb8(image: &DynamicImage, over_white: bool) -> Cow<'_, RgbImage> {
    let (samples, channels) = match (image, pil_samples(image)) {
        (DynamicImage::ImageRgb8(rgb), _) => return Cow::Borrowed(rgb),
        (_, Some(found)) => found,
        (_, None) if image.color().has_alpha() => {
            let rgba = DynamicImage::ImageRgba8(image.to_rgba8());
            return Cow::Owned(pil_rgb8(&rgba, over_white).into_owned());
        }
        (_, None) => return Cow::Owned(image.to_rgb8()),
    };
    let has_alpha = channels % 2 == 0;
    let rgb: Vec<u8> = samples
        .chunks_exact(channels)
        .flat_map(|p| {
            let rgb = if channels <= 2 {
                [p[0]; 3]
            } else {
                [p[0], p[1], p[2]]
            };
            match (over_white && has_alpha).then(|| u32::from(p[channels - 1])) {
                Some(a) => rgb.map(|c| {
                    let t = u32::from(c) * a + 255 * (255 - a) + 128;
                    ((t + (t >> 8)) >> 8) as u8
                }),
                None => rgb,
            }
        })
        .collect();
    Cow::Owned(RgbImage::from_raw(image.width(), image.height(), rgb).expect("3 samples per pixel"))
}
