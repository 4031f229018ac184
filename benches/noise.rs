//! Noise generators: ns per element for a decoder-size and a super-resolution-size draw.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use unclip::noise::{FastNoise, NoiseSource, TorchGenerator};

fn benches(c: &mut Criterion) {
    for (name, shape) in [
        ("3x64x64", [1usize, 3, 64, 64]),
        ("3x256x256", [1, 3, 256, 256]),
    ] {
        let mut group = c.benchmark_group(format!("randn {name}"));
        group.throughput(Throughput::Elements(shape.iter().product::<usize>() as u64));
        let mut torch = TorchGenerator::new(0);
        group.bench_function("torch", |b| {
            b.iter(|| torch.randn(black_box(&shape)).unwrap())
        });
        let mut fast = FastNoise::new(0);
        group.bench_function("fast", |b| {
            b.iter(|| fast.randn(black_box(&shape)).unwrap())
        });
        group.finish();
    }
}

criterion_group!(noise_benches, benches);
criterion_main!(noise_benches);
