//! Checkpoints of a fit in its run folder: model, optimizer state and best
//! weights in one tensor file, committed by the small state file that names
//! it, so a kill at any moment leaves a loadable checkpoint (`--resume`).

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

use super::ResumeState;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::model::weights;
use crate::model::Vgg16;
use crate::train::optim::Optimizer;

pub const STATE: &str = "checkpoint.json";

/// The model's tensors as one checkpoint of a fit found them, written once
/// (`checkpoint-base.safetensors`): later checkpoints hold only the tensors
/// that differ from it. A head-only fit never writes its frozen trunk
/// (58 MB) again — it wrote it every epoch, 3 GB over the default probe's
/// 50 epochs — while any tensor that moves (a trained block, BatchNorm
/// statistics) is saved whatever the recipe.
pub(crate) struct Base {
    tensors: BTreeMap<String, Tensor>,
}

/// The base file's name in the run folder.
pub const BASE: &str = "checkpoint-base.safetensors";

impl Base {
    fn write(dir: &Path, model: &Vgg16) -> Result<Base> {
        let snap = super::hooks::snapshot(model);
        weights::save_atomic(&snap, &dir.join(BASE))?;
        Ok(Base { tensors: snap.into_iter().collect() })
    }

    /// On the model's device, where the fit's tensors are compared with it.
    fn read(dir: &Path, device: tch::Device) -> Result<Base> {
        Ok(Base { tensors: weights::read_tensors(&dir.join(BASE))?.into_iter().map(|(n, t)| (n, t.to_device(device))).collect() })
    }

    /// The tensors of `named` that the base lacks or holds with other values.
    fn changed<'a>(&'a self, named: impl IntoIterator<Item = (String, Tensor)> + 'a) -> impl Iterator<Item = (String, Tensor)> + 'a {
        named.into_iter().filter(|(n, t)| !self.tensors.get(n).is_some_and(|b| b.size() == t.size() && b.kind() == t.kind() && b.equal(t)))
    }
}

/// Saves model, optimizer state and best weights to `checkpoint-eNNNN.safetensors`
/// (the model and best weights as they differ from the fit's `base`, written
/// first when there is none), then the state that names both files, each
/// atomically: a kill at any moment leaves the previous state and its tensor
/// files intact. Older tensor files are removed only after the new state is in place.
pub(crate) fn save_checkpoint(
    dir: &Path,
    model: &Vgg16,
    opt: &Optimizer,
    best: Option<&[(String, Tensor)]>,
    st: &mut ResumeState,
    base: &mut Option<Base>,
) -> Result<()> {
    if base.is_none() {
        *base = Some(Base::write(dir, model)?);
    }
    let b = base.as_ref().ok_or_else(|| Error::internal("no checkpoint base"))?;
    let mut all: Vec<(String, Tensor)> = b.changed(model.named_tensors()).map(|(n, t)| (format!("model.{n}"), t)).collect();
    all.extend(opt.state_tensors());
    if let Some(best) = best {
        all.extend(b.changed(best.iter().map(|(n, t)| (n.clone(), t.shallow_clone()))).map(|(n, t)| (format!("best.{n}"), t)));
    }
    let name = format!("checkpoint-e{:04}.safetensors", st.history.len());
    weights::save_atomic(&all, &dir.join(&name))?;
    (st.checkpoint, st.base, st.has_best) = (name, BASE.to_string(), best.is_some());
    fsutil::write_json(&dir.join(STATE), st)?;
    remove_checkpoints(dir, Some(&st.checkpoint));
    Ok(())
}

/// Removes checkpoint tensor files other than `keep`; with a `keep`, the base
/// stays (the kept checkpoint needs it), without one it goes too.
pub(crate) fn remove_checkpoints(dir: &Path, keep: Option<&str>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let ours = n.starts_with("checkpoint-e") || (keep.is_none() && n == BASE);
        if ours && n.ends_with(".safetensors") && Some(n.as_str()) != keep {
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

/// Whether a resume state fits the run's `stages`: an edited checkpoint.json,
/// or one from another run, is refused rather than resumed at a stage or
/// epoch the recipe does not have (stage 9 of 2 completed the run at once,
/// its history.csv without the epochs it named).
pub fn check_state(st: &ResumeState, stages: &[crate::config::Stage]) -> std::result::Result<(), String> {
    let Some(stage) = stages.get(st.stage) else {
        return Err(format!("its `stage` is {}, where the run's stages are 0 to {}", st.stage, stages.len().saturating_sub(1)));
    };
    if st.stage_epoch > stage.epochs {
        return Err(format!("its `stage_epoch` is {}, where stage {} has {} epoch(s)", st.stage_epoch, st.stage, stage.epochs));
    }
    // Earlier stages may have ended early (--patience): at most their epochs.
    let before: usize = stages[..st.stage].iter().map(|s| s.epochs).sum();
    let n = st.history.len();
    if n < st.stage_epoch || n > before + st.stage_epoch {
        return Err(format!(
            "its `history` holds {n} epoch row(s), where epoch {} of stage {} means {} to {}",
            st.stage_epoch,
            st.stage,
            st.stage_epoch,
            before + st.stage_epoch
        ));
    }
    if let Some((i, r)) = st.history.iter().enumerate().find(|(i, r)| r.epoch != i + 1) {
        return Err(format!("its `history` row {} is epoch {}", i + 1, r.epoch));
    }
    Ok(())
}

/// Optimizer state and best-epoch weights of a checkpoint.
pub(crate) type Restored = (BTreeMap<String, Tensor>, Option<Vec<(String, Tensor)>>);

/// Loads the model weights of a checkpoint into `model` (its base's where
/// the checkpoint holds none of its own); returns the base for the fit's
/// next checkpoints (none: a checkpoint written whole, before bases).
pub(crate) fn load_checkpoint(dir: &Path, st: &ResumeState, model: &mut Vgg16) -> Result<(Restored, Option<Base>)> {
    let file = &st.checkpoint;
    if !(st.base.is_empty() || st.base == BASE) {
        return Err(Error::file(dir.join(STATE), format!("names the base file `{}`, where vggft writes {BASE}", st.base.escape_debug())));
    }
    if file.is_empty() || file.contains('/') {
        return Err(Error::file(dir.join(STATE), "names no checkpoint file"));
    }
    let p = dir.join(file);
    let tensors: BTreeMap<String, Tensor> = weights::read_tensors(&p)?.into_iter().collect();
    let base = if st.base.is_empty() { None } else { Some(Base::read(dir, model.device())?) };
    let from_base = |name: &str| base.as_ref().and_then(|b| b.tensors.get(name));
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
    // The best weights the checkpoint left out are the base's.
    if let Some(b) = base.as_ref().filter(|_| st.has_best) {
        let own: std::collections::BTreeSet<String> = best.iter().map(|(n, _)| n.clone()).collect();
        best.extend(b.tensors.iter().filter(|(n, _)| !own.contains(*n)).map(|(n, t)| (n.clone(), t.to_device(model.device()))));
    }
    tch::no_grad(|| -> Result<()> {
        for (name, v) in &vars {
            let t = tensors.get(&format!("model.{name}")).or_else(|| from_base(name)).ok_or_else(|| Error::weights(&p, format!("lacks model.{name}")))?;
            if t.size() != v.size() {
                return Err(Error::weights(&p, format!("model.{name} has shape {:?}, expected {:?}", t.size(), v.size())));
            }
            let mut v = v.shallow_clone();
            v.copy_(t);
        }
        Ok(())
    })?;
    let has_best = if base.is_some() { st.has_best } else { !best.is_empty() };
    Ok(((optim, has_best.then_some(best)), base))
}

#[cfg(test)]
mod tests {
    use super::check_state;
    use crate::config::Stage;
    use crate::model::Block;
    use crate::train::{EpochRow, ResumeState};

    #[test]
    fn a_resume_state_must_fit_the_runs_stages() {
        let stages = [Stage { from: Block::Head, epochs: 3 }, Stage { from: Block::Conv5, epochs: 10 }];
        let row = |epoch: usize| EpochRow {
            epoch,
            stage: 1 + usize::from(epoch > 3),
            block: "head".into(),
            lr: 0.1,
            train_loss: 1.0,
            train_acc: 0.5,
            val_loss: None,
            val_acc: None,
            val_bacc: None,
            seconds: 0.0,
        };
        let at =
            |stage: usize, stage_epoch: usize, rows: usize| ResumeState { stage, stage_epoch, history: (1..=rows).map(row).collect(), ..Default::default() };
        // As the trainer leaves it: in the first stage, in the second, the second done, the first ended early.
        for st in [at(0, 2, 2), at(1, 4, 7), at(1, 10, 13), at(1, 4, 6)] {
            assert_eq!(check_state(&st, &stages), Ok(()), "{st:?}");
        }
        let says = |st: ResumeState| check_state(&st, &stages).unwrap_err();
        assert_eq!(says(at(2, 0, 13)), "its `stage` is 2, where the run's stages are 0 to 1");
        assert_eq!(says(at(1, 11, 14)), "its `stage_epoch` is 11, where stage 1 has 10 epoch(s)");
        assert_eq!(says(at(1, 4, 0)), "its `history` holds 0 epoch row(s), where epoch 4 of stage 1 means 4 to 7");
        assert_eq!(says(at(1, 4, 8)), "its `history` holds 8 epoch row(s), where epoch 4 of stage 1 means 4 to 7");
        let mut gap = at(1, 4, 7);
        gap.history[5].epoch = 99;
        assert_eq!(says(gap), "its `history` row 6 is epoch 99");
    }
}
