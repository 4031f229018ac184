//! Prompts → CLIP token ids → text embeddings (stage 1 of unCLIP).
//!
//! Tokenization follows diffusers' `UnCLIPPipeline._encode_prompt`: the bundle's CLIP BPE
//! `tokenizer.json`, `padding="max_length"`, `truncation=True` at the bundle's `max_length` (77),
//! so a long prompt keeps its first 75 tokens between `<|startoftext|>` and `<|endoftext|>`.
//! The text encoder is called without an attention mask (CLIP's causal mask only), as there.

use std::path::Path;

use ndarray::{Array2, Array3};
use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::bundle::Bundle;
use crate::runtime::{BatchProfile, Input, Model, Runtime};
use crate::{Error, Result};

/// Token ids and attention mask of a batch of prompts, each `(batch, max_length)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokens {
    pub ids: Array2<i64>,
    pub mask: Array2<i64>,
}

/// The CLIP tokenizer of a bundle, configured with the bundle's padding and truncation.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation or padding, to measure what a prompt loses.
    plain: Tokenizer,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` and applies the bundle's pad token and max length.
    pub fn from_file(path: &Path, max_length: usize, pad_token: &str, pad_id: u32) -> Result<Self> {
        // An unreadable tokenizer.json is a broken bundle, not bad input.
        let unreadable = |e: tokenizers::Error| Error::BundleInvalid {
            path: path.to_path_buf(),
            reason: format!("not a Hugging Face tokenizers file ({e}); re-export the bundle"),
        };
        let plain = Tokenizer::from_file(path).map_err(unreadable)?;
        let mut tokenizer = Tokenizer::from_file(path).map_err(unreadable)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_id,
            pad_token: pad_token.to_string(),
            ..Default::default()
        }));
        Ok(ClipTokenizer {
            tokenizer,
            plain,
            max_length,
        })
    }

    /// Tokenizes `prompts` (any UTF-8, including empty) into `(len, max_length)` ids and mask.
    pub fn tokenize(&self, prompts: &[&str]) -> Result<Tokens> {
        let encodings = self
            .tokenizer
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let n = self.max_length;
        let mut ids = Array2::<i64>::zeros((prompts.len(), n));
        let mut mask = Array2::<i64>::zeros((prompts.len(), n));
        for (row, enc) in encodings.iter().enumerate() {
            if enc.get_ids().len() != n {
                return Err(Error::Tokenizer(format!(
                    "prompt {row} encoded to {} tokens, expected {n}",
                    enc.get_ids().len()
                )));
            }
            for (k, (&id, &m)) in enc
                .get_ids()
                .iter()
                .zip(enc.get_attention_mask())
                .enumerate()
            {
                ids[[row, k]] = id as i64;
                mask[[row, k]] = m as i64;
            }
        }
        Ok(Tokens { ids, mask })
    }

    /// Tokens of the prompt without truncation, to warn when a prompt is cut.
    pub fn untruncated_len(&self, prompt: &str) -> Result<usize> {
        Ok(self
            .plain
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .len())
    }

    /// The sequence length every prompt is padded or truncated to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }
}

/// CLIP text embeddings of a batch of prompts.
#[derive(Clone, Debug)]
pub struct TextEmbeddings {
    /// Pooled, projected embedding `(batch, D)`: `text_embeds`.
    pub embeds: Array2<f32>,
    /// Last hidden states `(batch, max_length, Dt)`.
    pub hidden_states: Array3<f32>,
    /// Attention mask `(batch, max_length)`, 1 for tokens and 0 for padding.
    pub mask: Array2<i64>,
}

/// Tokenizer + CLIP text tower.
pub struct TextEncoder {
    tokenizer: ClipTokenizer,
    model: Model,
}

impl TextEncoder {
    /// Loads the bundle's tokenizer and text encoder, for calls of up to `profile.max` prompts.
    pub fn load(runtime: &Runtime, bundle: &Bundle, profile: BatchProfile) -> Result<Self> {
        let m = &bundle.manifest;
        let tokenizer = ClipTokenizer::from_file(
            &bundle.resolve(&m.tokenizer.file)?,
            m.tokenizer.max_length,
            &m.tokenizer.pad_token,
            m.tokenizer.pad_id,
        )?;
        let key = &m.text_encoder.model;
        let entry = bundle.model(key)?;
        let model = Model::load(runtime, key, &bundle.resolve(&entry.file)?, entry, profile)?;
        Ok(TextEncoder { tokenizer, model })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// The ONNX model (for timings).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Tokenizes and encodes `prompts`.
    pub fn encode(&self, prompts: &[&str]) -> Result<(Tokens, TextEmbeddings)> {
        let tokens = self.tokenizer.tokenize(prompts)?;
        for prompt in prompts {
            let len = self.tokenizer.untruncated_len(prompt)?;
            if len > self.tokenizer.max_length {
                tracing::warn!(
                    tokens = len,
                    max = self.tokenizer.max_length,
                    "prompt truncated: {prompt:?}"
                );
            }
        }
        let embeddings = self.encode_tokens(&tokens)?;
        Ok((tokens, embeddings))
    }

    /// Encodes already tokenized prompts.
    pub fn encode_tokens(&self, tokens: &Tokens) -> Result<TextEmbeddings> {
        let mut out = self
            .model
            .run(&[Input::I64(tokens.ids.view().into_dyn())])?
            .into_iter();
        let embeds = into_dim(out.next(), "text_embeds")?;
        let hidden_states = into_dim(out.next(), "last_hidden_state")?;
        Ok(TextEmbeddings {
            embeds,
            hidden_states,
            mask: tokens.mask.clone(),
        })
    }
}

/// Converts a model output to a fixed rank, with a typed error on a rank mismatch.
pub(crate) fn into_dim<D: ndarray::Dimension>(
    array: Option<ndarray::ArrayD<f32>>,
    what: &str,
) -> Result<ndarray::Array<f32, D>> {
    let array = array.ok_or_else(|| Error::Ort {
        context: what.to_string(),
        message: "output missing".into(),
    })?;
    let shape = array.shape().to_vec();
    array.into_dimensionality::<D>().map_err(|_| Error::Shape {
        what: what.to_string(),
        expected: format!("rank {}", D::NDIM.unwrap_or(0)),
        found: shape,
    })
}
