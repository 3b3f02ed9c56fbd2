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

    #[error("dataset {path}: {problem}")]
    Dataset { path: PathBuf, problem: String },

    #[error("invalid option: {0}")]
    Config(String),

    #[error("libtorch: {0}")]
    Torch(tch::TchError),

    #[error("interrupted: {0}")]
    Interrupted(String),

    /// The training loss stopped being a finite number, or rose far above where it started.
    #[error("training diverged: the loss rose from {start:.3} to {loss:.4e} at epoch {epoch} with learning rate {lr:.2e}; lower the learning rate (--lr; try vggft lr-find)")]
    Diverged { epoch: usize, start: f64, loss: f64, lr: f64 },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::File { path: path.into(), problem: problem.into() }
    }
    pub fn io(path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        Error::Io { path: path.into(), reason }
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
    pub fn config(problem: impl Into<String>) -> Self {
        Error::Config(problem.into())
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
