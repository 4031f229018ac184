//! The generation queue: a bounded channel in front of one worker thread that batches
//! compatible jobs (same stage settings) into one pipeline run, each job keeping its own seed
//! through [`BatchNoise`], so a request gets the same images batched or alone.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use image::RgbImage;
use ndarray::Array2;
use tokio::sync::{mpsc, oneshot};

use super::metrics::{Metrics, StageLabel};
use crate::noise::{noise_source, BatchNoise, NoiseSource};
use crate::pipeline::{Generation, Seed, TextToImage, MAX_BATCH};
use crate::{Error, ErrorKind, Pipeline, RngKind};

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
    pub reply: oneshot::Sender<std::result::Result<Vec<JobImage>, JobError>>,
}

/// One image of a job, with its PNG reproduction metadata.
#[derive(Clone, Debug)]
pub struct JobImage {
    pub image: RgbImage,
    pub metadata: Vec<(String, String)>,
}

/// Runs jobs until every sender is dropped.
pub fn run(
    pipeline: Arc<Pipeline>,
    rx: mpsc::Receiver<Job>,
    limits: BatchLimits,
    waiting: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let run_metrics = metrics.clone();
    serve_jobs(rx, limits, &waiting, &metrics, |batch| {
        run_batch(&pipeline, batch, &run_metrics)
    });
}

/// The most a batch may hold.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Jobs per run (`--max-batch`).
    pub jobs: usize,
    /// Images per run under a memory budget (else unbounded; never above [`MAX_BATCH`]).
    pub images: usize,
}

/// The worker loop: takes jobs, groups compatible ones into batches and hands each batch to
/// `execute`. A panic in `execute` (a bug) fails that batch alone: its jobs' reply channels are
/// dropped, so their requests get a 500, and the loop goes on with the next job.
fn serve_jobs(
    mut rx: mpsc::Receiver<Job>,
    limits: BatchLimits,
    waiting: &AtomicUsize,
    metrics: &Metrics,
    mut execute: impl FnMut(Vec<Job>),
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
            if fits(&batch, &job, images, limits) {
                images += job.n;
                batch.push(job);
            } else {
                skipped.push_back(job);
            }
        }
        while let Ok(job) = rx.try_recv() {
            if fits(&batch, &job, images, limits) {
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
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| execute(batch))) {
            metrics.worker_panics.inc();
            tracing::error!(
                panic = panic_message(panic.as_ref()),
                "a generation panicked (a bug in unclip): its requests get 500, the worker goes on"
            );
        }
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn fits(batch: &[Job], job: &Job, images: usize, limits: BatchLimits) -> bool {
    batch.len() < limits.jobs
        && images + job.n <= MAX_BATCH.min(limits.images)
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
            // each row's record first, then the images move out to their jobs
            let mut metadata = Vec::with_capacity(generation.images.len());
            for job in &batch {
                for index in 0..job.n {
                    metadata.push(job_metadata(&generation, job, metadata.len(), index));
                }
            }
            let mut images = generation.images.into_iter().zip(metadata);
            for job in batch {
                let mine = images
                    .by_ref()
                    .take(job.n)
                    .map(|(image, metadata)| JobImage { image, metadata })
                    .collect();
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

/// The reproduction record of image `index` of `job`, which ran as `row` of a batch: the job as
/// if it had run alone (each job keeps its own noise through [`BatchNoise`], so it makes the
/// same images alone), `n` rows of its prompt.
fn job_metadata(
    generation: &Generation,
    job: &Job,
    row: usize,
    index: usize,
) -> Vec<(String, String)> {
    match generation.reproduction("server", Seed::new(job.rng, job.seed), row) {
        Ok(mut record) => {
            record.batch_prompts = job.n;
            record.num_images_per_prompt = 1;
            record.image_index = index;
            record.to_png_text()
        }
        Err(e) => {
            tracing::error!(error = %e, "no reproduction metadata for a served image");
            Vec::new()
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
    /// From [`Error::kind`], the classification every shell shares: the caller's input is a
    /// 400, everything else (a bug, ONNX Runtime, a file) a 500.
    fn from(e: &Error) -> Self {
        match e.kind() {
            ErrorKind::Cancelled => JobError::Cancelled,
            ErrorKind::InvalidInput => JobError::BadInput(e.to_string()),
            _ => JobError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        prompt: &str,
    ) -> (
        Job,
        oneshot::Receiver<std::result::Result<Vec<JobImage>, JobError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            key: BatchKey {
                request: TextToImage::default(),
                variation: false,
            },
            prompt: prompt.into(),
            embedding: None,
            n: 1,
            seed: 0,
            rng: RngKind::Fast,
            cancelled: Arc::new(AtomicBool::new(false)),
            reply,
        };
        (job, answer)
    }

    /// A panicking batch fails its own jobs (their reply channel closes: a 500) and the next job
    /// still runs.
    #[test]
    fn a_panicking_batch_does_not_stop_the_worker() {
        let (tx, rx) = mpsc::channel(4);
        let (first, first_answer) = job("panic");
        let (second, second_answer) = job("fine");
        let metrics = Metrics::new();
        let waiting = AtomicUsize::new(2);
        // one job per batch, so the panic hits the first job alone
        let limits = BatchLimits {
            jobs: 1,
            images: usize::MAX,
        };
        tx.blocking_send(first).unwrap();
        tx.blocking_send(second).unwrap();
        drop(tx);
        let mut batches = 0;
        serve_jobs(rx, limits, &waiting, &metrics, |batch| {
            batches += 1;
            if batch[0].prompt == "panic" {
                panic!("injected by the test");
            }
            for job in batch {
                let _ = job.reply.send(Ok(vec![JobImage {
                    image: RgbImage::new(1, 1),
                    metadata: Vec::new(),
                }]));
            }
        });
        assert_eq!(batches, 2);
        assert!(
            first_answer.blocking_recv().is_err(),
            "the panicked job's channel is closed"
        );
        assert_eq!(second_answer.blocking_recv().unwrap().unwrap().len(), 1);
        assert_eq!(metrics.worker_panics.get(), 1);
        assert_eq!(waiting.load(Ordering::SeqCst), 0);
    }
}
