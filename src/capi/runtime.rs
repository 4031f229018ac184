//! `unclip_runtime`: creating a runtime from `unclip_runtime_params` (device, precision,
//! provider options) and freeing it.

use std::path::PathBuf;

use super::params::versioned_copy;
use super::*;
use crate::runtime::{Device, OpenVinoOptions, Precision, TensorRtOptions};

#[no_mangle]
pub unsafe extern "C" fn unclip_runtime_create(
    params: *const unclip_runtime_params,
    out: *mut *mut unclip_runtime,
) -> unclip_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out", "is NULL"));
        }
        *out = std::ptr::null_mut();
        let params = &versioned_copy(params, "unclip_runtime_params")?;
        let device = match params.device {
            0 => Device::Cpu,
            1 => Device::Cuda {
                device_id: params.device_id,
            },
            2 => Device::TensorRt {
                device_id: params.device_id,
            },
            3 => match opt_str(params.openvino_device, "openvino_device")? {
                None => Device::OpenVino {
                    target: "CPU".into(),
                },
                Some(target) => format!("openvino:{target}").parse()?,
            },
            other => {
                return Err(invalid(
                    "device",
                    &format!("{other} is not a unclip_device"),
                ))
            }
        };
        if params.device_id < 0 {
            return Err(invalid("device_id", "must be ≥ 0"));
        }
        let precision = match params.precision {
            0 => Precision::F32,
            1 => Precision::Bf16,
            2 => Precision::Fp16,
            3 => Precision::Auto,
            4 => Precision::Int8,
            other => {
                return Err(invalid(
                    "precision",
                    &format!("{other} is not a unclip_precision"),
                ))
            }
        };
        let mut builder = Runtime::builder()
            .device(device)
            .precision(precision)
            .low_memory(params.low_memory != 0)
            .tensorrt(TensorRtOptions {
                fp16: params.tensorrt_fp16 != 0,
                cache_dir: opt_str(params.tensorrt_cache_dir, "tensorrt_cache_dir")?
                    .map(PathBuf::from),
                max_workspace_size: (params.tensorrt_max_workspace_size > 0)
                    .then_some(params.tensorrt_max_workspace_size as usize),
            })
            .openvino(OpenVinoOptions {
                plugin: opt_str(params.openvino_plugin_path, "openvino_plugin_path")?
                    .map(PathBuf::from),
                cache_dir: opt_str(params.openvino_cache_dir, "openvino_cache_dir")?
                    .map(PathBuf::from),
            });
        if let Some(path) = opt_str(params.ort_library_path, "ort_library_path")? {
            builder = builder.library(path);
        }
        if params.threads > 0 {
            builder = builder.threads(params.threads as usize);
        }
        if let Some(dir) = opt_str(params.graph_cache_dir, "graph_cache_dir")? {
            builder = builder.graph_cache_dir(dir);
        }
        let runtime = builder.build()?;
        *out = Box::into_raw(Box::new(unclip_runtime { runtime }));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn unclip_runtime_free(runtime: *mut unclip_runtime) {
    if !runtime.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(runtime))));
    }
}
