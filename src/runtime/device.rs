//! Devices and their ONNX Runtime execution providers (DESIGN §7).
//!
//! A named provider that cannot be registered is an error, never a silent CPU fallback: ORT
//! falls back quietly unless a provider is registered with `error_on_failure` (NOTES), and we
//! check availability first so the error can say what to install.

use std::fmt;
use std::path::PathBuf;
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
}

impl FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda`, `cuda:N`, `tensorrt`, `tensorrt:N` (also `trt`).
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
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
        Device::Cpu => Vec::new(),
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
        Device::Cpu => Ok(()),
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
        for bad in ["", "cpu:0", "cuda:-1", "cuda:x", "metal", "openvino"] {
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
}
