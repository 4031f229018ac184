//! The C ABI (`include/unclip.h`, DESIGN §8): opaque handles, `struct_size`-versioned parameter
//! structs, a status code from every call, the last error message per thread, progress
//! callbacks that can cancel, NULL-safe frees. No panic crosses the boundary: every entry point
//! runs inside `catch_unwind` and reports a panic as `UNCLIP_INTERNAL`.
//!
//! Thread safety: a runtime and a pipeline may be used from several threads at once
//! (`Pipeline` is `Send + Sync`; calls share its sessions and take turns per model call).
//! The last error message is per thread.

#![allow(clippy::missing_safety_doc)] // every function's safety contract is in unclip.h
#![allow(non_camel_case_types)] // the C names

#[cfg(test)]
mod tests;
mod types;

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use ndarray::{Array1, Array2, ArrayView1};

use crate::noise::{noise_source, RngKind};
use crate::pipeline::TextToImage;
use crate::runtime::{Device, OpenVinoOptions, Precision, TensorRtOptions};
use crate::schedulers::SchedulerKind;
use crate::stages::Stage;
use crate::{Error, Pipeline, Runtime};

pub use types::*;

/// The ABI version of this library (`UNCLIP_ABI_VERSION` in the header).
pub const ABI_VERSION: u32 = 5;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = message);
}

/// The status for a library error.
fn status_of(error: &Error) -> unclip_status {
    match error {
        Error::InvalidArgument { .. }
        | Error::Shape { .. }
        | Error::NonFinite { .. }
        | Error::UnknownDevice(_)
        | Error::Tokenizer(_) => unclip_status::UNCLIP_INVALID_ARGUMENT,
        Error::Cancelled => unclip_status::UNCLIP_CANCELLED,
        Error::OrtNotFound { .. }
        | Error::OrtLoad { .. }
        | Error::BundleFileMissing { .. }
        | Error::NoDefaultBundle { .. } => unclip_status::UNCLIP_NOT_FOUND,
        Error::BundleInvalid { .. }
        | Error::BundleVersion { .. }
        | Error::BundlePathEscape { .. }
        | Error::ChecksumMismatch { .. }
        | Error::ModelSignature { .. }
        | Error::ModelLoad { .. } => unclip_status::UNCLIP_BUNDLE_INVALID,
        Error::ProviderUnavailable { .. } => unclip_status::UNCLIP_PROVIDER_UNAVAILABLE,
        Error::Io { .. } | Error::Npy { .. } | Error::Image { .. } => {
            unclip_status::UNCLIP_IO_ERROR
        }
        _ => unclip_status::UNCLIP_RUNTIME_ERROR,
    }
}

/// Runs `body`, turning errors and panics into a status and the thread's last error.
fn guard(body: impl FnOnce() -> Result<(), Error>) -> unclip_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            unclip_status::UNCLIP_OK
        }
        Ok(Err(error)) => {
            set_last_error(&error.to_string());
            status_of(&error)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!(
                "internal error (a bug in unclip, please report it): {message}"
            ));
            unclip_status::UNCLIP_INTERNAL
        }
    }
}

fn invalid(name: &'static str, reason: &str) -> Error {
    Error::invalid(name, reason.to_string())
}

/// Reads a NUL-terminated UTF-8 string; NULL → `None`.
unsafe fn opt_str<'a>(ptr: *const c_char, name: &'static str) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map(Some)
        .map_err(|_| invalid(name, "is not valid UTF-8"))
}

unsafe fn req_str<'a>(ptr: *const c_char, name: &'static str) -> Result<&'a str, Error> {
    opt_str(ptr, name)?.ok_or_else(|| invalid(name, "is NULL"))
}

/// Checks a parameter struct's `struct_size` against the size this library knows.
fn check_size(name: &'static str, given: usize, known: usize) -> Result<(), Error> {
    if given < known {
        return Err(invalid(
            name,
            &format!("struct_size is {given}, this library needs {known}: initialize it with its *_params_init()"),
        ));
    }
    Ok(())
}

#[no_mangle]
pub extern "C" fn unclip_abi_version() -> u32 {
    ABI_VERSION
}

#[no_mangle]
pub extern "C" fn unclip_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[no_mangle]
pub extern "C" fn unclip_last_error_message() -> *const c_char {
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

#[no_mangle]
pub unsafe extern "C" fn unclip_runtime_params_init(params: *mut unclip_runtime_params) {
    if let Some(params) = params.as_mut() {
        *params = unclip_runtime_params::default();
    }
}

#[no_mangle]
pub unsafe extern "C" fn unclip_generate_params_init(params: *mut unclip_generate_params) {
    if let Some(params) = params.as_mut() {
        *params = unclip_generate_params::default();
    }
}

/// Opaque runtime handle.
pub struct unclip_runtime {
    runtime: Runtime,
}

/// Opaque pipeline handle.
pub struct unclip_pipeline {
    pipeline: Pipeline,
}

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

#[no_mangle]
pub unsafe extern "C" fn unclip_pipeline_load(
    runtime: *const unclip_runtime,
    bundle_dir: *const c_char,
    out: *mut *mut unclip_pipeline,
) -> unclip_status {
    guard(|| {
        if out.is_null() {
            return Err(invalid("out", "is NULL"));
        }
        *out = std::ptr::null_mut();
        let runtime = runtime
            .as_ref()
            .ok_or_else(|| invalid("runtime", "is NULL"))?;
        let dir = req_str(bundle_dir, "bundle_dir")?;
        let pipeline = Pipeline::load(&runtime.runtime, dir)?;
        *out = Box::into_raw(Box::new(unclip_pipeline { pipeline }));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn unclip_pipeline_free(pipeline: *mut unclip_pipeline) {
    if !pipeline.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(pipeline))));
    }
}

#[no_mangle]
pub unsafe extern "C" fn unclip_pipeline_embedding_dim(pipeline: *const unclip_pipeline) -> u32 {
    pipeline
        .as_ref()
        .map_or(0, |p| p.pipeline.prior().embedding_dim() as u32)
}

#[no_mangle]
pub unsafe extern "C" fn unclip_pipeline_image_size(pipeline: *const unclip_pipeline) -> u32 {
    pipeline
        .as_ref()
        .map_or(0, |p| p.pipeline.output_size() as u32)
}

/// The caller's parameter struct, checked and copied. A host built against ABI 1 passes the
/// shorter ABI 1 struct: only `struct_size` bytes are read and the appended fields keep their
/// defaults.
unsafe fn params_of(
    params: *const unclip_generate_params,
) -> Result<unclip_generate_params, Error> {
    versioned_copy(params, "unclip_generate_params")
}

/// A params struct that starts with `struct_size`, of which a host built against an older ABI
/// passes one of the sizes in `ABI_SIZES`: only `struct_size` bytes are read, the fields
/// appended since keep their defaults.
unsafe fn versioned_copy<T: Default + HasStructSize>(
    params: *const T,
    name: &'static str,
) -> Result<T, Error> {
    if params.is_null() {
        return Err(invalid("params", "is NULL"));
    }
    // struct_size is the first field of every params struct.
    let given = params.cast::<usize>().read_unaligned();
    check_size(name, given, T::ABI_SIZES[0])?;
    let known = std::mem::size_of::<T>();
    if given < known && !T::ABI_SIZES.contains(&given) {
        // A size between two ABI versions would copy part of a field: half a pointer is a wild
        // pointer (found by fuzzing `capi_params`: a SEGV in strlen on openvino_plugin_path).
        return Err(invalid(
            name,
            &format!(
                "struct_size is {given}, which is no ABI version's size of this struct ({:?} or \
                 more): initialize it with its *_params_init()",
                T::ABI_SIZES
            ),
        ));
    }
    let mut copy = T::default();
    std::ptr::copy_nonoverlapping(
        params.cast::<u8>(),
        std::ptr::addr_of_mut!(copy).cast::<u8>(),
        given.min(known),
    );
    copy.set_struct_size(known);
    Ok(copy)
}

/// Params structs whose first field is `struct_size`.
trait HasStructSize {
    /// The struct's size in each ABI version that changed it, oldest first (the last is the
    /// current size).
    const ABI_SIZES: &'static [usize];
    fn set_struct_size(&mut self, size: usize);
}

impl HasStructSize for unclip_generate_params {
    const ABI_SIZES: &'static [usize] = &[
        types::GENERATE_PARAMS_V1_SIZE,
        std::mem::size_of::<unclip_generate_params>(),
    ];
    fn set_struct_size(&mut self, size: usize) {
        self.struct_size = size;
    }
}

impl HasStructSize for unclip_runtime_params {
    const ABI_SIZES: &'static [usize] = &[
        types::RUNTIME_PARAMS_V2_SIZE,
        types::RUNTIME_PARAMS_V3_SIZE,
        types::RUNTIME_PARAMS_V4_SIZE,
        std::mem::size_of::<unclip_runtime_params>(),
    ];
    fn set_struct_size(&mut self, size: usize) {
        self.struct_size = size;
    }
}

/// Builds the request shared by the generate calls.
unsafe fn request_of(params: &unclip_generate_params) -> Result<TextToImage, Error> {
    let steps = |n: u32| (n > 0).then_some(n as usize);
    let scale = |s: f32| (s >= 0.0 || s.is_nan()).then_some(s);
    if params.num_images_per_prompt == 0 {
        return Err(invalid("num_images_per_prompt", "must be at least 1"));
    }
    if !matches!(params.rng, 0 | 1) {
        return Err(invalid(
            "rng",
            &format!("{} is not a unclip_rng", params.rng),
        ));
    }
    let scheduler = |name: &'static str, value: i32| -> Result<Option<SchedulerKind>, Error> {
        match value {
            0 => Ok(None),
            1 => Ok(Some(SchedulerKind::UnCLIP)),
            2 => Ok(Some(SchedulerKind::Ddim)),
            3 => Ok(Some(SchedulerKind::DpmSolverPP)),
            other => Err(invalid(name, &format!("{other} is not a unclip_scheduler"))),
        }
    };
    let request = TextToImage {
        prior_scheduler: scheduler("prior_scheduler", params.prior_scheduler)?,
        decoder_scheduler: scheduler("decoder_scheduler", params.decoder_scheduler)?,
        super_res_scheduler: scheduler("super_res_scheduler", params.super_res_scheduler)?,
        eta: (params.eta != 0.0).then_some(params.eta),
        output_size: (params.output_size > 0).then_some(params.output_size as usize),
        negative_prompt: opt_str(params.negative_prompt, "negative_prompt")?.map(str::to_string),
        num_images_per_prompt: Some(params.num_images_per_prompt as usize),
        prior_steps: steps(params.prior_steps),
        decoder_steps: steps(params.decoder_steps),
        super_res_steps: steps(params.super_res_steps).into_iter().collect(),
        prior_guidance_scale: scale(params.prior_guidance_scale),
        decoder_guidance_scale: scale(params.decoder_guidance_scale),
        ..Default::default()
    };
    Ok(request)
}

/// Runs a request and hands the images to the caller.
unsafe fn run(
    pipeline: &Pipeline,
    request: &TextToImage,
    params: &unclip_generate_params,
    out_images: *mut *mut unclip_image,
    out_count: *mut usize,
) -> Result<(), Error> {
    let mut noise = noise_of(params);
    let mut observer = progress_observer(params);
    let generation = pipeline.generate(request, noise.as_mut(), &mut observer)?;
    *out_images = types::images_into_raw(generation.images, out_count);
    Ok(())
}

fn noise_of(params: &unclip_generate_params) -> Box<dyn crate::noise::NoiseSource> {
    let kind = if params.rng == 1 {
        RngKind::Torch
    } else {
        RngKind::Fast
    };
    noise_source(kind, params.seed)
}

/// The caller's progress callback as an observer (non-zero return cancels).
fn progress_observer(
    params: &unclip_generate_params,
) -> impl FnMut(crate::stages::Progress) -> ControlFlow<()> {
    let callback = params.progress;
    let user = params.progress_user_data;
    move |p: crate::stages::Progress| {
        let Some(callback) = callback else {
            return ControlFlow::Continue(());
        };
        let stage = match p.stage {
            Stage::Text => 0,
            Stage::Prior => 1,
            Stage::Decoder => 2,
            Stage::Upsampler(i) => 3 + i as i32,
        };
        // SAFETY: the host promises a callable callback for the duration of the call.
        if unsafe { callback(stage, p.step as u32, p.steps as u32, user) } != 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

unsafe fn check_outputs(
    out_images: *mut *mut unclip_image,
    out_count: *mut usize,
) -> Result<(), Error> {
    if out_images.is_null() || out_count.is_null() {
        return Err(invalid("out_images/out_count", "is NULL"));
    }
    *out_images = std::ptr::null_mut();
    *out_count = 0;
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn unclip_generate(
    pipeline: *const unclip_pipeline,
    prompts: *const *const c_char,
    num_prompts: usize,
    params: *const unclip_generate_params,
    out_images: *mut *mut unclip_image,
    out_count: *mut usize,
) -> unclip_status {
    guard(|| {
        check_outputs(out_images, out_count)?;
        let pipeline = pipeline
            .as_ref()
            .ok_or_else(|| invalid("pipeline", "is NULL"))?;
        if prompts.is_null() || num_prompts == 0 {
            return Err(invalid(
                "prompts",
                "give at least one prompt (NULL-terminated UTF-8 strings)",
            ));
        }
        let params = &params_of(params)?;
        let mut request = request_of(params)?;
        request.prompts = (0..num_prompts)
            .map(|i| req_str(*prompts.add(i), "prompts[i]").map(str::to_string))
            .collect::<Result<_, _>>()?;
        run(&pipeline.pipeline, &request, params, out_images, out_count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn unclip_generate_from_embeddings(
    pipeline: *const unclip_pipeline,
    embeddings: *const f32,
    num_embeddings: usize,
    dim: usize,
    params: *const unclip_generate_params,
    out_images: *mut *mut unclip_image,
    out_count: *mut usize,
) -> unclip_status {
    guard(|| {
        check_outputs(out_images, out_count)?;
        let pipeline = pipeline
            .as_ref()
            .ok_or_else(|| invalid("pipeline", "is NULL"))?;
        if embeddings.is_null() || num_embeddings == 0 || dim == 0 {
            return Err(invalid("embeddings", "NULL or empty"));
        }
        let values = std::slice::from_raw_parts(
            embeddings,
            num_embeddings
                .checked_mul(dim)
                .ok_or_else(|| invalid("dim", "too large"))?,
        );
        let embeddings = Array2::from_shape_vec((num_embeddings, dim), values.to_vec())
            .map_err(|e| invalid("embeddings", &e.to_string()))?;
        let params = &params_of(params)?;
        let mut request = request_of(params)?;
        // Decoding embeddings is unconditional on text: the empty prompt, as image variations.
        request.prompts = vec![String::new(); num_embeddings];
        request.image_embeddings = Some(embeddings);
        run(&pipeline.pipeline, &request, params, out_images, out_count)
    })
}

#[no_mangle]
pub unsafe extern "C" fn unclip_encode_text(
    pipeline: *const unclip_pipeline,
    prompt: *const c_char,
    out_embedding: *mut f32,
    dim: usize,
) -> unclip_status {
    guard(|| {
        let pipeline = pipeline
            .as_ref()
            .ok_or_else(|| invalid("pipeline", "is NULL"))?;
        let prompt = req_str(prompt, "prompt")?;
        if out_embedding.is_null() {
            return Err(invalid("out_embedding", "is NULL"));
        }
        let (_, text) = pipeline.pipeline.text_encoder().encode(&[prompt])?;
        let row = text.embeds.row(0);
        if dim != row.len() {
            return Err(invalid(
                "dim",
                &format!("{dim} given, the bundle's embeddings have {}", row.len()),
            ));
        }
        std::slice::from_raw_parts_mut(out_embedding, dim)
            .copy_from_slice(row.as_slice().unwrap_or(&row.to_vec()));
        Ok(())
    })
}

/// Copies a caller's tightly packed RGB8 buffer into an image.
unsafe fn rgb_image(rgb: *const u8, width: u32, height: u32) -> Result<image::DynamicImage, Error> {
    if rgb.is_null() || width == 0 || height == 0 {
        return Err(invalid("rgb/width/height", "NULL buffer or zero size"));
    }
    let len = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .filter(|n| *n <= 1 << 30)
        .ok_or_else(|| invalid("width/height", "image too large"))?;
    let bytes = std::slice::from_raw_parts(rgb, len).to_vec();
    image::RgbImage::from_raw(width, height, bytes)
        .map(image::DynamicImage::ImageRgb8)
        .ok_or_else(|| invalid("rgb", "buffer size does not match width × height × 3"))
}

#[no_mangle]
pub unsafe extern "C" fn unclip_encode_image(
    pipeline: *const unclip_pipeline,
    rgb: *const u8,
    width: u32,
    height: u32,
    out_embedding: *mut f32,
    dim: usize,
) -> unclip_status {
    guard(|| {
        let pipeline = pipeline
            .as_ref()
            .ok_or_else(|| invalid("pipeline", "is NULL"))?;
        if out_embedding.is_null() {
            return Err(invalid("out_embedding", "is NULL"));
        }
        let image = rgb_image(rgb, width, height)?;
        let embeddings = pipeline.pipeline.image_encoder()?.encode(&[image])?;
        let row = embeddings.row(0);
        if dim != row.len() {
            return Err(invalid(
                "dim",
                &format!("{dim} given, the bundle's embeddings have {}", row.len()),
            ));
        }
        std::slice::from_raw_parts_mut(out_embedding, dim).copy_from_slice(&row.to_vec());
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn unclip_generate_variations(
    pipeline: *const unclip_pipeline,
    rgb: *const u8,
    width: u32,
    height: u32,
    params: *const unclip_generate_params,
    out_images: *mut *mut unclip_image,
    out_count: *mut usize,
) -> unclip_status {
    guard(|| {
        check_outputs(out_images, out_count)?;
        let pipeline = pipeline
            .as_ref()
            .ok_or_else(|| invalid("pipeline", "is NULL"))?;
        let image = rgb_image(rgb, width, height)?;
        let params = &params_of(params)?;
        let request = request_of(params)?;
        let mut noise = noise_of(params);
        let mut observer = progress_observer(params);
        let generation =
            pipeline
                .pipeline
                .vary(&[image], &request, noise.as_mut(), &mut observer)?;
        *out_images = types::images_into_raw(generation.images, out_count);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn unclip_slerp(
    a: *const f32,
    b: *const f32,
    dim: usize,
    t: f32,
    out: *mut f32,
) -> unclip_status {
    guard(|| {
        if a.is_null() || b.is_null() || out.is_null() || dim == 0 {
            return Err(invalid("a/b/out/dim", "NULL pointer or zero dim"));
        }
        let a = ArrayView1::from(std::slice::from_raw_parts(a, dim));
        let b = ArrayView1::from(std::slice::from_raw_parts(b, dim));
        let mixed: Array1<f32> = crate::latent::slerp(a, b, t)?;
        std::slice::from_raw_parts_mut(out, dim)
            .copy_from_slice(mixed.as_slice().expect("owned and contiguous"));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn unclip_image_free(images: *mut unclip_image, count: usize) {
    if !images.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| types::free_images(images, count)));
    }
}
