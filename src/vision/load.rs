//! Decoding user images the way `diffusers.utils.load_image` reads them: PNG, JPEG and WebP
//! only, limits checked from the header before any pixel is allocated (a small file declaring a
//! huge image is refused), EXIF orientation applied, alpha dropped (`convert("RGB")`), and an
//! [`Error::Image`] that says what is wrong with the file and what to do about it.

use std::io::Read;
use std::path::Path;

use image::{DynamicImage, ImageDecoder};

use super::rgb::pil_rgb8;
use crate::{Error, Result};

/// Limits checked before an image is decoded, so a small file declaring a huge image (a
/// "decompression bomb") is refused without allocating its pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest width × height accepted, read from the file's header before decoding.
    pub max_pixels: u64,
    /// Largest encoded input (file size) accepted, in bytes.
    pub max_bytes: u64,
}

impl Default for ImageLimits {
    /// 64 megapixels (2²⁶: an 8192 × 8192 image) and 64 MiB of encoded input: far above any image
    /// CLIP sees (it is cut to 224 × 224), and the decoded buffer stays under 512 MiB even at 16
    /// bits per RGBA channel — the `image` crate's own default allocation limit.
    fn default() -> Self {
        ImageLimits {
            max_pixels: 1 << 26,
            max_bytes: 64 << 20,
        }
    }
}

/// Name used in errors for images decoded from memory.
const MEMORY: &str = "<memory>";

fn image_error(name: &str, reason: impl Into<String>) -> Error {
    Error::Image {
        path: name.to_string(),
        reason: reason.into(),
    }
}

/// Decodes a PNG, JPEG or WebP image (8 or 16 bits, gray, gray + alpha, RGB, RGBA, palette) the
/// way `diffusers.utils.load_image` reads a file: EXIF orientation applied
/// (`PIL.ImageOps.exif_transpose`), then `convert("RGB")` — so the result is always
/// [`DynamicImage::ImageRgb8`], ready for [`clip_preprocess`](super::clip_preprocess).
///
/// `convert("RGB")` *drops* alpha (it does not composite onto a background), and so does this
/// function: a transparent pixel keeps the color stored under it. 16-bit samples keep their high
/// byte, as Pillow's PNG reader does (see the module doc for 16-bit grayscale, where Pillow clips).
///
/// Errors ([`Error::Image`]): empty input, input over `limits.max_bytes`, an unknown format, a
/// corrupt or truncated header, zero width or height, width × height over `limits.max_pixels`
/// (checked from the header, before any pixel is decoded), corrupt pixel data.
pub fn decode_image(bytes: &[u8], limits: &ImageLimits) -> Result<DynamicImage> {
    decode(bytes, MEMORY, limits)
}

/// Reads and decodes an image file; see [`decode_image`]. The file size is checked against
/// `limits.max_bytes` before it is read.
pub fn load_image(path: &Path, limits: &ImageLimits) -> Result<DynamicImage> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let name = path.display().to_string();
    check_byte_size(size, &name, limits)?;
    let mut bytes = Vec::with_capacity(size as usize);
    // `take` guards against a file that grows between `metadata` and the read.
    file.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    decode(&bytes, &name, limits)
}

fn check_byte_size(size: u64, name: &str, limits: &ImageLimits) -> Result<()> {
    if size == 0 {
        return Err(image_error(
            name,
            "the input is empty (0 bytes): the file was not written completely; give a PNG, JPEG or WebP image",
        ));
    }
    if size > limits.max_bytes {
        return Err(image_error(
            name,
            format!(
                "the input is {size} bytes, over the limit of {} bytes (ImageLimits::max_bytes); \
                 re-encode or downscale the image, or raise the limit",
                limits.max_bytes
            ),
        ));
    }
    Ok(())
}

fn decode(bytes: &[u8], name: &str, limits: &ImageLimits) -> Result<DynamicImage> {
    check_byte_size(bytes.len() as u64, name, limits)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_error(name, e.to_string()))?;
    match reader.format() {
        None => {
            return Err(image_error(
                name,
                "not a PNG, JPEG or WebP image (unrecognized file signature); convert it to one of these",
            ))
        }
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) => {}
        // The `image` crate may decode more (GIF is enabled for writing animations); the CLIP
        // preprocessing is proven against Pillow for these three only.
        Some(format) => {
            return Err(image_error(
                name,
                format!(
                    "{format:?} images are not supported: unclip reads PNG, JPEG and WebP; \
                     convert the image to one of these"
                ),
            ))
        }
    }
    // The decoder's own allocation cap: 16 bytes per allowed pixel covers the decoded buffer
    // (≤ 8 bytes per pixel: RGBA, 16 bits) and the decoders' working planes; never below the
    // `image` crate's default of 512 MiB.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(16).max(512 << 20));
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| {
        if let Some((w, h)) = png_declared_size(bytes).filter(|&(w, h)| w == 0 || h == 0) {
            return zero_size_error(name, w, h);
        }
        match e {
            image::ImageError::Unsupported(e) => image_error(
                name,
                format!("{e}: unclip reads PNG, JPEG and WebP; convert the image to one of these"),
            ),
            e => image_error(
                name,
                format!("cannot read the image header ({e}): the file is truncated or corrupt; re-export it"),
            ),
        }
    })?;
    if is_jpeg(bytes) && !jpeg_has_end_after_scan(bytes) {
        return Err(image_error(
            name,
            "the JPEG data ends before its end-of-image marker: the file is truncated or corrupt; \
             re-export it",
        ));
    }
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(zero_size_error(name, width, height));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(image_error(
            name,
            format!(
                "the image is {width}×{height} = {pixels} pixels, over the limit of {} \
                 (ImageLimits::max_pixels); downscale it first, or raise the limit",
                limits.max_pixels
            ),
        ));
    }
    let orientation = decoder.orientation().map_err(|e| {
        image_error(
            name,
            format!("cannot read the EXIF metadata ({e}); re-export the image"),
        )
    })?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(limit) => image_error(
            name,
            format!("decoding needs more memory than allowed ({limit}); downscale the image"),
        ),
        e => image_error(
            name,
            format!(
                "cannot decode the pixels ({e}): the file is truncated or corrupt; re-export it"
            ),
        ),
    })?;
    image.apply_orientation(orientation);
    Ok(match image {
        DynamicImage::ImageRgb8(_) => image,
        other => DynamicImage::ImageRgb8(pil_rgb8(&other, false).into_owned()),
    })
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Whether an end-of-image marker (FF D9) follows the first scan. zune-jpeg (in the lenient mode
/// `image` runs it in) decodes a truncated JPEG without complaint, filling the missing part with
/// gray, where Pillow raises "image file is truncated". Inside entropy-coded data an FF byte is
/// always followed by 00 or a restart marker (D0–D7), so FF D9 after the scan header can only be
/// the real end; an EXIF thumbnail's own FF D9 comes before the scan and does not count.
fn jpeg_has_end_after_scan(bytes: &[u8]) -> bool {
    // Walk the marker segments from SOI (FF D8) to the first start-of-scan (FF DA), skipping
    // stray bytes between segments as libjpeg's `next_marker` does.
    let mut at = 2;
    while at + 4 <= bytes.len() {
        let marker = bytes[at + 1];
        if bytes[at] != 0xFF || marker == 0xFF {
            at += 1;
            continue;
        }
        if marker == 0x01 || (0xD0..=0xD9).contains(&marker) {
            at += 2; // markers without a length
            continue;
        }
        let length = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if marker == 0xDA {
            let scan = at + 2 + length;
            return bytes
                .get(scan..)
                .is_some_and(|rest| rest.windows(2).rev().any(|w| w == [0xFF, 0xD9]));
        }
        at += 2 + length;
    }
    false
}

fn zero_size_error(name: &str, width: u32, height: u32) -> Error {
    image_error(
        name,
        format!("the image is {width}×{height}: it has no pixels; give a non-empty image"),
    )
}

/// Width and height from a PNG's IHDR chunk, so a zero-sized PNG (which the decoder rejects as
/// "invalid dimensions") gets an error that says so.
fn png_declared_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let header = bytes.get(..24)?;
    if &header[..8] != b"\x89PNG\r\n\x1a\n" || &header[12..16] != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(&header[16..20]), be(&header[20..24])))
}
