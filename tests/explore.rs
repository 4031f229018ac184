//! Latent-space explorations on the tiny bundle (DALL·E 2 §3): the fixed-noise contract that
//! makes every frame reproducible, and each CLI command end to end.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use ndarray::Axis;
use unclip::explore::{Endpoint, ExploreSettings};
use unclip::latent::Pca;
use unclip::noise::TorchGenerator;
use unclip::pipeline::{no_observer, TextToImage};
use unclip::{Pipeline, RngKind};

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| Pipeline::load(&common::runtime(), common::tiny_bundle()).unwrap())
}

fn settings(seed: u64) -> ExploreSettings {
    let mut settings = ExploreSettings::new(RngKind::Torch, seed);
    settings.request = TextToImage {
        prior_steps: Some(2),
        decoder_steps: Some(2),
        super_res_steps: vec![2],
        ..Default::default()
    };
    settings
}

fn source_image() -> image::DynamicImage {
    let path = common::repo().join("tests/fixtures/vision/orient_1.png");
    unclip::vision::load_image(&path, &Default::default()).unwrap()
}

/// Frame k of an interpolation is exactly `generate` with that frame's embedding, the decoder
/// prompt and the same seed; prompt endpoints are exactly the prior's embedding for the seed; and
/// frames do not depend on the decode batch size.
#[test]
fn frames_are_single_generations_with_the_same_seed() {
    let pipeline = pipeline();
    let mut settings = settings(11);
    settings.batch = 2;
    let a = Endpoint::Prompt("a red circle".into());
    let b = Endpoint::Image(source_image());
    let exploration = pipeline
        .interpolate(&a, &b, 3, &settings, &mut no_observer())
        .unwrap();
    assert_eq!(exploration.images.len(), 3);
    assert_eq!(exploration.labels, ["θ=0.00", "θ=0.50", "θ=1.00"]);

    // Endpoint A: the prior's embedding of generate("a red circle", seed 11).
    let full = pipeline
        .generate(
            &TextToImage {
                prompts: vec!["a red circle".into()],
                ..settings.request.clone()
            },
            &mut TorchGenerator::new(11),
            &mut no_observer(),
        )
        .unwrap();
    assert_eq!(
        exploration.embeddings.row(0),
        full.image_embeddings.row(0),
        "prompt endpoint"
    );
    // Endpoint B: the image encoder's embedding.
    let encoded = pipeline
        .image_encoder()
        .unwrap()
        .encode(&[source_image()])
        .unwrap();
    let last = exploration.embeddings.row(2);
    assert!(last
        .iter()
        .zip(encoded.row(0))
        .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0)));

    for k in 0..3 {
        let single = pipeline
            .generate(
                &TextToImage {
                    prompts: vec![String::new()],
                    prior_guidance_scale: Some(0.0),
                    image_embeddings: Some(exploration.embeddings.select(Axis(0), &[k]).to_owned()),
                    ..settings.request.clone()
                },
                &mut TorchGenerator::new(11),
                &mut no_observer(),
            )
            .unwrap();
        assert_eq!(single.images[0], exploration.images[k], "frame {k}");
    }
    // Different frames decode different embeddings with the same noise: they differ.
    assert_ne!(exploration.images[0], exploration.images[2]);

    settings.batch = 3;
    let batched = pipeline
        .interpolate(&a, &b, 3, &settings, &mut no_observer())
        .unwrap();
    assert_eq!(batched.images, exploration.images);
}

#[test]
fn text_diff_pca_and_sweep_through_the_library() {
    let pipeline = pipeline();
    let settings = settings(5);
    let subject = Endpoint::Image(source_image());
    let diff = pipeline
        .text_diff(
            &subject,
            "a photo of a cat",
            "a photo of a dog",
            3,
            0.5,
            &settings,
            &mut no_observer(),
        )
        .unwrap();
    assert_eq!(diff.images.len(), 3);
    assert_eq!(diff.values, [0.0, 0.25, 0.5]);
    let norms: Vec<f32> = diff
        .embeddings
        .outer_iter()
        .map(|r| r.dot(&r).sqrt())
        .collect();
    assert!(norms.iter().all(|n| (n - norms[0]).abs() < 1e-4 * norms[0]));
    let same = pipeline.text_diff(
        &subject,
        "a cat",
        "a cat",
        3,
        0.5,
        &settings,
        &mut no_observer(),
    );
    assert!(matches!(same, Err(unclip::Error::InvalidArgument { .. })));

    // PCA on a few embeddings: k = all components rebuilds an embedding of the fitted set.
    let fitted = pipeline
        .embed_prompts(
            &TextToImage {
                prompts: (0..6).map(|i| format!("shape number {i}")).collect(),
                ..settings.request.clone()
            },
            &mut TorchGenerator::new(1),
            &mut no_observer(),
        )
        .unwrap();
    let pca = Pca::fit(fitted.view()).unwrap();
    let source = Endpoint::Embedding(fitted.row(2).to_owned());
    let probe = pipeline
        .pca_probe(&pca, &source, &[1, 6], &settings, &mut no_observer())
        .unwrap();
    assert_eq!(probe.labels, ["k=1", "k=6"]);
    let rebuilt = probe.embeddings.row(1);
    assert!(rebuilt
        .iter()
        .zip(fitted.row(2))
        .all(|(x, y)| (x - y).abs() < 1e-4));
    assert!(pipeline
        .pca_probe(&pca, &source, &[7], &settings, &mut no_observer())
        .is_err());

    let sweep = pipeline
        .guidance_sweep(
            "a cat",
            &[1.0, 4.0],
            &[1.0, 8.0],
            &settings,
            &mut no_observer(),
        )
        .unwrap();
    assert_eq!(sweep.images.len(), 4);
    // Cell (prior 4, decoder 8) is generate at those scales with the same seed.
    let cell = pipeline
        .generate(
            &TextToImage {
                prompts: vec!["a cat".into()],
                prior_guidance_scale: Some(4.0),
                decoder_guidance_scale: Some(8.0),
                ..settings.request.clone()
            },
            &mut TorchGenerator::new(5),
            &mut no_observer(),
        )
        .unwrap();
    assert_eq!(sweep.images[3], cell.images[0]);
    // Guidance changes the picture.
    assert_ne!(sweep.images[0], sweep.images[3]);
    // A bad scale anywhere is refused before any cell runs.
    assert!(pipeline
        .guidance_sweep("a cat", &[1.0, -2.0], &[1.0], &settings, &mut no_observer())
        .is_err());
}

fn unclip(args: &[&str]) -> std::process::Output {
    common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_unclip"))
            .args(args)
            .env_remove("UNCLIP_MODEL"),
    )
}

const FAST: &[&str] = &[
    "-q",
    "--prior-steps",
    "2",
    "--decoder-steps",
    "2",
    "--sr-steps",
    "2",
    "--seed",
    "3",
    "--rng",
    "torch",
];

fn png_meta(path: &Path, key: &str) -> String {
    unclip::image_io::read_png_text(path)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {}", path.display()))
}

fn frames_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("frame_")
        })
        .count()
}

#[test]
fn cli_interpolate_and_textdiff() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bundle().display().to_string();
    let image = common::repo().join("tests/fixtures/vision/orient_1.png");
    let image = image.display().to_string();
    let out = tmp.path().join("interp");
    let out_s = out.display().to_string();
    let mut args = vec![
        "interpolate",
        "prompt:a red circle",
        image.as_str(),
        "--frames",
        "4",
        "--model",
        &model,
        "-o",
        &out_s,
        "--cell",
        "64",
    ];
    args.extend(FAST);
    unclip(&args);
    assert_eq!(frames_in(&out), 4);
    let sheet = image::open(out.join("sheet.png")).unwrap();
    // 4 cells of 64 px in one row, with title and captions.
    assert_eq!(sheet.width(), 4 + 4 * 68);
    assert!(sheet.height() > 64);
    assert_eq!(png_meta(&out.join("frame_002.png"), "label"), "θ=0.67");
    assert_eq!(png_meta(&out.join("sheet.png"), "command"), "interpolate");
    let gif = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
        std::fs::File::open(out.join("animation.gif")).unwrap(),
    ))
    .unwrap();
    use image::AnimationDecoder;
    assert_eq!(gif.into_frames().collect_frames().unwrap().len(), 4);
    let embeddings = unclip::npy::read_embeddings(&out.join("embeddings.npy")).unwrap();
    assert_eq!(embeddings.nrows(), 4);

    // Frame 2 again through `generate` with its embedding: the same PNG pixels.
    let row = tmp.path().join("row.npy");
    unclip::npy::write(
        &row,
        &unclip::pipeline::Tensor::F32(embeddings.select(Axis(0), &[2]).into_dyn()),
    )
    .unwrap();
    let again = tmp.path().join("again.png");
    let (row_s, again_s) = (row.display().to_string(), again.display().to_string());
    let mut args = vec![
        "generate",
        "",
        "--image-embedding",
        &row_s,
        "--prior-guidance-scale",
        "0",
        "--model",
        &model,
        "-o",
        &again_s,
    ];
    args.extend(FAST);
    unclip(&args);
    assert_eq!(
        image::open(&again).unwrap().to_rgb8(),
        image::open(out.join("frame_002.png")).unwrap().to_rgb8()
    );

    let out = tmp.path().join("td");
    let out_s = out.display().to_string();
    let mut args = vec![
        "textdiff",
        image.as_str(),
        "--from",
        "a cat",
        "--to",
        "a dog",
        "--frames",
        "3",
        "--max-theta",
        "0.5",
        "--model",
        &model,
        "-o",
        &out_s,
        "--json",
    ];
    args.extend(FAST);
    let output = unclip(&args);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        summary["labels"],
        serde_json::json!(["θ=0.00", "θ=0.25", "θ=0.50"])
    );
    assert_eq!(frames_in(&out), 3);
    assert!(out.join("sheet.png").exists() && out.join("animation.gif").exists());
}

#[test]
fn cli_pca_and_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bundle().display().to_string();
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 1..=4 {
        let name = format!("orient_{i}.png");
        std::fs::copy(
            common::repo().join("tests/fixtures/vision").join(&name),
            images.join(&name),
        )
        .unwrap();
    }
    let basis = tmp.path().join("basis.npz");
    let out = tmp.path().join("pca");
    let (images_s, basis_s, out_s) = (
        images.display().to_string(),
        basis.display().to_string(),
        out.display().to_string(),
    );
    let source = images.join("orient_2.png").display().to_string();
    let mut args = vec![
        "pca",
        "--fit",
        &images_s,
        "--save-basis",
        &basis_s,
        "--source",
        &source,
        "--components",
        "1,2,4",
        "--model",
        &model,
        "-o",
        &out_s,
    ];
    args.extend(FAST);
    unclip(&args);
    assert_eq!(frames_in(&out), 3);
    let pca = Pca::load(&basis).unwrap();
    assert_eq!(pca.num_components(), 4);
    // k = 4 of 4 images rebuilds the source's embedding.
    let embeddings = unclip::npy::read_embeddings(&out.join("embeddings.npy")).unwrap();
    let encoded = pipeline()
        .image_encoder()
        .unwrap()
        .encode(&[unclip::vision::load_image(Path::new(&source), &Default::default()).unwrap()])
        .unwrap();
    assert!(embeddings
        .row(2)
        .iter()
        .zip(encoded.row(0))
        .all(|(x, y)| (x - y).abs() < 1e-4));
    assert_eq!(png_meta(&out.join("frame_000.png"), "label"), "k=1");

    // The saved basis loads back; asking for more components than it has is a clear error.
    let output = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args([
            "pca",
            "--basis",
            &basis_s,
            "--source",
            &source,
            "--components",
            "8",
            "--model",
            &model,
            "-o",
            &out_s,
        ])
        .args(FAST)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("8 requested, the basis has 4"), "{stderr}");

    let out = tmp.path().join("sweep");
    let out_s = out.display().to_string();
    let mut args = vec![
        "sweep",
        "a red circle",
        "--prior-guidance-scale",
        "1,4",
        "--decoder-guidance-scale",
        "1,4,8",
        "--model",
        &model,
        "-o",
        &out_s,
        "--cell",
        "32",
    ];
    args.extend(FAST);
    unclip(&args);
    assert_eq!(frames_in(&out), 6);
    assert_eq!(
        png_meta(&out.join("frame_005.png"), "label"),
        "prior 4 / decoder 8"
    );
    let sheet = image::open(out.join("sheet.png")).unwrap();
    // Three columns of 32 px plus row labels on the left.
    assert!(sheet.width() > 4 + 3 * 36);
}

fn noise_draws(generation: &unclip::Generation) -> usize {
    generation
        .intermediates
        .keys()
        .filter(|k| k.starts_with("noise_"))
        .count()
}

/// Per-stage schedulers: each kind runs its own number of steps and draws noise exactly where
/// its diffusers class does; η without a DDIM stage is refused before any work.
#[test]
fn stage_schedulers_draw_noise_where_diffusers_does() {
    use unclip::schedulers::SchedulerKind;
    let pipeline = pipeline();
    let base = TextToImage {
        prompts: vec!["a cat".into()],
        prior_steps: Some(3),
        decoder_steps: Some(4),
        super_res_steps: vec![2],
        record_intermediates: true,
        ..Default::default()
    };
    let run = |request: &TextToImage| {
        pipeline
            .generate(request, &mut TorchGenerator::new(2), &mut no_observer())
            .unwrap()
    };
    // UnCLIPScheduler: initial latents + one draw per step with t > 0, per stage: 3 + 4 + 2.
    let unclip = run(&base);
    assert_eq!(noise_draws(&unclip), 9);
    assert_eq!(unclip.settings.decoder_scheduler, SchedulerKind::UnCLIP);

    // Deterministic solvers draw only the initial latents of their stage.
    let solvers = TextToImage {
        prior_scheduler: Some(SchedulerKind::DpmSolverPP),
        decoder_scheduler: Some(SchedulerKind::Ddim),
        super_res_scheduler: Some(SchedulerKind::DpmSolverPP),
        ..base.clone()
    };
    let deterministic = run(&solvers);
    assert_eq!(noise_draws(&deterministic), 3);
    assert_eq!(
        deterministic.settings.super_res_scheduler,
        [SchedulerKind::DpmSolverPP]
    );
    assert_ne!(deterministic.images[0], unclip.images[0]);
    // DDIM with η > 0 draws once per decoder step (diffusers' DDIMScheduler.step).
    let stochastic = run(&TextToImage {
        eta: Some(0.5),
        ..solvers.clone()
    });
    assert_eq!(noise_draws(&stochastic), 3 + 4);
    assert_eq!(stochastic.settings.eta, 0.5);
    // Same prior (DPM++ is deterministic, same initial noise): same embeddings.
    assert_eq!(stochastic.image_embeddings, deterministic.image_embeddings);
    assert_ne!(stochastic.images[0], deterministic.images[0]);

    for bad in [
        TextToImage {
            eta: Some(0.5),
            ..base.clone()
        },
        TextToImage {
            eta: Some(-0.1),
            ..solvers.clone()
        },
        TextToImage {
            eta: Some(f32::NAN),
            ..solvers.clone()
        },
    ] {
        let err = pipeline.resolve(&bad).unwrap_err();
        assert!(
            matches!(err, unclip::Error::InvalidArgument { .. }),
            "{err}"
        );
    }
}

/// DDIM inversion (§3.1) on the tiny bundle. Its UNet has random weights, so the probability-flow
/// ODE it defines is far from smooth and a round trip cannot be exact (the error even grows
/// with the step count: 0.27 at 2 steps, 0.51 at 25, 0.55 at 250, mean |Δ| in [−1, 1] units).
/// What must hold: the inversion is deterministic, it lands much closer to the source than
/// decoding fresh noise does, and η > 0 gives distinct variations.
#[test]
fn ddim_inverted_variations() {
    let pipeline = pipeline();
    let request = TextToImage {
        decoder_steps: Some(2),
        super_res_steps: vec![2],
        decoder_guidance_scale: Some(1.0),
        eta: Some(0.0),
        ..Default::default()
    };
    let source = source_image();
    let (first, inversion) = pipeline
        .vary_inverted(
            std::slice::from_ref(&source),
            &request,
            &mut TorchGenerator::new(0),
            &mut no_observer(),
        )
        .unwrap();
    let (_, inversion_again) = pipeline
        .vary_inverted(
            std::slice::from_ref(&source),
            &request,
            &mut TorchGenerator::new(99),
            &mut no_observer(),
        )
        .unwrap();
    // η = 0: nothing random touches the decoder; the seed only reaches the upsampler.
    assert_eq!(inversion.latents, inversion_again.latents);
    assert_eq!(inversion.mean_abs_error, inversion_again.mean_abs_error);
    assert_eq!(
        first.settings.decoder_scheduler,
        unclip::schedulers::SchedulerKind::Ddim
    );
    assert!(
        inversion.mean_abs_error[0] < 0.35,
        "{:?}",
        inversion.mean_abs_error
    );
    assert!(inversion.psnr[0] > 12.0, "{:?}", inversion.psnr);

    // Baseline: the same decoder from fresh noise (plain variation) is much farther away.
    let plain = pipeline
        .vary(
            std::slice::from_ref(&source),
            &TextToImage {
                record_intermediates: true,
                eta: None,
                ..request.clone()
            },
            &mut TorchGenerator::new(0),
            &mut no_observer(),
        )
        .unwrap();
    let Some(unclip::pipeline::Tensor::F32(decoded)) = plain.intermediates.get("decoder_out")
    else {
        panic!("no decoder_out");
    };
    let baseline = decoded
        .iter()
        .zip(inversion.sources.iter())
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / decoded.len() as f32;
    assert!(
        baseline > 2.0 * inversion.mean_abs_error[0],
        "fresh noise {baseline} vs inverted {}",
        inversion.mean_abs_error[0]
    );

    // η > 0: three different variations near the source.
    let (variations, near) = pipeline
        .vary_inverted(
            std::slice::from_ref(&source),
            &TextToImage {
                num_images_per_prompt: Some(3),
                eta: Some(1.0),
                ..request.clone()
            },
            &mut TorchGenerator::new(0),
            &mut no_observer(),
        )
        .unwrap();
    assert_eq!(variations.images.len(), 3);
    assert_ne!(variations.images[0], variations.images[1]);
    assert!(near.mean_abs_error.iter().all(|&e| e < baseline));

    // Inversion needs DDIM for the decode.
    let err = pipeline
        .vary_inverted(
            std::slice::from_ref(&source),
            &TextToImage {
                decoder_scheduler: Some(unclip::schedulers::SchedulerKind::DpmSolverPP),
                ..request
            },
            &mut TorchGenerator::new(0),
            &mut no_observer(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("DDIM"), "{err}");
}

#[test]
fn cli_schedulers_and_inverted_variations() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_bundle().display().to_string();
    let image = common::repo().join("tests/fixtures/vision/orient_1.png");
    let image = image.display().to_string();
    let out = tmp.path().join("v.png").display().to_string();
    let output = unclip(&[
        "vary",
        &image,
        "--invert",
        "--eta",
        "0",
        "--decoder-guidance-scale",
        "1",
        "--decoder-steps",
        "2",
        "--sr-steps",
        "2",
        "--model",
        &model,
        "-o",
        &out,
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let error = summary["mean_abs_error"][0].as_f64().unwrap();
    assert!(error > 0.0 && error < 0.35, "{summary}");
    assert_eq!(png_meta(Path::new(&out), "ddim_inversion"), "true");
    assert_eq!(png_meta(Path::new(&out), "decoder_scheduler"), "ddim");

    let out = tmp.path().join("g.png");
    let out_s = out.display().to_string();
    let mut args = vec![
        "generate",
        "a cat",
        "--prior-scheduler",
        "dpm++",
        "--decoder-scheduler",
        "ddim",
        "--eta",
        "0.25",
        "--model",
        &model,
        "-o",
        &out_s,
    ];
    args.extend(FAST);
    unclip(&args);
    assert_eq!(png_meta(&out, "prior_scheduler"), "dpm++");
    assert_eq!(png_meta(&out, "eta"), "0.25");

    let output = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args([
            "generate",
            "a cat",
            "--decoder-scheduler",
            "euler",
            "--model",
            &model,
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ddim") && stderr.contains("dpm++"),
        "{stderr}"
    );
}

/// `textdiff --invert`: every frame starts from the image's DDIM-inverted latents, so frame 0
/// (θ = 0, the image's own embedding) is exactly `vary --invert --eta 0` of the image.
#[test]
fn inverted_text_diff_starts_from_the_reconstruction() {
    let pipeline = pipeline();
    let source = source_image();
    let mut settings = settings(4);
    settings.request.decoder_guidance_scale = Some(1.0);
    settings.decoder_latents = Some(
        pipeline
            .invert_images(std::slice::from_ref(&source), 2, &mut no_observer())
            .unwrap(),
    );
    let diff = pipeline
        .text_diff(
            &Endpoint::Image(source.clone()),
            "a cat",
            "a dog",
            2,
            0.5,
            &settings,
            &mut no_observer(),
        )
        .unwrap();
    let (varied, _) = pipeline
        .vary_inverted(
            std::slice::from_ref(&source),
            &TextToImage {
                decoder_steps: Some(2),
                super_res_steps: vec![2],
                decoder_guidance_scale: Some(1.0),
                ..Default::default()
            },
            &mut TorchGenerator::new(4),
            &mut no_observer(),
        )
        .unwrap();
    assert!(
        diff.images[0] == varied.images[0],
        "frame 0 is not the reconstruction"
    );
    assert!(diff.images[0] != diff.images[1]);
}
