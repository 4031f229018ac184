//! Text → image: prompts → text embeddings → prior → decoder → upsamplers → RGB images
//! (DESIGN §1, §4; diffusers `UnCLIPPipeline.__call__`). The pipeline never owns an RNG: the
//! caller passes the [`NoiseSource`], drawn in diffusers' order (DESIGN §5).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use ndarray::{Array2, Array4, ArrayD, Axis};

use crate::bundle::Bundle;
use crate::guidance;
use crate::image_io::to_rgb8;
use crate::noise::NoiseSource;
use crate::runtime::{Model, Runtime};
use crate::schedulers::SchedulerKind;
use crate::stages::{
    check_steps, Conditioning, Decoder, ImageEncoder, ModelCache, Observer, Prior, Sampling, Stage,
    Upsampler,
};
use crate::text::{TextEmbeddings, TextEncoder};
use crate::{Error, Result};

/// Largest number of images one call makes (prompts × images per prompt).
pub const MAX_BATCH: usize = 64;

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
    /// Side of the images to make (default: the largest, after every upsampler): the decoder's
    /// size or any upsampler's; the stages after it are skipped.
    pub output_size: Option<usize>,
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
    /// Side of the images made.
    pub output_size: usize,
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

/// Wall and ONNX Runtime seconds of one stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageTiming {
    pub stage: String,
    pub seconds: f64,
    /// Time inside `Session::run` during the stage.
    pub ort_seconds: f64,
}

/// A tensor kept for `--dump`.
#[derive(Clone, Debug)]
pub enum Tensor {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Final images, prompt-major (`prompt 0 image 0, prompt 0 image 1, …`).
    pub images: Vec<image::RgbImage>,
    /// The CLIP image embeddings decoded `(images, D)`.
    pub image_embeddings: Array2<f32>,
    pub settings: ResolvedSettings,
    pub timings: Vec<StageTiming>,
    /// Named intermediates (names as in `tests/fixtures/ref/<case>/`), when requested.
    pub intermediates: BTreeMap<String, Tensor>,
}

/// A loaded bundle, ready to generate. `Send + Sync`: concurrent calls take turns per model
/// call.
pub struct Pipeline {
    bundle: Bundle,
    runtime: Runtime,
    text: TextEncoder,
    image_encoder: Option<ImageEncoder>,
    prior: Prior,
    decoder: Decoder,
    upsamplers: Vec<Upsampler>,
}

impl Pipeline {
    /// Opens and validates the bundle in `dir` and creates every session.
    pub fn load(runtime: &Runtime, dir: impl AsRef<Path>) -> Result<Pipeline> {
        let bundle = Bundle::open(dir)?;
        Self::from_bundle(runtime, bundle)
    }

    /// Creates the sessions of an opened bundle.
    pub fn from_bundle(runtime: &Runtime, bundle: Bundle) -> Result<Pipeline> {
        let _span = tracing::info_span!("load", bundle = %bundle.dir.display()).entered();
        let text = TextEncoder::load(runtime, &bundle)?;
        let mut models = ModelCache::new(runtime, &bundle);
        let image_encoder = ImageEncoder::load(&mut models, &bundle)?;
        let prior = Prior::load(&mut models, &bundle)?;
        let decoder = Decoder::load(&mut models, &bundle)?;
        let upsamplers = bundle
            .manifest
            .upsamplers
            .iter()
            .map(|entry| Upsampler::load(&mut models, entry, &bundle))
            .collect::<Result<Vec<_>>>()?;
        drop(models);
        Ok(Pipeline {
            bundle,
            runtime: runtime.clone(),
            text,
            image_encoder,
            prior,
            decoder,
            upsamplers,
        })
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }

    /// The CLIP image tower; an error naming the fix when the bundle has none.
    pub fn image_encoder(&self) -> Result<&ImageEncoder> {
        self.image_encoder.as_ref().ok_or_else(|| {
            Error::invalid(
                "image input",
                "this bundle has no image encoder: export it from a checkpoint with image_encoder/ and \
                 feature_extractor/ (Karlo's image-variations checkpoint)",
            )
        })
    }

    /// Image variations (DALL·E 2 §3.1; diffusers `UnCLIPImageVariationPipeline`): each image's
    /// CLIP embedding is decoded `request.num_images_per_prompt` times, with the empty prompt
    /// as text; CFG runs iff the decoder guidance scale is above 1. `request.prompts` and
    /// `image_embeddings` are replaced.
    pub fn vary(
        &self,
        images: &[image::DynamicImage],
        request: &TextToImage,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<Generation> {
        let encoder = self.image_encoder()?;
        let release = Release(vec![encoder.model()]);
        let embeddings = encoder.encode(images)?;
        drop(release);
        let mut variation = request.clone();
        variation.prompts = vec![String::new(); images.len()];
        variation.image_embeddings = Some(embeddings);
        // No prior runs; scale 0 keeps the CFG decision to the decoder's scale, as diffusers.
        variation.prior_guidance_scale = Some(0.0);
        self.generate(&variation, noise, observer)
    }

    pub fn prior(&self) -> &Prior {
        &self.prior
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    pub fn upsamplers(&self) -> &[Upsampler] {
        &self.upsamplers
    }

    /// The image sizes this bundle can make: the decoder's, then each upsampler's.
    pub fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.decoder.sample_size())
            .chain(self.upsamplers.iter().map(|u| u.sample_size()))
            .collect()
    }

    /// Side length of the final images.
    pub fn output_size(&self) -> usize {
        self.upsamplers
            .last()
            .map_or(self.decoder.sample_size(), |u| u.sample_size())
    }

    /// Resolves defaults and checks every parameter before any work starts.
    pub fn resolve(&self, request: &TextToImage) -> Result<ResolvedSettings> {
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
        let scale = |name: &'static str, value: Option<f32>, default: f32| -> Result<f32> {
            let value = value.unwrap_or(default);
            if !value.is_finite() || !(0.0..=100.0).contains(&value) {
                return Err(Error::invalid(
                    name,
                    format!("{value}: use a finite value in 0..=100"),
                ));
            }
            Ok(value)
        };
        let prior_guidance_scale = scale(
            "prior guidance scale",
            request.prior_guidance_scale,
            self.prior.default_guidance_scale,
        )?;
        let decoder_guidance_scale = scale(
            "decoder guidance scale",
            request.decoder_guidance_scale,
            self.decoder.default_guidance_scale,
        )?;
        if request.super_res_steps.len() > self.upsamplers.len() {
            return Err(Error::invalid(
                "super-resolution steps",
                format!(
                    "{} values given, the bundle has {} upsampler(s)",
                    request.super_res_steps.len(),
                    self.upsamplers.len()
                ),
            ));
        }
        let super_res_steps: Vec<usize> = self
            .upsamplers
            .iter()
            .enumerate()
            .map(|(i, u)| {
                request
                    .super_res_steps
                    .get(i)
                    .copied()
                    .unwrap_or(u.default_steps)
            })
            .collect();
        if request.image_embeddings.is_some()
            && request.decoder_condition != DecoderCondition::Prior
        {
            return Err(Error::invalid(
                "decoder condition",
                format!(
                    "{} replaces the image embeddings, so it cannot be combined with given \
                     image embeddings: drop one of them",
                    request.decoder_condition
                ),
            ));
        }
        if let Some(embeddings) = &request.image_embeddings {
            let (rows, dim) = embeddings.dim();
            if dim != self.prior.embedding_dim() || !(rows == 1 || rows == request.prompts.len()) {
                let rows_ok = match request.prompts.len() {
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
        }
        let prior_steps = request.prior_steps.unwrap_or(self.prior.default_steps);
        let decoder_steps = request.decoder_steps.unwrap_or(self.decoder.default_steps);
        check_steps("prior steps", prior_steps)?;
        check_steps("decoder steps", decoder_steps)?;
        for &steps in &super_res_steps {
            check_steps("super-resolution steps", steps)?;
        }
        let images = request.prompts.len() * n;
        if let Some(latents) = &request.decoder_latents {
            let size = self.decoder.sample_size();
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
        }
        let eta = request.eta.unwrap_or(0.0);
        let sizes = self.sizes();
        let upsamplers = match request.output_size {
            None => self.upsamplers.len(),
            Some(size) => sizes.iter().position(|&s| s == size).ok_or_else(|| {
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
            })?,
        };
        let settings = ResolvedSettings {
            prior_steps,
            decoder_steps,
            super_res_steps,
            prior_guidance_scale,
            decoder_guidance_scale,
            num_images_per_prompt: n,
            // diffusers: CFG runs for both stages when either scale is above 1.
            classifier_free_guidance: prior_guidance_scale > 1.0 || decoder_guidance_scale > 1.0,
            ran_prior: request.image_embeddings.is_none()
                && request.decoder_condition == DecoderCondition::Prior,
            decoder_condition: request.decoder_condition,
            prior_scheduler: request
                .prior_scheduler
                .unwrap_or_else(|| self.prior.scheduler_config().kind()),
            decoder_scheduler: request
                .decoder_scheduler
                .unwrap_or_else(|| self.decoder.scheduler_config().kind()),
            super_res_scheduler: self
                .upsamplers
                .iter()
                .map(|u| {
                    request
                        .super_res_scheduler
                        .unwrap_or_else(|| u.scheduler_config().kind())
                })
                .collect(),
            eta,
            upsamplers,
            output_size: sizes[upsamplers],
        };
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
                 choose unclip, ddim or dpm++",
            ));
        }
        // Every stage's scheduler is built once here, so a bad combination (η without DDIM, a
        // step count a solver cannot space) fails before any model runs.
        let mut uses_ddim = false;
        if settings.ran_prior {
            let sampling = settings.prior_sampling();
            sampling.build("prior steps", self.prior.scheduler_config())?;
            uses_ddim |= settings.prior_scheduler == SchedulerKind::Ddim;
        }
        settings
            .decoder_sampling()
            .build("decoder steps", self.decoder.scheduler_config())?;
        uses_ddim |= settings.decoder_scheduler == SchedulerKind::Ddim;
        for (i, upsampler) in self.upsamplers.iter().enumerate().take(upsamplers) {
            settings
                .super_res_sampling(i)
                .build("super-resolution steps", upsampler.scheduler_config())?;
            uses_ddim |= settings.super_res_scheduler[i] == SchedulerKind::Ddim;
        }
        if eta != 0.0 && !uses_ddim {
            return Err(Error::invalid(
                "eta",
                format!(
                    "{eta} given, but η applies only to DDIM and no stage runs it: set a \
                     stage's scheduler to ddim (e.g. the decoder's) or leave eta at 0"
                ),
            ));
        }
        Ok(settings)
    }

    /// The text conditioning of a request: each prompt's CLIP text encoding repeated once per
    /// image, and with classifier-free guidance the negative (or empty) prompt's in front
    /// (`[uncond, cond]`, diffusers' `_encode_prompt`).
    fn condition(
        &self,
        request: &TextToImage,
        settings: &ResolvedSettings,
    ) -> Result<(crate::text::Tokens, Conditioning)> {
        let n = settings.num_images_per_prompt;
        let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
        let (tokens, cond) = self.text.encode(&prompts)?;
        let cond = repeat_rows(&cond, n);
        let text = if settings.classifier_free_guidance {
            let negative = request.negative_prompt.as_deref().unwrap_or("");
            let (_, uncond) = self.text.encode(&[negative])?;
            let uncond = repeat_rows(&uncond, cond.embeds.nrows());
            Conditioning {
                embeds: guidance::cfg_batch(uncond.embeds.view(), cond.embeds.view())?,
                hidden_states: guidance::cfg_batch(
                    uncond.hidden_states.view(),
                    cond.hidden_states.view(),
                )?,
                mask: guidance::cfg_batch(uncond.mask.view(), cond.mask.view())?,
                cfg: true,
            }
        } else {
            Conditioning {
                embeds: cond.embeds,
                hidden_states: cond.hidden_states,
                mask: cond.mask,
                cfg: false,
            }
        };
        Ok((tokens, text))
    }

    /// The text conditioning (with the CFG half when the request's scales call for it) of a
    /// request, checked as [`Pipeline::generate`] checks it.
    pub fn conditioning(&self, request: &TextToImage) -> Result<Conditioning> {
        let settings = self.resolve(request)?;
        Ok(self.condition(request, &settings)?.1)
    }

    /// The CLIP image embeddings the prior predicts for `request.prompts` (stage 2 alone), one
    /// row per prompt and image. Draws the same noise, in the same order, as [`Pipeline::generate`]
    /// does before its decoder, so the rows equal `generate(request).image_embeddings` for the
    /// same noise source.
    pub fn embed_prompts(
        &self,
        request: &TextToImage,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<Array2<f32>> {
        let mut request = request.clone();
        request.image_embeddings = None;
        let settings = self.resolve(&request)?;
        let (_, text) = self.condition(&request, &settings)?;
        crate::stages::report(observer, Stage::Text, 1, 1)?;
        Ok(self
            .prior
            .sample(&text, &settings.prior_sampling(), noise, observer)?
            .image_embeddings)
    }

    /// Runs text → image. `observer` sees every step and may cancel between steps.
    pub fn generate(
        &self,
        request: &TextToImage,
        noise: &mut dyn NoiseSource,
        observer: &mut Observer<'_>,
    ) -> Result<Generation> {
        let settings = self.resolve(request)?;
        let started = Instant::now();
        let mut timings = Vec::new();
        let mut intermediates = BTreeMap::new();
        let record = request.record_intermediates;
        let mut keep = |name: &str, tensor: Tensor| {
            if record {
                intermediates.insert(name.to_string(), tensor);
            }
        };
        let mut tap = NoiseTap {
            inner: noise,
            drawn: Vec::new(),
            record,
        };
        let n = settings.num_images_per_prompt;

        // 1. text
        let mut clock = StageClock::start("text", &[self.text.model()]);
        let release = Release(vec![self.text.model()]);
        let (tokens, text) = self.condition(request, &settings)?;
        drop(release);
        keep("prompt_ids", Tensor::I64(tokens.ids.clone().into_dyn()));
        keep("prompt_mask", Tensor::I64(tokens.mask.clone().into_dyn()));
        keep("text_embeds", Tensor::F32(text.embeds.clone().into_dyn()));
        keep(
            "text_hidden_states",
            Tensor::F32(text.hidden_states.clone().into_dyn()),
        );
        keep("text_mask", Tensor::I64(text.mask.clone().into_dyn()));
        timings.push(clock.stop());
        crate::stages::report(observer, Stage::Text, 1, 1)?;

        // 2. prior (or the given embeddings)
        let image_embeddings = match &request.image_embeddings {
            _ if request.decoder_condition == DecoderCondition::TextEmbedding => {
                // The conditional half of the text batch: one row per prompt and image.
                let rows = text.embeds.nrows();
                text.embeds
                    .slice(ndarray::s![rows - request.prompts.len() * n.., ..])
                    .to_owned()
            }
            _ if request.decoder_condition == DecoderCondition::Caption => {
                Array2::zeros((request.prompts.len() * n, self.prior.embedding_dim()))
            }
            Some(given) => {
                // One row per prompt, or one row for all (checked in `resolve`); then per image.
                let rows: Vec<usize> = (0..request.prompts.len() * n)
                    .map(|i| if given.nrows() == 1 { 0 } else { i / n })
                    .collect();
                given.select(Axis(0), &rows)
            }
            None => {
                clock = StageClock::start("prior", &[self.prior.model()]);
                let release = Release(vec![self.prior.model()]);
                let out =
                    self.prior
                        .sample(&text, &settings.prior_sampling(), &mut tap, observer)?;
                drop(release);
                keep("prior_latents", Tensor::F32(out.latents.into_dyn()));
                timings.push(clock.stop());
                out.image_embeddings
            }
        };
        keep(
            "image_embeddings",
            Tensor::F32(image_embeddings.clone().into_dyn()),
        );

        // 3. decoder
        clock = StageClock::start("decoder", &self.decoder.models());
        let release = Release(self.decoder.models().to_vec());
        let initial = request.decoder_latents.as_ref().map(|given| {
            let rows: Vec<usize> = (0..image_embeddings.nrows())
                .map(|i| if given.shape()[0] == 1 { 0 } else { i })
                .collect();
            given.select(Axis(0), &rows)
        });
        let decoded = self.decoder.sample(
            image_embeddings.view(),
            &text,
            &settings.decoder_sampling(),
            initial.as_ref().map(|a| a.view()),
            &mut tap,
            observer,
        )?;
        drop(release);
        timings.push(clock.stop());
        keep(
            "decoder_hidden_states",
            Tensor::F32(decoded.hidden_states.into_dyn()),
        );
        keep(
            "additive_clip_time_embeddings",
            Tensor::F32(decoded.additive_clip_time_embeddings.into_dyn()),
        );
        keep("decoder_mask", Tensor::I64(decoded.mask.into_dyn()));
        keep(
            "decoder_out",
            Tensor::F32(decoded.images.clone().into_dyn()),
        );

        // 4. upsamplers, each fed the previous output clamped to [−1, 1]
        let mut images = decoded.images;
        for (i, upsampler) in self.upsamplers.iter().enumerate().take(settings.upsamplers) {
            clock = StageClock::start(&upsampler.name, &upsampler.models());
            let release = Release(upsampler.models().to_vec());
            if i > 0 {
                images.mapv_inplace(|x| x.clamp(-1.0, 1.0));
            }
            let out = upsampler.sample(
                i,
                images.view(),
                &settings.super_res_sampling(i),
                &mut tap,
                observer,
            )?;
            drop(release);
            timings.push(clock.stop());
            let suffix = if i == 0 {
                String::new()
            } else {
                format!("_{i}")
            };
            keep(
                &format!("upsampled{suffix}"),
                Tensor::F32(out.upsampled.into_dyn()),
            );
            keep(
                &format!("sr_out{suffix}"),
                Tensor::F32(out.images.clone().into_dyn()),
            );
            images = out.images;
        }
        for (i, drawn) in tap.drawn.into_iter().enumerate() {
            keep(&format!("noise_{i:03}"), Tensor::F32(drawn));
        }
        let images = to_rgb8(images.view());
        timings.push(StageTiming {
            stage: "total".into(),
            seconds: started.elapsed().as_secs_f64(),
            ort_seconds: timings.iter().map(|t| t.ort_seconds).sum(),
        });
        Ok(Generation {
            images,
            image_embeddings,
            settings,
            timings,
            intermediates,
        })
    }
}

/// An observer that never cancels.
pub fn no_observer() -> impl FnMut(crate::stages::Progress) -> ControlFlow<()> {
    |_| ControlFlow::Continue(())
}

/// Records the noise drawn, for `--dump`.
struct NoiseTap<'a> {
    inner: &'a mut dyn NoiseSource,
    drawn: Vec<ArrayD<f32>>,
    record: bool,
}

impl NoiseSource for NoiseTap<'_> {
    fn randn(&mut self, shape: &[usize]) -> Result<ArrayD<f32>> {
        let noise = self.inner.randn(shape)?;
        if self.record {
            self.drawn.push(noise.clone());
        }
        Ok(noise)
    }
}

/// Measures a stage's wall time and the ORT time of its models.
struct StageClock<'a> {
    stage: String,
    started: Instant,
    models: Vec<&'a Model>,
    ort_before: f64,
}

impl<'a> StageClock<'a> {
    fn start(stage: &str, models: &[&'a Model]) -> Self {
        let mut unique: Vec<&Model> = Vec::new();
        for m in models {
            if !unique.iter().any(|u| std::ptr::eq(*u, *m)) {
                unique.push(m);
            }
        }
        let ort_before = unique.iter().map(|m| m.run_seconds()).sum();
        StageClock {
            stage: stage.to_string(),
            started: Instant::now(),
            models: unique,
            ort_before,
        }
    }

    fn stop(&self) -> StageTiming {
        let ort_after: f64 = self.models.iter().map(|m| m.run_seconds()).sum();
        StageTiming {
            stage: self.stage.clone(),
            seconds: self.started.elapsed().as_secs_f64(),
            ort_seconds: ort_after - self.ort_before,
        }
    }
}

/// Low-memory mode: drops a stage's sessions when the stage ends, however it ends (a cancel or
/// an error included). Outside low-memory mode [`Model::release`] does nothing.
struct Release<'a>(Vec<&'a Model>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        for model in &self.0 {
            model.release();
        }
    }
}

/// `repeat_interleave(n, dim=0)` of every tensor (diffusers repeats per image this way).
fn repeat_rows(text: &TextEmbeddings, n: usize) -> TextEmbeddings {
    TextEmbeddings {
        embeds: repeat_array_rows(&text.embeds, n),
        hidden_states: repeat_array_rows(&text.hidden_states, n),
        mask: repeat_array_rows(&text.mask, n),
    }
}

fn repeat_array_rows<A: Clone, D: ndarray::RemoveAxis>(
    array: &ndarray::Array<A, D>,
    n: usize,
) -> ndarray::Array<A, D> {
    let indices: Vec<usize> = (0..array.len_of(Axis(0)))
        .flat_map(|i| std::iter::repeat_n(i, n))
        .collect();
    array.select(Axis(0), &indices)
}

/// A pipeline is shared across threads (C hosts, the server): keep it `Send + Sync`.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Pipeline>();
};
