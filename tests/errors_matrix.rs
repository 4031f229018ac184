//! The bad-input matrix of `docs/errors.md` (issue #10): one test per row, named after the row's
//! ID. Each test gives its class of bad input to every shell the row fills in — the library, the
//! `unclip` binary, `unclip serve` and the C ABI — and asserts the error variant, message, exit
//! code, HTTP status and C status the row documents, so a change to any of them fails here until
//! the row is changed too.
//!
//! One `unclip serve` process is shared by the server rows (started on first use, stopped when
//! this test binary exits); the library and C rows share one loaded tiny bundle each.

mod common;

use std::ffi::{c_char, CStr, CString, OsStr};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use unclip::bundle::{sha256_file, Bundle};
use unclip::capi::*;
use unclip::pipeline::{no_observer, TextToImage};
use unclip::schedulers::SchedulerKind;
use unclip::vision::{load_image, ImageLimits};
use unclip::{Device, Error, Pipeline, RngKind, Runtime};

// ---- fixtures --------------------------------------------------------------------------------

/// Hand-made images (tests/fixtures/errors/): a 20000×20000 header over a few bytes of pixels, a
/// 0×0 PNG, and an 8×8 PNG cut inside its pixel data.
fn fixture(name: &str) -> PathBuf {
    common::repo().join("tests/fixtures/errors").join(name)
}

fn good_image() -> PathBuf {
    common::repo().join("tests/fixtures/vision/orient_1.png")
}

/// A scratch copy of models/tiny (as tests/bundle.rs makes it).
fn copy_bundle() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(common::tiny_bundle()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    (tmp, dir)
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("bundle.json");
    let mut value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// Replaces a bundle file and records the new bytes' sha256, so only the content is wrong.
fn replace_with_matching_sha(dir: &Path, file: &str, bytes: &[u8], sha_pointer: &str) {
    std::fs::write(dir.join(file), bytes).unwrap();
    let sha = sha256_file(&dir.join(file)).unwrap();
    edit_manifest(dir, |m| *m.pointer_mut(sha_pointer).unwrap() = sha.into());
}

/// A float32 `.npy` file (NEP 1, version 1.0).
fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy_bytes(path, "<f4", shape, data);
}

/// A `.npy` file with this dtype descriptor and raw little-endian data.
fn write_npy_bytes(path: &Path, descr: &str, shape: &[usize], data: Vec<u8>) {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

// ---- library ---------------------------------------------------------------------------------

fn pipeline() -> &'static Pipeline {
    static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
    PIPELINE.get_or_init(|| Pipeline::load(&common::runtime(), common::tiny_bundle()).unwrap())
}

/// One prompt, 2 prior and 2 decoder steps, 64×64 (no upsampler): the cheapest real run.
fn request() -> TextToImage {
    TextToImage {
        prompts: vec!["a red circle".into()],
        prior_steps: Some(2),
        decoder_steps: Some(2),
        output_size: Some(64),
        ..Default::default()
    }
}

fn generate(request: &TextToImage) -> unclip::Result<unclip::Generation> {
    let mut noise = unclip::noise::TorchGenerator::new(0);
    pipeline().generate(request, &mut noise, &mut no_observer())
}

fn generate_err(request: &TextToImage) -> Error {
    match generate(request) {
        Ok(_) => panic!("{request:?} should fail"),
        Err(e) => e,
    }
}

/// Asserts an `InvalidArgument` with this `name` whose message contains `needle`.
fn assert_invalid(error: &Error, name: &str, needle: &str) {
    assert!(
        matches!(error, Error::InvalidArgument { name: n, .. } if *n == name),
        "expected InvalidArgument {{ name: {name:?} }}, got {error:?}"
    );
    assert!(error.to_string().contains(needle), "{error}");
}

// ---- CLI -------------------------------------------------------------------------------------

const FAST: [&str; 6] = ["--prior-steps", "2", "--decoder-steps", "2", "--size", "64"];

fn tiny() -> &'static str {
    static TINY: OnceLock<String> = OnceLock::new();
    TINY.get_or_init(|| common::tiny_bundle().to_str().unwrap().to_string())
}

/// The `unclip` binary with a private verification cache and no model or key from the caller's
/// environment.
fn unclip_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_unclip"));
    command
        .env_remove("UNCLIP_MODEL")
        .env_remove("UNCLIP_API_KEY")
        .env("UNCLIP_CACHE_DIR", cache_dir());
    command
}

/// The binary's verification cache (`--verify cached`), kept out of the user's ~/.cache.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("errors_matrix_cache")
}

fn cli_with_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    let mut command = unclip_command();
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run unclip")
}

fn cli<S: AsRef<OsStr>>(args: &[S]) -> Output {
    cli_with_env(args, &[])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A library error reported by the binary: exit code 1, one line `error: …` containing `needle`.
fn assert_cli_error(output: &Output, needle: &str) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.starts_with("error: "), "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text}");
    assert!(text.contains(needle), "{needle:?} not in {text}");
    text
}

/// A command line clap refuses before unclip runs: exit code 2, `error: …` containing `needle`.
fn assert_cli_usage(output: &Output, needle: &str) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.starts_with("error: "), "{text}");
    assert!(text.contains(needle), "{needle:?} not in {text}");
}

fn assert_cli_ok(output: &Output) {
    assert!(output.status.success(), "{}", stderr(output));
}

/// `unclip serve` with a setup that must fail at start: exit code 1 and `needle` on stderr. The
/// wait is bounded so a server that starts by mistake fails the test instead of hanging it.
fn assert_serve_refuses(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let mut command = unclip_command();
    command
        .args(["-q", "serve", "--port", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start unclip serve");
    let deadline = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("unclip serve {args:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    assert_cli_error(&output, needle);
}

// ---- server ----------------------------------------------------------------------------------

const API_KEY: &str = "matrix-key";

struct Server {
    base: String,
    _child: Child,
    /// Held open for the life of this process: `sh` stops the server when it closes.
    _stdin: ChildStdin,
}

/// The shared `unclip serve --api-key matrix-key --max-body-mib 1` on a free loopback port.
/// A static is never dropped, so the server runs under `sh`, which kills it when this process's
/// end of its stdin pipe closes — at exit, however the test binary ends.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$@" & server=$!; read _; kill "$server"; wait "$server""#)
            .arg("sh")
            .arg(unclip_command().get_program())
            .args(["serve", "--port", "0", "--model", tiny()])
            .args(["--api-key", API_KEY, "--max-body-mib", "1"])
            .env_remove("UNCLIP_API_KEY")
            .env_remove("UNCLIP_MODEL")
            .env("UNCLIP_CACHE_DIR", cache_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start unclip serve");
        let stdin = child.stdin.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("http://") {
                    let url: String = line[at..].split_whitespace().next().unwrap().into();
                    let _ = tx.send(url);
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the server printed its address");
        Server {
            base,
            _child: child,
            _stdin: stdin,
        }
    })
}

/// Sends one request to the shared server; returns the status and the JSON body.
fn http(build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder) -> (u16, Value) {
    let base = &server().base;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let response = build(&client, base)
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .expect("a response");
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status}: body is not JSON ({e}): {body:?}"));
        (status, json)
    })
}

fn post_json(path: &str, body: Value) -> (u16, Value) {
    http(|client, base| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(API_KEY)
            .json(&body)
    })
}

fn post_raw(path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let content_type = content_type.to_string();
    http(|client, base| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(API_KEY)
            .header("content-type", content_type)
            .body(body)
    })
}

/// A multipart form: `files` as `image` parts, `fields` as text parts.
fn post_form(path: &str, files: &[Vec<u8>], fields: &[(&str, &str)]) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (i, bytes) in files.iter().enumerate() {
        form = form.part(
            "image",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(format!("{i}.png")),
        );
    }
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    http(|client, base| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(API_KEY)
            .multipart(form)
    })
}

const GENERATIONS: &str = "/v1/images/generations";
const VARIATIONS: &str = "/v1/images/variations";

/// Asserts an OpenAI error object: status, `type`, `code`, `param`, and a message containing
/// `needle`.
fn assert_api_error(
    (status, body): &(u16, Value),
    expected_status: u16,
    code: Option<&str>,
    param: Option<&str>,
    needle: &str,
) {
    assert_eq!(*status, expected_status, "{body}");
    let error = &body["error"];
    let kind = if expected_status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    assert_eq!(error["type"], kind, "{body}");
    assert_eq!(error["code"], json!(code), "{body}");
    assert_eq!(error["param"], json!(param), "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {body}");
}

fn assert_api_images((status, body): &(u16, Value), count: usize) {
    assert_eq!(*status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(count), "{body}");
}

/// A small valid generation: `prompt`, 64×64, 2 + 2 steps.
fn fast_body(prompt: &str) -> Value {
    json!({"prompt": prompt, "size": "64x64", "prior_steps": 2, "decoder_steps": 2, "seed": 1})
}

// ---- C ABI -----------------------------------------------------------------------------------

struct Handle<T>(*mut T);
// SAFETY: unclip.h — runtimes and pipelines may be shared between threads.
unsafe impl<T> Send for Handle<T> {}
unsafe impl<T> Sync for Handle<T> {}

fn c_runtime() -> *const unclip_runtime {
    static RUNTIME: OnceLock<Handle<unclip_runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| unsafe {
            let mut params = std::mem::zeroed::<unclip_runtime_params>();
            unclip_runtime_params_init(&mut params);
            let mut runtime = std::ptr::null_mut();
            let status = unclip_runtime_create(&params, &mut runtime);
            assert_eq!(status, unclip_status::UNCLIP_OK, "{}", last_error());
            Handle(runtime)
        })
        .0
}

fn c_pipeline() -> *const unclip_pipeline {
    static PIPELINE: OnceLock<Handle<unclip_pipeline>> = OnceLock::new();
    PIPELINE
        .get_or_init(|| unsafe {
            let dir = CString::new(tiny()).unwrap();
            let mut pipeline = std::ptr::null_mut();
            let status = unclip_pipeline_load(c_runtime(), dir.as_ptr(), &mut pipeline);
            assert_eq!(status, unclip_status::UNCLIP_OK, "{}", last_error());
            Handle(pipeline)
        })
        .0
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(unclip_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts a C status and that the thread's last error contains `needle`.
fn assert_c(status: unclip_status, expected: unclip_status, needle: &str) {
    let message = last_error();
    assert_eq!(status, expected, "{message}");
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

/// Defaults with 2 + 2 steps and a 64×64 image.
fn c_params() -> unclip_generate_params {
    let mut params = unsafe { std::mem::zeroed::<unclip_generate_params>() };
    unsafe { unclip_generate_params_init(&mut params) };
    params.prior_steps = 2;
    params.decoder_steps = 2;
    params.output_size = 64;
    params
}

/// `unclip_generate` on the shared pipeline; frees what it returns.
fn c_generate(prompts: &[*const c_char], params: &unclip_generate_params) -> unclip_status {
    unsafe {
        let mut images: *mut unclip_image = std::ptr::null_mut();
        let mut count = 0usize;
        let status = unclip_generate(
            c_pipeline(),
            prompts.as_ptr(),
            prompts.len(),
            params,
            &mut images,
            &mut count,
        );
        unclip_image_free(images, count);
        status
    }
}

fn c_generate_from_embeddings(
    embeddings: &[f32],
    rows: usize,
    dim: usize,
    params: &unclip_generate_params,
) -> unclip_status {
    unsafe {
        let mut images: *mut unclip_image = std::ptr::null_mut();
        let mut count = 0usize;
        let status = unclip_generate_from_embeddings(
            c_pipeline(),
            embeddings.as_ptr(),
            rows,
            dim,
            params,
            &mut images,
            &mut count,
        );
        unclip_image_free(images, count);
        status
    }
}

/// `rgb` must hold `width × height × 3` bytes, or be refused before it is read.
fn c_generate_variations(rgb: *const u8, width: u32, height: u32) -> unclip_status {
    unsafe {
        let mut images: *mut unclip_image = std::ptr::null_mut();
        let mut count = 0usize;
        let status = unclip_generate_variations(
            c_pipeline(),
            rgb,
            width,
            height,
            &c_params(),
            &mut images,
            &mut count,
        );
        unclip_image_free(images, count);
        status
    }
}

fn c_load(dir: &Path) -> unclip_status {
    let dir = CString::new(dir.to_str().unwrap()).unwrap();
    let mut pipeline = std::ptr::null_mut();
    let status = unsafe { unclip_pipeline_load(c_runtime(), dir.as_ptr(), &mut pipeline) };
    assert!(
        status != unclip_status::UNCLIP_OK || !pipeline.is_null(),
        "OK without a pipeline"
    );
    unsafe { unclip_pipeline_free(pipeline) };
    status
}

/// `unclip_generate` on the prompt "x" with the default params edited by `edit`: refused as
/// `UNCLIP_INVALID_ARGUMENT` with a message containing `needle`.
fn assert_c_params_refused(edit: impl FnOnce(&mut unclip_generate_params), needle: &str) {
    let prompt = CString::new("x").unwrap();
    let mut params = c_params();
    edit(&mut params);
    assert_c(
        c_generate(&[prompt.as_ptr()], &params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        needle,
    );
}

fn c_runtime_create(params: &unclip_runtime_params) -> unclip_status {
    let mut runtime = std::ptr::null_mut();
    let status = unsafe { unclip_runtime_create(params, &mut runtime) };
    unsafe { unclip_runtime_free(runtime) };
    status
}

fn runtime_params() -> unclip_runtime_params {
    let mut params = unsafe { std::mem::zeroed::<unclip_runtime_params>() };
    unsafe { unclip_runtime_params_init(&mut params) };
    params
}

// ---- rows that need a process where ONNX Runtime is not loaded yet ----------------------------

/// Set in the child process of [`in_fresh_process`].
const CHILD: &str = "UNCLIP_ERRORS_MATRIX_CHILD";

/// Re-runs the test `name` alone in a new process of this test binary with `CHILD` and `env`
/// set, and returns its stdout: ONNX Runtime is loaded once per process, so the library and
/// C rows about loading it must run where nothing loaded it before.
fn in_fresh_process(name: &str, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran {name}: {stdout}"
    );
    stdout
}

/// In the child: builds a runtime through the library and through the C ABI (with
/// `ort_library_path`), printing what each reports.
fn child_report(library: Option<&str>) {
    let mut builder = Runtime::builder();
    if let Some(path) = library {
        builder = builder.library(path);
    }
    let error = builder.build().expect_err("no ONNX Runtime can load here");
    println!("library-variant: {error:?}");
    println!("library-message: {error}");
    let path = library.map(|p| CString::new(p).unwrap());
    let mut params = runtime_params();
    if let Some(path) = &path {
        params.ort_library_path = path.as_ptr();
    }
    let status = c_runtime_create(&params);
    println!("c-status: {status:?}");
    println!("c-message: {}", last_error());
}

fn child_line<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        // The harness may print `test NAME ... ` in front of the first line.
        .find_map(|l| l.split_once(key).map(|(_, value)| value))
        .unwrap_or_else(|| panic!("no {key} in {stdout}"))
        .trim()
}

// ---- bundle rows: one helper through every shell ----------------------------------------------

/// A broken bundle through every shell: `Pipeline::load`'s error, `unclip generate` and
/// `unclip serve` (exit 1, the same message after `loading bundle DIR: `), and
/// `unclip_pipeline_load`'s status with the same message. Returns the library error.
fn assert_bundle_error(dir: &Path, c_status: unclip_status) -> Error {
    let error = Pipeline::load(&common::runtime(), dir)
        .err()
        .expect("the bundle must not load");
    let message = error.to_string();
    let model = dir.to_str().unwrap();
    let expected = format!("error: loading bundle {model}: {message}");
    let output = cli(&["-q", "generate", "x", "--model", model]);
    assert_eq!(assert_cli_error(&output, &message).trim_end(), expected);
    assert_serve_refuses(&["--model", model], &[], &message);
    let status = c_load(dir);
    assert_c(status, c_status, &message);
    assert_eq!(last_error(), message);
    error
}

// ===============================================================================================
// Bundles and runtime setup
// ===============================================================================================

#[test]
fn e01_bundle_dir_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no-such-bundle");
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_NOT_FOUND);
    assert!(
        matches!(&error, Error::BundleFileMissing { path } if path.ends_with("no-such-bundle/bundle.json")),
        "{error:?}"
    );
    assert!(error.to_string().starts_with("bundle file missing: "));
}

#[test]
fn e02_bundle_file_missing() {
    let (_tmp, dir) = copy_bundle();
    std::fs::remove_file(dir.join("decoder.onnx")).unwrap();
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_NOT_FOUND);
    assert!(
        matches!(&error, Error::BundleFileMissing { path } if path.ends_with("decoder.onnx")),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains("(re-export the bundle with export/export_bundle.py)"));
}

#[test]
fn e03_onnx_truncated() {
    let (_tmp, dir) = copy_bundle();
    let bytes = std::fs::read(dir.join("decoder.onnx")).unwrap();
    replace_with_matching_sha(
        &dir,
        "decoder.onnx",
        &bytes[..bytes.len() / 3],
        "/models/decoder/sha256",
    );
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
    assert!(
        matches!(&error, Error::ModelLoad { path, .. } if path.ends_with("decoder.onnx")),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.starts_with("cannot load ONNX model "), "{message}");
    assert!(
        message.ends_with("; the file may be truncated or corrupt, re-export the bundle"),
        "{message}"
    );
}

#[test]
fn e04_checksum_mismatch() {
    let (_tmp, dir) = copy_bundle();
    let path = dir.join("prior.onnx");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
    assert!(
        matches!(&error, Error::ChecksumMismatch { path, .. } if path.ends_with("prior.onnx")),
        "{error:?}"
    );
    assert!(error.to_string().starts_with("sha256 mismatch for "));
}

#[test]
fn e05_bundle_path_escape() {
    for escape in ["../x.onnx", "/etc/passwd", "a/../../x.onnx", ""] {
        let (_tmp, dir) = copy_bundle();
        edit_manifest(&dir, |m| m["models"]["prior"]["file"] = escape.into());
        let error = Bundle::open(&dir).unwrap_err();
        assert!(
            matches!(&error, Error::BundlePathEscape { path } if path == escape),
            "{escape:?}: {error:?}"
        );
        assert_eq!(
            error.to_string(),
            format!("bundle file path {escape:?} escapes the bundle directory: paths must be relative and stay inside it")
        );
        if escape == "../x.onnx" {
            assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
        }
    }
}

#[test]
fn e06_onnx_signature_mismatch() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| {
        m["models"]["prior"]["inputs"][1]["name"] = "t".into()
    });
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
    assert!(
        matches!(&error, Error::ModelSignature { path, detail } if path.ends_with("prior.onnx") && detail.contains("\"timestep\"")),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains(" does not match bundle.json: inputs are "));
}

#[test]
fn e07_format_version_unsupported() {
    let (_tmp, dir) = copy_bundle();
    edit_manifest(&dir, |m| m["format_version"] = 99.into());
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
    assert!(
        matches!(
            &error,
            Error::BundleVersion {
                found: 99,
                supported: 2,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .starts_with("unsupported bundle format_version 99 in "));
    assert!(error
        .to_string()
        .ends_with("this unclip reads versions 1 to 2; upgrade unclip or re-export the bundle"));
}

#[test]
fn e08_manifest_not_json() {
    let (_tmp, dir) = copy_bundle();
    std::fs::write(dir.join("bundle.json"), b"{ not json").unwrap();
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
    assert!(
        matches!(&error, Error::BundleInvalid { reason, .. } if reason.starts_with("not valid JSON: ")),
        "{error:?}"
    );
    assert!(error.to_string().starts_with("invalid bundle file "));
}

/// An edit of bundle.json.
type ManifestEdit = fn(&mut Value);

#[test]
fn e09_manifest_breaks_format_rules() {
    let cases: [(ManifestEdit, &str); 4] = [
        (
            |m| m["format"] = "something-else".into(),
            "`format` is Some(\"something-else\"), expected \"unclip-bundle\"",
        ),
        (
            |m| m["format_version"] = "1".into(),
            "`format_version` missing or not an integer",
        ),
        (
            |m| {
                m.as_object_mut().unwrap().remove("decoder");
            },
            "missing field `decoder`",
        ),
        (
            |m| m["decoder"]["model"] = "nope".into(),
            "stage refers to model \"nope\", which `models` does not define",
        ),
    ];
    for (i, (edit, reason)) in cases.into_iter().enumerate() {
        let (_tmp, dir) = copy_bundle();
        edit_manifest(&dir, edit);
        let error = Bundle::open(&dir).unwrap_err();
        assert!(
            matches!(&error, Error::BundleInvalid { reason: r, .. } if r == reason),
            "{error:?}"
        );
        if i == 0 {
            assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
        }
    }
}

/// A corrupt tokenizer.json is a broken bundle (BundleInvalid, UNCLIP_BUNDLE_INVALID).
#[test]
fn e10_tokenizer_corrupt() {
    let (_tmp, dir) = copy_bundle();
    replace_with_matching_sha(&dir, "tokenizer.json", b"garbage", "/tokenizer/sha256");
    let error = assert_bundle_error(&dir, unclip_status::UNCLIP_BUNDLE_INVALID);
    assert!(
        matches!(&error, Error::BundleInvalid { path, reason }
            if path.ends_with("tokenizer.json")
                && reason.starts_with("not a Hugging Face tokenizers file (expected value at line 1 column 1)")),
        "{error:?}"
    );
    assert!(error.to_string().starts_with("invalid bundle file "));
}

#[test]
fn e11_ort_library_missing() {
    let env = [("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")];
    if std::env::var_os(CHILD).is_some() {
        return child_report(None);
    }
    let expected = "ONNX Runtime library not found (searched: ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so (no such file)). Install it with `scripts/setup-ort`";
    let stdout = in_fresh_process("e11_ort_library_missing", &env);
    assert!(
        child_line(&stdout, "library-variant:").starts_with("OrtNotFound"),
        "{stdout}"
    );
    assert!(child_line(&stdout, "library-message:").starts_with(expected));
    assert_eq!(child_line(&stdout, "c-status:"), "UNCLIP_NOT_FOUND");
    assert!(child_line(&stdout, "c-message:").starts_with(expected));
    let args = ["-q", "generate", "x", "--model", tiny()];
    let output = cli_with_env(&args, &env);
    assert!(assert_cli_error(&output, expected).starts_with(&format!("error: {expected}")));
    assert_serve_refuses(&["--model", tiny()], &env, expected);
}

/// An `ort_library_path` that does not load is UNCLIP_NOT_FOUND, as a missing library.
#[test]
fn e12_ort_library_unloadable() {
    let path = "/nonexistent/libonnxruntime.so";
    if std::env::var_os(CHILD).is_some() {
        return child_report(Some(path));
    }
    let expected = format!("cannot load ONNX Runtime from {path}: ");
    let stdout = in_fresh_process("e12_ort_library_unloadable", &[]);
    assert!(
        child_line(&stdout, "library-variant:").starts_with("OrtLoad"),
        "{stdout}"
    );
    assert!(child_line(&stdout, "library-message:").starts_with(&expected));
    assert_eq!(child_line(&stdout, "c-status:"), "UNCLIP_NOT_FOUND");
    assert!(child_line(&stdout, "c-message:").starts_with(&expected));
    let output = cli(&["-q", "generate", "x", "--model", tiny(), "--ort-lib", path]);
    let text = assert_cli_error(&output, &expected);
    assert!(text.contains("Install 1.31.x with `scripts/setup-ort` or point ORT_DYLIB_PATH at it"));
    assert_serve_refuses(&["--model", tiny(), "--ort-lib", path], &[], &expected);
    // A file that is not a shared library: the same error.
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let fake = fake.to_str().unwrap();
    let output = cli(&["-q", "generate", "x", "--model", tiny(), "--ort-lib", fake]);
    assert_cli_error(&output, &format!("cannot load ONNX Runtime from {fake}: "));
}

#[test]
fn e13_device_unknown() {
    for device in ["tpu", "openvino:tpu", "cpu:0", "cuda:-1", "cuda:x"] {
        let error = device.parse::<Device>().unwrap_err();
        assert!(matches!(&error, Error::UnknownDevice(d) if d == device));
        assert_eq!(
            error.to_string(),
            format!(
                "unknown device {device:?}: expected cpu, cuda[:N], tensorrt[:N] (N = GPU index) \
                 or openvino[:CPU|GPU[.N]|NPU]"
            )
        );
    }
    let output = cli(&["-q", "generate", "x", "--model", tiny(), "--device", "tpu"]);
    assert_cli_error(&output, "error: unknown device \"tpu\": expected cpu");
    assert_serve_refuses(
        &["--model", tiny(), "--device", "tpu"],
        &[],
        "unknown device \"tpu\"",
    );
    c_runtime();
    let mut params = runtime_params();
    params.device = 4;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid device: 4 is not a unclip_device",
    );
    let mut params = runtime_params();
    params.device = 1;
    params.device_id = -1;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid device_id: must be ≥ 0",
    );
}

/// Checks a GPU device is refused with ProviderUnavailable on this GPU-less ONNX Runtime build —
/// never a silent CPU fallback — through the library, the CLI, `serve` and the C ABI.
fn assert_provider_unavailable(device: Device, flag: &str, c_device: i32, provider: &str) {
    common::runtime();
    let error = Runtime::builder().device(device).build().unwrap_err();
    assert!(
        matches!(&error, Error::ProviderUnavailable { provider: p, .. } if p == provider),
        "{error:?}"
    );
    let expected = format!(
        "execution provider {provider} is not available: this ONNX Runtime library was built without it. \
         Install the GPU build (pip download onnxruntime-gpu==1.31.1"
    );
    assert!(error.to_string().starts_with(&expected), "{error}");
    let output = cli(&["-q", "generate", "x", "--model", tiny(), "--device", flag]);
    assert_cli_error(&output, &expected);
    assert_serve_refuses(&["--model", tiny(), "--device", flag], &[], &expected);
    let mut params = runtime_params();
    params.device = c_device;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_PROVIDER_UNAVAILABLE,
        &expected,
    );
}

#[test]
fn e14_device_cuda_unavailable() {
    assert_provider_unavailable(
        Device::Cuda { device_id: 0 },
        "cuda",
        1,
        "CUDAExecutionProvider",
    );
}

#[test]
fn e15_device_tensorrt_unavailable() {
    assert_provider_unavailable(
        Device::TensorRt { device_id: 0 },
        "tensorrt",
        2,
        "TensorrtExecutionProvider",
    );
}

// ===============================================================================================
// Prompts
// ===============================================================================================

/// Not an error: the empty prompt is diffusers' unconditional prompt.
#[test]
fn e16_prompt_empty_is_accepted() {
    let generation = generate(&TextToImage {
        prompts: vec![String::new()],
        ..request()
    })
    .unwrap();
    assert_eq!(generation.images.len(), 1);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("empty.png");
    let mut args = vec!["-q", "generate", "", "--model", tiny(), "-o"];
    args.push(out.to_str().unwrap());
    args.extend(FAST);
    assert_cli_ok(&cli(&args));
    assert!(out.exists());
    assert_api_images(&post_json(GENERATIONS, fast_body("")), 1);
    let empty = CString::new("").unwrap();
    assert_eq!(
        c_generate(&[empty.as_ptr()], &c_params()),
        unclip_status::UNCLIP_OK
    );
}

#[test]
fn e17_prompt_missing() {
    let error = generate_err(&TextToImage {
        prompts: Vec::new(),
        ..request()
    });
    assert_invalid(
        &error,
        "prompts",
        "invalid prompts: give at least one prompt (an empty string is allowed)",
    );
    // The CLI without prompts generates from the empty prompt.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("none.png");
    let mut args = vec!["-q", "generate", "--model", tiny(), "-o"];
    args.push(out.to_str().unwrap());
    args.extend(FAST);
    assert_cli_ok(&cli(&args));
    assert!(out.exists());
    assert_api_error(
        &post_json(GENERATIONS, json!({"n": 1})),
        400,
        None,
        Some("prompt"),
        "`prompt` is required",
    );
    assert_c(
        c_generate(&[], &c_params()),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid prompts: give at least one prompt",
    );
    assert_c(
        c_generate(&[std::ptr::null()], &c_params()),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid prompts[i]: is NULL",
    );
}

/// Not an error below the server's character limit: prompts over 77 tokens are truncated, with
/// a warning on stderr.
#[test]
fn e18_prompt_overlong() {
    let long = "a cat ".repeat(50); // 300 characters, 102 tokens with BOS and EOS
    generate(&TextToImage {
        prompts: vec![long.clone()],
        ..request()
    })
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("long.png");
    let mut args = vec!["generate", &long, "--model", tiny(), "-o"];
    args.push(out.to_str().unwrap());
    args.extend(FAST);
    let output = cli(&args);
    assert_cli_ok(&output);
    let text = stderr(&output);
    assert!(
        text.contains("WARN") && text.contains("prompt truncated"),
        "{text}"
    );
    assert!(text.contains("102") && text.contains("77"), "{text}");
    assert_api_images(&post_json(GENERATIONS, fast_body(&long)), 1);
    assert_api_error(
        &post_json(GENERATIONS, json!({"prompt": "x".repeat(1001)})),
        400,
        None,
        Some("prompt"),
        "prompt has 1001 characters, the limit is 1000",
    );
    assert_api_error(
        &post_json(
            GENERATIONS,
            json!({"prompt": "x", "negative_prompt": "x".repeat(1001)}),
        ),
        400,
        None,
        Some("negative_prompt"),
        "negative_prompt has 1001 characters, the limit is 1000",
    );
    let long = CString::new(long).unwrap();
    assert_eq!(
        c_generate(&[long.as_ptr()], &c_params()),
        unclip_status::UNCLIP_OK
    );
}

#[test]
fn e19_prompt_invalid_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let bytes = OsStr::from_bytes(b"a \xff\xfe cat");
    let args = [
        OsStr::new("-q"),
        OsStr::new("generate"),
        bytes,
        OsStr::new("--model"),
        OsStr::new(tiny()),
    ];
    assert_cli_usage(
        &cli(&args),
        "error: invalid UTF-8 was detected in one or more arguments",
    );
    assert_api_error(
        &post_raw(
            GENERATIONS,
            "application/json",
            b"{\"prompt\": \"a \xff\xfe cat\"}".to_vec(),
        ),
        400,
        None,
        None,
        "Failed to parse the request body as JSON: prompt: invalid unicode code point",
    );
    let prompt = CString::new(b"a \xff\xfe cat".to_vec()).unwrap();
    assert_c(
        c_generate(&[prompt.as_ptr()], &c_params()),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid prompts[i]: is not valid UTF-8",
    );
    let mut params = c_params();
    params.negative_prompt = prompt.as_ptr();
    let ok = CString::new("x").unwrap();
    assert_c(
        c_generate(&[ok.as_ptr()], &params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid negative_prompt: is not valid UTF-8",
    );
    assert_c(
        unsafe { unclip_encode_text(c_pipeline(), prompt.as_ptr(), [0f32; 32].as_mut_ptr(), 32) },
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid prompt: is not valid UTF-8",
    );
}

// ===============================================================================================
// Image embeddings (.npy)
// ===============================================================================================

#[test]
fn e20_embedding_non_finite() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, shape, bad) in [
        ("nan.npy", vec![32], f32::NAN),
        ("inf.npy", vec![1, 32], f32::INFINITY),
    ] {
        let path = tmp.path().join(name);
        let mut values = vec![0.1f32; 32];
        values[0] = bad;
        write_npy(&path, &shape, &values);
        let error = unclip::npy::read_embeddings(&path).unwrap_err();
        assert!(matches!(error, Error::NonFinite { .. }), "{error:?}");
        let expected = format!(
            "image embeddings in {} contains NaN or infinite values",
            path.display()
        );
        assert_eq!(error.to_string(), expected);
        let mut args = vec![
            "-q",
            "generate",
            "x",
            "--model",
            tiny(),
            "--image-embedding",
        ];
        args.push(path.to_str().unwrap());
        args.extend(FAST);
        assert_eq!(
            assert_cli_error(&cli(&args), &expected).trim_end(),
            format!("error: {expected}")
        );
    }
    // Through the request (library API callers, the C ABI).
    let mut embeddings = ndarray::Array2::<f32>::zeros((1, 32));
    embeddings[[0, 3]] = f32::NEG_INFINITY;
    let error = generate_err(&TextToImage {
        image_embeddings: Some(embeddings.clone()),
        ..request()
    });
    assert!(matches!(error, Error::NonFinite { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "image embeddings contains NaN or infinite values"
    );
    assert_c(
        c_generate_from_embeddings(embeddings.as_slice().unwrap(), 1, 32, &c_params()),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "image embeddings contains NaN or infinite values",
    );
    let a = [f32::NAN; 4];
    let b = [1f32; 4];
    let mut out = [0f32; 4];
    assert_c(
        unsafe { unclip_slerp(a.as_ptr(), b.as_ptr(), 4, 0.5, out.as_mut_ptr()) },
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "slerp input contains NaN or infinite values",
    );
}

/// Fixed after the first run: with one prompt the expected shape read "(1 or 1, 32)".
#[test]
fn e21_embedding_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    // Rank 3: refused when the file is read.
    let rank3 = tmp.path().join("rank3.npy");
    write_npy(&rank3, &[1, 1, 32], &[0.0; 32]);
    let error = unclip::npy::read_embeddings(&rank3).unwrap_err();
    assert!(
        matches!(&error, Error::Shape { found, .. } if found == &[1, 1, 32]),
        "{error:?}"
    );
    let expected = format!(
        "image embeddings in {} has shape [1, 1, 32], expected (D,) or (N, D)",
        rank3.display()
    );
    assert_eq!(error.to_string(), expected);
    let mut args = vec![
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--image-embedding",
    ];
    args.push(rank3.to_str().unwrap());
    args.extend(FAST);
    assert_cli_error(&cli(&args), &expected);
    // Wrong width or row count: refused against the bundle.
    for (shape, prompts, expected) in [
        (
            [1usize, 16usize],
            vec!["x"],
            "image embeddings has shape [1, 16], expected (1, 32) (one row for all prompts or one per prompt)",
        ),
        (
            [3, 32],
            vec!["a", "b"],
            "image embeddings has shape [3, 32], expected (1 or 2, 32) (one row for all prompts or one per prompt)",
        ),
    ] {
        let path = tmp.path().join(format!("{}x{}.npy", shape[0], shape[1]));
        write_npy(&path, &shape, &vec![0.0; shape[0] * shape[1]]);
        let embeddings = unclip::npy::read_embeddings(&path).unwrap();
        let error = generate_err(&TextToImage {
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
            image_embeddings: Some(embeddings),
            ..request()
        });
        assert!(matches!(error, Error::Shape { .. }), "{error:?}");
        assert_eq!(error.to_string(), expected);
        let mut args = vec!["-q", "generate"];
        args.extend(&prompts);
        args.extend(["--model", tiny(), "--image-embedding"]);
        args.push(path.to_str().unwrap());
        args.extend(FAST);
        assert_eq!(
            assert_cli_error(&cli(&args), expected).trim_end(),
            format!("error: {expected}")
        );
    }
    assert_c(
        c_generate_from_embeddings(&[0.0; 16], 1, 16, &c_params()),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "image embeddings has shape [1, 16], expected (1, 32) (one row for all prompts or one per prompt)",
    );
    assert_c(
        c_generate_from_embeddings(&[], 0, 32, &c_params()),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid embeddings: NULL or empty",
    );
    let prompt = CString::new("x").unwrap();
    let mut out = [0f32; 16];
    assert_c(
        unsafe { unclip_encode_text(c_pipeline(), prompt.as_ptr(), out.as_mut_ptr(), 16) },
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid dim: 16 given, the bundle's embeddings have 32",
    );
}

#[test]
fn e22_embedding_file_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let garbage = tmp.path().join("garbage.npy");
    std::fs::write(&garbage, b"hello world").unwrap();
    let missing = tmp.path().join("missing.npy");
    let float64 = tmp.path().join("float64.npy");
    write_npy_bytes(&float64, "<f8", &[1, 32], vec![0; 32 * 8]);
    // The header fuzzing found (tests/fuzz_regressions.rs): refused before ndarray-npy parses it.
    let nested = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/npy_nested_brackets_timeout.npy");
    for (path, reason) in [
        (&garbage, "not a .npy file (no \\x93NUMPY magic)"),
        (
            &nested,
            "the header nests brackets over 4 deep (a .npy header is a flat dict like \
             {'descr': '<f4', 'fortran_order': False, 'shape': (1, 768)})",
        ),
        (&missing, "No such file or directory (os error 2)"),
        (
            &float64,
            "incorrect descriptor ('<f8') for this type (expected a float32 array in C order)",
        ),
    ] {
        let error = unclip::npy::read_embeddings(path).unwrap_err();
        assert!(
            matches!(&error, Error::Npy { action: "read", .. }),
            "{error:?}"
        );
        let expected = format!("cannot read .npy file {}: {reason}", path.display());
        assert_eq!(error.to_string(), expected);
        let mut args = vec![
            "-q",
            "generate",
            "x",
            "--model",
            tiny(),
            "--image-embedding",
        ];
        args.push(path.to_str().unwrap());
        assert_eq!(
            assert_cli_error(&cli(&args), &expected).trim_end(),
            format!("error: {expected}")
        );
    }
}

// ===============================================================================================
// Images (`unclip vary`, POST /v1/images/variations, unclip_generate_variations)
// ===============================================================================================

/// `unclip vary FILE` refused with `error: image error (FILE): {reason}`, and the server's
/// variations endpoint with `image error (<memory>): {reason}`.
fn assert_image_refused(path: &Path, reason: &str) {
    let error = load_image(path, &ImageLimits::default()).unwrap_err();
    assert!(matches!(error, Error::Image { .. }), "{error:?}");
    let expected = format!("image error ({}): {reason}", path.display());
    assert_eq!(error.to_string(), expected);
    let output = cli(&[
        "-q",
        "vary",
        path.to_str().unwrap(),
        "--model",
        tiny(),
        "--decoder-steps",
        "2",
    ]);
    assert_eq!(
        assert_cli_error(&output, &expected).trim_end(),
        format!("error: {expected}")
    );
    assert_api_error(
        &post_form(VARIATIONS, &[std::fs::read(path).unwrap()], &[("n", "1")]),
        400,
        None,
        Some("image"),
        &format!("image error (<memory>): {reason}"),
    );
}

#[test]
fn e23_image_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("text.png");
    std::fs::write(&text, b"not an image").unwrap();
    assert_image_refused(
        &text,
        "not a PNG, JPEG or WebP image (unrecognized file signature); convert it to one of these",
    );
    assert_image_refused(
        &fixture("truncated_8x8.png"),
        "cannot decode the pixels (unexpected end of file): the file is truncated or corrupt; re-export it",
    );
    let empty = tmp.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    assert_image_refused(
        &empty,
        "the input is empty (0 bytes): the file was not written completely; give a PNG, JPEG or WebP image",
    );
    // A missing file: an I/O error naming it.
    let missing = tmp.path().join("missing.png");
    let output = cli(&["-q", "vary", missing.to_str().unwrap(), "--model", tiny()]);
    assert_cli_error(
        &output,
        &format!("error: I/O error on {}: No such file", missing.display()),
    );
}

#[test]
fn e24_image_huge_dimensions() {
    assert_image_refused(
        &fixture("huge_20000x20000.png"),
        "the image is 20000×20000 = 400000000 pixels, over the limit of 67108864 (ImageLimits::max_pixels); downscale it first, or raise the limit",
    );
    // The C ABI takes raw RGB: a buffer over 1 GiB is refused before it is read.
    assert_c(
        c_generate_variations([0u8; 3].as_ptr(), 40_000, 40_000),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid width/height: image too large",
    );
    assert_c(
        unsafe {
            unclip_encode_image(
                c_pipeline(),
                [0u8; 3].as_ptr(),
                u32::MAX,
                u32::MAX,
                [0f32; 32].as_mut_ptr(),
                32,
            )
        },
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid width/height: image too large",
    );
}

#[test]
fn e25_image_zero_size() {
    assert_image_refused(
        &fixture("zero_0x0.png"),
        "the image is 0×0: it has no pixels; give a non-empty image",
    );
    for (width, height) in [(0, 8), (8, 0)] {
        assert_c(
            c_generate_variations([0u8; 3].as_ptr(), width, height),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid rgb/width/height: NULL buffer or zero size",
        );
    }
}

#[test]
fn e26_image_count_wrong() {
    assert_cli_usage(
        &cli(&["-q", "vary", "--model", tiny()]),
        "error: the following required arguments were not provided:",
    );
    let png = std::fs::read(good_image()).unwrap();
    for files in [Vec::new(), vec![png.clone(), png]] {
        let count = files.len();
        assert_api_error(
            &post_form(VARIATIONS, &files, &[("n", "1")]),
            400,
            None,
            Some("image"),
            &format!("send exactly one `image` file, got {count}"),
        );
    }
    assert_c(
        c_generate_variations(std::ptr::null(), 8, 8),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid rgb/width/height: NULL buffer or zero size",
    );
}

// ===============================================================================================
// Sampling parameters
// ===============================================================================================

#[test]
fn e27_steps_out_of_range() {
    for (request, name, needle) in [
        (
            TextToImage {
                decoder_steps: Some(0),
                ..request()
            },
            "decoder steps",
            "invalid decoder steps: 0 steps: use 1 to 1000",
        ),
        (
            TextToImage {
                prior_steps: Some(1001),
                ..request()
            },
            "prior steps",
            "invalid prior steps: 1001 steps: use 1 to 1000",
        ),
        (
            TextToImage {
                super_res_steps: vec![0],
                output_size: None,
                ..request()
            },
            "super-resolution steps",
            "invalid super-resolution steps: 0 steps: use 1 to 1000",
        ),
        // In range, but more steps than the solver can space without repeating a timestep.
        (
            TextToImage {
                decoder_steps: Some(1000),
                decoder_scheduler: Some(SchedulerKind::DpmSolverPP),
                ..request()
            },
            "num_inference_steps",
            "invalid num_inference_steps: DPMSolverMultistepScheduler with timestep_spacing \"linspace\" cannot take 1000 steps of 1000: timesteps repeat (zero-width steps); 999 steps work",
        ),
    ] {
        assert_invalid(&generate_err(&request), name, needle);
    }
    for (flag, value, needle) in [
        (
            "--decoder-steps",
            "0",
            "error: invalid decoder steps: 0 steps: use 1 to 1000",
        ),
        (
            "--prior-steps",
            "1001",
            "error: invalid prior steps: 1001 steps: use 1 to 1000",
        ),
        (
            "--sr-steps",
            "0",
            "error: invalid super-resolution steps: 0 steps: use 1 to 1000",
        ),
    ] {
        let output = cli(&["-q", "generate", "x", "--model", tiny(), flag, value]);
        assert_cli_error(&output, needle);
    }
    assert_cli_usage(
        &cli(&[
            "-q",
            "generate",
            "x",
            "--model",
            tiny(),
            "--decoder-steps=-1",
        ]),
        "error: invalid value '-1' for '--decoder-steps <DECODER_STEPS>'",
    );
    for (field, value, needle) in [
        (
            "decoder_steps",
            json!(0),
            "invalid decoder steps: 0 steps: use 1 to 1000",
        ),
        (
            "prior_steps",
            json!(1001),
            "invalid prior steps: 1001 steps: use 1 to 1000",
        ),
        (
            "super_res_steps",
            json!([0]),
            "invalid super-resolution steps: 0 steps: use 1 to 1000",
        ),
    ] {
        let mut body = json!({"prompt": "x"});
        body[field] = value;
        assert_api_error(&post_json(GENERATIONS, body), 400, None, None, needle);
    }
    assert_c_params_refused(
        |p| p.decoder_steps = 1001,
        "invalid decoder steps: 1001 steps: use 1 to 1000",
    );
}

#[test]
fn e28_super_res_steps_too_many() {
    let expected = "invalid super-resolution steps: 2 values given, the bundle has 1 upsampler(s)";
    assert_invalid(
        &generate_err(&TextToImage {
            super_res_steps: vec![2, 2],
            ..request()
        }),
        "super-resolution steps",
        expected,
    );
    let output = cli(&[
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--sr-steps",
        "2,2",
    ]);
    assert_cli_error(&output, expected);
    assert_api_error(
        &post_json(
            GENERATIONS,
            json!({"prompt": "x", "super_res_steps": [2, 2]}),
        ),
        400,
        None,
        None,
        expected,
    );
}

#[test]
fn e29_guidance_scale_out_of_range() {
    for (value, shown) in [
        (-1.0, "-1"),
        (101.0, "101"),
        (f32::NAN, "NaN"),
        (f32::INFINITY, "inf"),
    ] {
        let error = generate_err(&TextToImage {
            decoder_guidance_scale: Some(value),
            ..request()
        });
        assert_invalid(
            &error,
            "decoder guidance scale",
            &format!("invalid decoder guidance scale: {shown}: use a finite value in 0..=100"),
        );
    }
    for value in ["-1", "101", "NaN", "inf"] {
        let output = cli(&[
            "-q",
            "generate",
            "x",
            "--model",
            tiny(),
            &format!("--prior-guidance-scale={value}"),
        ]);
        assert_cli_error(
            &output,
            &format!("error: invalid prior guidance scale: {value}: use a finite value in 0..=100"),
        );
    }
    // `-1` as a separate word is taken for a flag by clap.
    assert_cli_usage(
        &cli(&[
            "-q",
            "generate",
            "x",
            "--model",
            tiny(),
            "--prior-guidance-scale",
            "-1",
        ]),
        "error: unexpected argument '-1' found",
    );
    for (value, shown) in [(json!(-1), "-1"), (json!(101), "101"), (json!(1e39), "inf")] {
        assert_api_error(
            &post_json(
                GENERATIONS,
                json!({"prompt": "x", "decoder_guidance_scale": value}),
            ),
            400,
            None,
            None,
            &format!("invalid decoder guidance scale: {shown}: use a finite value in 0..=100"),
        );
    }
    // C: a negative scale means "the bundle's default"; NaN and values over 100 are refused.
    let ok = CString::new("x").unwrap();
    for (value, shown) in [(f32::NAN, "NaN"), (101.0, "101")] {
        let mut params = c_params();
        params.prior_guidance_scale = value;
        assert_c(
            c_generate(&[ok.as_ptr()], &params),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            &format!("invalid prior guidance scale: {shown}: use a finite value in 0..=100"),
        );
    }
}

#[test]
fn e30_batch_out_of_range() {
    for n in [0, 65] {
        assert_invalid(
            &generate_err(&TextToImage {
                num_images_per_prompt: Some(n),
                ..request()
            }),
            "num_images_per_prompt",
            &format!(
                "invalid num_images_per_prompt: 1 prompts × {n} images: need 1 to 64 images per call"
            ),
        );
        let n = n.to_string();
        let output = cli(&["-q", "generate", "x", "--model", tiny(), "--num-images", &n]);
        assert_cli_error(
            &output,
            &format!("error: invalid num_images_per_prompt: 1 prompts × {n} images"),
        );
        let output = cli(&[
            "-q",
            "vary",
            good_image().to_str().unwrap(),
            "--model",
            tiny(),
            "-n",
            &n,
        ]);
        assert_cli_error(
            &output,
            &format!("error: invalid num_images_per_prompt: 1 prompts × {n} images"),
        );
    }
    for n in [0, 11] {
        let needle = format!("n = {n}: ask for 1 to 10 images");
        assert_api_error(
            &post_json(GENERATIONS, json!({"prompt": "x", "n": n})),
            400,
            None,
            Some("n"),
            &needle,
        );
        let png = std::fs::read(good_image()).unwrap();
        assert_api_error(
            &post_form(VARIATIONS, &[png], &[("n", &n.to_string())]),
            400,
            None,
            Some("n"),
            &needle,
        );
    }
    assert_api_error(
        &post_json(GENERATIONS, json!({"prompt": "x", "n": -1})),
        400,
        None,
        None,
        "n: invalid value: integer `-1`, expected usize",
    );
    assert_c_params_refused(
        |p| p.num_images_per_prompt = 0,
        "invalid num_images_per_prompt: must be at least 1",
    );
    assert_c_params_refused(
        |p| p.num_images_per_prompt = 65,
        "invalid num_images_per_prompt: 1 prompts × 65 images: need 1 to 64 images per call",
    );
}

#[test]
fn e31_seed_out_of_range() {
    for (value, needle) in [
        ("-1", "error: unexpected argument '-1' found"),
        (
            "18446744073709551616",
            "error: invalid value '18446744073709551616' for '--seed <SEED>': number too large to fit in target type",
        ),
        (
            "abc",
            "error: invalid value 'abc' for '--seed <SEED>': invalid digit found in string",
        ),
    ] {
        let output = cli(&["-q", "generate", "x", "--model", tiny(), "--seed", value]);
        assert_cli_usage(&output, needle);
    }
    for (value, needle) in [
        (json!(-1), "seed: invalid value: integer `-1`, expected u64"),
        (
            json!(18446744073709551616f64),
            "seed: invalid type: floating point `1.8446744073709552e+19`, expected u64",
        ),
        (
            json!("abc"),
            "seed: invalid type: string \"abc\", expected u64",
        ),
    ] {
        assert_api_error(
            &post_json(GENERATIONS, json!({"prompt": "x", "seed": value})),
            400,
            None,
            None,
            needle,
        );
    }
    let png = std::fs::read(good_image()).unwrap();
    assert_api_error(
        &post_form(VARIATIONS, &[png], &[("seed", "abc")]),
        400,
        None,
        Some("seed"),
        "\"abc\" is not a number",
    );
}

#[test]
fn e32_size_unavailable() {
    for size in [0, 100, 512] {
        assert_invalid(
            &generate_err(&TextToImage {
                output_size: Some(size),
                ..request()
            }),
            "output size",
            &format!("invalid output size: {size}: this bundle makes 64x64, 256x256"),
        );
    }
    let output = cli(&["-q", "generate", "x", "--model", tiny(), "--size", "100"]);
    assert_cli_error(
        &output,
        "error: invalid output size: 100: this bundle makes 64x64, 256x256",
    );
    for size in ["512x512", "64x256", "big"] {
        assert_api_error(
            &post_json(GENERATIONS, json!({"prompt": "x", "size": size})),
            400,
            None,
            Some("size"),
            &format!("size {size:?} is not available: this model makes 64x64, 256x256"),
        );
    }
    assert_c_params_refused(
        |p| p.output_size = 100,
        "invalid output size: 100: this bundle makes 64x64, 256x256",
    );
}

/// Fixed after the first run: the server and the C ABI were told to pass the CLI flag
/// `--decoder-scheduler ddim`.
#[test]
fn e33_eta_without_ddim() {
    let expected = "invalid eta: 0.5 given, but η applies only to DDIM and no stage runs it: set a stage's scheduler to ddim (e.g. the decoder's) or leave eta at 0";
    assert_invalid(
        &generate_err(&TextToImage {
            eta: Some(0.5),
            ..request()
        }),
        "eta",
        expected,
    );
    let output = cli(&["-q", "generate", "x", "--model", tiny(), "--eta", "0.5"]);
    assert_cli_error(&output, expected);
    assert_api_error(
        &post_json(GENERATIONS, json!({"prompt": "x", "eta": 0.5})),
        400,
        None,
        None,
        expected,
    );
    assert_c_params_refused(|p| p.eta = 0.5, expected);
}

#[test]
fn e34_eta_out_of_range() {
    let expected = |shown: &str| {
        format!("invalid eta: must be in [0, 1], got {shown} (0: deterministic DDIM, 1: DDPM-like; above 1 the step takes the square root of a negative number)")
    };
    for (value, shown) in [(2.0, "2"), (-0.5, "-0.5"), (f32::NAN, "NaN")] {
        assert_invalid(
            &generate_err(&TextToImage {
                eta: Some(value),
                decoder_scheduler: Some(SchedulerKind::Ddim),
                ..request()
            }),
            "eta",
            &expected(shown),
        );
    }
    let output = cli(&[
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--decoder-scheduler",
        "ddim",
        "--eta",
        "2",
    ]);
    assert_cli_error(&output, &expected("2"));
    assert_api_error(
        &post_json(
            GENERATIONS,
            json!({"prompt": "x", "eta": 2, "decoder_scheduler": "ddim"}),
        ),
        400,
        None,
        None,
        &expected("2"),
    );
    assert_c_params_refused(
        |p| {
            p.decoder_scheduler = 2;
            p.eta = 2.0;
        },
        &expected("2"),
    );
}

#[test]
fn e35_scheduler_unknown() {
    let expected = "invalid scheduler: \"euler\": choose unclip, ddpm, ddim, ddim-inverse or dpm++";
    assert_invalid(
        &"euler".parse::<SchedulerKind>().unwrap_err(),
        "scheduler",
        expected,
    );
    assert_cli_usage(
        &cli(&[
            "-q",
            "generate",
            "x",
            "--model",
            tiny(),
            "--decoder-scheduler",
            "euler",
        ]),
        &format!("error: invalid value 'euler' for '--decoder-scheduler <DECODER_SCHEDULER>': {expected}"),
    );
    for field in [
        "prior_scheduler",
        "decoder_scheduler",
        "super_res_scheduler",
    ] {
        let mut body = json!({"prompt": "x"});
        body[field] = "euler".into();
        assert_api_error(
            &post_json(GENERATIONS, body),
            400,
            None,
            Some(field),
            expected,
        );
    }
    assert_c_params_refused(
        |p| p.decoder_scheduler = 5,
        "invalid decoder_scheduler: 5 is not a unclip_scheduler",
    );
}

#[test]
fn e36_rng_unknown() {
    let expected = "invalid rng: \"dice\": choose torch or fast";
    assert_invalid(&"dice".parse::<RngKind>().unwrap_err(), "rng", expected);
    assert_cli_usage(
        &cli(&["-q", "generate", "x", "--model", tiny(), "--rng", "dice"]),
        &format!("error: invalid value 'dice' for '--rng <RNG>': {expected}"),
    );
    assert_api_error(
        &post_json(GENERATIONS, json!({"prompt": "x", "rng": "dice"})),
        400,
        None,
        Some("rng"),
        expected,
    );
    assert_c_params_refused(|p| p.rng = 2, "invalid rng: 2 is not a unclip_rng");
}

// ===============================================================================================
// Output
// ===============================================================================================

/// The binary checks the output path before it loads anything; the library reports the write.
#[test]
fn e37_output_unwritable() {
    let image = image::RgbImage::new(8, 8);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    for (path, reason) in [
        (
            "/nonexistent/dir/x.png",
            "No such file or directory (os error 2)",
        ),
        (dir, "Is a directory (os error 21)"),
    ] {
        let error = unclip::image_io::save_png(Path::new(path), &image, &[]).unwrap_err();
        assert!(
            matches!(&error, Error::Io { path: p, .. } if p == Path::new(path)),
            "{error:?}"
        );
        assert_eq!(error.to_string(), format!("I/O error on {path}: {reason}"));
    }
    let cases = [
        (
            "/nonexistent/dir/x.png",
            "error: cannot write /nonexistent/dir/x.png: directory /nonexistent/dir does not exist (create it first)".to_string(),
        ),
        (
            dir,
            format!("error: cannot write {dir}: it is a directory; give a file name such as out.png"),
        ),
    ];
    for (path, expected) in &cases {
        let output = cli(&["-q", "generate", "x", "--model", tiny(), "-o", path]);
        assert_eq!(assert_cli_error(&output, expected).trim_end(), expected);
        let source = good_image();
        let output = cli(&[
            "-q",
            "vary",
            source.to_str().unwrap(),
            "--model",
            tiny(),
            "-o",
            path,
        ]);
        assert_eq!(assert_cli_error(&output, expected).trim_end(), expected);
    }
    // Nothing is left behind in the directory named as the output file.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

// ===============================================================================================
// Server requests
// ===============================================================================================

#[test]
fn e38_unknown_field() {
    let body = post_json(GENERATIONS, json!({"prompt": "x", "decoder_stepz": 3}));
    assert_api_error(
        &body,
        400,
        None,
        None,
        "Failed to deserialize the JSON body into the target type: decoder_stepz: unknown field `decoder_stepz`, expected one of `n`, `size`",
    );
    let png = std::fs::read(good_image()).unwrap();
    assert_api_error(
        &post_form(VARIATIONS, &[png], &[("decoder_stepz", "3")]),
        400,
        None,
        None,
        "unknown field `decoder_stepz`, expected one of `n`, `size`",
    );
    assert_cli_usage(
        &cli(&[
            "-q",
            "generate",
            "x",
            "--model",
            tiny(),
            "--decoder-stepz",
            "3",
        ]),
        "error: unexpected argument '--decoder-stepz' found",
    );
}

#[test]
fn e39_wrong_model_name() {
    let expected = "model \"dall-e-3\" is not served here: use \"tiny\" (see GET /v1/models)";
    assert_api_error(
        &post_json(GENERATIONS, json!({"prompt": "x", "model": "dall-e-3"})),
        400,
        None,
        Some("model"),
        expected,
    );
    let png = std::fs::read(good_image()).unwrap();
    assert_api_error(
        &post_form(VARIATIONS, &[png], &[("model", "dall-e-3")]),
        400,
        None,
        Some("model"),
        expected,
    );
    assert_api_error(
        &post_json(
            "/v1/embeddings",
            json!({"input": "x", "model": "text-embedding-3-small"}),
        ),
        400,
        None,
        Some("model"),
        "model \"text-embedding-3-small\": this route embeds text with \"clip-text\"",
    );
    // The aliases are accepted.
    for alias in ["tiny", "unclip", "dall-e-2"] {
        let mut body = fast_body("x");
        body["model"] = alias.into();
        assert_api_images(&post_json(GENERATIONS, body), 1);
    }
}

#[test]
fn e40_bad_api_key() {
    let expected = "invalid or missing API key: send `Authorization: Bearer <key>`";
    let url = |base: &str| format!("{base}{GENERATIONS}");
    let body = fast_body("x");
    for response in [
        http(|c, base| c.post(url(base)).json(&body)),
        http(|c, base| c.post(url(base)).bearer_auth("wrong").json(&body)),
        http(|c, base| {
            c.post(url(base))
                .header("authorization", format!("Basic {API_KEY}"))
                .json(&body)
        }),
        http(|c, base| c.get(format!("{base}/v1/models"))),
    ] {
        assert_api_error(&response, 401, Some("invalid_api_key"), None, expected);
    }
}

#[test]
fn e41_body_over_limit() {
    // The server runs with --max-body-mib 1.
    let big = json!({"prompt": "x".repeat(2 << 20)});
    assert_api_error(
        &post_json(GENERATIONS, big),
        413,
        Some("payload_too_large"),
        None,
        "the request body is over the server's limit",
    );
    assert_api_error(
        &post_form(VARIATIONS, &[vec![0u8; 2 << 20]], &[("n", "1")]),
        413,
        Some("payload_too_large"),
        Some("image"),
        "the upload is over the server's body limit",
    );
    // Fixed after a CI run: the server answered after the first MiB and closed the socket with
    // the rest unread, so a client still writing got a broken pipe instead of the 413. A client
    // that writes its whole 3 MiB body, in pieces, now always reads the answer.
    use std::io::{Read, Write};
    let addr = server().base.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).unwrap();
    let body = vec![b'x'; 3 << 20];
    write!(
        socket,
        "POST {GENERATIONS} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    for piece in body.chunks(64 << 10) {
        socket
            .write_all(piece)
            .expect("the server reads the whole body before it answers");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

/// Fixed after the first run: a JSON body sent to the multipart endpoint was answered only
/// "Invalid `boundary` for `multipart/form-data` request", which did not say multipart is
/// required.
#[test]
fn e42_malformed_multipart() {
    let cut = b"--XYZ\r\nContent-Disposition: form-data; name=\"image\"\r\n\r\nabc".to_vec();
    assert_api_error(
        &post_raw(VARIATIONS, "multipart/form-data; boundary=XYZ", cut),
        400,
        None,
        Some("image"),
        "cannot read field: Error parsing `multipart/form-data` request",
    );
    let no_boundary = "Invalid `boundary` for `multipart/form-data` request";
    assert_api_error(
        &post_raw(VARIATIONS, "multipart/form-data", b"abc".to_vec()),
        400,
        None,
        None,
        no_boundary,
    );
    let json_body = post_raw(VARIATIONS, "application/json", b"{\"n\": 1}".to_vec());
    assert_api_error(&json_body, 400, None, None, no_boundary);
    assert_api_error(
        &json_body,
        400,
        None,
        None,
        "this endpoint takes a multipart/form-data body (an `image` file and form fields), not JSON",
    );
    let not_utf8 =
        b"--XYZ\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n\xff\r\n--XYZ--\r\n".to_vec();
    assert_api_error(
        &post_raw(VARIATIONS, "multipart/form-data; boundary=XYZ", not_utf8),
        400,
        None,
        Some("n"),
        "field is not UTF-8 text",
    );
    let png = std::fs::read(good_image()).unwrap();
    assert_api_error(
        &post_form(VARIATIONS, &[png], &[("super_res_steps", "2,x")]),
        400,
        None,
        Some("super_res_steps"),
        "comma-separated integers",
    );
}

#[test]
fn e43_malformed_json() {
    assert_api_error(
        &post_raw(GENERATIONS, "application/json", b"{not json".to_vec()),
        400,
        None,
        None,
        "Failed to parse the request body as JSON: key must be a string at line 1 column 2",
    );
    assert_api_error(
        &post_raw(GENERATIONS, "text/plain", b"{\"prompt\": \"x\"}".to_vec()),
        400,
        None,
        None,
        "Expected request with `Content-Type: application/json`",
    );
    for (body, needle) in [
        (
            json!({"prompt": 5}),
            "prompt: invalid type: integer `5`, expected a string",
        ),
        (
            json!({"prompt": "x", "n": "two"}),
            "n: invalid type: string \"two\", expected usize",
        ),
        (
            json!("x"),
            "invalid type: string \"x\", expected struct ImageParams",
        ),
    ] {
        assert_api_error(
            &post_json(GENERATIONS, body),
            400,
            None,
            None,
            &format!("Failed to deserialize the JSON body into the target type: {needle}"),
        );
    }
}

#[test]
fn e44_prompt_on_variations() {
    let png = std::fs::read(good_image()).unwrap();
    assert_api_error(
        &post_form(VARIATIONS, &[png], &[("prompt", "a cat")]),
        400,
        None,
        Some("prompt"),
        "variations take no prompt (the image is the condition)",
    );
}

#[test]
fn e45_unknown_route_or_method() {
    assert_api_error(
        &http(|c, base| c.get(format!("{base}/v2/nothing")).bearer_auth(API_KEY)),
        404,
        Some("not_found"),
        None,
        "no such route: see GET /v1/models and the README's server section",
    );
    assert_api_error(
        &http(|c, base| c.get(format!("{base}{GENERATIONS}")).bearer_auth(API_KEY)),
        405,
        None,
        None,
        "405 Method Not Allowed",
    );
}

// ===============================================================================================
// C ABI
// ===============================================================================================

#[test]
fn e46_c_null_pointers() {
    unsafe {
        let params = runtime_params();
        let mut runtime = std::ptr::null_mut();
        assert_c(
            unclip_runtime_create(std::ptr::null(), &mut runtime),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid params: is NULL",
        );
        assert!(runtime.is_null());
        assert_c(
            unclip_runtime_create(&params, std::ptr::null_mut()),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid out: is NULL",
        );
        let dir = CString::new(tiny()).unwrap();
        let mut pipeline = std::ptr::null_mut();
        assert_c(
            unclip_pipeline_load(std::ptr::null(), dir.as_ptr(), &mut pipeline),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid runtime: is NULL",
        );
        assert_c(
            unclip_pipeline_load(c_runtime(), std::ptr::null(), &mut pipeline),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid bundle_dir: is NULL",
        );
        assert!(pipeline.is_null());
        let prompt = CString::new("x").unwrap();
        let prompts = [prompt.as_ptr()];
        let params = c_params();
        let mut images: *mut unclip_image = std::ptr::null_mut();
        let mut count = 7usize;
        assert_c(
            unclip_generate(
                std::ptr::null(),
                prompts.as_ptr(),
                1,
                &params,
                &mut images,
                &mut count,
            ),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid pipeline: is NULL",
        );
        assert!(images.is_null() && count == 0, "outputs reset on entry");
        assert_c(
            unclip_generate(
                c_pipeline(),
                prompts.as_ptr(),
                1,
                std::ptr::null(),
                &mut images,
                &mut count,
            ),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid params: is NULL",
        );
        assert_c(
            unclip_generate(
                c_pipeline(),
                prompts.as_ptr(),
                1,
                &params,
                std::ptr::null_mut(),
                &mut count,
            ),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid out_images/out_count: is NULL",
        );
        assert_c(
            unclip_encode_text(c_pipeline(), std::ptr::null(), [0f32; 32].as_mut_ptr(), 32),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid prompt: is NULL",
        );
        assert_c(
            unclip_encode_text(c_pipeline(), prompt.as_ptr(), std::ptr::null_mut(), 32),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid out_embedding: is NULL",
        );
        assert_c(
            unclip_encode_image(
                c_pipeline(),
                std::ptr::null(),
                8,
                8,
                [0f32; 32].as_mut_ptr(),
                32,
            ),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid rgb/width/height: NULL buffer or zero size",
        );
        assert_c(
            unclip_slerp(
                std::ptr::null(),
                [0f32; 4].as_ptr(),
                4,
                0.5,
                [0f32; 4].as_mut_ptr(),
            ),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            "invalid a/b/out/dim: NULL pointer or zero dim",
        );
        // NULL-safe: nothing happens, nothing crashes.
        unclip_runtime_params_init(std::ptr::null_mut());
        unclip_generate_params_init(std::ptr::null_mut());
        unclip_runtime_free(std::ptr::null_mut());
        unclip_pipeline_free(std::ptr::null_mut());
        unclip_image_free(std::ptr::null_mut(), 3);
        assert_eq!(unclip_pipeline_embedding_dim(std::ptr::null()), 0);
        assert_eq!(unclip_pipeline_image_size(std::ptr::null()), 0);
    }
}

#[test]
fn e47_c_struct_size() {
    let mut params = runtime_params();
    params.struct_size = 0;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        &format!(
            "invalid unclip_runtime_params: struct_size is 0, this library needs {RUNTIME_PARAMS_V2_SIZE}: initialize it with its *_params_init()"
        ),
    );
    assert_c_params_refused(
        |p| p.struct_size = 8,
        &format!(
            "invalid unclip_generate_params: struct_size is 8, this library needs {GENERATE_PARAMS_V1_SIZE}"
        ),
    );
    // Between two ABI sizes: refused, not copied in part (half a pointer is a wild pointer;
    // found by fuzzing, tests/fuzz_regressions.rs). 4 bytes short of the ABI 3 size ends inside
    // openvino_plugin_path.
    let full = std::mem::size_of::<unclip_runtime_params>();
    let plugin = CString::new("/nonexistent/plugin.so").unwrap();
    params = runtime_params();
    params.openvino_plugin_path = plugin.as_ptr();
    params.struct_size = RUNTIME_PARAMS_V3_SIZE - 4;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        &format!(
            "invalid unclip_runtime_params: struct_size is {}, which is no ABI version's size of this struct ([{RUNTIME_PARAMS_V2_SIZE}, {RUNTIME_PARAMS_V3_SIZE}, {RUNTIME_PARAMS_V4_SIZE}, {full}] or more): initialize it with its *_params_init()",
            RUNTIME_PARAMS_V3_SIZE - 4
        ),
    );
    let full = std::mem::size_of::<unclip_generate_params>();
    assert_c_params_refused(
        |p| p.struct_size = GENERATE_PARAMS_V1_SIZE + 4,
        &format!(
            "invalid unclip_generate_params: struct_size is {}, which is no ABI version's size of this struct ([{GENERATE_PARAMS_V1_SIZE}, {GENERATE_PARAMS_V2_SIZE}, {full}] or more)",
            GENERATE_PARAMS_V1_SIZE + 4
        ),
    );
}

#[test]
fn e48_c_unknown_enum() {
    let ok = CString::new("x").unwrap();
    for (field, value) in [
        ("rng", 2),
        ("rng", -1),
        ("prior_scheduler", 5),
        ("decoder_scheduler", -1),
        ("super_res_scheduler", 99),
    ] {
        let mut params = c_params();
        match field {
            "rng" => params.rng = value,
            "prior_scheduler" => params.prior_scheduler = value,
            "decoder_scheduler" => params.decoder_scheduler = value,
            _ => params.super_res_scheduler = value,
        }
        let kind = if field == "rng" {
            "unclip_rng"
        } else {
            "unclip_scheduler"
        };
        assert_c(
            c_generate(&[ok.as_ptr()], &params),
            unclip_status::UNCLIP_INVALID_ARGUMENT,
            &format!("invalid {field}: {value} is not a {kind}"),
        );
    }
    c_runtime();
    let mut params = runtime_params();
    params.device = -1;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid device: -1 is not a unclip_device",
    );
}

/// DDIMInverse runs from image to noise: refused for generation in every shell that can name it
/// (the C enum has no such value).
#[test]
fn e49_scheduler_inverse_for_generation() {
    let expected = "invalid decoder scheduler: ddim-inverse runs from an image to noise (inversion), it cannot generate: choose unclip, ddpm, ddim or dpm++";
    assert_invalid(
        &generate_err(&TextToImage {
            decoder_scheduler: Some(SchedulerKind::DdimInverse),
            ..request()
        }),
        "decoder scheduler",
        expected,
    );
    let mut args = vec![
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--decoder-scheduler",
        "ddim-inverse",
    ];
    args.extend(FAST);
    assert_cli_error(&cli(&args), expected);
    assert_api_error(
        &post_json(
            GENERATIONS,
            json!({"prompt": "x", "decoder_scheduler": "ddim-inverse"}),
        ),
        400,
        None,
        None,
        expected,
    );
    let prior = generate_err(&TextToImage {
        prior_scheduler: Some(SchedulerKind::DdimInverse),
        ..request()
    });
    assert_invalid(
        &prior,
        "prior scheduler",
        "ddim-inverse runs from an image to noise",
    );
}

/// A memory budget below what one image needs: `unclip serve` refuses to start (a request over a
/// workable budget gets 400: tests/server.rs memory_budget_refuses_what_would_not_fit).
#[test]
fn e50_memory_budget_too_small() {
    assert_serve_refuses(
        &["--model", tiny(), "--memory-budget-mib", "10"],
        &[],
        "memory budget of 10 MiB is below what one image needs",
    );
}

/// A precision the device cannot run: refused before any model loads (auto never is).
#[test]
fn e51_precision_not_on_device() {
    let expected =
        "invalid precision: bf16 on cpu: ONNX Runtime's CPU provider runs f32 and int8 models; \
                    the bf16 mode is --device openvino --precision bf16 (or auto)";
    let mut args = vec![
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--precision",
        "bf16",
    ];
    args.extend(FAST);
    assert_cli_error(&cli(&args), expected);
    assert_serve_refuses(
        &["--model", tiny(), "--precision", "bf16"],
        &[],
        "invalid precision: bf16 on cpu",
    );
    let output = cli(&[
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--precision",
        "int4",
    ]);
    assert_cli_error(
        &output,
        "invalid precision: \"int4\": choose f32, bf16, fp16, int8 or auto",
    );
    let output = cli(&[
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--device",
        "cuda",
        "--precision",
        "int8",
    ]);
    assert_cli_error(
        &output,
        "invalid precision: int8 on cuda:0: int8 models run on --device cpu",
    );
    c_runtime();
    let mut params = runtime_params();
    params.precision = 1;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid precision: bf16 on cpu",
    );
    params.precision = 9;
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_INVALID_ARGUMENT,
        "invalid precision: 9 is not a unclip_precision",
    );
}

/// OpenVINO asked for but its plugin is not installed (or names no device here): a typed error,
/// never a silent CPU run.
#[test]
fn e52_openvino_unavailable() {
    let missing = "/nonexistent/libonnxruntime_providers_openvino_plugin.so";
    let expected = format!(
        "execution provider OpenVINOExecutionProvider is not available: no plugin library at \
         {missing}. Install it with `scripts/setup-ort --openvino`"
    );
    let mut args = vec![
        "-q",
        "generate",
        "x",
        "--model",
        tiny(),
        "--device",
        "openvino",
        "--openvino-plugin",
        missing,
    ];
    args.extend(FAST);
    assert_cli_error(&cli(&args), &expected);
    assert_serve_refuses(
        &[
            "--model",
            tiny(),
            "--device",
            "openvino",
            "--openvino-plugin",
            missing,
        ],
        &[],
        "no plugin library at",
    );
    c_runtime();
    let plugin = std::ffi::CString::new(missing).unwrap();
    let mut params = runtime_params();
    params.device = 3;
    params.openvino_plugin_path = plugin.as_ptr();
    assert_c(
        c_runtime_create(&params),
        unclip_status::UNCLIP_PROVIDER_UNAVAILABLE,
        &expected,
    );
}
