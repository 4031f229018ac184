//! The diffusion prior: denoises a CLIP image embedding conditioned on the text
//! (DALL·E 2 §2.2; diffusers `UnCLIPPipeline.__call__`, prior loop).

use std::sync::Arc;

use ndarray::{Array1, Array2, Axis};

use super::{report, timestep_batch, Conditioning, ModelCache, Observer, Sampling, Stage};
use crate::bundle::Bundle;
use crate::guidance;
use crate::noise::NoiseSource;
use crate::runtime::{Input, Model};
use crate::schedulers::SchedulerConfig;
use crate::text::into_dim;
use crate::Result;

/// What the prior produced.
#[derive(Clone, Debug)]
pub struct PriorOutput {
    /// Latents after the last step, before un-normalization `(batch, D)`.
    pub latents: Array2<f32>,
    /// CLIP image embeddings: `latents × clip_std + clip_mean` (`post_process_latents`).
    pub image_embeddings: Array2<f32>,
}

/// The prior model with its scheduler config and CLIP statistics.
pub struct Prior {
    model: Arc<Model>,
    scheduler: SchedulerConfig,
    clip_mean: Array1<f32>,
    clip_std: Array1<f32>,
    /// Karlo's defaults unless the bundle says otherwise.
    pub default_steps: usize,
    pub default_guidance_scale: f32,
}

impl Prior {
    /// The scheduler config the bundle names for this stage.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    pub(crate) fn load(models: &mut ModelCache<'_>, bundle: &Bundle) -> Result<Self> {
        let entry = &bundle.manifest.prior;
        Ok(Prior {
            model: models.get(&entry.model, super::cfg_profile())?,
            scheduler: super::parse_scheduler(bundle, "prior", &entry.scheduler)?,
            clip_mean: Array1::from(entry.clip_mean.clone()),
            clip_std: Array1::from(entry.clip_std.clone()),
            default_steps: entry.default_steps,
            default_guidance_scale: entry.default_guidance_scale,
        })
    }

    /// The ONNX model (for timings).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Embedding width D.
    pub fn embedding_dim(&self) -> usize {
        self.clip_mean.len()
    }

    /// Samples one image embedding per conditioned image. Draws `(batch, D)` latents, then one
    /// `(batch, D)` noise tensor per step with t > 0 (inside the scheduler).
    pub fn sample(
        &self,
        text: &Conditioning,
        sampling: &Sampling,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<PriorOutput> {
        let (steps, guidance_scale) = (sampling.steps, sampling.guidance_scale);
        let _span = tracing::info_span!("prior", steps, guidance_scale).entered();
        let mut scheduler = sampling.build("prior steps", &self.scheduler)?;
        let batch = text.batch();
        let rows = text.embeds.nrows();
        // `prepare_latents`: noise × init_noise_sigma (1 for every scheduler unclip has).
        let mut latents: Array2<f32> = into_dim(
            Some(noise.randn(&[batch, self.embedding_dim()])?),
            "prior latents",
        )?;
        let sigma = scheduler.init_noise_sigma();
        if sigma != 1.0 {
            latents.mapv_inplace(|x| x * sigma);
        }
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if text.cfg {
                guidance::cfg_batch(latents.view(), latents.view())?
            } else {
                latents.clone()
            };
            let timestep = timestep_batch(t, rows);
            let mut out = self.model.run(&[
                Input::F32(input.view().into_dyn()),
                Input::I64(timestep.view().into_dyn()),
                Input::F32(text.embeds.view().into_dyn()),
                Input::F32(text.hidden_states.view().into_dyn()),
                Input::I64(text.mask.view().into_dyn()),
            ])?;
            let prediction: Array2<f32> = into_dim(out.pop(), "prior prediction")?;
            let prediction = if text.cfg {
                guidance::guide(prediction.view(), guidance_scale)?
            } else {
                prediction
            };
            latents = into_dim(
                Some(scheduler.step(
                    i,
                    prediction.into_dyn().view(),
                    latents.view().into_dyn(),
                    noise,
                )?),
                "prior latents",
            )?;
            report(observer, Stage::Prior, i + 1, timesteps.len())?;
        }
        let image_embeddings = self.post_process(&latents);
        Ok(PriorOutput {
            latents,
            image_embeddings,
        })
    }

    /// `latents × clip_std + clip_mean` (diffusers `PriorTransformer.post_process_latents`).
    pub fn post_process(&self, latents: &Array2<f32>) -> Array2<f32> {
        let mut out = latents.clone();
        for mut row in out.axis_iter_mut(Axis(0)) {
            row.zip_mut_with(&self.clip_std, |x, s| *x *= s);
            row.zip_mut_with(&self.clip_mean, |x, m| *x += m);
        }
        out
    }
}
