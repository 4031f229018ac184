//! torch's `F.interpolate(x, size, mode="bicubic", align_corners=False, antialias=True)`,
//! reproduced operation for operation: the super-resolution stages' input is the low-res image
//! resized this way (diffusers `UnCLIPPipeline.__call__`).

use std::borrow::Cow;

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

/// Resizes NCHW images exactly as torch's
/// `F.interpolate(images, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=True)`
/// does on CPU in float32.
///
/// unCLIP upsamples the decoder's 64×64 output (and the 256×256 super-resolution output) with this
/// before each super-resolution stage. Torch's antialiased bicubic is *not* ONNX `Resize`'s cubic:
/// it uses Keys' cubic with a = −0.5 (PIL's `Resample.c`) even when upsampling, where ONNX's
/// default is a = −0.75, and when downsampling it stretches the filter's support by the scale
/// factor. This mirrors ATen's `_upsample_bicubic2d_aa` CPU kernel
/// (`aten/src/ATen/native/cpu/UpSampleKernel.cpp`: `upsample_bicubic2d_aa_kernel_impl` →
/// `separable_upsample_generic_Nd_kernel_impl`), operation for operation:
/// - separable: a horizontal pass over the width first (skipped when the width is unchanged), then
///   a vertical pass over the height (skipped likewise); same size in and out is a copy;
/// - per-axis weights from `HelperInterpBase::_compute_indices_min_size_weights_aa`, in **float32**
///   with the double-precision steps ATen has (see [`CubicTaps::new`]), normalized to sum 1;
/// - each output is a float32 accumulation `t₀·w₀ + t₁·w₁ + …` in tap order
///   (`interpolate_aa_single_dim`), rounded exactly as the compiled kernel rounds it (see
///   [`weighted_sum`]).
///
/// Torch's x86-64 wheels run the AVX2/AVX512 builds of that file (any x86-64 CPU since 2013). There
/// the compiler fuses multiply-adds into FMA instructions — in the filter polynomial and in the
/// tail of the accumulation — and vectorizes the rest of the accumulation; the DEFAULT (SSE) build
/// fuses nothing and differs from them by up to 2.5·10⁻⁶. This function reproduces the AVX2/AVX512
/// rounding with [`f32::mul_add`] (exact on every machine, fast where the CPU has FMA), so its result
/// is the same everywhere and bit-identical to torch's (`tests/image_io.rs`).
///
/// Two deliberate differences from torch, both outside what unCLIP resizes:
/// - an output width of 1 with a changed height: torch 2.15 repeats the first output row's value
///   down the whole column (with a width of 1, TensorIterator runs the vertical kernel's inner loop
///   along the height, and that kernel reads the weights of the loop's first output only); here
///   every row gets its own weights, the result torch gives for the transposed image;
/// - empty images (a zero-sized axis) give zeros where torch raises an error.
pub fn resize_bicubic_antialias(
    images: ArrayView4<f32>,
    out_h: usize,
    out_w: usize,
) -> Array4<f32> {
    let (batch, channels, in_h, in_w) = images.dim();
    if (in_h, in_w) == (out_h, out_w) {
        return images.to_owned();
    }
    let planes = batch * channels;
    if planes == 0 || in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
        return Array4::zeros((batch, channels, out_h, out_w));
    }
    let input = images.as_standard_layout();
    let input = input
        .as_slice()
        .expect("as_standard_layout gives a contiguous array");
    let widened: Cow<[f32]> = if in_w == out_w {
        Cow::Borrowed(input)
    } else {
        Cow::Owned(resize_width(input, planes * in_h, in_w, out_w))
    };
    let resized = if in_h == out_h {
        widened.into_owned()
    } else {
        resize_height(&widened, planes, in_h, out_h, out_w)
    };
    Array4::from_shape_vec((batch, channels, out_h, out_w), resized)
        .expect("both passes write batch·channels·out_h·out_w values")
}

/// Keys' cubic convolution kernel with a = −0.5, as ATen's `HelperInterpCubic::aa_filter` computes
/// it in float32 (`cubic_convolution1`/`cubic_convolution2` of `ATen/native/UpSample.h`), with the
/// multiply-adds its AVX2/AVX512 builds fuse.
fn keys_cubic(x: f32) -> f32 {
    const A: f32 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        // ((A + 2)·x − (A + 3))·x·x + 1
        ((A + 2.0).mul_add(x, -(A + 3.0)) * x).mul_add(x, 1.0)
    } else if x < 2.0 {
        // ((A·x − 5A)·x + 8A)·x − 4A
        A.mul_add(x, -5.0 * A)
            .mul_add(x, 8.0 * A)
            .mul_add(x, -4.0 * A)
    } else {
        0.0
    }
}

/// The filter taps of one axis: for output index `o`, input indices `first[o]..first[o] + count[o]`
/// with weights `weights[o * stride..][..count[o]]`. The same for every row, so computed once.
struct CubicTaps {
    first: Vec<usize>,
    count: Vec<usize>,
    weights: Vec<f32>,
    stride: usize,
}

impl CubicTaps {
    /// ATen's `HelperInterpCubic::compute_index_ranges_weights` for float32 input, with the same
    /// mix of float and double arithmetic (C++ promotion of `int ± 0.5`, `1.0 / scale`):
    /// `scale = (float)in / out`; `support = 2·scale` when downsampling, else 2; per output `i`:
    /// `center = (float)(scale·(i + 0.5))`, inputs from `(i64)(center − support + 0.5)` (≥ 0) to
    /// `(i64)(center + support + 0.5)` (≤ in), weights `filter(((j + xmin − center) + 0.5)·invscale)`
    /// divided by their float32 sum.
    fn new(input_size: usize, output_size: usize) -> Self {
        let scale = input_size as f32 / output_size as f32;
        let downsampling = scale >= 1.0;
        let support = if downsampling {
            (2.0 * f64::from(scale)) as f32
        } else {
            2.0
        };
        let invscale = if downsampling {
            (1.0 / f64::from(scale)) as f32
        } else {
            1.0
        };
        let stride = support.ceil() as usize * 2 + 1;
        let mut taps = CubicTaps {
            first: Vec::with_capacity(output_size),
            count: Vec::with_capacity(output_size),
            weights: vec![0.0; output_size * stride],
            stride,
        };
        for (i, weights) in taps.weights.chunks_exact_mut(stride).enumerate() {
            let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
            let xmin = ((f64::from(center - support) + 0.5) as i64).max(0);
            let xmax = ((f64::from(center + support) + 0.5) as i64).min(input_size as i64);
            let count = (xmax - xmin).clamp(0, stride as i64) as usize;
            let mut total = 0.0f32;
            for (j, weight) in weights[..count].iter_mut().enumerate() {
                let distance = ((j as i64 + xmin) as f32 - center) as f64 + 0.5;
                *weight = keys_cubic((distance * f64::from(invscale)) as f32);
                total += *weight;
            }
            if total != 0.0 {
                weights[..count].iter_mut().for_each(|w| *w /= total);
            }
            taps.first.push(xmin as usize);
            taps.count.push(count);
        }
        taps
    }

    fn get(&self, output_index: usize) -> (usize, &[f32]) {
        let weights = &self.weights[output_index * self.stride..][..self.count[output_index]];
        (self.first[output_index], weights)
    }
}

/// Outputs per parallel task: enough work (~50 µs) to amortize rayon's scheduling.
const VALUES_PER_TASK: usize = 1 << 15;

/// The horizontal pass: `rows` rows of `in_w` values → rows of `out_w` values.
fn resize_width(input: &[f32], rows: usize, in_w: usize, out_w: usize) -> Vec<f32> {
    let taps = CubicTaps::new(in_w, out_w);
    let mut output = vec![0.0f32; rows * out_w];
    let rows_per_task = (VALUES_PER_TASK / out_w).max(1);
    output
        .par_chunks_mut(rows_per_task * out_w)
        .zip(input.par_chunks(rows_per_task * in_w))
        .for_each(|(dst, src)| dispatch_width(src, dst, in_w, out_w, &taps));
    output
}

/// The vertical pass: `planes` planes of `in_h` rows of `width` → planes of `out_h` rows.
fn resize_height(
    input: &[f32],
    planes: usize,
    in_h: usize,
    out_h: usize,
    width: usize,
) -> Vec<f32> {
    let taps = CubicTaps::new(in_h, out_h);
    let mut output = vec![0.0f32; planes * out_h * width];
    let rows_per_task = (VALUES_PER_TASK / width).max(1);
    output
        .par_chunks_mut(rows_per_task * width)
        .enumerate()
        .for_each(|(task, dst)| {
            let rows = HeightRows {
                input,
                in_h,
                out_h,
                width,
                first_row: task * rows_per_task,
            };
            dispatch_height(&rows, dst, &taps)
        });
    output
}

/// Input of one chunk of the vertical pass; `first_row` counts output rows across planes.
struct HeightRows<'a> {
    input: &'a [f32],
    in_h: usize,
    out_h: usize,
    width: usize,
    first_row: usize,
}

/// `t₀·w₀ + t₁·w₁ + …` rounded as ATen's AVX2/AVX512 `interpolate_aa_single_dim` rounds it.
/// The source is `acc = t₀·w₀`, then `acc += tⱼ·wⱼ` for j = 1…n−1; the compiled loop behaves as
/// - for the first 4·⌊(n−1)/4⌋ of those taps: product rounded, then added (not fused) — GCC
///   vectorizes them 4 lanes at a time with an in-order reduction, strict IEEE semantics
///   forbidding any reassociation;
/// - for the remaining (n−1) mod 4 taps (the scalar epilogue): a fused multiply-add.
///
/// Established against torch 2.15 (AVX2 and AVX512 builds alike) by testing every fused/unfused
/// pattern on tap counts from 2 to 55: only this one matches every output; all-fused or
/// all-unfused miss by one ulp on 10–40 % of downsampled outputs. Upsampling has n ≤ 5 taps, so a
/// ×4 upsample is all FMA; downsampling by s has n ≈ 4s.
#[inline(always)]
fn weighted_sum(values: &[f32], weights: &[f32]) -> f32 {
    let Some((w0, rest)) = weights.split_first() else {
        return 0.0;
    };
    let (blocks, tail) = rest.split_at(rest.len() / 4 * 4);
    let (block_values, tail_values) = values[1..].split_at(blocks.len());
    let acc = blocks
        .iter()
        .zip(block_values)
        .fold(values[0] * w0, |acc, (w, t)| acc + t * w);
    tail.iter()
        .zip(tail_values)
        .fold(acc, |acc, (w, t)| t.mul_add(*w, acc))
}

#[inline(always)]
fn width_rows(src: &[f32], dst: &mut [f32], in_w: usize, out_w: usize, taps: &CubicTaps) {
    for (src_row, dst_row) in src.chunks_exact(in_w).zip(dst.chunks_exact_mut(out_w)) {
        for (o, out) in dst_row.iter_mut().enumerate() {
            let (first, weights) = taps.get(o);
            *out = weighted_sum(&src_row[first..first + weights.len()], weights);
        }
    }
}

/// Row-wise form of [`weighted_sum`]: the same operations per element, in the same order, but
/// vectorizable across the row.
#[inline(always)]
fn height_rows(rows: &HeightRows<'_>, dst: &mut [f32], taps: &CubicTaps) {
    let width = rows.width;
    for (k, dst_row) in dst.chunks_exact_mut(width).enumerate() {
        let row = rows.first_row + k;
        let (plane, o) = (row / rows.out_h, row % rows.out_h);
        let (first, weights) = taps.get(o);
        let base = (plane * rows.in_h + first) * width;
        let mut src_rows = rows.input[base..base + weights.len() * width].chunks_exact(width);
        let (Some((w0, rest)), Some(src0)) = (weights.split_first(), src_rows.next()) else {
            dst_row.fill(0.0);
            continue;
        };
        dst_row.iter_mut().zip(src0).for_each(|(d, t)| *d = t * w0);
        let blocks = rest.len() / 4 * 4;
        for (j, (w, src_row)) in rest.iter().zip(src_rows).enumerate() {
            if j < blocks {
                dst_row
                    .iter_mut()
                    .zip(src_row)
                    .for_each(|(d, t)| *d += t * w);
            } else {
                dst_row
                    .iter_mut()
                    .zip(src_row)
                    .for_each(|(d, t)| *d = t.mul_add(*w, *d));
            }
        }
    }
}

/// Whether the CPU has hardware FMA (and AVX2 for 8-wide vectors). Without it `f32::mul_add`
/// calls libm's `fmaf`: the same results, several times slower.
#[cfg(target_arch = "x86_64")]
fn has_fma() -> bool {
    std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2")
}

fn dispatch_width(src: &[f32], dst: &mut [f32], in_w: usize, out_w: usize, taps: &CubicTaps) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: `has_fma` just checked that this CPU supports AVX2 and FMA.
        return unsafe { width_rows_fma(src, dst, in_w, out_w, taps) };
    }
    width_rows(src, dst, in_w, out_w, taps)
}

fn dispatch_height(rows: &HeightRows<'_>, dst: &mut [f32], taps: &CubicTaps) {
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: `has_fma` just checked that this CPU supports AVX2 and FMA.
        return unsafe { height_rows_fma(rows, dst, taps) };
    }
    height_rows(rows, dst, taps)
}

/// [`width_rows`] compiled with FMA instructions (callers check the CPU first).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn width_rows_fma(
    src: &[f32],
    dst: &mut [f32],
    in_w: usize,
    out_w: usize,
    taps: &CubicTaps,
) {
    width_rows(src, dst, in_w, out_w, taps)
}

/// [`height_rows`] compiled with FMA instructions (callers check the CPU first).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn height_rows_fma(rows: &HeightRows<'_>, dst: &mut [f32], taps: &CubicTaps) {
    height_rows(rows, dst, taps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic fill in [−1.5, 1.5).
    fn pattern(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 8) as f32 / (1u32 << 23) as f32 * 1.5 - 1.5
            })
            .collect()
    }

    /// The FMA-compiled kernels and the portable ones give the same bits (`mul_add` is exact in
    /// both), so results do not depend on the CPU.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fma_and_portable_kernels_agree() {
        if !has_fma() {
            return;
        }
        for (in_size, out_size) in [(64, 256), (300, 224), (200, 37), (5, 3)] {
            let (rows, width) = (3, 7);
            let taps = CubicTaps::new(in_size, out_size);
            let src = pattern(rows * in_size, 1);
            let (mut portable, mut fused) =
                (vec![0.0; rows * out_size], vec![0.0; rows * out_size]);
            width_rows(&src, &mut portable, in_size, out_size, &taps);
            // SAFETY: `has_fma` checked the CPU above.
            unsafe { width_rows_fma(&src, &mut fused, in_size, out_size, &taps) };
            assert_eq!(portable, fused, "width {in_size} → {out_size}");

            let src = pattern(2 * in_size * width, 2);
            let rows = HeightRows {
                input: &src,
                in_h: in_size,
                out_h: out_size,
                width,
                first_row: 0,
            };
            let (mut portable, mut fused) = (
                vec![0.0; 2 * out_size * width],
                vec![0.0; 2 * out_size * width],
            );
            height_rows(&rows, &mut portable, &taps);
            // SAFETY: `has_fma` checked the CPU above.
            unsafe { height_rows_fma(&rows, &mut fused, &taps) };
            assert_eq!(portable, fused, "height {in_size} → {out_size}");
        }
    }

    #[test]
    fn weighted_sum_fuses_only_the_tail() {
        // t·w = 1 − 2⁻²⁴ − 2⁻⁴⁶ is not a float: rounding it before adding −1 (unfused) or not
        // (fused) gives different sums, so every step's kind shows in the result.
        let t = 1.0 + f32::EPSILON;
        let w = 1.0 - f32::EPSILON / 2.0;
        let unfused = |acc: f32| acc + t * w;
        let fused = |acc: f32| t.mul_add(w, acc);
        assert_ne!(
            unfused(-1.0),
            fused(-1.0),
            "the probe must tell the two apart"
        );
        for n in 2..12usize {
            let values = vec![t; n];
            let mut weights = vec![w; n];
            weights[0] = -1.0 / t; // acc starts near −1 so each step's rounding shows
            let blocks = (n - 1) / 4 * 4;
            let mut expected = t * weights[0];
            for j in 1..n {
                expected = if j <= blocks {
                    unfused(expected)
                } else {
                    fused(expected)
                };
            }
            assert_eq!(
                weighted_sum(&values, &weights).to_bits(),
                expected.to_bits(),
                "{n} taps"
            );
        }
        assert_eq!(weighted_sum(&[], &[]), 0.0);
    }
}
