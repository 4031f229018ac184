//! Reproduction metadata: every setting that changes an image's pixels, written into its PNG as
//! text chunks and read back to make the same image again ([`Pipeline::reproduce`]). The one
//! producer for every command, the server and the latent-space operations.
//!
//! A record describes one image, not the run that made it: the image's own prompt, image
//! embedding and decoder latents, plus where its row sat in the run (`batch_prompts`,
//! `num_images_per_prompt`, `image_index`). Re-running a batch of that shape in which every row
//! holds this image's inputs gives the image again, byte for byte: the networks treat rows
//! independently, and a row's noise depends only on its position in the batch.

use std::collections::BTreeMap;
use std::str::FromStr;

use ndarray::{Array1, Array2, Array3, Array4, Axis};

use super::{DecoderCondition, Generation, Pipeline, TextToImage};
use crate::noise::{noise_source, NoiseSource, RngKind, SharedNoise};
use crate::runtime::Precision;
use crate::schedulers::SchedulerKind;
use crate::stages::Observer;
use crate::{Error, Result};

/// The unclip version written into every record.
pub const UNCLIP_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How the run drew its noise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub rng: RngKind,
    pub seed: u64,
    /// Every row got the same noise ([`SharedNoise`]: the latent-space commands' fixed decoder
    /// noise across frames).
    pub shared: bool,
}

impl Seed {
    /// Independent noise per row from `rng` seeded with `seed`.
    pub fn new(rng: RngKind, seed: u64) -> Self {
        Seed {
            rng,
            seed,
            shared: false,
        }
    }

    /// The noise source this describes.
    pub fn source(&self) -> Box<dyn NoiseSource> {
        let source = noise_source(self.rng, self.seed);
        if self.shared {
            Box::new(SharedNoise::new(source))
        } else {
            source
        }
    }
}

/// Everything that reproduces one image (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Reproduction {
    /// The command that made it (`generate`, `vary`, `interpolate`, `server`, …); informative.
    pub command: String,
    /// This image's caption (for image-embedding runs, the caption the decoder saw).
    pub prompt: String,
    pub negative_prompt: Option<String>,
    /// Prompts in the run, and images per prompt: the batch's shape.
    pub batch_prompts: usize,
    pub num_images_per_prompt: usize,
    /// The image's row in the run, prompt-major.
    pub image_index: usize,
    pub seed: Seed,
    pub prior_steps: usize,
    pub prior_guidance_scale: f32,
    pub prior_scheduler: SchedulerKind,
    pub decoder_steps: usize,
    pub decoder_guidance_scale: f32,
    pub decoder_scheduler: SchedulerKind,
    pub super_res_steps: Vec<usize>,
    /// The upsamplers' scheduler when it was chosen for all of them; `None`: the bundle's own.
    pub super_res_scheduler: Option<SchedulerKind>,
    pub eta: f32,
    pub decoder_condition: DecoderCondition,
    pub output_size: usize,
    /// The image's height when it differs from `output_size` (a non-square Kandinsky image).
    pub output_height: Option<usize>,
    /// img2img's strength: the image was made from an init image, which the record does not
    /// hold (it cannot be reproduced from the record alone).
    pub strength: Option<f64>,
    /// This image's CLIP image embedding `(D,)`, when the run did not make it with the prior.
    pub image_embedding: Option<Array1<f32>>,
    /// This image's starting decoder latents `(3, s, s)`, when given (DDIM inversion).
    pub decoder_latents: Option<Array3<f32>>,
    /// The bundle's name and the sha256 of its `bundle.json`.
    pub model: String,
    pub model_sha256: String,
    /// The precision the models ran at (written when not f32; older records are f32).
    pub precision: Precision,
    pub unclip_version: String,
}

impl Generation {
    /// The record of image `index` of this run, whose noise came from `seed`.
    pub fn reproduction(&self, command: &str, seed: Seed, index: usize) -> Result<Reproduction> {
        let s = &self.settings;
        let request = &self.request;
        let per_prompt = s.num_images_per_prompt.max(1);
        if index >= self.images.len() {
            return Err(Error::invalid(
                "image index",
                format!("{index}: the run made {} images", self.images.len()),
            ));
        }
        let prompt_index = index / per_prompt;
        let prompt = request
            .prompts
            .get(prompt_index)
            .cloned()
            .ok_or_else(|| Error::internal("a generated image without its prompt"))?;
        let image_embedding = (!s.ran_prior && s.decoder_condition == DecoderCondition::Prior)
            .then(|| self.image_embeddings.row(index).to_owned());
        let decoder_latents = request.decoder_latents.as_ref().map(|latents| {
            let row = if latents.shape()[0] == 1 { 0 } else { index };
            latents.index_axis(Axis(0), row).to_owned()
        });
        Ok(Reproduction {
            command: command.to_string(),
            prompt,
            negative_prompt: request.negative_prompt.clone(),
            batch_prompts: request.prompts.len(),
            num_images_per_prompt: per_prompt,
            image_index: index,
            seed,
            prior_steps: s.prior_steps,
            prior_guidance_scale: s.prior_guidance_scale,
            prior_scheduler: s.prior_scheduler,
            decoder_steps: s.decoder_steps,
            decoder_guidance_scale: s.decoder_guidance_scale,
            decoder_scheduler: s.decoder_scheduler,
            super_res_steps: s.super_res_steps.clone(),
            super_res_scheduler: request.super_res_scheduler,
            eta: s.eta,
            decoder_condition: s.decoder_condition,
            output_size: s.output_size,
            output_height: (s.output_height != s.output_size).then_some(s.output_height),
            strength: s.strength,
            image_embedding,
            decoder_latents,
            model: s.model.clone(),
            model_sha256: s.model_sha256.clone(),
            precision: s.precision,
            unclip_version: UNCLIP_VERSION.to_string(),
        })
    }

    /// [`Generation::reproduction`] as PNG text chunks, with `extra` informative pairs (a
    /// source file name, a frame label) after them.
    pub fn png_metadata(
        &self,
        command: &str,
        seed: Seed,
        index: usize,
        extra: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        let mut pairs = self.reproduction(command, seed, index)?.to_png_text();
        pairs.extend_from_slice(extra);
        Ok(pairs)
    }
}

impl Reproduction {
    /// The record as `(keyword, text)` pairs for PNG text chunks. Arrays are comma-separated
    /// decimals, each the shortest text that parses back to the same f32.
    pub fn to_png_text(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(&str, String)> = vec![
            ("command", self.command.clone()),
            ("prompt", self.prompt.clone()),
        ];
        if let Some(negative) = &self.negative_prompt {
            pairs.push(("negative_prompt", negative.clone()));
        }
        pairs.extend([
            ("batch_prompts", self.batch_prompts.to_string()),
            (
                "num_images_per_prompt",
                self.num_images_per_prompt.to_string(),
            ),
            ("image_index", self.image_index.to_string()),
            ("seed", self.seed.seed.to_string()),
            ("rng", self.seed.rng.to_string()),
            ("shared_noise", self.seed.shared.to_string()),
            ("prior_steps", self.prior_steps.to_string()),
            (
                "prior_guidance_scale",
                self.prior_guidance_scale.to_string(),
            ),
            ("prior_scheduler", self.prior_scheduler.to_string()),
            ("decoder_steps", self.decoder_steps.to_string()),
            (
                "decoder_guidance_scale",
                self.decoder_guidance_scale.to_string(),
            ),
            ("decoder_scheduler", self.decoder_scheduler.to_string()),
            ("super_res_steps", join(&self.super_res_steps)),
        ]);
        if let Some(kind) = self.super_res_scheduler {
            pairs.push(("super_res_scheduler", kind.to_string()));
        }
        pairs.extend([
            ("eta", self.eta.to_string()),
            ("decoder_condition", self.decoder_condition.to_string()),
            ("output_size", self.output_size.to_string()),
        ]);
        if let Some(height) = self.output_height {
            pairs.push(("output_height", height.to_string()));
        }
        if let Some(strength) = self.strength {
            pairs.push(("strength", strength.to_string()));
        }
        if let Some(embedding) = &self.image_embedding {
            pairs.push(("image_embedding", join(embedding.iter())));
        }
        if let Some(latents) = &self.decoder_latents {
            let shape = latents.shape();
            pairs.push((
                "decoder_latents_shape",
                join(shape.iter()).replace(',', "x"),
            ));
            pairs.push(("decoder_latents", join(latents.iter())));
        }
        pairs.extend([
            ("model", self.model.clone()),
            ("model_sha256", self.model_sha256.clone()),
        ]);
        if self.precision != Precision::F32 {
            pairs.push(("precision", self.precision.to_string()));
        }
        pairs.push(("unclip_version", self.unclip_version.clone()));
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// Reads a record back from PNG text chunks (other chunks are ignored).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first missing or unreadable key.
    pub fn from_png_text(pairs: &[(String, String)]) -> Result<Reproduction> {
        let fields = Fields(
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        );
        let image_embedding = match fields.optional("image_embedding") {
            Some(_) => Some(Array1::from(fields.list("image_embedding", ',')?)),
            None => None,
        };
        let decoder_latents = match fields.optional("decoder_latents_shape") {
            Some(shape) => {
                let dims: Vec<usize> = fields.list("decoder_latents_shape", 'x')?;
                let [c, h, w] = dims[..] else {
                    return Err(invalid(format!(
                        "decoder_latents_shape {shape:?} is not CxHxW"
                    )));
                };
                let values = fields.list("decoder_latents", ',')?;
                Some(
                    Array3::from_shape_vec((c, h, w), values)
                        .map_err(|e| invalid(format!("decoder_latents: {e}")))?,
                )
            }
            None => None,
        };
        Ok(Reproduction {
            command: fields.text("command")?.to_string(),
            prompt: fields.text("prompt")?.to_string(),
            negative_prompt: fields.optional("negative_prompt").map(str::to_string),
            batch_prompts: fields.parse("batch_prompts")?,
            num_images_per_prompt: fields.parse("num_images_per_prompt")?,
            image_index: fields.parse("image_index")?,
            seed: Seed {
                rng: fields.parse("rng")?,
                seed: fields.parse("seed")?,
                shared: fields.parse("shared_noise")?,
            },
            prior_steps: fields.parse("prior_steps")?,
            prior_guidance_scale: fields.parse("prior_guidance_scale")?,
            prior_scheduler: fields.parse("prior_scheduler")?,
            decoder_steps: fields.parse("decoder_steps")?,
            decoder_guidance_scale: fields.parse("decoder_guidance_scale")?,
            decoder_scheduler: fields.parse("decoder_scheduler")?,
            super_res_steps: fields.list("super_res_steps", ',')?,
            super_res_scheduler: match fields.optional("super_res_scheduler") {
                Some(_) => Some(fields.parse("super_res_scheduler")?),
                None => None,
            },
            eta: fields.parse("eta")?,
            decoder_condition: fields.parse("decoder_condition")?,
            output_size: fields.parse("output_size")?,
            output_height: match fields.optional("output_height") {
                Some(_) => Some(fields.parse("output_height")?),
                None => None,
            },
            strength: match fields.optional("strength") {
                Some(_) => Some(fields.parse("strength")?),
                None => None,
            },
            image_embedding,
            decoder_latents,
            model: fields.text("model")?.to_string(),
            model_sha256: fields.text("model_sha256")?.to_string(),
            precision: match fields.optional("precision") {
                Some(_) => fields.parse("precision")?,
                None => Precision::F32,
            },
            unclip_version: fields.text("unclip_version")?.to_string(),
        })
    }

    /// The request that makes this image again: a batch of the original shape in which every
    /// row holds this image's inputs.
    pub fn request(&self) -> TextToImage {
        let prompts = self.batch_prompts.max(1);
        let image_embeddings = self
            .image_embedding
            .as_ref()
            .map(|e| Array2::from_shape_fn((prompts, e.len()), |(_, j)| e[j]));
        let decoder_latents = self
            .decoder_latents
            .as_ref()
            .map(|l| -> Array4<f32> { l.clone().insert_axis(Axis(0)) });
        TextToImage {
            prompts: vec![self.prompt.clone(); prompts],
            negative_prompt: self.negative_prompt.clone(),
            num_images_per_prompt: Some(self.num_images_per_prompt),
            prior_steps: Some(self.prior_steps),
            decoder_steps: Some(self.decoder_steps),
            super_res_steps: self.super_res_steps.clone(),
            prior_guidance_scale: Some(self.prior_guidance_scale),
            decoder_guidance_scale: Some(self.decoder_guidance_scale),
            image_embeddings,
            record_intermediates: false,
            prior_scheduler: Some(self.prior_scheduler),
            decoder_scheduler: Some(self.decoder_scheduler),
            super_res_scheduler: self.super_res_scheduler,
            eta: Some(self.eta),
            output_size: Some(self.output_size),
            output_height: self.output_height,
            init_image: None,
            strength: None,
            decoder_latents,
            decoder_condition: self.decoder_condition,
        }
    }
}

impl Pipeline {
    /// Makes the image a [`Reproduction`] describes. The bundle must be the one that made it
    /// (same `bundle.json` hash).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the record names another bundle; whatever the run returns.
    pub fn reproduce(
        &self,
        record: &Reproduction,
        observer: &mut Observer<'_>,
    ) -> Result<image::RgbImage> {
        let bundle = self.bundle();
        if record.model_sha256 != bundle.manifest_sha256 {
            return Err(Error::invalid(
                "reproduction metadata",
                format!(
                    "the image was made by bundle {:?} (bundle.json sha256 {}), this pipeline runs {:?} ({}): load that bundle",
                    record.model, record.model_sha256, bundle.manifest.name, bundle.manifest_sha256
                ),
            ));
        }
        if record.precision != self.precision() {
            return Err(Error::invalid(
                "reproduction metadata",
                format!(
                    "the image was made at precision {}, this pipeline runs {}: run it at \
                     --precision {}",
                    record.precision,
                    self.precision(),
                    record.precision
                ),
            ));
        }
        if let Some(strength) = record.strength {
            return Err(Error::invalid(
                "reproduction metadata",
                format!(
                    "the image was made from an init image (img2img, strength {strength}), which \
                     the record does not hold: run `unclip generate` with that --init-image and \
                     the record's settings"
                ),
            ));
        }
        let request = record.request();
        let mut noise = record.seed.source();
        let generation = self.generate(&request, noise.as_mut(), observer)?;
        generation
            .images
            .into_iter()
            .nth(record.image_index)
            .ok_or_else(|| {
                Error::invalid(
                    "reproduction metadata",
                    format!(
                        "image_index {} is outside a run of {} × {} images",
                        record.image_index, record.batch_prompts, record.num_images_per_prompt
                    ),
                )
            })
    }
}

/// A record's text chunks by keyword.
struct Fields<'a>(BTreeMap<&'a str, &'a str>);

impl<'a> Fields<'a> {
    fn optional(&self, key: &str) -> Option<&'a str> {
        self.0.get(key).copied()
    }

    fn text(&self, key: &str) -> Result<&'a str> {
        self.optional(key).ok_or_else(|| {
            invalid(format!(
                "the image has no {key:?} text chunk: it was not written by this unclip"
            ))
        })
    }

    fn parse<T: FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let value = self.text(key)?;
        value
            .parse()
            .map_err(|e| invalid(format!("{key} = {value:?} does not parse: {e}")))
    }

    /// A list in one chunk, items split at `separator` (empty: no items).
    fn list<T: FromStr>(&self, key: &str, separator: char) -> Result<Vec<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.text(key)?
            .split(separator)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse()
                    .map_err(|e| invalid(format!("{key}: {item:?} does not parse: {e}")))
            })
            .collect()
    }
}

fn invalid(reason: String) -> Error {
    Error::invalid("reproduction metadata", reason)
}

fn join<T: ToString>(values: impl IntoIterator<Item = T>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
