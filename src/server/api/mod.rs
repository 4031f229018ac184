//! The OpenAI-shaped endpoints, split by concern: `errors` (the OpenAI error object and the
//! middleware that makes axum's rejections into one), `params` (request bodies, parsing and
//! validation), `images` (generations and variations) and `embeddings` (CLIP embeddings and
//! the model list). This module only re-exports what the router and the crate's users name.

mod embeddings;
mod errors;
mod images;
mod params;

pub use embeddings::{embeddings, image_embeddings, models};
pub use errors::{openai_errors, ApiError};
pub use images::{generations, variations};
pub use params::{parse_variation_body, EmbeddingRequest, ImageParams};
