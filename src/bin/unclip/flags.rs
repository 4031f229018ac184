//! The flags every command shares: which bundle and runtime (`RuntimeArgs`), how to sample
//! (`SamplingArgs`), and turning them into a runtime, a pipeline and a request.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use unclip::bundle::Bundle;
use unclip::pipeline::TextToImage;
use unclip::runtime::{OpenVinoOptions, Precision, TensorRtOptions};
use unclip::schedulers::SchedulerKind;
use unclip::{npy, Device, LoadOptions, Pipeline, RngKind, Runtime};

#[derive(Args, Clone)]
pub(crate) struct RuntimeArgs {
    /// Bundle directory (default: $UNCLIP_MODEL, else models/shapes next to the executable, in the
    /// current directory or in the source tree; README "Models").
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// cpu, cuda[:N], tensorrt[:N] or openvino[:CPU|GPU[.N]|NPU] (README "Devices and precision").
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
    /// f32 (exact, the default), bf16 (OpenVINO CPU), fp16 (TensorRT, OpenVINO GPU/NPU), int8
    /// (CPU, the bundle's int8 models) or auto (the fastest the device has: bf16 on OpenVINO
    /// with AMX or AVX-512-BF16; int8 on the CPU with VNNI when the bundle's int8 models passed
    /// their fidelity check).
    #[arg(long, default_value = "f32")]
    pub(crate) precision: String,
    /// OpenVINO: compiled-model cache directory, so a second load skips compilation
    /// (default: $XDG_CACHE_HOME/unclip/openvino or ~/.cache/unclip/openvino; "none" disables it).
    #[arg(long)]
    pub(crate) openvino_cache_dir: Option<PathBuf>,
    /// OpenVINO: the plugin library (default: UNCLIP_OPENVINO_PLUGIN, then .ort/openvino/ beside
    /// ONNX Runtime, written by `scripts/setup-ort --openvino`).
    #[arg(long)]
    pub(crate) openvino_plugin: Option<PathBuf>,
    /// CPU: ONNX Runtime's optimized graphs, saved at a model's first load so later loads skip
    /// graph optimization (keyed by the model, ONNX Runtime and the CPU; as large as the
    /// weights). Default: $XDG_CACHE_HOME/unclip/graphs or ~/.cache/unclip/graphs with
    /// --device cpu; "none" disables it.
    #[arg(long, value_name = "DIR")]
    pub(crate) graph_cache_dir: Option<PathBuf>,
    /// Intra-op threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Idle intra-op threads spin between operators instead of sleeping (lower latency, busy
    /// cores; off by default).
    #[arg(long)]
    pub(crate) spin: bool,
    /// Do not pre-pack constant weights at session creation (ONNX Runtime's default is to;
    /// for measuring it, docs/benchmarks.md).
    #[arg(long)]
    pub(crate) no_prepack: bool,
    /// Keep a model's session only while its stage runs (peak memory about the largest stage,
    /// not the sum; each run re-creates the sessions).
    #[arg(long)]
    pub(crate) low_memory: bool,
    /// Most images per super-resolution model call (default 1; larger batches are split, same
    /// images). Memory grows with it; raise it on a GPU.
    #[arg(long)]
    pub(crate) upsampler_batch: Option<usize>,
    /// Write every model call's inputs as .npy under DIR (calibration data for
    /// export/quantize_bundle.py).
    #[arg(long, value_name = "DIR")]
    pub(crate) capture_model_inputs: Option<PathBuf>,
    /// Path of libonnxruntime (default: ORT_DYLIB_PATH, then the usual places; see README).
    #[arg(long)]
    pub(crate) ort_lib: Option<PathBuf>,
    /// Re-hash model files at load: always, cached (only files changed since their last
    /// verification) or never.
    #[arg(long, default_value = "cached")]
    pub(crate) verify: unclip::verify::Verify,
    /// TensorRT: build fp16 engines.
    #[arg(long)]
    trt_fp16: bool,
    /// TensorRT: engine and timing cache directory.
    #[arg(long)]
    pub(crate) trt_cache_dir: Option<PathBuf>,
    /// TensorRT: builder workspace limit in MiB.
    #[arg(long)]
    pub(crate) trt_workspace_mib: Option<usize>,
}

/// The noise: every sampling command's seed and generator.
#[derive(Args, Clone)]
pub(crate) struct NoiseArgs {
    /// Seed of the noise generator (default: random, printed and stored in the PNG).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// Noise generator: torch (bit-exact with torch.Generator("cpu"), same images as diffusers) or fast.
    #[arg(long, default_value = "fast")]
    pub(crate) rng: RngKind,
}

impl NoiseArgs {
    /// `--seed`, else a random one (printed and stored in the PNG, so still reproducible).
    pub(crate) fn seed_or_random(&self) -> u64 {
        self.seed.unwrap_or_else(unclip::noise::random_seed)
    }
}

/// The prior's flags, for the commands that run it on prompts.
#[derive(Args, Clone)]
pub(crate) struct PriorArgs {
    #[arg(long)]
    pub(crate) prior_steps: Option<usize>,
    /// Prior scheduler: unclip (the bundle's), ddpm, ddim or dpm++.
    #[arg(long)]
    pub(crate) prior_scheduler: Option<SchedulerKind>,
    /// Replaces the empty prompt of classifier-free guidance.
    #[arg(long)]
    pub(crate) negative_prompt: Option<String>,
}

impl PriorArgs {
    /// `request` with these flags set.
    pub(crate) fn apply(&self, request: TextToImage) -> TextToImage {
        TextToImage {
            prior_steps: self.prior_steps,
            prior_scheduler: self.prior_scheduler,
            negative_prompt: self.negative_prompt.clone(),
            ..request
        }
    }
}

/// The decoder's and upsamplers' flags, for every command that decodes.
#[derive(Args, Clone)]
pub(crate) struct DecodeArgs {
    #[arg(long)]
    pub(crate) decoder_steps: Option<usize>,
    /// Steps per upsampler, comma-separated (e.g. 7 or 7,5).
    #[arg(long, value_delimiter = ',')]
    pub(crate) sr_steps: Vec<usize>,
    /// Decoder scheduler: unclip (the bundle's), ddpm, ddim or dpm++.
    #[arg(long)]
    pub(crate) decoder_scheduler: Option<SchedulerKind>,
    /// Super-resolution scheduler (every upsampler): unclip (the bundle's), ddpm, ddim or dpm++.
    #[arg(long)]
    pub(crate) sr_scheduler: Option<SchedulerKind>,
    /// DDIM's η for the stages that run ddim (0 = deterministic, 1 = DDPM-like).
    #[arg(long)]
    pub(crate) eta: Option<f32>,
    /// Image size, N or WxH. Karlo bundles: the decoder's side or an upsampler's (`unclip info`
    /// lists them; later stages are skipped), default the largest. Kandinsky 2.2 bundles: any
    /// multiple of 64 per side, e.g. 768x512, default the bundle's.
    #[arg(long)]
    pub(crate) size: Option<SizeArg>,
}

/// `--size`: `N` (square) or `WxH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SizeArg {
    pub(crate) width: usize,
    pub(crate) height: Option<usize>,
}

impl std::str::FromStr for SizeArg {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let side = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{s:?}: give N or WxH, e.g. 512 or 768x512"))
        };
        match s.split_once(['x', 'X']) {
            Some((w, h)) => Ok(SizeArg {
                width: side(w)?,
                height: Some(side(h)?),
            }),
            None => Ok(SizeArg {
                width: side(s)?,
                height: None,
            }),
        }
    }
}

impl DecodeArgs {
    /// `request` with these flags set.
    pub(crate) fn apply(&self, request: TextToImage) -> TextToImage {
        TextToImage {
            output_size: self.size.map(|s| s.width),
            output_height: self.size.and_then(|s| s.height),
            decoder_steps: self.decoder_steps,
            super_res_steps: self.sr_steps.clone(),
            decoder_scheduler: self.decoder_scheduler,
            super_res_scheduler: self.sr_scheduler,
            eta: self.eta,
            ..request
        }
    }
}

#[derive(Args, Clone)]
pub(crate) struct SamplingArgs {
    /// Prompts (several prompts make one batch; none = the empty prompt).
    pub(crate) prompts: Vec<String>,
    #[command(flatten)]
    pub(crate) noise: NoiseArgs,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub(crate) num_images: usize,
    #[command(flatten)]
    pub(crate) prior: PriorArgs,
    #[command(flatten)]
    pub(crate) decode: DecodeArgs,
    #[arg(long)]
    pub(crate) prior_guidance_scale: Option<f32>,
    #[arg(long)]
    pub(crate) decoder_guidance_scale: Option<f32>,
    /// Use these CLIP image embeddings (.npy, (D,) or (N, D)) instead of running the prior.
    #[arg(long)]
    pub(crate) image_embedding: Option<PathBuf>,
    /// img2img (Kandinsky 2.2 bundles): start the decoder from this image (PNG, JPEG or WebP),
    /// resized to the output size and noised to --strength of the schedule.
    #[arg(long)]
    pub(crate) init_image: Option<PathBuf>,
    /// img2img: the share of the decoder's schedule run, in (0, 1] (default 0.3, as diffusers;
    /// higher strays further from the init image).
    #[arg(long)]
    pub(crate) strength: Option<f64>,
    /// What conditions the decoder (DALL·E 2 §5.1 ablation): prior (the prior's image
    /// embedding), text-embedding (the caption's CLIP text embedding in its place) or caption
    /// (a zero image embedding: the caption's tokens alone).
    #[arg(long, default_value = "prior")]
    pub(crate) decoder_condition: unclip::DecoderCondition,
}

/// A cache directory flag: the given one, none for "none", else `<name>` in the user's unclip
/// cache directory ([`unclip::verify::user_cache_dir`]).
pub(crate) fn cache_dir(flag: &Option<PathBuf>, name: &str) -> Option<PathBuf> {
    match flag {
        Some(dir) if dir.as_os_str() == "none" => None,
        Some(dir) => Some(dir.clone()),
        None => unclip::verify::user_cache_dir().map(|cache| cache.join(name)),
    }
}

pub(crate) fn runtime(args: &RuntimeArgs) -> Result<Runtime> {
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
    if let Some(dir) = graph_cache {
        builder = builder.graph_cache_dir(dir);
    }
    if let Some(dir) = &args.capture_model_inputs {
        builder = builder.capture_model_inputs(dir);
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

/// What the flags fix for the pipeline's lifetime.
pub(crate) fn load_options(args: &RuntimeArgs) -> LoadOptions {
    let mut options = LoadOptions::default();
    if let Some(images) = args.upsampler_batch {
        options.upsampler_batch = images;
    }
    options
}

pub(crate) fn load(args: &RuntimeArgs) -> Result<Pipeline> {
    let model = crate::models::bundle_dir(args.model.as_deref())?;
    let runtime = runtime(args)?;
    let verification = unclip::verify::Verification::new(args.verify);
    Bundle::open_with(&model, &verification)
        .and_then(|bundle| Pipeline::from_bundle_with(&runtime, bundle, &load_options(args)))
        .with_context(|| format!("loading bundle {}", model.display()))
}

pub(crate) fn request(args: &SamplingArgs, record: bool) -> Result<TextToImage> {
    let prompts = if args.prompts.is_empty() {
        vec![String::new()]
    } else {
        args.prompts.clone()
    };
    let image_embeddings = match &args.image_embedding {
        Some(path) => Some(npy::read_embeddings(path)?),
        None => None,
    };
    let init_image = match &args.init_image {
        Some(path) => Some(
            unclip::vision::load_image(path, &unclip::vision::ImageLimits::default())?.to_rgb8(),
        ),
        None => None,
    };
    let request = TextToImage {
        prompts,
        num_images_per_prompt: Some(args.num_images),
        prior_guidance_scale: args.prior_guidance_scale,
        decoder_guidance_scale: args.decoder_guidance_scale,
        image_embeddings,
        record_intermediates: record,
        init_image,
        strength: args.strength,
        decoder_condition: args.decoder_condition,
        ..Default::default()
    };
    Ok(args.decode.apply(args.prior.apply(request)))
}
