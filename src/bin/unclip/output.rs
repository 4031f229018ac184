//! Output files: checked before any model runs, written atomically, reported on stderr or
//! as JSON.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use unclip::pipeline::Generation;
use unclip::{npy, RngKind};

/// Fails before any model runs when `out` cannot be written: its directory must exist and take
/// a new file (outputs are written atomically there: temporary file, then rename).
pub(crate) fn check_output(out: &Path) -> Result<()> {
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "cannot write {}: directory {} does not exist (create it first)",
            out.display(),
            dir.display()
        );
    }
    if out.is_dir() {
        bail!(
            "cannot write {}: it is a directory; give a file name such as out.png",
            out.display()
        );
    }
    let probe = dir.join(format!(".unclip-write-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("cannot write {}: {e}", out.display()),
    }
}

pub(crate) fn output_paths(out: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    (0..count)
        .map(|i| out.with_file_name(format!("{stem}_{i}.{ext}")))
        .collect()
}

pub(crate) fn write_dump(dir: Option<&Path>, generation: &Generation) -> Result<()> {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, tensor) in &generation.intermediates {
            npy::write(&dir.join(format!("{name}.npy")), tensor)?;
        }
    }
    Ok(())
}

pub(crate) fn report(
    paths: &[PathBuf],
    seed: u64,
    rng: RngKind,
    generation: &Generation,
    json: bool,
    quiet: bool,
) {
    let total = generation.timings.last().map_or(0.0, |t| t.seconds);
    if json {
        let summary = json!({
            "images": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "seed": seed,
            "rng": rng.to_string(),
            "seconds": total,
            "timings": generation.timings.iter().map(|t| json!({"stage": t.stage, "seconds": t.seconds, "ort_seconds": t.ort_seconds})).collect::<Vec<_>>(),
        });
        println!("{summary}");
    } else if !quiet {
        for path in paths {
            eprintln!("wrote {} (seed {seed}, {total:.2} s)", path.display());
        }
    }
}
