//! Command-line definitions (clap derive), converted into the library's
//! plain configs; nothing here touches libtorch.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{parse_stages, stages_for, ClassWeights, DataConfig, Keep, ModelOptions, ProbeRequest, SingleLabels, TrainConfig};
use crate::data::augment::Augment;
use crate::data::image::Crop;
use crate::data::scan::DataFormat;
use crate::data::split::{parse_label_map, Task, TrainLabels, ValSpec};
use crate::data::Preprocess;
use crate::error::{Error, Result, Setting};
use crate::eval::threshold::{CalibrateChoice, ThresholdChoice};
use crate::model::{Block, BnMode, HeadKind, PoolGrid, Precision};
use crate::subject::SubjectNormChoice;
use crate::train::optim::{OptimKind, Schedule};

/// A clap value parser that checks a string option with the library's own
/// parser, so a bad value is a usage error (exit 2) naming the flag; the
/// option stays a string and is parsed again where it is used.
fn checked<T: 'static>(parse: fn(&str) -> Result<T>) -> impl Fn(&str) -> std::result::Result<String, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        parse(s).map(|_| s.to_string()).map_err(|e| match e {
            Error::Invalid { setting, problem } => setting_problem(setting, &problem),
            other => render(&other),
        })
    }
}

/// A decimal number; one written with a decimal comma (`0,001`, as some
/// locales write it) is said how to write.
fn decimal(s: &str) -> std::result::Result<f64, String> {
    s.trim().parse().map_err(|e| match s.replace(',', ".").trim().parse::<f64>() {
        Ok(x) if s.matches(',').count() == 1 => format!("`{s}`: write decimals with a point ({x})"),
        _ => format!("`{s}`: {e}"),
    })
}

/// A count (`--batch-size`, `--members`, `--patience`, …): what else was
/// typed is said as such, not as the parser's "invalid digit found in string".
fn whole(s: &str) -> std::result::Result<usize, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not a whole number (0, 1, 2, …)"))
}

/// A whole number in `lo..=hi` (`--threads`, `--image-size`, `--repeats`, …).
/// Out of range is said as clap says it, for a negative number and one too
/// large for the type too (clap's own parsers say "invalid digit found in
/// string" and "number too large to fit in target type" there).
fn within<T: TryFrom<i64>>(lo: i64, hi: i64) -> impl Fn(&str) -> std::result::Result<T, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let t = s.trim();
        let digits = t.strip_prefix('-').unwrap_or(t);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{s}` is not a whole number"));
        }
        t.parse::<i64>().ok().filter(|v| (lo..=hi).contains(v)).and_then(|v| T::try_from(v).ok()).ok_or_else(|| format!("{t} is not in {lo}..={hi}"))
    }
}

/// `--seed`: a whole number from 0.
fn one_seed(s: &str) -> std::result::Result<u64, String> {
    s.trim().parse().map_err(|_| format!("`{s}` is not a seed (a whole number from 0)"))
}

/// One of `--seeds`; a range (`0-4`, `0..4`) is said how to write.
fn seed(s: &str) -> std::result::Result<u64, String> {
    one_seed(s).map_err(|not_one| match s.split_once('-').or_else(|| s.split_once("..")) {
        Some((a, b)) if a.trim().parse::<u64>().is_ok() && b.trim().parse::<u64>().is_ok() => {
            format!("`{s}` is a range: list the seeds (0,1,2) or give --repeats N for seeds 0 to N−1")
        }
        _ => not_one,
    })
}

/// `--subject`: a person id, not blank (a blank id names nobody).
fn person_id(s: &str) -> std::result::Result<String, String> {
    if s.trim().is_empty() {
        return Err("give a person id (it is empty); --subject-from none answers every input alone".into());
    }
    Ok(s.to_string())
}

/// `--threshold`, parsed by the library (a bad value is a usage error naming the flag).
fn threshold_arg(s: &str) -> std::result::Result<ThresholdChoice, String> {
    ThresholdChoice::parse(s).map_err(|e| match e {
        Error::Invalid { setting, problem } => setting_problem(setting, &problem),
        other => render(&other),
    })
}

/// `--calibrate`, parsed by the library.
fn calibrate_arg(s: &str) -> std::result::Result<CalibrateChoice, String> {
    CalibrateChoice::parse(s).map_err(|e| match e {
        Error::Invalid { setting, problem } => setting_problem(setting, &problem),
        other => render(&other),
    })
}

/// The flag that sets `setting` (settings without a flag keep their
/// config.json name).
pub fn flag(setting: Setting) -> String {
    match setting {
        Setting::Classes | Setting::RawLabels | Setting::Normalisation => setting.name().to_string(),
        s => format!("--{}", s.name().replace('_', "-")),
    }
}

fn setting_problem(setting: Setting, problem: &str) -> String {
    format!("{}{}{problem}", flag(setting), crate::error::sep(problem))
}

/// A library error in the command line's words: settings named by their flags.
pub fn render(e: &Error) -> String {
    use crate::error::sep;
    match e {
        Error::Invalid { setting, problem } => format!("invalid option: {}", setting_problem(*setting, problem)),
        Error::ConfigFile { path, setting, problem } => {
            format!("{}: {}: {}{}{problem}", path.display(), crate::error::REFUSED_SETTING, flag(*setting), sep(problem))
        }
        other => other.to_string(),
    }
}

/// `--device` syntax (whether the device exists is checked when it is used).
fn device_syntax(s: &str) -> Result<()> {
    match s {
        "auto" | "cpu" | "cuda" => Ok(()),
        _ if s.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok()) => Ok(()),
        _ => Err(Error::invalid(Setting::Device, format!("`{s}`: expected auto, cpu, cuda or cuda:N"))),
    }
}

fn face_syntax(s: &str) -> Result<()> {
    crate::data::face::FaceMode::parse(s, false).map(|_| ())
}

fn conv_block(s: &str) -> Result<()> {
    conv_block_of(s, Setting::Layer)
}

/// A conv block's name, refused in the words of the option that gave it.
fn conv_block_of(s: &str, setting: Setting) -> Result<()> {
    match Block::parse(s, setting) {
        Ok(Block::Head) => Err(Error::invalid(setting, "must be a conv block (conv1 … conv5)")),
        Ok(_) => Ok(()),
        Err(_) => Err(Error::invalid(setting, format!("unknown block `{s}` (allowed: conv1, conv2, conv3, conv4, conv5)"))),
    }
}

fn features_syntax(s: &str) -> Result<()> {
    s.split(',').try_for_each(|b| conv_block_of(b.trim(), Setting::Features))
}

/// `--model` when not given: the run `finetune` made last.
pub const DEFAULT_MODEL: &str = "runs/latest";

#[derive(Parser, Debug)]
#[command(name = "vggft", version, about = "Fine-tune ImageNet VGG16 on small grayscale face datasets, honestly evaluated")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fine-tune VGG16 on a dataset (the bundled sample when --data is not given).
    Finetune(FinetuneArgs),
    /// Predict images with a finished run.
    Predict(PredictArgs),
    /// Sweep the learning rate exponentially and suggest one.
    LrFind(LrFindArgs),
    /// Score a finished run on a labelled dataset.
    Evaluate(EvaluateArgs),
    /// Subject-grouped cross-validation of the finetune recipe over folds and seeds.
    Cv(CvArgs),
    /// Grad-CAM heatmaps: where the network looks, per image and per class.
    Explain(ExplainArgs),
    /// Write one image's exact network input (1×3×S×S float32, the run's crop,
    /// gray→RGB and normalisation) as safetensors, for other tools (ONNX, PyTorch).
    Preprocess {
        /// The image.
        image: PathBuf,
        /// Run folder, or its model.safetensors.
        #[arg(long, visible_alias = "run", default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// Output file (safetensors, one tensor named `input`).
        #[arg(long)]
        out: PathBuf,
    },
    /// Detect and crop the face in every image of a dataset; write crops, faces.csv and a contact sheet.
    Faces {
        /// Dataset folder (any layout finetune reads): one (a list of photos,
        /// as a shell expands `jaffe/*`, is refused).
        #[arg(value_name = "DIR", required_unless_present = "data", num_args = 1..)]
        dir: Vec<PathBuf>,
        /// The dataset folder given as finetune and cv take it.
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
        /// Folder for crops/, faces.csv, manifest.csv (the crops as a dataset) and contact_sheet.png.
        #[arg(long)]
        out: PathBuf,
        /// Side of each crop in pixels (32 to 512).
        #[arg(long, default_value_t = 128, value_parser = within::<u32>(32, 512))]
        tile: u32,
        /// Leave unreadable images out (each named), instead of stopping before anything is written.
        #[arg(long)]
        skip_bad: bool,
        /// Each photo's person from its file name, as finetune's --subject-pattern (e.g. '^([^_]+)_' for 002_03.jpg → 002):
        /// written to the crops' manifest, so that training on the crops splits by person.
        #[arg(long, value_name = "REGEX", value_parser = checked(crate::data::scan::SubjectPattern::new))]
        subject_pattern: Option<String>,
    },
    /// Compare runs, cross-validations and evaluations side by side (Markdown).
    Report {
        /// Run, cv or evaluate folders, or folders of them (finetune's and cv's `runs/`).
        #[arg(default_value = "runs")]
        dirs: Vec<PathBuf>,
    },
    /// Measure this machine: libtorch matmul peak and VGG16 forward throughput (part of `make bench`).
    Speed(SpeedArgs),
    /// Weight-file tools.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// List a safetensors file's tensors, say which architecture it matches, print its SHA-256.
    Inspect {
        /// The safetensors file, or a run folder (its model.safetensors).
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Images, folders of images, or CSV manifests (their `path` column); `-` reads more of them from standard input, one per line.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Also take the images of every sub-folder of a folder.
    #[arg(long, short)]
    pub recursive: bool,
    /// Run folder, or its model.safetensors.
    #[arg(long, visible_alias = "run", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Explain this class instead of each image's predicted class; for a head trained on raw labels, also one raw label alone (`--class HA`).
    #[arg(long)]
    pub class: Option<String>,
    /// Block whose output the heatmap is computed on (its map is 7×7 for conv5 at 224 px) [default: the last block the head reads: conv5, or the last of the run's --features].
    #[arg(long, value_parser = checked(conv_block))]
    pub layer: Option<String>,
    /// Folder for the heatmaps, sheet.png and explain.csv (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the mean heatmap of each class (over the images explained as that class).
    #[arg(long)]
    pub mean: bool,
    /// Also write each image's input, heat and probabilities as safetensors (cross-checks).
    #[arg(long)]
    pub arrays: bool,
    /// Subject-normalised models: every input shows this one person (as predict's).
    #[arg(long, conflicts_with = "subject_from", value_parser = person_id)]
    pub subject: Option<String>,
    /// Subject-normalised models: each input's person from `name`, `parent` (one folder per person) or `none`
    /// (every input alone: the single-image head), as predict's.
    #[arg(long, value_parser = ["name", "parent", "none"], default_value = "name")]
    pub subject_from: String,
    /// With --subject-from name: each input's person from its file name by this regular expression (its group, or
    /// its whole match), instead of the run's own --subject-pattern; names it does not match as without it (as predict's).
    #[arg(long, value_name = "REGEX", conflicts_with = "subject", value_parser = checked(crate::data::scan::SubjectPattern::new))]
    pub subject_pattern: Option<String>,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, value_parser = within::<i32>(1, 1024))]
    pub threads: Option<i32>,
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = checked(device_syntax))]
    pub device: String,
}

#[derive(Args, Debug)]
pub struct SpeedArgs {
    /// Input side in pixels of the timed forward passes (32 to 1024, as for training).
    #[arg(long, default_value_t = 224, value_parser = within::<i64>(32, 1024))]
    pub image_size: i64,
    /// Images per timed forward pass.
    #[arg(long, default_value_t = 16, value_parser = within::<i64>(1, 4096))]
    pub batch_size: i64,
    /// Timed repetitions (the best is kept).
    #[arg(long, default_value_t = 3, value_parser = within::<u64>(1, 1000))]
    pub reps: u64,
    /// Precisions to time [default: f32, and bf16 unless the CPU has no bf16 arithmetic (no AMX-BF16 or AVX512-BF16: emulated, ~10× slower)].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub precision: Vec<Precision>,
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = checked(device_syntax))]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, value_parser = within::<i32>(1, 1024))]
    pub threads: Option<i32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Data")]
pub struct DataArgs {
    /// Dataset: a folder (JAFFE files, KDEF, RaFD, CK+, class folders, or with manifest.csv) or a CSV manifest.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The dataset given as a word (`vggft finetune jaffe/`), as --data: one
    /// folder or CSV manifest (a list of photos, as a shell expands `jaffe/*`, is refused).
    #[arg(value_name = "DATA", num_args = 0..)]
    pub dataset: Vec<PathBuf>,
    /// Dataset layout: auto, jaffe, kdef, rafd, ckplus, oulu, folders or csv (`--format` is an older name).
    #[arg(long = "layout", alias = "format", value_enum, default_value_t = DataFormat::Auto)]
    pub format: DataFormat,
    /// binary: neutral vs expressive; multiclass: every label its own class.
    #[arg(long, value_enum, default_value_t = Task::Binary)]
    pub task: Task,
    /// Custom classes: raw=class,… (defines the classes; overrides --task).
    #[arg(long)]
    pub label_map: Option<String>,
    /// Labels the head is trained on: raw (every raw label an output; task
    /// probabilities are sums), task, or auto (raw when there are more raw labels than classes).
    #[arg(long, value_enum, default_value_t = TrainLabels::Auto)]
    pub train_labels: TrainLabels,
    /// Crop before resizing: none, x,y,w,h (source pixels) or center:F.
    #[arg(long, default_value = "none", allow_hyphen_values = true, value_parser = checked(Crop::parse))]
    pub crop: String,
    /// Face localisation before resizing: auto (SeetaFace detector, each photo's own box), person (the median
    /// of the boxes found in each person's photos of one size, the same for all of them), none, or crop:x,y,w,h; default
    /// person when per-subject normalisation is on (the whole frame when no face is found in any image), else none.
    /// With person, the single-image head reads the whole frame (a lone photo has no person's box).
    #[arg(long, value_parser = checked(face_syntax))]
    pub face: Option<String>,
    /// With --face auto: an image without a detected face is an error instead of a centred crop.
    #[arg(long)]
    pub face_required: bool,
    /// Network input side in pixels.
    #[arg(long, default_value_t = 224, value_parser = within::<u32>(*crate::data::IMAGE_SIZES.start() as i64, *crate::data::IMAGE_SIZES.end() as i64))]
    pub image_size: u32,
    /// Validation: subjects:F (subject-grouped fraction), or none.
    #[arg(long, default_value = "subjects:0.2", value_parser = checked(ValSpec::parse))]
    pub val: String,
    /// Validate on these subjects (comma-separated; an id that holds a comma itself is read whole) instead of --val.
    #[arg(long, value_delimiter = ',', conflicts_with = "val")]
    pub val_subjects: Vec<String>,
    /// Skip unreadable images with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Each photo's person from its file name, where the names follow no face set's convention: a regular expression whose group (or whole match) is the person, e.g. '^([^_]+)_' for 002_03.jpg → 002. It overrides the layout's people, and predict, explain and evaluate of the run take it too (unless given one of their own).
    #[arg(long, value_name = "REGEX", value_parser = checked(crate::data::scan::SubjectPattern::new))]
    pub subject_pattern: Option<String>,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Pretrained weights (safetensors); default: the best file in weights/.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// BatchNorm handling: drop (plain VGG16), frozen, recalibrate (AdaBN), train.
    #[arg(long, value_enum, default_value_t = BnMode::Drop)]
    pub bn: BnMode,
    /// Classification head.
    #[arg(long, value_enum, default_value_t = HeadKind::Bn)]
    pub head: HeadKind,
    /// Dropout before the head's linear layer(s).
    #[arg(long, value_parser = decimal, default_value_t = 0.5)]
    pub dropout: f64,
    /// Hidden layer width of the bn head (0: none).
    #[arg(long, default_value_t = 0)]
    pub hidden: i64,
    /// Blocks whose pooled outputs feed the head, e.g. conv4,conv5 (multi-layer
    /// features); default conv5, or conv4,conv5 when per-subject normalisation
    /// is on and there are several photos per person.
    #[arg(long, value_parser = checked(features_syntax))]
    pub features: Option<String>,
    /// Also average each feature block's output over the cells of a ROWSxCOLS
    /// grid (3x3: brows, eyes and nose, mouth, each in three columns), as
    /// expressions are local; 1x1: global pooling only. Default 3x3 when
    /// per-subject normalisation is on and there are several photos per person.
    #[arg(long, value_name = "RxC", value_parser = checked(PoolGrid::parse))]
    pub pool_grid: Option<String>,
    /// Standardise each person's pooled features with that person's own statistics
    /// (auto: on where every person has at least 2 photos; with several — at least 3 of at least half of them, as in JAFFE — the recipe also changes: conv4+conv5, 3x3 grid, long probe).
    #[arg(long, value_enum, default_value_t = SubjectNormChoice::Auto)]
    pub subject_norm: SubjectNormChoice,
    /// What the single-image head (per-subject normalisation's answer for a
    /// person without other photos) learns when the main head learns raw labels:
    /// task (the task's classes directly) or raw (the raw labels, as the main head).
    #[arg(long, value_enum, default_value_t = SingleLabels::Task)]
    pub single_labels: SingleLabels,
    /// Start from random weights (ablations, tests).
    #[arg(long, hide = true, conflicts_with = "weights")]
    pub random_init: bool,
    /// Divide every layer's width (tests only).
    #[arg(long, hide = true, default_value_t = 1)]
    pub width_div: i64,
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = checked(device_syntax), help_heading = "Cache and speed")]
    pub device: String,
    /// Convolution arithmetic: f32, or bf16 (float32 weights, optimizer state and loss).
    #[arg(long, value_enum, default_value_t = Precision::F32, help_heading = "Cache and speed")]
    pub precision: Precision,
    /// Mixed precision: shorthand for --precision bf16 (CUDA or CPU).
    #[arg(long, help_heading = "Cache and speed")]
    pub amp: bool,
    /// CPU threads for libtorch (default: libtorch's choice). `cv` trains a
    /// head-only recipe's folds this many at a time (`--parallel-folds`).
    #[arg(long, value_parser = within::<i32>(1, 1024), help_heading = "Cache and speed")]
    pub threads: Option<i32>,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Training")]
pub struct TrainArgs {
    /// Train this block and everything above it (after a head-only warm-up); default conv5, or head (a probe) when per-subject normalisation is on: --freeze-epochs + --epochs epochs, or with several photos per person 50 epochs at --lr 0.01 unless those are given.
    #[arg(long, value_enum)]
    pub freeze_until: Option<Block>,
    /// Epochs of the main stage (after the --freeze-epochs head-only ones; progress counts both) [default: 12].
    #[arg(long, value_parser = crate::config::epoch_count)]
    pub epochs: Option<usize>,
    /// Head-only epochs before the main stage, fastai's freeze_epochs (`--warmup-epochs` is an older name) [default: 3].
    #[arg(long = "freeze-epochs", alias = "warmup-epochs", value_parser = crate::config::epoch_count)]
    pub warmup_epochs: Option<usize>,
    /// Explicit stages, e.g. head:3,conv5:12,conv4:10 (instead of the three above: given with one of them, refused rather than one silently ignored).
    #[arg(long, value_parser = checked(parse_stages), conflicts_with_all = ["freeze_until", "epochs", "warmup_epochs"])]
    pub stages: Option<String>,
    /// Optimizer: sgd (with momentum; generalises best on small data), adam, adamw or rmsprop.
    #[arg(long, value_enum, default_value_t = OptimKind::Sgd)]
    pub optimizer: OptimKind,
    /// Heads trained side by side, each on its own batch order and augmented views, and averaged into one head when training ends (head-only stages; the saved model has one head) [default: 5 for the probe on person statistics with several photos per person, else 1].
    #[arg(long, value_parser = whole)]
    pub members: Option<usize>,
    /// Two-class tasks: the threshold on P(first class, e.g. neutral) at or above which the model answers that class — auto (inner for the probe on person statistics with several photos per person, where the larger probability left half the neutral photos wrong; else off), inner (set after training by a 3-fold subject-grouped cross-validation over the training people: 3 more fits), off (the larger probability) or a probability P.
    #[arg(long, default_value = "auto", value_parser = threshold_arg)]
    pub threshold: ThresholdChoice,
    /// The single-image head's probabilities (a photo with no other photo of its person): auto (inner where the inner fits run — --threshold inner — and for the probe on person statistics with several photos per person, where the head was near-certain on a coin toss; else off), inner (calibrated on the held-out scores of a 3-fold subject-grouped cross-validation over the training people: two classes Platt scaling, more a temperature; every decision unchanged) or off (as the head gives them).
    #[arg(long, default_value = "auto", value_parser = calibrate_arg)]
    pub calibrate: CalibrateChoice,
    /// Head learning rate (default: 0.003 for sgd, 0.001 otherwise; 0.01 for an sgd probe on person statistics with several photos per person).
    #[arg(long, value_parser = decimal, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Rate multiplier per block below the head: conv5 ×f, conv4 ×f², …
    #[arg(long, value_parser = decimal, default_value_t = 0.1)]
    pub block_lr_factor: f64,
    /// SGD momentum (ignored by adam/adamw).
    #[arg(long, value_parser = decimal, default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay on conv/linear weights (default: 0.01 for adamw, 1e-4 otherwise).
    #[arg(long, value_parser = decimal, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule within each stage (after the warm-up).
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    pub schedule: Schedule,
    /// Warm-up, as a fraction of each stage's steps.
    #[arg(long, value_parser = decimal, default_value_t = 0.1)]
    pub warmup: f64,
    /// Images per training batch.
    #[arg(long, default_value_t = 16, value_parser = whole)]
    pub batch_size: usize,
    /// Label smoothing of the cross-entropy, in [0, 0.5).
    #[arg(long, value_parser = decimal, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Loss weights per class: auto (inverse class frequency) or none.
    #[arg(long, value_enum, default_value_t = ClassWeights::Auto)]
    pub class_weights: ClassWeights,
    /// Augmentation preset: none, flip, light, strong (knobs below override).
    #[arg(long, default_value = "light", value_parser = checked(Augment::preset), help_heading = "Augmentation")]
    pub augment: String,
    /// Random horizontal flips (overrides the preset): --flip, or --flip false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Augmentation")]
    pub flip: Option<bool>,
    /// Max rotation in degrees.
    #[arg(long, value_parser = decimal, help_heading = "Augmentation")]
    pub rotate: Option<f64>,
    /// Max zoom fraction.
    #[arg(long, value_parser = decimal, help_heading = "Augmentation")]
    pub zoom: Option<f64>,
    /// Max shift fraction.
    #[arg(long, value_parser = decimal, help_heading = "Augmentation")]
    pub translate: Option<f64>,
    /// Max brightness change, as a fraction of the range (0–1).
    #[arg(long, value_parser = decimal, help_heading = "Augmentation")]
    pub brightness: Option<f64>,
    /// Max contrast change, as a fraction (0–0.95).
    #[arg(long, value_parser = decimal, help_heading = "Augmentation")]
    pub contrast: Option<f64>,
    /// Cached training also draws each image's unaugmented view and its
    /// mirror image beside the augmented ones: --clean-views, or
    /// --clean-views false [default: on for the probe with per-subject
    /// normalisation and several photos per person]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "Augmentation")]
    pub clean_views: Option<bool>,
    /// Early-stopping patience in epochs within a stage, on validation loss (0: off) [default: 5; off for the head-only probe chosen with per-subject normalisation and several photos per person]
    #[arg(long, value_parser = whole)]
    pub patience: Option<usize>,
    /// Which epoch's weights the run keeps: best (lowest validation loss) or last [default: best; last for the head-only probe chosen with per-subject normalisation and several photos per person: the model `cv` measures]
    #[arg(long, value_enum)]
    pub keep: Option<Keep>,
    /// Do not cache the frozen blocks' output.
    #[arg(long, help_heading = "Cache and speed")]
    pub no_cache: bool,
    /// Augmented views per image in the cache.
    #[arg(long, default_value_t = 4, value_parser = whole, help_heading = "Cache and speed")]
    pub cache_views: usize,
    /// Cache memory bound in MiB.
    #[arg(long, default_value_t = 3072, value_parser = whole, help_heading = "Cache and speed")]
    pub cache_mem: usize,
    /// Keep the cache in float16 (half the memory; activations rounded to 11 bits).
    #[arg(long, help_heading = "Cache and speed")]
    pub cache_f16: bool,
    /// Seed of the split, shuffles, augmentation and initialisation (a run is reproducible from it).
    #[arg(long, default_value_t = 0, value_parser = one_seed)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Folder that holds run folders (as timm's --output): the run goes to OUT/NAME, and OUT/latest points to it.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Run folder name (default: a timestamp).
    #[arg(long)]
    pub name: Option<String>,
    /// Continue an interrupted run (all other options come from its config.json).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Train the recipe saved in RUN's config.json again as a new run: the
    /// same data, weights, options, thread count and seed (--seed: another
    /// one); on the same CPU it reproduces RUN's history.csv. Only --seed,
    /// --out, --name, --feature-cache and --quiet go with it
    #[arg(long, value_name = "RUN", conflicts_with = "resume")]
    pub rerun: Option<PathBuf>,
    /// Keep a head-only recipe's pooled features in this folder, and read them
    /// back when a later finetune uses the same images, split, weights and
    /// settings (another --lr, --epochs or --members: the pass through the
    /// trunk, minutes on a laptop CPU, is done once). As cv's: default
    /// $VGGFT_FEATURE_CACHE, else $XDG_CACHE_HOME/vggft/features
    /// (~/.cache/vggft/features); off: none
    #[arg(long, value_name = "DIR|off", help_heading = "Cache and speed")]
    pub feature_cache: Option<String>,
    /// Only errors and the final summary.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LrFindArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Sweep steps.
    #[arg(long, default_value_t = 200, value_parser = whole)]
    pub steps: usize,
    /// First learning rate of the sweep.
    #[arg(long, value_parser = decimal, default_value_t = 1e-6)]
    pub start_lr: f64,
    /// Last learning rate of the sweep.
    #[arg(long, value_parser = decimal, default_value_t = 1.0)]
    pub end_lr: f64,
    /// Output folder for lr-find.csv / lr-find.png.
    #[arg(long, default_value = "runs/lr-find")]
    pub out: PathBuf,
    /// Only errors and the suggestion.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Run folder, or its model.safetensors.
    #[arg(long, visible_alias = "run", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Labelled dataset (any layout finetune reads).
    #[arg(long, required_unless_present = "dataset")]
    pub data: Option<PathBuf>,
    /// The dataset given as a word (`vggft evaluate test/`), as --data: one
    /// folder or CSV manifest (a list of photos, as a shell expands `test/*`, is refused).
    #[arg(value_name = "DATA", num_args = 0..)]
    pub dataset: Vec<PathBuf>,
    /// Dataset layout: auto, jaffe, kdef, rafd, ckplus, oulu, folders or csv (`--format` is an older name).
    #[arg(long = "layout", alias = "format", value_enum, default_value_t = DataFormat::Auto)]
    pub format: DataFormat,
    /// Output folder for metrics.json and confusion.png (default: `RUN/eval-<data name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Skip unreadable images with a warning instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// The data's labels read as the run's: data=label,… (`smiling=happy`,
    /// `calm=neutral`; on the left a JAFFE code stands for its expression),
    /// then mapped to classes by the run's own rule: for a face set that
    /// names an expression otherwise.
    #[arg(long, value_name = "DATA=LABEL,…")]
    pub label_map: Option<String>,
    /// Each photo's person from its file name by this regular expression (its group, or its whole match, e.g.
    /// '^([^_]+)_' for anna_1.jpg → anna), instead of the run's own --subject-pattern: for data named otherwise
    /// than the training data; a name it does not match keeps the person its layout gives.
    #[arg(long, value_name = "REGEX", value_parser = checked(crate::data::scan::SubjectPattern::new))]
    pub subject_pattern: Option<String>,
    /// Score only images the run did not train on (its split.csv); without it, overlap is warned about.
    #[arg(long)]
    pub exclude_train: bool,
    /// Also write the N worst-predicted images (highest loss) with Grad-CAM heatmaps: top_losses.png and .csv.
    #[arg(long, default_value_t = 0, value_parser = whole)]
    pub top_losses: usize,
    /// Block whose output the top-loss heatmaps are computed on [default: the last block the head reads: conv5, or the last of the run's --features].
    #[arg(long, value_parser = checked(conv_block))]
    pub layer: Option<String>,
    /// Test-time augmentation (as `predict --tta`).
    #[arg(long, value_enum, default_value_t = Tta::Auto)]
    pub tta: Tta,
    /// Convolution arithmetic (default: the run's own).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = checked(device_syntax))]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, value_parser = within::<i32>(1, 1024))]
    pub threads: Option<i32>,
}

#[derive(Args, Debug)]
pub struct CvArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// loso (leave one subject out) or K (subject-grouped, stratified where possible).
    #[arg(long, default_value = "5", value_parser = checked(crate::eval::cv::Folds::parse))]
    pub folds: String,
    /// Seeds to repeat the folds with (each seed: new folds for K, new training randomness).
    #[arg(long, value_delimiter = ',', default_value = "0", value_parser = seed)]
    pub seeds: Vec<u64>,
    /// Instead of --seeds: seeds 0..R (at most 1000: the spread over seeds settles long before).
    #[arg(long, conflicts_with = "seeds", value_parser = within::<u64>(1, 1000))]
    pub repeats: Option<u64>,
    /// Run only fold i (0-based) of each seed into the shared --out folder; merge later with --collect.
    #[arg(long, requires = "out", value_parser = whole)]
    pub fold: Option<usize>,
    /// Also train a head-only probe on every fold (same folds, seeds, features and
    /// normalisation) and report it beside the recipe.
    #[arg(long, value_parser = ["probe"])]
    pub baseline: Option<String>,
    /// Epochs of the --baseline probe [default: the session's probe: 15, or 50 at --lr 0.01 with 5 heads averaged (--members) on person statistics with several photos per person].
    #[arg(long, value_parser = crate::config::epoch_count)]
    pub probe_epochs: Option<usize>,
    /// Test-time augmentation of the test folds: flip averages each image's
    /// probabilities with its mirror image's (as `predict --tta flip`).
    #[arg(long, value_enum, default_value_t = Tta::Auto)]
    pub tta: Tta,
    /// Also write the N worst-predicted test images over all folds, each with a
    /// Grad-CAM heatmap from its own fold's model: top_losses.png and .csv.
    #[arg(long, default_value_t = 0, value_parser = whole)]
    pub top_losses: usize,
    /// Train a head-only recipe's folds side by side on the CPU, --threads
    /// at a time (fewer where they would take over half the free memory),
    /// one core each (~1.4× faster on 2 cores; a fold's numbers then do not
    /// depend on the thread count). --parallel-folds false: one fold at a
    /// time on all threads
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Cache and speed")]
    pub parallel_folds: bool,
    /// Keep a head-only recipe's pooled features in this folder, and read them
    /// back when a later cv uses the same images, weights and settings: the
    /// pass through the trunk (minutes on a laptop CPU) is done once. Entries
    /// are found by a hash of the pixels, weights, settings and this program;
    /// the least recently used go beyond 2 GiB. Default: $VGGFT_FEATURE_CACHE,
    /// else $XDG_CACHE_HOME/vggft/features (~/.cache/vggft/features); off: none
    #[arg(long, value_name = "DIR|off", help_heading = "Cache and speed")]
    pub feature_cache: Option<String>,
    /// Write the shared pooled-feature cache to this safetensors file (study scripts).
    #[arg(long, hide = true)]
    pub dump_features: Option<PathBuf>,
    /// Read that cache back instead of computing it (probe recipes; study scripts).
    #[arg(long, hide = true)]
    pub load_features: Option<PathBuf>,
    /// Merge the fold results in this cv folder and print the summary (runs nothing).
    #[arg(long)]
    pub collect: Option<PathBuf>,
    /// With --collect: merge even when some folds are missing (the summary says so).
    #[arg(long, requires = "collect")]
    pub partial: bool,
    /// Output folder (default: `runs/cv-<timestamp>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only errors and the final summary.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
    /// One JSON object per line, printed as each image is done.
    Jsonl,
    Csv,
}

/// Test-time augmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Tta {
    /// flip for a model with per-subject normalisation (where it measured better: docs/results/accuracy), none otherwise.
    Auto,
    None,
    /// Average each image's probabilities with its mirror image's.
    Flip,
}

impl Tta {
    /// Flip or not; `None` for auto (the model decides).
    pub fn choice(self) -> Option<bool> {
        match self {
            Tta::Auto => None,
            Tta::None => Some(false),
            Tta::Flip => Some(true),
        }
    }
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Image files, folders, or CSV manifests (their `path` column; a `subject` column groups the photos by person); `-` reads more of them from standard input, one per line (`find … | vggft predict -`).
    #[arg(required_unless_present = "held_out")]
    pub inputs: Vec<PathBuf>,
    /// Also take the images of every sub-folder of a folder.
    #[arg(long, short)]
    pub recursive: bool,
    /// Predict the run's own validation images (people it never trained on,
    /// or images where the data named no people; from its split.csv) beside their true class, and tally them; each
    /// image's person comes from split.csv (`--subject-from none`: every
    /// photo alone, the single-image head of a subject-normalised model).
    #[arg(long, conflicts_with_all = ["inputs", "subject"])]
    pub held_out: bool,
    /// Run folder, or its model.safetensors (default: runs/latest).
    #[arg(long, visible_alias = "run", default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Output: text (one line per image), csv, json or jsonl (one object per line).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Test-time augmentation.
    #[arg(long, value_enum, default_value_t = Tta::Auto)]
    pub tta: Tta,
    /// Subject-normalised models: every input shows this one person.
    #[arg(long, conflicts_with = "subject_from", value_parser = person_id)]
    pub subject: Option<String>,
    /// Subject-normalised models: each input's person from `name` (the run's --subject-pattern if it has one, then JAFFE, KDEF, RaFD
    /// or CK+ file names), `parent` (one folder per person), or `none` (every input alone: the single-image head).
    #[arg(long, value_parser = ["name", "parent", "none"], default_value = "name")]
    pub subject_from: String,
    /// With --subject-from name: each input's person from its file name by this regular expression (its group, or
    /// its whole match, e.g. '^([^_]+)_' for anna_1.jpg → anna), instead of the run's own --subject-pattern; names it
    /// does not match as without it.
    #[arg(long, value_name = "REGEX", conflicts_with_all = ["subject", "held_out"], value_parser = checked(crate::data::scan::SubjectPattern::new))]
    pub subject_pattern: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16, value_parser = within::<u64>(1, 4096))]
    pub batch_size: u64,
    /// Convolution arithmetic (default: the run's own).
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Print the model-load and decode + forward times on stderr.
    #[arg(long)]
    pub timings: bool,
    /// auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = checked(device_syntax))]
    pub device: String,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long, value_parser = within::<i32>(1, 1024))]
    pub threads: Option<i32>,
}

impl DataArgs {
    /// Neither `--face` nor `--crop` was given: the session may locate faces
    /// (with person statistics).
    pub fn auto_face(&self) -> bool {
        self.face.is_none() && Crop::parse(&self.crop).is_ok_and(|c| c == Crop::None)
    }

    /// The data config; `None` data means the bundled sample at `sample`.
    pub fn to_config(&self, sample: impl FnOnce() -> Result<PathBuf>) -> Result<(DataConfig, bool)> {
        let (path, bundled) = match self.data.as_ref().or(self.dataset.first()) {
            Some(p) => (p.clone(), false),
            None => (sample()?, true),
        };
        let val = if self.val_subjects.is_empty() { ValSpec::parse(&self.val)? } else { ValSpec::Named { subjects: self.val_subjects.clone() } };
        let label_map = self.label_map.as_deref().map(parse_label_map).transpose()?.unwrap_or_default();
        let mut preprocess = Preprocess::new(Crop::parse(&self.crop)?, self.image_size);
        preprocess.face = crate::data::face::FaceMode::parse(self.face.as_deref().unwrap_or("none"), self.face_required)?;
        if preprocess.face != crate::data::face::FaceMode::None && preprocess.crop != Crop::None {
            return Err(Error::invalid(Setting::Face, "and --crop both choose the crop: give one of them"));
        }
        if self.face_required && !matches!(preprocess.face, crate::data::face::FaceMode::Auto { .. }) {
            // Left out, --face is chosen later (person with person statistics): name what to give.
            let given = self.face.as_deref().map_or_else(
                || "give --face auto with it (without --face each person's photos share one box, from the faces found among them, where per-subject normalisation is on; the whole frame otherwise)".to_string(),
                |f| format!("not --face {f}"),
            );
            return Err(Error::invalid(Setting::FaceRequired, format!("applies to --face auto only: {given}")));
        }
        Ok((
            DataConfig {
                path,
                format: self.format,
                task: self.task,
                label_map,
                train_labels: self.train_labels,
                val,
                skip_bad: self.skip_bad,
                preprocess,
                subject_pattern: self.subject_pattern.clone(),
            },
            bundled,
        ))
    }
}

impl ModelArgs {
    pub fn to_options(&self) -> Result<ModelOptions> {
        let precision = if self.amp { Precision::Bf16 } else { self.precision };
        let mut features =
            self.features.as_deref().unwrap_or("conv5").split(',').map(|b| Block::parse(b.trim(), Setting::Features)).collect::<Result<Vec<_>>>()?;
        features.sort_unstable();
        features.dedup();
        let mut options = ModelOptions {
            bn: self.bn,
            head: self.head,
            dropout: self.dropout,
            hidden: self.hidden,
            width_div: self.width_div,
            precision,
            features,
            subject_norm: self.subject_norm,
            pool_grid: self.pool_grid.as_deref().map(PoolGrid::parse).transpose()?.unwrap_or_default(),
            single_labels: self.single_labels,
        };
        options.validate()?;
        // The vgg head cannot take person-normalised features: auto means off there
        // (`on` was refused by `validate`).
        if options.head == HeadKind::Vgg {
            options.subject_norm = SubjectNormChoice::Off;
        }
        Ok(options)
    }
}

/// `--epochs` and `--freeze-epochs` when not given.
const EPOCHS: usize = 12;
const FREEZE_EPOCHS: usize = 3;
/// `--patience` when not given.
const PATIENCE: usize = 5;

/// `--lr` when not given (a fine-tune's head rate; the blocks below get less).
fn default_lr(optimizer: OptimKind) -> f64 {
    if optimizer == OptimKind::Sgd {
        3e-3
    } else {
        1e-3
    }
}

impl TrainArgs {
    /// Neither --stages nor --freeze-until given: the session picks the freeze point.
    pub fn auto_freeze(&self) -> bool {
        self.stages.is_none() && self.freeze_until.is_none()
    }

    /// What was asked of the head-only probe (`config::Probe::resolve` fills in the rest).
    pub fn probe(&self) -> ProbeRequest {
        let epochs = match (self.epochs, self.warmup_epochs) {
            (None, None) => None,
            (e, w) => Some(e.unwrap_or(EPOCHS) + w.unwrap_or(FREEZE_EPOCHS)),
        };
        ProbeRequest {
            epochs,
            lr: self.lr,
            members: self.members,
            threshold: self.threshold,
            clean_views: self.clean_views,
            patience: self.patience,
            keep: self.keep,
            weight_decay: self.weight_decay,
        }
    }

    pub fn to_config(&self) -> Result<TrainConfig> {
        let stages = match &self.stages {
            Some(s) => parse_stages(s)?,
            None => {
                let epochs = self.epochs.unwrap_or(EPOCHS);
                if epochs == 0 {
                    return Err(Error::invalid(Setting::Epochs, "must be at least 1"));
                }
                stages_for(self.freeze_until.unwrap_or(Block::Conv5), epochs, self.warmup_epochs.unwrap_or(FREEZE_EPOCHS))
            }
        };
        let mut augment = Augment::preset(&self.augment)?;
        if let Some(v) = self.flip {
            augment.flip = v;
        }
        macro_rules! knob {
            ($f:ident) => {
                if let Some(v) = self.$f {
                    augment.$f = v;
                }
            };
        }
        knob!(rotate);
        knob!(zoom);
        knob!(translate);
        knob!(brightness);
        knob!(contrast);
        let lr = self.lr.unwrap_or(default_lr(self.optimizer));
        let weight_decay = self.weight_decay.unwrap_or(if self.optimizer == OptimKind::Adamw { 0.01 } else { 1e-4 });
        let cfg = TrainConfig {
            stages,
            optimizer: self.optimizer,
            lr,
            block_lr_factor: self.block_lr_factor,
            momentum: if matches!(self.optimizer, OptimKind::Sgd) { self.momentum } else { 0.0 },
            weight_decay,
            schedule: self.schedule,
            warmup: self.warmup,
            batch_size: self.batch_size,
            label_smoothing: self.label_smoothing,
            class_weights: self.class_weights,
            augment,
            patience: self.patience.unwrap_or(PATIENCE),
            keep: self.keep.unwrap_or_default(),
            cache: !self.no_cache,
            cache_views: self.cache_views,
            cache_mem_mb: self.cache_mem,
            cache_f16: self.cache_f16,
            clean_views: self.clean_views.unwrap_or(false),
            seed: self.seed,
            // With the session's freeze point, --members goes to the probe it may choose (`probe`).
            members: if self.auto_freeze() { 1 } else { self.members.unwrap_or(1) },
            threshold: self.threshold,
            calibrate: self.calibrate,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
