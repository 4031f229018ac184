//! Request bodies and their checks: [`ImageParams`] (generations and variations),
//! [`EmbeddingRequest`], `prepare` (validation into a batch key), prompt limits, and the
//! multipart reading shared by variations and image embeddings (`read_form`,
//! `variation_form`, [`parse_variation_body`]).

use axum::extract::Multipart;
use axum::http::{header, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::errors::ApiError;
use crate::pipeline::TextToImage;
use crate::schedulers::SchedulerKind;
use crate::server::worker::BatchKey;
use crate::server::AppState;
use crate::RngKind;

/// Settings shared by generations and variations (OpenAI fields plus unclip's extensions). An
/// unknown field is a 400 naming it, so a misspelled extension is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageParams {
    pub n: Option<usize>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    pub model: Option<String>,
    /// OpenAI's end-user id: accepted and ignored.
    pub user: Option<String>,
    /// OpenAI's `quality`: only `standard` / `auto` (what DALL·E 2 has).
    pub quality: Option<String>,
    /// The prompt (generations only).
    pub prompt: Option<String>,
    pub seed: Option<u64>,
    pub rng: Option<String>,
    pub negative_prompt: Option<String>,
    pub prior_steps: Option<usize>,
    pub decoder_steps: Option<usize>,
    pub super_res_steps: Option<Vec<usize>>,
    pub prior_guidance_scale: Option<f32>,
    pub decoder_guidance_scale: Option<f32>,
    pub prior_scheduler: Option<String>,
    pub decoder_scheduler: Option<String>,
    pub super_res_scheduler: Option<String>,
    pub eta: Option<f32>,
}

fn scheduler(
    param: &'static str,
    value: &Option<String>,
) -> Result<Option<SchedulerKind>, ApiError> {
    value
        .as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e: crate::Error| ApiError::bad_request(Some(param), e.to_string()))
        })
        .transpose()
}

/// Checks what the request asks for and builds the batch key; nothing is queued yet.
pub(super) fn prepare(
    state: &AppState,
    params: &ImageParams,
    variation: bool,
) -> Result<(BatchKey, usize, u64, RngKind), ApiError> {
    let n = params.n.unwrap_or(1);
    if n == 0 || n > state.config.max_images {
        return Err(ApiError::bad_request(
            Some("n"),
            format!("n = {n}: ask for 1 to {} images", state.config.max_images),
        ));
    }
    if let (Some((model, max_images)), Some(budget)) = (&state.memory, state.config.memory_budget) {
        if n > *max_images {
            return Err(ApiError::bad_request(
                Some("n"),
                format!(
                    "n = {n} needs about {} MiB, over this server's memory budget of {} MiB: \
                     ask for at most {max_images} images",
                    model.estimate(n) >> 20,
                    budget >> 20
                ),
            ));
        }
    }
    match params.quality.as_deref() {
        None | Some("standard") | Some("auto") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("quality"),
                format!("{other:?}: this model has one quality, \"standard\""),
            ))
        }
    }
    match params.response_format.as_deref() {
        None | Some("b64_json") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("response_format"),
                format!("{other:?} is not supported: use \"b64_json\" (this server stores no images to link to)"),
            ))
        }
    }
    if let Some(model) = &params.model {
        let ours = &state.pipeline.bundle().manifest.name;
        // "dall-e-2" is accepted as an alias: clients written for OpenAI's unCLIP model send it.
        if model != ours && model != "unclip" && model != "dall-e-2" {
            return Err(ApiError::bad_request(
                Some("model"),
                format!("model {model:?} is not served here: use {ours:?} (see GET /v1/models)"),
            ));
        }
    }
    let (output_size, output_height) = match &params.size {
        None => (None, None),
        Some(size) => {
            let parsed = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)));
            let sizes = state.pipeline.sizes();
            match (parsed, state.pipeline.latent_decoder()) {
                // Kandinsky 2.2: any multiple of 64 per side.
                (Some((w, h)), Some(latent)) => {
                    latent.latent_size(h, w).map_err(|e| {
                        ApiError::bad_request(Some("size"), format!("size {size:?}: {e}"))
                    })?;
                    (Some(w), Some(h))
                }
                (Some((w, h)), None) if w == h && sizes.contains(&w) => (Some(w), None),
                _ => {
                    let listed = match state.pipeline.latent_decoder() {
                        Some(latent) => format!(
                            "WxH with sides multiples of {} (e.g. {s}x{s})",
                            latent.size_multiple(),
                            s = latent.default_size()
                        ),
                        None => sizes
                            .iter()
                            .map(|s| format!("{s}x{s}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    };
                    return Err(ApiError::bad_request(
                        Some("size"),
                        format!("size {size:?} is not available: this model makes {listed}"),
                    ));
                }
            }
        }
    };
    let rng = match params.rng.as_deref() {
        None => RngKind::default(),
        Some(s) => s
            .parse()
            .map_err(|e: crate::Error| ApiError::bad_request(Some("rng"), e.to_string()))?,
    };
    if let Some(negative) = &params.negative_prompt {
        check_prompt(state, "negative_prompt", negative)?;
    }
    let request = TextToImage {
        negative_prompt: params.negative_prompt.clone(),
        prior_steps: params.prior_steps,
        decoder_steps: params.decoder_steps,
        super_res_steps: params.super_res_steps.clone().unwrap_or_default(),
        prior_guidance_scale: if variation {
            Some(0.0)
        } else {
            params.prior_guidance_scale
        },
        decoder_guidance_scale: params.decoder_guidance_scale,
        prior_scheduler: scheduler("prior_scheduler", &params.prior_scheduler)?,
        decoder_scheduler: scheduler("decoder_scheduler", &params.decoder_scheduler)?,
        super_res_scheduler: scheduler("super_res_scheduler", &params.super_res_scheduler)?,
        eta: params.eta,
        output_size,
        output_height,
        ..Default::default()
    };
    // Everything the pipeline would refuse is refused now, as a 400.
    let mut check = request.clone();
    check.prompts = vec![String::new()];
    check.num_images_per_prompt = Some(n);
    if variation {
        let dim = state.pipeline.prior().embedding_dim();
        check.image_embeddings = Some(ndarray::Array2::zeros((1, dim)));
    }
    state
        .pipeline
        .resolve(&check)
        .map_err(|e| ApiError::from_library(&e))?;
    let seed = params.seed.unwrap_or_else(crate::noise::random_seed);
    Ok((BatchKey { request, variation }, n, seed, rng))
}

pub(super) fn check_prompt(
    state: &AppState,
    param: &'static str,
    prompt: &str,
) -> Result<(), ApiError> {
    let chars = prompt.chars().count();
    if chars > state.config.max_prompt_chars {
        return Err(ApiError::bad_request(
            Some(param),
            format!(
                "{param} has {chars} characters, the limit is {}",
                state.config.max_prompt_chars
            ),
        ));
    }
    Ok(())
}

/// Reads a multipart form: the `image` field(s) as bytes, every other field as text.
pub(super) async fn read_form(
    mut form: Multipart,
) -> Result<(Vec<Vec<u8>>, serde_json::Map<String, Value>), ApiError> {
    let mut images = Vec::new();
    let mut fields = serde_json::Map::new();
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                return Err(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::payload_too_large(true)
                } else {
                    ApiError::bad_request(None, format!("malformed multipart body: {e}"))
                })
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(true)
            } else {
                ApiError::bad_request(Some(&name), format!("cannot read field: {e}"))
            }
        })?;
        if name == "image" || name == "image[]" {
            images.push(bytes.to_vec());
            continue;
        }
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::bad_request(Some(&name), "field is not UTF-8 text"))?;
        // Numbers and lists as JSON where they parse, so the same struct reads both bodies.
        let value = match name.as_str() {
            "super_res_steps" => Value::Array(
                text.split(',')
                    .map(|s| {
                        s.trim().parse::<u64>().map(Value::from).map_err(|_| {
                            ApiError::bad_request(
                                Some("super_res_steps"),
                                "comma-separated integers",
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            "n"
            | "seed"
            | "prior_steps"
            | "decoder_steps"
            | "prior_guidance_scale"
            | "decoder_guidance_scale"
            | "eta" => serde_json::from_str::<Value>(&text)
                .ok()
                .filter(Value::is_number)
                .ok_or_else(|| {
                    ApiError::bad_request(Some(&name), format!("{text:?} is not a number"))
                })?,
            _ => Value::String(text),
        };
        fields.insert(name, value);
    }
    Ok((images, fields))
}

/// The variations form: exactly one `image` upload and the Images API parameters (no prompt).
pub(super) async fn variation_form(
    form: Multipart,
) -> Result<(Vec<Vec<u8>>, ImageParams), ApiError> {
    let (uploads, fields) = read_form(form).await?;
    if uploads.len() != 1 {
        return Err(ApiError::bad_request(
            Some("image"),
            format!("send exactly one `image` file, got {}", uploads.len()),
        ));
    }
    let params: ImageParams = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::bad_request(None, e.to_string()))?;
    if params.prompt.is_some() {
        return Err(ApiError::bad_request(
            Some("prompt"),
            "variations take no prompt (the image is the condition)",
        ));
    }
    Ok((uploads, params))
}

/// A variations request body as the server reads it before any model runs (multipart framing,
/// fields, parameters): the `server_multipart` fuzz target's entry point.
#[doc(hidden)]
pub fn parse_variation_body(
    content_type: &str,
    body: Vec<u8>,
) -> Result<(Vec<Vec<u8>>, ImageParams), ApiError> {
    use axum::extract::FromRequest;
    let request = axum::http::Request::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .map_err(|e| ApiError::bad_request(None, e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    runtime.block_on(async {
        let form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_request(None, e.body_text()))?;
        variation_form(form).await
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub input: EmbeddingInput,
    pub model: Option<String>,
    pub encoding_format: Option<String>,
}
