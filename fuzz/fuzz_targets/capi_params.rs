//! C ABI parameter structs: arbitrary `struct_size`, enum values, step counts, guidance scales
//! (NaN, negative, huge), η, output sizes, images per prompt, seeds and prompt bytes (invalid
//! UTF-8, empty, many) through `unclip_generate` on `models/tiny`. Every call returns a status,
//! never `UNCLIP_INTERNAL` (a caught panic); a progress callback cancels at the first step, so
//! validation runs in full without the cost of whole generations. Inputs starting with 0xA5 go to
//! `unclip_runtime_create` instead (ABI 1–4 `unclip_runtime_params`: struct_size, device,
//! device_id, precision, OpenVINO device names, low-memory mode; the plugin path never names a
//! real file).
#![no_main]
use std::ffi::{c_void, CString};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use unclip::capi::*;

/// The runtime and pipeline, kept for the whole run (reachable, so not reported as leaks).
struct Loaded(*mut unclip_runtime, *mut unclip_pipeline);
// SAFETY: the pipeline handle is Send + Sync (include/unclip.h, thread safety).
unsafe impl Send for Loaded {}
unsafe impl Sync for Loaded {}

fn pipeline() -> *mut unclip_pipeline {
    static PIPELINE: OnceLock<Loaded> = OnceLock::new();
    PIPELINE
        .get_or_init(|| unsafe {
            let lib = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
                concat!(env!("CARGO_MANIFEST_DIR"), "/../.ort/libonnxruntime.so").into()
            });
            let lib = CString::new(lib).unwrap();
            let mut params = unclip_runtime_params::default();
            unclip_runtime_params_init(&mut params);
            params.ort_library_path = lib.as_ptr();
            params.threads = 1;
            let mut runtime = std::ptr::null_mut();
            let status = unclip_runtime_create(&params, &mut runtime);
            assert_eq!(status as i32, 0, "runtime: run scripts/setup-ort");
            let dir = CString::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tiny")).unwrap();
            let mut pipeline = std::ptr::null_mut();
            let status = unclip_pipeline_load(runtime, dir.as_ptr(), &mut pipeline);
            assert_eq!(status as i32, 0, "models/tiny");
            Loaded(runtime, pipeline)
        })
        .1
}

extern "C" fn cancel(_stage: i32, _step: u32, _steps: u32, _user: *mut c_void) -> i32 {
    1
}

/// Reads fields from the input bytes, zeros when they run out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.bytes())
    }
    fn f32(&mut self) -> f32 {
        f32::from_le_bytes(self.bytes())
    }
    /// Small values most of the time, so validation passes often enough to go deeper.
    fn small(&mut self, max: u32) -> u32 {
        let v = self.u32();
        if self.u8() & 1 == 0 {
            v % (max + 1)
        } else {
            v
        }
    }
}

/// `unclip_runtime_create` on fuzzed parameters: a status, never `UNCLIP_INTERNAL`.
fn runtime_params(data: &[u8]) {
    pipeline(); // ONNX Runtime loaded first, from the usual library
    let mut c = Cursor(data);
    let mut params = unclip_runtime_params::default();
    unsafe { unclip_runtime_params_init(&mut params) };
    let full = std::mem::size_of::<unclip_runtime_params>();
    // Branch 3 keeps its number: the committed torn-pointer input takes it.
    params.struct_size = match c.u8() % 4 {
        0 => full,
        1 => RUNTIME_PARAMS_V3_SIZE,
        2 => RUNTIME_PARAMS_V2_SIZE,
        _ => c.u32() as usize % (full + 64),
    };
    params.device = c.i32() % 6;
    params.device_id = c.i32() % 4;
    params.threads = c.small(4);
    params.precision = c.i32() % 6;
    params.tensorrt_fp16 = i32::from(c.u8() & 1);
    let device_name = (c.u8() & 1 == 0).then(|| CString::new(c.bytes::<6>().map(|b| b.max(1))).unwrap());
    params.openvino_device = device_name.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    params.low_memory = c.i32(); // read last: earlier inputs keep their meaning
    let plugin = CString::new("/nonexistent/libonnxruntime_providers_openvino_plugin.so").unwrap();
    params.openvino_plugin_path = plugin.as_ptr();
    let mut runtime = std::ptr::null_mut();
    let status = unsafe { unclip_runtime_create(&params, &mut runtime) };
    assert_ne!(status as i32, 8, "UNCLIP_INTERNAL: a panic was caught");
    assert_eq!(status as i32 == 0, !runtime.is_null());
    unsafe { unclip_runtime_free(runtime) };
}

fuzz_target!(|data: &[u8]| {
    if let Some((0xA5, rest)) = data.split_first() {
        return runtime_params(rest);
    }
    let mut c = Cursor(data);
    let mut params = unclip_generate_params::default();
    unsafe { unclip_generate_params_init(&mut params) };
    let full = std::mem::size_of::<unclip_generate_params>();
    params.struct_size = match c.u8() % 6 {
        0 | 1 | 2 => full,
        3 => GENERATE_PARAMS_V1_SIZE,
        4 => c.u32() as usize % (full + 1), // anything up to the full size, mostly too small
        _ => full + c.u32() as usize % 64, // a newer host's larger struct (the library reads its part)
    };
    params.num_images_per_prompt = c.small(3);
    params.rng = c.i32() % 4;
    params.seed = u64::from(c.u32());
    params.prior_steps = c.small(4);
    params.decoder_steps = c.small(4);
    params.super_res_steps = c.small(4);
    params.prior_guidance_scale = c.f32();
    params.decoder_guidance_scale = c.f32();
    params.prior_scheduler = c.i32() % 6;
    params.decoder_scheduler = c.i32() % 6;
    params.super_res_scheduler = c.i32() % 6;
    params.eta = if c.u8() & 1 == 0 { 0.0 } else { c.f32() };
    params.output_size = match c.u8() % 4 {
        0 => 0,
        1 => 64,
        2 => 256,
        _ => c.u32(),
    };
    params.progress = Some(cancel);
    let negative = (c.u8() & 3 == 0).then(|| CString::new(c.bytes::<8>().map(|b| b.max(1))).unwrap());
    params.negative_prompt = negative.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // The rest: prompts split at 0xFF, NUL-free (C strings), up to 4.
    let prompts: Vec<CString> = c
        .0
        .split(|&b| b == 0xFF)
        .take(4)
        .map(|p| CString::new(p.iter().map(|&b| b.max(1)).collect::<Vec<u8>>()).unwrap())
        .collect();
    let pointers: Vec<*const std::ffi::c_char> = prompts.iter().map(|p| p.as_ptr()).collect();
    let mut images = std::ptr::null_mut();
    let mut count = 0usize;
    let status = unsafe {
        unclip_generate(pipeline(), pointers.as_ptr(), pointers.len(), &params, &mut images, &mut count)
    };
    assert_ne!(status as i32, 8, "UNCLIP_INTERNAL: a panic was caught");
    // Cancelled at the first step, or refused: nothing is returned.
    assert!(images.is_null() && count == 0);
    unsafe { unclip_image_free(images, count) };
});
