//! CLIP image preprocessing, as transformers' `CLIPImageProcessor` (Pillow backend) does it:
//! RGB conversion, resize of the shortest edge, center crop, rescale and normalize, for one image
//! or a batch, with the bundle's constants checked first.

use image::{DynamicImage, RgbImage};
use ndarray::{Array4, ArrayViewMut3, Axis};

use super::resize::{resample_window, PilFilter};
use super::rgb::pil_rgb8;
use crate::bundle::ImageProcessorEntry;
use crate::{Error, Result};

/// The size `(height, width)` an image is resized to: shortest edge → `shortest_edge`, the other
/// edge `int(shortest_edge * long / short)` — transformers' `get_resize_output_image_size` with
/// `default_to_square=False` (`transformers/image_transforms.py`). Python divides the exact
/// integer product in double precision and truncates; so does this (exact below 2⁵³).
pub fn resize_output_size(height: usize, width: usize, shortest_edge: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = ((shortest_edge as u64 * long as u64) as f64 / short as f64) as usize;
    if width <= height {
        (new_long, shortest_edge)
    } else {
        (shortest_edge, new_long)
    }
}

/// Largest `shortest_edge` and `crop_size` accepted: CLIP models use 224 to 448; a manifest
/// asking for more is broken, and would allocate gigabytes.
const MAX_PROCESSOR_SIZE: usize = 4096;

/// Checks the bundle's preprocessing constants and returns the filter.
fn check_config(config: &ImageProcessorEntry) -> Result<PilFilter> {
    let field = "image_processor";
    let sizes = 1..=MAX_PROCESSOR_SIZE;
    if !sizes.contains(&config.shortest_edge) || !sizes.contains(&config.crop_size) {
        return Err(Error::invalid(
            field,
            format!(
                "shortest_edge {} and crop_size {} must be in 1..={MAX_PROCESSOR_SIZE} (CLIP: 224 and 224)",
                config.shortest_edge, config.crop_size
            ),
        ));
    }
    if !(config.rescale_factor.is_finite() && config.rescale_factor > 0.0) {
        return Err(Error::invalid(
            field,
            format!(
                "rescale_factor {} must be positive (CLIP: 1/255)",
                config.rescale_factor
            ),
        ));
    }
    if config.mean.iter().any(|m| !m.is_finite())
        || config.std.iter().any(|s| !s.is_finite() || *s == 0.0)
    {
        return Err(Error::invalid(
            field,
            format!(
                "mean {:?} must be finite and std {:?} finite and non-zero",
                config.mean, config.std
            ),
        ));
    }
    PilFilter::from_name(&config.resample)
}

/// The 8-bit stage of [`clip_preprocess`]: RGB conversion, resize and center crop, as the
/// `crop × crop` RGB image transformers holds before rescaling.
///
/// Center crop as transformers' `center_crop` (`transformers/image_transforms.py`): top =
/// `(height − crop) // 2`, left = `(width − crop) // 2` (floor division); where the resized image
/// is smaller than the crop (only when `shortest_edge < crop_size`), the missing pixels are 0, as
/// its zero padding makes them.
pub fn clip_resize_crop(image: &DynamicImage, config: &ImageProcessorEntry) -> Result<RgbImage> {
    let filter = check_config(config)?;
    let rgb = pil_rgb8(image, true);
    let (in_h, in_w) = (rgb.height() as usize, rgb.width() as usize);
    if in_h == 0 || in_w == 0 {
        return Err(Error::invalid(
            "image",
            format!("the image is {in_w}×{in_h}: it has no pixels"),
        ));
    }
    let crop = config.crop_size;
    let (out_h, out_w) = resize_output_size(in_h, in_w, config.shortest_edge);
    // Offsets of the crop in the resized image (negative: the crop overhangs it).
    let top = (out_h as i64 - crop as i64).div_euclid(2);
    let left = (out_w as i64 - crop as i64).div_euclid(2);
    let inside = |offset: i64, len: usize| {
        let start = offset.max(0) as usize;
        start..((offset + crop as i64).min(len as i64) as usize).max(start)
    };
    let (rows, cols) = (inside(top, out_h), inside(left, out_w));
    let window = resample_window(&rgb, out_w, out_h, cols.clone(), rows.clone(), filter);
    let mut out = RgbImage::new(crop as u32, crop as u32);
    let (dy, dx) = (
        (rows.start as i64 - top) as usize,
        (cols.start as i64 - left) as usize,
    );
    let row_bytes = cols.len() * 3;
    for (r, line) in window.chunks_exact(row_bytes.max(1)).enumerate() {
        let start = ((dy + r) * crop + dx) * 3;
        out.as_mut()[start..start + row_bytes].copy_from_slice(line);
    }
    Ok(out)
}

/// CLIP preprocessing of one image: `(1, 3, crop, crop)` float32 `pixel_values`, equal to
/// transformers' `CLIPImageProcessor` (Pillow backend) output for the same RGB pixels.
///
/// Steps, each the one transformers runs (`PilBackend._preprocess`,
/// `transformers/image_processing_backends.py`):
/// 1. RGB: `convert_to_rgb` — alpha composited onto white for images that have it (images from
///    [`decode_image`](super::decode_image) have none: diffusers' `load_image` dropped it), gray
///    replicated;
/// 2. resize: [`resize_output_size`], then Pillow's `Image.resize(size, BICUBIC)` on the 8-bit
///    image (`src/libImaging/Resample.c`, `ImagingResample` → `ImagingResampleInner`):
///    - per axis, `precompute_coeffs`: scale = in/out, the filter's support widened by the scale
///      when downsampling (antialiasing), taps centered at `(o + 0.5)·scale`, Keys' cubic with
///      a = −0.5, weights normalized to sum 1 in double precision;
///    - `normalize_coeffs_8bpc`: weights to fixed point with `PRECISION_BITS` = 22, rounded
///      half away from zero;
///    - `ImagingResampleHorizontal_8bpc` and `ImagingResampleVertical_8bpc`, one into an
///      **8-bit** intermediate, then the other, in Pillow 13's order: vertical first when the
///      height shrinks by more than twice as many pixels as the width, else horizontal first;
///      each sum starts at ½ and is clipped to 0..=255 (`clip8`).
///
///    The integer arithmetic is reproduced exactly, so the resized pixels are identical to
///    Pillow's (checked on ~1,000 random sizes, up and down, both filters); a float bicubic
///    (`image`'s CatmullRom, torch, ONNX `Resize`) differs by whole levels, 0.01–0.03 after
///    normalization;
/// 3. center crop ([`clip_resize_crop`]);
/// 4. rescale: `rescale` casts to float64, multiplies by `rescale_factor`, casts to float32;
/// 5. normalize: `normalize` computes `(x − mean) / std` in float32 with float32 mean and std.
///
/// Steps 4–5 are the same float operations in the same precision, so the result is bit-identical
/// to transformers' for the same crop.
pub fn clip_preprocess(image: &DynamicImage, config: &ImageProcessorEntry) -> Result<Array4<f32>> {
    clip_preprocess_batch(std::slice::from_ref(image), config)
}

/// CLIP preprocessing of a batch: `(N, 3, crop, crop)` float32; see [`clip_preprocess`].
pub fn clip_preprocess_batch(
    images: &[DynamicImage],
    config: &ImageProcessorEntry,
) -> Result<Array4<f32>> {
    let _span = tracing::debug_span!("clip_preprocess", images = images.len()).entered();
    check_config(config)?;
    let crop = config.crop_size;
    let table = normalization_table(config);
    let mut out = Array4::<f32>::zeros((images.len(), 3, crop, crop));
    for (image, planes) in images.iter().zip(out.axis_iter_mut(Axis(0))) {
        let rgb = clip_resize_crop(image, config)?;
        normalize_into(&rgb, &table, planes);
    }
    Ok(out)
}

/// `pixel_values` for every 8-bit value of each channel: rescale then normalize, in
/// transformers' precision (see [`clip_preprocess`], steps 4–5).
fn normalization_table(config: &ImageProcessorEntry) -> [[f32; 256]; 3] {
    std::array::from_fn(|c| {
        std::array::from_fn(|v| {
            let rescaled = (v as f64 * config.rescale_factor) as f32;
            (rescaled - config.mean[c]) / config.std[c]
        })
    })
}

fn normalize_into(rgb: &RgbImage, table: &[[f32; 256]; 3], mut planes: ArrayViewMut3<'_, f32>) {
    let width = rgb.width() as usize;
    for (i, pixel) in rgb.pixels().enumerate() {
        let (y, x) = (i / width, i % width);
        for c in 0..3 {
            planes[[c, y, x]] = table[c][usize::from(pixel[c])];
        }
    }
}
