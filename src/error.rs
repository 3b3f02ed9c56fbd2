//! Typed errors for the library. Every variant that concerns a file names it,
//! so the binary can print one sentence: the file and the problem. The
//! underlying cause is part of that sentence, so no variant also exposes it as
//! `source()` (which made `anyhow`'s chain print it twice).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {problem}")]
    File { path: PathBuf, problem: String },

    #[error("{path}: cannot read: {reason}")]
    Io { path: PathBuf, reason: std::io::Error },

    #[error("{path}: {problem}")]
    Weights { path: PathBuf, problem: String },

    #[error("{path}: cannot decode image: {problem}")]
    Image { path: PathBuf, problem: String },

    /// A picture's problem where its file is not known (decoding bytes,
    /// cropping, face finding); `at` names the file once a caller knows it.
    #[error("{0}")]
    Picture(String),

    /// A picture that decodes but cannot be framed as asked (a `--crop` box
    /// outside it, no face with `--face-required`): not a decoding problem.
    #[error("{0}")]
    Framing(String),

    #[error("dataset {path}: {problem}")]
    Dataset { path: PathBuf, problem: String },

    /// A setting (a flag, or its field in a run's `config.json`) with a value
    /// its rule refuses. `problem` follows the setting's name; the binary
    /// writes the name as the flag (`cli::render`).
    #[error("invalid {}{}{problem}", .setting.name(), sep(.problem))]
    Invalid { setting: Setting, problem: String },

    /// A run's `config.json` holds a value its setting's rule refuses.
    #[error("{path}: {REFUSED_SETTING}: {}{}{problem}", .setting.name(), sep(.problem))]
    ConfigFile { path: PathBuf, setting: Setting, problem: String },

    /// libtorch refused an operation (a tensor of an unexpected shape or kind).
    #[error("libtorch: {0}")]
    Torch(tch::TchError),

    /// A state the code should never reach (a bug, not bad input).
    #[error("internal error: {0}")]
    Internal(String),

    #[error("interrupted: {0}")]
    Interrupted(String),

    /// The training loss stopped being a finite number, or rose far above where it started.
    #[error("training diverged: the loss rose from {start:.3} to {loss:.4e} at epoch {epoch} with learning rate {lr:.2e}; lower the learning rate (--lr; try vggft lr-find)")]
    Diverged { epoch: usize, start: f64, loss: f64, lr: f64 },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Whether `path` is a web address given where a local path goes
/// (`https://…/a.jpg`; made absolute it reads `/folder/https:/…`).
pub(crate) fn web_address(path: &std::path::Path) -> bool {
    path.components().any(|c| matches!(c.as_os_str().to_str(), Some("http:" | "https:" | "ftp:")))
}

impl Error {
    /// An interruption's reason followed by `more` (what the run keeps, how
    /// to go on); any other error as it is.
    pub(crate) fn if_interrupted(self, more: &str) -> Self {
        match self {
            Error::Interrupted(why) => Error::Interrupted(format!("{why}; {more}")),
            e => e,
        }
    }
    pub fn file(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::File { path: path.into(), problem: problem.into() }
    }
    pub fn io(path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        let path = path.into();
        // `--data https://…`, `predict https://…`: not found as a path (made
        // absolute it even reads `/folder/https:/…`), said for what it is.
        if web_address(&path) && reason.kind() == std::io::ErrorKind::NotFound {
            return Error::File { path, problem: "is a web address: vggft reads local files; download it first".into() };
        }
        Error::Io { path, reason }
    }
    pub fn weights(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::Weights { path: path.into(), problem: problem.into() }
    }
    pub fn image(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::Image { path: path.into(), problem: problem.into() }
    }
    pub fn dataset(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::Dataset { path: path.into(), problem: problem.into() }
    }
    pub fn invalid(setting: Setting, problem: impl Into<String>) -> Self {
        Error::Invalid { setting, problem: problem.into() }
    }
    pub(crate) fn internal(problem: impl Into<String>) -> Self {
        Error::Internal(problem.into())
    }
    /// A `Picture` or `Framing` problem as the problem of the file `path`; others unchanged.
    pub fn at(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Error::Picture(problem) => Error::Image { path: path.into(), problem },
            Error::Framing(problem) => Error::File { path: path.into(), problem },
            other => other,
        }
    }
    /// The problem without the file it concerns (for lines that name it already).
    pub fn problem(&self) -> String {
        match self {
            Error::Image { problem, .. } | Error::File { problem, .. } => problem.clone(),
            Error::Io { reason, .. } => format!("cannot read: {reason}"),
            other => other.to_string(),
        }
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e)
    }
}

/// How a run's `config.json` with a refused value is described (library and binary alike).
pub(crate) const REFUSED_SETTING: &str = "holds a setting its flag would refuse";

/// What separates a setting's name from its problem: nothing before `:`.
pub(crate) fn sep(problem: &str) -> &'static str {
    if problem.starts_with(':') {
        ""
    } else {
        " "
    }
}

macro_rules! settings {
    ($($(#[$doc:meta])* $v:ident => $name:literal,)*) => {
        /// Every setting an error can name: recipe fields, command options and
        /// the run-config fields without a flag. `name` is the config field
        /// (snake_case); the binary maps it to the flag.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Setting {
            $($(#[$doc])* $v,)*
        }
        impl Setting {
            pub const ALL: &'static [Setting] = &[$(Setting::$v,)*];
            pub fn name(self) -> &'static str {
                match self {
                    $(Setting::$v => $name,)*
                }
            }
        }
    };
}

settings! {
    Augment => "augment",
    BatchSize => "batch_size",
    BlockLrFactor => "block_lr_factor",
    Brightness => "brightness",
    Bn => "bn",
    CacheViews => "cache_views",
    Calibrate => "calibrate",
    Class => "class",
    CleanViews => "clean_views",
    Contrast => "contrast",
    Crop => "crop",
    Data => "data",
    Device => "device",
    Dropout => "dropout",
    Epochs => "epochs",
    Face => "face",
    FaceRequired => "face_required",
    Features => "features",
    Fold => "fold",
    Folds => "folds",
    Hidden => "hidden",
    ImageSize => "image_size",
    LabelMap => "label_map",
    LabelSmoothing => "label_smoothing",
    Layer => "layer",
    Lr => "lr",
    Members => "members",
    Momentum => "momentum",
    Name => "name",
    PoolGrid => "pool_grid",
    ProbeEpochs => "probe_epochs",
    Rotate => "rotate",
    Seeds => "seeds",
    Stages => "stages",
    StartLr => "start_lr",
    Steps => "steps",
    SubjectNorm => "subject_norm",
    SubjectPattern => "subject_pattern",
    Threads => "threads",
    Threshold => "threshold",
    Translate => "translate",
    Val => "val",
    Warmup => "warmup",
    Weights => "weights",
    WeightDecay => "weight_decay",
    WidthDiv => "width_div",
    Zoom => "zoom",
    /// Run-config fields without a flag.
    Classes => "classes",
    RawLabels => "raw_classes",
    Normalisation => "mean/std",
}

/// "1 person", "N people": a count of people in a sentence.
pub fn people(n: usize) -> String {
    if n == 1 {
        "1 person".to_string()
    } else {
        format!("{n} people")
    }
}

/// Lists at most `max` names, then "and N more", so error sentences stay readable.
pub fn short_list(names: &[String], max: usize) -> String {
    if names.len() <= max {
        names.join(", ")
    } else {
        format!("{}, and {} more", names[..max].join(", "), names.len() - max)
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn a_web_address_not_found_is_said_to_be_one() {
        let gone = || std::io::Error::from(std::io::ErrorKind::NotFound);
        for p in ["https://example.com/a.jpg", "/work/https:/x/y.zip", "http://h/d"] {
            assert_eq!(Error::io(p, gone()).to_string(), format!("{p}: is a web address: vggft reads local files; download it first"));
        }
        // A local path, or another failure at a web-like path, stays as it is.
        assert_eq!(Error::io("face.jpg", gone()).to_string(), "face.jpg: cannot read: entity not found");
        assert!(Error::io("https://h/a", std::io::Error::from(std::io::ErrorKind::PermissionDenied)).to_string().contains("cannot read"));
    }
}
