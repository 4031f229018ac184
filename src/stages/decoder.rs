//! The decoder: text_proj + GLIDE-style UNet, 64×64 (DALL·E 2 §2.1; diffusers
//! `UnCLIPPipeline.__call__`, decoder loop, and `UnCLIPTextProjModel`).

use std::sync::Arc;

use ndarray::{concatenate, s, Array2, Array3, Array4, ArrayView2, Axis};

use super::{check_steps, report, timestep_batch, Conditioning, ModelCache, Observer, Stage};
use crate::bundle::Bundle;
use crate::guidance;
use crate::noise::NoiseSource;
use crate::runtime::{Input, Model};
use crate::schedulers::scheduler_from_config;
use crate::text::into_dim;
use crate::{Error, Result};

/// What the decoder produced, with its conditioning (for `--dump` and parity tests).
#[derive(Clone, Debug)]
pub struct DecoderOutput {
    /// text_proj's context tokens `(rows, extra + max_length, Dc)`.
    pub hidden_states: Array3<f32>,
    /// text_proj's additive time embeddings `(rows, Dtime)`.
    pub additive_clip_time_embeddings: Array2<f32>,
    /// The attention mask over the context tokens `(rows, extra + max_length)`.
    pub mask: Array2<i64>,
    /// The 64×64 images, clamped to [−1, 1] `(batch, 3, 64, 64)`.
    pub images: Array4<f32>,
}

/// text_proj (both forms) and the decoder UNet.
pub struct Decoder {
    model: Arc<Model>,
    text_proj: Arc<Model>,
    text_proj_cfg: Arc<Model>,
    scheduler: serde_json::Value,
    sample_size: usize,
    in_channels: usize,
    extra_tokens: usize,
    pub default_steps: usize,
    pub default_guidance_scale: f32,
}

impl Decoder {
    pub(crate) fn load(models: &mut ModelCache<'_>, bundle: &Bundle) -> Result<Self> {
        let entry = &bundle.manifest.decoder;
        Ok(Decoder {
            model: models.get(&entry.model)?,
            text_proj: models.get(&entry.text_proj)?,
            text_proj_cfg: models.get(&entry.text_proj_cfg)?,
            scheduler: entry.scheduler.clone(),
            sample_size: entry.sample_size,
            in_channels: entry.in_channels,
            extra_tokens: entry.clip_extra_context_tokens,
            default_steps: entry.default_steps,
            default_guidance_scale: entry.default_guidance_scale,
        })
    }

    /// The ONNX models (for timings).
    pub fn models(&self) -> [&Model; 3] {
        [&self.text_proj, &self.text_proj_cfg, &self.model]
    }

    /// Output resolution (square).
    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    /// Decodes one image per row of `image_embeddings` `(batch, D)`. Under CFG the
    /// unconditional image embedding is text_proj's learned null embedding. Draws the
    /// `(batch, 3, 64, 64)` latents, then one noise tensor per step with t > 0.
    pub fn sample(
        &self,
        image_embeddings: ArrayView2<'_, f32>,
        text: &Conditioning,
        steps: usize,
        guidance_scale: f32,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<DecoderOutput> {
        check_steps("decoder steps", steps)?;
        let _span = tracing::info_span!("decoder", steps, guidance_scale).entered();
        let batch = text.batch();
        if image_embeddings.nrows() != batch {
            return Err(Error::Shape {
                what: "image embeddings".into(),
                expected: format!("{batch} rows, one per image"),
                found: image_embeddings.shape().to_vec(),
            });
        }
        let rows = text.embeds.nrows();
        let text_proj = if text.cfg {
            &self.text_proj_cfg
        } else {
            &self.text_proj
        };
        let mut projected = text_proj
            .run(&[
                Input::F32(image_embeddings.into_dyn()),
                Input::F32(text.embeds.view().into_dyn()),
                Input::F32(text.hidden_states.view().into_dyn()),
            ])?
            .into_iter();
        let hidden_states: Array3<f32> =
            into_dim(projected.next(), "text_proj encoder_hidden_states")?;
        let additive: Array2<f32> =
            into_dim(projected.next(), "text_proj additive_clip_time_embeddings")?;
        // F.pad(text_mask, (clip_extra_context_tokens, 0), value=True): the extra tokens are attended.
        let mask = concatenate(
            Axis(1),
            &[
                Array2::<i64>::ones((rows, self.extra_tokens)).view(),
                text.mask.view(),
            ],
        )
        .map_err(|_| Error::invalid("text mask", "cannot pad the text mask"))?;

        let mut scheduler = scheduler_from_config(&self.scheduler, steps)?;
        let shape = [batch, self.in_channels, self.sample_size, self.sample_size];
        let mut latents: Array4<f32> = into_dim(Some(noise.randn(&shape)?), "decoder latents")?;
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
                Input::F32(hidden_states.view().into_dyn()),
                Input::F32(additive.view().into_dyn()),
                Input::I64(mask.view().into_dyn()),
            ])?;
            let prediction: Array4<f32> = into_dim(out.pop(), "decoder prediction")?;
            let prediction = if text.cfg {
                guidance::guide_learned_variance(
                    prediction.view(),
                    self.in_channels,
                    guidance_scale,
                )?
            } else {
                prediction
            };
            latents = into_dim(
                Some(scheduler.step(
                    i,
                    prediction.view().into_dyn(),
                    latents.view().into_dyn(),
                    noise,
                )?),
                "decoder latents",
            )?;
            report(observer, Stage::Decoder, i + 1, timesteps.len())?;
        }
        latents.mapv_inplace(|x| x.clamp(-1.0, 1.0));
        debug_assert_eq!(
            latents.slice(s![.., .., 0, 0]).len(),
            batch * self.in_channels
        );
        Ok(DecoderOutput {
            hidden_states,
            additive_clip_time_embeddings: additive,
            mask,
            images: latents,
        })
    }
}
