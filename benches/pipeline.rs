//! Stage calls and a whole small generation on the tiny bundle (needs ONNX Runtime:
//! scripts/setup-ort). Overhead, not model speed: the tiny networks are cheap by design.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::Array4;
use unclip::noise::FastNoise;
use unclip::pipeline::{no_observer, TextToImage};
use unclip::{guidance, Pipeline, Runtime};

fn benches(c: &mut Criterion) {
    let runtime = Runtime::builder()
        .build()
        .expect("ONNX Runtime (scripts/setup-ort)");
    let pipeline = Pipeline::load(
        &runtime,
        concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny"),
    )
    .unwrap();
    let mut group = c.benchmark_group("tiny");
    group.sample_size(10);
    group.bench_function("text encode (1 prompt)", |b| {
        b.iter(|| {
            pipeline
                .text_encoder()
                .encode(&[black_box("a red circle on a blue background")])
                .unwrap()
        })
    });
    let request = TextToImage {
        prompts: vec!["a red circle on a blue background".into()],
        prior_steps: Some(5),
        decoder_steps: Some(5),
        super_res_steps: vec![2],
        ..Default::default()
    };
    group.bench_function("generate 5/5/2", |b| {
        b.iter(|| {
            pipeline
                .generate(
                    black_box(&request),
                    &mut FastNoise::new(0),
                    &mut no_observer(),
                )
                .unwrap()
        })
    });
    group.finish();
    let prediction = Array4::<f32>::from_elem((2, 6, 64, 64), 0.5);
    c.bench_function("cfg mix learned variance (2,6,64,64)", |b| {
        b.iter(|| guidance::guide_learned_variance(black_box(prediction.view()), 3, 8.0).unwrap())
    });
}

criterion_group!(pipeline_benches, benches);
criterion_main!(pipeline_benches);
