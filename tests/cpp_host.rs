//! examples/cpp-host: a C++17 program built with CMake against libunclip through pkg-config
//! (scripts/unclip-pc) writes the same pixels as the Rust API for the same seed and settings.
//! Needs cmake and pkg-config (.ci/run installs cmake).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::run_ok;

#[test]
fn cpp_host_builds_runs_and_matches_the_rust_api() {
    let repo = common::repo();
    let profile = common::profile_dir();
    let profile_name = profile.file_name().unwrap().to_str().unwrap().to_string();
    run_ok(Command::new(repo.join("scripts/unclip-pc")).arg(&profile_name));
    let tmp = tempfile::tempdir().unwrap();
    let build = tmp.path().join("build");
    let pkg = profile.join("pkgconfig");
    run_ok(
        Command::new("cmake")
            .arg("-S")
            .arg(repo.join("examples/cpp-host"))
            .arg("-B")
            .arg(&build)
            .env("PKG_CONFIG_PATH", &pkg),
    );
    run_ok(Command::new("cmake").arg("--build").arg(&build));
    let png: PathBuf = tmp.path().join("host.png");
    let prompt = "a green square on a white background";
    run_ok(
        Command::new(build.join("unclip-host"))
            .arg(common::tiny_bundle())
            .arg(&png)
            .arg(prompt)
            .arg("7")
            .env("ORT_DYLIB_PATH", unclip::runtime::find_library().unwrap()),
    );

    let written = image::open(&png).unwrap().to_rgb8();
    assert_eq!(written.dimensions(), (256, 256));
    assert_eq!(
        written.as_raw(),
        common::tiny_image(prompt, 7).as_slice(),
        "C++ host and Rust API differ"
    );
}
