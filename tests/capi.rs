//! The C ABI from C: the header compiles as C99 and C++17 with warnings as errors, declares
//! every exported function, and a C program (tests/c/capi_test.c) built against libunclip runs
//! clean under AddressSanitizer and produces the same bytes as the Rust API.

mod common;

use std::path::{Path, PathBuf};

use common::{profile_dir, run_ok};
use std::process::Command;

fn header() -> PathBuf {
    common::repo().join("include")
}

#[test]
fn header_compiles_as_c99_and_cpp17() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("h.c");
    std::fs::write(
        &c,
        "#include \"unclip.h\"\nint main(void) { return (int)unclip_abi_version() - 1; }\n",
    )
    .unwrap();
    run_ok(
        Command::new("gcc")
            .args([
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-fsyntax-only",
                "-I",
            ])
            .arg(header())
            .arg(&c),
    );
    let cpp = tmp.path().join("h.cpp");
    std::fs::write(&cpp, "#include \"unclip.h\"\nint main() { return static_cast<int>(unclip_abi_version()) - 1; }\n").unwrap();
    run_ok(
        Command::new("g++")
            .args([
                "-std=c++17",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-fsyntax-only",
                "-I",
            ])
            .arg(header())
            .arg(&cpp),
    );
}

/// Names of `#[no_mangle]` functions in the C ABI sources.
fn exported_functions() -> Vec<String> {
    let mut names = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(common::repo().join("src/capi"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if line.trim() == "#[no_mangle]" {
                let decl = lines.next().unwrap();
                let name = decl.split("fn ").nth(1).unwrap().split('(').next().unwrap();
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

#[test]
fn header_declares_exactly_the_exported_functions() {
    // Hand-written header (no cbindgen here: it is not on this machine and the header carries
    // documentation cbindgen would not write); this test keeps the two in step.
    let header = std::fs::read_to_string(header().join("unclip.h")).unwrap();
    let exported = exported_functions();
    assert!(exported.len() >= 15, "{exported:?}");
    for name in &exported {
        assert!(
            header.contains(&format!(" {name}(")) || header.contains(&format!("*{name}(")),
            "{name} is not declared in unclip.h"
        );
    }
    let declared: Vec<&str> = header
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("unclip_") && header.contains(&format!("{w}(")))
        .collect();
    for name in declared {
        assert!(
            exported.iter().any(|e| e == name),
            "{name} is declared in unclip.h but not exported"
        );
    }
}

fn build_c_test(dir: &Path, sanitize: bool) -> PathBuf {
    assert!(
        profile_dir().join("libunclip.so").exists(),
        "libunclip.so missing in {}: run `cargo build --release --lib` first (scripts/test does)",
        profile_dir().display()
    );
    let exe = dir.join(if sanitize {
        "capi_test_asan"
    } else {
        "capi_test"
    });
    run_ok(
        Command::new("gcc")
            .args([
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-O1",
                "-g",
            ])
            .args(if sanitize {
                &["-fsanitize=address", "-fno-omit-frame-pointer"][..]
            } else {
                &[][..]
            })
            .arg("-I")
            .arg(header())
            .arg(common::repo().join("tests/c/capi_test.c"))
            .arg("-o")
            .arg(&exe)
            .arg("-L")
            .arg(profile_dir())
            .args(["-lunclip", "-lpthread"]),
    );
    exe
}

/// The whole C program under AddressSanitizer (its allocator interposes every malloc/free of
/// the process, Rust's and ONNX Runtime's included, and LeakSanitizer reports leaks at exit).
/// Not valgrind: memcheck reports false positives inside ONNX Runtime itself (an overlapping
/// `memcpy_chk` of a value onto itself while creating the environment, and "uninitialised"
/// lanes of MLAS's vector kernels flowing into outputs), and a diffusion run takes minutes there.
#[test]
fn c_program_runs_clean_under_asan_and_matches_the_rust_api() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = build_c_test(tmp.path(), true);
    let rgb = tmp.path().join("c.rgb");
    let ort = unclip::runtime::find_library().expect("scripts/setup-ort");
    let out = run_ok(
        Command::new(&exe)
            .arg(common::tiny_bundle())
            .arg(&rgb)
            .env("LD_LIBRARY_PATH", profile_dir())
            .env("ORT_DYLIB_PATH", &ort)
            .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1"),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("capi_test: ok"));
    assert_eq!(
        std::fs::read(&rgb).unwrap(),
        common::tiny_image("a red circle on a blue background", 42),
        "C ABI and Rust API differ for the same seed and settings"
    );
}
