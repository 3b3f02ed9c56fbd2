//! Hooks: each concern of a fit (progress, best weights, early stopping,
//! checkpoints, Ctrl-C, the divergence guard, the learning-rate sweep) is a
//! small type on the one loop in `fit`, after fastai's callbacks and burn's
//! learner parts. A hook sees the loop's state through `Ctx` and stops the
//! fit by returning an error (or by setting `ctx.stop`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use tch::Tensor;

use super::checkpoint::{load_checkpoint, save_checkpoint, Base};
use super::{EpochRow, Reporter, ResumeState};
use crate::error::{Error, Result};
use crate::model::Vgg16;
use crate::train::optim::Optimizer;

/// Deep copies of a model's tensors (the best epoch's weights).
pub type Snapshot = Vec<(String, Tensor)>;

/// What the loop shares with its hooks.
pub struct Ctx<'a> {
    pub model: &'a mut Vgg16,
    pub reporter: &'a mut dyn Reporter,
    /// Position, history and the tracker's record: what a checkpoint saves.
    pub state: ResumeState,
    /// The current stage's optimizer (set before `before_stage`).
    pub opt: Option<Optimizer>,
    /// The rate of the next step: the schedule's, unless a hook changes it in `before_batch`.
    pub lr: f64,
    /// 1-based epoch in progress.
    pub epoch: usize,
    /// The best epoch's weights so far.
    pub best: Option<Snapshot>,
    /// Set by a hook to end the fit after the current batch, without an error.
    pub stop: bool,
}

impl<'a> Ctx<'a> {
    /// A fit's starting point: `state` (default, or a checkpoint's to resume), nothing else yet.
    pub fn new(model: &'a mut Vgg16, reporter: &'a mut dyn Reporter, state: ResumeState) -> Self {
        Ctx { model, reporter, state, opt: None, lr: 0.0, epoch: 0, best: None, stop: false }
    }
}

/// One event per step of the loop; every method defaults to doing nothing.
#[allow(unused_variables)]
pub trait Hook {
    fn before_fit(&mut self, ctx: &mut Ctx) -> Result<()> {
        Ok(())
    }
    /// The stage's optimizer is in `ctx.opt`.
    fn before_stage(&mut self, ctx: &mut Ctx, stage: usize) -> Result<()> {
        Ok(())
    }
    fn before_epoch(&mut self, ctx: &mut Ctx, batches: usize) -> Result<()> {
        Ok(())
    }
    fn before_batch(&mut self, ctx: &mut Ctx) -> Result<()> {
        Ok(())
    }
    fn after_batch(&mut self, ctx: &mut Ctx, b: &BatchEnd) -> Result<()> {
        Ok(())
    }
    /// The row is already in `ctx.state.history`; setting `ctx.state.stage_done` ends the stage.
    fn after_epoch(&mut self, ctx: &mut Ctx, row: &EpochRow) -> Result<()> {
        Ok(())
    }
    fn after_fit(&mut self, ctx: &mut Ctx) -> Result<()> {
        Ok(())
    }
}

/// A finished step: its loss and the epoch's running figures.
pub struct BatchEnd {
    /// 1-based batch within the epoch.
    pub index: usize,
    pub loss: f64,
    pub mean_loss: f64,
    pub accuracy: f64,
    pub images_per_s: f64,
}

/// Epoch and batch progress to the reporter.
pub struct Progress {
    pub total_epochs: usize,
}

impl Hook for Progress {
    fn before_epoch(&mut self, ctx: &mut Ctx, batches: usize) -> Result<()> {
        ctx.reporter.epoch_start(ctx.epoch, self.total_epochs, batches);
        Ok(())
    }
    fn after_batch(&mut self, ctx: &mut Ctx, b: &BatchEnd) -> Result<()> {
        ctx.reporter.batch(b.index, b.mean_loss, b.accuracy, b.images_per_s);
        Ok(())
    }
    fn after_epoch(&mut self, ctx: &mut Ctx, row: &EpochRow) -> Result<()> {
        ctx.reporter.epoch_end(row);
        Ok(())
    }
}

/// Stops when the training loss is no longer finite or rises above
/// `FACTOR` times the fit's first loss (a rate too high for the data climbs
/// towards 1e16 long before it becomes NaN), naming the epoch, the rate and the remedy.
pub struct DivergenceGuard;

impl DivergenceGuard {
    pub(crate) const FACTOR: f64 = 25.0;
}

impl Hook for DivergenceGuard {
    fn after_batch(&mut self, ctx: &mut Ctx, b: &BatchEnd) -> Result<()> {
        let start = *ctx.state.start_loss.get_or_insert(b.loss);
        if b.loss.is_finite() && (b.loss <= Self::FACTOR * start || !start.is_finite()) {
            return Ok(());
        }
        Err(Error::Diverged { epoch: ctx.epoch, start, loss: b.loss, lr: ctx.lr })
    }
}

/// Ctrl-C: a set flag stops the fit before the next batch.
pub struct Interrupt<'a>(pub &'a AtomicBool);

impl Hook for Interrupt<'_> {
    fn before_batch(&mut self, ctx: &mut Ctx) -> Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(Error::Interrupted(format!("stopped during epoch {}; {}", ctx.epoch, saved(&ctx.state))));
        }
        Ok(())
    }
}

/// What a run stopped with `state` keeps for `--resume`.
pub fn saved(state: &ResumeState) -> &'static str {
    if state.history.is_empty() {
        "no epoch had finished, so the run starts from the beginning when resumed"
    } else {
        "the last completed epoch is saved"
    }
}

/// Tracks the lowest validation loss and, with `restore`, keeps that epoch's
/// weights, which the model gets back when the fit ends (`--keep best`).
/// Without a validation set the last epoch counts as the best.
pub struct BestWeights {
    pub restore: bool,
}

impl Hook for BestWeights {
    fn after_epoch(&mut self, ctx: &mut Ctx, row: &EpochRow) -> Result<()> {
        let st = &mut ctx.state;
        match row.val_loss {
            Some(l) if st.best_loss.is_none_or(|b| l < b) => {
                st.best_loss = Some(l);
                st.best_epoch = row.epoch;
                st.since_best = 0;
                if self.restore {
                    ctx.best = Some(snapshot(ctx.model));
                }
            }
            Some(_) => st.since_best += 1,
            None => st.best_epoch = row.epoch,
        }
        Ok(())
    }
    fn after_fit(&mut self, ctx: &mut Ctx) -> Result<()> {
        if let Some(b) = &ctx.best {
            restore(ctx.model, b);
        }
        Ok(())
    }
}

/// Ends a stage after `patience` epochs without a new best validation loss
/// (counted by `BestWeights`, which must run first).
pub struct EarlyStopping {
    pub patience: usize,
    /// Epochs of each stage.
    pub stage_epochs: Vec<usize>,
}

impl Hook for EarlyStopping {
    fn after_epoch(&mut self, ctx: &mut Ctx, _row: &EpochRow) -> Result<()> {
        let st = &mut ctx.state;
        if self.patience > 0 && st.since_best >= self.patience && st.stage_epoch < self.stage_epochs[st.stage] {
            ctx.reporter.message(&format!("stage {}: no validation improvement for {} epochs, ending the stage early", st.stage + 1, self.patience));
            st.stage_done = true;
        }
        Ok(())
    }
}

/// Saves a checkpoint to the run folder after every epoch, and on resume
/// restores the model and best weights (before the fit) and the optimizer
/// state (in the stage it was saved in).
pub struct Checkpointer {
    pub dir: PathBuf,
    /// Resuming from the saved state (the loop starts from it).
    pub resume: bool,
    optim: Option<(usize, BTreeMap<String, Tensor>)>,
    /// What the fit's checkpoints are written against (the first writes it).
    base: Option<Base>,
}

impl Checkpointer {
    pub fn new(dir: PathBuf, resume: bool) -> Self {
        Checkpointer { dir, resume, optim: None, base: None }
    }
}

impl Hook for Checkpointer {
    fn before_fit(&mut self, ctx: &mut Ctx) -> Result<()> {
        if self.resume {
            let ((optim, best), base) = load_checkpoint(&self.dir, &ctx.state, ctx.model)?;
            self.optim = Some((ctx.state.stage, optim));
            ctx.best = best;
            self.base = base;
        }
        Ok(())
    }
    fn before_stage(&mut self, ctx: &mut Ctx, stage: usize) -> Result<()> {
        // Optimizer state carries over only within the stage it was saved in.
        if let Some((_, o)) = self.optim.take().filter(|(s, _)| *s == stage) {
            if let Some(opt) = ctx.opt.as_mut() {
                opt.load_state(&o)?;
            }
        }
        Ok(())
    }
    fn after_epoch(&mut self, ctx: &mut Ctx, _row: &EpochRow) -> Result<()> {
        let Some(opt) = ctx.opt.as_ref() else { return Ok(()) };
        save_checkpoint(&self.dir, ctx.model, opt, ctx.best.as_deref(), &mut ctx.state, &mut self.base)
    }
}

/// Deep copy of every tensor of the model.
pub fn snapshot(model: &Vgg16) -> Snapshot {
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

/// The learning-rate sweep (`vggft lr-find`): an exponential rate per step
/// from `start`, recording the raw and smoothed loss (fastai's 0.98
/// exponential average, bias-corrected), ending the fit after `steps` steps
/// or when the smoothed loss exceeds four times its best.
pub struct LrSweep {
    pub start: f64,
    /// Factor between two steps' rates.
    pub ratio: f64,
    pub steps: usize,
    /// (rate, raw loss, smoothed loss) per step.
    pub points: Vec<(f64, f64, f64)>,
    avg: f64,
    best: f64,
}

impl LrSweep {
    pub fn new(start: f64, end: f64, steps: usize) -> Self {
        LrSweep { start, ratio: (end / start).powf(1.0 / (steps - 1) as f64), steps, points: Vec::new(), avg: 0.0, best: f64::INFINITY }
    }
}

impl Hook for LrSweep {
    fn before_batch(&mut self, ctx: &mut Ctx) -> Result<()> {
        if self.points.is_empty() {
            ctx.reporter.progress("lr-find sweep", "step(s)", 0, self.steps);
        }
        ctx.lr = self.start * self.ratio.powi(self.points.len() as i32);
        Ok(())
    }
    fn after_batch(&mut self, ctx: &mut Ctx, b: &BatchEnd) -> Result<()> {
        let step = self.points.len();
        self.avg = 0.98 * self.avg + 0.02 * b.loss;
        let smooth = self.avg / (1.0 - 0.98f64.powi(step as i32 + 1));
        self.points.push((ctx.lr, b.loss, smooth));
        self.best = self.best.min(smooth);
        if !b.loss.is_finite() || (step > 10 && smooth > 4.0 * self.best) {
            ctx.reporter.message(&format!("lr-find: loss diverged at rate {:.2e}, stopping the sweep", ctx.lr));
            ctx.stop = true;
        }
        if self.points.len() >= self.steps {
            ctx.stop = true;
        }
        // The sweep's end (also when it stopped early) closes the progress.
        let done = if ctx.stop { self.steps } else { self.points.len() };
        ctx.reporter.progress("lr-find sweep", "step(s)", done, self.steps);
        Ok(())
    }
}
