//! Kandinsky 2.2 parity with diffusers' `KandinskyV22CombinedPipeline` (and the img2img one) on
//! models/tiny-kandinsky (`export/reference_kandinsky.py`): for every reference case, every
//! intermediate within the Karlo family's tolerances (tests/parity.rs), once with the recorded
//! noise and once with the torch-compatible generator and the case's seed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::ArrayD;
use unclip::noise::{NoiseSource, RecordedNoise, TorchGenerator};
use unclip::pipeline::{no_observer, Generation, Tensor, TextToImage};
use unclip::schedulers::SchedulerKind;
use unclip::{Error, Pipeline};

use common::{assert_close, assert_image_close, EMBEDDING_TOL, IMAGE_TOL};

fn bundle() -> PathBuf {
    common::repo().join("models/tiny-kandinsky")
}

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        Pipeline::load(&common::runtime(), bundle()).expect("load models/tiny-kandinsky")
    })
}

fn case_dir(name: &str) -> PathBuf {
    common::repo()
        .join("tests/fixtures/ref-kandinsky")
        .join(name)
}

fn case_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap()
}

fn number(case: &serde_json::Value, key: &str) -> usize {
    case[key].as_u64().unwrap_or_else(|| panic!("{key}")) as usize
}

fn scale(case: &serde_json::Value, key: &str) -> f32 {
    case[key].as_f64().unwrap() as f32
}

fn request_of(case: &serde_json::Value, dir: &Path) -> TextToImage {
    let prompts = match &case["prompt"] {
        serde_json::Value::String(p) => vec![p.clone()],
        serde_json::Value::Array(a) => a.iter().map(|p| p.as_str().unwrap().into()).collect(),
        _ => vec![String::new()], // the variation case: no prompt
    };
    TextToImage {
        prompts,
        negative_prompt: case["negative_prompt"].as_str().map(String::from),
        num_images_per_prompt: Some(number(case, "num_images_per_prompt")),
        prior_steps: Some(number(case, "prior_steps")),
        decoder_steps: Some(number(case, "decoder_steps")),
        prior_guidance_scale: Some(scale(case, "prior_guidance_scale")),
        decoder_guidance_scale: Some(scale(case, "decoder_guidance_scale")),
        decoder_scheduler: Some(
            case["decoder_scheduler"]
                .as_str()
                .unwrap()
                .parse::<SchedulerKind>()
                .unwrap(),
        ),
        output_size: Some(number(case, "width")),
        output_height: Some(number(case, "height")),
        init_image: (case["kind"] == "img2img").then(|| source(dir)),
        strength: case["strength"].as_f64(),
        record_intermediates: true,
        ..Default::default()
    }
}

fn source(dir: &Path) -> image::RgbImage {
    image::open(dir.join("source.png")).unwrap().to_rgb8()
}

/// The case's recorded draws, from `stage` on (the variation case skips the prior's: see
/// [`variation`]).
fn recorded(case: &serde_json::Value, dir: &Path, skip_prior: bool) -> (RecordedNoise, usize) {
    let arrays: Vec<ArrayD<f32>> = case["noise"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| !(skip_prior && entry["stage"] == "prior"))
        .map(|entry| common::read_f32(&dir.join(entry["file"].as_str().unwrap())))
        .collect();
    let count = arrays.len();
    (RecordedNoise::from_arrays(arrays), count)
}

/// Counts the draws a run takes from the inner source.
struct Counting<'a> {
    inner: &'a mut dyn NoiseSource,
    drawn: usize,
}

impl NoiseSource for Counting<'_> {
    fn randn(&mut self, shape: &[usize]) -> unclip::Result<ArrayD<f32>> {
        self.drawn += 1;
        self.inner.randn(shape)
    }
}

fn f32_of(generation: &Generation, name: &str) -> ArrayD<f32> {
    match generation.intermediates.get(name) {
        Some(Tensor::F32(a)) => a.clone(),
        other => panic!("intermediate {name}: {other:?}"),
    }
}

fn i64_of(generation: &Generation, name: &str) -> ArrayD<i64> {
    match generation.intermediates.get(name) {
        Some(Tensor::I64(a)) => a.clone(),
        other => panic!("intermediate {name}: {other:?}"),
    }
}

/// Compares every intermediate unclip records under the reference's names (the per-step
/// tensors are checked through the final latents) and the final uint8 images.
fn compare(case: &serde_json::Value, dir: &Path, generation: &Generation) -> BTreeMap<String, f32> {
    let mut report = BTreeMap::new();
    let variation = case["kind"] == "variation";
    for name in case["files"].as_object().unwrap().keys() {
        let path = dir.join(format!("{name}.npy"));
        let name = name.as_str();
        match name {
            // The variation reference's text tensors are those of diffusers' discarded prior run
            // of the empty prompt (`interpolate`); unclip does not run it.
            _ if variation && (name.starts_with("text_") || name == "prior_latents") => continue,
            "prompt_ids" | "prompt_mask" | "text_mask" | "decoder_timesteps" => {
                assert_eq!(i64_of(generation, name), common::read_i64(&path), "{name}");
                continue;
            }
            "text_embeds"
            | "text_hidden_states"
            | "prior_latents"
            | "decoder_image_embeds"
            | "decoder_latents"
            | "movq_out" => {}
            _ => continue, // per-step internals, the pixels (tests/vision.rs), the image below
        }
        let mut actual = f32_of(generation, name);
        let mut expected = common::read_f32(&path);
        let what = format!("{}/{name}", dir.display());
        let max = if name == "movq_out" {
            // What becomes the image: MoVQ's output clamped to [−1, 1] (the tiny random MoVQ
            // reaches ±10, amplifying the latents' fp32 differences; MoVQ alone is checked in
            // `movq_decode_matches_diffusers`).
            for a in [&mut actual, &mut expected] {
                a.mapv_inplace(|x| x.clamp(-1.0, 1.0));
            }
            assert_image_close(&what, actual.view(), expected.view(), IMAGE_TOL).0
        } else {
            assert_close(&what, actual.view(), expected.view(), EMBEDDING_TOL)
        };
        report.insert(name.to_string(), max);
    }
    let expected_images = case["files"]["image"][0].as_u64().unwrap() as usize;
    assert_eq!(
        generation.images.len(),
        expected_images,
        "{}",
        dir.display()
    );
    common::assert_reference_pngs(dir, &generation.images);
    report
}

fn run(name: &str) {
    let dir = case_dir(name);
    let case = case_json(&dir);
    let request = request_of(&case, &dir);
    let (mut noise, count) = recorded(&case, &dir, false);
    let mut counting = Counting {
        inner: &mut noise,
        drawn: 0,
    };
    let generation = pipeline()
        .generate(&request, &mut counting, &mut no_observer())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(counting.drawn, count, "{name}: draws, as diffusers'");
    let report = compare(&case, &dir, &generation);
    eprintln!("{name} (recorded noise): {report:?}");

    let mut torch = TorchGenerator::new(case["seed"].as_u64().unwrap());
    let again = pipeline()
        .generate(&request, &mut torch, &mut no_observer())
        .unwrap();
    compare(&case, &dir, &again);
    for (a, b) in generation.images.iter().zip(&again.images) {
        assert_eq!(
            a.as_raw(),
            b.as_raw(),
            "{name}: recorded vs torch generator"
        );
    }
}

macro_rules! parity {
    ($($test:ident => $case:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            run($case);
        }
    )*};
}

parity!(
    basic => "basic",
    negative_prompt => "negative",
    batch_2_prompts_x_2_images => "batch2x2",
    no_guidance => "no_guidance",
    non_square_64x128 => "non_square",
    img2img_strength_03 => "img2img_03",
    img2img_strength_075 => "img2img_075",
    ddim_decoder => "ddim",
    dpm_solver_decoder => "dpm++",
);

/// Image variation: `Pipeline::vary` (the CLIP image encoder's embedding, no prior) against
/// diffusers' `KandinskyV22PriorPipeline.interpolate([image], [1.0])` then
/// `KandinskyV22Pipeline`. `interpolate` also samples the empty prompt with the prior and throws
/// the result away (its negative is the zero-image embedding); unclip does not, so the torch
/// generator here first spends those draws.
#[test]
fn variation() {
    let dir = case_dir("variation");
    let case = case_json(&dir);
    let request = request_of(&case, &dir);
    let image = image::DynamicImage::ImageRgb8(source(&dir));
    let (mut noise, count) = recorded(&case, &dir, true);
    let mut counting = Counting {
        inner: &mut noise,
        drawn: 0,
    };
    let generation = pipeline()
        .vary(
            std::slice::from_ref(&image),
            &request,
            &mut counting,
            &mut no_observer(),
        )
        .unwrap();
    assert_eq!(counting.drawn, count, "the decoder's draws");
    eprintln!("variation: {:?}", compare(&case, &dir, &generation));

    let mut torch = TorchGenerator::new(case["seed"].as_u64().unwrap());
    for entry in case["noise"].as_array().unwrap() {
        if entry["stage"] == "prior" {
            let shape: Vec<usize> = entry["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            torch.randn(&shape).unwrap();
        }
    }
    let again = pipeline()
        .vary(
            std::slice::from_ref(&image),
            &request,
            &mut torch,
            &mut no_observer(),
        )
        .unwrap();
    compare(&case, &dir, &again);
}

/// MoVQ alone, on the reference's final latents: the graph against diffusers'
/// `VQModel.decode(latents, force_not_quantize=True)`.
#[test]
fn movq_decode_matches_diffusers() {
    let decoder = pipeline().latent_decoder().unwrap();
    for name in ["basic", "non_square", "batch2x2"] {
        let dir = case_dir(name);
        let latents = common::read_f32(&dir.join("decoder_latents.npy"))
            .into_dimensionality()
            .unwrap();
        let images = decoder.decode(latents.view()).unwrap();
        let expected = common::read_f32(&dir.join("movq_out.npy"));
        // The tiny random MoVQ's outputs reach ±10 (a trained one's stay near [−1, 1]): the
        // fp32 tolerance scales with them.
        let range = expected.iter().fold(1.0f32, |m, x| m.max(x.abs()));
        let max = assert_close(
            name,
            images.into_dyn().view(),
            expected.view(),
            EMBEDDING_TOL * range,
        );
        eprintln!("{name}: MoVQ max error {max:.2e}");
    }
}

/// The image sizes the family makes: multiples of 64 (MoVQ's 8 × the UNet's 8), non-square
/// included; anything else is refused before a model runs, naming the rule.
#[test]
fn sizes_are_multiples_of_64() {
    let pipeline = pipeline();
    assert_eq!(pipeline.family(), "kandinsky2.2");
    assert_eq!(pipeline.sizes(), vec![512]);
    let request = |w: usize, h: Option<usize>| TextToImage {
        prompts: vec!["a red circle".into()],
        prior_steps: Some(1),
        decoder_steps: Some(1),
        output_size: Some(w),
        output_height: h,
        ..Default::default()
    };
    let settings = pipeline.resolve(&request(128, Some(64))).unwrap();
    assert_eq!((settings.output_size, settings.output_height), (128, 64));
    for (w, h) in [(100, None), (64, Some(96)), (0, None), (4160, None)] {
        let err = pipeline.resolve(&request(w, h)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("multiples of 64"), "{err}");
    }
    let mut noise = TorchGenerator::new(0);
    let out = pipeline
        .generate(&request(192, Some(64)), &mut noise, &mut no_observer())
        .unwrap();
    assert_eq!(out.images[0].dimensions(), (192, 64));
}

/// img2img's bad inputs: a strength outside (0, 1], one that runs no step, a strength without an
/// image; and img2img on a Karlo bundle.
#[test]
fn img2img_errors() {
    let pipeline = pipeline();
    let base = TextToImage {
        prompts: vec!["a blue square".into()],
        decoder_steps: Some(10),
        output_size: Some(64),
        init_image: Some(image::RgbImage::new(64, 64)),
        ..Default::default()
    };
    for (strength, needle) in [
        (0.0, "use a value in (0, 1]"),
        (1.5, "use a value in (0, 1]"),
        (f64::NAN, "use a value in (0, 1]"),
        (0.05, "runs no step"),
    ] {
        let request = TextToImage {
            strength: Some(strength),
            ..base.clone()
        };
        let err = pipeline.resolve(&request).unwrap_err();
        assert!(err.to_string().contains(needle), "{strength}: {err}");
    }
    let err = pipeline
        .resolve(&TextToImage {
            init_image: None,
            strength: Some(0.5),
            ..base.clone()
        })
        .unwrap_err();
    assert!(err.to_string().contains("without an init image"), "{err}");
    // DPM-Solver++ cannot start mid-schedule.
    let err = pipeline
        .generate(
            &TextToImage {
                decoder_scheduler: Some(SchedulerKind::DpmSolverPP),
                prior_steps: Some(1),
                ..base.clone()
            },
            &mut TorchGenerator::new(0),
            &mut no_observer(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("choose ddpm or ddim"), "{err}");
    let karlo = Pipeline::load(&common::runtime(), common::tiny_bundle()).unwrap();
    let err = karlo
        .resolve(&TextToImage {
            output_size: None,
            ..base
        })
        .unwrap_err();
    assert!(err.to_string().contains("kandinsky2.2"), "{err}");
}

/// The embedding-space commands run on the family through `generate`: an interpolation between
/// two prompts makes its frames at the asked size, the endpoints differing.
#[test]
fn interpolation_runs_on_the_family() {
    use unclip::explore::{Endpoint, ExploreSettings};
    let pipeline = pipeline();
    let mut settings = ExploreSettings::new(unclip::RngKind::Torch, 3);
    settings.request = TextToImage {
        prior_steps: Some(2),
        decoder_steps: Some(2),
        output_size: Some(64),
        ..Default::default()
    };
    let a = Endpoint::Prompt("a red circle".into());
    let b = Endpoint::Prompt("a blue square".into());
    let out = pipeline
        .interpolate(&a, &b, 3, &settings, &mut no_observer())
        .unwrap();
    assert_eq!(out.images.len(), 3);
    assert_eq!(out.images[0].dimensions(), (64, 64));
    assert_ne!(out.images[0].as_raw(), out.images[2].as_raw());
}

/// Karlo's layout-only features asked of this family are refused before any model runs, naming
/// the family: the caption-only decoder condition, the pixel decoder, DDIM inversion.
#[test]
fn karlo_only_features_are_refused() {
    let pipeline = pipeline();
    let request = TextToImage {
        prompts: vec!["a red circle".into()],
        decoder_condition: unclip::DecoderCondition::Caption,
        ..Default::default()
    };
    let err = pipeline.resolve(&request).unwrap_err();
    assert!(err.to_string().contains("is kandinsky2.2"), "{err}");
    assert!(pipeline.decoder().is_err());
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::new(64, 64));
    let err = pipeline
        .invert_images(&[image], 2, &mut no_observer())
        .unwrap_err();
    assert!(err.to_string().contains("Karlo's layout"), "{err}");
}
