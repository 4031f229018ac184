//! The diffusion stages, each wrapping its ONNX model(s) and denoising loop: the prior
//! (text → image embedding), the decoder (image embedding → 64×64) and the upsamplers.

pub mod decoder;
pub mod latent;
pub mod prior;
pub mod upsampler;

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use ndarray::{Array1, Array2, Array3};

use crate::bundle::Bundle;
use crate::runtime::{BatchProfile, Model, Runtime};
use crate::schedulers::{Scheduler, SchedulerConfig, SchedulerKind};
use crate::{Error, Result};

pub use crate::vision::ImageEncoder;
pub use decoder::{Decoder, DecoderOutput};
pub use latent::{InitLatents, LatentDecoder, LatentOutput};
pub use prior::{Prior, PriorOutput};
pub use upsampler::{Upsampler, UpsamplerOutput};

/// Most images one call generates (prompts × images per prompt). Under classifier-free guidance
/// a model call carries twice as many rows.
pub const MAX_BATCH: usize = 64;

/// Batches of a model that runs under classifier-free guidance: one `[uncond, cond]` pair at
/// a time most often, [`MAX_BATCH`] pairs at most.
pub(crate) fn cfg_profile() -> BatchProfile {
    BatchProfile::new(2, 2 * MAX_BATCH)
}

/// Batches of a model that runs once per image: one most often, [`MAX_BATCH`] at most.
pub(crate) fn image_profile() -> BatchProfile {
    BatchProfile::new(1, MAX_BATCH)
}

/// Text conditioning as the prior and decoder take it: for CFG the rows are
/// `[uncond; batch, cond; batch]` (see [`crate::guidance`]), else `cond; batch`.
#[derive(Clone, Debug)]
pub struct Conditioning {
    /// Pooled text embeddings `(rows, D)`.
    pub embeds: Array2<f32>,
    /// Text encoder hidden states `(rows, max_length, Dt)`.
    pub hidden_states: Array3<f32>,
    /// Token mask `(rows, max_length)`.
    pub mask: Array2<i64>,
    /// Whether the rows hold an unconditional half.
    pub cfg: bool,
}

impl Conditioning {
    /// Number of images conditioned (half the rows under CFG).
    pub fn batch(&self) -> usize {
        let rows = self.embeds.nrows();
        if self.cfg {
            rows / 2
        } else {
            rows
        }
    }
}

/// Which stage a progress report is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Text,
    Prior,
    Decoder,
    /// The upsampler at this index of the bundle's list.
    Upsampler(usize),
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Text => f.write_str("text"),
            Stage::Prior => f.write_str("prior"),
            Stage::Decoder => f.write_str("decoder"),
            Stage::Upsampler(i) => write!(f, "upsampler{i}"),
        }
    }
}

/// A step finished: `step` of `steps` (1-based) in `stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub stage: Stage,
    pub step: usize,
    pub steps: usize,
}

/// Called after every denoising step; `ControlFlow::Break(())` cancels the run
/// ([`Error::Cancelled`]).
pub type Observer<'a> = dyn FnMut(Progress) -> ControlFlow<()> + 'a;

/// Reports progress, turning a cancel request into [`Error::Cancelled`].
pub(crate) fn report(
    observer: &mut Observer<'_>,
    stage: Stage,
    step: usize,
    steps: usize,
) -> Result<()> {
    match observer(Progress { stage, step, steps }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::Cancelled),
    }
}

/// Loads models by bundle key, once each (super_res_first and _last may be the same model):
/// their int8 quantizations when `int8` and they have one.
pub(crate) struct ModelCache<'a> {
    runtime: &'a Runtime,
    bundle: &'a Bundle,
    int8: bool,
    loaded: HashMap<String, Arc<Model>>,
}

impl<'a> ModelCache<'a> {
    pub(crate) fn new(runtime: &'a Runtime, bundle: &'a Bundle, int8: bool) -> Self {
        ModelCache {
            runtime,
            bundle,
            int8,
            loaded: HashMap::new(),
        }
    }

    /// The model under bundle key `key`, loaded for calls of up to `profile.max` rows.
    pub(crate) fn get(&mut self, key: &str, profile: BatchProfile) -> Result<Arc<Model>> {
        if let Some(model) = self.loaded.get(key) {
            return Ok(model.clone());
        }
        let entry = self.bundle.model_for(key, self.int8)?;
        let model = Arc::new(Model::load(
            self.runtime,
            key,
            &self.bundle.resolve(&entry.file)?,
            &entry,
            profile,
        )?);
        self.loaded.insert(key.to_string(), model.clone());
        Ok(model)
    }
}

/// A timestep fed to a model: one entry per batch row (the exported graphs take `(batch,)`).
pub(crate) fn timestep_batch(t: i64, rows: usize) -> Array1<i64> {
    Array1::from_elem(rows, t)
}

/// How one stage samples: step count, guidance, and the scheduler (the bundle's own, or another
/// kind converted from it with [`SchedulerConfig::to_kind`]) with DDIM's η.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    pub steps: usize,
    /// Classifier-free guidance scale (unused by the upsamplers).
    pub guidance_scale: f32,
    /// `None` runs the scheduler the bundle names for the stage.
    pub scheduler: Option<SchedulerKind>,
    /// DDIM's η; must be 0 unless the scheduler is DDIM.
    pub eta: f32,
}

impl Sampling {
    pub fn new(steps: usize, guidance_scale: f32) -> Self {
        Sampling {
            steps,
            guidance_scale,
            scheduler: None,
            eta: 0.0,
        }
    }

    /// The scheduler kind this stage runs, given the bundle's config.
    pub fn kind(&self, bundle_config: &SchedulerConfig) -> SchedulerKind {
        self.scheduler.unwrap_or_else(|| bundle_config.kind())
    }

    /// The scheduler config this stage runs: the bundle's, converted to the chosen kind. The
    /// training noise schedule is the model's, whatever the target class defaults to, so the
    /// beta schedule and training length are carried over even where diffusers' `from_config`
    /// would drop them.
    pub fn config(
        &self,
        name: &'static str,
        bundle_config: &SchedulerConfig,
    ) -> Result<SchedulerConfig> {
        check_steps(name, self.steps)?;
        let config = match self.scheduler {
            None => bundle_config.clone(),
            Some(kind) => bundle_config.to_kind(kind)?,
        };
        config.with_eta(self.eta)
    }

    pub(crate) fn build(
        &self,
        name: &'static str,
        bundle_config: &SchedulerConfig,
    ) -> Result<Box<dyn Scheduler>> {
        self.config(name, bundle_config)?.build(self.steps)
    }
}

/// Parses a stage's scheduler config from the bundle at load time.
pub(crate) fn parse_scheduler(
    bundle: &Bundle,
    stage: &str,
    json: &serde_json::Value,
) -> Result<SchedulerConfig> {
    SchedulerConfig::from_json(json).map_err(|e| Error::BundleInvalid {
        path: bundle.dir.join("bundle.json"),
        reason: format!("{stage} scheduler: {e}"),
    })
}

/// Steps must be at least 1; the scheduler rejects what it cannot do.
pub(crate) fn check_steps(name: &'static str, steps: usize) -> Result<()> {
    if steps == 0 || steps > 1000 {
        return Err(Error::invalid(
            name,
            format!("{steps} steps: use 1 to 1000"),
        ));
    }
    Ok(())
}
