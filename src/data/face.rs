//! Face localisation before the network sees an image: the SeetaFace
//! frontal detector (rustface; its model file is embedded, BSD-2-Clause, see
//! assets/face/), the largest detection expanded to hold brows to chin,
//! squared and clamped; a centred fallback when no face is found.

use serde::{Deserialize, Serialize};

use super::image::{Crop, Gray};
use crate::error::{Error, Result, Setting};

static MODEL: &[u8] = include_bytes!("../../assets/face/seeta_fd_frontal_v1.0.bin");

/// What a cross-validation summary of a `--face person` recipe says.
pub const PERSON_BOX: &str = "face crop per person (--face person): each person's photos, a test person's included, set that person's face box";

/// What a `--face person` recipe's single-image figures say: that head reads
/// each photo's whole frame (`Loaded::lone`), as `predict` frames a lone photo.
pub const FRAME_SINGLE: &str = "each photo's whole frame, as predict frames a lone photo";

/// What they said when that head read the person's box (cv folds from
/// before whole frames): a lone photo has no person's box, so they flatter
/// it (docs/results/accuracy, "Pairs").
pub const PERSON_BOX_SINGLE: &str =
    "its photos cropped to their person's face box, which a lone photo in predict does not get (it gets its own box): an upper bound";

/// How to find the face.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FaceMode {
    /// No face step (the whole frame, or `--crop`).
    #[default]
    None,
    /// Detect; fall back to a centred crop (or fail with `required`).
    Auto { required: bool },
    /// Detect in every photo, then give every photo of a person the median
    /// of the boxes found in that person's photos: one steady frame per
    /// person, so the detector's jitter (a few % of the face) does not pass
    /// for a change of expression. A photo without a subject id, or of a
    /// person in whose photos no face is found, is framed as with `Auto`.
    Person,
    /// A fixed box in source pixels.
    Fixed { x: u32, y: u32, w: u32, h: u32 },
}

impl FaceMode {
    /// `auto`, `person`, `none` or `crop:x,y,w,h`.
    pub fn parse(s: &str, required: bool) -> Result<FaceMode> {
        match s.trim() {
            "none" => Ok(FaceMode::None),
            "auto" => Ok(FaceMode::Auto { required }),
            "person" => Ok(FaceMode::Person),
            other => match other.strip_prefix("crop:").map(Crop::parse) {
                Some(Ok(Crop::Box { x, y, w, h })) => Ok(FaceMode::Fixed { x, y, w, h }),
                // A box that does not parse, or is too small: the box's own reason.
                Some(Err(Error::Invalid { problem, .. })) => Err(Error::invalid(Setting::Face, problem)),
                _ => Err(Error::invalid(Setting::Face, format!("`{other}`: expected auto, person, none or crop:x,y,w,h"))),
            },
        }
    }
}

/// The box used for one image; `score` is `None` for the centred fallback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    pub score: Option<f64>,
}

impl FaceBox {
    pub fn crop(&self) -> Crop {
        Crop::Box { x: self.x, y: self.y, w: self.w, h: self.h }
    }
}

/// Side of the square crop relative to the detector's box: SeetaFace's box
/// spans roughly brows to mouth; 1.5× with the centre moved down by 10 % of
/// the box holds brows to chin on the London faces (see `vggft faces`).
pub(crate) const MARGIN: f64 = 1.5;
pub(crate) const SHIFT_DOWN: f64 = 0.10;
/// Centred fallback: a square of this fraction of the shorter side.
pub(crate) const FALLBACK: f64 = 0.8;

/// A detector, one per thread (rustface's is not shareable).
pub struct FaceFinder {
    det: Box<dyn rustface::Detector>,
}

impl FaceFinder {
    pub fn new() -> Result<FaceFinder> {
        let model = rustface::read_model(std::io::Cursor::new(MODEL)).map_err(|e| Error::internal(format!("embedded face model cannot be read: {e}")))?;
        let mut det = rustface::create_detector_with_model(model);
        det.set_min_face_size(20);
        det.set_score_thresh(2.0);
        det.set_pyramid_scale_factor(0.8);
        det.set_slide_window_step(4, 4);
        Ok(FaceFinder { det })
    }

    /// The largest face, expanded, squared and clamped to the image.
    pub fn detect(&mut self, g: &Gray) -> Option<FaceBox> {
        let bytes: Vec<u8> = g.pixels.iter().map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect();
        let faces = self.det.detect(&rustface::ImageData::new(&bytes, g.width, g.height));
        let best = faces.iter().max_by_key(|f| f.bbox().width() as u64 * f.bbox().height() as u64)?;
        let b = best.bbox();
        let (bw, bh) = (b.width() as f64, b.height() as f64);
        let cx = b.x() as f64 + bw / 2.0;
        let cy = b.y() as f64 + bh / 2.0 + SHIFT_DOWN * bh;
        let side = (bw.max(bh) * MARGIN).min(g.width.min(g.height) as f64).max(1.0);
        Some(square_at(g, cx, cy, side, Some(best.score())))
    }
}

/// A square of `side` centred at (cx, cy), moved inside the image.
fn square_at(g: &Gray, cx: f64, cy: f64, side: f64, score: Option<f64>) -> FaceBox {
    let s = side.round() as u32;
    let x = (cx - side / 2.0).round().clamp(0.0, (g.width - s) as f64) as u32;
    let y = (cy - side / 2.0).round().clamp(0.0, (g.height - s) as f64) as u32;
    FaceBox { x, y, w: s, h: s, score }
}

/// The centred fallback box.
pub fn fallback(g: &Gray) -> FaceBox {
    let side = g.width.min(g.height) as f64 * FALLBACK;
    square_at(g, g.width as f64 / 2.0, g.height as f64 / 2.0, side, None)
}

/// The face box for `mode` (`None` mode: no box).
pub fn locate(finder: &mut Option<FaceFinder>, g: &Gray, mode: &FaceMode) -> Result<Option<FaceBox>> {
    match mode {
        FaceMode::None => Ok(None),
        FaceMode::Fixed { x, y, w, h } => Ok(Some(FaceBox { x: *x, y: *y, w: *w, h: *h, score: None })),
        FaceMode::Auto { .. } | FaceMode::Person => {
            let required = matches!(mode, FaceMode::Auto { required: true });
            if finder.is_none() {
                *finder = Some(FaceFinder::new()?);
            }
            let found = match finder.as_mut().and_then(|f| f.detect(g)) {
                Some(b) => b,
                None if required => return Err(Error::Framing("no face found (--face-required)".into())),
                None => fallback(g),
            };
            // Boxes are reported in source pixels (a shrunk picture has scale > 1).
            let k = g.scale.max(1);
            Ok(Some(FaceBox { x: found.x * k, y: found.y * k, w: found.w * k, h: found.h * k, ..found }))
        }
    }
}

/// `FaceMode::Person`: `found[i]` is photo i's box (source pixels; found
/// or the fallback) and its size in source pixels, `None` when it did not
/// decode; `subjects[i]` its person. Each photo of a person in whose photos
/// of the same size a face was found gets the median centre and side of
/// those detections (fitted inside the photo, scored with their median
/// score); the others keep their own box. Boxes are in pixels: a 4000-px
/// phone photo and a 256-px crop of the same person share no frame.
pub fn per_person<K: PartialEq + Clone>(found: &[Option<(FaceBox, (u32, u32))>], subjects: &[Option<K>]) -> Vec<Option<FaceBox>> {
    let subjects: Vec<Option<(K, (u32, u32))>> = subjects.iter().zip(found).map(|(s, f)| s.clone().zip(f.as_ref().map(|f| f.1))).collect();
    let groups = crate::subject::groups(&subjects);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let detected = |i: usize| found[i].as_ref().map(|f| &f.0).filter(|b| subjects[i].is_some() && b.score.is_some());
    let person: Vec<Option<(f64, f64, f64, f64)>> = (0..groups.iter().max().map_or(0, |m| m + 1))
        .map(|g| {
            let boxes: Vec<&FaceBox> = (0..found.len()).filter(|&i| groups[i] == g).filter_map(detected).collect();
            if boxes.is_empty() {
                return None;
            }
            let m = |f: fn(&FaceBox) -> f64| median(boxes.iter().map(|b| f(b)).collect());
            Some((m(|b| b.x as f64 + b.w as f64 / 2.0), m(|b| b.y as f64 + b.h as f64 / 2.0), m(|b| b.w.max(b.h) as f64), m(|b| b.score.unwrap_or(0.0))))
        })
        .collect();
    found
        .iter()
        .zip(&groups)
        .map(|(f, &g)| {
            let (b, (w, h)) = f.as_ref()?;
            Some(match person[g] {
                Some((cx, cy, side, score)) => {
                    let side = side.min(*w.min(h) as f64).max(1.0);
                    let s = side.round() as u32;
                    let x = (cx - side / 2.0).round().clamp(0.0, (w - s) as f64) as u32;
                    let y = (cy - side / 2.0).round().clamp(0.0, (h - s) as f64) as u32;
                    FaceBox { x, y, w: s, h: s, score: Some(score) }
                }
                None => b.clone(),
            })
        })
        .collect()
}
