//! What a run is asked for ([`TextToImage`]) and what it resolves to ([`ResolvedSettings`]):
//! the bundle's defaults filled in and every parameter checked before any model runs.

use ndarray::{Array2, Array4};

use super::Pipeline;
use crate::runtime::Precision;
use crate::schedulers::SchedulerKind;
use crate::stages::{check_steps, Sampling, MAX_BATCH};
use crate::{Error, Result};

/// What the decoder is conditioned on besides the caption's tokens: the paper's §5.1 ablation
/// ("the prior matters", DALL·E 2 figure 9), compared by `export/shapes/eval.py`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecoderCondition {
    /// The image embedding the prior predicts from the caption (unCLIP; the default).
    #[default]
    Prior,
    /// The caption's CLIP text embedding passed as if it were an image embedding (no prior).
    TextEmbedding,
    /// The caption alone: a zero image embedding, the decoder's own "no embedding" input (it is
    /// trained with the embedding zeroed 10% of the time, §2.1).
    Caption,
}

impl DecoderCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            DecoderCondition::Prior => "prior",
            DecoderCondition::TextEmbedding => "text-embedding",
            DecoderCondition::Caption => "caption",
        }
    }
}

impl std::str::FromStr for DecoderCondition {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "prior" => Ok(DecoderCondition::Prior),
            "text-embedding" => Ok(DecoderCondition::TextEmbedding),
            "caption" => Ok(DecoderCondition::Caption),
            other => Err(Error::invalid(
                "decoder condition",
                format!("{other:?}: expected prior, text-embedding or caption"),
            )),
        }
    }
}

impl std::fmt::Display for DecoderCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A text-to-image request. Unset fields take the bundle's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TextToImage {
    /// One or more prompts (an empty prompt is allowed).
    pub prompts: Vec<String>,
    /// Replaces the empty prompt of the unconditional CFG branch (prior and decoder).
    pub negative_prompt: Option<String>,
    /// Images per prompt (default 1).
    pub num_images_per_prompt: Option<usize>,
    pub prior_steps: Option<usize>,
    pub decoder_steps: Option<usize>,
    /// Steps per upsampler; missing entries take the defaults.
    pub super_res_steps: Vec<usize>,
    pub prior_guidance_scale: Option<f32>,
    pub decoder_guidance_scale: Option<f32>,
    /// Precomputed CLIP image embeddings `(prompts, D)` or `(1, D)`: the prior is skipped.
    pub image_embeddings: Option<Array2<f32>>,
    /// Keep every intermediate tensor (for `--dump` and parity tests).
    pub record_intermediates: bool,
    /// Scheduler of each stage (`None`: the bundle's, `UnCLIPScheduler` for Karlo); another kind
    /// is converted from the bundle's config ([`crate::schedulers::SchedulerConfig::to_kind`]).
    pub prior_scheduler: Option<SchedulerKind>,
    pub decoder_scheduler: Option<SchedulerKind>,
    /// For every upsampler.
    pub super_res_scheduler: Option<SchedulerKind>,
    /// DDIM's η for the stages that run DDIM (default 0: deterministic). An η above 0 with no
    /// DDIM stage is an error.
    pub eta: Option<f32>,
    /// Side (width, when `output_height` is given) of the images to make. Karlo: the decoder's
    /// size or any upsampler's (default: the largest, after every upsampler); the stages after it
    /// are skipped. Kandinsky 2.2: any multiple of 64 (default: the bundle's `default_size`).
    pub output_size: Option<usize>,
    /// Height of the images when it differs from `output_size` (Kandinsky 2.2 only).
    pub output_height: Option<usize>,
    /// img2img (Kandinsky 2.2): the image the decoder starts from, noised to `strength` of the
    /// schedule (diffusers `KandinskyV22Img2ImgPipeline`). Resized to the output size.
    pub init_image: Option<image::RgbImage>,
    /// How much of the decoder's schedule img2img runs, in (0, 1] (default 0.3, diffusers').
    pub strength: Option<f64>,
    /// Start the decoder from these latents instead of drawing noise, `(images, 3, 64, 64)` or
    /// `(1, 3, 64, 64)` for all (a DDIM-inverted `x_T`, see [`Pipeline::vary_inverted`]).
    pub decoder_latents: Option<Array4<f32>>,
    /// What conditions the decoder (default: the prior's embedding). Other choices skip the prior
    /// and cannot be combined with `image_embeddings`.
    pub decoder_condition: DecoderCondition,
}

/// The settings a run actually used (defaults resolved), for metadata and benchmarks.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedSettings {
    pub prior_steps: usize,
    pub decoder_steps: usize,
    pub super_res_steps: Vec<usize>,
    pub prior_guidance_scale: f32,
    pub decoder_guidance_scale: f32,
    pub num_images_per_prompt: usize,
    pub classifier_free_guidance: bool,
    /// Whether the prior ran (false with precomputed image embeddings or another decoder
    /// condition).
    pub ran_prior: bool,
    pub decoder_condition: DecoderCondition,
    /// The scheduler each stage ran.
    pub prior_scheduler: SchedulerKind,
    pub decoder_scheduler: SchedulerKind,
    pub super_res_scheduler: Vec<SchedulerKind>,
    /// DDIM's η (0 unless a stage runs DDIM).
    pub eta: f32,
    /// How many upsamplers run (all unless a smaller `output_size` was asked).
    pub upsamplers: usize,
    /// Width of the images made (their side when square).
    pub output_size: usize,
    /// Height of the images made.
    pub output_height: usize,
    /// Whether the decoder runs classifier-free guidance (Karlo: with the prior; Kandinsky 2.2:
    /// when its own scale is above 1).
    pub decoder_guidance: bool,
    /// img2img's strength (None without an init image).
    pub strength: Option<f64>,
    /// The bundle's name and the sha256 of its `bundle.json` (for reproduction metadata).
    pub model: String,
    pub model_sha256: String,
    /// The precision the models ran at ([`Pipeline::precision`]).
    pub precision: Precision,
}

impl ResolvedSettings {
    /// How the prior samples.
    pub fn prior_sampling(&self) -> Sampling {
        self.sampling(
            self.prior_steps,
            self.prior_guidance_scale,
            self.prior_scheduler,
        )
    }

    /// How the decoder samples.
    pub fn decoder_sampling(&self) -> Sampling {
        self.sampling(
            self.decoder_steps,
            self.decoder_guidance_scale,
            self.decoder_scheduler,
        )
    }

    /// How upsampler `i` samples.
    pub fn super_res_sampling(&self, i: usize) -> Sampling {
        self.sampling(self.super_res_steps[i], 1.0, self.super_res_scheduler[i])
    }

    fn sampling(&self, steps: usize, guidance_scale: f32, kind: SchedulerKind) -> Sampling {
        Sampling {
            steps,
            guidance_scale,
            scheduler: Some(kind),
            eta: if kind == SchedulerKind::Ddim {
                self.eta
            } else {
                0.0
            },
        }
    }
}

impl Pipeline {
    /// Resolves defaults and checks every parameter before any work starts.
    pub fn resolve(&self, request: &TextToImage) -> Result<ResolvedSettings> {
        let n = self.check_batch(request)?;
        let (decoder_default_steps, decoder_default_scale, decoder_scheduler) =
            self.decoder_defaults();
        let prior_guidance_scale = guidance_scale(
            "prior guidance scale",
            request.prior_guidance_scale,
            self.prior.default_guidance_scale,
        )?;
        let decoder_guidance_scale = guidance_scale(
            "decoder guidance scale",
            request.decoder_guidance_scale,
            decoder_default_scale,
        )?;
        let super_res_steps = self.super_res_steps(&request.super_res_steps)?;
        self.check_given_embeddings(request)?;
        let prior_steps = request.prior_steps.unwrap_or(self.prior.default_steps);
        let decoder_steps = request.decoder_steps.unwrap_or(decoder_default_steps);
        check_steps("prior steps", prior_steps)?;
        check_steps("decoder steps", decoder_steps)?;
        for &steps in &super_res_steps {
            check_steps("super-resolution steps", steps)?;
        }
        self.check_decoder_latents(request, request.prompts.len() * n)?;
        let (upsamplers, output_size, output_height) = self.output_for(request)?;
        let strength = self.check_init_image(request, decoder_steps)?;
        let latent = self.latent_decoder().is_some();
        if latent && request.decoder_condition == DecoderCondition::Caption {
            return Err(self.karlo_only(
                "decoder condition caption (a zero image embedding beside the caption's tokens)",
            ));
        }
        let settings = ResolvedSettings {
            prior_steps,
            decoder_steps,
            super_res_steps,
            prior_guidance_scale,
            decoder_guidance_scale,
            num_images_per_prompt: n,
            // diffusers' UnCLIPPipeline: CFG runs for both stages when either scale is above 1;
            // the Kandinsky 2.2 pipelines decide per stage.
            classifier_free_guidance: if latent {
                prior_guidance_scale > 1.0
            } else {
                prior_guidance_scale > 1.0 || decoder_guidance_scale > 1.0
            },
            decoder_guidance: decoder_guidance_scale > 1.0
                || (!latent && prior_guidance_scale > 1.0),
            strength,
            ran_prior: request.image_embeddings.is_none()
                && request.decoder_condition == DecoderCondition::Prior,
            decoder_condition: request.decoder_condition,
            prior_scheduler: request
                .prior_scheduler
                .unwrap_or_else(|| self.prior.scheduler_config().kind()),
            decoder_scheduler: request
                .decoder_scheduler
                .unwrap_or_else(|| decoder_scheduler.kind()),
            super_res_scheduler: self
                .upsamplers()
                .iter()
                .map(|u| {
                    request
                        .super_res_scheduler
                        .unwrap_or_else(|| u.scheduler_config().kind())
                })
                .collect(),
            eta: request.eta.unwrap_or(0.0),
            upsamplers,
            output_size,
            output_height,
            model: self.bundle.manifest.name.clone(),
            model_sha256: self.bundle.manifest_sha256.clone(),
            precision: self.precision,
        };
        self.check_schedulers(&settings)?;
        Ok(settings)
    }

    /// Images per prompt, checked against the batch limit.
    fn check_batch(&self, request: &TextToImage) -> Result<usize> {
        if request.prompts.is_empty() {
            return Err(Error::invalid(
                "prompts",
                "give at least one prompt (an empty string is allowed)",
            ));
        }
        let n = request.num_images_per_prompt.unwrap_or(1);
        if n == 0 || n * request.prompts.len() > MAX_BATCH {
            return Err(Error::invalid(
                "num_images_per_prompt",
                format!(
                    "{} prompts × {n} images: need 1 to {MAX_BATCH} images per call",
                    request.prompts.len()
                ),
            ));
        }
        Ok(n)
    }

    /// Steps of every upsampler: the given ones, then the bundle's defaults.
    fn super_res_steps(&self, given: &[usize]) -> Result<Vec<usize>> {
        if given.len() > self.upsamplers().len() {
            return Err(Error::invalid(
                "super-resolution steps",
                format!(
                    "{} values given, the bundle has {} upsampler(s)",
                    given.len(),
                    self.upsamplers().len()
                ),
            ));
        }
        Ok(self
            .upsamplers()
            .iter()
            .enumerate()
            .map(|(i, u)| given.get(i).copied().unwrap_or(u.default_steps))
            .collect())
    }

    /// Given image embeddings: one row for all prompts or one per prompt, finite, and not
    /// combined with another decoder condition.
    fn check_given_embeddings(&self, request: &TextToImage) -> Result<()> {
        let Some(embeddings) = &request.image_embeddings else {
            return Ok(());
        };
        if request.decoder_condition != DecoderCondition::Prior {
            return Err(Error::invalid(
                "decoder condition",
                format!(
                    "{} replaces the image embeddings, so it cannot be combined with given \
                     image embeddings: drop one of them",
                    request.decoder_condition
                ),
            ));
        }
        let (rows, dim) = embeddings.dim();
        let prompts = request.prompts.len();
        if dim != self.prior.embedding_dim() || !(rows == 1 || rows == prompts) {
            let rows_ok = match prompts {
                1 => "1".to_string(),
                n => format!("1 or {n}"),
            };
            return Err(Error::Shape {
                what: "image embeddings".into(),
                expected: format!(
                    "({rows_ok}, {}) (one row for all prompts or one per prompt)",
                    self.prior.embedding_dim()
                ),
                found: vec![rows, dim],
            });
        }
        if embeddings.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "image embeddings".into(),
            });
        }
        Ok(())
    }

    /// Given decoder latents: one for all images or one per image, of the decoder's shape.
    fn check_decoder_latents(&self, request: &TextToImage, images: usize) -> Result<()> {
        let Some(latents) = &request.decoder_latents else {
            return Ok(());
        };
        let size = self.decoder()?.sample_size();
        let shape = latents.shape();
        if !(shape[0] == 1 || shape[0] == images) || shape[1..] != [3, size, size] {
            return Err(Error::Shape {
                what: "decoder latents".into(),
                expected: format!("(1 or {images}, 3, {size}, {size})"),
                found: shape.to_vec(),
            });
        }
        if latents.iter().any(|x| !x.is_finite()) {
            return Err(Error::NonFinite {
                what: "decoder latents".into(),
            });
        }
        Ok(())
    }

    /// How many upsamplers run, and the width and height of the images made.
    fn output_for(&self, request: &TextToImage) -> Result<(usize, usize, usize)> {
        if let Some(latent) = self.latent_decoder() {
            let width = request.output_size.unwrap_or(latent.default_size());
            let height = request.output_height.unwrap_or(width);
            latent.latent_size(height, width)?;
            return Ok((0, width, height));
        }
        if let Some(height) = request.output_height {
            if Some(height) != request.output_size {
                return Err(Error::invalid(
                    "size",
                    format!(
                        "{}x{height}: this bundle ({}) makes square images: give one side",
                        request.output_size.unwrap_or(self.output_size()),
                        self.family()
                    ),
                ));
            }
        }
        let upsamplers = self.upsamplers_for(request.output_size)?;
        let side = self.sizes()[upsamplers];
        Ok((upsamplers, side, side))
    }

    /// img2img's init image and strength: a latent-decoder bundle with a MoVQ encoder, a strength
    /// that runs at least one step. Returns the strength (None without an init image).
    fn check_init_image(&self, request: &TextToImage, decoder_steps: usize) -> Result<Option<f64>> {
        let Some(image) = &request.init_image else {
            if let Some(strength) = request.strength {
                return Err(Error::invalid(
                    "strength",
                    format!("{strength} given without an init image: give one, or drop strength"),
                ));
            }
            return Ok(None);
        };
        if self.latent_decoder().is_none() {
            return Err(Error::invalid(
                "init image",
                format!(
                    "img2img runs on a latent decoder (kandinsky2.2); bundle {:?} is {}: use a \
                     kandinsky2.2 bundle, or `unclip vary` for variations of an image",
                    self.bundle.manifest.name,
                    self.family()
                ),
            ));
        }
        if image.width() == 0 || image.height() == 0 {
            return Err(Error::invalid(
                "init image",
                "the image is empty (0 pixels)",
            ));
        }
        if request.decoder_latents.is_some() {
            return Err(Error::invalid(
                "init image",
                "an init image and given decoder latents both set the decoder's start: drop one",
            ));
        }
        let strength = request.strength.unwrap_or(DEFAULT_STRENGTH);
        crate::stages::latent::img2img_start(decoder_steps, strength)?;
        Ok(Some(strength))
    }

    /// How many upsamplers run to make `output_size` (all when it is not given).
    fn upsamplers_for(&self, output_size: Option<usize>) -> Result<usize> {
        let Some(size) = output_size else {
            return Ok(self.upsamplers().len());
        };
        let sizes = self.sizes();
        sizes.iter().position(|&s| s == size).ok_or_else(|| {
            Error::invalid(
                "output size",
                format!(
                    "{size}: this bundle makes {}",
                    sizes
                        .iter()
                        .map(|s| format!("{s}x{s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    /// Builds every stage's scheduler once, so a bad combination (an inverse scheduler, η without
    /// DDIM, a step count a solver cannot space) fails before any model runs.
    fn check_schedulers(&self, settings: &ResolvedSettings) -> Result<()> {
        let upsamplers = settings.upsamplers;
        // DDIMInverse runs from image to noise (Pipeline::invert_images); a generation cannot.
        let inverse = std::iter::once(("prior scheduler", settings.prior_scheduler))
            .filter(|_| settings.ran_prior)
            .chain([("decoder scheduler", settings.decoder_scheduler)])
            .chain(
                settings.super_res_scheduler[..upsamplers]
                    .iter()
                    .map(|&k| ("super-resolution scheduler", k)),
            )
            .find(|(_, kind)| *kind == SchedulerKind::DdimInverse);
        if let Some((name, _)) = inverse {
            return Err(Error::invalid(
                name,
                "ddim-inverse runs from an image to noise (inversion), it cannot generate: \
                 choose unclip, ddpm, ddim or dpm++",
            ));
        }
        let mut uses_ddim = false;
        if settings.ran_prior {
            let sampling = settings.prior_sampling();
            sampling.build("prior steps", self.prior.scheduler_config())?;
            uses_ddim |= settings.prior_scheduler == SchedulerKind::Ddim;
        }
        settings
            .decoder_sampling()
            .build("decoder steps", self.decoder_defaults().2)?;
        uses_ddim |= settings.decoder_scheduler == SchedulerKind::Ddim;
        for (i, upsampler) in self.upsamplers().iter().enumerate().take(upsamplers) {
            settings
                .super_res_sampling(i)
                .build("super-resolution steps", upsampler.scheduler_config())?;
            uses_ddim |= settings.super_res_scheduler[i] == SchedulerKind::Ddim;
        }
        let eta = settings.eta;
        if eta != 0.0 && !uses_ddim {
            return Err(Error::invalid(
                "eta",
                format!(
                    "{eta} given, but η applies only to DDIM and no stage runs it: set a \
                     stage's scheduler to ddim (e.g. the decoder's) or leave eta at 0"
                ),
            ));
        }
        Ok(())
    }
}

/// img2img's strength when none is given (diffusers `KandinskyV22Img2ImgPipeline`).
pub const DEFAULT_STRENGTH: f64 = 0.3;

/// A guidance scale, or its default, checked to be finite and in 0..=100.
fn guidance_scale(name: &'static str, value: Option<f32>, default: f32) -> Result<f32> {
    let value = value.unwrap_or(default);
    if !value.is_finite() || !(0.0..=100.0).contains(&value) {
        return Err(Error::invalid(
            name,
            format!("{value}: use a finite value in 0..=100"),
        ));
    }
    Ok(value)
}
