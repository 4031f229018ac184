//! OpenVINO through ONNX Runtime's OpenVINO plugin execution provider (PyPI
//! `onnxruntime-ep-openvino`): finding the plugin library and registering it with the process's
//! environment (once), choosing the plugin's device for an OpenVINO device name (`CPU`, `GPU.1`,
//! `NPU`), and the session options (the `load_config` JSON: precision hint, threads,
//! compiled-model cache).
//!
//! A plugin EP is not a compiled-in dispatch like CUDA and TensorRT (`tensorrt.rs`): it is
//! registered with the environment, then appended to each session through the device API
//! (`SessionOptionsAppendExecutionProvider_V2`).

use std::path::{Path, PathBuf};

use ort::environment::Environment;
use ort::session::builder::SessionBuilder;

use super::{Precision, Runtime};
use crate::{Error, Result};

/// OpenVINO settings (used with [`Device::OpenVino`](super::Device::OpenVino)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenVinoOptions {
    /// The plugin library `libonnxruntime_providers_openvino_plugin.so` (default: searched,
    /// see [`find_openvino_plugin`]).
    pub plugin: Option<PathBuf>,
    /// Directory where OpenVINO keeps compiled models, so a second load skips compilation
    /// (seconds per Karlo-size model). `None`: no cache.
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

const OPENVINO_FIX: &str =
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
/// AMX CPUs OpenVINO defaults to bf16, so f32 is always set explicitly.
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
        // int8 is refused on OpenVINO at build (resolve_precision)
        Precision::F32 | Precision::Int8 | Precision::Auto => "f32",
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

/// Registers the OpenVINO plugin with the process's environment, once: `registered` is the
/// plugin registered so far, `requested` the runtime's choice (default: [`find_openvino_plugin`]
/// beside `ort_library`). A second runtime asking for another plugin file is refused (ONNX
/// Runtime keeps one library per EP name).
pub(super) fn register_openvino(
    environment: &Environment,
    ort_library: &Path,
    registered: &mut Option<PathBuf>,
    requested: Option<&Path>,
) -> Result<()> {
    let plugin = match (requested, &*registered) {
        (None, Some(_)) => return Ok(()),
        (Some(path), _) => path.to_path_buf(),
        (None, None) => find_openvino_plugin(ort_library)?,
    };
    if let Some(registered) = &*registered {
        if registered != &plugin {
            return Err(Error::ProviderUnavailable {
                provider: OPENVINO_EP.into(),
                reason: format!(
                    "the plugin is already registered in this process from {}",
                    registered.display()
                ),
                fix: "use one OpenVINO plugin per process".into(),
            });
        }
        return Ok(());
    }
    if !plugin.is_file() {
        return Err(Error::ProviderUnavailable {
            provider: OPENVINO_EP.into(),
            reason: format!("no plugin library at {}", plugin.display()),
            fix: OPENVINO_FIX.into(),
        });
    }
    environment
        .register_ep_library(OPENVINO_EP, &plugin)
        .map_err(|e| Error::ProviderUnavailable {
            provider: OPENVINO_EP.into(),
            reason: format!("registering {} failed: {e}", plugin.display()),
            fix: OPENVINO_FIX.into(),
        })?;
    tracing::info!(plugin = %plugin.display(), "registered the OpenVINO execution provider");
    *registered = Some(plugin);
    Ok(())
}

/// The plugin's devices for an OpenVINO device name (`CPU`, `GPU.1`, `NPU`), or an error listing
/// what the plugin found.
pub(super) fn openvino_devices<'e>(
    environment: &'e Environment,
    target: &str,
) -> Result<Vec<ort::device::Device<'e>>> {
    use ort::memory::DeviceType;
    let wanted = match openvino_device_type(target) {
        OpenVinoDeviceType::Cpu => DeviceType::CPU,
        OpenVinoDeviceType::Gpu => DeviceType::GPU,
        OpenVinoDeviceType::Npu => DeviceType::NPU,
    };
    let mine: Vec<_> = environment
        .devices()
        .filter(|d| d.ep().is_ok_and(|ep| ep == OPENVINO_EP))
        .collect();
    let found: Vec<String> = mine
        .iter()
        .map(|d| format!("{:?}", d.hardware_device().ty()))
        .collect();
    let index = openvino_device_index(target);
    let chosen = mine
        .into_iter()
        .filter(|d| d.hardware_device().ty() == wanted)
        .nth(index);
    if let Some(device) = chosen {
        return Ok(vec![device]);
    }
    if found.is_empty() {
        // The plugin offers only Intel hardware (its factory filters on the PCI vendor id).
        let cpu_vendor = environment
            .devices()
            .map(|d| d.hardware_device())
            .find(|h| h.ty() == DeviceType::CPU)
            .and_then(|h| h.vendor().ok().map(str::to_string))
            .unwrap_or_else(|| "unknown".into());
        return Err(Error::ProviderUnavailable {
            provider: OPENVINO_EP.into(),
            reason: format!(
                "the plugin found no device on this machine: it serves Intel CPUs, GPUs and NPUs, \
                 and this CPU's vendor is {cpu_vendor}"
            ),
            fix: "run the exact f32 mode on --device cpu here, or use an Intel machine (bf16 is \
                  fast where the CPU has AMX)"
                .into(),
        });
    }
    Err(Error::ProviderUnavailable {
        provider: OPENVINO_EP.into(),
        reason: format!(
            "no OpenVINO {target} device on this machine (the plugin found: {})",
            found.join(", ")
        ),
        fix: "choose one it found, e.g. --device openvino:CPU".into(),
    })
}

/// Appends the OpenVINO execution provider on `target` to a session being built, with the
/// runtime's precision, threads and compiled-model cache.
pub(super) fn append_to_session(
    builder: SessionBuilder,
    runtime: &Runtime,
    target: &str,
) -> Result<SessionBuilder> {
    // A plugin EP: the device API (SessionOptionsAppendExecutionProvider_V2).
    let options = openvino_session_options(
        target,
        runtime.precision(),
        runtime.threads(),
        runtime.openvino().cache_dir.as_deref(),
    );
    let devices = openvino_devices(runtime.environment(), target)?;
    builder
        .with_devices(devices, Some(&options))
        .map_err(|e| Error::ProviderUnavailable {
            provider: OPENVINO_EP.into(),
            reason: e.to_string(),
            fix: OPENVINO_FIX.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
