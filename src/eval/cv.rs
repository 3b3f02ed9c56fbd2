//! `vggft cv`: the `finetune` recipe on every fold of a subject-grouped
//! cross-validation (leave-one-subject-out or K folds), repeated over seeds,
//! and the honest summary: per-fold table, mean ± std and a 95 % interval
//! per metric, per-subject accuracy, pooled out-of-fold confusion matrix and
//! ROC curve, the majority baseline.
//!
//! Within a fold the held-out images are never looked at during training:
//! there is no early stopping, the recipe runs its fixed epochs and the last
//! epoch is evaluated. Fold results are written one file each
//! (`folds/seed<S>-fold<F>.json`), so `--fold i` can spread folds over
//! processes and `--collect DIR` merges them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{Probe, RunConfig, Stage, TrainConfig};
use crate::data::split::{self, ValSpec};
use crate::error::{Error, Result, Setting};
use crate::eval::predict::Mode;
use crate::eval::threshold::{self, CalibrateChoice, Calibration, InnerFits, Threshold, ThresholdChoice};
use crate::eval::{self, Metrics};
use crate::eval::{features, plot};
use crate::fsutil;
use crate::model::{Block, BnMode, Vgg16};
use crate::session::Session;
use crate::train::{self, Reporter, TrainData, Trainer};
use serde::{Deserialize, Serialize};

/// Which folds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Folds {
    /// Leave one subject out.
    Loso,
    K {
        k: usize,
    },
}

impl Folds {
    pub fn parse(s: &str) -> Result<Folds> {
        if s == "loso" {
            return Ok(Folds::Loso);
        }
        let k: usize = s.parse().map_err(|_| Error::invalid(Setting::Folds, format!("`{s}`: expected loso or a number ≥ 2")))?;
        if k < 2 {
            return Err(Error::invalid(Setting::Folds, format!("must be at least 2, got {k}")));
        }
        Ok(Folds::K { k })
    }
}

/// How cv.json's protocol names folds of images, where the data names no people (`report` reads it).
pub(crate) const IMAGE_FOLDS: &str = "stratified image (no subject ids: the same person may be on both sides)";

/// `cv.json`'s recipe part: everything needed to rerun or extend it.
#[derive(Clone, Debug, Serialize, Deserialize)]

pub struct CvConfig {
    pub run: RunConfig,
    pub folds: Folds,
    pub seeds: Vec<u64>,
    /// Epochs of the head-only probe trained beside the recipe on every fold (`--baseline probe`).
    #[serde(default)]
    pub baseline: Option<usize>,
    /// That probe's learning rate (absent in older cv folders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_lr: Option<f64>,
    /// That probe's heads averaged into one (absent in older cv folders and with one head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_members: Option<usize>,
    /// Flip test-time augmentation of the test folds (`--tta`, resolved).
    #[serde(default)]
    pub tta_flip: bool,
    /// `--top-losses N`: heatmaps of the N worst test images over all folds.
    #[serde(default)]
    pub top_losses: usize,
    /// Folds per seed (0: unknown, an older cv folder): `--collect` checks
    /// that every seed × fold result is there.
    #[serde(default)]
    pub n_folds: usize,
    /// Every seed trained from one cache of the frozen trunk's outputs for
    /// the first seed's augmented views: then seeds differ in the training
    /// of what is above the cache alone.
    #[serde(default)]
    pub shared_views: bool,
}

pub struct Request {
    pub recipe: crate::config::Recipe,
    /// Set (by Ctrl-C) to stop: no fold starts after it, running folds stop
    /// after their current batch; the finished folds' files stay for a resume.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    pub folds: Folds,
    pub seeds: Vec<u64>,
    /// Run only this fold (0-based) of each seed.
    pub only_fold: Option<usize>,
    /// Also train the session's head-only probe on every fold (`--baseline probe`)…
    pub baseline: bool,
    /// …for this many epochs instead of its own.
    pub probe_epochs: Option<usize>,
    /// Flip test-time augmentation of the test folds (`None`: `eval::flip_tta`'s default).
    pub tta_flip: Option<bool>,
    /// Heatmaps of this many worst test images over all folds (0: none).
    pub top_losses: usize,
    /// Train a head-only recipe's folds side by side (`parallel_workers`).
    pub parallel_folds: bool,
    pub out: PathBuf,
    /// Write the shared pooled-feature cache here (safetensors, with the
    /// images' paths and subjects in a JSON beside it) for study scripts.
    pub dump_features: Option<PathBuf>,
    /// Read the pooled-feature cache from such a dump instead of computing
    /// it (a probe recipe on the same data, weights and seed 0's views).
    pub load_features: Option<PathBuf>,
    /// A folder of pooled-feature caches (`eval::features`): a head-only
    /// recipe's features are read back from it when an earlier cv left them
    /// for the same images and settings, and kept there otherwise (`None`: off).
    pub feature_cache: Option<PathBuf>,
}

/// One fold of one seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FoldResult {
    pub seed: u64,
    pub fold: usize,
    pub paths: Vec<String>,
    pub subjects: Vec<String>,
    pub y: Vec<i64>,
    pub probs: Vec<Vec<f64>>,
    pub metrics: Metrics,
    /// With per-subject normalisation: the single-image head on the same images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single: Option<Scores>,
    /// With `--face person`: `single` read each photo's whole frame, as
    /// `predict` frames a lone photo (folds from before this: its person's
    /// box, which flatters the head).
    #[serde(default)]
    pub single_frame: bool,
    /// With `--baseline probe`: the head-only probe on the same fold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Scores>,
    /// With per-subject normalisation: the main head with each test person's
    /// statistics from that person's images of one class at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_class: Option<Scores>,
    /// Two-class tasks with `--threshold`: what this fold's model decided at
    /// (its metrics are at it; `probs` hold the probabilities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    /// With `--calibrate inner`: this fold's calibration of the single-image
    /// head (`single.probs` are calibrated by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    pub n_train: usize,
    pub seconds: f64,
    /// This fold's candidates for `--top-losses` (tiles relative to the cv folder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<crate::eval::explain::TopLoss>,
    /// Each test image's feature distance from the fold's training photos,
    /// as `predict` gives it (empty in folds scored before vggft kept it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distances: Vec<f64>,
}

/// Probabilities and metrics of one model (or head) on a fold's test images.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scores {
    pub probs: Vec<Vec<f64>>,
    pub metrics: Metrics,
    /// The threshold on P(first class) its metrics decided at (none: the larger probability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// Mean, standard deviation and 95 % interval of one metric over folds × seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stat {
    pub metric: String,
    /// NaN (`null` in cv.json) where no fold gave the metric.
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub mean: f64,
    /// NaN (`null`) with fewer than two folds that gave it.
    #[serde(deserialize_with = "crate::eval::nan_if_null")]
    pub std: f64,
    #[serde(deserialize_with = "crate::eval::nan_pair_if_null")]
    pub ci95: (f64, f64),
    pub n: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub protocol: String,
    pub classes: Vec<String>,
    pub stats: Vec<Stat>,
    pub pooled: Metrics,
    pub per_subject: BTreeMap<String, (usize, usize)>,
    pub folds: Vec<(u64, usize, Metrics)>,
    /// Each fold's test people (in `folds`' order; empty without subject ids,
    /// and in summaries written before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fold_people: Vec<Vec<String>>,
    /// With per-subject normalisation: the single-image head on the same folds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single: Option<Alternative>,
    /// With `--baseline probe`: the head-only probe on the same folds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Alternative>,
    /// With per-subject normalisation: each test person shown with one class only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_class: Option<Alternative>,
    /// With a threshold set in training: the same models deciding by the larger probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_half: Option<Alternative>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_epochs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_members: Option<usize>,
    /// That probe decided at a threshold (set or given), not by the larger probability.
    #[serde(default)]
    pub probe_threshold: bool,
    /// Each seed's means over its folds (what one user with that seed would
    /// report), with two or more seeds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seeds: Vec<SeedMean>,
    /// Balanced accuracy over the per-seed means: their spread is how far
    /// apart two users with different seeds land.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_spread: Option<Stat>,
    /// The single-image head's figures come from photos cropped to their
    /// person's face box (`--face person`, folds scored before the whole
    /// frames, `FoldResult::single_frame`): an upper bound for a lone photo.
    #[serde(default)]
    pub person_box: bool,
    /// `--face person` with every fold's single-image head on each photo's
    /// whole frame, as predict frames a lone photo.
    #[serde(default)]
    pub single_frame: bool,
    /// How far the test photos lay from their fold's training photos: what
    /// `predict`'s warning would have said of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusual: Option<Unusual>,
}

/// The test photos' feature distances over a cross-validation's folds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Unusual {
    /// `predict::UNUSUAL`.
    pub limit: f64,
    /// Test photos above it, of `of` scored (over seeds: a photo per seed).
    pub count: usize,
    pub of: usize,
    pub largest: f64,
    /// The photo farthest from its fold's training photos.
    pub farthest: String,
}

/// One seed's figures: means over that seed's fold results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedMean {
    pub seed: u64,
    pub folds: usize,
    pub balanced_accuracy: f64,
    pub accuracy: f64,
    pub roc_auc: f64,
}

/// Another model's (or head's) results on the same folds, beside the recipe's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alternative {
    pub stats: Vec<Stat>,
    pub pooled: Metrics,
}

/// Two-sided 97.5 % quantile of Student's t for `df` degrees of freedom.
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080,
        2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 {
        f64::NAN
    } else if df <= 30 {
        T[df - 1]
    } else {
        1.96 + 2.5 / df as f64
    }
}

/// Mean ± std (sample) and the t-based 95 % interval of the mean, ignoring
/// NaN; every metric here is a proportion, so the interval is clipped to [0, 1].
pub(crate) fn stat(metric: &str, values: &[f64]) -> Stat {
    let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    let n = v.len();
    if n == 0 {
        // No fold could compute it (ROC AUC of one-class test folds): no figure, not a zero.
        return Stat { metric: metric.into(), mean: f64::NAN, std: f64::NAN, ci95: (f64::NAN, f64::NAN), n };
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { f64::NAN };
    let half = t975(n.saturating_sub(1)) * std / (n as f64).sqrt();
    Stat { metric: metric.into(), mean, std, ci95: ((mean - half).max(0.0), (mean + half).min(1.0)), n }
}

/// Runs the folds (all, or `only_fold`), writes each result, then (when
/// every fold is there) the summary.
pub fn run(req: &Request, reporter: &mut dyn Reporter) -> Result<Option<Summary>> {
    check_request(req)?;
    // Before the photos are read (and their faces found): an --out that cannot be made fails at once.
    fsutil::check_creatable(&req.out)?;
    let session = open_session(req, reporter)?;
    let probe = baseline_probe(req, &session, reporter);
    let cfg = cv_config(req, &session, probe);
    let ds = &session.prepared.dataset;
    if !ds.samples.iter().all(|s| s.subject.is_some()) {
        reporter.message(&format!(
            "no subject ids in this dataset: folds are stratified image folds (the same person may be in training and test){}",
            crate::data::scan::NO_SUBJECTS
        ));
    }
    // The folds before the cache pass (minutes at 224 px): a dataset that cannot make them fails at once.
    let mut jobs = fold_jobs(req, &session)?;
    // (was "invalid option: --data holds fewer than 2 training images", from the first such fold's training)
    if let Some(j) = jobs.iter().find(|j| ds.samples.len() - j.test.len() < 2) {
        return Err(Error::dataset(
            &ds.root,
            format!(
                "{} leaves {} training image(s), and a fold trains on at least 2: use fewer folds, or more photos",
                j.name,
                ds.samples.len() - j.test.len()
            ),
        ));
    }
    if let Some(msg) = folds_missing_a_class(&jobs, &session.prepared.labels) {
        reporter.message(&msg);
    }
    check_load_features(req, &session, probe.is_some())?;
    // One process at a time per cv folder (the same command started twice
    // would run every fold twice); `--fold i` runs share it, one per fold.
    let _lock = fsutil::create_locked(&req.out, ".lock", req.only_fold.is_some())?;
    // Said once it exists (as finetune's run folder is): a cv refused before this leaves none.
    reporter.message(&format!("cv folder: {}", req.out.display()));
    let _fold_lock = req.only_fold.map(|f| fsutil::lock_file(&req.out, &format!(".lock-fold-{f}"), false)).transpose()?;
    fsutil::remove_stale_temps(&req.out);
    if skip_finished(req, &cfg, &mut jobs, reporter)? {
        return if req.only_fold.is_some() { Ok(None) } else { collect(&req.out, false).map(Some) };
    }
    fsutil::create_dir(&req.out.join("folds"))?;
    // Mirror images for flip TTA, and for training where the recipe or its baseline probe draws clean views.
    let mirrors = cfg.tta_flip || session.config.train.clean_views || probe.is_some_and(|p| p.clean_views);
    let shared = shared_caches(req, &session, mirrors, probe.is_some(), reporter)
        .map_err(|e| e.if_interrupted(&format!("no fold had run: the same command with --out {} starts again", req.out.display())))?;
    let cfg = CvConfig { shared_views: !shared.is_empty(), ..cfg };
    fsutil::write_json(&req.out.join("cv-config.json"), &cfg)?;
    if let Some(path) = &req.dump_features {
        features::dump(path, &features::key(&session), &shared)?;
    }
    run_jobs(req, (&session, &shared), (&cfg, probe), &jobs, reporter).map_err(|e| resumable(e, &req.out))?;
    if req.only_fold.is_some() {
        return Ok(None);
    }
    collect(&req.out, false).map(Some)
}

/// The session over the cv's data (no validation split: the folds are
/// the split), once the output folder is known not to clash with it.
fn open_session(req: &Request, reporter: &mut dyn Reporter) -> Result<Session> {
    let mut data_cfg = req.recipe.data.clone();
    data_cfg.val = ValSpec::None;
    data_cfg.path = recorded_data_path(&req.out, &data_cfg.path);
    crate::data::scan::refuse_output_inside(&data_cfg.path, data_cfg.format, &req.out, "the cv's folds and plots")?;
    crate::data::scan::refuse_other_output(
        &req.out,
        "a cv folder",
        "the cv's folds, summary and plots",
        &["cv.md", "cv.json", "confusion.png", "roc.png", "folds.png", "subjects.png", "top_losses.png", "top_losses.csv"],
    )?;
    Session::open(&req.recipe, data_cfg, req.seeds[0], None, reporter)
}

/// The probe `--baseline probe` trains beside the recipe (said where the
/// recipe already is that probe).
fn baseline_probe(req: &Request, session: &Session, reporter: &mut dyn Reporter) -> Option<Probe> {
    let probe = req.baseline.then(|| {
        let p = session.probe(req.recipe.probe);
        Probe { epochs: req.probe_epochs.unwrap_or(p.epochs), ..p }
    });
    if probe.is_some_and(|p| p.is_recipe(&session.config.train)) {
        reporter.message(
            "note: the recipe trains the head alone, as the probe does: --baseline probe repeats its scores (nothing trained twice); --freeze-until conv5 makes the recipe a fine-tune to compare with the probe",
        );
    }
    probe
}

/// What `cv-config.json` records: the run's configuration with what the
/// images are (paths, labels, subjects, file sizes), so a cv resumed on
/// other data is refused, and the cv's own choices.
fn cv_config(req: &Request, session: &Session, probe: Option<Probe>) -> CvConfig {
    let ds = &session.prepared.dataset;
    let mut run_cfg = RunConfig { data_sha256: crate::run::sha256_hex(&crate::run::split_csv(&session.prepared)), ..session.config.clone() };
    if let Ok(w) = std::path::absolute(&run_cfg.weights.path) {
        run_cfg.weights.path = w;
    }
    CvConfig {
        run: run_cfg,
        folds: req.folds.clone(),
        seeds: req.seeds.clone(),
        baseline: probe.map(|p| p.epochs),
        probe_lr: probe.map(|p| p.lr),
        probe_members: probe.map(|p| p.members).filter(|&m| m > 1),
        tta_flip: eval::flip_tta(req.tta_flip, session.config.model.subject_norm == crate::subject::SubjectNormChoice::On),
        top_losses: req.top_losses,
        n_folds: match req.folds {
            Folds::Loso => ds.samples.iter().filter_map(|s| s.subject.as_deref()).collect::<std::collections::BTreeSet<_>>().len(),
            Folds::K { k } => k,
        },
        shared_views: false,
    }
}

/// A cv stopped part-way (killed, or the machine went down) and started
/// again with the same command keeps the fold results it wrote: each fold
/// draws from streams of its own, so the others do not depend on them.
/// Drops those folds from `jobs`; true when none is left to run.
fn skip_finished(req: &Request, cfg: &CvConfig, jobs: &mut Vec<Job>, reporter: &mut dyn Reporter) -> Result<bool> {
    let done = finished_folds(&req.out, cfg)?;
    if done.is_empty() {
        return Ok(false);
    }
    let before = jobs.len();
    jobs.retain(|j| !done.contains(&(j.seed, j.fold)));
    reporter.message(&format!(
        "resuming {}: {} fold result(s) of this same cv are there already (its cv-config.json matches); {} to run",
        req.out.display(),
        before - jobs.len(),
        jobs.len()
    ));
    Ok(jobs.is_empty())
}

/// Trains and scores every fold of `jobs` (side by side where
/// `parallel_workers` allows), writing each result as it comes.
fn run_jobs(
    req: &Request,
    (session, shared): (&Session, &[train::Cache]),
    (cfg, probe): (&CvConfig, Option<Probe>),
    jobs: &[Job],
    reporter: &mut dyn Reporter,
) -> Result<()> {
    let workers = parallel_workers(req, session, shared, jobs.len());
    if let Some(w) = workers.as_ref().filter(|w| w.count > 1 || w.memory.is_some()) {
        reporter.message(&format!(
            "training {} fold(s) at a time, each on one core (a head-only recipe on the cached features: its folds' numbers do not depend on the thread count){}",
            w.count,
            w.memory.map(|(fold, free)| format!("; memory: ~{} MiB a fold, {} MiB available", fold >> 20, free >> 20)).unwrap_or_default()
        ));
    }
    let (total, side_by_side) = (jobs.len(), workers.as_ref().map_or(1, |w| w.count));
    let (mut done, mut fold_seconds) = (0usize, 0.0);
    let mut finished = |job: &Job, r: &FoldResult| -> Result<()> {
        done += 1;
        fold_seconds += r.seconds;
        let left = total - done;
        let eta =
            if left > 0 { format!(", about {:.0}s left ({left} fold(s))", folds_left_seconds(fold_seconds, done, left, side_by_side)) } else { String::new() };
        reporter.message(&fold_line(job, r, &cfg.run.classes[0], &eta));
        fsutil::write_json(&req.out.join("folds").join(format!("seed{}-fold{}.json", job.seed, job.fold)), r)
    };
    let read = ReadOnly(session, shared);
    let stopped = || req.stop.as_deref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
    let fold = |job: &Job| {
        if stopped() {
            return Err(Error::Interrupted(String::new()));
        }
        read.fold(req, job, (cfg.tta_flip, probe))
    };
    match workers {
        Some(w) => in_parallel(w.count, jobs, fold, &mut finished),
        None => {
            // Every fold draws from a stream of its own, as on the parallel path: the same training gives the
            // same numbers on either (a fine-tune's `--baseline probe` and that probe as the recipe).
            let _own = crate::model::own_stream();
            jobs.iter().try_for_each(|job| finished(job, &fold(job)?))
        }
    }
}

/// Refuses what no fold could run with: no seeds, a seed given twice (it
/// repeats its folds exactly: counted twice, it would narrow the spread
/// over seeds), a zero-epoch probe.
fn check_request(req: &Request) -> Result<()> {
    if req.seeds.is_empty() {
        return Err(Error::invalid(Setting::Seeds, "is empty"));
    }
    if let Some(s) = req.seeds.iter().enumerate().find_map(|(i, s)| req.seeds[..i].contains(s).then_some(s)) {
        return Err(Error::invalid(Setting::Seeds, format!("gives seed {s} twice (the same seed repeats the same folds and training exactly)")));
    }
    if req.probe_epochs == Some(0) {
        return Err(Error::invalid(Setting::ProbeEpochs, "must be at least 1"));
    }
    Ok(())
}

/// Every (seed, fold) to run, in order (only `--fold i`'s where given).
fn fold_jobs(req: &Request, session: &Session) -> Result<Vec<Job>> {
    let ds = &session.prepared.dataset;
    let mut jobs = Vec::new();
    for &seed in &req.seeds {
        let folds = test_folds(&req.folds, session, seed)?;
        if let Some(f) = req.only_fold {
            if f >= folds.len() {
                return Err(Error::invalid(Setting::Fold, format!("{f}: there are {} folds (0–{})", folds.len(), folds.len() - 1)));
            }
        }
        jobs.extend(folds.into_iter().enumerate().filter(|(fi, _)| req.only_fold.is_none_or(|f| f == *fi)).map(|(fi, test)| Job {
            name: fold_name(seed, fi, &test, ds),
            seed,
            fold: fi,
            test,
        }));
    }
    Ok(jobs)
}

/// The progress line of a finished fold: its scores (and its side heads'),
/// its time, and `eta` (the time left, or nothing after the last).
fn fold_line(job: &Job, r: &FoldResult, first_class: &str, eta: &str) -> String {
    let side: String = [("single-image head", &r.single), ("probe", &r.baseline)]
        .iter()
        .filter_map(|(what, s)| s.as_ref().map(|s| format!(", {what} {:.3}", s.metrics.balanced_accuracy)))
        .collect();
    let threshold = r.threshold.as_ref().map(|t| format!(" (threshold on P({first_class}) {:.3})", t.person)).unwrap_or_default();
    format!(
        "{}: {} test images, balanced accuracy {:.3}{side}, accuracy {:.3}, {:.1}s{eta}{threshold}",
        job.name,
        job.test.len(),
        r.metrics.balanced_accuracy,
        r.metrics.accuracy,
        r.seconds
    )
}

/// A cv that stopped part-way (Ctrl-C, or a fold result that could not be
/// written: a full disk) says that its finished folds are kept in `out`
/// and how to run the rest.
fn resumable(e: Error, out: &Path) -> Error {
    match e {
        Error::Interrupted(_) => Error::Interrupted(format!(
            "the finished folds are kept in {}; the same command with --out {} runs the rest",
            out.join("folds").display(),
            out.display()
        )),
        Error::File { path, problem } if path.starts_with(out) && problem.starts_with("cannot ") => Error::File {
            problem: format!(
                "{problem}; the finished folds are kept in {}: make room, then the same command with --out {} runs the rest",
                out.join("folds").display(),
                out.display()
            ),
            path,
        },
        other => other,
    }
}

/// The data path a cv reads and records: canonical, so that the same cv
/// started again from another folder, or with the path spelt another way,
/// is known as the same (its image paths are part of its identity). A cv
/// folder that recorded the path relative (before 2026-12-05) keeps that
/// spelling where it names the same folder. A path that does not resolve is
/// left as given, for the scan to name.
fn recorded_data_path(out: &Path, given: &Path) -> PathBuf {
    let Ok(canonical) = std::fs::canonicalize(given) else {
        return given.to_path_buf();
    };
    let earlier = std::fs::read_to_string(out.join("cv-config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.pointer("/run/data/path")?.as_str().map(PathBuf::from));
    match earlier {
        Some(p) if p.is_relative() && std::fs::canonicalize(&p).is_ok_and(|c| c == canonical) => p,
        _ => canonical,
    }
}

/// The (seed, fold) results an earlier start of this same cv left in `out`;
/// refuses a folder that holds another cv's (its fold files would be merged
/// into this one's summary).
fn finished_folds(out: &Path, cfg: &CvConfig) -> Result<std::collections::BTreeSet<(u64, usize)>> {
    let cfg_path = out.join("cv-config.json");
    let fdir = out.join("folds");
    let has_results = std::fs::read_dir(&fdir).is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))));
    if !fsutil::exists(&cfg_path)? {
        if has_results {
            return Err(Error::file(&fdir, "holds fold results but its cv-config.json is gone: give another --out, or remove the folder"));
        }
        return Ok(Default::default());
    }
    // What may differ between two starts of one cv: when each started, whether its folds share one cache,
    // and seeds appended to the list (checked below).
    let comparable = |mut v: serde_json::Value| {
        if let Some(o) = v.as_object_mut() {
            o.remove("shared_views");
            o.remove("seeds");
            if let Some(r) = o.get_mut("run").and_then(|r| r.as_object_mut()) {
                r.remove("created");
                // The weights are known by their SHA-256 (their path was recorded relative before 2026-12-05).
                if let Some(w) = r.get_mut("weights").and_then(|w| w.as_object_mut()) {
                    w.remove("path");
                }
            }
        }
        v
    };
    let s = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let old = comparable(serde_json::from_str(&s).map_err(|e| Error::file(&cfg_path, format!("is not a vggft cv config: {e}")))?);
    // Through text, as the file was written (an f32 becomes another f64 by `to_value`).
    let text = serde_json::to_string(cfg).map_err(|e| Error::file(&cfg_path, e.to_string()))?;
    let new = comparable(serde_json::from_str(&text).map_err(|e| Error::file(&cfg_path, e.to_string()))?);
    if old != new {
        let (mut was, mut is) = (BTreeMap::new(), BTreeMap::new());
        crate::eval::report::flatten("", &old, &mut was);
        crate::eval::report::flatten("", &new, &mut is);
        let keys: Vec<String> =
            was.keys().chain(is.keys()).filter(|k| was.get(*k) != is.get(*k)).cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        return Err(Error::file(
            out,
            format!(
                "holds another cross-validation (its cv-config.json differs in {}): give another --out, or remove the folder to start over",
                crate::error::short_list(&keys, 5)
            ),
        ));
    }
    // More seeds for the same cv: the earlier ones first, in their order, so
    // that the first seed (whose views a shared cache holds) stays the same
    // and the folder equals a cv of the longer list run from the start.
    let old_seeds: Vec<u64> = serde_json::from_str::<serde_json::Value>(&s)
        .ok()
        .and_then(|v| v.get("seeds").and_then(|x| serde_json::from_value(x.clone()).ok()))
        .ok_or_else(|| Error::file(&cfg_path, "is not a vggft cv config: no seeds"))?;
    if !cfg.seeds.starts_with(&old_seeds) {
        let list = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let more = cfg.seeds.iter().filter(|x| !old_seeds.contains(x)).copied().collect::<Vec<_>>();
        let example = if more.is_empty() { format!("{},N", list(&old_seeds)) } else { list(&[old_seeds.clone(), more].concat()) };
        return Err(Error::file(
            out,
            format!(
                "holds this cross-validation with --seeds {}: to add seeds give that list first (--seeds {example}), or give another --out",
                list(&old_seeds)
            ),
        ));
    }
    let mut done = std::collections::BTreeSet::new();
    for &seed in &cfg.seeds {
        for fold in 0..cfg.n_folds {
            let p = fdir.join(format!("seed{seed}-fold{fold}.json"));
            // A file that does not read back as this fold's result is run again (and overwritten).
            let ok =
                std::fs::read_to_string(&p).ok().and_then(|s| serde_json::from_str::<FoldResult>(&s).ok()).is_some_and(|r| r.seed == seed && r.fold == fold);
            if ok {
                done.insert((seed, fold));
            }
        }
    }
    Ok(done)
}

/// A warning naming the folds whose training images hold no image of some
/// class (leave-one-subject-out where the test person is the only one
/// photographed with it): their models cannot answer that class, which
/// their figures will show. Said before the training, not after.
fn folds_missing_a_class(jobs: &[Job], labels: &crate::data::split::Labels) -> Option<String> {
    let all = labels.counts();
    let missing: Vec<String> = jobs
        .iter()
        .filter_map(|j| {
            // The training side of the fold is every image but its test ones.
            let mut left = all.clone();
            j.test.iter().for_each(|&i| left[labels.targets[i] as usize] -= 1);
            let absent: Vec<&str> = labels.classes.iter().zip(&left).filter(|(_, &n)| n == 0).map(|(c, _)| c.as_str()).collect();
            (!absent.is_empty()).then(|| format!("{}: no {}", j.name, absent.join(", ")))
        })
        .collect();
    (!missing.is_empty()).then(|| {
        let more = if missing.len() > 3 { format!(", and {} more", missing.len() - 3) } else { String::new() };
        format!(
            "warning: in {} fold(s) the training images hold no image of a class, which those folds' models then never answer ({}{more})",
            missing.len(),
            missing[..missing.len().min(3)].join("; ")
        )
    })
}

/// One fold of one seed to run: its test rows, and its name in messages.
struct Job {
    name: String,
    seed: u64,
    fold: usize,
    test: Vec<usize>,
}

/// A fold as messages name it: numbered from 0, as `--fold`, the fold
/// files, `cv.md` and `folds.png` number it, with its test people (up to 3)
/// where the dataset has subject ids — "seed 0 fold 2 (CK)".
fn fold_name(seed: u64, fold: usize, test: &[usize], ds: &crate::data::scan::Dataset) -> String {
    let people = distinct(test.iter().filter_map(|&i| ds.samples[i].subject.as_deref()));
    match people.len() {
        0 => format!("seed {seed} fold {fold}"),
        _ => format!("seed {seed} fold {fold} ({})", crate::error::short_list(&people, 3)),
    }
}

/// The distinct non-empty names among `names`, sorted: a fold's test people.
fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    names.filter(|s| !s.is_empty()).map(String::from).collect::<std::collections::BTreeSet<_>>().into_iter().collect()
}

/// How many folds train at once, each on one core, when every fit of the
/// fold is a head trained from the shared cache on the CPU (`None`: one after
/// another, each with libtorch's threads). Such a fit is many small,
/// memory-bound operations that two threads share badly: ten folds two at a
/// time on one core each took 82 s against 116 s one at a time on two cores
/// (JAFFE-format set, the default 5-head probe with its inner fits; ~350
/// MiB more memory per extra fold, `fold_bytes`). One core per fold also makes a fold's
/// numbers independent of the machine's thread count (and of how many
/// folds run beside it: nothing a fold draws comes from a generator another
/// fold draws from without the lock). `--parallel-folds false` turns it off.
fn parallel_workers(req: &Request, session: &Session, shared: &[train::Cache], jobs: usize) -> Option<Workers> {
    // (The baseline probe always trains the head alone.)
    let head_only = session.config.train.head_only();
    if !(req.parallel_folds && session.device == tch::Device::Cpu && head_only && !shared.is_empty() && req.top_losses == 0 && jobs > 0) {
        return None;
    }
    // What each model reads of the weights file: a new head leaves torchvision's 411 MB fc6 unread.
    let w = &session.config.weights.path;
    let weights = crate::model::weights::pretrained_bytes(w, session.config.model.head).unwrap_or_else(|| std::fs::metadata(w).map_or(0, |m| m.len()));
    let fold = fold_bytes(shared.iter().map(train::Cache::bytes).sum(), weights);
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1);
    Some(workers(threads, jobs, fold, available_memory()))
}

/// How many folds train side by side (`count`), and, where memory held it
/// below the thread count, the estimated bytes of one fold and the bytes
/// available.
struct Workers {
    count: usize,
    memory: Option<(u64, u64)>,
}

/// `threads` folds at a time (at most `jobs`), fewer where that many would
/// take more than half the memory available now (`available`; no bound when
/// unknown): a machine with many cores and a large dataset would otherwise
/// run out of memory mid-cv.
fn workers(threads: usize, jobs: usize, fold: u64, available: Option<u64>) -> Workers {
    let count = threads.clamp(1, jobs.max(1));
    match available {
        Some(free) if count as u64 * fold > free / 2 => {
            Workers { count: usize::try_from(free / 2 / fold.max(1)).unwrap_or(1).clamp(1, count), memory: Some((fold, free)) }
        }
        _ => Workers { count, memory: None },
    }
}

/// Memory one fold takes while it trains beside others, estimated: each fit
/// holds the cache's rows twice more (the clean views appended, every view
/// standardised per person), two networks at a time (the fold's model and
/// an inner fit's, each with what it reads of the weights file) and ~160 MiB of working
/// memory. Measured one core per fold (JAFFE-format set, 210 images, a
/// 56 MiB weights file): ~350 MiB for each fold beside the first with a
/// 54 MiB cache (estimate 380), 265 MiB with a 10 MiB cache (estimate 292).
fn fold_bytes(cache: u64, weights: u64) -> u64 {
    2 * cache + 2 * weights + (160 << 20)
}

/// `MemAvailable` of `/proc/meminfo` in bytes (`None` where there is none:
/// not Linux, or a kernel without it).
fn available_memory() -> Option<u64> {
    mem_available_in(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn mem_available_in(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The session and the shared cache, read by the fold threads.
struct ReadOnly<'a>(&'a Session, &'a [train::Cache]);

// SAFETY: the fold threads only read these tensors (new tensors come from
// them; none is written in place) and libtorch's reference counts are atomic;
// the rest of a Session is plain data. What draws from libtorch's one random
// generator is serialised (`model::seeded`), and each fold thread draws from
// a stream of its own (`model::own_stream`).
unsafe impl Sync for ReadOnly<'_> {}

impl ReadOnly<'_> {
    fn fold(&self, req: &Request, job: &Job, (tta_flip, probe): (bool, Option<Probe>)) -> Result<FoldResult> {
        run_fold(req, self.0, self.1, (job.seed, job.fold, tta_flip, probe), &job.test)
    }
}

impl Probe {
    /// The training of the probe beside a recipe trained as `recipe`.
    fn train_config(&self, recipe: &TrainConfig) -> TrainConfig {
        TrainConfig {
            stages: vec![Stage { from: Block::Head, epochs: self.epochs }],
            lr: self.lr,
            members: self.members,
            threshold: self.threshold,
            clean_views: self.clean_views,
            weight_decay: self.weight_decay,
            // Only its main head is reported.
            calibrate: CalibrateChoice::Off,
            ..recipe.clone()
        }
    }

    /// Whether the recipe trained as `recipe` already is this probe: its scores are the probe's.
    fn is_recipe(&self, recipe: &TrainConfig) -> bool {
        let p = self.train_config(recipe);
        (&p.stages, p.lr, p.members, p.threshold, p.clean_views, p.weight_decay)
            == (&recipe.stages, recipe.lr, recipe.members, recipe.threshold, recipe.clean_views, recipe.weight_decay)
    }
}

/// Runs `fold` on every job with `workers` threads of one libtorch core
/// each, handing each result to `finished` (on this thread, as they come).
/// The first error stops the workers from taking more jobs and is returned
/// once the running ones end.
fn in_parallel<J: Sync, T: Send>(
    workers: usize,
    jobs: &[J],
    fold: impl Fn(&J) -> Result<T> + Sync,
    finished: &mut dyn FnMut(&J, &T) -> Result<()>,
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let threads = tch::get_num_threads();
    let (next, stop) = (AtomicUsize::new(0), AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<T>)>();
    let outcome = std::thread::scope(|scope| {
        for _ in 0..workers {
            let (tx, next, stop, fold) = (tx.clone(), &next, &stop, &fold);
            scope.spawn(move || {
                // libtorch's thread count is per calling thread (OpenMP); a new thread starts from the process's.
                tch::set_num_threads(1);
                let _own = crate::model::own_stream();
                while !stop.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(i) else { break };
                    let r = fold(job);
                    if r.is_err() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut first_error = None;
        for (i, r) in rx {
            match r.and_then(|r| finished(&jobs[i], &r)) {
                Ok(()) => {}
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    });
    tch::set_num_threads(threads);
    outcome
}

/// Wall seconds the `left` folds will take: the finished folds' mean time,
/// shared by the folds that run side by side. (The wall time so far over the
/// folds done counted the side-by-side folds twice at the first results.)
fn folds_left_seconds(fold_seconds: f64, done: usize, left: usize, side_by_side: usize) -> f64 {
    fold_seconds / done.max(1) as f64 * left as f64 / side_by_side.max(1) as f64
}

/// Whether `--load-features` can be used: head-only stages and a file that
/// is there (checked before the cv folder is made).
fn check_load_features(req: &Request, session: &Session, baseline: bool) -> Result<()> {
    let Some(path) = &req.load_features else { return Ok(()) };
    if !session.config.train.head_only() || baseline || req.recipe.model.bn == BnMode::Recalibrate {
        return Err(Error::invalid(
            Setting::Stages,
            "must all be head-only to train from a saved feature cache (no fine-tune, no --baseline probe, no --bn recalibrate)",
        ));
    }
    // A missing file in the OS's words; a folder for what it is (the reader would call it no weights file).
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::file(path, "is a folder: give the .safetensors file that `cv --dump-features` wrote"));
    }
    // A file cut short or no safetensors at all, from its header against its size.
    match crate::model::weights::header_problem(path) {
        Some(why) => Err(Error::file(path, why)),
        None => Ok(()),
    }
}

/// The frozen prefix does not depend on the fold when BN statistics are not
/// re-estimated: computed once for all folds and seeds (with the later
/// stages' freeze points derived from it).
fn shared_caches(req: &Request, session: &Session, mirrors: bool, baseline: bool, reporter: &mut dyn Reporter) -> Result<Vec<train::Cache>> {
    let recalibrate = req.recipe.model.bn == BnMode::Recalibrate;
    let (pre, device) = (&session.config.data.preprocess, session.device);
    if let Some(path) = &req.load_features {
        check_load_features(req, session, baseline)?;
        let c = features::load(path, &features::key(session), session, None, session.config.train.clean_views)?;
        reporter.message(&format!("pooled features from {} (not recomputed)", path.display()));
        session.notes(reporter);
        return Ok(vec![c]);
    }
    if recalibrate {
        reporter.message("frozen-prefix cache per fold: --bn recalibrate re-estimates statistics on each fold's training images");
        // (Each fold loads the weights; the trunk's passes are the folds'.)
        session.advise(reporter);
        return Ok(vec![]);
    }
    // The feature cache holds a head-only recipe's one cache (in float32, as dumps do).
    let head_only = session.config.train.head_only() && !baseline && !session.config.train.cache_f16;
    let entry = req.feature_cache.as_deref().filter(|_| head_only).and_then(|dir| features::Entry::new(dir, session, None, mirrors));
    if let Some(c) = entry.as_ref().and_then(|e| e.read_said(session, reporter, "an earlier cv's pass over the same images, weights and settings")) {
        session.notes(reporter);
        return Ok(vec![c]);
    }
    let (base_model, _) = session.fresh_model(session.config.train.seed as i64, true)?;
    session.advise(reporter);
    let from = session.config.train.stages.iter().map(|s| s.from).min().unwrap_or(Block::Head);
    let n_all = session.prepared.dataset.samples.len();
    let t0 = Instant::now();
    let all: Vec<usize> = (0..n_all).collect();
    let data = &session.prepared.data;
    let mut pass = train::Pass::new(reporter, req.stop.as_deref());
    let (c, views) =
        match train::plan_and_build(&base_model, &session.config.train, pre, (&data.gray, data.lone.as_ref()), from, (&all, &all), mirrors, device, &mut pass)?
        {
            Ok(built) => built,
            Err(why) => {
                reporter.message(&format!("frozen-prefix cache {why}"));
                return Ok(vec![]);
            }
        };
    // Later stages' freeze points too (e.g. the head-only warm-up's conv5 output):
    // the folds use them while those blocks still hold the pretrained weights.
    let probe = baseline.then_some(Block::Head);
    let mut points: Vec<Block> = session.config.train.stages.iter().map(|s| s.from).chain(probe).filter(|&b| b > from).collect();
    points.sort_unstable();
    points.dedup();
    let mut caches: Vec<train::Cache> = points.iter().map(|&b| train::derive_cache(&base_model, &c, b)).collect();
    caches.insert(0, c);
    reporter.message(&format!(
        "cached the frozen {}{} once for every fold and seed: {views} view(s) of {n_all} images{}{}, in {:.1}s",
        train::holds(from),
        points.iter().map(|&b| format!(" (and the {})", train::holds(b))).collect::<String>(),
        if mirrors { " and their mirror images" } else { "" },
        if session.prepared.data.lone.is_some() { ", and each one's whole frame for the single-image head (as predict frames a lone photo)" } else { "" },
        t0.elapsed().as_secs_f64()
    ));
    if let Some(e) = &entry {
        e.keep(&caches, reporter, "the next cv on the same images and settings");
    }
    Ok(caches)
}

/// Each fold's test rows for one seed (sorted).
fn test_folds(folds: &Folds, session: &Session, seed: u64) -> Result<Vec<Vec<usize>>> {
    let ds = &session.prepared.dataset;
    match folds {
        Folds::Loso => {
            let subjects: Vec<String> =
                ds.samples.iter().map(|s| s.subject.clone().unwrap_or_default()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            if subjects.iter().any(String::is_empty) {
                return Err(Error::dataset(
                    &ds.root,
                    "--folds loso needs subject ids for every image (JAFFE file names, a `subject` column in a manifest.csv, or --subject-pattern REGEX on the file names); without them --folds K makes K image folds",
                ));
            }
            if subjects.len() < 2 {
                return Err(Error::dataset(
                    &ds.root,
                    format!("--folds loso needs at least two subjects, and every image is of `{}`", subjects.first().map_or("", String::as_str)),
                ));
            }
            Ok(subjects.iter().map(|s| (0..ds.samples.len()).filter(|&i| ds.samples[i].subject.as_deref() == Some(s)).collect()).collect())
        }
        Folds::K { k } => split::kfold(ds, &session.prepared.labels, *k, seed),
    }
}

/// Trains the recipe (and the probe) on one fold and scores its test rows.
fn run_fold(
    req: &Request,
    session: &Session,
    shared: &[train::Cache],
    (seed, fi, tta_flip, probe): (u64, usize, bool, Option<Probe>),
    test: &[usize],
) -> Result<FoldResult> {
    let t0 = Instant::now();
    let (ds, labels) = (&session.prepared.dataset, &session.prepared.labels);
    let train: Vec<usize> = (0..ds.samples.len()).filter(|i| test.binary_search(i).is_err()).collect();
    let data = session.train_data(train, vec![]);
    let tc = TrainConfig { seed, ..session.config.train.clone() };
    let y: Vec<i64> = test.iter().map(|&i| labels.targets[i]).collect();
    let fold = Fold { session, data: &data, test, y: &y, shared, tta_flip, stop: req.stop.as_deref() };
    let (main, model, InnerFits { threshold, calibration }) = fold.train_and_score(&tc)?;
    // How far each test photo lies from the fold's training photos, as `predict` would say (the recipe's model).
    let distances = fold.trainer(&tc).distances(&model, shared.first(), test);
    let top = if req.top_losses > 0 { top_losses(req, session, &model, (seed, fi), test, &y, (&main.main.probs, main.main.threshold))? } else { vec![] };
    drop(model);
    let baseline = match probe {
        // The recipe already is that probe (the default with person statistics): the same training, so its scores.
        Some(p) if p.is_recipe(&tc) => Some(main.main.clone()),
        Some(p) => Some(fold.train_and_score(&p.train_config(&tc))?.0.main),
        None => None,
    };
    Ok(FoldResult {
        seed,
        fold: fi,
        paths: test.iter().map(|&i| ds.samples[i].path.display().to_string()).collect(),
        subjects: test.iter().map(|&i| ds.samples[i].subject.clone().unwrap_or_default()).collect(),
        y,
        probs: main.main.probs,
        metrics: main.main.metrics,
        single_frame: main.single.is_some() && data.lone.is_some(),
        single: main.single,
        baseline,
        one_class: main.one_class,
        threshold,
        calibration,
        n_train: data.train.len(),
        seconds: t0.elapsed().as_secs_f64(),
        top,
        distances,
    })
}

/// This fold's `--top-losses` candidates, with their heatmap tiles.
fn top_losses(
    req: &Request,
    session: &Session,
    model: &Vgg16,
    (seed, fi): (u64, usize),
    test: &[usize],
    y: &[i64],
    (probs, threshold): (&[Vec<f64>], Option<f64>),
) -> Result<Vec<crate::eval::explain::TopLoss>> {
    let ds = &session.prepared.dataset;
    let rows = tch::Tensor::from_slice(&test.iter().map(|&i| i as i64).collect::<Vec<_>>());
    // Each test photo explained through the head that scored it, on the images as it reads them: a person's
    // photos through the person-normalised head (that person's statistics among the test photos), others alone.
    let data = &session.prepared.data;
    let keys: Vec<Option<String>> = if model.cfg.subject_norm { test.iter().map(|&i| ds.samples[i].subject.clone()).collect() } else { vec![None; test.len()] };
    let modes = crate::eval::predict::modes_of(&keys);
    let person: Vec<Option<String>> = keys.iter().zip(&modes).map(|(k, m)| k.clone().filter(|_| *m == crate::eval::predict::Mode::Person)).collect();
    let alone: Vec<i64> = (0..test.len()).filter(|&k| person[k].is_none()).map(|k| k as i64).collect();
    let mut gray = data.gray.index_select(0, &rows);
    if let (Some(lone), false) = (&data.lone, alone.is_empty()) {
        let at = tch::Tensor::from_slice(&alone);
        gray = gray.index_copy(0, &at, &lone.index_select(0, &rows).index_select(0, &at));
    }
    let people = crate::eval::explain::people_of(model, &session.config, &gray, &person);
    let paths: Vec<String> = test.iter().map(|&i| ds.samples[i].path.display().to_string()).collect();
    let labels: Vec<String> = test.iter().map(|&i| ds.samples[i].label.clone()).collect();
    let picked = crate::eval::explain::worst(y, probs, req.top_losses);
    let tiles = req.out.join("folds").join("top");
    fsutil::create_dir(&tiles)?;
    let mut top = crate::eval::explain::loss_tiles(
        &session.config,
        model,
        &gray,
        &picked,
        (&paths, &labels),
        y,
        (probs, &vec![threshold; probs.len()]),
        people.as_ref(),
        (session.config.model.last_feature_block(), session.device),
        (&tiles, &format!("seed{seed}-fold{fi}")),
    )?;
    for t in &mut top {
        t.tile = t.tile.strip_prefix(&req.out).map(Path::to_path_buf).unwrap_or_else(|_| t.tile.clone());
    }
    Ok(top)
}

/// One fold: the training rows (in `data`), the test rows and their task classes.
struct Fold<'a> {
    session: &'a Session,
    data: &'a TrainData,
    test: &'a [usize],
    y: &'a [i64],
    shared: &'a [train::Cache],
    tta_flip: bool,
    stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl Fold<'_> {
    /// Trains a fresh model with `tc` and scores the test rows (and, for a
    /// subject-normalised model, its single-image head and each test person
    /// shown with one class only).
    /// With `--threshold inner` the threshold (and with `--calibrate inner`
    /// the single-image head's calibration) comes from an inner
    /// cross-validation over this fold's training people alone.
    fn train_and_score(&self, tc: &TrainConfig) -> Result<(train::Scored<Scores>, Vgg16, InnerFits)> {
        let run = &self.session.config;
        let (mut model, _) = self.session.fresh_model(tc.seed as i64, true)?;
        self.session.recalibrate(&mut model, &self.data.train)?;
        let trainer = self.trainer(tc);
        trainer.run(&mut model, &mut train::Collect::default(), None)?;
        let mut fits = if tc.inner_fits() {
            threshold::inner_fits(self.session, tc, self.data, self.shared, self.tta_flip, self.stop)?.unwrap_or_default()
        } else {
            InnerFits::default()
        };
        if let ThresholdChoice::Fixed(t) = tc.threshold {
            fits.threshold = Some(Threshold::fixed(t));
        }
        let score = |logits: &tch::Tensor, mode: Mode| {
            let mut probs = crate::run::rows(&run.task_probs(logits));
            let t = fits.threshold.as_ref().map(|t| t.for_mode(Some(mode)));
            if let (Mode::Single, Some(c)) = (mode, &fits.calibration) {
                c.apply_rows(&mut probs);
            }
            Scores { metrics: eval::metrics_at(self.y, &probs, &run.classes, |_| t), probs, threshold: t }
        };
        let s = trainer.scores(&model, self.shared.first(), self.test, self.tta_flip, Some(self.y));
        let scored = train::Scored {
            main: score(&s.main, Mode::Person),
            single: s.single.as_ref().map(|l| score(l, Mode::Single)),
            one_class: s.one_class.as_ref().map(|l| score(l, Mode::Person)),
        };
        Ok((scored, model, fits))
    }

    /// This fold's trainer with `tc` (the model it trains keeps its training
    /// photos' feature statistics, for the test photos' distances).
    fn trainer<'t>(&'t self, tc: &'t TrainConfig) -> Trainer<'t> {
        Trainer {
            cfg: tc,
            pre: &self.session.config.data.preprocess,
            data: self.data,
            device: self.session.device,
            checkpoint_dir: None,
            stop: self.stop,
            shared: self.shared,
            keep_stats: true,
        }
    }
}

/// Merges every `folds/*.json` of a cv folder into `cv.json`, `cv.md` and plots.
pub fn collect(dir: &Path, partial: bool) -> Result<Summary> {
    let cfg_path = dir.join("cv-config.json");
    if !fsutil::exists(dir)? {
        return Err(Error::file(dir, "does not exist: give the folder a cv wrote into (its --out)"));
    }
    if dir.is_dir() && !fsutil::exists(&cfg_path)? {
        return Err(Error::file(dir, "is not a vggft cv folder (it has no cv-config.json, which `vggft cv --out DIR` writes first)"));
    }
    let cfg: CvConfig = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?)
        .map_err(|e| Error::file(&cfg_path, format!("is not a vggft cv config: {e}")))?;
    let (results, missing) = read_results(dir, &cfg, partial)?;
    let summary = summarise(&cfg, &results, &missing);
    write_outputs(dir, &cfg, &summary, &results)?;
    Ok(summary)
}

/// Every fold result of a cv folder, sorted, and the seed × fold results
/// missing (refused unless `partial`).
fn read_results(dir: &Path, cfg: &CvConfig, partial: bool) -> Result<(Vec<FoldResult>, Vec<String>)> {
    let fdir = dir.join("folds");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&fdir).map_err(|e| Error::io(&fdir, e))?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
    files.sort();
    let mut results: Vec<FoldResult> = files
        .iter()
        .map(|p| -> Result<FoldResult> {
            let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            serde_json::from_str(&s).map_err(|e| Error::file(p, format!("is not a fold result: {e}")))
        })
        .collect::<Result<_>>()?;
    if results.is_empty() {
        return Err(Error::file(&fdir, "holds no fold results"));
    }
    for (r, p) in results.iter().zip(&files) {
        r.check(cfg.run.classes.len()).map_err(|why| Error::file(p, format!("is not a fold result of this cv: {why}")))?;
    }
    // A copy of a fold's file (`seed0-fold0 copy.json`) would count its fold twice.
    let mut seen: BTreeMap<(u64, usize), &PathBuf> = BTreeMap::new();
    for (r, p) in results.iter().zip(&files) {
        if let Some(first) = seen.insert((r.seed, r.fold), p) {
            return Err(Error::file(p, format!("holds seed {} fold {}, as {} does: one of them is a copy; remove it", r.seed, r.fold, first.display())));
        }
    }
    results.sort_by_key(|r| (r.seed, r.fold));
    let stray: Vec<String> =
        // (An older cv folder's count is unknown, 0: its folds are not checked against it.)
        results.iter().filter(|r| !cfg.seeds.contains(&r.seed) || (cfg.n_folds > 0 && r.fold >= cfg.n_folds)).map(|r| format!("seed {} fold {}", r.seed, r.fold)).collect();
    if !stray.is_empty() {
        return Err(Error::file(
            &fdir,
            format!("holds fold results that are not of this cv (seeds {:?}, {} folds): {}", cfg.seeds, cfg.n_folds, crate::error::short_list(&stray, 5)),
        ));
    }
    // Every fold result once (refused above otherwise): the folds there are.
    let have = seen;
    let missing: Vec<String> = cfg
        .seeds
        .iter()
        .flat_map(|&s| (0..cfg.n_folds).map(move |f| (s, f)))
        .filter(|k| !have.contains_key(k))
        .map(|(s, f)| format!("seed {s} fold {f}"))
        .collect();
    if !missing.is_empty() && !partial {
        return Err(Error::file(
            &fdir,
            format!(
                "holds {} of {} fold results; missing: {} (run each with `vggft cv … --fold F --out {}`, or merge what is there with --collect {} --partial)",
                have.len(),
                cfg.seeds.len() * cfg.n_folds,
                crate::error::short_list(&missing, 8),
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok((results, missing))
}

impl FoldResult {
    /// Whether its parts fit together and the cv's `classes`: a fold file
    /// edited, or copied from another cv, is refused rather than summarised (a
    /// true class past the classes panicked the summary; rows of another
    /// length were pooled as they were).
    fn check(&self, classes: usize) -> std::result::Result<(), String> {
        let n = self.y.len();
        if self.paths.len() != n || self.subjects.len() != n || self.probs.len() != n {
            return Err(format!(
                "{} paths, {} subject ids, {n} true classes and {} rows of probabilities, where each image has one of each",
                self.paths.len(),
                self.subjects.len(),
                self.probs.len()
            ));
        }
        if let Some(c) = self.y.iter().find(|&&c| c < 0 || c as usize >= classes) {
            return Err(format!("a true class {c}, where this cv's classes are 0 to {}", classes.saturating_sub(1)));
        }
        // Sums of softmax outputs may pass 1 by a rounding.
        let prob = |p: &f64| (-1e-6..=1.0 + 1e-6).contains(p);
        let rows = |what: &str, probs: &[Vec<f64>]| match probs.iter().find(|r| r.len() != classes || !r.iter().all(prob)) {
            _ if probs.len() != n => Err(format!("{what}: {} rows of probabilities for {n} images", probs.len())),
            Some(r) => Err(format!("{what}: a row of probabilities {r:?}, where each row holds this cv's {classes} classes' probabilities, each in [0, 1]")),
            None => Ok(()),
        };
        // The summary's means are of the metrics as stored: each a fraction (or NaN, `null`: undefined) of this fold's images.
        let scored = |what: &str, m: &Metrics| {
            let values =
                [("accuracy", m.accuracy), ("balanced_accuracy", m.balanced_accuracy), ("roc_auc", m.roc_auc), ("majority_baseline", m.majority_baseline)];
            match values.iter().find(|(_, v)| !(v.is_nan() || (0.0..=1.0).contains(v))) {
                _ if m.n != n => Err(format!("{what}: metrics of {} images, where the fold holds {n}", m.n)),
                Some((name, v)) => Err(format!("{what}: {name} {v}, where each metric lies in [0, 1]")),
                None => Ok(()),
            }
        };
        rows("probs", &self.probs)?;
        scored("metrics", &self.metrics)?;
        for (what, s) in [("single", &self.single), ("baseline", &self.baseline), ("one_class", &self.one_class)] {
            if let Some(s) = s {
                rows(what, &s.probs)?;
                scored(what, &s.metrics)?;
            }
        }
        if !self.distances.is_empty() && self.distances.len() != n {
            return Err(format!("{} feature distances for {n} images", self.distances.len()));
        }
        Ok(())
    }
}

/// Mean ± std per metric over folds, pooled metrics, per-subject counts and the protocol line.
fn summarise(cfg: &CvConfig, results: &[FoldResult], missing: &[String]) -> Summary {
    let classes = cfg.run.classes.clone();
    let stats_of = |ms: &[&Metrics]| {
        let get = |f: fn(&Metrics) -> f64| ms.iter().map(|m| f(m)).collect::<Vec<_>>();
        vec![
            stat("balanced_accuracy", &get(|m| m.balanced_accuracy)),
            stat("accuracy", &get(|m| m.accuracy)),
            stat("roc_auc", &get(|m| m.roc_auc)),
            stat("majority_baseline", &get(|m| m.majority_baseline)),
        ]
    };
    let stats = stats_of(&results.iter().map(|r| &r.metrics).collect::<Vec<_>>());
    let y: Vec<i64> = results.iter().flat_map(|r| r.y.clone()).collect();
    let probs: Vec<Vec<f64>> = results.iter().flat_map(|r| r.probs.clone()).collect();
    // Each pooled row decided at its own fold's threshold (as that fold's metrics are).
    let person_t: Vec<Option<f64>> = results.iter().flat_map(|r| std::iter::repeat_n(r.threshold.as_ref().map(|t| t.person), r.y.len())).collect();
    let pooled = eval::metrics_at(&y, &probs, &classes, |i| person_t[i]);
    let alt = |pick: fn(&FoldResult) -> Option<&Scores>| {
        results.iter().map(pick).collect::<Option<Vec<_>>>().map(|s| {
            let t: Vec<Option<f64>> = s.iter().flat_map(|x| std::iter::repeat_n(x.threshold, x.probs.len())).collect();
            Alternative {
                stats: stats_of(&s.iter().map(|x| &x.metrics).collect::<Vec<_>>()),
                pooled: eval::metrics_at(&y, &s.iter().flat_map(|x| x.probs.clone()).collect::<Vec<_>>(), &classes, |i| t[i]),
            }
        })
    };
    let single = alt(|r| r.single.as_ref());
    let baseline = alt(|r| r.baseline.as_ref());
    let one_class = alt(|r| r.one_class.as_ref());
    // The same models at the larger probability, beside a threshold set in training (not beside 0.5 itself).
    let at_half = results.iter().any(|r| r.threshold.as_ref().is_some_and(|t| t.person != 0.5)).then(|| {
        let ms: Vec<Metrics> = results.iter().map(|r| eval::metrics(&r.y, &r.probs, &classes)).collect();
        Alternative { stats: stats_of(&ms.iter().collect::<Vec<_>>()), pooled: eval::metrics(&y, &probs, &classes) }
    });
    let per_subject: BTreeMap<String, (usize, usize)> = subject_counts(results)
        .into_iter()
        .filter(|(s, _)| !s.is_empty())
        .map(|(s, per)| (s.to_string(), per.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1))))
        .collect();
    let protocol = format!(
        "{} cross-validation ({}), {} seed(s) {:?}, {} fold results; metrics per fold, mean ± std and t-based 95 % interval (clipped to [0, 1]) over folds × seeds; the last epoch of the fixed recipe is evaluated (no early stopping on test folds){}{}{}{}{}{}",
        match cfg.folds {
            Folds::Loso => "leave-one-subject-out".to_string(),
            Folds::K { k } if has_subjects(results) => format!("{k}-fold subject-grouped"),
            Folds::K { k } => format!("{k}-fold {IMAGE_FOLDS}"),
        },
        classes.join(" vs "),
        cfg.seeds.len(),
        cfg.seeds,
        results.len(),
        if cfg.tta_flip { format!("; {}", crate::eval::FLIP_TTA) } else { String::new() },
        if single.is_some() { format!("; {}", crate::subject::TRANSDUCTIVE) } else { String::new() },
        if cfg.run.data.preprocess.face == crate::data::face::FaceMode::Person { format!("; {}", crate::data::face::PERSON_BOX) } else { String::new() },
        if cfg.shared_views && cfg.seeds.len() > 1 { format!("; {SHARED_VIEWS}") } else { String::new() },
        if cfg.run.train.members > 1 { format!("; {}", members_sentence(cfg.run.train.members)) } else { String::new() },
        threshold_sentence(results, &classes).map(|t| format!("; {t}")).unwrap_or_default()
            + &calibration_sentence(results, classes.len()).map(|t| format!("; {t}")).unwrap_or_default()
    ) + &if missing.is_empty() { String::new() } else { format!("; PARTIAL (--partial): {} fold result(s) missing: {}", missing.len(), crate::error::short_list(missing, 8)) };
    let seeds = seed_means(results);
    let seed_spread = (seeds.len() > 1).then(|| stat("balanced_accuracy", &seeds.iter().map(|m| m.balanced_accuracy).collect::<Vec<_>>()));
    Summary {
        protocol,
        classes: classes.clone(),
        stats,
        pooled,
        per_subject,
        folds: results.iter().map(|r| (r.seed, r.fold, r.metrics.clone())).collect(),
        fold_people: if results.iter().all(|r| r.subjects.iter().all(String::is_empty)) {
            vec![]
        } else {
            results.iter().map(|r| distinct(r.subjects.iter().map(String::as_str))).collect()
        },
        single,
        baseline,
        one_class,
        at_half,
        probe_epochs: cfg.baseline,
        probe_lr: cfg.probe_lr,
        probe_members: cfg.probe_members,
        probe_threshold: results.iter().any(|r| r.baseline.as_ref().is_some_and(|b| b.threshold.is_some())),
        seeds: if seed_spread.is_some() { seeds } else { vec![] },
        seed_spread,
        person_box: cfg.run.data.preprocess.face == crate::data::face::FaceMode::Person && results.iter().any(|r| r.single.is_some() && !r.single_frame),
        single_frame: results.iter().any(|r| r.single.is_some()) && results.iter().all(|r| r.single.is_none() || r.single_frame),
        unusual: unusual(results),
    }
}

/// The test photos' feature distances, where every fold kept them.
fn unusual(results: &[FoldResult]) -> Option<Unusual> {
    if results.is_empty() || results.iter().any(|r| r.distances.len() != r.paths.len()) {
        return None;
    }
    let all = results.iter().flat_map(|r| r.paths.iter().zip(&r.distances));
    let (farthest, &largest) = all.clone().max_by(|a, b| a.1.total_cmp(b.1))?;
    let count = all.clone().filter(|&(_, &d)| crate::eval::predict::is_unusual(d)).count();
    Some(Unusual { limit: crate::eval::predict::UNUSUAL, count, of: all.count(), largest, farthest: farthest.clone() })
}

/// How the folds' models decided, when a threshold was set or given: the
/// thresholds' median and range.
fn threshold_sentence(results: &[FoldResult], classes: &[String]) -> Option<String> {
    let ts: Vec<f64> = results.iter().filter_map(|r| r.threshold.as_ref().map(|t| t.person)).collect();
    if ts.is_empty() {
        return None;
    }
    let (median, lo, hi) = median_range(ts);
    let first = &classes[0];
    // Folds whose training people include some shown with one class only: those are left out of the choice.
    let one_sided = results.iter().filter(|r| r.threshold.as_ref().and_then(|t| t.inner.as_ref()).is_some_and(|i| i.one_sided > 0)).count();
    let left_out = match one_sided {
        0 => String::new(),
        n => format!(", people shown with one class only left out of the choice in {n} fold(s)"),
    };
    Some(match results.iter().find_map(|r| r.threshold.as_ref().and_then(|t| t.inner.as_ref())) {
        Some(i) => format!(
            "{first} is answered where P({first}) reaches a threshold set for each fold by an inner {}-fold subject-grouped cross-validation over that fold's training people alone (median {median:.3}, range {lo:.3}–{hi:.3}{left_out}; the larger probability: see below)",
            i.folds,
        ),
        None => format!("{first} is answered where P({first}) ≥ {median:.3} (--threshold)"),
    })
}

/// The median (the upper one of an even count), smallest and largest of non-empty `v`.
fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// How the single-image head's probabilities were calibrated, when they were (`--calibrate`).
fn calibration_sentence(results: &[FoldResult], classes: usize) -> Option<String> {
    let fitted: Vec<&Calibration> =
        results.iter().filter_map(|r| r.calibration.as_ref().or(r.threshold.as_ref().and_then(|t| t.legacy_calibration.as_ref()))).collect();
    if fitted.is_empty() {
        return None;
    }
    let by = if results.iter().any(|r| r.threshold.as_ref().is_some_and(|t| t.inner.is_some())) {
        "the same inner held-out scores".to_string()
    } else {
        format!("an inner {}-fold subject-grouped cross-validation over each fold's training people", threshold::INNER_FOLDS)
    };
    Some(if classes > 2 {
        let (median, lo, hi) = median_range(fitted.iter().map(|c| 1.0 / c.scale).collect());
        format!(
            "the single-image head's probabilities are calibrated on {by} (temperature scaling, median temperature {median:.1}, range {lo:.1}–{hi:.1}; its most probable class unchanged)"
        )
    } else {
        format!("the single-image head's probabilities are calibrated on {by} (Platt scaling; its decisions at its own threshold unchanged)")
    })
}

/// What a model of `k` ensemble members is (`--members`).
pub fn members_sentence(k: usize) -> String {
    format!("each model is {k} heads trained side by side (own starts, dropout, batch orders and draws of the views) and averaged into one")
}

/// What seeds share within one cv when the frozen trunk's outputs are cached once.
pub const SHARED_VIEWS: &str =
    "the seeds share one cache of the frozen trunk's outputs (the first seed's augmented views), so they differ in the training above it; seeds run as separate cv commands differ in their views too";

/// Each seed's means over its fold results (sorted by seed), NaN ignored.
fn seed_means(results: &[FoldResult]) -> Vec<SeedMean> {
    let mut by_seed: BTreeMap<u64, Vec<&Metrics>> = BTreeMap::new();
    for r in results {
        by_seed.entry(r.seed).or_default().push(&r.metrics);
    }
    by_seed
        .into_iter()
        .map(|(seed, ms)| {
            let mean = |f: fn(&Metrics) -> f64| stat("", &ms.iter().map(|m| f(m)).collect::<Vec<_>>()).mean;
            SeedMean { seed, folds: ms.len(), balanced_accuracy: mean(|m| m.balanced_accuracy), accuracy: mean(|m| m.accuracy), roc_auc: mean(|m| m.roc_auc) }
        })
        .collect()
}

/// `cv.json`, `cv.md` and the plots (and the top-loss sheet) of a summary.
fn write_outputs(dir: &Path, cfg: &CvConfig, summary: &Summary, results: &[FoldResult]) -> Result<()> {
    let classes = &summary.classes;
    fsutil::write_json(&dir.join("cv.json"), summary)?;
    fsutil::write_atomic(&dir.join("cv.md"), markdown(summary).as_bytes())?;
    plot::confusion(&dir.join("confusion.png"), &summary.pooled.confusion, classes, "pooled out-of-fold predictions")?;
    if classes.len() == 2 {
        let y: Vec<i64> = results.iter().flat_map(|r| r.y.clone()).collect();
        let probs: Vec<Vec<f64>> = results.iter().flat_map(|r| r.probs.clone()).collect();
        let pos: Vec<bool> = y.iter().map(|&t| t == 1).collect();
        let scores: Vec<f64> = probs.iter().map(|p| p[1]).collect();
        plot::roc(&dir.join("roc.png"), &pos, &scores, &format!("pooled out-of-fold ROC, positive class `{}`", classes[1]))?;
    }
    let subjects = dir.join("subjects.png");
    if has_subjects(results) {
        plot::subjects(&subjects, &subject_bacc(results), &format!("per-subject balanced accuracy, pooled over {} seed(s)", cfg.seeds.len()))?;
    } else {
        // Data without subject ids: one nameless "subject" is no plot.
        let _ = std::fs::remove_file(&subjects);
    }
    if cfg.top_losses > 0 {
        let mut top: Vec<crate::eval::explain::TopLoss> = results.iter().flat_map(|r| r.top.iter().cloned()).collect();
        top.sort_by(|a, b| b.loss.total_cmp(&a.loss));
        top.truncate(cfg.top_losses);
        top.iter_mut().for_each(|t| t.tile = dir.join(&t.tile));
        crate::eval::explain::write_top_losses(dir, classes, &top)?;
    }
    plot::spread(&dir.join("folds.png"), &results.iter().map(|r| (r.seed, r.fold, r.metrics.balanced_accuracy)).collect::<Vec<_>>(), summary.classes.len())
}

/// Whether the folds' images carry subject ids (a dataset without them leaves each empty).
fn has_subjects(results: &[FoldResult]) -> bool {
    results.iter().any(|r| r.subjects.iter().any(|s| !s.is_empty()))
}

/// (correct, tested) per subject and true class, pooled over every fold result.
fn subject_counts(results: &[FoldResult]) -> BTreeMap<&str, BTreeMap<i64, (usize, usize)>> {
    let mut counts: BTreeMap<&str, BTreeMap<i64, (usize, usize)>> = BTreeMap::new();
    for r in results {
        let cut = r.threshold.as_ref().map(|t| t.person);
        for ((s, &t), p) in r.subjects.iter().zip(&r.y).zip(&r.probs) {
            let e = counts.entry(s.as_str()).or_default().entry(t).or_default();
            e.1 += 1;
            e.0 += usize::from(threshold::decide(p, cut) as i64 == t);
        }
    }
    counts
}

/// Each subject's balanced accuracy (mean recall over the classes that
/// subject's test images have) and image count, worst first.
pub(crate) fn subject_bacc(results: &[FoldResult]) -> Vec<(String, f64, usize)> {
    let mut out: Vec<(String, f64, usize)> = subject_counts(results)
        .into_iter()
        .map(|(s, per)| {
            let bacc = per.values().map(|&(c, n)| c as f64 / n as f64).sum::<f64>() / per.len() as f64;
            (if s.is_empty() { "(no id)".to_string() } else { s.to_string() }, bacc, per.values().map(|v| v.1).sum())
        })
        .collect();
    out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    out
}

/// The printed / saved summary.
pub fn markdown(s: &Summary) -> String {
    let mut out = format!("# Cross-validation\n\n{}\n\n", s.protocol);
    stats_table(&mut out, &s.stats);
    alternatives(&mut out, s);
    per_fold(&mut out, s);
    per_seed(&mut out, s);
    pooled_predictions(&mut out, s);
    per_subject(&mut out, s);
    out
}

/// One row per metric: mean ± std, the 95 % interval, the count.
fn stats_table(out: &mut String, stats: &[Stat]) {
    out.push_str("| metric | mean ± std | 95 % interval | n |\n|---|---|---|---|\n");
    for st in stats {
        out.push_str(&format!(
            "| {} | {} ± {} | [{}, {}] | {} |\n",
            st.metric,
            crate::eval::fig(st.mean),
            crate::eval::fig(st.std),
            crate::eval::fig(st.ci95.0),
            crate::eval::fig(st.ci95.1),
            st.n
        ));
    }
}

/// The other models scored on the same folds (the single-image head, the
/// probe, threshold 0.5, one class per person), each against the recipe.
fn alternatives(out: &mut String, s: &Summary) {
    let sections = [
        (
            format!(
                "Single-image head (no other photo of the person; same folds{})",
                match (s.person_box, s.single_frame) {
                    (true, _) => format!("; {}", crate::data::face::PERSON_BOX_SINGLE),
                    (false, true) => format!("; {}", crate::data::face::FRAME_SINGLE),
                    _ => String::new(),
                }
            ),
            &s.single,
        ),
        (
            format!(
                "Probe baseline (head only, {} epochs{}{}, same folds and seeds)",
                s.probe_epochs.unwrap_or(0),
                s.probe_lr.map(|lr| format!(" at learning rate {lr}")).unwrap_or_default(),
                s.probe_members.map(|k| format!(", {k} heads averaged into one")).unwrap_or_default()
                    + if s.probe_threshold { ", deciding at its own threshold" } else { "" }
            ),
            &s.baseline,
        ),
        ("The same models deciding by the larger probability (threshold 0.5)".to_string(), &s.at_half),
        (
            "Each test person shown with one class only (the recipe's model; each person's statistics from that person's images of one class at a time; same folds)"
                .to_string(),
            &s.one_class,
        ),
    ];
    for (title, alt) in sections {
        if let Some(a) = alt {
            out.push_str(&format!("\n## {title}\n\n"));
            stats_table(out, &a.stats);
            out.push_str(&format!(
                "\npooled out-of-fold: accuracy {:.3}, balanced accuracy {:.3}, ROC AUC {:.3}; recipe − this: balanced accuracy {:+.3}\n",
                a.pooled.accuracy,
                a.pooled.balanced_accuracy,
                a.pooled.roc_auc,
                s.stats[0].mean - a.stats[0].mean
            ));
        }
    }
}

/// One row per fold (its test people, up to 3 named, where the summary has them).
fn per_fold(out: &mut String, s: &Summary) {
    let people = !s.fold_people.is_empty();
    out.push_str(if people {
        "\n## Per fold\n\n| seed | fold | test people | n | accuracy | balanced accuracy | ROC AUC |\n|---|---|---|---|---|---|---|\n"
    } else {
        "\n## Per fold\n\n| seed | fold | n | accuracy | balanced accuracy | ROC AUC |\n|---|---|---|---|---|---|\n"
    });
    for (i, (seed, fold, m)) in s.folds.iter().enumerate() {
        let who = match s.fold_people.get(i) {
            Some(p) if people => format!(" {} |", crate::eval::cell(&crate::error::short_list(p, 3))),
            _ => String::new(),
        };
        out.push_str(&format!("| {seed} | {fold} |{who} {} | {:.3} | {:.3} | {} |\n", m.n, m.accuracy, m.balanced_accuracy, crate::eval::fig(m.roc_auc)));
    }
}

/// Each seed's means over its folds, and their spread.
fn per_seed(out: &mut String, s: &Summary) {
    if let Some(sp) = &s.seed_spread {
        out.push_str(&format!(
            "\n## Per seed (means over each seed's folds)\n\nspread over seeds: balanced accuracy {:.3} ± {:.3} (std of the {} per-seed means; range {:.3}–{:.3})\n\n| seed | folds | accuracy | balanced accuracy | ROC AUC |\n|---|---|---|---|---|\n",
            sp.mean,
            sp.std,
            sp.n,
            s.seeds.iter().map(|m| m.balanced_accuracy).fold(f64::INFINITY, f64::min),
            s.seeds.iter().map(|m| m.balanced_accuracy).fold(f64::NEG_INFINITY, f64::max),
        ));
        for m in &s.seeds {
            out.push_str(&format!("| {} | {} | {:.3} | {:.3} | {} |\n", m.seed, m.folds, m.accuracy, m.balanced_accuracy, crate::eval::fig(m.roc_auc)));
        }
    }
}

/// The pooled out-of-fold figures and confusion matrix, and the test photos unlike their training photos.
fn pooled_predictions(out: &mut String, s: &Summary) {
    out.push_str(&format!(
        "\n## Pooled out-of-fold predictions\n\naccuracy {:.3}, balanced accuracy {:.3}, ROC AUC {}, majority baseline {:.3}\n\n| true \\ predicted | {} |\n|---|{}\n",
        s.pooled.accuracy,
        s.pooled.balanced_accuracy,
        crate::eval::fig(s.pooled.roc_auc),
        s.pooled.majority_baseline,
        s.classes.iter().map(|c| crate::eval::cell(c)).collect::<Vec<_>>().join(" | "),
        "---|".repeat(s.classes.len())
    ));
    for (c, row) in s.classes.iter().zip(&s.pooled.confusion) {
        out.push_str(&format!("| {} | {} |\n", crate::eval::cell(c), row.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(" | ")));
    }
    if let Some(u) = &s.unusual {
        out.push_str(&format!(
            "\n## Test photos unlike their training photos\n\n{} of {} test photos (pooled over seeds) lay farther than {} from their fold's training photos (feature distance, as `predict` gives it, which warns above it); the farthest: {} ({:.2})\n",
            u.count, u.of, u.limit, u.farthest, u.largest
        ));
    }
}

/// Each subject's correct / tested, worst first.
fn per_subject(out: &mut String, s: &Summary) {
    if s.per_subject.is_empty() {
        return;
    }
    out.push_str("\n## Per subject (correct / tested, pooled over seeds)\n\n");
    let worst: Vec<String> = {
        let mut v: Vec<(&String, &(usize, usize))> = s.per_subject.iter().collect();
        v.sort_by(|a, b| (a.1 .0 as f64 / a.1 .1 as f64).total_cmp(&(b.1 .0 as f64 / b.1 .1 as f64)).then(a.0.cmp(b.0)));
        v.iter().map(|(k, (c, n))| format!("{k}: {c}/{n}")).collect()
    };
    out.push_str(&worst.join(", "));
    out.push('\n');
}

#[cfg(test)]
mod tests {
    /// Side-by-side folds: as many as threads and jobs allow, fewer where they
    /// would take more than half the memory available, never none.
    #[test]
    fn side_by_side_folds_are_bounded_by_threads_jobs_and_half_the_free_memory() {
        const GIB: u64 = 1 << 30;
        let count = |threads, jobs, fold, free| super::workers(threads, jobs, fold, free).count;
        assert_eq!(count(2, 10, GIB / 2, Some(24 * GIB)), 2);
        assert_eq!(count(16, 10, GIB / 2, None), 10, "no more than the jobs; no bound where memory is unknown");
        assert_eq!(count(16, 30, GIB / 2, Some(8 * GIB)), 8, "4 GiB of 8 free: 8 folds of 0.5 GiB");
        let w = super::workers(16, 30, 3 * GIB, Some(8 * GIB));
        assert_eq!((w.count, w.memory), (1, Some((3 * GIB, 8 * GIB))), "one fold even where one does not fit: as one at a time would");
        assert!(super::workers(4, 30, GIB, Some(64 * GIB)).memory.is_none(), "said only where memory bounds it");
        // The estimate: 2 × cache + 2 × weights file + 160 MiB (measured ~350 MiB for 54 + 56 MiB).
        assert_eq!(super::fold_bytes(54 << 20, 56 << 20) >> 20, 380);
        let meminfo = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\nBuffers:  0 kB\n";
        assert_eq!(super::mem_available_in(meminfo), Some(20_000_000 * 1024));
        assert_eq!(super::mem_available_in("MemTotal: 1 kB\n"), None);
        assert!(super::available_memory().is_none_or(|b| b > 0));
    }

    /// Two folds side by side, each ~26 s: the first result comes with 9 left,
    /// which take ~4.5 folds' time, not 9 (the estimate said 237 s where ~100 s were left).
    #[test]
    fn the_folds_left_share_the_side_by_side_workers() {
        assert!((super::folds_left_seconds(26.0, 1, 9, 2) - 117.0).abs() < 1e-9);
        assert!((super::folds_left_seconds(26.0 + 24.0, 2, 8, 2) - 100.0).abs() < 1e-9);
        assert!((super::folds_left_seconds(30.0, 3, 7, 1) - 70.0).abs() < 1e-9, "one at a time: the mean fold time per fold left");
    }

    #[test]
    fn parallel_jobs_run_once_each_on_one_core_and_the_first_error_stops_the_rest() {
        let _threads = crate::model::THREAD_SETTING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = tch::get_num_threads();
        let jobs: Vec<u64> = (0..20).collect();
        let mut got = Vec::new();
        // Every job once, each on a worker whose libtorch runs one thread.
        super::in_parallel(3, &jobs, |&j| Ok((j * j, tch::get_num_threads())), &mut |&j, &r| {
            got.push((j, r));
            Ok(())
        })
        .unwrap();
        got.sort_unstable();
        assert_eq!(got, jobs.iter().map(|&j| (j, (j * j, 1))).collect::<Vec<_>>());
        assert_eq!(tch::get_num_threads(), before);
        // A failing job: its error comes back, and (one worker, so in order) no later job starts.
        let (mut seen, started) = (Vec::new(), std::sync::atomic::AtomicU64::new(0));
        let fold = |&j: &u64| {
            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if j == 5 {
                Err(crate::error::Error::internal("job 5 failed"))
            } else {
                Ok(j)
            }
        };
        let e = super::in_parallel(1, &jobs, fold, &mut |&j, _| {
            seen.push(j);
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("job 5 failed"), "{e}");
        assert_eq!((seen, started.into_inner()), ((0..5).collect::<Vec<_>>(), 6));
        // So does an error of `finished` (writing a result), with several workers.
        let e = super::in_parallel(3, &jobs, |&j| Ok(j), &mut |&j, _| if j == 7 { Err(crate::error::Error::internal("cannot write 7")) } else { Ok(()) })
            .unwrap_err();
        assert!(e.to_string().contains("cannot write 7"), "{e}");
        assert_eq!(tch::get_num_threads(), before);
    }

    #[test]
    fn stat_by_hand() {
        let s = super::stat("x", &[0.5, 0.7, 0.9, f64::NAN]);
        assert_eq!(s.n, 3);
        assert!((s.mean - 0.7).abs() < 1e-12);
        assert!((s.std - 0.2).abs() < 1e-12);
        // t(0.975, 2) = 4.303: half-width 4.303 · 0.2 / √3 = 0.497; the upper end is clipped to 1.
        assert!((s.ci95.0 - (0.7 - 4.303 * 0.2 / 3f64.sqrt())).abs() < 1e-9);
        assert_eq!(s.ci95.1, 1.0);
        let low = super::stat("x", &[0.0, 0.1, 0.5]);
        assert!(low.ci95.0 == 0.0 && low.ci95.1 < 1.0, "{low:?}");
        assert!(super::Folds::parse("1").is_err() && super::Folds::parse("loso").is_ok());
    }
}
