//! int8 models (`--precision int8`, export/quantize_bundle.py): which files load, how close they
//! stay to f32 on the tiny bundle's committed int8 models, when `--precision auto` takes them,
//! and the reproduction record of an int8 image. The exact mode's own parity is tests/parity.rs.

mod common;

use std::process::Command;

use unclip::noise::FastNoise;
use unclip::pipeline::{no_observer, Reproduction, TextToImage};
use unclip::runtime::{CpuFeatures, Precision};
use unclip::{Error, Pipeline, Runtime};

fn pipeline(precision: Precision) -> Pipeline {
    let runtime = Runtime::builder().precision(precision).build().unwrap();
    Pipeline::load(&runtime, common::tiny_bundle()).unwrap()
}

fn request() -> TextToImage {
    TextToImage {
        prompts: vec!["a red circle".into(), "a blue square".into()],
        prior_steps: Some(3),
        decoder_steps: Some(3),
        super_res_steps: vec![2],
        ..Default::default()
    }
}

#[test]
fn int8_loads_the_quantized_models_and_stays_near_f32() {
    let exact = pipeline(Precision::F32);
    let int8 = pipeline(Precision::Int8);
    assert_eq!(exact.precision(), Precision::F32);
    assert_eq!(int8.precision(), Precision::Int8);
    let file = |m: &unclip::runtime::Model| m.path().file_name().unwrap().to_owned();
    // the denoisers run their int8 files; the text encoder and text_proj stay f32
    assert_eq!(file(int8.prior().model()), "prior.int8.onnx");
    let [text_proj, _, decoder] = int8.decoder().unwrap().models();
    assert_eq!(file(decoder), "decoder.int8.onnx");
    assert_eq!(file(text_proj), "text_proj.onnx");
    let [first, last] = int8.upsamplers()[0].models();
    assert_eq!(
        (file(first), file(last)),
        (
            "super_res_first.int8.onnx".into(),
            "super_res_last.int8.onnx".into()
        )
    );
    assert_eq!(file(int8.text_encoder().model()), "text_encoder.onnx");
    assert_eq!(file(exact.prior().model()), "prior.onnx");

    let a = exact
        .generate(&request(), &mut FastNoise::new(5), &mut no_observer())
        .unwrap();
    let b = int8
        .generate(&request(), &mut FastNoise::new(5), &mut no_observer())
        .unwrap();
    assert_eq!(b.settings.precision, Precision::Int8);
    // The prior's embeddings: int8 moves them, but not far (cosine similarity per row).
    for (x, y) in a
        .image_embeddings
        .rows()
        .into_iter()
        .zip(b.image_embeddings.rows())
    {
        let cos = x.dot(&y) / (x.dot(&x).sqrt() * y.dot(&y).sqrt());
        assert!(cos > 0.998, "prior embedding cosine {cos}");
        assert!(
            x != y,
            "int8 gave the f32 embedding bit for bit: did it run?"
        );
    }
    // The images: random tiny weights amplify quantization error through three stages, so
    // the bound is loose; what it catches is a broken model (noise or a constant image).
    for (x, y) in a.images.iter().zip(&b.images) {
        let diff: f64 = x
            .as_raw()
            .iter()
            .zip(y.as_raw())
            .map(|(p, q)| (*p as f64 - *q as f64).abs())
            .sum::<f64>()
            / x.as_raw().len() as f64;
        assert!(diff > 0.0 && diff < 20.0, "mean pixel difference {diff}");
    }
    // int8 is deterministic on one machine: the same call gives the same bytes
    let again = int8
        .generate(&request(), &mut FastNoise::new(5), &mut no_observer())
        .unwrap();
    assert_eq!(again.images, b.images);
}

#[test]
fn auto_takes_int8_only_where_vnni_runs_it_and_the_fidelity_check_passed() {
    let runtime = Runtime::builder()
        .precision(Precision::Auto)
        .build()
        .unwrap();
    let vnni = CpuFeatures::detect().vnni;
    assert_eq!(
        runtime.precision(),
        if vnni {
            Precision::Int8
        } else {
            Precision::F32
        }
    );
    assert!(runtime.is_auto_precision());
    // the tiny bundle's int8 models failed their fidelity check (random weights): f32
    let bundle = unclip::Bundle::open(common::tiny_bundle()).unwrap();
    assert!(bundle.has_int8() && !bundle.int8_preferred());
    let tiny = Pipeline::load(&runtime, common::tiny_bundle()).unwrap();
    assert_eq!(tiny.precision(), Precision::F32);
    assert_eq!(
        tiny.prior().model().path().file_name().unwrap(),
        "prior.onnx"
    );
    // the shapes model's passed, and were faster: auto runs them where VNNI is
    let shapes_dir = common::repo().join("models/shapes");
    let shapes = unclip::Bundle::open(&shapes_dir).unwrap();
    assert!(shapes.int8_preferred());
    let pipeline = Pipeline::load(&runtime, &shapes_dir).unwrap();
    assert_eq!(
        pipeline.precision(),
        if vnni {
            Precision::Int8
        } else {
            Precision::F32
        }
    );
}

#[test]
fn int8_needs_a_bundle_with_int8_models() {
    // a copy of the tiny bundle without its int8 entries
    let dir = tempfile::tempdir().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::tiny_bundle().join("bundle.json")).unwrap())
            .unwrap();
    manifest.as_object_mut().unwrap().remove("quantization");
    for entry in manifest["models"].as_object_mut().unwrap().values_mut() {
        entry.as_object_mut().unwrap().remove("int8");
    }
    for file in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let path = file.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        if name.ends_with(".onnx") && !name.contains(".int8.") || name == "tokenizer.json" {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("bundle.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let runtime = Runtime::builder()
        .precision(Precision::Int8)
        .build()
        .unwrap();
    match Pipeline::load(&runtime, dir.path()) {
        Err(Error::InvalidArgument { name, reason }) => {
            assert_eq!(name, "precision");
            assert!(reason.contains("export/quantize_bundle.py"), "{reason}");
        }
        Err(other) => panic!("expected an invalid-argument error, got {other:?}"),
        Ok(_) => panic!("int8 loaded a bundle without int8 models"),
    }
    // auto falls back to f32 there, whatever the CPU
    let auto = Runtime::builder()
        .precision(Precision::Auto)
        .build()
        .unwrap();
    let pipeline = Pipeline::load(&auto, dir.path()).unwrap();
    assert_eq!(pipeline.precision(), Precision::F32);
    // int8 is the CPU device's
    match Runtime::builder()
        .device("cuda".parse().unwrap())
        .precision(Precision::Int8)
        .build()
    {
        Err(Error::InvalidArgument { name, reason }) => {
            assert_eq!(name, "precision");
            assert!(reason.contains("--device cpu"), "{reason}");
        }
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

/// An int8 image records its precision; only an int8 pipeline re-makes it (the same pixels).
#[test]
fn int8_images_record_their_precision() {
    let int8 = pipeline(Precision::Int8);
    let out = int8
        .generate(&request(), &mut FastNoise::new(9), &mut no_observer())
        .unwrap();
    let seed = unclip::pipeline::Seed::new(unclip::RngKind::Fast, 9);
    let text = out.png_metadata("generate", seed, 1, &[]).unwrap();
    assert!(text.contains(&("precision".to_string(), "int8".to_string())));
    let record = Reproduction::from_png_text(&text).unwrap();
    assert_eq!(record.precision, Precision::Int8);
    assert_eq!(
        int8.reproduce(&record, &mut no_observer()).unwrap(),
        out.images[1]
    );
    match pipeline(Precision::F32).reproduce(&record, &mut no_observer()) {
        Err(Error::InvalidArgument { reason, .. }) => {
            assert!(reason.contains("--precision int8"), "{reason}")
        }
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
    // f32 records carry no precision key (their PNGs are as before) and read back as f32
    let exact = pipeline(Precision::F32)
        .generate(&request(), &mut FastNoise::new(9), &mut no_observer())
        .unwrap();
    let text = exact.png_metadata("generate", seed, 0, &[]).unwrap();
    assert!(text.iter().all(|(k, _)| k != "precision"));
    assert_eq!(
        Reproduction::from_png_text(&text).unwrap().precision,
        Precision::F32
    );
}

/// `--capture-model-inputs DIR`: one directory per model call, one .npy per input.
#[test]
fn capture_writes_every_model_call() {
    let dir = tempfile::tempdir().unwrap();
    let capture = dir.path().join("calls");
    common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_unclip"))
            .args(["generate", "a red circle", "--prior-steps", "3"])
            .args(["--decoder-steps", "4", "--sr-steps", "2", "--quiet", "-o"])
            .arg(dir.path().join("out.png"))
            .arg("--capture-model-inputs")
            .arg(&capture)
            .arg("--model")
            .arg(common::tiny_bundle()),
    );
    let calls = |model: &str| {
        let mut calls: Vec<_> = std::fs::read_dir(capture.join(model))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        calls.sort();
        calls
    };
    // prior and decoder once per step (both guidance rows in one call); the upsampler's first
    // model runs every step but the last, its last model the last one
    assert_eq!(calls("prior").len(), 3);
    assert_eq!(calls("decoder").len(), 4);
    assert_eq!(calls("super_res_first").len(), 1);
    assert_eq!(calls("super_res_last").len(), 1);
    let sample = unclip::npy::read_f32(&calls("decoder")[0].join("sample.npy")).unwrap();
    assert_eq!(sample.shape(), [2, 3, 64, 64], "CFG rows [uncond, cond]");
    let timesteps: Vec<i64> = calls("decoder")
        .iter()
        .map(|call| {
            let bytes = std::fs::read(call.join("timestep.npy")).unwrap();
            i64::from_le_bytes(bytes[bytes.len() - 16..bytes.len() - 8].try_into().unwrap())
        })
        .collect();
    assert!(
        timesteps.windows(2).all(|w| w[0] > w[1]),
        "calls in step order: {timesteps:?}"
    );
}
