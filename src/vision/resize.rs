//! Pillow's `Image.resize` of an RGB image, bit for bit: the fixed-point separable resampling of
//! Pillow 13's `src/libImaging/Resample.c` (`precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`, `ImagingResampleInner`),
//! which the CLIP preprocessing resizes with. A float resize (`image`'s CatmullRom, torch, ONNX
//! `Resize`) differs from it by whole 8-bit levels.

use std::ops::Range;

use image::RgbImage;
use rayon::prelude::*;

use crate::{Error, Result};

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
pub(super) fn resample_window(
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
/// [`clip_preprocess`](super::clip_preprocess) for the algorithm). An empty input gives black
/// pixels, where Pillow raises.
pub fn pil_resize(image: &RgbImage, width: u32, height: u32, filter: PilFilter) -> RgbImage {
    if width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    let (w, h) = (width as usize, height as usize);
    let pixels = resample_window(image, w, h, 0..w, 0..h, filter);
    RgbImage::from_raw(width, height, pixels).expect("one RGB pixel per output")
}
