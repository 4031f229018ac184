//! `unclip reproduce`: re-make an image from the record in its PNG text chunks.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use unclip::image_io::{read_png_text, save_png};
use unclip::pipeline::Reproduction;

use crate::flags::{load, RuntimeArgs};
use crate::output::check_output;
use crate::progress::Bars;

#[derive(Args)]
pub(crate) struct ReproduceArgs {
    #[command(flatten)]
    pub(crate) runtime: RuntimeArgs,
    /// A PNG written by unclip (any command, or the server).
    pub(crate) image: PathBuf,
    /// Where to write the re-made image (it carries the same record).
    #[arg(long, short, default_value = "reproduced.png")]
    pub(crate) out: PathBuf,
    /// Compare the re-made pixels with IMAGE's: exit 1 if any differs.
    #[arg(long)]
    pub(crate) check: bool,
}

pub(crate) fn reproduce(args: ReproduceArgs, quiet: bool) -> Result<()> {
    check_output(&args.out)?;
    let text = read_png_text(&args.image)?;
    let record = Reproduction::from_png_text(&text).with_context(|| {
        format!(
            "reading the reproduction record of {}",
            args.image.display()
        )
    })?;
    let pipeline = load(&args.runtime)?;
    let mut bars = Bars::new(quiet);
    let image = pipeline.reproduce(&record, &mut |p| bars.update(p))?;
    bars.finish();
    save_png(&args.out, &image, &text)
        .with_context(|| format!("writing {}", args.out.display()))?;
    if !quiet {
        eprintln!("wrote {}", args.out.display());
    }
    if args.check {
        let source = image::open(&args.image)
            .with_context(|| format!("reading {}", args.image.display()))?
            .into_rgb8();
        if source.dimensions() != image.dimensions() {
            bail!(
                "{} is {}x{}, the re-made image {}x{}",
                args.image.display(),
                source.width(),
                source.height(),
                image.width(),
                image.height()
            );
        }
        let differing = source
            .pixels()
            .zip(image.pixels())
            .filter(|(a, b)| a != b)
            .count();
        if differing > 0 {
            bail!(
                "{differing} of {} pixels differ from {}",
                source.pixels().len(),
                args.image.display()
            );
        }
        if !quiet {
            eprintln!("identical to {}", args.image.display());
        }
    }
    Ok(())
}
