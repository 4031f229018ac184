//! The decoder: text_proj + GLIDE-style UNet, 64×64 (DALL·E 2 §2.1; diffusers
//! `UnCLIPPipeline.__call__`, decoder loop, and `UnCLIPTextProjModel`).

use std::sync::Arc;

use ndarray::{concatenate, s, Array2, Array3, Array4, ArrayView2, ArrayView4, Axis};

use super::{report, timestep_batch, Conditioning, ModelCache, Observer, Sampling, Stage};
use crate::bundle::{Bundle, DecoderEntry};
use crate::guidance;
use crate::noise::NoiseSource;
use crate::runtime::{Input, Model};
use crate::schedulers::{Scheduler, SchedulerConfig, SchedulerKind};
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

/// text_proj's outputs for one run: the decoder's context tokens, additive time embeddings and
/// padded mask.
struct Projection {
    hidden_states: Array3<f32>,
    additive: Array2<f32>,
    mask: Array2<i64>,
}

/// text_proj (both forms) and the decoder UNet.
pub struct Decoder {
    model: Arc<Model>,
    text_proj: Arc<Model>,
    text_proj_cfg: Arc<Model>,
    scheduler: SchedulerConfig,
    sample_size: usize,
    in_channels: usize,
    extra_tokens: usize,
    pub default_steps: usize,
    pub default_guidance_scale: f32,
}

impl Decoder {
    /// The scheduler config the bundle names for this stage.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    pub(crate) fn load(
        models: &mut ModelCache<'_>,
        bundle: &Bundle,
        entry: &DecoderEntry,
    ) -> Result<Self> {
        Ok(Decoder {
            model: models.get(&entry.model, super::cfg_profile())?,
            text_proj: models.get(&entry.text_proj, super::image_profile())?,
            text_proj_cfg: models.get(&entry.text_proj_cfg, super::cfg_profile())?,
            scheduler: super::parse_scheduler(bundle, "decoder", &entry.scheduler)?,
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
    /// `(batch, 3, 64, 64)` latents (unless `initial_latents` gives them: a DDIM-inverted `x_T`),
    /// then the scheduler's noise per step.
    pub fn sample(
        &self,
        image_embeddings: ArrayView2<'_, f32>,
        text: &Conditioning,
        sampling: &Sampling,
        initial_latents: Option<ArrayView4<'_, f32>>,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<DecoderOutput> {
        let _span = tracing::info_span!(
            "decoder",
            steps = sampling.steps,
            guidance_scale = sampling.guidance_scale
        )
        .entered();
        let mut scheduler = sampling.build("decoder steps", &self.scheduler)?;
        let (hidden_states, additive, mask) = self.project(image_embeddings, text)?;
        let batch = text.batch();
        let shape = [batch, self.in_channels, self.sample_size, self.sample_size];
        let latents: Array4<f32> = match initial_latents {
            Some(given) => {
                if given.shape() != shape {
                    return Err(Error::Shape {
                        what: "initial decoder latents".into(),
                        expected: format!("{shape:?}"),
                        found: given.shape().to_vec(),
                    });
                }
                if given.iter().any(|x| !x.is_finite()) {
                    return Err(Error::NonFinite {
                        what: "initial decoder latents".into(),
                    });
                }
                given.to_owned()
            }
            None => {
                let mut drawn: Array4<f32> =
                    into_dim(Some(noise.randn(&shape)?), "decoder latents")?;
                let sigma = scheduler.init_noise_sigma();
                if sigma != 1.0 {
                    drawn.mapv_inplace(|x| x * sigma);
                }
                drawn
            }
        };
        let projection = Projection {
            hidden_states,
            additive,
            mask,
        };
        let mut latents = self.denoise(
            latents,
            scheduler.as_mut(),
            &projection,
            text.cfg,
            sampling.guidance_scale,
            noise,
            observer,
        )?;
        let Projection {
            hidden_states,
            additive,
            mask,
        } = projection;
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

    /// DDIM inversion (DALL·E 2 §3.1; diffusers `DDIMInverseScheduler`): runs the decoder
    /// backwards from clean 64×64 images `x0` `(batch, 3, 64, 64)` in [−1, 1] to the latents
    /// `x_T` that a deterministic DDIM decode (η = 0, same steps and spacing) maps back to them.
    /// `text` conditions as in [`Decoder::sample`]; inversion is usually run without CFG (scale
    /// 1), where DDIM's ODE is the model's own.
    pub fn invert(
        &self,
        x0: ArrayView4<'_, f32>,
        image_embeddings: ArrayView2<'_, f32>,
        text: &Conditioning,
        sampling: &Sampling,
        observer: &mut Observer<'_>,
    ) -> Result<Array4<f32>> {
        let _span = tracing::info_span!("decoder inversion", steps = sampling.steps).entered();
        let inverse = Sampling {
            scheduler: Some(SchedulerKind::DdimInverse),
            eta: 0.0,
            ..*sampling
        };
        let mut scheduler = inverse.build("inversion steps", &self.scheduler)?;
        let shape = [
            text.batch(),
            self.in_channels,
            self.sample_size,
            self.sample_size,
        ];
        if x0.shape() != shape {
            return Err(Error::Shape {
                what: "images to invert".into(),
                expected: format!("{shape:?}"),
                found: x0.shape().to_vec(),
            });
        }
        let (hidden_states, additive, mask) = self.project(image_embeddings, text)?;
        let projection = Projection {
            hidden_states,
            additive,
            mask,
        };
        self.denoise(
            x0.to_owned(),
            scheduler.as_mut(),
            &projection,
            text.cfg,
            sampling.guidance_scale,
            &mut crate::noise::NoNoise,
            observer,
        )
    }

    /// text_proj: the context tokens, additive time embeddings and padded mask.
    fn project(
        &self,
        image_embeddings: ArrayView2<'_, f32>,
        text: &Conditioning,
    ) -> Result<(Array3<f32>, Array2<f32>, Array2<i64>)> {
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
        .map_err(|_| Error::internal("the text mask and the extra tokens' mask differ in rows"))?;
        Ok((hidden_states, additive, mask))
    }

    /// The denoising loop shared by sampling and inversion: one guided UNet evaluation and one
    /// scheduler step per timestep, reporting progress.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        mut latents: Array4<f32>,
        scheduler: &mut dyn Scheduler,
        projection: &Projection,
        cfg: bool,
        guidance_scale: f32,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<Array4<f32>> {
        let timesteps = scheduler.timesteps().to_vec();
        for (i, &t) in timesteps.iter().enumerate() {
            let prediction = self.predict(&latents, t, cfg, guidance_scale, projection)?;
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
        Ok(latents)
    }

    /// One UNet evaluation at timestep `t`, guided (diffusers: the variance channels of the
    /// conditional half are kept, `UnCLIPPipeline.__call__`).
    fn predict(
        &self,
        latents: &Array4<f32>,
        t: i64,
        cfg: bool,
        guidance_scale: f32,
        projection: &Projection,
    ) -> Result<Array4<f32>> {
        let input = if cfg {
            guidance::cfg_batch(latents.view(), latents.view())?
        } else {
            latents.clone()
        };
        let timestep = timestep_batch(t, input.shape()[0]);
        let mut out = self.model.run(&[
            Input::F32(input.view().into_dyn()),
            Input::I64(timestep.view().into_dyn()),
            Input::F32(projection.hidden_states.view().into_dyn()),
            Input::F32(projection.additive.view().into_dyn()),
            Input::I64(projection.mask.view().into_dyn()),
        ])?;
        let prediction: Array4<f32> = into_dim(out.pop(), "decoder prediction")?;
        if cfg {
            guidance::guide_learned_variance(prediction.view(), self.in_channels, guidance_scale)
        } else {
            Ok(prediction)
        }
    }
}
