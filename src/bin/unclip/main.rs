//! The `unclip` command line: a thin shell over the library.

mod bench;
mod explore;
mod flags;
mod frames;
mod generate;
mod info;
mod models;
mod output;
mod progress;
mod reproduce;
#[cfg(feature = "server")]
mod serve;
mod sheet;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bench::{bench, BenchArgs};
use generate::{generate, vary, GenerateArgs, VaryArgs};
use info::info;
use progress::INTERRUPTED;
#[cfg(feature = "server")]
use serve::{serve, ServeArgs};

#[derive(Parser)]
#[command(
    name = "unclip",
    version,
    about = "unCLIP (DALL·E 2) text-to-image on ONNX Runtime"
)]
struct Cli {
    /// No progress bars or log lines on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from prompts.
    Generate(GenerateArgs),
    /// Image variations: decode each image's CLIP embedding N times (DALL·E 2 §3.1).
    Vary(VaryArgs),
    /// Interpolate between two images or prompts (DALL·E 2 §3.2): frames, contact sheet, GIF.
    Interpolate(explore::InterpolateArgs),
    /// Text diff (§3.3): move an image's embedding toward the direction between two captions.
    Textdiff(explore::TextDiffArgs),
    /// PCA probing (§3.4): decode an embedding rebuilt from its first k principal components.
    Pca(explore::PcaArgs),
    /// Guidance sweep: one grid over prior × decoder guidance scales, same seed.
    Sweep(explore::SweepArgs),
    /// Re-make an image from the reproduction record in its PNG.
    Reproduce(reproduce::ReproduceArgs),
    /// Time every stage over several runs; JSON on stdout.
    Bench(BenchArgs),
    /// HTTP server speaking the OpenAI Images API (see README).
    #[cfg(feature = "server")]
    Serve(ServeArgs),
    /// Print a bundle's stages, shapes and defaults.
    Info {
        /// Bundle directory (default: $UNCLIP_MODEL, else models/shapes; README "Models").
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` handles SIGINT/SIGTERM itself (graceful shutdown).
    #[cfg(feature = "server")]
    let serving = matches!(cli.command, Command::Serve(_));
    #[cfg(not(feature = "server"))]
    let serving = false;
    if !serving {
        let _ = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                // A second Ctrl-C while a model call is running: leave at once.
                std::process::exit(130);
            }
        });
    }
    if !cli.quiet {
        let filter = tracing_subscriber::EnvFilter::try_from_env("UNCLIP_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Generate(args) => generate(args, cli.quiet),
        Command::Vary(args) => vary(args, cli.quiet),
        Command::Interpolate(args) => explore::interpolate(args, cli.quiet),
        Command::Textdiff(args) => explore::textdiff(args, cli.quiet),
        Command::Pca(args) => explore::pca(args, cli.quiet),
        Command::Sweep(args) => explore::sweep(args, cli.quiet),
        Command::Reproduce(args) => reproduce::reproduce(args, cli.quiet),
        Command::Bench(args) => bench(args, cli.quiet),
        #[cfg(feature = "server")]
        Command::Serve(args) => serve(args, cli.quiet),
        Command::Info { model } => info(model),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<unclip::Error>()
                .is_some_and(|e| e.kind() == unclip::ErrorKind::Cancelled) =>
        {
            eprintln!("interrupted: nothing written");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the line already holds
/// (library errors spell out their I/O cause in their own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
