//! Images across the boundary: a host's RGB8 buffer in, and freeing the library-owned images the
//! generate calls hand out (`types::images_into_raw`).

use super::*;

/// Copies a caller's tightly packed RGB8 buffer into an image.
pub(super) unsafe fn rgb_image(
    rgb: *const u8,
    width: u32,
    height: u32,
) -> Result<image::DynamicImage, Error> {
    if rgb.is_null() || width == 0 || height == 0 {
        return Err(invalid("rgb/width/height", "NULL buffer or zero size"));
    }
    let len = (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .filter(|n| *n <= 1 << 30)
        .ok_or_else(|| invalid("width/height", "image too large"))?;
    let bytes = std::slice::from_raw_parts(rgb, len).to_vec();
    image::RgbImage::from_raw(width, height, bytes)
        .map(image::DynamicImage::ImageRgb8)
        .ok_or_else(|| invalid("rgb", "buffer size does not match width × height × 3"))
}

#[no_mangle]
pub unsafe extern "C" fn unclip_image_free(images: *mut unclip_image, count: usize) {
    if !images.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| types::free_images(images, count)));
    }
}
