//! CLIP image input: decoding image files and preprocessing them for the image encoder, with the
//! same pixels as diffusers + transformers give on the same file.
//!
//! The Python path this mirrors, step by step (diffusers 0.42.1, transformers 5.24, Pillow 13):
//! 1. `diffusers.utils.load_image(path)` (`diffusers/utils/loading_utils.py`): `PIL.Image.open`,
//!    `ImageOps.exif_transpose`, `convert("RGB")` — [`load_image`] / [`decode_image`];
//! 2. `CLIPImageProcessor` with its Pillow backend (`CLIPImageProcessorPil`,
//!    `transformers/models/clip/image_processing_pil_clip.py`; `PilBackend._preprocess` in
//!    `transformers/image_processing_backends.py`): convert to RGB, resize the shortest edge,
//!    center crop, rescale, normalize — [`clip_preprocess`].
//!
//! transformers 5 switches `CLIPImageProcessor` to a torchvision backend when torchvision is
//! installed; that one resizes differently (up to 0.03 off). The Pillow backend is the reference
//! (NOTES.md), and what every diffusers version before transformers 5 used.
//!
//! What is not bit-exact, and why:
//! - JPEG decoding: Pillow uses libjpeg-turbo, `image` uses zune-jpeg; their IDCT and chroma
//!   upsampling differ by a few levels on 4:2:0 photos (pixel values then differ by up to ~0.1
//!   after normalization). PNG, WebP (lossless and lossy: `image-webp` matches libwebp) and
//!   grayscale or block-aligned JPEGs decode to the same pixels.
//! - 16-bit grayscale PNG: Pillow opens it as mode `I;16` and `convert("RGB")` clips every value
//!   above 255 to white (Pillow issues #2574, #3011), which destroys the image. unclip keeps the
//!   high byte instead, which is what Pillow itself does for 16-bit RGB, RGBA and gray+alpha PNGs.

use std::borrow::Cow;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, RgbImage};
use ndarray::{Array4, ArrayViewMut3, Axis};
use rayon::prelude::*;

use crate::bundle::ImageProcessorEntry;
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
/// [`DynamicImage::ImageRgb8`], ready for [`clip_preprocess`].
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

// ---- conversion to RGB --------------------------------------------------------------------

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
fn pil_rgb8(image: &DynamicImage, over_white: bool) -> Cow<'_, RgbImage> {
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

// ---- Pillow's resampling ------------------------------------------------------------------

/// The resampling filters of Pillow's `Resample.c` that CLIP image processors use
/// (`src/libImaging/Resample.c`: `bilinear_filter`, `bicubic_filter` and their `struct filter`
/// supports). CLIP's `preprocessor_config.json` says `"resample": 3` (BICUBIC); transformers'
/// default is 2 (BILINEAR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PilFilter {
    /// Triangle filter, support 1 (`PIL.Image.Resampling.BILINEAR`).
    Bilinear,
    /// Keys' cubic with a = −0.5, support 2 (`PIL.Image.Resampling.BICUBIC`).
    Bicubic,
}

impl PilFilter {
    /// Parses the bundle's `image_processor.resample` name.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "bicubic" => Ok(PilFilter::Bicubic),
            "bilinear" => Ok(PilFilter::Bilinear),
            _ => Err(Error::invalid(
                "image_processor.resample",
                format!("{name:?} is not supported: use \"bicubic\" (CLIP) or \"bilinear\""),
            )),
        }
    }

    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    /// The filter in double precision, with Pillow's operation order (x86-64 builds contract
    /// nothing into FMA, and neither does Rust).
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            PilFilter::Bilinear if x < 1.0 => 1.0 - x,
            PilFilter::Bicubic if x < 1.0 => ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1.0,
            PilFilter::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5,
            _ => 0.0,
        }
    }
}

/// `PRECISION_BITS` of `Resample.c`: coefficients are 22-bit fixed point, leaving 8 bits for the
/// value and 2 for the overshoot of negative lobes in a 32-bit accumulator.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// The taps of one axis for a window of outputs: output `window.start + i` reads inputs
/// `first[i]..first[i] + count[i]` with fixed-point weights `coeffs[i * ksize..][..count[i]]`.
struct AxisTaps {
    first: Vec<usize>,
    count: Vec<usize>,
    ksize: usize,
    coeffs: Vec<i32>,
}

impl AxisTaps {
    /// `precompute_coeffs` followed by `normalize_coeffs_8bpc` (`Resample.c`) for an
    /// `in_size → out_size` axis with the box covering the whole input, restricted to the outputs
    /// in `window` (each output's taps depend only on its own index).
    fn new(in_size: usize, out_size: usize, window: Range<usize>, filter: PilFilter) -> Self {
        // `scale = (double)(in1 - in0) / outSize` with the box bounds in single precision.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let inverse = 1.0 / filterscale;
        let n = window.len();
        let (mut first, mut count) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut coeffs = vec![0i32; n * ksize];
        let mut weights = vec![0f64; ksize];
        for (o, xx) in window.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero; `as` does too (and saturates).
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
            let taps = xmax.saturating_sub(xmin).min(ksize);
            let mut total = 0.0;
            for (x, w) in weights[..taps].iter_mut().enumerate() {
                *w = filter.weight(((x + xmin) as f64 - center + 0.5) * inverse);
                total += *w;
            }
            for (w, k) in weights[..taps].iter().zip(&mut coeffs[o * ksize..]) {
                let w = if total != 0.0 { w / total } else { *w };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                *k = if w < 0.0 {
                    (fixed - 0.5) as i32
                } else {
                    (fixed + 0.5) as i32
                };
            }
            first.push(xmin);
            count.push(taps);
        }
        AxisTaps {
            first,
            count,
            ksize,
            coeffs,
        }
    }

    fn len(&self) -> usize {
        self.first.len()
    }

    fn taps(&self, o: usize) -> (usize, &[i32]) {
        (
            self.first[o],
            &self.coeffs[o * self.ksize..][..self.count[o]],
        )
    }

    /// Input indices read by all outputs: `first[0]..last + count` (taps move forward).
    fn input_span(&self) -> Range<usize> {
        match (self.first.first(), self.len().checked_sub(1)) {
            (Some(&start), Some(last)) => start..self.first[last] + self.count[last],
            _ => 0..0,
        }
    }
}

/// `clip8` of `Resample.c`: the accumulator (which starts at ½ for rounding) shifted back to 8
/// bits and clamped — Pillow's lookup table is exactly this clamp.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Outputs per parallel task: enough work to amortize rayon's scheduling.
const MIN_ROWS_PER_TASK: usize = 8;

/// `ImagingResampleHorizontal_8bpc` for 3 bands: rows `rows` of `src` (interleaved RGB, `stride`
/// bytes apart, whose first pixel is input column `col_offset`) → rows of `taps.len()` pixels.
fn resample_horizontal(
    src: &[u8],
    stride: usize,
    col_offset: usize,
    rows: Range<usize>,
    taps: &AxisTaps,
) -> Vec<u8> {
    let out_width = taps.len();
    let mut out = vec![0u8; rows.len() * out_width * 3];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(out_width * 3)
        .with_min_len(MIN_ROWS_PER_TASK)
        .zip(rows)
        .for_each(|(dst, y)| {
            let line = &src[y * stride..(y + 1) * stride];
            for (o, pixel) in dst.chunks_exact_mut(3).enumerate() {
                let (first, k) = taps.taps(o);
                let mut acc = [HALF; 3];
                for (p, &w) in line[(first - col_offset) * 3..].chunks_exact(3).zip(k) {
                    acc[0] += i32::from(p[0]) * w;
                    acc[1] += i32::from(p[1]) * w;
                    acc[2] += i32::from(p[2]) * w;
                }
                pixel.copy_from_slice(&acc.map(clip8));
            }
        });
    out
}

/// `ImagingResampleVertical_8bpc`: each output row is a weighted sum of input rows of `src`
/// (`stride` bytes apart, the first being input row `row_offset`), over the bytes `bytes` of
/// each row.
fn resample_vertical(
    src: &[u8],
    stride: usize,
    row_offset: usize,
    bytes: Range<usize>,
    taps: &AxisTaps,
) -> Vec<u8> {
    let row_len = bytes.len();
    let mut out = vec![0u8; taps.len() * row_len];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(row_len)
        .with_min_len(MIN_ROWS_PER_TASK)
        .enumerate()
        .for_each_init(
            || vec![0i32; row_len],
            |acc, (o, dst)| {
                let (first, k) = taps.taps(o);
                acc.fill(HALF);
                for (j, &w) in k.iter().enumerate() {
                    let start = (first - row_offset + j) * stride + bytes.start;
                    for (a, &p) in acc.iter_mut().zip(&src[start..start + row_len]) {
                        *a += i32::from(p) * w;
                    }
                }
                for (d, &a) in dst.iter_mut().zip(acc.iter()) {
                    *d = clip8(a);
                }
            },
        );
    out
}

/// Pillow 13's pass order (`ImagingResampleInner`, `Resample.c`): the vertical pass first when
/// the height shrinks by more than twice as many pixels as the width does, so the horizontal pass
/// runs on fewer rows. Pillow ≤ 12 always ran the horizontal pass first; the order changes the
/// 8-bit intermediate, so results differ by a level here and there — for CLIP, in portrait
/// images more than twice as tall as wide that get downscaled.
fn vertical_first(in_w: usize, in_h: usize, out_w: usize, out_h: usize) -> bool {
    let shrink_h = in_h as i64 - out_h as i64;
    shrink_h > 0 && shrink_h > (in_w as i64 - out_w as i64) * 2
}

/// Pillow's `Image.resize((out_w, out_h), filter)` of an RGB image, computed only for the output
/// columns `cols` and rows `rows`; returns those `rows.len() × cols.len()` pixels, interleaved.
///
/// `ImagingResampleInner` (`Resample.c`): separable, one pass per axis into an 8-bit intermediate
/// (an axis whose size is unchanged is skipped); an unchanged size is a copy. Every output pixel
/// depends only on its own taps, so computing a window gives the same values as Pillow's full
/// image followed by a crop — and lets the center crop skip the columns and rows it throws away.
fn resample_window(
    image: &RgbImage,
    out_w: usize,
    out_h: usize,
    cols: Range<usize>,
    rows: Range<usize>,
    filter: PilFilter,
) -> Vec<u8> {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (src, stride) = (image.as_raw().as_slice(), in_w * 3);
    let horizontal = (out_w != in_w).then(|| AxisTaps::new(in_w, out_w, cols.clone(), filter));
    let vertical = (out_h != in_h).then(|| AxisTaps::new(in_h, out_h, rows.clone(), filter));
    match (horizontal, vertical) {
        (None, None) => rows
            .flat_map(|y| &src[y * stride + cols.start * 3..y * stride + cols.end * 3])
            .copied()
            .collect(),
        (Some(h), None) => resample_horizontal(src, stride, 0, rows, &h),
        (None, Some(v)) => resample_vertical(src, stride, 0, cols.start * 3..cols.end * 3, &v),
        (Some(h), Some(v)) if vertical_first(in_w, in_h, out_w, out_h) => {
            let in_cols = h.input_span();
            let bytes = in_cols.start * 3..in_cols.end * 3;
            let tmp = resample_vertical(src, stride, 0, bytes.clone(), &v);
            resample_horizontal(&tmp, bytes.len(), in_cols.start, 0..v.len(), &h)
        }
        (Some(h), Some(v)) => {
            // Only the input rows the vertical pass reads (`ybox_first..ybox_last` in Pillow).
            let in_rows = v.input_span();
            let tmp = resample_horizontal(src, stride, 0, in_rows.clone(), &h);
            resample_vertical(&tmp, h.len() * 3, in_rows.start, 0..h.len() * 3, &v)
        }
    }
}

/// Pillow's `Image.resize((width, height), filter)` of an RGB image, bit for bit (see
/// [`clip_preprocess`] for the algorithm). An empty input gives black pixels, where Pillow raises.
pub fn pil_resize(image: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let (w, h) = (width as usize, height as usize);
    let pixels = resample_window(image, w, h, 0..w, 0..h, filter);
    RgbImage::from_raw(width, height, pixels).expect("one RGB pixel per output")
}

// ---- CLIP preprocessing -------------------------------------------------------------------

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
///    [`decode_image`] have none: diffusers' `load_image` dropped it), gray replicated;
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
