//! `#[repr(C)]` types of `include/unclip.h`.
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

/// Result of every call (`unclip_status` in the header).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum unclip_status {
    UNCLIP_OK = 0,
    UNCLIP_INVALID_ARGUMENT = 1,
    UNCLIP_CANCELLED = 2,
    UNCLIP_NOT_FOUND = 3,
    UNCLIP_BUNDLE_INVALID = 4,
    UNCLIP_PROVIDER_UNAVAILABLE = 5,
    UNCLIP_RUNTIME_ERROR = 6,
    UNCLIP_IO_ERROR = 7,
    UNCLIP_INTERNAL = 8,
}

/// Progress callback: stage (0 text, 1 prior, 2 decoder, 3+i upsampler i), step, steps, user
/// data; non-zero cancels.
pub type unclip_progress_callback = Option<unsafe extern "C" fn(i32, u32, u32, *mut c_void) -> i32>;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct unclip_runtime_params {
    pub struct_size: usize,
    pub ort_library_path: *const c_char,
    pub device: i32,
    pub device_id: i32,
    pub threads: u32,
    pub tensorrt_fp16: i32,
    pub tensorrt_cache_dir: *const c_char,
    pub tensorrt_max_workspace_size: u64,
    // ABI 3 (appended)
    pub precision: i32,
    pub openvino_device: *const c_char,
    pub openvino_cache_dir: *const c_char,
    pub openvino_plugin_path: *const c_char,
    // ABI 4 (appended)
    pub low_memory: i32,
    // ABI 5 (appended)
    pub graph_cache_dir: *const c_char,
}

/// Size of `unclip_runtime_params` before ABI 3 (everything before `precision`).
pub const RUNTIME_PARAMS_V2_SIZE: usize = std::mem::offset_of!(unclip_runtime_params, precision);
/// Size of `unclip_runtime_params` in ABI 3 (everything before `low_memory`).
pub const RUNTIME_PARAMS_V3_SIZE: usize = std::mem::offset_of!(unclip_runtime_params, low_memory);
/// Size of `unclip_runtime_params` in ABI 4 (everything before `graph_cache_dir`).
pub const RUNTIME_PARAMS_V4_SIZE: usize =
    std::mem::offset_of!(unclip_runtime_params, graph_cache_dir);

impl Default for unclip_runtime_params {
    fn default() -> Self {
        unclip_runtime_params {
            struct_size: std::mem::size_of::<Self>(),
            ort_library_path: std::ptr::null(),
            device: 0,
            device_id: 0,
            threads: 0,
            tensorrt_fp16: 0,
            tensorrt_cache_dir: std::ptr::null(),
            tensorrt_max_workspace_size: 0,
            precision: 0,
            openvino_device: std::ptr::null(),
            openvino_cache_dir: std::ptr::null(),
            openvino_plugin_path: std::ptr::null(),
            low_memory: 0,
            graph_cache_dir: std::ptr::null(),
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct unclip_generate_params {
    pub struct_size: usize,
    pub num_images_per_prompt: u32,
    pub rng: i32,
    pub seed: u64,
    pub negative_prompt: *const c_char,
    pub prior_steps: u32,
    pub decoder_steps: u32,
    pub super_res_steps: u32,
    pub prior_guidance_scale: f32,
    pub decoder_guidance_scale: f32,
    pub progress: unclip_progress_callback,
    pub progress_user_data: *mut c_void,
    // ABI 2: appended; see `generate_params` for hosts passing the ABI 1 size.
    pub prior_scheduler: i32,
    pub decoder_scheduler: i32,
    pub super_res_scheduler: i32,
    pub eta: f32,
    pub output_size: u32,
    // ABI 7: appended.
    pub width: u32,
    pub height: u32,
}

/// Size of `unclip_generate_params` in ABI 1 (everything before `prior_scheduler`).
pub const GENERATE_PARAMS_V1_SIZE: usize =
    std::mem::offset_of!(unclip_generate_params, prior_scheduler);
/// Size of `unclip_generate_params` in ABI 2 to 6 (everything before `width`). `output_size`
/// ends it, so the struct's tail padding (to 8 bytes) is part of that size.
pub const GENERATE_PARAMS_V2_SIZE: usize =
    (std::mem::offset_of!(unclip_generate_params, output_size) + 4).next_multiple_of(8);

impl Default for unclip_generate_params {
    fn default() -> Self {
        unclip_generate_params {
            struct_size: std::mem::size_of::<Self>(),
            num_images_per_prompt: 1,
            rng: 0,
            seed: 0,
            negative_prompt: std::ptr::null(),
            prior_steps: 0,
            decoder_steps: 0,
            super_res_steps: 0,
            prior_guidance_scale: -1.0,
            decoder_guidance_scale: -1.0,
            progress: None,
            progress_user_data: std::ptr::null_mut(),
            prior_scheduler: 0,
            decoder_scheduler: 0,
            super_res_scheduler: 0,
            eta: 0.0,
            output_size: 0,
            width: 0,
            height: 0,
        }
    }
}

/// An RGB8 image in a library-owned buffer.
#[repr(C)]
pub struct unclip_image {
    pub width: u32,
    pub height: u32,
    pub channels: u32,
    pub data: *mut u8,
}

/// Moves images into a library-owned array for the caller.
pub(super) fn images_into_raw(
    images: Vec<image::RgbImage>,
    out_count: *mut usize,
) -> *mut unclip_image {
    let raw: Box<[unclip_image]> = images
        .into_iter()
        .map(|img| {
            let (width, height) = img.dimensions();
            let data: Box<[u8]> = img.into_raw().into_boxed_slice();
            unclip_image {
                width,
                height,
                channels: 3,
                data: Box::into_raw(data).cast::<u8>(),
            }
        })
        .collect();
    // SAFETY: out_count was checked non-NULL by the caller.
    unsafe { *out_count = raw.len() };
    Box::into_raw(raw).cast::<unclip_image>()
}

/// Frees what [`images_into_raw`] returned.
pub(super) unsafe fn free_images(images: *mut unclip_image, count: usize) {
    let all = Box::from_raw(std::ptr::slice_from_raw_parts_mut(images, count));
    for image in all.iter() {
        if !image.data.is_null() {
            let len = image.width as usize * image.height as usize * image.channels as usize;
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                image.data, len,
            )));
        }
    }
}
