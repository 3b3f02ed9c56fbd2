//! vggft: fine-tune an ImageNet-pretrained VGG16 on small grayscale face
//! datasets, with subject-independent evaluation.
//!
//! Data flow: `data` (scan → labels → split → preprocess → augment) →
//! `model::Vgg16` (torchvision names, BN mode, freeze point, new head) →
//! `train` (staged fine-tuning) → run folder (`run`) → `predict`.

pub mod alloc;
pub mod cli;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod faces;
pub mod fsutil;
pub mod model;
pub mod run;
pub mod session;
pub mod speed;
pub mod subject;
pub mod train;

pub use error::{Error, Result};
