//! The generation queue: a bounded channel in front of one worker thread that batches
//! compatible jobs (same stage settings) into one pipeline run, each job keeping its own seed
//! through [`BatchNoise`], so a request gets the same images batched or alone.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ndarray::Array2;
use tokio::sync::{mpsc, oneshot};

use super::metrics::{Metrics, StageLabel};
use crate::noise::{noise_source, BatchNoise, NoiseSource};
use crate::pipeline::{TextToImage, MAX_BATCH};
use crate::{Error, Pipeline, RngKind};

/// What must be equal for two jobs to share a run: every setting of `TextToImage` except the
/// prompts and the image count, plus whether the prior runs.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchKey {
    pub request: TextToImage,
    pub variation: bool,
}

/// A generation job: `n` images of one prompt (or one image embedding for variations).
pub struct Job {
    pub key: BatchKey,
    pub prompt: String,
    /// `(1, D)` for variations.
    pub embedding: Option<Array2<f32>>,
    pub n: usize,
    pub seed: u64,
    pub rng: RngKind,
    /// Set when the client went away or timed out: the job is dropped, or its run cancelled
    /// between steps when every job of the batch is cancelled.
    pub cancelled: Arc<AtomicBool>,
    pub reply: oneshot::Sender<std::result::Result<Vec<RgbImage>, JobError>>,
}

/// Runs jobs until every sender is dropped.
pub fn run(
    pipeline: Arc<Pipeline>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    max_images: usize,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match pending.pop_front() {
            Some(job) => job,
            None => match rx.blocking_recv() {
                Some(job) => job,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut images: usize = batch[0].n;
        // Compatible jobs already waiting join the batch, up to max_batch jobs and MAX_BATCH images
        // (fewer under a memory budget: max_images).
        let mut skipped = VecDeque::new();
        while let Some(job) = pending.pop_front() {
            if fits(&batch, &job, images, max_batch, max_images) {
                images += job.n;
                batch.push(job);
            } else {
                skipped.push_back(job);
            }
        }
        while let Ok(job) = rx.try_recv() {
            if fits(&batch, &job, images, max_batch, max_images) {
                images += job.n;
                batch.push(job);
            } else {
                skipped.push_back(job);
            }
        }
        pending = skipped;
        // The batch's jobs leave the queue: their slots are free for new requests.
        waiting.fetch_sub(batch.len(), Ordering::SeqCst);
        metrics
            .queue_depth
            .set(waiting.load(Ordering::SeqCst) as i64);
        run_batch(&pipeline, batch, &metrics);
    }
}

fn fits(batch: &[Job], job: &Job, images: usize, max_batch: usize, max_images: usize) -> bool {
    batch.len() < max_batch
        && images + job.n <= MAX_BATCH.min(max_images)
        && job.key == batch[0].key
}

fn run_batch(pipeline: &Pipeline, batch: Vec<Job>, metrics: &Metrics) {
    // Jobs whose client is gone before the run starts are dropped.
    let (batch, gone): (Vec<Job>, Vec<Job>) = batch
        .into_iter()
        .partition(|job| !job.cancelled.load(Ordering::Relaxed));
    for job in gone {
        metrics.jobs_cancelled.inc();
        let _ = job.reply.send(Err(JobError::Cancelled));
    }
    if batch.is_empty() {
        return;
    }
    let key = batch[0].key.clone();
    let mut request = key.request.clone();
    request.prompts = batch
        .iter()
        .flat_map(|job| std::iter::repeat_n(job.prompt.clone(), job.n))
        .collect();
    request.num_images_per_prompt = Some(1);
    if key.variation {
        let mut rows = Vec::with_capacity(request.prompts.len());
        for job in &batch {
            if let Some(embedding) = &job.embedding {
                rows.extend(std::iter::repeat_n(embedding.view(), job.n));
            }
        }
        match ndarray::concatenate(ndarray::Axis(0), &rows) {
            Ok(embeddings) => request.image_embeddings = Some(embeddings),
            Err(e) => {
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(JobError::Internal(format!("image embeddings: {e}"))));
                }
                return;
            }
        }
    }
    let mut noise = BatchNoise::new(
        batch
            .iter()
            .map(|job| {
                (
                    job.n,
                    noise_source(job.rng, job.seed) as Box<dyn NoiseSource>,
                )
            })
            .collect(),
    );
    let flags: Vec<Arc<AtomicBool>> = batch.iter().map(|j| j.cancelled.clone()).collect();
    let mut observer = |_| {
        if flags.iter().all(|f| f.load(Ordering::Relaxed)) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    metrics.batch_size.observe(request.prompts.len() as f64);
    let started = Instant::now();
    let result = pipeline.generate(&request, &mut noise, &mut observer);
    tracing::debug!(
        jobs = batch.len(),
        images = request.prompts.len(),
        seconds = started.elapsed().as_secs_f64(),
        "batch done"
    );
    match result {
        Ok(generation) => {
            for timing in &generation.timings {
                metrics
                    .stage_seconds
                    .get_or_create(&StageLabel {
                        stage: timing.stage.clone(),
                    })
                    .observe(timing.seconds);
            }
            let mut images = generation.images.into_iter();
            for job in batch {
                let mine: Vec<RgbImage> = images.by_ref().take(job.n).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            let error = JobError::from(&e);
            if error == JobError::Cancelled {
                metrics.jobs_cancelled.inc_by(batch.len() as u64);
            }
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Why a job failed, in the terms the HTTP layer answers with.
#[derive(Clone, Debug, PartialEq)]
pub enum JobError {
    /// Every client of the batch went away.
    Cancelled,
    /// The request was refused (a 400).
    BadInput(String),
    /// The run failed (a 500).
    Internal(String),
}

impl From<&Error> for JobError {
    fn from(e: &Error) -> Self {
        match e {
            Error::Cancelled => JobError::Cancelled,
            Error::InvalidArgument { .. }
            | Error::Shape { .. }
            | Error::NonFinite { .. }
            | Error::Image { .. }
            | Error::Tokenizer(_) => JobError::BadInput(e.to_string()),
            other => JobError::Internal(other.to_string()),
        }
    }
}
