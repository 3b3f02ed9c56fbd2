//! Datasets: scanning (`scan`), decoding (`image`), labels and splits
//! (`split`), augmentation (`augment`), and turning decoded images into
//! normalised network input.

pub mod augment;
pub mod face;
pub mod image;
pub mod jpeg;
pub mod scan;
pub mod split;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result, Setting};
use image::Crop;
use scan::Sample;

/// ImageNet channel statistics (RGB), which torchvision's weights expect.
pub(crate) const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub(crate) const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Network input sides `--image-size` accepts.
pub(crate) const IMAGE_SIZES: std::ops::RangeInclusive<u32> = 32..=1024;

/// How a file becomes network input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub crop: Crop,
    /// Face localisation, applied instead of `crop` when not `None`.
    #[serde(default)]
    pub face: face::FaceMode,
    pub image_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    pub fn new(crop: Crop, image_size: u32) -> Self {
        Preprocess { crop, face: face::FaceMode::None, image_size, mean: IMAGENET_MEAN, std: IMAGENET_STD }
    }

    /// The rules of `--image-size`, `--crop` and `--face`, for a loaded
    /// `config.json` too; mean and std must be finite, std positive.
    pub(crate) fn validate(&self) -> Result<()> {
        if !IMAGE_SIZES.contains(&self.image_size) {
            return Err(Error::invalid(Setting::ImageSize, format!("must be {} to {}, got {}", IMAGE_SIZES.start(), IMAGE_SIZES.end(), self.image_size)));
        }
        if self.mean.iter().any(|m| !m.is_finite()) || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::invalid(Setting::Normalisation, format!("needs finite means and positive stds, got mean {:?} std {:?}", self.mean, self.std)));
        }
        match self.crop {
            Crop::Center { fraction } if !(fraction > 0.0 && fraction <= 1.0) => {
                Err(Error::invalid(Setting::Crop, format!("fraction must be in (0, 1], got {fraction}")))
            }
            Crop::Box { w, h, .. } if w < image::MIN_SIDE || h < image::MIN_SIDE => {
                Err(Error::invalid(Setting::Crop, format!("x,y,w,h needs w, h ≥ {} (the smallest picture vggft reads), got {w}×{h}", image::MIN_SIDE)))
            }
            _ => match self.face {
                face::FaceMode::Fixed { w, h, .. } if w < image::MIN_SIDE || h < image::MIN_SIDE => {
                    Err(Error::invalid(Setting::Face, format!("crop:x,y,w,h needs w, h ≥ {} (the smallest picture vggft reads), got {w}×{h}", image::MIN_SIDE)))
                }
                _ => Ok(()),
            },
        }
    }

    /// Gray batch in \[0, 1\] (N,1,S,S) → replicated to RGB and normalised (N,3,S,S).
    pub fn normalise(&self, gray: &Tensor) -> Tensor {
        let dev = gray.device();
        let mean = Tensor::from_slice(&self.mean).to_device(dev).view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&self.std).to_device(dev).view([1, 3, 1, 1]);
        (gray.expand([-1, 3, -1, -1], false) - mean) / std
    }
}

/// Decoded images, gray in \[0, 1\], (N,1,S,S) on the CPU, and the files that
/// were skipped with `--skip-bad`.
pub struct Loaded {
    pub gray: Tensor,
    /// Indices (into the given samples) of the images in `gray`.
    pub kept: Vec<usize>,
    pub skipped: Vec<(PathBuf, String)>,
    /// The face box of each kept image (when `--face` is not `none`).
    pub boxes: Vec<Option<face::FaceBox>>,
    /// With `--face person`: each kept image's whole frame (or `--crop`),
    /// which the single-image head reads (a lone photo in predict has no
    /// person to take a box from): trained on its clean and mirrored views
    /// and scored from them.
    pub lone: Option<Tensor>,
}

/// Decoded gray → the network's pixels: face box (or `crop`), square, resize.
pub fn prepare_image(g: &image::Gray, pre: &Preprocess, finder: &mut Option<face::FaceFinder>) -> Result<(Vec<f32>, Option<face::FaceBox>)> {
    prepare_image_in(g, pre, finder, None)
}

/// `prepare_image` with the box already chosen (`--face person`: the person's box).
pub(crate) fn prepare_image_in(
    g: &image::Gray,
    pre: &Preprocess,
    finder: &mut Option<face::FaceFinder>,
    given: Option<&face::FaceBox>,
) -> Result<(Vec<f32>, Option<face::FaceBox>)> {
    let b = match given {
        Some(b) => Some(b.clone()),
        None => face::locate(finder, g, &pre.face)?,
    };
    let crop = b.as_ref().map(face::FaceBox::crop).unwrap_or_else(|| pre.crop.clone());
    Ok((image::prepare(g, &crop, pre.image_size)?, b))
}

/// `f(i, sample, finder)` over the samples in parallel (one thread per core,
/// a face detector each), in order.
pub(crate) fn par_map<T: Send>(samples: &[Sample], f: impl Fn(usize, &Sample, &mut Option<face::FaceFinder>) -> T + Sync) -> Vec<T> {
    par_map_with(samples, || (), |i, s, finder, _| f(i, s, finder))
}

/// `par_map` with a state of each thread's own, made by `state` before the
/// threads start (shallow clones of the tensors they fill: a tensor is
/// `Send`, not `Sync`).
fn par_map_with<S: Send, T: Send>(
    samples: &[Sample],
    state: impl Fn() -> S,
    f: impl Fn(usize, &Sample, &mut Option<face::FaceFinder>, &mut S) -> T + Sync,
) -> Vec<T> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
    let chunk = samples.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                let mut own = state();
                scope.spawn(move || {
                    let mut finder = None;
                    part.iter().enumerate().map(|(j, s)| f(c * chunk + j, s, &mut finder, &mut own)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// With `--face person`, each image's box from its person's detections
/// (`None` for an image that does not decode: the main pass reports it).
fn person_boxes(samples: &[Sample], pre: &Preprocess) -> Option<Vec<Option<face::FaceBox>>> {
    if pre.face != face::FaceMode::Person {
        return None;
    }
    let found = par_map(samples, |_, s, finder| {
        let g = image::load_gray(&s.path).ok()?;
        Some((face::locate(finder, &g, &pre.face).ok()??, g.source_size()))
    });
    if found.len() != samples.len() {
        return Some(vec![None; samples.len()]); // a thread failed: the main pass reports it
    }
    let subjects: Vec<Option<&str>> = samples.iter().map(|s| s.subject.as_deref()).collect();
    Some(face::per_person(&found, &subjects))
}

/// What follows the first unreadable image's error when `failed` of `total`
/// cannot be used: how many, and the way past them.
/// `skip_bad`: --skip-bad was given, and so left out every image when all failed.
pub(crate) fn unreadable_hint(failed: usize, total: usize, skip_bad: bool) -> String {
    // Every image failed (a --crop box that fits none): leaving them out would leave nothing.
    if failed == total && skip_bad {
        format!(
            "{}, so --skip-bad would leave nothing",
            if failed > 1 { format!("none of the {failed} images can be used, this the first") } else { "the only image".into() }
        )
    } else if failed == total && failed > 1 {
        format!("none of the {failed} images can be used, this the first")
    } else {
        format!("{failed} of {total} images cannot be read{}; --skip-bad leaves them out, naming each", if failed > 1 { ", this the first" } else { "" })
    }
}

/// Decodes and prepares images in parallel (one thread per core).
pub(crate) fn load_images(samples: &[Sample], pre: &Preprocess, skip_bad: bool) -> Result<Loaded> {
    let size = pre.image_size as i64;
    let given = person_boxes(samples, pre);
    // The single-image head's frame: the photo as `--face none` prepares it.
    let frame = Preprocess { face: face::FaceMode::None, ..pre.clone() };
    // Each image written into its row by the thread that decodes it: the
    // dataset is held once (0.2 MB an image at 224 px, twice with the whole
    // frames), not also as every image's pixels and one buffer of them all.
    let shape = [samples.len() as i64, 1, size, size];
    let gray = Tensor::empty(shape, (Kind::Float, Device::Cpu));
    let lone = given.as_ref().map(|_| Tensor::empty(shape, (Kind::Float, Device::Cpu)));
    let row = |t: &Tensor, i: usize, px: &[f32]| {
        t.get(i as i64).copy_(&Tensor::from_slice(px).view([1, size, size]));
    };
    let state = || (gray.shallow_clone(), lone.as_ref().map(Tensor::shallow_clone));
    let results = par_map_with(samples, state, |i, s, finder, (g, l)| -> Result<_> {
        let img = image::load_gray(&s.path)?;
        let (px, b) = prepare_image_in(&img, pre, finder, given.as_ref().and_then(|v| v[i].as_ref())).map_err(|e| e.at(&s.path))?;
        row(g, i, &px);
        if let Some(l) = l {
            row(l, i, &prepare_image_in(&img, &frame, finder, None).map_err(|e| e.at(&s.path))?.0);
        }
        Ok(b)
    });
    if results.len() != samples.len() {
        return Err(Error::internal("an image decoding thread failed"));
    }
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    let mut boxes = Vec::new();
    // Every image was tried: say how many failed with the first, and the way past them.
    let failed = results.iter().filter(|r| r.is_err()).count();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(b) => {
                kept.push(i);
                boxes.push(b);
            }
            // Not where every image failed: an empty dataset's errors ("only one class (none)") would follow.
            Err(e) if skip_bad && failed < samples.len() => skipped.push((samples[i].path.clone(), e.problem())),
            Err(e) => return Err(Error::Picture(format!("{e} ({})", unreadable_hint(failed, samples.len(), skip_bad)))),
        }
    }
    // The rows of images left out (--skip-bad) were never written: only the others are kept.
    let (gray, lone) = if kept.len() == samples.len() {
        (gray, lone)
    } else {
        let at = Tensor::from_slice(&kept.iter().map(|&i| i as i64).collect::<Vec<_>>());
        (gray.index_select(0, &at), lone.map(|l| l.index_select(0, &at)))
    };
    Ok(Loaded { gray, kept, skipped, boxes, lone })
}

/// Stacks selected rows of a tensor onto a device.
pub(crate) fn select(t: &Tensor, idx: &[usize], device: Device) -> Tensor {
    let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let rows = t.index_select(0, &i);
    match device {
        // Pinned (page-locked) host memory lets the copy to the GPU run asynchronously.
        Device::Cuda(_) if t.device() == Device::Cpu => rows.pin_memory(device).to_device_(device, Kind::Float, true, false),
        _ => rows.to_device(device).to_kind(Kind::Float),
    }
}
