//! Tensors ↔ images: torch's antialiased bicubic resize, diffusers' float → `u8` conversion, and
//! PNG files carrying text metadata, one file each.
//!
//! Both numeric conventions live here and nowhere else (docs/architecture.md, "Invariants"):
//! - the super-resolution input is the low-res image resized with
//!   `F.interpolate(x, size, mode="bicubic", align_corners=False, antialias=True)`
//!   (diffusers 0.42.1, `pipelines/deprecated/unclip/pipeline_unclip.py`, `UnCLIPPipeline.__call__`),
//!   reproduced by [`resize_bicubic_antialias`];
//! - the final image is `x * 0.5 + 0.5`, clamped to [0, 1], then `numpy_to_pil`'s
//!   `(x * 255).round().astype("uint8")` (`diffusers/utils/pil_utils.py`), reproduced by [`to_rgb8`].

mod png;
mod resize;
mod rgb;

pub use self::png::{encode_png, read_png_text, read_png_text_bytes, save_png, write_atomic};
pub use resize::resize_bicubic_antialias;
pub use rgb::{from_rgb8, to_rgb8};
