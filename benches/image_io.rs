//! Image post-processing cost at Karlo's sizes: the antialiased bicubic upsample before each
//! super-resolution stage (decoder 64² → 256², batch 2; 256² → 1024², batch 1) and the final
//! float → RGB8 conversion of a 1024² image. All of it is Rust's own overhead in the pipeline, so it
//! counts against the 2 % budget for unclip's own work (docs/architecture.md).

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::Array4;
use std::hint::black_box;
use unclip::image_io::{resize_bicubic_antialias, to_rgb8};

/// A deterministic, non-constant fill in [−1, 1).
fn pattern(shape: (usize, usize, usize, usize), seed: u32) -> Array4<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    Array4::from_shape_simple_fn(shape, || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    })
}

fn resize(c: &mut Criterion) {
    let decoder_out = pattern((2, 3, 64, 64), 1);
    c.bench_function("resize_bicubic_aa 2x3x64x64 -> 256", |b| {
        b.iter(|| resize_bicubic_antialias(black_box(decoder_out.view()), 256, 256))
    });
    let sr_out = pattern((1, 3, 256, 256), 2);
    c.bench_function("resize_bicubic_aa 1x3x256x256 -> 1024", |b| {
        b.iter(|| resize_bicubic_antialias(black_box(sr_out.view()), 1024, 1024))
    });
}

fn convert(c: &mut Criterion) {
    let image = pattern((1, 3, 1024, 1024), 3);
    c.bench_function("to_rgb8 1x3x1024x1024", |b| {
        b.iter(|| to_rgb8(black_box(image.view())))
    });
}

criterion_group!(benches, resize, convert);
criterion_main!(benches);
