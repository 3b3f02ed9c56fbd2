//! `vggft evaluate`: a finished run scored on a labelled dataset and written
//! into a folder of its own — `metrics.json`, `confusion.png` and, when asked,
//! the worst images explained (`top_losses.png` / `.csv`). Owns that folder's
//! rules (its default place beside the model, what it may replace, one writer
//! at a time, its files replaced as one set) and its record; the scoring
//! itself is `predict::evaluate`.

use std::path::{Path, PathBuf};

use tch::Device;

use crate::config::RunConfig;
use crate::data::scan::DataFormat;
use crate::error::{Error, Result};
use crate::eval::predict::{self, Evaluation, Mode, Training};
use crate::fsutil;
use crate::model::{Block, Precision};

/// What to score and where to write it.
pub struct Request {
    /// The run folder (`run::run_dir` already applied).
    pub model: PathBuf,
    pub data: PathBuf,
    pub format: DataFormat,
    /// The data's labels read as the run's (`--label-map`).
    pub label_map: Vec<(String, String)>,
    pub subject_pattern: Option<String>,
    pub skip_bad: bool,
    pub exclude_train: bool,
    /// Flip test-time augmentation: given, or `None` for the model's default.
    pub tta: Option<bool>,
    pub precision: Option<Precision>,
    /// The folder (default: `default_out`).
    pub out: Option<PathBuf>,
    /// How many of the worst images to explain (0: none).
    pub top_losses: usize,
    /// Their Grad-CAM layer (default: the last block the head reads).
    pub layer: Option<Block>,
    pub device: Device,
}

/// A finished evaluation: what was scored and where it went.
pub struct Evaluated {
    pub cfg: RunConfig,
    pub evaluation: Evaluation,
    pub out: PathBuf,
    pub tta_flip: bool,
    /// A subject-normalised model's images scored with their person's
    /// statistics and by the single-image head.
    pub modes: Option<(usize, usize)>,
    /// How many top losses were explained, when asked.
    pub top_losses: Option<usize>,
}

impl Evaluated {
    pub fn metrics_json(&self) -> PathBuf {
        self.out.join("metrics.json")
    }
    pub fn confusion_png(&self) -> PathBuf {
        self.out.join("confusion.png")
    }
}

/// Where an evaluation goes when no `--out` is given: `RUN/eval-<data's name>`.
pub fn default_out(model: &Path, data: &Path) -> PathBuf {
    let name = Some(fsutil::output_stem(data)).filter(|n| !n.is_empty()).unwrap_or_else(|| "data".into());
    model.join(format!("eval-{name}"))
}

/// Scores the run on the data and writes the folder. Every refusal (an
/// `--out` inside the data or another command's folder, a layer the head
/// does not read, a folder that cannot be made) comes before the scoring,
/// which takes minutes for a few hundred photos.
pub fn run(req: &Request) -> Result<Evaluated> {
    let out = req.out.clone().unwrap_or_else(|| default_out(&req.model, &req.data));
    crate::data::scan::refuse_output_inside(&req.data, req.format, &out, "the scores and plots")?;
    crate::data::scan::refuse_other_output(
        &out,
        "an evaluate folder",
        "metrics.json and the plots",
        &["metrics.json", "confusion.png", "top_losses.png", "top_losses.csv"],
    )?;
    let (cfg, mut model) = crate::run::load_run(&req.model, req.device)?;
    // Once the model is known to be there: a folder that cannot be made —
    // the default one inside a model folder shared read-only — fails at once.
    fsutil::check_creatable(&out)?;
    if let Some(p) = req.precision {
        model.cfg.precision = p;
    }
    let layer = crate::eval::explain::layer_or_default(&cfg, req.layer);
    if req.top_losses > 0 {
        crate::eval::explain::check_layer(&cfg, layer)?;
    }
    // Not known, the training images are not left out (--exclude-train: refused) nor counted (said).
    let split = req.model.join("split.csv");
    let mut unchecked = None;
    let training = match Training::of_run(&req.model) {
        Ok(t) => t,
        Err(e) if req.exclude_train => {
            return Err(Error::file(&split, format!("cannot read: {e}; --exclude-train leaves out the run's training images, which it lists")));
        }
        Err(e) => {
            unchecked = Training::unchecked(&req.model, &e, "images");
            Training::default()
        }
    };
    let tta_flip = crate::eval::flip_tta(req.tta, model.cfg.subject_norm);
    let mut ev = predict::evaluate(
        &cfg,
        &model,
        &req.data,
        (req.format, &req.label_map, req.subject_pattern.as_deref()),
        req.skip_bad,
        (&training, req.exclude_train),
        (tta_flip, req.device),
    )?;
    ev.warnings.extend(unchecked);
    let count = |mode| ev.modes.iter().filter(|&&m| m == Some(mode)).count();
    let modes = model.cfg.subject_norm.then(|| (count(Mode::Person), count(Mode::Single)));

    // metrics.json, the plot and the top-loss tiles of one evaluation, written together: a failure
    // part-way (a full disk) leaves an earlier evaluation whole, not a new metrics.json beside its plot.
    let m = &ev.metrics;
    let clear = |dir: &Path, _: &Option<usize>| {
        fsutil::remove_stale_temps(&dir.join("top_losses"));
        crate::eval::explain::clear_top_losses(dir);
    };
    let top_losses = fsutil::write_set(&out, clear, |stage| {
        fsutil::write_json(
            &stage.join("metrics.json"),
            &serde_json::json!({
                // Where they are, not as given (`runs/latest` names another run tomorrow): `report` reads the run.
                "model": fsutil::absolute(&req.model), "data": fsutil::absolute(&req.data),
                "tta": if tta_flip { "flip" } else { "none" }, "metrics": m,
                // The run's own training images among the data, and how many of them were scored: a score
                // over them is not held out.
                "training_images": {"in_data": ev.overlap, "scored": ev.overlap - ev.excluded},
                // Other photos of the people it trained on, where the data is the run's own: not subject-independent.
                "training_people": {"scored": ev.trained_people.0, "people": ev.trained_people.1},
                // The data's labels as read for the run (--label-map), where given.
                "label_map": (!req.label_map.is_empty()).then(|| req.label_map.iter().map(|(d, l)| format!("{d}={l}")).collect::<Vec<_>>()),
                "threshold": cfg.threshold.as_ref().map(|t| t.describe(&cfg.classes[0], cfg.single_calibration())),
                "calibration": cfg.single_calibration().map(|c| c.describe()),
                "metrics_at_half": ev.at_half,
                "modes": modes.map(|(person, single)| serde_json::json!({"person": person, "single-image": single})),
                // How many images lay far from every training photo (the warning's count).
                "unusual": (!ev.distances.is_empty()).then(|| serde_json::json!({
                    "limit": predict::UNUSUAL,
                    "count": ev.distances.iter().filter(|&&d| predict::is_unusual(d)).count(),
                    "largest_distance": ev.distances.iter().copied().fold(0.0, f64::max),
                })),
            }),
        )?;
        crate::eval::plot::confusion(
            &stage.join("confusion.png"),
            &m.confusion,
            &cfg.classes,
            &format!("{} on {}", short_name(&req.model), short_name(&req.data)),
        )?;
        Ok(if req.top_losses > 0 {
            let tiles = stage.join("top_losses");
            fsutil::create_dir(&tiles)?;
            let paths: Vec<String> = ev.paths.iter().map(|p| p.display().to_string()).collect();
            let picked = crate::eval::explain::worst(&ev.y, &ev.probs, req.top_losses);
            let cuts: Vec<Option<f64>> = ev.modes.iter().map(|&m| cfg.threshold_for(m)).collect();
            // The rows scored with their person's statistics are explained through that head, as explain does.
            let person: Vec<Option<String>> = ev.subjects.iter().zip(&ev.modes).map(|(s, m)| s.clone().filter(|_| *m == Some(Mode::Person))).collect();
            let people = crate::eval::explain::people_of_features(&model, &ev.features, &person);
            let top = crate::eval::explain::loss_tiles(
                &cfg,
                &model,
                &ev.gray,
                &picked,
                (&paths, &ev.labels),
                &ev.y,
                (&ev.probs, &cuts),
                people.as_ref(),
                (layer, req.device),
                (&tiles, "loss"),
            )?;
            crate::eval::explain::write_top_losses(stage, &cfg.classes, &top)?;
            Some(top.len())
        } else {
            None
        })
    })?;
    Ok(Evaluated { cfg, evaluation: ev, out, tta_flip, modes, top_losses })
}

/// A path's last component (titles stay short; the full paths are in metrics.json).
fn short_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}
