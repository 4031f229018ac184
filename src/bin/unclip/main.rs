//! The `unclip` command line: a thin shell over the library.

mod explore;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::json;
use unclip::bundle::{Bundle, Dim};
use unclip::pipeline::{Generation, TextToImage};
use unclip::runtime::{OpenVinoOptions, Precision, TensorRtOptions};
use unclip::schedulers::SchedulerKind;
use unclip::stages::{Progress, Stage};
use unclip::{noise, npy, Device, Pipeline, RngKind, Runtime};

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
    /// Time every stage over several runs; JSON on stdout.
    Bench(BenchArgs),
    /// HTTP server speaking the OpenAI Images API (see README).
    Serve(ServeArgs),
    /// Print a bundle's stages, shapes and defaults.
    Info {
        /// Bundle directory (default: $UNCLIP_MODEL, else models/shapes; README "Models").
        #[arg(long)]
        model: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct RuntimeArgs {
    /// Bundle directory (default: $UNCLIP_MODEL, else models/shapes next to the executable, in the
    /// current directory or in the source tree; README "Models").
    #[arg(long)]
    model: Option<PathBuf>,
    /// cpu, cuda[:N], tensorrt[:N] or openvino[:CPU|GPU[.N]|NPU] (README "Devices and precision").
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 (exact, the default), bf16 (OpenVINO CPU), fp16 (TensorRT, OpenVINO GPU/NPU) or auto
    /// (the fastest the device has: bf16 on OpenVINO with AMX or AVX-512-BF16).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// OpenVINO: compiled-model cache directory, so a second load skips compilation
    /// (default: $XDG_CACHE_HOME/unclip/openvino or ~/.cache/unclip/openvino; "none" disables it).
    #[arg(long)]
    openvino_cache_dir: Option<PathBuf>,
    /// OpenVINO: the plugin library (default: UNCLIP_OPENVINO_PLUGIN, then .ort/openvino/ beside
    /// ONNX Runtime, written by `scripts/setup-ort --openvino`).
    #[arg(long)]
    openvino_plugin: Option<PathBuf>,
    /// CPU: ONNX Runtime's optimized graphs, saved at a model's first load so later loads skip
    /// graph optimization (keyed by the model, ONNX Runtime and the CPU; as large as the
    /// weights). Default: $XDG_CACHE_HOME/unclip/graphs or ~/.cache/unclip/graphs with
    /// --device cpu; "none" disables it.
    #[arg(long, value_name = "DIR")]
    graph_cache_dir: Option<PathBuf>,
    /// Intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Idle intra-op threads spin between operators instead of sleeping (lower latency, busy
    /// cores; off by default).
    #[arg(long)]
    spin: bool,
    /// Do not pre-pack constant weights at session creation (ONNX Runtime's default is to;
    /// for measuring it, docs/benchmarks.md).
    #[arg(long)]
    no_prepack: bool,
    /// Keep a model's session only while its stage runs (peak memory about the largest stage,
    /// not the sum; each run re-creates the sessions).
    #[arg(long)]
    low_memory: bool,
    /// Most images per super-resolution model call (default 1; larger batches are split, same
    /// images). Memory grows with it; raise it on a GPU.
    #[arg(long)]
    upsampler_batch: Option<usize>,
    /// Path of libonnxruntime (default: ORT_DYLIB_PATH, then the usual places; see README).
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Re-hash model files at load: always, cached (only files changed since their last
    /// verification) or never.
    #[arg(long, default_value = "cached")]
    verify: unclip::verify::Verify,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    trt_fp16: bool,
    /// TensorRT: engine and timing cache directory.
    #[arg(long)]
    trt_cache_dir: Option<PathBuf>,
    /// TensorRT: builder workspace limit in MiB.
    #[arg(long)]
    trt_workspace_mib: Option<usize>,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Prompts (several prompts make one batch; none = the empty prompt).
    prompts: Vec<String>,
    /// Seed of the noise generator (default: random, printed and stored in the PNG).
    #[arg(long)]
    seed: Option<u64>,
    /// Noise generator: torch (bit-exact with torch.Generator("cpu"), same images as diffusers) or fast.
    #[arg(long, default_value = "fast")]
    rng: RngKind,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    num_images: usize,
    /// Replaces the empty prompt of classifier-free guidance.
    #[arg(long)]
    negative_prompt: Option<String>,
    #[arg(long)]
    prior_steps: Option<usize>,
    #[arg(long)]
    decoder_steps: Option<usize>,
    /// Steps per upsampler, comma-separated (e.g. 7 or 7,5).
    #[arg(long, value_delimiter = ',')]
    sr_steps: Vec<usize>,
    #[arg(long)]
    prior_guidance_scale: Option<f32>,
    #[arg(long)]
    decoder_guidance_scale: Option<f32>,
    /// Use these CLIP image embeddings (.npy, (D,) or (N, D)) instead of running the prior.
    #[arg(long)]
    image_embedding: Option<PathBuf>,
    /// Prior scheduler: unclip (the bundle's), ddim or dpm++.
    #[arg(long)]
    prior_scheduler: Option<SchedulerKind>,
    /// Decoder scheduler: unclip (the bundle's), ddim or dpm++.
    #[arg(long)]
    decoder_scheduler: Option<SchedulerKind>,
    /// Super-resolution scheduler (every upsampler): unclip (the bundle's), ddim or dpm++.
    #[arg(long)]
    sr_scheduler: Option<SchedulerKind>,
    /// DDIM's η for the stages that run ddim (0 = deterministic, 1 = DDPM-like).
    #[arg(long)]
    eta: Option<f32>,
    /// Image side to make: the decoder's or an upsampler's (`unclip info` lists them); later
    /// stages are skipped. Default: the largest.
    #[arg(long)]
    size: Option<usize>,
    /// What conditions the decoder (DALL·E 2 §5.1 ablation): prior (the prior's image
    /// embedding), text-embedding (the caption's CLIP text embedding in its place) or caption
    /// (a zero image embedding: the caption's tokens alone).
    #[arg(long, default_value = "prior")]
    decoder_condition: unclip::DecoderCondition,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Output PNG; several images become OUT_0.png, OUT_1.png, ….
    #[arg(long, short, default_value = "out.png")]
    out: PathBuf,
    /// Write every intermediate tensor as .npy into this directory.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Save the image embeddings used (.npy) for reuse with --image-embedding.
    #[arg(long)]
    save_image_embedding: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VaryArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Source images (PNG, JPEG or WebP).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Variations per image.
    #[arg(short = 'n', long, default_value_t = 1)]
    num_images: usize,
    /// Seed of the noise generator (default: random, printed and stored in the PNG).
    #[arg(long)]
    seed: Option<u64>,
    /// Noise generator: torch (same images as diffusers) or fast.
    #[arg(long, default_value = "fast")]
    rng: RngKind,
    #[arg(long)]
    decoder_steps: Option<usize>,
    /// Steps per upsampler, comma-separated.
    #[arg(long, value_delimiter = ',')]
    sr_steps: Vec<usize>,
    #[arg(long)]
    decoder_guidance_scale: Option<f32>,
    /// Paper-faithful variations (DALL·E 2 §3.1): DDIM-invert each image through the decoder,
    /// then decode with DDIM at --eta (0 reconstructs the source; prints the error).
    #[arg(long)]
    invert: bool,
    /// Decoder scheduler: unclip (the bundle's), ddim or dpm++ (--invert implies ddim).
    #[arg(long)]
    decoder_scheduler: Option<SchedulerKind>,
    /// Super-resolution scheduler: unclip (the bundle's), ddim or dpm++.
    #[arg(long)]
    sr_scheduler: Option<SchedulerKind>,
    /// DDIM's η for the stages that run ddim.
    #[arg(long)]
    eta: Option<f32>,
    /// Output PNG; several images become OUT_0.png, OUT_1.png, ….
    #[arg(long, short, default_value = "variation.png")]
    out: PathBuf,
    /// Write every intermediate tensor as .npy into this directory.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Address to bind (loopback by default; use 0.0.0.0 behind a load balancer).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Generation jobs waiting before new ones get 429.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Compatible jobs run together in one batch.
    #[arg(long, default_value_t = 4)]
    max_batch: usize,
    /// Seconds a request may wait and run before it gets 504 and is cancelled.
    #[arg(long, default_value_t = 300)]
    request_timeout: u64,
    /// Require `Authorization: Bearer KEY` on /v1/* (or set UNCLIP_API_KEY).
    #[arg(long, env = "UNCLIP_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 20)]
    max_body_mib: usize,
    /// Seconds to finish accepted work after SIGTERM.
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// Peak resident memory the server may reach, in MiB: measured at start (two one-step runs),
    /// then requests that would exceed it get 400 and batches stay within it. Default: no budget.
    #[arg(long)]
    memory_budget_mib: Option<u64>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
}

/// Set by Ctrl-C (SIGINT): the running command stops at the next denoising step and
/// writes nothing.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` handles SIGINT/SIGTERM itself (graceful shutdown).
    if !matches!(cli.command, Command::Serve(_)) {
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
        Command::Bench(args) => bench(args, cli.quiet),
        Command::Serve(args) => serve(args, cli.quiet),
        Command::Info { model } => info(model),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<unclip::Error>()
                .is_some_and(|e| matches!(e, unclip::Error::Cancelled)) =>
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

/// A cache directory flag: the given one, none for "none", else `unclip/<name>` in
/// $XDG_CACHE_HOME or ~/.cache.
fn cache_dir(flag: &Option<PathBuf>, name: &str) -> Option<PathBuf> {
    match flag {
        Some(dir) if dir.as_os_str() == "none" => None,
        Some(dir) => Some(dir.clone()),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|cache| cache.join("unclip").join(name)),
    }
}

fn runtime(args: &RuntimeArgs) -> Result<Runtime> {
    let device: Device = args.device.parse()?;
    let precision: Precision = args.precision.parse()?;
    let openvino_cache = cache_dir(&args.openvino_cache_dir, "openvino");
    // the graph cache is the CPU device's: by default only there, and refused elsewhere if asked
    let graph_cache = match (&args.graph_cache_dir, &device) {
        (None, Device::Cpu) | (Some(_), _) => cache_dir(&args.graph_cache_dir, "graphs"),
        (None, _) => None,
    };
    let mut builder = Runtime::builder()
        .device(device)
        .precision(precision)
        .tensorrt(TensorRtOptions {
            fp16: args.trt_fp16,
            cache_dir: args.trt_cache_dir.clone(),
            max_workspace_size: args.trt_workspace_mib.map(|m| m << 20),
        })
        .openvino(OpenVinoOptions {
            plugin: args.openvino_plugin.clone(),
            cache_dir: openvino_cache,
        })
        .low_memory(args.low_memory)
        .spinning(args.spin)
        .prepacking(!args.no_prepack);
    if let Some(images) = args.upsampler_batch {
        builder = builder.upsampler_batch(images);
    }
    if let Some(dir) = graph_cache {
        builder = builder.graph_cache_dir(dir);
    }
    if let Some(lib) = &args.ort_lib {
        builder = builder.library(lib);
    }
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        builder = builder.threads(threads);
    }
    Ok(builder.build()?)
}

fn load(args: &RuntimeArgs) -> Result<Pipeline> {
    let model = match &args.model {
        Some(dir) => dir.clone(),
        None => unclip::bundle::default_dir()?,
    };
    let runtime = runtime(args)?;
    let verification = unclip::verify::Verification::new(args.verify);
    Bundle::open_with(&model, &verification)
        .and_then(|bundle| Pipeline::from_bundle(&runtime, bundle))
        .with_context(|| format!("loading bundle {}", model.display()))
}

fn request(args: &SamplingArgs, record: bool) -> Result<TextToImage> {
    let prompts = if args.prompts.is_empty() {
        vec![String::new()]
    } else {
        args.prompts.clone()
    };
    let image_embeddings = match &args.image_embedding {
        Some(path) => Some(npy::read_embeddings(path)?),
        None => None,
    };
    Ok(TextToImage {
        prompts,
        negative_prompt: args.negative_prompt.clone(),
        num_images_per_prompt: Some(args.num_images),
        prior_steps: args.prior_steps,
        decoder_steps: args.decoder_steps,
        super_res_steps: args.sr_steps.clone(),
        prior_guidance_scale: args.prior_guidance_scale,
        decoder_guidance_scale: args.decoder_guidance_scale,
        image_embeddings,
        record_intermediates: record,
        prior_scheduler: args.prior_scheduler,
        decoder_scheduler: args.decoder_scheduler,
        super_res_scheduler: args.sr_scheduler,
        eta: args.eta,
        output_size: args.size,
        decoder_latents: None,
        decoder_condition: args.decoder_condition,
    })
}

/// A seed for runs without --seed (printed and stored in the PNG, so still reproducible).
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (std::process::id() as u64).rotate_left(32)
}

/// Progress bars, one per stage, on stderr.
struct Bars {
    multi: Option<MultiProgress>,
    current: Option<(Stage, ProgressBar)>,
}

impl Bars {
    fn new(quiet: bool) -> Self {
        Bars {
            multi: (!quiet).then(MultiProgress::new),
            current: None,
        }
    }

    fn update(&mut self, p: Progress) -> ControlFlow<()> {
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return ControlFlow::Break(());
        }
        let Some(multi) = &self.multi else {
            return ControlFlow::Continue(());
        };
        if p.stage == Stage::Text {
            return ControlFlow::Continue(());
        }
        if self
            .current
            .as_ref()
            .is_none_or(|(stage, _)| *stage != p.stage)
        {
            if let Some((_, bar)) = self.current.take() {
                bar.finish();
            }
            let bar = multi.add(ProgressBar::new(p.steps as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(p.stage.to_string());
            self.current = Some((p.stage, bar));
        }
        if let Some((_, bar)) = &self.current {
            bar.set_position(p.step as u64);
        }
        ControlFlow::Continue(())
    }

    fn finish(&mut self) {
        if let Some((_, bar)) = self.current.take() {
            bar.finish();
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

/// Fails before any model runs when `out` cannot be written: its directory must exist and take
/// a new file (outputs are written atomically there: temporary file, then rename).
fn check_output(out: &Path) -> Result<()> {
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

fn output_paths(out: &Path, count: usize) -> Vec<PathBuf> {
    if count == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    (0..count)
        .map(|i| out.with_file_name(format!("{stem}_{i}.{ext}")))
        .collect()
}

/// PNG metadata shared by every command: what reproduces the decoder and upsamplers.
fn base_metadata(
    pipeline: &Pipeline,
    seed: u64,
    rng: RngKind,
    generation: &Generation,
    index: usize,
) -> Vec<(String, String)> {
    let s = &generation.settings;
    let bundle = pipeline.bundle();
    let super_res: Vec<String> = s.super_res_steps.iter().map(ToString::to_string).collect();
    vec![
        ("seed".into(), seed.to_string()),
        ("rng".into(), rng.to_string()),
        (
            "num_images_per_prompt".into(),
            s.num_images_per_prompt.to_string(),
        ),
        ("image_index".into(), index.to_string()),
        ("decoder_steps".into(), s.decoder_steps.to_string()),
        ("super_res_steps".into(), super_res.join(",")),
        ("decoder_scheduler".into(), s.decoder_scheduler.to_string()),
        (
            "super_res_scheduler".into(),
            s.super_res_scheduler
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("eta".into(), s.eta.to_string()),
        (
            "decoder_guidance_scale".into(),
            s.decoder_guidance_scale.to_string(),
        ),
        ("model".into(), bundle.manifest.name.clone()),
        ("model_sha256".into(), bundle.manifest_sha256.clone()),
        (
            "unclip_version".into(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]
}

/// Everything needed to reproduce a generated image, stored as PNG text chunks.
fn metadata(
    pipeline: &Pipeline,
    args: &SamplingArgs,
    seed: u64,
    generation: &Generation,
    index: usize,
) -> Vec<(String, String)> {
    let s = &generation.settings;
    let prompts = if args.prompts.is_empty() {
        vec![String::new()]
    } else {
        args.prompts.clone()
    };
    let mut meta = vec![
        (
            "prompt".to_string(),
            prompts[index / s.num_images_per_prompt.max(1)].clone(),
        ),
        (
            "batch_prompts".into(),
            serde_json::to_string(&prompts).unwrap_or_default(),
        ),
        ("prior_steps".into(), s.prior_steps.to_string()),
        ("prior_scheduler".into(), s.prior_scheduler.to_string()),
        (
            "prior_guidance_scale".into(),
            s.prior_guidance_scale.to_string(),
        ),
    ];
    meta.extend(base_metadata(pipeline, seed, args.rng, generation, index));
    if let Some(negative) = &args.negative_prompt {
        meta.push(("negative_prompt".into(), negative.clone()));
    }
    if let Some(path) = &args.image_embedding {
        meta.push(("image_embedding".into(), path.display().to_string()));
    }
    if s.decoder_condition != unclip::DecoderCondition::Prior {
        meta.push(("decoder_condition".into(), s.decoder_condition.to_string()));
    }
    meta
}

fn generate(args: GenerateArgs, quiet: bool) -> Result<()> {
    check_output(&args.out)?;
    let pipeline = load(&args.runtime)?;
    let request = request(&args.sampling, args.dump.is_some())?;
    let seed = args.sampling.seed.unwrap_or_else(random_seed);
    let mut noise = noise::noise_source(args.sampling.rng, seed);
    let mut bars = Bars::new(quiet);
    let generation = pipeline.generate(&request, noise.as_mut(), &mut |p| bars.update(p))?;
    bars.finish();
    let paths = output_paths(&args.out, generation.images.len());
    for (i, (image, path)) in generation.images.iter().zip(&paths).enumerate() {
        let meta = metadata(&pipeline, &args.sampling, seed, &generation, i);
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
        args.sampling.rng,
        &generation,
        args.json,
        quiet,
    );
    Ok(())
}

fn vary(args: VaryArgs, quiet: bool) -> Result<()> {
    check_output(&args.out)?;
    let pipeline = load(&args.runtime)?;
    let limits = unclip::vision::ImageLimits::default();
    let images = args
        .images
        .iter()
        .map(|path| unclip::vision::load_image(path, &limits))
        .collect::<Result<Vec<_>, _>>()?;
    let request = TextToImage {
        num_images_per_prompt: Some(args.num_images),
        decoder_steps: args.decoder_steps,
        super_res_steps: args.sr_steps.clone(),
        decoder_guidance_scale: args.decoder_guidance_scale,
        record_intermediates: args.dump.is_some(),
        decoder_scheduler: args.decoder_scheduler,
        super_res_scheduler: args.sr_scheduler,
        eta: args.eta,
        ..Default::default()
    };
    let seed = args.seed.unwrap_or_else(random_seed);
    let mut noise = noise::noise_source(args.rng, seed);
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
        let mut meta = vec![("source_image".to_string(), source.display().to_string())];
        meta.extend(base_metadata(&pipeline, seed, args.rng, &generation, i));
        if let Some(inversion) = &inversion {
            meta.push(("ddim_inversion".into(), "true".into()));
            meta.push((
                "source_mean_abs_error".into(),
                inversion.mean_abs_error[i].to_string(),
            ));
        }
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
    report(&paths, seed, args.rng, &generation, args.json, quiet);
    Ok(())
}

fn serve(args: ServeArgs, quiet: bool) -> Result<()> {
    let pipeline = std::sync::Arc::new(load(&args.runtime)?);
    let config = unclip::server::ServerConfig {
        addr: std::net::SocketAddr::new(args.host, args.port),
        max_queue: args.max_queue,
        max_batch: args.max_batch,
        request_timeout: std::time::Duration::from_secs(args.request_timeout),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_mib << 20,
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        memory_budget: args.memory_budget_mib.map(|m| m.saturating_mul(1 << 20)),
        ..Default::default()
    };
    if config.max_queue == 0 || config.max_batch == 0 {
        bail!("--max-queue and --max-batch must be at least 1");
    }
    let mut config = config;
    if let Some(budget) = config.memory_budget {
        let model = unclip::server::memory::MemoryModel::calibrate(&pipeline)?;
        if !quiet {
            eprintln!(
                "memory budget {} MiB: {} MiB + {} MiB per image measured, at most {} images per run",
                budget >> 20,
                model.base_bytes >> 20,
                model.per_image_bytes >> 20,
                model.max_images(budget)
            );
        }
        config.memory_model = Some(model);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let local = listener.local_addr()?;
        if !quiet {
            eprintln!(
                "serving {} on http://{local} (sizes {:?}, queue {}, batch {}{})",
                pipeline.bundle().manifest.name,
                pipeline.sizes(),
                config.max_queue,
                config.max_batch,
                if config.api_key.is_some() {
                    ", API key required"
                } else {
                    ""
                }
            );
        }
        unclip::server::serve(
            pipeline,
            config,
            listener,
            unclip::server::shutdown_signal(),
        )
        .await?;
        Ok(())
    })
}

fn write_dump(dir: Option<&Path>, generation: &Generation) -> Result<()> {
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, tensor) in &generation.intermediates {
            npy::write(&dir.join(format!("{name}.npy")), tensor)?;
        }
    }
    Ok(())
}

fn report(
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

fn stats(values: &mut [f64]) -> serde_json::Value {
    values.sort_by(|a, b| a.total_cmp(b));
    let median = if values.is_empty() {
        0.0
    } else if values.len() % 2 == 1 {
        values[values.len() / 2]
    } else {
        (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0
    };
    json!({
        "min": values.first().copied().unwrap_or(0.0),
        "median": median,
        "max": values.last().copied().unwrap_or(0.0),
    })
}

fn bench(args: BenchArgs, quiet: bool) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let load_started = Instant::now();
    let pipeline = load(&args.runtime)?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    let request = request(&args.sampling, false)?;
    let seed = args.sampling.seed.unwrap_or(0);
    let mut per_stage: Vec<(String, Vec<f64>)> = Vec::new();
    let (mut wall, mut ort) = (0.0, 0.0);
    let mut settings = None;
    for run in 0..args.warmup + args.runs {
        let mut noise = noise::noise_source(args.sampling.rng, seed);
        let generation =
            pipeline.generate(&request, noise.as_mut(), &mut |_| ControlFlow::Continue(()))?;
        if !quiet {
            let total = generation.timings.last().map_or(0.0, |t| t.seconds);
            eprintln!(
                "run {run}{}: {total:.3} s",
                if run < args.warmup { " (warmup)" } else { "" }
            );
        }
        if run < args.warmup {
            continue;
        }
        for timing in &generation.timings {
            match per_stage
                .iter_mut()
                .find(|(stage, _)| *stage == timing.stage)
            {
                Some((_, values)) => values.push(timing.seconds),
                None => per_stage.push((timing.stage.clone(), vec![timing.seconds])),
            }
            if timing.stage == "total" {
                wall += timing.seconds;
                ort += timing.ort_seconds;
            }
        }
        settings = Some(generation.settings);
    }
    let settings = settings.context("no timed run")?;
    let mut stages = serde_json::Map::new();
    stages.insert(
        "load".into(),
        json!({"min": load_seconds, "median": load_seconds, "max": load_seconds}),
    );
    for (stage, values) in &mut per_stage {
        stages.insert(stage.clone(), stats(values));
    }
    let report = json!({
        "model": pipeline.bundle().manifest.name,
        "device": pipeline.runtime().device().to_string(),
        "precision": pipeline.runtime().precision().to_string(),
        "low_memory": pipeline.runtime().is_low_memory(),
        "upsampler_batch": pipeline.runtime().upsampler_batch(),
        "ort_version": pipeline.runtime().ort_version(),
        "threads": pipeline.runtime().threads(),
        "spinning": pipeline.runtime().spinning(),
        "graph_cache_dir": pipeline.runtime().graph_cache_dir(),
        "prepacking": pipeline.runtime().prepacking(),
        "runs": args.runs,
        "warmup": args.warmup,
        "batch": request.prompts.len() * settings.num_images_per_prompt,
        "rng": args.sampling.rng.to_string(),
        "steps": {
            "prior": if settings.ran_prior { settings.prior_steps } else { 0 },
            "decoder": settings.decoder_steps,
            "super_res": settings.super_res_steps,
        },
        "guidance": {"prior": settings.prior_guidance_scale, "decoder": settings.decoder_guidance_scale},
        "seconds": stages,
        "outside_ort_share": if wall > 0.0 { (wall - ort) / wall } else { 0.0 },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn shape_string(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

fn info(model: Option<PathBuf>) -> Result<()> {
    let dir = match model {
        Some(dir) => dir,
        None => unclip::bundle::default_dir()?,
    };
    let bundle = Bundle::open(&dir).with_context(|| format!("opening bundle {}", dir.display()))?;
    let m = &bundle.manifest;
    println!("bundle   {} ({})", m.name, dir.display());
    println!(
        "format   {} v{}, dtype {}, source {}",
        m.format, m.format_version, m.dtype, m.source
    );
    println!("sha256   {}", bundle.manifest_sha256);
    println!(
        "tokenizer  max_length {}, pad {:?} (id {})",
        m.tokenizer.max_length, m.tokenizer.pad_token, m.tokenizer.pad_id
    );
    println!("embedding_dim {}", m.embedding_dim);
    let class = |s: &serde_json::Value| {
        format!(
            "{} variance={} prediction={}",
            s.get("_class_name").and_then(|v| v.as_str()).unwrap_or("?"),
            s.get("variance_type")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            s.get("prediction_type")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
        )
    };
    println!("stages:");
    println!("  text_encoder  model {}", m.text_encoder.model);
    if let Some(image) = &m.image_encoder {
        println!("  image_encoder model {}", image.model);
    }
    println!(
        "  prior         model {}, {} steps, guidance {}, scheduler {}",
        m.prior.model,
        m.prior.default_steps,
        m.prior.default_guidance_scale,
        class(&m.prior.scheduler)
    );
    println!(
        "  decoder       model {} (+ {}, {}), {}x{}, {} steps, guidance {}, {} extra tokens, scheduler {}",
        m.decoder.model,
        m.decoder.text_proj,
        m.decoder.text_proj_cfg,
        m.decoder.sample_size,
        m.decoder.sample_size,
        m.decoder.default_steps,
        m.decoder.default_guidance_scale,
        m.decoder.clip_extra_context_tokens,
        class(&m.decoder.scheduler)
    );
    for up in &m.upsamplers {
        println!(
            "  {:<13} models {} / {}, {}x{}, {} steps, scheduler {}",
            up.name,
            up.first,
            up.last,
            up.sample_size,
            up.sample_size,
            up.default_steps,
            class(&up.scheduler)
        );
    }
    println!("models:");
    for (key, entry) in &m.models {
        println!("  {key} ({})", entry.file);
        for spec in &entry.inputs {
            println!(
                "    in  {:<28} {:<8} {}",
                spec.name,
                spec.dtype,
                shape_string(&spec.shape)
            );
        }
        for spec in &entry.outputs {
            println!(
                "    out {:<28} {:<8} {}",
                spec.name,
                spec.dtype,
                shape_string(&spec.shape)
            );
        }
    }
    Ok(())
}
