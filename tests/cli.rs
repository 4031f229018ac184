//! The `unclip` binary end to end: outputs, PNG metadata, dumps, embeddings, errors.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn unclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args(args)
        .env_remove("UNCLIP_MODEL")
        .output()
        .expect("run unclip")
}

fn model() -> String {
    common::tiny_bundle().display().to_string()
}

fn model_str() -> &'static str {
    static MODEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MODEL.get_or_init(model)
}

fn png_text(path: &Path) -> Vec<(String, String)> {
    unclip::image_io::read_png_text(path).unwrap()
}

fn meta<'a>(text: &'a [(String, String)], key: &str) -> &'a str {
    text.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {text:?}"))
}

const FAST: &[&str] = &[
    "--prior-steps",
    "2",
    "--decoder-steps",
    "2",
    "--sr-steps",
    "2",
];

#[test]
fn generate_writes_pngs_with_reproducible_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cat.png");
    let mut args = vec![
        "-q",
        "generate",
        "a cat",
        "--model",
        model_str(),
        "--seed",
        "7",
        "--rng",
        "torch",
        "--num-images",
        "2",
        "-o",
    ];
    let out_s = out.display().to_string();
    args.push(&out_s);
    args.extend(FAST);
    let result = unclip(&args);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let first = tmp.path().join("cat_0.png");
    let second = tmp.path().join("cat_1.png");
    assert!(first.exists() && second.exists() && !out.exists());
    let text = png_text(&first);
    assert_eq!(meta(&text, "prompt"), "a cat");
    assert_eq!(meta(&text, "seed"), "7");
    assert_eq!(meta(&text, "rng"), "torch");
    assert_eq!(meta(&text, "decoder_steps"), "2");
    assert_eq!(meta(&text, "model"), "tiny");
    assert_eq!(meta(&text, "model_sha256").len(), 64);
    assert_eq!(meta(&text, "unclip_version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(meta(&png_text(&second), "image_index"), "1");

    // Same settings again: byte-identical files.
    let again = tmp.path().join("again.png");
    let again_s = again.display().to_string();
    let mut args2 = args.clone();
    *args2.iter_mut().find(|a| **a == out_s.as_str()).unwrap() = &again_s;
    assert!(unclip(&args2).status.success());
    assert_eq!(
        std::fs::read(first).unwrap(),
        std::fs::read(tmp.path().join("again_0.png")).unwrap()
    );
}

#[test]
fn dump_uses_reference_names_and_embedding_roundtrips() {
    let tmp = tempfile::tempdir().unwrap();
    let dump = tmp.path().join("dump");
    let emb = tmp.path().join("emb.npy");
    let (dump_s, emb_s) = (dump.display().to_string(), emb.display().to_string());
    let out_s = tmp.path().join("a.png").display().to_string();
    let mut args = vec![
        "-q",
        "generate",
        "a dog",
        "--model",
        model_str(),
        "--seed",
        "1",
        "-o",
        &out_s,
        "--dump",
        &dump_s,
        "--save-image-embedding",
        &emb_s,
    ];
    args.extend(FAST);
    assert!(unclip(&args).status.success());
    let reference = common::ref_dir().join("basic");
    for name in [
        "prompt_ids",
        "text_embeds",
        "text_hidden_states",
        "image_embeddings",
        "decoder_out",
        "upsampled",
        "sr_out",
        "noise_000",
    ] {
        assert!(dump.join(format!("{name}.npy")).exists(), "{name}");
        assert!(
            reference.join(format!("{name}.npy")).exists()
                || reference.join(format!("{name}.sub4.npy")).exists(),
            "{name} is a reference name"
        );
    }
    let saved = common::read_f32(&emb);
    assert_eq!(saved, common::read_f32(&dump.join("image_embeddings.npy")));

    // Decoding the saved embedding skips the prior.
    let out2 = tmp.path().join("b.png").display().to_string();
    let mut args = vec![
        "-q",
        "generate",
        "a dog",
        "--model",
        model_str(),
        "--seed",
        "1",
        "-o",
        &out2,
        "--image-embedding",
        &emb_s,
        "--json",
    ];
    args.extend(FAST);
    let result = unclip(&args);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(summary["seed"], 1);
    assert!(summary["timings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["stage"] != "prior"));
}

#[test]
fn errors_are_one_line_with_nonzero_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "generate".into(),
                "x".into(),
                "--model".into(),
                tmp.path().display().to_string(),
            ],
            "bundle file missing",
        ),
        (
            vec![
                "generate".into(),
                "x".into(),
                "--model".into(),
                model(),
                "--device".into(),
                "cuda".into(),
            ],
            "CUDAExecutionProvider",
        ),
        (
            vec![
                "generate".into(),
                "x".into(),
                "--model".into(),
                model(),
                "--device".into(),
                "tpu".into(),
            ],
            "unknown device",
        ),
        (
            vec![
                "generate".into(),
                "x".into(),
                "--model".into(),
                model(),
                "--decoder-steps".into(),
                "0".into(),
            ],
            "decoder steps",
        ),
        (
            vec![
                "generate".into(),
                "x".into(),
                "--model".into(),
                model(),
                "--image-embedding".into(),
                tmp.path().join("nope.npy").display().to_string(),
            ],
            "nope.npy",
        ),
        (
            vec![
                "generate".into(),
                "x".into(),
                "--model".into(),
                model(),
                "-o".into(),
                "/nonexistent/dir/x.png".into(),
                "--prior-steps".into(),
                "2".into(),
                "--decoder-steps".into(),
                "2".into(),
                "--sr-steps".into(),
                "2".into(),
            ],
            // Checked before any model runs.
            "cannot write /nonexistent/dir/x.png: directory /nonexistent/dir does not exist",
        ),
        (
            vec![
                "generate".into(),
                "x".into(),
                "--model".into(),
                model(),
                "-o".into(),
                tmp.path().display().to_string(),
            ],
            "it is a directory",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["-q".to_string()];
        full.extend(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let result = unclip(&refs);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{refs:?} should fail");
        assert!(stderr.contains(needle), "{refs:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{refs:?}: one line: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{stderr}");
    }
}

#[test]
fn info_and_bench() {
    let result = unclip(&["info", "--model", &model()]);
    assert!(result.status.success());
    let text = String::from_utf8_lossy(&result.stdout);
    for needle in [
        "prior",
        "decoder",
        "sr256",
        "predicted_image_embedding",
        "[batch, 3, 64, 64]",
        "UnCLIPScheduler",
    ] {
        assert!(text.contains(needle), "info lacks {needle}: {text}");
    }
    let m = model();
    let mut args = vec![
        "-q",
        "bench",
        "--model",
        &m,
        "--runs",
        "2",
        "--warmup",
        "0",
        "--spin",
        "--no-prepack",
    ];
    args.extend(FAST);
    let result = unclip(&args);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    for stage in ["load", "text", "prior", "decoder", "sr256", "total"] {
        let s = &report["seconds"][stage];
        assert!(
            s["min"].as_f64().unwrap() <= s["median"].as_f64().unwrap(),
            "{stage}"
        );
        assert!(
            s["median"].as_f64().unwrap() <= s["max"].as_f64().unwrap(),
            "{stage}"
        );
    }
    let share = report["outside_ort_share"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&share));
    assert_eq!(report["steps"]["decoder"], 2);
    assert_eq!(report["device"], "cpu");
    // --spin reaches the process's one thread pool (it is fixed when ONNX Runtime is loaded)
    assert_eq!(report["spinning"], true);
    // --no-prepack reaches every session's options
    assert_eq!(report["prepacking"], false);
}

#[test]
fn vary_writes_variations_of_an_image() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v.png").display().to_string();
    let source = common::ref_dir()
        .join("variation/source.png")
        .display()
        .to_string();
    let result = unclip(&[
        "-q",
        "vary",
        &source,
        "-n",
        "2",
        "--model",
        model_str(),
        "--seed",
        "3",
        "--decoder-steps",
        "2",
        "--sr-steps",
        "2",
        "-o",
        &out,
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let first = tmp.path().join("v_0.png");
    assert!(first.exists() && tmp.path().join("v_1.png").exists());
    assert_eq!(meta(&png_text(&first), "source_image"), source);
    let missing = unclip(&["-q", "vary", "/nonexistent.png", "--model", model_str()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.png"));
}

/// Ctrl-C stops a run between steps: exit code 130, a one-line message, no output file.
#[cfg(unix)]
#[test]
fn ctrl_c_cancels_between_steps_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never.png");
    let child = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args([
            "-q",
            "generate",
            "a cat",
            "--model",
            model_str(),
            "--decoder-steps",
            "1000",
            "-o",
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&output.stderr).contains("interrupted"));
    assert!(!out.exists());
    // No temporary file left either.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// README "Models": --model, then $UNCLIP_MODEL, then models/shapes next to the executable
/// (before the current directory's and the source tree's bundles).
#[test]
fn default_bundle_lookup_order() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    let adjacent = bin.join("models/shapes");
    std::fs::create_dir_all(&adjacent).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_unclip"), bin.join("unclip")).unwrap();
    for entry in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let path = entry.unwrap().path();
        let target = adjacent.join(path.file_name().unwrap());
        if path.file_name().unwrap() == "bundle.json" {
            // Renamed, so the output shows which copy was found (the name is not checksummed).
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(
                &target,
                text.replacen("\"name\": \"tiny\"", "\"name\": \"adjacent\"", 1),
            )
            .unwrap();
        } else {
            std::os::unix::fs::symlink(&path, &target).unwrap();
        }
    }
    let info = |env_model: Option<&str>, model: Option<&str>| {
        let mut cmd = Command::new(bin.join("unclip"));
        cmd.arg("info")
            .current_dir(dir.path())
            .env_remove("UNCLIP_MODEL");
        if let Some(m) = env_model {
            cmd.env("UNCLIP_MODEL", m);
        }
        if let Some(m) = model {
            cmd.args(["--model", m]);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let first = text.lines().next().unwrap_or_default().to_string();
        (out.status.success(), first)
    };
    let (ok, line) = info(None, None);
    assert!(ok && line.starts_with("bundle   adjacent"), "{line}");
    let (ok, line) = info(Some(model_str()), None);
    assert!(ok && line.starts_with("bundle   tiny"), "{line}");
    let (ok, line) = info(Some("/nonexistent/bundle"), Some(model_str()));
    assert!(ok && line.starts_with("bundle   tiny"), "{line}");
    let (ok, line) = info(Some("/nonexistent/bundle"), None);
    assert!(
        !ok && line.contains("/nonexistent/bundle/bundle.json"),
        "{line}"
    );
}

#[test]
fn graph_cache_defaults_to_the_user_cache_on_cpu_and_none_turns_it_off() {
    let tmp = tempfile::tempdir().unwrap();
    let m = model();
    let bench = |extra: &[&str]| {
        let mut args = vec!["-q", "bench", "--model", &m, "--runs", "1", "--warmup", "0"];
        args.extend(FAST);
        args.extend(extra);
        Command::new(env!("CARGO_BIN_EXE_unclip"))
            .args(&args)
            .env_remove("UNCLIP_MODEL")
            .env("XDG_CACHE_HOME", tmp.path())
            .output()
            .expect("run unclip")
    };
    let graphs = tmp.path().join("unclip").join("graphs");
    let result = bench(&[]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(report["graph_cache_dir"], graphs.display().to_string());
    let saved = std::fs::read_dir(&graphs).unwrap().count();
    assert!(saved >= 12, "{saved} files in {}", graphs.display());

    std::fs::remove_dir_all(&graphs).unwrap();
    let result = bench(&["--graph-cache-dir", "none"]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert!(report["graph_cache_dir"].is_null());
    assert!(!graphs.exists());

    let result = bench(&["--device", "openvino", "--graph-cache-dir", "/tmp/x"]);
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("--openvino-cache-dir"), "{stderr}");
}
