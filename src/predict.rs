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

/// One image's outcome: class probabilities, or why it failed.
pub struct Prediction {
    pub path: PathBuf,
    /// Task-class probabilities.
    pub probs: std::result::Result<Vec<f64>, String>,
    /// Raw-label probabilities, when the head was trained on raw labels (else empty).
    pub raw: Vec<f64>,
}

/// Files and folders (their images, sorted, one level deep) → image paths.
pub fn expand_inputs(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| e.path()).filter(|q| q.is_file() && is_image(q)).collect();
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

fn prepare_one(path: &Path, cfg: &RunConfig, finder: &mut Option<crate::data::face::FaceFinder>) -> std::result::Result<Vec<f32>, String> {
    if path.is_dir() {
        return Err("folder holds no images".into());
    }
    let g = image::load_gray(path).map_err(|e| match e {
        Error::Image { problem, .. } => problem,
        Error::Io { reason, .. } => format!("cannot read: {reason}"),
        other => other.to_string(),
    })?;
    crate::data::prepare_image(&g, &cfg.data.preprocess, finder).map(|(px, _)| px)
}

/// Predicts every path, in batches of `batch`.
pub fn predict(cfg: &RunConfig, model: &Vgg16, paths: &[PathBuf], tta_flip: bool, batch: usize, device: Device) -> Vec<Prediction> {
    let s = cfg.data.preprocess.image_size as i64;
    let mut finder = None;
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(batch.max(1)) {
        let prepared: Vec<(PathBuf, std::result::Result<Vec<f32>, String>)> = chunk.iter().map(|p| (p.clone(), prepare_one(p, cfg, &mut finder))).collect();
        let ok: Vec<&Vec<f32>> = prepared.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
        let mut probs = Vec::new().into_iter();
        let mut raw = Vec::new().into_iter();
        if !ok.is_empty() {
            let flat: Vec<f32> = ok.iter().flat_map(|v| v.iter().copied()).collect();
            let gray = Tensor::from_slice(&flat).view([ok.len() as i64, 1, s, s]).to_device(device);
            let x = cfg.data.preprocess.normalise(&gray);
            let p = tch::no_grad(|| {
                let mut logits = model.forward_t(&x, false).softmax(1, tch::Kind::Double);
                if tta_flip {
                    logits = (logits + model.forward_t(&x.flip([3]), false).softmax(1, tch::Kind::Double)) / 2.0;
                }
                logits
            });
            probs = crate::run::rows(&crate::eval::sum_to_task(&p, &cfg.raw_to_task, cfg.classes.len())).into_iter();
            if !cfg.raw_to_task.is_empty() {
                raw = crate::run::rows(&p).into_iter();
            }
        }
        for (path, r) in prepared {
            let (probs, raw) = match r {
                Ok(_) => (Ok(probs.next().unwrap_or_default()), raw.next().unwrap_or_default()),
                Err(e) => (Err(e), vec![]),
            };
            out.push(Prediction { path, probs, raw });
        }
    }
    out
}

/// The most probable class.
pub fn argmax(p: &[f64]) -> usize {
    p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0)
}

/// `vggft evaluate`: a finished run on a labelled dataset.
pub struct Evaluation {
    pub metrics: crate::eval::Metrics,
    pub paths: Vec<PathBuf>,
    pub y: Vec<i64>,
    pub probs: Vec<Vec<f64>>,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Scans `data` (labels mapped as the run was trained), predicts every image, scores it.
pub fn evaluate(
    cfg: &RunConfig,
    model: &Vgg16,
    data: &Path,
    format: crate::data::scan::DataFormat,
    skip_bad: bool,
    device: Device,
) -> crate::error::Result<Evaluation> {
    let mut ds = crate::data::scan::scan(data, format)?;
    let loaded = crate::data::load_images(&ds.samples, &cfg.data.preprocess, skip_bad)?;
    ds.samples = loaded.kept.iter().map(|&i| ds.samples[i].clone()).collect();
    // Each raw label becomes a class by the run's own rule, then the run's class index.
    let mut y = Vec::with_capacity(ds.samples.len());
    for smp in &ds.samples {
        let name = if !cfg.data.label_map.is_empty() {
            cfg.data.label_map.iter().find(|(raw, _)| raw.eq_ignore_ascii_case(&smp.label)).map(|(_, c)| c.clone()).unwrap_or_else(|| smp.label.clone())
        } else if cfg.data.task == crate::data::split::Task::Binary {
            let neutral = smp.label.eq_ignore_ascii_case("neutral") || smp.label.eq_ignore_ascii_case("ne");
            crate::data::split::BINARY_CLASSES[if neutral { 0 } else { 1 }].to_string()
        } else {
            smp.label.clone()
        };
        match cfg.classes.iter().position(|c| *c == name) {
            Some(k) => y.push(k as i64),
            None => return Err(Error::file(&smp.path, format!("class `{name}` is not one the model was trained on ({})", cfg.classes.join(", ")))),
        }
    }
    let x = cfg.data.preprocess.normalise(&loaded.gray.to_device(device));
    let n = x.size()[0];
    let logits: Vec<Tensor> = tch::no_grad(|| (0..n).step_by(32).map(|s| model.forward_t(&x.narrow(0, s, (n - s).min(32)), false)).collect());
    let probs = crate::run::rows(&cfg.task_probs(&Tensor::cat(&logits, 0)));
    let metrics = crate::eval::metrics(&y, &probs, &cfg.classes);
    Ok(Evaluation { metrics, paths: ds.samples.iter().map(|s| s.path.clone()).collect(), y, probs, skipped: loaded.skipped })
}
