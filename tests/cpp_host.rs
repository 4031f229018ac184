//! examples/cpp-host: a C++17 program built with CMake against libunclip through pkg-config
//! (scripts/unclip-pc) writes the same pixels as the Rust API for the same seed and settings.
//! Needs cmake and pkg-config (.ci/run installs cmake).

mod common;

use std::path::PathBuf;
use std::process::Command;

use unclip::noise::TorchGenerator;
use unclip::pipeline::{no_observer, TextToImage};

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed? .ci/run installs cmake)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn cpp_host_builds_runs_and_matches_the_rust_api() {
    let repo = common::repo();
    let profile = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let profile_name = profile.file_name().unwrap().to_str().unwrap().to_string();
    run(Command::new(repo.join("scripts/unclip-pc")).arg(&profile_name));
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    let pkg = profile.join("pkgconfig");
    run(Command::new("cmake")
        .arg("-S")
        .arg(repo.join("examples/cpp-host"))
        .arg("-B")
        .arg(&build)
        .env("PKG_CONFIG_PATH", &pkg));
    run(Command::new("cmake").arg("--build").arg(&build));
    let png: PathBuf = tmp.path().join("host.png");
    let prompt = "a green square on a white background";
    run(Command::new(build.join("unclip-host"))
        .arg(common::tiny_bundle())
        .arg(&png)
        .arg(prompt)
        .arg("7")
        .env("ORT_DYLIB_PATH", unclip::runtime::find_library().unwrap()));

    let pipeline = unclip::Pipeline::load(&common::runtime(), common::tiny_bundle()).unwrap();
    let request = TextToImage {
        prompts: vec![prompt.into()],
        prior_steps: Some(2),
        decoder_steps: Some(2),
        super_res_steps: vec![2],
        ..Default::default()
    };
    let expected = pipeline
        .generate(&request, &mut TorchGenerator::new(7), &mut no_observer())
        .unwrap();
    let written = image::open(&png).unwrap().to_rgb8();
    assert_eq!(written.dimensions(), (256, 256));
    assert_eq!(
        written.as_raw(),
        expected.images[0].as_raw(),
        "C++ host and Rust API differ"
    );
}
