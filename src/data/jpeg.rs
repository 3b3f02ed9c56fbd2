//! A structural check that a JPEG file is complete before it is decoded.
//!
//! `image` runs zune-jpeg in non-strict mode: scan data that ends early is
//! filled in with grey and the decode succeeds, so a file cut at 50 % trains
//! as half a face. libjpeg-based tools (Pillow) refuse such files; this check
//! does the same from the marker structure alone, without decoding: every
//! scan must be followed by more segments and finally the end-of-image
//! marker, and the entropy-coded data must hold at least one bit per MCU
//! (every block's DC coefficient costs at least one Huffman bit), which also
//! refuses a few-kilobyte file whose header claims a huge picture.

/// Frame facts read from the start-of-frame segment.
#[derive(Clone, Copy, Debug)]
struct Frame {
    width: u32,
    height: u32,
    max_h: u32,
    max_v: u32,
    huffman: bool,
}

/// `Ok` when the marker structure of `bytes` (starting with SOI) is complete;
/// otherwise the problem in words.
pub(crate) fn check_complete(bytes: &[u8]) -> Result<(), String> {
    const TRUNCATED: &str = "truncated JPEG: the data ends before the end-of-image marker";
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    let mut i = 2;
    let mut frame: Option<Frame> = None;
    let mut scan_bytes: u64 = 0;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while i < bytes.len() && bytes[i] == 0xFF && bytes.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if i + 1 >= bytes.len() {
            return Err(TRUNCATED.into());
        }
        if bytes[i] != 0xFF {
            return Err(format!("corrupt JPEG: expected a marker at byte {i}"));
        }
        let marker = bytes[i + 1];
        i += 2;
        match marker {
            0xD9 => break,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = match bytes.get(i..i + 2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]) as usize,
            None => return Err(TRUNCATED.into()),
        };
        if len < 2 {
            return Err(format!("corrupt JPEG: segment length {len} at byte {i}"));
        }
        let body = bytes.get(i + 2..i + len).ok_or(TRUNCATED)?;
        i += len;
        if is_sof(marker) && body.len() >= 6 {
            frame = Some(parse_frame(marker, body));
        }
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is neither a
            // stuffed 0xFF00, a restart marker nor fill.
            let start = i;
            while i + 1 < bytes.len() {
                if bytes[i] == 0xFF {
                    match bytes[i + 1] {
                        0x00 | 0xD0..=0xD7 => i += 2,
                        0xFF => i += 1,
                        _ => break,
                    }
                } else {
                    i += 1;
                }
            }
            if i + 1 >= bytes.len() {
                return Err(TRUNCATED.into());
            }
            scan_bytes += (i - start) as u64;
        }
    }
    let Some(f) = frame else { return Err("corrupt JPEG: no frame header before the end-of-image marker".into()) };
    if f.huffman && f.width > 0 && f.height > 0 {
        let mcus = (f.width as u64).div_ceil(8 * f.max_h as u64) * (f.height as u64).div_ceil(8 * f.max_v as u64);
        if scan_bytes * 8 < mcus {
            return Err(format!(
                "truncated or corrupt JPEG: {scan_bytes} bytes of image data cannot hold the {}×{} pixels its header claims",
                f.width, f.height
            ));
        }
    }
    Ok(())
}

/// Start-of-frame markers: C0–CF except DHT (C4), JPG (C8) and DAC (CC).
fn is_sof(m: u8) -> bool {
    (0xC0..=0xCF).contains(&m) && !matches!(m, 0xC4 | 0xC8 | 0xCC)
}

fn parse_frame(marker: u8, b: &[u8]) -> Frame {
    let height = u16::from_be_bytes([b[1], b[2]]) as u32;
    let width = u16::from_be_bytes([b[3], b[4]]) as u32;
    let n = b[5] as usize;
    let (mut max_h, mut max_v) = (1, 1);
    for c in 0..n {
        if let Some(&s) = b.get(6 + 3 * c + 1) {
            max_h = max_h.max((s >> 4).clamp(1, 4) as u32);
            max_v = max_v.max((s & 0xF).clamp(1, 4) as u32);
        }
    }
    // C9–CB and CD–CF are arithmetic-coded: no one-bit-per-block floor.
    Frame { width, height, max_h, max_v, huffman: marker <= 0xC7 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 7 + y * 13) % 251) as u8]));
        let mut out = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
        img.write_with_encoder(enc).unwrap();
        out
    }

    #[test]
    fn complete_file_passes_and_every_cut_is_refused() {
        let full = jpeg(64, 48);
        check_complete(&full).unwrap();
        // Trailing bytes after the end marker are allowed (cameras append data).
        let mut trailing = full.clone();
        trailing.extend_from_slice(b"trailer");
        check_complete(&trailing).unwrap();
        for cut in [0.10, 0.33, 0.5, 0.9, 0.99] {
            let n = (full.len() as f64 * cut) as usize;
            let err = check_complete(&full[..n]).unwrap_err();
            assert!(err.contains("truncated"), "cut at {cut}: {err}");
        }
        // Only the two end-marker bytes missing.
        assert!(check_complete(&full[..full.len() - 2]).is_err());
    }

    #[test]
    fn a_header_claiming_more_pixels_than_the_data_can_hold_is_refused() {
        let mut f = jpeg(64, 48);
        // Rewrite the SOF0 size to 16000×16000 (the data stays 64×48's).
        let sof = f.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        f[sof + 5..sof + 7].copy_from_slice(&16000u16.to_be_bytes());
        f[sof + 7..sof + 9].copy_from_slice(&16000u16.to_be_bytes());
        let err = check_complete(&f).unwrap_err();
        assert!(err.contains("16000×16000"), "{err}");
    }
}
