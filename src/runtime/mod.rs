//! ONNX Runtime: library loading, the process-wide environment, devices, model sessions.
//!
//! One ORT environment per process with a global intra-op thread pool, spinning off by default:
//! per-session pools with spinning measured several times slower on a small pipeline, and
//! spinning in the one global pool (`--spin`) was within noise at Karlo size (docs/benchmarks.md).
//! This module knows nothing of diffusion.

mod device;
mod graph_cache;
mod library;
mod model;
mod openvino;
mod tensorrt;

use std::path::PathBuf;
use std::sync::Mutex;

use ort::environment::{Environment, GlobalThreadPoolOptions};

pub use device::{resolve_precision, CpuFeatures, Device, Precision};
pub use library::{find_library, search_dirs, ORT_VERSION};
pub use model::{BatchProfile, Input, Model};
pub use openvino::{find_openvino_plugin, openvino_session_options, OpenVinoOptions, OPENVINO_EP};
pub use tensorrt::{check_available, provider_configs, ProviderConfig, TensorRtOptions};

use crate::{Error, Result};

/// The loaded library and environment, shared by every [`Runtime`] of the process.
struct Loaded {
    library: PathBuf,
    threads: usize,
    spinning: bool,
    environment: Environment,
    /// The OpenVINO plugin registered with the environment, if any (once per process).
    openvino_plugin: Option<PathBuf>,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// Converts an ort error into ours, naming what we were doing.
pub(crate) fn ort_error<R>(context: impl Into<String>) -> impl FnOnce(ort::Error<R>) -> Error {
    let context = context.into();
    move |e| Error::Ort {
        context,
        message: e.to_string(),
    }
}

/// A handle on ONNX Runtime configured for one device. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    environment: Environment,
    library: PathBuf,
    threads: usize,
    spinning: bool,
    device: Device,
    precision: Precision,
    /// `precision` was chosen by [`Precision::Auto`].
    auto_precision: bool,
    tensorrt: TensorRtOptions,
    openvino: OpenVinoOptions,
    low_memory: bool,
    prepacking: bool,
    graph_cache_dir: Option<PathBuf>,
    capture_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("threads", &self.threads)
            .field("spinning", &self.spinning)
            .field("device", &self.device)
            .field("precision", &self.precision)
            .field("low_memory", &self.low_memory)
            .field("prepacking", &self.prepacking)
            .field("graph_cache_dir", &self.graph_cache_dir)
            .field("capture_dir", &self.capture_dir)
            .finish()
    }
}

/// Builds a [`Runtime`]: `Runtime::builder().device(Device::Cpu).build()?`.
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    library: Option<PathBuf>,
    device: Device,
    precision: Precision,
    tensorrt: TensorRtOptions,
    openvino: OpenVinoOptions,
    threads: Option<usize>,
    spinning: bool,
    low_memory: bool,
    prepacking: bool,
    graph_cache_dir: Option<PathBuf>,
    capture_dir: Option<PathBuf>,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        Self {
            library: None,
            device: Device::default(),
            precision: Precision::default(),
            tensorrt: TensorRtOptions::default(),
            openvino: OpenVinoOptions::default(),
            threads: None,
            spinning: false,
            low_memory: false,
            prepacking: true,
            graph_cache_dir: None,
            capture_dir: None,
        }
    }
}

impl RuntimeBuilder {
    /// Path of `libonnxruntime` (default: searched, see [`find_library`]).
    pub fn library(mut self, path: impl Into<PathBuf>) -> Self {
        self.library = Some(path.into());
        self
    }

    /// The device every session runs on.
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// TensorRT settings (used with [`Device::TensorRt`]).
    pub fn tensorrt(mut self, options: TensorRtOptions) -> Self {
        self.tensorrt = options;
        self
    }

    /// Numeric precision (default f32, the exact mode); checked against the device at build.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// OpenVINO settings (used with [`Device::OpenVino`]).
    pub fn openvino(mut self, options: OpenVinoOptions) -> Self {
        self.openvino = options;
        self
    }

    /// Intra-op threads of the global pool (default: available parallelism). Fixed by the first
    /// runtime of the process.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Let the global pool's idle threads spin (busy-wait) between parallel sections instead of
    /// sleeping (default off, ONNX Runtime's own default is on). Off gives the cores back to the
    /// rest of the process and to other processes; on saves the wake-up latency of many small
    /// operators. Fixed by the first runtime of the process, like the thread count.
    pub fn spinning(mut self, spinning: bool) -> Self {
        self.spinning = spinning;
        self
    }

    /// Low-memory mode (`--low-memory`): a model's session exists only while its stage runs. Every
    /// model is still opened and checked at load, one at a time, then released; a stage creates
    /// its sessions when it starts and drops them when it ends, so peak memory is about the
    /// largest stage instead of the sum, at the cost of one session creation per stage per run.
    pub fn low_memory(mut self, low_memory: bool) -> Self {
        self.low_memory = low_memory;
        self
    }

    /// Let ONNX Runtime pre-pack constant weights at session creation (default on, ONNX Runtime's
    /// own default): the CPU kernels of MatMul, Gemm and Conv re-lay out each weight once into
    /// the blocked form their inner loops read, instead of packing it again on every call. Off
    /// (`--no-prepack`, ONNX Runtime's `session.disable_prepacking`) exists to measure it
    /// (docs/benchmarks.md has the row) and to bisect a numerical difference.
    pub fn prepacking(mut self, prepacking: bool) -> Self {
        self.prepacking = prepacking;
        self
    }

    /// Keep ONNX Runtime's optimized graphs in `dir` (`--graph-cache-dir`; CPU device only,
    /// default none): a model's first load optimizes it and saves the result there, later loads
    /// read it back with optimization off. Keyed by the model's hashes, the ONNX Runtime build
    /// and the CPU (the graph has this CPU's NCHWc layout). Costs the size of the weights on disk
    /// again. OpenVINO and TensorRT have their own caches (`--openvino-cache-dir`,
    /// `--trt-cache-dir`); with another device [`RuntimeBuilder::build`] refuses it.
    pub fn graph_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.graph_cache_dir = Some(dir.into());
        self
    }

    /// Write every model call's inputs under `dir` (`--capture-model-inputs`, default none):
    /// `dir/<model key>/<process id>_<call, 6 digits>/<input name>.npy`. The calibration data of
    /// int8 quantization (`export/quantize_bundle.py`); costs a write per call.
    pub fn capture_model_inputs(mut self, dir: impl Into<PathBuf>) -> Self {
        self.capture_dir = Some(dir.into());
        self
    }

    /// Loads ONNX Runtime (once per process) and checks the device's providers are available.
    pub fn build(self) -> Result<Runtime> {
        if self.graph_cache_dir.is_some() && self.device != Device::Cpu {
            return Err(Error::invalid(
                "graph cache",
                format!(
                    "the optimized-graph cache is for --device cpu, not {}: OpenVINO caches its \
                     compiled models with --openvino-cache-dir, TensorRT its engines with \
                     --trt-cache-dir",
                    self.device
                ),
            ));
        }
        let mut loaded = LOADED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if loaded.is_none() {
            let library = match self.library.clone() {
                Some(path) => path,
                None => find_library()?,
            };
            let threads = self
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let builder = ort::init_from(&library).map_err(|e| Error::OrtLoad {
                path: library.clone(),
                reason: e.to_string(),
            })?;
            let pool = GlobalThreadPoolOptions::default()
                .with_intra_threads(threads)
                .and_then(|p| p.with_inter_threads(1))
                .and_then(|p| p.with_spin_control(self.spinning))
                .map_err(ort_error("configuring the global thread pool"))?;
            let environment = builder
                .with_name("unclip")
                .with_telemetry(false)
                .with_global_thread_pool(pool)
                .build()
                .map_err(ort_error("creating the ONNX Runtime environment"))?;
            tracing::info!(library = %library.display(), threads, spinning = self.spinning, "loaded ONNX Runtime");
            *loaded = Some(Loaded {
                library,
                threads,
                spinning: self.spinning,
                environment,
                openvino_plugin: None,
            });
        }
        let state = loaded.as_mut().expect("set above");
        if let Some(requested) = &self.library {
            if requested != &state.library {
                return Err(Error::OrtLoad {
                    path: requested.clone(),
                    reason: format!(
                        "ONNX Runtime is already loaded in this process from {}; one library per process",
                        state.library.display()
                    ),
                });
            }
        }
        // --trt-fp16 is the older spelling of --precision fp16 on TensorRT.
        let requested = match (&self.device, self.precision) {
            (Device::TensorRt { .. }, Precision::F32) if self.tensorrt.fp16 => Precision::Fp16,
            (_, requested) => requested,
        };
        let precision = resolve_precision(&self.device, requested, CpuFeatures::detect())?;
        check_available(&self.device)?;
        if let Device::OpenVino { target } = &self.device {
            openvino::register_openvino(
                &state.environment,
                &state.library,
                &mut state.openvino_plugin,
                self.openvino.plugin.as_deref(),
            )?;
            openvino::openvino_devices(&state.environment, target)?;
        }
        tracing::debug!(device = %self.device, %precision, "runtime ready");
        Ok(Runtime {
            environment: state.environment.clone(),
            library: state.library.clone(),
            threads: state.threads,
            spinning: state.spinning,
            device: self.device,
            precision,
            auto_precision: requested == Precision::Auto,
            tensorrt: self.tensorrt,
            openvino: self.openvino,
            low_memory: self.low_memory,
            prepacking: self.prepacking,
            graph_cache_dir: self.graph_cache_dir,
            capture_dir: self.capture_dir,
        })
    }
}

impl Runtime {
    /// A builder with defaults (CPU, searched library).
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The path the library was loaded from.
    pub fn library(&self) -> &std::path::Path {
        &self.library
    }

    /// Intra-op threads of the global pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether the global pool's idle threads spin ([`RuntimeBuilder::spinning`]).
    pub fn spinning(&self) -> bool {
        self.spinning
    }

    /// The device sessions run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// ONNX Runtime's version as the library reports it.
    pub fn ort_version(&self) -> String {
        ort_build_version().unwrap_or_else(|| ORT_VERSION.to_string())
    }

    pub(crate) fn environment(&self) -> &Environment {
        &self.environment
    }

    /// The precision the device runs at ([`Precision::Auto`] resolved). A pipeline may run
    /// another: [`crate::Pipeline::precision`].
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether [`Runtime::precision`] was chosen by [`Precision::Auto`].
    pub fn is_auto_precision(&self) -> bool {
        self.auto_precision
    }

    /// Where model inputs are captured ([`RuntimeBuilder::capture_model_inputs`]), if anywhere.
    pub fn capture_dir(&self) -> Option<&std::path::Path> {
        self.capture_dir.as_deref()
    }

    /// Whether sessions live only while their stage runs ([`RuntimeBuilder::low_memory`]).
    pub fn is_low_memory(&self) -> bool {
        self.low_memory
    }

    /// Whether sessions pre-pack their constant weights ([`RuntimeBuilder::prepacking`]).
    pub fn prepacking(&self) -> bool {
        self.prepacking
    }

    /// Where optimized graphs are kept ([`RuntimeBuilder::graph_cache_dir`]), if anywhere.
    pub fn graph_cache_dir(&self) -> Option<&std::path::Path> {
        self.graph_cache_dir.as_deref()
    }

    pub(crate) fn tensorrt(&self) -> &TensorRtOptions {
        &self.tensorrt
    }

    pub(crate) fn openvino(&self) -> &OpenVinoOptions {
        &self.openvino
    }
}

/// `1.31.1` from ORT's build info (`git-branch=rel-1.31.1, …`).
fn ort_build_version() -> Option<String> {
    let info = ort::info();
    let start = info.find("rel-")? + 4;
    let rest = &info[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_string()).filter(|v| !v.is_empty())
}
