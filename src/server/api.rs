//! The OpenAI-shaped endpoints and error objects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Multipart, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use image::RgbImage;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::worker::{BatchKey, Job, JobError};
use super::AppState;
use crate::pipeline::TextToImage;
use crate::schedulers::SchedulerKind;
use crate::RngKind;

/// An OpenAI error object with its HTTP status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn bad_request(param: Option<&str>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
            retry_after: None,
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid or missing API key: send `Authorization: Bearer <key>`".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
            retry_after: None,
        }
    }

    pub fn not_found() -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: "no such route: see GET /v1/models and the README's server section".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("not_found"),
            retry_after: None,
        }
    }

    pub fn queue_full() -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the generation queue is full: retry after the Retry-After seconds".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
            retry_after: Some(1),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("unavailable"),
            retry_after: Some(1),
        }
    }

    pub fn timeout() -> Self {
        ApiError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message:
                "the request took longer than the server's --request-timeout and was cancelled"
                    .into(),
            kind: "server_error",
            param: None,
            code: Some("timeout"),
            retry_after: None,
        }
    }

    /// 413: the body is over `--max-body-mib`; multipart uploads name the `image` field.
    pub fn payload_too_large(multipart: bool) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: if multipart {
                "the upload is over the server's body limit"
            } else {
                "the request body is over the server's limit"
            }
            .into(),
            kind: "invalid_request_error",
            param: multipart.then(|| "image".into()),
            code: Some("payload_too_large"),
            retry_after: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
            retry_after: None,
        }
    }

    fn from_library(e: &crate::Error) -> Self {
        match JobError::from(e) {
            JobError::BadInput(message) => Self::bad_request(None, message),
            JobError::Cancelled => Self::timeout(),
            JobError::Internal(message) => Self::internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body may be unread (past the server's drain bound), so this
            // connection cannot carry another request: say so, or a keep-alive client reuses it and its next request fails with
            // an incomplete message (seen in tests/server.rs under load).
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Turns axum's plain-text rejections (body too large, bad JSON, wrong content type) into
/// OpenAI error objects; 415 and 422 become 400 as OpenAI answers them.
pub async fn openai_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError {
            status,
            message: format!("{body}: the request body is over the server's limit"),
            kind: "invalid_request_error",
            param: None,
            code: Some("payload_too_large"),
            retry_after: None,
        },
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::bad_request(None, body)
        }
        _ => ApiError {
            status,
            message: body,
            kind: if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            },
            param: None,
            code: None,
            retry_after: None,
        },
    };
    if error.message.is_empty() {
        error.message = status.to_string();
    }
    error.into_response()
}

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
fn prepare(
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
    let output_size = match &params.size {
        None => None,
        Some(size) => {
            let sizes = state.pipeline.sizes();
            let listed = sizes
                .iter()
                .map(|s| format!("{s}x{s}"))
                .collect::<Vec<_>>()
                .join(", ");
            let parsed = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)));
            match parsed {
                Some((w, h)) if w == h && sizes.contains(&w) => Some(w),
                _ => {
                    return Err(ApiError::bad_request(
                        Some("size"),
                        format!("size {size:?} is not available: this model makes {listed}"),
                    ))
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
    let seed = params.seed.unwrap_or_else(rand_seed);
    Ok((BatchKey { request, variation }, n, seed, rng))
}

fn check_prompt(state: &AppState, param: &'static str, prompt: &str) -> Result<(), ApiError> {
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

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Marks the job cancelled when the handler is dropped (client gone) before it completed.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Queues a job and waits for its images.
async fn submit(
    state: &AppState,
    key: BatchKey,
    prompt: String,
    embedding: Option<ndarray::Array2<f32>>,
    n: usize,
    seed: u64,
    rng: RngKind,
) -> Result<Vec<RgbImage>, ApiError> {
    if state.shutting_down.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let cancelled = Arc::new(AtomicBool::new(false));
    let mut guard = CancelOnDrop {
        flag: cancelled.clone(),
        armed: true,
    };
    let (reply, response) = oneshot::channel();
    let job = Job {
        key,
        prompt,
        embedding,
        n,
        seed,
        rng,
        cancelled,
        reply,
    };
    // Admission: at most `max_queue` jobs wait; the worker gives the slot back when a job starts.
    let max_queue = state.config.max_queue.max(1);
    if state
        .waiting
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
            (w < max_queue).then_some(w + 1)
        })
        .is_err()
    {
        return Err(ApiError::queue_full());
    }
    match state.jobs.try_send(job) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            state.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::queue_full());
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            state.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::unavailable("the worker has stopped"));
        }
    }
    let result = tokio::time::timeout(state.config.request_timeout, response).await;
    let images = match result {
        Err(_) => return Err(ApiError::timeout()),
        Ok(Err(_)) => return Err(ApiError::internal("the worker dropped the job")),
        Ok(Ok(Err(JobError::Cancelled))) => return Err(ApiError::timeout()),
        Ok(Ok(Err(JobError::BadInput(message)))) => {
            return Err(ApiError::bad_request(None, message))
        }
        Ok(Ok(Err(JobError::Internal(message)))) => return Err(ApiError::internal(message)),
        Ok(Ok(Ok(images))) => images,
    };
    guard.armed = false;
    Ok(images)
}

async fn images_response(images: Vec<RgbImage>, seed: u64) -> Result<Response, ApiError> {
    let data = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .enumerate()
            .map(|(i, image)| {
                let meta = vec![
                    ("seed".to_string(), seed.to_string()),
                    ("image_index".to_string(), i.to_string()),
                ];
                let png = crate::image_io::encode_png(image, &meta)?;
                Ok(json!({
                    "b64_json": base64::engine::general_purpose::STANDARD.encode(png),
                    "seed": seed,
                }))
            })
            .collect::<crate::Result<Vec<Value>>>()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Json(json!({"created": created, "data": data})).into_response())
}

/// `POST /v1/images/generations`.
pub async fn generations(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ImageParams>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(params) = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(false),
        _ => ApiError::bad_request(None, e.body_text()),
    })?;
    let prompt = params
        .prompt
        .clone()
        .ok_or_else(|| ApiError::bad_request(Some("prompt"), "`prompt` is required"))?;
    check_prompt(&state, "prompt", &prompt)?;
    tracing::debug!(
        user = params.user.as_deref(),
        n = params.n,
        "generation request"
    );
    let (key, n, seed, rng) = prepare(&state, &params, false)?;
    let images = submit(&state, key, prompt, None, n, seed, rng).await?;
    images_response(images, seed).await
}

/// Reads a multipart form: the `image` field(s) as bytes, every other field as text.
async fn read_form(
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

/// Decodes uploads (limits checked before decoding) and embeds them with CLIP's image tower.
async fn embed_uploads(
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

/// The variations form: exactly one `image` upload and the Images API parameters (no prompt).
async fn variation_form(form: Multipart) -> Result<(Vec<Vec<u8>>, ImageParams), ApiError> {
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

/// `POST /v1/images/variations` (multipart: `image`, `n`, `size`, `response_format`, …).
pub async fn variations(
    State(state): State<Arc<AppState>>,
    form: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let form = form.map_err(|e| {
        ApiError::bad_request(
            None,
            format!(
                "{}: this endpoint takes a multipart/form-data body (an `image` file and form \
                 fields), not JSON",
                e.body_text()
            ),
        )
    })?;
    let (uploads, params) = variation_form(form).await?;
    tracing::debug!(
        user = params.user.as_deref(),
        n = params.n,
        "variation request"
    );
    let (key, n, seed, rng) = prepare(&state, &params, true)?;
    let embedding = embed_uploads(&state, uploads).await?;
    let images = submit(&state, key, String::new(), Some(embedding), n, seed, rng).await?;
    images_response(images, seed).await
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
