//! unclip: an inference runtime for unCLIP (DALL·E 2) on ONNX Runtime.
//!
//! Every network runs in ONNX Runtime; Rust owns tokenization, schedulers, classifier-free
//! guidance, noise and image processing. docs/architecture.md has the data flow,
//! the module map and the invariants.

pub mod bundle;
#[cfg(feature = "capi")]
pub mod capi;
pub mod error;
pub mod explore;
pub mod guidance;
pub mod image_io;
pub mod latent;
pub mod noise;
pub mod npy;
pub mod pipeline;
pub mod runtime;
pub mod schedulers;
#[cfg(feature = "server")]
pub mod server;
pub mod stages;
pub mod tensor;
pub mod text;
pub mod verify;
pub mod vision;

pub use bundle::Bundle;
pub use error::{Error, ErrorKind, Result};
pub use noise::{NoiseSource, RngKind};
pub use pipeline::{DecoderCondition, Generation, LoadOptions, Pipeline, TextToImage};
pub use runtime::{Device, Runtime};
