//! The CLIP image tower: images → CLIP image embeddings (for variations, interpolation and the
//! other latent-space operations; diffusers `UnCLIPImageVariationPipeline._encode_image`).
//!
//! It lives with the preprocessing that feeds it, as the text encoder lives with the tokenizer in
//! `crate::text`; the pipeline loads it with the other models through `crate::stages::ModelCache`.

use std::sync::Arc;

use ndarray::{Array2, ArrayView4};

use super::clip_preprocess_batch;
use crate::bundle::{Bundle, ImageProcessorEntry};
use crate::runtime::{Input, Model};
use crate::stages::{image_profile, ModelCache};
use crate::text::into_dim;
use crate::{Error, Result};

/// The image encoder with its preprocessing constants.
pub struct ImageEncoder {
    model: Arc<Model>,
    processor: ImageProcessorEntry,
}

impl ImageEncoder {
    /// Loads the bundle's image encoder, if it has one.
    pub(crate) fn load(models: &mut ModelCache<'_>, bundle: &Bundle) -> Result<Option<Self>> {
        let Some(stage) = &bundle.manifest.image_encoder else {
            return Ok(None);
        };
        Ok(Some(ImageEncoder {
            model: models.get(&stage.model, image_profile())?,
            processor: bundle.manifest.image_processor.clone(),
        }))
    }

    /// The ONNX model (for timings).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Preprocesses (CLIP: resize, center crop, normalize) and encodes images `(N, D)`.
    pub fn encode(&self, images: &[image::DynamicImage]) -> Result<Array2<f32>> {
        if images.is_empty() {
            return Err(Error::invalid("images", "give at least one image"));
        }
        let pixels = clip_preprocess_batch(images, &self.processor)?;
        self.encode_pixels(pixels.view())
    }

    /// Encodes already preprocessed `pixel_values` `(N, 3, 224, 224)`.
    pub fn encode_pixels(&self, pixel_values: ArrayView4<'_, f32>) -> Result<Array2<f32>> {
        let crop = self.processor.crop_size;
        let shape = pixel_values.shape();
        if shape[1] != 3 || shape[2] != crop || shape[3] != crop || shape[0] == 0 {
            return Err(Error::Shape {
                what: "pixel values".into(),
                expected: format!("(N ≥ 1, 3, {crop}, {crop})"),
                found: shape.to_vec(),
            });
        }
        let mut out = self.model.run(&[Input::F32(pixel_values.into_dyn())])?;
        into_dim(out.pop(), "image_embeds")
    }
}
