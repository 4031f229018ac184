//! Writing an exploration (`interpolate`, `textdiff`, `pca`, `sweep`): every frame as a PNG with
//! its reproduction record, one labeled contact sheet, the embeddings and, for sequences, a GIF.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::json;
use unclip::explore::{Exploration, ExploreSettings};
use unclip::{npy, Pipeline};

use crate::explore::ExploreArgs;
use crate::sheet::{contact_sheet, save_gif, SheetLayout};

/// Where and how an exploration is written.
pub(crate) struct Output<'a> {
    pub(crate) out: &'a Path,
    pub(crate) layout: SheetLayout,
    pub(crate) gif_ms: Option<u32>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

impl Output<'_> {
    /// Writes the files and reports them.
    pub(crate) fn write(
        self,
        pipeline: &Pipeline,
        exploration: &Exploration,
        settings: &ExploreSettings,
        meta: Vec<(String, String)>,
    ) -> Result<()> {
        let written = write(
            pipeline,
            exploration,
            self.out,
            self.layout,
            self.gif_ms,
            settings,
            meta,
        )?;
        summarize(&written, exploration, settings.seed, self.json, self.quiet);
        Ok(())
    }
}

/// What a written exploration consists of.
pub(crate) struct Written {
    pub(crate) frames: Vec<PathBuf>,
    pub(crate) sheet: PathBuf,
    pub(crate) gif: Option<PathBuf>,
}

/// Writes frames, sheet, optional GIF and embeddings; `meta` goes into every PNG.
pub(crate) fn write(
    pipeline: &Pipeline,
    exploration: &Exploration,
    out: &Path,
    layout: SheetLayout,
    gif_ms: Option<u32>,
    settings: &ExploreSettings,
    mut meta: Vec<(String, String)>,
) -> Result<Written> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let command = meta
        .iter()
        .find(|(key, _)| key == "command")
        .map_or("explore", |(_, value)| value.as_str())
        .to_string();
    // The sheet: the command's own settings, the noise and the model; each frame: its full
    // reproduction record.
    meta.extend([
        ("seed".to_string(), settings.seed.to_string()),
        ("rng".into(), settings.rng.to_string()),
        ("model".into(), pipeline.bundle().manifest.name.clone()),
        (
            "model_sha256".into(),
            pipeline.bundle().manifest_sha256.clone(),
        ),
        (
            "unclip_version".into(),
            unclip::pipeline::UNCLIP_VERSION.into(),
        ),
    ]);
    let mut frames = Vec::new();
    for (i, (image, label)) in exploration
        .images
        .iter()
        .zip(&exploration.labels)
        .enumerate()
    {
        let path = out.join(format!("frame_{i:03}.png"));
        let mut record = exploration
            .records
            .get(i)
            .cloned()
            .context("an exploration frame without its reproduction record")?;
        record.command = command.clone();
        let mut frame_meta = record.to_png_text();
        frame_meta.extend(
            meta.iter()
                .filter(|(key, _)| !frame_meta.iter().any(|(k, _)| k == key))
                .cloned()
                .collect::<Vec<_>>(),
        );
        frame_meta.push(("frame".into(), i.to_string()));
        frame_meta.push(("label".into(), label.clone()));
        unclip::image_io::save_png(&path, image, &frame_meta)
            .with_context(|| format!("writing {}", path.display()))?;
        frames.push(path);
    }
    let sheet_image = contact_sheet(&exploration.images, &layout)?;
    let sheet = out.join("sheet.png");
    let mut sheet_meta = meta;
    sheet_meta.push(("labels".into(), serde_json::to_string(&exploration.labels)?));
    unclip::image_io::save_png(&sheet, &sheet_image, &sheet_meta)
        .with_context(|| format!("writing {}", sheet.display()))?;
    let gif = match gif_ms {
        Some(ms) => {
            let path = out.join("animation.gif");
            save_gif(&path, &exploration.images, ms)?;
            Some(path)
        }
        None => None,
    };
    npy::write(
        &out.join("embeddings.npy"),
        &unclip::pipeline::Tensor::F32(exploration.embeddings.clone().into_dyn()),
    )?;
    Ok(Written { frames, sheet, gif })
}

pub(crate) fn cell(common: &ExploreArgs, pipeline: &Pipeline) -> u32 {
    common
        .cell
        .unwrap_or_else(|| (pipeline.output_size() as u32).min(256))
}

pub(crate) fn summarize(
    written: &Written,
    exploration: &Exploration,
    seed: u64,
    json: bool,
    quiet: bool,
) {
    if json {
        println!(
            "{}",
            json!({
                "frames": written.frames.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "labels": exploration.labels,
                "sheet": written.sheet.display().to_string(),
                "animation": written.gif.as_ref().map(|p| p.display().to_string()),
                "seed": seed,
                "seconds": exploration.seconds,
            })
        );
    } else if !quiet {
        eprintln!(
            "wrote {} frames and {} (seed {seed}, {:.2} s)",
            written.frames.len(),
            written.sheet.display(),
            exploration.seconds
        );
    }
}
