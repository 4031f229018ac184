//! Devices and precisions as the user names them (`cpu`, `cuda:N`, `tensorrt:N`,
//! `openvino:GPU.1`; `f32`, `bf16`, `fp16`, `auto`), and the precision each device runs
//! (docs/architecture.md, "Execution providers").
//!
//! A named provider that cannot be registered is an error, never a silent CPU fallback: ORT
//! falls back quietly unless a provider is registered with `error_on_failure`, and we
//! check availability first so the error can say what to install. The providers are set up in
//! `tensorrt.rs` (CUDA and TensorRT) and `openvino.rs`.

use std::fmt;
use std::str::FromStr;

use super::openvino::{openvino_device_type, OpenVinoDeviceType};
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
    /// (the fast bf16 mode on AMX CPUs), `GPU`, `GPU.1`, `NPU`.
    OpenVino { target: String },
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

/// Numeric precision of the networks (docs/architecture.md, "Execution providers"). The bundle stays fp32; the provider lowers it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// fp32 everywhere: the exact mode.
    #[default]
    F32,
    /// bfloat16 compute (OpenVINO on CPUs with AMX or AVX-512-BF16).
    Bf16,
    /// float16 compute (TensorRT engines, OpenVINO GPU/NPU).
    Fp16,
    /// int8 models (static QDQ) on the CPU device: the bundle's `int8` models
    /// (`export/quantize_bundle.py`); models without one run f32.
    Int8,
    /// The fastest precision the device has: bf16 on OpenVINO CPUs with AMX or AVX-512-BF16
    /// (else f32), f16 on OpenVINO GPU/NPU and TensorRT, f32 on CUDA; on the CPU device int8
    /// where the CPU has VNNI and the bundle's int8 models passed their fidelity check and were
    /// faster when quantized ([`crate::Bundle::int8_preferred`]), else f32.
    Auto,
}

impl FromStr for Precision {
    type Err = Error;

    /// `f32` (`fp32`), `bf16`, `fp16` (`f16`), `int8`, `auto`; case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" | "f16" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            "auto" => Ok(Precision::Auto),
            _ => Err(Error::invalid(
                "precision",
                format!("{s:?}: choose f32, bf16, fp16, int8 or auto"),
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
            Precision::Int8 => "int8",
            Precision::Auto => "auto",
        })
    }
}

/// What the CPU offers for reduced precision (x86 flags from `/proc/cpuinfo`: `amx_bf16`,
/// `avx512_bf16`; `avx512_vnni` or `avx_vnni` for int8 dot products).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    pub amx_bf16: bool,
    pub avx512_bf16: bool,
    pub vnni: bool,
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
            vnni: flags.contains(&"avx512_vnni") || flags.contains(&"avx_vnni"),
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
        // Auto on the CPU device: int8 where VNNI runs it; the pipeline falls back to f32 for a
        // bundle without int8 models that passed their fidelity check.
        (Device::Cpu, Precision::Auto) => Ok(if cpu.vnni {
            Precision::Int8
        } else {
            Precision::F32
        }),
        (Device::Cpu, Precision::Int8) => Ok(Precision::Int8),
        (Device::Cuda { .. }, Precision::Auto) => Ok(Precision::F32),
        (Device::Cpu, _) => refuse(
            "ONNX Runtime's CPU provider runs f32 and int8 models; the bf16 mode is --device openvino --precision bf16 (or auto)",
        ),
        (_, Precision::Int8) => refuse("int8 models run on --device cpu"),
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
    fn precision_resolves_per_device() {
        let amx = CpuFeatures {
            amx_bf16: true,
            avx512_bf16: true,
            vnni: true,
        };
        let zen4 = CpuFeatures {
            amx_bf16: false,
            avx512_bf16: true,
            vnni: true,
        };
        let plain = CpuFeatures::default();
        let ov = |t: &str| Device::OpenVino { target: t.into() };
        let ok = |d: &Device, p, cpu| resolve_precision(d, p, cpu).unwrap();
        assert_eq!(ok(&ov("CPU"), Precision::Auto, amx), Precision::Bf16);
        assert_eq!(ok(&ov("CPU"), Precision::Auto, plain), Precision::F32);
        assert_eq!(ok(&ov("GPU.1"), Precision::Auto, amx), Precision::Fp16);
        assert_eq!(ok(&ov("CPU"), Precision::Bf16, plain), Precision::Bf16);
        assert_eq!(ok(&Device::Cpu, Precision::Auto, amx), Precision::Int8);
        assert_eq!(ok(&Device::Cpu, Precision::Auto, zen4), Precision::Int8);
        assert_eq!(ok(&Device::Cpu, Precision::Auto, plain), Precision::F32);
        assert_eq!(ok(&Device::Cpu, Precision::Int8, plain), Precision::Int8);
        assert_eq!(ok(&ov("CPU"), Precision::Auto, zen4), Precision::Bf16);
        let trt = Device::TensorRt { device_id: 0 };
        assert_eq!(ok(&trt, Precision::Auto, amx), Precision::Fp16);
        for (device, precision, names) in [
            (Device::Cpu, Precision::Bf16, "--device openvino"),
            (Device::Cuda { device_id: 0 }, Precision::Fp16, "tensorrt"),
            (trt, Precision::Bf16, "f32 or fp16"),
            (ov("NPU"), Precision::Bf16, "f32 or fp16"),
            (ov("CPU"), Precision::Int8, "--device cpu"),
            (
                Device::Cuda { device_id: 0 },
                Precision::Int8,
                "--device cpu",
            ),
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
        assert_eq!("INT8".parse::<Precision>().unwrap(), Precision::Int8);
        assert!("int4".parse::<Precision>().is_err());
    }

    #[test]
    fn reads_bf16_flags_from_cpuinfo() {
        let info = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n\
                    processor\t: 1\n";
        let features = CpuFeatures::from_cpuinfo(info);
        assert!(features.amx_bf16 && features.avx512_bf16 && features.fast_bf16());
        assert!(!features.vnni);
        let old = CpuFeatures::from_cpuinfo("flags : fpu sse avx2 avx512f\n");
        assert!(!old.fast_bf16() && !old.vnni);
        assert!(CpuFeatures::from_cpuinfo("flags : avx512f avx512_vnni avx512_bf16\n").vnni);
        assert!(CpuFeatures::from_cpuinfo("flags : avx2 avx_vnni\n").vnni);
        assert!(!CpuFeatures::from_cpuinfo("").fast_bf16());
    }
}
