//! Diffusion schedulers: pure numerics on `ndarray`, configured from diffusers'
//! `scheduler_config.json` and bit-compatible with diffusers where torch's arithmetic allows.
//!
//! One file per scheduler (`unclip.rs` mirrors `schedulers/scheduling_unclip.py`); `betas.rs`
//! holds the training noise schedules they share. Every scheduler is driven through [`Scheduler`]
//! by step index, so the pipeline's denoising loop is the same for all of them and the
//! convention of which timestep a step lands on lives in the scheduler, next to the math that
//! depends on it.

pub mod betas;
pub mod unclip;

use ndarray::{ArrayD, ArrayViewD};
use serde::Deserialize;

pub use betas::BetaSchedule;
pub use unclip::{PredictionType, UnCLIPScheduler, UnCLIPSchedulerConfig, VarianceType};

use crate::noise::NoiseSource;
use crate::{Error, Result};

/// A scheduler whose timesteps are fixed at construction (diffusers' `set_timesteps`).
///
/// One scheduler drives one denoising loop: it is built per run (cheap: a 1000-entry table), and
/// `step` takes `&mut self` because multistep solvers (DPM-Solver++) remember the model outputs
/// of earlier steps, as diffusers' scheduler objects do. Steps must be taken in order, from
/// index 0.
pub trait Scheduler: Send + Sync {
    /// The timesteps of the denoising loop, first to last (decreasing). The model is evaluated at
    /// `timesteps()[i]` before `step(i, …)`.
    fn timesteps(&self) -> &[i64];

    /// Advances `sample` from `timesteps()[step_index]` to the next timestep of the list (after
    /// the last one, to the clean sample), given the model's output at the current timestep.
    ///
    /// `model_output` may carry twice the sample's channels (dim 1) when the scheduler learns the
    /// variance; it is split there as diffusers splits it. Random draws come from `noise`, in
    /// diffusers' order and with the sample's shape, only on steps where diffusers draws.
    fn step(
        &mut self,
        step_index: usize,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>>;

    /// Standard deviation of the initial noise (diffusers' `init_noise_sigma`): the pipeline
    /// multiplies its starting latents by it (`prepare_latents`). 1 for DDPM-style schedulers.
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }
}

/// The scheduler classes unclip implements, by diffusers' `_class_name`.
pub const SUPPORTED_SCHEDULERS: &[&str] = &["UnCLIPScheduler"];

/// A diffusers scheduler config (`scheduler_config.json`), tagged by its `_class_name`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "_class_name")]
#[non_exhaustive]
pub enum SchedulerConfig {
    /// `UnCLIPScheduler` (Karlo's prior, decoder and super-resolution).
    #[serde(rename = "UnCLIPScheduler")]
    UnCLIP(UnCLIPSchedulerConfig),
}

impl SchedulerConfig {
    /// Parses a config from diffusers' JSON. An unknown or missing `_class_name`, or a value the
    /// class does not accept (e.g. `variance_type: "fixed_large"`), is an
    /// [`Error::InvalidArgument`] naming it.
    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        let class_name = json
            .get("_class_name")
            .ok_or_else(|| {
                Error::invalid(
                    "scheduler config",
                    "no \"_class_name\": expected a diffusers scheduler_config.json",
                )
            })?
            .as_str()
            .ok_or_else(|| Error::invalid("scheduler config", "\"_class_name\" is not a string"))?;
        if !SUPPORTED_SCHEDULERS.contains(&class_name) {
            return Err(Error::invalid(
                "scheduler class",
                format!(
                    "{class_name:?} is not supported (supported: {})",
                    SUPPORTED_SCHEDULERS.join(", ")
                ),
            ));
        }
        Self::deserialize(json)
            .map_err(|e| Error::invalid("scheduler config", format!("{class_name}: {e}")))
    }

    /// diffusers' `_class_name` of this config.
    pub fn class_name(&self) -> &'static str {
        match self {
            SchedulerConfig::UnCLIP(_) => "UnCLIPScheduler",
        }
    }

    /// Builds the scheduler with its timesteps for `num_inference_steps` steps.
    pub fn build(&self, num_inference_steps: usize) -> Result<Box<dyn Scheduler>> {
        match self {
            SchedulerConfig::UnCLIP(config) => Ok(Box::new(UnCLIPScheduler::new(
                config.clone(),
                num_inference_steps,
            )?)),
        }
    }
}

/// Builds a scheduler from diffusers' `scheduler_config.json` content, dispatching on
/// `_class_name`. See [`SchedulerConfig::from_json`] for the errors.
pub fn scheduler_from_config(
    json: &serde_json::Value,
    num_inference_steps: usize,
) -> Result<Box<dyn Scheduler>> {
    SchedulerConfig::from_json(json)?.build(num_inference_steps)
}
