//! Predicting with a finished run: the same preprocessing the model was
//! trained with (read from the run's config), batched, with optional
//! flip test-time augmentation. A file that fails is reported, not fatal.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::config::RunConfig;
use crate::data::image;
use crate::data::scan::is_image;
use crate::error::Error;
use crate::model::Vgg16;
use crate::run::softmax_rows;

/// One image's outcome: class probabilities, or why it failed.
pub struct Prediction {
    pub path: PathBuf,
    pub probs: std::result::Result<Vec<f64>, String>,
}

/// Files and folders (their images, sorted, one level deep) → image paths.
pub fn expand_inputs(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|q| q.is_file() && is_image(q))
                .collect();
            v.sort();
            if v.is_empty() {
                out.push(p.clone());
            }
            out.extend(v);
        } else {
            out.push(p.clone());
        }
    }
    out
}

fn prepare_one(path: &Path, cfg: &RunConfig) -> std::result::Result<Vec<f32>, String> {
    if path.is_dir() {
        return Err("folder holds no images".into());
    }
    let g = image::load_gray(path).map_err(|e| match e {
        Error::Image { problem, .. } => problem,
        Error::Io { source, .. } => format!("cannot read: {source}"),
        other => other.to_string(),
    })?;
    image::prepare(
        &g,
        &cfg.data.preprocess.crop,
        cfg.data.preprocess.image_size,
    )
}

/// Predicts every path, in batches of `batch`.
pub fn predict(
    cfg: &RunConfig,
    model: &Vgg16,
    paths: &[PathBuf],
    tta_flip: bool,
    batch: usize,
    device: Device,
) -> Vec<Prediction> {
    let s = cfg.data.preprocess.image_size as i64;
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch.max(1)) {
        let prepared: Vec<(PathBuf, std::result::Result<Vec<f32>, String>)> = chunk
            .iter()
            .map(|p| (p.clone(), prepare_one(p, cfg)))
            .collect();
        let ok: Vec<&Vec<f32>> = prepared
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .collect();
        let mut probs = Vec::new().into_iter();
        if !ok.is_empty() {
            let flat: Vec<f32> = ok.iter().flat_map(|v| v.iter().copied()).collect();
            let gray = Tensor::from_slice(&flat)
                .view([ok.len() as i64, 1, s, s])
                .to_device(device);
            let x = cfg.data.preprocess.normalise(&gray);
            let p = tch::no_grad(|| {
                let mut logits = model.forward_t(&x, false).softmax(1, tch::Kind::Double);
                if tta_flip {
                    logits = (logits
                        + model
                            .forward_t(&x.flip([3]), false)
                            .softmax(1, tch::Kind::Double))
                        / 2.0;
                }
                logits
            });
            probs = softmax_free_rows(&p).into_iter();
        }
        for (path, r) in prepared {
            let probs = match r {
                Ok(_) => Ok(probs.next().unwrap_or_default()),
                Err(e) => Err(e),
            };
            out.push(Prediction { path, probs });
        }
    }
    out
}

/// Rows of a probability tensor (already normalised).
fn softmax_free_rows(p: &Tensor) -> Vec<Vec<f64>> {
    // log → softmax is the identity on probabilities; reuse the converter.
    softmax_rows(&p.log())
}

/// The most probable class.
pub fn argmax(p: &[f64]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0)
}
