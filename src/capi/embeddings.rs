//! Embedding entry points: encoding a prompt or an image into the CLIP embedding space, and
//! mixing two embeddings (slerp).

use std::ffi::c_char;

use ndarray::{Array1, ArrayView1};

use super::images::rgb_image;
use super::*;

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
