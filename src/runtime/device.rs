//! Devices and their ONNX Runtime execution providers (DESIGN §7).
//!
//! A named provider that cannot be registered is an error, never a silent CPU fallback: ORT
//! falls back quietly unless a provider is registered with `error_on_failure` (NOTES), and we
//! check availability first so the error can say what to install.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ort::ep::{self, ExecutionProvider};

use crate::{Error, Result};

/// Where the networks run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// ONNX Runtime's CPU provider, f32: the exact mode (same tensors as diffusers).
    #[default]
    Cpu,
    /// NVIDIA GPU `device_id` through the CUDA provider.
    Cuda { device_id: i32 },
    /// NVIDIA GPU `device_id` through TensorRT (with CUDA for what TensorRT does not take).
    TensorRt { device_id: i32 },
    /// Intel OpenVINO through ONNX Runtime's OpenVINO plugin execution provider (PyPI
    /// `onnxruntime-ep-openvino`). `target` is OpenVINO's device name, passed through: `CPU`
    /// (the fast bf16 mode on AMX CPUs, NOTES), `GPU`, `GPU.1`, `NPU`.
    OpenVino { target: String },
}

/// Numeric precision of the networks (DESIGN §7). The bundle stays fp32; the provider lowers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// fp32 everywhere: the exact mode.
    #[default]
    F32,
    /// bfloat16 compute (OpenVINO on CPUs with AMX or AVX-512-BF16).
    Bf16,
    /// float16 compute (TensorRT engines, OpenVINO GPU/NPU).
    Fp16,
    /// The fastest precision the device has: bf16 on OpenVINO CPUs with AMX or AVX-512-BF16
    /// (else f32), f16 on OpenVINO GPU/NPU and TensorRT, f32 on the CPU and CUDA providers.
    Auto,
}

impl FromStr for Precision {
    type Err = Error;

    /// `f32` (`fp32`), `bf16`, `fp16` (`f16`), `auto`; case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" | "f16" => Ok(Precision::Fp16),
            "auto" => Ok(Precision::Auto),
            _ => Err(Error::invalid(
                "precision",
                format!("{s:?}: choose f32, bf16, fp16 or auto"),
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
            Precision::Auto => "auto",
        })
    }
}

/// What the CPU offers for bf16 (x86 flags from `/proc/cpuinfo`: `amx_bf16`, `avx512_bf16`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub amx_bf16: bool,
    pub avx512_bf16: bool,
}

impl CpuFeatures {
    /// Reads this machine's flags (all false where `/proc/cpuinfo` is absent).
    pub fn detect() -> CpuFeatures {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|info| CpuFeatures::from_cpuinfo(&info))
            .unwrap_or_default()
    }

    /// Parses the first `flags` line of a `/proc/cpuinfo` text.
    pub fn from_cpuinfo(info: &str) -> CpuFeatures {
        let flags: Vec<&str> = info
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "flags").then(|| value.split_whitespace().collect())
            })
            .unwrap_or_default();
        CpuFeatures {
            amx_bf16: flags.contains(&"amx_bf16"),
            avx512_bf16: flags.contains(&"avx512_bf16"),
        }
    }

    /// bf16 runs at full speed (AMX tiles or AVX-512 bf16 dot products).
    pub fn fast_bf16(&self) -> bool {
        self.amx_bf16 || self.avx512_bf16
    }
}

/// The concrete precision `requested` means on `device`, or an error naming the device that
/// does take it. `Auto` never fails.
pub fn resolve_precision(
    device: &Device,
    requested: Precision,
    cpu: CpuFeatures,
) -> Result<Precision> {
    let refuse = |why: &str| {
        Err(Error::invalid(
            "precision",
            format!("{requested} on {device}: {why}"),
        ))
    };
    match (device, requested) {
        (_, Precision::F32) => Ok(Precision::F32),
        (Device::Cpu | Device::Cuda { .. }, Precision::Auto) => Ok(Precision::F32),
        (Device::Cpu, _) => refuse(
            "ONNX Runtime's CPU provider runs the exact f32 mode only; the fast bf16 mode is --device openvino --precision bf16 (or auto)",
        ),
        (Device::Cuda { .. }, _) => {
            refuse("the CUDA provider runs f32 only; use --device tensorrt --precision fp16")
        }
        (Device::TensorRt { .. }, Precision::Fp16 | Precision::Auto) => Ok(Precision::Fp16),
        (Device::TensorRt { .. }, _) => refuse("TensorRT builds f32 or fp16 engines"),
        (Device::OpenVino { target }, requested) => {
            let on_cpu = openvino_device_type(target) == OpenVinoDeviceType::Cpu;
            match requested {
                Precision::Auto if on_cpu => Ok(if cpu.fast_bf16() {
                    Precision::Bf16
                } else {
                    Precision::F32
                }),
                Precision::Auto => Ok(Precision::Fp16),
                Precision::Bf16 if !on_cpu => {
                    refuse("OpenVINO GPU and NPU devices compute in f32 or fp16")
                }
                other => Ok(other),
            }
        }
    }
}

/// OpenVINO settings (used with [`Device::OpenVino`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenVinoOptions {
    /// The plugin library `libonnxruntime_providers_openvino_plugin.so` (default: searched,
    /// see [`find_openvino_plugin`]).
    pub plugin: Option<PathBuf>,
    /// Directory where OpenVINO keeps compiled models, so a second load skips compilation
    /// (~8 s per Karlo-size model, NOTES). `None`: no cache.
    pub cache_dir: Option<PathBuf>,
}

/// ONNX Runtime's name of the OpenVINO plugin execution provider.
pub const OPENVINO_EP: &str = "OpenVINOExecutionProvider";

#[cfg(target_os = "windows")]
const OPENVINO_PLUGIN: &str = "onnxruntime_providers_openvino_plugin.dll";
#[cfg(not(target_os = "windows"))]
const OPENVINO_PLUGIN: &str = "libonnxruntime_providers_openvino_plugin.so";

/// Finds the OpenVINO plugin: `UNCLIP_OPENVINO_PLUGIN`, then `openvino/` beside the loaded
/// ONNX Runtime library (where `scripts/setup-ort --openvino` puts it), then an installed
/// Python package `onnxruntime_ep_openvino` next to the Python `onnxruntime` we may have loaded.
pub fn find_openvino_plugin(ort_library: &Path) -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(path) = std::env::var_os("UNCLIP_OPENVINO_PLUGIN") {
        candidates.push(PathBuf::from(path));
    }
    if let Some(dir) = ort_library.parent() {
        candidates.push(dir.join("openvino").join(OPENVINO_PLUGIN));
        // site-packages/onnxruntime/capi/libonnxruntime.so → site-packages/onnxruntime_ep_openvino/
        if let Some(site) = dir.parent().and_then(Path::parent) {
            candidates.push(site.join("onnxruntime_ep_openvino").join(OPENVINO_PLUGIN));
        }
    }
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::ProviderUnavailable {
            provider: OPENVINO_EP.into(),
            reason: format!(
                "its plugin library {OPENVINO_PLUGIN} was not found (searched: {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            fix: OPENVINO_FIX.into(),
        })
}

pub(crate) const OPENVINO_FIX: &str =
    "Install it with `scripts/setup-ort --openvino` (onnxruntime-ep-openvino \
     1.8.1 from PyPI into ./.ort/openvino) or set UNCLIP_OPENVINO_PLUGIN to the plugin library";

/// The kind of hardware an OpenVINO device name designates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenVinoDeviceType {
    Cpu,
    Gpu,
    Npu,
}

/// `CPU` → Cpu, `GPU`/`GPU.1` → Gpu, `NPU` → Npu (names as OpenVINO spells them).
pub fn openvino_device_type(target: &str) -> OpenVinoDeviceType {
    match target.split('.').next().unwrap_or_default() {
        "GPU" => OpenVinoDeviceType::Gpu,
        "NPU" => OpenVinoDeviceType::Npu,
        _ => OpenVinoDeviceType::Cpu,
    }
}

/// The index in `GPU.1` (0 when absent).
pub fn openvino_device_index(target: &str) -> usize {
    target
        .split_once('.')
        .and_then(|(_, i)| i.parse().ok())
        .unwrap_or(0)
}

/// The plugin's session options (keys prefixed with the EP name, as `with_devices` wants).
/// Precision goes through `load_config`: the plugin ignores its own `precision` option, and on
/// AMX CPUs OpenVINO defaults to bf16, so f32 is always set explicitly (NOTES).
pub fn openvino_session_options(
    target: &str,
    precision: Precision,
    threads: usize,
    cache_dir: Option<&Path>,
) -> Vec<(String, String)> {
    let mut config = serde_json::Map::new();
    let hint = match precision {
        Precision::Bf16 => "bf16",
        Precision::Fp16 => "f16",
        Precision::F32 | Precision::Auto => "f32",
    };
    config.insert("INFERENCE_PRECISION_HINT".into(), hint.into());
    if openvino_device_type(target) == OpenVinoDeviceType::Cpu {
        config.insert("INFERENCE_NUM_THREADS".into(), threads.to_string().into());
    }
    if let Some(dir) = cache_dir {
        config.insert("CACHE_DIR".into(), dir.display().to_string().into());
    }
    let load_config = serde_json::json!({ target: config });
    vec![(
        format!("{OPENVINO_EP}.load_config"),
        load_config.to_string(),
    )]
}

impl FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda`, `cuda:N`, `tensorrt`, `tensorrt:N` (also `trt`), `openvino` (= `openvino:CPU`),
    /// `openvino:GPU`, `openvino:GPU.1`, `openvino:NPU`.
    fn from_str(s: &str) -> Result<Self> {
        let trimmed = s.trim();
        if let Some((name, target)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("openvino") {
                let target = target.to_ascii_uppercase();
                let (kind, index) = match target.split_once('.') {
                    Some((kind, index)) => (kind, Some(index)),
                    None => (target.as_str(), None),
                };
                let index_ok = index.is_none_or(|i| !i.is_empty() && i.parse::<u32>().is_ok());
                return if matches!(kind, "CPU" | "GPU" | "NPU") && index_ok {
                    Ok(Device::OpenVino { target })
                } else {
                    Err(Error::UnknownDevice(s.to_string()))
                };
            }
        }
        if trimmed.eq_ignore_ascii_case("openvino") {
            return Ok(Device::OpenVino {
                target: "CPU".into(),
            });
        }
        let lower = trimmed.to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((name, index)) => (name, Some(index)),
            None => (lower.as_str(), None),
        };
        let device_id = match index {
            None => 0,
            Some(i) => i
                .parse::<i32>()
                .ok()
                .filter(|i| *i >= 0)
                .ok_or_else(|| Error::UnknownDevice(s.to_string()))?,
        };
        match name {
            "cpu" if index.is_none() => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda { device_id }),
            "tensorrt" | "trt" => Ok(Device::TensorRt { device_id }),
            _ => Err(Error::UnknownDevice(s.to_string())),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda { device_id } => write!(f, "cuda:{device_id}"),
            Device::TensorRt { device_id } => write!(f, "tensorrt:{device_id}"),
            Device::OpenVino { target } => write!(f, "openvino:{target}"),
        }
    }
}

/// TensorRT settings (ignored by other devices).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TensorRtOptions {
    /// Build fp16 engines.
    pub fp16: bool,
    /// Directory for engine and timing caches; engines are rebuilt on every load without it
    /// (minutes for Karlo-size UNets).
    pub cache_dir: Option<PathBuf>,
    /// Builder workspace limit in bytes (TensorRT's default when `None`).
    pub max_workspace_size: Option<usize>,
}

/// One execution provider with its options, as ONNX Runtime names them. Kept as plain data so
/// the mapping from user settings is unit-tested without a GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderConfig {
    /// ONNX Runtime's provider name (`CUDAExecutionProvider`, …).
    pub name: &'static str,
    /// Provider options (key, value).
    pub options: Vec<(String, String)>,
}

/// The providers to register for `device`, in priority order. Empty for CPU (ORT's default).
/// `profile_shapes` are TensorRT optimization profiles (min, opt, max) for the model's inputs,
/// in ORT's `name:1x3x64x64,name2:…` form.
pub fn provider_configs(
    device: &Device,
    trt: &TensorRtOptions,
    profile_shapes: Option<(String, String, String)>,
) -> Vec<ProviderConfig> {
    let cuda = |device_id: i32| ProviderConfig {
        name: "CUDAExecutionProvider",
        options: vec![("device_id".into(), device_id.to_string())],
    };
    match device {
        // OpenVINO is a plugin EP: it goes through the device API (Model::load), not a dispatch.
        Device::Cpu | Device::OpenVino { .. } => Vec::new(),
        Device::Cuda { device_id } => vec![cuda(*device_id)],
        Device::TensorRt { device_id } => {
            let mut options = vec![
                ("device_id".to_string(), device_id.to_string()),
                ("trt_fp16_enable".into(), trt.fp16.to_string()),
            ];
            if let Some(dir) = &trt.cache_dir {
                let dir = dir.display().to_string();
                options.push(("trt_engine_cache_enable".into(), "true".into()));
                options.push(("trt_engine_cache_path".into(), dir.clone()));
                options.push(("trt_timing_cache_enable".into(), "true".into()));
                options.push(("trt_timing_cache_path".into(), dir));
            }
            if let Some(bytes) = trt.max_workspace_size {
                options.push(("trt_max_workspace_size".into(), bytes.to_string()));
            }
            if let Some((min, opt, max)) = profile_shapes {
                options.push(("trt_profile_min_shapes".into(), min));
                options.push(("trt_profile_opt_shapes".into(), opt));
                options.push(("trt_profile_max_shapes".into(), max));
            }
            vec![
                ProviderConfig {
                    name: "TensorrtExecutionProvider",
                    options,
                },
                // Nodes TensorRT rejects run on CUDA, not on the CPU.
                cuda(*device_id),
            ]
        }
    }
}

/// Checks that every provider `device` needs is compiled into the loaded ONNX Runtime.
pub fn check_available(device: &Device) -> Result<()> {
    let gpu_fix = "Install the GPU build (pip download onnxruntime-gpu==1.31.1: needs CUDA 13, cuDNN 9, \
                   TensorRT 10 for tensorrt) and point ORT_DYLIB_PATH at its libonnxruntime.so; see README \
                   \"Running on GPU\"";
    let check = |name: &str, available: ort::Result<bool>| -> Result<()> {
        match available {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::ProviderUnavailable {
                provider: name.to_string(),
                reason: "this ONNX Runtime library was built without it".into(),
                fix: gpu_fix.into(),
            }),
            Err(e) => Err(Error::ProviderUnavailable {
                provider: name.to_string(),
                reason: e.to_string(),
                fix: gpu_fix.into(),
            }),
        }
    };
    match device {
        // OpenVINO is checked when its plugin is registered (Runtime::build).
        Device::Cpu | Device::OpenVino { .. } => Ok(()),
        Device::Cuda { .. } => check("CUDAExecutionProvider", ep::CUDA::is_available()),
        Device::TensorRt { .. } => {
            check("TensorrtExecutionProvider", ep::TensorRT::is_available())?;
            check("CUDAExecutionProvider", ep::CUDA::is_available())
        }
    }
}

/// Turns provider configs into ort dispatches that fail loudly.
pub fn dispatches(configs: &[ProviderConfig]) -> Vec<ep::ExecutionProviderDispatch> {
    use ep::ArbitrarilyConfigurableExecutionProvider as _;
    configs
        .iter()
        .map(|config| {
            let dispatch = match config.name {
                "TensorrtExecutionProvider" => {
                    let mut trt = ep::TensorRT::default();
                    for (k, v) in &config.options {
                        trt = trt.with_arbitrary_config(k, v);
                    }
                    trt.build()
                }
                _ => {
                    let mut cuda = ep::CUDA::default();
                    for (k, v) in &config.options {
                        cuda = cuda.with_arbitrary_config(k, v);
                    }
                    cuda.build()
                }
            };
            dispatch.error_on_failure()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!(
            "CUDA".parse::<Device>().unwrap(),
            Device::Cuda { device_id: 0 }
        );
        assert_eq!(
            "cuda:3".parse::<Device>().unwrap(),
            Device::Cuda { device_id: 3 }
        );
        assert_eq!(
            "tensorrt:1".parse::<Device>().unwrap(),
            Device::TensorRt { device_id: 1 }
        );
        assert_eq!(
            "openvino".parse::<Device>().unwrap(),
            Device::OpenVino {
                target: "CPU".into()
            }
        );
        assert_eq!(
            "OpenVINO:gpu.1".parse::<Device>().unwrap(),
            Device::OpenVino {
                target: "GPU.1".into()
            }
        );
        assert_eq!(
            "openvino:npu".parse::<Device>().unwrap().to_string(),
            "openvino:NPU"
        );
        for bad in [
            "",
            "cpu:0",
            "cuda:-1",
            "cuda:x",
            "metal",
            "openvino:",
            "openvino:tpu",
            "openvino:GPU.",
            "openvino:GPU.x",
        ] {
            assert!(
                matches!(bad.parse::<Device>(), Err(Error::UnknownDevice(_))),
                "{bad}"
            );
        }
        assert_eq!(Device::TensorRt { device_id: 2 }.to_string(), "tensorrt:2");
    }

    #[test]
    fn maps_tensorrt_options() {
        let trt = TensorRtOptions {
            fp16: true,
            cache_dir: Some(PathBuf::from("/tmp/trt")),
            max_workspace_size: Some(1 << 30),
        };
        let shapes = Some((
            "a:1x3".to_string(),
            "a:2x3".to_string(),
            "a:8x3".to_string(),
        ));
        let configs = provider_configs(&Device::TensorRt { device_id: 1 }, &trt, shapes);
        assert_eq!(configs.len(), 2);
        assert_eq!(configs[0].name, "TensorrtExecutionProvider");
        let get = |k: &str| {
            configs[0]
                .options
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("device_id"), Some("1"));
        assert_eq!(get("trt_fp16_enable"), Some("true"));
        assert_eq!(get("trt_engine_cache_path"), Some("/tmp/trt"));
        assert_eq!(get("trt_timing_cache_enable"), Some("true"));
        assert_eq!(get("trt_max_workspace_size"), Some("1073741824"));
        assert_eq!(get("trt_profile_opt_shapes"), Some("a:2x3"));
        assert_eq!(configs[1].name, "CUDAExecutionProvider");
        assert_eq!(
            configs[1].options,
            vec![("device_id".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn cpu_and_cuda_map_plainly() {
        let none = TensorRtOptions::default();
        assert!(provider_configs(&Device::Cpu, &none, None).is_empty());
        let cuda = provider_configs(&Device::Cuda { device_id: 2 }, &none, None);
        assert_eq!(cuda.len(), 1);
        assert_eq!(
            cuda[0].options,
            vec![("device_id".to_string(), "2".to_string())]
        );
    }

    #[test]
    fn precision_resolves_per_device() {
        let amx = CpuFeatures {
            amx_bf16: true,
            avx512_bf16: true,
        };
        let plain = CpuFeatures::default();
        let ov = |t: &str| Device::OpenVino { target: t.into() };
        let ok = |d: &Device, p, cpu| resolve_precision(d, p, cpu).unwrap();
        assert_eq!(ok(&ov("CPU"), Precision::Auto, amx), Precision::Bf16);
        assert_eq!(ok(&ov("CPU"), Precision::Auto, plain), Precision::F32);
        assert_eq!(ok(&ov("GPU.1"), Precision::Auto, amx), Precision::Fp16);
        assert_eq!(ok(&ov("CPU"), Precision::Bf16, plain), Precision::Bf16);
        assert_eq!(ok(&Device::Cpu, Precision::Auto, amx), Precision::F32);
        let trt = Device::TensorRt { device_id: 0 };
        assert_eq!(ok(&trt, Precision::Auto, amx), Precision::Fp16);
        for (device, precision, names) in [
            (Device::Cpu, Precision::Bf16, "--device openvino"),
            (Device::Cuda { device_id: 0 }, Precision::Fp16, "tensorrt"),
            (trt, Precision::Bf16, "f32 or fp16"),
            (ov("NPU"), Precision::Bf16, "f32 or fp16"),
        ] {
            match resolve_precision(&device, precision, amx) {
                Err(Error::InvalidArgument { name, reason }) => {
                    assert_eq!(name, "precision");
                    assert!(reason.contains(names), "{reason}");
                }
                other => panic!("{device} {precision}: {other:?}"),
            }
        }
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp32".parse::<Precision>().unwrap(), Precision::F32);
        assert!("int8".parse::<Precision>().is_err());
    }

    #[test]
    fn reads_bf16_flags_from_cpuinfo() {
        let info = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n\
                    processor\t: 1\n";
        let features = CpuFeatures::from_cpuinfo(info);
        assert!(features.amx_bf16 && features.avx512_bf16 && features.fast_bf16());
        let old = CpuFeatures::from_cpuinfo("flags : fpu sse avx2 avx512f\n");
        assert!(!old.fast_bf16());
        assert!(!CpuFeatures::from_cpuinfo("").fast_bf16());
    }

    #[test]
    fn openvino_options_set_precision_threads_and_cache() {
        let options =
            openvino_session_options("CPU", Precision::F32, 2, Some(Path::new("/tmp/ov cache")));
        assert_eq!(options.len(), 1);
        assert_eq!(options[0].0, "OpenVINOExecutionProvider.load_config");
        let config: serde_json::Value = serde_json::from_str(&options[0].1).unwrap();
        assert_eq!(
            config,
            serde_json::json!({"CPU": {"INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": "2", "CACHE_DIR": "/tmp/ov cache"}})
        );
        let gpu = openvino_session_options("GPU.1", Precision::Fp16, 2, None);
        let config: serde_json::Value = serde_json::from_str(&gpu[0].1).unwrap();
        assert_eq!(
            config,
            serde_json::json!({"GPU.1": {"INFERENCE_PRECISION_HINT": "f16"}})
        );
        assert_eq!(openvino_device_type("GPU.1"), OpenVinoDeviceType::Gpu);
        assert_eq!(openvino_device_index("GPU.1"), 1);
        assert_eq!(openvino_device_index("NPU"), 0);
    }
}
