//! A fine-tuning run and its folder: a new run or a resumed one on its
//! `Session`, training, and writing `config.json`, `split.csv` (the data
//! fingerprint), `sha256.csv` (each image's bytes), `history.csv`,
//! `model.safetensors`, `metrics.json` atomically, with `runs/latest`
//! pointing at the finished run; loading a finished run back.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use tch::{Device, Tensor};

use crate::config::RunConfig;
use crate::error::{Error, Result, Setting};
use crate::eval::predict::Mode;
use crate::eval::threshold::{self, ThresholdChoice, INNER_FOLDS};
use crate::eval::{self, Metrics};
use crate::fsutil;
use crate::model::weights::{self, LoadReport};
use crate::model::{Block, Vgg16};
use crate::session::{model_config, raw_head, Prepared, Session};
use crate::train::{self, EpochRow, Reporter, Trainer};

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The libtorch version tch 0.26 is built against (checked by torch-sys at build time).
pub(crate) const LIBTORCH_VERSION: &str = "2.13.0";
/// Marks a run folder whose outputs are all written.
pub const COMPLETE: &str = "COMPLETE";

/// What `finetune` returns to the binary.
pub struct Summary {
    pub dir: PathBuf,
    pub history: Vec<EpochRow>,
    /// Epoch of the lowest validation loss.
    pub best_epoch: usize,
    /// Epoch whose weights the run kept (`--keep`).
    pub kept_epoch: usize,
    pub val: Option<Metrics>,
    /// With per-subject normalisation: the single-image head on the same images.
    pub val_single: Option<Metrics>,
    pub classes: Vec<String>,
    pub n_train: usize,
    pub n_val: usize,
    /// The people held out (none in an image split).
    pub val_people: usize,
    /// The threshold the model decides at (two-class runs that set or were given one).
    pub threshold: Option<threshold::Threshold>,
    /// How it decides and what its single-image head's probabilities mean, for summaries
    /// (`RunConfig::describe_decisions`).
    pub decisions: Option<String>,
    /// `--face person`: `val_single` read each photo's whole frame, as
    /// predict frames a lone photo (`data::face::FRAME_SINGLE`).
    pub single_frame: bool,
    /// How the validation images were held out (`PROTOCOL_*`), as metrics.json says.
    pub protocol: &'static str,
}

/// A holdout of whole people: validation measures new people.
pub const PROTOCOL_SUBJECTS: &str = "holdout, subject-grouped";
/// A holdout of images, where the data names no people: a person's other photos may be in training.
pub const PROTOCOL_IMAGES: &str = "holdout (image split)";

/// No validation images (`--val none`): every image trained the model.
pub const PROTOCOL_NONE: &str = "no validation (--val none: every image trained)";

/// How `split` held out its validation images.
fn protocol(split: &crate::data::split::Split) -> &'static str {
    if split.val.is_empty() {
        PROTOCOL_NONE
    } else if split.val_subjects.is_empty() {
        PROTOCOL_IMAGES
    } else {
        PROTOCOL_SUBJECTS
    }
}

/// Options for a new run.
pub struct FinetuneRequest {
    pub recipe: crate::config::Recipe,
    pub out: PathBuf,
    pub name: Option<String>,
    pub threads: Option<i32>,
    /// The feature cache folder (`Session::feature_cache`).
    pub feature_cache: Option<PathBuf>,
}

/// Starts a new run.
pub fn finetune(req: &FinetuneRequest, reporter: &mut dyn Reporter, stop: Option<&AtomicBool>) -> Result<Summary> {
    check_name(req.name.as_deref())?;
    // Absolute, so `--resume` from another folder reads the same data.
    let mut data = req.recipe.data.clone();
    data.path = std::path::absolute(&data.path).map_err(|e| Error::io(&data.path, e))?;
    crate::data::scan::refuse_output_inside(&data.path, data.format, &req.out, "the run folders")?;
    crate::data::scan::refuse_other_output(&req.out, "a folder of runs", "the run folders", &[])?;
    // Before the photos are read (and their faces found): an --out that cannot be made fails at once.
    fsutil::check_creatable(&req.out)?;
    let mut session = Session::open(&req.recipe, data, req.recipe.train.seed, req.threads, reporter)?;
    session.feature_cache = req.feature_cache.clone();
    let split = split_csv(&session.prepared);
    session.config.data_sha256 = sha256_hex(&split);
    let weights = &mut session.config.weights;
    if !weights.path.as_os_str().is_empty() {
        weights.path = std::path::absolute(&weights.path).map_err(|e| Error::io(&weights.path, e))?;
    }
    start(&session, &split, &req.out, req.name.as_deref(), reporter, stop)
}

/// A new run with the recipe saved in another run's `config.json`.
pub struct RerunRequest {
    /// The run folder (its config.json, or a runs folder: its latest run) whose recipe is trained again.
    pub from: PathBuf,
    /// Another seed (split, draws, initialisation); none: the run's own.
    pub seed: Option<u64>,
    pub out: PathBuf,
    pub name: Option<String>,
    /// The feature cache folder (`Session::feature_cache`).
    pub feature_cache: Option<PathBuf>,
}

/// Trains the recipe of a finished (or any) run again into a new run folder:
/// the same data, weights, resolved options, thread count and seed unless
/// `seed` says otherwise — on the same CPU its `history.csv` is the
/// original's. Refused when the weights file changed since; with the same
/// seed, data that changed since is said (the run then trains on it as it is).
pub fn rerun(req: &RerunRequest, reporter: &mut dyn Reporter, stop: Option<&AtomicBool>) -> Result<Summary> {
    check_name(req.name.as_deref())?;
    let from = run_dir(&req.from);
    let mut config = read_config(&from)?;
    if !fsutil::exists(&config.data.path)? {
        return Err(Error::file(
            from.join("config.json"),
            format!("names the data {}, which is not there (moved, or another machine's path?)", config.data.path.display()),
        ));
    }
    let w = &config.weights;
    if !w.path.as_os_str().is_empty() {
        let sha = weights::sha256_file(&w.path)?;
        if sha != w.sha256 {
            return Err(Error::file(
                &w.path,
                format!(
                    "differs from the weights {} was trained from (SHA-256 {} in its config.json, {} now): put that file back to rerun it",
                    from.display(),
                    short(&w.sha256),
                    short(&sha)
                ),
            ));
        }
    }
    let same_seed = req.seed.is_none_or(|s| s == config.train.seed);
    if let Some(seed) = req.seed {
        config.train.seed = seed;
    }
    // What the run learnt is learnt again; a fixed threshold is part of the recipe.
    if config.train.threshold == ThresholdChoice::Inner {
        config.threshold = None;
    }
    config.calibration = None;
    config.model_sha256 = None;
    config.created = chrono::Local::now().to_rfc3339();
    config.vggft_version = VERSION.into();
    config.libtorch_version = LIBTORCH_VERSION.into();
    if let Some(t) = config.threads {
        tch::set_num_threads(t);
    }
    let old_sha = std::mem::take(&mut config.data_sha256);
    crate::data::scan::refuse_output_inside(&config.data.path, config.data.format, &req.out, "the run folders")?;
    crate::data::scan::refuse_other_output(&req.out, "a folder of runs", "the run folders", &[])?;
    fsutil::check_creatable(&req.out)?;
    let mut session = Session::reopen(config, reporter)?;
    session.feature_cache = req.feature_cache.clone();
    let split = split_csv(&session.prepared);
    session.config.data_sha256 = sha256_hex(&split);
    if same_seed && !old_sha.is_empty() && old_sha != session.config.data_sha256 {
        let what = describe_changes(&std::fs::read_to_string(from.join("split.csv")).unwrap_or_default(), &split);
        reporter.message(&format!(
            "warning: the data at {} changed since {} was trained ({what}); this run trains on it as it is now",
            session.config.data.path.display(),
            from.display()
        ));
    }
    reporter.message(&format!("the recipe of {} (its config.json), seed {}", from.display(), session.config.train.seed));
    start(&session, &split, &req.out, req.name.as_deref(), reporter, stop)
}

/// The first 12 hex digits of a SHA-256, for messages.
fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Creates the run folder of a new run on `session` (`split`: its split.csv)
/// and trains it there.
fn start(session: &Session, split: &[u8], out: &Path, name: Option<&str>, reporter: &mut dyn Reporter, stop: Option<&AtomicBool>) -> Result<Summary> {
    // The weights are read before the run folder exists: a missing, corrupt or
    // wrong-shape file leaves nothing behind.
    let built = session.fresh_model(session.config.train.seed as i64, true)?;
    session.advise(reporter);
    // The folders this run makes, the deepest first: the run folder, then those of `out`.
    let mut made = fsutil::missing_folders(out);
    let dir = new_run_dir(out, name).inspect_err(|_| fsutil::remove_empty(&made))?;
    made.insert(0, dir.clone());
    let lock = fsutil::lock_run(&dir).inspect_err(|_| fsutil::remove_empty(&made))?;
    // Removes the run folder (and the --out it made, where nothing else came
    // into it meanwhile) while it holds no model and no checkpoint.
    let undo = |lock, reporter: &mut dyn Reporter, why: &str| {
        drop(lock);
        if std::fs::remove_dir_all(&dir).is_ok() {
            fsutil::remove_empty(&made[1..]);
            reporter.message(&format!("removed {}: {why}", dir.display()));
        }
    };
    let opened = (|| {
        fsutil::write_json(&dir.join("config.json"), &session.config)?;
        fsutil::write_atomic(&dir.join("split.csv"), split)?;
        let p = &session.prepared;
        fsutil::write_atomic(&dir.join(HASHES), &hashes_csv(p))?;
        if p.boxes.iter().any(Option::is_some) {
            crate::faces::write_csv(&dir.join("faces.csv"), &p.dataset.samples.iter().map(|s| s.path.clone()).collect::<Vec<_>>(), &p.boxes)?;
        }
        Ok::<_, Error>(())
    })();
    if let Err(e) = opened {
        // A folder without its config.json or split.csv could not be resumed
        // into a whole run (a full disk): nothing was trained, so it goes.
        undo(lock, reporter, "nothing had been trained in it");
        return Err(e);
    }
    reporter.message(&format!("run folder: {}", dir.display()));
    let ran = execute(session, &dir, reporter, stop, None, Some(built));
    if let Err(Error::Diverged { .. }) = &ran {
        // Diverged before any epoch was kept: the folder holds no model and
        // no checkpoint, and resuming it would meet the same rate.
        if !dir.join(train::STATE).exists() {
            undo(lock, reporter, "no epoch had finished, so it held no model");
        } else {
            reporter.message(&format!(
                "{} keeps its last finished epoch's checkpoint, but --resume would train on at the same rate: start a new run with a lower --lr",
                dir.display()
            ));
        }
    }
    ran.map_err(|e| resumable(e, &dir))
}

/// Continues an interrupted run from its last completed epoch.
pub fn resume(dir: &Path, reporter: &mut dyn Reporter, stop: Option<&AtomicBool>) -> Result<Summary> {
    let config = read_config(dir)?;
    // Before the lock: a finished run is that, also where this user may not write into it.
    if dir.join(COMPLETE).exists() {
        return Err(Error::file(dir, "this run is already complete; nothing to resume"));
    }
    let _lock = fsutil::lock_run(dir)?;
    if let Some(t) = config.threads {
        tch::set_num_threads(t);
    }
    // Killed before the first epoch finished: nothing to restore, start over in place.
    let state = if dir.join(train::STATE).exists() { Some(train::load_state(dir)?) } else { None };
    if let Some(s) = &state {
        train::check_state(s, &config.train.stages)
            .map_err(|why| Error::file(dir.join(train::STATE), format!("does not fit this run's config.json: {why}")))?;
    }
    let session = Session::reopen(config, reporter)?;
    check_same_data(&session, dir)?;
    match &state {
        Some(s) => reporter.message(&format!("resuming {} after epoch {}", dir.display(), s.history.len())),
        None => reporter.message(&format!("{}: no epoch had finished; training from the start in the same folder", dir.display())),
    }
    execute(&session, dir, reporter, stop, state, None).map_err(|e| resumable(e, dir))
}

/// Refuses to resume on data that differs from the run's `split.csv` or labels.
fn check_same_data(session: &Session, dir: &Path) -> Result<()> {
    let (config, prepared) = (&session.config, &session.prepared);
    let split = split_csv(prepared);
    if !config.data_sha256.is_empty() && sha256_hex(&split) != config.data_sha256 {
        let p = dir.join("split.csv");
        let what = describe_changes(&std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?, &split);
        return Err(Error::dataset(
            &config.data.path,
            format!("changed since the run started ({what}); --resume needs the same data: restore it, or start a new run"),
        ));
    }
    if prepared.labels.classes != config.classes {
        return Err(Error::file(dir.join("config.json"), format!("classes {:?} no longer match the data ({:?})", config.classes, prepared.labels.classes)));
    }
    let (raw, _) = raw_head(&prepared.labels, config.data.train_labels);
    if raw != config.raw_classes {
        return Err(Error::file(dir.join("config.json"), format!("raw labels {:?} no longer match the data ({raw:?})", config.raw_classes)));
    }
    Ok(())
}

/// Reads and checks a run's `config.json`.
pub fn read_config(dir: &Path) -> Result<RunConfig> {
    let p = dir.join("config.json");
    if dir.join("cv-config.json").is_file() && !fsutil::exists(&p)? {
        return Err(Error::file(
            dir,
            "is a cross-validation folder, and cv keeps no model (each fold's model is scored, then dropped): train one on all the data with `vggft finetune` and the cv's options",
        ));
    }
    if !fsutil::exists(dir)? {
        return Err(Error::file(dir, "run folder not found (`finetune --out DIR` puts the latest run at DIR/latest)"));
    }
    if dir.is_dir() && !fsutil::exists(&p)? {
        return Err(Error::file(&p, "is missing: not a vggft run folder (`finetune --out DIR` puts the latest run at DIR/latest)"));
    }
    if dir.is_file() {
        // A weights file (`--weights`'s), or a model.safetensors copied away from its run's config.json.
        return Err(Error::file(
            dir,
            "is a file, not a run folder: give the run's folder, or the model.safetensors inside it (read with the config.json beside it, which says how to prepare photos for it); a weights file alone is not a trained run",
        ));
    }
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let config: RunConfig = serde_json::from_str(&s).map_err(|e| Error::file(&p, format!("is not a valid vggft run config: {e}")))?;
    config.validate().map_err(|e| match e {
        Error::Invalid { setting, problem } => Error::ConfigFile { path: p.clone(), setting, problem },
        other => Error::file(&p, format!("{}: {other}", crate::error::REFUSED_SETTING)),
    })?;
    Ok(config)
}

/// A run in `dir` that stopped part-way — interrupted (Ctrl-C, SIGTERM), or a
/// file of it that could not be written (a full disk) — keeps its folder and
/// checkpoints, so the error says how to go on.
fn resumable(e: Error, dir: &Path) -> Error {
    match e {
        e @ Error::Interrupted(_) => e.if_interrupted(&format!("continue with: vggft finetune --resume {}", dir.display())),
        Error::File { path, problem } if path.starts_with(dir) && problem.starts_with("cannot ") => Error::File {
            problem: format!(
                "{problem}; the run's folder is kept, with its last epoch's checkpoint if one finished: make room, then `vggft finetune --resume {}` goes on",
                dir.display()
            ),
            path,
        },
        other => other,
    }
}

/// Trains the session's model in `dir` and writes the run's outputs; `built`
/// is the fresh model with its pretrained weights when the caller has it.
fn execute(
    session: &Session,
    dir: &Path,
    reporter: &mut dyn Reporter,
    stop: Option<&AtomicBool>,
    state: Option<train::ResumeState>,
    built: Option<(Vgg16, Option<LoadReport>)>,
) -> Result<Summary> {
    let (config, prepared) = (&session.config, &session.prepared);
    let tc = &config.train;
    // A resumed run's weights come from its checkpoint.
    let (mut model, loaded) = match built {
        Some(b) => b,
        None => session.fresh_model(tc.seed as i64, state.is_none())?,
    };
    if let Some(rep) = loaded {
        reporter.message(&format!(
            "weights: {} [{}], {} tensors loaded{}{}",
            config.weights.path.display(),
            config.weights.source,
            rep.loaded,
            if rep.folded_bn { ", BatchNorm folded into the convs" } else { "" },
            if rep.ignored.is_empty() { String::new() } else { format!(", {} unused ignored", rep.ignored.len()) }
        ));
        if session.recalibrate(&mut model, &prepared.data.train)? {
            reporter.message(&format!("BatchNorm statistics recalibrated on {} training images", prepared.data.train.len()));
        }
    }
    say_what_trains(session, &model, reporter);
    let tta = eval::flip_tta(None, model.cfg.subject_norm);
    // A head-only recipe builds its pooled features once, shared with the inner fits that set a threshold, and
    // kept in (or read from) the feature cache, so the next finetune on the same images skips the trunk; a
    // fine-tune's inner fits each cache what their own stages need.
    let head_only = tc.head_only();
    let shared = match (state.is_none(), head_only) {
        (true, true) => head_cache(session, &model, tta, &mut train::Pass::new(reporter, stop))
            .map_err(|e| e.if_interrupted(train::hooks::saved(&train::ResumeState::default())))?,
        _ => vec![],
    };
    let trainer = Trainer {
        cfg: tc,
        pre: &config.data.preprocess,
        data: &prepared.data,
        device: session.device,
        checkpoint_dir: Some(dir.to_path_buf()),
        stop,
        shared: &shared,
        keep_stats: true,
    };
    let outcome = trainer.run(&mut model, reporter, state)?;
    write_history(&dir.join("history.csv"), &outcome.history)?;
    crate::eval::plot::learning_curves(&dir.join("learning_curves.png"), &outcome.history, Some(outcome.kept_epoch))?;
    weights::save_atomic(&model.named_tensors(), &dir.join("model.safetensors"))?;
    let mut config = config.clone();
    if tc.inner_fits() {
        set_decisions(session, (&model, &shared, tta), (reporter, stop), &mut config)?;
    }
    // What the threshold and calibration were set for: loading checks the file against it.
    config.model_sha256 = Some(weights::sha256_file(&dir.join("model.safetensors"))?);
    fsutil::write_json(&dir.join("config.json"), &config)?;
    let (val, val_single) = validate(session, &config, &trainer, &model);
    finish(session, dir, &outcome, (&val, &val_single, &config), reporter)?;
    Ok(Summary {
        dir: dir.to_path_buf(),
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        kept_epoch: outcome.kept_epoch,
        val,
        val_single,
        classes: config.classes.clone(),
        n_train: prepared.data.train.len(),
        n_val: prepared.data.val.len(),
        val_people: prepared.split.val_subjects.len(),
        decisions: config.describe_decisions(),
        threshold: config.threshold,
        single_frame: prepared.data.lone.is_some(),
        protocol: protocol(&prepared.split),
    })
}

/// Says what the run trains: the raw labels a head learns, the images, the stages.
fn say_what_trains(session: &Session, model: &Vgg16, reporter: &mut dyn Reporter) {
    let (config, prepared) = (&session.config, &session.prepared);
    if !config.raw_classes.is_empty() {
        let single = if model.cfg.single_to_task.is_empty() {
            ""
        } else {
            "; the single-image head learns the classes themselves (--single-labels raw: the raw labels)"
        };
        reporter.message(&format!(
            "the head learns the {} raw labels ({}); each class's probability is the sum of its raw labels' (--train-labels task learns the classes directly){single}",
            config.raw_classes.len(),
            crate::error::short_list(&config.raw_classes, 8)
        ));
    }
    reporter.message(&format!(
        "training on {} images, validating on {} ({}); stages {}",
        prepared.data.train.len(),
        prepared.data.val.len(),
        config.classes.join(" vs "),
        train::describe_stages(&config.train.stages)
    ));
}

/// Sets the trained `model`'s decision threshold and the single-image
/// head's calibration in `config` from the inner fits over the training
/// people, each trained from `shared` (a head-only recipe's pooled
/// features; rebuilt for a resumed run, whose fit built its own).
fn set_decisions(
    session: &Session,
    (model, shared, tta): (&Vgg16, &[train::Cache], bool),
    (reporter, stop): (&mut dyn Reporter, Option<&AtomicBool>),
    config: &mut RunConfig,
) -> Result<()> {
    let tc = &session.config.train;
    let head_only = tc.head_only();
    let rebuilt;
    let inner_shared: &[train::Cache] = if shared.is_empty() && head_only {
        rebuilt = head_cache(session, model, tta, &mut train::Pass::new(reporter, stop)).map_err(|e| e.if_interrupted("every epoch is saved"))?;
        &rebuilt
    } else {
        shared
    };
    let what = if tc.threshold == ThresholdChoice::Inner {
        format!("setting the threshold on P({})", config.classes[0])
    } else {
        "calibrating the single-image head's probabilities".to_string()
    };
    reporter.message(&format!("{what}: {} inner fits on the training people…", INNER_FOLDS));
    let fits = threshold::inner_fits(session, tc, &session.prepared.data, inner_shared, tta, stop)?.unwrap_or_default();
    if tc.threshold == ThresholdChoice::Inner {
        config.threshold = fits.threshold;
    }
    config.calibration = fits.calibration;
    // What it set is said once, in the summary (`Summary::decisions`).
    if config.describe_decisions().is_none() {
        reporter.message("fewer than 2 training people: the larger probability decides, the single-image head's probabilities as it gives them");
    }
    Ok(())
}

/// The finished model on the validation images (and, for a subject-normalised
/// model, its single-image head on the same images).
fn validate(session: &Session, config: &RunConfig, trainer: &Trainer, model: &Vgg16) -> (Option<Metrics>, Option<Metrics>) {
    let prepared = &session.prepared;
    let val_rows = &prepared.data.val;
    let y: Vec<i64> = val_rows.iter().map(|&i| prepared.labels.targets[i]).collect();
    let score = |logits: &Tensor, mode| {
        let mut probs = rows(&config.task_probs(logits));
        config.calibrate(mode, &mut probs);
        eval::metrics_at(&y, &probs, &config.classes, |_| config.threshold_for(mode))
    };
    if val_rows.is_empty() {
        return (None, None);
    }
    // Scored as predict and evaluate score it by default (at the model's threshold).
    let s = trainer.scores(model, trainer.shared.first(), val_rows, eval::flip_tta(None, model.cfg.subject_norm), None);
    let single = s.single.as_ref().map(|l| score(l, Some(Mode::Single)));
    (Some(score(&s.main, Some(Mode::Person))), single)
}

/// The pooled features of every image (augmented views of the training
/// images, clean and, with flip test-time augmentation, mirrored rows of
/// all), built once for a head-only run and the inner fits that set its
/// threshold (none when the cache is off) — or read back from the feature cache
/// (`Session::feature_cache`), where an earlier finetune on the same
/// images, split, weights and settings left them, and kept there if not;
/// an error where the pass was stopped.
fn head_cache(session: &Session, model: &Vgg16, tta: bool, pass: &mut train::Pass) -> Result<Vec<train::Cache>> {
    let (config, data, device) = (&session.config, &session.prepared.data, session.device);
    let pre = &config.data.preprocess;
    let all: Vec<usize> = (0..data.targets.len()).collect();
    // Kept in float32, as cv keeps them; a cache that is off stays off.
    let keep = config.train.cache && !config.train.cache_f16;
    let entry = session.feature_cache.as_deref().filter(|_| keep).and_then(|dir| crate::eval::features::Entry::new(dir, session, Some(&data.train), tta));
    if let Some(c) =
        entry.as_ref().and_then(|e| e.read_said(session, pass.reporter, "an earlier finetune's pass over the same images, split, weights and settings"))
    {
        return Ok(vec![c]);
    }
    let t0 = std::time::Instant::now();
    let (c, views) =
        match train::plan_and_build(model, &config.train, pre, (&data.gray, data.lone.as_ref()), Block::Head, (&data.train, &all), tta, device, pass)? {
            Ok(built) => built,
            Err(why) => {
                pass.reporter.message(&format!("frozen-prefix cache {why}"));
                return Ok(vec![]);
            }
        };
    pass.reporter.message(&format!(
        "cached the frozen pooled features: {views} view(s) of {} training images, every image clean{}{}, in {:.1}s",
        data.train.len(),
        if tta { " and mirrored" } else { "" },
        if data.lone.is_some() { ", and each one's whole frame for the single-image head" } else { "" },
        t0.elapsed().as_secs_f64()
    ));
    let shared = vec![c];
    if let Some(e) = &entry {
        e.keep(&shared, pass.reporter, "the next finetune on the same images, split and settings");
    }
    Ok(shared)
}

/// Writes `metrics.json`, removes the checkpoints, marks the run complete
/// and points `latest` at it.
fn finish(
    session: &Session,
    dir: &Path,
    outcome: &train::Outcome,
    (val, val_single, config): (&Option<Metrics>, &Option<Metrics>, &RunConfig),
    reporter: &mut dyn Reporter,
) -> Result<()> {
    let mut metrics = serde_json::json!({
        "best_epoch": outcome.best_epoch,
        "kept_epoch": outcome.kept_epoch,
        "epochs_run": outcome.history.len(),
        "protocol": protocol(&session.prepared.split),
        "validation": val,
    });
    if val.is_some() && eval::flip_tta(None, session.config.model.subject_norm == crate::subject::SubjectNormChoice::On) {
        metrics["tta"] = serde_json::json!(eval::FLIP_TTA);
    }
    if let Some(t) = &config.threshold {
        metrics["threshold"] = serde_json::json!(t.describe(&config.classes[0], config.single_calibration()));
    }
    if let Some(c) = config.single_calibration() {
        metrics["calibration"] = serde_json::json!(format!("the single-image head's probabilities: {}", c.describe()));
    }
    if val_single.is_some() {
        metrics["subject_norm"] = serde_json::json!(crate::subject::TRANSDUCTIVE);
        metrics["validation_single_image"] = serde_json::json!(val_single);
    }
    fsutil::write_json(&dir.join("metrics.json"), &metrics)?;
    let _ = std::fs::remove_file(dir.join(train::STATE));
    train::remove_checkpoints(dir, None);
    fsutil::remove_stale_temps(dir);
    fsutil::write_atomic(&dir.join(COMPLETE), b"")?;
    if let Some(w) = point_latest(dir) {
        reporter.message(&w);
    }
    Ok(())
}

/// A 2-D tensor as `Vec` rows of f64.
pub fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_kind(tch::Kind::Double).to_device(Device::Cpu);
    (0..t.size()[0]).map(|i| Vec::<f64>::try_from(t.get(i)).unwrap_or_default()).collect()
}

/// Refuses a `--name` that is not one plain folder name, before any photo
/// is read or folder made (it was checked as the run folder was made, after
/// the data, leaving `--out` behind).
fn check_name(name: Option<&str>) -> Result<()> {
    match name {
        Some(n) if n.is_empty() || n.contains(['/', '\\']) || n.chars().any(char::is_control) || n == "." || n == ".." || n == "latest" => Err(Error::invalid(
            Setting::Name,
            format!("`{}`: a run name must be a plain folder name (no `/`, line break or other control character; not `latest`)", n.escape_debug()),
        )),
        // File systems cap a folder name at 255 bytes; a second run of the same name adds `-N`.
        Some(n) if n.len() > MAX_NAME => Err(Error::invalid(
            Setting::Name,
            format!(
                "a run name of {} bytes is longer than a folder name may be ({MAX_NAME} bytes, leaving room for the `-2` a second run of it adds)",
                n.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// The longest run name: 255 bytes (ext4, XFS, APFS, NTFS's 255 UTF-16 units) less a `-NN` suffix.
const MAX_NAME: usize = 250;

/// The new run's folder in `out`: `name` (checked by `check_name` where the
/// request came in, `finetune` and `rerun`), or the time.
fn new_run_dir(out: &Path, name: Option<&str>) -> Result<PathBuf> {
    fsutil::create_dir(out)?;
    let base = name.map_or_else(|| chrono::Local::now().format("%Y%m%d-%H%M%S").to_string(), str::to_string);
    // create_dir (not _all) either makes the folder or fails: two runs started
    // at once (same --name, or the same second) never share one.
    for k in 1.. {
        let dir = if k == 1 { out.join(&base) } else { out.join(format!("{base}-{k}")) };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::file(&dir, format!("cannot create folder: {e}"))),
        }
    }
    unreachable!("an unbounded range ends only by returning")
}

/// `split.csv`: every image with its label, class, subject, side and size
/// in bytes. Its SHA-256 is the run's data fingerprint (`data_sha256`).
pub(crate) fn split_csv(p: &Prepared) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing CSV into memory cannot fail.
    let _ = w.write_record(["path", "label", "class", "subject", "side", "bytes"]);
    for (i, s) in p.dataset.samples.iter().enumerate() {
        let side = if p.split.val.binary_search(&i).is_ok() { "val" } else { "train" };
        let class = &p.labels.classes[p.labels.targets[i] as usize];
        let bytes = std::fs::metadata(&s.path).map(|m| m.len().to_string()).unwrap_or_default();
        let _ = w.write_record([s.path.to_string_lossy().as_ref(), &s.label, class, s.subject.as_deref().unwrap_or(""), side, &bytes]);
    }
    w.into_inner().unwrap_or_default()
}

/// The file beside `split.csv` with each image's SHA-256: the run's
/// training photos are known by their bytes (`predict::Training`) after the
/// data moved, when their paths name nothing any more. (Not in split.csv,
/// whose SHA-256 is the data fingerprint of every run before it.)
pub const HASHES: &str = "sha256.csv";

/// `HASHES`: `path,sha256`, in split.csv's order; an image that could not
/// be read again for its hash is left out.
fn hashes_csv(p: &Prepared) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing CSV into memory cannot fail.
    let _ = w.write_record(["path", "sha256"]);
    for (s, h) in p.dataset.samples.iter().zip(&p.sha256) {
        if let Some(h) = h {
            let _ = w.write_record([s.path.to_string_lossy().as_ref(), h]);
        }
    }
    w.into_inner().unwrap_or_default()
}

/// The data's fingerprint whatever the split: the SHA-256 of `split.csv`
/// with every image on the training side, as a cross-validation (which has
/// no holdout) records it in its `data_sha256`. Runs of other seeds on the
/// same images, and a cv of them, share it; None for a file that is not a
/// `split.csv`.
pub(crate) fn images_sha256(split: &[u8]) -> Option<String> {
    let mut r = csv::Reader::from_reader(split);
    let header = r.byte_headers().ok()?.clone();
    let side = header.iter().position(|h| h == b"side")?;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_byte_record(&header).ok()?;
    for row in r.byte_records() {
        let row = row.ok()?;
        let fields: Vec<&[u8]> = row.iter().enumerate().map(|(i, f)| if i == side { b"train".as_slice() } else { f }).collect();
        w.write_record(&fields).ok()?;
    }
    Some(sha256_hex(&w.into_inner().ok()?))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `split_changes` for a message: the first few, or that split.csv itself was edited.
fn describe_changes(old: &str, new: &[u8]) -> String {
    let changes = split_changes(old, new);
    if changes.is_empty() {
        "split.csv itself was edited".to_string()
    } else {
        crate::error::short_list(&changes, 5)
    }
}

/// What differs between a run's `split.csv` and the data scanned now, in a
/// few words per image (removed, added, relabelled, resized, moved side).
fn split_changes(old: &str, new: &[u8]) -> Vec<String> {
    let rows = |text: &str| -> std::collections::BTreeMap<String, Vec<String>> {
        csv::Reader::from_reader(text.as_bytes())
            .records()
            .flatten()
            .map(|r| (r.get(0).unwrap_or_default().to_string(), r.iter().skip(1).map(str::to_string).collect()))
            .collect()
    };
    let (a, b) = (rows(old), rows(&String::from_utf8_lossy(new)));
    let mut out = Vec::new();
    for (path, ra) in &a {
        match b.get(path) {
            None => out.push(format!("{path} removed")),
            Some(rb) if ra.first() != rb.first() => out.push(format!("{path} relabelled ({} → {})", ra[0], rb[0])),
            Some(rb) if ra.get(4) != rb.get(4) => out.push(format!("{path} changed size ({} → {} bytes)", ra[4], rb[4])),
            Some(rb) if ra != rb => out.push(format!("{path} changed (subject or side)")),
            Some(_) => {}
        }
    }
    out.extend(b.keys().filter(|p| !a.contains_key(*p)).map(|p| format!("{p} added")));
    out
}

/// Writes `history.csv` (empty validation cells when there is no validation set).
pub fn write_history(path: &Path, rows: &[EpochRow]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let err = |e: csv::Error| Error::file(path, e.to_string());
    w.write_record(["epoch", "stage", "block", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_bacc", "seconds"]).map_err(err)?;
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
    for r in rows {
        w.write_record([
            r.epoch.to_string(),
            r.stage.to_string(),
            r.block.clone(),
            format!("{:.6e}", r.lr),
            format!("{:.6}", r.train_loss),
            format!("{:.6}", r.train_acc),
            opt(r.val_loss),
            opt(r.val_acc),
            opt(r.val_bacc),
            format!("{:.2}", r.seconds),
        ])
        .map_err(err)?;
    }
    let bytes = w.into_inner().map_err(|e| Error::file(path, e.to_string()))?;
    fsutil::write_atomic(path, &bytes)
}

/// Points `<out>/latest` at `dir` (a relative symlink, replaced atomically).
/// A real folder or file named `latest` is left alone, and a link this user
/// may not replace (another user's, in a shared folder with the sticky bit)
/// stays as it is: the finished run is not failed for it, and the returned
/// warning says so and what `latest` still names.
fn point_latest(dir: &Path) -> Option<String> {
    let parent = dir.parent()?;
    let target = dir.file_name().map(PathBuf::from).unwrap_or_default();
    let link = parent.join("latest");
    if link.symlink_metadata().is_ok_and(|m| !m.file_type().is_symlink()) && link_as_text(&link).is_none() {
        return Some(format!("warning: {} is not a link made by vggft, so it was left as it is and does not point at this run", link.display()));
    }
    let tmp = parent.join(format!(".latest.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    let made = std::os::unix::fs::symlink(&target, &tmp).and_then(|()| {
        std::fs::rename(&tmp, &link).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    });
    #[cfg(not(unix))]
    let made: std::io::Result<()> = Ok(());
    made.err().map(|e| {
        let now = match std::fs::read_link(&link).ok().or_else(|| link_as_text(&link).and_then(|r| r.file_name().map(PathBuf::from))) {
            Some(t) => format!("it still names {}", t.display()),
            None => "it does not name this run".to_string(),
        };
        format!("warning: {} could not be pointed at this run ({e}): {now}; give this run as {}", link.display(), dir.display())
    })
}

/// A run folder given as itself, as one of its files (`RUN/model.safetensors`),
/// or as the runs folder it was written into (`finetune --out DIR`: its
/// `DIR/latest`), the three paths a user has at hand after training.
pub fn run_dir(p: &Path) -> PathBuf {
    if let Some(run) = link_as_text(p).or_else(|| link_as_text(&p.join("latest"))) {
        return run;
    }
    match p.parent() {
        Some(parent) if p.is_file() && parent.join("config.json").is_file() => parent.to_path_buf(),
        // Its `latest` link, also when that names a run no longer there (for `load_run` to say so).
        _ if p.is_dir() && !p.join("config.json").exists() && (p.join("latest").join("config.json").is_file() || dangling(&p.join("latest")).is_some()) => {
            p.join("latest")
        }
        _ => p.to_path_buf(),
    }
}

/// The run that `latest` names where it is a file holding the name, not a
/// link: a runs folder copied where links are not kept (git with
/// `core.symlinks` off writes a link as such a file, as some zip and sync
/// tools do). None for anything else named `latest` (a user's own file).
fn link_as_text(p: &Path) -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(p).ok()?;
    if !meta.is_file() || meta.len() > 4096 || p.file_name()? != "latest" {
        return None;
    }
    let text = std::fs::read_to_string(p).ok()?;
    let name = text.trim();
    let run = p.parent()?.join(name);
    let one_name = !name.is_empty() && !name.contains(['/', '\\']) && name != "." && name != "..";
    (one_name && run.join("config.json").is_file()).then_some(run)
}

/// The target of a link at `p` that names nothing (`runs/latest` after its run was deleted).
fn dangling(p: &Path) -> Option<PathBuf> {
    let is_link = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && !p.exists() {
        std::fs::read_link(p).ok()
    } else {
        None
    }
}

/// A run folder's `model.safetensors`, which only a finished run has.
pub fn model_file(dir: &Path) -> Result<PathBuf> {
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(Error::file(dir, "has no model.safetensors: the run did not finish (resume it with `vggft finetune --resume RUN`)"));
    }
    Ok(weights)
}

/// Loads a finished run's model from its folder alone.
pub fn load_run(dir: &Path, device: Device) -> Result<(RunConfig, Vgg16)> {
    crate::model::settle_vector_math();
    if let Some(target) = dangling(dir) {
        return Err(Error::file(
            dir,
            format!("names {}, which is not there any more (moved or deleted): train a run with `vggft finetune`, or pass --model RUN", target.display()),
        ));
    }
    if !fsutil::exists(dir)? {
        return Err(Error::file(
            dir,
            "run folder not found (train one with `vggft finetune`, or pass --model RUN; `finetune --out DIR` puts the latest run at DIR/latest)",
        ));
    }
    let config = read_config(dir)?;
    let weights = model_file(dir)?;
    let mut model = Vgg16::for_loading(&model_config(&config), device)?;
    let loaded = weights::load_checkpoint(&mut model, &weights)?;
    if config.model_sha256.as_ref().is_some_and(|sha| *sha != loaded.sha256) {
        return Err(Error::file(
            weights,
            "is not the model this run trained (its SHA-256 differs from the one in config.json): the run's threshold, calibration and person statistics belong to that one — put it back, or give the run the model came from",
        ));
    }
    Ok((config, model))
}

#[cfg(test)]
mod tests {
    use super::{images_sha256, sha256_hex};

    #[test]
    fn the_images_fingerprint_sets_every_side_to_train_and_keeps_the_rest() {
        let held = "path,label,class,subject,side,bytes\n/d/a.png,NE,neutral,KA,val,10\n\"/d/b,c.png\",HA,expressive,KL,train,12\n";
        let all = "path,label,class,subject,side,bytes\n/d/a.png,NE,neutral,KA,train,10\n\"/d/b,c.png\",HA,expressive,KL,train,12\n";
        assert_eq!(images_sha256(held.as_bytes()), Some(sha256_hex(all.as_bytes())));
        assert_eq!(images_sha256(all.as_bytes()), Some(sha256_hex(all.as_bytes())), "already all train: the file's own hash");
        let other = all.replace(",12\n", ",13\n");
        assert_ne!(images_sha256(other.as_bytes()), images_sha256(all.as_bytes()), "a changed size is other data");
        assert_eq!(images_sha256(b"path,label\n/d/a.png,NE\n"), None, "no side column: not a split.csv");
    }
}
