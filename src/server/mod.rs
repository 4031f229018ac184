//! `unclip serve`: an HTTP server speaking the OpenAI Images API (and embeddings), a thin shell
//! over the library on axum/tokio.
//!
//! - `POST /v1/images/generations` (JSON), `POST /v1/images/variations` (multipart),
//!   `POST /v1/embeddings` (`model: "clip-text"`), `POST /v1/embeddings/images` (multipart,
//!   extension), `GET /v1/models`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! - Generation jobs go through a bounded queue (429 with `Retry-After` when full) to one worker
//!   thread that batches compatible jobs ([`worker`]). A client that disconnects or times out
//!   is cancelled: dropped if still queued, its run stopped between steps if it was alone.
//! - Errors are OpenAI error objects `{"error": {"message", "type", "param", "code"}}`.
//! - Limits are checked before work: body bytes, image pixels (before decoding), prompt length,
//!   `n`; an optional API key is compared in constant time; nothing in a request names a file.

mod api;
pub mod memory;
pub mod metrics;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::vision::ImageLimits;
use crate::Pipeline;

pub use api::{parse_variation_body, ApiError, EmbeddingRequest, ImageParams};

/// Server settings (`unclip serve` flags).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// Jobs waiting for the worker before new ones get 429.
    pub max_queue: usize,
    /// Jobs per batched run.
    pub max_batch: usize,
    /// A request still waiting after this gets 504 and is cancelled.
    pub request_timeout: Duration,
    /// Bearer token required on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Largest request body (JSON or multipart), checked while reading.
    pub max_body_bytes: usize,
    /// Largest prompt, in characters (OpenAI's DALL·E 2 limit is 1000).
    pub max_prompt_chars: usize,
    /// Largest `n` per request (OpenAI: 10).
    pub max_images: usize,
    /// Uploaded images: pixel and byte limits, checked before decoding.
    pub image_limits: ImageLimits,
    /// After SIGTERM/SIGINT, how long accepted work may take before the server exits.
    pub shutdown_grace: Duration,
    /// Peak resident bytes the process may reach: requests that would need more are refused and
    /// batches stay within it ([`memory::MemoryModel`], measured at start). `None`: no budget.
    pub memory_budget: Option<u64>,
    /// The cost model the budget is applied with; measured at start when `None`
    /// ([`memory::MemoryModel::calibrate`]).
    pub memory_model: Option<memory::MemoryModel>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_queue: 16,
            max_batch: 4,
            request_timeout: Duration::from_secs(300),
            api_key: None,
            max_body_bytes: 20 << 20,
            max_prompt_chars: 1000,
            max_images: 10,
            image_limits: ImageLimits::default(),
            shutdown_grace: Duration::from_secs(30),
            memory_budget: None,
            memory_model: None,
        }
    }
}

/// Shared by every handler.
pub(crate) struct AppState {
    pub pipeline: Arc<Pipeline>,
    pub config: ServerConfig,
    pub jobs: mpsc::Sender<worker::Job>,
    /// Jobs accepted and not yet running (queued in the channel or held by the worker).
    pub waiting: Arc<AtomicUsize>,
    pub metrics: Arc<metrics::Metrics>,
    pub shutting_down: AtomicBool,
    /// False once the worker thread has ended (it should not while the server runs): /healthz
    /// then answers 503.
    pub worker_alive: Arc<AtomicBool>,
    /// The measured cost model and the most images per run, when a memory budget is set.
    pub memory: Option<(memory::MemoryModel, usize)>,
    key_digest: Option<[u8; 32]>,
}

/// Builds the router and starts the worker thread. The worker stops when the router (and every
/// clone of its state) is dropped.
pub fn router(
    pipeline: Arc<Pipeline>,
    config: ServerConfig,
) -> std::io::Result<(Router, Arc<AppStateHandle>)> {
    let memory = match config.memory_budget {
        None => None,
        Some(budget) => {
            let model = match config.memory_model {
                Some(model) => model,
                None => memory::MemoryModel::calibrate(&pipeline).map_err(std::io::Error::other)?,
            };
            let max_images = model.max_images(budget);
            tracing::info!(
                base_mib = model.base_bytes >> 20,
                per_image_mib = model.per_image_bytes >> 20,
                max_images,
                "memory budget calibrated"
            );
            if max_images == 0 {
                return Err(std::io::Error::other(format!(
                    "memory budget of {} MiB is below what one image needs ({} MiB measured): \
                     raise --memory-budget-mib",
                    budget >> 20,
                    model.estimate(1) >> 20
                )));
            }
            Some((model, max_images))
        }
    };
    let metrics = Arc::new(metrics::Metrics::new());
    // Admission is counted, not left to the channel: the worker moves jobs it cannot batch yet
    // out of the channel, so the channel's capacity alone would not bound the waiting jobs.
    let waiting = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel(config.max_queue.max(1) + config.max_batch.max(1));
    let worker_alive = Arc::new(AtomicBool::new(true));
    {
        let pipeline = pipeline.clone();
        let metrics = metrics.clone();
        let waiting = waiting.clone();
        let limits = worker::BatchLimits {
            jobs: config.max_batch.max(1),
            images: memory.map_or(usize::MAX, |(_, m)| m),
        };
        let alive = AliveFlag(worker_alive.clone());
        std::thread::Builder::new()
            .name("unclip-worker".into())
            .spawn(move || {
                let _alive = alive;
                worker::run(pipeline, rx, limits, waiting, metrics)
            })?;
    }
    let key_digest = config
        .api_key
        .as_ref()
        .map(|k| Sha256::digest(k.as_bytes()).into());
    let state = Arc::new(AppState {
        pipeline,
        config: config.clone(),
        jobs: tx,
        waiting,
        metrics,
        shutting_down: AtomicBool::new(false),
        worker_alive,
        memory,
        key_digest,
    });
    let v1 = Router::new()
        .route("/v1/images/generations", post(api::generations))
        .route("/v1/images/variations", post(api::variations))
        .route("/v1/embeddings", post(api::embeddings))
        .route("/v1/embeddings/images", post(api::image_embeddings))
        .route("/v1/models", get(api::models))
        .route_layer(middleware::from_fn_with_state(state.clone(), bounded_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let router = Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::not_found() })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::map_response(api::openai_errors))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state.clone());
    Ok((router, Arc::new(AppStateHandle { state })))
}

/// Cleared when the worker thread ends, however it ends (return or unwind).
struct AliveFlag(Arc<AtomicBool>);

impl Drop for AliveFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Liveness: 200 while the worker thread runs, 503 once it is gone (no request could be served).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.worker_alive.load(Ordering::SeqCst) {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the generation worker has stopped",
        )
            .into_response()
    }
}

/// Lets the caller drive shutdown (readiness flips to 503 and new work is refused).
pub struct AppStateHandle {
    state: Arc<AppState>,
}

impl AppStateHandle {
    pub fn begin_shutdown(&self) {
        self.state.shutting_down.store(true, Ordering::SeqCst);
    }
}

/// Serves until `shutdown` resolves, then finishes accepted work within `shutdown_grace`.
pub async fn serve(
    pipeline: Arc<Pipeline>,
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = config.shutdown_grace;
    let (router, handle) = router(pipeline, config)?;
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        handle.begin_shutdown();
        tracing::info!("shutting down: finishing accepted work");
        let _ = signalled_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(std::io::Error::other)?,
        _ = signalled_rx => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!("shutdown grace of {grace:?} over: exiting with work in flight");
            Ok(())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.key_digest {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        if !bool::from(digest.ct_eq(expected)) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

/// An oversized body is read on, and thrown away, up to this many times the limit before the 413.
const DRAIN_FACTOR: usize = 4;
/// ... and for at most this long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the request body whole, under `--max-body-mib`, before the handler runs (the handlers
/// buffer it whole anyway). An oversized body is answered 413 only after the rest of it has been
/// read and discarded (bounded by [`DRAIN_FACTOR`] and [`DRAIN_TIMEOUT`]): a socket closed with
/// unread data in it is reset by the kernel, and a client still writing its body then sees a
/// broken pipe instead of the 413 (seen in CI on `tests/errors_matrix.rs` E41). nginx's
/// `lingering_close` answers the same problem the same way.
async fn bounded_body(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    use http_body_util::BodyExt;
    let limit = state.config.max_body_bytes;
    let (parts, mut body) = request.into_parts();
    let multipart = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || ApiError::payload_too_large(multipart).into_response();
    let drain_cap = limit.saturating_mul(DRAIN_FACTOR);
    if declared.is_some_and(|n| n > drain_cap) {
        // Too much to read through: refuse now and let the connection close.
        return too_large();
    }
    let mut buffered = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                return ApiError::bad_request(None, format!("cannot read the request body: {e}"))
                    .into_response()
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buffered.len() + data.len() > limit {
            let mut seen = buffered.len() + data.len();
            drop(buffered);
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                while let Some(Ok(frame)) = body.frame().await {
                    seen += frame.data_ref().map_or(0, |d| d.len());
                    if seen > drain_cap {
                        break;
                    }
                }
            })
            .await;
            return too_large();
        }
        buffered.extend_from_slice(&data);
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buffered)))
        .await
}

/// Counts every request by route and status, with its latency.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .requests
        .get_or_create(&metrics::RouteStatus {
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&metrics::RouteLabel { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        return ApiError::unavailable("the server is shutting down").into_response();
    }
    if state.waiting.load(Ordering::SeqCst) >= state.config.max_queue.max(1) {
        return ApiError::unavailable("the generation queue is full").into_response();
    }
    "ready".into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let depth = state.waiting.load(Ordering::SeqCst);
    state.metrics.queue_depth.set(depth as i64);
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    *response.status_mut() = StatusCode::OK;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /healthz reads this flag: a worker thread that dies, even by a panic outside a batch,
    /// clears it.
    #[test]
    fn the_alive_flag_falls_when_the_worker_thread_dies() {
        let alive = Arc::new(AtomicBool::new(true));
        let flag = AliveFlag(alive.clone());
        let worker = std::thread::spawn(move || {
            let _alive = flag;
            panic!("the worker died");
        });
        assert!(worker.join().is_err());
        assert!(!alive.load(Ordering::SeqCst));
    }
}
