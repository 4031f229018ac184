//! The embeddings routes (`POST /v1/embeddings` for CLIP text, `POST /v1/embeddings/images`
//! for CLIP images, with `embed_uploads` shared with variations) and `GET /v1/models`.

use std::sync::Arc;

use axum::extract::{Multipart, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::errors::ApiError;
use super::params::{check_prompt, read_form, EmbeddingInput, EmbeddingRequest};
use crate::server::AppState;

/// Decodes uploads (limits checked before decoding) and embeds them with CLIP's image tower.
pub(super) async fn embed_uploads(
    state: &Arc<AppState>,
    uploads: Vec<Vec<u8>>,
) -> Result<ndarray::Array2<f32>, ApiError> {
    if uploads.is_empty() {
        return Err(ApiError::bad_request(
            Some("image"),
            "no `image` file in the form",
        ));
    }
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let images = uploads
            .iter()
            .map(|bytes| crate::vision::decode_image(bytes, &state.config.image_limits))
            .collect::<crate::Result<Vec<_>>>()?;
        state.pipeline.image_encoder()?.encode(&images)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| {
        let mut error = ApiError::from_library(&e);
        error.param = Some("image".into());
        error
    })
}

fn embedding_list(
    model: &str,
    rows: ndarray::Array2<f32>,
    tokens: usize,
    base64_out: bool,
) -> Response {
    let data: Vec<Value> = rows
        .outer_iter()
        .enumerate()
        .map(|(i, row)| {
            let embedding = if base64_out {
                let bytes: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Value::from(row.to_vec())
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}

/// Largest number of inputs per embeddings request.
const MAX_EMBEDDING_INPUTS: usize = 64;

/// `POST /v1/embeddings` with `model: "clip-text"`: CLIP text embeddings (`text_embeds`).
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Json<EmbeddingRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    match request.model.as_deref() {
        None | Some("clip-text") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("model"),
                format!("model {other:?}: this route embeds text with \"clip-text\" (images: POST /v1/embeddings/images)"),
            ))
        }
    }
    let base64_out = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                Some("encoding_format"),
                format!("{other:?}: use \"float\" or \"base64\""),
            ))
        }
    };
    let inputs = match request.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::bad_request(
            Some("input"),
            format!("{} inputs: send 1 to {MAX_EMBEDDING_INPUTS}", inputs.len()),
        ));
    }
    for input in &inputs {
        check_prompt(&state, "input", input)?;
    }
    let worker = state.clone();
    let (rows, tokens) = tokio::task::spawn_blocking(move || {
        let prompts: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let (tokens, embeddings) = worker.pipeline.text_encoder().encode(&prompts)?;
        let count = tokens.mask.iter().filter(|&&m| m != 0).count();
        Ok::<_, crate::Error>((embeddings.embeds, count))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::from_library(&e))?;
    Ok(embedding_list("clip-text", rows, tokens, base64_out))
}

/// `POST /v1/embeddings/images` (extension, multipart `image` fields): CLIP image embeddings.
pub async fn image_embeddings(
    State(state): State<Arc<AppState>>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let form = form.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    let (uploads, fields) = read_form(form).await?;
    if uploads.len() > MAX_EMBEDDING_INPUTS {
        return Err(ApiError::bad_request(
            Some("image"),
            format!("{} images: send 1 to {MAX_EMBEDDING_INPUTS}", uploads.len()),
        ));
    }
    let base64_out = fields.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let rows = embed_uploads(&state, uploads).await?;
    Ok(embedding_list("clip-image", rows, 0, base64_out))
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let name = state.pipeline.bundle().manifest.name.clone();
    let mut data = vec![
        json!({"id": name, "object": "model", "created": 0, "owned_by": "unclip",
               "sizes": state.pipeline.sizes().iter().map(|s| format!("{s}x{s}")).collect::<Vec<_>>()}),
        json!({"id": "clip-text", "object": "model", "created": 0, "owned_by": "unclip"}),
    ];
    if state.pipeline.image_encoder().is_ok() {
        data.push(
            json!({"id": "clip-image", "object": "model", "created": 0, "owned_by": "unclip"}),
        );
    }
    Json(json!({"object": "list", "data": data})).into_response()
}
