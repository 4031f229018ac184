//! Scheduler cost per denoising step, at Karlo's decoder size: one `UnCLIPScheduler` step with
//! learned variance (model output (2, 6, 64, 64), sample (2, 3, 64, 64)), with and without the
//! variance noise. The scheduler is pure Rust overhead in the loop, so it counts against the 2 %
//! budget of DESIGN.md §9.

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{ArrayD, IxDyn};
use std::hint::black_box;
use unclip::noise::NoiseSource;
use unclip::schedulers::scheduler_from_config;

/// Hands out copies of one fixed tensor, so the bench measures the step, not a generator.
struct FixedNoise(ArrayD<f32>);

impl NoiseSource for FixedNoise {
    fn randn(&mut self, shape: &[usize]) -> unclip::Result<ArrayD<f32>> {
        assert_eq!(self.0.shape(), shape);
        Ok(self.0.clone())
    }
}

/// A deterministic, non-constant fill in [−1, 1).
fn pattern(shape: &[usize], seed: u32) -> ArrayD<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    })
}

fn decoder_step(c: &mut Criterion) {
    let config = serde_json::json!({
        "_class_name": "UnCLIPScheduler",
        "variance_type": "learned_range",
        "prediction_type": "epsilon",
        "clip_sample": true,
        "clip_sample_range": 1.0,
    });
    let mut scheduler = scheduler_from_config(&config, 25).expect("decoder scheduler");
    let model_output = pattern(&[2, 6, 64, 64], 1);
    let sample = pattern(&[2, 3, 64, 64], 2);
    let mut noise = FixedNoise(pattern(&[2, 3, 64, 64], 3));
    let last = scheduler.timesteps().len() - 1;

    c.bench_function("unclip decoder step (2,3,64,64) learned_range", |b| {
        b.iter(|| {
            scheduler
                .step(
                    black_box(12),
                    model_output.view(),
                    sample.view(),
                    &mut noise,
                )
                .expect("step")
        })
    });
    c.bench_function("unclip decoder last step (2,3,64,64), no noise", |b| {
        b.iter(|| {
            scheduler
                .step(
                    black_box(last),
                    model_output.view(),
                    sample.view(),
                    &mut noise,
                )
                .expect("step")
        })
    });
}

criterion_group!(benches, decoder_step);
criterion_main!(benches);
