//! CLIP image input: decoding and preprocessing for the image encoder.
//!
//! Interim version: resize-to-fill with a Catmull-Rom filter and CLIP normalization. It follows
//! the shape of transformers' `CLIPImageProcessor` (shortest edge → crop size, center crop,
//! scale 1/255, mean/std) but not Pillow's exact bicubic arithmetic, so pixel values differ from
//! the reference by up to a few 1e-2; the Pillow-exact port replaces it.

use std::path::Path;

use ndarray::Array4;

use crate::bundle::ImageProcessorEntry;
use crate::{Error, Result};

/// Limits checked before decoding an image.
#[derive(Clone, Debug)]
pub struct ImageLimits {
    /// Largest width × height accepted.
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// 64 megapixels.
    fn default() -> Self {
        ImageLimits {
            max_pixels: 64 << 20,
        }
    }
}

fn image_error(path: &str, reason: impl ToString) -> Error {
    Error::Image {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Decodes PNG/JPEG/WebP bytes, refusing images above `limits` before decoding.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<image::DynamicImage> {
    decode(bytes, "<memory>", limits)
}

/// Reads and decodes an image file (see [`decode_image`]).
pub fn load_image(path: &Path, limits: &ImageLimits) -> Result<image::DynamicImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(&bytes, &path.display().to_string(), limits)
}

fn decode(bytes: &[u8], name: &str, limits: &ImageLimits) -> Result<image::DynamicImage> {
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| image_error(name, e))
    };
    let (w, h) = reader()?
        .into_dimensions()
        .map_err(|e| image_error(name, format!("{e} (use a PNG, JPEG or WebP file)")))?;
    if w == 0 || h == 0 {
        return Err(image_error(name, "image has zero width or height"));
    }
    if w as u64 * h as u64 > limits.max_pixels {
        return Err(image_error(
            name,
            format!(
                "{w}×{h} exceeds the limit of {} pixels; downscale it first",
                limits.max_pixels
            ),
        ));
    }
    reader()?
        .decode()
        .map_err(|e| image_error(name, format!("{e} (the file may be corrupt)")))
}

/// CLIP preprocessing of a batch: `(N, 3, crop, crop)` float32.
pub fn clip_preprocess_batch(
    images: &[image::DynamicImage],
    config: &ImageProcessorEntry,
) -> Result<Array4<f32>> {
    let c = config.crop_size;
    let mut out = Array4::<f32>::zeros((images.len(), 3, c, c));
    for (i, img) in images.iter().enumerate() {
        let rgb = img
            .resize_to_fill(c as u32, c as u32, image::imageops::FilterType::CatmullRom)
            .to_rgb8();
        for (x, y, p) in rgb.enumerate_pixels() {
            for ch in 0..3 {
                let v = p[ch] as f32 * config.rescale_factor as f32;
                out[[i, ch, y as usize, x as usize]] = (v - config.mean[ch]) / config.std[ch];
            }
        }
    }
    Ok(out)
}
