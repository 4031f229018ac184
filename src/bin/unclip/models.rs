//! Where the command line looks for a model bundle when none is named. Only the binary decides
//! this: the library opens the directory it is given.

use std::path::{Path, PathBuf};

/// The bundles tried, in order, when no bundle is named: the trained shapes model, then the
/// random-weight test bundle.
const DEFAULT_BUNDLES: &[&str] = &["models/shapes", "models/tiny"];

/// The bundle to use when the caller names none, in the documented order (README "Models"):
/// `$UNCLIP_MODEL` if set; else, for each of [`DEFAULT_BUNDLES`], the copy next to the running
/// executable, then the one under the current directory, then the one in the source tree this
/// binary was built from. A directory counts when it holds a `bundle.json`.
pub fn default_bundle_dir() -> Result<PathBuf, unclip::Error> {
    if let Some(dir) = std::env::var_os("UNCLIP_MODEL").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let roots: Vec<PathBuf> = exe_dir
        .into_iter()
        .chain([
            PathBuf::from("."),
            PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        ])
        .collect();
    let mut searched = Vec::new();
    for name in DEFAULT_BUNDLES {
        for root in &roots {
            let dir = root.join(name);
            if dir.join(unclip::bundle::MANIFEST).is_file() {
                return Ok(dir);
            }
            searched.push(dir.display().to_string());
        }
    }
    Err(unclip::Error::NoDefaultBundle {
        searched: searched.join(", "),
    })
}

/// The bundle a command runs: `--model` if given, else [`default_bundle_dir`].
pub fn bundle_dir(flag: Option<&Path>) -> Result<PathBuf, unclip::Error> {
    match flag {
        Some(dir) => Ok(dir.to_path_buf()),
        None => default_bundle_dir(),
    }
}
