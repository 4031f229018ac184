//! Image bytes → decode (with limits checked before decoding) → CLIP preprocessing: a typed
//! error or a (1, 3, 224, 224) finite tensor, never a panic or an allocation past the limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unclip::bundle::ImageProcessorEntry;
use unclip::vision::{clip_preprocess, decode_image, ImageLimits};

fuzz_target!(|data: &[u8]| {
    let limits = ImageLimits {
        max_pixels: 4096 * 4096,
        ..ImageLimits::default()
    };
    let Ok(image) = decode_image(data, &limits) else {
        return;
    };
    let config = ImageProcessorEntry {
        shortest_edge: 224,
        crop_size: 224,
        resample: "bicubic".into(),
        rescale_factor: 1.0 / 255.0,
        mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
    };
    let pixels = clip_preprocess(&image, &config).expect("a decoded image preprocesses");
    assert_eq!(pixels.shape(), &[1, 3, 224, 224]);
    assert!(pixels.iter().all(|x| x.is_finite()));
});
