//! The Kandinsky 2.2 family's decoder: a latent UNet conditioned on the image embedding alone,
//! then the MoVQ image decoder (diffusers `KandinskyV22Pipeline.__call__` and
//! `KandinskyV22Img2ImgPipeline.__call__`; `VQModel.encode`/`decode`).

use std::sync::Arc;

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4, Axis};

use super::{report, timestep_batch, ModelCache, Observer, Sampling, Stage};
use crate::bundle::{Bundle, LatentDecoderEntry};
use crate::guidance;
use crate::noise::NoiseSource;
use crate::runtime::{Input, Model};
use crate::schedulers::SchedulerConfig;
use crate::text::into_dim;
use crate::{Error, Result};

/// What the latent decoder produced.
#[derive(Clone, Debug)]
pub struct LatentOutput {
    /// The image embeddings the UNet was conditioned on: `[negative; batch, positive; batch]`
    /// under classifier-free guidance, else the positive rows.
    pub image_embeds: Array2<f32>,
    /// The timesteps the loop ran (img2img runs the last ones of the schedule).
    pub timesteps: Vec<i64>,
    /// The latents after the last step `(batch, C, H/f, W/f)`.
    pub latents: Array4<f32>,
    /// MoVQ's output, about [−1, 1] `(batch, 3, H, W)` (not clamped).
    pub images: Array4<f32>,
}

/// img2img's start: the MoVQ latents of the init images, one per generated image, and how far
/// into the schedule to noise them.
#[derive(Clone, Copy, Debug)]
pub struct InitLatents<'a> {
    pub latents: ArrayView4<'a, f32>,
    /// In (0, 1]: the share of the schedule run (diffusers `strength`).
    pub strength: f64,
}

/// The latent UNet, the MoVQ decoder and encoder, and the zero-image negative embedding.
pub struct LatentDecoder {
    unet: Arc<Model>,
    movq_decoder: Arc<Model>,
    movq_encoder: Option<Arc<Model>>,
    scheduler: SchedulerConfig,
    negative_embedding: Array1<f32>,
    latent_channels: usize,
    scale_factor: usize,
    default_size: usize,
    pub default_steps: usize,
    pub default_guidance_scale: f32,
}

impl LatentDecoder {
    pub(crate) fn load(
        models: &mut ModelCache<'_>,
        bundle: &Bundle,
        entry: &LatentDecoderEntry,
    ) -> Result<Self> {
        let negative = bundle
            .manifest
            .prior
            .negative_image_embed
            .as_ref()
            .ok_or_else(|| {
                Error::internal("kandinsky bundle checked without its negative embed")
            })?;
        let path = bundle.resolve(&negative.file)?;
        let negative = crate::npy::read_embeddings(&path)?;
        let dim = bundle.manifest.embedding_dim;
        if negative.shape() != [1, dim] {
            return Err(Error::BundleInvalid {
                path,
                reason: format!(
                    "the negative image embedding has shape {:?}, expected (1, {dim}) or ({dim},)",
                    negative.shape()
                ),
            });
        }
        let encoder = match &entry.movq_encoder {
            Some(key) => Some(models.get(key, super::image_profile())?),
            None => None,
        };
        Ok(LatentDecoder {
            unet: models.get(&entry.model, super::cfg_profile())?,
            movq_decoder: models.get(&entry.movq_decoder, super::image_profile())?,
            movq_encoder: encoder,
            scheduler: super::parse_scheduler(bundle, "decoder", &entry.scheduler)?,
            negative_embedding: negative.row(0).to_owned(),
            latent_channels: entry.latent_channels,
            scale_factor: entry.movq_scale_factor,
            default_size: entry.default_size,
            default_steps: entry.default_steps,
            default_guidance_scale: entry.default_guidance_scale,
        })
    }

    /// The scheduler config the bundle names for this stage.
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
    }

    /// The ONNX models (for timings): UNet, MoVQ decoder, and the encoder when the bundle has one.
    pub fn models(&self) -> Vec<&Model> {
        let mut models = vec![&*self.unet, &*self.movq_decoder];
        models.extend(self.movq_encoder.as_deref());
        models
    }

    /// Side of the images made when no size is asked (the bundle's `default_size`).
    pub fn default_size(&self) -> usize {
        self.default_size
    }

    /// Image sides must be multiples of this: the MoVQ factor × the UNet's 8× downsampling.
    pub fn size_multiple(&self) -> usize {
        self.scale_factor * 8
    }

    /// The zero-image embedding `(D,)`: the negative condition without a negative prompt.
    pub fn negative_embedding(&self) -> &Array1<f32> {
        &self.negative_embedding
    }

    /// Checks an image size `(height, width)` (multiples of [`Self::size_multiple`], at most
    /// 4096) and returns the latents' `(height, width)`.
    pub fn latent_size(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let multiple = self.size_multiple();
        let fits = |side: usize| side > 0 && side % multiple == 0 && side <= 4096;
        if !fits(height) || !fits(width) {
            return Err(Error::invalid(
                "size",
                format!(
                    "{width}x{height}: this bundle makes images whose sides are multiples of \
                     {multiple} up to 4096, such as {d}x{d} or {w}x{d}",
                    d = self.default_size,
                    w = self.default_size + multiple,
                ),
            ));
        }
        Ok((height / self.scale_factor, width / self.scale_factor))
    }

    /// MoVQ-encodes images in [−1, 1] `(batch, 3, H, W)` to latents (diffusers
    /// `VQModel.encode(image).latents`: before quantization, unscaled).
    pub fn encode(&self, images: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        let encoder = self.movq_encoder.as_ref().ok_or_else(|| {
            Error::invalid(
                "init image",
                "this bundle has no MoVQ encoder (img2img): re-export it with \
                 export/export_bundle.py, which writes movq_encoder",
            )
        })?;
        let mut out = encoder.run(&[Input::F32(images.into_dyn())])?;
        into_dim(out.pop(), "MoVQ latents")
    }

    /// Denoises one latent per row of `image_embeddings` `(batch, D)` at image size
    /// `(height, width)`, then decodes it with MoVQ. `negative` `(batch, D)` is the
    /// unconditional branch under guidance (`cfg`): the zero-image embedding, or the prior's
    /// sample of the negative prompt. Draws `(batch, C, h, w)` latents — or, from `init`, noises
    /// the given latents at the first timestep run with one draw of their shape — then the
    /// scheduler's noise per step.
    #[allow(clippy::too_many_arguments)]
    pub fn sample(
        &self,
        image_embeddings: ArrayView2<'_, f32>,
        negative: ArrayView2<'_, f32>,
        cfg: bool,
        sampling: &Sampling,
        (height, width): (usize, usize),
        init: Option<InitLatents<'_>>,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<LatentOutput> {
        let _span = tracing::info_span!(
            "latent decoder",
            steps = sampling.steps,
            guidance_scale = sampling.guidance_scale
        )
        .entered();
        let mut scheduler = sampling.build("decoder steps", &self.scheduler)?;
        let batch = image_embeddings.nrows();
        if negative.shape() != image_embeddings.shape() {
            return Err(Error::Shape {
                what: "negative image embeddings".into(),
                expected: format!("{:?}, one per image", image_embeddings.shape()),
                found: negative.shape().to_vec(),
            });
        }
        let (h, w) = self.latent_size(height, width)?;
        let shape = [batch, self.latent_channels, h, w];
        let timesteps = scheduler.timesteps().to_vec();
        let (first, latents) = match init {
            None => {
                // `prepare_latents`: noise × init_noise_sigma.
                let mut latents: Array4<f32> =
                    into_dim(Some(noise.randn(&shape)?), "decoder latents")?;
                let sigma = scheduler.init_noise_sigma();
                if sigma != 1.0 {
                    latents.mapv_inplace(|x| x * sigma);
                }
                (0, latents)
            }
            Some(init) => {
                if init.latents.shape() != shape {
                    return Err(Error::Shape {
                        what: "init image latents".into(),
                        expected: format!("{shape:?}"),
                        found: init.latents.shape().to_vec(),
                    });
                }
                let first = img2img_start(timesteps.len(), init.strength)?;
                let schedule = scheduler.noising_schedule().ok_or_else(|| {
                    Error::invalid(
                        "decoder scheduler",
                        "img2img starts mid-schedule, which this scheduler cannot: choose ddpm \
                         or ddim",
                    )
                })?;
                // `prepare_latents`: one draw of the latents' shape, `add_noise` at the first
                // timestep run (no init_noise_sigma).
                let drawn = noise.randn(&shape)?;
                let noisy = crate::schedulers::add_noise(
                    schedule,
                    init.latents.into_dyn(),
                    drawn.view(),
                    timesteps[first],
                )?;
                (first, into_dim(Some(noisy), "decoder latents")?)
            }
        };
        let embeds = if cfg {
            guidance::cfg_batch(negative, image_embeddings)?
        } else {
            image_embeddings.to_owned()
        };
        let mut latents = latents;
        let run = &timesteps[first..];
        for (k, &t) in run.iter().enumerate() {
            let input = if cfg {
                guidance::cfg_batch(latents.view(), latents.view())?
            } else {
                latents.clone()
            };
            let timestep = timestep_batch(t, input.shape()[0]);
            let mut out = self.unet.run(&[
                Input::F32(input.view().into_dyn()),
                Input::I64(timestep.view().into_dyn()),
                Input::F32(embeds.view().into_dyn()),
            ])?;
            let prediction: Array4<f32> = into_dim(out.pop(), "decoder prediction")?;
            let prediction = if cfg {
                self.guide(prediction, sampling.guidance_scale)?
            } else {
                prediction
            };
            // The scheduler reads the variance half only when its config learns it (the
            // pipeline's `variance_type` check).
            latents = into_dim(
                Some(scheduler.step(
                    first + k,
                    prediction.view().into_dyn(),
                    latents.view().into_dyn(),
                    noise,
                )?),
                "decoder latents",
            )?;
            report(observer, Stage::Decoder, k + 1, run.len())?;
        }
        let images = self.decode(latents.view())?;
        Ok(LatentOutput {
            image_embeds: embeds,
            timesteps: run.to_vec(),
            latents,
            images,
        })
    }

    /// MoVQ decode (`VQModel.decode(latents, force_not_quantize=True)`): about [−1, 1].
    pub fn decode(&self, latents: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        let mut out = self.movq_decoder.run(&[Input::F32(latents.into_dyn())])?;
        into_dim(out.pop(), "MoVQ image")
    }

    /// Guidance over `[negative, positive]`: ε mixed, the variance channels (when the UNet
    /// predicts them) from the positive half, unguided.
    fn guide(&self, prediction: Array4<f32>, scale: f32) -> Result<Array4<f32>> {
        if prediction.shape()[1] == 2 * self.latent_channels {
            guidance::guide_learned_variance(prediction.view(), self.latent_channels, scale)
        } else {
            guidance::guide(prediction.view(), scale)
        }
    }

    /// The negative rows for `batch` images without a negative prompt.
    pub fn zero_negatives(&self, batch: usize) -> Array2<f32> {
        self.negative_embedding
            .view()
            .insert_axis(Axis(0))
            .broadcast((batch, self.negative_embedding.len()))
            .map_or_else(|| Array2::zeros((batch, 0)), |b| b.to_owned())
    }
}

/// img2img's first step index (diffusers `KandinskyV22Img2ImgPipeline.get_timesteps`):
/// `init_timestep = min(int(steps × strength), steps)`, `t_start = steps − init_timestep`; at
/// least one step must remain.
pub fn img2img_start(steps: usize, strength: f64) -> Result<usize> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::invalid(
            "strength",
            format!("{strength}: use a value in (0, 1] (1 ignores the init image)"),
        ));
    }
    let init_timestep = ((steps as f64 * strength) as usize).min(steps);
    if init_timestep == 0 {
        return Err(Error::invalid(
            "strength",
            format!(
                "{strength} × {steps} decoder steps runs no step: raise the strength or the \
                 steps (at least {:.3} at {steps} steps)",
                1.0 / steps as f64
            ),
        ));
    }
    Ok(steps - init_timestep)
}
