//! Decoding any supported image (TIFF, PNG, JPEG, WebP, BMP; gray 8/16-bit,
//! gray + alpha, palette, RGB, RGBA) into a gray `f32` picture in [0, 1], cropping and
//! resizing it. Free of libtorch, so it can be fuzzed on its own.

use std::io::Cursor;
use std::path::Path;

use std::sync::{Condvar, Mutex};

use image::metadata::Orientation;
use image::{imageops, DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Luma};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Setting};

/// Largest accepted width or height, checked from the header before any
/// pixel buffer is allocated.
pub const MAX_SIDE: u32 = 16384;
/// Largest accepted decoded size in bytes; also the budget shared by all
/// threads that decode at once (see [`DecodeBudget`]).
pub(crate) const MAX_ALLOC: u64 = 1 << 30;
/// Smallest accepted width or height: smaller images carry no face.
pub(crate) const MIN_SIDE: u32 = 8;
/// Largest side kept after decoding: larger pictures are box-averaged down
/// by a whole factor while they are converted to gray, so no full-size
/// float copy exists (the network sees at most a few hundred pixels).
pub(crate) const WORK_SIDE: u32 = 4096;

/// A gray picture, row-major, values in [0, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Gray {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<f32>,
    /// Source pixels per stored pixel along each side (1 unless the source
    /// was larger than `WORK_SIDE`); crop boxes are in source pixels.
    pub scale: u32,
}

impl Gray {
    /// Width and height in source pixels (crop boxes are in these).
    pub fn source_size(&self) -> (u32, u32) {
        let k = self.scale.max(1);
        (self.width.saturating_mul(k), self.height.saturating_mul(k))
    }
}

/// Rec. 601 luma, as PIL's "L" mode (what a Keras user's pipeline computes).
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// Decodes a file into gray.
pub fn load_gray(path: &Path) -> Result<Gray> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::image(path, "not a regular file".to_string()));
    }
    if meta.len() > MAX_ALLOC {
        return Err(Error::image(path, format!("the file is {} MiB, larger than the {} MiB limit", meta.len() >> 20, MAX_ALLOC >> 20)));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_gray(&bytes).map_err(|e| e.at(path))
}

/// Decodes bytes into gray; the error is a `Picture` problem (no file name).
pub fn decode_gray(bytes: &[u8]) -> Result<Gray> {
    decode(bytes).map_err(Error::Picture)
}

fn decode(bytes: &[u8]) -> std::result::Result<Gray, String> {
    if bytes.is_empty() {
        return Err("the file is empty (0 bytes)".into());
    }
    if let Some(kind) = other_picture_kind(bytes) {
        return Err(format!("a {kind} picture: {UNREAD}"));
    }
    let is_tiff = bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*");
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    match reader.format() {
        None => {
            return Err(match archive_kind(bytes) {
                Some(kind) => format!("a {kind} archive, not a picture: unpack it and give the photos or their folder"),
                None => "not a recognised image format (expected TIFF, PNG, JPEG, WebP, BMP or PGM)".into(),
            })
        }
        Some(ImageFormat::Jpeg) => super::jpeg::check_complete(bytes)?,
        Some(_) => {}
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    // The decoder's buffer lives until the gray copy is made: the budget is
    // held over both.
    let mut held = None;
    // WebP's decoder works in buffers beside the one it returns (a lossless
    // picture without alpha: an RGBA copy of it; an animation: its canvas and
    // frame), up to three times that one's size: counted, so the bound holds.
    let working = if reader.format() == Some(ImageFormat::WebP) { 3 } else { 1 };
    let mut size = None;
    let decoded = reader.into_decoder().and_then(|mut d| {
        let need = d.total_bytes();
        size = Some(d.dimensions());
        if need.saturating_mul(working) > MAX_ALLOC {
            return Err(image::ImageError::Limits(image::error::LimitError::from_kind(image::error::LimitErrorKind::InsufficientMemory)));
        }
        // A phone photo's pixels are stored as the sensor saw them and its EXIF
        // (JPEG, TIFF) says how to turn them upright: a face on its side is no
        // face to the detector or the network. Turning it may copy the picture.
        let orientation = d.orientation().unwrap_or(Orientation::NoTransforms);
        let copies = if orientation == Orientation::NoTransforms { working } else { working + 1 };
        held = Some(DECODE_BUDGET.acquire(copies * need));
        let mut img = DynamicImage::from_decoder(d)?;
        img.apply_orientation(orientation);
        Ok(img)
    });
    let gray = match decoded {
        Ok(img) => to_gray(&img),
        Err(e) if is_tiff && is_palette_error(&e) => decode_palette_tiff(bytes),
        Err(e @ image::ImageError::Unsupported(_)) if is_tiff => decode_gray_extra_tiff(bytes).unwrap_or_else(|| Err(describe(e))),
        Err(image::ImageError::Limits(_)) if working > 1 && size.is_some_and(|(w, h)| w <= MAX_SIDE && h <= MAX_SIDE) => {
            let (w, h) = size.unwrap_or_default();
            Err(format!("a {w}×{h} WebP needs more than the {} MiB limit to decode (its decoder holds up to 3 copies of the picture): save it smaller, or as PNG or JPEG", MAX_ALLOC >> 20))
        }
        Err(image::ImageError::Limits(_)) => Err(format!("image is larger than the limit of {MAX_SIDE}×{MAX_SIDE} pixels / {} MiB decoded", MAX_ALLOC >> 20)),
        Err(e) => Err(describe(e)),
    };
    drop(held);
    gray
}

/// The archive format that a file's first bytes (up to 512) show, if any:
/// face sets such as JAFFE come as one, and a user may hand it over whole.
pub(crate) fn archive_kind(head: &[u8]) -> Option<&'static str> {
    const MAGIC: [(&[u8], &str); 6] = [
        (b"PK\x03\x04", "zip"),
        (b"\x1f\x8b", "gzip"),
        (b"\xfd7zXZ\0", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
        (b"Rar!\x1a\x07", "RAR"),
    ];
    // bzip2: `BZh`, the block size 1–9, then the first block's magic (π's digits).
    let bzip2 = head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) && head.get(4..10) == Some(b"1AY&SY");
    MAGIC
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, k)| *k)
        .or_else(|| bzip2.then_some("bzip2"))
        .or_else(|| (head.get(257..262) == Some(b"ustar")).then_some("tar"))
}

/// The kind of a picture in a format vggft does not decode, by its first
/// bytes (`image` names none of them, or AVIF as unsupported): HEIC (an
/// iPhone's default) and AVIF are ISO media files named by their `ftyp`
/// brand; JPEG XL and JPEG 2000 have signatures of their own.
pub(crate) fn other_picture_kind(head: &[u8]) -> Option<&'static str> {
    if head.get(4..8) == Some(b"ftyp") {
        return match head.get(8..12)? {
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => Some("HEIC"),
            b"avif" | b"avis" => Some("AVIF"),
            _ => None,
        };
    }
    if head.starts_with(b"\xff\x0a") || head.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n") {
        return Some("JPEG XL");
    }
    (head.starts_with(b"\0\0\0\x0cjP  \r\n\x87\n") || head.starts_with(b"\xff\x4f\xff\x51")).then_some("JPEG 2000")
}

/// Luma of a decoded picture, a row at a time (no full-size float copy).
fn to_gray(img: &DynamicImage) -> std::result::Result<Gray, String> {
    shrink(img.width(), img.height(), |y, out| {
        let row = img.crop_imm(0, y, img.width(), 1).to_rgb32f();
        out.extend(row.pixels().map(|p| luma(p[0], p[1], p[2]).clamp(0.0, 1.0)));
    })
}

/// Builds a [`Gray`] from rows of luma; a picture above [`WORK_SIDE`] is
/// box-averaged by a whole factor on the way, so only the decoder's own
/// buffer is ever full size. `row(y, out)` appends row `y`'s values to `out`.
fn shrink(w: u32, h: u32, mut row: impl FnMut(u32, &mut Vec<f32>)) -> std::result::Result<Gray, String> {
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(format!("image is {w}×{h} pixels, smaller than the minimum {MIN_SIDE}×{MIN_SIDE}"));
    }
    let k = w.max(h).div_ceil(WORK_SIDE).max(1);
    let (ow, oh) = (w.div_ceil(k), h.div_ceil(k));
    let mut sums = vec![0f32; ow as usize];
    let mut line = Vec::with_capacity(w as usize);
    let mut pixels = Vec::with_capacity(ow as usize * oh as usize);
    for oy in 0..oh {
        let rows = k.min(h - oy * k);
        sums.iter_mut().for_each(|s| *s = 0.0);
        for y in oy * k..oy * k + rows {
            line.clear();
            row(y, &mut line);
            for (x, v) in line.iter().enumerate() {
                sums[x / k as usize] += v;
            }
        }
        for (ox, s) in sums.iter().enumerate() {
            let cols = k.min(w - ox as u32 * k);
            pixels.push(s / (cols * rows) as f32);
        }
    }
    Ok(Gray { width: ow, height: oh, pixels, scale: k })
}

/// Bytes that decoders running at the same time may hold together, so that
/// training's parallel decoding of large files stays within `MAX_ALLOC`:
/// a decode waits until its buffer fits (one alone always proceeds).
pub struct DecodeBudget {
    used: Mutex<u64>,
    freed: Condvar,
}

static DECODE_BUDGET: DecodeBudget = DecodeBudget { used: Mutex::new(0), freed: Condvar::new() };

/// A share of the budget, returned on drop.
pub struct Held<'a>(&'a DecodeBudget, u64);

impl DecodeBudget {
    fn acquire(&self, bytes: u64) -> Held<'_> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 && *used + bytes > MAX_ALLOC {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += bytes;
        Held(self, bytes)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut used = self.0.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= self.1;
        self.0.freed.notify_all();
    }
}

fn is_palette_error(e: &image::ImageError) -> bool {
    let s = e.to_string();
    s.contains("Palette") || s.contains("palette")
}

/// Why a picture in a format vggft does not decode is refused or left out.
pub const UNREAD: &str = "a picture format vggft does not read (it reads TIFF, PNG, JPEG, WebP, BMP and PGM): convert it to PNG or JPEG";

fn describe(e: image::ImageError) -> String {
    use image::error::UnsupportedErrorKind;
    match e {
        image::ImageError::Decoding(d) => format!("corrupt or truncated: {d}"),
        // A GIF or HEIC given by name: said as a folder's left-out pictures are.
        image::ImageError::Unsupported(u) if matches!(u.kind(), UnsupportedErrorKind::Format(_)) => UNREAD.into(),
        // Floating-point or 32-bit samples (a TIFF from ImageJ or MATLAB): what to save instead.
        image::ImageError::Unsupported(u) => {
            format!("unsupported samples ({u}): vggft reads 8- and 16-bit gray, gray + alpha, palette, RGB and RGBA pictures; save it as one of those")
        }
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
    shrink(w, h, |y, out| {
        let row = &data[y as usize * row_bytes..(y as usize + 1) * row_bytes];
        out.extend((0..w as usize).map(|x| {
            let idx = if bits == 8 { row[x] as usize } else { ((row[x / 2] >> (4 * (1 - x % 2))) & 0xF) as usize };
            lut[idx]
        }));
    })
}

/// Gray TIFFs with extra samples (gray + alpha, as GIMP and PIL's `LA`
/// write them), which `image` refuses since `tiff` calls them multiband:
/// the first sample is the gray, the others (alpha, masks) are dropped as
/// a PNG's alpha is. `None` where the file is not such a TIFF, so the
/// caller keeps `image`'s own error.
fn decode_gray_extra_tiff(bytes: &[u8]) -> Option<std::result::Result<Gray, String>> {
    use tiff::decoder::{Decoder, DecodingResult};
    use tiff::tags::Tag;
    let mut d = Decoder::new(Cursor::new(bytes)).ok()?;
    let tiff::ColorType::Multiband { bit_depth: bits @ (8 | 16), num_samples } = d.colortype().ok()? else {
        return None;
    };
    // 1 = BlackIsZero; 0 = WhiteIsZero, which `tiff` refuses for multiband:
    // read as BlackIsZero (the tag rewritten in a copy) and inverted here.
    let photometric = d.get_tag_u32(Tag::PhotometricInterpretation).ok()?;
    let unsigned = d.find_tag_unsigned_vec::<u16>(Tag::SampleFormat).ok()?.is_none_or(|f| f.iter().all(|&f| f == 1));
    if photometric > 1 || !unsigned {
        return None;
    }
    let white_is_zero = photometric == 0;
    let patched;
    if white_is_zero {
        patched = black_is_zero(bytes)?;
        d = Decoder::new(Cursor::new(&patched[..])).ok()?;
    }
    let err = |e: tiff::TiffError| format!("gray TIFF with {num_samples} samples a pixel: {e}");
    let decode = |d: &mut Decoder<Cursor<&[u8]>>| -> std::result::Result<Gray, String> {
        let (w, h) = d.dimensions().map_err(err)?;
        if w > MAX_SIDE || h > MAX_SIDE {
            return Err(format!("image is larger than the limit of {MAX_SIDE}×{MAX_SIDE} pixels"));
        }
        let need = w as u64 * h as u64 * num_samples as u64 * (bits as u64 / 8);
        if need > MAX_ALLOC {
            return Err(format!("image is larger than the limit of {MAX_SIDE}×{MAX_SIDE} pixels / {} MiB decoded", MAX_ALLOC >> 20));
        }
        let _held = DECODE_BUDGET.acquire(need);
        let data = d.read_image().map_err(err)?;
        // Chunky files give every sample of a pixel in turn, planar ones the
        // first plane (the gray) alone.
        let (len, sample): (usize, Box<dyn Fn(usize) -> f32 + '_>) = match &data {
            DecodingResult::U8(v) => (v.len(), Box::new(|i| v[i] as f32 / 255.0)),
            DecodingResult::U16(v) => (v.len(), Box::new(|i| v[i] as f32 / 65535.0)),
            _ => return Err(format!("gray TIFF with {num_samples} samples a pixel: unexpected sample type")),
        };
        let stride = len / (w as usize * h as usize).max(1);
        if stride == 0 {
            return Err("corrupt or truncated: fewer pixels than its size".into());
        }
        shrink(w, h, |y, out| {
            let row = y as usize * w as usize * stride;
            out.extend((0..w as usize).map(|x| sample(row + x * stride)).map(|v| if white_is_zero { 1.0 - v } else { v }));
        })
    };
    Some(decode(&mut d))
}

/// A copy of a classic TIFF whose first image's PhotometricInterpretation
/// (tag 262, one SHORT) is set to BlackIsZero; none where the file has no
/// such entry.
fn black_is_zero(bytes: &[u8]) -> Option<Vec<u8>> {
    let big = match bytes.get(..4)? {
        b"II*\0" => false,
        b"MM\0*" => true,
        _ => return None,
    };
    let u16at = |i: usize| bytes.get(i..i + 2).map(|b| if big { u16::from_be_bytes([b[0], b[1]]) } else { u16::from_le_bytes([b[0], b[1]]) });
    let u32at =
        |i: usize| bytes.get(i..i + 4).map(|b| if big { u32::from_be_bytes([b[0], b[1], b[2], b[3]]) } else { u32::from_le_bytes([b[0], b[1], b[2], b[3]]) });
    let ifd = u32at(4)? as usize;
    let entry = (0..u16at(ifd)? as usize).map(|k| ifd + 2 + 12 * k).find(|&e| u16at(e) == Some(262))?;
    // Type SHORT (3), count 1: the value sits in the entry's first two value bytes.
    if u16at(entry + 2)? != 3 || u32at(entry + 4)? != 1 {
        return None;
    }
    let mut out = bytes.to_vec();
    let one = if big { 1u16.to_be_bytes() } else { 1u16.to_le_bytes() };
    out[entry + 8..entry + 10].copy_from_slice(&one);
    Some(out)
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
            let f: f32 = frac.parse().map_err(|_| Error::invalid(Setting::Crop, format!("`{s}`: expected none, x,y,w,h or center:F")))?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(Error::invalid(Setting::Crop, format!("fraction must be in (0, 1], got {f}")));
            }
            return Ok(Crop::Center { fraction: f });
        }
        let v: Vec<u32> = s.split(',').map(|p| p.trim().parse::<u32>()).collect::<std::result::Result<_, _>>().map_err(|_| {
            Error::invalid(Setting::Crop, format!("`{s}`: expected x,y,w,h, four whole numbers of source pixels from 0 (x,y: the top-left corner)"))
        })?;
        match v[..] {
            [x, y, w, h] if w >= MIN_SIDE && h >= MIN_SIDE => Ok(Crop::Box { x, y, w, h }),
            [_, _, w, h] if w > 0 && h > 0 => Err(Error::invalid(
                Setting::Crop,
                format!("`{s}`: a {w}×{h} box is smaller than {MIN_SIDE}×{MIN_SIDE} pixels, the smallest picture vggft reads (the network would see a few pixels blown up)"),
            )),
            _ => Err(Error::invalid(Setting::Crop, format!("`{s}`: expected x,y,w,h with w, h > 0"))),
        }
    }
}

/// Crops (then centre-crops to a square so faces keep their aspect) and
/// resizes to `size`×`size` with a triangle (bilinear) filter.
pub fn prepare(img: &Gray, crop: &Crop, size: u32) -> Result<Vec<f32>> {
    let (mut x0, mut y0, mut w, mut h) = (0u32, 0u32, img.width, img.height);
    match *crop {
        Crop::None => {}
        Crop::Box { x, y, w: bw, h: bh } => {
            let k = img.scale.max(1);
            let (sw, sh) = img.source_size();
            if x.saturating_add(bw) > sw || y.saturating_add(bh) > sh {
                return Err(Error::Framing(format!("the --crop box {x},{y},{bw},{bh} (x,y,width,height) does not fit inside this {sw}×{sh} image")));
            }
            // Source pixels → stored pixels (a no-op unless the picture was shrunk).
            let (sx, sy) = (x / k, y / k);
            (x0, y0, w, h) = (sx, sy, bw.div_ceil(k).min(img.width - sx).max(1), bh.div_ceil(k).min(img.height - sy).max(1));
        }
        Crop::Center { fraction } => {
            let (cw, ch) = (((w as f32) * fraction).round().max(1.0) as u32, ((h as f32) * fraction).round().max(1.0) as u32);
            let (sw, sh) = img.source_size();
            let k = img.scale.max(1);
            if cw * k < MIN_SIDE.min(sw) || ch * k < MIN_SIDE.min(sh) {
                return Err(Error::Framing(format!(
                    "--crop center:{fraction} leaves {}×{} pixels of this {sw}×{sh} image, fewer than the {MIN_SIDE}×{MIN_SIDE} of the smallest picture vggft reads",
                    cw * k,
                    ch * k
                )));
            }
            (x0, y0, w, h) = ((w - cw) / 2, (h - ch) / 2, cw, ch);
        }
    }
    let side = w.min(h);
    x0 += (w - side) / 2;
    y0 += (h - side) / 2;
    let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(img.width, img.height, img.pixels.clone()).ok_or_else(|| Error::internal("pixel buffer does not match the image size"))?;
    let cut = imageops::crop_imm(&buf, x0, y0, side, side).to_image();
    let out = if side == size { cut } else { imageops::resize(&cut, size, size, imageops::FilterType::Triangle) };
    Ok(out.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
        out
    }

    /// Pictures vggft cannot read say what to do: floating-point or 32-bit
    /// integer samples (a TIFF from ImageJ or MATLAB) what to save instead,
    /// a format without a decoder here (GIF) to convert it.
    #[test]
    fn unreadable_samples_and_formats_say_what_to_save_instead() {
        use tiff::encoder::{colortype, TiffEncoder};
        let mut f32_tiff = Cursor::new(Vec::new());
        TiffEncoder::new(&mut f32_tiff).unwrap().write_image::<colortype::Gray32Float>(4, 4, &[0.5f32; 16]).unwrap();
        let mut i32_tiff = Cursor::new(Vec::new());
        TiffEncoder::new(&mut i32_tiff).unwrap().write_image::<colortype::Gray32>(4, 4, &[7u32; 16]).unwrap();
        for bytes in [f32_tiff.into_inner(), i32_tiff.into_inner()] {
            let e = decode_gray(&bytes).unwrap_err().to_string();
            assert!(e.contains("unsupported samples") && e.contains("8- and 16-bit") && e.contains("save it as"), "{e}");
        }
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;";
        let e = decode_gray(gif).unwrap_err().to_string();
        assert!(e.contains(UNREAD), "{e}");
        let e = decode_gray(b"PK\x03\x04\x14\0\0\0\x08\0rest of a zip").unwrap_err().to_string();
        assert!(e.contains("a zip archive, not a picture: unpack it"), "{e}");
        assert_eq!(archive_kind(b"BZh91AY&SY\x12\x34"), Some("bzip2"));
        assert_eq!(archive_kind(b"BZh_notes.png\n"), None);
    }

    #[test]
    fn pictures_in_formats_not_read_are_named_by_their_first_bytes() {
        // An iPhone's HEIC, a MIAF still, AVIF, JPEG XL (bare and boxed), JPEG 2000 (boxed and bare).
        for (head, kind) in [
            (&b"\0\0\0\x18ftypheic\0\0\0\0mif1heic"[..], "HEIC"),
            (b"\0\0\0\x1cftypmif1\0\0\0\0mif1miaf", "HEIC"),
            (b"\0\0\0\x20ftypavif\0\0\0\0avifmif1", "AVIF"),
            (b"\xff\x0a\xfa\x7f", "JPEG XL"),
            (b"\0\0\0\x0cJXL \r\n\x87\n\0\0", "JPEG XL"),
            (b"\0\0\0\x0cjP  \r\n\x87\n\0\0", "JPEG 2000"),
            (b"\xff\x4f\xff\x51\0\x2f", "JPEG 2000"),
        ] {
            assert_eq!(other_picture_kind(head), Some(kind));
            let e = decode_gray(head).map(|_| ()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("a {kind} picture: a picture format vggft does not read")) && e.ends_with("convert it to PNG or JPEG"), "{e}");
        }
        // An MP4 is ISO media too, and a JPEG starts with 0xFF: neither is taken for one of them.
        assert_eq!(other_picture_kind(b"\0\0\0\x18ftypisom\0\0\x02\0"), None);
        assert_eq!(other_picture_kind(b"\xff\xd8\xff\xe0"), None);
    }

    /// Gray TIFFs with an alpha sample (GIMP's and PIL's `LA`), 8- and
    /// 16-bit, plain and LZW, BlackIsZero and WhiteIsZero: read as the gray
    /// alone, as a PNG with alpha is.
    #[test]
    fn gray_tiffs_with_alpha_read_as_their_gray() {
        use tiff::encoder::{colortype, Compression, TiffEncoder};
        use tiff::tags::ExtraSamples;
        let (w, h) = (12u32, 9u32);
        let gray8: Vec<u8> = (0..w * h).map(|i| (i * 37 % 251) as u8).collect();
        let alpha = |i: usize| if i.is_multiple_of(3) { 0 } else { 200 };
        let expected = decode_gray(&png(DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, gray8.clone()).unwrap()))).unwrap();
        let with_alpha8: Vec<u8> = gray8.iter().enumerate().flat_map(|(i, &g)| [g, alpha(i)]).collect();
        let with_alpha16: Vec<u16> = gray8.iter().enumerate().flat_map(|(i, &g)| [g as u16 * 257, alpha(i) as u16 * 257]).collect();
        let mut files = Vec::new();
        for lzw in [false, true] {
            let mut f = Cursor::new(Vec::new());
            let mut enc = TiffEncoder::new(&mut f).unwrap().with_compression(if lzw { Compression::Lzw } else { Compression::Uncompressed });
            let mut img = enc.new_image::<colortype::Gray8>(w, h).unwrap();
            img.extra_samples(&[ExtraSamples::UnassociatedAlpha]).unwrap();
            img.write_data(&with_alpha8).unwrap();
            files.push(f.into_inner());
        }
        let mut f = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut f).unwrap();
        let mut img = enc.new_image::<colortype::Gray16>(w, h).unwrap();
        img.extra_samples(&[ExtraSamples::UnassociatedAlpha]).unwrap();
        img.write_data(&with_alpha16).unwrap();
        files.push(f.into_inner());
        // WhiteIsZero (PhotometricInterpretation 0): the stored samples inverted.
        let mut f = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut f).unwrap();
        let mut img = enc.new_image::<colortype::Gray8>(w, h).unwrap();
        img.extra_samples(&[ExtraSamples::UnassociatedAlpha]).unwrap();
        let inverted: Vec<u8> = gray8.iter().enumerate().flat_map(|(i, &g)| [255 - g, alpha(i)]).collect();
        img.write_data(&inverted).unwrap();
        files.push(white_is_zero(f.into_inner()));
        for bytes in &files {
            let got = decode_gray(bytes).unwrap();
            assert_eq!((got.width, got.height), (w, h));
            for (a, b) in got.pixels.iter().zip(&expected.pixels) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        // Cut short, it is refused as corrupt, not read as black.
        let cut = &files[0][..files[0].len() - 60];
        assert!(decode_gray(cut).is_err());
    }

    /// A little-endian TIFF's first image made WhiteIsZero: its
    /// PhotometricInterpretation entry (tag 262, a SHORT) set to 0.
    fn white_is_zero(mut bytes: Vec<u8>) -> Vec<u8> {
        let u16at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
        assert_eq!(&bytes[..4], b"II*\0");
        let ifd = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
        let entry = (0..u16at(&bytes, ifd)).map(|k| ifd + 2 + 12 * k).find(|&e| u16at(&bytes, e) == 262).unwrap();
        assert_eq!(u16at(&bytes, entry + 8), 1, "written BlackIsZero");
        bytes[entry + 8..entry + 10].copy_from_slice(&0u16.to_le_bytes());
        bytes
    }

    /// A JPEG of `img` whose EXIF says `orientation` (1–8): the bytes a phone writes.
    fn jpeg_with_orientation(img: &image::GrayImage, orientation: u16) -> Vec<u8> {
        use image::ImageEncoder;
        // Little-endian TIFF header, IFD0 with one entry: Orientation (0x0112), SHORT, 1 value.
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&orientation.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        enc.set_exif_metadata(exif).unwrap();
        enc.write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::L8).unwrap();
        out
    }

    #[test]
    fn exif_orientation_turns_a_phone_photo_upright() {
        // Stored 40 wide × 24 high, bright in the left half; orientation 6 says
        // "turn 90° clockwise to view": 24 wide × 40 high, bright at the top.
        let stored = image::GrayImage::from_fn(40, 24, |x, _| Luma([if x < 20 { 230 } else { 20 }]));
        let g = decode_gray(&jpeg_with_orientation(&stored, 6)).unwrap();
        assert_eq!((g.width, g.height), (24, 40));
        let at = |x: u32, y: u32| g.pixels[(y * g.width + x) as usize];
        assert!(at(12, 5) > 0.8 && at(12, 34) < 0.2, "top {} bottom {}", at(12, 5), at(12, 34));
        // 8: turn 90° counter-clockwise — bright at the bottom; 3: upside down — bright on the right.
        let g = decode_gray(&jpeg_with_orientation(&stored, 8)).unwrap();
        assert_eq!((g.width, g.height), (24, 40));
        assert!(g.pixels[(34 * 24 + 12) as usize] > 0.8 && g.pixels[(5 * 24 + 12) as usize] < 0.2);
        let g = decode_gray(&jpeg_with_orientation(&stored, 3)).unwrap();
        assert_eq!((g.width, g.height), (40, 24));
        assert!(g.pixels[(12 * 40 + 35) as usize] > 0.8 && g.pixels[(12 * 40 + 4) as usize] < 0.2);
        // 1 (upright) leaves the pixels as stored.
        let g = decode_gray(&jpeg_with_orientation(&stored, 1)).unwrap();
        assert_eq!((g.width, g.height), (40, 24));
        assert!(g.pixels[(12 * 40 + 4) as usize] > 0.8);
    }

    #[test]
    fn row_wise_conversion_equals_whole_image_conversion() {
        let rgb = image::RgbImage::from_fn(37, 29, |x, y| image::Rgb([(x * 7) as u8, (y * 9) as u8, ((x + y) * 3) as u8]));
        let g16 = image::ImageBuffer::<Luma<u16>, _>::from_fn(37, 29, |x, y| Luma([(x * 1771 + y * 301) as u16]));
        for img in [DynamicImage::ImageRgb8(rgb), DynamicImage::ImageLuma16(g16)] {
            let whole: Vec<f32> = img.to_rgb32f().pixels().map(|p| luma(p[0], p[1], p[2]).clamp(0.0, 1.0)).collect();
            let g = decode_gray(&png(img)).unwrap();
            assert_eq!((g.width, g.height, g.scale), (37, 29, 1));
            assert_eq!(g.pixels, whole, "bit-identical to converting the whole picture at once");
        }
    }

    #[test]
    fn a_picture_above_the_working_side_is_box_averaged_and_crops_map_to_it() {
        // 4097 wide → factor 2; the last column and row average what is left.
        let (w, h) = (WORK_SIDE + 1, 12);
        let img = image::GrayImage::from_fn(w, h, |x, y| {
            Luma([if x < 2 && y < 2 {
                255
            } else if x == w - 1 {
                102
            } else {
                0
            }])
        });
        let g = decode_gray(&png(DynamicImage::ImageLuma8(img))).unwrap();
        assert_eq!((g.width, g.height, g.scale), (WORK_SIDE / 2 + 1, 6, 2));
        assert!((g.pixels[0] - 1.0).abs() < 1e-6, "top-left 2×2 block is white: {}", g.pixels[0]);
        assert!((g.pixels[1]).abs() < 1e-6);
        assert!((g.pixels[g.width as usize - 1] - 0.4).abs() < 1e-6, "a 1-column block averages itself only");
        // A box in source pixels: (2, 0, 4, 4) → stored (1, 0, 2, 2), squared, resized.
        let out = prepare(&g, &Crop::Box { x: 2, y: 0, w: 4, h: 4 }, 2).unwrap();
        assert!(out.iter().all(|v| v.abs() < 1e-6), "the box right of the white block is black: {out:?}");
        let out = prepare(&g, &Crop::Box { x: 0, y: 0, w: 2, h: 2 }, 1).unwrap();
        assert!((out[0] - 1.0).abs() < 1e-6);
        assert!(prepare(&g, &Crop::Box { x: w - 1, y: 0, w: 4, h: 4 }, 1).is_err(), "a box past the source edge is refused");
    }
}
