//! PNG files with text metadata (the reproduction record of `pipeline::Reproduction`), written
//! and read with the `png` crate; files are replaced atomically.

use std::io::Cursor;
use std::path::Path;

use image::RgbImage;
use png::text_metadata::{ITXtChunk, TEXtChunk, ZTXtChunk};

use crate::{Error, Result};

/// Texts longer than this go into compressed chunks (`zTXt`, or compressed `iTXt`): the
/// embeddings and latents of a reproduction record are tens of kilobytes of digits.
const COMPRESS_ABOVE: usize = 1024;

/// Writes `img` as a PNG file with one text chunk per `(keyword, text)` pair, in order, placed
/// right after the header so readers find them without decoding the pixels.
///
/// Text that fits Latin-1 goes into a `tEXt` chunk (`zTXt` when long), anything else (a prompt
/// in Japanese, emoji) into a UTF-8 `iTXt` chunk. Keywords must be 1–79 printable Latin-1
/// characters without leading, trailing or doubled spaces (PNG spec §11.3.4.2); neither keyword
/// nor text may contain NUL. The bytes are deterministic: fixed compression and filter settings,
/// no timestamp.
///
/// # Errors
/// [`Error::InvalidArgument`] for a keyword or text PNG cannot hold, [`Error::Image`] if encoding
/// fails, [`Error::Io`] (with `path`) if the file cannot be written.
pub fn save_png(path: &Path, img: &RgbImage, text: &[(String, String)]) -> Result<()> {
    let file = encode_png(img, text).map_err(|e| match e {
        Error::Image { reason, .. } => Error::Image {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })?;
    write_atomic(path, &file)
}

/// The bytes [`save_png`] writes.
pub fn encode_png(img: &RgbImage, text: &[(String, String)]) -> Result<Vec<u8>> {
    for (keyword, value) in text {
        check_text(keyword, value)?;
    }
    let image_error = |e: png::EncodingError| Error::Image {
        path: "<memory>".into(),
        reason: e.to_string(),
    };
    let mut encoded = Vec::new();
    let mut encoder = png::Encoder::new(&mut encoded, img.width(), img.height());
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Balanced);
    encoder.set_filter(png::Filter::Adaptive);
    let mut writer = encoder.write_header().map_err(image_error)?;
    for (keyword, value) in text {
        let latin1 = value.chars().all(|c| u32::from(c) <= 0xff);
        let long = value.len() > COMPRESS_ABOVE;
        match (latin1, long) {
            (true, false) => writer.write_text_chunk(&TEXtChunk::new(keyword, value)),
            (true, true) => writer.write_text_chunk(&ZTXtChunk::new(keyword, value)),
            (false, _) => {
                let mut chunk = ITXtChunk::new(keyword, value);
                chunk.compressed = long;
                writer.write_text_chunk(&chunk)
            }
        }
        .map_err(image_error)?;
    }
    writer.write_image_data(img.as_raw()).map_err(image_error)?;
    writer.finish().map_err(image_error)?;
    Ok(encoded)
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so an
/// interrupted run never leaves a truncated file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().ok_or_else(|| {
        Error::invalid("output path", format!("{} names no file", path.display()))
    })?;
    let mut temporary = name.to_os_string();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = path.with_file_name(temporary);
    // Errors name the path the caller asked for, not the temporary one.
    std::fs::write(&temporary, bytes).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        Error::io(path, e)
    })?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        Error::io(path, e)
    })
}

/// Reads the text chunks of a PNG file: `tEXt`, then `zTXt`, then `iTXt` (each kind in file
/// order), decompressed.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Image`] if it is not a PNG, is truncated,
/// has a chunk whose CRC does not match, or a text that does not decode.
pub fn read_png_text(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    read_png_text_bytes(&bytes).map_err(|e| match e {
        Error::Image { reason, .. } => Error::Image {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    })
}

/// [`read_png_text`] of PNG bytes in memory (an HTTP response's image).
pub fn read_png_text_bytes(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let image_error = |reason: String| Error::Image {
        path: "<memory>".into(),
        reason,
    };
    // A text chunk whose CRC does not match is an error, not skipped: the record must be whole.
    let mut options = png::DecodeOptions::default();
    options.set_skip_ancillary_crc_failures(false);
    options.set_ignore_text_chunk(false);
    let decoder = png::Decoder::new_with_options(Cursor::new(bytes), options);
    let mut reader = decoder
        .read_info()
        .map_err(|e| image_error(e.to_string()))?;
    // Text after the pixels is read too: run to the end of the file, which also checks every
    // chunk's CRC.
    let mut pixels = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader
        .next_frame(&mut pixels)
        .map_err(|e| image_error(e.to_string()))?;
    reader.finish().map_err(|e| image_error(e.to_string()))?;
    let info = reader.info();
    let mut text = Vec::new();
    for chunk in &info.uncompressed_latin1_text {
        text.push((chunk.keyword.clone(), chunk.text.clone()));
    }
    let decompressed = |keyword: &str, kind: &str, text: Result<String, png::DecodingError>| {
        text.map(|value| (keyword.to_string(), value))
            .map_err(|e| image_error(format!("{kind} {keyword:?}: {e}")))
    };
    for chunk in &info.compressed_latin1_text {
        let mut chunk = chunk.clone();
        let value = chunk.decompress_text().and_then(|()| chunk.get_text());
        text.push(decompressed(&chunk.keyword, "zTXt", value)?);
    }
    for chunk in &info.utf8_text {
        let mut chunk = chunk.clone();
        let value = chunk.decompress_text().and_then(|()| chunk.get_text());
        text.push(decompressed(&chunk.keyword, "iTXt", value)?);
    }
    Ok(text)
}

/// Checks a pair PNG can hold (PNG spec §11.3.4): the `png` crate checks less.
fn check_text(keyword: &str, text: &str) -> Result<()> {
    let invalid = |reason: String| Error::invalid("PNG text metadata", reason);
    let printable = |c: char| matches!(c, ' '..='~' | '\u{a1}'..='\u{ff}');
    if keyword.is_empty() || keyword.chars().count() > 79 || !keyword.chars().all(printable) {
        return Err(invalid(format!(
            "keyword {keyword:?} must be 1-79 printable Latin-1 characters"
        )));
    }
    if keyword.starts_with(' ') || keyword.ends_with(' ') || keyword.contains("  ") {
        return Err(invalid(format!(
            "keyword {keyword:?} has leading, trailing or consecutive spaces"
        )));
    }
    if text.contains('\0') {
        return Err(invalid(format!(
            "the text of {keyword:?} contains a NUL character"
        )));
    }
    Ok(())
}
