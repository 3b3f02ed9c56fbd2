//! Decoding any supported image (TIFF, PNG, JPEG, BMP; gray 8/16-bit,
//! palette, RGB, RGBA) into a gray `f32` picture in [0, 1], cropping and
//! resizing it. Free of libtorch, so it can be fuzzed on its own.

use std::io::Cursor;
use std::path::Path;

use image::{imageops, ImageBuffer, ImageReader, Luma};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest accepted width or height, checked from the header before any
/// pixel buffer is allocated.
pub const MAX_SIDE: u32 = 16384;
/// Largest accepted decoded size in bytes.
pub const MAX_ALLOC: u64 = 1 << 30;
/// Smallest accepted width or height: smaller images carry no face.
pub const MIN_SIDE: u32 = 8;

/// A gray picture, row-major, values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Gray {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<f32>,
}

/// Rec. 601 luma, as PIL's "L" mode (what a Keras user's pipeline computes).
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Decodes a file into gray.
pub fn load_gray(path: &Path) -> Result<Gray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_gray(&bytes).map_err(|problem| Error::image(path, problem))
}

/// Decodes bytes into gray; the error is the problem alone (no file name).
pub fn decode_gray(bytes: &[u8]) -> std::result::Result<Gray, String> {
    if bytes.is_empty() {
        return Err("the file is empty (0 bytes)".into());
    }
    let is_tiff = bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*");
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("not a recognised image format (expected TIFF, PNG, JPEG or BMP)".into());
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let gray = match reader.decode() {
        Ok(img) => {
            let (w, h) = (img.width(), img.height());
            let rgb = img.to_rgb32f();
            let pixels = rgb.pixels().map(|p| luma(p[0], p[1], p[2]).clamp(0.0, 1.0)).collect();
            Gray { width: w, height: h, pixels }
        }
        Err(e) if is_tiff && is_palette_error(&e) => decode_palette_tiff(bytes)?,
        Err(image::ImageError::Limits(_)) => {
            return Err(format!("image is larger than the limit of {MAX_SIDE}×{MAX_SIDE} pixels / {} MiB decoded", MAX_ALLOC >> 20))
        }
        Err(e) => return Err(describe(e)),
    };
    if gray.width < MIN_SIDE || gray.height < MIN_SIDE {
        return Err(format!("image is {}×{} pixels, smaller than the minimum {MIN_SIDE}×{MIN_SIDE}", gray.width, gray.height));
    }
    Ok(gray)
}

fn is_palette_error(e: &image::ImageError) -> bool {
    let s = e.to_string();
    s.contains("Palette") || s.contains("palette")
}

fn describe(e: image::ImageError) -> String {
    match e {
        image::ImageError::Decoding(d) => format!("corrupt or truncated: {d}"),
        image::ImageError::Unsupported(u) => format!("unsupported: {u}"),
        // Decoders read from memory: an I/O error means the data ran out.
        image::ImageError::IoError(io) => format!("corrupt or truncated: {io}"),
        other => other.to_string(),
    }
}

/// Palette ("P" mode) TIFFs, which `image` refuses: tags through the `tiff`
/// crate, uncompressed 8- or 4-bit indices mapped through the colour map.
fn decode_palette_tiff(bytes: &[u8]) -> std::result::Result<Gray, String> {
    use tiff::decoder::Decoder;
    use tiff::tags::Tag;
    let err = |e: tiff::TiffError| format!("palette TIFF: {e}");
    let mut d = Decoder::new(Cursor::new(bytes)).map_err(err)?;
    let (w, h) = d.dimensions().map_err(err)?;
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!("image is larger than the limit of {MAX_SIDE}×{MAX_SIDE} pixels"));
    }
    let bits = d.get_tag_u32(Tag::BitsPerSample).map_err(err)?;
    if bits != 8 && bits != 4 {
        return Err(format!("palette TIFF with {bits} bits per pixel is not supported (8 or 4)"));
    }
    let compression = d.find_tag(Tag::Compression).ok().flatten().and_then(|v| v.into_u32().ok()).unwrap_or(1);
    if compression != 1 {
        return Err(format!("compressed palette TIFF (compression {compression}) is not supported"));
    }
    let cmap = d.get_tag_u16_vec(Tag::ColorMap).map_err(err)?;
    let n = 1usize << bits;
    if cmap.len() != 3 * n {
        return Err(format!("palette TIFF colour map has {} entries, expected {}", cmap.len(), 3 * n));
    }
    let offsets = d.get_tag_u64_vec(Tag::StripOffsets).map_err(err)?;
    let counts = d.get_tag_u64_vec(Tag::StripByteCounts).map_err(err)?;
    let mut data = Vec::with_capacity((w as usize * h as usize * bits as usize).div_ceil(8));
    for (&o, &c) in offsets.iter().zip(&counts) {
        let (o, c) = (o as usize, c as usize);
        let strip = bytes.get(o..o.saturating_add(c)).ok_or("palette TIFF is truncated (strip past the end of the file)")?;
        data.extend_from_slice(strip);
    }
    let row_bytes = (w as usize * bits as usize).div_ceil(8);
    if data.len() < row_bytes * h as usize {
        return Err("palette TIFF is truncated (fewer pixels than its size)".into());
    }
    let lut: Vec<f32> = (0..n).map(|i| luma(cmap[i] as f32 / 65535.0, cmap[n + i] as f32 / 65535.0, cmap[2 * n + i] as f32 / 65535.0)).collect();
    let mut pixels = Vec::with_capacity(w as usize * h as usize);
    for y in 0..h as usize {
        let row = &data[y * row_bytes..(y + 1) * row_bytes];
        for x in 0..w as usize {
            let idx = if bits == 8 { row[x] as usize } else { ((row[x / 2] >> (4 * (1 - x % 2))) & 0xF) as usize };
            pixels.push(lut[idx]);
        }
    }
    Ok(Gray { width: w, height: h, pixels })
}

/// Where to cut the picture before resizing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Crop {
    None,
    /// A box in source pixels.
    Box {
        x: u32,
        y: u32,
        w: u32,
        h: u32,
    },
    /// A centred box of this fraction of each side.
    Center {
        fraction: f32,
    },
}

impl Crop {
    /// `none`, `x,y,w,h` (source pixels) or `center:F` / a bare fraction `F`.
    pub fn parse(s: &str) -> Result<Crop> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(Crop::None);
        }
        let frac = s.strip_prefix("center:").unwrap_or(s);
        if !frac.contains(',') {
            let f: f32 = frac.parse().map_err(|_| Error::config(format!("--crop `{s}`: expected none, x,y,w,h or center:F")))?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::config(format!("--crop fraction must be in (0, 1], got {f}")));
            }
            return Ok(Crop::Center { fraction: f });
        }
        let v: Vec<u32> = s
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::config(format!("--crop `{s}`: expected x,y,w,h in pixels")))?;
        match v[..] {
            [x, y, w, h] if w > 0 && h > 0 => Ok(Crop::Box { x, y, w, h }),
            _ => Err(Error::config(format!("--crop `{s}`: expected x,y,w,h with w, h > 0"))),
        }
    }
}

/// Crops (then centre-crops to a square so faces keep their aspect) and
/// resizes to `size`×`size` with a triangle (bilinear) filter.
pub fn prepare(img: &Gray, crop: &Crop, size: u32) -> std::result::Result<Vec<f32>, String> {
    let (mut x0, mut y0, mut w, mut h) = (0u32, 0u32, img.width, img.height);
    match *crop {
        Crop::None => {}
        Crop::Box { x, y, w: bw, h: bh } => {
            if x.saturating_add(bw) > img.width || y.saturating_add(bh) > img.height {
                return Err(format!("crop box {x},{y},{bw},{bh} does not fit the {}×{} image", img.width, img.height));
            }
            (x0, y0, w, h) = (x, y, bw, bh);
        }
        Crop::Center { fraction } => {
            let (cw, ch) = (((w as f32) * fraction).round().max(1.0) as u32, ((h as f32) * fraction).round().max(1.0) as u32);
            (x0, y0, w, h) = ((w - cw) / 2, (h - ch) / 2, cw, ch);
        }
    }
    let side = w.min(h);
    x0 += (w - side) / 2;
    y0 += (h - side) / 2;
    let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(img.width, img.height, img.pixels.clone()).ok_or("pixel buffer does not match the image size")?;
    let cut = imageops::crop_imm(&buf, x0, y0, side, side).to_image();
    let out = if side == size { cut } else { imageops::resize(&cut, size, size, imageops::FilterType::Triangle) };
    Ok(out.into_raw())
}
