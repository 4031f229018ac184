//! Pipeline behaviour beyond parity: progress, cancellation, precomputed embeddings, negative
//! prompts, argument validation.

mod common;

use std::ops::ControlFlow;
use std::sync::OnceLock;

use ndarray::Array2;
use unclip::noise::{FastNoise, TorchGenerator};
use unclip::pipeline::{no_observer, TextToImage};
use unclip::stages::{Progress, Stage};
use unclip::{Error, Pipeline};

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        Pipeline::load(&common::runtime(), common::tiny_bundle()).expect("load models/tiny")
    })
}

fn small(prompt: &str) -> TextToImage {
    TextToImage {
        prompts: vec![prompt.to_string()],
        prior_steps: Some(3),
        decoder_steps: Some(3),
        super_res_steps: vec![2],
        ..Default::default()
    }
}

#[test]
fn progress_reports_every_step_of_every_stage() {
    let mut seen: Vec<Progress> = Vec::new();
    let out = pipeline()
        .generate(&small("a cat"), &mut FastNoise::new(1), &mut |p| {
            seen.push(p);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.images.len(), 1);
    assert_eq!(out.images[0].dimensions(), (256, 256));
    let count = |stage| seen.iter().filter(|p| p.stage == stage).count();
    assert_eq!(count(Stage::Text), 1);
    assert_eq!(count(Stage::Prior), 3);
    assert_eq!(count(Stage::Decoder), 3);
    assert_eq!(count(Stage::Upsampler(0)), 2);
    assert!(seen.iter().all(|p| p.step >= 1 && p.step <= p.steps));
}

/// An observer that cancels at the first decoder step.
fn cancel_in_decoder(p: Progress) -> ControlFlow<()> {
    if p.stage == Stage::Decoder {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

#[test]
fn cancel_between_steps() {
    let mut calls = 0;
    let err = pipeline()
        .generate(&small("a dog"), &mut FastNoise::new(2), &mut |p| {
            calls += 1;
            cancel_in_decoder(p)
        })
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled));
    assert_eq!(
        calls,
        1 + 3 + 1,
        "text, 3 prior steps, then the first decoder step cancels"
    );
}

#[test]
fn same_seed_same_image_different_seed_different_image() {
    let run = |seed| {
        pipeline()
            .generate(
                &small("a red circle"),
                &mut TorchGenerator::new(seed),
                &mut no_observer(),
            )
            .unwrap()
    };
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a.images[0].as_raw(), b.images[0].as_raw());
    assert_ne!(a.images[0].as_raw(), c.images[0].as_raw());
}

#[test]
fn precomputed_embedding_reproduces_the_run_that_saved_it() {
    let request = small("a blue square");
    let first = pipeline()
        .generate(&request, &mut TorchGenerator::new(9), &mut no_observer())
        .unwrap();
    // Skipping the prior skips its noise draws, so feed the decoder the same noise by replaying
    // the generator past the prior's draws: 1 latent + (steps − 1) step noises of (1, D).
    let dim = first.image_embeddings.ncols();
    let mut noise = TorchGenerator::new(9);
    for _ in 0..3 {
        unclip::NoiseSource::randn(&mut noise, &[1, dim]).unwrap();
    }
    let mut again = request.clone();
    again.image_embeddings = Some(first.image_embeddings.clone());
    let second = pipeline()
        .generate(&again, &mut noise, &mut no_observer())
        .unwrap();
    assert!(!second.settings.ran_prior);
    assert_eq!(first.images[0].as_raw(), second.images[0].as_raw());
}

/// DALL·E 2 §5.1's ablation: the decoder conditioned on the caption's text embedding, or on the
/// caption alone (zero embedding), is exactly the run given those embeddings, without the prior.
#[test]
fn decoder_condition_ablations_replace_the_prior_embedding() {
    use unclip::DecoderCondition;
    let mut request = small("a red circle");
    request.prompts.push("a blue star".into());
    request.num_images_per_prompt = Some(2);
    let text = pipeline()
        .text_embeddings(&["a red circle", "a blue star"])
        .unwrap();
    for condition in [DecoderCondition::TextEmbedding, DecoderCondition::Caption] {
        let mut ablated = request.clone();
        ablated.decoder_condition = condition;
        let out = pipeline()
            .generate(&ablated, &mut FastNoise::new(5), &mut no_observer())
            .unwrap();
        assert!(!out.settings.ran_prior);
        assert_eq!(out.settings.decoder_condition, condition);
        let expected = match condition {
            DecoderCondition::TextEmbedding => text.select(ndarray::Axis(0), &[0, 0, 1, 1]),
            _ => Array2::zeros((4, text.ncols())),
        };
        assert_eq!(out.image_embeddings, expected, "{condition}");
        let mut given = request.clone();
        given.image_embeddings = Some(match condition {
            DecoderCondition::TextEmbedding => text.clone(),
            _ => Array2::zeros((1, text.ncols())),
        });
        let reference = pipeline()
            .generate(&given, &mut FastNoise::new(5), &mut no_observer())
            .unwrap();
        for (a, b) in out.images.iter().zip(&reference.images) {
            assert_eq!(a.as_raw(), b.as_raw(), "{condition}");
        }
        // …and differs from the prior-conditioned run.
        let prior = pipeline()
            .generate(&request, &mut FastNoise::new(5), &mut no_observer())
            .unwrap();
        assert_ne!(prior.image_embeddings, out.image_embeddings);
        // A second source of embeddings is refused.
        let err = pipeline()
            .generate(
                &given_with(&ablated, &text),
                &mut FastNoise::new(5),
                &mut no_observer(),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    name: "decoder condition",
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(
        "text-embedding".parse::<DecoderCondition>().unwrap(),
        DecoderCondition::TextEmbedding
    );
    assert!("clip".parse::<DecoderCondition>().is_err());
}

fn given_with(request: &TextToImage, embeddings: &Array2<f32>) -> TextToImage {
    let mut request = request.clone();
    request.image_embeddings = Some(embeddings.clone());
    request
}

#[test]
fn negative_prompt_changes_the_unconditional_branch() {
    let mut with_negative = small("a star");
    with_negative.negative_prompt = Some("blurry".into());
    let plain = pipeline()
        .generate(&small("a star"), &mut FastNoise::new(3), &mut no_observer())
        .unwrap();
    let negative = pipeline()
        .generate(&with_negative, &mut FastNoise::new(3), &mut no_observer())
        .unwrap();
    assert_ne!(plain.image_embeddings, negative.image_embeddings);
}

#[test]
fn batches_of_prompts_and_images_per_prompt() {
    let mut request = small("a");
    request.prompts = vec!["a red circle".into(), "a green square".into()];
    request.num_images_per_prompt = Some(2);
    let out = pipeline()
        .generate(&request, &mut FastNoise::new(4), &mut no_observer())
        .unwrap();
    assert_eq!(out.images.len(), 4);
    assert_eq!(out.image_embeddings.nrows(), 4);
}

#[test]
fn invalid_requests_are_typed_errors() {
    let p = pipeline();
    let check = |request: TextToImage, name: &str| {
        let err = p
            .generate(&request, &mut FastNoise::new(0), &mut no_observer())
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { name: n, .. } if *n == name)
                || matches!(
                    (&err, name),
                    (
                        Error::Shape { .. } | Error::NonFinite { .. },
                        "image embeddings"
                    )
                ),
            "{name}: {err}"
        );
    };
    check(TextToImage::default(), "prompts");
    let mut r = small("x");
    r.num_images_per_prompt = Some(0);
    check(r, "num_images_per_prompt");
    let mut r = small("x");
    r.num_images_per_prompt = Some(65);
    check(r, "num_images_per_prompt");
    let mut r = small("x");
    r.prior_steps = Some(0);
    check(r, "prior steps");
    let mut r = small("x");
    r.decoder_steps = Some(1001);
    check(r, "decoder steps");
    let mut r = small("x");
    r.decoder_guidance_scale = Some(f32::NAN);
    check(r, "decoder guidance scale");
    let mut r = small("x");
    r.super_res_steps = vec![2, 2];
    check(r, "super-resolution steps");
    let mut r = small("x");
    r.image_embeddings = Some(Array2::zeros((1, 7)));
    check(r, "image embeddings");
    let mut r = small("x");
    r.image_embeddings = Some(Array2::from_elem((1, 32), f32::INFINITY));
    check(r, "image embeddings");
}

/// `--low-memory`: a session exists only while its stage runs (checked at every progress
/// report), nothing is held between runs or after a cancel, and the image is the same.
#[test]
fn low_memory_holds_only_the_running_stage_and_makes_the_same_image() {
    let runtime = unclip::Runtime::builder().low_memory(true).build().unwrap();
    let low = Pipeline::load(&runtime, common::tiny_bundle()).expect("load models/tiny");
    let loaded = |p: &Pipeline| {
        let mut names = Vec::new();
        let models = std::iter::once(p.text_encoder().model())
            .chain(std::iter::once(p.prior().model()))
            .chain(p.decoder_models())
            .chain(p.upsamplers().iter().flat_map(|u| u.models()));
        for m in models {
            if m.is_loaded() && !names.contains(&m.name().to_string()) {
                names.push(m.name().to_string());
            }
        }
        names
    };
    assert!(loaded(&low).is_empty(), "after load: {:?}", loaded(&low));
    let mut seen: Vec<(Stage, Vec<String>)> = Vec::new();
    let out = low
        .generate(
            &small("a red circle"),
            &mut TorchGenerator::new(5),
            &mut |p| {
                seen.push((p.stage, loaded(&low)));
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    let stage_models = |stage: Stage| -> Vec<String> {
        let mut names: Vec<String> = match stage {
            Stage::Text => vec![],
            Stage::Prior => vec![low.prior().model().name().into()],
            Stage::Decoder => low
                .decoder_models()
                .iter()
                .map(|m| m.name().into())
                .collect(),
            Stage::Upsampler(i) => low.upsamplers()[i]
                .models()
                .iter()
                .map(|m| m.name().into())
                .collect(),
        };
        names.dedup();
        names
    };
    assert_eq!(seen.len(), 1 + 3 + 3 + 2);
    for (stage, names) in &seen {
        // Only this stage's models (the decoder uses one of text_proj / text_proj_cfg), and one
        // at least; the text stage reports after it finished, its session already released.
        let own = stage_models(*stage);
        assert!(
            names.iter().all(|n| own.contains(n)),
            "during {stage}: {names:?}"
        );
        assert_eq!(
            names.is_empty(),
            *stage == Stage::Text,
            "during {stage}: {names:?}"
        );
    }
    assert!(loaded(&low).is_empty(), "after the run: {:?}", loaded(&low));
    let normal = pipeline()
        .generate(
            &small("a red circle"),
            &mut TorchGenerator::new(5),
            &mut no_observer(),
        )
        .unwrap();
    assert_eq!(out.images[0].as_raw(), normal.images[0].as_raw());
    // A cancel in the decoder releases it too.
    let err = low
        .generate(
            &small("a dog"),
            &mut FastNoise::new(2),
            &mut cancel_in_decoder,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled));
    assert!(
        loaded(&low).is_empty(),
        "after a cancel: {:?}",
        loaded(&low)
    );
}

/// `upsampler_batch`: a batch of 3 super-resolved in calls of 1 or 2 images is the batch computed
/// in one call (no guidance couples the images; noise and scheduler still see the whole batch),
/// and 0 images per call is refused with a typed error.
#[test]
fn upsampler_batch_splits_calls_without_changing_the_images() {
    let mut request = small("a red circle");
    request.num_images_per_prompt = Some(3);
    let runtime = unclip::Runtime::builder().build().unwrap();
    let run = |images: usize| {
        let options = unclip::LoadOptions {
            upsampler_batch: images,
        };
        let pipeline = Pipeline::load_with(&runtime, common::tiny_bundle(), &options)
            .expect("load models/tiny");
        assert_eq!(pipeline.options().upsampler_batch, images);
        let out = pipeline
            .generate(&request, &mut TorchGenerator::new(11), &mut no_observer())
            .unwrap();
        // 2 super-res steps: `first` runs once, `last` once, each in ⌈3 / images⌉ calls.
        let [first, last] = pipeline.upsamplers()[0].models();
        let calls = 3usize.div_ceil(images) as u64;
        assert_eq!(
            (first.run_count(), last.run_count()),
            (calls, calls),
            "{images}"
        );
        out.images
    };
    let whole = run(3);
    assert_eq!(whole.len(), 3);
    assert_ne!(
        whole[0], whole[1],
        "the three images must differ for the test to mean anything"
    );
    for images in [1, 2] {
        assert_eq!(run(images), whole, "{images} image(s) per call");
    }
    assert_eq!(unclip::LoadOptions::default().upsampler_batch, 1);
    let zero = unclip::LoadOptions { upsampler_batch: 0 };
    match Pipeline::load_with(&runtime, common::tiny_bundle(), &zero) {
        Err(Error::InvalidArgument { name, reason }) => {
            assert_eq!(name, "upsampler batch");
            assert!(reason.contains("1 or more"), "{reason}");
        }
        Err(other) => panic!("expected an invalid-argument error, got {other:?}"),
        Ok(_) => panic!("0 images per call was accepted"),
    }
}

#[test]
fn graph_cache_saves_then_loads_optimized_graphs_with_the_same_image() {
    let dir = std::env::temp_dir().join(format!("unclip-graph-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let image = |p: &Pipeline| {
        let out = p
            .generate(
                &small("a red circle"),
                &mut TorchGenerator::new(9),
                &mut no_observer(),
            )
            .unwrap();
        out.images[0].as_raw().clone()
    };
    let expected = image(pipeline());
    let runtime = unclip::Runtime::builder()
        .graph_cache_dir(&dir)
        .build()
        .unwrap();
    assert_eq!(runtime.graph_cache_dir(), Some(dir.as_path()));
    let graphs = || {
        let mut files: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let modified = e.metadata().unwrap().modified().unwrap();
                (e.file_name().to_string_lossy().into_owned(), modified)
            })
            .collect();
        files.sort();
        files
    };
    // first load: every model optimized and saved (graph + weights), nothing left staged
    let first = Pipeline::load(&runtime, common::tiny_bundle()).unwrap();
    assert_eq!(image(&first), expected);
    let saved = graphs();
    let bundle = unclip::bundle::Bundle::open(common::tiny_bundle()).unwrap();
    for name in bundle.manifest.models.keys() {
        let prefix = format!("{name}-");
        let graph = saved
            .iter()
            .find(|(f, _)| f.starts_with(&prefix) && f.ends_with(".onnx"))
            .unwrap_or_else(|| panic!("no saved graph for {name}: {saved:?}"));
        assert!(saved.iter().any(|(f, _)| *f == format!("{}.data", graph.0)));
    }
    assert!(
        saved.iter().all(|(f, _)| !f.starts_with(".staging")),
        "{saved:?}"
    );
    // second load: read back, not rewritten, same pixels
    let second = Pipeline::load(&runtime, common::tiny_bundle()).unwrap();
    assert_eq!(image(&second), expected);
    assert_eq!(graphs(), saved);
    // a damaged entry is rebuilt, not an error
    let (damaged, _) = saved.iter().find(|(f, _)| f.ends_with(".onnx")).unwrap();
    std::fs::write(dir.join(damaged), b"not a graph").unwrap();
    let third = Pipeline::load(&runtime, common::tiny_bundle()).unwrap();
    assert_eq!(image(&third), expected);
    assert!(std::fs::metadata(dir.join(damaged)).unwrap().len() > 100);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn graph_cache_is_refused_off_the_cpu_device() {
    let err = unclip::Runtime::builder()
        .device(unclip::Device::OpenVino {
            target: "CPU".into(),
        })
        .graph_cache_dir(std::env::temp_dir())
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("--openvino-cache-dir"), "{err}");
}
