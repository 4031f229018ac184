//! `unclip info`: a bundle's stages, shapes and defaults.

use std::path::PathBuf;

use anyhow::{Context, Result};
use unclip::bundle::{Bundle, Dim, Layout};

pub(crate) fn shape_string(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbolic(s) => s.clone(),
        })
        .collect();
    format!("[{}]", dims.join(", "))
}

/// The precisions the bundle runs at on the CPU device, and how its int8 models were made.
fn precisions(bundle: &Bundle) -> String {
    if !bundle.has_int8() {
        return "f32 (no int8 models: export/quantize_bundle.py makes them)".into();
    }
    let int8 = bundle
        .manifest
        .quantization
        .as_ref()
        .and_then(|q| q.get("int8"));
    let text = |pointer: &str| {
        int8.and_then(|q| q.pointer(pointer))
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into())
    };
    let calibration = format!(
        "calibrated on {} prompts x seeds {} at {} steps, {} calls per model",
        int8.and_then(|q| q.pointer("/calibration/prompts"))
            .and_then(|p| p.as_array())
            .map_or(0, |p| p.len()),
        text("/calibration/seeds"),
        text("/calibration/steps"),
        text("/calibration/samples_per_model"),
    );
    let fidelity = match int8.and_then(|q| q.get("fidelity")) {
        Some(_) => format!(
            "fidelity vs f32: mean pixel difference {} (max {}), passed {}, {}x the f32 speed \
             where quantized; auto takes int8: {}",
            text("/fidelity/pixel_diff_mean"),
            text("/fidelity/pixel_diff_max"),
            text("/fidelity/passed"),
            text("/fidelity/speedup"),
            bundle.int8_preferred()
        ),
        None => "fidelity not measured (auto keeps f32)".into(),
    };
    format!("f32, int8 ({calibration}; {fidelity})")
}

pub(crate) fn info(model: Option<PathBuf>) -> Result<()> {
    let dir = crate::models::bundle_dir(model.as_deref())?;
    let bundle = Bundle::open(&dir).with_context(|| format!("opening bundle {}", dir.display()))?;
    let m = &bundle.manifest;
    println!("bundle   {} ({})", m.name, dir.display());
    println!(
        "format   {} v{}, family {}, dtype {}, source {}",
        m.format,
        m.format_version,
        m.layout.family(),
        m.dtype,
        m.source
    );
    println!("sha256   {}", bundle.manifest_sha256);
    println!(
        "tokenizer  max_length {}, pad {:?} (id {})",
        m.tokenizer.max_length, m.tokenizer.pad_token, m.tokenizer.pad_id
    );
    println!("embedding_dim {}", m.embedding_dim);
    let class = |s: &serde_json::Value| {
        format!(
            "{} variance={} prediction={}",
            s.get("_class_name").and_then(|v| v.as_str()).unwrap_or("?"),
            s.get("variance_type")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
            s.get("prediction_type")
                .and_then(|v| v.as_str())
                .unwrap_or("?"),
        )
    };
    println!("stages:");
    println!("  text_encoder  model {}", m.text_encoder.model);
    if let Some(image) = &m.image_encoder {
        println!("  image_encoder model {}", image.model);
    }
    println!(
        "  prior         model {}, {} steps, guidance {}, scheduler {}",
        m.prior.model,
        m.prior.default_steps,
        m.prior.default_guidance_scale,
        class(&m.prior.scheduler)
    );
    match &m.layout {
        Layout::Karlo {
            decoder,
            upsamplers,
        } => {
            println!(
                "  decoder       model {} (+ {}, {}), {}x{}, {} steps, guidance {}, {} extra tokens, scheduler {}",
                decoder.model,
                decoder.text_proj,
                decoder.text_proj_cfg,
                decoder.sample_size,
                decoder.sample_size,
                decoder.default_steps,
                decoder.default_guidance_scale,
                decoder.clip_extra_context_tokens,
                class(&decoder.scheduler)
            );
            for up in upsamplers {
                println!(
                    "  {:<13} models {} / {}, {}x{}, {} steps, scheduler {}",
                    up.name,
                    up.first,
                    up.last,
                    up.sample_size,
                    up.sample_size,
                    up.default_steps,
                    class(&up.scheduler)
                );
            }
        }
        Layout::Kandinsky { decoder } => {
            println!(
                "  decoder       model {} (latent, {} channels), {}x{} by default (any multiple of {}), {} steps, guidance {}, scheduler {}",
                decoder.model,
                decoder.latent_channels,
                decoder.default_size,
                decoder.default_size,
                decoder.movq_scale_factor * 8,
                decoder.default_steps,
                decoder.default_guidance_scale,
                class(&decoder.scheduler)
            );
            println!(
                "  movq          decoder {}, encoder {}, factor {}",
                decoder.movq_decoder,
                decoder
                    .movq_encoder
                    .as_deref()
                    .unwrap_or("none (no img2img)"),
                decoder.movq_scale_factor
            );
            if let Some(negative) = &m.prior.negative_image_embed {
                println!("  negative      zero-image embedding {}", negative.file);
            }
        }
    }
    println!("precisions {}", precisions(&bundle));
    println!("models:");
    for (key, entry) in &m.models {
        match &entry.int8 {
            Some(int8) => println!("  {key} ({}; int8 {})", entry.file, int8.file),
            None => println!("  {key} ({})", entry.file),
        }
        for spec in &entry.inputs {
            println!(
                "    in  {:<28} {:<8} {}",
                spec.name,
                spec.dtype,
                shape_string(&spec.shape)
            );
        }
        for spec in &entry.outputs {
            println!(
                "    out {:<28} {:<8} {}",
                spec.name,
                spec.dtype,
                shape_string(&spec.shape)
            );
        }
    }
    Ok(())
}
