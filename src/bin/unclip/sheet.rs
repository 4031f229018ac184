//! Contact sheets and animations: every multi-image result (interpolations, text diffs, PCA
//! probes, guidance sweeps) comes out as one PNG grid with labels, plus the single frames
//! (docs/architecture.md, "Beyond text to image"), and interpolations also as an animated GIF.
//!
//! Labels are drawn with the public-domain 8×8 bitmap font of the `font8x8` crate (ASCII,
//! Latin-1 and Greek, so θ labels work; other characters show as `?`), so no font file is needed at run time.

use std::path::Path;

use font8x8::UnicodeFonts;
use image::codecs::gif::{GifEncoder, Repeat};
use image::imageops::FilterType;
use image::{Delay, Frame, Rgb, RgbImage, RgbaImage};

use unclip::{Error, Result};

const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([20, 20, 20]);
/// Space between cells and around the sheet, in pixels.
const GAP: u32 = 4;

/// How a sheet lays out its cells.
#[derive(Debug, Clone)]
pub struct SheetLayout {
    /// Cells per row.
    pub columns: usize,
    /// Side of a cell in pixels; images are resized (Lanczos-3) to it. `None` keeps their size.
    pub cell: Option<u32>,
    /// Title line above the grid.
    pub title: Option<String>,
    /// A label under each cell (empty strings allowed), in cell order.
    pub captions: Vec<String>,
    /// Labels of the rows (left) and columns (top) of a grid, with axis names, for sweeps.
    pub row_labels: Vec<String>,
    pub column_labels: Vec<String>,
    pub row_axis: Option<String>,
    pub column_axis: Option<String>,
}

impl SheetLayout {
    pub fn new(columns: usize) -> Self {
        SheetLayout {
            columns,
            cell: None,
            title: None,
            captions: Vec::new(),
            row_labels: Vec::new(),
            column_labels: Vec::new(),
            row_axis: None,
            column_axis: None,
        }
    }
}

/// Pixel scale of the 8×8 font for a cell of `cell` pixels: 1 up to 191, 2 up to 383, ….
fn font_scale(cell: u32) -> u32 {
    (cell / 192 + 1).min(4)
}

/// Width in pixels of `text` drawn at `scale`.
fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 8 * scale
}

/// Draws `text` with its top-left corner at (x, y), clipped to the image and to `max_width`
/// (a cut string ends in `..`).
fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32, max_width: u32) {
    let fit = (max_width / (8 * scale)) as usize;
    let chars: Vec<char> = text.chars().collect();
    let shown: Vec<char> = if chars.len() > fit && fit >= 2 {
        chars[..fit - 2]
            .iter()
            .copied()
            .chain("..".chars())
            .collect()
    } else {
        chars.into_iter().take(fit).collect()
    };
    for (i, c) in shown.into_iter().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(c)
            .or_else(|| font8x8::LATIN_FONTS.get(c))
            .or_else(|| font8x8::GREEK_FONTS.get(c))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let left = x + i as u32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (left + col * scale + dx, y + row as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, INK);
                        }
                    }
                }
            }
        }
    }
}

/// Draws `text` rotated 90° counter-clockwise (reading bottom to top), its glyph tops facing
/// left, within a column starting at `x` and centered vertically on `center_y`.
fn draw_text_vertical(img: &mut RgbImage, text: &str, x: u32, center_y: u32, scale: u32) {
    let mut strip = RgbImage::from_pixel(text_width(text, scale), 8 * scale, BACKGROUND);
    let width = strip.width();
    draw_text(&mut strip, text, 0, 0, scale, width);
    let rotated = image::imageops::rotate270(&strip);
    let top = center_y.saturating_sub(rotated.height() / 2);
    image::imageops::overlay(img, &rotated, x as i64, top as i64);
}

/// Lays `images` out in a grid with the labels of `layout`. All images are shown at the same
/// cell size (the first image's, or `layout.cell`).
pub fn contact_sheet(images: &[RgbImage], layout: &SheetLayout) -> Result<RgbImage> {
    let first = images
        .first()
        .ok_or_else(|| Error::invalid("contact sheet", "no images"))?;
    if layout.columns == 0 {
        return Err(Error::invalid("contact sheet", "0 columns"));
    }
    let cell = layout.cell.unwrap_or(first.width().max(first.height()));
    if cell == 0 || cell > 4096 {
        return Err(Error::invalid(
            "contact sheet cell",
            format!("{cell} px: use 1 to 4096"),
        ));
    }
    let columns = layout.columns.min(images.len()) as u32;
    let rows = images.len().div_ceil(layout.columns) as u32;
    let scale = font_scale(cell);
    let line = 8 * scale + GAP;
    let title_h = if layout.title.is_some() {
        line + GAP
    } else {
        0
    };
    let axis_h = if layout.column_axis.is_some() {
        line
    } else {
        0
    };
    let column_labels_h = if layout.column_labels.is_empty() {
        0
    } else {
        line
    };
    let caption_h = if layout.captions.iter().any(|c| !c.is_empty()) {
        line
    } else {
        0
    };
    let row_axis_w = if layout.row_axis.is_some() { line } else { 0 };
    let row_labels_w = layout
        .row_labels
        .iter()
        .map(|l| text_width(l, scale) + GAP)
        .max()
        .unwrap_or(0);
    let left = GAP + row_axis_w + row_labels_w;
    let top = GAP + title_h + axis_h + column_labels_h;
    let width = left + columns * (cell + GAP);
    let height = top + rows * (cell + caption_h + GAP);
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);
    if let Some(title) = &layout.title {
        draw_text(&mut sheet, title, GAP, GAP, scale, width - GAP);
    }
    let grid_w = columns * (cell + GAP);
    if let Some(axis) = &layout.column_axis {
        let x = left + grid_w.saturating_sub(text_width(axis, scale)) / 2;
        draw_text(&mut sheet, axis, x, GAP + title_h, scale, width - x);
    }
    for (c, label) in layout
        .column_labels
        .iter()
        .enumerate()
        .take(columns as usize)
    {
        let x0 = left + c as u32 * (cell + GAP);
        let x = x0 + cell.saturating_sub(text_width(label, scale)) / 2;
        draw_text(&mut sheet, label, x, GAP + title_h + axis_h, scale, cell);
    }
    if let Some(axis) = &layout.row_axis {
        let grid_h = rows * (cell + caption_h + GAP);
        draw_text_vertical(&mut sheet, axis, GAP, top + grid_h / 2, scale);
    }
    for (i, image) in images.iter().enumerate() {
        let (r, c) = ((i / layout.columns) as u32, (i % layout.columns) as u32);
        let x = left + c * (cell + GAP);
        let y = top + r * (cell + caption_h + GAP);
        let resized;
        let shown = if image.width() == cell && image.height() == cell {
            image
        } else {
            resized = image::imageops::resize(image, cell, cell, FilterType::Lanczos3);
            &resized
        };
        image::imageops::overlay(&mut sheet, shown, x as i64, y as i64);
        if let Some(caption) = layout.captions.get(i) {
            let cx = x + cell.saturating_sub(text_width(caption, scale)) / 2;
            draw_text(&mut sheet, caption, cx, y + cell + GAP / 2, scale, cell);
        }
        if c == 0 {
            if let Some(label) = layout.row_labels.get(r as usize) {
                let ly = y + cell.saturating_sub(8 * scale) / 2;
                draw_text(&mut sheet, label, GAP + row_axis_w, ly, scale, row_labels_w);
            }
        }
    }
    Ok(sheet)
}

/// Writes `frames` as a looping animated GIF, `delay_ms` per frame, atomically.
pub fn save_gif(path: &Path, frames: &[RgbImage], delay_ms: u32) -> Result<()> {
    if frames.is_empty() {
        return Err(Error::invalid("animation", "no frames"));
    }
    let image_error = |reason: String| Error::Image {
        path: path.display().to_string(),
        reason,
    };
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(|e| image_error(e.to_string()))?;
        let delay = Delay::from_numer_denom_ms(delay_ms, 1);
        for frame in frames {
            let rgba: RgbaImage = image::DynamicImage::ImageRgb8(frame.clone()).into_rgba8();
            encoder
                .encode_frame(Frame::from_parts(rgba, 0, 0, delay))
                .map_err(|e| image_error(e.to_string()))?;
        }
    }
    unclip::image_io::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(v: u8, side: u32) -> RgbImage {
        RgbImage::from_pixel(side, side, Rgb([v, 0, 0]))
    }

    #[test]
    fn grid_geometry_and_cells() {
        let images: Vec<RgbImage> = (0..5).map(|i| solid(40 * i as u8, 16)).collect();
        let mut layout = SheetLayout::new(3);
        layout.captions = (0..5).map(|i| format!("t={i}")).collect();
        let sheet = contact_sheet(&images, &layout).unwrap();
        // 3 columns, 2 rows, 8-px captions: width 4 + 3·20, height 4 + 2·(16 + 12 + 4).
        assert_eq!(sheet.dimensions(), (64, 68));
        // Cell 4 (row 1, column 1) holds image 4.
        assert_eq!(sheet.get_pixel(4 + 20 + 5, 4 + 32 + 5), &Rgb([160, 0, 0]));
        // The caption under cell 0 has ink.
        let ink = (4..20).any(|x| (4 + 16 + 2..4 + 16 + 10).any(|y| sheet.get_pixel(x, y) == &INK));
        assert!(ink);
    }

    #[test]
    fn labeled_axes_and_resizing() {
        let images: Vec<RgbImage> = (0..4).map(|i| solid(60 * i as u8, 64)).collect();
        let mut layout = SheetLayout::new(2);
        layout.cell = Some(32);
        layout.title = Some("sweep".into());
        layout.row_labels = vec!["p=1".into(), "p=4".into()];
        layout.column_labels = vec!["d=1".into(), "d=8".into()];
        layout.row_axis = Some("prior".into());
        layout.column_axis = Some("decoder".into());
        let sheet = contact_sheet(&images, &layout).unwrap();
        // left = 4 + 12 (axis) + 28 (label "p=1" 24 + 4), top = 4 + 16 (title) + 12 + 12.
        let (left, top) = (44, 44);
        assert_eq!(sheet.width(), left + 2 * 36);
        assert_eq!(sheet.height(), top + 2 * 36);
        assert_eq!(
            sheet.get_pixel(left + 36 + 16, top + 36 + 16),
            &Rgb([180, 0, 0])
        );
        assert!(contact_sheet(&[], &layout).is_err());
        assert!(contact_sheet(&images, &SheetLayout::new(0)).is_err());
    }

    #[test]
    fn gif_round_trip() {
        let dir = std::env::temp_dir().join(format!("unclip-gif-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.gif");
        save_gif(&path, &[solid(255, 8), solid(0, 8)], 100).unwrap();
        let decoder = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
            std::fs::File::open(&path).unwrap(),
        ))
        .unwrap();
        use image::AnimationDecoder;
        let frames = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].buffer().get_pixel(3, 3)[0], 255);
        assert_eq!(frames[1].buffer().get_pixel(3, 3)[0], 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
