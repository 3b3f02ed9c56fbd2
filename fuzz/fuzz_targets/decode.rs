//! Any bytes → image decoding (TIFF incl. palette and 16-bit, PNG, JPEG, BMP)
//! → crop → resize: an error or a well-formed image, never a panic, a hang or
//! an allocation past the documented pixel limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vggft::data::image::{decode_gray, prepare, Crop};

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = decode_gray(data) {
        assert_eq!(g.pixels.len(), g.width as usize * g.height as usize);
        for crop in [Crop::None, Crop::Center { fraction: 0.6 }] {
            if let Ok(px) = prepare(&g, &crop, 16) {
                assert_eq!(px.len(), 16 * 16);
                assert!(px.iter().all(|v| v.is_finite()));
            }
        }
    }
});
