//! Text → image parity with diffusers' UnCLIPPipeline on the tiny bundle (docs/architecture.md): for every
//! reference case, every intermediate within the named tolerances, once with the recorded noise
//! and once with the torch-compatible generator and the case's seed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use ndarray::{s, ArrayD, Axis};
use unclip::noise::{NoiseSource, RecordedNoise, TorchGenerator};
use unclip::pipeline::{no_observer, Generation, Tensor, TextToImage};
use unclip::Pipeline;

use common::{assert_close, assert_image_close, EMBEDDING_TOL, IMAGE_TOL};

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        Pipeline::load(&common::runtime(), common::tiny_bundle()).expect("load models/tiny")
    })
}

fn case_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap()
}

fn request_of(case: &serde_json::Value, dir: &Path) -> TextToImage {
    let mut request = TextToImage {
        num_images_per_prompt: Some(case["num_images_per_prompt"].as_u64().unwrap() as usize),
        decoder_steps: Some(case["decoder_steps"].as_u64().unwrap() as usize),
        super_res_steps: vec![case["super_res_steps"].as_u64().unwrap() as usize],
        decoder_guidance_scale: Some(case["decoder_guidance_scale"].as_f64().unwrap() as f32),
        // diffusers' pipelines end after their one upsampler; a bundle may have a second one
        // (models/shapes: 256 → 1024), which the reference does not run.
        output_size: Some(image::image_dimensions(dir.join("image_0.png")).unwrap().0 as usize),
        record_intermediates: true,
        ..Default::default()
    };
    if case["kind"] == "variation" {
        // The variation pipeline: empty prompt, the image encoder's embedding instead of the
        // prior, CFG iff the decoder scale > 1 (prior scale 0 keeps it out of that rule).
        let embeddings = common::read_f32(&dir.join("image_embeddings.npy"));
        let first = embeddings
            .index_axis(Axis(0), 0)
            .to_owned()
            .insert_axis(Axis(0));
        request.prompts = vec![String::new()];
        request.image_embeddings = Some(first.into_dimensionality().unwrap());
        request.prior_guidance_scale = Some(0.0);
    } else {
        request.prompts = match &case["prompt"] {
            serde_json::Value::String(p) => vec![p.clone()],
            serde_json::Value::Array(a) => {
                a.iter().map(|p| p.as_str().unwrap().to_string()).collect()
            }
            other => panic!("prompt {other}"),
        };
        request.prior_steps = Some(case["prior_steps"].as_u64().unwrap() as usize);
        request.prior_guidance_scale = Some(case["prior_guidance_scale"].as_f64().unwrap() as f32);
    }
    request
}

/// Recorded noise, continued by the torch generator where a case did not store the
/// super-resolution draws (the fixture budget; the generator is bit-exact, tests/noise.rs).
struct RecordedThenTorch {
    recorded: RecordedNoise,
    torch: TorchGenerator,
    remaining_recorded: usize,
}

impl NoiseSource for RecordedThenTorch {
    fn randn(&mut self, shape: &[usize]) -> unclip::Result<ArrayD<f32>> {
        let from_torch = self.torch.randn(shape)?;
        if self.remaining_recorded > 0 {
            self.remaining_recorded -= 1;
            self.recorded.randn(shape)
        } else {
            Ok(from_torch)
        }
    }
}

fn recorded_noise(case: &serde_json::Value, dir: &Path) -> RecordedThenTorch {
    let mut arrays = Vec::new();
    for entry in case["noise"].as_array().unwrap() {
        match entry.get("file") {
            Some(file) => arrays.push(common::read_f32(&dir.join(file.as_str().unwrap()))),
            None => break,
        }
    }
    RecordedThenTorch {
        remaining_recorded: arrays.len(),
        recorded: RecordedNoise::from_arrays(arrays),
        torch: TorchGenerator::new(case["seed"].as_u64().unwrap()),
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

/// Compares every intermediate the case recorded; returns the max error per name.
fn compare(case: &serde_json::Value, dir: &Path, generation: &Generation) -> BTreeMap<String, f32> {
    let mut report = BTreeMap::new();
    let files = case["files"].as_object().unwrap();
    for name in files.keys() {
        let (base, sub4) = match name.strip_suffix(".sub4") {
            Some(base) => (base, true),
            None => (name.as_str(), false),
        };
        let path = dir.join(format!("{name}.npy"));
        match base {
            "image" => continue, // compared below from the PNGs
            "pixel_values" | "prompt_ids" | "prompt_mask" => continue, // image encoder / tokenizer tests
            "text_mask" | "decoder_mask" => {
                assert_eq!(i64_of(generation, base), common::read_i64(&path), "{base}");
                continue;
            }
            _ => {}
        }
        if base.starts_with("prior_model_out_") || base.starts_with("prior_step_") {
            continue; // per-step internals, checked through prior_latents
        }
        if case["kind"] == "variation" && base.starts_with("text_") {
            continue; // the variation reference stores text_proj's inputs under these names
        }
        let mut actual = f32_of(generation, base);
        if sub4 {
            actual = actual.slice(s![.., .., ..;4, ..;4]).to_owned().into_dyn();
        }
        let expected = common::read_f32(&path);
        let what = format!("{}/{name}", dir.display());
        let max = if actual.ndim() == 4 {
            assert_image_close(&what, actual.view(), expected.view(), IMAGE_TOL).0
        } else {
            assert_close(&what, actual.view(), expected.view(), EMBEDDING_TOL)
        };
        report.insert(name.clone(), max);
    }
    common::assert_reference_pngs(dir, &generation.images);
    report
}

fn run_case(name: &str) {
    run_case_on(pipeline(), &common::ref_dir().join(name), name);
}

fn run_case_on(pipeline: &Pipeline, dir: &Path, name: &str) {
    let case = case_json(dir);
    let request = request_of(&case, dir);

    let mut recorded = recorded_noise(&case, dir);
    let generation = pipeline
        .generate(&request, &mut recorded, &mut no_observer())
        .unwrap();
    assert_eq!(
        recorded.remaining_recorded, 0,
        "{name}: every recorded noise tensor is drawn"
    );
    assert_eq!(
        generation.images.len(),
        case["files"]["image"][0].as_u64().unwrap() as usize
    );
    let report = compare(&case, dir, &generation);
    eprintln!("{name} (recorded noise): {report:?}");

    let mut torch = TorchGenerator::new(case["seed"].as_u64().unwrap());
    let again = pipeline
        .generate(&request, &mut torch, &mut no_observer())
        .unwrap();
    compare(&case, dir, &again);
    // Bit-exact noise: the two runs are the same computation.
    for (a, b) in generation.images.iter().zip(&again.images) {
        assert_eq!(
            a.as_raw(),
            b.as_raw(),
            "{name}: recorded vs torch generator"
        );
    }
}

macro_rules! parity {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            run_case(stringify!($name));
        }
    )*};
}

parity!(
    basic,
    empty_prompt,
    long_prompt,
    batch2,
    per_prompt2,
    no_cfg,
    prior_cfg_only,
    steps25,
    seed_2p32p5,
    unicode,
    variation,
    variation_per2,
);

/// The trained default bundle (`models/shapes`, issue #7) against diffusers' `UnCLIPPipeline` on the
/// checkpoint it was exported from (`export/reference.py --case shapes_default`): 25 prior, 25
/// decoder and 7 super-resolution steps to 256², every intermediate within the same tolerances.
#[test]
fn shapes_default() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pipeline =
        Pipeline::load(&common::runtime(), repo.join("models/shapes")).expect("load models/shapes");
    let dir = repo.join("tests/fixtures/ref-shapes/shapes_default");
    run_case_on(&pipeline, &dir, "shapes_default");
}

#[test]
fn image_encoder_matches_transformers_on_reference_pixels() {
    let dir = common::ref_dir().join("variation");
    let pixels = common::read_f32(&dir.join("pixel_values.npy"))
        .into_dimensionality()
        .unwrap();
    let embeddings = pipeline()
        .image_encoder()
        .unwrap()
        .encode_pixels(pixels.view())
        .unwrap();
    let expected = common::read_f32(&dir.join("image_embeddings.npy"));
    assert_close(
        "image_embeds",
        embeddings.into_dyn().view(),
        expected.view(),
        EMBEDDING_TOL,
    );
}
