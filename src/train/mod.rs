//! Staged fine-tuning on one loop. `fit` walks stages → epochs → batches;
//! per stage it freezes below the stage's block, rebuilds the optimizer with
//! per-block rates and picks a batch source (the frozen prefix's cached
//! output when it cannot change, else the images); everything else — progress,
//! best weights, early stopping, checkpoints, Ctrl-C, the divergence guard,
//! the learning-rate sweep — is a hook (`hooks`).
//!
//! Reproducible on CPU: every random draw comes from seeds derived from the
//! run seed and the epoch, so a resumed run replays exactly.

pub mod checkpoint;
pub mod hooks;
pub mod lrfind;
pub mod optim;
pub mod source;

use std::path::PathBuf;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

pub(crate) use checkpoint::remove_checkpoints;
pub use checkpoint::{check_state, load_state, STATE};
pub use hooks::{BatchEnd, Ctx, Hook};
pub(crate) use source::holds;
pub use source::{build_cache, cache_plan, derive_cache, plan_and_build, Cache, Pass};

use crate::config::{ClassWeights, Stage, TrainConfig};
use crate::data::Preprocess;
use crate::error::{Error, Result, Setting};
use crate::eval;
use crate::model::{Block, BnMode, FusedStep, HeadRef, Vgg16};
use crate::subject::SubjectNorm;
use crate::train::optim::{Group, Optimizer};
use hooks::{BestWeights, Checkpointer, DivergenceGuard, EarlyStopping, Interrupt, Progress};
use source::Sources;

/// Images and labels for training, already decoded (gray, CPU).
pub struct TrainData {
    /// (N,1,S,S) gray in \[0, 1\].
    pub gray: Tensor,
    /// With `--face person`: the same images' whole frames
    /// (`data::Loaded::lone`), which the single-image head reads.
    pub lone: Option<Tensor>,
    /// What the head is trained on: task classes, or raw labels (see `task`).
    pub targets: Vec<i64>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    /// Outputs of the head.
    pub num_classes: usize,
    /// Subject group of each dataset row (per-subject normalisation; every row its own group without subject ids).
    pub groups: Vec<usize>,
    /// With a raw-label head: the task classes validation is scored in.
    pub task: Option<TaskView>,
}

/// The task behind a raw-label head: each image's task class and each raw label's.
#[derive(Clone, Debug)]
pub struct TaskView {
    pub targets: Vec<i64>,
    pub raw_to_task: Vec<usize>,
    pub classes: usize,
}

/// What `Trainer::scores` gives (logits or log-probabilities per row), or
/// anything made of them.
pub(crate) struct Scored<T = Tensor> {
    pub main: T,
    /// The single-image head of a subject-normalised model.
    pub single: Option<T>,
    /// The main head with each person's statistics from one class of that person's rows at a time.
    pub one_class: Option<T>,
}

/// One line of `history.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub epoch: usize,
    pub stage: usize,
    pub block: String,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_loss: Option<f64>,
    pub val_acc: Option<f64>,
    pub val_bacc: Option<f64>,
    pub seconds: f64,
}

/// Progress and messages go through this, never to stdout from the library.
pub trait Reporter {
    fn message(&mut self, msg: &str);
    fn epoch_start(&mut self, _epoch: usize, _total: usize, _batches: usize) {}
    fn batch(&mut self, _done: usize, _loss: f64, _acc: f64, _images_per_s: f64) {}
    fn epoch_end(&mut self, _row: &EpochRow) {}
    /// A long step other than an epoch (the cache pass, a sweep, a folder
    /// of predictions): `done` of `total` `unit`s of `what`; `done == total` ends it.
    fn progress(&mut self, _what: &str, _unit: &str, _done: usize, _total: usize) {}
    /// Runs `f`, which writes to standard output, with any progress bar out of the way.
    fn suspend(&mut self, f: &mut dyn FnMut()) {
        f()
    }
}

/// A reporter that keeps messages (tests, quiet runs).
#[derive(Default)]
pub struct Collect {
    pub messages: Vec<String>,
}

impl Reporter for Collect {
    fn message(&mut self, msg: &str) {
        self.messages.push(msg.to_string());
    }
}

/// Where progress is saved after each epoch (`--resume` reads it back).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResumeState {
    pub stage: usize,
    /// Epochs finished within `stage`.
    pub stage_epoch: usize,
    /// Epoch rows so far.
    pub history: Vec<EpochRow>,
    pub best_loss: Option<f64>,
    pub best_epoch: usize,
    pub since_best: usize,
    /// The current stage was ended early.
    pub stage_done: bool,
    /// The tensor file this state belongs to (written before the state, so
    /// the state file is the commit point of a checkpoint).
    #[serde(default)]
    pub checkpoint: String,
    /// The base file `checkpoint` holds its differences from
    /// (`checkpoint::BASE`); empty: `checkpoint` holds every tensor.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub base: String,
    /// `checkpoint` saved best-epoch weights (with a base, a best epoch
    /// equal to it would otherwise leave no trace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub has_best: bool,
    /// The fit's first training loss, the divergence guard's reference.
    #[serde(default)]
    pub start_loss: Option<f64>,
}

pub struct Outcome {
    pub history: Vec<EpochRow>,
    /// 1-based epoch of the lowest validation loss (the last without a validation set).
    pub best_epoch: usize,
    /// 1-based epoch whose weights were kept (`TrainConfig::keep`).
    pub kept_epoch: usize,
}

/// Class weights for the loss, from the training split: inverse frequency,
/// so every class weighs the same in total (N / (C·n_c)). A head trained on
/// raw labels balances the *task's* classes — each task class weighs N / C,
/// shared equally by the raw labels in it — so that the summed probabilities
/// carry equal task priors, as a task head's do: with the raw labels balanced
/// instead, "neutral" (1 of JAFFE's 7 codes) would start from a prior of 1/7
/// and the argmax of neutral vs rest would almost never say neutral, whatever
/// the ranking (balanced accuracy 0.5 at a ROC AUC of 0.8).
pub fn class_weights(kind: ClassWeights, data: &TrainData) -> Vec<f64> {
    let c = data.num_classes;
    if kind == ClassWeights::None {
        return vec![1.0; c];
    }
    let mut n = vec![0usize; c];
    for &i in &data.train {
        n[data.targets[i] as usize] += 1;
    }
    let total = data.train.len() as f64;
    // The task class of each head output (each its own class for a task head).
    let (group, groups): (Vec<usize>, usize) = match &data.task {
        Some(view) => (view.raw_to_task.clone(), view.classes),
        None => ((0..c).collect(), c),
    };
    // Raw labels present (in the training split) per task class.
    let mut k = vec![0usize; groups];
    for (r, &g) in group.iter().enumerate() {
        k[g] += usize::from(n[r] > 0);
    }
    n.iter().zip(&group).map(|(&nr, &g)| if nr == 0 { 0.0 } else { total / (groups as f64 * k[g] as f64 * nr as f64) }).collect()
}

/// Seed for one purpose at one point of the run.
pub(crate) fn sub_seed(seed: u64, what: u64, a: u64, b: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ what.wrapping_mul(0xBF58_476D_1CE4_E5B9)
        ^ a.wrapping_mul(0x94D0_49BB_1331_11EB)
        ^ b.wrapping_add(0x2545_F491_4F6C_DD1D)
}

/// Splits shuffled indices into batches, merging a trailing batch of one
/// into the previous one (a BatchNorm layer cannot train on one sample).
pub fn batches(idx: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = idx.chunks(batch_size).map(|c| c.to_vec()).collect();
    if out.len() > 1 && out.last().is_some_and(|b| b.len() == 1) {
        let last = out.pop().unwrap_or_default();
        if let Some(prev) = out.last_mut() {
            prev.extend(last);
        }
    }
    out
}

pub struct Trainer<'a> {
    pub cfg: &'a TrainConfig,
    pub pre: &'a Preprocess,
    pub data: &'a TrainData,
    pub device: Device,
    /// Run folder for per-epoch checkpoints (none in tests that don't need them).
    pub checkpoint_dir: Option<PathBuf>,
    /// Checked between batches; when set, training stops after the current batch.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
    /// Caches of the untrained (pretrained) model, built once for several
    /// runs (cross-validation folds), at one or more freeze points.
    pub shared: &'a [Cache],
    /// Whether the model keeps its training photos' feature statistics at
    /// the end of `fit` (`Vgg16::set_feature_stats`): false for fits whose
    /// model is thrown away (lr-find's sweep, the inner fits that set a
    /// threshold), which would pay one more pass for nothing.
    pub keep_stats: bool,
}

impl<'a> Trainer<'a> {
    /// A trainer for a fit whose model is thrown away (lr-find's sweep, the
    /// inner fits that set a threshold): no checkpoints, no stop flag (a
    /// caller that can be stopped sets its own), no feature statistics kept.
    pub fn throwaway(cfg: &'a TrainConfig, pre: &'a Preprocess, data: &'a TrainData, device: Device, shared: &'a [Cache]) -> Self {
        Trainer { cfg, pre, data, device, checkpoint_dir: None, stop: None, shared, keep_stats: false }
    }
}

impl Trainer<'_> {
    fn weights_tensor(&self) -> Tensor {
        let w = class_weights(self.cfg.class_weights, self.data);
        Tensor::from_slice(&w).to_kind(Kind::Float).to_device(self.device)
    }

    /// The optimizer over the model's trainable tensors, one group per block
    /// (rate × `block_lr_factor` per block below the head; no decay on biases and BN).
    pub fn optimizer(&self, model: &Vgg16) -> Optimizer {
        let groups = model
            .param_groups()
            .into_iter()
            .map(|g| Group {
                lr_mult: self.cfg.block_lr_factor.powi((Block::Head.index() - g.block.index()) as i32),
                weight_decay: if g.decay { self.cfg.weight_decay } else { 0.0 },
                params: g.params,
            })
            .collect();
        Optimizer::new(self.cfg.optimizer, groups, self.cfg.momentum)
    }

    /// Eval-mode `f(input, first block)` over dataset rows `idx` in chunks
    /// (mirrored left–right when `flip`; each image's whole frame when `lone`,
    /// `TrainData::lone`), from the cache's rows when it has them; `width`
    /// columns when `idx` is empty. Chunks of 8, as the cache is built: a
    /// pass from the images at 224 px in chunks of 32 (the training photos'
    /// feature statistics where the cache holds no clean view) raised a
    /// finetune's peak memory by ~400 MB for no speed.
    fn eval_rows(
        &self,
        model: &Vgg16,
        cache: Option<&Cache>,
        idx: &[usize],
        width: i64,
        (flip, lone): (bool, bool),
        f: impl Fn(&Tensor, Block) -> Tensor,
    ) -> Tensor {
        let images = match (lone, &self.data.lone) {
            (true, Some(l)) => l,
            _ => &self.data.gray,
        };
        model.frozen(|| {
            let parts: Vec<Tensor> = idx
                .chunks(8)
                .map(|c| {
                    let cached = cache.filter(|k| k.covers(&[], c)).and_then(|k| {
                        let x = match (lone, flip) {
                            (true, _) => k.lone_rows(c, flip, self.device)?,
                            (false, true) => k.flipped_rows(c, self.device)?,
                            (false, false) => k.clean_rows(c, self.device),
                        };
                        Some((x, k.from))
                    });
                    match cached {
                        Some((x, from)) => f(&x, from),
                        None => {
                            let g = crate::data::select(images, c, self.device);
                            f(&self.pre.normalise(&if flip { g.flip([3]) } else { g }), Block::Conv1)
                        }
                    }
                })
                .collect();
            if parts.is_empty() {
                Tensor::zeros([0, width], (Kind::Float, self.device))
            } else {
                Tensor::cat(&parts, 0)
            }
        })
    }

    /// Eval-mode logits of the main head for dataset rows `idx` (for a
    /// subject-normalised model: each person normalised by that person's rows in `idx`).
    pub fn logits(&self, model: &Vgg16, cache: Option<&Cache>, idx: &[usize]) -> Tensor {
        self.scores(model, cache, idx, false, None).main
    }

    /// Eval-mode pooled features (the head's input) of dataset rows `idx`, mirrored when `flip`.
    pub fn pooled(&self, model: &Vgg16, cache: Option<&Cache>, idx: &[usize], flip: bool) -> Tensor {
        self.eval_rows(model, cache, idx, 0, (flip, false), |x, from| model.pooled_from(x, from, false))
    }

    /// Eval-mode scores of rows `idx` (logits, or log-probabilities where
    /// several are combined): the main head and, for a subject-normalised
    /// model, its single-image head. The main head of such a model sees
    /// features standardised with each person's statistics over that
    /// person's rows in `idx` (transductive); a person with fewer than
    /// `subject::PERSON_MIN` rows gets the single-image head. With `tta_flip`
    /// each image's probabilities are averaged with its mirror image's.
    /// With `classes` (each row's true class) the main head is also scored
    /// with each person's statistics taken from that person's rows of one
    /// class at a time — a person shown with one expression only — where
    /// some person has `subject::PERSON_MIN` rows of one class.
    pub(crate) fn scores(&self, model: &Vgg16, cache: Option<&Cache>, idx: &[usize], tta_flip: bool, classes: Option<&[i64]>) -> Scored {
        let probs = |t: Tensor| t.softmax(1, Kind::Double);
        let log = |p: Tensor| p.log().to_kind(Kind::Float);
        if !model.cfg.subject_norm {
            let logits = |flip| self.eval_rows(model, cache, idx, model.cfg.num_classes, (flip, false), |x, from| model.forward_from(x, from, false));
            let main = if tta_flip { log((probs(logits(false)) + probs(logits(true))) / 2.0) } else { logits(false) };
            return Scored { main, single: None, one_class: None };
        }
        let f = self.pooled(model, cache, idx, false);
        let g = tta_flip.then(|| self.pooled(model, cache, idx, true));
        let person = |keys: &[Option<(usize, i64)>]| {
            let (p, modes, _) = crate::eval::predict::person_or_single(model, &f, g.as_ref(), keys);
            (p, modes)
        };
        let keys: Vec<Option<(usize, i64)>> = idx.iter().map(|&i| Some((self.data.groups[i], 0))).collect();
        // Only where some person has enough photos of one class for statistics of their own (not the London pairs).
        let one_class = classes
            .map(|c| person(&idx.iter().zip(c).map(|(&i, &c)| Some((self.data.groups[i], c))).collect::<Vec<_>>()))
            .filter(|(_, modes)| modes.contains(&crate::eval::predict::Mode::Person))
            .map(|(p, _)| log(p));
        let main = log(person(&keys).0);
        let single = |f: &Tensor| tch::no_grad(|| model.classify_global(f, false).unwrap_or_else(|| model.classify(f, false)));
        let (f, g) = match self.lone_pooled(model, cache, idx, false) {
            Some(own) => (own, if tta_flip { self.lone_pooled(model, cache, idx, true) } else { None }),
            None => (f, g),
        };
        let single = match &g {
            Some(g) => log((probs(single(&f)) + probs(single(g))) / 2.0),
            None => single(&f),
        };
        Scored { main, single: Some(single), one_class }
    }

    /// Each of rows `idx`'s feature distance as `predict` gives it
    /// (`predict::person_or_single`): for a person with too few rows from
    /// the training photos as the single-image head read them (its whole
    /// frame with `--face person`); empty for a model without the statistics.
    pub(crate) fn distances(&self, model: &Vgg16, cache: Option<&Cache>, idx: &[usize]) -> Vec<f64> {
        let numbers = |d: Option<Tensor>| d.and_then(|d| Vec::<f64>::try_from(d.to_kind(Kind::Double)).ok()).unwrap_or_default();
        let f = self.pooled(model, cache, idx, false);
        if !model.cfg.subject_norm {
            return numbers(model.feature_distance(&f, false));
        }
        let keys: Vec<Option<usize>> = idx.iter().map(|&i| Some(self.data.groups[i])).collect();
        let (_, modes, d) = crate::eval::predict::person_or_single(model, &f, None, &keys);
        let Some(own) = self.lone_pooled(model, cache, idx, false) else { return numbers(d) };
        // A row answered alone is measured as the single-image head read it: its whole frame.
        let single = Tensor::from_slice(&modes.iter().map(|&m| m == crate::eval::predict::Mode::Single).collect::<Vec<_>>()).to_device(own.device());
        numbers(d.zip(model.feature_distance(&own, true)).map(|(d, own)| own.where_self(&single, &d)))
    }

    /// The pooled features of rows `idx` (mirrored with `flip`) as a
    /// subject-normalised model's single-image head reads them where that
    /// differs from the main head: each photo's whole frame with `--face
    /// person` (`TrainData::lone`), as predict frames a lone photo; `None`
    /// where both read the same.
    fn lone_pooled(&self, model: &Vgg16, cache: Option<&Cache>, idx: &[usize], flip: bool) -> Option<Tensor> {
        self.data.lone.as_ref()?;
        Some(self.eval_rows(model, cache, idx, 0, (flip, true), |x, from| model.pooled_from(x, from, false)))
    }

    /// Training-mode logits of ensemble member `member` (0: the main head) on
    /// one batch of dataset rows (and, for a subject-normalised model and
    /// member 0, the single-image head's logits, which train on the features
    /// without moving the trunk). The main head's features are standardised
    /// per person by `norm`, or come so from the source when it holds person
    /// views (a frozen trunk).
    #[allow(clippy::too_many_arguments)]
    fn batch_logits(
        &self,
        model: &Vgg16,
        source: &source::Source,
        rows: &[usize],
        rng: &mut ChaCha8Rng,
        norm: Option<&SubjectNorm>,
        member: usize,
        fused: &mut Vec<(HeadRef, Tensor, FusedStep)>,
    ) -> (Tensor, Option<Tensor>) {
        // Where the features need no gradient (a head-level cache's; a trunk that does not train) the bn head's
        // step runs without autograd.
        let mut fused_step = |h: HeadRef, f: &Tensor| {
            model.fused_forward(h, f).map(|(logits, leaf, step)| {
                fused.push((h, leaf, step));
                logits
            })
        };
        if let Some((z, x)) = source.person_batch(rows, rng, member == 0) {
            let main = fused_step(HeadRef::Member(member), &z).unwrap_or_else(|| model.classify_member(member, &z, true));
            return (main, x.and_then(|x| fused_step(HeadRef::Global, &x).or_else(|| model.classify_global(&x, true))));
        }
        let x = source.train_batch(rows, rng);
        let f = model.pooled_from(&x, source.from(), true);
        match norm {
            None => (fused_step(HeadRef::Member(member), &f).unwrap_or_else(|| model.classify_member(member, &f, true)), None),
            Some(n) => {
                let g: Vec<usize> = rows.iter().map(|&r| self.data.groups[r]).collect();
                // The main head first: the dropout masks are drawn in the order a single head drew them.
                let z = n.apply(&f, &g);
                let main = fused_step(HeadRef::Member(member), &z).unwrap_or_else(|| model.classify_member(member, &z, true));
                if member != 0 {
                    return (main, None);
                }
                // With `--face person` the single-image head reads the whole frame (`TrainData::lone`).
                let x = match source.single_batch(rows) {
                    Some((s, from)) => tch::no_grad(|| model.pooled_from(&s, from, false)),
                    None => f.detach(),
                };
                (main, fused_step(HeadRef::Global, &x).or_else(|| model.classify_global(&x, true)))
            }
        }
    }

    /// Each training person's feature statistics under the model's current
    /// trunk, from the clean training images; their pooled within-person
    /// variance goes with the model, for new people (`Vgg16::person_prior`).
    fn person_norm(&self, model: &Vgg16, source: &source::Source) -> SubjectNorm {
        let g: Vec<usize> = self.data.train.iter().map(|&r| self.data.groups[r]).collect();
        let norm = SubjectNorm::fit(&self.pooled(model, source.cache(), &self.data.train, false), &g);
        model.set_person_prior(norm.prior());
        norm
    }

    /// Logits for the validation rows.
    pub(crate) fn val_logits(&self, model: &Vgg16, cache: Option<&Cache>) -> Tensor {
        self.logits(model, cache, &self.data.val)
    }

    /// With `--bn train`, before an epoch is validated (and so before its
    /// weights can be kept): every trunk BN layer's running statistics become
    /// those of the training images with the epoch's weights
    /// (`Vgg16::precise_bn`; the clean images, one more forward pass). The
    /// running averages of small batches taken while the weights moved can
    /// be far from them: a 16-image set trained to 16/16 in train mode was
    /// answered 8/16 (one class for all) in eval mode with them.
    fn precise_bn(&self, model: &mut Vgg16) -> Result<()> {
        if model.cfg.bn_mode != BnMode::Train || self.data.train.is_empty() {
            return Ok(());
        }
        let images: Vec<Tensor> = self.data.train.chunks(16).map(|c| self.pre.normalise(&crate::data::select(&self.data.gray, c, self.device))).collect();
        model.precise_bn(&images)
    }

    /// Validation loss, accuracy and balanced accuracy (none without a validation set).
    fn validate(&self, model: &Vgg16, cache: Option<&Cache>, cw: &Tensor) -> (Option<f64>, Option<f64>, Option<f64>) {
        if self.data.val.is_empty() {
            return (None, None, None);
        }
        let logits = self.val_logits(model, cache);
        let y: Vec<i64> = self.data.val.iter().map(|&r| self.data.targets[r]).collect();
        let yt = Tensor::from_slice(&y).to_device(self.device);
        // The loss is the one the head trains on; accuracy is scored in the task's classes.
        let l = f64::try_from(logits.cross_entropy_loss(&yt, Some(cw), Reduction::Mean, -100, 0.0)).unwrap_or(f64::NAN);
        let (y, scores, classes) = match &self.data.task {
            None => (y, logits, self.data.num_classes),
            Some(t) => (self.data.val.iter().map(|&r| t.targets[r]).collect(), eval::task_probs(&logits, &t.raw_to_task, t.classes), t.classes),
        };
        let pred: Vec<i64> = Vec::<i64>::try_from(scores.argmax(1, false).to_device(Device::Cpu)).unwrap_or_default();
        (Some(l), Some(eval::accuracy(&y, &pred)), Some(eval::balanced_accuracy(&y, &pred, classes)))
    }

    /// Runs all stages (from `resume` when given) with the standard hooks:
    /// progress, divergence guard, Ctrl-C, best weights, early stopping and
    /// (with a run folder) checkpoints.
    pub fn run(&self, model: &mut Vgg16, reporter: &mut dyn Reporter, resume: Option<ResumeState>) -> Result<Outcome> {
        let resumed = resume.is_some();
        let mut checkpointer = match (&self.checkpoint_dir, resumed) {
            (Some(dir), _) => Some(Checkpointer::new(dir.clone(), resumed)),
            (None, true) => return Err(Error::internal("resume needs a run folder")),
            (None, false) => None,
        };
        let mut progress = Progress { total_epochs: self.cfg.total_epochs() };
        let mut interrupt = self.stop.map(Interrupt);
        let mut early = EarlyStopping { patience: self.cfg.patience, stage_epochs: self.cfg.stages.iter().map(|s| s.epochs).collect() };
        let (mut guard, mut best) = (DivergenceGuard, BestWeights { restore: self.cfg.keep == crate::config::Keep::Best });
        let mut hooks: Vec<&mut dyn Hook> = vec![&mut guard, &mut progress];
        if let Some(h) = interrupt.as_mut() {
            hooks.push(h);
        }
        hooks.push(&mut best);
        hooks.push(&mut early);
        if let Some(h) = checkpointer.as_mut() {
            hooks.push(h);
        }
        // Members are added before the fit so that a resumed run's checkpoint (which holds them) loads into them.
        if self.cfg.members > model.member_count() {
            let n = self.cfg.members - model.member_count();
            crate::model::draw(sub_seed(self.cfg.seed, 7, 0, 0), || model.add_members(n))?;
            reporter.message(&format!(
                "training {} heads side by side, each on its own batch order and views, averaged into one head at the end (--members 1: a single head); their train loss is on augmented views with dropout on and can climb while the rate warms up: the validation columns are the ones to read",
                self.cfg.members
            ));
        }
        let mut ctx = Ctx::new(model, reporter, resume.unwrap_or_default());
        self.fit(&mut ctx, &mut hooks, resumed)?;
        let Ctx { state, .. } = ctx;
        model.fold_members()?;
        let kept_epoch = match self.cfg.keep {
            crate::config::Keep::Best => state.best_epoch,
            crate::config::Keep::Last => state.history.last().map_or(state.best_epoch, |r| r.epoch),
        };
        Ok(Outcome { history: state.history, best_epoch: state.best_epoch, kept_epoch })
    }

    /// The loop: stages → epochs → batches from `ctx.state` on, calling every hook at each step.
    pub fn fit(&self, ctx: &mut Ctx, hooks: &mut [&mut dyn Hook], resumed: bool) -> Result<()> {
        if self.data.train.len() < 2 {
            return Err(Error::invalid(Setting::Data, "holds fewer than 2 training images"));
        }
        each(hooks, |h| h.before_fit(ctx))?;
        let cw = self.weights_tensor();
        let mut pass = Pass::new(ctx.reporter, self.stop);
        let sources = Sources::new(ctx.model, self.cfg, self.pre, self.data, self.device, self.shared, ctx.state.stage, resumed, &mut pass)
            .map_err(|e| e.if_interrupted(hooks::saved(&ctx.state)))?;
        let mut last = None;
        for (si, stage) in self.cfg.stages.iter().enumerate() {
            let st = &mut ctx.state;
            if ctx.stop || si < st.stage || (si == st.stage && (st.stage_done || st.stage_epoch >= stage.epochs)) {
                continue;
            }
            if si > st.stage {
                (st.stage, st.stage_epoch, st.since_best, st.stage_done) = (si, 0, 0, false);
            }
            ctx.model.set_trainable_from(stage.from);
            ctx.opt = Some(self.optimizer(ctx.model));
            each(hooks, |h| h.before_stage(ctx, si))?;
            let mut source = sources.for_stage(ctx.model, si, ctx.reporter);
            if ctx.model.cfg.subject_norm && source.from() == Block::Head {
                let train: std::collections::BTreeSet<usize> = self.data.train.iter().copied().collect();
                let norm = self.person_norm(ctx.model, &source);
                source = source.with_person_views(&norm, |i| train.contains(&i).then(|| self.data.groups[i]));
            }
            while ctx.state.stage_epoch < stage.epochs && !ctx.stop && !ctx.state.stage_done {
                self.epoch(ctx, hooks, &source, si, &cw)?;
            }
            last = Some(source);
        }
        each(hooks, |h| h.after_fit(ctx))?;
        // The model keeps its training photos' feature statistics, under the weights it keeps (the best epoch's
        // are restored by now), for `predict` to tell inputs unlike them: one more pass over the clean training
        // images through the trained blocks (from the stage's cache where it has one).
        if let Some(source) = last.as_ref().filter(|_| self.keep_stats) {
            self.keep_feature_stats(ctx.model, source);
        }
        Ok(())
    }

    /// The training photos' pooled features (clean views), as the main head
    /// and as the single-image head read them, go with the model (`Vgg16::set_feature_stats`).
    fn keep_feature_stats(&self, model: &Vgg16, source: &source::Source) {
        let main = self.pooled(model, source.cache(), &self.data.train, false);
        let single = if model.cfg.subject_norm { self.lone_pooled(model, source.cache(), &self.data.train, false) } else { None };
        model.set_feature_stats(&main, single.as_ref().unwrap_or(&main));
    }

    /// One epoch of stage `si`: a seeded shuffle, the steps, validation, the epoch's history row.
    fn epoch(&self, ctx: &mut Ctx, hooks: &mut [&mut dyn Hook], source: &source::Source, si: usize, cw: &Tensor) -> Result<()> {
        let stage = self.cfg.stages[si];
        let steps_per_epoch = batches(&self.data.train, self.cfg.batch_size).len();
        let total_steps = steps_per_epoch * stage.epochs;
        let warmup = (self.cfg.warmup * total_steps as f64).round() as usize;
        ctx.epoch = ctx.state.history.len() + 1;
        let t0 = Instant::now();
        crate::model::seed_epoch(sub_seed(self.cfg.seed, 2, ctx.epoch as u64, 0));
        // Each ensemble member draws its own batch order and views (member 0 the single head's).
        let members = ctx.model.member_count();
        let mut rngs: Vec<ChaCha8Rng> = (0..members).map(|m| ChaCha8Rng::seed_from_u64(sub_seed(self.cfg.seed, 3, ctx.epoch as u64, m as u64))).collect();
        let orders: Vec<Vec<Vec<usize>>> = rngs
            .iter_mut()
            .map(|rng| {
                let mut order: Vec<usize> = (0..self.data.train.len()).collect();
                order.shuffle(rng);
                batches(&order, self.cfg.batch_size)
            })
            .collect();
        // Each person's statistics under the current trunk (fixed, and applied once, when it is frozen).
        let norm = (ctx.model.cfg.subject_norm && !source.has_person_views()).then(|| self.person_norm(ctx.model, source));
        each(hooks, |h| h.before_epoch(ctx, orders[0].len()))?;
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
        #[allow(clippy::needless_range_loop)] // step `bi` of every member's batch list
        for bi in 0..orders[0].len() {
            ctx.lr = self.cfg.lr * self.cfg.schedule.factor(ctx.state.stage_epoch * steps_per_epoch + bi, total_steps, warmup);
            each(hooks, |h| h.before_batch(ctx))?;
            let batches: Vec<&[usize]> = orders.iter().map(|o| o[bi].as_slice()).collect();
            let (batch_loss, batch_correct) = self.step(ctx, source, (&batches, &mut rngs), norm.as_ref(), cw);
            let n = orders[0][bi].len();
            loss_sum += batch_loss * n as f64;
            correct += batch_correct;
            seen += n;
            let end = BatchEnd {
                index: bi + 1,
                loss: batch_loss,
                mean_loss: loss_sum / seen as f64,
                accuracy: correct as f64 / (seen * members) as f64,
                images_per_s: seen as f64 / t0.elapsed().as_secs_f64(),
            };
            each(hooks, |h| h.after_batch(ctx, &end))?;
            if ctx.stop {
                break;
            }
        }
        self.precise_bn(ctx.model)?;
        let (val_loss, val_acc, val_bacc) = self.validate(ctx.model, source.cache(), cw);
        let row = EpochRow {
            epoch: ctx.epoch,
            stage: si + 1,
            block: stage.from.to_string(),
            lr: ctx.lr,
            train_loss: loss_sum / seen as f64,
            train_acc: correct as f64 / (seen * members) as f64,
            val_loss,
            val_acc,
            val_bacc,
            seconds: t0.elapsed().as_secs_f64(),
        };
        ctx.state.history.push(row.clone());
        ctx.state.stage_epoch += 1;
        each(hooks, |h| h.after_epoch(ctx, &row))
    }

    /// One optimizer step: each ensemble member's batch (`batches[m]`, its
    /// draws from `rngs[m]`) through its head, one backward through the
    /// summed losses (the members' parameters are disjoint, so each trains
    /// on its own batch), the fused heads' gradients handed back. Returns
    /// the members' mean loss and their correct answers.
    fn step(
        &self,
        ctx: &mut Ctx,
        source: &source::Source,
        (batches, rngs): (&[&[usize]], &mut [ChaCha8Rng]),
        norm: Option<&SubjectNorm>,
        cw: &Tensor,
    ) -> (f64, i64) {
        let members = rngs.len();
        let (mut loss, mut batch_loss, mut batch_correct) = (None::<Tensor>, 0.0, 0i64);
        let mut fused = Vec::new();
        for (m, rng) in rngs.iter_mut().enumerate() {
            let rows: Vec<usize> = batches[m].iter().map(|&o| self.data.train[o]).collect();
            let (logits, global) = self.batch_logits(ctx.model, source, &rows, rng, norm, m, &mut fused);
            let y = Tensor::from_slice(&rows.iter().map(|&r| self.data.targets[r]).collect::<Vec<_>>()).to_device(self.device);
            let ce = |l: &Tensor| l.cross_entropy_loss(&y, Some(cw), Reduction::Mean, -100, self.cfg.label_smoothing);
            let l = ce(&logits);
            batch_loss += f64::try_from(&l).unwrap_or(f64::NAN) / members as f64;
            batch_correct += i64::try_from(logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64)).unwrap_or(0);
            let l = match &global {
                Some(g) => l + ce(g),
                None => l,
            };
            loss = Some(match loss {
                Some(t) => t + l,
                None => l,
            });
        }
        if let (Some(opt), Some(loss)) = (ctx.opt.as_mut(), loss) {
            opt.zero_grad();
            loss.backward();
            for (h, leaf, step) in &fused {
                ctx.model.fused_backward(*h, step, &leaf.grad());
            }
            opt.step(ctx.lr);
        }
        (batch_loss, batch_correct)
    }
}

/// Calls `f` on every hook in order, stopping at the first error.
fn each(hooks: &mut [&mut dyn Hook], mut f: impl FnMut(&mut dyn Hook) -> Result<()>) -> Result<()> {
    hooks.iter_mut().try_for_each(|h| f(&mut **h))
}

/// Stages → a short human description, e.g. `head:3 → conv5:12`.
pub fn describe_stages(stages: &[Stage]) -> String {
    stages.iter().map(|s| format!("{}:{}", s.from, s.epochs)).collect::<Vec<_>>().join(" → ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(targets: Vec<i64>, num_classes: usize, task: Option<TaskView>) -> TrainData {
        let n = targets.len();
        TrainData {
            gray: Tensor::zeros([n as i64, 1, 2, 2], (tch::Kind::Float, tch::Device::Cpu)),
            lone: None,
            targets,
            train: (0..n).collect(),
            val: vec![],
            num_classes,
            groups: (0..n).collect(),
            task,
        }
    }

    /// `--face person`: the single-image head is scored from each photo's
    /// whole frame (`TrainData::lone`), as predict scores a lone photo,
    /// straight from the images and from a cache that holds them alike; the
    /// main head from the person-box crops (`gray`).
    #[test]
    fn the_single_image_head_reads_the_whole_frame_where_it_is_given() {
        use crate::config::{Keep, TrainConfig};
        use crate::model::{HeadKind, ModelConfig, PoolGrid, Precision};
        // The frozen model's Winograd forward sets the thread count in its workers.
        let _threads = crate::model::THREAD_SETTING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cfg = ModelConfig {
            bn_mode: BnMode::Frozen,
            head: HeadKind::Linear,
            num_classes: 2,
            dropout: 0.0,
            hidden: 0,
            width_div: 16,
            precision: Precision::F32,
            features: crate::model::conv5_only(),
            subject_norm: true,
            pool_grid: PoolGrid::GLOBAL,
            single_to_task: Vec::new(),
        };
        // Drawn under the generator's lock (another test checks that nothing draws between its seeding and draws).
        let (model, gray) = crate::model::seeded(3, || (Vgg16::new(&cfg, Device::Cpu).unwrap(), Tensor::rand([6, 1, 32, 32], (Kind::Float, Device::Cpu))));
        // A head that tells pictures apart: the initial one answers almost alike for all.
        for (name, mut t) in model.named_tensors() {
            if name.starts_with("head_global.fc.weight") {
                let _ = tch::no_grad(|| t.f_mul_(&Tensor::from(1000.0)).unwrap());
            }
        }
        let n = 6;
        let mut d = data(vec![0, 1, 0, 1, 0, 1], 2, None);
        d.groups = vec![0, 0, 0, 1, 1, 1];
        d.gray = gray;
        // Another frame of each: here a darker, blurred picture.
        let lone = d.gray.avg_pool2d([5, 5], [1, 1], [2, 2], false, true, None::<i64>) * 0.3;
        let tc = TrainConfig {
            stages: vec![Stage { from: Block::Head, epochs: 1 }],
            optimizer: optim::OptimKind::Sgd,
            lr: 0.01,
            block_lr_factor: 0.5,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: optim::Schedule::Cosine,
            warmup: 0.0,
            batch_size: 4,
            label_smoothing: 0.0,
            class_weights: ClassWeights::Auto,
            augment: crate::data::augment::Augment::preset("none").unwrap(),
            patience: 0,
            keep: Keep::Last,
            cache: true,
            cache_views: 1,
            cache_mem_mb: 64,
            cache_f16: false,
            clean_views: false,
            seed: 1,
            members: 1,
            threshold: Default::default(),
            calibrate: Default::default(),
        };
        let pre = Preprocess::new(crate::data::image::Crop::None, 32);
        let idx: Vec<usize> = (0..n as usize).collect();
        // The single-image head by hand, on the flip-averaged probabilities of given crops.
        let by_hand = |g: &Tensor| {
            let p = |x: &Tensor| {
                tch::no_grad(|| model.classify_global(&model.pooled_from(&pre.normalise(x), Block::Conv1, false), false).unwrap()).softmax(1, Kind::Double)
            };
            ((p(g) + p(&g.flip([3]))) / 2.0).log().to_kind(Kind::Float)
        };
        let score = |d: &TrainData, cache: Option<&Cache>| {
            let t = Trainer { cfg: &tc, pre: &pre, data: d, device: Device::Cpu, checkpoint_dir: None, stop: None, shared: &[], keep_stats: true };
            let s = t.scores(&model, cache, &idx, true, None);
            (s.main, s.single.unwrap())
        };
        let (main_before, single_before) = score(&d, None);
        assert!(single_before.allclose(&by_hand(&d.gray), 1e-5, 1e-5, false));
        d.lone = Some(lone.shallow_clone());
        let (main, single) = score(&d, None);
        assert!(single.allclose(&by_hand(&lone), 1e-5, 1e-5, false), "the whole frames");
        assert!(!single.allclose(&single_before, 1e-3, 1e-3, false));
        assert!(main.allclose(&main_before, 1e-6, 1e-6, false), "the main head keeps the person-box crops");
        // From a cache of the pooled features that holds the whole frames too.
        let mut quiet = Collect::default();
        let mut pass = Pass::new(&mut quiet, None);
        let mut c = build_cache(&model, &tc, &pre, &d.gray, Block::Head, 1, &idx, &idx, Device::Cpu, &mut pass).unwrap();
        c.add_flipped(&model, &pre, &d.gray, Device::Cpu, &mut pass).unwrap();
        c.add_lone(&model, &pre, &lone, Device::Cpu, &mut pass).unwrap();
        let (cached_main, cached_single) = score(&d, Some(&c));
        assert!(cached_single.allclose(&single, 1e-5, 1e-5, false) && cached_main.allclose(&main, 1e-5, 1e-5, false));
        // A cache written and read back (a dump) keeps them.
        let back = Cache::from_named(c.named_tensors().into_iter().map(|(k, t)| (k.to_string(), t)).collect(), n as usize, None, Device::Cpu).unwrap();
        assert!(back.has_lone());
        assert!(score(&d, Some(&back)).1.allclose(&single, 1e-5, 1e-5, false));
        // Only a fit whose model is kept pays for the training photos' feature statistics (lr-find's sweep and
        // the inner fits that set a threshold throw theirs away).
        let mut model = model;
        let pooled = model.pooled_from(&pre.normalise(&d.gray), Block::Conv1, false);
        for keep_stats in [false, true] {
            let t = Trainer { cfg: &tc, pre: &pre, data: &d, device: Device::Cpu, checkpoint_dir: None, stop: None, shared: &[], keep_stats };
            t.run(&mut model, &mut Collect::default(), None).unwrap();
            assert_eq!(model.feature_distance(&pooled, false).is_some(), keep_stats, "statistics kept: {keep_stats}");
        }
    }

    /// A task head: inverse class frequency. A raw-label head: every task class
    /// weighs the same in total, shared equally by its raw labels.
    #[test]
    fn class_weights_balance_the_task_classes() {
        let cfg = ClassWeights::Auto;
        let w = class_weights(cfg, &data(vec![0, 1, 1, 1], 2, None));
        assert_eq!(w, vec![2.0, 4.0 / 6.0]);
        // Raw labels: 0 = neutral (task 0, 2 images), 1..=3 = expressive kinds (task 1; 2, 4, 0 images).
        let targets = vec![0, 0, 1, 1, 2, 2, 2, 2];
        let view = TaskView { targets: vec![0, 0, 1, 1, 1, 1, 1, 1], raw_to_task: vec![0, 1, 1, 1], classes: 2 };
        let w = class_weights(cfg, &data(targets.clone(), 4, Some(view)));
        let total = |task: &[usize]| -> f64 { targets.iter().filter(|&&t| task.contains(&(t as usize))).map(|&t| w[t as usize]).sum() };
        assert!((total(&[0]) - total(&[1, 2, 3])).abs() < 1e-12, "{w:?}");
        assert!((2.0 * w[1] - 4.0 * w[2]).abs() < 1e-12, "raw labels of one class share its weight equally: {w:?}");
        assert_eq!(w[3], 0.0, "a raw label absent from training");
    }
}
