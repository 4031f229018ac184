//! CLIP image input: decoding image files, preprocessing them, and the image encoder that turns
//! them into CLIP image embeddings; the pixels are the ones diffusers + transformers give on the
//! same file.
//!
//! The Python path this mirrors, step by step (diffusers 0.42.1, transformers 5.24, Pillow 13):
//! 1. `diffusers.utils.load_image(path)` (`diffusers/utils/loading_utils.py`): `PIL.Image.open`,
//!    `ImageOps.exif_transpose`, `convert("RGB")` — [`load_image`] / [`decode_image`];
//! 2. `CLIPImageProcessor` with its Pillow backend (`CLIPImageProcessorPil`,
//!    `transformers/models/clip/image_processing_pil_clip.py`; `PilBackend._preprocess` in
//!    `transformers/image_processing_backends.py`): convert to RGB, resize the shortest edge,
//!    center crop, rescale, normalize — [`clip_preprocess`].
//!
//! transformers 5 switches `CLIPImageProcessor` to a torchvision backend when torchvision is
//! installed; that one resizes differently (up to 0.03 off). The Pillow backend is the reference,
//! and what every diffusers version before transformers 5 used.
//!
//! What is not bit-exact, and why:
//! - JPEG decoding: Pillow uses libjpeg-turbo, `image` uses zune-jpeg; their IDCT and chroma
//!   upsampling differ by a few levels on 4:2:0 photos (pixel values then differ by up to ~0.1
//!   after normalization). PNG, WebP (lossless and lossy: `image-webp` matches libwebp) and
//!   grayscale or block-aligned JPEGs decode to the same pixels.
//! - 16-bit grayscale PNG: Pillow opens it as mode `I;16` and `convert("RGB")` clips every value
//!   above 255 to white (Pillow issues #2574, #3011), which destroys the image. unclip keeps the
//!   high byte instead, which is what Pillow itself does for 16-bit RGB, RGBA and gray+alpha PNGs.
//!
//! Where each step lives: `load.rs` decodes files and bytes (formats, limits, EXIF orientation,
//! typed errors); `rgb.rs` converts to 8-bit RGB as Pillow does; `resize.rs` is Pillow's resize,
//! bit for bit; `clip.rs` is the CLIP preprocessing (resize the shortest edge, center crop,
//! rescale, normalize, batch); `encoder.rs` runs the CLIP image encoder on the result, as
//! `crate::text` does for prompts.

mod clip;
mod encoder;
mod load;
mod resize;
mod rgb;

pub use clip::{clip_preprocess, clip_preprocess_batch, clip_resize_crop, resize_output_size};
pub use encoder::ImageEncoder;
pub use load::{decode_image, load_image, ImageLimits};
pub use resize::{pil_resize, PilFilter};
