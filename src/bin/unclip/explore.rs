//! `unclip interpolate | textdiff | pca | sweep`: latent-space explorations (DALL·E 2 §3), thin
//! shells over `unclip::explore`. Each writes the single frames, one contact sheet and the
//! embeddings into an output directory.

use std::path::{Path, PathBuf};

use crate::frames::{cell, Output};
use crate::sheet::SheetLayout;
use anyhow::{bail, Context, Result};
use clap::Args;
use unclip::explore::{Endpoint, ExploreSettings};
use unclip::latent::Pca;
use unclip::pipeline::TextToImage;
use unclip::vision::{load_image, ImageLimits};
use unclip::{npy, Pipeline};

use crate::flags::{load, DecodeArgs, NoiseArgs, PriorArgs, RuntimeArgs};
use crate::progress::Bars;

/// Sampling and output options every exploration shares.
#[derive(Args, Clone)]
pub struct ExploreArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// The noise; the decoder noise is the same in every frame.
    #[command(flatten)]
    pub noise: NoiseArgs,
    /// The prior, for prompt endpoints.
    #[command(flatten)]
    pub prior: PriorArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// The caption the decoder sees in every frame (default: none, as image variations).
    #[arg(long, default_value = "")]
    pub decoder_prompt: String,
    /// Frames decoded per batch (the images do not depend on it). On CPU a larger batch saves
    /// little time and costs memory in proportion, so the default is 1.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Side of a contact-sheet cell in pixels (default: the image size, at most 256).
    #[arg(long)]
    pub cell: Option<u32>,
    /// Output directory (frames, sheet.png, embeddings.npy).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct InterpolateArgs {
    /// First endpoint: an image file, a .npy embedding, or a prompt (`prompt:`/`image:` force
    /// the reading).
    pub a: String,
    /// Second endpoint, as A.
    pub b: String,
    /// More endpoints, for --weights only.
    pub more: Vec<String>,
    /// diffusers' weighted interpolation (Kandinsky's `interpolate`): one image of the weighted
    /// sum of the endpoints' embeddings, one weight per endpoint (e.g. 0.3,0.7), instead of
    /// slerp frames.
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<f32>,
    /// Number of frames, endpoints included.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    #[arg(long)]
    pub prior_guidance_scale: Option<f32>,
    #[arg(long)]
    pub decoder_guidance_scale: Option<f32>,
    /// Milliseconds per frame of the GIF.
    #[arg(long, default_value_t = 150)]
    pub frame_ms: u32,
    #[command(flatten)]
    pub common: ExploreArgs,
}

#[derive(Args)]
pub struct TextDiffArgs {
    /// The image to edit (an image file, a .npy embedding, or a prompt).
    pub image: String,
    /// Caption describing the image now.
    #[arg(long)]
    pub from: String,
    /// Caption describing the wanted change.
    #[arg(long)]
    pub to: String,
    #[arg(long, default_value_t = 6)]
    pub frames: usize,
    /// Largest rotation toward the text diff (the paper goes to 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub max_theta: f32,
    #[arg(long)]
    pub prior_guidance_scale: Option<f32>,
    #[arg(long)]
    pub decoder_guidance_scale: Option<f32>,
    #[arg(long, default_value_t = 250)]
    pub frame_ms: u32,
    /// Decode every frame from the image's DDIM-inverted latents (with DDIM) instead of noise,
    /// so θ = 0 reconstructs the image (DALL·E 2 §3.3).
    #[arg(long)]
    pub invert: bool,
    #[command(flatten)]
    pub common: ExploreArgs,
}

#[derive(Args)]
pub struct PcaArgs {
    /// Fit the PCA on the CLIP embeddings of every image in this directory.
    #[arg(long, group = "basis_source")]
    pub fit: Option<PathBuf>,
    /// Fit the PCA on these embeddings (.npy, (N, D)).
    #[arg(long, group = "basis_source")]
    pub embeddings: Option<PathBuf>,
    /// Load a basis saved with --save-basis.
    #[arg(long, group = "basis_source")]
    pub basis: Option<PathBuf>,
    /// Save the fitted basis (.npz: mean, components, explained_variance).
    #[arg(long)]
    pub save_basis: Option<PathBuf>,
    /// The embedding to probe: an image file, a .npy embedding, or a prompt.
    #[arg(long)]
    pub source: Option<String>,
    /// Decode every reconstruction from the source image's DDIM-inverted latents (with DDIM).
    #[arg(long)]
    pub invert: bool,
    /// Component counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    pub components: Vec<usize>,
    #[arg(long)]
    pub prior_guidance_scale: Option<f32>,
    #[arg(long)]
    pub decoder_guidance_scale: Option<f32>,
    #[command(flatten)]
    pub common: ExploreArgs,
}

#[derive(Args)]
pub struct SweepArgs {
    pub prompt: String,
    /// Prior guidance scales (rows), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub prior_guidance_scale: Vec<f32>,
    /// Decoder guidance scales (columns), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,8")]
    pub decoder_guidance_scale: Vec<f32>,
    #[command(flatten)]
    pub common: ExploreArgs,
}

/// Reads an endpoint argument: `prompt:TEXT`, `image:PATH`, an existing `.npy` file (an
/// embedding), an existing file (an image), or else a prompt.
fn endpoint(arg: &str) -> Result<(Endpoint, String)> {
    if let Some(prompt) = arg.strip_prefix("prompt:") {
        return Ok((
            Endpoint::Prompt(prompt.to_string()),
            format!("prompt {prompt:?}"),
        ));
    }
    let (path, forced) = match arg.strip_prefix("image:") {
        Some(path) => (Path::new(path), true),
        None => (Path::new(arg), false),
    };
    if path.is_file() || forced {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
        {
            let rows = npy::read_embeddings(path)?;
            if rows.nrows() != 1 {
                bail!(
                    "{}: expected one embedding, found {}",
                    path.display(),
                    rows.nrows()
                );
            }
            return Ok((
                Endpoint::Embedding(rows.row(0).to_owned()),
                format!("embedding {}", path.display()),
            ));
        }
        let image = load_image(path, &ImageLimits::default())?;
        return Ok((Endpoint::Image(image), format!("image {}", path.display())));
    }
    Ok((Endpoint::Prompt(arg.to_string()), format!("prompt {arg:?}")))
}

/// With `--invert`: the subject image's DDIM-inverted latents, decoded with DDIM by every frame.
fn invert_subject(
    pipeline: &Pipeline,
    subject: &Endpoint,
    settings: &mut ExploreSettings,
    bars: &mut Bars,
) -> Result<()> {
    let Endpoint::Image(image) = subject else {
        bail!("--invert needs an image to invert, not a prompt or an embedding");
    };
    let steps = settings
        .request
        .decoder_steps
        .unwrap_or(pipeline.decoder_defaults().0);
    let latents =
        pipeline.invert_images(std::slice::from_ref(image), steps, &mut |p| bars.update(p))?;
    settings.decoder_latents = Some(latents);
    Ok(())
}

fn settings(
    common: &ExploreArgs,
    prior_guidance_scale: Option<f32>,
    decoder_guidance_scale: Option<f32>,
) -> ExploreSettings {
    let mut settings = ExploreSettings::new(common.noise.rng, common.noise.seed_or_random());
    settings.request = common.decode.apply(common.prior.apply(TextToImage {
        prior_guidance_scale,
        decoder_guidance_scale,
        ..Default::default()
    }));
    settings.decoder_prompt = common.decoder_prompt.clone();
    settings.batch = common.batch;
    settings
}

pub fn interpolate(args: InterpolateArgs, quiet: bool) -> Result<()> {
    if !args.more.is_empty() && args.weights.is_empty() {
        bail!(
            "{} endpoints: slerp takes two; give --weights (one per endpoint) for a weighted mix",
            2 + args.more.len()
        );
    }
    let pipeline = load(&args.common.runtime)?;
    let (a, a_name) = endpoint(&args.a)?;
    let (b, b_name) = endpoint(&args.b)?;
    let settings = settings(
        &args.common,
        args.prior_guidance_scale,
        args.decoder_guidance_scale,
    );
    if !args.weights.is_empty() {
        return weighted(args, pipeline, [(a, a_name), (b, b_name)], settings, quiet);
    }
    let mut bars = Bars::new(quiet);
    let exploration =
        pipeline.interpolate(&a, &b, args.frames, &settings, &mut |p| bars.update(p))?;
    bars.finish();
    let mut layout = SheetLayout::new(args.frames.min(8));
    layout.cell = Some(cell(&args.common, &pipeline));
    layout.title = Some(format!("{a_name} -> {b_name}"));
    layout.captions = exploration.labels.clone();
    let out = args
        .common
        .out
        .clone()
        .unwrap_or_else(|| "interpolation".into());
    let meta = vec![
        ("command".to_string(), "interpolate".to_string()),
        ("a".into(), a_name),
        ("b".into(), b_name),
        ("frames".into(), args.frames.to_string()),
    ];
    let output = Output {
        out: &out,
        layout,
        gif_ms: Some(args.frame_ms),
        json: args.common.json,
        quiet,
    };
    output.write(&pipeline, &exploration, &settings, meta)
}

/// `interpolate --weights`: one image of the weighted sum of the endpoints' embeddings.
fn weighted(
    args: InterpolateArgs,
    pipeline: unclip::Pipeline,
    first: [(Endpoint, String); 2],
    settings: ExploreSettings,
    quiet: bool,
) -> Result<()> {
    let mut endpoints = Vec::new();
    let mut names = Vec::new();
    for (e, name) in first {
        endpoints.push(e);
        names.push(name);
    }
    for arg in &args.more {
        let (e, name) = endpoint(arg)?;
        endpoints.push(e);
        names.push(name);
    }
    let mut bars = Bars::new(quiet);
    let exploration = pipeline.weighted_mix(&endpoints, &args.weights, &settings, &mut |p| {
        bars.update(p)
    })?;
    bars.finish();
    let mut layout = SheetLayout::new(1);
    layout.cell = Some(cell(&args.common, &pipeline));
    layout.title = Some(
        names
            .iter()
            .zip(&args.weights)
            .map(|(n, w)| format!("{w} x {n}"))
            .collect::<Vec<_>>()
            .join(" + "),
    );
    layout.captions = exploration.labels.clone();
    let out = args.common.out.clone().unwrap_or_else(|| "mix".into());
    let mut meta = vec![("command".to_string(), "interpolate --weights".to_string())];
    for (i, (name, w)) in names.iter().zip(&args.weights).enumerate() {
        meta.push((format!("endpoint_{i}"), name.clone()));
        meta.push((format!("weight_{i}"), w.to_string()));
    }
    let output = Output {
        out: &out,
        layout,
        gif_ms: None,
        json: args.common.json,
        quiet,
    };
    output.write(&pipeline, &exploration, &settings, meta)
}

pub fn textdiff(args: TextDiffArgs, quiet: bool) -> Result<()> {
    let pipeline = load(&args.common.runtime)?;
    let (subject, name) = endpoint(&args.image)?;
    let mut settings = settings(
        &args.common,
        args.prior_guidance_scale,
        args.decoder_guidance_scale,
    );
    let mut bars = Bars::new(quiet);
    if args.invert {
        invert_subject(&pipeline, &subject, &mut settings, &mut bars)?;
    }
    let exploration = pipeline.text_diff(
        &subject,
        &args.from,
        &args.to,
        args.frames,
        args.max_theta,
        &settings,
        &mut |p| bars.update(p),
    )?;
    bars.finish();
    let mut layout = SheetLayout::new(args.frames.min(8));
    layout.cell = Some(cell(&args.common, &pipeline));
    layout.title = Some(format!("{:?} -> {:?}", args.from, args.to));
    layout.captions = exploration.labels.clone();
    let out = args.common.out.clone().unwrap_or_else(|| "textdiff".into());
    let meta = vec![
        ("command".to_string(), "textdiff".to_string()),
        ("source".into(), name),
        ("from".into(), args.from.clone()),
        ("to".into(), args.to.clone()),
        ("max_theta".into(), args.max_theta.to_string()),
        ("ddim_inversion".into(), args.invert.to_string()),
    ];
    let output = Output {
        out: &out,
        layout,
        gif_ms: Some(args.frame_ms),
        json: args.common.json,
        quiet,
    };
    output.write(&pipeline, &exploration, &settings, meta)
}

/// Image files of a directory, sorted by name.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "png" | "jpg" | "jpeg" | "webp"
                )
            })
        })
        .collect();
    paths.sort();
    Ok(paths)
}

pub fn pca(args: PcaArgs, quiet: bool) -> Result<()> {
    let pipeline = load(&args.common.runtime)?;
    let (pca, basis_name) = if let Some(dir) = &args.fit {
        let paths = images_in(dir)?;
        if paths.len() < 2 {
            bail!(
                "{}: need at least 2 images (PNG, JPEG or WebP) to fit a PCA, found {}",
                dir.display(),
                paths.len()
            );
        }
        let encoder = pipeline.image_encoder()?;
        let mut rows = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(16) {
            let images = chunk
                .iter()
                .map(|p| load_image(p, &ImageLimits::default()))
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(encoder.encode(&images)?);
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let embeddings = ndarray::concatenate(ndarray::Axis(0), &views)?;
        (
            Pca::fit(embeddings.view())?,
            format!("fit on {} images in {}", paths.len(), dir.display()),
        )
    } else if let Some(path) = &args.embeddings {
        let embeddings = npy::read_embeddings(path)?;
        (
            Pca::fit(embeddings.view())?,
            format!(
                "fit on {} embeddings in {}",
                embeddings.nrows(),
                path.display()
            ),
        )
    } else if let Some(path) = &args.basis {
        (Pca::load(path)?, format!("basis {}", path.display()))
    } else {
        bail!("give --fit DIR, --embeddings FILE.npy or --basis FILE.npz");
    };
    if let Some(path) = &args.save_basis {
        pca.save(path)?;
        if !quiet {
            eprintln!(
                "saved the basis ({} components) to {}",
                pca.num_components(),
                path.display()
            );
        }
    }
    let Some(source) = &args.source else {
        if args.save_basis.is_none() {
            bail!("nothing to do: give --source to probe an embedding, or --save-basis");
        }
        return Ok(());
    };
    let (source, source_name) = endpoint(source)?;
    let mut settings = settings(
        &args.common,
        args.prior_guidance_scale,
        args.decoder_guidance_scale,
    );
    let mut bars = Bars::new(quiet);
    if args.invert {
        invert_subject(&pipeline, &source, &mut settings, &mut bars)?;
    }
    let exploration = pipeline.pca_probe(&pca, &source, &args.components, &settings, &mut |p| {
        bars.update(p)
    })?;
    bars.finish();
    let mut layout = SheetLayout::new(args.components.len().min(8));
    layout.cell = Some(cell(&args.common, &pipeline));
    layout.title = Some(format!("PCA of {source_name}"));
    layout.captions = exploration.labels.clone();
    let out = args.common.out.clone().unwrap_or_else(|| "pca".into());
    let meta = vec![
        ("command".to_string(), "pca".to_string()),
        ("source".into(), source_name),
        ("basis".into(), basis_name),
        (
            "components".into(),
            args.components
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
    ];
    let output = Output {
        out: &out,
        layout,
        gif_ms: None,
        json: args.common.json,
        quiet,
    };
    output.write(&pipeline, &exploration, &settings, meta)
}

pub fn sweep(args: SweepArgs, quiet: bool) -> Result<()> {
    let pipeline = load(&args.common.runtime)?;
    let settings = settings(&args.common, None, None);
    let mut bars = Bars::new(quiet);
    let exploration = pipeline.guidance_sweep(
        &args.prompt,
        &args.prior_guidance_scale,
        &args.decoder_guidance_scale,
        &settings,
        &mut |p| bars.update(p),
    )?;
    bars.finish();
    let mut layout = SheetLayout::new(args.decoder_guidance_scale.len());
    layout.cell = Some(cell(&args.common, &pipeline));
    layout.title = Some(format!("{:?}, seed {}", args.prompt, settings.seed));
    layout.row_labels = args
        .prior_guidance_scale
        .iter()
        .map(|s| s.to_string())
        .collect();
    layout.column_labels = args
        .decoder_guidance_scale
        .iter()
        .map(|s| s.to_string())
        .collect();
    layout.row_axis = Some("prior guidance scale".into());
    layout.column_axis = Some("decoder guidance scale".into());
    let out = args.common.out.clone().unwrap_or_else(|| "sweep".into());
    let meta = vec![
        ("command".to_string(), "sweep".to_string()),
        ("prompt".into(), args.prompt.clone()),
        (
            "prior_guidance_scales".into(),
            serde_json::to_string(&args.prior_guidance_scale)?,
        ),
        (
            "decoder_guidance_scales".into(),
            serde_json::to_string(&args.decoder_guidance_scale)?,
        ),
    ];
    let output = Output {
        out: &out,
        layout,
        gif_ms: None,
        json: args.common.json,
        quiet,
    };
    output.write(&pipeline, &exploration, &settings, meta)
}
