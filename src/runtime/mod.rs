//! ONNX Runtime: library loading, the process-wide environment, devices, model sessions.
//!
//! One ORT environment per process with a global intra-op thread pool and spinning off:
//! per-session pools with spinning were measured 3.5× slower on this kind of machine (NOTES,
//! DESIGN §7). This module knows nothing of diffusion.

mod device;
mod library;
mod model;

use std::path::PathBuf;
use std::sync::Mutex;

use ort::environment::{Environment, GlobalThreadPoolOptions};

pub use device::{check_available, provider_configs, Device, ProviderConfig, TensorRtOptions};
pub use library::{find_library, search_dirs, ORT_VERSION};
pub use model::{Input, Model};

use crate::{Error, Result};

/// The loaded library and environment, shared by every [`Runtime`] of the process.
struct Loaded {
    library: PathBuf,
    threads: usize,
    environment: Environment,
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
    device: Device,
    tensorrt: TensorRtOptions,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("library", &self.library)
            .field("threads", &self.threads)
            .field("device", &self.device)
            .finish()
    }
}

/// Builds a [`Runtime`]: `Runtime::builder().device(Device::Cpu).build()?`.
#[derive(Clone, Debug, Default)]
pub struct RuntimeBuilder {
    library: Option<PathBuf>,
    device: Device,
    tensorrt: TensorRtOptions,
    threads: Option<usize>,
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

    /// Intra-op threads of the global pool (default: available parallelism). Fixed by the first
    /// runtime of the process.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Loads ONNX Runtime (once per process) and checks the device's providers are available.
    pub fn build(self) -> Result<Runtime> {
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
                .and_then(|p| p.with_spin_control(false))
                .map_err(ort_error("configuring the global thread pool"))?;
            let environment = builder
                .with_name("unclip")
                .with_telemetry(false)
                .with_global_thread_pool(pool)
                .build()
                .map_err(ort_error("creating the ONNX Runtime environment"))?;
            tracing::info!(library = %library.display(), threads, "loaded ONNX Runtime");
            *loaded = Some(Loaded {
                library,
                threads,
                environment,
            });
        }
        let state = loaded.as_ref().expect("set above");
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
        check_available(&self.device)?;
        Ok(Runtime {
            environment: state.environment.clone(),
            library: state.library.clone(),
            threads: state.threads,
            device: self.device,
            tensorrt: self.tensorrt,
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

    pub(crate) fn tensorrt(&self) -> &TensorRtOptions {
        &self.tensorrt
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
