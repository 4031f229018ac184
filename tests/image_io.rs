//! `image_io` against its references: torch's antialiased bicubic resize and diffusers' float →
//! `u8` conversion (fixtures from `export/image_io_reference.py`), and PNG text metadata
//! round trips.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, read_f32, repo};
use ndarray::{s, Array4, ArrayD, Ix4};
use ndarray_npy::ReadNpyExt;
use unclip::image_io::{from_rgb8, read_png_text, resize_bicubic_antialias, save_png, to_rgb8};
use unclip::Error;

/// Resize parity with torch's AVX2/AVX512 kernel. The arithmetic is mirrored operation for
/// operation (float32 weights, the same fused and unfused multiply-adds in the same order), so the
/// measured difference is 0. 1e-6 is a few ulps on these values: room for an isolated step
/// rounded differently, while torch's DEFAULT (non-FMA) kernel, off by up to 2.5e-6, and any wrong
/// filter — a = −0.75, no antialiasing, unscaled support: 1e-3 or more — fail. Smaller slips
/// (pass order, a misplaced fused step) show in the bit-identical count printed per case.
const RESIZE_TOL: f32 = 1e-6;

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/image_io")
}

fn manifest() -> serde_json::Value {
    let path = fixtures().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json parses")
}

fn read4(name: &str) -> Array4<f32> {
    read_f32(&fixtures().join(name))
        .into_dimensionality::<Ix4>()
        .expect("4-d fixture")
}

/// Runs one resize case and returns the max abs difference to torch (asserted ≤ RESIZE_TOL).
fn check_resize(name: &str, input: &Array4<f32>, expected: &Array4<f32>) -> f32 {
    let (_, _, out_h, out_w) = expected.dim();
    let actual = resize_bicubic_antialias(input.view(), out_h, out_w);
    let max = assert_close(
        name,
        actual.view().into_dyn(),
        expected.view().into_dyn(),
        RESIZE_TOL,
    );
    let exact = actual
        .iter()
        .zip(expected)
        .filter(|(a, e)| a.to_bits() == e.to_bits())
        .count();
    eprintln!(
        "{name}: {:?} → {:?}: max |Δ| = {max:.3e}, bit-identical {exact}/{}",
        input.shape(),
        expected.shape(),
        expected.len()
    );
    max
}

#[test]
fn resize_matches_torch_on_every_fixture_case() {
    let manifest = manifest();
    let cases = manifest["resize"].as_array().expect("resize cases");
    assert!(cases.len() >= 8, "fixture has {} resize cases", cases.len());
    let mut worst = 0.0f32;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let input = read4(case["input"].as_str().unwrap());
        let expected = read4(case["output"].as_str().unwrap());
        worst = worst.max(check_resize(name, &input, &expected));
    }
    eprintln!("worst max |Δ| over all cases: {worst:.3e} (tolerance {RESIZE_TOL:.0e})");
}

/// (1, 3, 64, 64) → 256: the first image of the batch-of-two fixture (the reference script
/// asserts torch gives these same values for a batch of one).
#[test]
fn resize_batch_of_one_matches_torch() {
    let input = read4("up4_b2_input.npy")
        .slice(s![..1, .., .., ..])
        .to_owned();
    let expected = read4("up4_b2_torch.npy")
        .slice(s![..1, .., .., ..])
        .to_owned();
    check_resize("up4_b1", &input, &expected);
}

#[test]
fn resize_accepts_non_contiguous_views() {
    let input = read4("up_nonsquare_input.npy");
    let expected = read4("up_nonsquare_torch.npy");
    // The same values reached through a transposed copy: strides differ, contents do not.
    let transposed = input
        .view()
        .permuted_axes([0, 1, 3, 2])
        .as_standard_layout()
        .into_owned();
    let view = transposed.view().permuted_axes([0, 1, 3, 2]);
    assert!(!view.is_standard_layout());
    let (_, _, out_h, out_w) = expected.dim();
    let actual = resize_bicubic_antialias(view, out_h, out_w);
    assert_close(
        "non-contiguous",
        actual.view().into_dyn(),
        expected.view().into_dyn(),
        RESIZE_TOL,
    );
}

#[test]
fn resize_same_size_copies_and_empty_gives_zeros() {
    let input = read4("down_odd_input.npy");
    let (_, _, h, w) = input.dim();
    assert_eq!(resize_bicubic_antialias(input.view(), h, w), input);
    let empty = Array4::<f32>::zeros((1, 3, 0, 5));
    assert_eq!(
        resize_bicubic_antialias(empty.view(), 4, 4),
        Array4::<f32>::zeros((1, 3, 4, 4))
    );
    assert_eq!(
        resize_bicubic_antialias(input.view(), 0, 7).shape(),
        &[1, 3, 0, 7]
    );
}

/// Normalized weights: a constant image stays constant (to float32 rounding) at any scale.
#[test]
fn resize_keeps_constant_images_constant() {
    let input = Array4::from_elem((1, 2, 37, 23), 0.75f32);
    for (h, w) in [(148, 92), (10, 7), (37, 100), (1, 1)] {
        let out = resize_bicubic_antialias(input.view(), h, w);
        let max = out.iter().map(|v| (v - 0.75).abs()).fold(0.0f32, f32::max);
        assert!(
            max <= 4.0 * f32::EPSILON,
            "{h}×{w}: constant image drifts by {max:e}"
        );
    }
}

#[test]
fn to_rgb8_matches_diffusers_on_rounding_boundaries() {
    let input = read4("to_rgb8_input.npy");
    let file = std::fs::File::open(fixtures().join("to_rgb8_expected.npy")).unwrap();
    let expected = ArrayD::<u8>::read_npy(file)
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap();
    let images = to_rgb8(input.view());
    assert_eq!(images.len(), expected.shape()[0]);
    let mut mismatches = 0;
    for (b, image) in images.iter().enumerate() {
        assert_eq!(
            (image.height() as usize, image.width() as usize),
            (expected.shape()[1], expected.shape()[2])
        );
        for (x, y, pixel) in image.enumerate_pixels() {
            for c in 0..3 {
                let want = expected[[b, y as usize, x as usize, c]];
                if pixel[c] != want {
                    mismatches += 1;
                    eprintln!(
                        "image {b} ({x}, {y}) channel {c}: input {:e} → {} (diffusers {want})",
                        input[[b, c, y as usize, x as usize]],
                        pixel[c]
                    );
                }
            }
        }
    }
    assert_eq!(mismatches, 0, "to_rgb8 differs from diffusers");
}

#[test]
fn from_rgb8_inverts_to_rgb8_for_every_byte() {
    let image = image::RgbImage::from_fn(256, 2, |x, y| {
        image::Rgb([x as u8, 255 - x as u8, (x as u8) ^ (y as u8 * 85)])
    });
    let tensor = from_rgb8(&image);
    assert_eq!(tensor.shape(), &[3, 2, 256]);
    assert_eq!(tensor[[0, 0, 0]], -1.0);
    assert_eq!(tensor[[0, 0, 255]], 1.0);
    let back = to_rgb8(tensor.insert_axis(ndarray::Axis(0)).view());
    assert_eq!(back, vec![image]);
}

fn metadata() -> Vec<(String, String)> {
    [
        ("prompt", "a red circle on a blue background"),
        ("Software", "unclip 0.1.0"),
        ("latin1", "café crème, 25 °C ±1"),
        ("prompt_ja", "青い背景に赤い円 🎨"),
        ("empty", ""),
        ("parameters", "{\"seed\": 42,\n \"steps\": [25, 25, 7]}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn test_image() -> image::RgbImage {
    image::RgbImage::from_fn(37, 21, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 11) as u8, (x * y) as u8])
    })
}

#[test]
fn png_roundtrip_keeps_pixels_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.png");
    let img = test_image();
    save_png(&path, &img, &metadata()).unwrap();
    // tEXt chunks come back first, then iTXt, each kind in file order
    let (latin1, utf8): (Vec<_>, Vec<_>) = metadata()
        .into_iter()
        .partition(|(_, text)| text.chars().all(|c| u32::from(c) <= 0xff));
    assert_eq!(read_png_text(&path).unwrap(), [latin1, utf8].concat());
    let decoded = image::open(&path)
        .expect("image decodes the file (checks every CRC)")
        .to_rgb8();
    assert_eq!(decoded, img);

    // Latin-1 text goes to tEXt, the rest to iTXt.
    let bytes = std::fs::read(&path).unwrap();
    let count = |kind: &[u8]| bytes.windows(4).filter(|w| *w == kind).count();
    assert_eq!((count(b"tEXt"), count(b"iTXt")), (5, 1));

    // Deterministic bytes.
    let again = dir.path().join("again.png");
    save_png(&again, &img, &metadata()).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), bytes);

    // No metadata is a plain PNG.
    save_png(&again, &img, &[]).unwrap();
    assert!(read_png_text(&again).unwrap().is_empty());
}

#[test]
fn png_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let img = test_image();
    let unwritable = dir.path().join("no/such/dir/out.png");
    match save_png(&unwritable, &img, &[]) {
        Err(Error::Io { path, .. }) => assert_eq!(path, unwritable),
        other => panic!("expected Error::Io, got {other:?}"),
    }
    let path = dir.path().join("out.png");
    for keyword in [
        "",
        " lead",
        "trail ",
        "dou  ble",
        "日本",
        "tab\there",
        &"k".repeat(80),
    ] {
        let text = [(keyword.to_string(), "v".to_string())];
        assert!(
            matches!(
                save_png(&path, &img, &text),
                Err(Error::InvalidArgument { .. })
            ),
            "keyword {keyword:?} accepted"
        );
    }
    let nul = [("key".to_string(), "a\0b".to_string())];
    assert!(matches!(
        save_png(&path, &img, &nul),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(!path.exists(), "a rejected call must not create the file");

    assert!(matches!(
        read_png_text(&dir.path().join("missing.png")),
        Err(Error::Io { .. })
    ));
    let not_png = dir.path().join("not.png");
    std::fs::write(&not_png, b"GIF89a").unwrap();
    assert!(matches!(read_png_text(&not_png), Err(Error::Image { .. })));

    save_png(&path, &img, &metadata()).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let corrupt = |bytes: &[u8], name: &str| -> Result<Vec<(String, String)>, Error> {
        let p: &Path = &dir.path().join(name);
        std::fs::write(p, bytes).unwrap();
        read_png_text(p)
    };
    assert!(matches!(
        corrupt(&bytes[..60], "truncated.png"),
        Err(Error::Image { .. })
    ));
    let text_at = bytes.windows(6).position(|w| w == b"prompt").unwrap();
    bytes[text_at] ^= 0x20; // flip a bit inside the first tEXt chunk
    assert!(matches!(
        corrupt(&bytes, "crc.png"),
        Err(Error::Image { .. })
    ));
}

/// A width-1 output is resized like any column: the same values as resizing the transposed image
/// (torch 2.15 itself repeats the first row there, see `resize_bicubic_antialias`).
#[test]
fn resize_width_one_column_matches_transposed_row() {
    let input = read4("down_300x200_input.npy")
        .slice(s![.., .., ..67, ..1])
        .to_owned();
    let column = resize_bicubic_antialias(input.view(), 83, 1);
    let row = input.view().permuted_axes([0, 1, 3, 2]);
    let transposed = resize_bicubic_antialias(row, 1, 83);
    assert_eq!(column, transposed.view().permuted_axes([0, 1, 3, 2]));
    assert!(
        column
            .iter()
            .zip(column.iter().skip(1))
            .any(|(a, b)| a != b),
        "rows differ"
    );
}
