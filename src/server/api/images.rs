//! The Images API routes (`POST /v1/images/generations`, `POST /v1/images/variations`):
//! queue admission and waiting (`submit`, cancelled when the client goes away) and the
//! `b64_json` response.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::embeddings::embed_uploads;
use super::errors::ApiError;
use super::params::{check_prompt, prepare, variation_form, ImageParams};
use crate::server::worker::{BatchKey, Job, JobError, JobImage};
use crate::server::AppState;
use crate::RngKind;

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
) -> Result<Vec<JobImage>, ApiError> {
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
        Ok(Err(_)) => {
            return Err(ApiError::internal(
                "internal error (a bug in unclip, please report it): the run of this request failed unexpectedly",
            ))
        }
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

async fn images_response(images: Vec<JobImage>, seed: u64) -> Result<Response, ApiError> {
    let data = tokio::task::spawn_blocking(move || {
        images
            .iter()
            .map(|job_image| {
                let png = crate::image_io::encode_png(&job_image.image, &job_image.metadata)?;
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
