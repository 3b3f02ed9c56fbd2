//! Staged fine-tuning: per stage, freeze below its block, rebuild the
//! optimizer with per-block rates, cache the frozen prefix's output (a bank
//! of augmented views) when it cannot change, train with a schedule, validate,
//! keep the best epoch, stop early, checkpoint every epoch for `--resume`.
//!
//! Reproducible on CPU: every random draw comes from seeds derived from the
//! run seed and the epoch, so a resumed run replays exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use crate::config::{ClassWeights, Stage, TrainConfig};
use crate::data::Preprocess;
use crate::error::{Error, Result};
use crate::eval;
use crate::fsutil;
use crate::model::{Block, BnMode, Vgg16};
use crate::optim::{Group, Optimizer};
use crate::weights;

/// Images and labels for training, already decoded (gray, CPU).
pub struct TrainData {
    /// (N,1,S,S) gray in [0,1].
    pub gray: Tensor,
    pub targets: Vec<i64>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub num_classes: usize,
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
}

pub struct Outcome {
    pub history: Vec<EpochRow>,
    /// 1-based epoch whose weights were kept.
    pub best_epoch: usize,
}

/// Class weights for the loss, from the training split.
pub fn class_weights(cfg: &TrainConfig, data: &TrainData) -> Vec<f64> {
    let c = data.num_classes;
    if cfg.class_weights == ClassWeights::None {
        return vec![1.0; c];
    }
    let mut n = vec![0usize; c];
    for &i in &data.train {
        n[data.targets[i] as usize] += 1;
    }
    let total = data.train.len() as f64;
    n.iter().map(|&k| if k == 0 { 0.0 } else { total / (c as f64 * k as f64) }).collect()
}

/// Seed for one purpose at one point of the run.
fn sub_seed(seed: u64, what: u64, a: u64, b: u64) -> u64 {
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

/// The frozen prefix's outputs, indexed by dataset row. Each image's views
/// depend only on the seed and the image (not on which split it is in), so
/// one cache can serve every fold of a cross-validation.
#[derive(Debug)]
pub struct Cache {
    pub from: Block,
    /// K augmented views: row `v·n_aug + aug_row[i]` is view v of image i.
    aug: Tensor,
    views: usize,
    n_aug: usize,
    aug_row: Vec<Option<usize>>,
    /// Unaugmented rows (validation / test images; all images without augmentation).
    clean: Tensor,
    clean_row: Vec<Option<usize>>,
}

impl Cache {
    fn shallow(&self) -> Cache {
        Cache {
            from: self.from,
            aug: self.aug.shallow_clone(),
            views: self.views,
            n_aug: self.n_aug,
            aug_row: self.aug_row.clone(),
            clean: self.clean.shallow_clone(),
            clean_row: self.clean_row.clone(),
        }
    }

    /// Whether it holds augmented views of every `train` and clean rows of every `eval` image.
    pub fn covers(&self, train: &[usize], eval: &[usize]) -> bool {
        train.iter().all(|&i| self.aug_row.get(i).is_some_and(Option::is_some)) && eval.iter().all(|&i| self.clean_row.get(i).is_some_and(Option::is_some))
    }
}

/// Rows → an index tensor.
fn index(rows: impl Iterator<Item = usize>, device: Device) -> Tensor {
    Tensor::from_slice(&rows.map(|r| r as i64).collect::<Vec<_>>()).to_device(device)
}

/// Builds the cache of blocks below `from` for augmented views of `aug_rows`
/// and clean views of `clean_rows` (dataset indices into `gray`).
#[allow(clippy::too_many_arguments)]
pub fn build_cache(
    model: &Vgg16,
    cfg: &TrainConfig,
    pre: &Preprocess,
    gray: &Tensor,
    from: Block,
    views: usize,
    aug_rows: &[usize],
    clean_rows: &[usize],
    device: Device,
) -> Cache {
    let n_all = gray.size()[0] as usize;
    let identity = cfg.augment.is_identity();
    let store = if cfg.cache_f16 { Kind::Half } else { Kind::Float };
    let feats = |rows: &[usize], view: Option<usize>| -> Tensor {
        tch::no_grad(|| {
            let parts: Vec<Tensor> = rows
                .chunks(8)
                .map(|c| {
                    let g = crate::data::select(gray, c, device);
                    let g = match view {
                        Some(v) => cfg.augment.apply_seeded(&g, &c.iter().map(|&i| sub_seed(cfg.seed, 1, v as u64, i as u64)).collect::<Vec<_>>()),
                        None => g,
                    };
                    model.features(&pre.normalise(&g), Block::Conv1, from, false).to_kind(store)
                })
                .collect();
            Tensor::cat(&parts, 0)
        })
    };
    let row_map = |rows: &[usize]| {
        let mut m = vec![None; n_all];
        for (r, &i) in rows.iter().enumerate() {
            m[i] = Some(r);
        }
        m
    };
    if identity {
        let mut all: Vec<usize> = aug_rows.iter().chain(clean_rows).copied().collect();
        all.sort_unstable();
        all.dedup();
        let clean = feats(&all, None);
        let rows = row_map(&all);
        return Cache { from, aug: clean.shallow_clone(), views: 1, n_aug: all.len(), aug_row: rows.clone(), clean, clean_row: rows };
    }
    let banks: Vec<Tensor> = (0..views).map(|v| feats(aug_rows, Some(v))).collect();
    Cache {
        from,
        aug: Tensor::cat(&banks, 0),
        views,
        n_aug: aug_rows.len(),
        aug_row: row_map(aug_rows),
        clean: if clean_rows.is_empty() { Tensor::zeros([0], (Kind::Float, device)) } else { feats(clean_rows, None) },
        clean_row: row_map(clean_rows),
    }
}

/// Runs a cache on through the blocks `base.from..from` (frozen in the stage that needs it).
pub fn derive_cache(model: &Vgg16, base: &Cache, from: Block) -> Cache {
    if from == base.from {
        return base.shallow();
    }
    let run = |t: &Tensor| -> Tensor {
        let n = t.size()[0];
        if n == 0 {
            return t.shallow_clone();
        }
        tch::no_grad(|| {
            let parts: Vec<Tensor> = (0..n)
                .step_by(64)
                .map(|s| model.features(&t.narrow(0, s, (n - s).min(64)).to_kind(Kind::Float), base.from, from, false).to_kind(t.kind()))
                .collect();
            Tensor::cat(&parts, 0)
        })
    };
    let aug = run(&base.aug);
    let same = base.aug.data_ptr() == base.clean.data_ptr();
    Cache {
        from,
        clean: if same { aug.shallow_clone() } else { run(&base.clean) },
        aug,
        views: base.views,
        n_aug: base.n_aug,
        aug_row: base.aug_row.clone(),
        clean_row: base.clean_row.clone(),
    }
}

/// How many views fit the memory bound, or why the cache is off.
pub fn cache_plan(
    model: &Vgg16,
    cfg: &TrainConfig,
    pre: &Preprocess,
    from: Block,
    n_aug: usize,
    n_clean: usize,
    device: Device,
) -> std::result::Result<usize, String> {
    if !cfg.cache {
        return Err("off (--no-cache)".into());
    }
    if from == Block::Conv1 {
        return Err("off: no frozen block in this stage".into());
    }
    if model.cfg.bn_mode == BnMode::Train {
        return Err("off: --bn train changes the frozen blocks' statistics every batch".into());
    }
    let views = if cfg.augment.is_identity() { 1 } else { cfg.cache_views };
    let s = pre.image_size as i64;
    let probe = tch::no_grad(|| model.features(&Tensor::zeros([1, 3, s, s], (Kind::Float, device)), Block::Conv1, from, false));
    let per = probe.numel() * if cfg.cache_f16 { 2 } else { 4 };
    let budget = cfg.cache_mem_mb << 20;
    let fixed = per * n_clean;
    let fit = if fixed + per * n_aug > budget { 0 } else { ((budget - fixed) / (per * n_aug.max(1))).min(views) };
    if fit == 0 {
        return Err(format!(
            "off: one view of {} images needs {} MiB, over --cache-mem {} MiB",
            n_aug + n_clean,
            (per * (n_aug + n_clean)) >> 20,
            cfg.cache_mem_mb
        ));
    }
    Ok(fit)
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
}

impl Trainer<'_> {
    fn weights_tensor(&self) -> Tensor {
        let w = class_weights(self.cfg, self.data);
        Tensor::from_slice(&w).to_kind(Kind::Float).to_device(self.device)
    }

    fn optimizer(&self, model: &Vgg16) -> Optimizer {
        let groups = model
            .param_groups()
            .into_iter()
            .map(|g| Group {
                name: format!("{}{}", g.block, if g.decay { "" } else { ".no_decay" }),
                lr_mult: self.cfg.block_lr_factor.powi((Block::Head.index() - g.block.index()) as i32),
                weight_decay: if g.decay { self.cfg.weight_decay } else { 0.0 },
                params: g.params,
            })
            .collect();
        Optimizer::new(self.cfg.optimizer, groups, self.cfg.momentum)
    }

    /// Normalised network input for gray rows `idx`, augmented when `rng` is given.
    fn input(&self, idx: &[usize], rng: Option<&mut ChaCha8Rng>) -> Tensor {
        let g = crate::data::select(&self.data.gray, idx, self.device);
        let g = match rng {
            Some(r) => self.cfg.augment.apply(&g, r),
            None => g,
        };
        self.pre.normalise(&g)
    }

    /// Eval-mode logits for dataset rows `idx`, from the cache's clean rows when it has them.
    pub fn logits(&self, model: &Vgg16, cache: Option<&Cache>, idx: &[usize]) -> Tensor {
        tch::no_grad(|| {
            let parts: Vec<Tensor> = idx
                .chunks(64)
                .map(|c| match cache.filter(|k| k.covers(&[], c)) {
                    Some(k) => {
                        let x = k.clean.index_select(0, &index(c.iter().map(|&i| k.clean_row[i].unwrap_or(0)), self.device)).to_kind(Kind::Float);
                        model.forward_from(&x, k.from, false)
                    }
                    None => model.forward_t(&self.input(c, None), false),
                })
                .collect();
            if parts.is_empty() {
                Tensor::zeros([0, model.cfg.num_classes], (Kind::Float, self.device))
            } else {
                Tensor::cat(&parts, 0)
            }
        })
    }

    /// Logits for the validation rows.
    pub fn val_logits(&self, model: &Vgg16, cache: Option<&Cache>) -> Tensor {
        self.logits(model, cache, &self.data.val)
    }

    /// Runs all stages (from `resume` when given).
    pub fn run(&self, model: &mut Vgg16, reporter: &mut dyn Reporter, resume: Option<ResumeState>) -> Result<Outcome> {
        if self.data.train.len() < 2 {
            return Err(Error::config("training needs at least 2 images"));
        }
        let cw = self.weights_tensor();
        let mut st = resume.clone().unwrap_or_default();
        let mut best: Option<Vec<(String, Tensor)>> = None;
        let mut resumed_optim: Option<BTreeMap<String, Tensor>> = None;
        let resume_stage = resume.as_ref().map(|s| s.stage);
        if resume.is_some() {
            let dir = self.checkpoint_dir.as_ref().ok_or_else(|| Error::config("resume needs a run folder"))?;
            let (o, b) = load_checkpoint(dir, &st.checkpoint, model)?;
            resumed_optim = Some(o);
            best = b;
        }
        let total_epochs = self.cfg.total_epochs();
        // One cache at the lowest freeze point of the remaining stages: the
        // blocks below it never train, so it serves every stage, extended
        // through the blocks a later stage keeps frozen.
        let base_from = self.cfg.stages.iter().skip(st.stage).map(|s| s.from).min().unwrap_or(Block::Head);
        let shared = |from: Block| self.shared.iter().find(|c| c.from == from && c.covers(&self.data.train, &self.data.val));
        let base = match shared(base_from).filter(|_| st.stage == 0 && resume.is_none()) {
            Some(c) => Some(c.shallow()),
            None => match cache_plan(model, self.cfg, self.pre, base_from, self.data.train.len(), self.data.val.len(), self.device) {
                Ok(views) => {
                    let t0 = Instant::now();
                    let c = build_cache(model, self.cfg, self.pre, &self.data.gray, base_from, views, &self.data.train, &self.data.val, self.device);
                    reporter.message(&format!(
                        "cached the frozen {} output: {} view(s) of {} training images{}, in {:.1}s",
                        Block::from_index(base_from.index() - 1),
                        views,
                        self.data.train.len(),
                        if self.data.val.is_empty() { String::new() } else { format!(" and {} validation images", self.data.val.len()) },
                        t0.elapsed().as_secs_f64()
                    ));
                    Some(c)
                }
                Err(why) => {
                    reporter.message(&format!("frozen-prefix cache {why}"));
                    None
                }
            },
        };
        for (si, stage) in self.cfg.stages.iter().enumerate() {
            if si < st.stage || (si == st.stage && (st.stage_done || st.stage_epoch >= stage.epochs)) {
                continue;
            }
            if si > st.stage {
                st.stage = si;
                st.stage_epoch = 0;
                st.since_best = 0;
                st.stage_done = false;
            }
            model.set_trainable_from(stage.from);
            let mut opt = self.optimizer(model);
            // Optimizer state carries over only within the stage it was saved in.
            if let Some(o) = resumed_optim.take().filter(|_| resume_stage == Some(si)) {
                opt.load_state(&o)?;
            }
            // Blocks no earlier stage trained still hold the weights a shared cache was built with.
            let untouched = resume.is_none() && self.cfg.stages[..si].iter().all(|s| s.from >= stage.from);
            let reusable = base.as_ref().filter(|b| stage.from > b.from && untouched).and_then(|_| shared(stage.from));
            let cache = match (&base, reusable) {
                (_, Some(c)) => Some(c.shallow()),
                (Some(b), None) if stage.from >= b.from => {
                    let t0 = Instant::now();
                    let c = derive_cache(model, b, stage.from);
                    if stage.from > b.from {
                        reporter.message(&format!(
                            "stage {} ({}+): extended the cache to the {} output in {:.1}s",
                            si + 1,
                            stage.from,
                            Block::from_index(stage.from.index() - 1),
                            t0.elapsed().as_secs_f64()
                        ));
                    }
                    Some(c)
                }
                _ => None,
            };
            let steps_per_epoch = batches(&self.data.train, self.cfg.batch_size).len();
            let total_steps = steps_per_epoch * stage.epochs;
            let warmup = (self.cfg.warmup * total_steps as f64).round() as usize;
            while st.stage_epoch < stage.epochs {
                let epoch = st.history.len() + 1;
                let t0 = Instant::now();
                tch::manual_seed(sub_seed(self.cfg.seed, 2, epoch as u64, 0) as i64 & 0x7FFF_FFFF_FFFF);
                let mut rng = ChaCha8Rng::seed_from_u64(sub_seed(self.cfg.seed, 3, epoch as u64, 0));
                let mut order: Vec<usize> = (0..self.data.train.len()).collect();
                order.shuffle(&mut rng);
                let bs = batches(&order, self.cfg.batch_size);
                reporter.epoch_start(epoch, total_epochs, bs.len());
                let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0usize);
                let mut lr_now = 0.0;
                for (bi, b) in bs.iter().enumerate() {
                    if self.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
                        return Err(Error::Interrupted(format!("stopped during epoch {epoch}; the last completed epoch is saved")));
                    }
                    let step = st.stage_epoch * steps_per_epoch + bi;
                    lr_now = self.cfg.lr * self.cfg.schedule.factor(step, total_steps, warmup);
                    let rows: Vec<usize> = b.iter().map(|&o| self.data.train[o]).collect();
                    let logits = match &cache {
                        Some(c) => {
                            let pick = b.iter().map(|&o| rng.gen_range(0..c.views) * c.n_aug + c.aug_row[self.data.train[o]].unwrap_or(0)).collect::<Vec<_>>();
                            let x = c.aug.index_select(0, &index(pick.into_iter(), self.device)).to_kind(Kind::Float);
                            model.forward_from(&x, c.from, true)
                        }
                        None => {
                            let x = self.input(&rows, (!self.cfg.augment.is_identity()).then_some(&mut rng));
                            model.forward_t(&x, true)
                        }
                    };
                    let y = Tensor::from_slice(&rows.iter().map(|&r| self.data.targets[r]).collect::<Vec<_>>()).to_device(self.device);
                    let loss = logits.cross_entropy_loss(&y, Some(&cw), Reduction::Mean, -100, self.cfg.label_smoothing);
                    opt.zero_grad();
                    loss.backward();
                    opt.step(lr_now);
                    let l = f64::try_from(&loss).unwrap_or(f64::NAN);
                    if !l.is_finite() {
                        return Err(Error::config(format!("the training loss became {l} at epoch {epoch}: lower --lr (try vggft lr-find)")));
                    }
                    loss_sum += l * b.len() as f64;
                    correct += i64::try_from(logits.argmax(1, false).eq_tensor(&y).sum(Kind::Int64)).unwrap_or(0);
                    seen += b.len();
                    reporter.batch(bi + 1, loss_sum / seen as f64, correct as f64 / seen as f64, seen as f64 / t0.elapsed().as_secs_f64());
                }
                let (val_loss, val_acc, val_bacc) = if self.data.val.is_empty() {
                    (None, None, None)
                } else {
                    let logits = self.val_logits(model, cache.as_ref());
                    let y: Vec<i64> = self.data.val.iter().map(|&r| self.data.targets[r]).collect();
                    let yt = Tensor::from_slice(&y).to_device(self.device);
                    let l = f64::try_from(logits.cross_entropy_loss(&yt, Some(&cw), Reduction::Mean, -100, 0.0)).unwrap_or(f64::NAN);
                    let pred: Vec<i64> = Vec::<i64>::try_from(logits.argmax(1, false).to_device(Device::Cpu)).unwrap_or_default();
                    (Some(l), Some(eval::accuracy(&y, &pred)), Some(eval::balanced_accuracy(&y, &pred, self.data.num_classes)))
                };
                let row = EpochRow {
                    epoch,
                    stage: si + 1,
                    block: stage.from.to_string(),
                    lr: lr_now,
                    train_loss: loss_sum / seen as f64,
                    train_acc: correct as f64 / seen as f64,
                    val_loss,
                    val_acc,
                    val_bacc,
                    seconds: t0.elapsed().as_secs_f64(),
                };
                reporter.epoch_end(&row);
                st.history.push(row);
                st.stage_epoch += 1;
                match val_loss {
                    Some(l) if st.best_loss.is_none_or(|b| l < b) => {
                        st.best_loss = Some(l);
                        st.best_epoch = epoch;
                        st.since_best = 0;
                        best = Some(snapshot(model));
                    }
                    Some(_) => st.since_best += 1,
                    None => st.best_epoch = epoch,
                }
                if self.cfg.patience > 0 && st.since_best >= self.cfg.patience && st.stage_epoch < stage.epochs {
                    reporter.message(&format!("stage {}: no validation improvement for {} epochs, ending the stage early", si + 1, self.cfg.patience));
                    st.stage_done = true;
                }
                if let Some(dir) = &self.checkpoint_dir {
                    save_checkpoint(dir, model, &opt, best.as_deref(), &mut st)?;
                }
                if st.stage_done {
                    break;
                }
            }
        }
        if let Some(b) = best {
            restore(model, &b);
        }
        Ok(Outcome { history: st.history, best_epoch: st.best_epoch })
    }
}

/// Deep copy of every tensor of the model.
fn snapshot(model: &Vgg16) -> Vec<(String, Tensor)> {
    tch::no_grad(|| model.named_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect())
}

fn restore(model: &mut Vgg16, snap: &[(String, Tensor)]) {
    let vars = model.vs.variables();
    tch::no_grad(|| {
        for (n, t) in snap {
            if let Some(v) = vars.get(n) {
                let mut v = v.shallow_clone();
                v.copy_(t);
            }
        }
    });
}

pub const STATE: &str = "checkpoint.json";

/// Saves model, optimizer state and best weights to `checkpoint-eNNNN.safetensors`,
/// then the state that names that file, each atomically: a kill at any moment
/// leaves the previous state and its tensor file intact. Older tensor files
/// are removed only after the new state is in place.
pub fn save_checkpoint(dir: &Path, model: &Vgg16, opt: &Optimizer, best: Option<&[(String, Tensor)]>, st: &mut ResumeState) -> Result<()> {
    let mut all: Vec<(String, Tensor)> = model.named_tensors().into_iter().map(|(n, t)| (format!("model.{n}"), t)).collect();
    all.extend(opt.state_tensors());
    if let Some(b) = best {
        all.extend(b.iter().map(|(n, t)| (format!("best.{n}"), t.shallow_clone())));
    }
    let name = format!("checkpoint-e{:04}.safetensors", st.history.len());
    weights::save_atomic(&all, &dir.join(&name))?;
    st.checkpoint = name;
    fsutil::write_json(&dir.join(STATE), st)?;
    remove_checkpoints(dir, Some(&st.checkpoint));
    Ok(())
}

/// Removes checkpoint tensor files other than `keep`.
pub fn remove_checkpoints(dir: &Path, keep: Option<&str>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("checkpoint-e") && n.ends_with(".safetensors") && Some(n.as_str()) != keep {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Reads the resume state of a run folder.
pub fn load_state(dir: &Path) -> Result<ResumeState> {
    let p = dir.join(STATE);
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&s).map_err(|e| Error::file(&p, format!("is not a valid checkpoint state: {e}")))
}

/// Optimizer state and best-epoch weights of a checkpoint.
type Restored = (BTreeMap<String, Tensor>, Option<Vec<(String, Tensor)>>);

/// Loads the model weights of a checkpoint into `model`.
fn load_checkpoint(dir: &Path, file: &str, model: &mut Vgg16) -> Result<Restored> {
    if file.is_empty() || file.contains('/') {
        return Err(Error::file(dir.join(STATE), "names no checkpoint file"));
    }
    let p = dir.join(file);
    let tensors: BTreeMap<String, Tensor> = weights::read_tensors(&p)?.into_iter().collect();
    let vars = model.vs.variables();
    let mut best = Vec::new();
    let mut optim = BTreeMap::new();
    for (n, t) in &tensors {
        if let Some(name) = n.strip_prefix("best.") {
            best.push((name.to_string(), t.to_device(model.device())));
        } else if n.starts_with("optim.") {
            optim.insert(n.clone(), t.to_device(model.device()));
        }
    }
    tch::no_grad(|| -> Result<()> {
        for (name, v) in &vars {
            let t = tensors.get(&format!("model.{name}")).ok_or_else(|| Error::weights(&p, format!("lacks model.{name}")))?;
            if t.size() != v.size() {
                return Err(Error::weights(&p, format!("model.{name} has shape {:?}, expected {:?}", t.size(), v.size())));
            }
            let mut v = v.shallow_clone();
            v.copy_(t);
        }
        Ok(())
    })?;
    Ok((optim, (!best.is_empty()).then_some(best)))
}

/// Stages → a short human description, e.g. `head:3 → conv5:12`.
pub fn describe_stages(stages: &[Stage]) -> String {
    stages.iter().map(|s| format!("{}:{}", s.from, s.epochs)).collect::<Vec<_>>().join(" → ")
}
