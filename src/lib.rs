//! unclip: an inference runtime for unCLIP (DALL·E 2) on ONNX Runtime.
//!
//! Every network runs in ONNX Runtime; Rust owns tokenization, schedulers, classifier-free
//! guidance, noise and image processing. See `DESIGN.md` for the data flow.

pub mod error;
pub mod image_io;
pub mod noise;
pub mod schedulers;

pub use error::{Error, Result};
