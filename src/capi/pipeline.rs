//! `unclip_pipeline`: loading a bundle, its queries, and the generate calls (from prompts, from
//! embeddings, variations of an image) with their shared request, noise and progress handling.

use std::ffi::c_char;
use std::ops::ControlFlow;

use ndarray::Array2;

use super::images::rgb_image;
use super::params::params_of;
use super::*;
use crate::noise::{noise_source, RngKind};
use crate::pipeline::TextToImage;
use crate::schedulers::SchedulerKind;
use crate::stages::Stage;

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

/// The bundle's model family as a static NUL-terminated string (`"karlo"` or `"kandinsky2.2"`);
/// NULL for a NULL pipeline. Never freed.
#[no_mangle]
pub unsafe extern "C" fn unclip_pipeline_family(pipeline: *const unclip_pipeline) -> *const c_char {
    match pipeline.as_ref().map(|p| p.pipeline.family()) {
        Some("kandinsky2.2") => c"kandinsky2.2".as_ptr(),
        Some(_) => c"karlo".as_ptr(),
        None => std::ptr::null(),
    }
}

#[no_mangle]
pub unsafe extern "C" fn unclip_pipeline_image_size(pipeline: *const unclip_pipeline) -> u32 {
    pipeline
        .as_ref()
        .map_or(0, |p| p.pipeline.output_size() as u32)
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
            4 => Ok(Some(SchedulerKind::Ddpm)),
            other => Err(invalid(name, &format!("{other} is not a unclip_scheduler"))),
        }
    };
    // ABI 7: width and height (Kandinsky 2.2's non-square images); output_size is the side.
    let side = |n: u32| (n > 0).then_some(n as usize);
    if params.width > 0 && params.output_size > 0 && params.width != params.output_size {
        return Err(invalid(
            "width",
            &format!(
                "{} and output_size {} disagree: set one of them",
                params.width, params.output_size
            ),
        ));
    }
    let output_size = side(params.width).or(side(params.output_size));
    let output_height = side(params.height);
    if output_height.is_some() && output_size.is_none() {
        return Err(invalid("height", "given without width: set both"));
    }
    let request = TextToImage {
        prior_scheduler: scheduler("prior_scheduler", params.prior_scheduler)?,
        decoder_scheduler: scheduler("decoder_scheduler", params.decoder_scheduler)?,
        super_res_scheduler: scheduler("super_res_scheduler", params.super_res_scheduler)?,
        eta: (params.eta != 0.0).then_some(params.eta),
        output_size,
        output_height,
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
