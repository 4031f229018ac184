//! `unclip generate` and `unclip vary`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use unclip::pipeline::{Seed, TextToImage};
use unclip::{noise, npy};

use crate::flags::{load, request, DecodeArgs, NoiseArgs, RuntimeArgs, SamplingArgs};
use crate::output::{check_output, output_paths, report, write_dump};
use crate::progress::Bars;

#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
    #[command(flatten)]
    pub(crate) sampling: SamplingArgs,
    /// Output PNG; several images become OUT_0.png, OUT_1.png, ….
    #[arg(long, short, default_value = "out.png")]
    pub(crate) out: PathBuf,
    /// Write every intermediate tensor as .npy into this directory.
    #[arg(long)]
    pub(crate) dump: Option<PathBuf>,
    /// Save the image embeddings used (.npy) for reuse with --image-embedding.
    #[arg(long)]
    pub(crate) save_image_embedding: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct VaryArgs {
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
    /// Source images (PNG, JPEG or WebP).
    #[arg(required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// Variations per image.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub(crate) num_images: usize,
    #[command(flatten)]
    pub(crate) noise: NoiseArgs,
    #[command(flatten)]
    pub(crate) decode: DecodeArgs,
    #[arg(long)]
    pub(crate) decoder_guidance_scale: Option<f32>,
    /// Paper-faithful variations (DALL·E 2 §3.1): DDIM-invert each image through the decoder,
    /// then decode with DDIM at --eta (0 reconstructs the source; prints the error); implies
    /// the ddim decoder scheduler.
    #[arg(long)]
    pub(crate) invert: bool,
    /// Output PNG; several images become OUT_0.png, OUT_1.png, ….
    #[arg(long, short, default_value = "variation.png")]
    pub(crate) out: PathBuf,
    /// Write every intermediate tensor as .npy into this directory.
    #[arg(long)]
    pub(crate) dump: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn generate(args: GenerateArgs, quiet: bool) -> Result<()> {
    check_output(&args.out)?;
    let pipeline = load(&args.runtime)?;
    let request = request(&args.sampling, args.dump.is_some())?;
    let seed = args.sampling.noise.seed_or_random();
    let mut noise = noise::noise_source(args.sampling.noise.rng, seed);
    let mut bars = Bars::new(quiet);
    let generation = pipeline.generate(&request, noise.as_mut(), &mut |p| bars.update(p))?;
    bars.finish();
    let paths = output_paths(&args.out, generation.images.len());
    for (i, (image, path)) in generation.images.iter().zip(&paths).enumerate() {
        let mut extra: Vec<(String, String)> = Vec::new();
        if let Some(file) = &args.sampling.image_embedding {
            extra.push(("image_embedding_file".into(), file.display().to_string()));
        }
        if let Some(file) = &args.sampling.init_image {
            extra.push(("init_image_file".into(), file.display().to_string()));
        }
        let meta = generation.png_metadata(
            "generate",
            Seed::new(args.sampling.noise.rng, seed),
            i,
            &extra,
        )?;
        unclip::image_io::save_png(path, image, &meta)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.save_image_embedding {
        npy::write(
            path,
            &unclip::pipeline::Tensor::F32(generation.image_embeddings.clone().into_dyn()),
        )?;
    }
    write_dump(args.dump.as_deref(), &generation)?;
    report(
        &paths,
        seed,
        args.sampling.noise.rng,
        &generation,
        args.json,
        quiet,
    );
    Ok(())
}

pub(crate) fn vary(args: VaryArgs, quiet: bool) -> Result<()> {
    check_output(&args.out)?;
    let pipeline = load(&args.runtime)?;
    let limits = unclip::vision::ImageLimits::default();
    let images = args
        .images
        .iter()
        .map(|path| unclip::vision::load_image(path, &limits))
        .collect::<Result<Vec<_>, _>>()?;
    let request = args.decode.apply(TextToImage {
        num_images_per_prompt: Some(args.num_images),
        decoder_guidance_scale: args.decoder_guidance_scale,
        record_intermediates: args.dump.is_some(),
        ..Default::default()
    });
    let seed = args.noise.seed_or_random();
    let mut noise = noise::noise_source(args.noise.rng, seed);
    let mut bars = Bars::new(quiet);
    let (generation, inversion) = if args.invert {
        let (generation, inversion) =
            pipeline.vary_inverted(&images, &request, noise.as_mut(), &mut |p| bars.update(p))?;
        (generation, Some(inversion))
    } else {
        let generation =
            pipeline.vary(&images, &request, noise.as_mut(), &mut |p| bars.update(p))?;
        (generation, None)
    };
    bars.finish();
    let paths = output_paths(&args.out, generation.images.len());
    let s = &generation.settings;
    for (i, (image, path)) in generation.images.iter().zip(&paths).enumerate() {
        let source = &args.images[i / s.num_images_per_prompt.max(1)];
        let mut extra = vec![("source_image".to_string(), source.display().to_string())];
        if let Some(inversion) = &inversion {
            extra.push(("ddim_inversion".into(), "true".into()));
            extra.push((
                "source_mean_abs_error".into(),
                inversion.mean_abs_error[i].to_string(),
            ));
        }
        let meta = generation.png_metadata("vary", Seed::new(args.noise.rng, seed), i, &extra)?;
        unclip::image_io::save_png(path, image, &meta)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    write_dump(args.dump.as_deref(), &generation)?;
    if let Some(inversion) = &inversion {
        if let Some(dir) = &args.dump {
            npy::write(
                &dir.join("inverted_latents.npy"),
                &unclip::pipeline::Tensor::F32(inversion.latents.clone().into_dyn()),
            )?;
        }
        if args.json {
            println!(
                "{}",
                json!({
                    "images": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                    "seed": seed,
                    "eta": generation.settings.eta,
                    "mean_abs_error": inversion.mean_abs_error,
                    "psnr_db": inversion.psnr,
                })
            );
            return Ok(());
        }
        if !quiet {
            for (path, (mae, psnr)) in paths
                .iter()
                .zip(inversion.mean_abs_error.iter().zip(&inversion.psnr))
            {
                eprintln!(
                    "{}: 64×64 decoder output vs source: mean |Δ| {mae:.4} (of 2), PSNR {psnr:.2} dB (η {})",
                    path.display(),
                    generation.settings.eta
                );
            }
        }
    }
    report(&paths, seed, args.noise.rng, &generation, args.json, quiet);
    Ok(())
}
