//! Finding and loading the ONNX Runtime shared library (`load-dynamic`).
//!
//! Search order: `ORT_DYLIB_PATH`; next to the executable (and its `lib/`); the project folder
//! `.ort/` written by `scripts/setup-ort`, in the working directory or above the executable (a
//! binary under a checkout's `target/` finds the checkout's `.ort/`); an installed Python
//! `onnxruntime` package. No path of the build machine is baked in. We load through
//! `ort::init_from`, which reports a missing or incompatible library as an error — ort's
//! `ORT_DYLIB_PATH` auto-loading panics instead.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The ONNX Runtime minor version unclip is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

#[cfg(target_os = "linux")]
const LIB_NAMES: &[&str] = &["libonnxruntime.so.1.31.1", "libonnxruntime.so"];
#[cfg(target_os = "macos")]
const LIB_NAMES: &[&str] = &["libonnxruntime.1.31.1.dylib", "libonnxruntime.dylib"];
#[cfg(target_os = "windows")]
const LIB_NAMES: &[&str] = &["onnxruntime.dll"];
#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
const LIB_NAMES: &[&str] = &["libonnxruntime.so"];

/// Directories searched for the library, in order, after `ORT_DYLIB_PATH`.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("lib"));
        // target/{debug,release}/ and target/release/deps/ → the checkout's .ort/
        for up in exe_dir.ancestors().take(4) {
            dirs.push(up.join(".ort"));
        }
        dirs.insert(0, exe_dir);
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(".ort"));
    }
    dirs.extend(python_package_dirs());
    dirs.dedup();
    dirs
}

/// `onnxruntime/capi` of Python installations we can find without running Python.
fn python_package_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(venv).join("lib"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        roots.push(PathBuf::from(home).join(".local/lib"));
    }
    roots.push(PathBuf::from("/usr/local/lib"));
    roots.push(PathBuf::from("/usr/lib"));
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for py in pythons {
            for site in ["site-packages", "dist-packages"] {
                out.push(py.join(site).join("onnxruntime").join("capi"));
            }
        }
    }
    out
}

/// Finds the library: `ORT_DYLIB_PATH` if set (it must exist), else the first hit in
/// [`search_dirs`].
pub fn find_library() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::OrtNotFound {
                searched: format!("ORT_DYLIB_PATH={} (no such file)", path.display()),
            })
        };
    }
    let dirs = search_dirs();
    for dir in &dirs {
        for name in LIB_NAMES {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::OrtNotFound {
        searched: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}
