//! Datasets: scanning (`scan`), decoding (`image`), labels and splits
//! (`split`), augmentation (`augment`), and turning decoded images into
//! normalised network input.

pub mod augment;
pub mod image;
pub mod scan;
pub mod split;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use image::Crop;
use scan::Sample;

/// ImageNet channel statistics (RGB), which torchvision's weights expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How a file becomes network input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub crop: Crop,
    pub image_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    pub fn new(crop: Crop, image_size: u32) -> Self {
        Preprocess {
            crop,
            image_size,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    /// Gray [0,1] batch (N,1,S,S) → replicated to RGB and normalised (N,3,S,S).
    pub fn normalise(&self, gray: &Tensor) -> Tensor {
        let dev = gray.device();
        let mean = Tensor::from_slice(&self.mean)
            .to_device(dev)
            .view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&self.std)
            .to_device(dev)
            .view([1, 3, 1, 1]);
        (gray.expand([-1, 3, -1, -1], false) - mean) / std
    }
}

/// Decoded images, gray in [0,1], (N,1,S,S) on the CPU, and the files that
/// were skipped with `--skip-bad`.
pub struct Loaded {
    pub gray: Tensor,
    /// Indices (into the given samples) of the images in `gray`.
    pub kept: Vec<usize>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Decodes and prepares images in parallel (one thread per core).
pub fn load_images(samples: &[Sample], pre: &Preprocess, skip_bad: bool) -> Result<Loaded> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let size = pre.image_size as usize;
    let chunk = samples.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<f32>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = samples
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| {
                            let g = image::load_gray(&s.path)?;
                            image::prepare(&g, &pre.crop, pre.image_size)
                                .map_err(|p| Error::image(&s.path, p))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    if results.len() != samples.len() {
        return Err(Error::config("an image decoding thread failed"));
    }
    let mut data = Vec::with_capacity(samples.len() * size * size);
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(px) => {
                data.extend_from_slice(&px);
                kept.push(i);
            }
            Err(e) if skip_bad => skipped.push((samples[i].path.clone(), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    let gray = Tensor::from_slice(&data).view([kept.len() as i64, 1, size as i64, size as i64]);
    Ok(Loaded {
        gray,
        kept,
        skipped,
    })
}

/// Stacks selected rows of a tensor onto a device.
pub fn select(t: &Tensor, idx: &[usize], device: Device) -> Tensor {
    let i = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
    t.index_select(0, &i).to_device(device).to_kind(Kind::Float)
}
