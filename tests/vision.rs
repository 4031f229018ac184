//! `vision` against transformers' `CLIPImageProcessor` (Pillow backend) and diffusers'
//! `load_image`: fixtures from `export/vision_reference.py` (`tests/fixtures/vision/`) and the
//! variation case of `export/reference.py`; typed errors for bad inputs; EXIF orientation.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, read_f32, ref_dir, repo};
use image::{DynamicImage, RgbImage};
use ndarray::{s, Array2, Array4, Ix2, Ix3, Ix4};
use unclip::bundle::ImageProcessorEntry;
use unclip::vision::{
    clip_preprocess, clip_preprocess_batch, clip_resize_crop, decode_image, load_image, pil_resize,
    resize_output_size, ImageLimits, PilFilter,
};
use unclip::Error;

/// Pixel values vs transformers. The resize is Pillow's integer arithmetic reproduced exactly and
/// rescale/normalize are the same float32 operations, so the measured difference is 0; 1e-6 leaves
/// room for nothing but a last-bit slip, while one 8-bit level off is 1/255/0.27 ≈ 0.015.
const PIXEL_TOL: f32 = 1e-6;

/// `photo_420` only: a 4:2:0 color JPEG, which Pillow decodes with libjpeg-turbo and `image` with
/// zune-jpeg. Their IDCT and chroma upsampling differ by a few levels (measured on this fixture:
/// 32% of the cropped bytes differ, by at most 4 levels; pixel values by at most 0.058, 0.0057 on
/// average). Bounds a wrong decode (channel order, orientation, crop: ≥ 0.5) without pretending
/// the decoders agree.
const JPEG_DECODER_TOL: f32 = 0.1;
const JPEG_DECODER_MEAN_TOL: f32 = 0.01;

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/vision")
}

fn manifest() -> serde_json::Value {
    let path = fixtures().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json parses")
}

fn config_of(value: &serde_json::Value) -> ImageProcessorEntry {
    serde_json::from_value(value.clone()).expect("processor settings in bundle.json form")
}

fn base_config() -> ImageProcessorEntry {
    config_of(&manifest()["processor"])
}

/// transformers' float for each 8-bit value of each channel, (3, 256).
fn normalization_table() -> Array2<f32> {
    read_f32(&fixtures().join("normalization_table.npy"))
        .into_dimensionality::<Ix2>()
        .unwrap()
}

/// A lossless (PNG or WebP) reference read as raw 8-bit RGB (no unclip code involved).
fn read_rgb_reference(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// (max |Δ|, number of differing bytes) between two 8-bit images of the same size.
fn compare_u8(actual: &RgbImage, expected: &RgbImage) -> (u8, usize) {
    assert_eq!(actual.dimensions(), expected.dimensions(), "crop size");
    actual
        .as_raw()
        .iter()
        .zip(expected.as_raw())
        .fold((0, 0), |(max, n), (a, e)| {
            (max.max(a.abs_diff(*e)), n + usize::from(a != e))
        })
}

fn max_abs(actual: &Array4<f32>, expected: &Array4<f32>) -> (f32, f32) {
    let diffs: Vec<f32> = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .collect();
    let max = diffs.iter().fold(0.0f32, |m, d| m.max(*d));
    (max, diffs.iter().sum::<f32>() / diffs.len() as f32)
}

#[test]
fn every_fixture_case_matches_transformers() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().expect("cases");
    assert!(cases.len() >= 12, "fixture has {} cases", cases.len());
    let limits = ImageLimits::default();
    let table = normalization_table();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let source = fixtures().join(case["source"].as_str().unwrap());
        let config = config_of(&case["processor"]);
        let image = match case["load"].as_str().unwrap() {
            "file" => load_image(&source, &limits).unwrap(),
            // An image handed over in memory with its alpha (transformers composites it on white).
            "memory" => image::open(&source).unwrap(),
            other => panic!("{name}: unknown load mode {other}"),
        };
        let size = case["input_size"].as_array().unwrap();
        let size = (
            size[0].as_u64().unwrap() as u32,
            size[1].as_u64().unwrap() as u32,
        );
        assert_eq!(
            (image.width(), image.height()),
            size,
            "{name}: decoded size"
        );

        let crop = clip_resize_crop(&image, &config).unwrap();
        let expected_crop = read_rgb_reference(&fixtures().join(case["crop"].as_str().unwrap()));
        let (crop_max, crop_diffs) = compare_u8(&crop, &expected_crop);

        let pixels = clip_preprocess(&image, &config).unwrap();
        let rows: Vec<usize> = case["row_indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as usize)
            .collect();
        let expected_rows = read_f32(&fixtures().join(case["rows"].as_str().unwrap()))
            .into_dimensionality::<Ix3>()
            .unwrap();
        let actual_rows = pixels.select(ndarray::Axis(2), &rows);
        let actual_rows = actual_rows.slice(s![0, .., .., ..]);

        // All of transformers' values: its crop through its own per-value table (the reference
        // script asserts this equals its pixel_values exactly).
        let expected_all = Array4::from_shape_fn(
            (1, 3, crop.height() as usize, crop.width() as usize),
            |(_, c, y, x)| table[[c, expected_crop.get_pixel(x as u32, y as u32)[c] as usize]],
        );
        if name == "photo_420" {
            let (max, mean) = max_abs(&pixels, &expected_all);
            eprintln!(
                "{name}: crop bytes differing {crop_diffs}/{} (max {crop_max} levels); \
                 pixel_values max |Δ| {max:.3e}, mean {mean:.3e} (JPEG decoders differ)",
                crop.len()
            );
            assert!(
                max <= JPEG_DECODER_TOL,
                "{name}: max |Δ| {max} > {JPEG_DECODER_TOL}"
            );
            assert!(mean <= JPEG_DECODER_MEAN_TOL, "{name}: mean |Δ| {mean}");
            continue;
        }
        assert_eq!(
            crop_diffs, 0,
            "{name}: {crop_diffs} crop bytes differ from transformers (max {crop_max} levels)"
        );
        let mut max = assert_close(
            &format!("{name} all values (crop → table)"),
            pixels.view().into_dyn(),
            expected_all.view().into_dyn(),
            PIXEL_TOL,
        );
        max = max.max(assert_close(
            &format!("{name} rows {rows:?}"),
            actual_rows.into_dyn(),
            expected_rows.view().into_dyn(),
            PIXEL_TOL,
        ));
        if let Some(full) = case["pixel_values"].as_str() {
            let expected = read_f32(&fixtures().join(full));
            max = max.max(assert_close(
                &format!("{name} pixel_values"),
                pixels.view().into_dyn(),
                expected.view(),
                PIXEL_TOL,
            ));
        }
        eprintln!("{name}: crop identical; pixel_values max |Δ| {max:.3e}");
    }
}

/// Every 8-bit value of every channel maps to transformers' float (rescale in f64 → f32, then
/// `(x − mean) / std` in f32): with the identical crops above this proves every pixel value.
#[test]
fn normalization_matches_transformers_for_every_value() {
    let config = base_config();
    let crop = config.crop_size;
    // The image `table_image` of export/vision_reference.py: no resize, no crop.
    let image = RgbImage::from_fn(crop as u32, crop as u32, |x, y| {
        let v = |c: u32| ((y * crop as u32 + x + 85 * c) % 256) as u8;
        image::Rgb([v(0), v(1), v(2)])
    });
    let pixels = clip_preprocess(&DynamicImage::ImageRgb8(image.clone()), &config).unwrap();
    let table = normalization_table();
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            let (actual, expected) = (
                pixels[[0, c, y as usize, x as usize]],
                table[[c, p[c] as usize]],
            );
            assert_eq!(
                actual.to_bits(),
                expected.to_bits(),
                "channel {c} value {}",
                p[c]
            );
        }
    }
}

/// The `variation` case of the pipeline parity fixtures: diffusers' own `feature_extractor` call.
#[test]
fn variation_source_matches_diffusers_pixel_values() {
    let dir = ref_dir().join("variation");
    let image = load_image(&dir.join("source.png"), &ImageLimits::default()).unwrap();
    let pixels = clip_preprocess(&image, &base_config()).unwrap();
    let expected = read_f32(&dir.join("pixel_values.npy"))
        .into_dimensionality::<Ix4>()
        .unwrap();
    let max = assert_close(
        "variation pixel_values",
        pixels.view().into_dyn(),
        expected.view().into_dyn(),
        PIXEL_TOL,
    );
    eprintln!("variation source.png: pixel_values max |Δ| {max:.3e}");
}

/// EXIF orientations 1–8 give the image `PIL.ImageOps.exif_transpose` gives.
#[test]
fn exif_orientation_applied_like_pillow() {
    let manifest = manifest();
    let orientations = manifest["orientations"].as_array().unwrap();
    assert_eq!(orientations.len(), 8);
    for o in orientations {
        let n = o["orientation"].as_u64().unwrap();
        let image = load_image(
            &fixtures().join(o["jpeg"].as_str().unwrap()),
            &ImageLimits::default(),
        )
        .unwrap()
        .to_rgb8();
        let expected = read_rgb_reference(&fixtures().join(o["expected"].as_str().unwrap()));
        assert_eq!(
            image.dimensions(),
            expected.dimensions(),
            "orientation {n}: size"
        );
        assert_eq!(
            compare_u8(&image, &expected).1,
            0,
            "orientation {n}: pixels"
        );
    }
    // Orientation 6 turns the stored 240×160 into 160×240.
    let rotated = load_image(&fixtures().join("src_exif6.jpg"), &ImageLimits::default()).unwrap();
    assert_eq!((rotated.width(), rotated.height()), (160, 240));
}

#[test]
fn decoded_images_are_rgb8_with_alpha_dropped() {
    let path = fixtures().join("src_rgba_260x240.png");
    let raw = image::open(&path).unwrap().to_rgba8();
    let decoded = load_image(&path, &ImageLimits::default()).unwrap();
    let DynamicImage::ImageRgb8(rgb) = &decoded else {
        panic!("decode_image returned {:?}", decoded.color());
    };
    for (p, q) in rgb.pixels().zip(raw.pixels()) {
        assert_eq!(p.0, [q[0], q[1], q[2]]);
    }
    // Fully transparent rows keep their stored color.
    assert_eq!(raw.get_pixel(5, 5)[3], 0);
}

// ---- errors ---------------------------------------------------------------------------------

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                0xEDB8_8320 ^ (crc >> 1)
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header declares `width × height` RGB pixels, with an empty (invalid) IDAT.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let body: Vec<u8> = kind.iter().chain(data).copied().collect();
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(b"IEND", &[]);
    png
}

fn image_error(result: unclip::Result<DynamicImage>) -> (String, String) {
    match result {
        Err(Error::Image { path, reason }) => (path, reason),
        Err(other) => panic!("expected Error::Image, got {other:?}"),
        Ok(image) => panic!(
            "expected an error, decoded {}×{}",
            image.width(),
            image.height()
        ),
    }
}

#[test]
fn huge_declared_size_is_rejected_before_decoding() {
    let start = std::time::Instant::now();
    let (path, reason) = image_error(decode_image(
        &png_declaring(100_000, 100_000),
        &ImageLimits::default(),
    ));
    assert_eq!(path, "<memory>");
    assert!(
        reason.contains("100000×100000") && reason.contains("max_pixels"),
        "{reason}"
    );
    // Decoding would need 30 GB and fail on the empty IDAT: the header alone decided.
    assert!(start.elapsed().as_secs_f64() < 1.0);
    // A lower limit applies the same way to a real image.
    let limits = ImageLimits {
        max_pixels: 300 * 200 - 1,
        ..ImageLimits::default()
    };
    let (_, reason) = image_error(load_image(&fixtures().join("src_rgb_300x200.png"), &limits));
    assert!(reason.contains("300×200"), "{reason}");
}

#[test]
fn oversized_input_is_rejected_before_reading() {
    let limits = ImageLimits {
        max_bytes: 1000,
        ..ImageLimits::default()
    };
    let path = fixtures().join("src_rgb_300x200.png");
    let (p, reason) = image_error(load_image(&path, &limits));
    assert_eq!(p, path.display().to_string());
    assert!(reason.contains("max_bytes"), "{reason}");
    let bytes = std::fs::read(&path).unwrap();
    let (_, reason) = image_error(decode_image(&bytes, &limits));
    assert!(reason.contains("max_bytes"), "{reason}");
}

#[test]
fn zero_sized_image_is_a_typed_error() {
    for (w, h) in [(0, 10), (10, 0), (0, 0)] {
        let (_, reason) = image_error(decode_image(&png_declaring(w, h), &ImageLimits::default()));
        assert!(
            reason.contains(&format!("{w}×{h}")) && reason.contains("no pixels"),
            "{reason}"
        );
    }
}

#[test]
fn empty_input_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    std::fs::write(&path, b"").unwrap();
    let (p, reason) = image_error(load_image(&path, &ImageLimits::default()));
    assert_eq!(p, path.display().to_string());
    assert!(reason.contains("empty"), "{reason}");
    let (_, reason) = image_error(decode_image(&[], &ImageLimits::default()));
    assert!(reason.contains("empty"), "{reason}");
}

#[test]
fn corrupt_and_unknown_inputs_are_typed_errors() {
    let limits = ImageLimits::default();
    let (_, reason) = image_error(decode_image(b"this is not an image at all", &limits));
    assert!(reason.contains("not a PNG, JPEG or WebP"), "{reason}");
    let (_, reason) = image_error(decode_image(
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        &limits,
    ));
    assert!(
        reason.contains("Gif") && reason.contains("PNG, JPEG and WebP"),
        "{reason}"
    );

    for source in ["src_rgb_300x200.png", "src_photo_420.jpg", "src_lossy.webp"] {
        let bytes = std::fs::read(fixtures().join(source)).unwrap();
        // Header cut: the decoder cannot even read the size.
        let (_, reason) = image_error(decode_image(&bytes[..20], &limits));
        assert!(reason.contains("corrupt"), "{source} (20 bytes): {reason}");
        // Pixel data cut or scrambled after a valid header.
        let (_, reason) = image_error(decode_image(&bytes[..bytes.len() / 2], &limits));
        assert!(reason.contains("corrupt"), "{source} (half): {reason}");
    }
    let mut png = std::fs::read(fixtures().join("src_rgb_300x200.png")).unwrap();
    let middle = png.len() / 2;
    png[middle..middle + 64].fill(0xAB);
    let (_, reason) = image_error(decode_image(&png, &limits));
    assert!(reason.contains("corrupt"), "{reason}");
}

#[test]
fn missing_file_is_an_io_error() {
    let path = fixtures().join("no_such_image.png");
    match load_image(&path, &ImageLimits::default()) {
        Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn unsupported_processor_settings_are_rejected() {
    let image = DynamicImage::ImageRgb8(RgbImage::new(8, 8));
    let mut config = base_config();
    config.resample = "lanczos".into();
    assert!(matches!(
        clip_preprocess(&image, &config),
        Err(Error::InvalidArgument { .. })
    ));
    let mut config = base_config();
    config.std[1] = 0.0;
    assert!(matches!(
        clip_preprocess(&image, &config),
        Err(Error::InvalidArgument { .. })
    ));
    let mut config = base_config();
    config.crop_size = 0;
    assert!(matches!(
        clip_preprocess(&image, &config),
        Err(Error::InvalidArgument { .. })
    ));
    let empty = DynamicImage::ImageRgb8(RgbImage::new(0, 5));
    assert!(matches!(
        clip_preprocess(&empty, &base_config()),
        Err(Error::InvalidArgument { .. })
    ));
}

// ---- pieces ---------------------------------------------------------------------------------

#[test]
fn output_size_follows_transformers() {
    // get_resize_output_image_size(default_to_square=False): int(224 * long / short).
    assert_eq!(resize_output_size(200, 300, 224), (224, 336));
    assert_eq!(resize_output_size(480, 160, 224), (672, 224));
    assert_eq!(resize_output_size(181, 257, 224), (224, 318)); // 318.05…
    assert_eq!(resize_output_size(40, 50, 224), (224, 280));
    assert_eq!(resize_output_size(224, 224, 224), (224, 224));
    assert_eq!(resize_output_size(768, 1024, 224), (224, 298)); // 298.66… truncates
    assert_eq!(resize_output_size(3, 1, 224), (672, 224));
}

#[test]
fn same_size_resize_is_a_copy_and_batch_stacks_images() {
    let image = read_rgb_reference(&fixtures().join("src_square_224.png"));
    assert_eq!(pil_resize(&image, 224, 224, PilFilter::Bicubic), image);

    let config = base_config();
    let a = load_image(
        &fixtures().join("src_small_50x40.png"),
        &ImageLimits::default(),
    )
    .unwrap();
    let b = load_image(
        &fixtures().join("src_tall_160x480.png"),
        &ImageLimits::default(),
    )
    .unwrap();
    let batch = clip_preprocess_batch(&[a.clone(), b.clone()], &config).unwrap();
    assert_eq!(batch.shape(), &[2, 3, 224, 224]);
    assert_eq!(
        batch.slice(s![0..1, .., .., ..]),
        clip_preprocess(&a, &config).unwrap()
    );
    assert_eq!(
        batch.slice(s![1..2, .., .., ..]),
        clip_preprocess(&b, &config).unwrap()
    );
}

/// The crop window is computed directly; it must equal Pillow's full resize then crop.
#[test]
fn windowed_resize_equals_full_resize_then_crop() {
    let config = base_config();
    let image = load_image(
        &fixtures().join("src_tall_160x480.png"),
        &ImageLimits::default(),
    )
    .unwrap();
    let full = pil_resize(&image.to_rgb8(), 224, 672, PilFilter::Bicubic);
    let cropped = image::imageops::crop_imm(&full, 0, (672 - 224) / 2, 224, 224).to_image();
    assert_eq!(clip_resize_crop(&image, &config).unwrap(), cropped);
}
