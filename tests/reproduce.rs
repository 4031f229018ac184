//! Reproduction metadata: an image made by `unclip generate`, `vary` and `interpolate`, and one
//! served by `unclip serve`, re-made from its PNG text chunks alone ([`Reproduction`],
//! [`Pipeline::reproduce`]) — the same pixels, byte for byte.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use common::server::Server;
use unclip::image_io::{read_png_text, read_png_text_bytes, save_png};
use unclip::pipeline::{no_observer, Reproduction};
use unclip::Pipeline;

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| Pipeline::load(&common::runtime(), common::tiny_bundle()).unwrap())
}

/// Few steps, for speed: what the reproduced images are made with.
const FEW_STEPS: &[&str] = &[
    "--prior-steps",
    "2",
    "--decoder-steps",
    "2",
    "--sr-steps",
    "2",
];

fn unclip(args: &[&str]) {
    common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_unclip"))
            .args(args)
            .arg("--model")
            .arg(common::tiny_bundle())
            .arg("--quiet"),
    );
}

/// Re-makes `png` from its metadata and checks the pixels; returns the record.
fn assert_reproduces(png: &Path) -> Reproduction {
    let record = Reproduction::from_png_text(&read_png_text(png).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    let remade = pipeline().reproduce(&record, &mut no_observer()).unwrap();
    let written = image::open(png).unwrap().to_rgb8();
    assert!(
        remade == written,
        "{}: the image re-made from its metadata differs ({record:?})",
        png.display()
    );
    record
}

#[test]
fn generate_batches_are_remade_image_by_image() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let out = out.to_str().unwrap();
    unclip(&[
        "generate",
        "a red circle",
        "a blue square",
        "--num-images",
        "2",
        "--seed",
        "7",
        "--rng",
        "torch",
        "--prior-steps",
        "2",
        "--decoder-steps",
        "3",
        "--sr-steps",
        "2",
        "--negative-prompt",
        "green",
        "--decoder-guidance-scale",
        "3",
        "-o",
        out,
    ]);
    for i in 0..4 {
        let record = assert_reproduces(&dir.path().join(format!("out_{i}.png")));
        assert_eq!(record.image_index, i);
        assert_eq!((record.batch_prompts, record.num_images_per_prompt), (2, 2));
        assert_eq!(record.negative_prompt.as_deref(), Some("green"));
        assert_eq!(record.decoder_steps, 3);
        assert!(record.image_embedding.is_none(), "the prior ran");
    }
    // a DDIM decoder with η and the fast generator
    unclip(
        &[
            &[
                "generate",
                "a star",
                "--seed",
                "3",
                "--decoder-scheduler",
                "ddim",
                "--eta",
                "0.5",
                "-o",
                out,
            ][..],
            FEW_STEPS,
        ]
        .concat(),
    );
    let record = assert_reproduces(Path::new(out));
    assert_eq!(record.eta, 0.5);

    // The same from the CLI: `unclip reproduce --check` re-makes a batch's image by itself.
    let source = dir.path().join("out_3.png");
    let again = dir.path().join("again.png");
    unclip(&[
        "reproduce",
        source.to_str().unwrap(),
        "--check",
        "-o",
        again.to_str().unwrap(),
    ]);
    assert!(image::open(&again).unwrap().to_rgb8() == image::open(&source).unwrap().to_rgb8());
    assert_eq!(
        read_png_text(&again).unwrap(),
        read_png_text(&source).unwrap()
    );
    // one pixel changed under the same record: --check fails and says how many differ
    let mut tampered = image::open(&source).unwrap().to_rgb8();
    tampered.get_pixel_mut(5, 9).0[1] ^= 0x10;
    let tampered_path = dir.path().join("tampered.png");
    save_png(&tampered_path, &tampered, &read_png_text(&source).unwrap()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args([
            "reproduce",
            tampered_path.to_str().unwrap(),
            "--check",
            "-o",
        ])
        .arg(&again)
        .arg("--model")
        .arg(common::tiny_bundle())
        .arg("--quiet")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("1 of 65536 pixels differ"), "{stderr}");
}

#[test]
fn variations_and_interpolation_frames_are_remade() {
    let dir = tempfile::tempdir().unwrap();
    let source = common::repo().join("tests/fixtures/vision/orient_1.png");
    let out = dir.path().join("variation.png");
    unclip(&[
        "vary",
        source.to_str().unwrap(),
        "-n",
        "2",
        "--seed",
        "5",
        "--decoder-steps",
        "2",
        "--sr-steps",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    for i in 0..2 {
        let record = assert_reproduces(&dir.path().join(format!("variation_{i}.png")));
        assert_eq!(record.command, "vary");
        assert!(
            record.image_embedding.is_some(),
            "a variation decodes an embedding"
        );
    }
    let frames = dir.path().join("interpolation");
    unclip(
        &[
            &[
                "interpolate",
                source.to_str().unwrap(),
                "a green triangle",
                "--frames",
                "3",
                "--seed",
                "9",
                "-o",
                frames.to_str().unwrap(),
            ][..],
            FEW_STEPS,
        ]
        .concat(),
    );
    for i in 0..3 {
        let record = assert_reproduces(&frames.join(format!("frame_{i:03}.png")));
        assert_eq!(record.command, "interpolate");
        assert!(
            record.seed.shared,
            "interpolation frames share their decoder noise"
        );
    }
}

/// A record names its bundle: another bundle refuses it with a typed error.
#[test]
fn a_record_for_another_bundle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    unclip(
        &[
            &["generate", "x", "--seed", "1", "-o", out.to_str().unwrap()][..],
            FEW_STEPS,
        ]
        .concat(),
    );
    let mut record = Reproduction::from_png_text(&read_png_text(&out).unwrap()).unwrap();
    record.model_sha256 = "0".repeat(64);
    match pipeline().reproduce(&record, &mut no_observer()) {
        Err(unclip::Error::InvalidArgument { reason, .. }) => {
            assert!(reason.contains("load that bundle"), "{reason}")
        }
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    let mut pairs = read_png_text(&out).unwrap();
    pairs.retain(|(key, _)| key != "seed");
    assert!(matches!(
        Reproduction::from_png_text(&pairs),
        Err(unclip::Error::InvalidArgument { .. })
    ));
}

/// An image served over HTTP carries its record too; served images of a batch of two requests
/// are each re-made alone.
#[test]
fn served_images_are_remade() {
    use base64::Engine;
    let server = Server::start(&["--max-batch", "2"]);
    let base = server.base.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bodies: Vec<serde_json::Value> = runtime.block_on(async {
        let client = reqwest::Client::new();
        let request = |prompt: &str, seed: u64, n: usize| {
            client
                .post(format!("{base}/v1/images/generations"))
                .json(&serde_json::json!({
                    "prompt": prompt, "n": n, "seed": seed, "rng": "torch",
                    "prior_steps": 2, "decoder_steps": 2, "super_res_steps": [2],
                    "response_format": "b64_json",
                }))
                .send()
        };
        let (a, b) = tokio::join!(request("a red circle", 11, 2), request("a star", 12, 1));
        vec![
            a.unwrap().json().await.unwrap(),
            b.unwrap().json().await.unwrap(),
        ]
    });
    drop(server);
    let mut checked = 0;
    for body in &bodies {
        for item in body["data"].as_array().expect("data") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(item["b64_json"].as_str().unwrap())
                .unwrap();
            let record =
                Reproduction::from_png_text(&read_png_text_bytes(&bytes).unwrap()).unwrap();
            assert_eq!(record.command, "server");
            let remade = pipeline().reproduce(&record, &mut no_observer()).unwrap();
            let served = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert!(
                remade == served,
                "served image {record:?} differs when re-made"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 3);
}
