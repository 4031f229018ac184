//! CLIP image input cost for a typical photo size (1024 × 768 RGB): preprocessing alone (Pillow
//! bicubic resize to 298 × 224 computed only inside the 224² crop, rescale, normalize), and
//! decoding the same image from PNG and JPEG bytes. Both run once per source image of a
//! variation request, outside ONNX Runtime, so they count against the 2 % overhead budget of
//! docs/architecture.md.

use std::hint::black_box;
use std::io::Cursor;

use criterion::{criterion_group, criterion_main, Criterion};
use image::{DynamicImage, ImageFormat, RgbImage};
use unclip::bundle::ImageProcessorEntry;
use unclip::vision::{clip_preprocess, decode_image, ImageLimits};

/// CLIP's settings, as the tiny bundle's `bundle.json` records them.
fn clip_config() -> ImageProcessorEntry {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny/bundle.json");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(manifest["image_processor"].clone()).unwrap()
}

/// Smooth color fields with a deterministic texture, so the encoders see photo-like content.
fn photo(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let texture = ((x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 17) as f32;
        let channel = |v: f32| (128.0 + 100.0 * v.sin() + texture).clamp(0.0, 255.0) as u8;
        image::Rgb([
            channel(fx / 37.0 + fy / 53.0),
            channel(fx / 31.0 - fy / 29.0),
            channel((fx + fy) / 71.0),
        ])
    })
}

fn preprocess(c: &mut Criterion) {
    let config = clip_config();
    let image = DynamicImage::ImageRgb8(photo(1024, 768));
    c.bench_function("clip_preprocess 1024x768 rgb -> 1x3x224x224", |b| {
        b.iter(|| clip_preprocess(black_box(&image), &config).unwrap())
    });
}

fn decode(c: &mut Criterion) {
    let image = DynamicImage::ImageRgb8(photo(1024, 768));
    let limits = ImageLimits::default();
    for (name, format) in [("png", ImageFormat::Png), ("jpeg", ImageFormat::Jpeg)] {
        let mut bytes = Vec::new();
        image
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        c.bench_function(&format!("decode_image 1024x768 {name}"), |b| {
            b.iter(|| decode_image(black_box(&bytes), &limits).unwrap())
        });
    }
}

criterion_group!(benches, preprocess, decode);
criterion_main!(benches);
