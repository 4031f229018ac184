//! The CUDA and TensorRT execution providers: the user's TensorRT settings mapped to ONNX
//! Runtime's provider options (engine and timing caches, workspace, optimization profiles), the
//! check that the loaded library has the providers, and their dispatches, registered with
//! `error_on_failure` so a provider that fails is an error rather than a quiet CPU fallback.
//! TensorRT always runs with CUDA behind it for the nodes it does not take.

use std::path::PathBuf;

use ort::ep::{self, ExecutionProvider};

use super::Device;
use crate::{Error, Result};

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
