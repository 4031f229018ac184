//! `DDPMScheduler` (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", eqs. 6–7 and
//! Algorithm 2; learned variances from Nichol & Dhariwal 2021, "Improved DDPM", eq. 15) as
//! diffusers 0.42.1 implements it in `schedulers/scheduling_ddpm.py`: the scheduler of
//! Kandinsky 2.2's decoder and of most latent-diffusion checkpoints.
//!
//! Precision follows torch as in `unclip.rs`: f32 tables (`betas.rs`), per-step scalars as f32 0-d
//! tensor arithmetic in diffusers' order, one rounding per elementwise torch operation (no fused
//! multiply-add).
//!
//! Unlike `UnCLIPScheduler`, a step always lands on the next timestep of the list (`previous_timestep`)
//! and recomputes the β it spans (`1 − ᾱ_t / ᾱ_prev`) even for a single-timestep jump; the list
//! follows `timestep_spacing` as DDIM's does, so with `leading` spacing and `steps_offset = 1`
//! the last timestep is 1 and the last step still draws noise (diffusers draws whenever t > 0).

use ndarray::{ArrayD, ArrayViewD, Zip};
use serde::{Deserialize, Serialize};

use super::betas::{self, BetaSchedule};
use super::ddim::{check_clip_sample_range, ddim_timesteps};
use super::{
    checked_timesteps, draw_noise, output_layout, serialize_prediction_type, timestep_at,
    OutputLayout, PredictionType, Scheduler, TimestepSpacing,
};
use crate::noise::NoiseSource;
use crate::{Error, Result};

/// How `DDPMScheduler` chooses the variance of the reverse step (`variance_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DdpmVarianceType {
    /// The posterior variance β̃_t = (1 − ᾱ_prev)/(1 − ᾱ_t)·β_t, clamped at 1e-20 (diffusers'
    /// default); the noise is scaled by its square root.
    #[serde(rename = "fixed_small")]
    FixedSmall,
    /// β̃_t through log and exp(0.5·): the same standard deviation by another rounding path.
    #[serde(rename = "fixed_small_log")]
    FixedSmallLog,
    /// β_t, the forward process's variance (DDPM's other choice, σ_t² = β_t).
    #[serde(rename = "fixed_large")]
    FixedLarge,
    /// The model's second half of channels is the variance itself.
    #[serde(rename = "learned")]
    Learned,
    /// The model's second half interpolates log β̃_t and log β_t (Improved DDPM eq. 15).
    #[serde(rename = "learned_range")]
    LearnedRange,
    /// Parsed so that the error can name it: diffusers takes `log(β_t) ** 0.5`, the square root
    /// of a negative number, and every noisy step gives NaN. [`DDPMScheduler::new`] rejects it.
    #[serde(rename = "fixed_large_log")]
    FixedLargeLog,
}

impl DdpmVarianceType {
    /// The name used in diffusers' JSON configs.
    pub fn as_str(self) -> &'static str {
        match self {
            DdpmVarianceType::FixedSmall => "fixed_small",
            DdpmVarianceType::FixedSmallLog => "fixed_small_log",
            DdpmVarianceType::FixedLarge => "fixed_large",
            DdpmVarianceType::Learned => "learned",
            DdpmVarianceType::LearnedRange => "learned_range",
            DdpmVarianceType::FixedLargeLog => "fixed_large_log",
        }
    }

    /// Whether the model's output carries a predicted variance the scheduler reads.
    pub fn is_learned(self) -> bool {
        matches!(
            self,
            DdpmVarianceType::Learned | DdpmVarianceType::LearnedRange
        )
    }
}

/// `DDPMScheduler`'s config, field for field and default for default as `DDPMScheduler.__init__`.
/// Unknown keys are ignored, as diffusers' `ConfigMixin` ignores them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DDPMSchedulerConfig {
    /// Number of diffusion steps the model was trained with.
    pub num_train_timesteps: usize,
    /// First β of the `linear` / `scaled_linear` schedules.
    pub beta_start: f64,
    /// Last β of the `linear` / `scaled_linear` schedules.
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Not supported: [`DDPMScheduler::new`] rejects a value.
    pub trained_betas: Option<Vec<f64>>,
    pub variance_type: DdpmVarianceType,
    /// Clamp the predicted x₀ to `±clip_sample_range`.
    pub clip_sample: bool,
    #[serde(serialize_with = "serialize_prediction_type")]
    pub prediction_type: PredictionType,
    /// Not supported (dynamic thresholding): [`DDPMScheduler::new`] rejects `true`.
    pub thresholding: bool,
    /// Read only by thresholding; kept so configs convert and round-trip.
    pub dynamic_thresholding_ratio: f64,
    pub clip_sample_range: f64,
    /// Read only by thresholding.
    pub sample_max_value: f64,
    pub timestep_spacing: TimestepSpacing,
    /// Added to the `leading` timesteps.
    pub steps_offset: usize,
    /// Not supported: [`DDPMScheduler::new`] rejects `true`.
    pub rescale_betas_zero_snr: bool,
}

impl Default for DDPMSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            variance_type: DdpmVarianceType::FixedSmall,
            clip_sample: true,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
        }
    }
}

/// diffusers' `DDPMScheduler` with its timesteps set (`set_timesteps(num_inference_steps)`).
#[derive(Debug, Clone)]
pub struct DDPMScheduler {
    config: DDPMSchedulerConfig,
    alphas_cumprod: Vec<f32>,
    timesteps: Vec<i64>,
}

/// The noise term of one step, resolved to what the elementwise loop needs.
#[derive(Debug, Clone, Copy)]
enum NoiseTerm {
    /// t = 0: no draw.
    None,
    /// One standard deviation for every element.
    Fixed { std: f32 },
    /// `predicted_variance ** 0.5` per element (`learned`).
    Learned,
    /// Per-element log variance `frac·max_log + (1 − frac)·min_log` (`learned_range`).
    LearnedRange { min_log: f32, max_log: f32 },
}

impl DDPMScheduler {
    /// Builds the scheduler and its timesteps for `num_inference_steps` steps.
    ///
    /// Rejected, each with an [`Error::InvalidArgument`] naming the value: `trained_betas`,
    /// `thresholding`, `rescale_betas_zero_snr` (not implemented), `variance_type:
    /// "fixed_large_log"` (NaN in diffusers), a negative or non-finite `clip_sample_range`,
    /// `num_inference_steps` = 0 or above `num_train_timesteps` (diffusers raises `ValueError`
    /// too), and step counts whose timesteps diffusers lists but cannot use (see
    /// [`TimestepSpacing`]).
    pub fn new(config: DDPMSchedulerConfig, num_inference_steps: usize) -> Result<Self> {
        betas::check_supported_options(
            "DDPMScheduler",
            &config.trained_betas,
            config.rescale_betas_zero_snr,
        )?;
        if config.thresholding {
            return Err(Error::invalid(
                "thresholding",
                "DDPMScheduler: dynamic thresholding is not supported; use clip_sample",
            ));
        }
        if config.variance_type == DdpmVarianceType::FixedLargeLog {
            return Err(Error::invalid(
                "variance_type",
                "DDPMScheduler: \"fixed_large_log\" gives NaN in diffusers (the square root of \
                 log β_t < 0); use fixed_large, fixed_small or learned_range",
            ));
        }
        check_clip_sample_range(config.clip_sample_range)?;
        let alphas_cumprod = betas::alphas_cumprod(
            config.beta_schedule,
            config.num_train_timesteps,
            config.beta_start,
            config.beta_end,
        )?;
        let train = config.num_train_timesteps;
        if num_inference_steps > train {
            return Err(Error::invalid(
                "num_inference_steps",
                format!("{num_inference_steps} exceeds the {train} timesteps the model was trained with"),
            ));
        }
        // `set_timesteps`: the same three spacings and formulas as DDIMScheduler's.
        let timesteps = checked_timesteps(
            "DDPMScheduler",
            config.timestep_spacing,
            train,
            num_inference_steps,
            false,
            |n| ddim_timesteps(config.timestep_spacing, train, config.steps_offset, n),
        )?;
        Ok(Self {
            config,
            alphas_cumprod,
            timesteps,
        })
    }

    /// The config this scheduler was built from.
    pub fn config(&self) -> &DDPMSchedulerConfig {
        &self.config
    }

    /// `DDPMScheduler.alphas_cumprod` (f32): ᾱ_t for t = 0 … T − 1.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// `previous_timestep`: the next timestep of the list, −1 after the last (ᾱ_prev = 1).
    pub fn prev_timestep(&self, step_index: usize) -> Result<i64> {
        timestep_at(&self.timesteps, step_index)?;
        Ok(self.timesteps.get(step_index + 1).copied().unwrap_or(-1))
    }

    /// `add_noise(original_samples, noise, timesteps)` for one timestep (img2img's start):
    /// `√ᾱ_t · x₀ + √(1 − ᾱ_t) · ε`, f32 as torch computes it.
    pub fn add_noise(
        &self,
        original: ArrayViewD<'_, f32>,
        noise: ArrayViewD<'_, f32>,
        timestep: i64,
    ) -> Result<ArrayD<f32>> {
        super::add_noise(&self.alphas_cumprod, original, noise, timestep)
    }

    /// `torch.split(model_output, sample.shape[1], dim=1)` when the output has twice the sample's
    /// channels and the variance is learned; an output of the sample's shape otherwise. diffusers
    /// would pass a doubled output of a fixed-variance config on to arithmetic that fails to
    /// broadcast; the Kandinsky pipelines drop the variance half before calling it, and that is
    /// what unclip does here too, as for DDIM (see `without_learned_variance`).
    fn split_model_output<'a>(
        &self,
        model_output: ArrayViewD<'a, f32>,
        sample: &ArrayViewD<'_, f32>,
    ) -> Result<(ArrayViewD<'a, f32>, Option<ArrayViewD<'a, f32>>)> {
        if sample.ndim() < 2 {
            return Err(Error::Shape {
                what: "sample".into(),
                expected: "at least 2 dimensions (batch, channels, …)".into(),
                found: sample.shape().to_vec(),
            });
        }
        let found = model_output.shape().to_vec();
        match output_layout(model_output, sample) {
            Some(OutputLayout::WithVariance(prediction, variance)) => {
                let learned = self.config.variance_type.is_learned();
                Ok((prediction, learned.then_some(variance)))
            }
            Some(OutputLayout::Plain(output)) => Ok((output, None)),
            None => Err(Error::Shape {
                what: "DDPMScheduler model_output".into(),
                expected: format!(
                    "the sample's shape {:?}, or twice its channels in dim 1 (a predicted variance)",
                    sample.shape()
                ),
                found,
            }),
        }
    }

    /// `_get_variance(t)` resolved for the step's loop.
    fn noise_term(&self, alpha_prod_t: f32, alpha_prod_t_prev: f32) -> NoiseTerm {
        // prev_t = self.previous_timestep(t); current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        let current_beta_t = 1.0 - alpha_prod_t / alpha_prod_t_prev;
        // (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, clamped at 1e-20
        // (written out rather than `max` so that NaN propagates as in torch.clamp)
        let variance = (1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t;
        let variance = if variance < 1e-20 { 1e-20 } else { variance };
        match self.config.variance_type {
            // `variance ** 0.5 * variance_noise`
            DdpmVarianceType::FixedSmall => NoiseTerm::Fixed {
                std: variance.sqrt(),
            },
            // `torch.exp(0.5 * torch.log(variance))`, then `variance * variance_noise`
            DdpmVarianceType::FixedSmallLog => NoiseTerm::Fixed {
                std: (0.5 * variance.ln()).exp(),
            },
            // `current_beta_t ** 0.5 * variance_noise`
            DdpmVarianceType::FixedLarge => NoiseTerm::Fixed {
                std: current_beta_t.sqrt(),
            },
            DdpmVarianceType::Learned => NoiseTerm::Learned,
            DdpmVarianceType::LearnedRange => NoiseTerm::LearnedRange {
                min_log: variance.ln(),
                max_log: current_beta_t.ln(),
            },
            // rejected by `new`
            DdpmVarianceType::FixedLargeLog => NoiseTerm::Fixed { std: f32::NAN },
        }
    }
}

impl Scheduler for DDPMScheduler {
    fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    fn noising_schedule(&self) -> Option<&[f32]> {
        Some(&self.alphas_cumprod)
    }

    /// `DDPMScheduler.step(model_output, timesteps[step_index], sample, generator)`: from ᾱ_t to
    /// the next timestep of the list (ᾱ = 1 after the last), noise of the sample's shape drawn
    /// whenever t > 0, after the split of a learned variance.
    fn step(
        &mut self,
        step_index: usize,
        model_output: ArrayViewD<'_, f32>,
        sample: ArrayViewD<'_, f32>,
        noise: &mut dyn NoiseSource,
    ) -> Result<ArrayD<f32>> {
        let timestep = timestep_at(&self.timesteps, step_index)?;
        let prev_timestep = self.prev_timestep(step_index)?;
        let (model_output, predicted_variance) = self.split_model_output(model_output, &sample)?;
        tracing::trace!(timestep, prev_timestep, "DDPMScheduler step");

        // 1. alphas, betas (0-d f32 tensors); timesteps are validated to lie in 0..T
        let alpha_prod_t = self.alphas_cumprod[timestep as usize];
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            1.0 // `self.one`
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;

        // 2.–5. x̂₀ (eq. 15), clipped, and the posterior mean µ̃_t (eq. 7)
        let sqrt_beta_prod_t = beta_prod_t.sqrt();
        let sqrt_alpha_prod_t = alpha_prod_t.sqrt();
        let prediction_type = self.config.prediction_type;
        let clip = self
            .config
            .clip_sample
            .then_some(self.config.clip_sample_range as f32);
        let pred_original_sample_coeff = alpha_prod_t_prev.sqrt() * current_beta_t / beta_prod_t;
        let current_sample_coeff = current_alpha_t.sqrt() * beta_prod_t_prev / beta_prod_t;
        let posterior_mean = |output: f32, x: f32| -> f32 {
            let x0 = match prediction_type {
                PredictionType::Epsilon => (x - sqrt_beta_prod_t * output) / sqrt_alpha_prod_t,
                PredictionType::Sample => output,
            };
            let x0 = match clip {
                Some(range) => x0.clamp(-range, range),
                None => x0,
            };
            pred_original_sample_coeff * x0 + current_sample_coeff * x
        };

        // 6. noise, only when t > 0
        let term = if timestep > 0 {
            self.noise_term(alpha_prod_t, alpha_prod_t_prev)
        } else {
            NoiseTerm::None
        };
        let mut prev_sample = ArrayD::<f32>::zeros(sample.raw_dim());
        match term {
            NoiseTerm::None => {
                Zip::from(&mut prev_sample)
                    .and(&model_output)
                    .and(&sample)
                    .for_each(|out, &output, &x| *out = posterior_mean(output, x));
            }
            NoiseTerm::Fixed { std } => {
                let variance_noise = draw_noise(noise, sample.shape())?;
                Zip::from(&mut prev_sample)
                    .and(&model_output)
                    .and(&sample)
                    .and(&variance_noise)
                    .for_each(|out, &output, &x, &z| *out = posterior_mean(output, x) + std * z);
            }
            NoiseTerm::Learned | NoiseTerm::LearnedRange { .. } => {
                let Some(predicted_variance) = predicted_variance else {
                    return Err(Error::Shape {
                        what: "DDPMScheduler model_output".into(),
                        expected: format!(
                            "2 × {} channels in dim 1 ({} needs the predicted variance)",
                            sample.shape()[1],
                            self.config.variance_type.as_str()
                        ),
                        found: model_output.shape().to_vec(),
                    });
                };
                let variance_noise = draw_noise(noise, sample.shape())?;
                Zip::from(&mut prev_sample)
                    .and(&model_output)
                    .and(&sample)
                    .and(&predicted_variance)
                    .and(&variance_noise)
                    .for_each(|out, &output, &x, &v, &z| {
                        let std = match term {
                            NoiseTerm::LearnedRange { min_log, max_log } => {
                                let frac = (v + 1.0) / 2.0;
                                let log_variance = frac * max_log + (1.0 - frac) * min_log;
                                (0.5 * log_variance).exp()
                            }
                            _ => v.sqrt(),
                        };
                        *out = posterior_mean(output, x) + std * z;
                    });
            }
        }
        Ok(prev_sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_match_diffusers() {
        let parsed: DDPMSchedulerConfig =
            serde_json::from_str(r#"{"_class_name": "DDPMScheduler"}"#).unwrap();
        assert_eq!(parsed, DDPMSchedulerConfig::default());
    }

    #[test]
    fn leading_with_offset_ends_at_one_and_steps_to_the_next_timestep() {
        let config = DDPMSchedulerConfig {
            steps_offset: 1,
            ..Default::default()
        };
        let scheduler = DDPMScheduler::new(config, 4).unwrap();
        assert_eq!(scheduler.timesteps(), &[751, 501, 251, 1]);
        assert_eq!(scheduler.prev_timestep(0).unwrap(), 501);
        assert_eq!(scheduler.prev_timestep(3).unwrap(), -1);
    }

    #[test]
    fn fixed_large_log_is_refused() {
        let config = DDPMSchedulerConfig {
            variance_type: DdpmVarianceType::FixedLargeLog,
            ..Default::default()
        };
        let err = DDPMScheduler::new(config, 10).unwrap_err().to_string();
        assert!(err.contains("fixed_large_log"), "{err}");
    }
}
