//! Scheduler cost per denoising step, at Karlo's decoder size: one `UnCLIPScheduler` step with
//! learned variance (model output (2, 6, 64, 64), sample (2, 3, 64, 64)), with and without the
//! variance noise; one DDIM step (η = 0.5, so with its noise) and one second-order DPM-Solver++
//! step on a 3×64×64 sample, from Karlo's decoder config converted as `--scheduler` does. The
//! scheduler is pure Rust overhead in the loop, so it counts against the 2 % budget of
//! docs/architecture.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ndarray::{ArrayD, IxDyn};
use std::hint::black_box;
use unclip::noise::NoiseSource;
use unclip::schedulers::{
    scheduler_from_config, DPMSolverMultistepScheduler, Scheduler, SchedulerConfig, SchedulerKind,
};

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

/// Karlo's decoder scheduler config, as in the bundle.
fn karlo_decoder_config() -> SchedulerConfig {
    SchedulerConfig::from_json(&serde_json::json!({
        "_class_name": "UnCLIPScheduler",
        "beta_schedule": "squaredcos_cap_v2",
        "variance_type": "learned_range",
        "prediction_type": "epsilon",
        "clip_sample": true,
        "clip_sample_range": 1.0,
        "num_train_timesteps": 1000,
    }))
    .expect("decoder config")
}

fn solver_steps(c: &mut Criterion) {
    let shape = [1, 3, 64, 64];
    let model_output = pattern(&shape, 4);
    let sample = pattern(&shape, 5);

    let mut ddim = karlo_decoder_config()
        .to_kind(SchedulerKind::Ddim)
        .and_then(|config| config.with_eta(0.5))
        .and_then(|config| config.build(25))
        .expect("DDIM scheduler");
    let mut noise = FixedNoise(pattern(&shape, 6));
    c.bench_function("ddim step (1,3,64,64) eta 0.5", |b| {
        b.iter(|| {
            ddim.step(
                black_box(12),
                model_output.view(),
                sample.view(),
                &mut noise,
            )
            .expect("step")
        })
    });

    let SchedulerConfig::DpmSolverMultistep(config) = karlo_decoder_config()
        .to_kind(SchedulerKind::DpmSolverPP)
        .expect("DPM-Solver++ config")
    else {
        unreachable!("to_kind(DpmSolverPP) gives a DPM-Solver++ config")
    };
    let mut after_first = DPMSolverMultistepScheduler::new(config, 25).expect("DPM-Solver++");
    let first = after_first
        .step(0, model_output.view(), sample.view(), &mut noise)
        .expect("first step");
    c.bench_function("dpm++ second-order step (1,3,64,64)", |b| {
        b.iter_batched(
            || after_first.clone(),
            |mut solver| {
                solver
                    .step(1, model_output.view(), first.view(), &mut noise)
                    .expect("step")
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, decoder_step, solver_steps);
criterion_main!(benches);
