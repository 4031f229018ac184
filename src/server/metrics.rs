//! Prometheus metrics (`GET /metrics`, text exposition format) through `prometheus-client`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// Everything the server counts.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub queue_depth: Gauge,
    pub jobs_cancelled: Counter,
    /// Batches whose run panicked (a bug): their jobs got a 500, the worker went on.
    pub worker_panics: Counter,
    pub batch_size: Histogram,
    pub stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("unclip");
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let queue_depth = Gauge::default();
        let jobs_cancelled = Counter::default();
        let worker_panics = Counter::default();
        let batch_size = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]);
        let stage_seconds =
            Family::<StageLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Generation jobs waiting for the worker",
            queue_depth.clone(),
        );
        registry.register(
            "jobs_cancelled",
            "Generation jobs dropped or stopped because their client left or timed out",
            jobs_cancelled.clone(),
        );
        registry.register(
            "worker_panics",
            "Batched runs that panicked (a bug in unclip); their requests got 500",
            worker_panics.clone(),
        );
        registry.register(
            "batch_size",
            "Images per batched model run",
            batch_size.clone(),
        );
        registry.register(
            "stage_seconds",
            "Wall seconds per pipeline stage and batch",
            stage_seconds.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            queue_depth,
            jobs_cancelled,
            worker_panics,
            batch_size,
            stage_seconds,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
